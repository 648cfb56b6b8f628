"""register@<model>: log the trained model to its MLflow run as a pyfunc model, register a
version of `<register.name_prefix>-<model>`, and let it through the champion gate: read the
values `gate.decide` compares, apply its decision. Aliases move only after the version is
READY and tagged, so no alias ever points at a half-registered version; the decision tag is
written last, so a pass cut short is finished by the next.

The registry can be rebuilt from DVC outputs: when the run that mlflow_run.json names is not
on the tracking server (a CI runner with a fresh server), a run is created from the params,
train_log.csv, metrics.json and the images, and registered from.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from genpipe import paths
from genpipe.errors import GenpipeError, exception_text
from genpipe.metrics.keys import EVALUATION_CONSTANTS, STD
from genpipe.params import run_params
from genpipe.registry import gate, history
from genpipe.registry.gate import CHAMPION
from genpipe.tracking import lineage, runs, store
from genpipe.tracking.lineage import (
    TAG_AGAINST,
    TAG_BACKBONE,
    TAG_DATA_HASH,
    TAG_DECISION,
    TAG_METRIC,
    TAG_REFERENCE,
    TAG_SOURCE_RUN,
    TAG_STD,
    TAG_VALUE,
    TAG_WEIGHTS,
)

log = logging.getLogger(__name__)

ATTEMPTS = 3  # of a register pass, when another register conflicts with it
# two versions judged against the same champion within this many seconds of each other were
# registered at the same time: the race reconcile repairs
RACE_SECONDS = 600.0
REPASS_SECONDS = 15.0  # no pass starts later than this after the first
# errors a second pass cannot mend; any other (a conflicting write, a sqlite lock on the
# server, a dropped connection) is retried: every step of a pass is idempotent
NOT_RETRIED = {"PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_PARAMETER_VALUE", "BAD_REQUEST"}
PRIMARY_METRIC = {"gan": "fid", "autoencoder": "mse"}  # lower is better for both
MODEL_ARTIFACT = "model"
WEIGHTS = Path("artifacts") / "weights"  # in a downloaded model: its "weights" artifact
REQUIREMENTS = ["torch", "numpy", "pandas", "safetensors"]  # the model's, besides MLflow


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
    history: Path  # reports/<model>/registry_history.jsonl: appended, not read

    @classmethod
    def of(cls, model: str, data_hash: str) -> Outputs:
        return cls(
            model=model,
            weights=paths.weights_dir(model),
            record=paths.run_record(model),
            metrics=paths.metrics(model),
            train_log=paths.train_log(model),
            images=[paths.samples(model), paths.eval_grid(model), paths.tail_grid(model)],
            reference=paths.REFERENCE_INFO,
            data_hash=data_hash,
            history=paths.registry_history(model),
        )


@dataclass
class Candidate:
    """What register reads of the model to register: its outputs, the params it was trained
    under, its metrics and the values the gate compares."""

    outputs: Outputs
    params: dict[str, Any]  # the whole params.yaml, as dumped
    metrics: dict[str, Any]  # metrics.json
    experiment: str  # train.experiment: the prefix of the model's experiment
    source_run_id: str  # the run mlflow_run.json names
    metric: str  # the primary metric
    value: float  # its value
    backbone: str  # the evaluation backbone
    reference: str  # SHA-256 of reference.json
    std: float | None = None  # the value's evaluation noise, <metric>_std; None: not measured


@dataclass(frozen=True)
class Policy:
    """When a version takes the champion alias: register's params and the branch."""

    min_improvement: float
    force: bool
    branch: str | None = None  # None: unknown (no git, a detached HEAD): the default's rules
    default_branch: str = "main"
    # a registered version's metrics on today's data (registry.rescore.Scorer); None: a
    # champion of other data or another backbone is not compared
    score: Callable[[Path], dict[str, Any]] | None = None
    noise_z: float = 0.0  # register.noise_z: the gain must exceed this many combined stds

    @property
    def on_default(self) -> bool:
        """Whether this register may move champion and challenger."""
        return self.branch is None or self.branch == self.default_branch


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
    policy: Policy,
    experiment: str,
    uri: str | None = None,
) -> dict[str, Any]:
    """Register the model and run the gate; returns the record for registry.json."""
    uri = uri or store.tracking_uri()
    _check_loadable(outputs)  # never register weights the served model could not load
    store.check_tracking_server(uri)  # before anything: a server that is down changes nothing
    mlflow = store.import_mlflow()
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    metrics = _read_json(outputs.metrics, "the evaluate stage's metrics")
    reference = _read_json(outputs.reference, "the reference stage's summary")
    record = _read_json(outputs.record, "the train stage's MLflow run record")
    metric = PRIMARY_METRIC[outputs.model]
    if not isinstance(metrics.get(metric), int | float):
        raise RegistryError(
            f"{outputs.metrics}: expected a number under '{metric}'; found "
            f"{metrics.get(metric)!r} (run `dvc repro evaluate@{outputs.model}`)"
        )
    std = metrics.get(f"{metric}{STD}")
    candidate = Candidate(outputs, params, metrics, experiment, record["run_id"], metric,
                          float(metrics[metric]), str(reference.get("backbone")),
                          hashlib.sha256(outputs.reference.read_bytes()).hexdigest(),
                          float(std) if isinstance(std, int | float) else None)  # fmt: skip
    name = f"{name_prefix}-{outputs.model}"
    started = time.monotonic()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            client = mlflow.MlflowClient(tracking_uri=uri)  # a sqlite store is opened here
            run_id, version, decision = _register_once(mlflow, client, uri, name, candidate,
                                                       policy)  # fmt: skip
            aliases = sorted(client.get_model_version(name, version.version).aliases)
            break
        except SQLAlchemyError as exc:  # a corrupt sqlite file
            raise store.store_error(uri, exc) from None
        except MlflowException as exc:
            # another register writing the same model at once, say: going again finishes
            # what this pass began. Passes start only within REPASS_SECONDS of the first, so
            # a broken server (each call already retried by MLflow's HTTP client) still fails
            # the stage within about half a minute.
            late = time.monotonic() - started > REPASS_SECONDS
            retried = exc.error_code not in NOT_RETRIED or _conflict(exc)
            if retried and not late and attempt < ATTEMPTS:
                log.warning("%s: register pass %d failed (%s); trying again", name, attempt,
                            store.brief(exc))  # fmt: skip
                time.sleep(random.uniform(0.5, 2.0) * attempt)
                continue
            raise RegistryError(
                store.failure(f"MLflow registry at {uri}: could not register {name}", uri, exc)
            ) from exc
    return {
        "name": name,
        "version": int(version.version),
        "aliases": aliases,
        "run_id": run_id,
        "metric": metric,
        "value": candidate.value,
        "std": candidate.std,
        "backbone": reference.get("backbone"),
        "branch": policy.branch,
        **decision,
    }


