"""A training stage's MLflow run: params, per-step metrics, artifacts and lineage.

One ``TrainingRun`` per training stage, in its model's experiment (experiments.py). Its
``__enter__`` fails fast with one line (``TrackingError``) when the tracking store cannot be
used, before any training work. Metrics are buffered in memory and handed every
FLUSH_SECONDS to MLflow's async logging (``log_batch(..., synchronous=False)``), so
``log_metrics`` never waits on sqlite or the network; ``__exit__`` waits until MLflow has
logged what is left and ends the run. MLflow's system metrics monitor samples the machine
meanwhile.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from genpipe.errors import TrackingError, exception_text
from genpipe.fileio import write_json
from genpipe.tracking.describe import TAG_NOTE
from genpipe.tracking.experiments import experiment_name, get_or_create_experiment
from genpipe.tracking.flatten import log_params
from genpipe.tracking.lineage import (
    TAG_RECIPE,
    TAG_RESUMED_FROM,
    dvc_exp_name,
    git_info,
    recipe_id,
    run_name,
    run_tags,
)
from genpipe.tracking.orphans import end_if_running
from genpipe.tracking.store import (
    check_tracking_server,
    failure,
    import_mlflow,
    masked,
    store_error,
    tracking_uri,
    ui_url,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    from mlflow.utils.async_logging.run_operations import RunOperations

    from genpipe.tracking.datasets import DataInput

# buffered metrics are handed to MLflow's async logging this often while training: one
# write a handover (about 10 ms of CPU on sqlite), not one a log_metrics call
FLUSH_SECONDS = 5.0

log = logging.getLogger(__name__)


# a system metrics sample (CPU, memory, disk, network; GPU with nvidia-ml-py) this often
# while a run trains: its "System metrics" tab. MLflow's own settings win:
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, and MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false
# turns it off
SYSTEM_METRICS_SECONDS = 10.0


def start_system_metrics(run_id: str, uri: str) -> SystemMetricsMonitor | None:
    """MLflow's system metrics monitor on the run, started (a thread that samples psutil
    and logs under system/); None when turned off."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("false", "0"):
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_SECONDS,
                                   tracking_uri=uri)  # fmt: skip
    monitor.start()
    return monitor


