"""One sweep task, on whatever node Slurm gives it: a clean clone of the submitted commit
(never the submitter's workspace, so no DVC lock is shared), the commit's outputs pulled
from the DVC remote (so the stages the point does not change are skipped), the point's
params through `dvc exp run -S`, then the experiment pushed to the git remote and its
outputs to the DVC remote (`dvc exp push`); its MLflow runs went to the team's server as
the stages ran. (genpipe's outputs are `persist`, which DVC's run cache skips: a stage two
points share runs in each.) The clone is removed at the end; checkpoints live apart from
it (Sweep.checkpoint_dir, a shared path), so a task cancelled or out of time resumes from
them when resubmitted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from genpipe import paths
from genpipe.models import TABLE
from genpipe.stage import ERROR
from genpipe.sweep.grid import SweepError
from genpipe.sweep.record import (
    DONE,
    FAILED,
    RUNNING,
    PointState,
    Sweep,
    load,
    read_point,
    write_point,
)


class Cancelled(Exception):
    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} (scancel, or the time limit)")


def _stop(signum: int, _frame: FrameType | None) -> None:
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(stop, signal.SIG_IGN)  # once: the clean-up is not interrupted again
    raise Cancelled(signum)


def finished(git_url: str, commit: str, name: str, cwd: Path | None = None) -> bool:
    """Whether the git remote holds experiment `name` of `commit` (DVC's ref for it:
    refs/exps/<commit[:2]>/<commit[2:]>/<name>)."""
    ref = f"refs/exps/{commit[:2]}/{commit[2:]}/{name}"
    out = subprocess.run(["git", "ls-remote", git_url, ref], capture_output=True, text=True,
                         cwd=cwd, timeout=300)  # fmt: skip
    if out.returncode != 0:
        raise SweepError(f"git ls-remote {git_url}: expected the git remote to answer; found "
                         f"{' '.join(out.stderr.split()) or f'exit {out.returncode}'}")  # fmt: skip
    return bool(out.stdout.strip())


def run_task(where: Path, index: int) -> None:
    """Run point `index` of the sweep in `where` and record what happened in its point file;
    a failure raises after it is recorded, so the task (and its array entry) fails."""
    sweep = load(where)
    if not 0 <= index < len(sweep.points):
        raise SweepError(f"sweep {sweep.id}: expected a point from 0 to {len(sweep.points) - 1}; "
                         f"found {index}")  # fmt: skip
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    log = sweep.dir / "logs" / f"{index}-{job}.out" if job else None
    state = PointState(RUNNING, job=f"{job}_{index}" if job else None, host=socket.gethostname(),
                       log=str(log) if log else None)  # fmt: skip
    earlier_state = read_point(sweep, index)
    write_point(sweep, index, state)
    for stop in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(stop, _stop)
    scratch = None
    try:
        name = sweep.experiment(index)
        if finished(sweep.git_url, sweep.commit, name):  # its record, if any, stays as it was
            earlier = earlier_state if earlier_state.state == DONE else PointState()
            state.runs, state.weights = earlier.runs, earlier.weights
            state.seconds = earlier.seconds
            state.state, state.skipped = DONE, True
            print(f"sweep {sweep.id}: point {index} ({name}) is on the git remote already",
                  flush=True)  # fmt: skip
            return
        base = sweep.scratch or os.environ.get("TMPDIR") or None
        scratch = Path(tempfile.mkdtemp(prefix=f"genpipe-{name}-", dir=base))
        clone = scratch / "clone"
        _timed(state, "clone", lambda: _clone(sweep, clone, index))
        _timed(state, "pull", lambda: _dvc(["pull", "--allow-missing"], clone, state))
        run = ["exp", "run", "-n", name, "--allow-missing", "--pull"]
        for override in sweep.points[index]:
            run += ["-S", override]
        _timed(state, "run", lambda: _dvc(run, clone, state, env=task_env(sweep)))
        state.runs, state.weights = results(clone)
        push = ["exp", "push", "origin", name]  # the clone's remote: sweep.git_url
        _timed(state, "push", lambda: _dvc(push, clone, state))
        state.state = DONE
        shutil.rmtree(sweep.checkpoint_dir(index), ignore_errors=True)  # a finished run's
    except (Exception, Cancelled) as exc:
        state.state = FAILED
        state.error = state.error or " ".join(str(exc).split())
        raise SweepError(f"sweep {sweep.id} point {index}: {state.error}") from None
    finally:
        if scratch is not None:  # first: the clone holds a copy of .dvc/config.local
            shutil.rmtree(scratch, ignore_errors=True)
        write_point(sweep, index, state)


def task_env(sweep: Sweep) -> dict[str, str]:
    """The stages' environment: a branch of the sweep's own, so that register takes every
    version as a candidate (candidate-sweep-<id>), and the sweep's id on the MLflow runs."""
    return {**os.environ, "GENPIPE_BRANCH": sweep.branch, "GENPIPE_SWEEP": sweep.id,
            "PYTHONUNBUFFERED": "1", "GX_ANALYTICS_ENABLED": "false",
            "DVC_NO_ANALYTICS": "1"}  # fmt: skip