def _conflict(exc: Exception) -> bool:
    """A write that lost a race on the server (two registers setting one alias at once): the
    server answers BAD_REQUEST with its database's unique-constraint error."""
    text = str(exc)
    return "UNIQUE constraint failed" in text or "duplicate key value" in text


def _check_loadable(outputs: Outputs) -> None:
    """The weights directory loads as the served model loads it (genpipe.<model>.artifact:
    config.json within the params' bounds, safetensors of that network), else one line:
    a pickle renamed .safetensors, a truncated file or another network is never registered."""
    import importlib

    import torch

    artifact = importlib.import_module(f"genpipe.{outputs.model}.artifact")
    artifact.load_served(outputs.weights, torch.device("cpu"))


def _register_once(
    mlflow: Any, client: Any, uri: str, name: str, candidate: Candidate, policy: Policy
) -> tuple[str, Any, dict[str, Any]]:
    """One pass: the run (found or rebuilt), its version (found or created), the gate (unless
    an earlier pass decided). Idempotent: a pass cut short is finished by the next."""
    outputs, metric = candidate.outputs, candidate.metric
    run_id = _find_or_rebuild_run(client, candidate)
    weights = weights_sha256(outputs.weights)
    version = _version_of_weights(client, name, run_id, weights)
    if version is not None:
        _repair(mlflow, client, name, version, outputs)  # these weights: DVC has them
    decided = version is not None and TAG_DECISION in version.tags
    if decided and policy.on_default and version.tags[TAG_DECISION] == gate.CANDIDATE:
        decided = False  # a branch's candidate, merged: the default branch's gate decides
    if decided and policy.on_default and _champion_gone(client, name, version) is not None:
        decided = False  # the champion cannot be loaded: the gate replaces it
    if decided:
        log.info("%s: run %s (weights %s...) is already version %s; not registered again",
                 name, run_id, weights[:12], version.version)  # fmt: skip
        decision = {"decision": "already registered", "compared": None,
                    "reason": f"earlier: {version.tags[TAG_DECISION]}"}  # fmt: skip
    else:
        # a version without a decision was cut short before the gate: finish it
        if version is None:
            tags = lineage.version_tags(
                outputs.data_hash, candidate.params, outputs.model, metric, candidate.value,
                candidate.backbone, weights, candidate.reference, candidate.std,
            )  # fmt: skip
            version = _log_and_register(mlflow, client, uri, run_id, name, outputs, tags)
            version = _one_version_of_weights(client, name, version, weights)
        new = gate.Version(int(version.version), metric, candidate.value, candidate.backbone,
                           outputs.data_hash, weights, candidate.reference,
                           std=candidate.std)  # fmt: skip
        verdict = _gate(mlflow, client, name, new, policy)
        level = logging.WARNING if verdict.decision == gate.CHALLENGER else logging.INFO
        log.log(level, "%s v%s: %s (%s)", name, version.version, verdict.decision, verdict.reason)
        values = {new.version: new.value}
        if verdict.compared is not None:
            values[int(verdict.compared["version"])] = verdict.compared.get("value")
        history_path = outputs.history
        if policy.on_default:  # before the aliases move: what a race is known by
            client.set_model_version_tag(name, version.version, TAG_AGAINST,
                                         _against(client, name, verdict))  # fmt: skip
        _set_aliases(client, name, verdict.aliases,
                     Why(verdict.reason, metric, values, policy.branch, history_path))  # fmt: skip
        decision = verdict.record()
        if policy.on_default:
            moved = _reconcile(client, name, metric, policy, history_path)
            decision = _after_race(decision, moved, new.version)
        for key, value in lineage.decision_tags(decision, policy.branch).items():
            client.set_model_version_tag(name, version.version, key, value)  # decision last
    return run_id, version, decision


