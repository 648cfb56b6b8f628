"""Stage evaluate@gan: models/gan/ + data/reference/ -> reports/gan/metrics.json (FID, KID,
precision/recall, beside the real-data floor) and reports/gan/eval_grid.png; both
logged to the training run that models/gan/mlflow_run.json records."""

from genpipe import paths, runtime
from genpipe.data.split import read_split
from genpipe.fileio import staged_outputs, write_json
from genpipe.gan.evaluate import evaluate_weights, summary
from genpipe.metrics.compare import EVALUATION_CONSTANTS
from genpipe.params import load_params
from genpipe.reference import load_backbone, load_reference
from genpipe.stage import run_stage
from genpipe.tracking.datasets import prepared_input
from genpipe.tracking.runs import RecordedRun

MODEL = "gan"


def main() -> None:
    params = load_params()
    runtime.pin_cpu_kernels(params.cpu_kernels)  # may re-execute: before any work
    evaluate = params.evaluate
    # fail before the work, not after, when the tracking server is down
    run = RecordedRun(paths.run_record(MODEL)).open(missing_ok=True)
    test_split = prepared_input(params.data.model_dump(mode="json"), "test")
    device = runtime.resolve_device(evaluate.device, key="evaluate.device")
    runtime.seed_everything(params.seed, device, evaluate.cpu_threads)
    reference = load_reference(paths.REFERENCE, evaluate)
    backbone = load_backbone(evaluate, reference, paths.REFERENCE, device)
    split = read_split(paths.PREPARED)  # the train images of the tail grid
    metrics, grids = evaluate_weights(paths.weights_dir(MODEL), reference, backbone, split,
                                     evaluate, params.seed, device)  # fmt: skip
    # both files move into place only once the run has them: a failure leaves the old ones
    with staged_outputs() as stage:
        images = {path: stage(path) for path in (paths.eval_grid(MODEL), paths.tail_grid(MODEL))}
        for path, image in grids.items():
            image.save(images[path], format="PNG")
        metrics_path = stage(paths.metrics(MODEL))
        write_json(metrics_path, metrics)
        run.log(
            metrics,
            [metrics_path, *(images[path] for path in grids)],
            "eval/",
            constants=EVALUATION_CONSTANTS,
            inputs=[test_split],
            summary=summary(metrics),
        )


if __name__ == "__main__":
    run_stage(main)
