"""Does the GAN copy its training images? The share of generated samples that sit nearer a
train image, in the backbone's feature space, than real unseen images do.

The reference stage measures, for every test image, the distance to its nearest train
image, and keeps the `percentile`-th percentile of those distances as the threshold (the
1st: only one test image in a hundred is that close to the train split). A sample nearer
than that to some train image counts as memorised. A generator that draws from the data's
distribution without copying reads about percentile / 100 (the test split's own share,
the floor's figure); one that returns train images reads near 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genpipe.metrics import spread
from genpipe.metrics.neighbours import nearest


@dataclass(frozen=True)
class Memorisation:
    share: float  # of the samples within the threshold of some train image
    share_std: float  # its standard error (a share of the samples)
    distance: np.ndarray  # (M,): each sample's distance to its nearest train image
    index: np.ndarray  # (M,): that train image's row in the train features

    def closest(self, count: int) -> np.ndarray:
        """The rows of the `count` samples nearest the train images, nearest first (ties
        by row: a stable order)."""
        return np.argsort(self.distance, kind="stable")[:count]


def threshold(test: np.ndarray, train: np.ndarray, percentile: float) -> float:
    """The `percentile`-th percentile of the test features' distances to their nearest
    train feature: an observed distance (the lower one), not an interpolation."""
    distance, _ = nearest(test, train)
    return float(np.percentile(distance, percentile, method="lower"))


def memorisation(samples: np.ndarray, train: np.ndarray, limit: float) -> Memorisation:
    """The share of `samples` (M, D) within `limit` (threshold()'s) of a `train` feature."""
    distance, index = nearest(samples, train)
    share = float(np.mean(distance <= limit))
    return Memorisation(share, spread.proportion_error(share, len(distance)), distance, index)