def _gate(mlflow: Any, client: Any, name: str, new: gate.Version, policy: Policy) -> gate.Decision:
    """The gate's decision for `new` against the champion, scored again on today's data
    when its own was taken on other data or with another backbone; on a branch other than
    the default, what it would be on merge, under an alias of the branch's own."""
    champion = _champion(client, name, new.metric)
    gone = _champion_gone(client, name)
    if champion is not None and gone is not None:
        champion = replace(champion, unloadable=gone)
    elif policy.score is not None and not policy.force and gate.needs_rescore(new, champion):
        champion = _rescored(mlflow, client, name, champion, new, policy.score)
    verdict = gate.decide(new, champion, policy.min_improvement, policy.force, policy.noise_z)
    if policy.on_default or not verdict.aliases:
        return verdict
    return gate.on_branch(verdict, new.version, str(policy.branch), policy.default_branch)


def _champion_gone(client: Any, name: str, version: Any = None) -> str | None:
    """Why the champion's files cannot be loaded, or None; None too when there is no
    champion or it is `version` itself (repaired before this)."""
    champion = _champion_version(client, name)
    if champion is None or (version is not None and champion.version == version.version):
        return None
    return files_gone(client, champion)


def _rescored(mlflow: Any, client: Any, name: str, champion: gate.Version, new: gate.Version,
              score: Callable[[Path], dict[str, Any]]) -> gate.Version:  # fmt: skip
    """The champion with its metric on today's reference and backbone, or marked unloadable
    with why."""
    from genpipe.registry.rescore import score_version

    def download(tmp: Path) -> Path:  # the pyfunc model's "weights" artifact
        uri = f"models:/{name}/{champion.version}"
        local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp),
                                                    tracking_uri=client.tracking_uri)  # fmt: skip
        return Path(local) / WEIGHTS

    log.info("%s: champion v%d was evaluated on other data or another backbone; scoring it "
             "on today's", name, champion.version)  # fmt: skip
    metrics, how = score_version(download, score)
    value = (metrics or {}).get(new.metric)
    if not isinstance(value, int | float):
        log.warning("%s: champion v%d cannot be scored on today's data (%s)", name,
                    champion.version, how)  # fmt: skip
        return replace(champion, unloadable=how)
    log.info("%s: champion v%d on today's data: %s %.6g (was %.6g), scored in %s", name,
             champion.version, new.metric, value, champion.value, how)  # fmt: skip
    std = (metrics or {}).get(f"{new.metric}{STD}")
    return gate.rescored(champion, new, float(value),
                         float(std) if isinstance(std, int | float) else None)  # fmt: skip


