"""register@<model>: the model's DVC outputs -> a version of `<register.name_prefix>-<model>`
through the champion gate, in passes that are each idempotent, so that a pass cut short (a
conflicting write, a server's passing fault) is finished by the next.

A pass: the training run (found, or rebuilt from the DVC outputs: tracking/rebuild.py), the
version of these weights (found, or logged and registered: versions.py), the gate's decision
(champion.py), then the aliases (aliases.py). Aliases move only after the version is READY
and tagged, so no alias ever points at a half-registered version; the decision tag is
written last, so a pass cut short before it is finished by the next.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from genpipe import models, paths
from genpipe.errors import RegistryError, exception_text
from genpipe.fileio import sha256_files
from genpipe.metrics.keys import std_of
from genpipe.registry import aliases, champion, gate, versions
from genpipe.tracking import lineage, store
from genpipe.tracking.lineage import TAG_DECISION
from genpipe.tracking.rebuild import Recorded, find_or_rebuild

log = logging.getLogger(__name__)

ATTEMPTS = 3  # of a register pass, when another register conflicts with it
REPASS_SECONDS = 15.0  # no pass starts later than this after the first
# errors a second pass cannot mend; any other (a conflicting write, a sqlite lock on the
# server, a dropped connection) is retried: every step of a pass is idempotent
NOT_RETRIED = {"PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_PARAMETER_VALUE", "BAD_REQUEST"}


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
    """What register reads of the model to register: its outputs, its training run as the
    DVC outputs record it, and the values the gate compares."""

    outputs: Outputs
    recorded: Recorded  # the training run, as the DVC outputs record it
    params: dict[str, Any]  # the whole params.yaml, as dumped
    version: gate.Version  # the values the gate compares; its version number comes later


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        found = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RegistryError(f"{path}: expected {what}; found no such file") from None
    except ValueError as exc:
        raise RegistryError(f"{path}: expected {what} as JSON; {exception_text(exc)}") from None
    if not isinstance(found, dict):
        raise RegistryError(f"{path}: expected {what}, a JSON object; found a JSON "
                            f"{type(found).__name__}")  # fmt: skip
    return found


def candidate(outputs: Outputs, params: dict[str, Any], experiment: str) -> Candidate:
    """The candidate's values from its outputs; one line for an output that is missing or
    unreadable, or metrics without the model's primary metric."""
    metrics = _read_json(outputs.metrics, "the evaluate stage's metrics")
    reference = _read_json(outputs.reference, "the reference stage's summary")
    record = _read_json(outputs.record, "the train stage's MLflow run record")
    metric = models.get(outputs.model).metric
    if not isinstance(metrics.get(metric), int | float):
        raise RegistryError(
            f"{outputs.metrics}: expected a number under '{metric}'; found "
            f"{metrics.get(metric)!r} (run `dvc repro evaluate@{outputs.model}`)"
        )
    run_id = record.get("run_id")
    if not (isinstance(run_id, str) and re.fullmatch(r"[0-9a-f]{32}", run_id)):
        raise RegistryError(f"{outputs.record}: expected the train stage's run record, whose "
                            f"run_id is 32 hex digits; found {run_id!r} (run `dvc repro "
                            f"--force train@{outputs.model}`)")  # fmt: skip
    recorded = Recorded(run_id, outputs.model, experiment, params,
                        outputs.data_hash, metrics, outputs.train_log,
                        (outputs.train_log, outputs.metrics, *outputs.images))  # fmt: skip
    values = gate.Version(0, metric, float(metrics[metric]), reference.get("backbone"),
                          outputs.data_hash, versions.weights_sha256(outputs.weights),
                          sha256_files([outputs.reference]), std=std_of(metrics, metric))
    return Candidate(outputs, recorded, params, values)


