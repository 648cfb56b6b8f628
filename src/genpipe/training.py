"""The bookkeeping the training loops share: on-device batches, the CUDA-graph step,
checkpoints (identity, restore, snapshot), the non-finite-loss guard and the training log
(its rows, the tracking run, the progress shown).

Each loop is written out in its model's package (gan/train.py, autoencoder/train.py).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genpipe import codedeps, distributed, runtime
from genpipe.data.canonical import prepared_sha256, read_prepared
from genpipe.errors import TrainingError, exception_text
from genpipe.fileio import atomic_path
from genpipe.images import to_float
from genpipe.progress import Progress

log = logging.getLogger(__name__)


# --- learning-rate schedule ---------------------------------------------------------------


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The multiplier of the base lr at `step` (from 1) of `steps`: 1 throughout for "none",
    else from 1 at the first step down towards 0 at the last, linearly or along a half cosine.
    A function of the step alone, so a resumed run follows the same schedule."""
    if schedule == "none":
        return 1.0
    done = (step - 1) / steps  # in [0, 1)
    if schedule == "linear":
        return 1.0 - done
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done))
    raise ValueError(f"lr_decay: expected none, linear or cosine; got {schedule!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


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


# --- checkpoints --------------------------------------------------------------------------

# Params that change neither the weights nor the steps taken: a resume may differ in these.
# nproc_per_node is not, but the world size it makes is (run_identity): an outer torchrun
# may make another; the process-group timeout only decides how long a failure takes to show
NOT_IN_FINGERPRINT = {"log_every", "checkpoint_every", "experiment", "nproc_per_node",
                      "dist_timeout_s"}  # fmt: skip


def code_fingerprint(model: str) -> str:
    """SHA-256 of the code that decides a model's weights: its loop (genpipe.<model>.train)
    and every genpipe file that imports, as codedeps finds them. The train stage's deps in
    dvc.yaml cover the same files (tests/test_dvc_deps.py)."""
    digest = hashlib.sha256()
    for path in codedeps.source_files(f"genpipe.{model}.train"):
        digest.update(path.relative_to(codedeps.PACKAGE_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_identity(model: str, params: dict[str, Any], data_hash: str,
                 world_size: int = 1) -> dict[str, Any]:  # fmt: skip
    """What a checkpoint must match to be resumed: the model's params, shared params, data
    and code, and, above one process, their number (each slices the batch, and BatchNorm's
    statistics and the gradients are reduced in another order)."""
    train = {k: v for k, v in params["train"].items() if k not in NOT_IN_FINGERPRINT}
    identity = {"model": model, "seed": params["seed"], "train": train, model: params[model],
                "data_hash": data_hash, "code": code_fingerprint(model)}  # fmt: skip
    if world_size > 1:
        identity["world_size"] = world_size
    return identity


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash at any point leaves the previous checkpoint whole. A full
    disk is one line naming the path and the size needed."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as exc:
        # torch's writer reports a failed write as RuntimeError ("unexpected pos ..."), the
        # ENOSPC only in its context
        if not any(getattr(e, "errno", None) in _DISK_FULL for e in _causes(exc)):
            raise
        raise TrainingError(
            f"{path}: no space left on the device to write the checkpoint (about "
            f"{_state_bytes(state) / 2**20:,.1f} MiB); free space there and rerun to resume "
            "from the previous checkpoint, which is kept"
        ) from None


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _state_bytes(state: Any) -> int:
    """The bytes of the tensors in a (nested) checkpoint state: about its size on disk."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_state_bytes(v) for v in state)
    return 0


def checkpoint_run_id(path: Path) -> str | None:
    """The tracking run that the checkpoint at `path` names; None when there is none, or no
    readable checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or foreign: it names no run
        return None
    run_id = state.get("mlflow_run_id") if isinstance(state, dict) else None
    return run_id if isinstance(run_id, str) else None


def load_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at `path` if it was written by this very run; None to start afresh.

    A finished run's checkpoint (kept so that a forced rerun is instant) and a step-0 one
    (which holds no work) never block a run under new params; an unfinished one does, so
    that a crashed run is never mixed with another or silently thrown away. A checkpoint
    written by other code (a fix after a crash, say) is never resumed: the run starts
    afresh, with a warning when it was unfinished.
    """
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: never mixed in
        raise TrainingError(
            f"{path}: expected a genpipe checkpoint; could not read it ({type(exc).__name__}); "
            "delete it to start over"
        ) from None
    written = json.loads(state.get("identity", "{}"))
    if written != identity and (state.get("finished") or state.get("step") == 0):
        return None  # a finished run, or one that had done no work: nothing is lost
    if written != identity and list(_diff(written, identity)) == ["code"]:
        log.warning("%s: written by other code at step %s; starting afresh", path, state["step"])
        return None
    if written != identity:
        changed = sorted(_diff(written, identity))
        raise TrainingError(
            f"{path}: written under other params or data ({', '.join(changed[:5])} differ); "
            "restore them to resume, or delete the checkpoint to start over"
        )
    return state


def _diff(a: Any, b: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            yield from _diff(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".") or "identity"


class Checkpoint:
    """A run's one checkpoint file: at `path`, for the run `identity`, holding `states`
    (modules, optimizers and scalers by name), the global RNG's and `generators`' states,
    the step and the training log's rows. `steps` is the run's length: a checkpoint at it
    is a finished run's. Under torchrun (`world`) every rank restores it and rank 0 alone
    writes it.

    Used as a context manager around the run: a run that fails (an error, a signal) before
    a step of work is saved puts back the file that restore() found in place of its step-0
    one, so a failed stage leaves checkpoints/ as it was. Only a kill that runs no code
    (kill -9, the OOM killer) leaves the step-0 file, which the rerun needs."""

    def __init__(self, path: Path, identity: dict[str, Any], steps: int, states: dict[str, Any],
                 generators: tuple[torch.Generator, ...],
                 world: distributed.World | None = None):  # fmt: skip
        self.path, self.identity, self.steps = path, identity, steps
        self.states, self.generators, self.world = states, generators, world
        self.run_id: str | None = None  # the tracking run, saved so a resume can end it
        # while only the step-0 file is written: the bytes it replaced (None: no file), and
        # whether its folder was made for it
        self._replaced: tuple[bytes | None, bool] | None = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        if exc_type is None or self._replaced is None:
            return
        previous, made_folder = self._replaced
        self._replaced = None
        try:
            if previous is not None:
                with atomic_path(self.path) as tmp:
                    tmp.write_bytes(previous)
            else:
                self.path.unlink()
                if made_folder and not any(self.path.parent.iterdir()):
                    self.path.parent.rmdir()
        except OSError as exc:  # the run's own error is the one to report
            log.warning("%s: could not put back the checkpoint found before this run (%s)",
                        self.path, exception_text(exc))  # fmt: skip

    def restore(self, run: Any = None) -> tuple[int, list[dict[str, float]]]:
        """Load this very run's checkpoint into the states and generators; return the step
        to go on from and the log rows so far, (0, []) to start afresh. The rows are sent
        to `run` (a tracking.TrainingRun, or None): a new run gets the whole curve."""
        self.run_id = getattr(run, "run_id", None)  # kept in every snapshot
        try:
            state, failed = load_checkpoint(self.path, self.identity), None
        except TrainingError as exc:  # raised below, on every rank at once
            state, failed = None, str(exc)
        # every rank resumes from the same step, or none goes on: on several hosts each reads
        # its own checkpoints/, and only rank 0's is written. A collective, so it is also the
        # barrier that keeps rank 0 from replacing the file while another rank reads it
        found = f"failed: {failed}" if failed else f"step {state['step'] if state else 0}"
        distributed.check_agree(found, self.world, f"{self.path}: the step to resume from")
        if failed:
            raise TrainingError(failed)
        if state is None:
            if run is not None:
                # the run that left the file, if killed (kill -9) before a step of work could
                # be resumed, is still RUNNING: end it. Then name this run at once, in a
                # step-0 checkpoint, so that a kill before the first real one is ended too
                orphan = checkpoint_run_id(self.path)
                if orphan:
                    run.end_orphan(orphan, resumed=False)
                self._name_run()
            return 0, []
        for name, obj in self.states.items():
            obj.load_state_dict(state[name])
        set_rng_states(state["rng"], *self.generators)
        log.info("resuming from %s at step %d of %d", self.path, state["step"], self.steps)
        if run is not None and state.get("mlflow_run_id"):
            run.end_orphan(state["mlflow_run_id"])  # left RUNNING by the run that died
            if state["step"] == 0:
                self._name_run()  # its step-0 file named the killed run: now name this one
        for row in state["log"] if run is not None else []:
            send_row(run, row)
        return state["step"], state["log"]

    def _name_run(self) -> None:
        """Write the step-0 checkpoint that names this run, keeping the bytes it replaces
        until a step of work is saved (see __exit__)."""
        if not self.run_id or (self.world is not None and not self.world.main):
            return
        previous = self.path.read_bytes() if self.path.exists() else None
        made_folder = not self.path.parent.exists()
        self.snapshot(0, [])
        self._replaced = (previous, made_folder)

    def snapshot(self, step: int, rows: list[dict[str, float]]) -> None:
        if self.world is not None and not self.world.main:
            return  # the states are the same on every rank: rank 0's file holds them
        if step > 0:
            self._replaced = None  # work is saved: the file it replaced is gone for good
        save_checkpoint(self.path, {
            "identity": json.dumps(self.identity, sort_keys=True), "step": step,
            "finished": step == self.steps,
            **{name: obj.state_dict() for name, obj in self.states.items()},
            "rng": rng_states(*self.generators), "log": rows,
            **({"mlflow_run_id": self.run_id} if self.run_id else {}),
        })  # fmt: skip


def rng_states(*generators: torch.Generator) -> list[torch.Tensor]:
    return [torch.get_rng_state(), *(g.get_state() for g in generators)]


def set_rng_states(states: list[torch.Tensor], *generators: torch.Generator) -> None:
    torch.set_rng_state(states[0])
    for g, state in zip(generators, states[1:], strict=True):
        g.set_state(state)


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


class TrainLog:
    """The training curve, one row per train.log_every steps: kept in the checkpoint (a
    resume continues it), sent to the tracking run, shown by `progress` (a bar's postfix on a
    terminal, a log line elsewhere) and, once training ends, written to
    reports/<model>/train_log.csv."""

    def __init__(self, rows: list[dict[str, float]], run: Any, progress: Progress):
        self.rows, self.run, self.progress = rows, run, progress
        # the interval the next row's throughput is measured over
        self.tick, self.tick_step = time.perf_counter(), progress.done

    def add(self, step: int, epoch: float, losses: dict[str, float], images_per_step: int) -> None:
        """The row for the interval ending at `step`: its mean `losses` and images/s."""
        now = time.perf_counter()
        images_per_s = (step - self.tick_step) * images_per_step / (now - self.tick)
        self.tick, self.tick_step = now, step
        row = {"step": step, "epoch": round(epoch, 4), **losses,
               "images_per_s": round(images_per_s, 1)}  # fmt: skip
        self.rows.append(row)
        if self.run is not None:
            send_row(self.run, row)
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


# --- outputs ------------------------------------------------------------------------------


def load_train_split(prepared_dir: Path, batch_size: int | None = None) -> tuple[np.ndarray, str]:
    """The train split's images (N, C, S, S) uint8, and the SHA-256 of the prepared data;
    `batch_size` (train.batch_size) is checked against the split before any work."""
    prepared = read_prepared(prepared_dir)
    train = (prepared.manifest["split"] == "train").to_numpy()
    if not train.any():
        raise TrainingError(f"{prepared_dir}: expected images in the train split; found none")
    if batch_size is not None:
        check_batch_size(batch_size, int(train.sum()))
    return np.asarray(prepared.images[train]), prepared_sha256(prepared_dir)


def load_train_labels(prepared_dir: Path) -> np.ndarray:
    """The train split's labels (N,) int64, in the order of load_train_split's images."""
    manifest = read_prepared(prepared_dir).manifest
    return manifest["label"].to_numpy()[(manifest["split"] == "train").to_numpy()]


def class_weights(labels: np.ndarray | None, key: str, count: int | None = None) -> list[float]:
    """The classes' shares of `labels`, for `key`, a param that needs labeled data: a label
    for each of `count` images (when given), every one in 0..K-1 and at least 2 classes, or
    one line saying what was found."""
    if labels is None or (count is not None and len(labels) != count):
        found = "none" if labels is None else f"{len(labels):,}"
        each = "each train image" if count is None else f"each of the {count:,} train images"
        raise TrainingError(f"{key}: expected a label for {each}; got {found}")
    unlabeled = int((labels < 0).sum())
    classes = int(labels.max()) + 1 if len(labels) else 0
    if unlabeled or len(np.unique(labels)) < 2:
        n = len(np.unique(labels))
        found = f"{unlabeled:,} unlabeled images" if unlabeled else f"{n} class{'es' * (n != 1)}"
        raise TrainingError(
            f"{key}: expected labeled train images in at least 2 classes (a folder source "
            f"labels images by their first-level subfolder); found {found}"
        )
    return (np.bincount(labels, minlength=classes) / len(labels)).tolist()


def check_batch_size(batch_size: int, train_images: int) -> None:
    """A batch is drawn from the train split: one larger than the split only repeats images
    and costs memory (100,000 against 1,427 images grew to 7.8 GB)."""
    if batch_size > train_images:
        raise TrainingError(
            f"train.batch_size: expected at most the train split's {train_images:,} images; "
            f"got {batch_size:,}"
        )
