"""Images/s of genpipe's GAN training step against a DataLoader baseline, and the cost of
MLflow metric logging on the hot path.

genpipe   one iteration of train_gan's loop, with its own functions (build_gan, make_step):
          a batch drawn by index from the whole uint8 dataset on the device
          (training.DeviceImages), networks in channels_last, train.precision's autocast,
          train.compile, and on CUDA the step replayed as one CUDA graph
          (train.cuda_graphs); (1) update D, (2) update G, (3) ema_update, the losses kept
          on the device by training.LossMonitor.
baseline  a plain loop in the pytorch/examples dcgan style: a Dataset that converts ONE image
          per __getitem__ (ToTensor + Normalize), a DataLoader with the default collate,
          `.to(device)`, then the same D/G update (dcgan's: G's update goes through D on the
          fake D was just trained on) and the same EMA, on the same networks, seed and batch
          size, in PyTorch's defaults: contiguous memory, fp32, nothing compiled.

The ratio is what genpipe's batching and its memory format, precision and compile
settings are worth together; the data path alone is timed apart. Each loop is warmed
up, then timed over --iters iterations, three times, interleaved; the median images/s
(real images consumed per second) is reported. On a busy machine the numbers move by
several per cent from run to run.

--cpu-kernels compare times genpipe's step alone in two subprocesses, cpu_kernels avx2
(the default pin) and native, taking turns, and prints both and their ratio: what the pin
costs. --cpu-kernels avx2 or native times one of them in this process.

Run (from the repository root):
    .venv/bin/python benchmarks/train_throughput.py
    .venv/bin/python benchmarks/train_throughput.py --cpu-kernels compare
    .venv/bin/python benchmarks/train_throughput.py --device cuda --batch-size 256 --image-size 32
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from genpipe import runtime, training
from genpipe.data.canonical import read_prepared
from genpipe.errors import GenpipeError
from genpipe.gan.network import (
    Discriminator,
    Generator,
    discriminator_loss,
    ema_update,
    gan_config,
    generator_loss,
    gradient_penalty,
)
from genpipe.gan.train import build_gan, make_step
from genpipe.params.load import load_params
from genpipe.params.schema import GanParams, ImageSize, Params
from genpipe.tracking import training_run as tracking
from genpipe.tracking.lineage import run_params

ROUNDS = 3  # timed repeats of each measurement; the median is reported
RANDOM_IMAGES = 50_000  # stand-in dataset size without prepared data (CIFAR-10's train split)
TARGETS = "target >= 1.5x on CPU, >= 3x on GPU at batch 256, 32x32"
TRACKING_TARGET = 0.02  # of step time


# --- the two ways of feeding it ------------------------------------------------------------


class GenpipeLoop:
    """train_gan's loop without checkpoints and progress bar: its networks (build_gan), its
    step (make_step: eager, or replayed as a CUDA graph), the losses kept on the device and
    checked every log_every steps, metrics to `run` when one is set."""

    def __init__(self, params: Params, images: np.ndarray, device: torch.device):
        _, channels, size, _ = images.shape
        self.gan = build_gan(params, channels, size, device)
        self.B = params.train.batch_size
        self.log_every = params.train.log_every
        self.data = training.DeviceImages(images, device, params.train.compile)
        self.batches = runtime.make_generator(device, params.seed + 1)  # which images
        self.noise = runtime.make_generator(device, params.seed + 2)  # z
        self.step_fn = make_step(self.gan, self.data, self.batches, self.noise)
        self.monitor = training.LossMonitor(("loss_d", "loss_g"))
        self.run: tracking.TrainingRun | None = None
        self.step = 0
        self.tick, self.tick_step = time.perf_counter(), 0
        self.log_seconds = 0.0  # spent inside run.log_metrics
        self.log_calls = 0

    def __call__(self, iters: int) -> None:
        for _ in range(iters):
            self.step += 1
            loss_d, loss_g = self.step_fn(self.step)
            self.monitor.add(self.step, loss_d, loss_g)
            if self.step % self.log_every == 0:
                self._log()

    def _log(self) -> None:
        """As train_gan does every log_every steps (its CSV row is kept in memory only)."""
        losses = self.monitor.drain()  # one host sync per interval
        now = time.perf_counter()
        images_per_s = (self.step - self.tick_step) * self.B * self.gan.cfg.d_steps
        images_per_s /= now - self.tick
        self.tick, self.tick_step = now, self.step
        row = {
            "epoch": round(self.step * self.B / len(self.data), 4),
            **losses,
            "images_per_s": round(images_per_s, 1),
        }
        if self.run is not None:
            start = time.perf_counter()
            self.run.log_metrics(row, step=self.step)
            self.log_seconds += time.perf_counter() - start
            self.log_calls += 1


class NormalizedImages(Dataset):
    """One image per item, converted as torchvision's ToTensor + Normalize((0.5,), (0.5,))."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images  # (N, C, S, S) uint8
        self.labels = labels  # (N,)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[i]).float().div(255).sub(0.5).div(0.5)  # (C, S, S)
        return image, int(self.labels[i])


