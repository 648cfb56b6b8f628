"""`genpipe ci-retrain`: the retrain workflow's logic, runnable (and tested) off CI.

1. `dvc repro --pull --allow-missing` of every stage but register: stages whose data,
   params and code did not change are skipped without pulling their outputs; the rest
   pull what they read from the DVC remote and rerun.
2. `dvc push`: the new outputs go to the remote, so the next run and every clone get them.
   A push that fails ends the job here: no version is registered that names outputs the
   remote lacks.
3. The register stages: what was retrained is registered to the MLflow server of
   MLFLOW_TRACKING_URI (a repository secret in CI). On the default branch
   (register.default_branch), each model's register step runs even where its stage did
   not: a version registered from a merged branch is a `candidate` until the default
   branch's gate decides it.
4. A Markdown report: the stages rerun (read from dvc.lock), the registry's decisions, and
   `dvc metrics diff` and `dvc params diff` against a base revision (their JSON), for the
   job summary and, on a pull request, a comment.

The branch (`--branch`, else $GITHUB_HEAD_REF or $GITHUB_REF_NAME as GitHub Actions sets
them, else the checkout's) reaches the register stages as $GENPIPE_BRANCH: only the default
branch moves `champion` and `challenger`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from genpipe import dvclock, paths
from genpipe.errors import GenpipeError
from genpipe.metrics.keys import EVAL_PREFIX, EVALUATION_CONSTANTS, STD
from genpipe.stage import stage_error
from genpipe.tracking.store import tracking_uri, ui_url, without_credentials

log = logging.getLogger("genpipe.ci")

METRIC_STAGES = ("validate", "evaluate")  # their metrics files go into the report


class CIError(GenpipeError):
    """The retrain job cannot run or did not finish (no remote, no server, a failed stage)."""


@dataclass
class Retrain:
    ran: list[str] = field(default_factory=list)  # the stages `dvc repro` ran, in order
    branch: str | None = None  # what the register stages were told
    registered: dict[str, dict] = field(default_factory=dict)  # model -> its registry.json
    failure: str | None = None  # what failed, in one line: the job fails after the report
    decided: list[str] = field(default_factory=list)  # models whose register step ran well
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


def stage_names(cwd: Path) -> list[str]:
    """The pipeline's stages, foreach stages expanded (train@gan), as DVC lists them: one
    name a line (`dvc stage list --name-only`; DVC has no JSON for it)."""
    listed = dvc("stage", "list", "--name-only", cwd=cwd)
    if listed.returncode != 0:
        raise CIError(f"dvc stage list: expected the pipeline's stages; {last_line(listed)}")
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def check_setup(cwd: Path) -> None:
    """Before anything runs: a default DVC remote and an MLflow server to register to."""
    remote = dvc("remote", "default", cwd=cwd)  # its name alone, or nothing (no JSON form)
    if remote.returncode != 0 or not remote.stdout.strip():
        raise CIError(
            "DVC remote: expected a default remote (`dvc remote add -d NAME URL`, committed "
            "in .dvc/config); found none"
        )
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        tracking_uri()  # a user or password in it: refused, masked
    if not uri:
        raise CIError(
            "MLFLOW_TRACKING_URI: expected the MLflow server's URL (in CI, the repository "
            "secret MLFLOW_TRACKING_URI); found it unset"
        )


def check_base(base: str, cwd: Path) -> None:
    """The revision the report diffs against, before anything runs: a typo'd --base would
    otherwise retrain, push and register, then report no diff and exit 0."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"],
                           cwd=cwd, capture_output=True, text=True)  # fmt: skip
    if found.returncode != 0:
        raise CIError(f"--base {base}: expected a git revision of this repository (a branch, "
                      "tag or commit; in CI fetch it first, e.g. `git fetch origin main`); "
                      "found none")  # fmt: skip


def check_report_paths(*paths: str | None) -> None:
    """Where the report goes (--summary, --report): each in a directory that exists."""
    for path in filter(None, paths):
        if not Path(path).resolve().parent.is_dir():
            raise CIError(f"report path {path}: expected a file in an existing directory; "
                          f"found no directory {Path(path).resolve().parent}")  # fmt: skip


