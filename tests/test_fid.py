"""genpipe.metrics.fid: feature statistics, the Fréchet distance against the sqrtm formula
pytorch-fid uses and against closed forms, KID, and improved precision and recall."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm

from genpipe.errors import MetricsError
from genpipe.metrics import fid, kid, neighbours


@pytest.fixture(autouse=True)
def one_blas_thread():
    """One BLAS thread: on a machine where another process holds a core, OpenBLAS's waiting
    threads make these small products 10-30x slower (a 512-d sqrtm check: 0.5 s -> 17 s)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")  # scikit-learn's dependency
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        yield


def statistics(x: np.ndarray, batch_size: int | None = None, what: str = "features"):
    """(mu, sigma) of (N, D) features, added to a FeatureStats `batch_size` rows at a time."""
    stats = fid.FeatureStats(what)
    step = batch_size or len(x)
    for start in range(0, len(x), step):
        stats.add(x[start : start + step])
    return stats.statistics()


def pytorch_fid_reference(mu1, sigma1, mu2, sigma2, eps=1e-6) -> float:
    """pytorch-fid's calculate_frechet_distance (fid_score.py), step for step. scipy >= 1.18
    has no `disp=`; before that sqrtm(a) returns the root alone, and (root, error) with
    disp=False: take either form."""

    def root(a):
        result = sqrtm(a)
        return result[0] if isinstance(result, tuple) else result

    diff = mu1 - mu2
    covmean = root(sigma1.dot(sigma2))  # product might be almost singular
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = root((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):  # numerical error might give a slight imaginary component
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def features(rng, n: int, d: int, shift: float = 0.0, spread: float = 1.0) -> np.ndarray:
    """(n, d) features with a decaying spectrum, non-negative like pooled CNN activations: a
    random projection of a 64-d latent plus noise, through a ReLU."""
    latent = 64
    scales = spread / np.sqrt(1.0 + np.arange(latent))  # (latent,)
    w = np.random.default_rng(1234).standard_normal((latent, d)) * scales[:, None]
    z = rng.standard_normal((n, latent))
    return np.maximum(z @ w + 0.3 * rng.standard_normal((n, d)) + 0.5 + shift, 0.0)


def random_statistics(rng, d: int, n: int, shift: float = 0.0, spread: float = 1.0):
    x = features(rng, n, d, shift, spread)
    return x.mean(axis=0), np.cov(x, rowvar=False)


# --- the Fréchet distance: identities ---------------------------------------------------------


def test_fid_of_identical_statistics_is_zero():
    mu, sigma = random_statistics(np.random.default_rng(0), 32, 500)
    distance = fid.frechet_distance(mu, sigma, mu, sigma)
    assert abs(distance) < 1e-6 * np.trace(sigma)


def test_equal_covariances_give_the_squared_mean_distance():
    rng = np.random.default_rng(1)
    mu1, sigma = random_statistics(rng, 32, 500)
    mu2 = mu1 + rng.normal(0.0, 0.5, 32)
    expected = float(np.sum((mu1 - mu2) ** 2))
    assert fid.frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(expected, rel=1e-9)


def test_fid_is_symmetric_and_takes_the_cached_root():
    rng = np.random.default_rng(2)
    mu1, sigma1 = random_statistics(rng, 64, 400)
    mu2, sigma2 = random_statistics(rng, 64, 400, shift=0.1, spread=1.3)
    forward = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    assert forward > 0.1
    assert fid.frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(forward, rel=1e-9)
    cached = fid.frechet_distance(mu1, sigma1, mu2, sigma2, sqrt_sigma1=fid.sqrt_psd(sigma1))
    assert cached == pytest.approx(forward, rel=1e-12)


def test_sqrt_psd_squares_back_and_clips_round_off():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 10))
    sigma = a @ a.T  # (40, 40) of rank 10: eigenvalues of round-off size, some negative
    root = fid.sqrt_psd(sigma)
    assert np.isfinite(root).all()
    np.testing.assert_array_equal(root, root.T)
    np.testing.assert_allclose(root @ root, sigma, atol=1e-10 * np.abs(sigma).max())


