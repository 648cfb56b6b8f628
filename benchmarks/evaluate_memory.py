"""Peak memory (RSS) and time of evaluate@autoencoder's work at Fashion-MNIST's size:
60,000 train and 10,000 test images of 1 x 28 x 28, a 16-d autoencoder (params.yaml's
default) and the domain backbone's 128-d features.

The measurement runs in a fresh subprocess, which reports its peak RSS (resource.getrusage's
ru_maxrss) after the imports (mlflow's too, as the stage's) and the setup (the images, the
untrained networks, a reference of random 10,000 x 128 statistics), and again after one
evaluate_autoencoder call; the difference is what the evaluation itself adds. The images are
the real Fashion-MNIST files when --idx-dir holds them (genpipe.data.formats.read_idx_pair),
random uint8 otherwise: memory does not depend on the pixels.

Run (from the repository root):
    .venv/bin/python benchmarks/evaluate_memory.py
    .venv/bin/python benchmarks/evaluate_memory.py --idx-dir none   # random images
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TARGET_GB = 1.0  # the stage's peak RSS at this size, at most
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load_images(idx_dir: Path | None) -> tuple:
    """(60000, 1, 28, 28) and (10000, 1, 28, 28) uint8: the files', or random."""
    import numpy as np

    if idx_dir is not None and all((idx_dir / f).is_file() for p in IDX_FILES.values() for f in p):
        from genpipe.data.formats import read_idx_pair

        train, _ = read_idx_pair(*(idx_dir / f for f in IDX_FILES["train"]))
        test, _ = read_idx_pair(*(idx_dir / f for f in IDX_FILES["test"]))
        return train, test, "Fashion-MNIST files"
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (60_000, 1, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (10_000, 1, 28, 28), dtype=np.uint8)
    return train, test, "random uint8"


def child(idx_dir: Path | None) -> None:
    """One evaluate_autoencoder call; prints a JSON line of peak RSS and seconds."""
    import numpy as np
    import torch

    from genpipe.autoencoder.evaluate import evaluate_autoencoder
    from genpipe.autoencoder.network import AutoEncoder
    from genpipe.metrics.compare import reference_from_features
    from genpipe.metrics.domain import DomainNet
    from genpipe.metrics.keys import FID, FLOOR
    from genpipe.params.schema import EvaluateParams

    with contextlib.suppress(ImportError):  # the stage logs to MLflow: its imports count
        import mlflow  # noqa: F401

    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, test, source = load_images(idx_dir)
    net = AutoEncoder(28, 1, latent_dim=16, width=32).eval()
    domain = DomainNet(28, 1, 10, 32, 128).eval()
    features = np.random.default_rng(1).standard_normal((len(test), 128))
    reference = reference_from_features(features, {FLOOR: {FID: 1.0}})
    setup_mb = peak_rss_mb()
    start = time.perf_counter()
    metrics, _ = evaluate_autoencoder(
        net, train, test, reference, domain.features, EvaluateParams(), torch.device("cpu")
    )
    seconds = time.perf_counter() - start
    result = {"setup_mb": setup_mb, "peak_mb": peak_rss_mb(), "seconds": seconds}
    print(json.dumps({**result, "source": source, "pca_mse": metrics["pca_mse"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idx-dir", default=str(FASHION_MNIST), help="'none': random images")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    idx_dir = None if args.idx_dir == "none" else Path(args.idx_dir)
    if args.child:
        child(idx_dir)
        return
    command = [sys.executable, __file__, "--child", "--idx-dir", args.idx_dir]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the measuring subprocess failed:\n{proc.stderr}")
    r = json.loads(proc.stdout.splitlines()[-1])
    load = os.getloadavg()[0]
    print(f"evaluate_autoencoder, 60,000 train / 10,000 test 1x28x28 ({r['source']}), CPU, "
          f"1 torch thread; load average {load:.1f}")  # fmt: skip
    print(f"  peak RSS after setup (imports, images, networks): {r['setup_mb']:8.0f} MB")
    print(f"  peak RSS after evaluate_autoencoder:              {r['peak_mb']:8.0f} MB "
          f"(target < {TARGET_GB * 1024:.0f} MB)")  # fmt: skip
    print(f"  added by the evaluation:                          "
          f"{r['peak_mb'] - r['setup_mb']:8.0f} MB")  # fmt: skip
    print(f"  time: {r['seconds']:.1f} s; PCA MSE {r['pca_mse']}")


if __name__ == "__main__":
    main()
