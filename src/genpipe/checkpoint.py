"""A run's one checkpoint: what it must match to be resumed (the run's identity, with the
code's fingerprint), writing it atomically, restoring it on every rank, and putting back the
file a failed run found. It knows no tracking store: restore() returns the run id the file
names, and the training run ends that run (tracking.training_run.TrainingRun.end_orphan)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genpipe import codedeps, distributed
from genpipe.errors import DiskFullError, TrainingError, disk_full, exception_text
from genpipe.fileio import atomic_path, sha256_files

log = logging.getLogger(__name__)


# Params that change neither the weights nor the steps taken: a resume may differ in these.
# nproc_per_node is not, but the world size it makes is (run_identity): an outer torchrun
# may make another; the process-group timeout only decides how long a failure takes to show
NOT_IN_FINGERPRINT = {"log_every", "checkpoint_every", "experiment", "nproc_per_node",
                      "dist_timeout_s"}  # fmt: skip


def code_fingerprint(model: str) -> str:
    """SHA-256 of the code that decides a model's weights: its loop (genpipe.<model>.train)
    and every genpipe file that imports, as codedeps finds them. The train stage's deps in
    dvc.yaml cover the same files (tests/test_dvc_deps.py)."""
    return sha256_files(codedeps.source_files(f"genpipe.{model}.train"), root=codedeps.PACKAGE_DIR)


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
    except (OSError, RuntimeError, DiskFullError) as exc:
        # torch's writer reports a failed write as RuntimeError ("unexpected pos ..."), the
        # ENOSPC only in its context
        if not isinstance(exc, DiskFullError) and disk_full(exc) is None:
            raise
        raise TrainingError(
            f"{path}: no space left on the device to write the checkpoint (about "
            f"{_state_bytes(state) / 2**20:,.1f} MiB); free space there and rerun to resume "
            "from the previous checkpoint, which is kept"
        ) from None


def _state_bytes(state: Any) -> int:
    """The bytes of the tensors in a (nested) checkpoint state: about its size on disk."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_state_bytes(v) for v in state)
    return 0


class CheckpointRefused(TrainingError):
    """A checkpoint that this run may not resume (other params or data, or unreadable); it
    names the run that wrote it, `orphan`, which a killed process may have left RUNNING:
    the caller ends it (training.restore_or_end), since deleting the file, as the message
    advises, would leave nothing that names that run."""

    def __init__(self, message: str, orphan: str | None = None):
        super().__init__(message)
        self.orphan = orphan


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


@dataclass
class Restored:
    """What Checkpoint.restore found: the step to go on from and the training log's rows so
    far, and the tracking run the file names (`orphan`: left RUNNING if its process was
    killed), which this run goes on from when `resumed`."""

    step: int = 0
    rows: list[dict[str, float]] = field(default_factory=list)
    orphan: str | None = None
    resumed: bool = False


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

    def restore(self, run_id: str | None = None) -> Restored:
        """Load this very run's checkpoint into the states and generators; return the step
        to go on from and the log rows so far (step 0 and none to start afresh), and the
        tracking run the file names. `run_id`, this run's, is kept in every snapshot."""
        self.run_id = run_id
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
            raise CheckpointRefused(failed, checkpoint_run_id(self.path))
        if state is None:
            # the run that left the file, if killed (kill -9) before a step of work could be
            # resumed, is still RUNNING: the caller ends it. Then name this run at once, in a
            # step-0 checkpoint, so that a kill before the first real one is ended too
            orphan = checkpoint_run_id(self.path) if run_id else None
            self._name_run()
            return Restored(0, [], orphan, resumed=False)
        for name, obj in self.states.items():
            obj.load_state_dict(state[name])
        set_rng_states(state["rng"], *self.generators)
        log.info("resuming from %s at step %d of %d", self.path, state["step"], self.steps)
        if state["step"] == 0:
            self._name_run()  # its step-0 file named the killed run: now name this one
        return Restored(state["step"], state["log"], state.get("mlflow_run_id"), resumed=True)

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
