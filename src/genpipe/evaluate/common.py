"""What the reference stage and the evaluate stages share: the feature backbone, the cached
real-data reference (data/reference/) and the comparison of features against it.

The reference holds the real test split's features and their statistics (mu, sigma and
sigma's square root, so a Fréchet distance costs one eigendecomposition), the domain
network when that backbone is used, and the "floor": the same metrics for real train
images against the test split, at the sample count the evaluation uses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from genpipe.errors import MetricsError
from genpipe.metrics import fid
from genpipe.metrics.features import Backbone, load_domain_network
from genpipe.params import EvaluateParams

log = logging.getLogger(__name__)

REFERENCE_DIR = Path("data/reference")
INFO_FILE = "reference.json"  # backbone, counts, the floor, the domain network's accuracy
STATS_FILE = "stats.safetensors"  # features (N, D) float32; mu, sigma, sigma_sqrt float64
DOMAIN_WEIGHTS = "domain.safetensors"  # domain backbone only

# metric keys, in metrics.json and (prefixed) in MLflow
FID, KID_MEAN, KID_STD, PRECISION, RECALL = "fid", "kid_mean", "kid_std", "precision", "recall"
FLOOR = "floor"  # the metrics of real train images against the test split
FID_OVER_FLOOR = "fid_over_floor"


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


def save_reference(directory: Path, reference: Reference) -> None:
    """Into `directory` (a staging directory: the caller swaps it in whole)."""
    save_file(
        {
            "features": reference.features.astype(np.float32),  # the backbones' own precision
            "mu": reference.mu,
            "sigma": reference.sigma,
            "sigma_sqrt": reference.sigma_sqrt,
        },
        str(directory / STATS_FILE),
    )
    text = json.dumps(reference.info, indent=2, sort_keys=True) + "\n"
    (directory / INFO_FILE).write_text(text)


def load_reference(directory: Path, evaluate: EvaluateParams) -> Reference:
    """The reference stage's output, checked against the evaluate params in use."""
    directory = Path(directory)
    for name in (INFO_FILE, STATS_FILE):
        if not (directory / name).is_file():
            raise MetricsError(
                f"{directory / name}: expected the reference stage's output; found no such "
                "file (run `dvc repro reference`)"
            )
    info = json.loads((directory / INFO_FILE).read_text())
    if info.get("backbone") != evaluate.backbone:
        raise MetricsError(
            f"{directory / INFO_FILE}: expected statistics of the {evaluate.backbone} backbone "
            f"(evaluate.backbone); found {info.get('backbone')} (run `dvc repro reference`)"
        )
    arrays = load_file(str(directory / STATS_FILE))
    return Reference(
        info=info,
        features=arrays["features"].astype(np.float64),
        mu=arrays["mu"],
        sigma=arrays["sigma"],
        sigma_sqrt=arrays["sigma_sqrt"],
    )


def trained_config(weights_dir: Path, weights_file: str, stage: str) -> dict[str, Any]:
    """The config.json a train stage wrote beside `weights_file`; both must exist."""
    for name in ("config.json", weights_file):
        if not (Path(weights_dir) / name).is_file():
            raise MetricsError(
                f"{Path(weights_dir) / name}: expected the {stage} stage's output; found no "
                f"such file (run `dvc repro {stage}`)"
            )
    return json.loads((Path(weights_dir) / "config.json").read_text())


# --- backbones ------------------------------------------------------------------------------


def inception_backbone(evaluate: EvaluateParams, device: torch.device) -> tuple[Backbone, str]:
    """The FID Inception network from its weights file, and the file's SHA-256."""
    from genpipe.metrics.inception import load_inception

    net = load_inception(evaluate.inception_weights, device)
    return net, net.weights_sha256


def load_backbone(
    evaluate: EvaluateParams, reference: Reference, directory: Path, device: torch.device
) -> Backbone:
    """The backbone the reference was computed with."""
    if evaluate.backbone == "domain":
        net = load_domain_network(directory / DOMAIN_WEIGHTS, reference.info["domain"], device)
        return net.features
    backbone, sha256 = inception_backbone(evaluate, device)
    if sha256 != reference.info["inception_sha256"]:
        raise MetricsError(
            f"Inception weights: expected the file the reference statistics were computed "
            f"with (SHA-256 {reference.info['inception_sha256'][:12]}...); found "
            f"{sha256[:12]}... (run `dvc repro --force reference`)"
        )
    return backbone


# --- comparison -----------------------------------------------------------------------------


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


def compare(
    reference: Reference, features: np.ndarray, evaluate: EvaluateParams, seed: int
) -> dict[str, float]:
    """FID, KID (mean and std over subsets) and precision/recall of `features` (N, D)
    against the reference's real test features."""
    distance = frechet_to_reference(reference, features)
    kid_mean, kid_std = fid.kernel_inception_distance(
        reference.features,
        features,
        evaluate.kid_subsets,
        kid_subset_size(evaluate, reference, len(features)),
        seed,
    )
    precision, recall = fid.precision_recall(reference.features, features, k=evaluate.pr_k)
    return {
        FID: distance,
        KID_MEAN: kid_mean,
        KID_STD: kid_std,
        PRECISION: precision,
        RECALL: recall,
    }


def kid_subset_size(evaluate: EvaluateParams, reference: Reference, n: int) -> int:
    """The KID subset size compare() uses for n samples: evaluate.kid_subset_size, but at
    most half the smaller side, so that the subsets differ and their std means something."""
    return max(2, min(evaluate.kid_subset_size, min(n, len(reference.features)) // 2))


def split_images(prepared: Any) -> tuple[np.ndarray, np.ndarray]:
    """The prepared data's train and test images, (N, C, S, S) uint8 each, in memory."""
    split = prepared.manifest["split"].to_numpy()
    images = np.asarray(prepared.images)
    return images[split == "train"], images[split == "test"]


def num_samples(evaluate: EvaluateParams, test_count: int) -> int:
    """How many images the evaluation compares: evaluate.num_samples, or the test split's."""
    return evaluate.num_samples or test_count


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
