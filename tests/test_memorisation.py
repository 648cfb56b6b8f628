"""The GAN's memorisation check (metrics/memorisation.py), with density and coverage, on two
stand-in generators: one that returns train images (a copier: memorised near 100%) and one
that returns test images (a perfect generalising model: memorised near the percentile's
share). The features are the pixels of sklearn's digits: no network to train."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genpipe import paths
from genpipe.data.split import Split
from genpipe.gan.evaluate import TAIL_PAIRS, evaluate_gan, summary
from genpipe.images import to_float
from genpipe.metrics import memorisation
from genpipe.metrics.compare import Reference, compare, reference_from_features
from genpipe.metrics.features import extract_features
from genpipe.params.load import parse_params
from genpipe.reference import train_checked

from builders import digits_split, pixel_reference, pixels

CPU = torch.device("cpu")
PERCENTILE = 5.0


class Replay(torch.nn.Module):
    """A stand-in generator: returns `images` in order, one per noise vector."""

    z_dim = 1

    def __init__(self, images: np.ndarray) -> None:
        super().__init__()
        self.images, self.next = to_float(torch.from_numpy(images)), 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.images[self.next : self.next + len(z)]
        self.next += len(z)
        return out


@pytest.fixture(scope="module")
def digits() -> tuple[Split, Reference, object]:
    split = digits_split()
    params = parse_params({"evaluate": {"memorisation_percentile": PERCENTILE,
                                        "kid_subsets": 5}})  # fmt: skip
    return split, pixel_reference(split, params), params


def scored(digits, images: np.ndarray) -> tuple[dict, dict]:
    split, reference, params = digits
    return evaluate_gan(Replay(images), reference, pixels, params.evaluate, seed=0, device=CPU,
                        train_images=split.train)  # fmt: skip


def test_the_reference_keeps_every_train_image_and_an_observed_threshold(digits):
    split, reference, _ = digits
    assert reference.train.shape == (len(split.train), 64)
    np.testing.assert_array_equal(reference.train_index, np.arange(len(split.train)))
    check = reference.info["memorisation"]
    assert check["train_images"] == len(split.train) and check["percentile"] == PERCENTILE
    distance, _ = memorisation.nearest(reference.features, reference.train)
    assert check["threshold"] in distance  # an observed distance, not an interpolation
    # the floor's figure: the test images' own share, about the percentile's
    share = reference.info["floor"]["memorised"]
    assert PERCENTILE / 100 <= share < PERCENTILE / 100 + 0.02


def test_a_generator_that_returns_train_images_reads_memorised(digits):
    split, reference, _ = digits
    rng = np.random.default_rng(0)
    copies = split.train[rng.choice(len(split.train), len(split.test), replace=False)]
    metrics, grids = scored(digits, copies)
    assert metrics["memorised"] == 1.0 and metrics["memorised_std"] == 0.0
    # real images of the same distribution: coverage near its expected 1 - 1/2^k = 0.875
    assert metrics["coverage"] > 0.8 and metrics["precision"] > 0.9
    assert metrics["measured_on"]["memorisation"]["train_images"] == len(split.train)
    assert "memorised 1 (the test images' 0.05" in summary(metrics)
    # the tail grid: each sample above its nearest train image, here the same image
    tail = np.asarray(grids[paths.tail_grid("gan")])
    rows = np.split(tail[2:], 4)  # 4 rows of 8: samples, their train images, twice
    assert len(rows) * 8 // 2 == TAIL_PAIRS
    np.testing.assert_array_equal(rows[0], rows[1])
    np.testing.assert_array_equal(rows[2], rows[3])


def test_a_generator_that_returns_test_images_reads_the_percentiles_share(digits):
    split, reference, _ = digits
    metrics, grids = scored(digits, split.test)
    # the test images are the threshold's own population: their share is the floor's
    assert metrics["memorised"] == reference.info["floor"]["memorised"]
    assert PERCENTILE / 100 <= metrics["memorised"] < PERCENTILE / 100 + 0.02
    assert 0 < metrics["memorised_std"] < 0.02
    # the same images as the reference: every ball holds its own centre
    assert metrics["coverage"] == 1.0 and metrics["precision"] == 1.0
    tail = np.asarray(grids[paths.tail_grid("gan")])
    rows = np.split(tail[2:], 4)
    assert not np.array_equal(rows[0], rows[1])  # near, not copies


def test_a_half_copying_generator_reads_between(digits):
    split, _, _ = digits
    n = len(split.test)
    half = np.concatenate([split.train[: n // 2], split.test[n // 2 :]])
    metrics, _ = scored(digits, half)
    assert 0.5 <= metrics["memorised"] < 0.5 + PERCENTILE / 100 + 0.02


def test_a_subsample_of_the_train_images_is_seeded_and_indexed(digits):
    split, _, _ = digits
    params = parse_params({"evaluate": {"memorisation_images": 100}})
    reference = reference_from_features(extract_features(pixels, split.test, 256, CPU),
                                        {"floor": {"fid": 1.0}})  # fmt: skip
    train_checked(reference, params, split, pixels, CPU)
    assert reference.train.shape == (100, 64)
    assert reference.info["memorisation"]["train_images"] == 100
    features = extract_features(pixels, split.train[reference.train_index], 256, CPU)
    np.testing.assert_array_equal(reference.train, features)
    again = reference_from_features(reference.features, {"floor": {"fid": 1.0}})
    train_checked(again, params, split, pixels, CPU)
    np.testing.assert_array_equal(again.train_index, reference.train_index)


def test_density_and_coverage_are_in_compare_with_their_spreads(digits):
    split, reference, params = digits
    features = extract_features(pixels, split.train[: len(split.test)], 256, CPU)
    metrics = compare(reference, features, 5, 50, params.evaluate.pr_k, seed=0)
    for key in ("density", "coverage"):
        assert metrics[key] > 0 and 0 < metrics[f"{key}_std"] < 0.1
