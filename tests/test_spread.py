"""Each figure's spread: the FID bootstrap against independent draws on Gaussians of known
distance, and the standard errors of means and shares."""

from __future__ import annotations

import numpy as np
import pytest

from genpipe.metrics import spread
from genpipe.metrics.compare import (
    compare,
    fid_spread,
    frechet_to_reference,
    reference_from_features,
)

D, N = 16, 400  # feature dimensions; samples a draw, and real images


def draw(seed: int) -> np.ndarray:
    """A model's features: shifted and wider than the reference's N(0, I)."""
    return np.random.default_rng(seed).normal(0.2, 1.15, size=(N, D))


def test_the_fid_bootstrap_matches_the_spread_of_independent_draws():
    reference = reference_from_features(np.random.default_rng(0).normal(size=(N, D)), {})
    independent = np.std([frechet_to_reference(reference, draw(100 + i)) for i in range(150)],
                         ddof=1)  # fmt: skip
    # what one evaluation sees: one draw, resampled; averaged over a few evaluations
    bootstrapped = np.mean([fid_spread(reference, draw(i), 50, seed=i) for i in range(6)])
    print(f"FID std: independent draws {independent:.4f}, bootstrap {bootstrapped:.4f}")
    assert 0.75 < bootstrapped / independent < 1.35  # stated tolerance: within 35%


def test_a_bootstrap_needs_two_rounds_and_is_seeded():
    reference = reference_from_features(np.random.default_rng(0).normal(size=(N, D)), {})
    assert fid_spread(reference, draw(1), 1, seed=0) is None
    assert fid_spread(reference, draw(1), 5, seed=3) == fid_spread(reference, draw(1), 5, 3)
    assert fid_spread(reference, draw(1), 5, seed=3) != fid_spread(reference, draw(1), 5, 4)


def test_the_standard_error_of_a_mean_is_what_its_bootstrap_converges_to():
    values = np.random.default_rng(0).exponential(size=300)
    resampled = spread.bootstrap_std(lambda pick: float(np.mean(values[pick])), 300, 2000, 0)
    assert spread.standard_error(values) == pytest.approx(resampled, rel=0.08)
    assert spread.standard_error(values[:1]) == 0.0
    assert spread.proportion_error(0.5, 100) == pytest.approx(0.05)
    assert spread.proportion_error(1.0, 100) == 0.0


def test_compare_gives_each_figure_its_spread():
    reference = reference_from_features(np.random.default_rng(0).normal(size=(N, D)), {})
    metrics = compare(reference, draw(1), kid_subsets=10, kid_subset_size=100, pr_k=3, seed=0,
                      bootstraps=20)  # fmt: skip
    assert metrics["fid_std"] > 0 and metrics["kid_std"] >= 0
    p, r = metrics["precision"], metrics["recall"]
    assert metrics["precision_std"] == pytest.approx(np.sqrt(p * (1 - p) / N))
    assert metrics["recall_std"] == pytest.approx(np.sqrt(r * (1 - r) / N))
    assert "fid_std" not in compare(reference, draw(1), 10, 100, 3, seed=0)  # no bootstrap


def test_the_bootstraps_resamples_are_frechet_to_reference_itself(monkeypatch):
    """fid_spread skips frechet_to_reference's checks for speed: the same numbers."""
    reference = reference_from_features(np.random.default_rng(0).normal(size=(N, D)), {})
    features = draw(1)
    fast = fid_spread(reference, features, 5, seed=3)
    rng = np.random.default_rng(3)
    plain = [frechet_to_reference(reference, features[rng.integers(0, N, N)]) for _ in range(5)]
    assert fast == pytest.approx(float(np.std(plain, ddof=1)), rel=1e-9)
