"""Training on several processes (train.nproc_per_node, torchrun, DDP over gloo on the CPU).

The stage scripts run as they do under DVC: one command that relaunches itself as two
workers. Every run here is tiny (8 x 8 images, width 8, a few dozen steps) but each worker
imports torch and MLflow, so a run costs seconds; process-group timeouts are generous for
a loaded two-core machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from genpipe import checkpoint, distributed
from genpipe.errors import TrainingError
from test_train import HUP_DEFAULT, NOHUP, make_workdir

from net import free_port

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"batch_size": 16, "checkpoint_every": 10, "log_every": 10, "device": "cpu",
         "dist_timeout_s": 120}  # fmt: skip
NETS = {"gan": {"steps": 20, "z_dim": 8, "width": 8, "depth": 0},
        "autoencoder": {"steps": 20, "latent_dim": 4, "width": 8}}  # fmt: skip
# the 2-process run against the 1-process one, per tensor: |a - b| <= TOLERANCE * max|a|.
# Not bitwise: DDP averages the two halves' gradients ((g0 + g1) / 2 rather than one sum over
# the batch) and BatchNorm's statistics are combined from two halves, each a different order
# of float32 additions, ~1e-7 relative per step. Adam divides by sqrt(v), so a parameter
# whose gradient is nearly nil (a bias ahead of BatchNorm, which cancels it) turns that
# rounding into steps of lr's size. Measured over 20 steps (GAN of each loss, R1, d_steps 2;
# ae and vae): at most 3.4e-5 (a discriminator bias), 1.2e-6 elsewhere; 1e-4 leaves 3x room
# and still fails a slice taken twice or a BatchNorm over half the batch (5e-2 and more).
TOLERANCE = 1e-4


def workdir(path: Path, model: str = "gan", train: dict | None = None, **net) -> Path:
    params = {"models": [model], "train": {**TRAIN, **(train or {})},
              model: {**NETS[model], **net}}  # fmt: skip
    return make_workdir(path, params)


def stage(path: Path, model: str = "gan", env: dict | None = None,
          launcher: list[str] | None = None) -> subprocess.Popen:  # fmt: skip
    """The train stage in `path`, as DVC runs it, or under `launcher` (an outer torchrun)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}", **(env or {})}
    script = str(REPO / "pipeline" / f"train_{model}.py")
    return subprocess.Popen([*(launcher or [sys.executable]), script], cwd=path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def workers(pid: int) -> list[int]:
    """The processes started by `pid` (the launcher's workers), from /proc: (pid, ppid)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state ppid
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def communicate(proc: subprocess.Popen, timeout: float = 300) -> str:
    """The stage's stderr once it ends; past `timeout`, it and its workers are killed (a hung
    run fails the test, and leaves nothing running)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        for pid in workers(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        raise


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """The stage's stderr, after asserting it ended well."""
    err = communicate(proc, timeout)
    assert proc.returncode == 0, err
    return err


def weights(path: Path, model: str = "gan") -> dict[str, dict[str, torch.Tensor]]:
    folder = path / "models" / model / "weights"
    return {f.stem: load_file(f) for f in sorted(folder.glob("*.safetensors"))}


def assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key}"


def launcher_leftovers(tmp: Path) -> list[str]:
    """What the launcher left in `tmp` (its TMPDIR): genpipe's folder for the workers' error
    files, or torch's own default, a torchelastic_* folder per launch."""
    return sorted(p.name for p in tmp.iterdir()
                  if p.name.startswith(("genpipe-torchrun-", "torchelastic_")))  # fmt: skip


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, communicate(proc)


def wait_for_step(ckpt: Path, proc: subprocess.Popen, seconds: float = 120) -> int:
    """The step of the checkpoint at `ckpt` once one past the step-0 one is there."""
    deadline = time.monotonic() + seconds
    step = 0
    while step == 0 and time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, RuntimeError, EOFError):  # not there, or replaced
            step = torch.load(ckpt, weights_only=True)["step"]
        time.sleep(0.01)
    assert proc.poll() is None and step > 0, communicate(proc)
    return step


