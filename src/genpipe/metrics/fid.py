"""Feature statistics and the Fréchet distance between two sets of image features (FID).

Statistics are the interchange format: features (N, D) -> (mu, sigma) -> distance. Each
step is a small pure function on float64 numpy arrays, so the real data's statistics (and
sigma's square root) are computed once and cached, and a distance costs the eigenvalues of
one symmetric matrix instead of scipy.linalg.sqrtm's Schur decomposition; without a cached
root, a Cholesky factor stands in for it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from genpipe.errors import MetricsError

log = logging.getLogger("genpipe.metrics.fid")


def _check_finite(a: np.ndarray, name: str) -> None:
    if not np.isfinite(a).all():
        raise MetricsError(f"{name}: expected finite values; found NaN or inf")


def _as_float64(features: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """(B, D) features of any float dtype, numpy or torch on any device -> (B, D) float64."""
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise MetricsError(f"{what}: expected a (N, D) array of features; got shape {x.shape}")
    _check_finite(x, what)
    return x


def warn_if_few_samples(n: int, dim: int, what: str = "features") -> bool:
    """Log a warning when n < dim: the covariance is then rank-deficient and the FID is biased
    upward. Returns whether it warned."""
    if n >= dim:
        return False
    log.warning(
        "%s: %d samples for %d-d features; the covariance is rank-deficient (rank <= %d), "
        "so the FID is biased upward: compare only FIDs from the same number of samples",
        what,
        n,
        dim,
        n - 1,
    )
    return True


class FeatureStats:
    """Mean and covariance of features that arrive in batches.

    Each batch's mean and centred scatter are merged into the running ones (Chan, Golub and
    LeVeque's parallel update), in float64, so the result does not depend on the batch size
    and avoids the cancellation of accumulating sums of x x^T.
    """

    def __init__(self, what: str = "features"):
        self.what = what  # names the features in errors and warnings
        self._n = 0
        self._mean: np.ndarray | None = None  # (D,)
        self._scatter: np.ndarray | None = None  # (D, D): sum of (x - mean)(x - mean)^T

    def add(self, features: np.ndarray | torch.Tensor) -> None:
        x = _as_float64(features, self.what)  # (B, D)
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise MetricsError(
                f"{self.what}: expected batches of {self._mean.shape[0]}-d features, like "
                f"the earlier ones; got shape {x.shape}"
            )
        b = x.shape[0]
        if b == 0:
            return
        mean_b = x.mean(axis=0)  # (D,)
        centred = x - mean_b  # (B, D)
        scatter_b = centred.T @ centred  # (D, D)
        if self._mean is None or self._scatter is None:
            self._n, self._mean, self._scatter = b, mean_b, scatter_b
            return
        n_a = self._n
        n = n_a + b
        delta = mean_b - self._mean  # (D,)
        self._mean = self._mean + delta * (b / n)
        self._scatter = self._scatter + scatter_b + np.outer(delta, delta) * (n_a * b / n)
        self._n = n

    @property
    def n(self) -> int:
        return self._n

    @property
    def dim(self) -> int | None:
        return None if self._mean is None else self._mean.shape[0]

    def _check_count(self) -> None:
        if self._n < 2:
            raise MetricsError(
                f"{self.what}: expected at least 2 samples for a mean and covariance; got {self._n}"
            )

    @property
    def mu(self) -> np.ndarray:
        """(D,) float64."""
        self._check_count()
        return self._mean.copy()

    @property
    def sigma(self) -> np.ndarray:
        """(D, D) float64, unbiased (ddof=1, as np.cov(rowvar=False)); warns when n < D."""
        self._check_count()
        warn_if_few_samples(self._n, self._scatter.shape[0], self.what)
        return self._scatter / (self._n - 1)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (D,), sigma (D, D))."""
        return self.mu, self.sigma


def _symmetric(a: np.ndarray) -> np.ndarray:
    return (a + a.T) / 2


