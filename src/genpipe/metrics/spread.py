"""Each evaluation figure's noise: what another draw of the scored images would move it by.

- A mean over images (MSE, PSNR, SSIM per test image; precision, a share of the samples;
  recall, a share of the real images): its standard error, std / sqrt(n), which is what a
  bootstrap of the images converges to.
- FID, which is not a mean: the std over `rounds` bootstrap resamples of the scored
  features (the generated samples, or the reconstructions), against the fixed reference.
  On Gaussians of known FID it matches the std over independent draws
  (tests/test_spread.py). The reference's own finite-sample noise is left out: a candidate
  and the champion it is compared with are scored against the same reference.
- KID keeps its own kid_std, the std over its subsets.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def standard_error(values: np.ndarray) -> float:
    """std / sqrt(n) of per-image values; 0 for fewer than two."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return 0.0
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def proportion_error(share: float, n: int) -> float:
    """The standard error of a share of n (precision, recall): sqrt(p (1 - p) / n)."""
    return float(np.sqrt(max(share * (1 - share), 0.0) / n)) if n > 0 else 0.0


def bootstrap_std(statistic: Callable[[np.ndarray], float], n: int, rounds: int,
                  seed: int) -> float | None:  # fmt: skip
    """The std of `statistic(indices)` over `rounds` resamples of range(n) with
    replacement, seeded; None for fewer than two rounds."""
    if rounds < 2:
        return None
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(rounds)]
    return float(np.std(values, ddof=1))
