"""The metric keys of metrics.json (and, prefixed with eval/, of MLflow): one home, with no
imports, so that the CI report and the registry read them without loading torch."""

from __future__ import annotations

# an evaluation's figures in MLflow: eval/<key> on the training run (its points, and the
# EVALUATION_CONSTANTS as tags); its grids in the run's artifact folder "eval"
EVAL_PREFIX = "eval/"
# metric keys, in metrics.json and (prefixed) in MLflow
FID, KID_MEAN, KID_STD, PRECISION, RECALL = "fid", "kid_mean", "kid_std", "precision", "recall"
DENSITY, COVERAGE = "density", "coverage"  # Naeem et al. 2020 (metrics/neighbours.py)
# the autoencoder's reconstructions (metrics/reconstruction.py), and PCA's as the baseline
MSE, PSNR, SSIM, PCA_MSE, MSE_OVER_PCA = "mse", "psnr", "ssim", "pca_mse", "mse_over_pca"
# the GAN's samples nearer a train image than real test images are (metrics/memorisation.py)
MEMORISED = "memorised"
MEMORISATION = "memorisation"  # the reference's threshold and how it was set
STD = "_std"  # <figure>_std: the figure's evaluation noise (see metrics/spread.py)
MEASURED_ON = "measured_on"  # what the figures were measured on: counts, split, backbone
FLOOR = "floor"  # the metrics of real train images against the test split
# the floor's FID at as many real train images as the test split holds, when
# evaluate.num_samples sets another count: what the autoencoder, which scores every test
# image, compares with (FID's small-sample bias depends on the count)
TEST_COUNT_FLOOR = "floor_at_test_count"
FID_OVER_FLOOR = "fid_over_floor"
KID_SUBSET_SIZE = "kid_subset_size"
# metrics.json keys that describe the evaluation rather than the model: the real-data floor
# and the counts, constant for one reference. Runs carry them as tags, not metric charts;
# the CI report leaves them out of its table
EVALUATION_CONSTANTS = (f"{FLOOR}.", KID_SUBSET_SIZE, "num_samples", "test_images",
                        "latent_dim", f"{MEASURED_ON}.")  # fmt: skip


def std_of(metrics: dict, metric: str) -> float | None:
    """A metrics.json's spread of `metric` (its <metric>_std), or None where not measured."""
    std = metrics.get(metric + STD)
    return float(std) if isinstance(std, int | float) and not isinstance(std, bool) else None
