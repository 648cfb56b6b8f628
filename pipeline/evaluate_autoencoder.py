"""Stage evaluate@autoencoder: models/autoencoder/ + data/reference/ ->
reports/autoencoder/metrics.json (MSE, PSNR, SSIM and FID of the test split's
reconstructions, beside PCA's MSE and the FID floor) and
reports/autoencoder/eval_grid.png; both logged to the training run that
models/autoencoder/mlflow_run.json records."""

from pathlib import Path

from genpipe.cli import run_stage
from genpipe.data.canonical import read_prepared
from genpipe.evaluate.autoencoder import evaluate_autoencoder, load_autoencoder
from genpipe.evaluate.common import REFERENCE_DIR, load_backbone, load_reference, split_images
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
    # fail before the work, not after, when the tracking server is down
    run = RecordedRun(MODEL / "mlflow_run.json").open(missing_ok=True)
    device = common.resolve_device(evaluate.device, key="evaluate.device")
    common.seed_everything(params.seed, device, evaluate.cpu_threads)
    train_images, test_images = split_images(read_prepared(PREPARED))
    reference = load_reference(REFERENCE_DIR, evaluate)
    backbone = load_backbone(evaluate, reference, REFERENCE_DIR, device)
    net = load_autoencoder(MODEL / "weights", device)
    metrics, grid = evaluate_autoencoder(
        net, train_images, test_images, reference, backbone,
        evaluate, device,
    )  # fmt: skip
    with atomic_path(REPORTS / "eval_grid.png") as tmp:
        grid.save(tmp, format="PNG")
    write_json(REPORTS / "metrics.json", metrics)
    run.log(metrics, [REPORTS / "metrics.json", REPORTS / "eval_grid.png"], "eval/")


if __name__ == "__main__":
    run_stage(main)
