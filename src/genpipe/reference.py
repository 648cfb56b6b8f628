"""The reference stage's library: what every evaluation compares against, computed once and
cached by DVC in data/reference/.

The reference holds the real test split's features and their statistics (mu, sigma and
sigma's square root, so a Fréchet distance costs one eigendecomposition), the domain
network when that backbone is used (trained here, on the train split's labels), and the
"floor": the same metrics for real train images against the test split, at the sample
count the evaluation uses. The evaluate stages load it and compare() against it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from genpipe import paths, runtime
from genpipe.data.split import Split, class_shares, read_split, require_images
from genpipe.errors import MetricsError, exception_text
from genpipe.fileio import umask_mode
from genpipe.metrics import memorisation
from genpipe.metrics.compare import (
    Reference,
    compare,
    frechet_to_reference,
    kid_subset_size,
    reference_from_features,
    rounded,
)
from genpipe.metrics.domain import DomainNet, accuracy, load_domain_network, train_domain_network
from genpipe.metrics.features import Backbone, extract_features
from genpipe.metrics.keys import (
    FID,
    FLOOR,
    KID_SUBSET_SIZE,
    MEMORISATION,
    MEMORISED,
    STD,
    TEST_COUNT_FLOOR,
)
from genpipe.params.schema import EvaluateParams, Params
from genpipe.weights import save_weights

log = logging.getLogger(__name__)


INFO_FILE = paths.REFERENCE_INFO.name  # backbone, counts, the floor, the domain net's accuracy
STATS_FILE = "stats.safetensors"  # features (N, D) float32; mu, sigma, sigma_sqrt float64
DOMAIN_WEIGHTS = "domain.safetensors"  # domain backbone only
# the memorisation check's train features (T, D) float32 and their train rows (T,) int64
TRAIN_FILE = "train_features.safetensors"


def save_reference(directory: Path, reference: Reference) -> None:
    """Into `directory` (a staging directory: the caller swaps it in whole)."""
    save_file(
        {
            "features": reference.features.astype(np.float32),  # the backbones' own precision
            "mu": reference.mu,
            "sigma": reference.sigma,
            "sigma_sqrt": reference.sigma_sqrt,
        },
        str(directory / STATS_FILE),
    )
    umask_mode(directory / STATS_FILE)  # safetensors makes it private
    if reference.train is not None and reference.train_index is not None:
        save_file({"features": reference.train.astype(np.float32),
                   "index": reference.train_index.astype(np.int64)},
                  str(directory / TRAIN_FILE))  # fmt: skip
        umask_mode(directory / TRAIN_FILE)
    text = json.dumps(reference.info, indent=2, sort_keys=True) + "\n"
    (directory / INFO_FILE).write_text(text)


def load_reference(directory: Path, evaluate: EvaluateParams) -> Reference:
    """The reference stage's output, checked against the evaluate params in use."""
    directory = Path(directory)
    for name in (INFO_FILE, STATS_FILE):  # TRAIN_FILE: read below, with its own error
        if not (directory / name).is_file():
            raise MetricsError(
                f"{directory / name}: expected the reference stage's output; found no such "
                "file (run `dvc repro reference`)"
            )
    info = _read_info(directory / INFO_FILE)
    if info.get("backbone") != evaluate.backbone:
        raise MetricsError(
            f"{directory / INFO_FILE}: expected statistics of the {evaluate.backbone} backbone "
            f"(evaluate.backbone); found {info.get('backbone')} (run `dvc repro reference`)"
        )
    path = directory / STATS_FILE
    try:
        arrays = load_file(str(path))
        features, mu = arrays["features"], arrays["mu"]
        sigma, sigma_sqrt = arrays["sigma"], arrays["sigma_sqrt"]
    except (SafetensorError, OSError, KeyError) as exc:
        raise MetricsError(
            f"{path}: expected the reference stage's statistics (features, mu, sigma, "
            f"sigma_sqrt); could not read them ({exception_text(exc)}) "
            "(run `dvc repro --force reference`)"
        ) from None
    d = mu.shape[0] if mu.ndim == 1 else -1
    shapes_fit = features.ndim == 2 and features.shape[1] == d
    if not shapes_fit or sigma.shape != (d, d) or sigma_sqrt.shape != (d, d):
        raise MetricsError(
            f"{path}: expected features (N, D), mu (D,), sigma and sigma_sqrt (D, D); found "
            f"{features.shape}, {mu.shape}, {sigma.shape}, {sigma_sqrt.shape} "
            "(run `dvc repro --force reference`)"
        )
    train, index = _read_train(directory / TRAIN_FILE, d)
    return Reference(info, features.astype(np.float64), mu, sigma, sigma_sqrt, train, index)