@dataclass
class PlainGan:
    """The same networks, as a plain PyTorch loop has them: default memory format, fp32,
    Adam with its defaults, nothing compiled."""

    cfg: GanParams
    netG: torch.nn.Module
    netD: torch.nn.Module
    ema: torch.nn.Module
    optG: torch.optim.Optimizer
    optD: torch.optim.Optimizer


def build_plain_gan(params: Params, channels: int, size: int, device: torch.device) -> PlainGan:
    cfg = params.gan
    torch.manual_seed(params.seed)
    networks = gan_config(size, channels, cfg)
    netG = Generator(**networks["generator"]).to(device).train()
    netD = Discriminator(**networks["discriminator"]).to(device).train()
    betas = (cfg.beta1, cfg.beta2)
    return PlainGan(
        cfg=cfg,
        netG=netG,
        netD=netD,
        ema=copy.deepcopy(netG).eval().requires_grad_(False),
        optG=torch.optim.Adam(netG.parameters(), lr=cfg.lr_g, betas=betas),
        optD=torch.optim.Adam(netD.parameters(), lr=cfg.lr_d, betas=betas),
    )


def plain_step(
    gan: PlainGan, real_batch: Callable[[], torch.Tensor], B: int, noise: torch.Generator
) -> None:
    """pytorch/examples dcgan's step with genpipe's losses and EMA, so both loops do the same
    work: D on a real and a fake batch, then G through D on that fake, then the EMA."""
    cfg = gan.cfg
    for _ in range(cfg.d_steps):
        real = real_batch()
        z = torch.randn(B, cfg.z_dim, device=real.device, generator=noise)
        fake = gan.netG(z)
        loss_d = discriminator_loss(cfg.loss, gan.netD(real), gan.netD(fake.detach()))
        if cfg.loss == "wgan-gp":
            alpha = torch.rand(B, generator=noise, device=real.device)
            loss_d = loss_d + cfg.gp_weight * gradient_penalty(gan.netD, real, fake.detach(), alpha)
        gan.netD.zero_grad()
        loss_d.backward()
        gan.optD.step()
    loss_g = generator_loss(cfg.loss, gan.netD(fake))
    gan.netG.zero_grad()
    loss_g.backward()
    gan.optG.step()
    ema_update(gan.ema, gan.netG, 1.0 - cfg.ema_decay)  # weight: 1 - decay


class BaselineLoop:
    """pytorch/examples dcgan: DataLoader batches moved to the device, then a plain step on
    the same networks."""

    def __init__(
        self,
        params: Params,
        images: np.ndarray,
        labels: np.ndarray,
        device: torch.device,
        workers: int,
    ):
        _, channels, size, _ = images.shape
        self.gan = build_plain_gan(params, channels, size, device)
        self.B = params.train.batch_size
        self.device = device
        self.noise = runtime.make_generator(device, params.seed + 2)
        # no persistent workers: as in dcgan, workers start again each epoch
        self.loader = DataLoader(
            NormalizedImages(images, labels),
            batch_size=self.B,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(params.seed + 1),
        )
        self.batches = self._epochs()

    def _epochs(self) -> Iterator[torch.Tensor]:
        while True:  # dcgan: for epoch in range(niter): for i, data in enumerate(dataloader)
            for images, _labels in self.loader:
                yield images.to(self.device, non_blocking=True)

    def __call__(self, iters: int) -> None:
        for _ in range(iters):
            plain_step(self.gan, lambda: next(self.batches), self.B, self.noise)