def _timed(state: PointState, what: str, step) -> None:
    start = time.monotonic()
    try:
        step()
    finally:
        state.seconds[what] = round(time.monotonic() - start, 2)


def _clone(sweep: Sweep, clone: Path, index: int) -> None:
    """The commit, checked out from the git remote; the workspace's DVC credentials
    (.dvc/config.local, git-ignored) copied in, and checkpoints/ on the shared path."""
    for args in (["clone", "--quiet", "--no-checkout", sweep.git_url, str(clone)],
                 ["-C", str(clone), "checkout", "--quiet", "--detach", sweep.commit]):  # fmt: skip
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            found = " ".join(out.stderr.split()) or f"exit {out.returncode}"
            raise SweepError(f"git {args[0] if args[0] != '-C' else args[2]} {sweep.git_url}: "
                             f"expected commit {sweep.commit[:12]}; found {found}")
    local = Path(sweep.workspace) / ".dvc" / "config.local"
    if local.is_file():
        shutil.copy2(local, clone / ".dvc" / "config.local")
    shared = sweep.checkpoint_dir(index)
    shared.mkdir(parents=True, exist_ok=True)
    (clone / "checkpoints").symlink_to(shared.resolve(), target_is_directory=True)


def dvc_command() -> str:
    """This environment's dvc (the batch script puts its bin/ first on PATH too)."""
    dvc = Path(sys.executable).parent / "dvc"
    return str(dvc) if dvc.exists() else "dvc"


def _dvc(args: list[str], cwd: Path, state: PointState, env: dict[str, str] | None = None) -> None:
    """A DVC command in the clone, its output passed on to the task's log line by line; a
    failure keeps its last `error: ` line (a stage's own, else DVC's)."""
    proc = subprocess.Popen([dvc_command(), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")  # fmt: skip
    assert proc.stdout is not None
    last = {ERROR: None, "ERROR: ": None}  # a stage's own line, else DVC's
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            for start in last:
                if line.startswith(start):
                    last[start] = line.strip()
    finally:
        if proc.poll() is None:  # a signal ended the reading: the command stops too
            proc.send_signal(signal.SIGTERM)
            try:  # within Slurm's KillWait (30 s by default), so the task records its end
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()
    if proc.returncode != 0:
        said = last[ERROR] or last["ERROR: "]
        state.error = said or f"dvc {' '.join(args[:2])} exited with {proc.returncode}"
        raise SweepError(state.error)


def results(clone: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Each model's MLflow run (its mlflow_run.json) and weights' md5 (dvc.lock), from the
    finished experiment's workspace."""
    from genpipe import dvclock

    entries = dvclock.stages(clone / dvclock.LOCK)
    runs, weights = {}, {}
    for model in TABLE:
        record = clone / paths.run_record(model)
        if record.is_file():
            runs[model] = json.loads(record.read_text(encoding="utf-8")).get("run_id", "")
        md5 = dvclock.out_md5(entries, f"train@{model}", paths.weights_dir(model))
        if md5:
            weights[model] = md5
    return runs, weights