def _read_train(path: Path, d: int) -> tuple[np.ndarray, np.ndarray]:
    """The memorisation check's train features (T, D) and their train rows (T,)."""
    if not path.is_file():
        raise MetricsError(
            f"{path}: expected the reference stage's train features; found no such file "
            "(run `dvc repro --force reference`)"
        )
    try:
        arrays = load_file(str(path))
        features, index = arrays["features"], arrays["index"]
    except (SafetensorError, OSError, KeyError) as exc:
        raise MetricsError(
            f"{path}: expected the reference stage's train features (features, index); "
            f"could not read them ({exception_text(exc)}) (run `dvc repro --force reference`)"
        ) from None
    if features.ndim != 2 or features.shape[1] != d or index.shape != (len(features),):
        raise MetricsError(
            f"{path}: expected features (T, {d}) and index (T,); found {features.shape} and "
            f"{index.shape} (run `dvc repro --force reference`)"
        )
    return features.astype(np.float64), index


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise MetricsError(
            f"{path}: expected the reference stage's summary as JSON; found "
            f"{exception_text(exc)[:200]} (run `dvc repro --force reference`)"
        ) from None
    if not isinstance(info, dict):
        raise MetricsError(
            f"{path}: expected the reference stage's summary, a JSON object; found "
            f"{type(info).__name__} (run `dvc repro --force reference`)"
        )
    return info


# --- backbones ------------------------------------------------------------------------------


def inception_backbone(evaluate: EvaluateParams, device: torch.device) -> tuple[Backbone, str]:
    """The FID Inception network from its weights file, and the file's SHA-256."""
    from genpipe.metrics.inception import load_inception

    net = load_inception(evaluate.inception_weights, device)
    return net, net.weights_sha256


def load_backbone(
    evaluate: EvaluateParams, reference: Reference, directory: Path, device: torch.device
) -> Backbone:
    """The backbone the reference was computed with."""
    if evaluate.backbone == "domain":
        net = load_domain_network(directory / DOMAIN_WEIGHTS, reference.info["domain"], device)
        return net.features
    backbone, sha256 = inception_backbone(evaluate, device)
    if sha256 != reference.info["inception_sha256"]:
        raise MetricsError(
            f"Inception weights: expected the file the reference statistics were computed "
            f"with (SHA-256 {reference.info['inception_sha256'][:12]}...); found "
            f"{sha256[:12]}... (run `dvc repro --force reference`)"
        )
    return backbone


def evaluation_inputs(evaluate: EvaluateParams, device: torch.device,
                      split: bool = True) -> tuple[Reference, Backbone, Split | None]:  # fmt: skip
    """What an evaluation reads besides the weights: the reference stage's output, its
    backbone on `device`, and (unless not `split`) the prepared data's split."""
    reference = load_reference(paths.REFERENCE, evaluate)
    backbone = load_backbone(evaluate, reference, paths.REFERENCE, device)
    return reference, backbone, read_split(paths.PREPARED) if split else None


# --- the stage ----------------------------------------------------------------------------


def num_samples(evaluate: EvaluateParams, test_count: int) -> int:
    """How many images the evaluation compares: evaluate.num_samples, or the test split's."""
    return evaluate.num_samples or test_count


