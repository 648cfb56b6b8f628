"""Seconds for one Fréchet distance on 2048-d statistics: genpipe's eigenvalue form, with
and without a cached root, against the scipy.linalg.sqrtm formula as pytorch-fid computes
it; with --scaling, the time and memory of FID, KID and precision/recall at 1k-10k samples;
then the feature-extraction images/s of both backbones (domain and Inception) on this
machine's CPU or GPU.

genpipe   fid.frechet_distance with the real side's statistics as the reference stage
          caches them: mu, sigma and fid.sqrt_psd(sigma), computed once before timing. The
          real side is argument 1, so its cached root goes in as sqrt_sigma1; what is timed
          is S sigma_fake S (two matrix products) and one eigvalsh.
uncached  fid.frechet_distance with no cached root, as when two runs' statistics are
          compared directly: a Cholesky factor L of sigma_real, L^T sigma_fake L (two matrix
          products) and one eigvalsh.
baseline  pytorch-fid's calculate_frechet_distance (fid_score.py), step for step:
          sqrtm(sigma1 @ sigma2), the eps-offset retry when that is not finite, the real part.

Both get the same statistics, from 10,000 samples a side of random features with a
realistic spectrum: a random projection of a 256-d latent with decaying scales plus noise,
through a ReLU (non-negative, like Inception's pooled activations); the fake side's
projection and offset differ a little. Each is timed --rounds times, the three taking turns;
the median is reported, with the relative difference of each value from the baseline's.
On a busy machine the times move by several per cent from run to run; BLAS's threads matter
most: one by default, as the targets are stated.

--scaling times FID (the fake side's statistics and the distance to the cached real ones),
KID (100 subsets of min(1000, N/2), as metrics.compare.compare()) and precision/recall (k=3;
quadratic in N, so also seconds per N^2) of N fake against N real features, N = 1,000,
5,000 and 10,000, at 128 dimensions (the domain network's) and at 2048 for FID; with the
peak of the numpy memory each call allocates (tracemalloc).

Run (from the repository root):
    .venv/bin/python benchmarks/fid.py
    .venv/bin/python benchmarks/fid.py --rounds 5 --skip-extraction
    .venv/bin/python benchmarks/fid.py --skip-frechet --scaling --rounds 1 --skip-extraction
    .venv/bin/python benchmarks/fid.py --skip-frechet --device cuda --inception-images 2048 \
        --inception-batch 256
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from scipy.linalg import sqrtm

from genpipe.metrics import fid, kid, neighbours

TIME_TARGET = 10.0  # genpipe at least this many times faster than the baseline
UNCACHED_TIME_TARGET = 6.0  # and without a cached root (two runs compared directly)
AGREEMENT_TARGET = 1e-6  # relative difference of the two values at most this
LATENT = 256  # dimensions behind the features
SCALING_SAMPLES = (1_000, 5_000, 10_000)  # N of --scaling
SCALING_MEMORY_TARGET_MIB = 1024
KID_SUBSETS, KID_SUBSET_SIZE, PR_K = 100, 1000, 3  # EvaluateParams' defaults


# --- the baseline --------------------------------------------------------------------------


def pytorch_fid_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """pytorch-fid's calculate_frechet_distance. scipy >= 1.18 dropped sqrtm's `disp=`:
    sqrtm(a) returns the root alone there, (root, error) before it with disp=False."""

    def root(a: np.ndarray) -> np.ndarray:
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


# --- data ----------------------------------------------------------------------------------


def random_features(
    n: int, dim: int, rng: np.random.Generator, projection: np.ndarray, offset: float
) -> np.ndarray:
    """(n, dim) float64: ReLU(z @ projection + noise + offset), z (n, LATENT) standard normal."""
    z = rng.standard_normal((n, projection.shape[0]))
    return np.maximum(z @ projection + 0.3 * rng.standard_normal((n, dim)) + offset, 0.0)


def two_distributions(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Real and fake features (n, dim): the fake projection is the real one plus 5% noise."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.sqrt(1.0 + np.arange(LATENT))  # (LATENT,): a decaying spectrum
    projection = rng.standard_normal((LATENT, dim)) * scales[:, None]  # (LATENT, dim)
    fake_projection = projection + 0.05 * rng.standard_normal((LATENT, dim)) * scales[:, None]
    real = random_features(n, dim, rng, projection, offset=0.5)
    fake = random_features(n, dim, rng, fake_projection, offset=0.52)
    return real, fake


# --- measuring -----------------------------------------------------------------------------


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    """(seconds, value) of one call."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def interleaved(
    calls: dict[str, Callable[[], float]], rounds: int
) -> dict[str, tuple[list[float], float]]:
    """`rounds` timings of each call, taking turns (ABBA order) so that a slow spell of a busy
    machine falls on all alike; and each call's value (the same every round)."""
    names = list(calls)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    values: dict[str, float] = {}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            spent, values[name] = timed(calls[name])
            seconds[name].append(spent)
        progress(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{name} {seconds[name][-1]:.2f} s" for name in names)
        )
    return {name: (seconds[name], values[name]) for name in names}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def blas_threads(threads: int | None) -> Iterator[str]:
    """Limits numpy's BLAS to `threads` (None: leave it); yields what the BLAS libraries use."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits  # scikit-learn's
    except ImportError:
        if threads is not None:
            raise SystemExit("--threads needs threadpoolctl (pip install threadpoolctl)") from None
        yield "unknown (no threadpoolctl)"
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        pools = [p for p in threadpool_info() if p["user_api"] == "blas"]
        # numpy and scipy each bring their own OpenBLAS: name each by its wheel's folder
        yield (
            ", ".join(
                f"{Path(p['filepath']).parent.name} {p['internal_api']} {p['num_threads']}"
                for p in pools
            )
            or "none"
        )


def describe_cpu(blas: str) -> str:
    # other processes on the few cores of a CPU box slow the BLAS threads down by a lot
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; BLAS threads: "
        f"{blas}; torch threads {torch.get_num_threads()}; load average {load:.1f}"
    )


# --- section 1: the Fréchet distance -----------------------------------------------------------


def feature_statistics(features: np.ndarray, what: str = "features") -> tuple[np.ndarray, ...]:
    """(mu (D,), sigma (D, D)) of (N, D) features, as the reference stage computes them."""
    stats = fid.FeatureStats(what)
    stats.add(features)
    return stats.statistics()


def frechet_section(args: argparse.Namespace) -> None:
    progress(f"statistics of {args.samples:,} x {args.dim} features a side")
    real, fake = two_distributions(args.samples, args.dim, args.seed)
    # the reference stage's cache: computed once, not timed
    mu_real, sigma_real = feature_statistics(real, what="real features")
    sqrt_real = fid.sqrt_psd(sigma_real)
    mu_fake, sigma_fake = feature_statistics(fake, what="fake features")
    del real, fake

    calls = {
        # the real side is argument 1: its cached root is sqrt_sigma1
        "genpipe": lambda: fid.frechet_distance(
            mu_real, sigma_real, mu_fake, sigma_fake, sqrt_sigma1=sqrt_real
        ),
        # two runs compared directly: no cached root, a Cholesky factor instead
        "uncached": lambda: fid.frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake),
        "baseline": lambda: pytorch_fid_distance(mu_fake, sigma_fake, mu_real, sigma_real),
    }
    progress("warming up genpipe")
    calls["genpipe"]()
    progress("timing the Fréchet distance")
    results = interleaved(calls, args.rounds)
    seconds = {name: statistics.median(s) for name, (s, _) in results.items()}
    value = {name: v for name, (_, v) in results.items()}

    print()
    print(f"Fréchet distance, {args.dim}-d statistics from {args.samples:,} samples a side")
    rows = {
        "genpipe": ("genpipe  (eigvalsh, real side's root cached)", TIME_TARGET),
        "uncached": ("genpipe  (no cached root: Cholesky, eigvalsh)", UNCACHED_TIME_TARGET),
    }
    print(f"{'baseline (scipy sqrtm, as pytorch-fid)':46s} {seconds['baseline']:8.3f} s")
    for name, (label, target) in rows.items():
        ratio = seconds["baseline"] / seconds[name]
        relative = abs(value[name] - value["baseline"]) / abs(value["baseline"])
        print(
            f"{label:46s} {seconds[name]:8.3f} s: {ratio:5.1f}x faster (target >= "
            f"{target:.0f}x); rel diff {relative:.2e} (target <= {AGREEMENT_TARGET:.0e})"
        )
    print(
        f"values: genpipe {value['genpipe']:.10f}, uncached {value['uncached']:.10f}, "
        f"baseline {value['baseline']:.10f}"
    )
    sys.stdout.flush()


# --- section 2: evaluation's cost against the sample count --------------------------------


def measured(fn: Callable[[], object]) -> tuple[float, float]:
    """(seconds, peak MiB) of one call; the peak is of the numpy arrays (and Python objects)
    allocated during the call beyond those held before it, as tracemalloc sees them."""
    tracemalloc.start()
    try:
        held = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - held
    finally:
        tracemalloc.stop()
    return seconds, peak / 2**20


def scaling_calls(real: np.ndarray, fake: np.ndarray) -> dict[str, Callable[[], object]]:
    """The metrics as metrics.compare.compare() calls them with the default evaluate params. The
    real side's statistics and root are the reference's cache: computed before, not timed."""
    mu, sigma = feature_statistics(real)
    root = fid.sqrt_psd(sigma)
    subset_size = max(2, min(KID_SUBSET_SIZE, len(real) // 2))  # as metrics.compare.kid_subset_size
    return {
        "fid": lambda: fid.frechet_distance(
            mu, sigma, *feature_statistics(fake), sqrt_sigma1=root
        ),
        "kid": lambda: kid.kernel_inception_distance(real, fake, KID_SUBSETS, subset_size, 0),
        "precision/recall": lambda: neighbours.precision_recall(real, fake, k=PR_K),
    }


def scaling_section(args: argparse.Namespace) -> None:
    """Seconds and peak memory of FID, KID and precision/recall of N fake against N real
    features, N in SCALING_SAMPLES: at the domain network's 128 dimensions, and at 2048
    (Inception's) for FID."""
    print()
    print(
        f"evaluation against the sample count: N real and N fake features, median of "
        f"{args.rounds} calls; peak: numpy memory the call allocates (tracemalloc); KID: "
        f"{KID_SUBSETS} subsets of min({KID_SUBSET_SIZE}, N/2); precision/recall k={PR_K}, "
        f"blocks of <= {neighbours.BLOCK_ELEMENTS:,} distances"
    )
    print(f"{'metric':17s} {'dim':>5s} {'N':>7s} {'seconds':>9s} {'peak MiB':>9s} {'s / N^2':>9s}")
    for dim, names in ((128, ("fid", "kid", "precision/recall")), (2048, ("fid",))):
        for n in SCALING_SAMPLES:
            progress(f"  {n:,} x {dim} features a side")
            real, fake = two_distributions(n, dim, args.seed)
            calls = scaling_calls(real, fake)
            for name in names:
                timings = [measured(calls[name]) for _ in range(args.rounds)]
                seconds = statistics.median(t for t, _ in timings)
                peak = max(m for _, m in timings)
                per_n2 = f"{seconds / n**2:9.2e}" if name == "precision/recall" else ""
                print(f"{name:17s} {dim:5d} {n:7,d} {seconds:9.3f} {peak:9.1f} {per_n2}")
            sys.stdout.flush()
    inputs = SCALING_SAMPLES[-1] * 128 * 8 / 2**20
    print(
        f"not counted above: the features, N x dim x 8 bytes a side ({inputs:.0f} MiB at "
        f"{SCALING_SAMPLES[-1]:,} x 128); target for KID and precision/recall at "
        f"{SCALING_SAMPLES[-1]:,}: peak < {SCALING_MEMORY_TARGET_MIB:,} MiB"
    )


# --- feature extraction ----------------------------------------------------------------------


def extraction_section(args: argparse.Namespace) -> None:
    """Images/s of features.extract_features for both backbones, on random uint8 images of
    the default data's shape. Inception's speed does not depend on its weights, so random
    ones stand in for the weights file that cannot be downloaded here."""
    from genpipe.metrics.domain import DomainNet
    from genpipe.metrics.features import extract_features
    from genpipe.metrics.inception import FIDInceptionV3

    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print()
    shape = f"{args.image_channels}x{args.image_size}px"
    print(f"feature extraction on {device.type} ({name}; torch threads {torch.get_num_threads()})"
          f", {shape} uint8 images")  # fmt: skip
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    backbones = {
        "domain": (DomainNet(args.image_size, args.image_channels, 10, 32, 128), 4096, 256),
        "inception": (FIDInceptionV3(), args.inception_images, args.inception_batch),
    }
    for label, (net, n, batch) in backbones.items():
        net = net.to(device).eval().requires_grad_(False)
        shape = (n, args.image_channels, args.image_size, args.image_size)
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        backbone = net.features if label == "domain" else net
        extract_features(backbone, images[:batch], batch, device)  # warm-up
        seconds = []
        for _ in range(args.rounds):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            extract_features(backbone, images, batch, device)
            seconds.append(time.perf_counter() - start)  # extract_features ends on the host
        rate = n / statistics.median(seconds)
        print(f"  {label:9s} {rate:10,.1f} images/s  ({n} images, batch {batch})")


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10_000, help="features a side")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimensions")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls each; the median")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads, 1 as the targets are stated; 0: the library's own",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=8, help="of the extraction images")
    parser.add_argument("--image-channels", type=int, default=1)
    parser.add_argument("--inception-images", type=int, default=32)
    parser.add_argument("--inception-batch", type=int, default=16)
    parser.add_argument("--skip-frechet", action="store_true", help="feature extraction only")
    parser.add_argument(
        "--scaling", action="store_true", help="also FID, KID, precision/recall at N = 1k-10k"
    )
    parser.add_argument("--skip-extraction", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.samples < 2 or args.dim < 1 or args.rounds < 1:
        raise SystemExit("--samples: expected >= 2, --dim >= 1, --rounds >= 1")
    with blas_threads(args.threads or None) as blas:
        print(f"cpu:    {describe_cpu(blas)}")
        print(f"timing: {args.rounds} rounds each, taking turns, median")
        if not args.skip_frechet:
            frechet_section(args)
        if args.scaling:
            scaling_section(args)
        if not args.skip_extraction:
            extraction_section(args)


if __name__ == "__main__":
    main()
