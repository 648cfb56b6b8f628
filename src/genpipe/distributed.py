"""Training on several processes (torchrun, DistributedDataParallel): the launch, the process
group, batch slices, BatchNorm over the global batch, and what crosses between the ranks.

A stage with train.nproc_per_node above 1 relaunches itself under torch's elastic launcher
(torchrun --standalone's mechanism); a stage that finds itself under torchrun already (an
outer `torchrun --nnodes M ...`) joins that group instead. Every rank draws the same seeded
batch and takes its own contiguous slice of it, so the global batch, and the randomness,
are the one-process run's. Only rank 0 writes outputs.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from genpipe.errors import GenpipeError, TrainingError, exception_text
from genpipe.params.rules import COMPILE_DDP
from genpipe.params.schema import TrainParams
from genpipe.stage import Terminated

log = logging.getLogger(__name__)

# set by torchrun (and torch's launcher) in every worker's environment
TORCHRUN_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place in the group: rank (global), size (processes in all), and
    local_rank (on this machine: its GPU's index)."""

    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes outputs."""
        return self.rank == 0

    def part(self, batch: int) -> slice:
        """This rank's contiguous slice of a global batch of `batch` (divisible by size)."""
        per = batch // self.size
        return slice(self.rank * per, (self.rank + 1) * per)


def under_torchrun() -> bool:
    return all(key in os.environ for key in TORCHRUN_KEYS)


def check_divisible(batch_size: int, size: int) -> None:
    if batch_size % size:
        raise TrainingError(
            f"train.batch_size: expected a multiple of the {size} processes (each takes an "
            f"equal slice of the global batch); got {batch_size}"
        )


# --- the launch ---------------------------------------------------------------------------


def launch(name: str, train: TrainParams) -> bool:
    """With train.nproc_per_node above 1, outside torchrun: rerun this very command (after the
    CPU-kernel re-exec, so the pin is inherited) as nproc_per_node workers under torch's
    elastic launcher, as `torchrun --standalone --nproc-per-node N` does, and wait for them.
    True here, in the launcher, once they all ended well; False in a worker or a
    one-process run, which goes on to train. A failed worker is one line naming its rank."""
    nproc = train.nproc_per_node
    if nproc == 1 or under_torchrun():
        return False
    check_divisible(train.batch_size, nproc)
    warn_oversubscribed(nproc)
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the agent logs every failure at length; the one line below says it
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    sys.stdout.flush()
    sys.stderr.flush()
    # the signals on which the agent stops the workers: by default SIGHUP too, but under
    # nohup (SIGHUP ignored, as run_stage leaves it) a hang-up must not stop the run, and
    # the workers inherit the ignored SIGHUP
    stops = ["SIGTERM", "SIGINT", "SIGQUIT"]
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        stops.append("SIGHUP")
    # the workers' error files, in a folder removed at the end (the agent's own default is a
    # /tmp/torchelastic_* folder per launch, left behind); one that will not go (NFS, say)
    # must not replace the run's own one line
    scratch = tempfile.TemporaryDirectory(prefix="genpipe-torchrun-", ignore_cleanup_errors=True)
    with scratch as logs:
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
            rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # --standalone: a free port
            max_restarts=0,  # a failure ends the run; the rerun resumes from the checkpoint
            monitor_interval=0.1,  # how soon a dead worker is noticed and the others stopped
            shutdown_timeout=10,  # then SIGKILL for a worker deaf to SIGTERM
            logs_specs=DefaultLogsSpecs(log_dir=logs), signals_to_handle=",".join(stops),
        )  # fmt: skip
        try:
            elastic_launch(config, sys.executable)(*sys.orig_argv[1:])
        except ChildFailedError as exc:
            raise TrainingError(f"{name}: {failure_line(exc.failures, nproc)}") from None
        except SignalException as exc:  # the agent has stopped the workers
            # a hang-up often comes twice (the kernel's, then the shell's to its jobs); torch's
            # handler stays set: from here on, another signal is not raised
            for stop in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
                signal.signal(stop, signal.SIG_IGN)
            if exc.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None  # Ctrl-C: 130
            raise Terminated(exc.sigval) from None  # SIGTERM 143, SIGHUP 129, SIGQUIT 131
    return True


