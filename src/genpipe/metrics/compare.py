"""Generated (or reconstructed) features against the real reference: the reference's
statistics, and compare(), which both models' evaluations and the reference
stage's floor call. Pure: numbers in, numbers out; no params, no files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from genpipe.errors import MetricsError
from genpipe.metrics import fid, spread
from genpipe.metrics.keys import (
    COVERAGE,
    DENSITY,
    FID,
    KID_MEAN,
    KID_STD,
    PRECISION,
    RECALL,
    STD,
)
from genpipe.metrics.kid import kernel_inception_distance
from genpipe.metrics.neighbours import manifold


@dataclass
class Reference:
    info: dict[str, Any]
    features: np.ndarray  # (N, D): the real test split's
    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    sigma_sqrt: np.ndarray  # (D, D), symmetric: sigma = sigma_sqrt @ sigma_sqrt
    # the memorisation check's train features (T, D) and their rows in the train split
    # (T,): the reference stage always keeps them; None only where a caller has no check
    train: np.ndarray | None = None
    train_index: np.ndarray | None = None


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


def measured_on(reference: Reference, scored: int, what: str, bootstraps: int) -> dict[str, Any]:
    """What an evaluation's figures were measured on, for metrics.json: `scored` images
    (`what`: generated samples, reconstructions) against the reference's real test images,
    through its backbone (Inception resizes to 299 x 299 first)."""
    backbone = reference.info.get("backbone")
    return {
        "scored": scored,
        "scored_images": what,
        "reference_images": int(len(reference.features)),
        "split": "test",
        "backbone": backbone,
        "resize": "bilinear to 299 x 299" if backbone == "inception" else "none",
        "fid_bootstraps": bootstraps,
    }


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
    bootstraps: int = 0,
) -> dict[str, float]:
    """FID, KID (mean and std over `kid_subsets` subsets of `kid_subset_size`),
    precision/recall and density/coverage (k = `pr_k`) of `features` (N, D) against the
    reference's real test features, each with its spread (metrics/spread.py): fid_std over
    `bootstraps` resamples (none below 2), the others' standard errors."""
    distance = frechet_to_reference(reference, features)
    kid_mean, kid_std = kernel_inception_distance(
        reference.features, features, kid_subsets, kid_subset_size, seed
    )
    k_nn = manifold(reference.features, features, k=pr_k)
    n_fake, n_real = len(features), len(reference.features)
    metrics = {
        FID: distance,
        KID_MEAN: kid_mean,
        KID_STD: kid_std,
        PRECISION: k_nn[PRECISION],
        RECALL: k_nn[RECALL],
        DENSITY: k_nn[DENSITY],
        COVERAGE: k_nn[COVERAGE],
        PRECISION + STD: spread.proportion_error(k_nn[PRECISION], n_fake),
        RECALL + STD: spread.proportion_error(k_nn[RECALL], n_real),
        DENSITY + STD: k_nn[DENSITY + STD],
        COVERAGE + STD: spread.proportion_error(k_nn[COVERAGE], n_real),
    }
    if (fid_std := fid_spread(reference, features, bootstraps, seed)) is not None:
        metrics[FID + STD] = fid_std
    return metrics


def fid_spread(reference: Reference, features: np.ndarray, bootstraps: int,
               seed: int) -> float | None:  # fmt: skip
    """FID's std over `bootstraps` resamples of `features` (the draw of samples). Each
    resample's FID is frechet_to_reference's, computed without its checks (the features
    were checked once): the reference's side is fixed, so only the resample's mean and
    covariance and one symmetric eigenvalue problem remain."""
    x = np.asarray(features, dtype=np.float64)
    frechet_to_reference(reference, x)  # the checks, once (dimensions, finite values)
    root, trace = reference.sigma_sqrt, float(np.trace(reference.sigma))

    def resampled(pick: np.ndarray) -> float:
        y = x[pick]
        mu = y.mean(axis=0)
        centred = y - mu
        sigma = centred.T @ centred / (len(y) - 1)
        m = root @ sigma @ root
        eigenvalues = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)
        diff = reference.mu - mu
        distance = diff @ diff + trace + np.trace(sigma) - 2.0 * np.sqrt(eigenvalues).sum()
        return max(float(distance), 0.0)

    return spread.bootstrap_std(resampled, len(x), bootstraps, seed)


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