# --- the run -------------------------------------------------------------------------------


def _find_or_rebuild_run(client: Any, candidate: Candidate) -> str:
    """The run mlflow_run.json names if the server has it, else one rebuilt from the DVC
    outputs in the model's experiment, as the train stage names it (found again, not
    rebuilt twice, on a second register)."""
    from mlflow.exceptions import MlflowException

    run_id = candidate.source_run_id
    try:
        client.get_run(run_id)
        return run_id
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    experiment = lineage.experiment_name(candidate.experiment, candidate.outputs.model)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        found = client.search_runs(
            [exp.experiment_id], f"tags.`{TAG_SOURCE_RUN}` = '{run_id}'", max_results=1
        )
        if found:
            return found[0].info.run_id
    log.info("run %s is not on the tracking server: rebuilding it from the DVC outputs", run_id)
    return _rebuild_run(client, candidate, experiment)


def _rebuild_run(client: Any, candidate: Candidate, experiment: str) -> str:
    """A run as the train stage would have made it (experiment, name, tags, params), with
    the train log's and metrics.json's points, tagged with the run it stands in for."""
    from mlflow.entities import Metric, RunTag

    outputs = candidate.outputs
    git = lineage.git_info()
    logged = run_params(candidate.params, outputs.model)  # what the train stage logs
    run = client.create_run(
        runs.get_or_create_experiment(client, experiment),
        run_name=lineage.run_name(outputs.model, git["short"], lineage.dvc_exp_name(), logged),
        tags={
            **lineage.run_tags(outputs.model, outputs.data_hash, git),
            lineage.TAG_RECIPE: lineage.recipe_id(logged),
            TAG_SOURCE_RUN: candidate.source_run_id,
        },
    )
    run_id = run.info.run_id
    runs.log_params(client, run_id, logged)
    points = []
    if outputs.train_log.is_file():
        with outputs.train_log.open() as f:
            for row in csv.DictReader(f):
                step = int(row.pop("step"))
                points += [Metric(k, float(v), 0, step) for k, v in row.items() if v != ""]
    flat = runs.flatten_metrics(candidate.metrics)  # as evaluate logs them: constants as tags
    points += [Metric(f"eval/{k}", v, 0, 0) for k, v in flat.items()
               if not k.startswith(EVALUATION_CONSTANTS)]  # fmt: skip
    tags = [RunTag(f"eval/{k}", str(v)) for k, v in runs.flatten(candidate.metrics).items()
            if k.startswith(EVALUATION_CONSTANTS)]  # fmt: skip
    client.log_batch(run_id, metrics=points, tags=tags)  # MlflowClient splits it into batches
    for path in [outputs.train_log, outputs.metrics, *outputs.images]:
        if path.is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id


# --- the version ---------------------------------------------------------------------------


