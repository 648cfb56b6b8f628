"""register@<model>: log the trained model to its MLflow run as a pyfunc model, register a
version of `<register.name_prefix>-<model>`, and let it through the champion gate.

The gate compares the primary metric (FID for the GAN, test MSE for the autoencoder) with
the current `champion` version's. A version better by at least `register.min_improvement`
(relative) becomes `champion` and the old one `previous-champion`; any other gets
`challenger`. Versions evaluated with another backbone or on other data are never compared
(unless `register.force`). Aliases move only after the version is READY and tagged, so no
alias ever points at a half-registered version.

The registry can be rebuilt from DVC outputs: when the run that mlflow_run.json names is not
on the tracking server (a CI runner with a fresh server), a run is created from the params,
train_log.csv, metrics.json and the images, and registered from.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genpipe import tracking
from genpipe.errors import GenpipeError, exception_text

log = logging.getLogger(__name__)

CHAMPION, PREVIOUS_CHAMPION, CHALLENGER = "champion", "previous-champion", "challenger"
ATTEMPTS = 3  # of a register pass, when another register conflicts with it
# errors a second pass cannot mend; any other (a conflicting write, a sqlite lock on the
# server, a dropped connection) is retried: every step of a pass is idempotent
NOT_RETRIED = {"PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_PARAMETER_VALUE", "BAD_REQUEST"}
PRIMARY_METRIC = {"gan": "fid", "autoencoder": "mse"}  # lower is better for both
MODEL_ARTIFACT = "model"
REQUIREMENTS = ["torch", "numpy", "pandas", "safetensors"]  # the model's, besides MLflow

# version tags
TAG_METRIC = "genpipe.metric"  # the primary metric's name
TAG_VALUE = "genpipe.metric_value"
TAG_BACKBONE = "genpipe.backbone"
TAG_PARAMS_HASH = "params.hash"
TAG_SOURCE_RUN = "genpipe.source_run_id"  # on a rebuilt run: the run mlflow_run.json names
TAG_DECISION = "genpipe.decision"  # set once the gate has moved the aliases
TAG_WEIGHTS = "genpipe.weights_sha256"  # of the weights directory: identical models, one version


class RegistryError(GenpipeError):
    """The registry cannot be used or updated (server down, missing outputs, failed call)."""


@dataclass
class Outputs:
    """The DVC outputs register reads for one model."""

    model: str
    weights: Path  # models/<model>/weights: safetensors + config.json
    record: Path  # models/<model>/mlflow_run.json
    metrics: Path  # reports/<model>/metrics.json
    train_log: Path  # reports/<model>/train_log.csv
    images: list[Path]  # sample and evaluation grids
    reference: Path  # data/reference/reference.json: the evaluation backbone
    data_hash: str  # of data/prepared, as training tags it

    @classmethod
    def of(cls, model: str, data_hash: str) -> Outputs:
        reports = Path("reports") / model
        return cls(
            model=model,
            weights=Path("models") / model / "weights",
            record=Path("models") / model / "mlflow_run.json",
            metrics=reports / "metrics.json",
            train_log=reports / "train_log.csv",
            images=[reports / "samples.png", reports / "eval_grid.png"],
            reference=Path("data/reference/reference.json"),
            data_hash=data_hash,
        )


def params_hash(params: dict[str, Any], model: str) -> str:
    """SHA-256 of the params that shape this model: shared ones and its own section."""
    shaping = {k: params[k] for k in ("seed", "data", "train", model, "evaluate") if k in params}
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RegistryError(f"{path}: expected {what}; found no such file") from None
    except ValueError as exc:
        raise RegistryError(f"{path}: expected {what} as JSON; {exception_text(exc)}") from None


def register(
    outputs: Outputs,
    params: dict[str, Any],
    name_prefix: str,
    min_improvement: float,
    force: bool,
    experiment: str,
    uri: str | None = None,
) -> dict[str, Any]:
    """Register the model and run the gate; returns the record for registry.json."""
    uri = uri or tracking.tracking_uri()
    tracking.check_tracking_server(uri)  # before anything: a server that is down changes nothing
    mlflow = tracking.import_mlflow()
    from mlflow.exceptions import MlflowException

    metrics = _read_json(outputs.metrics, "the evaluate stage's metrics")
    reference = _read_json(outputs.reference, "the reference stage's summary")
    record = _read_json(outputs.record, "the train stage's MLflow run record")
    metric = PRIMARY_METRIC[outputs.model]
    if not isinstance(metrics.get(metric), int | float):
        raise RegistryError(
            f"{outputs.metrics}: expected a number under '{metric}'; found "
            f"{metrics.get(metric)!r} (run `dvc repro evaluate@{outputs.model}`)"
        )
    value = float(metrics[metric])
    name = f"{name_prefix}-{outputs.model}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            run_id, version, decision = _register_once(
                mlflow, client, uri, name, outputs, params, metrics, experiment,
                record["run_id"], metric, value, str(reference.get("backbone")),
                min_improvement, force,
            )  # fmt: skip
            aliases = sorted(client.get_model_version(name, version.version).aliases)
            break
        except MlflowException as exc:
            # another register writing the same model at once, say: going again finishes
            # what this pass began
            if exc.error_code not in NOT_RETRIED and attempt < ATTEMPTS:
                log.warning("%s: %s; trying again", name, exception_text(exc))
                time.sleep(random.uniform(0.5, 2.0) * attempt)
                continue
            raise RegistryError(
                f"MLflow registry at {uri}: could not register {name} ({exception_text(exc)})"
            ) from exc
    return {
        "name": name,
        "version": int(version.version),
        "aliases": aliases,
        "run_id": run_id,
        "metric": metric,
        "value": value,
        "backbone": reference.get("backbone"),
        **decision,
    }


def _register_once(
    mlflow: Any,
    client: Any,
    uri: str,
    name: str,
    outputs: Outputs,
    params: dict[str, Any],
    metrics: dict[str, Any],  # metrics.json
    experiment: str,
    source_run_id: str,
    metric: str,
    value: float,
    backbone: str,
    min_improvement: float,
    force: bool,
) -> tuple[str, Any, dict[str, Any]]:
    """One pass: the run (found or rebuilt), its version (found or created), the gate (unless
    an earlier pass decided). Idempotent: a pass cut short is finished by the next."""
    run_id = _find_or_rebuild_run(client, source_run_id, outputs, params, metrics, experiment)
    weights = weights_sha256(outputs.weights)
    version = _version_of_run(client, name, run_id) or _version_of_weights(client, name, weights)
    if version is not None and TAG_DECISION in version.tags:
        log.info("%s: run %s (weights %s...) is already version %s; not registered again",
                 name, run_id, weights[:12], version.version)  # fmt: skip
        decision = {"decision": "already registered", "compared": None,
                    "reason": f"earlier: {version.tags[TAG_DECISION]}"}  # fmt: skip
    else:
        # a version without a decision was cut short before the gate: finish it
        git = tracking.git_info()
        tags = {
            tracking.TAG_GIT_COMMIT: git["commit"],
            tracking.TAG_GIT_DIRTY: git["dirty"],
            tracking.TAG_DATA_HASH: outputs.data_hash,
            TAG_PARAMS_HASH: params_hash(params, outputs.model),
            tracking.TAG_DVC_EXP: os.environ.get("DVC_EXP_NAME", ""),
            TAG_METRIC: metric,
            TAG_VALUE: repr(value),
            TAG_BACKBONE: backbone,
            TAG_WEIGHTS: weights,
        }
        if version is None:
            version = _log_and_register(mlflow, uri, run_id, name, outputs, tags)
        decision = _gate(client, name, version, metric, value, min_improvement, force)
        _reconcile(client, name, min_improvement)
        client.set_model_version_tag(name, version.version, TAG_DECISION,
                                     decision["decision"])  # fmt: skip
    return run_id, version, decision


# --- the run -------------------------------------------------------------------------------


def _find_or_rebuild_run(
    client: Any,
    run_id: str,
    outputs: Outputs,
    params: dict[str, Any],
    metrics: dict[str, Any],
    experiment: str,
) -> str:
    """The run mlflow_run.json names if the server has it, else one rebuilt from the DVC
    outputs (found again, not rebuilt twice, on a second register)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
        return run_id
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        found = client.search_runs(
            [exp.experiment_id], f"tags.`{TAG_SOURCE_RUN}` = '{run_id}'", max_results=1
        )
        if found:
            return found[0].info.run_id
    log.info("run %s is not on the tracking server: rebuilding it from the DVC outputs", run_id)
    return _rebuild_run(client, run_id, outputs, params, metrics, experiment)