def build_reference(
    params: Params, split: Split, device: torch.device
) -> tuple[Reference, DomainNet | None]:
    """Features of the test split under the chosen backbone, their statistics, and the floor:
    the metrics of `num_samples` real train images (a seeded subsample) against them."""
    evaluate = params.evaluate
    require_images(split, test=True)
    n_train, n_test = len(split.train), len(split.test)
    n = num_samples(evaluate, n_test)
    if n > n_train:
        raise MetricsError(
            f"evaluate.num_samples: expected at most {n_train} (the train split, which the "
            f"FID floor subsamples to this count); got {n}"
        )
    runtime.seed_everything(params.seed, device, evaluate.cpu_threads)
    info: dict = {"backbone": evaluate.backbone, "num_samples": n, "test_images": n_test}

    net = None
    backbone: Backbone
    if evaluate.backbone == "domain":
        net = domain_backbone(params, split, device)
        info["domain"] = net.config()
        info["domain_accuracy"] = net.accuracy
        backbone = net.features
    else:
        backbone, info["inception_sha256"] = inception_backbone(evaluate, device)

    batch = evaluate.batch_size
    features = extract_features(backbone, split.test, batch, device, desc="test features")
    info["feature_dim"] = int(features.shape[1])
    reference = reference_from_features(features, info)

    # the floor: as many real train images as there will be samples, so both carry the
    # same small-sample bias
    pick = np.sort(np.random.default_rng(params.seed).choice(n_train, n, replace=False))
    train_features = extract_features(
        backbone, split.train[pick], batch, device, desc="train features"
    )
    subset = kid_subset_size(evaluate.kid_subset_size, n, n_test)
    floor = compare(reference, train_features, evaluate.kid_subsets, subset, evaluate.pr_k,
                    params.seed, evaluate.bootstraps)  # fmt: skip
    info[FLOOR] = rounded(floor)
    info[KID_SUBSET_SIZE] = subset
    if n != n_test and n_test <= n_train:  # the autoencoder scores every test image
        pick = np.sort(np.random.default_rng(params.seed).choice(n_train, n_test, replace=False))
        at_test = extract_features(backbone, split.train[pick], batch, device,
                                   desc="train features, test count")  # fmt: skip
        info[TEST_COUNT_FLOOR] = rounded({FID: frechet_to_reference(reference, at_test)})
    train_checked(reference, params, split, backbone, device)
    log.info("FID floor (%d real train images vs the test split): %.4f", n, floor["fid"])
    return reference, net


def train_checked(reference: Reference, params: Params, split: Split, backbone: Backbone,
                  device: torch.device) -> None:  # fmt: skip
    """The memorisation check's side of the reference: the features of the train images
    it compares with (all, or a seeded subsample of evaluate.memorisation_images), the
    threshold (metrics/memorisation.py), and the share of the test images within it, the
    floor's figure."""
    evaluate, n_train = params.evaluate, len(split.train)
    count = min(evaluate.memorisation_images or n_train, n_train)
    rng = np.random.default_rng(params.seed)
    index = np.arange(n_train) if count == n_train else np.sort(rng.choice(n_train, count,
                                                                           replace=False))
    features = extract_features(backbone, split.train[index], evaluate.batch_size, device,
                                desc="train features, memorisation")  # fmt: skip
    # as load_reference will read them: float32, as the test features are stored
    train = features.astype(np.float32).astype(np.float64)
    test = reference.features.astype(np.float32).astype(np.float64)
    limit = memorisation.threshold(test, train, evaluate.memorisation_percentile)
    share = memorisation.memorisation(test, train, limit)
    reference.train, reference.train_index = train, index.astype(np.int64)
    reference.info[MEMORISATION] = {"train_images": count,
                                    "percentile": evaluate.memorisation_percentile,
                                    "threshold": limit}  # fmt: skip
    reference.info[FLOOR].update(rounded({MEMORISED: share.share,
                                          MEMORISED + STD: share.share_std}))  # fmt: skip


def domain_backbone(params: Params, split: Split, device: torch.device) -> DomainNet:
    """The domain network trained on the train split, held to evaluate.domain.min_accuracy
    on the test split; its accuracy is kept on it (`net.accuracy`)."""
    evaluate, domain = params.evaluate, params.evaluate.domain
    # the domain backbone learns from labels: unlabeled data cannot use it
    class_shares(split.train_labels, "evaluate.backbone domain",
                 hint=". Use evaluate.backbone: inception for unlabeled data")  # fmt: skip
    net = train_domain_network(
        split.train, split.train_labels, split.num_classes, steps=domain.steps,
        batch_size=domain.batch_size, lr=domain.lr, width=domain.width,
        feature_dim=domain.feature_dim, seed=params.seed, device=device,
    )  # fmt: skip
    held_out = accuracy(net, split.test, split.test_labels, evaluate.batch_size)
    log.info("domain network: %.4f accuracy on the test split", held_out)
    if held_out < domain.min_accuracy:
        raise MetricsError(
            f"domain network: expected a test-split accuracy of at least "
            f"{domain.min_accuracy} (evaluate.domain.min_accuracy); got "
            f"{held_out:.4f}. Train it longer (evaluate.domain.steps) or wider, or use "
            "evaluate.backbone: inception"
        )
    net.accuracy = round(held_out, 6)
    return net


def write_reference(directory: Path, reference: Reference, net: DomainNet | None) -> None:
    """Into a staging directory, which the caller swaps in whole (fileio.atomic_dir)."""
    save_reference(directory, reference)
    if net is not None:
        save_weights(net, directory / DOMAIN_WEIGHTS)
