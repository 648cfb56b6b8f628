"""evaluate@gan: samples from the EMA generator against the reference's real statistics,
and against the train images it could have copied (metrics/memorisation.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from genpipe import paths, runtime
from genpipe.data.split import Split
from genpipe.gan.artifact import load_generator
from genpipe.gan.network import Generator
from genpipe.images import GRID_SAMPLES, image_grid, pairs_grid, to_uint8
from genpipe.metrics.compare import Reference, compare, measured_on, rounded
from genpipe.metrics.features import Backbone, extract_features
from genpipe.metrics.keys import (
    COVERAGE,
    DENSITY,
    FID,
    FID_OVER_FLOOR,
    FLOOR,
    KID_MEAN,
    KID_STD,
    KID_SUBSET_SIZE,
    MEASURED_ON,
    MEMORISATION,
    MEMORISED,
    PRECISION,
    RECALL,
    STD,
)
from genpipe.metrics.memorisation import memorisation
from genpipe.params.schema import EvaluateParams

TAIL_PAIRS = 16  # the tail grid: the samples nearest the train images, each above its nearest


@torch.inference_mode()
def generate(
    netG: Generator, n: int, seed: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """(n, C, S, S) uint8 samples from fixed noise, quantised as the real images are; a
    conditional generator's in the train split's class shares."""
    noise = runtime.make_generator(device, seed)
    z = torch.randn(n, netG.z_dim, device=device, generator=noise)  # drawn at once: the
    # samples do not depend on the batch size
    labels = netG.labels(n, device) if getattr(netG, "num_classes", 0) else None
    if labels is None:
        return np.concatenate([to_uint8(netG(zb)) for zb in z.split(batch_size)])
    batches = zip(z.split(batch_size), labels.split(batch_size), strict=True)
    return np.concatenate([to_uint8(netG(zb, yb)) for zb, yb in batches])


def evaluate_weights(
    weights_dir: Path,
    reference: Reference,
    backbone: Backbone,
    split: Split | None,  # the train images of the tail grid; None: no tail grid
    evaluate: EvaluateParams,
    seed: int,
    device: torch.device,
) -> tuple[dict[str, Any], dict[Path, Image.Image]]:
    """The evaluate stage on a weights directory: train@gan's, or a registered version's
    when register scores the champion again on today's data."""
    return evaluate_gan(load_generator(weights_dir, device), reference, backbone, evaluate,
                        seed, device, None if split is None else split.train)  # fmt: skip


def evaluate_gan(
    netG: Generator,
    reference: Reference,
    backbone: Backbone,
    evaluate: EvaluateParams,
    seed: int,
    device: torch.device,
    train_images: np.ndarray | None = None,  # (N, C, S, S) uint8: the train split's
) -> tuple[dict[str, Any], dict[Path, Image.Image]]:
    """metrics.json's content and the grids by their paths: the first samples, and, given
    the train images, the tail grid (paths.tail_grid). As many samples as the reference's
    floor took real train images, with its KID subset size."""
    n, subset = reference.info["num_samples"], reference.info[KID_SUBSET_SIZE]
    samples = generate(netG, n, seed, evaluate.batch_size, device)
    features = extract_features(backbone, samples, evaluate.batch_size, device, "gan features")
    metrics: dict[str, Any] = compare(reference, features, evaluate.kid_subsets, subset,
                                      evaluate.pr_k, seed, evaluate.bootstraps)  # fmt: skip
    grids = {paths.eval_grid("gan"): image_grid(samples[:GRID_SAMPLES], rows=8)}
    if reference.train is not None and reference.train_index is not None:
        copied = memorisation(features, reference.train,
                              reference.info[MEMORISATION]["threshold"])  # fmt: skip
        metrics[MEMORISED], metrics[MEMORISED + STD] = copied.share, copied.share_std
        if train_images is not None:
            rows = copied.closest(TAIL_PAIRS)
            nearest = train_images[reference.train_index[copied.index[rows]]]
            grids[paths.tail_grid("gan")] = pairs_grid(samples[rows], nearest)
    floor = reference.info[FLOOR]
    if floor[FID] > 0:  # 0 only when the train subsample's statistics equal the test split's
        metrics[FID_OVER_FLOOR] = metrics[FID] / floor[FID]
    metrics[FLOOR] = floor
    metrics["num_samples"] = n
    metrics[KID_SUBSET_SIZE] = subset
    metrics[MEASURED_ON] = measured_on(reference, n, "generated samples", evaluate.bootstraps)
    if MEMORISED in metrics:  # against how many train images, and the threshold's rule
        metrics[MEASURED_ON][MEMORISATION] = reference.info[MEMORISATION]
    return rounded(metrics), grids


def summary(metrics: dict[str, Any]) -> str:
    """How the model did, in a line for its run's description."""
    floor = metrics.get(FLOOR, {}).get(FID)
    text = f"FID {metrics[FID]:.4g}" + (f" ± {metrics[FID + STD]:.2g}" if FID + STD in metrics
                                          else "")  # fmt: skip
    if FID_OVER_FLOOR in metrics:
        text += f" ({metrics[FID_OVER_FLOOR]:.3g}x the real-data floor of {floor:.4g})"
    text += (f", KID {metrics[KID_MEAN]:.3g} ± {metrics[KID_STD]:.3g}, precision "
             f"{metrics[PRECISION]:.3g}, recall {metrics[RECALL]:.3g}, density "
             f"{metrics[DENSITY]:.3g}, coverage {metrics[COVERAGE]:.3g}")  # fmt: skip
    if MEMORISED in metrics:
        text += f", memorised {metrics[MEMORISED]:.3g}"
        if (by_test := metrics.get(FLOOR, {}).get(MEMORISED)) is not None:
            text += f" (the test images' {by_test:.3g})"
    return f"{text}; {metrics['num_samples']} samples against the test split."
