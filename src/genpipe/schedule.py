"""The learning-rate schedules, one home for every loop that decays its rate: the GAN's,
the autoencoder's and the domain network's."""

from __future__ import annotations

import math

import torch


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