def _version_of_weights(client: Any, name: str, run_id: str, weights: str) -> Any | None:
    """The version of these very weights, the run's own first: another run's when a
    retraining reproduced them bitwise (same params, data and code on the CPU), the same
    model. A version of this run with other weights (replaced under the same run) is not
    theirs: they get a new version."""
    versions = [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if v.tags.get(TAG_WEIGHTS) == weights
    ]
    of_run = [v for v in versions if v.run_id == run_id]
    return min(of_run or versions, key=lambda v: int(v.version)) if versions else None


def _one_version_of_weights(client: Any, name: str, version: Any, weights: str) -> Any:
    """One version per weights, under a race too: two registers of the same weights at
    once (two CI jobs) both find none and both create one, as MLflow's registry has no lock.
    The version tags name the weights from creation on, so the later creator sees the
    earlier version: the lowest version wins, and this pass deletes its own if it lost
    (with the model it logged for it, if no version uses it)."""
    same = [v for v in client.search_model_versions(f"name = '{name}'")
            if v.tags.get(TAG_WEIGHTS) == weights]  # fmt: skip
    first = min(same, key=lambda v: int(v.version), default=version)
    if int(first.version) >= int(version.version):
        return version
    log.warning("%s: v%s holds these weights already (a register at the same time made it); "
                "deleting v%s", name, first.version, version.version)  # fmt: skip
    client.delete_model_version(name, version.version)
    if version.source != first.source and version.source.startswith("models:/"):
        from mlflow.exceptions import MlflowException

        try:
            client.delete_logged_model(version.source.removeprefix("models:/").split("/")[0])
        except MlflowException as exc:  # left in the run: it holds no version
            log.debug("logged model of v%s kept: %s", version.version, exception_text(exc))
    return first


def weights_sha256(weights_dir: Path) -> str:
    """SHA-256 over the names and bytes of the weights directory's files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(weights_dir).iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _log_and_register(
    mlflow: Any,
    client: Any,
    uri: str,
    run_id: str,
    name: str,
    outputs: Outputs,
    tags: dict[str, str],
) -> Any:
    """The pyfunc model logged to the run (or the one a register that failed before
    registering it left there), then a new version of `name`, READY and tagged."""
    weights = {TAG_WEIGHTS: tags[TAG_WEIGHTS]}
    model_id = _logged_model_left(client, run_id, tags[TAG_WEIGHTS])
    if model_id is None:
        mlflow.set_tracking_uri(uri)
        with _reopened(mlflow, client, run_id):
            info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, tags=weights,
                                           **_pyfunc(mlflow, outputs))  # fmt: skip
        model_id = info.model_id
    else:
        log.info("%s: registering logged model %s, which an earlier register logged but did "
                 "not register", name, model_id)  # fmt: skip
    return mlflow.register_model(f"models:/{model_id}", name, tags=tags)


@contextlib.contextmanager
def _reopened(mlflow: Any, client: Any, run_id: str) -> Iterator[None]:
    """The training run, active while register logs the model to it, then ended as it was
    found, whatever happened meanwhile: MLflow ends a run left by an exception, a Ctrl-C or
    a SIGTERM as FAILED or KILLED, which would say the training failed. A run found RUNNING
    (its training process killed) is ended KILLED, as training's next start would."""
    status = client.get_run(run_id).info.status
    try:
        with mlflow.start_run(run_id=run_id):
            yield
    finally:
        ended = status if status != "RUNNING" else "KILLED"
        try:
            client.set_terminated(run_id, status=ended)
        except Exception as exc:  # noqa: BLE001 (the error in flight is the one to report)
            log.warning("could not end run %s as %s: %s", run_id, ended, exception_text(exc))


def _logged_model_left(client: Any, run_id: str, weights: str) -> str | None:
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
    for model in found:
        ready = str(getattr(model, "status", "")).upper().endswith("READY")
        if ready and files_gone(client, model) is None:
            return model.model_id
    return None


