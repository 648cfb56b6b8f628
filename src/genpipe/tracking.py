"""MLflow runs for the training stages: params, per-step metrics, artifacts and lineage.

One ``TrainingRun`` per training stage. Its ``__enter__`` fails fast with one line
(``TrackingError``) when the tracking store cannot be used, before any training work.
Metrics are buffered in memory and handed every FLUSH_SECONDS to MLflow's async logging
(``log_batch(..., synchronous=False)``), so ``log_metrics`` never waits on sqlite or the
network; ``__exit__`` waits until MLflow has logged what is left and ends the run.

Each model has an experiment of its own, ``<train.experiment>-<model>`` (its FID is not
the other's), tagged for MLflow's model-training view.

The store is ``sqlite:///mlflow.db`` at the repo root unless ``MLFLOW_TRACKING_URI``
points at a team server.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from genpipe.errors import GenpipeError, exception_text
from genpipe.fileio import write_json

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.utils.async_logging.run_operations import RunOperations

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # at the repo root (stages run there)

# MLflow's limit (mlflow.utils.validation): longer param values are truncated by us.
# Its limits on a batch (100 params, 1000 metrics) MlflowClient.log_batch keeps itself:
# it splits what it is given into batches the server accepts.
PARAM_VALUE_MAX = 6000

# buffered metrics are handed to MLflow's async logging this often while training: one
# write a handover (about 10 ms of CPU on sqlite), not one a log_metrics call
FLUSH_SECONDS = 5.0

# MLflow 3's UI opens an experiment in the view this experiment tag names (the UI's
# ExperimentKind): "custom_model_development" is "Machine learning" (runs, metric
# charts); untagged experiments may open in the GenAI view (traces, judges, prompts).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# tag keys
TAG_MODEL = "genpipe.model"
TAG_GIT_COMMIT = "git.commit"
TAG_GIT_DIRTY = "git.dirty"
TAG_DATA_HASH = "data.hash"
TAG_DVC_EXP = "dvc.exp_name"
TAG_RESUMED_FROM = "genpipe.resumed_from_run_id"  # the killed run a resumed one goes on from

log = logging.getLogger(__name__)


class TrackingError(GenpipeError):
    """The MLflow tracking store cannot be used (unreachable, malformed URI, failed write)."""


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI if set (and not empty), else DEFAULT_TRACKING_URI."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


_USE_DEFAULT = f"unset MLFLOW_TRACKING_URI to use {DEFAULT_TRACKING_URI}"


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when `uri` cannot be a working tracking store.

    http(s): GET {uri}/health must answer within `timeout` seconds (a 5xx answer fails too).
    sqlite: the database file's directory must exist (MLflow would silently create it,
    which turns a typo into a new, empty store). Other schemes are left to MLflow.
    """
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri)


def _check_http(uri: str, timeout: float) -> None:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError as exc:
        raise TrackingError(f"MLflow tracking URI {uri!r} is malformed ({exc})") from None
    if not parts.hostname:
        raise TrackingError(
            f"MLflow tracking URI {uri!r} is malformed; expected http(s)://host[:port][/path]"
        )
    url = uri.rstrip("/") + "/health"
    try:
        context = _ssl_context(parts.scheme)  # may fail on a bad certificate path
        with urllib.request.urlopen(url, timeout=timeout, context=context):
            return
    except urllib.error.HTTPError as exc:
        exc.close()
        # 401/403/404: something answers (auth, a proxy); the API calls that follow decide
        if exc.code < 500:
            return
        reason = f"HTTP {exc.code} on /health"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = _unreachable_reason(exc, timeout)
    raise TrackingError(
        f"MLflow tracking server {uri} is unreachable ({reason}); start it or {_USE_DEFAULT}"
    )


def _unreachable_reason(exc: BaseException, timeout: float) -> str:
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return f"no answer within {timeout:g} s"
    if isinstance(cause, ssl.SSLError):
        return f"TLS error: {getattr(cause, 'reason', None) or cause}"
    if isinstance(cause, socket.gaierror):
        return "host not found"
    return " ".join(str(cause).split()) or type(cause).__name__


def _ssl_context(scheme: str) -> ssl.SSLContext | None:
    """TLS as MLflow's own client would do it, from the same environment variables."""
    if scheme != "https":
        return None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        return ssl._create_unverified_context()  # the user opted out of verification
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
    if client_cert := os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        context.load_cert_chain(client_cert)
    return context


