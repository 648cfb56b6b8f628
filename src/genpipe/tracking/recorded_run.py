"""A finished training run, reopened by the evaluate stage to add its evaluation: the run
that models/<model>/mlflow_run.json names, found in the current tracking store. An
evaluation's metrics become points, except the keys that describe the evaluation rather
than the model (the real-data floor, counts), which become tags."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genpipe.errors import TrackingError, exception_text
from genpipe.metrics.keys import EVAL_PREFIX, EVALUATION_CONSTANTS
from genpipe.tracking.describe import TAG_NOTE, with_evaluation
from genpipe.tracking.flatten import flatten, flatten_metrics
from genpipe.tracking.store import (
    check_tracking_server,
    failure,
    import_mlflow,
    masked,
    store_error,
    tracking_uri,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    from genpipe.tracking.datasets import DataInput

log = logging.getLogger(__name__)


def evaluation_points(metrics: dict[str, Any], ms: int = 0) -> tuple[list[Metric], list[RunTag]]:
    """An evaluation's `metrics` (metrics.json, nested) as its run holds them: numeric leaves
    as points `eval/<dotted key>` at step 0 and time `ms`; the keys that describe the
    evaluation rather than the model (EVALUATION_CONSTANTS: the real-data floor, counts) as
    tags of the same names."""
    from mlflow.entities import Metric, RunTag

    points = [Metric(f"{EVAL_PREFIX}{key}", value, ms, 0)
              for key, value in flatten_metrics(metrics).items()
              if not key.startswith(EVALUATION_CONSTANTS)]  # fmt: skip
    tags = [RunTag(f"{EVAL_PREFIX}{key}", str(value)) for key, value in flatten(metrics).items()
            if key.startswith(EVALUATION_CONSTANTS)]  # fmt: skip
    return points, tags


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
                    f"{masked(self.uri)}; it is not there (retrain to record a new run: "
                    f"`dvc repro --force` the train stage)"
                ) from None
            raise TrackingError(failure(
                f"MLflow tracking store {masked(self.uri)}: could not read run {self.run_id}",
                self.uri, exc)) from exc  # fmt: skip
        if run.info.lifecycle_stage == "deleted":
            raise TrackingError(
                f"{self.record_path}: MLflow run {self.run_id} in {masked(self.uri)} is deleted; "
                f"restore it (mlflow runs restore --run-id {self.run_id}) or retrain"
            )
        return self

    def log(self, metrics: dict[str, Any], artifacts: list[Path], *,
            inputs: Sequence[DataInput] = (), summary: str | None = None) -> None:  # fmt: skip
        """An evaluation: its metrics (evaluation_points: eval/<key> points, the
        evaluation's constants as tags) and its files under the artifact folder "eval".
        `inputs`: the datasets it was evaluated on; `summary`: how it did, in the run's
        description (replacing an earlier one)."""
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

        if self.missing:
            log.warning("run %s is not on %s: not logged (the register stage rebuilds it)",
                        self.run_id, self.uri)  # fmt: skip
            return
        assert self._client is not None, "RecordedRun.log before open()"
        points, tags = evaluation_points(metrics, int(time.time() * 1000))
        try:
            if summary is not None:
                note = self._client.get_run(self.run_id).data.tags.get(TAG_NOTE, "")
                tags.append(RunTag(TAG_NOTE, with_evaluation(note, summary)))
            self._client.log_batch(self.run_id, metrics=points, tags=tags)  # MLflow splits it
            if inputs:
                self._client.log_inputs(self.run_id, [i.entity() for i in inputs])
            for path in artifacts:
                self._client.log_artifact(self.run_id, str(path), EVAL_PREFIX.rstrip("/"))
        except (MlflowException, OSError) as exc:
            raise TrackingError(failure(
                f"MLflow tracking store {masked(self.uri)}: could not log to run {self.run_id}",
                self.uri, exc)) from exc  # fmt: skip