def _pyfunc(mlflow: Any, outputs: Outputs) -> dict[str, Any]:
    """The pyfunc model of the DVC-cached weights, as log_model and save_model take it."""
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    import genpipe

    config = _read_json(outputs.weights / "config.json", "the train stage's network config")
    c, s = config["channels"], config["image_size"]
    images = Schema([TensorSpec(np.dtype(np.uint8), (-1, c, s, s))])  # (N, C, S, S) uint8
    if outputs.model == "gan":  # seeds (and a conditional GAN's optional labels) -> images
        example = pd.DataFrame({"seed": np.array([0, 1], dtype=np.int64)})
        columns = [ColSpec("long", "seed")]
        if (config.get("generator") or {}).get("class_weights"):
            columns.append(ColSpec("long", "label", required=False))
        signature = ModelSignature(inputs=Schema(columns), outputs=images)
    else:  # images -> their reconstructions
        example = np.zeros((2, c, s, s), dtype=np.uint8)
        signature = ModelSignature(inputs=images, outputs=images)
    package = Path(genpipe.__file__).parent
    return {
        "python_model": str(package / "serving.py"),  # models from code: no pickle
        "code_paths": [str(package)],
        "artifacts": {"weights": str(outputs.weights)},
        "signature": signature,
        "input_example": example,
        "pip_requirements": REQUIREMENTS + [f"mlflow=={mlflow.__version__}"],
    }


def _logged_model_id(version: Any) -> str | None:
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
    model_id = _logged_model_id(version)
    if model_id is None:
        return None
    names = {Path(f.path).name for f in client.list_logged_model_artifacts(model_id)}
    return None if "MLmodel" in names else "its files are gone from the artifact store"


def _repair(mlflow: Any, client: Any, name: str, version: Any, outputs: Outputs) -> None:
    """Log the files of a version of these very weights again, from the DVC-cached weights,
    to the logged model it was registered from, when the artifact store has lost them."""
    import tempfile

    why = files_gone(client, version)
    if why is None:
        return
    model_id = _logged_model_id(version)
    with tempfile.TemporaryDirectory(prefix="genpipe-repair-") as tmp:
        mlflow.pyfunc.save_model(path=str(Path(tmp) / "model"), **_pyfunc(mlflow, outputs))
        client.log_model_artifacts(model_id, str(Path(tmp) / "model"))
    log.warning("%s v%s: %s; logged again from %s", name, version.version, why,
                outputs.weights)  # fmt: skip


def _values(version: Any) -> gate.Version:
    """What a version's tags say of it."""
    tags = version.tags
    try:
        value = float(tags[TAG_VALUE])
    except (KeyError, ValueError):  # no tag (an alias set by hand), or one edited by hand
        value = None
    try:
        std = float(tags[TAG_STD])
    except (KeyError, ValueError):  # registered before spreads, or by hand
        std = None
    return gate.Version(int(version.version), tags.get(TAG_METRIC), value,
                        tags.get(TAG_BACKBONE), tags.get(TAG_DATA_HASH),
                        tags.get(TAG_WEIGHTS), tags.get(TAG_REFERENCE), std=std)  # fmt: skip


