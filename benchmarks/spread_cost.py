"""What the evaluation noise estimates add to an evaluate stage (target: at most 1.5x).

Times each model's evaluation of a project's own DVC outputs (data/prepared,
data/reference, models/<model>/weights), as the evaluate stage runs it, with the default
`evaluate.bootstraps` against the baseline of the same evaluation without the FID
bootstrap (`evaluate.bootstraps: 0`: the figures alone, as before the spreads); the
standard errors of the means cost next to nothing and are in both. Each is timed
`--repeats` times, alternating; the medians are compared.

    .venv/bin/python benchmarks/spread_cost.py --project .          # the digits default
    .venv/bin/python benchmarks/spread_cost.py --project <a Fashion-MNIST preset project>

Run it after `dvc repro` in the project.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time
from pathlib import Path

from genpipe import paths, runtime
from genpipe.data.split import read_split
from genpipe.params.load import load_params
from genpipe.reference import load_backbone, load_reference

TARGET = 1.5  # the evaluation with spreads, at most this many times the one without


def evaluation(model: str, params, bootstraps: int) -> tuple[float, dict]:
    """The evaluate stage's work on the project's weights: seconds and metrics."""
    evaluate = params.evaluate.model_copy(update={"bootstraps": bootstraps})
    start = time.perf_counter()
    device = runtime.resolve_device(evaluate.device, key="evaluate.device")
    runtime.seed_everything(params.seed, device, evaluate.cpu_threads)
    reference = load_reference(paths.REFERENCE, evaluate)
    backbone = load_backbone(evaluate, reference, paths.REFERENCE, device)
    split = read_split(paths.PREPARED) if model == "autoencoder" else None
    module = importlib.import_module(f"genpipe.{model}.evaluate")
    metrics, _ = module.evaluate_weights(paths.weights_dir(model), reference, backbone, split,
                                         evaluate, params.seed, device)  # fmt: skip
    return time.perf_counter() - start, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="after `dvc repro`")
    parser.add_argument("--models", nargs="+", default=["gan", "autoencoder"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    params = load_params(args.project / paths.PARAMS)
    runtime.pin_cpu_kernels(params.cpu_kernels)  # may re-execute, as the stages do: first
    os.chdir(args.project)
    bootstraps = params.evaluate.bootstraps
    print(f"project {args.project.resolve()}: data.source {params.data.source}, "
          f"{params.data.image_size} px, backbone {params.evaluate.backbone}, "
          f"evaluate.bootstraps {bootstraps}")
    for model in args.models:
        times: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(args.repeats):
            seconds, _ = evaluation(model, params, 0)
            times["without"].append(seconds)
            seconds, metrics = evaluation(model, params, bootstraps)
            times["with"].append(seconds)
        without, with_ = (statistics.median(times[k]) for k in ("without", "with"))
        ratio = with_ / without
        spreads = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.endswith("_std"))
        print(f"{model}: evaluate {without:.2f} s without the bootstrap (baseline), "
              f"{with_:.2f} s with it: {ratio:.2f}x (target <= {TARGET:g}x) "
              f"{'ok' if ratio <= TARGET else 'OVER'}")
        print(f"  spreads: {spreads}")


if __name__ == "__main__":
    main()