@pytest.mark.parametrize("rank", [512, 100])
def test_fid_matches_the_closed_form_of_commuting_covariances(rank):
    # sigma1 = Q diag(a) Q^T, sigma2 = Q diag(b) Q^T: tr sqrt(sigma1 sigma2) = sum sqrt(a b),
    # so the FID is ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2, zeros of a and b included
    rng = np.random.default_rng(4)
    d = 512
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = np.sort(rng.gamma(0.5, 10.0, d))[::-1]
    b = a * rng.uniform(0.5, 1.5, d)
    a[rank:], b[rank + 20 :] = 0.0, 0.0
    mu1, mu2 = rng.normal(0.0, 0.1, d), rng.normal(0.0, 0.1, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    distance = fid.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    # a zero eigenvalue comes back as round-off, whose square root adds ~1e-8 of the scale
    assert distance == pytest.approx(expected, rel=1e-9 if rank == d else 2e-6)


# --- the Fréchet distance against pytorch-fid's sqrtm formula ---------------------------------


def exact_fid(x: np.ndarray, y: np.ndarray) -> float:
    """The FID of (n1, D) and (n2, D) features by way of their centred features A1, A2: the
    nonzero eigenvalues of sigma1 sigma2 are the squared singular values of
    A1 A2^T / sqrt((n1 - 1)(n2 - 1)). Exact to round-off where n < D, unlike either sqrt."""
    a1, a2 = x - x.mean(axis=0), y - y.mean(axis=0)
    tr_covmean = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    tr_covmean /= math.sqrt((len(x) - 1) * (len(y) - 1))
    diff = x.mean(axis=0) - y.mean(axis=0)
    traces = np.sum(a1**2) / (len(x) - 1) + np.sum(a2**2) / (len(y) - 1)
    return float(diff @ diff + traces - 2.0 * tr_covmean)


def check_against_sqrtm(d: int, n: int, seed: int) -> None:
    """genpipe's FID of two random (n, d) feature sets, with the cached root and without it
    (a Cholesky factor where n > d), agrees with pytorch-fid's to 1e-6 relative and the two
    agree to 1e-9; where n < d, it is also no further than pytorch-fid's from the exact
    value."""
    rng = np.random.default_rng(seed)
    x, y = features(rng, n, d), features(rng, n, d, shift=0.05, spread=1.2)
    mu1, sigma1 = x.mean(axis=0), np.cov(x, rowvar=False)
    mu2, sigma2 = y.mean(axis=0), np.cov(y, rowvar=False)
    expected = pytorch_fid_reference(mu1, sigma1, mu2, sigma2)
    root = fid.sqrt_psd(sigma1)
    distance = fid.frechet_distance(mu1, sigma1, mu2, sigma2, sqrt_sigma1=root)
    assert distance == pytest.approx(expected, rel=1e-6)
    uncached = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    assert uncached == pytest.approx(expected, rel=1e-6)
    assert uncached == pytest.approx(distance, rel=1e-9)
    if n < d:
        # both take square roots of round-off in the null space and come out ~1e-6 low;
        # the eigenvalue form by less
        exact = exact_fid(x, y)
        assert abs(distance - exact) <= abs(expected - exact)


@pytest.mark.parametrize(("d", "n"), [(64, 1000), (512, 2000), (512, 200)])
def test_fid_matches_the_sqrtm_formula(d, n):
    check_against_sqrtm(d, n, seed=5)


@pytest.mark.slow  # scipy's sqrtm of a 2048 x 2048 product takes 15-45 s on two cores
@pytest.mark.parametrize("n", [4096, 500], ids=["full-rank", "rank-deficient"])
def test_fid_matches_the_sqrtm_formula_on_2048d_statistics(n):
    check_against_sqrtm(2048, n, seed=6)


@pytest.mark.parametrize("singular", ["neither", "sigma1", "both"])
def test_fid_without_a_cached_root_factors_a_positive_definite_side(singular, monkeypatch):
    # sigma1 of 30 samples in 64-d is singular: Cholesky fails on it and factors sigma2;
    # when both are singular, sqrt_psd(sigma1) is the fallback, with no jitter
    rng = np.random.default_rng(18)
    n1, n2 = {"neither": (400, 400), "sigma1": (30, 400), "both": (30, 40)}[singular]
    x, y = features(rng, n1, 64), features(rng, n2, 64, shift=0.1, spread=1.3)
    mu1, sigma1 = x.mean(axis=0), np.cov(x, rowvar=False)
    mu2, sigma2 = y.mean(axis=0), np.cov(y, rowvar=False)
    cached = fid.frechet_distance(mu1, sigma1, mu2, sigma2, sqrt_sigma1=fid.sqrt_psd(sigma1))
    original, roots = fid.sqrt_psd, []

    def counted_sqrt_psd(sigma):
        roots.append(sigma.shape)
        return original(sigma)

    monkeypatch.setattr(fid, "sqrt_psd", counted_sqrt_psd)
    uncached = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    assert len(roots) == (singular == "both")
    exact = exact_fid(x, y)
    if singular == "neither":
        assert uncached == pytest.approx(cached, rel=1e-12)
    else:  # both come out ~5e-8 relative low: square roots of round-off in a null space
        assert uncached == pytest.approx(exact, rel=1e-6)
        assert cached == pytest.approx(exact, rel=1e-6)


# --- the Fréchet distance: never NaN, errors --------------------------------------------------


def nearly_singular(d: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(7).standard_normal((d, d)))
    return (q * np.logspace(0, -30, d)) @ q.T


@pytest.mark.parametrize(
    "case", ["rank-deficient, identical", "rank-deficient", "nearly singular", "zero"]
)
def test_fid_is_a_finite_float_at_least_zero(case):
    rng = np.random.default_rng(8)
    d = 128
    mu1, sigma1 = random_statistics(rng, d, 20)  # rank 19
    mu2, sigma2 = {
        "rank-deficient, identical": (mu1, sigma1),
        "rank-deficient": random_statistics(rng, d, 30),
        "nearly singular": (mu1 + 0.01, nearly_singular(d)),
        "zero": (mu1, np.zeros((d, d))),
    }[case]
    distance = fid.frechet_distance(mu1, sigma1, mu2, sigma2)
    assert type(distance) is float and math.isfinite(distance) and distance >= 0.0
    if case == "zero":  # sqrt(sigma1 0) = 0
        assert distance == pytest.approx(np.trace(sigma1), rel=1e-12)


@pytest.mark.parametrize(
    ("change", "shapes"),
    [
        ({"mu1": np.zeros(8)}, ["(8,)", "(16, 16)"]),
        ({"sigma2": np.eye(8)}, ["(16,)", "(8, 8)"]),
        ({"mu2": np.zeros(8), "sigma2": np.eye(8)}, ["(16, 16)", "(8, 8)"]),
        ({"sigma1": np.zeros((16, 15))}, ["(16, 15)"]),
        ({"sqrt_sigma1": np.eye(8)}, ["(16, 16)", "(8, 8)"]),
    ],
)
def test_fid_of_mismatched_shapes_is_an_error_naming_them(change, shapes):
    arguments = {"mu1": np.zeros(16), "sigma1": np.eye(16), "mu2": np.ones(16)}
    arguments |= {"sigma2": np.eye(16), **change}
    with pytest.raises(MetricsError) as error:
        fid.frechet_distance(**arguments)
    for shape in shapes:
        assert shape in str(error.value)


def test_fid_of_non_finite_statistics_is_an_error():
    sigma = np.eye(4)
    sigma[1, 1] = np.nan
    with pytest.raises(MetricsError, match="sigma2"):
        fid.frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), sigma)


