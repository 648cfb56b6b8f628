"""Stage train@gan: data/prepared/ -> models/gan/ (weights, config, MLflow run record),
reports/gan/ (train_log.csv, samples.png). Resumes from checkpoints/gan/ after a crash."""

from pathlib import Path

from genpipe.cli import run_stage
from genpipe.fileio import write_json
from genpipe.params import load_params
from genpipe.tracking import TrainingRun
from genpipe.train import common
from genpipe.train.gan import sample_grid, train_gan

PREPARED = Path("data/prepared")
OUT = Path("models/gan")
WEIGHTS = OUT / "weights"  # cached by DVC; mlflow_run.json beside it is not
REPORTS = Path("reports/gan")
CHECKPOINT = Path("checkpoints/gan/checkpoint.pt")


def main() -> None:
    params = load_params()
    images, data_hash = common.load_train_split(PREPARED)
    device = common.resolve_device(params.train.device)
    record = OUT / "mlflow_run.json"
    with TrainingRun("gan", params.model_dump(mode="json", by_alias=True), data_hash,
                     params.train.experiment, record_path=record) as run:  # fmt: skip
        result = train_gan(params, images, data_hash, device, CHECKPOINT,
                           REPORTS / "train_log.csv", run=run)  # fmt: skip
        common.save_weights(result.ema, WEIGHTS / "generator_ema.safetensors")
        common.save_weights(result.netG, WEIGHTS / "generator.safetensors")
        common.save_weights(result.netD, WEIGHTS / "discriminator.safetensors")
        write_json(WEIGHTS / "config.json", result.config)
        sample_grid(result.ema, params.gan.z_dim, params.seed, device).save(REPORTS / "samples.png")
        run.log_artifact(REPORTS / "samples.png")
        run.log_artifact(REPORTS / "train_log.csv")


if __name__ == "__main__":
    run_stage(main)
