"""Stage register@<model>: the model's DVC outputs -> a version of <prefix>-<model> in the
MLflow Model Registry, through the champion gate; reports/<model>/registry.json records it."""

import sys

from genpipe import models, paths, runtime
from genpipe.data.canonical import prepared_sha256
from genpipe.fileio import write_json
from genpipe.params.load import load_params
from genpipe.registry.gate import Policy
from genpipe.registry.register import Outputs, register
from genpipe.registry.rescore import Scorer
from genpipe.stage import run_stage
from genpipe.tracking import lineage


def main() -> None:
    model = models.from_argv("register.py", sys.argv[1:]).name
    params = load_params()
    runtime.pin_cpu_kernels(params.cpu_kernels)  # may re-execute: a re-score is an evaluation
    registry = params.registry
    policy = Policy(registry.min_improvement, registry.force, lineage.current_branch(),
                    registry.default_branch, Scorer(model, params),
                    registry.noise_z)  # fmt: skip
    record = register(
        Outputs.of(model, prepared_sha256(paths.PREPARED)),
        params.model_dump(mode="json", by_alias=True),
        registry.name_prefix,
        policy,
        params.train.experiment,
    )
    write_json(paths.registry_record(model), record)


if __name__ == "__main__":
    run_stage(main)
