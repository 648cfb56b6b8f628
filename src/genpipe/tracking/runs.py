"""MLflow runs for the training stages: params, per-step metrics, artifacts and lineage.

One ``TrainingRun`` per training stage. Its ``__enter__`` fails fast with one line
(``TrackingError``) when the tracking store cannot be used, before any training work.
Metrics are buffered in memory and handed every FLUSH_SECONDS to MLflow's async logging
(``log_batch(..., synchronous=False)``), so ``log_metrics`` never waits on sqlite or the
network; ``__exit__`` waits until MLflow has logged what is left and ends the run.
``RecordedRun`` reopens a finished training run for the evaluate stage.

Each model has an experiment of its own, ``<train.experiment>-<model>`` (its FID is not
the other's), tagged for MLflow's model-training view.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genpipe.errors import TrackingError, exception_text
from genpipe.fileio import write_json
from genpipe.tracking.lineage import (
    EXPERIMENT_KIND,
    TAG_EXPERIMENT_KIND,
    TAG_RECIPE,
    TAG_RESUMED_FROM,
    dvc_exp_name,
    experiment_name,
    git_info,
    recipe_id,
    run_name,
    run_tags,
)
from genpipe.tracking.store import (
    check_tracking_server,
    failure,
    import_mlflow,
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

# MLflow's limit (mlflow.utils.validation): longer param values are truncated by us.
# Its limits on a batch (100 params, 1000 metrics) MlflowClient.log_batch keeps itself:
# it splits what it is given into batches the server accepts.
PARAM_VALUE_MAX = 6000

TAG_NOTE = "mlflow.note.content"  # the run page's description, Markdown
EVALUATED = "\n\n**Evaluated:** "  # where a run's description says how it did

# buffered metrics are handed to MLflow's async logging this often while training: one
# write a handover (about 10 ms of CPU on sqlite), not one a log_metrics call
FLUSH_SECONDS = 5.0


log = logging.getLogger(__name__)


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if missing, tagged as model training (an
    existing one that lacks the tag gets it). A deleted one is a TrackingError: MLflow
    would refuse runs in it, and a new one cannot take its name."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # another stage created it in the meantime
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment '{name}' in {client.tracking_uri} is deleted; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
            "or set train.experiment to another prefix"
        )
    if TAG_EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return experiment.experiment_id


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    """Nested params (flatten_params) to the run, now; MlflowClient.log_batch splits them
    into batches of MLflow's limit (100 a batch)."""
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, v) for k, v in flatten_params(params).items()])


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The leaves of nested dicts under dotted keys ({"a": {"b": 1}} -> {"a.b": 1}); an
    empty dict is a leaf, so its key still shows."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flatten_params(params: dict) -> dict[str, str]:
    """Nested params as MLflow params: dotted keys, str() values, None as 'null'.

    Lists are kept whole ("['gan', 'autoencoder']"); an empty mapping is kept as '{}'.
    Values are cut to MLflow's limit of 6000 characters.
    """
    return {
        key: ("null" if value is None else str(value))[:PARAM_VALUE_MAX]
        for key, value in flatten(params).items()
    }


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric leaves of nested metrics under dotted keys; other values are left out."""
    return {
        key: float(value)
        for key, value in flatten(metrics).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


# the params a run's description names, beside train.batch_size and the seed (all of them
# are on the run's Parameters tab)
KEY_PARAMS = {
    "gan": ("steps", "loss", "lr_g", "lr_d", "width", "z_dim", "conditional"),
    "autoencoder": ("kind", "steps", "lr", "width", "latent_dim"),
}


def describe_training(model: str, params: dict[str, Any], dataset: DataInput) -> str:
    """A run's description (Markdown) at the start: what it trains, on what, with which key
    params. `params` is what the run logs (params.run_params)."""
    profile = dataset.profile
    shape = "×".join(str(n) for n in profile.get("image_shape", []))
    key = [f"`{model}.{k}={params[model][k]}`" for k in KEY_PARAMS.get(model, ())
           if k in params.get(model, {})]  # fmt: skip
    key += [f"`train.batch_size={params['train']['batch_size']}`", f"`seed={params['seed']}`"]
    return (
        f"**{model}** trained on **{dataset.name}**: {profile.get('images')} train images "
        f"of {shape}, {profile.get('num_classes')} classes (DVC digest `{dataset.digest}`)."
        f"\n\nKey params: {', '.join(key)}."
    )


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


def end_if_running(run_id: str, status: str, uri: str | None = None) -> bool:
    """End run `run_id` with `status` if it is still RUNNING (its process killed); True if it
    was. A run that is gone, or a store that cannot be reached, is left as it is."""
    from mlflow.exceptions import MlflowException

    mlflow = import_mlflow()
    try:
        client = mlflow.MlflowClient(tracking_uri=uri or tracking_uri())
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, status=status)
    except (MlflowException, OSError) as exc:
        log.warning("could not end run %s as %s (%s)", run_id, status, exception_text(exc))
        return False
    log.info("run %s, left RUNNING by a killed process, is marked %s", run_id, status)
    return True


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
                f"MLflow tracking store {self.uri}: could not start a run in experiment "
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
                f"MLflow tracking store {self.uri}: could not log metrics to run "
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
                "tracking_uri": self.uri,
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
        try:
            if resumed:
                self._client.set_tag(self.run_id, TAG_RESUMED_FROM, run_id)
            if self._client.get_run(run_id).info.status == "RUNNING":
                self._client.set_terminated(run_id, status="KILLED")
                log.info("run %s, left RUNNING by a killed process, is marked KILLED", run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # another store: nothing to end
                log.warning("could not end run %s as KILLED (%s)", run_id, exception_text(exc))

    def _terminate(self, status: str) -> TrackingError | None:
        """End the run with `status`; return (not raise) what went wrong."""
        from mlflow.exceptions import MlflowException

        assert self._client is not None
        try:
            self._client.set_terminated(self.run_id, status=status)
        except (MlflowException, OSError) as exc:
            return TrackingError(
                f"MLflow tracking store {self.uri}: could not end run {self.run_id} "
                f"as {status} ({exception_text(exc)})"
            )
        return None


class RecordedRun:
    """A finished training run, reopened from the mlflow_run.json its stage wrote, so a later
    stage (evaluate) adds its metrics and images to it. Logging does not change the run's
    status. The run is looked up in the current tracking store (tracking_uri()), as the
    register stage looks it up.
    """

    def __init__(self, record_path: Path, uri: str | None = None) -> None:
        self.record_path = Path(record_path)
        self.uri = uri or tracking_uri()
        try:
            record = json.loads(self.record_path.read_text())
            self.run_id = str(record["run_id"])
            str(record["tracking_uri"])  # a record without it is not one the train stage wrote
        except FileNotFoundError:
            raise TrackingError(
                f"{record_path}: expected the training stage's MLflow run record; found no "
                "such file (run `dvc repro` for the train stage)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise TrackingError(
                f"{record_path}: expected JSON with run_id and tracking_uri; "
                f"found {exception_text(exc)}"
            ) from None
        self._client: MlflowClient | None = None
        self.missing = False  # open(missing_ok=True) found no such run

    def open(self, missing_ok: bool = False) -> RecordedRun:
        """Check, before any work, that the store answers and still holds the run. A run
        that is not there is an error; with `missing_ok` (a fresh tracking server: the
        register stage rebuilds the run from the DVC outputs) `log` then only warns."""
        check_tracking_server(self.uri)
        mlflow = import_mlflow()
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        try:
            self._client = mlflow.MlflowClient(tracking_uri=self.uri)
            run = self._client.get_run(self.run_id)
        except SQLAlchemyError as exc:
            raise store_error(self.uri, exc) from None
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                if missing_ok:
                    self.missing = True
                    return self
                raise TrackingError(
                    f"{self.record_path}: expected run {self.run_id} in the MLflow store "
                    f"{self.uri}; it is not there (retrain to record a new run: "
                    f"`dvc repro --force` the train stage)"
                ) from None
            raise TrackingError(failure(
                f"MLflow tracking store {self.uri}: could not read run {self.run_id}",
                self.uri, exc)) from exc  # fmt: skip
        if run.info.lifecycle_stage == "deleted":
            raise TrackingError(
                f"{self.record_path}: MLflow run {self.run_id} in {self.uri} is deleted; "
                f"restore it (mlflow runs restore --run-id {self.run_id}) or retrain"
            )
        return self

    def log(self, metrics: dict[str, Any], artifacts: list[Path], prefix: str, *,
            constants: tuple[str, ...] = (), inputs: Sequence[DataInput] = (),
            summary: str | None = None) -> None:  # fmt: skip
        """Metrics (nested dicts flattened with dots) as `prefix` + key at step 0, and the
        files under the artifact folder `prefix` without its trailing slash. Keys that start
        with one of `constants` (they describe the evaluation, not the model: the real-data
        floor, counts) are tags, not metric charts. `inputs`: the datasets it was evaluated
        on; `summary`: how it did, in the run's description (replacing an earlier one)."""
        from mlflow.entities import Metric, RunTag
        from mlflow.exceptions import MlflowException

        if self.missing:
            log.warning("run %s is not on %s: not logged (the register stage rebuilds it)",
                        self.run_id, self.uri)  # fmt: skip
            return
        assert self._client is not None, "RecordedRun.log before open()"
        ms = int(time.time() * 1000)
        flat = flatten_metrics(metrics)
        points = [Metric(f"{prefix}{key}", value, ms, 0) for key, value in flat.items()
                  if not key.startswith(constants)]  # fmt: skip
        tags = [RunTag(f"{prefix}{key}", str(value)) for key, value in flatten(metrics).items()
                if key.startswith(constants)]  # fmt: skip
        try:
            if summary is not None:
                note = self._client.get_run(self.run_id).data.tags.get(TAG_NOTE, "")
                tags.append(RunTag(TAG_NOTE, note.split(EVALUATED, 1)[0] + EVALUATED + summary))
            self._client.log_batch(self.run_id, metrics=points, tags=tags)  # MLflow splits it
            if inputs:
                self._client.log_inputs(self.run_id, [i.entity() for i in inputs])
            for path in artifacts:
                self._client.log_artifact(self.run_id, str(path), prefix.rstrip("/") or None)
        except (MlflowException, OSError) as exc:
            raise TrackingError(failure(
                f"MLflow tracking store {self.uri}: could not log to run {self.run_id}",
                self.uri, exc)) from exc  # fmt: skip
