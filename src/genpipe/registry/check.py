"""`genpipe registry check`: does the registry still hold what registry.json says register
made? The registry lives outside DVC's view: a registered model or version deleted in the
MLflow UI, or a deleted mlflow.db, leaves `dvc repro` "up to date" while registry.json names
a version that is gone. `make run` runs the check after `dvc repro`, with --repair: each
model whose version is gone (or holds other weights) is registered again by its register
stage's script (`repair`), the one way genpipe registers again: DVC's view is unchanged
(register caches no output), so dvc.lock is left as it is.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from genpipe import paths
from genpipe.errors import GenpipeError, RegistryError, exception_text
from genpipe.registry.versions import weights_sha256
from genpipe.stage import ERROR, stage_error
from genpipe.tracking import store
from genpipe.tracking.lineage import TAG_WEIGHTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    model: str
    problem: str | None  # None: the registry holds the version registry.json names

    def line(self) -> str:
        return f"{self.model}: {self.problem or 'ok'}"


def check(models: list[str], uri: str | None = None, root: Path = Path(".")) -> list[Finding]:
    """For each model with a registry.json: whether its version is on the tracking server,
    with the weights in models/<model>/weights."""
    uri = uri or store.tracking_uri()
    found = []
    for model in models:
        record_path = root / paths.registry_record(model)
        if not record_path.is_file():
            continue  # never registered here: `dvc repro` registers it
        try:
            record = json.loads(record_path.read_text())
            name, version = str(record["name"]), str(record["version"])
        except (ValueError, KeyError, TypeError) as exc:
            found.append(Finding(model, f"{record_path}: expected register's record; found "
                                        f"{exception_text(exc)}"))  # fmt: skip
            continue
        found.append(Finding(model, _problem(uri, name, version, root / paths.weights_dir(model))))
    return found


def _problem(uri: str, name: str, version: str, weights: Path) -> str | None:
    store.check_tracking_server(uri)
    mlflow = store.import_mlflow()
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        held = client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(store.failure(f"MLflow registry at {store.masked(uri)}: could "
                                              f"not read {name} v{version}", uri,
                                              exc)) from exc  # fmt: skip
        where = store.without_credentials(uri)
        return f"registry.json names {name} v{version}, which the registry at {where} does not hold"
    if weights.is_dir() and held.tags.get(TAG_WEIGHTS) not in (None, weights_sha256(weights)):
        return f"{name} v{version} holds other weights than {weights}"
    return None


def repair(model: str, cwd: Path = Path("."), env: dict[str, str] | None = None) -> None:
    """Register the model again: its register stage's script, run in `cwd` as DVC would
    run it, but outside DVC, so that dvc.lock is left as it is. Its log reaches ours as it
    comes (a re-score can take minutes); a failure is one line naming the stage and its
    error."""
    command = [sys.executable, str(paths.PIPELINE / "register.py"), model]
    log.info("%s: %s", model, " ".join(command[1:]))
    proc = subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        sys.stderr.flush()
        lines.append(line)
    if proc.wait() != 0:
        said = (stage_error("".join(lines)) or "").removeprefix(ERROR)
        said = said or f"it exited with {proc.returncode}"
        raise GenpipeError(f"register@{model}: expected the model registered again; {said}")