# --- one process per rank, in this test: the BatchNorm and the checks themselves ------------


def _global_batchnorm_rank(rank: int, port: int, out: Path) -> None:
    """Rank `rank` of 2: GlobalBatchNorm2d on its half of a batch, twice (forward and
    backward; then R1's double backward), its results saved for the parent to compare."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)  # fmt: skip
    world = distributed.World(rank, 2, rank)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * 3 + 5  # (N, C, H, W), the global batch; a mean far from 0
    plain = nn.BatchNorm2d(3)
    nn.init.normal_(plain.weight, 1, 0.1)
    net = distributed.sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))
    net[0].load_state_dict(plain.state_dict())
    half = x[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
    for _ in range(2):  # the second call normalises about updated running stats
        y = net(half)
    (grad,) = torch.autograd.grad((y * y).sum(), half, create_graph=True)
    grad.square().sum().backward()  # R1's pattern: a penalty on an input gradient
    torch.save(
        {
            "y": y.detach(),
            "grad": grad.detach(),
            "weight_grad": net[0].weight.grad,
            "state": net[0].state_dict(),
            "type": type(net[0]).__name__,
        },
        out / f"{rank}.pt",
    )
    world = distributed.World(rank, 2, rank)
    distributed.check_same(net, world, "bn")  # the same running stats on both ranks
    with torch.no_grad():
        net[0].weight[0] += rank  # now rank 1's weights differ
    try:
        distributed.check_same(net, world, "bn")
    except TrainingError as exc:
        (out / f"{rank}.err").write_text(str(exc))
    dist.destroy_process_group()


@pytest.mark.integration
def test_global_batchnorm_is_batchnorm_over_the_whole_batch(tmp_path):
    mp.start_processes(_global_batchnorm_rank, args=(free_port(), tmp_path), nprocs=2,
                       start_method="spawn")  # fmt: skip
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    torch.manual_seed(0)
    x = (torch.randn(8, 3, 4, 4) * 3 + 5).requires_grad_(True)
    bn = nn.BatchNorm2d(3)
    nn.init.normal_(bn.weight, 1, 0.1)
    for _ in range(2):
        y = bn(x)
    # each rank's loss is over its half: the sum of the two is the one-process loss
    (grad,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    grad.square().sum().backward()

    assert ranks[0]["type"] == "GlobalBatchNorm2d"
    close = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), **close)
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]), grad.detach(), **close)
    # the weight's gradient is each rank's share; DDP would sum (and halve) them
    torch.testing.assert_close(ranks[0]["weight_grad"] + ranks[1]["weight_grad"], bn.weight.grad,
                               **close)  # fmt: skip
    for rank in ranks:  # BatchNorm2d's state, key for key: running_var unbiased, count 2
        assert list(rank["state"]) == list(bn.state_dict())
        for key, value in bn.state_dict().items():
            torch.testing.assert_close(rank["state"][key], value, **close)
    message = "bn: expected the same weights on all 2 ranks; rank 0 differs from rank 1"
    assert (tmp_path / "0.err").read_text() == message


def test_world_slices_are_disjoint_and_cover_the_batch():
    parts = [distributed.World(r, 4, r).part(16) for r in range(4)]
    assert [list(range(16))[p] for p in parts] == [list(range(4 * r, 4 * r + 4)) for r in range(4)]
    with pytest.raises(TrainingError) as excinfo:
        distributed.check_divisible(18, 4)
    assert str(excinfo.value) == (
        "train.batch_size: expected a multiple of the 4 processes (each takes an equal slice "
        "of the global batch); got 18"
    )


def test_world_size_is_in_the_identity_and_the_launch_params_are_not():
    params = {"seed": 0, "train": {"batch_size": 16, "nproc_per_node": 2, "dist_timeout_s": 60},
              "gan": {}}  # fmt: skip
    one = checkpoint.run_identity("gan", params, "h")
    assert "world_size" not in one and one["train"] == {"batch_size": 16}
    assert checkpoint.run_identity("gan", params, "h", world_size=2) == {**one, "world_size": 2}


def test_under_torchrun_the_stage_joins_rather_than_relaunches(monkeypatch):
    params = distributed.TrainParams(nproc_per_node=2)
    for key, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    assert distributed.launch("train gan", params) is False  # an outer torchrun's worker
    monkeypatch.delenv("WORLD_SIZE")
    one = distributed.TrainParams(nproc_per_node=1)
    assert distributed.launch("train gan", one) is False  # one process: no launcher at all


def test_compile_under_an_outer_torchrun_fails_in_one_line(monkeypatch):
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    train = distributed.TrainParams(compile=True, batch_size=16)
    with pytest.raises(TrainingError) as excinfo, distributed.joined(train, torch.device("cpu")):
        pass
    assert str(excinfo.value) == ("train.compile: expected false under torchrun (torch.compile "
                                  "of the DDP step is not supported); got true")  # fmt: skip
    assert not dist.is_initialized()  # refused before joining any group


# --- the stage, as DVC runs it --------------------------------------------------------------


@pytest.mark.integration
def test_batch_size_not_divisible_by_the_processes_fails_in_one_line(tmp_path):
    path = workdir(tmp_path, train={"batch_size": 15, "nproc_per_node": 2})
    proc = stage(path)
    err = communicate(proc, 120)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == (
        "error: train.batch_size: expected a multiple of the 2 processes (each takes an equal "
        "slice of the global batch); got 15"
    )
    assert "Traceback" not in err and not (path / "checkpoints").exists()


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_in_one_line_within_seconds(tmp_path):
    path = workdir(tmp_path, train={"nproc_per_node": 2}, steps=100000)
    started = time.monotonic()
    tmp = tmp_path / "tmp"  # the launcher's temporary folders
    tmp.mkdir()
    path_dirs = [str(REPO / "tests" / "fault"), os.environ.get("PYTHONPATH", "")]
    fault = {"GENPIPE_TEST_FAIL_RANK": "1", "PYTHONPATH": os.pathsep.join(path_dirs)}
    proc = stage(path, env={**fault, "TMPDIR": str(tmp)})  # rank 1 fails as it joins
    err = communicate(proc, 120)
    assert launcher_leftovers(tmp) == []  # the workers' error files are gone with their folder
    # rank 0 waits for it in a barrier: the launcher stops it at once, no timeout needed
    assert time.monotonic() - started < 60
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == (
        "error: train gan: rank 1 of 2 exited with 1 (rank 1: failing as "
        "GENPIPE_TEST_FAIL_RANK asks)"
    )
    assert "Traceback" not in err


def _resume_rank(rank: int, port: int, out: Path) -> None:
    """Rank `rank` of 2 restores from its own host's checkpoints/: rank 0's holds step 3,
    rank 1's none (a second host, no shared filesystem)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)  # fmt: skip
    world = distributed.World(rank, 2, rank)
    net = nn.Linear(2, 2)
    path = out / f"host{rank}" / "checkpoint.pt"
    identity = {"run": "same"}
    if rank == 0:  # written as rank 0 writes it
        checkpoint.Checkpoint(path, identity, 10, {"net": net}, ()).snapshot(3, [])
    try:
        checkpoint.Checkpoint(path, identity, 10, {"net": net}, (), world).restore()
    except TrainingError as exc:
        (out / f"{rank}.err").write_text(str(exc))
    dist.destroy_process_group()


