"""Stage train@autoencoder: data/prepared/ -> models/autoencoder/ (weights, config, MLflow run
record), reports/autoencoder/train_log.csv. Resumes from checkpoints/autoencoder/ after a crash."""

from genpipe import paths, runtime, training
from genpipe.autoencoder.artifact import save_autoencoder
from genpipe.autoencoder.train import reconstruction_grid, train_autoencoder
from genpipe.params import load_params
from genpipe.stage import run_stage
from genpipe.tracking import TrainingRun

MODEL = "autoencoder"


def main() -> None:
    params = load_params()
    runtime.pin_cpu_kernels(params.cpu_kernels)  # may re-execute: before any work
    images, data_hash = training.load_train_split(paths.PREPARED, params.train.batch_size)
    device = runtime.resolve_device(params.train.device)
    reports = paths.reports(MODEL)
    flat = params.model_dump(mode="json", by_alias=True)
    record = paths.run_record(MODEL)
    with TrainingRun(MODEL, flat, data_hash, params.train.experiment, record_path=record) as run:
        result = train_autoencoder(params, images, data_hash, device, paths.checkpoint(MODEL),
                                   reports / "train_log.csv", run=run)  # fmt: skip
        save_autoencoder(paths.weights_dir(MODEL), result.net, result.config)
        reconstruction_grid(result.net, images, device).save(reports / "samples.png")
        run.log_artifact(reports / "samples.png")
        run.log_artifact(reports / "train_log.csv")


if __name__ == "__main__":
    run_stage(main)
