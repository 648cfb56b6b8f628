"""Seconds for one Fréchet distance on 2048-d statistics: genpipe's eigenvalue form against
the scipy.linalg.sqrtm formula as pytorch-fid computes it; then the feature-extraction
images/s of both backbones (domain and Inception) on this machine's CPU or GPU.

genpipe   fid.frechet_distance with the real side's statistics as the reference stage
          caches them: mu, sigma and fid.sqrt_psd(sigma), computed once before timing. The
          real side is argument 1, so its cached root goes in as sqrt_sigma1; what is timed
          is S sigma_fake S (two matrix products) and one eigvalsh.
baseline  pytorch-fid's calculate_frechet_distance (fid_score.py), step for step:
          sqrtm(sigma1 @ sigma2), the eps-offset retry when that is not finite, the real part.

Both get the same statistics, from 10,000 samples a side of random features with a
realistic spectrum: a random projection of a 256-d latent with decaying scales plus noise,
through a ReLU (non-negative, like Inception's pooled activations); the fake side's
projection and offset differ a little. Each is timed --rounds times, the two taking turns;
the median is reported, with the absolute and relative difference of the two values. On a
busy machine the times move by several per cent from run to run; BLAS's threads matter most.

Run (from the repository root):
    .venv/bin/python benchmarks/fid.py
    .venv/bin/python benchmarks/fid.py --threads 1 --rounds 5
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
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from scipy.linalg import sqrtm

from genpipe.metrics import fid

TIME_TARGET = 10.0  # genpipe at least this many times faster than the baseline
AGREEMENT_TARGET = 1e-6  # relative difference of the two values at most this
LATENT = 256  # dimensions behind the features


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


def frechet_section(args: argparse.Namespace) -> None:
    progress(f"statistics of {args.samples:,} x {args.dim} features a side")
    real, fake = two_distributions(args.samples, args.dim, args.seed)
    # the reference stage's cache: computed once, not timed
    mu_real, sigma_real = fid.feature_statistics(real, what="real features")
    sqrt_real = fid.sqrt_psd(sigma_real)
    mu_fake, sigma_fake = fid.feature_statistics(fake, what="fake features")
    del real, fake

    calls = {
        # the real side is argument 1: its cached root is sqrt_sigma1
        "genpipe": lambda: fid.frechet_distance(
            mu_real, sigma_real, mu_fake, sigma_fake, sqrt_sigma1=sqrt_real
        ),
        "baseline": lambda: pytorch_fid_distance(mu_fake, sigma_fake, mu_real, sigma_real),
    }
    progress("warming up genpipe")
    calls["genpipe"]()
    progress("timing the Fréchet distance")
    results = interleaved(calls, args.rounds)
    seconds = {name: statistics.median(s) for name, (s, _) in results.items()}
    value = {name: v for name, (_, v) in results.items()}
    progress("timing genpipe without the cached root, once")
    uncached, _ = timed(lambda: fid.frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake))

    difference = abs(value["genpipe"] - value["baseline"])
    relative = difference / abs(value["baseline"])
    print()
    print(f"Fréchet distance, {args.dim}-d statistics from {args.samples:,} samples a side")
    print(f"genpipe  (eigvalsh, real side's root cached): {seconds['genpipe']:8.3f} s")
    print(f"baseline (scipy sqrtm, as pytorch-fid):       {seconds['baseline']:8.3f} s")
    print(
        f"ratio: {seconds['baseline'] / seconds['genpipe']:.1f}x faster "
        f"(target >= {TIME_TARGET:.0f}x)"
    )
    print(
        f"values: genpipe {value['genpipe']:.10f}, baseline {value['baseline']:.10f}; "
        f"abs diff {difference:.2e}, rel diff {relative:.2e} (target <= {AGREEMENT_TARGET:.0e})"
    )
    print(f"  genpipe without the cached root (one more eigh): {uncached:.3f} s, once")
    sys.stdout.flush()


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
        "--threads", type=int, default=None, help="BLAS threads (default: the library's own)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=8, help="of the extraction images")
    parser.add_argument("--image-channels", type=int, default=1)
    parser.add_argument("--inception-images", type=int, default=32)
    parser.add_argument("--inception-batch", type=int, default=16)
    parser.add_argument("--skip-frechet", action="store_true", help="feature extraction only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.samples < 2 or args.dim < 1 or args.rounds < 1:
        raise SystemExit("--samples: expected >= 2, --dim >= 1, --rounds >= 1")
    with blas_threads(args.threads) as blas:
        print(f"cpu:    {describe_cpu(blas)}")
        print(f"timing: {args.rounds} rounds each, taking turns, median")
        if not args.skip_frechet:
            frechet_section(args)
        extraction_section(args)


if __name__ == "__main__":
    main()
