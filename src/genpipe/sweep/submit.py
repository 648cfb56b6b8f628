"""`genpipe sweep`: a grid of params points, one DVC experiment each, run on an engine (DVC's
queue here, or a Slurm array), and `genpipe sweep status`: where each point stands.

Before anything is submitted: every point passes `genpipe params`; the checkout is clean
(the tasks run the commit, not the workspace); on Slurm the commit is on the git remote and
MLflow is a server the nodes reach. Submitting the same grid of the same commit again runs
only the points without a finished experiment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genpipe.sweep import local, slurm
from genpipe.sweep.grid import SweepError, check, describe, expand, sweep_id
from genpipe.sweep.record import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    PointState,
    Sweep,
    load,
    read_point,
)

SAFE_PATH = re.compile(r"[A-Za-z0-9._+/-]+")  # what an #SBATCH line takes as it is


@dataclass(frozen=True)
class Request:
    overrides: list[str]
    engine: str | None  # None: params.yaml's sweep.engine
    wait: bool
    flags: dict[str, object]  # Resources' fields given on the command line (None: not given)


def _git(*args: str, check_ok: bool = True) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise SweepError("git: expected git on PATH (a sweep runs a commit); found no such "
                         "command") from None  # fmt: skip
    except subprocess.TimeoutExpired:
        raise SweepError(f"git {args[0]}: expected an answer within 300 s; found none") from None
    if check_ok and out.returncode != 0:
        raise SweepError(f"git {args[0]}: expected a git checkout with a commit; found "
                         f"{' '.join(out.stderr.split()) or f'exit {out.returncode}'}")  # fmt: skip
    return out.stdout.strip()


def _clean_commit() -> str:
    commit = _git("rev-parse", "HEAD")
    changed = _git("diff", "--name-only", "HEAD").splitlines()  # staged or not
    if changed:
        names = ", ".join(changed[:5])
        raise SweepError(f"genpipe sweep: expected a clean checkout (each point runs commit "
                         f"{commit[:12]}, not the workspace); found changes to {names}: "
                         "commit them first")  # fmt: skip
    return commit


def _remote_url(remote: str, commit: str) -> str:
    """The git remote's URL (a local path made absolute), once the commit is known to be
    there: each task clones it from there."""
    from urllib.parse import urlsplit

    url = _git("remote", "get-url", remote, check_ok=False)
    if not url:
        raise SweepError(f"sweep.git_remote: expected a git remote named {remote!r} (the tasks "
                         "clone from it and push their experiments to it); found none")  # fmt: skip
    if "://" in url and urlsplit(url).password:
        raise SweepError(f"git remote {remote}: expected a URL without a password or token (it "
                         "goes into the sweep's record and every task's log; use a credential "
                         "helper or SSH); found one")  # fmt: skip
    if "://" not in url and not _scp_like(url) and Path(url).exists():
        url = str(Path(url).resolve())
    fetched = subprocess.run(["git", "fetch", "--quiet", remote], capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    if fetched.returncode != 0:
        found = " ".join(fetched.stderr.split()) or f"exit {fetched.returncode}"
        raise SweepError(f"git fetch {remote}: expected the git remote the tasks clone from to "
                         f"answer; found {found}")  # fmt: skip
    if not _git("branch", "-r", "--contains", commit, "--list", f"{remote}/*", check_ok=False):
        raise SweepError(f"genpipe sweep: expected commit {commit[:12]} on the git remote "
                         f"{remote} (each task clones it from there); found it only here: "
                         f"`git push {remote} HEAD` first")  # fmt: skip
    return url


def _scp_like(url: str) -> bool:
    head = url.split("/", 1)[0]
    return ":" in head and "@" in head


def _server_uri() -> str:
    from genpipe.tracking.store import tracking_uri, without_credentials

    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        raise SweepError(f"MLFLOW_TRACKING_URI: expected an MLflow server the nodes reach "
                         f"(http(s)://), as the tasks log their runs to it; found "
                         f"{without_credentials(uri)}, which each task's clone would "
                         "take with it")  # fmt: skip
    return without_credentials(uri)


def resources(sweep_params, flags: dict[str, object]) -> slurm.Resources:
    values = {name: getattr(sweep_params, name) for name in slurm.Resources.__dataclass_fields__}
    values.update({k: v for k, v in flags.items() if v is not None and k in values})
    return slurm.Resources(**values)


def _settings(params, flags: dict[str, object]):
    """params.yaml's sweep section with the flags given, checked as params.yaml is."""
    from genpipe.errors import ParamsError
    from genpipe.params.load import parse_params

    raw = params.model_dump(mode="json", by_alias=True)
    raw["sweep"].update({k: v for k, v in flags.items() if v is not None})
    try:
        return parse_params(raw, source="genpipe sweep").sweep
    except ParamsError as exc:
        raise SweepError(f"genpipe sweep: {exc}") from None


