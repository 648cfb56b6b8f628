"""Generated (or reconstructed) features against the real reference: the metric keys, the
reference's statistics, and compare(), which both models' evaluations and the reference
stage's floor call. Pure: numbers in, numbers out; no params, no files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from genpipe.errors import MetricsError
from genpipe.metrics import fid
from genpipe.metrics.keys import (  # noqa: F401 (the keys' users import them from here too)
    EVALUATION_CONSTANTS,
    FID,
    FID_OVER_FLOOR,
    FLOOR,
    KID_MEAN,
    KID_STD,
    KID_SUBSET_SIZE,
    PRECISION,
    RECALL,
    TEST_COUNT_FLOOR,
)
from genpipe.metrics.kid import kernel_inception_distance
from genpipe.metrics.precision_recall import precision_recall


@dataclass
class Reference:
    info: dict[str, Any]
    features: np.ndarray  # (N, D): the real test split's
    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    sigma_sqrt: np.ndarray  # (D, D), symmetric: sigma = sigma_sqrt @ sigma_sqrt


def reference_from_features(features: np.ndarray, info: dict[str, Any]) -> Reference:
    stats = fid.FeatureStats()
    stats.add(features)
    sigma = stats.sigma
    return Reference(info, features, stats.mu, sigma, fid.sqrt_psd(sigma))


def frechet_to_reference(reference: Reference, features: np.ndarray) -> float:
    """FID of `features` (N, D) against the reference's real test statistics."""
    if features.shape[1] != reference.features.shape[1]:
        raise MetricsError(
            f"features: expected {reference.features.shape[1]} dimensions, as the reference; "
            f"got {features.shape[1]} (run `dvc repro reference`)"
        )
    stats = fid.FeatureStats()
    stats.add(features)
    return fid.frechet_distance(
        reference.mu, reference.sigma, stats.mu, stats.sigma, sqrt_sigma1=reference.sigma_sqrt
    )


def kid_subset_size(requested: int, n: int, reference_count: int) -> int:
    """The KID subset size for n samples against `reference_count` real images: `requested`
    (evaluate.kid_subset_size), but at most half the smaller side, so that the subsets
    differ and their std means something."""
    return max(2, min(requested, min(n, reference_count) // 2))


def compare(
    reference: Reference,
    features: np.ndarray,
    kid_subsets: int,
    kid_subset_size: int,
    pr_k: int,
    seed: int,
) -> dict[str, float]:
    """FID, KID (mean and std over `kid_subsets` subsets of `kid_subset_size`) and
    precision/recall (k = `pr_k`) of `features` (N, D) against the reference's real test
    features."""
    distance = frechet_to_reference(reference, features)
    kid_mean, kid_std = kernel_inception_distance(
        reference.features, features, kid_subsets, kid_subset_size, seed
    )
    precision, recall = precision_recall(reference.features, features, k=pr_k)
    return {
        FID: distance,
        KID_MEAN: kid_mean,
        KID_STD: kid_std,
        PRECISION: precision,
        RECALL: recall,
    }


def rounded(metrics: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    """Floats to `digits` significant digits, nested dicts too, so metrics.json reads
    cleanly."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out[key] = rounded(value, digits)
        elif isinstance(value, float):
            out[key] = float(f"{value:.{digits}g}")
        else:
            out[key] = value
    return out
