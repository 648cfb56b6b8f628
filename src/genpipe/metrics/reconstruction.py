"""Reconstruction error of images in [0, 1]: MSE, PSNR, SSIM, and the PCA baseline that
gives an autoencoder's MSE its meaning (a linear code of the same size)."""

from __future__ import annotations

import numpy as np

from genpipe.errors import MetricsError

PSNR_MAX_DB = 100.0  # PSNR of identical images, which would be infinite


def _check_pair(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise MetricsError(
            f"reconstruction metrics: expected two (N, C, H, W) arrays of one shape; "
            f"got {x.shape} and {y.shape}"
        )


def mse(x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error over every pixel of every image."""
    _check_pair(x, y)
    return float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))


def psnr(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """Mean over images of each image's PSNR in dB (capped at PSNR_MAX_DB)."""
    _check_pair(x, y)
    per_image = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        db = 10 * np.log10(data_range**2 / per_image)
    return float(np.mean(np.minimum(db, PSNR_MAX_DB)))


def ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM over images and channels: scikit-image's structural_similarity (Wang et al.
    2004; 7 x 7 uniform window, or the largest odd one the images allow)."""
    from skimage.metrics import structural_similarity

    _check_pair(x, y)
    n, c, h, w = x.shape
    win = min(7, h - (h % 2 == 0), w - (w % 2 == 0))  # odd, and no larger than the image
    if win < 3:
        raise MetricsError(f"ssim: expected images of at least 3 x 3 pixels; got {h} x {w}")
    # every (image, channel) as one channel: skimage averages the channels' SSIMs, which
    # (all of one size) is the mean of the images' SSIMs
    a = x.astype(np.float64).reshape(n * c, h, w)
    b = y.astype(np.float64).reshape(n * c, h, w)
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=0, win_size=win))


def pca_reconstruction(train: np.ndarray, test: np.ndarray, components: int) -> np.ndarray:
    """The test images through PCA fitted on the train images with `components` components
    (the best linear code of that size), clipped to [0, 1] as a model's output is."""
    from sklearn.decomposition import PCA

    n, *shape = test.shape
    x_train = train.reshape(len(train), -1).astype(np.float64)
    components = min(components, *x_train.shape)
    pca = PCA(n_components=components, svd_solver="full").fit(x_train)
    codes = pca.transform(test.reshape(n, -1).astype(np.float64))
    return np.clip(pca.inverse_transform(codes), 0.0, 1.0).reshape(n, *shape)
