"""A registered model's versions and the logged models behind them: one version per weights
(found by the weights' SHA-256 tag, kept one under a race), the pyfunc model logged from the
DVC-cached weights to the training run's logged models (MLflow 3: created with the run as
its source, the finished run untouched), and its files logged again when the artifact store
has lost them.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from genpipe import models
from genpipe.errors import exception_text
from genpipe.fileio import sha256_files
from genpipe.metrics.keys import EVAL_PREFIX
from genpipe.tracking.lineage import TAG_WEIGHTS

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # the logged model's name
WEIGHTS = Path("artifacts") / "weights"  # in a downloaded model: its "weights" artifact
REQUIREMENTS = ["torch", "numpy", "pandas", "safetensors"]  # the model's, besides MLflow


def weights_sha256(weights_dir: Path) -> str:
    """SHA-256 over the names and bytes of the weights directory's files, in name order."""
    files = sorted(p for p in Path(weights_dir).iterdir() if p.is_file())
    return sha256_files(files, root=Path(weights_dir))


def of_weights(client: Any, name: str, weights: str) -> list[Any]:
    """The versions of `name` tagged with these weights (MLflow's tag filter)."""
    return list(client.search_model_versions(
        f"name = '{name}' AND tags.`{TAG_WEIGHTS}` = '{weights}'"))  # fmt: skip


def version_of_weights(client: Any, name: str, run_id: str, weights: str) -> Any | None:
    """The version of these very weights, the run's own first: another run's when a
    retraining reproduced them bitwise (same params, data and code on the CPU), the same
    model. A version of this run with other weights (replaced under the same run) is not
    theirs: they get a new version."""
    versions = of_weights(client, name, weights)
    of_run = [v for v in versions if v.run_id == run_id]
    return min(of_run or versions, key=lambda v: int(v.version)) if versions else None


def one_version_of_weights(client: Any, name: str, version: Any, weights: str) -> Any:
    """One version per weights, under a race too: two registers of the same weights at
    once (two CI jobs) both find none and both create one, as MLflow's registry has no lock.
    The version tags name the weights from creation on, so the later creator sees the
    earlier version: the lowest version wins, and this pass deletes its own if it lost
    (with the model it logged for it, if no version uses it)."""
    first = min(of_weights(client, name, weights), key=lambda v: int(v.version), default=version)
    if int(first.version) >= int(version.version):
        return version
    log.warning("%s: v%s holds these weights already (a register at the same time made it); "
                "deleting v%s", name, first.version, version.version)  # fmt: skip
    client.delete_model_version(name, version.version)
    model_id = logged_model_id(version)
    if model_id is not None and model_id != logged_model_id(first):
        from mlflow.exceptions import MlflowException

        try:
            client.delete_logged_model(model_id)
        except MlflowException as exc:  # left in the run: it holds no version
            log.debug("logged model of v%s kept: %s", version.version, exception_text(exc))
    return first


def log_and_register(mlflow: Any, client: Any, run_id: str, name: str, model: str,
                     weights_dir: Path, tags: dict[str, str]) -> Any:  # fmt: skip
    """The pyfunc model logged with the run as its source (or the one a register that failed
    before registering it left there), then a new version of `name` in the client's
    registry, READY and tagged."""
    from mlflow.exceptions import MlflowException

    weights = {TAG_WEIGHTS: tags[TAG_WEIGHTS]}
    model_id = logged_model_left(client, run_id, tags[TAG_WEIGHTS])
    if model_id is None:
        model_id = log_model(mlflow, client, run_id, model, weights_dir, weights)
    else:
        log.info("%s: registering logged model %s, which an earlier register logged but did "
                 "not register", name, model_id)  # fmt: skip
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # waits until the version is READY (MlflowClient's await_creation_for)
    return client.create_model_version(name, f"models:/{model_id}", run_id=run_id, tags=tags,
                                       model_id=model_id)  # fmt: skip