def _rebuild_run(
    client: Any,
    source_run_id: str,
    outputs: Outputs,
    params: dict[str, Any],
    metrics: dict[str, Any],
    experiment: str,
) -> str:
    from mlflow.entities import Metric, Param

    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    git = tracking.git_info()
    run = client.create_run(
        exp_id,
        run_name=tracking.run_name(outputs.model, git["short"], os.environ.get("DVC_EXP_NAME")),
        tags={
            tracking.TAG_MODEL: outputs.model,
            tracking.TAG_GIT_COMMIT: git["commit"],
            tracking.TAG_GIT_DIRTY: git["dirty"],
            tracking.TAG_DATA_HASH: outputs.data_hash,
            TAG_SOURCE_RUN: source_run_id,
        },
    )
    run_id = run.info.run_id
    flat = tracking.flatten_params(params)
    batch = [Param(k, v) for k, v in flat.items()]
    for i in range(0, len(batch), tracking.PARAMS_PER_BATCH):
        client.log_batch(run_id, params=batch[i : i + tracking.PARAMS_PER_BATCH])
    points = []
    if outputs.train_log.is_file():
        with outputs.train_log.open() as f:
            for row in csv.DictReader(f):
                step = int(row.pop("step"))
                points += [Metric(k, float(v), 0, step) for k, v in row.items() if v != ""]
    points += [Metric(f"eval/{k}", v, 0, 0) for k, v in tracking.flatten_metrics(metrics).items()]
    for i in range(0, len(points), tracking.METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=points[i : i + tracking.METRICS_PER_BATCH])
    for path in [outputs.train_log, outputs.metrics, *outputs.images]:
        if path.is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id


