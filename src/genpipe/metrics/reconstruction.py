"""Reconstruction error of images in [0, 1]: MSE, PSNR, SSIM, and the PCA baseline that
gives an autoencoder's MSE its meaning (a linear code of the same size)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from genpipe.errors import MetricsError
from genpipe.metrics.keys import MSE, PSNR, SSIM

PSNR_MAX_DB = 100.0  # PSNR of identical images, which would be infinite


def _check_pair(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise MetricsError(
            f"reconstruction metrics: expected two (N, C, H, W) arrays of one shape; "
            f"got {x.shape} and {y.shape}"
        )


def _squared_error(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x - y)^2 in float64, of their shape: one array, no float copies of x or y."""
    _check_pair(x, y)
    d = np.subtract(x, y, dtype=np.float64)
    return np.square(d, out=d)


def mse(x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared error over every pixel of every image."""
    return float(np.mean(_squared_error(x, y)))


def psnr(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """Mean over images of each image's PSNR in dB (capped at PSNR_MAX_DB)."""
    per_image = np.mean(_squared_error(x, y), axis=(1, 2, 3))  # (N,)
    with np.errstate(divide="ignore"):
        db = 10 * np.log10(data_range**2 / per_image)
    return float(np.mean(np.minimum(db, PSNR_MAX_DB)))


def ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM over images and channels: scikit-image's structural_similarity (Wang et al.
    2004; 7 x 7 uniform window, or the largest odd one the images allow)."""
    return float(np.mean(ssim_per_image(x, y, data_range)))


def ssim_per_image(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """(N,) each image's SSIM, the mean over its channels (as ssim(), which is their mean)."""
    from skimage.metrics import structural_similarity

    _check_pair(x, y)
    n, c, h, w = x.shape
    win = min(7, h - (h % 2 == 0), w - (w % 2 == 0))  # odd, and no larger than the image
    if win < 3:
        raise MetricsError(f"ssim: expected images of at least 3 x 3 pixels; got {h} x {w}")
    a = np.asarray(x, dtype=np.float64).reshape(n * c, h, w)  # float64 in: no copy
    b = np.asarray(y, dtype=np.float64).reshape(n * c, h, w)
    # the SSIM map of every (image, channel) at once; skimage's mean leaves out the border
    # half a window wide, and so does this
    _, full = structural_similarity(a, b, data_range=data_range, channel_axis=0,
                                    win_size=win, full=True)  # fmt: skip
    pad = (win - 1) // 2
    inner = full[:, pad : h - pad, pad : w - pad]
    return inner.reshape(n, c, -1).mean(axis=(1, 2))


def per_image(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> dict[str, np.ndarray]:
    """(N,) each image's MSE, PSNR (capped) and SSIM: their means are mse(), psnr(), ssim()."""
    errors = np.mean(_squared_error(x, y), axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        db = np.minimum(10 * np.log10(data_range**2 / errors), PSNR_MAX_DB)
    return {MSE: errors, PSNR: db, SSIM: ssim_per_image(x, y, data_range)}


PCA_CHUNK = 2048  # rows converted to float64 at a time: (2048, 784) is 13 MB


def _rows(images: np.ndarray, scale: float) -> Iterator[tuple[int, np.ndarray]]:
    """(N, ...) images -> (first row, (B, F) float64 chunk of PCA_CHUNK rows times `scale`)."""
    flat = images.reshape(len(images), -1)  # (N, F), a view where the images are contiguous
    for start in range(0, len(flat), PCA_CHUNK):
        x = flat[start : start + PCA_CHUNK].astype(np.float64)  # (B, F), a copy
        x *= scale
        yield start, x


def pca_reconstruction(
    train: np.ndarray, test: np.ndarray, components: int, scale: float = 1.0
) -> np.ndarray:
    """The test images through PCA fitted on the train images with `components` components
    (the best linear code of that size), clipped to [0, 1] as a model's output is.

    Both are multiplied by `scale` first (1 / 255 for uint8 images) a chunk at a time, so the
    train split is never copied whole. The components are the top eigenvectors of the (F, F)
    covariance (F pixels per image), two-pass in float64: exact, deterministic, and the
    reconstructions of sklearn's PCA(svd_solver="full") to round-off (where the K-th and
    K+1-th eigenvalues differ), without its SVD of the whole (N, F) train matrix.
    """
    n_train, n = len(train), len(test)
    if n_train < 1 or train.shape[1:] != test.shape[1:]:
        raise MetricsError(
            f"pca_reconstruction: expected train and test images of one shape, at least one "
            f"train image; got {train.shape} and {test.shape}"
        )
    total = np.zeros(int(np.prod(train.shape[1:])))  # (F,)
    for _, x in _rows(train, scale):
        total += x.sum(axis=0)
    mean = total / n_train  # (F,)
    scatter = np.zeros((len(mean), len(mean)))  # (F, F): sum of (x - mean)(x - mean)^T
    for _, x in _rows(train, scale):
        x -= mean
        scatter += x.T @ x
    components = min(components, n_train, len(mean))
    _, vectors = np.linalg.eigh(scatter)  # ascending eigenvalues
    basis = vectors[:, ::-1][:, :components]  # (F, K), the top K
    out = np.empty((n, len(mean)))  # (M, F)
    for start, x in _rows(test, scale):
        x -= mean
        rows = out[start : start + len(x)]  # (B, F), a view
        np.matmul(x @ basis, basis.T, out=rows)
        rows += mean
    return np.clip(out, 0.0, 1.0, out=out).reshape(test.shape)
