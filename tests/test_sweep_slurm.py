"""`genpipe sweep` on a one-node Slurm cluster (scripts/slurm_cluster.sh) and the team stack
(scripts/team_stack.sh): each task a clean clone of the submitted commit, its experiment
pushed to a bare git remote, its outputs to the DVC remote on S3, its runs to the MLflow
server; a crashing point failing alone; a cancelled task resuming with the same bits as an
uninterrupted run, which DVC's queue (--on local) gives too; and the multi-node training
template, run on one node with two processes.

The tests of the class share one cluster, one stack and one project, in order: the first
sweep's run cache lets the later ones skip the stages they share with it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from test_pipeline import copy_project, set_params
from test_team_stack import GIT_ENV, client_env, configure_remote, gan_only, require, stack  # noqa: F401

from net import free_ports

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLUSTER_SCRIPT = REPO / "scripts/slurm_cluster.sh"
PREFIX = "sweep"  # register.name_prefix: the model sweep-gan
SMALL = ["--cpus-per-task", "1", "--mem", "1G"]  # two tasks at once on a 2-core node


@dataclass
class Cluster:
    dir: Path
    conf: Path


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require(shutil.which("slurmctld") is not None and shutil.which("munged") is not None,
            "Slurm (Debian's slurm-wlm and munge)")  # fmt: skip
    require(os.geteuid() == 0, "root (slurmd starts jobs as their users)")
    path = Path(tempfile.mkdtemp(prefix="genpipe-slurm-"))
    ctld, slurmd = free_ports(2)
    env = {**os.environ, "SLURM_CLUSTER_CTLD_PORT": str(ctld), "SLURM_CLUSTER_D_PORT": str(slurmd)}

    def script(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(CLUSTER_SCRIPT), command, str(path)], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    try:
        up = script("up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"export SLURM_CONF={path}/slurm.conf" in up.stdout.splitlines()
        status = script("status")
        assert status.stdout.split("\n")[:3] == ["munged: up", "slurmctld: up", "slurmd: up"]
        yield Cluster(path, path / "slurm.conf")
    finally:
        down = script("down")
        assert script("status").returncode == 3, down.stdout + down.stderr
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Project:
    path: Path
    remote: Path  # the bare git remote
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 900,
            cwd: Path | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        out = subprocess.run(args, cwd=cwd or self.path, env=self.env, capture_output=True,
                             text=True, timeout=timeout)  # fmt: skip
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {out.returncode}\n{out.stdout}\n"
                                 f"{out.stderr}")  # fmt: skip
        return out

    def sweep(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "genpipe"), "sweep", *args, check=check)

    def points(self, ident: str) -> list[dict]:
        folder = self.path / "sweeps" / ident / "points"
        return [json.loads((folder / f"{i}.json").read_text())
                for i in range(len(list(folder.glob("*.json"))))]  # fmt: skip

    def remote_experiments(self) -> list[str]:
        out = self.run("git", "ls-remote", str(self.remote), "refs/exps/*").stdout
        return sorted(line.rsplit("/", 1)[1] for line in out.splitlines())


@pytest.fixture(scope="module")
def project(cluster, stack, tmp_path_factory) -> Project:  # noqa: F811
    """The tiny pipeline (GAN only), run and pushed to its DVC remote on the stack's S3
    (credentials in .dvc/config.local, which each task copies from the workspace), committed
    with its dvc.lock and pushed to a bare git remote: a task pulls the outputs and reruns
    only the stages its point changes."""
    root = tmp_path_factory.mktemp("sweep")
    path = copy_project(root / "project")
    gan_only(path)
    set_params(path, register={"name_prefix": PREFIX})
    env = {**client_env(stack.uri), "SLURM_CONF": str(cluster.conf)}
    project = Project(path, root / "remote.git", env)
    configure_remote(stack, path)
    project.run("dvc", "repro")
    project.run("dvc", "push")
    project.run("git", "init", "-q", "--bare", str(project.remote))
    project.run("git", "add", "-A")
    project.run("git", "commit", "-q", "-m", "tiny pipeline")
    project.run("git", "remote", "add", "origin", str(project.remote))
    project.run("git", "push", "-q", "origin", "main")
    return project


def sweep_id(result: subprocess.CompletedProcess) -> str:
    return re.search(r"^sweep (sw[0-9a-f]{8}):", result.stdout, re.M).group(1)


def runs_of(uri: str, ident: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`genpipe.sweep` = '{ident}'")


class TestSweepOnSlurm:
    def test_two_recipes_by_two_seeds_end_as_experiments_outputs_and_runs(
        self, project, stack  # noqa: F811 (the fixture)
    ):
        from mlflow import MlflowClient

        client = MlflowClient(stack.uri)
        before = client.get_registered_model(f"{PREFIX}-gan").aliases  # the commit's own run
        start = time.monotonic()
        result = project.sweep("--on", "slurm", "-S", "gan.lr_g=0.0002,0.0004",
                               "-S", "train.seed=0,1", *SMALL, "--wait")  # fmt: skip
        wall = time.monotonic() - start
        ident = sweep_id(result)
        assert re.search(r"^submitted job \d+ \(4 tasks\); follow it with: squeue", result.stdout,
                         re.M)  # fmt: skip
        script = (project.path / "sweeps" / ident / "sweep.sbatch").read_text()
        for line in ("#SBATCH --array=0-3", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=1G",
                     "#SBATCH --time=04:00:00"):  # fmt: skip
            assert line in script.splitlines(), script
        assert "4 done, 0 failed" in result.stdout

        # the experiments on the git remote, their outputs on the DVC remote
        names = [f"{ident}-{i}" for i in range(4)]
        assert project.remote_experiments() == names
        points = project.points(ident)
        for point in points:
            md5 = point["weights"]["gan"].removesuffix(".dir")
            assert stack.s3_keys(f"dvc/files/md5/{md5[:2]}/{md5[2:]}"), point
        assert len({p["weights"]["gan"] for p in points}) == 4
        project.run("dvc", "exp", "pull", "--no-cache", "origin", *names)
        listed = project.run("dvc", "exp", "list", "--name-only").stdout.split()
        assert sorted(listed) == names

        # 4 MLflow runs, each named by its point's record; candidates only, never champion
        runs = runs_of(stack.uri, ident)
        assert sorted(r.info.run_id for r in runs) == sorted(p["runs"]["gan"] for p in points)
        assert {r.info.status for r in runs} == {"FINISHED"}
        aliases = client.get_registered_model(f"{PREFIX}-gan").aliases
        candidate = f"candidate-sweep-{ident}"
        assert aliases == {**before, candidate: aliases[candidate]}
        assert set(before) == {"champion"}  # the sweep's versions moved neither it nor challenger

        compare = project.run(str(BIN / "genpipe"), "compare", "gan", "--sweep", ident).stdout
        rows = [line.split() for line in compare.splitlines()
                if re.match(r"^[0-9a-f]{12} +[0-9a-f]{8} ", line)]  # fmt: skip
        assert [row[2] for row in rows] == ["2", "2"], compare
        assert {row[-1] for row in rows} == {"0.0002", "0.0004"}, compare

        seconds = [p["seconds"] for p in points]
        print(f"\n4-point sweep on the one-node cluster: {wall:.0f} s wall; per task " + "; ".join(
            ", ".join(f"{k} {v:.1f}" for k, v in sorted(s.items())) for s in seconds))  # fmt: skip

    def test_a_crashing_point_fails_alone_and_a_resubmission_runs_only_it(self, project):
        # point 0 is the commit's own params: nothing of it reruns
        args = ["--on", "slurm", "-S", "train.device=auto,cuda", *SMALL, "--wait"]
        first = project.sweep(*args, check=False)
        ident = sweep_id(first)
        assert first.returncode == 1
        assert first.stderr.strip().splitlines()[-1] == (
            f"error: sweep {ident}: 1 of 2 points failed; `genpipe sweep status {ident}` names "
            "each with its error line, and submitting the sweep again reruns them")
        status = project.sweep("status", ident).stdout
        assert re.search(rf"^0 +done +{ident}-0 ", status, re.M), status
        assert re.search(rf"^1 +failed +{ident}-1 ", status, re.M), status
        assert "error: train.device: expected a CUDA GPU for 'cuda'; found none" in status
        log = re.search(r"log: (\S+)", status).group(1)
        assert "found none" in Path(log).read_text()
        done_before = project.points(ident)[0]

        again = project.sweep(*args, check=False)
        assert "2 points of commit" in again.stdout
        assert "(1 finished or under way already)" in again.stdout
        assert re.search(r"^submitted job \d+ \(1 tasks\)", again.stdout, re.M)
        points = project.points(ident)
        assert points[0] == done_before  # point 0 did not run again
        assert points[1]["job"].split("_")[0] != done_before["job"].split("_")[0]
        assert points[1]["state"] == "failed"
        assert project.remote_experiments().count(f"{ident}-0") == 1

    def test_a_cancelled_task_resumes_with_the_bits_of_an_uninterrupted_run(self, project, cluster):
        grid = ["-S", "gan.steps=3000", "-S", "train.seed=3"]
        submitted = project.sweep("--on", "slurm", *grid, *SMALL)
        ident = sweep_id(submitted)
        job = re.search(r"^submitted job (\d+)", submitted.stdout, re.M).group(1)
        logs = project.path / "sweeps" / ident / "logs"
        checkpoint = project.path / "sweeps" / ident / "checkpoints/0/gan/checkpoint.pt"
        deadline = time.monotonic() + 300
        while not (checkpoint.exists() and "train gan: step" in _read(logs / f"0-{job}.out")):
            assert time.monotonic() < deadline, _read(logs / f"0-{job}.out")[-2000:]
            time.sleep(0.5)
        project.run("scancel", job)
        while project.points(ident)[0]["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        status = project.sweep("status", ident).stdout
        assert "error: stopped by SIGTERM (scancel, or the time limit)" in status, status
        assert checkpoint.exists()

        resumed = project.sweep("--on", "slurm", *grid, *SMALL, "--wait")
        second = re.search(r"^submitted job (\d+)", resumed.stdout, re.M).group(1)
        assert re.search(r"resuming from checkpoints/gan/checkpoint.pt at step [1-9]\d* of 3000",
                         _read(logs / f"0-{second}.out"))  # fmt: skip
        on_slurm = project.points(ident)[0]["weights"]["gan"]
        assert not checkpoint.parent.parent.exists()  # a finished point's checkpoints go

        # the same grid through DVC's queue here: the same weights, bit for bit
        local = project.sweep("--on", "local", *grid, "--wait")
        local_id = sweep_id(local)
        assert local_id != ident and "1 done, 0 failed" in local.stdout
        ref = project.run("git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
        [mine] = [r for r in ref if r.endswith(f"/{local_id}-0")]
        lock = project.run("git", "show", f"{mine}:dvc.lock").stdout
        assert on_slurm in lock


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def test_the_multi_node_template_trains_on_one_node_with_two_processes(cluster, tmp_path):
    """scripts/slurm/train.sbatch: srun starts torchrun on each node (one here), two processes
    each; rank 0 writes the outputs and the script records them in dvc.lock."""
    path = copy_project(tmp_path / "project")
    gan_only(path)
    env = {**client_env(None), "SLURM_CONF": str(cluster.conf)}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run(["dvc", "repro", "validate"], cwd=path, env=env, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    result = subprocess.run(
        ["sbatch", "--wait", "--nodes=1", "--cpus-per-task=2",
         "--export=ALL,GENPIPE_NPROC_PER_NODE=2", "scripts/slurm/train.sbatch", "gan"],
        cwd=path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    [log] = path.glob("genpipe-train-*.out")
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    assert "training gan on 1 node(s) x 2 process(es)" in text
    assert text.count("CPU kernels pinned") == 2  # one a process
    assert (path / "models/gan/weights/generator_ema.safetensors").is_file()
    status = subprocess.run(["dvc", "status", "--json", "train@gan"], cwd=path, env=env,
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(status.stdout) == {}