# --- measuring -----------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[int], None], iters: int, device: torch.device) -> float:
    """Seconds for fn(iters), the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    fn(iters)
    synchronize(device)
    return time.perf_counter() - start


def interleaved(
    loops: dict[str, Callable[[int], None]], iters: int, device: torch.device, chunk: int
) -> dict[str, list[float]]:
    """ROUNDS timings of `iters` iterations of each loop. Within a round the loops take turns
    every `chunk` iterations (ABBA order), so a slow spell of a busy machine falls on all of
    them alike rather than on whichever ran at the time."""
    chunks = [chunk] * (iters // chunk) + ([iters % chunk] if iters % chunk else [])
    names = list(loops)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(ROUNDS):
        spent = dict.fromkeys(names, 0.0)
        for c, n in enumerate(chunks):
            for name in names if (r + c) % 2 == 0 else names[::-1]:
                spent[name] += timed(loops[name], n, device)
        for name in names:
            seconds[name].append(spent[name])
        progress(
            f"  round {r + 1}/{ROUNDS}: " + ", ".join(f"{k} {v:.2f} s" for k, v in spent.items())
        )
    return seconds


def repeat(fn: Callable[[], object], n: int) -> None:
    for _ in range(n):
        fn()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- data ----------------------------------------------------------------------------------


def load_images(
    data_dir: Path, image_size: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """The prepared train split (N, C, S, S) uint8 and its labels (N,), or, when --image-size
    asks for a size it does not have, random images of that size; and where they came from."""
    try:
        prepared = read_prepared(data_dir)
    except GenpipeError:
        prepared = None
    if prepared is not None:
        train = (prepared.manifest["split"] == "train").to_numpy()
        images = np.asarray(prepared.images[train])
        if image_size is None or images.shape[-1] == image_size:
            labels = prepared.manifest["label"].to_numpy()[train]
            return images, labels, f"{data_dir} (train split)"
    if image_size is None:
        raise SystemExit(
            f"{data_dir}: expected prepared data (run `dvc repro fetch`); found none. "
            "Or pass --image-size to benchmark on random images"
        )
    channels = 3 if image_size == 32 else 1
    rng = np.random.default_rng(seed)
    shape = (RANDOM_IMAGES, channels, image_size, image_size)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = rng.integers(0, 10, RANDOM_IMAGES)
    return images, labels, f"random uint8 ({RANDOM_IMAGES:,} images; none prepared at this size)"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    # other processes on the few cores of a CPU box slow torch's threads down by a lot
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} cores, load average {load:.1f}"
    )


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: params.yaml train.batch_size"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        choices=get_args(ImageSize),
        default=None,
        help="default: the prepared data's; random images when none fits",
    )
    parser.add_argument(
        "--iters",
        type=int,
        default=None,
        help="timed iterations per repeat (default: 200 on CPU, 500 on CUDA)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader num_workers for the baseline"
    )
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: params.yaml train.cpu_threads; 0: torch's default)",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--no-tracking", action="store_true", help="skip the MLflow logging overhead measurement"
    )
    parser.add_argument(
        "--cpu-kernels",
        choices=("avx2", "native", "compare"),
        default=None,
        help="time genpipe's step alone under this cpu_kernels (compare: both, in subprocesses)",
    )
    return parser.parse_args(argv)


def compare_cpu_kernels(argv: list[str]) -> None:
    """genpipe's images/s under cpu_kernels avx2 and native, each in its own process (the pin
    is fixed at a process's start), ROUNDS of each, taking turns; the medians and ratio."""
    rates: dict[str, list[float]] = {"avx2": [], "native": []}
    for r in range(ROUNDS):
        for mode in rates if r % 2 == 0 else list(rates)[::-1]:
            cmd = [sys.executable, __file__, *argv, "--cpu-kernels", mode]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            line = next(x for x in out.splitlines() if x.startswith("genpipe images/s:"))
            rates[mode].append(float(line.split(":")[1]))
            progress(f"  round {r + 1}/{ROUNDS}: {mode} {rates[mode][-1]:,.0f} images/s")
    pinned, native = (statistics.median(rates[m]) for m in ("avx2", "native"))
    print(f"cpu_kernels avx2 (pinned): {pinned:,.0f} images/s")
    print(f"cpu_kernels native:        {native:,.0f} images/s")
    print(f"ratio pinned / native: {pinned / native:.2f}x")