def warn_oversubscribed(nproc: int) -> bool:
    """A warning when the workers outnumber the devices they would use: the GPUs, or, with
    none, the CPU cores (64 workers on 2 cores all start, and each crawls)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have, what = (gpus, "CUDA devices") if gpus else (os.cpu_count() or 1, "CPU cores")
    if nproc <= have:
        return False
    log.warning("train.nproc_per_node %d: more processes than this machine's %d %s; they "
                "share them, each slower than one process alone", nproc, have, what)  # fmt: skip
    return True


def failure_line(failures: dict[int, Any], size: int) -> str:
    """'rank 1 of 2 exited with 1 (its error)' for the first rank to fail: the first to
    write its error file (`recorded`), but before any a rank killed by a signal, which
    writes none: the others' failures follow from it."""

    def written_at(rank: int) -> int:
        return failures[rank].error_file_data.get("written_us", 0)

    rank = min(failures, key=lambda r: (written_at(r), r))
    failure = failures[rank]
    code = failure.exitcode
    how = f"exited with {code}" if code >= 0 else f"was killed by {failure.signal_name()}"
    message = failure.message if written_at(rank) and isinstance(failure.message, str) else ""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"rank {rank} of {size} {how}" + (f" ({first})" if first else "")


def recorded(main: Callable[[], None]) -> Callable[[], None]:
    """main, writing a failure's one line to the error file torchrun names for each worker
    (TORCHELASTIC_ERROR_FILE), where the launcher reads it; outside torchrun, main itself."""

    def wrapper() -> None:
        try:
            main()
        except BaseException as exc:
            path = os.environ.get("TORCHELASTIC_ERROR_FILE")
            if path:
                text = str(exc) if isinstance(exc, GenpipeError) else exception_text(exc)
                if isinstance(exc, KeyboardInterrupt):  # Terminated too
                    text = "stopped by a signal"
                # the launcher reads message and timestamp (s); µs order the ranks' failures
                data = {"message": " ".join(text.split()), "timestamp": int(time.time()),
                        "written_us": time.time_ns() // 1000}  # fmt: skip
                with open(path, "w") as f:
                    json.dump(data, f)
            raise

    return wrapper


# --- the process group --------------------------------------------------------------------


@contextlib.contextmanager
def joined(train: TrainParams, device: torch.device) -> Iterator[tuple[World | None, torch.device]]:
    """Under torchrun: this process's World and device (cuda:LOCAL_RANK on CUDA) in a process
    group (NCCL on CUDA, gloo on the CPU) whose collectives fail after train.dist_timeout_s;
    the group is left at the end. Outside: (None, device), and nothing changes."""
    if not under_torchrun():
        yield None, device
        return
    env = os.environ
    world = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
    if train.compile:  # an outer torchrun: nproc_per_node is not the params' to set
        raise TrainingError(COMPILE_DDP.format(where="under torchrun"))
    # SIGTERM (a clean stop: checkpoint kept, MLflow run ended) when the launcher dies, even
    # by SIGKILL: torch's launcher starts workers in sessions of their own, out of reach of a
    # signal to its group, and a worker left running would still write outputs. Linux
    # only; torch's own spawn does the same
    torch.multiprocessing._prctl_pr_set_pdeathsig(signal.SIGTERM)
    check_divisible(train.batch_size, world.size)
    if device.type == "mps":
        raise TrainingError(f"train.device: expected cpu or cuda with {world.size} processes; "
                            "got mps")  # fmt: skip
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not world.main:  # one voice: rank 0 logs the progress
        logging.getLogger("genpipe").setLevel(logging.WARNING)
        os.environ["TQDM_DISABLE"] = "1"
    timeout = datetime.timedelta(seconds=train.dist_timeout_s)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timeout, rank=world.rank, world_size=world.size)
        yield world, device
    except RuntimeError as exc:  # a peer died or timed out: one line, not a traceback
        # NCCL's and the store's errors are DistErrors; gloo's transport raises RuntimeError
        # naming its own source ("gloo/transport/tcp/pair.cc: Connection closed by peer")
        if not isinstance(exc, dist.DistError) and "gloo" not in str(exc):
            raise
        found = exception_text(exc).splitlines()[0][:200]
        raise TrainingError(f"rank {world.rank} of {world.size}: lost the other processes "
                            f"({found})") from None  # fmt: skip
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def mean(x: torch.Tensor, world: World | None) -> torch.Tensor:
    """The mean of `x` over the ranks (x itself in one process); every rank gets it."""
    if world is None or world.size == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world.size


def check_agree(found: str, world: World | None, what: str) -> None:
    """Raise, on every rank, unless every rank `found` the same (a collective: all ranks
    must call it)."""
    if world is None or world.size == 1:
        return
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, found)
    differ = [r for r, theirs in enumerate(gathered) if theirs != gathered[0]]
    if differ:
        raise TrainingError(
            f"{what}: expected the same on all {world.size} ranks; rank 0 found "
            f"{gathered[0][:200]}, rank {differ[0]} {gathered[differ[0]][:200]} (on several "
            "hosts, checkpoints/ must be on a filesystem they share)"
        )


