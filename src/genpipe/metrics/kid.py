"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD^2 of two feature
sets under a cubic polynomial kernel, averaged over random subsets."""

from __future__ import annotations

import numpy as np
import torch

from genpipe.errors import MetricsError
from genpipe.metrics.fid import paired_features

# the params that set these arguments, named in errors
KID_SUBSETS_PARAM = "evaluate.kid_subsets"
KID_SUBSET_SIZE_PARAM = "evaluate.kid_subset_size"


def _kernel_sum(x: np.ndarray, y: np.ndarray, off_diagonal: bool = False) -> float:
    """Sum of k(x_i, y_j) = (x_i^T y_j / D + 1)^3 over the pairs of (m, D) x and y (i != j
    when off_diagonal), built in place: one (m, m) float64 array at a time."""
    k = x @ y.T  # (m, m)
    k /= x.shape[1]
    k += 1.0
    np.power(k, 3, out=k)
    total = k.sum()
    return float(total - np.trace(k)) if off_diagonal else float(total)


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 estimate of two (m, D) samples with the cubic polynomial kernel."""
    m = x.shape[0]
    same = _kernel_sum(x, x, off_diagonal=True) + _kernel_sum(y, y, off_diagonal=True)
    return same / (m * (m - 1)) - 2.0 * _kernel_sum(x, y) / (m * m)


def kernel_inception_distance(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    subsets: int,
    subset_size: int,
    seed: int,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018) as torch-fidelity computes it: the unbiased MMD^2 with
    k(x, y) = (x^T y / D + 1)^3 on `subsets` pairs of random subsets of `subset_size` rows
    (without replacement, from np.random.default_rng(seed)). Returns (mean, std) over the
    subsets; std is np.std's (ddof=0), as torch-fidelity's."""
    x, y = paired_features(real, fake)  # (N, D), (M, D)
    if subsets < 1:
        raise MetricsError(f"{KID_SUBSETS_PARAM}: expected a positive integer; got {subsets}")
    if subset_size < 2 or subset_size > min(len(x), len(y)):
        raise MetricsError(
            f"{KID_SUBSET_SIZE_PARAM}: expected 2 to {min(len(x), len(y))} (real has "
            f"{len(x)} samples, fake has {len(y)}); got {subset_size}"
        )
    rng = np.random.default_rng(seed)
    mmd2 = np.empty(subsets)
    for i in range(subsets):
        rows_x = rng.choice(len(x), subset_size, replace=False)
        rows_y = rng.choice(len(y), subset_size, replace=False)
        mmd2[i] = _mmd2_unbiased(x[rows_x], y[rows_y])
    return float(mmd2.mean()), float(mmd2.std())
