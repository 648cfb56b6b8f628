"""Stage evaluate@<model>: models/<model>/weights + data/reference/ ->
reports/<model>/metrics.json, eval_grid.png and tail_grid.png, all logged to the training
run that models/<model>/mlflow_run.json records.

The GAN: FID, KID, precision/recall, density/coverage and the memorisation check of its
samples, beside the real-data floor. The autoencoder: MSE, PSNR, SSIM and FID of the test
split's reconstructions, beside PCA's MSE and the floor. Each figure with its spread."""

import sys

from genpipe import models, paths, runtime
from genpipe.fileio import staged_outputs, write_json
from genpipe.params.load import load_params
from genpipe.reference import evaluation_inputs
from genpipe.stage import run_stage
from genpipe.tracking.datasets import prepared_input
from genpipe.tracking.recorded_run import RecordedRun


def main() -> None:
    model = models.from_argv("evaluate.py", sys.argv[1:])
    params = load_params()
    runtime.pin_cpu_kernels(params.cpu_kernels)  # may re-execute: before any work
    evaluate = params.evaluate
    # fail before the work, not after, when the tracking server is down
    run = RecordedRun(paths.run_record(model.name)).open(missing_ok=True)
    test_split = prepared_input(params.data.model_dump(mode="json"), "test")
    device = runtime.resolve_device(evaluate.device, key="evaluate.device")
    runtime.seed_everything(params.seed, device, evaluate.cpu_threads)
    reference, backbone, split = evaluation_inputs(evaluate, device)
    evaluation = model.evaluation()
    metrics, grids = evaluation.evaluate_weights(paths.weights_dir(model.name), reference,
                                                 backbone, split, evaluate, params.seed,
                                                 device)  # fmt: skip
    # the files move into place only once the run has them: a failure leaves the old ones
    with staged_outputs() as stage:
        images = {path: stage(path) for path in grids}
        for path, image in grids.items():
            image.save(images[path], format="PNG")
        metrics_path = stage(paths.metrics(model.name))
        write_json(metrics_path, metrics)
        run.log(metrics, [metrics_path, *images.values()], inputs=[test_split],
                summary=evaluation.summary(metrics))  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
