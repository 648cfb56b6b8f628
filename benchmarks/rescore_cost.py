"""What scoring a champion again on today's data adds to a register stage.

register@<model> scores the champion again when it was evaluated on other data or with
another backbone (src/genpipe/registry/rescore.py). This times that score on a project's
own DVC outputs (data/prepared, data/reference, models/<model>/weights), standing in for
the champion's downloaded weights, against the baseline of the evaluate stage's own
evaluation of the same weights (loading the reference, the backbone and the data, then
`evaluate_weights`), and checks that the two give the same metrics.

    .venv/bin/python benchmarks/rescore_cost.py --project .         # the digits default
    .venv/bin/python benchmarks/rescore_cost.py --project <a Fashion-MNIST preset project>

Run it after `dvc repro` in the project. The download from the artifact store is not
timed: it is the size of the weights directory over the network.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from genpipe import paths, runtime
from genpipe.data.split import read_split
from genpipe.params.load import load_params
from genpipe.reference import load_backbone, load_reference
from genpipe.registry.rescore import Scorer, score_version


def evaluate_stage(model: str, params) -> tuple[float, dict]:
    """The evaluate stage's work on the project's weights: seconds and metrics."""
    start = time.perf_counter()
    evaluate = params.evaluate
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
    args = parser.parse_args()
    params = load_params(args.project / paths.PARAMS)
    runtime.pin_cpu_kernels(params.cpu_kernels)  # may re-execute, as the stages do: first
    os.chdir(args.project)
    print(f"project {args.project.resolve()}: data.source {params.data.source}, "
          f"{params.data.image_size} px, backbone {params.evaluate.backbone}")
    failed = False
    for model in args.models:
        baseline, expected = evaluate_stage(model, params)
        start = time.perf_counter()
        weights = paths.weights_dir(model)
        metrics, _ = score_version(lambda tmp, w=weights: w, Scorer(model, params))
        seconds = time.perf_counter() - start
        same = metrics == expected
        failed |= not same
        print(f"{model}: re-score {seconds:.2f} s against the evaluate stage's {baseline:.2f} s "
              f"(baseline): {seconds / baseline:.2f}x; the same metrics: {same}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
