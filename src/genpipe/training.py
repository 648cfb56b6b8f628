"""The bookkeeping the training loops share: on-device batches, the CUDA-graph step, the
non-finite-loss guard and the training log (its rows, the tracking run, the progress shown).
The checkpoint is checkpoint.py's, the learning-rate schedule schedule.py's.

Each loop is written out in its model's package (gan/train.py, autoencoder/train.py).
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genpipe import distributed, runtime
from genpipe.checkpoint import Restored
from genpipe.data.canonical import prepared_sha256
from genpipe.data.split import Split, read_split, require_images
from genpipe.errors import TrainingError, exception_text
from genpipe.fileio import atomic_path
from genpipe.images import to_float
from genpipe.progress import Progress

# --- batching -----------------------------------------------------------------------------


class DeviceImages:
    """The whole uint8 dataset on the device, with its labels when given; batches are drawn
    by index there."""

    def __init__(self, images: np.ndarray, device: torch.device, compiled: bool = False,
                 labels: np.ndarray | None = None):  # fmt: skip
        self.device = device
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # (N, C, H, W)
        self.labels = None if labels is None else torch.from_numpy(labels).long().to(device)
        self.channels_last = runtime.channels_last(device, compiled)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """(size, C, H, W) float in [-1, 1], drawn uniformly with replacement."""
        return self.take(self.draw(size, generator))

    def draw(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """(size,) indices drawn uniformly with replacement, on the device."""
        return torch.randint(len(self.images), (size,), generator=generator, device=self.device)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The images at `index` as (len(index), C, H, W) float in [-1, 1]."""
        x = to_float(self.images[index])
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@contextlib.contextmanager
def on_stream(stream: torch.cuda.Stream | None) -> Iterator[None]:
    """Queue the block's CUDA work on `stream`, after the current stream's work and before
    what the current stream is given next; None: on the current stream, as it is."""
    if stream is None:
        yield
        return
    current = torch.cuda.current_stream(stream.device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        yield
    current.wait_stream(stream)


class CudaGraphStep:
    """A training step replayed as one CUDA graph: the CPU launches a whole step at once
    rather than each of its hundreds of small kernels, which is what bounds a small
    network's step on a GPU.

    The step is a function of tensors only: its randomness is drawn outside, with the
    run's own generators, and passed in, so eager and replayed steps draw the same numbers
    and the generators' states stay what checkpoints save. The first `warmup` calls run
    eagerly on a side stream (optimizer state, cuDNN and cuBLAS set themselves up there),
    as torch.cuda.graphs asks; the next call captures the step on that same stream, and
    every call from then on copies its inputs into the captured ones and replays. Each call
    is one real step.

    Under DDP (torch's CUDA notes, "Usage with DistributedDataParallel") the wrapper must
    be built on the stream that warms up and captures (`stream`), and warm up for
    DDP_WARMUP calls, past the iterations in which DDP rebuilds its buckets and times
    itself on the host; NCCL's all-reduces are then captured with the rest of the step.
    """

    WARMUP = 3
    DDP_WARMUP = 11

    def __init__(self, fn: Callable[..., Any], name: str, warmup: int = WARMUP,
                 stream: torch.cuda.Stream | None = None):  # fmt: skip
        self.fn = fn
        self.name = name  # for the error message
        self.warmup = warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.outputs: Any = None
        self.side = stream  # the warm-up's and the capture's stream

    def __call__(self, *inputs: torch.Tensor) -> Any:
        self.calls += 1
        self.side = self.side or torch.cuda.Stream()
        if self.calls <= self.warmup:
            current = torch.cuda.current_stream()
            self.side.wait_stream(current)
            with torch.cuda.stream(self.side):
                outputs = self.fn(*inputs)
            current.wait_stream(self.side)
            for x in torch.utils._pytree.tree_leaves(outputs):  # made there, read here
                if isinstance(x, torch.Tensor):
                    x.record_stream(current)
            return outputs
        if self.graph is None:
            self.inputs = tuple(x.clone() for x in inputs)
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph, stream=self.side):
                    self.outputs = self.fn(*self.inputs)
            except RuntimeError as exc:
                found = exception_text(exc).splitlines()[0][:200]
                raise TrainingError(
                    f"train.cuda_graphs: expected the {self.name} step to be capturable as a "
                    f"CUDA graph; capture failed ({found}); set train.cuda_graphs: false"
                ) from exc
        for static, x in zip(self.inputs, inputs, strict=True):
            static.copy_(x)
        self.graph.replay()
        return self.outputs


# --- the non-finite guard and the training log ---------------------------------------------