def log_model(mlflow: Any, client: Any, run_id: str, model: str, weights_dir: Path,
              tags: dict[str, str]) -> str:  # fmt: skip
    """A logged model of the training run `run_id`, without reopening the run (its status
    stays what training left): created with the run as its source and its params, linked to
    the run as an output with the run's evaluation figures, its files saved from the
    DVC-cached weights and uploaded, then READY (FAILED if any of that fails). Returns its
    id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model

    run = client.get_run(run_id)
    logged = client.create_logged_model(run.info.experiment_id, MODEL_ARTIFACT,
                                        source_run_id=run_id, tags=tags,
                                        params=dict(run.data.params))  # fmt: skip
    try:
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        # the figures evaluate logged (step 0), on the model too: its page and searches
        figures = [Metric(key, value, 0, 0, model_id=logged.model_id, run_id=run_id)
                   for key, value in run.data.metrics.items()
                   if key.startswith(EVAL_PREFIX)]  # fmt: skip
        if figures:
            client.log_batch(run_id, metrics=figures)
        meta = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                     run_id=run_id, model_id=logged.model_id)  # fmt: skip
        upload(mlflow, client, logged.model_id, model, weights_dir, meta)
    except BaseException:
        with contextlib.suppress(Exception):  # the error in flight is the one to report
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id


def upload(mlflow: Any, client: Any, model_id: str, model: str, weights_dir: Path,
           meta: Any = None) -> None:  # fmt: skip
    """The pyfunc model's files, saved from the DVC-cached weights into a temporary folder,
    uploaded to logged model `model_id`."""
    with tempfile.TemporaryDirectory(prefix="genpipe-model-") as tmp:
        path = Path(tmp) / MODEL_ARTIFACT
        mlflow.pyfunc.save_model(path=str(path), mlflow_model=meta,
                                 **pyfunc(mlflow, model, weights_dir))  # fmt: skip
        client.log_model_artifacts(model_id, str(path))


def logged_model_left(client: Any, run_id: str, weights: str) -> str | None:
    """A READY logged model of these weights in the run, with its files, that no version was
    registered from: what a register that failed between logging and registering left."""
    from mlflow.exceptions import MlflowException

    try:
        experiment = client.get_run(run_id).info.experiment_id
        found = client.search_logged_models(
            [experiment], f"source_run_id = '{run_id}' AND tags.`{TAG_WEIGHTS}` = '{weights}'"
        )
    except MlflowException as exc:  # a store that cannot search them: log a new one
        log.debug("no search of logged models: %s", exception_text(exc))
        return None
    for logged in found:
        ready = str(getattr(logged, "status", "")).upper().endswith("READY")
        if ready and files_gone(client, logged) is None:
            return logged.model_id
    return None


def pyfunc(mlflow: Any, model: str, weights_dir: Path) -> dict[str, Any]:
    """The pyfunc model of the DVC-cached weights, as save_model takes it: the served code
    (serving.py, models from code: no pickle) with the genpipe package, the weights as its
    artifact, and the signature the model's package gives."""
    import genpipe

    signature, example = models.get(model).artifact().signature(weights_dir)
    package = Path(genpipe.__file__).parent
    return {
        "python_model": str(package / "serving.py"),
        "code_paths": [str(package)],
        "artifacts": {"weights": str(weights_dir)},
        "signature": signature,
        "input_example": example,
        "pip_requirements": REQUIREMENTS + [f"mlflow=={mlflow.__version__}"],
    }


def logged_model_id(version: Any) -> str | None:
    """The id of the logged model a version was registered from (MLflow 3: its source is
    models:/<model id>), or of a logged model itself; None for a version registered
    otherwise."""
    model_id = getattr(version, "model_id", None)
    source = str(getattr(version, "source", "") or "")
    if not model_id and source.startswith("models:/m-"):
        model_id = source.removeprefix("models:/").split("/", 1)[0]
    return model_id or None


def files_gone(client: Any, version: Any) -> str | None:
    """Why the version's model files are not in the artifact store (a store that lost them,
    a lifecycle rule), or None when its MLmodel is there (or it was not logged by genpipe).
    A store that cannot be listed raises: a server's passing fault is not a loss."""
    model_id = logged_model_id(version)
    if model_id is None:
        return None
    names = {Path(f.path).name for f in client.list_logged_model_artifacts(model_id)}
    return None if "MLmodel" in names else "its files are gone from the artifact store"


def repair(mlflow: Any, client: Any, name: str, version: Any, model: str,
           weights_dir: Path) -> None:  # fmt: skip
    """Log the files of a version of these very weights again, from the DVC-cached weights,
    to the logged model it was registered from, when the artifact store has lost them."""
    why = files_gone(client, version)
    if why is None:
        return
    upload(mlflow, client, logged_model_id(version), model, weights_dir)
    log.warning("%s v%s: %s; logged again from %s", name, version.version, why,
                weights_dir)  # fmt: skip