@pytest.mark.integration
def test_ranks_that_find_different_checkpoints_all_stop_in_one_line(tmp_path):
    mp.start_processes(_resume_rank, args=(free_port(), tmp_path), nprocs=2,
                       start_method="spawn")  # fmt: skip
    for rank in range(2):  # every rank stops, each naming its own file: none trains on alone
        assert (tmp_path / f"{rank}.err").read_text() == (
            f"{tmp_path / f'host{rank}' / 'checkpoint.pt'}: the step to resume from: expected "
            "the same on all 2 ranks; rank 0 found step 3, rank 1 step 0 (on several hosts, "
            "checkpoints/ must be on a filesystem they share)"
        )


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    for pid in workers(launcher.pid):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker of rank {rank}")


@pytest.mark.slow
def test_sigkill_of_one_rank_then_rerun_matches_an_uninterrupted_run(tmp_path):
    train = {"nproc_per_node": 2, "checkpoint_every": 20, "log_every": 20}
    reference = workdir(tmp_path / "reference", train=train, steps=400)
    killed = workdir(tmp_path / "killed", train=train, steps=400)

    proc = stage(killed)
    ckpt = killed / "checkpoints" / "gan" / "checkpoint.pt"
    first = wait_for_step(ckpt, proc)  # past the step-0 one: training goes on past it
    os.kill(rank_pid(proc, 1), signal.SIGKILL)
    killed_at = time.monotonic()
    err = communicate(proc, 120)
    assert time.monotonic() - killed_at < 30  # the launcher stops rank 0 at once
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == "error: train gan: rank 1 of 2 was killed by SIGKILL"
    step = torch.load(ckpt, weights_only=True)["step"]
    assert first <= step < 400

    err = finish(stage(killed))  # every rank reads the checkpoint, then goes on
    assert f"resuming from checkpoints/gan/checkpoint.pt at step {step} of 400" in err
    finish(stage(reference))
    assert_bitwise(weights(reference), weights(killed))
    assert (reference / "reports/gan/samples.png").read_bytes() == (
        killed / "reports/gan/samples.png"
    ).read_bytes()