def check_same(module: nn.Module, world: World | None, what: str) -> None:
    """Raise unless `module`'s state is bitwise the same on every rank: a digest of its bytes
    is gathered once, so a drift (an EMA updated differently, say) never goes unnoticed."""
    if world is None or world.size == 1:
        return
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, digest.hexdigest())
    differ = [r for r, theirs in enumerate(gathered) if theirs != gathered[world.rank]]
    if differ:
        raise TrainingError(f"{what}: expected the same weights on all {world.size} ranks; "
                            f"rank {world.rank} differs from rank {differ[0]}")  # fmt: skip


# --- the networks -------------------------------------------------------------------------


class _SumOverRanks(torch.autograd.Function):
    """x summed over the ranks; its backward sums the gradients over the ranks the same
    way, by applying itself, so it is differentiable again (R1's double backward)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        gathered = x.new_empty((dist.get_world_size(), x.numel()))  # flat, as gloo takes it
        dist.all_gather_single(gathered.view(-1), x.contiguous().view(-1))
        return gathered.sum(0).view(x.shape)  # in rank order everywhere: the same bits

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad)


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """x summed over the ranks, autograd-aware at any order. For BatchNorm's few numbers per
    layer: one all-gather, then a local sum, as SyncBatchNorm gathers its statistics. An
    all-gather is one exchange where gloo's ring all-reduce is several, and latency is all
    a (2, C) tensor costs (gloo on this 2-core CPU: about 0.6 ms against 1.3 ms)."""
    return _SumOverRanks.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the global batch. In training mode with several ranks, each rank's
    per-channel sums of d and d^2 (d: x less the running mean) are added up with one
    autograd-aware sum over the ranks (gloo, NCCL), and the global mean and variance taken
    from them; otherwise it is BatchNorm2d. Its state_dict is BatchNorm2d's, key for key.

    Not torch's SyncBatchNorm: that refuses CPU tensors (its statistics kernels are CUDA's
    only), and its backward is not differentiable, which R1's and WGAN-GP's double backward
    through the discriminator need. One implementation on every device, tested on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W), N this rank's slice
        size = dist.get_world_size() if dist.is_initialized() else 1
        if not self.training or size == 1 or not self.track_running_stats:
            return super().forward(x)
        # in fp32 under autocast too, as BatchNorm2d keeps its statistics; about the running
        # mean, the same on every rank, so that E[d^2] - E[d]^2 cancels little. Sums, not
        # var_mean: its Welford pass over (N, H, W) and its backward cost twice as much
        d = x.float() - self.running_mean.view(1, -1, 1, 1)
        count = x.numel() // x.shape[1] * size  # per channel, over the global batch
        # (2, C): the sums of d and d^2 over every rank's slice, then their means
        total = sum_over_ranks(torch.stack([d.sum((0, 2, 3)), (d * d).sum((0, 2, 3))])) / count
        mean = total[0] + self.running_mean
        var = (total[1] - total[0] * total[0]).clamp_min(0)  # biased, over the global batch
        self._update_running(mean.detach(), var.detach(), count)
        scale = self.weight * torch.rsqrt(var + self.eps)  # (C,)
        shift = self.bias - mean * scale
        return torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1)).to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """As BatchNorm2d does, with the global count: running_var takes the unbiased var."""
        self.num_batches_tracked.add_(1)
        factor = self.momentum  # 0.0 is a momentum
        if factor is None:  # a cumulative moving average; read on the host, so never in a
            factor = 1.0 / float(self.num_batches_tracked)  # CUDA graph (training's momentum)
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * (count / (count - 1)), factor)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm2d a GlobalBatchNorm2d, which takes its statistics over
    the global batch. The weights and buffers are kept (same tensors, same state_dict keys),
    so what rank 0 saves loads into the plain networks."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)  # fmt: skip
            bn._parameters, bn._buffers = child._parameters, child._buffers  # the same tensors
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            sync_batchnorm(child)
    return module


def data_parallel(module: nn.Module, world: World | None, device: torch.device) -> nn.Module:
    """`module` wrapped in DistributedDataParallel under torchrun; `module` itself otherwise.

    forward_sync_buffers=False (broadcast_buffers=False of old): the BatchNorm statistics
    are synced in the forward pass, so the running stats agree on every rank without rank
    0's being broadcast each call.
    gradient_as_bucket_view: the gradients live in DDP's buckets, no copy in and out."""
    if world is None:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False, gradient_as_bucket_view=True,
    )  # fmt: skip