# --- streaming statistics -----------------------------------------------------------------------


def test_feature_stats_do_not_depend_on_the_batch_size():
    rng = np.random.default_rng(9)
    x = features(rng, 300, 16) * 50.0 + 1e3  # a large mean: sums of x x^T would cancel
    expected_mu, expected_sigma = x.mean(axis=0), np.cov(x, rowvar=False)
    for batch_size in (1, 7, 64, len(x)):
        mu, sigma = statistics(x, batch_size)
        np.testing.assert_allclose(mu, expected_mu, rtol=1e-10, atol=0)
        scale = np.abs(expected_sigma).max()
        np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-10, atol=1e-10 * scale)


def test_feature_stats_take_torch_tensors_of_any_float_dtype():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    stats = fid.FeatureStats()
    stats.add(x[:20])
    stats.add(x[20:])
    exact = x.double().numpy()
    assert stats.n == 50 and stats.dim == 8
    np.testing.assert_allclose(stats.mu, exact.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(stats.sigma, np.cov(exact, rowvar=False), rtol=1e-12, atol=1e-14)


def test_feature_stats_errors():
    stats = fid.FeatureStats("fake features")
    stats.add(np.zeros((1, 8)))
    with pytest.raises(MetricsError, match="at least 2 samples.*got 1"):
        stats.statistics()
    with pytest.raises(MetricsError, match=r"8-d features.*\(3, 4\)"):
        stats.add(np.zeros((3, 4)))
    with pytest.raises(MetricsError, match=r"\(N, D\)"):
        stats.add(np.zeros(8))
    with pytest.raises(MetricsError, match="finite"):
        stats.add(np.full((2, 8), np.nan))


def test_few_samples_warn_that_the_covariance_is_rank_deficient(caplog):
    x = features(np.random.default_rng(10), 40, 32)
    with caplog.at_level(logging.WARNING, logger="genpipe.metrics.fid"):
        statistics(x[:20], what="fake features")
    assert [r.name for r in caplog.records] == ["genpipe.metrics.fid"]
    assert "fake features: 20 samples for 32-d" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="genpipe.metrics.fid"):
        statistics(x)
    assert caplog.records == []