def ci_retrain(base: str | None, cwd: Path = Path("."), push: bool = True,
               branch: str | None = None) -> Retrain:  # fmt: skip
    """Rerun what changed, push it, register it, and report against `base` (a git
    revision; None: origin/<register.default_branch>)."""
    from genpipe.params.load import load_checked_params  # what DVC would call "unexpected error"

    check_setup(cwd)
    params = load_checked_params(cwd / paths.PARAMS)
    base = base or f"origin/{params.registry.default_branch}"
    check_base(base, cwd)
    branch = ci_branch(branch, cwd)
    if branch:
        os.environ["GENPIPE_BRANCH"] = branch  # the register stages' (dvc_env passes it on)
    log.info("branch %s (register.default_branch: %s)", branch or "unknown",
             params.registry.default_branch)  # fmt: skip
    result = Retrain(branch=branch)
    try:
        retrain(result, params, cwd, push)
    except CIError as exc:  # reported, then the job fails
        result.failure = str(exc)
    for model in result.decided:  # this run's records only: not one a failed step left
        record = cwd / paths.registry_record(model)
        result.registered[model] = json.loads(record.read_text())
    result.report = report(result, base, cwd)
    return result


def retrain(result: Retrain, params: Any, cwd: Path, push: bool) -> None:
    """Every stage but register, dvc push, then the register stages (and, on the default
    branch, each model's register step), so that a version is registered only once its
    outputs are on the remote. The stages run are kept on `result` as they go, so a
    failure still reports them."""
    registers = [f"register@{model}" for model in params.models]
    upstream = [name for name in stage_names(cwd) if not name.startswith("register@")]
    reproduce(result, cwd, upstream)
    if push:
        log.info("dvc push")
        pushed = dvc("push", cwd=cwd)
        if pushed.returncode != 0:
            raise CIError(f"dvc push: expected the outputs to reach the remote, before any "
                          f"version names them; {last_line(pushed)} (nothing was "
                          "registered)")  # fmt: skip
    reproduce(result, cwd, registers)
    # the metrics of stages that did not run are on the remote, not here
    pulled = dvc("pull", "--allow-missing", *METRIC_STAGES, cwd=cwd)
    if pulled.returncode != 0:
        log.warning("dvc pull of the metrics failed: %s", last_line(pulled))
    if result.branch in (None, params.registry.default_branch):
        for model in params.models:
            if f"register@{model}" not in result.ran:
                register_again(model, cwd)
                result.decided.append(model)


def reproduce(result: Retrain, cwd: Path, targets: list[str]) -> None:
    """`dvc repro --pull --allow-missing` of `targets` (and what they depend on): stages whose
    data, params and code did not change are skipped without pulling their outputs; the
    rest pull what they read and rerun. The stages it ran are those whose dvc.lock entry
    it rewrote (DVC writes one as each stage succeeds)."""
    if not targets:
        return
    before = dvclock.stages(cwd / dvclock.LOCK)
    log.info("dvc repro --pull --allow-missing %s", " ".join(targets))
    repro = dvc("repro", "--pull", "--allow-missing", *targets, cwd=cwd, capture=False)
    ran = dvclock.changed(before, dvclock.stages(cwd / dvclock.LOCK))
    result.ran += ran
    # a register stage that ran wrote this run's registry.json, whatever fails after it
    result.decided += [s.split("@", 1)[1] for s in ran if s.startswith("register@")]
    if repro.returncode != 0:
        # `dvc repro` has no machine-readable output: the stage that failed is read from
        # DVC's error line ("failed to reproduce 'X'"), the why from the stage's own
        failed = re.search(r"failed to reproduce '([^']+)'", repro.stdout)
        where = (f"stage {failed[1]} failed" if failed else
                 f"failed after stage {result.ran[-1]}" if result.ran else
                 "failed before any stage ran")  # fmt: skip
        raise CIError(f"dvc repro {where}: {error_line(repro.stdout)}")