def checkpoint_layout(path: Path, model: str) -> dict:
    """The checkpoint's entries, and the state_dict keys of those that are modules'."""
    state = torch.load(path / "checkpoints" / model / "checkpoint.pt", weights_only=True)
    return {k: sorted(v) if isinstance(v, dict) and k not in ("rng",) else type(v).__name__
            for k, v in state.items() if k not in ("identity", "mlflow_run_id")}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("model", "net"), [("gan", {"loss": "hinge", "r1_weight": 1.0}),
                                            ("gan", {"conditional": True, "minibatch_std": 4}),
                                            ("autoencoder", {"kind": "vae"})])  # fmt: skip
def test_two_process_runs_are_bitwise_identical_and_match_one_process(tmp_path, model, net):
    """The conditional GAN with minibatch_std: each rank's groups of 4 are the groups one
    process forms, and the EMA's standing statistics take the global batch's labels."""
    two = {"nproc_per_node": 2}
    runs = {name: workdir(tmp_path / name, model, train=train, **net)
            for name, train in (("one", {}), ("two", two), ("again", two))}  # fmt: skip
    tmp = tmp_path / "tmp"  # the launchers' temporary folders
    tmp.mkdir()
    errs = {name: finish(stage(path, model, env={"TMPDIR": str(tmp)}))
            for name, path in runs.items()}  # fmt: skip
    assert launcher_leftovers(tmp) == []
    one, two, again = (weights(runs[name], model) for name in ("one", "two", "again"))
    assert_bitwise(two, again)

    assert one.keys() == two.keys()  # the same files, the same keys: plain BatchNorm2d's
    for name in one:
        assert one[name].keys() == two[name].keys()
        for key, a in one[name].items():
            b = two[name][key]
            if a.is_floating_point():
                torch.testing.assert_close(b, a, rtol=0, atol=TOLERANCE * a.abs().max().item())
            else:  # num_batches_tracked
                assert torch.equal(a, b), f"{name}.{key}"
    assert checkpoint_layout(runs["one"], model) == checkpoint_layout(runs["two"], model)
    identity = torch.load(runs["two"] / "checkpoints" / model / "checkpoint.pt",
                          weights_only=True)["identity"]  # fmt: skip
    assert json.loads(identity)["world_size"] == 2
    # rank 0 alone logs and writes the curve, which both runs share to the step
    assert errs["two"].count(f"train {model}: step 20/20") == 1
    rows = [
        line.split(",")[0]
        for line in (runs["two"] / "reports" / model / "train_log.csv").read_text().splitlines()
    ]
    assert rows == ["step", "10", "20"]