def prepare(request: Request) -> tuple[Sweep, list[int], slurm.Resources]:
    """Everything checked before a submission: the points, the flags, the checkout, and on
    Slurm the server and the git remote; the sweep (its record as before, for a
    resubmission), the points to run and what each task asks for."""
    from genpipe import paths
    from genpipe.params.load import load_checked_params

    params = load_checked_params()
    engine = request.engine or params.sweep.engine
    points = expand(request.overrides)
    check(paths.PARAMS, points)
    settings = _settings(params, request.flags)
    commit = _clean_commit()
    workspace = Path.cwd().resolve()
    if not SAFE_PATH.fullmatch(str(workspace)):
        raise SweepError(f"genpipe sweep: expected a workspace path of letters, digits and "
                         f"._+-/ (it goes into #SBATCH lines); found "
                         f"{str(workspace)!r}")  # fmt: skip
    ident = sweep_id(commit, engine, points)
    try:  # a resubmission: the same record, its checkpoints where they were
        sweep = load(Path("sweeps") / ident)
    except SweepError:
        sweep = Sweep(ident, engine, commit, points, workspace=str(workspace),
                      checkpoints=settings.checkpoints,
                      python_bin=str(Path(sys.executable).parent))  # fmt: skip
    sweep.git_remote, sweep.scratch = settings.git_remote, settings.scratch
    if engine == "slurm":
        sweep.tracking_uri = _server_uri()
        sweep.git_url = _remote_url(settings.git_remote, commit)
        done = finished_names(sweep)
        said = slurm.states(sweep.jobs) or {}
        active = {i for i, (_, state, _) in said.items() if state in slurm.ACTIVE}
    else:
        done = set(local.experiments(commit))
        active = {i for i, s in local.states(sweep).items() if s.state in (PENDING, RUNNING)}
    todo = [i for i in range(len(points)) if sweep.experiment(i) not in done and i not in active]
    return sweep, todo, resources(settings, {})


def submit(request: Request, say: Callable[[str], None] = print) -> Sweep:
    sweep, todo, asked = prepare(request)
    sweep.save()
    ident, total = sweep.id, len(sweep.points)
    say(f"sweep {ident}: {total} points of commit {sweep.commit[:12]} on {sweep.engine} "
        f"({total - len(todo)} finished or under way already); records in {sweep.dir}")  # fmt: skip
    if not todo:
        say(f"nothing to submit: every point has a finished experiment or a task under way "
            f"(genpipe sweep status {ident})")  # fmt: skip
        return sweep
    if sweep.engine == "slurm":
        script = slurm.write_script(sweep, asked)
        say(f"batch script: {script}")
        job = slurm.submit(script, todo, asked.max_parallel)
        sweep.jobs.append(job)
        sweep.save()
        say(f"submitted job {job} ({len(todo)} tasks); follow it with: {slurm.follow(job)}"
            f" or genpipe sweep status {ident}")  # fmt: skip
        if request.wait:
            for each in sweep.jobs:  # an earlier job's tasks still under way, then this one
                slurm.wait(each)
    else:
        local.submit(sweep, todo, asked.max_parallel, request.wait)
        say(f"queued {len(todo)} experiments; follow them with: dvc queue status, "
            f"or genpipe sweep status {ident}")  # fmt: skip
    if request.wait:
        lines, failed = status_lines(sweep)
        for line in lines:
            say(line)
        if failed:
            raise SweepError(f"sweep {ident}: {failed} of {total} points failed; "
                             f"`genpipe sweep status {ident}` names each with its error "
                             "line, and submitting the sweep again reruns them")  # fmt: skip
    return sweep