def register_again(model: str, cwd: Path) -> None:
    """The register step of a model whose stage did not rerun, on the default branch: the
    version of these weights, registered from a branch as a candidate, meets the default
    branch's gate now (an already decided one is left as it is). Its inputs are pulled
    first; it runs as `genpipe registry check --repair` runs it, dvc.lock untouched."""
    from genpipe.registry.check import repair

    log.info("register@%s did not rerun: on the default branch its step runs all the same, "
             "to decide a candidate merged from a branch", model)
    pulled = dvc("pull", "--with-deps", f"register@{model}", cwd=cwd)
    if pulled.returncode != 0:
        raise CIError(f"dvc pull register@{model}: expected the model's outputs on the remote; "
                      f"{last_line(pulled)}")  # fmt: skip
    try:
        repair(model, cwd, env=dvc_env())
    except GenpipeError as exc:
        raise CIError(str(exc)) from None


def report(result: Retrain, base: str, cwd: Path) -> str:
    """The job summary (and a pull request's comment): what ran or failed, each model
    against its champion, and the metrics and params against `base`."""
    lines = ["## genpipe retrain", "", f"Branch: `{result.branch or 'unknown'}`", ""]
    if result.failure:
        lines += [f"**Failed:** {result.failure}", ""]
    if result.ran:
        lines.append("Stages rerun: " + ", ".join(f"`{s}`" for s in result.ran))
    elif not result.failure:
        lines.append("Nothing rerun: data, params and code are unchanged.")
    if result.registered:
        lines += ["", "### Model Registry", "", *registry_table(result.registered, cwd)]
    for title, command in (("Metrics", "metrics"), ("Params", "params")):
        lines += ["", f"### {title} against `{base}`", ""]
        # --all: a figure's spread that did not change still goes beside its figure
        diff = dvc(command, "diff", base, "--json", *(["--all"] if command == "metrics" else []),
                   cwd=cwd)  # fmt: skip
        try:
            found = json.loads(diff.stdout or "{}") if diff.returncode == 0 else None
        except ValueError:
            found = None
        if found is None:
            lines.append(f"(`dvc {command} diff` failed: {last_line(diff)})")
            continue
        table = metrics_table(found) if command == "metrics" else params_table(found)
        lines += table or ["No change."]
    return "\n".join(lines) + "\n"


