"""Stage evaluate@gan: models/gan/ + data/reference/ -> reports/gan/metrics.json (FID, KID,
precision/recall, beside the real-data floor) and reports/gan/eval_grid.png; both
logged to the training run that models/gan/mlflow_run.json records."""

from pathlib import Path

from genpipe.cli import run_stage
from genpipe.evaluate.common import REFERENCE_DIR, load_backbone, load_reference
from genpipe.evaluate.gan import evaluate_gan, load_generator
from genpipe.fileio import atomic_path, write_json
from genpipe.params import load_params
from genpipe.tracking import RecordedRun
from genpipe.train import common

MODEL = Path("models/gan")
REPORTS = Path("reports/gan")


def main() -> None:
    params = load_params()
    evaluate = params.evaluate
    # fail before the work, not after, when the tracking server is down
    run = RecordedRun(MODEL / "mlflow_run.json").open(missing_ok=True)
    device = common.resolve_device(evaluate.device, key="evaluate.device")
    common.seed_everything(params.seed, device, evaluate.cpu_threads)
    reference = load_reference(REFERENCE_DIR, evaluate)
    backbone = load_backbone(evaluate, reference, REFERENCE_DIR, device)
    netG = load_generator(MODEL / "weights", device)
    metrics, grid = evaluate_gan(netG, reference, backbone, evaluate, params.seed, device)
    with atomic_path(REPORTS / "eval_grid.png") as tmp:
        grid.save(tmp, format="PNG")
    write_json(REPORTS / "metrics.json", metrics)
    run.log(metrics, [REPORTS / "metrics.json", REPORTS / "eval_grid.png"], "eval/")


if __name__ == "__main__":
    run_stage(main)