def _square_matrix(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise MetricsError(f"{name}: expected a square (D, D) matrix; got shape {a.shape}")
    _check_finite(a, name)
    return a


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite (D, D) matrix, by eigh; negative
    eigenvalues (round-off) count as 0. sqrt_psd(sigma) @ sqrt_psd(sigma) == sigma."""
    sigma = _square_matrix(sigma, "sigma")
    w, v = np.linalg.eigh(_symmetric(sigma))  # (D,), (D, D)
    return _symmetric((v * np.sqrt(np.clip(w, 0.0, None))) @ v.T)


def _congruence(sigma1: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """A (D, D) symmetric PSD matrix with the eigenvalues of sigma1 sigma2, without a cached
    root: L^T sigma_b L with sigma_a = L L^T, for the first of (sigma1, sigma2) that is
    numerically positive definite; S sigma2 S with S = sqrt_psd(sigma1) when neither is.

    L^T sigma_b L is similar to L L^T sigma_b = sigma_a sigma_b (conjugate by L), and
    sigma1 sigma2 and sigma2 sigma1 share their eigenvalues. Cholesky needs no
    eigenvectors: at D = 2048 it costs about a tenth of sqrt_psd's eigh.
    """
    for a, b in ((sigma1, sigma2), (sigma2, sigma1)):
        try:
            factor = np.linalg.cholesky(a)  # (D, D) lower triangular
        except np.linalg.LinAlgError:  # singular (n <= D samples) or round-off negative
            continue
        return factor.T @ b @ factor
    s = sqrt_psd(sigma1)  # exact for PSD sigma1 of any rank; no jitter added
    return s @ sigma2 @ s


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    sqrt_sigma1: np.ndarray | None = None,
) -> float:
    """||mu1 - mu2||^2 + tr sigma1 + tr sigma2 - 2 tr sqrt(sigma1 sigma2), a float >= 0.

    tr sqrt(sigma1 sigma2) = tr sqrt(S sigma2 S) with S = sqrt(sigma1) symmetric: S sigma2 S
    is symmetric PSD, so it is the sum of the square roots of its eigenvalues. Pass the
    cached sqrt_psd(sigma1) as `sqrt_sigma1` to use it. Without it, a Cholesky factor
    stands in for S where either sigma is positive definite (see _congruence).
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1 = _symmetric(_square_matrix(sigma1, "sigma1"))  # (D, D)
    sigma2 = _symmetric(_square_matrix(sigma2, "sigma2"))  # (D, D)
    for side, mu, sigma in ((1, mu1, sigma1), (2, mu2, sigma2)):
        if mu.ndim != 1 or mu.shape[0] != sigma.shape[0]:
            raise MetricsError(
                f"statistics {side}: expected mu{side} (D,) and sigma{side} (D, D); got "
                f"mu{side} {mu.shape} and sigma{side} {sigma.shape}"
            )
        _check_finite(mu, f"mu{side}")
    if sigma1.shape != sigma2.shape:
        raise MetricsError(
            f"statistics of different dimensions: sigma1 {sigma1.shape}, sigma2 {sigma2.shape}"
        )
    if sqrt_sigma1 is None:
        m = _congruence(sigma1, sigma2)
    else:
        s = _symmetric(_square_matrix(sqrt_sigma1, "sqrt_sigma1"))
        if s.shape != sigma1.shape:
            raise MetricsError(
                f"sqrt_sigma1: expected the shape of sigma1 {sigma1.shape}; got {s.shape}"
            )
        m = s @ sigma2 @ s
    m = _symmetric(m)  # (D, D), PSD: same eigenvalues as sigma1 sigma2
    eigenvalues = np.clip(np.linalg.eigvalsh(m), 0.0, None)  # negatives are round-off
    tr_covmean = np.sqrt(eigenvalues).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return max(float(distance), 0.0)  # round-off can take a zero distance below 0


def paired_features(
    real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) and (M, D) float64 features of the same D."""
    x, y = _as_float64(real, "real features"), _as_float64(fake, "fake features")
    if x.shape[1] != y.shape[1]:
        raise MetricsError(
            f"real and fake features: expected the same dimension; got real {x.shape} and "
            f"fake {y.shape}"
        )
    return x, y
