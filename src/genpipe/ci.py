"""`genpipe ci-retrain`: the retrain workflow's logic, runnable (and tested) off CI.

1. `dvc repro --pull --allow-missing`: stages whose data, params and code did not change
   are skipped without pulling their outputs; the rest pull what they read from the DVC
   remote and rerun. The register stages register what was retrained to the MLflow
   server of MLFLOW_TRACKING_URI (a repository secret in CI).
2. `dvc push`: the new outputs go to the remote, so the next run and every clone get them.
3. On the default branch (register.default_branch), each model's register step runs even
   where its stage did not: a version registered from a merged branch is a `candidate`
   until the default branch's gate decides it.
4. A Markdown report: the stages rerun, the registry's decisions, and `dvc metrics diff`
   and `dvc params diff` against a base revision (main), for the job summary and, on a
   pull request, a comment.

The branch (`--branch`, else $GITHUB_HEAD_REF or $GITHUB_REF_NAME as GitHub Actions sets
them, else the checkout's) reaches the register stages as $GENPIPE_BRANCH: only the default
branch moves `champion` and `challenger`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from genpipe import paths
from genpipe.errors import GenpipeError

log = logging.getLogger("genpipe.ci")

METRIC_STAGES = ("validate", "evaluate")  # their metrics files go into the report


class CIError(GenpipeError):
    """The retrain job cannot run or did not finish (no remote, no server, a failed stage)."""


@dataclass
class Retrain:
    ran: list[str]  # the stages `dvc repro` ran, in order
    branch: str | None = None  # what the register stages were told
    registered: dict[str, dict] = field(default_factory=dict)  # model -> its registry.json
    report: str = ""  # Markdown


def ci_branch(given: str | None, cwd: Path) -> str | None:
    """The branch being retrained: `given`, else GitHub Actions' (a pull request's head, or
    the pushed branch), else the checkout's; None when there is none."""
    from genpipe.tracking.lineage import current_branch

    for branch in (given, os.environ.get("GITHUB_HEAD_REF"), os.environ.get("GITHUB_REF_NAME")):
        if branch:
            return branch
    return current_branch(cwd)


def dvc_env() -> dict[str, str]:
    """The environment dvc runs in: this environment's `python` first on PATH (the stages'
    commands call `python`), and unbuffered Python output: in a pipe, Python buffers stdout
    and stderr in blocks, so the stages' logs (training's line per log_every steps) would
    reach the job's log in bursts, or only at the end of a stage."""
    bin_dir = str(Path(sys.executable).parent)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1"}


def dvc(*args: str, cwd: Path, capture: bool = True) -> subprocess.CompletedProcess:
    """dvc from this environment (dvc_env)."""
    env = dvc_env()
    command = [sys.executable, "-m", "dvc", *args]
    if capture:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    # stream to the job's log as it runs, and keep the text to read the stages from
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()  # line by line, as it happens, even when our stdout is a pipe
        lines.append(line)
    proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, "".join(lines), "")


