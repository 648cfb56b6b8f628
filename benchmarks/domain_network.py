"""Test accuracy and training time of the domain network (metrics.domain.train_domain_network)
under evaluate.domain's defaults, on Fashion-MNIST's official split and on scikit-learn's
digits (the pipeline's default data, split by content hash as the data stage does).

Time is the whole of train_domain_network on one CPU thread with the AVX2 pin, as the
reference stage runs it: the training steps and the train split's features for
feature_scale. `cpu_s` is this process's CPU time, steadier than wall time on a busy machine.

Run (from the repository root):
    .venv/bin/python benchmarks/domain_network.py
    .venv/bin/python benchmarks/domain_network.py --data digits --steps 500 --lr 0.001
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from genpipe import runtime
from genpipe.data.canonical import content_split, image_sha1
from genpipe.data.formats import read_idx_pair
from genpipe.data.sources import load_digits
from genpipe.metrics.domain import accuracy, train_domain_network
from genpipe.params.schema import DataParams, DomainParams

CPU = torch.device("cpu")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist(directory: Path) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels) from the official files."""
    parts = []
    for prefix in ("train", "t10k"):
        images, labels = read_idx_pair(
            directory / f"{prefix}-images-idx3-ubyte.gz",
            directory / f"{prefix}-labels-idx1-ubyte.gz",
        )
        parts += [np.array(images), np.asarray(labels, dtype=np.int64)]
    return tuple(parts)


def digits() -> tuple[np.ndarray, ...]:
    raw = load_digits()
    split = content_split(image_sha1(raw.images), DataParams().test_fraction)
    train, test = split == "train", split == "test"
    return raw.images[train], raw.labels[train], raw.images[test], raw.labels[test]


def main() -> None:
    defaults = DomainParams()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["both", "fashion-mnist", "digits"], default="both")
    parser.add_argument("--fashion-mnist-dir", type=Path, default=FASHION_MNIST)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runtime.pin_cpu_kernels("avx2")  # may re-execute: before any work
    params = defaults.model_copy(update={"steps": args.steps, "width": args.width, "lr": args.lr})
    names = ["digits", "fashion-mnist"] if args.data == "both" else [args.data]
    for name in names:
        x_train, y_train, x_test, y_test = (
            digits() if name == "digits" else fashion_mnist(args.fashion_mnist_dir)
        )
        runtime.seed_everything(args.seed, CPU, cpu_threads=1)
        wall, cpu = time.perf_counter(), time.process_time()
        net = train_domain_network(
            x_train, y_train, 10, steps=params.steps, batch_size=params.batch_size, lr=params.lr,
            width=params.width, feature_dim=params.feature_dim, seed=args.seed, device=CPU,
        )  # fmt: skip
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        held_out = accuracy(net, x_test, y_test, batch_size=256)
        print(
            f"{name}: test accuracy {held_out:.4f} ({len(x_train)} train, {len(x_test)} test); "
            f"steps {params.steps}, width {params.width}, lr {params.lr}; "
            f"train_domain_network {wall:.1f} s wall, {cpu:.1f} s cpu",
            flush=True,
        )


if __name__ == "__main__":
    main()
