"""Stage train@gan: data/prepared/ -> models/gan/ (weights, config, MLflow run record),
reports/gan/ (train_log.csv, samples.png). Resumes from checkpoints/gan/ after a crash."""

import os
from pathlib import Path

import numpy as np
import torch

from genpipe import distributed, paths, runtime, training
from genpipe.data.split import class_shares
from genpipe.fileio import staged_outputs
from genpipe.gan.artifact import save_gan
from genpipe.gan.train import sample_grid, train_gan
from genpipe.params.load import load_params
from genpipe.params.schema import Params
from genpipe.stage import run_stage
from genpipe.tracking.datasets import prepared_input
from genpipe.tracking.describe import describe_training
from genpipe.tracking.lineage import run_params
from genpipe.tracking.training_run import TrainingRun

MODEL = "gan"


def main() -> None:
    params = load_params()
    runtime.pin_cpu_kernels(params.cpu_kernels)  # may re-execute: before any work
    # nproc_per_node > 1: relaunch as that many workers, which inherit the pin, and wait
    if training.launch(MODEL, params):
        return
    split, data_hash = training.load_train_data(paths.PREPARED, params.train.batch_size)
    images = split.train
    labels = None
    if params.gan.conditional:  # every train image labeled, in 2 classes or more: checked now
        labels = split.train_labels
        class_shares(labels, "gan.conditional")
    device = runtime.resolve_device(params.train.device)
    with distributed.joined(params.train, device) as (world, device):
        if world is None or world.main:
            write_outputs(params, images, labels, data_hash, device, world)
        else:  # the other ranks train alongside and write nothing
            log_path = Path(os.devnull)  # never written: rank 0 writes the log
            train_gan(params, images, data_hash, device, paths.checkpoint(MODEL), log_path,
                      world=world, labels=labels)  # fmt: skip


def write_outputs(
    params: Params,
    images: np.ndarray,
    labels: np.ndarray | None,  # the train split's, for gan.conditional
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
        result = train_gan(params, images, data_hash, device, paths.checkpoint(MODEL), train_log,
                           run=run, world=world, labels=labels)  # fmt: skip
        save_gan(stage(paths.weights_dir(MODEL)), result.netG, result.netD, result.ema,
                 result.config)  # fmt: skip
        sample_grid(result.ema, params.gan.z_dim, params.training_seed, device).save(samples)
        run.log_artifact(samples)
        run.log_artifact(train_log)


if __name__ == "__main__":
    run_stage(distributed.recorded(main))
