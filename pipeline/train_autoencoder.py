"""Stage train@autoencoder: data/prepared/ -> models/autoencoder/ (weights, config, MLflow run
record), reports/autoencoder/train_log.csv. Resumes from checkpoints/autoencoder/ after a crash."""

import os
from pathlib import Path

import numpy as np
import torch

from genpipe import distributed, paths, runtime, training
from genpipe.autoencoder.artifact import save_autoencoder
from genpipe.autoencoder.train import reconstruction_grid, train_autoencoder
from genpipe.fileio import staged_outputs
from genpipe.params.load import load_params
from genpipe.params.schema import Params
from genpipe.stage import run_stage
from genpipe.tracking.datasets import prepared_input
from genpipe.tracking.describe import describe_training
from genpipe.tracking.lineage import run_params
from genpipe.tracking.training_run import TrainingRun

MODEL = "autoencoder"


def main() -> None:
    params = load_params()
    runtime.pin_cpu_kernels(params.cpu_kernels)  # may re-execute: before any work
    # nproc_per_node > 1: relaunch as that many workers, which inherit the pin, and wait
    if training.launch(MODEL, params):
        return
    split, data_hash = training.load_train_data(paths.PREPARED, params.train.batch_size)
    images = split.train
    device = runtime.resolve_device(params.train.device)
    with distributed.joined(params.train, device) as (world, device):
        if world is None or world.main:
            write_outputs(params, images, data_hash, device, world)
        else:  # the other ranks train alongside and write nothing
            log_path = Path(os.devnull)  # never written: rank 0 writes the log
            train_autoencoder(
                params, images, data_hash, device, paths.checkpoint(MODEL), log_path, world=world
            )


def write_outputs(
    params: Params,
    images: np.ndarray,
    data_hash: str,
    device: torch.device,
    world: distributed.World | None,
) -> None:
    flat = run_params(params.model_dump(mode="json", by_alias=True), MODEL)
    dataset = prepared_input(flat["data"], "train", data_hash)
    record = paths.run_record(MODEL)
    # every output is written staged and moved into place only once the run has ended well:
    # a failure leaves the previous ones (and the record of their run) as they were
    experiment = params.train.experiment
    with (
        staged_outputs() as stage,
        TrainingRun(
            MODEL,
            flat,
            data_hash,
            experiment,
            record_path=stage(record),
            inputs=[dataset],
            description=describe_training(MODEL, flat, dataset),
        ) as run,
    ):
        train_log, samples = stage(paths.train_log(MODEL)), stage(paths.samples(MODEL))
        result = train_autoencoder(params, images, data_hash, device, paths.checkpoint(MODEL),
                                   train_log, run=run, world=world)  # fmt: skip
        save_autoencoder(stage(paths.weights_dir(MODEL)), result.net, result.config)
        reconstruction_grid(result.net, images, device).save(samples)
        run.log_artifact(samples)
        run.log_artifact(train_log)


if __name__ == "__main__":
    run_stage(distributed.recorded(main))
