"""The reference stage: the real test split's features and statistics, the feature network
when it is the domain one, and the FID floor, computed once and cached by DVC."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from genpipe.data.canonical import Prepared
from genpipe.errors import MetricsError
from genpipe.evaluate.common import (
    DOMAIN_WEIGHTS,
    FLOOR,
    Reference,
    compare,
    inception_backbone,
    kid_subset_size,
    num_samples,
    reference_from_features,
    rounded,
    save_reference,
)
from genpipe.metrics.features import (
    Backbone,
    DomainNet,
    accuracy,
    check_labels,
    extract_features,
    train_domain_network,
)
from genpipe.params import Params
from genpipe.train import common

log = logging.getLogger(__name__)


def build_reference(
    params: Params, prepared: Prepared, device: torch.device
) -> tuple[Reference, DomainNet | None]:
    """Features of the test split under the chosen backbone, their statistics, and the floor:
    the metrics of `num_samples` real train images (a seeded subsample) against them."""
    evaluate = params.evaluate
    split = prepared.manifest["split"].to_numpy()
    labels = prepared.manifest["label"].to_numpy()
    train, test = split == "train", split == "test"
    if not test.any() or not train.any():
        raise MetricsError(
            f"reference: expected images in both splits; found {int(train.sum())} train and "
            f"{int(test.sum())} test"
        )
    n = num_samples(evaluate, int(test.sum()))
    if n > train.sum():
        raise MetricsError(
            f"evaluate.num_samples: expected at most {int(train.sum())} (the train split, "
            f"which the FID floor subsamples to this count); got {n}"
        )
    common.seed_everything(params.seed, device, evaluate.cpu_threads)
    images = np.asarray(prepared.images)  # (N, C, S, S) uint8
    info: dict = {"backbone": evaluate.backbone, "num_samples": n, "test_images": int(test.sum())}

    net = None
    backbone: Backbone
    if evaluate.backbone == "domain":
        num_classes = int(prepared.info.get("num_classes", 0))
        check_labels(labels, num_classes)
        net = train_domain_network(
            images[train], labels[train], num_classes, evaluate.domain, params.seed, device
        )
        held_out = accuracy(net, images[test], labels[test], evaluate.batch_size)
        log.info("domain network: %.4f accuracy on the test split", held_out)
        if held_out < evaluate.domain.min_accuracy:
            raise MetricsError(
                f"domain network: expected a test-split accuracy of at least "
                f"{evaluate.domain.min_accuracy} (evaluate.domain.min_accuracy); got "
                f"{held_out:.4f}. Train it longer (evaluate.domain.steps) or wider, or use "
                "evaluate.backbone: inception"
            )
        info["domain"] = net.config()
        info["domain_accuracy"] = round(held_out, 6)
        backbone = net.features
    else:
        backbone, info["inception_sha256"] = inception_backbone(evaluate, device)

    batch = evaluate.batch_size
    features = extract_features(backbone, images[test], batch, device, desc="test features")
    info["feature_dim"] = int(features.shape[1])
    reference = reference_from_features(features, info)

    # the floor: as many real train images as there will be samples, so both carry the
    # same small-sample bias
    pick = np.sort(np.random.default_rng(params.seed).choice(int(train.sum()), n, replace=False))
    train_features = extract_features(
        backbone, images[train][pick], batch, device, desc="train features"
    )
    floor = compare(reference, train_features, evaluate, params.seed)
    info[FLOOR] = rounded(floor)
    info["kid_subset_size"] = kid_subset_size(evaluate, reference, n)
    log.info("FID floor (%d real train images vs the test split): %.4f", n, floor["fid"])
    return reference, net


def write_reference(directory: Path, reference: Reference, net: DomainNet | None) -> None:
    """Into a staging directory, which the caller swaps in whole (fileio.atomic_dir)."""
    save_reference(directory, reference)
    if net is not None:
        common.save_weights(net, directory / DOMAIN_WEIGHTS)
