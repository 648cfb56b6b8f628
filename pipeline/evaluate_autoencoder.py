"""Stage evaluate@autoencoder: models/autoencoder/ + data/reference/ ->
reports/autoencoder/metrics.json (MSE, PSNR, SSIM and FID of the test split's
reconstructions, beside PCA's MSE and the FID floor) and
reports/autoencoder/eval_grid.png; both logged to the training run that
models/autoencoder/mlflow_run.json records."""

from pathlib import Path

import numpy as np

from genpipe.cli import run_stage
from genpipe.data.canonical import read_prepared
from genpipe.evaluate.autoencoder import evaluate_autoencoder, load_autoencoder
from genpipe.evaluate.common import REFERENCE_DIR, load_backbone, load_reference
from genpipe.fileio import atomic_path, write_json
from genpipe.params import load_params
from genpipe.tracking import RecordedRun
from genpipe.train import common

PREPARED = Path("data/prepared")
MODEL = Path("models/autoencoder")
REPORTS = Path("reports/autoencoder")


def main() -> None:
    params = load_params()
    evaluate = params.evaluate
    run = RecordedRun(MODEL / "mlflow_run.json").open()  # fail before the work, not after
    device = common.resolve_device(evaluate.device, key="evaluate.device")
    common.seed_everything(params.seed, device, evaluate.cpu_threads)
    prepared = read_prepared(PREPARED)
    split = prepared.manifest["split"].to_numpy()
    images = np.asarray(prepared.images)
    reference = load_reference(REFERENCE_DIR, evaluate)
    backbone = load_backbone(evaluate, reference, REFERENCE_DIR, device)
    net = load_autoencoder(MODEL / "weights", device)
    metrics, grid = evaluate_autoencoder(
        net, images[split == "train"], images[split == "test"], reference, backbone,
        evaluate, params.seed, device,
    )  # fmt: skip
    with atomic_path(REPORTS / "eval_grid.png") as tmp:
        grid.save(tmp, format="PNG")
    write_json(REPORTS / "metrics.json", metrics)
    files = [REPORTS / "metrics.json", REPORTS / "eval_grid.png"]
    run.log(metrics, files, "eval/")


if __name__ == "__main__":
    run_stage(main)
