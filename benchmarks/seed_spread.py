"""The training seed's spread against the evaluation's own noise, for one model: the model
trains under `--seeds` training seeds (train.seed 0, 1, ...: the reference, its domain
network and the evaluation's draw stay as they are) with the project's params.yaml plus any
--set overrides, each is scored as the evaluate stage scores (param_sweep.train_and_score),
and each prints a JSON line. Then, per figure: its mean ± std over the seeds (the training
noise, what a recipe comparison must see past) beside the mean of its `<figure>_std` (the
evaluation noise, the baseline: what the champion gate already allows for), and their ratio.

Run (from the repository root, in a project whose fetch and reference stages have run):
    .venv/bin/python benchmarks/seed_spread.py --project . --model gan --seeds 3
    .venv/bin/python benchmarks/seed_spread.py --project /tmp/preset --model gan --seeds 3 \\
        --set gan.steps=1500     # a reduced-steps variant: say so beside its figures
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from genpipe import runtime, yamlio
from genpipe.data.split import read_split
from genpipe.params.load import parse_params
from genpipe.reference import load_backbone, load_reference

sys.path.insert(0, str(Path(__file__).parent))
from param_sweep import train_and_score, with_overrides  # noqa: E402

FIGURES = {"gan": ("fid", "fid_over_floor", "kid_mean", "precision", "recall", "density",
                   "coverage", "memorised"),
           "autoencoder": ("mse", "mse_over_pca", "psnr", "ssim", "fid")}  # fmt: skip


def spread_table(rows: list[dict], figures: tuple[str, ...]) -> list[dict]:
    """Per figure: mean and std over the rows (seeds), the mean evaluation std, the ratio."""
    out = []
    for figure in figures:
        values = [row[figure] for row in rows if isinstance(row.get(figure), int | float)]
        if len(values) < 2:
            continue
        training = statistics.stdev(values)
        stds = [row[f"{figure}_std"] for row in rows if isinstance(row.get(f"{figure}_std"),
                                                                   int | float)]  # fmt: skip
        evaluation = statistics.fmean(stds) if stds else None
        out.append({
            "figure": figure,
            "mean": round(statistics.fmean(values), 6),
            "training_std": round(training, 6),
            "evaluation_std": None if evaluation is None else round(evaluation, 6),
            "training_over_evaluation": (round(training / evaluation, 2)
                                         if evaluation else None),  # fmt: skip
            "n": len(values),
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."),
                        help="holds params.yaml, data/prepared and data/reference")  # fmt: skip
    parser.add_argument("--model", choices=sorted(FIGURES), required=True)
    parser.add_argument("--seeds", type=int, default=3, help="train.seed 0 .. seeds - 1")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override, dotted from the root (repeatable)")  # fmt: skip
    args = parser.parse_args()
    if args.seeds < 2:
        raise SystemExit(f"--seeds: expected at least 2 (a spread); got {args.seeds}")
    over = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--set: expected KEY=VALUE; got {item!r}")
        over[key] = yamlio.load(value)
    raw = with_overrides(yamlio.load((args.project / "params.yaml").read_text()), over)
    base = parse_params(raw)
    runtime.pin_cpu_kernels(base.cpu_kernels)  # may re-execute, as the stages do
    device = runtime.resolve_device(base.train.device)
    reference_dir = args.project / "data" / "reference"
    reference = load_reference(reference_dir, base.evaluate)
    backbone = load_backbone(base.evaluate, reference, reference_dir, device)
    split = read_split(args.project / "data" / "prepared")
    rows = []
    for seed in range(args.seeds):
        params = parse_params(with_overrides(raw, {"train.seed": seed}))
        metrics, train_s = train_and_score(params, args.model, split, reference, backbone,
                                           device)  # fmt: skip
        row = {"train.seed": seed, "train_s": round(train_s, 1),
               **{key: value for key, value in metrics.items()
                  if key.removesuffix("_std") in FIGURES[args.model]}}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"# {args.model}, {args.seeds} training seeds, overrides {over or 'none'}; device "
          f"{device}")
    for line in spread_table(rows, FIGURES[args.model]):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