def registry_table(records: dict[str, dict], cwd: Path) -> list[str]:
    """One row per model: the new version's value against the champion's (re-scored on
    today's data where it was), the change (lower is better for both metrics), the
    decision; then each decision's reason, and links to MLflow on an http(s) server."""
    rows = ["| model | version | value | champion | change | decision |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    notes = []
    for model, record in records.items():
        name, version, value = record.get("name"), record.get("version"), record.get("value")
        compared = record.get("compared") or {}
        old, change = "", ""
        if isinstance(compared.get("value"), int | float) and isinstance(value, int | float):
            old = f"v{compared['version']}: {compared['value']:.4g}{_spread(compared)}"
            if compared.get("rescored_from"):
                old += f" (re-scored; {compared['rescored_from']['value']:.4g} on its own data)"
            if compared["value"]:
                relative = (value - compared["value"]) / abs(compared["value"])
                mark = "▼" if relative < 0 else "▲" if relative > 0 else "="
                better = "better" if relative < 0 else "worse" if relative > 0 else "equal"
                size = f"{abs(relative):.1%}" if abs(relative) >= 0.001 or not relative else "<0.1%"
                change = f"{mark} {size} ({better})"
        links = mlflow_links(model, record, cwd)
        shown = f"[{name}]({links['model']})" if "model" in links else str(name)
        version_shown = f"[v{version}]({links['version']})" if "version" in links else f"v{version}"
        metric = (f"{record.get('metric')} {value:.4g}{_spread(record)}"
                  if isinstance(value, int | float) else "")  # fmt: skip
        rows.append(f"| {shown} | {version_shown} | {metric} | {old} | {change} | "
                    f"**{record.get('decision')}** |")  # fmt: skip
        note = f"- {name} v{version}: {record.get('reason', '')}"
        if "run" in links:
            note += f" ([run]({links['run']}))"
        notes.append(note)
        if "grid" in links:
            notes.append(f"  ![{name} v{version}: evaluation grid]({links['grid']})")
    return rows + [""] + notes


def _spread(record: dict) -> str:
    """' ± 0.05' of a record's std (its evaluation noise), if it has one."""
    std = record.get("std")
    return f" ± {std:.2g}" if isinstance(std, int | float) else ""


def mlflow_links(model: str, record: dict, cwd: Path) -> dict[str, str]:
    """Links into the MLflow UI and to the evaluation grid, for an http(s) tracking URI."""
    uri = without_credentials(os.environ.get("MLFLOW_TRACKING_URI", "")).rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return {}
    if not urlsplit(uri).hostname:
        return {}
    uri = without_credentials(uri)  # never a user or password into a comment
    name, version, run_id = record.get("name"), record.get("version"), record.get("run_id")
    links = {"model": ui_url(uri, f"models/{name}"),
             "version": ui_url(uri, f"models/{name}/versions/{version}")}  # fmt: skip
    try:
        run_record = json.loads((cwd / paths.run_record(model)).read_text())
    except (OSError, ValueError):
        return links
    if run_record.get("run_id") == run_id and run_record.get("experiment_id"):
        links["run"] = ui_url(uri, f"experiments/{run_record['experiment_id']}/runs/{run_id}")
        # evaluate logs its grid to the training run, in its evaluation's artifact folder
        grid = quote(f"{EVAL_PREFIX}{paths.eval_grid(model).name}", safe="")
        links["grid"] = f"{uri}/get-artifact?path={grid}&run_uuid={run_id}"
    return links


def _value(value: Any) -> str:
    """A metric or param value as a report cell: numbers to 5 significant digits, as DVC
    prints them; '-' where the revision has none."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def metrics_table(diff: dict[str, dict[str, dict]]) -> list[str]:
    """`dvc metrics diff --all --json` as a Markdown table of the figures that changed, each
    `<figure>_std` folded into its figure's row as 'value ± std' on both sides (a change
    inside the noise reads as one). Left out: the EVALUATION_CONSTANTS, which describe the
    evaluation rather than the model, and validate's checks one by one (a failed check
    fails the job, and the report names it)."""
    rows = []
    for path, figures in diff.items():
        for key, change in figures.items():
            if key.startswith((*EVALUATION_CONSTANTS, "checks.")):
                continue
            if key.endswith(STD) and key.removesuffix(STD) in figures:
                continue  # folded into its figure's row
            old, new = change.get("old"), change.get("new")
            spread = figures.get(key + STD, {})
            if old == new and spread.get("old") == spread.get("new"):
                continue  # neither the figure nor its spread changed
            cells = []
            for side, value in (("old", old), ("new", new)):
                cell = _value(value)
                if value is not None and spread.get(side) is not None:
                    cell += f" ± {_value(spread[side])}"
                cells.append(cell)
            rows.append(f"| {path} | {key} | {cells[0]} | {cells[1]} | "
                        f"{_value(change.get('diff'))} |")  # fmt: skip
    if not rows:
        return []
    return ["| Path | Metric | base | workspace | Change |", "|---|---|---|---|---|", *rows]


def params_table(diff: dict[str, dict[str, dict]]) -> list[str]:
    """`dvc params diff --json` as a Markdown table."""
    rows = [f"| {path} | {key} | {_value(change.get('old'))} | {_value(change.get('new'))} |"
            for path, params in diff.items() for key, change in params.items()]  # fmt: skip
    return ["| Path | Param | base | workspace |", "|---|---|---|---|", *rows] if rows else []


def error_line(output: str) -> str:
    """The last error line of `dvc repro`'s output: the stage's own ("error: ..."), which
    says why, before DVC's ("ERROR: failed to reproduce ..."), which says where; else the
    output's last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    dvc = [line for line in lines if line.startswith("ERROR:")]
    return (stage_error(output) or (dvc or lines or ["no output"])[-1])[:500]


def last_line(result: subprocess.CompletedProcess) -> str:
    text = (result.stderr or result.stdout or "").strip().splitlines()
    return text[-1] if text else f"exit {result.returncode}"