class LossMonitor:
    """Collects per-step losses on the device and checks them once per interval.

    No per-step host sync: the losses of an interval are stacked and copied once. Under
    torchrun (`world`) they are averaged over the ranks then, one all-reduce an interval:
    every rank logs the global batch's losses and stops at the same non-finite one.
    """

    def __init__(self, names: tuple[str, ...], world: distributed.World | None = None):
        self.names, self.world = names, world
        self.steps: list[int] = []
        self.values: list[torch.Tensor] = []

    def add(self, step: int, *losses: torch.Tensor) -> None:
        self.steps.append(step)
        self.values.append(torch.stack([loss.detach().float() for loss in losses]))

    def check(self) -> torch.Tensor:
        """The pending losses as (steps, losses) on the CPU; raise at the first non-finite one."""
        values = torch.zeros(0, len(self.names))
        if self.values:
            values = distributed.mean(torch.stack(self.values), self.world).cpu()
        bad = ~torch.isfinite(values)
        if bad.any():
            row, col = (int(i) for i in bad.nonzero()[0])
            raise TrainingError(
                f"step {self.steps[row]}: {self.names[col]} is {values[row, col].item()}; "
                "training stopped, the last good checkpoint is kept"
            )
        return values

    def drain(self) -> dict[str, float]:
        """Mean of each loss since the last drain, after `check`."""
        values = self.check()
        self.steps, self.values = [], []
        return dict(zip(self.names, values.mean(0).tolist(), strict=True))


def launch(model: str, params: Any) -> bool:
    """distributed.launch for the train stage of `model`. When the workers fail or are
    stopped, the run rank 0 named in its checkpoint is ended if it is still RUNNING (a rank
    killed by SIGKILL cannot end it): FAILED, or KILLED on a signal."""
    from genpipe import paths
    from genpipe.checkpoint import checkpoint_run_id

    try:
        return distributed.launch(f"train {model}", params.train)
    except (TrainingError, KeyboardInterrupt) as exc:
        run_id = checkpoint_run_id(paths.checkpoint(model))
        if run_id:
            from genpipe.tracking.orphans import end_orphan

            end_orphan(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


def restore_or_end(ckpt: Any, run: Any) -> Any:
    """ckpt.restore() for `run` (a tracking TrainingRun, or None). A checkpoint it refuses
    ends the run that wrote it first, if a killed process left it RUNNING (KILLED), so the
    advice to delete the file leaves no run RUNNING for ever."""
    from genpipe.checkpoint import CheckpointRefused

    try:
        return ckpt.restore(getattr(run, "run_id", None))
    except CheckpointRefused as exc:
        if run is not None and exc.orphan:
            run.end_orphan(exc.orphan, resumed=False)
        raise


class TrainLog:
    """The training curve, one row per train.log_every steps: kept in the checkpoint (a
    resume continues it), sent to the tracking run, shown by `progress` (a bar's postfix on a
    terminal, a log line elsewhere) and, once training ends, written to
    reports/<model>/train_log.csv.

    It starts from what the checkpoint `restored`: a new `run` (a tracking TrainingRun, or
    None) gets the whole curve so far, and ends the run that the checkpoint names if a
    killed process left it RUNNING."""

    def __init__(self, restored: Restored, run: Any, progress: Progress):
        self.rows, self.run, self.progress = restored.rows, run, progress
        if run is not None:
            if restored.orphan:
                run.end_orphan(restored.orphan, resumed=restored.resumed)
            for row in restored.rows:
                send_row(run, row)
        # the interval the next row's throughput is measured over
        self.tick, self.tick_step = time.perf_counter(), progress.done

    def add(self, step: int, epoch: float, losses: dict[str, float], images_per_step: int) -> None:
        """The row for the interval ending at `step`: its mean `losses`. Its images/s go to
        the run and the progress shown, not into the row: train_log.csv is a cached DVC
        output, the same bits for the same params and data on the CPU."""
        now = time.perf_counter()
        images_per_s = (step - self.tick_step) * images_per_step / (now - self.tick)
        self.tick, self.tick_step = now, step
        row = {"step": step, "epoch": round(epoch, 4), **losses}
        self.rows.append(row)
        if self.run is not None:
            send_row(self.run, {**row, "images_per_s": round(images_per_s, 1)})
        self.progress.report(losses, images_per_s)

    def write(self, path: Path) -> None:
        if not self.rows:
            return
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)


def send_row(run: Any, row: dict[str, float]) -> None:
    """A log row to the tracking run, at its step."""
    run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])


# --- inputs ---------------------------------------------------------------------------------


def load_train_data(prepared_dir: Path, batch_size: int) -> tuple[Split, str]:
    """data/prepared, read once: its split, whose train split must hold a batch of
    `batch_size` (train.batch_size, checked before any work), and its SHA-256, which runs,
    checkpoints and versions are tagged with."""
    split = read_split(prepared_dir)
    require_images(split)
    check_batch_size(batch_size, len(split.train))
    return split, prepared_sha256(prepared_dir)


def check_batch_size(batch_size: int, train_images: int) -> None:
    """A batch is drawn from the train split: one larger than the split only repeats images
    and costs memory (100,000 against 1,427 images grew to 7.8 GB)."""
    if batch_size > train_images:
        raise TrainingError(
            f"train.batch_size: expected at most the train split's {train_images:,} images; "
            f"got {batch_size:,}"
        )
