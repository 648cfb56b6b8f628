"""Stage register@<model>: the model's DVC outputs -> a version of <prefix>-<model> in the
MLflow Model Registry, through the champion gate; reports/<model>/registry.json records it."""

import sys
from pathlib import Path

from genpipe.cli import run_stage
from genpipe.fileio import write_json
from genpipe.params import load_params
from genpipe.registry import Outputs, register
from genpipe.train import common


def main() -> None:
    model = sys.argv[1]
    params = load_params()
    _, data_hash = common.load_train_split(Path("data/prepared"))
    record = register(
        Outputs.of(model, data_hash),
        params.model_dump(mode="json", by_alias=True),
        params.registry.name_prefix,
        params.registry.min_improvement,
        params.registry.force,
        params.train.experiment,
    )
    write_json(Path("reports") / model / "registry.json", record)


if __name__ == "__main__":
    run_stage(main)
