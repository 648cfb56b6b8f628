"""A 4-point sweep (2 recipes x 2 seeds) of the tiny pipeline, GAN only, on a one-node
Slurm cluster (`genpipe sweep --on slurm`, 2 one-CPU tasks at once) against the baseline,
the same grid through DVC's queue on this machine (`genpipe sweep --on local`, one worker,
`dvc queue start`'s default, then two), and each Slurm task's overhead (clone, pull, push) against
its `dvc exp run`.

The project is a throwaway copy of the repository's files: run once and pushed (`dvc repro
&& dvc push`) to a DVC remote in a folder, committed and pushed to a bare git remote, its
runs on an `mlflow server` over sqlite, all on 127.0.0.1. Needs root and Debian's
slurm-wlm and munge (scripts/slurm_cluster.sh). About 8 minutes on 2 cores.

Run (from the repository root):
    .venv/bin/python benchmarks/sweep_engines.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from genpipe import yamlio

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GRID = ["-S", "gan.lr_g=0.0002,0.0004", "-S", "train.seed=0,1"]
TINY = {"models": ["gan"], "train": {"batch_size": 16, "checkpoint_every": 10, "log_every": 5},
        "gan": {"steps": 10, "width": 8, "z_dim": 8},
        "evaluate": {"kid_subsets": 5, "domain": {"steps": 100, "width": 8, "feature_dim": 16,
                                                  "min_accuracy": 0.5}},
        "register": {"name_prefix": "bench"}}  # fmt: skip


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)}: exit {out.returncode}\n{out.stdout[-2000:]}\n"
                 f"{out.stderr[-2000:]}")  # fmt: skip
    return out


def project(root: Path, env: dict[str, str]) -> Path:
    path = root / "project"
    names = run(["git", "ls-files", "-co", "--exclude-standard"], REPO, env).stdout.split()
    for name in names:
        if (REPO / name).is_file() and name not in ("dvc.lock", "reports/validation/summary.json"):
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, path / name)
    params = yamlio.load((path / "params.yaml").read_text())
    for key, value in TINY.items():
        params[key] = value if not isinstance(value, dict) else {**params[key], **value}
    params["evaluate"]["domain"] = {**yamlio.load((REPO / "params.yaml").read_text())["evaluate"]
                                    ["domain"], **TINY["evaluate"]["domain"]}  # fmt: skip
    (path / "params.yaml").write_text(yamlio.dump(params))
    for args in (["git", "init", "-q", "-b", "main"],
                 ["git", "init", "-q", "--bare", str(root / "remote.git")],
                 ["dvc", "remote", "add", "-d", "store", str(root / "dvc-remote")],
                 ["dvc", "repro"], ["dvc", "push"], ["git", "add", "-A"],
                 ["git", "commit", "-q", "-m", "tiny"],
                 ["git", "remote", "add", "origin", str(root / "remote.git")],
                 ["git", "push", "-q", "origin", "main"]):  # fmt: skip
        run(args, path, env)
    return path


def sweep(path: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    start = time.monotonic()
    out = run([str(BIN / "genpipe"), "sweep", *GRID, *args, "--wait"], path, env)
    wall = time.monotonic() - start
    assert "4 done, 0 failed" in out.stdout, out.stdout
    return wall, out.stdout.split(":", 1)[0].split()[-1]


def main() -> None:
    if os.geteuid() != 0 or shutil.which("slurmctld") is None:
        sys.exit("sweep_engines: expected root and Debian's slurm-wlm and munge; "
                 "found them missing")
    root = Path(tempfile.mkdtemp(prefix="genpipe-bench-sweep-"))
    ctld, slurmd, mlflow_port = free_ports(3)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1",
           "GX_ANALYTICS_ENABLED": "false", "SLURM_CLUSTER_CTLD_PORT": str(ctld),
           "SLURM_CLUSTER_D_PORT": str(slurmd), "SLURM_CONF": str(root / "slurm/slurm.conf"),
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}  # fmt: skip
    cluster = REPO / "scripts/slurm_cluster.sh"
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri",
                               f"sqlite:///{root}/mlflow.db", "--host", "127.0.0.1", "--port",
                               str(mlflow_port), "--workers", "1"], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        run([str(cluster), "up", str(root / "slurm")], root, env)
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        path = project(root, env)
        slurm_wall, ident = sweep(path, env, "--on", "slurm", "--cpus-per-task", "1", "--mem", "1G")
        local_wall, local_id = sweep(path, env, "--on", "local")
        # the same grid again with 2 workers: the first one's experiments and record removed
        run(["dvc", "exp", "remove", "--all-commits"], path, env)
        run(["dvc", "queue", "remove", "--all"], path, env)
        shutil.rmtree(path / "sweeps" / local_id)
        local2_wall, _ = sweep(path, env, "--on", "local", "--max-parallel", "2")
        records = sorted((path / "sweeps" / ident / "points").glob("*.json"))
        points = [json.loads(p.read_text()) for p in records]
        print(f"4-point sweep (2 recipes x 2 seeds, tiny GAN pipeline) on {os.cpu_count()} cores")
        print(f"  genpipe sweep --on slurm (one-node cluster, 2 tasks at once): "
              f"{slurm_wall:6.1f} s")
        print(f"  baseline: genpipe sweep --on local (DVC's queue, 1 worker):    "
              f"{local_wall:6.1f} s  ({local_wall / slurm_wall:.2f}x the Slurm wall time)")
        print(f"  baseline: genpipe sweep --on local --max-parallel 2 (2 workers): "
              f"{local2_wall:6.1f} s  ({local2_wall / slurm_wall:.2f}x)")
        for what in ("clone", "pull", "run", "push"):
            values = [p["seconds"][what] for p in points]
            print(f"  per Slurm task, {what:<5}: median {statistics.median(values):5.1f} s "
                  f"(min {min(values):.1f}, max {max(values):.1f})")
        overhead = statistics.median(sum(p["seconds"][k] for k in ("clone", "pull", "push"))
                                     for p in points)  # fmt: skip
        running = statistics.median(p["seconds"]["run"] for p in points)
        print(f"  overhead (clone + pull + push) / dvc exp run: {overhead / running:.1%}")
    finally:
        subprocess.run([str(cluster), "down", str(root / "slurm")], env=env, capture_output=True)
        os.killpg(server.pid, 15)
        server.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
