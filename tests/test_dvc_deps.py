"""dvc.yaml's code deps are what each stage's script imports, as genpipe.codedeps finds it.

A module a stage imports but does not list is an edit DVC never reruns the stage for; a
listed module it does not import is an edit that reruns it for nothing. The checkpoint's
code fingerprint is computed from the same import closure, so it is checked here too.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genpipe import checkpoint, codedeps, yamlio

REPO = Path(__file__).resolve().parents[1]
SOURCE = "src/genpipe"
PARAMS_CHECK = "reports/params/check.json"
MODEL_STAGES = {f"{stage}@{model}" for stage in ("train", "evaluate", "register")
                for model in ("gan", "autoencoder")}  # fmt: skip


def interpolate(text: str, params: dict, item: str | None) -> str:
    """dvc.yaml's ${item} and ${section.key} (from params.yaml) in `text`."""

    def value(match: re.Match) -> str:
        if match[1] == "item":
            return str(item)
        found = params
        for key in match[1].split("."):
            found = found[key]
        return str(found)

    return re.sub(r"\$\{([\w.]+)\}", value, text)


def expanded_stages() -> dict[str, dict]:
    """Stage name (train@gan for a foreach stage) -> {"base", "item", "cmd", "deps"}."""
    params = yamlio.load((REPO / "params.yaml").read_text())
    stages = {}
    for base, stage in yamlio.load((REPO / "dvc.yaml").read_text())["stages"].items():
        if "foreach" in stage:
            items = stage["foreach"]
            items = params["models"] if items == "${models}" else items
            named = {f"{base}@{item}": (stage["do"], item) for item in items}
        else:
            named = {base: (stage, None)}
        for name, (body, item) in named.items():
            deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in body["deps"]]
            stages[name] = {
                "base": base, "item": item, "cmd": interpolate(body["cmd"], params, item),
                "deps": [interpolate(dep, params, item).rstrip("/") for dep in deps],
            }  # fmt: skip
    return stages


STAGES = expanded_stages()


def script(stage: dict) -> str:
    """The stage's script: `python pipeline/x.py [args]` -> pipeline/x.py."""
    words = stage["cmd"].split()
    assert words[0] == "python" and words[1].endswith(".py"), stage["cmd"]
    return words[1]


@functools.cache
def imported(name: str) -> frozenset[str]:
    """The genpipe files (repository paths) the stage's code imports, directly or not."""
    stage = STAGES[name]
    # with the stage's model: what its code loads by name (the model's package, serving.py)
    files = set(codedeps.source_files(REPO / script(stage), model=stage["item"]))
    return frozenset(path.relative_to(REPO).as_posix() for path in files) - {script(stage)}


def covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep + "/")


