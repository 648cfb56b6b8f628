"""The Fashion-MNIST preset's GAN: domain-FID over the floor, precision and recall against
training steps and CPU time, from one run, against the target (<= 6x the floor, precision and
recall >= 0.80).

One training run of the preset's GAN (examples/fashion-mnist/params.yaml: width 64, batch 64,
constant lr, EMA 0.999), written out as train_gan runs it (build_gan, make_step); at each of
--at steps its EMA generator, with its BatchNorm statistics recomputed as train_gan ends
with them (on a copy), is scored as evaluate@gan scores it (evaluate.num_samples samples
against the test split's reference, built first as the reference stage builds it). With a
constant lr a run stopped at step t is this run at step t, so one run gives the whole
curve. Training time excludes the scoring. The preset itself stops at gan.steps (12,000
steps, about 17 minutes of its 30 on 2 cores). --set train.batch_size=128 gives the curve
of the old preset's batch.

Run (from the repository root; 24,000 steps take about 35 minutes on 2 cores):
    .venv/bin/python benchmarks/gan_fid_curve.py
    .venv/bin/python benchmarks/gan_fid_curve.py --at 20,40 --set evaluate.num_samples=1000 \
        --set evaluate.domain.steps=50 --set evaluate.domain.min_accuracy=0   # a quick check
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import torch

from genpipe import runtime, training, yamlio
from genpipe.data.sources import fetch_dataset
from genpipe.data.split import class_shares, split_of
from genpipe.gan.evaluate import evaluate_gan
from genpipe.gan.train import build_gan, make_step, standing_statistics
from genpipe.metrics.keys import FLOOR
from genpipe.params.load import parse_params
from genpipe.reference import build_reference

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "examples" / "fashion-mnist" / "params.yaml"
MAX_FID_OVER_FLOOR = 6.0
MIN_PRECISION_RECALL = 0.80


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--at", default="1000,2000,4000,8000,12000,18000,24000",
        help="steps at which the EMA generator is scored, comma-separated",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a params override, as dvc exp run -S takes it",
    )  # fmt: skip
    args = parser.parse_args()
    args.at = sorted({int(s) for s in args.at.split(",")})
    return args


def preset_params(overrides: list[str]):
    raw = yamlio.load(PRESET.read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = yamlio.load(value)
    return parse_params(raw)


def main() -> None:
    args = parse_args()
    params = preset_params(args.set)
    runtime.pin_cpu_kernels(params.cpu_kernels)  # may re-execute, as the stages do
    device = runtime.resolve_device(params.train.device)
    threads = params.train.cpu_threads
    prepared = fetch_dataset(params.data)
    start = time.perf_counter()
    split = split_of(prepared, Path("data/prepared"))  # in memory: the path only names it
    reference, net = build_reference(params, split, device)
    floor = reference.info[FLOOR]
    accuracy = reference.info.get("domain_accuracy")
    seconds = time.perf_counter() - start
    print(f"reference ({seconds:.0f} s): domain accuracy {accuracy}; floor (real train images "
          f"against the test split): FID {floor['fid']}, precision {floor['precision']}, "
          f"recall {floor['recall']}")  # fmt: skip
    train_images = split.train

    labels = weights = None
    if params.gan.conditional:  # the train split's labels, as train_gan takes them
        labels = split.train_labels
        weights = class_shares(labels, "gan.conditional")
    _, channels, size, _ = train_images.shape
    gan = build_gan(params, channels, size, device, class_weights=weights)  # seeds all
    data = training.DeviceImages(train_images, device, labels=labels)
    batches = runtime.make_generator(device, params.seed + 1)  # as train_gan draws them
    noise = runtime.make_generator(device, params.seed + 2)
    step = make_step(gan, data, batches, noise)
    gan.netG.train()
    gan.netD.train()
    print(f"GAN width {params.gan.width}, batch {params.train.batch_size}, {threads} CPU "
          f"threads; {params.evaluate.num_samples:,} samples scored; target: domain-FID <= "
          f"{MAX_FID_OVER_FLOOR}x the floor, precision and recall >= "
          f"{MIN_PRECISION_RECALL}")  # fmt: skip
    print(f"{'step':>6} {'train s':>8} {'FID':>8} {'x floor':>8} {'prec':>6} {'recall':>6}")
    trained, done = 0.0, 0
    for milestone in args.at:
        torch.set_num_threads(threads or torch.get_num_threads())
        begin = time.perf_counter()
        for t in range(done + 1, milestone + 1):
            step(t)
        done = milestone
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        trained += time.perf_counter() - begin
        # the EMA as train_gan would end at this step: with its own BatchNorm statistics
        # (on a copy: the run goes on with the EMA as it was)
        scored = dataclasses.replace(gan, ema=copy.deepcopy(gan.ema))
        standing_statistics(scored, params.seed)
        metrics, _ = evaluate_gan(scored.ema, reference, net.features, params.evaluate,
                                  params.seed, device)  # fmt: skip
        worst = min(metrics["precision"], metrics["recall"])
        met = metrics["fid_over_floor"] <= MAX_FID_OVER_FLOOR and worst >= MIN_PRECISION_RECALL
        print(f"{milestone:>6} {trained:>8.0f} {metrics['fid']:>8.4f} "
              f"{metrics['fid_over_floor']:>7.1f}x {metrics['precision']:>6.3f} "
              f"{metrics['recall']:>6.3f}{'  target met' if met else ''}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