def finished_names(sweep: Sweep) -> set[str]:
    """The sweep's experiments of its commit on the git remote (one `git ls-remote`)."""
    prefix = f"refs/exps/{sweep.commit[:2]}/{sweep.commit[2:]}/"
    out = subprocess.run(["git", "ls-remote", sweep.git_url, f"{prefix}*"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    if out.returncode != 0:
        found = " ".join(out.stderr.split()) or f"exit {out.returncode}"
        raise SweepError(f"git ls-remote {sweep.git_url}: expected the git remote to answer; "
                         f"found {found}")  # fmt: skip
    refs = [line.split("\t")[1] for line in out.stdout.splitlines() if "\t" in line]
    return {ref.rsplit("/", 1)[1] for ref in refs}


def point_states(sweep: Sweep) -> dict[int, PointState]:
    """Each point's state: on Slurm, the task's own record, corrected by what Slurm says of
    a task that ended without recording its end (killed, out of memory, a node lost), and
    of a point submitted again whose new task has not started; the records as they are
    when Slurm cannot be asked."""
    if sweep.engine != "slurm":
        return local.states(sweep)
    records = {index: read_point(sweep, index) for index in range(len(sweep.points))}
    # the jobs submitted from here, and any a person submitted by hand (sbatch sweep.sbatch)
    jobs = list(dict.fromkeys(sweep.jobs + [r.job.split("_")[0] for r in records.values()
                                            if r.job]))  # fmt: skip
    scheduler = slurm.states(jobs)
    if scheduler is None:
        return records
    for index, state in records.items():
        job, said, reason = scheduler.get(index, ("", "", ""))
        mine = (state.job or "").split("_")[0]
        if job and job != mine and said in slurm.ACTIVE:  # a newer task of the point
            records[index] = PointState(PENDING if said == "PENDING" else RUNNING,
                                        job=f"{job}_{index}")  # fmt: skip
        elif state.state == RUNNING and said not in slurm.ACTIVE and said != "COMPLETED":
            what = f"Slurm says {said} ({reason})" if said else "Slurm no longer lists it"
            state.state = FAILED
            state.error = f"{what} and the task recorded no end (killed? see its log)"
        elif state.state == PENDING and said in slurm.ENDED_BADLY:
            state.state, state.error = FAILED, f"Slurm says {said} ({reason}) before it started"
            state.job = f"{job}_{index}"
        elif state.state == FAILED and job == mine and said in slurm.ENDED_BADLY - {"FAILED"}:
            state.error = f"{state.error} (Slurm: {said})"
        elif state.state == PENDING and said == "PENDING":
            state.job = f"{job}_{index}"
    return records


def status_lines(sweep: Sweep) -> tuple[list[str], int]:
    """The status table, a line a point (and its error and log below a failed one), and the
    number of failed points."""
    states = point_states(sweep)
    jobs = f", jobs {' '.join(sweep.jobs)}" if sweep.jobs else ""
    head = (f"sweep {sweep.id}: {sweep.engine}, commit {sweep.commit[:12]}, "
            f"{len(sweep.points)} points{jobs}")  # fmt: skip
    lines = [head, f"{'point':<6} {'state':<8} {'experiment':<14} {'task':<12} "
                   "params / MLflow runs (or weights)"]  # fmt: skip
    failed = 0
    for index, point in enumerate(sweep.points):
        state = states.get(index, PointState())
        line = (f"{index:<6} {state.state:<8} {sweep.experiment(index):<14} "
                f"{state.job or '-':<12} {describe(point)}")  # fmt: skip
        if state.runs:
            line += "  runs " + " ".join(f"{m}:{r[:8]}" for m, r in sorted(state.runs.items()))
        elif state.weights:
            weights = sorted(state.weights.items())
            line += "  weights " + " ".join(f"{m}:{w[:8]}" for m, w in weights)
        lines.append(line)
        if state.state == FAILED:
            failed += 1
            lines.append(f"{'':<6} error: {(state.error or 'unknown').removeprefix('error: ')}")
            if state.log:
                lines.append(f"{'':<6} log: {state.log}")
    said = [states.get(i, PointState()).state for i in range(len(sweep.points))]
    counts = {s: said.count(s) for s in (PENDING, RUNNING, DONE, FAILED)}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return lines, failed


def status(ident: str) -> list[str]:
    sweep = load(Path(ident))
    if sweep.engine == "local" and Path.cwd().resolve() != Path(sweep.workspace):
        try:  # DVC's queue is the workspace's
            os.chdir(sweep.workspace)
        except OSError as exc:
            raise SweepError(f"sweep {sweep.id}: expected its workspace at {sweep.workspace} "
                             f"(DVC's queue lives there); found {exc.strerror}") from None
    return status_lines(sweep)[0]
