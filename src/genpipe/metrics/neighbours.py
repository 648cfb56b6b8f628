"""The k-nearest-neighbour metrics of two feature sets, from the balls that reach each
point's k-th nearest neighbour in its own set:

- improved precision and recall (Kynkäänniemi et al. 2019);
- density and coverage (Naeem et al. 2020), from the real balls alone: density counts how
  many real balls hold each fake point (divided by k: about 1 when the fakes sit as the
  reals do, above 1 where they crowd the dense regions), coverage is the share of real
  balls that hold some fake point;
- each point's nearest neighbour in another set (the GAN's memorisation check,
  metrics/memorisation.py).

A point on a ball's boundary is inside it (<=) throughout.
"""

from __future__ import annotations

import numpy as np
import torch

from genpipe.errors import MetricsError
from genpipe.metrics.fid import paired_features

PR_K_PARAM = "evaluate.pr_k"  # the param that sets k, named in errors
BLOCK_ELEMENTS = 1 << 22  # a (B, N) float64 block of distances at most: 32 MiB


def _squared_norms(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N,)."""
    return np.einsum("ij,ij->i", x, x)


def _squared_distances(x: np.ndarray, y: np.ndarray, y_sq: np.ndarray) -> np.ndarray:
    """(B, D), (N, D), |y|^2 (N,) -> (B, N) squared Euclidean distances: two (B, N) arrays
    live, the values of |x|^2 + |y|^2 - 2 x y^T to the bit."""
    products = x @ y.T  # (B, N)
    products *= 2.0  # exact
    d2 = _squared_norms(x)[:, None] + y_sq[None, :]  # (B, N)
    d2 -= products
    return np.maximum(d2, 0.0, out=d2)


def _rows_per_block(batch_size: int, n: int) -> int:
    """Rows of a (B, n) block: batch_size, fewer where B * n would pass BLOCK_ELEMENTS."""
    return max(1, min(batch_size, BLOCK_ELEMENTS // n))


def _knn_radii(x: np.ndarray, k: int, batch_size: int) -> np.ndarray:
    """(N, D) -> (N,): squared distance of each point to its k-th nearest neighbour in x,
    itself excluded. Rows go `batch_size` (or fewer, see _rows_per_block) at a time."""
    n = x.shape[0]
    batch_size = _rows_per_block(batch_size, n)
    x_sq = _squared_norms(x)  # (N,)
    radii = np.empty(n)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        d2 = _squared_distances(x[start:stop], x, x_sq)  # (B, N)
        rows = np.arange(stop - start)
        d2[rows, start + rows] = np.inf  # a point is not its own neighbour
        d2.partition(k - 1, axis=1)  # in place, as np.partition does on its copy
        radii[start:stop] = d2[:, k - 1]
    return radii


def manifold(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 3,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Precision, recall, density and coverage, with density_std (the standard error of the
    per-sample counts: density is a mean over the fake points). Distances go in (B, N)
    blocks of at most `batch_size` rows and BLOCK_ELEMENTS entries; one pass over the
    (M, N) fake-to-real distances serves all four."""
    x, y = paired_features(real, fake)  # (N, D) real, (M, D) fake
    if k < 1 or k >= min(len(x), len(y)):
        raise MetricsError(
            f"{PR_K_PARAM}: expected 1 to {min(len(x), len(y)) - 1} (fewer than the real "
            f"({len(x)}) and fake ({len(y)}) samples); got {k}"
        )
    if batch_size < 1:
        raise MetricsError(f"batch_size: expected a positive integer; got {batch_size}")
    radii_x, radii_y = _knn_radii(x, k, batch_size), _knn_radii(y, k, batch_size)  # squared
    x_sq = _squared_norms(x)  # (N,)
    held = np.zeros(len(y), dtype=np.int64)  # real balls holding each fake point
    recalled = np.zeros(len(x), dtype=bool)  # real point inside some fake ball
    covered = np.zeros(len(x), dtype=bool)  # real ball holding some fake point
    rows = _rows_per_block(batch_size, len(x))
    for start in range(0, len(y), rows):
        stop = min(start + rows, len(y))
        d2 = _squared_distances(y[start:stop], x, x_sq)  # (B, N)
        inside = d2 <= radii_x[None, :]  # (B, N): fake in real ball
        held[start:stop] = inside.sum(axis=1)
        covered |= inside.any(axis=0)
        recalled |= (d2 <= radii_y[start:stop, None]).any(axis=0)
    density = held / k
    return {
        "precision": float((held > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(density.mean()),
        "density_std": float(np.std(density, ddof=1) / np.sqrt(len(density))),
        "coverage": float(covered.mean()),
    }


def precision_recall(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 3,
    batch_size: int = 1024,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision is the share of
    fake points inside some real ball, recall the share of real points inside some fake
    ball."""
    metrics = manifold(real, fake, k, batch_size)
    return metrics["precision"], metrics["recall"]


def nearest(
    x: np.ndarray, y: np.ndarray, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(M, D), (N, D) -> each x point's Euclidean distance to its nearest y point (M,), and
    that point's index (M,), in (B, N) blocks as above."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(y):
        raise MetricsError(
            f"features: expected (M, D) and (N, D) arrays with N > 0; got {x.shape} and "
            f"{y.shape}"
        )
    y_sq = _squared_norms(y)
    distance, index = np.empty(len(x)), np.empty(len(x), dtype=np.int64)
    rows = _rows_per_block(batch_size, len(y))
    for start in range(0, len(x), rows):
        stop = min(start + rows, len(x))
        d2 = _squared_distances(x[start:stop], y, y_sq)  # (B, N)
        index[start:stop] = d2.argmin(axis=1)
        distance[start:stop] = np.sqrt(d2[np.arange(stop - start), index[start:stop]])
    return distance, index
