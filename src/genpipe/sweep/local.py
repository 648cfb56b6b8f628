"""The local engine: DVC's own queue on this machine, as `dvc exp run --queue` and
`dvc queue start` do by hand. Each point is queued under its experiment's name; the queue's
workers run them in temporary copies of the workspace, with the sweep's branch and id in
their environment (task.task_env) and MLflow's sqlite store, if it is the default, named by
its absolute path, so that the runs land in the workspace's store, not in the copies."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from genpipe.sweep.grid import SweepError
from genpipe.sweep.record import DONE, FAILED, PENDING, RUNNING, PointState, Sweep
from genpipe.sweep.task import dvc_command, task_env

# dvc queue status's words -> the sweep's
QUEUE_STATES = {"Queued": PENDING, "Running": RUNNING, "Success": DONE, "Failed": FAILED}


def _dvc(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([dvc_command(), *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()]
        found = lines[-1] if lines else f"exit {out.returncode}"
        raise SweepError(f"dvc {' '.join(args[:2])}: {found}")
    return out


def queue_env(sweep: Sweep) -> dict[str, str]:
    env = task_env(sweep)
    from genpipe.tracking.store import DEFAULT_TRACKING_URI

    if env.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI) == DEFAULT_TRACKING_URI:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(sweep.workspace) / 'mlflow.db'}"
    return env


def submit(sweep: Sweep, indices: list[int], max_parallel: int | None, wait: bool) -> None:
    """Queue the points `indices` and start the queue's workers (1 unless max_parallel);
    with `wait`, return once none of the sweep's entries is queued or running."""
    from dvc.repo import Repo

    with Repo(sweep.workspace) as repo:
        workers = repo.experiments.celery_queue.worker_status()
    if workers:  # it would run the points without the sweep's environment
        raise SweepError(f"dvc queue: expected no queue worker running (a running one would "
                         f"run the sweep's points without its branch and MLflow store); found "
                         f"{len(workers)}: `dvc queue stop`, or wait for its "
                         "experiments")  # fmt: skip
    for index in indices:
        args = ["exp", "run", "--queue", "-n", sweep.experiment(index)]
        for override in sweep.points[index]:
            args += ["-S", override]
        _dvc(args)
    _dvc(["queue", "start", "-j", str(max_parallel or 1)], env=queue_env(sweep))
    idle = 0
    while wait:
        waiting = [s for s in states(sweep).values() if s.state in (PENDING, RUNNING)]
        if not waiting:
            return
        with Repo(sweep.workspace) as repo:
            idle = 0 if repo.experiments.celery_queue.worker_status() else idle + 1
        if idle >= 5:  # no worker for 10 s and points still queued
            raise SweepError(f"dvc queue: its workers stopped with {len(waiting)} of the "
                             "sweep's points still queued; `dvc queue start` runs them")
        time.sleep(2)


def experiments(commit: str) -> dict[str, str]:
    """This repository's experiments of `commit`: name -> ref."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname)",
                          f"refs/exps/{commit[:2]}/{commit[2:]}/"],
                         capture_output=True, text=True)  # fmt: skip
    return {ref.rsplit("/", 1)[1]: ref for ref in out.stdout.split()}


def states(sweep: Sweep) -> dict[int, PointState]:
    """Each point, from the queue's entries and the experiments that exist."""
    from dvc.repo import Repo

    names = {sweep.experiment(i): i for i in range(len(sweep.points))}
    found: dict[int, PointState] = {}
    with Repo(sweep.workspace) as repo:
        for entry in repo.experiments.celery_queue.status():
            if entry.get("name") in names:
                found[names[entry["name"]]] = PointState(QUEUE_STATES.get(entry["status"], PENDING))
    done = experiments(sweep.commit)
    for name, index in names.items():
        if name in done:
            state = found.setdefault(index, PointState(DONE))
            state.state = DONE
            state.weights = weights(done[name])
        elif found.get(index, PointState()).state == FAILED:
            found[index].error = last_error(name)
    return found


def weights(ref: str) -> dict[str, str]:
    """Each model's weights' md5, from the experiment's dvc.lock."""
    from genpipe import dvclock, paths, yamlio
    from genpipe.models import TABLE

    out = subprocess.run(["git", "show", f"{ref}:dvc.lock"], capture_output=True, text=True)
    entries = (yamlio.load(out.stdout) or {}).get("stages", {}) if out.returncode == 0 else {}
    found = {m: dvclock.out_md5(entries, f"train@{m}", paths.weights_dir(m)) for m in TABLE}
    return {m: md5 for m, md5 in found.items() if md5}


def last_error(name: str) -> str | None:
    """A failed experiment's last error line, from `dvc queue logs`."""
    out = subprocess.run([dvc_command(), "queue", "logs", name], capture_output=True, text=True,
                         env={**os.environ, "DVC_NO_ANALYTICS": "1"})  # fmt: skip
    lines = [line.strip() for line in out.stdout.splitlines()
             if line.startswith(("error: ", "ERROR: "))]  # fmt: skip
    return lines[-1] if lines else None