# --- KID ----------------------------------------------------------------------------------------


def brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 of the KID paper, pair by pair."""
    m, d = x.shape

    def k(a, b):
        return (a @ b / d + 1.0) ** 3

    same = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return same / (m * (m - 1)) - 2.0 * cross / (m * m)


def test_kid_of_whole_sets_is_the_unbiased_mmd2():
    # subsets of all rows are permutations, which leave the estimate as it is
    rng = np.random.default_rng(11)
    x, y = features(rng, 30, 8), features(rng, 30, 8, shift=0.3)
    mean, std = kid.kernel_inception_distance(x, y, subsets=3, subset_size=30, seed=0)
    assert mean == pytest.approx(brute_force_mmd2(x, y), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_the_mean_and_population_std_over_seeded_subsets():
    rng = np.random.default_rng(17)
    x, y = features(rng, 40, 8), features(rng, 30, 8, shift=0.3)
    draw = np.random.default_rng(3)  # as the function draws: real rows, then fake rows
    mmd2 = []
    for _ in range(4):
        rows_x, rows_y = draw.choice(40, 12, replace=False), draw.choice(30, 12, replace=False)
        mmd2.append(brute_force_mmd2(x[rows_x], y[rows_y]))
    mean, std = kid.kernel_inception_distance(x, y, subsets=4, subset_size=12, seed=3)
    assert mean == pytest.approx(np.mean(mmd2), rel=1e-9)
    assert std == pytest.approx(np.std(mmd2), rel=1e-9)  # ddof=0, as torch-fidelity
    assert std > 0.0


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shifted_one():
    rng = np.random.default_rng(12)
    real, same, shifted = (features(rng, 600, 32, shift=s) for s in (0.0, 0.0, 1.0))
    same_mean, same_std = kid.kernel_inception_distance(real, same, 10, 200, seed=0)
    shifted_mean, shifted_std = kid.kernel_inception_distance(real, shifted, 10, 200, seed=0)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shifted_mean > 10 * abs(same_mean) and shifted_mean > 5 * shifted_std


def test_kid_is_deterministic_for_a_seed():
    rng = np.random.default_rng(13)
    real, fake = features(rng, 300, 16), features(rng, 300, 16, shift=0.1)
    first = kid.kernel_inception_distance(real, fake, 5, 100, seed=7)
    assert kid.kernel_inception_distance(real, fake, 5, 100, seed=7) == first
    assert kid.kernel_inception_distance(real, fake, 5, 100, seed=8) != first


def test_kid_errors():
    real, fake = np.zeros((100, 8)), np.zeros((50, 8))
    with pytest.raises(MetricsError, match=r"evaluate\.kid_subset_size.*100.*50.*got 60"):
        kid.kernel_inception_distance(real, fake, 2, 60, seed=0)
    with pytest.raises(MetricsError, match=r"\(100, 8\).*\(50, 4\)"):
        kid.kernel_inception_distance(real, np.zeros((50, 4)), 2, 10, seed=0)


# --- precision and recall -----------------------------------------------------------------------


def brute_force_precision_recall(real, fake, k):
    distances = np.linalg.norm(fake[:, None, :] - real[None, :, :], axis=2)  # (M, N)
    radius_real = np.sort(np.linalg.norm(real[:, None] - real[None], axis=2), axis=1)[:, k]
    radius_fake = np.sort(np.linalg.norm(fake[:, None] - fake[None], axis=2), axis=1)[:, k]
    precision = (distances <= radius_real[None, :]).any(axis=1).mean()
    recall = (distances <= radius_fake[:, None]).any(axis=0).mean()
    return precision, recall


def test_precision_recall_of_identical_sets_are_one():
    x = features(np.random.default_rng(14), 300, 16)
    assert neighbours.precision_recall(x, x.copy(), k=3, batch_size=64) == (1.0, 1.0)


def test_precision_recall_match_brute_force_in_any_batch_size():
    rng = np.random.default_rng(15)
    real, fake = features(rng, 120, 8), features(rng, 90, 8, shift=0.2, spread=1.5)
    expected = brute_force_precision_recall(real, fake, k=3)
    assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0
    for batch_size in (1, 7, 1024):
        found = neighbours.precision_recall(real, fake, k=3, batch_size=batch_size)
        assert found == pytest.approx(expected, abs=1e-12)


def test_precision_recall_see_a_distant_fake_set_and_a_dropped_mode():
    rng = np.random.default_rng(16)
    modes = np.where(rng.random(400) < 0.5, 0.0, 20.0)[:, None]  # two far-apart clusters
    real = rng.standard_normal((400, 2)) + modes
    far = rng.standard_normal((400, 2)) + 100.0
    assert neighbours.precision_recall(real, far) == (0.0, 0.0)
    one_mode = rng.standard_normal((400, 2))  # only the cluster at 0
    precision, recall = neighbours.precision_recall(real, one_mode)
    assert precision > 0.9
    assert 0.3 < recall < 0.6


def test_precision_recall_errors():
    with pytest.raises(MetricsError, match=r"evaluate\.pr_k.*expected 1 to 2.*got 3"):
        neighbours.precision_recall(np.zeros((10, 4)), np.zeros((3, 4)), k=3)
    with pytest.raises(MetricsError, match="same dimension"):
        neighbours.precision_recall(np.zeros((10, 4)), np.zeros((10, 5)))


# --- density and coverage (Naeem et al. 2020) ---------------------------------------------------


def brute_force_density_coverage(real, fake, k):
    distances = np.linalg.norm(fake[:, None, :] - real[None, :, :], axis=2)  # (M, N)
    radius_real = np.sort(np.linalg.norm(real[:, None] - real[None], axis=2), axis=1)[:, k]
    inside = distances <= radius_real[None, :]
    return inside.sum() / (k * len(fake)), inside.any(axis=0).mean()


def test_density_and_coverage_match_brute_force_in_any_batch_size():
    rng = np.random.default_rng(17)
    real, fake = features(rng, 120, 8), features(rng, 90, 8, shift=0.2, spread=1.5)
    density, coverage = brute_force_density_coverage(real, fake, k=3)
    assert density > 0.0 and 0.0 < coverage < 1.0
    for batch_size in (1, 7, 1024):
        found = neighbours.manifold(real, fake, k=3, batch_size=batch_size)
        assert found["density"] == pytest.approx(density, abs=1e-12)
        assert found["coverage"] == pytest.approx(coverage, abs=1e-12)
        assert (found["precision"], found["recall"]) == pytest.approx(
            brute_force_precision_recall(real, fake, k=3), abs=1e-12)  # fmt: skip


def test_density_and_coverage_of_the_same_distribution_read_their_expected_values():
    """Naeem et al.'s expectations for fakes drawn as the reals are: density 1, and coverage
    1 - (N-1)...(N-k) / ((M+N-1)...(M+N-k)), 1 - 1/2^k for M = N large (0.875 at k = 3)."""
    k, n = 3, 2000
    densities, coverages = [], []
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        found = neighbours.manifold(rng.standard_normal((n, 4)), rng.standard_normal((n, 4)), k)
        densities.append(found["density"])
        coverages.append(found["coverage"])
        # density's standard error against its spread over the draws, below
        assert 0.0 < found["density_std"] < 0.05
    expected_coverage = 1 - np.prod([(n - i) / (2 * n - i) for i in range(1, k + 1)])
    assert np.mean(densities) == pytest.approx(1.0, abs=0.05)
    assert np.mean(coverages) == pytest.approx(expected_coverage, abs=0.02)


def test_density_sees_samples_off_the_data_and_coverage_a_dropped_mode():
    rng = np.random.default_rng(18)
    modes = np.where(rng.random(400) < 0.5, 0.0, 20.0)[:, None]  # two far-apart clusters
    real = rng.standard_normal((400, 2)) + modes
    one_mode = rng.standard_normal((400, 2))  # only the cluster at 0
    found = neighbours.manifold(real, one_mode, k=3)
    assert 0.35 < found["coverage"] < 0.55  # about half the real balls hold a fake
    assert found["density"] == pytest.approx(1.0, abs=0.15)  # each fake sits as the reals do
    half_off = np.concatenate([real[:200] + 0.01, rng.standard_normal((200, 2)) + 100.0])
    found = neighbours.manifold(real, half_off, k=3)
    assert found["density"] == pytest.approx(0.5, abs=0.1)  # half the fakes in no real ball
    assert found["precision"] == pytest.approx(0.5, abs=0.02)
    collapsed = rng.standard_normal((400, 2)) * 0.01  # about one point
    found = neighbours.manifold(real, collapsed, k=3)
    assert found["coverage"] < 0.05 and found["precision"] == 1.0


def test_nearest_gives_each_point_its_nearest_in_the_other_set():
    rng = np.random.default_rng(19)
    x, y = rng.standard_normal((50, 5)), rng.standard_normal((80, 5))
    all_distances = np.linalg.norm(x[:, None] - y[None], axis=2)
    for batch_size in (1, 9, 1024):
        distance, index = neighbours.nearest(x, y, batch_size)
        np.testing.assert_array_equal(index, all_distances.argmin(axis=1))
        np.testing.assert_allclose(distance, all_distances.min(axis=1), rtol=1e-10)
    with pytest.raises(MetricsError, match=r"\(50, 5\) and \(0, 5\)"):
        neighbours.nearest(x, y[:0])