class TrainingRun:
    """One MLflow run for one model's training stage, in experiment
    `<experiment_prefix>-<model>`; a context manager.

    log_metrics buffers in memory; every FLUSH_SECONDS the buffer goes to MLflow's async
    logging, which writes it from its own thread (splitting it into batches MLflow
    accepts). The previous handover is waited for first, so there is one write at a time
    (one writer on a sqlite file, points in order) and a failed one stops training early.
    The run's record (`record_path`: its id, store, experiment and name) is written when the
    run ends FINISHED, and only then.
    """

    def __init__(
        self,
        model: str,
        params: dict,
        data_hash: str,
        experiment_prefix: str,
        record_path: Path,
        uri: str | None = None,
        inputs: Sequence[DataInput] = (),
        description: str | None = None,
    ) -> None:
        self.model = model
        self.params = params
        self.inputs = inputs  # the datasets (datasets.data_input) it trains on
        self.description = description  # the run page's description (Markdown)
        self.data_hash = data_hash
        self.experiment = experiment_name(experiment_prefix, model)
        self.record_path = Path(record_path)
        self.uri = uri or tracking_uri()
        self.run_name = ""
        self.experiment_id = ""
        self._run_id: str | None = None
        self._client: MlflowClient | None = None
        self._buffer: list[Metric] = []
        self._last_flush = 0.0
        self._sent: RunOperations | None = None  # the last handover to MLflow
        self.system_metrics: SystemMetricsMonitor | None = None

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            raise RuntimeError("TrainingRun.run_id: the run has not started (use `with`)")
        return self._run_id

    def __enter__(self) -> TrainingRun:
        check_tracking_server(self.uri)
        mlflow = import_mlflow()
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        git = git_info()
        self.run_name = run_name(self.model, git["short"], dvc_exp_name(), self.params)
        try:
            self._client = mlflow.MlflowClient(tracking_uri=self.uri)
            self.experiment_id = get_or_create_experiment(self._client, self.experiment)
            tags = run_tags(self.model, self.data_hash, git) | {TAG_RECIPE: recipe_id(self.params)}
            if self.description:
                tags[TAG_NOTE] = self.description
            run = self._client.create_run(self.experiment_id, tags=tags,
                                          run_name=self.run_name)  # fmt: skip
            self._run_id = run.info.run_id
            log_params(self._client, self._run_id, self.params)
            if self.inputs:
                self._client.log_inputs(self._run_id, [i.entity() for i in self.inputs])
            self.system_metrics = start_system_metrics(self._run_id, self.uri)
            # process-wide (and $MLFLOW_TRACKING_URI for subprocesses), once it is known to work
            mlflow.set_tracking_uri(self.uri)
        except (MlflowException, OSError, ImportError, SQLAlchemyError) as exc:
            # ImportError: a database URI whose driver is not installed (postgresql://...)
            if self._run_id is not None:
                self._terminate("FAILED")
            raise store_error(self.uri, exc) or TrackingError(failure(
                f"MLflow tracking store {masked(self.uri)}: could not start a run in experiment "
                f"'{self.experiment}'", self.uri, exc)) from exc  # fmt: skip
        self._last_flush = time.monotonic()
        return self

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer one step's metrics; cheap (no I/O here but every FLUSH_SECONDS)."""
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        self._buffer += [Metric(key, float(value), ms, step) for key, value in metrics.items()]
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self._flush()

    def _flush(self, last: bool = False) -> None:
        """Wait for the previous handover (long done, as a rule), then hand MLflow the
        buffer; the `last` one is waited for too. A failed handover (after MLflow's own
        retries) raises: stop early rather than train for hours into a run that is missing
        its metrics."""
        from mlflow.exceptions import MlflowException

        assert self._client is not None
        sent, self._sent = self._sent, None
        points, self._buffer = self._buffer, []
        self._last_flush = time.monotonic()
        try:
            if sent is not None:
                sent.wait()
            if points:
                self._sent = self._client.log_batch(self.run_id, metrics=points, synchronous=False)
            if last and self._sent is not None:
                self._sent.wait()
        except MlflowException as exc:
            raise TrackingError(failure(
                f"MLflow tracking store {masked(self.uri)}: could not log metrics to run "
                f"{self.run_id}", self.uri, exc)) from exc  # fmt: skip

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file (or a directory's files) to the run, now."""
        from mlflow.exceptions import MlflowException

        assert self._client is not None, "log_artifact outside `with TrainingRun(...)`"
        path = Path(path)
        if not path.exists():
            raise TrackingError(f"{path}: expected a file to log as an artifact; found none")
        try:
            if path.is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)
        except (MlflowException, OSError) as exc:
            raise TrackingError(failure(
                f"MLflow run {self.run_id}: could not log artifact {path}", self.uri, exc
            )) from exc

    def __exit__(self, exc_type, exc, tb) -> None:
        # log what is buffered and wait until MLflow has; the first failure wins
        error: TrackingError | None = None
        try:
            self._flush(last=True)
        except TrackingError as log_error:
            error = log_error
        if self.system_metrics is not None and error is None:
            self.system_metrics.finish()  # its last samples, before the run ends
        # after a failed flush it is not waited for: a daemon thread, it stops at its next
        # sample, when it finds the run ended or the server gone
        if exc_type is None:
            status = "FINISHED" if error is None else "FAILED"
        else:
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        terminate_error = self._terminate(status)
        error = error or terminate_error
        if error is None:
            if exc_type is None:
                self._write_record()
                if self.uri.startswith(("http://", "https://")):
                    route = f"experiments/{self.experiment_id}/runs/{self.run_id}"
                    log.info("MLflow run %s: %s", self.run_name, ui_url(self.uri, route))
            return
        if exc_type is None:
            raise error
        # the training error propagates; the tracking one is only reported
        log.warning("%s", error)

    def _write_record(self) -> None:
        """mlflow_run.json, once the run has ended FINISHED: evaluate and register never read
        the record of a failed or killed run (a resume finds the run id in its checkpoint)."""
        write_json(
            self.record_path,
            {
                "run_id": self.run_id,
                "tracking_uri": masked(self.uri),  # what names the store, no password
                "experiment_id": self.experiment_id,
                "run_name": self.run_name,
            },
        )

    def end_orphan(self, run_id: str, resumed: bool = True) -> None:
        """The run a killed process (kill -9, a lost machine) left RUNNING, named by the
        checkpoint it left: marked KILLED and, when this run goes on from that checkpoint
        (`resumed`), named in this run's tag TAG_RESUMED_FROM. A run that is gone or already
        ended is left as it is."""
        from mlflow.exceptions import MlflowException

        assert self._client is not None
        if run_id == self.run_id:
            return
        if resumed:
            try:
                self._client.set_tag(self.run_id, TAG_RESUMED_FROM, run_id)
            except MlflowException as exc:
                log.warning("could not tag run %s as resumed from %s (%s)", self.run_id,
                            run_id, exception_text(exc))  # fmt: skip
        end_if_running(self._client, run_id, "KILLED")

    def _terminate(self, status: str) -> TrackingError | None:
        """End the run with `status`; return (not raise) what went wrong."""
        from mlflow.exceptions import MlflowException

        assert self._client is not None
        try:
            self._client.set_terminated(self.run_id, status=status)
        except (MlflowException, OSError) as exc:
            return TrackingError(
                f"MLflow tracking store {masked(self.uri)}: could not end run {self.run_id} "
                f"as {status} ({exception_text(exc)})"
            )
        return None
