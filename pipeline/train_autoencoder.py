"""Stage train@autoencoder: data/prepared/ -> models/autoencoder/ (weights, config, MLflow run
record), reports/autoencoder/train_log.csv. Resumes from checkpoints/autoencoder/ after a crash."""

from pathlib import Path

from genpipe.cli import run_stage
from genpipe.fileio import write_json
from genpipe.params import load_params
from genpipe.tracking import TrainingRun
from genpipe.train import common
from genpipe.train.autoencoder import reconstruction_grid, train_autoencoder

PREPARED = Path("data/prepared")
OUT = Path("models/autoencoder")
WEIGHTS = OUT / "weights"  # cached by DVC; mlflow_run.json beside it is not
REPORTS = Path("reports/autoencoder")
CHECKPOINT = Path("checkpoints/autoencoder/checkpoint.pt")


def main() -> None:
    params = load_params()
    images, data_hash = common.load_train_split(PREPARED)
    device = common.resolve_device(params.train.device)
    record = OUT / "mlflow_run.json"
    with TrainingRun("autoencoder", params.model_dump(mode="json", by_alias=True), data_hash,
                     params.train.experiment, record_path=record) as run:  # fmt: skip
        result = train_autoencoder(params, images, data_hash, device, CHECKPOINT,
                                   REPORTS / "train_log.csv", run=run)  # fmt: skip
        common.save_weights(result.net, WEIGHTS / "autoencoder.safetensors")
        write_json(WEIGHTS / "config.json", result.config)
        reconstruction_grid(result.net, images, device).save(REPORTS / "samples.png")
        run.log_artifact(REPORTS / "samples.png")
        run.log_artifact(REPORTS / "train_log.csv")


if __name__ == "__main__":
    run_stage(main)
