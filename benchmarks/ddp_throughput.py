"""Images/s of the GAN training step on several processes (DDP) against one, at the same
global batch.

CPU         2 ranks of 1 thread each (gloo: DDP's gradients, and BatchNorm's statistics
            over the global batch, one all-gather per layer and pass) vs 1 process of 1
            thread (target >= 1.6x: 80% scaling efficiency), and vs 1 process of 2 threads
            (the other way to use two cores). A diagnostic mode, 2 ranks whose BatchNorm
            sees each rank's half only (not what training does), shows what BatchNorm's
            exchanges cost.
CUDA        1 GPU: the DDP path (world size 1 under torchrun: NCCL, DDP's wrapper,
            GlobalBatchNorm2d) vs the plain path, each as it trains by default, the step
            replayed as a CUDA graph (NCCL's all-reduce captured in DDP's) (target: DDP
            costs < 5%); and both eagerly (train.cuda_graphs: false), for what the graph
            saves each.

Each measurement is its own process (or torchrun's workers), running train_gan's own pieces
(build_gan, make_step, distributed.joined) on a synthetic dataset of the digits' shape
(1,437 images, 1 x 8 x 8; --image-size 28 for Fashion-MNIST's, a step 7x longer) with the
default GAN params (width 64, depth 1, batch 128), CPU kernels pinned as the stage pins
them. On the CPU, one process on half the batch is timed too: twice its speed is what 2
ranks would reach if communication cost nothing (a small step does not halve with its
batch). Each is warmed up, then timed over --iters steps; the modes take turns for
--rounds rounds and the median is reported. --widths sweeps gan.width: the smaller the
network, the more of a step the collectives take (the crossover where 2 ranks stop
paying). Exits 1, printing "target missed", below the target.

Run (from the repository root):
    .venv/bin/python benchmarks/ddp_throughput.py
    .venv/bin/python benchmarks/ddp_throughput.py --widths 16,32,64 --iters 40
    .venv/bin/python benchmarks/ddp_throughput.py --image-size 28 --iters 20 --warmup 3
    .venv/bin/python benchmarks/ddp_throughput.py --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from genpipe import distributed, runtime, training
from genpipe.gan.train import build_gan, make_step
from genpipe.params.load import parse_params

CPU_TARGET = 1.6  # 2 ranks over 1 process of 1 thread
CUDA_TARGET = 0.95  # DDP path over the plain one: DDP costs < 5%
IMAGES = 1437  # the digits' train split
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def worker(args: argparse.Namespace) -> None:
    """One measurement: warm up, time --iters steps; rank 0 (or the one process) prints
    {"images_per_s": ...} as a JSON line. Under torchrun the ranks join their group."""
    raw = {"cpu_kernels": args.cpu_kernels,
           "train": {"device": args.device, "cpu_threads": args.threads,
                     "batch_size": args.batch_size, "dist_timeout_s": 600,
                     "cuda_graphs": not args.eager},
           "gan": {"width": args.width}}  # fmt: skip
    params = parse_params(raw)
    if args.local_batchnorm:  # the diagnostic mode: each rank's BatchNorm sees its half only
        distributed.sync_batchnorm = lambda module: module
    runtime.pin_cpu_kernels(params.cpu_kernels)  # may re-execute, as the stage does
    device = runtime.resolve_device(params.train.device)
    size = args.image_size
    images = np.random.default_rng(0).integers(0, 256, (IMAGES, 1, size, size), np.uint8)
    with distributed.joined(params.train, device) as (world, device):
        gan = build_gan(params, 1, size, device, world)
        data = training.DeviceImages(images, device)
        batches = runtime.make_generator(device, params.seed + 1)
        noise = runtime.make_generator(device, params.seed + 2)
        step = make_step(gan, data, batches, noise)
        for t in range(1, args.warmup + 1):
            step(t)
        sync(device, world)
        start = time.perf_counter()
        for t in range(args.warmup + 1, args.warmup + args.iters + 1):
            loss_d, _ = step(t)
        loss_d.item()
        sync(device, world)  # the slowest rank's time
        seconds = time.perf_counter() - start
        if world is None or world.main:
            images_per_s = args.iters * params.train.batch_size * params.gan.d_steps / seconds
            print(json.dumps({"images_per_s": images_per_s}), flush=True)


def sync(device: torch.device, world: distributed.World | None) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if world is not None:
        torch.distributed.barrier()


def measure(args: argparse.Namespace, procs: int, threads: int, batch: int, local_bn: bool,
            width: int, eager: bool = False) -> float:  # fmt: skip
    """images/s of one run: `procs` ranks under torchrun (0: one process, no torchrun)."""
    script = [str(Path(__file__).resolve()), "--worker", "--threads", str(threads),
              "--width", str(width), "--image-size", str(args.image_size), "--device",
              args.device, "--batch-size", str(batch), "--iters", str(args.iters), "--warmup",
              str(args.warmup), "--cpu-kernels", args.cpu_kernels,
              *(["--local-batchnorm"] if local_bn else []),
              *(["--eager"] if eager else [])]  # fmt: skip
    if procs:
        command = [*TORCHRUN, "--nproc-per-node", str(procs), *script]
    else:
        command = [sys.executable, *script]
    # torchrun sets OMP_NUM_THREADS=1 with a warning; train.cpu_threads sets it anyway
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: {' '.join(command[-16:])}: exited {done.returncode} ({tail})")
    return json.loads(lines[-1])["images_per_s"]


def compare(args: argparse.Namespace, modes: dict[str, tuple], width: int) -> dict:
    """Median images/s of each mode (name -> (procs, threads, batch, local_bn[, eager])),
    taking turns."""
    seen: dict[str, list[float]] = {name: [] for name in modes}
    if args.device == "cuda":  # a GPU that was idle runs its first seconds at low clocks:
        procs, threads, batch, local_bn, *eager = next(iter(modes.values()))
        measure(args, procs, threads, batch, local_bn, width, *eager)  # one run, not counted
    for _ in range(args.rounds):
        for name, (procs, threads, batch, local_bn, *eager) in modes.items():
            seen[name].append(measure(args, procs, threads, batch, local_bn, width, *eager))
    return {name: statistics.median(values) for name, values in seen.items()}


def load() -> str:
    """The machine's load, as a person reading the figures needs it."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)
    cuda = args.device == "cuda"
    B = args.batch_size
    if cuda:  # the plain path vs world size 1 under torchrun, graphed; then both eager
        modes = {"plain, CUDA graph (the default)": (0, 1, B, False, False),
                 "DDP, CUDA graph (the default)": (1, 1, B, False, False),
                 "plain, eager": (0, 1, B, False, True),
                 "DDP, eager": (1, 1, B, False, True)}  # fmt: skip
    else:  # half: one rank's share alone, whose speed bounds what 2 ranks could reach
        # diagnostic, not the product: BatchNorm over each rank's half alone (DDP with plain
        # BatchNorm), which changes the training; its gap to "2 ranks" is what the per-layer
        # exchanges of BatchNorm's statistics cost
        modes = {"1 process x 1 thread": (0, 1, B, False),
                 "1 process x 2 threads": (0, 2, B, False),
                 "half batch, 1 process x 1 thread": (0, 1, B // 2, False),
                 "2 ranks x 1 thread, BatchNorm per rank": (2, 1, B, True),
                 "2 ranks x 1 thread": (2, 1, B, False)}  # fmt: skip
    size = args.image_size
    print(f"GAN step, batch {args.batch_size} (global), {size}x{size}x1, {args.iters} steps x "
          f"{args.rounds} rounds, median; {load()}")  # fmt: skip
    missed = False
    for width in args.widths:
        result = compare(args, modes, width)
        names = list(modes)
        base = result[names[0]]
        parts = [f"{name} {value:,.0f} img/s ({value / base:.2f}x)" for name, value in
                 result.items()]  # fmt: skip
        ratio = result[names[1 if cuda else -1]] / base  # DDP's / the same path's without
        if not cuda:  # no communication at all: each rank as fast as the half batch alone
            parts.append(f"ceiling without communication {2 * result[names[2]] / base:.2f}x")
        target = CUDA_TARGET if cuda else CPU_TARGET
        verdict = "target met" if ratio >= target else "target missed"
        missed = missed or (ratio < target and width == args.widths[-1])
        print(f"gan.width {width}: " + "; ".join(parts) + f" -> {ratio:.2f}x against "
              f"{names[0]} (target >= {target}x): {verdict}")  # fmt: skip
    print(f"after: {load()}")
    if missed:  # at the default width, the last of the sweep
        sys.exit(1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=128)
    # 8: the digits (the default pipeline); 28: Fashion-MNIST and MNIST, a larger step
    parser.add_argument("--image-size", type=int, default=8, choices=[8, 16, 28, 32, 64])
    parser.add_argument(
        "--widths",
        type=lambda s: [int(w) for w in s.split(",")],
        default=[64],
        help="gan.width values, comma-separated; the last one decides the exit",
    )
    # a GPU step takes milliseconds: more of them, for a time that a launch does not swamp
    parser.add_argument("--iters", type=int, help="timed steps (CPU 30, CUDA 300)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (CPU 5, CUDA 20)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-kernels", default="avx2", choices=["avx2", "native"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--local-batchnorm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)  # no CUDA graph
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.iters = args.iters or (300 if cuda else 30)
    args.warmup = args.warmup if args.warmup is not None else (20 if cuda else 5)
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: expected a CUDA GPU; found none")
    return args


if __name__ == "__main__":
    main()