def _champion_version(client: Any, name: str) -> Any | None:
    """The model version the champion alias names, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        return None


def _champion(client: Any, name: str, metric: str) -> gate.Version | None:
    """The champion's values; for one without genpipe's metric tag (an alias set by hand in
    the UI), its run's `eval/<metric>` and data hash where the run has them."""
    from mlflow.exceptions import MlflowException

    version = _champion_version(client, name)
    if version is None:
        return None
    champion = _values(version)
    if champion.value is not None:
        return champion
    run = None
    if version.run_id:
        try:
            run = client.get_run(version.run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    value = run.data.metrics.get(f"eval/{metric}") if run is not None else None
    data_hash = run.data.tags.get(TAG_DATA_HASH) if run is not None else None
    return replace(champion, value=value, hand_set=True,
                   metric=champion.metric or (metric if value is not None else None),
                   data_hash=champion.data_hash or data_hash)  # fmt: skip


@dataclass(frozen=True)
class Why:
    """What an alias change is recorded with (registry/history.py)."""

    reason: str
    metric: str
    values: dict[int, float | None]  # version -> the value the gate compared
    branch: str | None
    path: Path  # reports/<model>/registry_history.jsonl


def _set_aliases(client: Any, name: str, aliases: gate.Aliases, why: Why) -> None:
    """In order (previous-champion before champion); setting one again changes nothing.
    Each alias that moves is recorded in the model's history."""
    held = {alias: int(v) for alias, v in client.get_registered_model(name).aliases.items()}
    for alias, version in aliases:
        if held.get(alias) != version:
            # recorded first: a pass cut short between the two leaves the change in the
            # history (the next pass finds the alias moved and records nothing)
            change = history.change(alias, version, held.get(alias), why.reason, why.metric,
                                    why.values, why.branch)  # fmt: skip
            history.record(client, name, [change], why.path)
            held[alias] = version
        client.set_registered_model_alias(name, alias, str(version))


def _reconcile(client: Any, name: str, metric: str, policy: Policy,
               history_path: Path) -> gate.Aliases:  # fmt: skip
    """Undo a race between two register processes (see gate.reconcile), and nothing else.
    The race is known by genpipe's own records, not derived from the metrics: the champion
    is the one genpipe set last (its alias history), and its rivals are the versions that
    gates promoted over the same champion at the same count of changes (TAG_AGAINST),
    within RACE_SECONDS of it. A champion an
    operator set (in the UI, or with set_registered_model_alias) is never moved here. Every
    process ends here after its own writes, so the last one to run sees all versions.
    Returns the aliases it moved."""
    current = _champion_version(client, name)
    if current is None or TAG_AGAINST not in current.tags:
        return ()
    judged = current.tags[TAG_AGAINST]
    set_by_genpipe = [c.version for c in history.read(client, name) if c.alias == CHAMPION]
    if not set_by_genpipe or set_by_genpipe[-1] != int(current.version):
        return ()  # the operator's choice
    champion = _champion(client, name, metric)
    if champion is None:  # the alias went in between
        return ()
    born = int(current.creation_timestamp or 0) / 1000
    rivals = [v for v in client.search_model_versions(f"name = '{name}'")
              if v.tags.get(TAG_AGAINST) == judged
              and abs(int(v.creation_timestamp or 0) / 1000 - born) <= RACE_SECONDS]  # fmt: skip
    aliases = gate.reconcile(champion, [_values(v) for v in rivals], policy.min_improvement,
                             policy.noise_z)  # fmt: skip
    best = next((v for v in rivals if aliases and int(v.version) == aliases[-1][1]), None)
    if best is None or files_gone(client, best) is not None:
        return ()  # a version whose files are gone is never made champion
    was = json.loads(judged).get("champion")
    reason = (f"v{best.version} beats champion v{champion.version}: registers at the same "
              f"time promoted both over {f'v{was}' if was else 'no champion'}")  # fmt: skip
    log.warning("%s: %s; moving the alias", name, reason)
    values = {int(v.version): _values(v).value for v in rivals}
    _set_aliases(client, name, aliases,
                 Why(reason, metric, values, policy.branch, history_path))  # fmt: skip
    return aliases


def _against(client: Any, name: str, verdict: gate.Decision) -> str:
    """TAG_AGAINST's value: the champion the gate read, how many champion changes genpipe
    had recorded then, and the decision. Two versions promoted over the same champion at
    the same count were judged at the same time: neither saw the other's promotion."""
    changes = sum(c.alias == CHAMPION for c in history.read(client, name))
    champion = (verdict.compared or {}).get("version")
    return json.dumps({"champion": champion, "changes": changes,
                       "decision": verdict.decision}, sort_keys=True)  # fmt: skip


def _after_race(decision: dict[str, Any], moved: gate.Aliases, version: int) -> dict[str, Any]:
    """The record of this version's decision once reconcile moved aliases: it names the
    alias the version holds, so registry.json's decision and aliases agree."""
    took = [alias for alias, v in moved if v == version]
    if not took:
        return decision
    other = next((v for alias, v in moved if alias == CHAMPION and v != version), None)
    why = (f"; then v{other}, registered at the same time, took champion" if other
           else "; then champion, over the version a register at the same time promoted")
    return {**decision, "decision": took[-1], "reason": decision.get("reason", "") + why}