def time_genpipe_alone(
    params: Params, images: np.ndarray, device: torch.device, iters: int, warmup: int
) -> None:
    """genpipe's loop alone, in this process's CPU kernels (see --cpu-kernels)."""
    genpipe = GenpipeLoop(params, images, device)
    genpipe(warmup)
    seconds = interleaved({"genpipe": genpipe}, iters, device, max(1, iters // 10))
    images_per_iter = params.train.batch_size * params.gan.d_steps
    rate = images_per_iter * iters / statistics.median(seconds["genpipe"])
    print(f"capability: {torch.backends.cpu.get_cpu_capability()}")
    print(f"genpipe images/s: {rate:.1f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cpu_kernels == "compare":
        compare_cpu_kernels(sys.argv[1:] if argv is None else argv)
        return
    params = load_params(args.params)
    if args.cpu_kernels:
        runtime.pin_cpu_kernels(args.cpu_kernels)  # may re-execute this script
    overrides = {"batch_size": args.batch_size, "cpu_threads": args.threads}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    params = params.model_copy(update={"train": params.train.model_copy(update=overrides)})
    if params.gan.conditional:  # the plain loop has no labels; the label adds one embedding
        progress("gan.conditional: timed unconditional (the plain loop takes no labels)")
        params = params.model_copy(
            update={"gan": params.gan.model_copy(update={"conditional": False})}
        )
    B = params.train.batch_size
    device = runtime.resolve_device(args.device)
    iters = args.iters or (500 if device.type == "cuda" else 200)
    warmup = 50 if device.type == "cuda" else 10
    images, labels, source = load_images(args.data, args.image_size, params.seed)
    if len(images) < B:
        raise SystemExit(f"--batch-size: expected at most {len(images)} (the images); got {B}")

    if args.cpu_kernels:
        time_genpipe_alone(params, images, device, iters, warmup)
        return
    # built first: train_gan's setup fixes the CPU threads (train.cpu_threads)
    genpipe = GenpipeLoop(params, images, device)
    baseline = BaselineLoop(params, images, labels, device, args.workers)
    print(f"device:     {device.type} ({describe_device(device)})")
    print(f"batch size: {B}")
    print(f"images:     {tuple(images.shape[1:])} from {source}")
    print(
        f"gan:        width {params.gan.width}, depth {params.gan.depth}, loss "
        f"{params.gan.loss}, precision {runtime.resolve_precision(params.train.precision, device)}"
        f", compile {params.train.compile}, CUDA graph {genpipe.gan.graphed}"
    )
    print(f"timing:     {warmup} warm-up + {ROUNDS} x {iters} iterations each, median")

    progress("warming up")
    genpipe(warmup)
    baseline(warmup)
    progress("timing the training step")
    chunk = max(1, iters // 10)
    seconds = interleaved({"genpipe": genpipe, "baseline": baseline}, iters, device, chunk)
    images_per_iter = B * params.gan.d_steps
    rate = {name: images_per_iter * iters / statistics.median(s) for name, s in seconds.items()}

    # the data path alone: what each step spends getting its batch
    progress("timing the data path alone")
    batch_seconds = interleaved(
        {
            "genpipe": lambda n: repeat(lambda: genpipe.data.batch(B, genpipe.batches), n),
            "baseline": lambda n: repeat(lambda: next(baseline.batches), n),
        },
        iters,
        device,
        chunk,
    )
    batch_rate = {name: B * iters / statistics.median(s) for name, s in batch_seconds.items()}

    print()
    print(f"genpipe  (on-device batches):  {rate['genpipe']:,.0f} images/s")
    print(f"baseline (DataLoader, {args.workers} workers): {rate['baseline']:,.0f} images/s")
    print(f"ratio: {rate['genpipe'] / rate['baseline']:.2f}x  ({TARGETS})")
    print(
        f"  data path alone: genpipe {batch_rate['genpipe']:,.0f} images/s, baseline "
        f"{batch_rate['baseline']:,.0f} images/s; per step "
        f"{1e3 * B / batch_rate['genpipe']:.2f} ms vs {1e3 * B / batch_rate['baseline']:.2f} ms"
        f" of {1e3 * images_per_iter / rate['genpipe']:.1f} ms"
    )
    sys.stdout.flush()
    if args.no_tracking:
        return

    step_seconds = statistics.median(seconds["genpipe"]) / iters
    cost = tracking_overhead(genpipe, params, device, iters, step_seconds)
    print(
        f"tracking overhead: {cost.share:.1%} of step time (target < {TRACKING_TARGET:.0%})"
        f"  [log_metrics every {params.train.log_every} steps: {cost.per_call * 1e6:.0f} us a"
        f" call; MLflow async writes: {cost.sender * 1e3:.0f} ms CPU in {cost.loop_seconds:.0f} s;"
        f" system metrics every {tracking.SYSTEM_METRICS_SECONDS:g} s: {cost.system:.2%}]"
    )
    print(
        f"  wall time with vs without a run: {cost.ab:+.1%} (median of {ROUNDS} pairs;"
        f" rounds without one vary by {cost.spread:.1%} here)"
    )


class StoreWrites:
    """Adds up the CPU time of the sqlite store's log_batch, in whichever thread calls it:
    for a TrainingRun's metrics, a worker of MLflow's async logging. Patched on the class
    while the `with` lasts, and before the run creates its store (MLflow's async queue
    keeps the store's bound log_batch)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> StoreWrites:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        self.original = original = SqlAlchemyStore.log_batch

        def log_batch(store: SqlAlchemyStore, *args, **kwargs) -> None:
            start = time.thread_time()
            try:
                original(store, *args, **kwargs)
            finally:
                self.seconds += time.thread_time() - start  # one write at a time

        SqlAlchemyStore.log_batch = log_batch
        return self

    def __exit__(self, *exc_info: object) -> None:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore.log_batch = self.original


@dataclass
class TrackingCost:
    share: float  # (log_metrics + store write CPU time) / time of the loops with a run,
    # plus `system`
    system: float  # CPU time of MLflow's system metrics thread / the time it sampled
    per_call: float  # seconds in one log_metrics call, on the training thread
    sender: float  # CPU seconds of MLflow's async writes during the loops with a run
    loop_seconds: float  # of the loops with a run
    ab: float  # median of (with / without - 1) over the rounds: the end-to-end check
    spread: float  # (max - min) / median of the rounds without a run: the noise floor


def tracking_overhead(
    genpipe: GenpipeLoop, params: Params, device: torch.device, iters: int, step_seconds: float
) -> TrackingCost:
    """What a TrainingRun logging every log_every steps adds to genpipe's loop.

    Measured two ways over ROUNDS pairs of loops with and without a run: directly (the time
    inside log_metrics, plus all the CPU time of MLflow's async writes as if it came out
    of the step, which it does on one core) and end to end (the wall time of the pairs),
    which on a busy machine is noisier than the effect. Each loop lasts longer than
    tracking.FLUSH_SECONDS, so the writes to the (temporary) sqlite store happen in the
    loops with a run, about as often as in training.
    """
    n = max(iters // 2, math.ceil(1.2 * tracking.FLUSH_SECONDS / step_seconds))
    n = math.ceil(n / genpipe.log_every) * genpipe.log_every  # whole logging intervals
    tmp = Path(tempfile.mkdtemp(prefix="genpipe-bench-"))
    saved_uri = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri = f"sqlite:///{tmp}/mlflow.db"
    try:
        progress(f"timing tracking overhead ({n} steps a loop; MLflow store in {tmp})")
        run = tracking.TrainingRun(
            "gan",
            run_params(params.model_dump(mode="json", by_alias=True), "gan"),
            "benchmark",
            params.train.experiment,
            record_path=tmp / "mlflow_run.json",
            uri=uri,
        )
        with StoreWrites() as writes, run:
            genpipe.run = run
            genpipe(genpipe.log_every)  # warm-up: the first calls are slower
            genpipe.run = None
            genpipe.log_seconds, genpipe.log_calls = 0.0, 0
            writes.seconds = 0.0

            def with_run(k: int) -> None:
                genpipe.run = run
                try:
                    genpipe(k)
                finally:
                    genpipe.run = None

            monitor = run.system_metrics._process if run.system_metrics else None
            clock = time.pthread_getcpuclockid(monitor.ident) if monitor else None
            monitor_start = time.clock_gettime(clock) if clock is not None else 0.0
            wall_start = time.perf_counter()
            seconds = interleaved({"without": genpipe, "with": with_run}, n, device, n)
            sender = writes.seconds  # what was written while the loops ran
            wall = time.perf_counter() - wall_start
            # MLflow's system metrics thread samples all along, with a run or without
            system = (time.clock_gettime(clock) - monitor_start) if clock is not None else 0.0
    finally:
        if saved_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri
        shutil.rmtree(tmp, ignore_errors=True)
    with_seconds = sum(seconds["with"])
    without = seconds["without"]
    return TrackingCost(
        share=(genpipe.log_seconds + sender) / with_seconds + system / wall,
        system=system / wall,
        per_call=genpipe.log_seconds / max(genpipe.log_calls, 1),
        sender=sender,
        loop_seconds=with_seconds,
        ab=statistics.median(w / wo - 1 for w, wo in zip(seconds["with"], without, strict=True)),
        spread=(max(without) - min(without)) / statistics.median(without),
    )


if __name__ == "__main__":
    main()