def register(outputs: Outputs, params: dict[str, Any], name_prefix: str, policy: gate.Policy,
             experiment: str, uri: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Register the model and run the gate; returns the record for registry.json."""
    uri = uri or store.tracking_uri()
    check_loadable(outputs)  # never register weights the served model could not load
    store.check_tracking_server(uri)  # before anything: a server that is down changes nothing
    mlflow = store.import_mlflow()
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    # process-wide too: a database store resolves a version's source (models:/<id>) through
    # MLflow's global tracking URI, not its client's
    mlflow.set_tracking_uri(uri)
    found = candidate(outputs, params, experiment)
    name = models.get(outputs.model).registered_name(name_prefix)
    started = time.monotonic()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            client = mlflow.MlflowClient(tracking_uri=uri)  # a sqlite store is opened here
            run_id, version, decision = register_once(mlflow, client, name, found, policy)
            held = sorted(client.get_model_version(name, version.version).aliases)
            break
        except SQLAlchemyError as exc:  # a corrupt sqlite file
            raise store.store_error(uri, exc) from None
        except MlflowException as exc:
            # another register writing the same model at once, say: going again finishes
            # what this pass began. Passes start only within REPASS_SECONDS of the first, so
            # a broken server (each call already retried by MLflow's HTTP client) still fails
            # the stage within about half a minute.
            late = time.monotonic() - started > REPASS_SECONDS
            retried = exc.error_code not in NOT_RETRIED or conflict(exc)
            if retried and not late and attempt < ATTEMPTS:
                log.warning("%s: register pass %d failed (%s); trying again", name, attempt,
                            store.brief(exc))  # fmt: skip
                time.sleep(random.uniform(0.5, 2.0) * attempt)
                continue
            raise RegistryError(
                store.failure(f"MLflow registry at {store.masked(uri)}: could not register {name}",
                              uri, exc)
            ) from exc
    new = found.version
    return {"name": name, "version": int(version.version), "aliases": held, "run_id": run_id,
            "metric": new.metric, "value": new.value, "std": new.std,
            "backbone": new.backbone, "branch": policy.branch, **decision}  # fmt: skip


def conflict(exc: Exception) -> bool:
    """A write that lost a race on the server (two registers setting one alias at once): the
    server answers BAD_REQUEST with its database's unique-constraint error."""
    text = str(exc)
    return "UNIQUE constraint failed" in text or "duplicate key value" in text


def check_loadable(outputs: Outputs) -> None:
    """The weights directory loads as the served model loads it (config.json within the
    params' bounds, safetensors of that network), else one line: a pickle renamed
    .safetensors, a truncated file or another network is never registered."""
    models.get(outputs.model).artifact().load_served(outputs.weights, torch.device("cpu"))


def register_once(mlflow: Any, client: Any, name: str, found: Candidate,
                  policy: gate.Policy) -> tuple[str, Any, dict[str, Any]]:  # fmt: skip
    """One pass: the run (found or rebuilt), its version (found or created), the gate (unless
    an earlier pass decided). Idempotent: a pass cut short is finished by the next."""
    outputs, new = found.outputs, found.version
    run_id = find_or_rebuild(client, found.recorded)
    version = versions.version_of_weights(client, name, run_id, new.weights)
    if version is not None:  # these weights: DVC has them, should the store have lost them
        versions.repair(mlflow, client, name, version, outputs.model, outputs.weights)
    if decided(client, name, version, policy):
        log.info("%s: run %s (weights %s...) is already version %s; not registered again",
                 name, run_id, new.weights[:12], version.version)  # fmt: skip
        decision = {"decision": "already registered", "compared": None,
                    "reason": f"earlier: {version.tags[TAG_DECISION]}"}  # fmt: skip
        return run_id, version, decision
    # a version without a decision was cut short before the gate: finish it
    if version is None:
        tags = lineage.version_tags(outputs.data_hash, found.params, outputs.model, new.metric,
                                    new.value, new.backbone, new.weights, new.reference,
                                    new.std)  # fmt: skip
        version = versions.log_and_register(mlflow, client, run_id, name, outputs.model,
                                            outputs.weights, tags)  # fmt: skip
        version = versions.one_version_of_weights(client, name, version, new.weights)
    return run_id, version, apply_gate(mlflow, client, name, found, int(version.version), policy)


def decided(client: Any, name: str, version: Any, policy: gate.Policy) -> bool:
    """Whether an earlier pass decided `version` for good: not when a branch's candidate is
    merged (the default branch's gate decides it), nor when the champion it was judged
    against can no longer be loaded (the gate replaces it)."""
    if version is None or TAG_DECISION not in version.tags:
        return False
    if not policy.on_default:
        return True
    if version.tags[TAG_DECISION] == gate.CANDIDATE:
        return False
    return champion.champion_gone(client, name, version) is None


def apply_gate(mlflow: Any, client: Any, name: str, found: Candidate, number: int,
               policy: gate.Policy) -> dict[str, Any]:  # fmt: skip
    """The gate's decision for version `number`, carried out: recorded against the champion
    it read, the aliases set (a race repaired), the decision tags written last."""
    new = replace(found.version, version=number)
    verdict = champion.decide(mlflow, client, name, new, policy)
    level = logging.WARNING if verdict.decision == gate.CHALLENGER else logging.INFO
    log.log(level, "%s v%s: %s (%s)", name, number, verdict.decision, verdict.reason)
    values = {number: new.value}
    if verdict.compared is not None:
        values[int(verdict.compared["version"])] = verdict.compared.get("value")
    history_path = found.outputs.history
    if policy.on_default:  # before the aliases move: what a race is known by
        client.set_model_version_tag(name, str(number), lineage.TAG_AGAINST,
                                     aliases.against(client, name, verdict))  # fmt: skip
    aliases.set_aliases(client, name, verdict.aliases,
                        aliases.Why(verdict.reason, new.metric, values, policy.branch,
                                    history_path))  # fmt: skip
    decision = verdict.record()
    if policy.on_default:
        moved = aliases.reconcile(client, name, new.metric, policy, history_path)
        decision = aliases.after_race(decision, moved, number)
    for key, value in lineage.decision_tags(decision, policy.branch).items():
        client.set_model_version_tag(name, str(number), key, value)  # the decision last
    return decision