@pytest.mark.slow
def test_an_outer_torchrun_is_joined_not_relaunched(tmp_path):
    """`torchrun --nproc-per-node 2 pipeline/train_gan.py`, as a multi-host launch would
    run it: the workers join that group (of 2) whatever nproc_per_node says (3 here)."""
    train = {"batch_size": 24, "nproc_per_node": 3}
    outer = workdir(tmp_path / "outer", train=train)
    own = workdir(tmp_path / "own", train={**train, "nproc_per_node": 2})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2"]  # fmt: skip
    finish(stage(outer, launcher=torchrun))
    finish(stage(own))
    state = torch.load(outer / "checkpoints/gan/checkpoint.pt", weights_only=True)
    assert json.loads(state["identity"])["world_size"] == 2
    assert_bitwise(weights(outer), weights(own))  # its own launch is torchrun's


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "line"), [
    (signal.SIGTERM, "error: terminated (SIGTERM)"),
    (signal.SIGHUP, "error: terminated (SIGHUP)"),  # the SSH session closed
    (signal.SIGINT, "error: interrupted"),  # Ctrl-C
])  # fmt: skip
def test_a_signal_to_the_launcher_stops_every_rank(tmp_path, signum, line):
    path = workdir(tmp_path, train={"nproc_per_node": 2}, steps=100000)
    tmp = tmp_path / "tmp"  # the launcher's temporary folders
    tmp.mkdir()
    proc = stage(path, env={"TMPDIR": str(tmp)}, launcher=[*HUP_DEFAULT, sys.executable])
    wait_for(path / "checkpoints" / "gan" / "checkpoint.pt", proc)
    ranks = workers(proc.pid)
    assert len(ranks) == 2
    assert len(launcher_leftovers(tmp)) == 1  # the workers' error files, while they run
    proc.send_signal(signum)
    err = communicate(proc, 60)
    assert proc.returncode == (130 if signum == signal.SIGINT else 128 + signum), err
    assert err.strip().splitlines()[-1] == line
    assert not [pid for pid in ranks if alive(pid)]
    assert launcher_leftovers(tmp) == []
    assert "Traceback" not in err


@pytest.mark.slow
def test_sighup_to_the_launcher_under_nohup_is_ignored(tmp_path):
    """`nohup dvc repro &` with 2 processes: a hang-up stops neither the launcher (whose
    agent would by default) nor the ranks."""
    path = workdir(tmp_path, train={"nproc_per_node": 2, "checkpoint_every": 5}, steps=100000)
    proc = stage(path, launcher=[*NOHUP, sys.executable])
    try:
        ckpt = path / "checkpoints" / "gan" / "checkpoint.pt"
        wait_for(ckpt, proc)
        ranks = workers(proc.pid)
        assert len(ranks) == 2
        step = torch.load(ckpt, weights_only=True)["step"]
        for pid in [proc.pid, *ranks]:  # as a hang-up of the whole session would
            os.kill(pid, signal.SIGHUP)
        later = step
        deadline = time.monotonic() + 120
        while later < step + 10 and time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, EOFError):  # being replaced
                later = torch.load(ckpt, weights_only=True)["step"]
            time.sleep(0.05)
        assert proc.poll() is None, communicate(proc)
        assert later >= step + 10  # two checkpoints on: still training
        assert all(alive(pid) for pid in ranks)
        proc.send_signal(signal.SIGTERM)
        err = communicate(proc, 60)
        assert proc.returncode == 143, err
    finally:
        if proc.poll() is None:
            for pid in workers(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()


def test_more_workers_than_cores_are_warned_of(monkeypatch, caplog):
    from genpipe import distributed

    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.warn_oversubscribed(64)
    assert "train.nproc_per_node 64: more processes than this machine's 2 CPU cores" in caplog.text
    assert not distributed.warn_oversubscribed(2)