def _check_sqlite(uri: str) -> None:
    if uri in ("sqlite://", "sqlite:///:memory:"):
        return
    if not uri.startswith("sqlite:///"):
        raise TrackingError(
            f"MLflow tracking URI {uri!r} is malformed; expected sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if not db.parent.is_dir():
        raise TrackingError(
            f"MLflow tracking store {uri}: directory {db.parent} does not exist; "
            f"create it or {_USE_DEFAULT}"
        )


def git_info(repo: Path = Path(".")) -> dict[str, str]:
    """{"commit", "short", "dirty"} of the checkout at `repo`; never raises.

    No git or not a repository: commit "unknown", short "nogit", dirty "unknown".
    dirty is "true" when a tracked file differs from HEAD; dvc.lock does not count,
    since `dvc repro` rewrites it as stages finish.
    """
    unknown = {"commit": "unknown", "short": "nogit", "dirty": "unknown"}
    commit = _git(repo, "rev-parse", "--verify", "HEAD")
    if commit is None:
        return unknown
    status = _git(
        repo, "status", "--porcelain", "--untracked-files=no", "--", ".",
        ":(exclude,glob)**/dvc.lock",
    )  # fmt: skip
    dirty = "unknown" if status is None else str(bool(status)).lower()
    return {"commit": commit, "short": commit[:7], "dirty": dirty}


def _git(repo: Path, *args: str) -> str | None:
    """stdout of `git -C repo args`, stripped; None when git is missing or fails."""
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def run_name(model: str, short_sha: str, exp_name: str | None) -> str:
    """'gan-3f2a1bc-clean-hake' (model, commit, DVC experiment); 'gan-3f2a1bc' without one."""
    return "-".join(part for part in (model, short_sha, exp_name) if part)


def experiment_name(prefix: str, model: str) -> str:
    """'genpipe-gan': each model's runs in an experiment of their own (train.experiment is
    the prefix), so a chart of eval/fid never puts one model's beside the other's."""
    return f"{prefix}-{model}"


def dvc_exp_name() -> str | None:
    """The DVC experiment this stage runs in (`dvc exp run` sets $DVC_EXP_NAME), if any."""
    return os.environ.get("DVC_EXP_NAME") or None


def run_tags(model: str, data_hash: str, git: dict[str, str]) -> dict[str, str]:
    """The tags of a genpipe training run: model, lineage (git, data, DVC experiment) and
    MLflow's own source and user tags. `git` is git_info()'s."""
    tags = {
        TAG_MODEL: model,
        TAG_GIT_COMMIT: git["commit"],
        TAG_GIT_DIRTY: git["dirty"],
        TAG_DATA_HASH: data_hash,
        "mlflow.source.type": "LOCAL",
    }
    if exp_name := dvc_exp_name():
        tags[TAG_DVC_EXP] = exp_name
    if git["commit"] != "unknown":
        tags["mlflow.source.git.commit"] = git["commit"]
    if user := _user():
        tags["mlflow.user"] = user
    return tags


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


# MLflow's own HTTP client settings, where the user has set none: MLflow's defaults (7
# retries with backoff from 2 s, 120 s a request) keep a stage waiting on a broken server
# for minutes; these fail a call within about 30 s (3 tries 8 s each at worst, 2 to 4 s of
# backoff between them) and still ride out a restart of a few seconds.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # an int to MLflow
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
}


def bound_http_calls() -> None:
    """Set HTTP_DEFAULTS in the environment (MLflow reads them at each call) where unset, and
    say each retry as a line: a person waiting on a failing server sees why."""
    for key, value in HTTP_DEFAULTS.items():
        if not os.environ.get(key):
            os.environ[key] = value
    retry_log = logging.getLogger("urllib3.util.retry")
    if not any(isinstance(h, _RetryLine) for h in retry_log.handlers):
        retry_log.addHandler(_RetryLine())
        retry_log.setLevel(logging.DEBUG)
        retry_log.propagate = False  # its other debug lines stay unseen


class _RetryLine(logging.Handler):
    """urllib3 notes each retry at DEBUG ("Incremented Retry for (url=...): Retry(total=N,
    ...)"); this says it as one genpipe warning."""

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith("Incremented Retry") or len(record.args or ()) != 2:
            return
        url, retry = record.args  # type: ignore[misc]
        cause = getattr(retry, "history", None) and retry.history[-1]
        why = f"HTTP {cause.status}" if cause and cause.status else "no answer"
        left = getattr(retry, "total", None)
        log.warning("MLflow server: %s failed (%s); retrying (%s left)",
                    str(url).split("?", 1)[0], why, left)  # fmt: skip