def stages_run(output: str) -> list[str]:
    """The stages `dvc repro` ran, from its output ("Running stage 'train@gan':")."""
    return [line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")]  # fmt: skip


def check_setup(cwd: Path) -> None:
    """Before anything runs: a default DVC remote and an MLflow server to register to."""
    remote = dvc("remote", "default", cwd=cwd)
    if remote.returncode != 0 or not remote.stdout.strip():
        raise CIError(
            "DVC remote: expected a default remote (`dvc remote add -d NAME URL`, committed "
            "in .dvc/config); found none"
        )
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise CIError(
            "MLFLOW_TRACKING_URI: expected the MLflow server's URL (in CI, the repository "
            "secret MLFLOW_TRACKING_URI); found it unset"
        )


def check_report_paths(*paths: str | None) -> None:
    """Where the report goes (--summary, --report): each in a directory that exists."""
    for path in filter(None, paths):
        if not Path(path).resolve().parent.is_dir():
            raise CIError(f"report path {path}: expected a file in an existing directory; "
                          f"found no directory {Path(path).resolve().parent}")  # fmt: skip


def ci_retrain(base: str, cwd: Path = Path("."), push: bool = True,
               branch: str | None = None) -> Retrain:  # fmt: skip
    """Rerun what changed, push it, and report against `base` (a git revision)."""
    check_setup(cwd)
    from genpipe.params import load_checked_params  # what DVC would call "unexpected error"

    params = load_checked_params(cwd / paths.PARAMS)
    branch = ci_branch(branch, cwd)
    if branch:
        os.environ["GENPIPE_BRANCH"] = branch  # the register stages' (dvc_env passes it on)
    log.info("branch %s (register.default_branch: %s)", branch or "unknown",
             params.registry.default_branch)  # fmt: skip
    log.info("dvc repro --pull --allow-missing")
    repro = dvc("repro", "--pull", "--allow-missing", cwd=cwd, capture=False)
    ran = stages_run(repro.stdout)
    if repro.returncode != 0:
        failed = ran[-1] if ran else "before any stage"
        raise CIError(f"dvc repro: expected every stage to pass; {failed} failed (log above)")
    if push:
        log.info("dvc push")
        pushed = dvc("push", cwd=cwd)
        if pushed.returncode != 0:
            raise CIError(f"dvc push: expected the outputs to reach the remote; "
                          f"{last_line(pushed)}")  # fmt: skip
    # the metrics of stages that did not run are on the remote, not here
    pulled = dvc("pull", "--allow-missing", *METRIC_STAGES, cwd=cwd)
    if pulled.returncode != 0:
        log.warning("dvc pull of the metrics failed: %s", last_line(pulled))
    if branch in (None, params.registry.default_branch):
        for model in params.models:
            if f"register@{model}" not in ran:
                register_again(model, cwd)
    registered = {}
    for model in params.models:
        record = cwd / paths.registry_record(model)
        if f"register@{model}" in ran or record.is_file():
            registered[model] = json.loads(record.read_text())
    result = Retrain(ran=ran, branch=branch, registered=registered)
    result.report = report(result, base, cwd)
    return result


def register_again(model: str, cwd: Path) -> None:
    """The register step of a model whose stage did not rerun, on the default branch: the
    version of these weights, registered from a branch as a candidate, meets the default
    branch's gate now (an already decided one is left as it is). Run as the stage's script,
    not through DVC, so dvc.lock is untouched; its inputs are pulled first."""
    log.info("register@%s did not rerun: on the default branch its step runs all the same, "
             "to decide a candidate merged from a branch", model)
    pulled = dvc("pull", "--with-deps", f"register@{model}", cwd=cwd)
    if pulled.returncode != 0:
        raise CIError(f"dvc pull register@{model}: expected the model's outputs on the remote; "
                      f"{last_line(pulled)}")  # fmt: skip
    script = [sys.executable, str(paths.PIPELINE / "register.py"), model]
    done = subprocess.run(script, cwd=cwd, env=dvc_env(), capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise CIError(f"register@{model}: expected the default branch's gate to run; "
                      f"{last_line(done)}")  # fmt: skip


def report(result: Retrain, base: str, cwd: Path) -> str:
    lines = ["## genpipe retrain", "", f"Branch: `{result.branch or 'unknown'}`", ""]
    if result.ran:
        lines.append("Stages rerun: " + ", ".join(f"`{s}`" for s in result.ran))
    else:
        lines.append("Nothing rerun: data, params and code are unchanged.")
    if result.registered:
        lines += ["", "### Model Registry", "",
                  "| model | version | decision | metric | value | reason |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for record in result.registered.values():
            lines.append(
                f"| {record.get('name')} | {record.get('version')} | {record.get('decision')}"
                f" | {record.get('metric')} | {record.get('value')} | {record.get('reason', '')} |"
            )
    for title, command in (("Metrics", "metrics"), ("Params", "params")):
        diff = dvc(command, "diff", base, "--md", cwd=cwd)
        lines += ["", f"### {title} against `{base}`", ""]
        if diff.returncode != 0:
            lines.append(f"(`dvc {command} diff` failed: {last_line(diff)})")
        elif table_rows(diff.stdout):
            lines.append(diff.stdout.strip())
        else:
            lines.append("No change.")
    return "\n".join(lines) + "\n"


def table_rows(markdown: str) -> int:
    """Body rows of a Markdown table (dvc prints the header even when nothing changed)."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return max(len(rows) - 2, 0)


def last_line(result: subprocess.CompletedProcess) -> str:
    text = (result.stderr or result.stdout or "").strip().splitlines()
    return text[-1] if text else f"exit {result.returncode}"
