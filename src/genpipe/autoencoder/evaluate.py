"""evaluate@autoencoder: the test split's reconstructions, their error and their FID, and
PCA with as many components as the latent has dimensions, as the baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from genpipe import paths
from genpipe.autoencoder.artifact import load_autoencoder
from genpipe.autoencoder.network import AutoEncoder
from genpipe.data.split import Split
from genpipe.images import pairs_grid, to_float, unit_to_uint8
from genpipe.metrics import reconstruction, spread
from genpipe.metrics.compare import (
    Reference,
    fid_spread,
    frechet_to_reference,
    measured_on,
    rounded,
)
from genpipe.metrics.features import Backbone, extract_features
from genpipe.metrics.keys import (
    FID,
    FID_OVER_FLOOR,
    FLOOR,
    MEASURED_ON,
    MSE,
    MSE_OVER_PCA,
    PCA_MSE,
    PSNR,
    SSIM,
    STD,
    TEST_COUNT_FLOOR,
)
from genpipe.params.schema import EvaluateParams

GRID_IMAGES = 32  # 4 rows of 8 originals, each above their reconstructions
TAIL_IMAGES = 16  # the tail grid: the worst reconstructed test images, worst first


@torch.inference_mode()
def reconstruct(
    net: AutoEncoder, images: np.ndarray, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, S, S) uint8 -> reconstructions as float64 in [0, 1] and as uint8 (rounded by
    unit_to_uint8). A VAE decodes its mean."""
    # filled a batch at a time: no list to concatenate, no whole-array temporaries
    out = np.empty(images.shape, dtype=np.float64)
    out_uint8 = np.empty(images.shape, dtype=np.uint8)
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        x = to_float(x.to(device))  # as in training: [-1, 1]
        recon = net(x)[0].float().clamp(-1.0, 1.0).add(1.0).div(2.0)
        rows = slice(start, start + len(x))
        out[rows] = recon.double().cpu().numpy()
        out_uint8[rows] = unit_to_uint8(out[rows])
    return out, out_uint8


def evaluate_weights(
    weights_dir: Path,
    reference: Reference,
    backbone: Backbone,
    split: Split,  # the train split fits PCA; the test split is reconstructed and scored
    evaluate: EvaluateParams,
    seed: int,  # the FID bootstrap's resamples
    device: torch.device,
) -> tuple[dict[str, Any], dict[Path, Image.Image]]:
    """The evaluate stage on a weights directory: train@autoencoder's, or a registered
    version's when register scores the champion again on today's data."""
    net = load_autoencoder(weights_dir, device)
    return evaluate_autoencoder(net, split.train, split.test, reference, backbone, evaluate,
                                device, seed)  # fmt: skip


def evaluate_autoencoder(
    net: AutoEncoder,
    train_images: np.ndarray,  # (N, C, S, S) uint8: fits the PCA baseline
    test_images: np.ndarray,  # (M, C, S, S) uint8: reconstructed and scored
    reference: Reference,
    backbone: Backbone,
    evaluate: EvaluateParams,
    device: torch.device,
    seed: int = 0,  # the FID bootstrap's resamples
) -> tuple[dict[str, Any], dict[Path, Image.Image]]:
    """metrics.json's content, each figure with its spread over the test images
    (metrics/spread.py), and the grids by their paths: the first test originals above their
    reconstructions, and the tail grid, the worst reconstructed above theirs."""
    x = test_images.astype(np.float64) / 255.0  # (M, C, S, S) in [0, 1]
    latent_dim = net.config()["latent_dim"]
    # first, while no reconstructions are held; uint8 in, scaled a chunk at a time: no float
    # copy of the train split
    pca = reconstruction.pca_reconstruction(train_images, test_images, latent_dim, 1 / 255)
    pca_mse = reconstruction.mse(x, pca)
    del pca  # (M, C, S, S) float64, no longer needed
    recon, recon_uint8 = reconstruct(net, test_images, evaluate.batch_size, device)
    each = reconstruction.per_image(x, recon)  # (M,) MSE, PSNR, SSIM
    mse = float(np.mean(each[MSE]))
    features = extract_features(
        backbone, recon_uint8, evaluate.batch_size, device, "reconstruction features"
    )
    fid = frechet_to_reference(reference, features)
    floor = floor_at(reference, len(test_images))
    metrics: dict[str, Any] = {
        MSE: mse,
        PSNR: float(np.mean(each[PSNR])),
        SSIM: float(np.mean(each[SSIM])),
        PCA_MSE: pca_mse,
        FID: fid,
        **{key + STD: spread.standard_error(values) for key, values in each.items()},
        "latent_dim": latent_dim,
        "test_images": len(test_images),
        MEASURED_ON: measured_on(reference, len(test_images), "reconstructions of the test "
                                 "split", evaluate.bootstraps),  # fmt: skip
    }
    if (fid_std := fid_spread(reference, features, evaluate.bootstraps, seed)) is not None:
        metrics[FID + STD] = fid_std
    if pca_mse > 0:  # 0 only when PCA reconstructs the test split exactly
        metrics[MSE_OVER_PCA] = mse / pca_mse
    if floor is not None:
        metrics[FLOOR] = {FID: floor}
        if floor > 0:
            metrics[FID_OVER_FLOOR] = fid / floor
    worst = np.argsort(-each[MSE], kind="stable")[:TAIL_IMAGES]
    grids = {
        paths.eval_grid("autoencoder"): pairs_grid(test_images[:GRID_IMAGES],
                                                   recon_uint8[:GRID_IMAGES]),
        paths.tail_grid("autoencoder"): pairs_grid(test_images[worst], recon_uint8[worst]),
    }  # fmt: skip
    return rounded(metrics), grids


def floor_at(reference: Reference, scored: int) -> float | None:
    """The floor's FID at the count scored (every test image): the reference's floor when
    it took that many real images, else TEST_COUNT_FLOOR (evaluate.num_samples set another
    count); None when there is none at that count (a test split larger than the train)."""
    if reference.info.get("num_samples") in (None, scored):
        return float(reference.info[FLOOR][FID])
    at_test = reference.info.get(TEST_COUNT_FLOOR)
    return None if at_test is None else float(at_test[FID])


def summary(metrics: dict[str, Any]) -> str:
    """How the model did, in a line for its run's description."""
    text = f"MSE {metrics[MSE]:.4g} ± {metrics[MSE + STD]:.2g}"
    if MSE_OVER_PCA in metrics:
        text += f" ({metrics[MSE_OVER_PCA]:.3g}x PCA's {metrics[PCA_MSE]:.4g})"
    return (f"{text}, PSNR {metrics[PSNR]:.3g} dB, SSIM {metrics[SSIM]:.3g}, FID "
            f"{metrics[FID]:.4g}; {metrics['test_images']} test images.")  # fmt: skip