def store_error(uri: str, exc: BaseException) -> TrackingError | None:
    """The one-line error for a tracking store that cannot be read at all (a corrupt sqlite
    file: SQLAlchemy's DatabaseError), or None when `exc` is not that."""
    from sqlalchemy.exc import SQLAlchemyError

    if not isinstance(exc, SQLAlchemyError):
        return None
    cause = getattr(exc, "orig", None) or exc
    if uri.startswith("sqlite:///") and uri not in ("sqlite:///:memory:",):
        db = uri.removeprefix("sqlite:///").split("?", 1)[0]
        return TrackingError(
            f"MLflow tracking store {db} is not a usable SQLite database "
            f"({exception_text(cause)}); "
            f"move it aside (`mv {db} {db}.corrupt`) to start a new store: the register "
            "stages rebuild the runs from the DVC outputs"
        )
    return TrackingError(f"MLflow tracking store {uri}: database error ({exception_text(cause)})")


def import_mlflow() -> Any:
    """Import MLflow (slow: about 2 s) only when a run starts; keep its INFO lines quiet and
    its HTTP calls bounded (bound_http_calls)."""
    bound_http_calls()
    import mlflow

    # MLflow sets its own logger to INFO on import (first sqlite use logs migrations);
    # an explicit MLFLOW_LOGGING_LEVEL still wins.
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # its async logging logs each failed batch; TrainingRun raises them as one TrackingError
    logging.getLogger("mlflow.utils.async_logging.async_logging_queue").setLevel(logging.CRITICAL)
    return mlflow


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
    ) -> None:
        self.model = model
        self.params = params
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
        self.run_name = run_name(self.model, git["short"], dvc_exp_name())
        try:
            self._client = mlflow.MlflowClient(tracking_uri=self.uri)
            self.experiment_id = get_or_create_experiment(self._client, self.experiment)
            run = self._client.create_run(
                self.experiment_id,
                tags=run_tags(self.model, self.data_hash, git),
                run_name=self.run_name,
            )
            self._run_id = run.info.run_id
            log_params(self._client, self._run_id, self.params)
            # process-wide (and $MLFLOW_TRACKING_URI for subprocesses), once it is known to work
            mlflow.set_tracking_uri(self.uri)
        except (MlflowException, OSError, ImportError, SQLAlchemyError) as exc:
            # ImportError: a database URI whose driver is not installed (postgresql://...)
            if self._run_id is not None:
                self._terminate("FAILED")
            raise store_error(self.uri, exc) or TrackingError(
                f"MLflow tracking store {self.uri}: could not start a run in experiment "
                f"'{self.experiment}' ({exception_text(exc)})"
            ) from exc
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
            raise TrackingError(
                f"MLflow tracking store {self.uri}: could not log metrics to run "
                f"{self.run_id} ({exception_text(exc)})"
            ) from exc

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
            raise TrackingError(
                f"MLflow run {self.run_id}: could not log artifact {path} ({exception_text(exc)})"
            ) from exc

    def __exit__(self, exc_type, exc, tb) -> None:
        # log what is buffered and wait until MLflow has; the first failure wins
        error: TrackingError | None = None
        try:
            self._flush(last=True)
        except TrackingError as log_error:
            error = log_error
        if exc_type is None:
            status = "FINISHED" if error is None else "FAILED"
        else:
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        terminate_error = self._terminate(status)
        error = error or terminate_error
        if error is None:
            if exc_type is None:
                self._write_record()
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


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no $USER (some containers)
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
            raise TrackingError(
                f"MLflow tracking store {self.uri}: could not read run {self.run_id} "
                f"({exception_text(exc)})"
            ) from exc
        if run.info.lifecycle_stage == "deleted":
            raise TrackingError(
                f"{self.record_path}: MLflow run {self.run_id} in {self.uri} is deleted; "
                f"restore it (mlflow runs restore --run-id {self.run_id}) or retrain"
            )
        return self

    def log(self, metrics: dict[str, Any], artifacts: list[Path], prefix: str) -> None:
        """Metrics (nested dicts flattened with dots) as `prefix` + key at step 0, and the
        files under the artifact folder `prefix` without its trailing slash."""
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException

        if self.missing:
            log.warning("run %s is not on %s: not logged (the register stage rebuilds it)",
                        self.run_id, self.uri)  # fmt: skip
            return
        assert self._client is not None, "RecordedRun.log before open()"
        ms = int(time.time() * 1000)
        flat = flatten_metrics(metrics)
        points = [Metric(f"{prefix}{key}", value, ms, 0) for key, value in flat.items()]
        try:
            self._client.log_batch(self.run_id, metrics=points)  # split into batches by MLflow
            for path in artifacts:
                self._client.log_artifact(self.run_id, str(path), prefix.rstrip("/") or None)
        except (MlflowException, OSError) as exc:
            raise TrackingError(
                f"MLflow tracking store {self.uri}: could not log to run {self.run_id} "
                f"({exception_text(exc)})"
            ) from exc
