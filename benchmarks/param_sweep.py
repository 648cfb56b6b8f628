"""Other params for one model, scored on a project's own data and reference: each spec trains
the GAN or the autoencoder with the project's params.yaml plus its overrides (train_gan,
train_autoencoder: the train stage's own functions, in this process, with no checkpoint kept
and no MLflow), evaluates it as the evaluate stage does against the project's reference
(data/reference), and prints one JSON line; the project's params as they are (the baseline)
are scored first, and every spec's figure is also given over the baseline's. This is how the
Fashion-MNIST preset's lrs and loss were chosen: dozens of 12,000-step runs on a GPU in
minutes (several sweeps side by side under CUDA MPS), then the best confirmed on the CPU
in the whole preset (benchmarks/fashion_mnist.py).

A spec is NAME:MODEL:KEY=VALUE,KEY=VALUE (MODEL gan or autoencoder; keys dotted from the
params' root, as `dvc exp run -S` takes them; `seed=1` for another draw of the same run:
differences within a seed's spread are noise). Exits 1 if a spec fails.

Run (from the repository root, in a project whose fetch and reference stages have run):
    .venv/bin/python benchmarks/param_sweep.py --project . \\
        'hinge:gan:gan.loss=hinge' 'lr3:autoencoder:autoencoder.lr=0.003'
    .venv/bin/python benchmarks/param_sweep.py --project . --device cuda --precision fp32 \\
        'hinge:gan:gan.loss=hinge' 'hinge_s1:gan:gan.loss=hinge,seed=1'
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from genpipe import runtime, yamlio
from genpipe.autoencoder.evaluate import evaluate_autoencoder
from genpipe.autoencoder.train import train_autoencoder
from genpipe.data.split import Split, read_split
from genpipe.gan.evaluate import evaluate_gan
from genpipe.gan.train import train_gan
from genpipe.metrics.compare import Reference
from genpipe.metrics.features import Backbone
from genpipe.params.load import parse_params
from genpipe.params.schema import Params
from genpipe.reference import load_backbone, load_reference

MODELS = {"gan": ("fid_over_floor", "fid", "precision", "recall"),
          "autoencoder": ("mse_over_pca", "mse", "pca_mse", "ssim")}  # fmt: skip


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """'NAME:MODEL:k=v,k=v' -> (name, model, {dotted key: YAML value})."""
    try:
        name, model, sets = spec.split(":", 2)
    except ValueError:
        raise SystemExit(f"spec: expected NAME:MODEL:KEY=VALUE,...; got {spec!r}") from None
    if model not in MODELS:
        raise SystemExit(f"spec {name}: expected model gan or autoencoder; got {model!r}")
    over = {}
    for item in filter(None, sets.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"spec {name}: expected KEY=VALUE; got {item!r}")
        over[key] = yamlio.load(value)
    return name, model, over


def with_overrides(raw: dict, over: dict) -> dict:
    raw = copy.deepcopy(raw)
    for key, value in over.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


def train_and_score(params: Params, model: str, split: Split, reference: Reference,
                    backbone: Backbone, device: torch.device) -> tuple[dict, float]:  # fmt: skip
    """Train `model` with the train stage's function (no checkpoint kept, no MLflow), then
    score it with the evaluate stage's, its seed and threads: its metrics.json content and
    the training's seconds."""
    t0 = time.perf_counter()
    train, test = split.train, split.test
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, log = Path(tmp) / "checkpoint.pt", Path(tmp) / "train_log.csv"
        if model == "gan":
            net = train_gan(params, train, "sweep", device, ckpt, log,
                            labels=split.train_labels).ema  # fmt: skip
        else:
            net = train_autoencoder(params, train, "sweep", device, ckpt, log).net
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    runtime.seed_everything(params.seed, device, params.evaluate.cpu_threads)
    if model == "gan":
        metrics, _ = evaluate_gan(net.eval(), reference, backbone, params.evaluate,
                                  params.seed, device)  # fmt: skip
    else:
        metrics, _ = evaluate_autoencoder(net.eval(), train, test, reference, backbone,
                                          params.evaluate, device, params.seed)  # fmt: skip
    return metrics, train_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", metavar="NAME:MODEL:KEY=VALUE,...")
    parser.add_argument("--project", type=Path, default=Path("."),
                        help="holds params.yaml, data/prepared and data/reference")  # fmt: skip
    parser.add_argument("--device", default=None, help="train.device and evaluate.device")
    parser.add_argument("--precision", default=None, help="train.precision (fp32, bf16, ...)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the project's own params (no over_baseline)")  # fmt: skip
    args = parser.parse_args()
    specs = [parse_spec(s) for s in args.specs]
    raw0 = yamlio.load((args.project / "params.yaml").read_text())
    for section, key, value in (("train", "device", args.device),
                                ("evaluate", "device", args.device),
                                ("train", "precision", args.precision)):  # fmt: skip
        if value is not None:
            raw0.setdefault(section, {})[key] = value
    base = parse_params(raw0)
    runtime.pin_cpu_kernels(base.cpu_kernels)  # may re-execute, as the stages do
    device = runtime.resolve_device(base.train.device)
    reference_dir = args.project / "data" / "reference"
    reference = load_reference(reference_dir, base.evaluate)
    backbone = load_backbone(base.evaluate, reference, reference_dir, device)
    split = read_split(args.project / "data" / "prepared")
    baselines: dict[str, float] = {}
    failed = False
    models = [] if args.no_baseline else list(dict.fromkeys(model for _, model, _ in specs))
    for name, model, over in [(f"baseline-{m}", m, {}) for m in models] + specs:
        t0 = time.perf_counter()
        try:
            params = parse_params(with_overrides(raw0, over))
            metrics, train_s = train_and_score(params, model, split, reference, backbone,
                                               device)  # fmt: skip
            row = {key: metrics.get(key) for key in MODELS[model]}
            head = MODELS[model][0]
            if not args.no_baseline:
                baselines.setdefault(model, row[head])
                row["over_baseline"] = round(row[head] / baselines[model], 4)
        except Exception as exc:  # keep the sweep going: one line says what failed
            failed = True
            row, train_s = {"error": " ".join(str(exc).split())[:300]}, time.perf_counter() - t0
        row = {
            "name": name,
            "model": model,
            "over": over,
            **row,
            "train_s": round(train_s, 1),
            "total_s": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