# --- the version ---------------------------------------------------------------------------


def _version_of_run(client: Any, name: str, run_id: str) -> Any | None:
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _version_of_weights(client: Any, name: str, weights: str) -> Any | None:
    """A version with these very weights: a retraining that reproduced them bitwise (same
    params, data and code on the CPU) is the same model, not a new version."""
    versions = [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if v.tags.get(TAG_WEIGHTS) == weights
    ]
    return min(versions, key=lambda v: int(v.version)) if versions else None


def weights_sha256(weights_dir: Path) -> str:
    """SHA-256 over the names and bytes of the weights directory's files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(weights_dir).iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _log_and_register(
    mlflow: Any,
    uri: str,
    run_id: str,
    name: str,
    outputs: Outputs,
    tags: dict[str, str],
) -> Any:
    """The pyfunc model logged to the run, then a new version of `name`, READY and tagged."""
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    import genpipe

    config = _read_json(outputs.weights / "config.json", "the train stage's network config")
    c, s = config["channels"], config["image_size"]
    images = Schema([TensorSpec(np.dtype(np.uint8), (-1, c, s, s))])  # (N, C, S, S) uint8
    if outputs.model == "gan":  # seeds -> images
        example = pd.DataFrame({"seed": np.array([0, 1], dtype=np.int64)})
        signature = ModelSignature(inputs=Schema([ColSpec("long", "seed")]), outputs=images)
    else:  # images -> their reconstructions
        example = np.zeros((2, c, s, s), dtype=np.uint8)
        signature = ModelSignature(inputs=images, outputs=images)
    package = Path(genpipe.__file__).parent
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(package / "serving.py"),  # models from code: no pickle
            code_paths=[str(package)],
            artifacts={"weights": str(outputs.weights)},
            signature=signature,
            input_example=example,
            pip_requirements=REQUIREMENTS + [f"mlflow=={mlflow.__version__}"],
        )
    return mlflow.register_model(info.model_uri, name, tags=tags)


def _gate(
    client: Any,
    name: str,
    version: Any,
    metric: str,
    value: float,
    min_improvement: float,
    force: bool,
) -> dict[str, Any]:
    """Move the aliases; return the decision and what was compared."""
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        champion = None
    new = int(version.version)
    if champion is not None and int(champion.version) == new:  # a pass finished after its gate
        return {"decision": CHAMPION, "compared": None, "reason": "already champion"}
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, str(new))
        return {"decision": CHAMPION, "compared": None, "reason": "no champion yet"}
    old_tags = champion.tags
    old_value = float(old_tags.get(TAG_VALUE, "inf"))
    compared = {"version": int(champion.version), "value": old_value}
    differs = [
        key
        for key in (TAG_BACKBONE, tracking.TAG_DATA_HASH, TAG_METRIC)
        if old_tags.get(key) != version.tags.get(key)
    ]
    if differs and not force:
        client.set_registered_model_alias(name, CHALLENGER, str(new))
        reason = (
            f"not compared with champion v{champion.version}: {', '.join(differs)} differ "
            "(set register.force to promote anyway)"
        )
        log.warning("%s v%d: %s", name, new, reason)
        return {"decision": CHALLENGER, "compared": compared, "reason": reason}
    better = value <= old_value * (1.0 - min_improvement)
    if better or differs:  # differs here means register.force
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion.version)
        client.set_registered_model_alias(name, CHAMPION, str(new))
        reason = f"{metric} {value:.6g} vs champion v{champion.version}'s {old_value:.6g}"
        return {"decision": CHAMPION, "compared": compared, "reason": reason}
    client.set_registered_model_alias(name, CHALLENGER, str(new))
    reason = (
        f"{metric} {value:.6g} is not better than champion v{champion.version}'s "
        f"{old_value:.6g} by register.min_improvement {min_improvement:g}"
    )
    return {"decision": CHALLENGER, "compared": compared, "reason": reason}


def _reconcile(client: Any, name: str, min_improvement: float) -> None:
    """Undo a race between two register processes: each decided against the champion it
    read, and the last alias write won. Every process ends here after its own writes, so
    the last one to run sees all versions: the best version comparable with the champion
    takes the alias when it beats it as the gate would have required."""
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return
    key = [TAG_BACKBONE, tracking.TAG_DATA_HASH, TAG_METRIC]
    comparable = [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if TAG_VALUE in v.tags and all(v.tags.get(k) == champion.tags.get(k) for k in key)
    ]
    best = min(comparable, key=lambda v: (float(v.tags[TAG_VALUE]), int(v.version)))
    champion_value = float(champion.tags.get(TAG_VALUE, "inf"))
    if best.version != champion.version and float(best.tags[TAG_VALUE]) <= champion_value * (
        1.0 - min_improvement
    ):
        log.warning("%s: v%s beats champion v%s, which a concurrent register set; moving "
                    "the alias", name, best.version, champion.version)  # fmt: skip
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion.version)
        client.set_registered_model_alias(name, CHAMPION, best.version)
