"""Lineage: every tag genpipe writes on a run or a model version (the one home of each tag
key), and what they are read from: git, the DVC experiment, the data's hash and the params.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from genpipe.tracking.limits import TAG_VALUE_MAX
from genpipe.tracking.store import without_credentials

# MLflow 3's UI opens an experiment in the view this experiment tag names (the UI's
# ExperimentKind): "custom_model_development" is "Machine learning" (runs, metric
# charts); untagged experiments may open in the GenAI view (traces, judges, prompts).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# tag keys of runs and model versions
TAG_MODEL = "genpipe.model"
TAG_GIT_COMMIT = "git.commit"
TAG_GIT_DIRTY = "git.dirty"
TAG_DATA_HASH = "data.hash"  # of data/prepared
TAG_DVC_EXP = "dvc.exp_name"
TAG_SWEEP = "genpipe.sweep"  # the `genpipe sweep` a run is a point of ($GENPIPE_SWEEP)
TAG_RECIPE = "genpipe.recipe"  # recipe_id: runs of one recipe differ only in their seeds
TAG_RESUMED_FROM = "genpipe.resumed_from_run_id"  # the killed run a resumed one goes on from
TAG_SOURCE_RUN = "genpipe.source_run_id"  # on a rebuilt run: the run mlflow_run.json names
# model versions only: what the champion gate compares, and what it decided
TAG_PARAMS_HASH = "params.hash"
TAG_METRIC = "genpipe.metric"  # the primary metric's name
TAG_VALUE = "genpipe.metric_value"
TAG_STD = "genpipe.metric_std"  # its evaluation noise (metrics.json's <metric>_std)
TAG_BACKBONE = "genpipe.backbone"
# SHA-256 of data/reference/reference.json: the reference the metric was taken against (its
# backbone's identity, a retrained domain network's too, the real data and the floor)
TAG_REFERENCE = "genpipe.reference_sha256"
TAG_WEIGHTS = "genpipe.weights_sha256"  # of the weights directory
TAG_DECISION = "genpipe.decision"  # set once the gate has moved the aliases
TAG_COMPARED = "genpipe.compared"  # JSON: the champion compared with, re-scored or not
# the champion version the gate read ("none": there was none), written before the aliases
# move: two versions that name the same one were judged at the same time (a race)
TAG_AGAINST = "genpipe.gate.against"
TAG_REASON = "genpipe.reason"  # the gate's reason
TAG_BRANCH = "git.branch"  # the branch the version was registered from


# the data keys each kind of source reads (beside source, image_size and channels)
_DATA_READ = {
    "digits": ("test_fraction",),
    "folder": ("path", "test_fraction", "on_bad_file", "max_image_pixels", "background"),
    "official": ("local", "sha256"),  # mnist, fashion-mnist, cifar10: their own split
    "official-local": ("path",),
    "official-download": ("mirrors", "download"),
}


def recipe_params(logged: dict[str, Any]) -> dict[str, Any]:
    """A run's params (run_params) without its seeds: runs of one recipe differ only in
    `seed` and `train.seed`."""
    recipe = {k: v for k, v in logged.items() if k != "seed"}
    if "train" in recipe:
        recipe["train"] = {k: v for k, v in recipe["train"].items() if k != "seed"}
    return recipe


def run_params(params: dict[str, Any], model: str) -> dict[str, Any]:
    """What shapes `model`'s run, as params.yaml spells it (params: Params.model_dump(
    by_alias=True)): seed, cpu_kernels, the data keys its source reads, train, the model's
    own section and evaluate. A run logs these, never the other model's section, and never
    a data key its source ignores (the digits read no data.path)."""
    data = params["data"]
    if data["source"] in ("digits", "folder"):
        read = _DATA_READ[data["source"]]
    else:
        where = "official-local" if data["local"] else "official-download"
        read = _DATA_READ["official"] + _DATA_READ[where]
    keep = ("source", "image_size", "channels", *read)
    return {
        "seed": params["seed"],
        "cpu_kernels": params["cpu_kernels"],
        "data": {key: data[key] for key in keep},
        "train": params["train"],
        model: params[model],
        "evaluate": params["evaluate"],
    }


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


def run_name(model: str, short_sha: str, exp_name: str | None, logged: dict[str, Any]
             ) -> str:  # fmt: skip
    """'gan-3f2a1bc-clean-hake' (model, commit, DVC experiment); outside `dvc exp run`,
    'gan-3f2a1bc-p9c1e0f4': the first 7 digits of the run's params hash (its
    params.hash tag), so runs of one commit with other params get other names."""
    tail = exp_name or f"p{digest(logged)[:7]}"
    return "-".join((model, short_sha, tail))


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
        # MLflow's source tags: the runs table's Source column and the run page's commit
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": f"pipeline/train_{model}.py",
    }
    if exp_name := dvc_exp_name():
        tags[TAG_DVC_EXP] = exp_name
    if sweep := os.environ.get("GENPIPE_SWEEP"):
        tags[TAG_SWEEP] = sweep
    if git["commit"] != "unknown":
        tags["mlflow.source.git.commit"] = git["commit"]
        if remote := _git(Path("."), "config", "--get", "remote.origin.url"):
            tags["mlflow.source.git.repoURL"] = without_credentials(remote)
    if user := _user():
        tags["mlflow.user"] = user
    return tags


def version_tags(data_hash: str, params: dict[str, Any], model: str, metric: str, value: float,
                 backbone: str, weights: str, reference: str,
                 std: float | None = None) -> dict[str, str]:  # fmt: skip
    """The tags of a new model version: lineage (git, data, params, DVC experiment) and the
    values the champion gate compares."""
    git = git_info()
    return {
        TAG_GIT_COMMIT: git["commit"],
        TAG_GIT_DIRTY: git["dirty"],
        TAG_DATA_HASH: data_hash,
        TAG_PARAMS_HASH: params_hash(params, model),
        TAG_METRIC: metric,
        TAG_VALUE: repr(value),
        TAG_BACKBONE: backbone,
        TAG_REFERENCE: reference,
        TAG_WEIGHTS: weights,
    } | ({TAG_DVC_EXP: exp_name} if (exp_name := dvc_exp_name()) else {}) | (
        {TAG_STD: repr(std)} if std is not None else {})  # fmt: skip


def decision_tags(decision: dict[str, Any], branch: str | None) -> dict[str, str]:
    """A version's record of the gate, with TAG_DECISION last: a pass cut short before it is
    finished by the next."""
    return {
        TAG_COMPARED: json.dumps(decision.get("compared"), sort_keys=True),
        TAG_REASON: str(decision.get("reason", ""))[:TAG_VALUE_MAX],
        TAG_BRANCH: branch or "",
        TAG_DECISION: decision["decision"],
    }


def current_branch(repo: Path = Path(".")) -> str | None:
    """The branch being registered from: $GENPIPE_BRANCH (CI sets it: a pull request's
    checkout may be detached), else the checkout's branch; None when there is none (a
    detached HEAD, no git)."""
    branch = os.environ.get("GENPIPE_BRANCH") or _git(repo, "symbolic-ref", "--short", "-q", "HEAD")
    return branch or None


def params_hash(params: dict[str, Any], model: str) -> str:
    """SHA-256 of the params that shape this model (run_params: what its run logs);
    `params` is the whole of params.yaml."""
    return digest(run_params(params, model))


def recipe_id(logged: dict[str, Any]) -> str:
    """12 hex digits of the run's params without `seed` and `train.seed`: the runs of one
    recipe, trained with other seeds, share it (`genpipe compare` groups by it)."""
    return digest(recipe_params(logged))[:12]


def digest(tree: dict[str, Any]) -> str:
    """SHA-256 of a JSON tree, keys sorted: the same params give the same digest."""
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no $USER (some containers)
        return None