def module_name(path: str) -> str:
    """src/genpipe/gan/network.py -> genpipe.gan.network."""
    return path.removeprefix("src/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_dvc_yaml_expands_to_every_stage():
    assert set(STAGES) == {"params", "fetch", "validate", "reference", *MODEL_STAGES}


@pytest.mark.parametrize("name", STAGES)
def test_stage_depends_on_its_own_script(name):
    stage = STAGES[name]
    assert (REPO / script(stage)).is_file(), f"{name}: {script(stage)} does not exist"
    assert script(stage) in stage["deps"], f"{name}: runs {script(stage)} but does not list it"


def test_every_imported_module_is_a_dep():
    missing = [
        f"{name}: imports {module_name(path)} ({path}), which is not among its deps"
        for name, stage in STAGES.items()
        for path in sorted(imported(name))
        if not any(covers(dep, path) for dep in stage["deps"])
    ]
    assert not missing, "\n".join(missing)


def test_no_genpipe_dep_the_stage_does_not_import():
    # a directory dep is fine when the stage imports a module under it
    over = [
        f"{name}: lists {dep}, but imports nothing from it"
        for name, stage in STAGES.items()
        for dep in stage["deps"]
        if dep.startswith(SOURCE) and not any(covers(dep, path) for path in imported(name))
    ]
    assert not over, "\n".join(over)


def test_every_stage_after_params_waits_for_the_whole_params_check():
    assert "params.yaml" in STAGES["params"]["deps"]
    unchecked = [name for name, stage in STAGES.items()
                 if name != "params" and PARAMS_CHECK not in stage["deps"]]  # fmt: skip
    assert not unchecked, f"stages that do not depend on {PARAMS_CHECK}: {unchecked}"


def test_every_output_persists():
    """DVC deletes an output that does not persist before its stage runs, so a stage that
    then fails would leave nothing: every stage writes its outputs whole on success, and
    dvc.yaml tells DVC to keep them until then. Read as DVC reads dvc.yaml (outs, metrics and
    plots alike)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        outs = {(stage.addressing, str(out)): out.persist
                for stage in repo.index.stages for out in stage.outs}  # fmt: skip
    # every stage but register, whose registry.json is about the registry: it is written
    # beside the outputs, so a pulled clone has nothing to rerun
    assert {name for name, _ in outs} == set(STAGES) - {"register@gan", "register@autoencoder"}
    assert ("train@gan", "models/gan/mlflow_run.json") in outs
    deleted = [f"{name}: {out}" for (name, out), persist in outs.items() if not persist]
    assert not deleted, f"outputs without persist: true: {deleted}"


@pytest.mark.parametrize("model", ["gan", "autoencoder"])
def test_checkpoint_fingerprint_covers_what_shapes_the_network(model):
    fingerprinted = {path.relative_to(REPO).as_posix()
                     for path in codedeps.source_files(f"genpipe.{model}.train")}  # fmt: skip
    assert "src/genpipe/resolution.py" in fingerprinted
    assert f"src/genpipe/{model}/network.py" in fingerprinted
    deps = STAGES[f"train@{model}"]["deps"]
    outside = sorted(path for path in fingerprinted if not any(covers(d, path) for d in deps))
    assert not outside, f"train@{model}: fingerprinted but not deps: {outside}"


# --- the checkpoint's code identity -------------------------------------------------------


def append_comment(path: Path) -> None:
    with path.open("a") as f:
        f.write("\n# an edit\n")


def test_code_fingerprint_changes_with_a_file_in_its_set(tmp_path, monkeypatch):
    tree = tmp_path / "genpipe"
    shutil.copytree(codedeps.PACKAGE_DIR, tree, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codedeps, "PACKAGE_DIR", tree)

    def fingerprints() -> dict[str, str]:
        return {model: checkpoint.code_fingerprint(model) for model in ("gan", "autoencoder")}

    start = fingerprints()
    # the copy is the same code: the same identity as the installed package's
    monkeypatch.undo()
    assert fingerprints() == start
    monkeypatch.setattr(codedeps, "PACKAGE_DIR", tree)

    # outside both loops' imports: neither identity moves
    append_comment(tree / "gan/evaluate.py")
    append_comment(tree / "serving.py")
    assert fingerprints() == start
    # one model's network: that model's identity alone
    append_comment(tree / "gan/network.py")
    after_gan = fingerprints()
    assert after_gan["gan"] != start["gan"]
    assert after_gan["autoencoder"] == start["autoencoder"]
    # what shapes both networks: both
    append_comment(tree / "resolution.py")
    after_resolution = fingerprints()
    assert after_resolution["gan"] != after_gan["gan"]
    assert after_resolution["autoencoder"] != start["autoencoder"]


# --- what DVC itself reruns ---------------------------------------------------------------

# Lock every stage's deps as they are, without any outputs (a fresh clone has none, and the
# committed dvc.lock may predate the current layout), so that `dvc status` then reports
# as "modified" exactly the deps an edit touched.
LOCK_DEPS = """
from dvc.repo import Repo

with Repo() as repo, repo.lock:
    for stage in repo.index.stages:
        stage.save(allow_missing=True, run_cache=False)
        stage.dump(update_pipeline=False)
"""


def run(*args: str, cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def modified_stages(status: dict) -> set[str]:
    """The stages `dvc status --json` says have a modified dep (missing ones are "deleted")."""
    return {
        name for name, entries in status.items()
        for entry in entries
        if isinstance(entry, dict) and "modified" in entry.get("changed deps", {}).values()
    }  # fmt: skip


@pytest.fixture(scope="module")
def locked_copy(tmp_path_factory) -> Path:
    """What DVC reads of the repository (dvc.yaml, params, code, the example images), in a
    fresh git repo, with every stage's deps locked and no outputs."""
    root = tmp_path_factory.mktemp("deps") / "project"
    listed = run("git", "ls-files", "-co", "--exclude-standard", cwd=REPO).split("\n")
    for name in filter(None, listed):
        wanted = name in ("dvc.yaml", "params.yaml", ".dvcignore") or name.startswith(
            (".dvc/", "pipeline/", "src/", "examples/"))  # fmt: skip
        if wanted and (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    run("git", "init", "-q", cwd=root)
    run(sys.executable, "-c", LOCK_DEPS, cwd=root)
    status = json.loads(run(sys.executable, "-m", "dvc", "status", "--json", cwd=root))
    assert modified_stages(status) == set(), status  # only missing outputs and data so far
    return root


@pytest.mark.integration
@pytest.mark.parametrize(
    ("edited", "expected"),
    [
        # the base/upsampling plan of both networks: every model stage, nothing before them
        ("src/genpipe/resolution.py", MODEL_STAGES),
        # one model's network: that model's stages alone
        ("src/genpipe/gan/network.py", {"train@gan", "evaluate@gan", "register@gan"}),
        # the loops' bookkeeping: training only (the new weights rerun the rest)
        ("src/genpipe/training.py", {"train@gan", "train@autoencoder"}),
        # the uint8 <-> float conversion: the reference's features too
        ("src/genpipe/images.py", {"reference", *MODEL_STAGES}),
    ],
)
def test_editing_code_reruns_the_stages_that_import_it(locked_copy, edited, expected):
    original = (locked_copy / edited).read_bytes()
    append_comment(locked_copy / edited)
    try:
        status = json.loads(run(sys.executable, "-m", "dvc", "status", "--json", cwd=locked_copy))
    finally:
        (locked_copy / edited).write_bytes(original)
    assert modified_stages(status) == expected


# --- paths.py and dvc.yaml name the same files ----------------------------------------------


def dvc_yaml_outputs() -> dict[str, str]:
    """Every output dvc.yaml declares (outs, metrics, plots), expanded: path -> stage."""
    params = yamlio.load((REPO / "params.yaml").read_text())
    found = {}
    for base, stage in yamlio.load((REPO / "dvc.yaml").read_text())["stages"].items():
        items = params["models"] if "foreach" in stage else [None]
        body = stage.get("do", stage)
        for item in items:
            for kind in ("outs", "metrics", "plots"):
                for out in body.get(kind, []):
                    path = out if isinstance(out, str) else next(iter(out))
                    found[interpolate(path, params, item)] = f"{base}@{item}" if item else base
    return found


def paths_values() -> set[str]:
    """Every path paths.py names: its Path constants, and each function's for each model."""
    from genpipe import paths

    values = {v for v in vars(paths).values() if isinstance(v, Path)}
    for function in vars(paths).values():
        if callable(function) and getattr(function, "__module__", "") == paths.__name__:
            values |= {function(model) for model in ("gan", "autoencoder")}
    return {value.as_posix() for value in values}


# what paths.py names that DVC does not track, each beside the outputs on purpose
NOT_TRACKED = {
    "pipeline",  # the stages' scripts: code, in git
    "reports/validation/data_docs",  # GX Data Docs: HTML with run times in it
    "checkpoints/gan/checkpoint.pt", "checkpoints/autoencoder/checkpoint.pt",  # resume
    "reports/gan/registry.json", "reports/autoencoder/registry.json",  # about the registry
    "reports/gan/registry_history.jsonl", "reports/autoencoder/registry_history.jsonl",
}  # fmt: skip


def test_paths_and_dvc_yaml_name_the_same_files():
    outputs = dvc_yaml_outputs()
    deps = {dep for stage in STAGES.values() for dep in stage["deps"]}
    named = paths_values()
    unnamed = sorted(set(outputs) - named)
    assert not unnamed, f"outputs dvc.yaml declares that paths.py does not name: {unnamed}"
    # tracked: a dep, an output, a file in an output, or a folder of outputs
    tracked = {path for path in named
               if path in deps or any(covers(out, path) or covers(path, out) for out in outputs)}
    untracked = named - tracked
    assert untracked == NOT_TRACKED, f"paths.py names these, which dvc.yaml does not track: " \
        f"{sorted(untracked - NOT_TRACKED)}; NOT_TRACKED lists {sorted(NOT_TRACKED - untracked)}"
