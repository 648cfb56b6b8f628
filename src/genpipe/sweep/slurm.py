"""The Slurm engine: one `sbatch --array` job a submission, one array task a point, each
running `genpipe sweep task` (sweep.task) in a clone of its own. The batch script is
written to sweeps/<id>/sweep.sbatch, readable and submittable by hand; what Slurm says of
each task (squeue, and sacct where accounting is on) completes the tasks' own records."""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genpipe.sweep.grid import SweepError
from genpipe.sweep.record import Sweep

SCRIPT = "sweep.sbatch"
# Slurm's states of a task that ended without success, as squeue and sacct spell them
ENDED_BADLY = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
               "BOOT_FAIL", "DEADLINE", "REVOKED"}  # fmt: skip
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
          "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}  # fmt: skip


@dataclass(frozen=True)
class Resources:
    """What each task asks for: the sweep section of params.yaml, then the flags."""

    partition: str | None
    time: str
    cpus_per_task: int
    mem: str
    gres: str | None
    account: str | None
    max_parallel: int | None


def script(sweep: Sweep, resources: Resources) -> str:
    """The batch script: #SBATCH lines, then the environment's bin/ first on PATH (the
    stages call `python`) and one task. The array spans every point; a task whose experiment
    is on the git remote already ends at once, so the script may be submitted again as it is."""
    array = f"0-{len(sweep.points) - 1}"
    if resources.max_parallel:
        array += f"%{resources.max_parallel}"
    lines = [
        "#!/bin/bash",
        f"# genpipe sweep {sweep.id}: {len(sweep.points)} points of commit {sweep.commit[:12]}",
        f"# submit again with: sbatch {sweep.dir / SCRIPT}  (finished points end at once)",
        f"#SBATCH --job-name=genpipe-{sweep.id}",
        f"#SBATCH --array={array}",
        f"#SBATCH --output={sweep.dir / 'logs'}/%a-%A.out",
        f"#SBATCH --time={resources.time}",
        f"#SBATCH --cpus-per-task={resources.cpus_per_task}",
        f"#SBATCH --mem={resources.mem}",
        "#SBATCH --ntasks=1",
        # SIGTERM 2 minutes before the time limit: the task records its end and keeps its
        # checkpoint for the resubmission
        "#SBATCH --signal=B:TERM@120",
    ]
    for flag, value in (("partition", resources.partition), ("gres", resources.gres),
                        ("account", resources.account)):  # fmt: skip
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    bin_dir = shlex.quote(sweep.python_bin)
    lines += [
        "set -euo pipefail",
        f"export PATH={bin_dir}:\"$PATH\"",
        f"exec {bin_dir}/genpipe sweep task {shlex.quote(str(sweep.dir))} \"$SLURM_ARRAY_TASK_ID\"",
        "",
    ]
    return "\n".join(lines)


def write_script(sweep: Sweep, resources: Resources) -> Path:
    from genpipe.fileio import atomic_path

    path = sweep.dir / SCRIPT
    with atomic_path(path) as tmp:
        tmp.write_text(script(sweep, resources), encoding="utf-8")
    return path


def _run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SweepError(f"{args[0]}: expected Slurm's commands on PATH (sbatch, squeue); "
                         "found no such command (run this on the cluster's login node)") from None
    except subprocess.TimeoutExpired:
        raise SweepError(f"{args[0]}: expected an answer from slurmctld within {timeout:.0f} s; "
                         "found none (is the controller up? `scontrol ping`)") from None


def submit(path: Path, indices: list[int], max_parallel: int | None) -> str:
    """sbatch the script for the tasks `indices` (the array line overridden: only the points
    without a finished experiment); the job id."""
    array = ",".join(str(i) for i in indices) + (f"%{max_parallel}" if max_parallel else "")
    out = _run(["sbatch", "--parsable", f"--array={array}", str(path)])
    job = out.stdout.strip().split(";")[0]  # --parsable: <id>[;<cluster>]
    if out.returncode != 0 or not job.isdigit():
        err = " ".join(out.stderr.split()) or out.stdout.strip() or f"exit {out.returncode}"
        raise SweepError(f"sbatch {path}: expected a job id; found {err}")
    return job


Said = tuple[str, str, str]  # what Slurm says of an array task: (job, state, reason)


def wait(job: str, sleep: Callable[[float], None] = time.sleep, patience: int = 30) -> None:
    """Return once no task of `job` is pending or running (or squeue no longer knows the
    job). squeue is asked every few seconds (1, 2, ... up to 10): sbatch --wait's own polling
    backs off to 32 s and more, half a minute lost on a task of a minute. `patience`
    unanswered questions in a row end the waiting with one line; the job goes on."""
    pause, unanswered = 1.0, 0
    while True:
        found = _squeue(job)
        if found is None:
            unanswered += 1
            if unanswered >= patience:
                raise SweepError(f"squeue: expected to follow job {job}; found no answer "
                                 f"{patience} times in a row (the job goes on: "
                                 "`genpipe sweep status` follows it)")  # fmt: skip
        elif not any(state in ACTIVE for _, state, _ in found.values()):
            return
        else:
            unanswered = 0
        sleep(pause)
        pause = min(pause + 1.0, 10.0)


def states(jobs: list[str]) -> dict[int, Said] | None:
    """Slurm's word on each array task of the sweep's jobs, the latest job's last: index ->
    (job, state, reason); None when squeue cannot be asked. squeue holds a task until
    MinJobAge after it ends; sacct, where accounting is on, beyond that."""
    found: dict[int, Said] = {}
    for job in jobs:
        found.update(_sacct(job))
        queued = _squeue(job)
        if queued is None:
            return None
        found.update(queued)
    return found


def _squeue(job: str) -> dict[int, Said] | None:
    """The job's array tasks as squeue lists them; {} for a job it no longer knows, None
    when it cannot be asked (the controller down)."""
    try:
        out = _run(["squeue", "-h", "-r", "--states=all", "-j", job, "-o", "%K|%T|%r"])
    except SweepError:
        return None
    if out.returncode != 0:
        return {} if "Invalid job id" in out.stderr else None
    found = {}
    for line in out.stdout.splitlines():
        index, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        if index.strip().isdigit():
            found[int(index)] = (job, state.strip(), reason.strip())
    return found


def _sacct(job: str) -> dict[int, Said]:
    try:
        out = _run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "JobID,State,ExitCode"])
    except SweepError:
        return {}
    found = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = line.split("|")
        if len(parts) == 3 and "_" in parts[0] and parts[0].rsplit("_", 1)[1].isdigit():
            state = parts[1].split()[0] if parts[1] else ""
            found[int(parts[0].rsplit("_", 1)[1])] = (job, state, f"exit {parts[2]}")
    return found


def follow(job: str) -> str:
    """How to follow a job, for the person who submitted it."""
    return f"squeue -r -j {job}   (sacct -j {job} where accounting is on)"
