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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from genpipe import runtime
from genpipe.data.canonical import Prepared
from genpipe.errors import MetricsError, exception_text
from genpipe.fileio import umask_mode
from genpipe.metrics import fid
from genpipe.metrics.domain import DomainNet, load_domain_network
from genpipe.metrics.features import Backbone, extract_features
from genpipe.metrics.kid import kernel_inception_distance
from genpipe.metrics.precision_recall import precision_recall
from genpipe.params import DomainParams, EvaluateParams, Params
from genpipe.progress import Progress
from genpipe.weights import save_weights

log = logging.getLogger(__name__)


INFO_FILE = "reference.json"  # backbone, counts, the floor, the domain network's accuracy
STATS_FILE = "stats.safetensors"  # features (N, D) float32; mu, sigma, sigma_sqrt float64
DOMAIN_WEIGHTS = "domain.safetensors"  # domain backbone only

# metric keys, in metrics.json and (prefixed) in MLflow
FID, KID_MEAN, KID_STD, PRECISION, RECALL = "fid", "kid_mean", "kid_std", "precision", "recall"
FLOOR = "floor"  # the metrics of real train images against the test split
FID_OVER_FLOOR = "fid_over_floor"


@dataclass
class Reference:
    info: dict[str, Any]
    features: np.ndarray  # (N, D): the real test split's
    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    sigma_sqrt: np.ndarray  # (D, D), symmetric: sigma = sigma_sqrt @ sigma_sqrt


def reference_from_features(features: np.ndarray, info: dict[str, Any]) -> Reference:
    stats = fid.FeatureStats()
    stats.add(features)
    sigma = stats.sigma
    return Reference(info, features, stats.mu, sigma, fid.sqrt_psd(sigma))


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
    text = json.dumps(reference.info, indent=2, sort_keys=True) + "\n"
    (directory / INFO_FILE).write_text(text)


def load_reference(directory: Path, evaluate: EvaluateParams) -> Reference:
    """The reference stage's output, checked against the evaluate params in use."""
    directory = Path(directory)
    for name in (INFO_FILE, STATS_FILE):
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
    return Reference(info, features.astype(np.float64), mu, sigma, sigma_sqrt)


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


# --- comparison -----------------------------------------------------------------------------


def frechet_to_reference(reference: Reference, features: np.ndarray) -> float:
    """FID of `features` (N, D) against the reference's real test statistics."""
    if features.shape[1] != reference.features.shape[1]:
        raise MetricsError(
            f"features: expected {reference.features.shape[1]} dimensions, as the reference; "
            f"got {features.shape[1]} (run `dvc repro reference`)"
        )
    stats = fid.FeatureStats()
    stats.add(features)
    return fid.frechet_distance(
        reference.mu, reference.sigma, stats.mu, stats.sigma, sqrt_sigma1=reference.sigma_sqrt
    )


def compare(
    reference: Reference, features: np.ndarray, evaluate: EvaluateParams, seed: int
) -> dict[str, float]:
    """FID, KID (mean and std over subsets) and precision/recall of `features` (N, D)
    against the reference's real test features."""
    distance = frechet_to_reference(reference, features)
    kid_mean, kid_std = kernel_inception_distance(
        reference.features,
        features,
        evaluate.kid_subsets,
        kid_subset_size(evaluate, reference, len(features)),
        seed,
    )
    precision, recall = precision_recall(reference.features, features, k=evaluate.pr_k)
    return {
        FID: distance,
        KID_MEAN: kid_mean,
        KID_STD: kid_std,
        PRECISION: precision,
        RECALL: recall,
    }


def kid_subset_size(evaluate: EvaluateParams, reference: Reference, n: int) -> int:
    """The KID subset size compare() uses for n samples: evaluate.kid_subset_size, but at
    most half the smaller side, so that the subsets differ and their std means something."""
    return max(2, min(evaluate.kid_subset_size, min(n, len(reference.features)) // 2))


def split_images(prepared: Any) -> tuple[np.ndarray, np.ndarray]:
    """The prepared data's train and test images, (N, C, S, S) uint8 each, in memory."""
    split = prepared.manifest["split"].to_numpy()
    images = np.asarray(prepared.images)
    return images[split == "train"], images[split == "test"]


def num_samples(evaluate: EvaluateParams, test_count: int) -> int:
    """How many images the evaluation compares: evaluate.num_samples, or the test split's."""
    return evaluate.num_samples or test_count


def rounded(metrics: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    """Floats to `digits` significant digits, nested dicts too, so metrics.json reads
    cleanly."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out[key] = rounded(value, digits)
        elif isinstance(value, float):
            out[key] = float(f"{value:.{digits}g}")
        else:
            out[key] = value
    return out


# --- the domain network -----------------------------------------------------------------


def check_labels(labels: np.ndarray, num_classes: int) -> None:
    """The domain backbone learns from labels: unlabeled data cannot use it."""
    unlabeled = int((labels < 0).sum())
    if unlabeled or num_classes < 2:
        found = f"{unlabeled} unlabeled images" if unlabeled else f"{num_classes} class"
        raise MetricsError(
            "evaluate.backbone domain: expected labeled data with at least 2 classes to train "
            f"the domain network on; found {found}. Use evaluate.backbone: inception for "
            "unlabeled data"
        )


DOMAIN_LOG_EVERY = 100  # steps; each shows the loss, which costs a host sync


def train_domain_network(
    images: np.ndarray,  # (N, C, S, S) uint8, the train split
    labels: np.ndarray,  # (N,) int in [0, num_classes)
    num_classes: int,
    params: DomainParams,
    seed: int,
    device: torch.device,
) -> DomainNet:
    """Adam on cross-entropy, the learning rate cosine-annealed from params.lr to 0, batches
    drawn by index on the device with a seeded generator: bitwise reproducible on the CPU."""
    check_labels(labels, num_classes)
    _, channels, size, _ = images.shape
    torch.manual_seed(seed)  # weight init
    net = DomainNet(size, channels, num_classes, params.width, params.feature_dim)
    net = runtime.prepare_module(net, device)  # channels_last: about 25% faster on the CPU
    opt = torch.optim.Adam(net.parameters(), lr=params.lr)
    x_all = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # (N, C, S, S) uint8
    y_all = torch.from_numpy(labels.astype(np.int64)).to(device)
    batches = torch.Generator(device=device).manual_seed(seed + 3)
    net.train()
    with Progress("train domain network", params.steps) as progress:
        for step in range(1, params.steps + 1):
            # cosine annealing: on Fashion-MNIST 0.917 test accuracy against 0.884 at a
            # constant rate (with BatchNorm, 1000 steps)
            lr = 0.5 * params.lr * (1.0 + math.cos(math.pi * (step - 1) / params.steps))
            for group in opt.param_groups:
                group["lr"] = lr
            index = torch.randint(len(x_all), (params.batch_size,), generator=batches,
                                  device=device)  # fmt: skip
            loss = F.cross_entropy(net(x_all[index]), y_all[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            progress.update()
            if step % DOMAIN_LOG_EVERY == 0:  # a bar's postfix, or a log line without a TTY
                progress.report({"loss": loss.item(), "lr": lr})
    net.eval().requires_grad_(False)
    train_features = extract_features(net.features, images, params.batch_size, device)
    net.feature_scale.fill_(float(np.sqrt(np.mean(train_features**2))))
    return net


@torch.inference_mode()
def accuracy(net: DomainNet, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Share of images whose argmax logit is their label."""
    device = next(net.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        predicted = net(x).argmax(dim=1).cpu().numpy()
        correct += int((predicted == labels[start : start + batch_size]).sum())
    return correct / len(images)


# --- the stage ----------------------------------------------------------------------------


def build_reference(
    params: Params, prepared: Prepared, device: torch.device
) -> tuple[Reference, DomainNet | None]:
    """Features of the test split under the chosen backbone, their statistics, and the floor:
    the metrics of `num_samples` real train images (a seeded subsample) against them."""
    evaluate = params.evaluate
    split = prepared.manifest["split"].to_numpy()
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
    runtime.seed_everything(params.seed, device, evaluate.cpu_threads)
    images = np.asarray(prepared.images)  # (N, C, S, S) uint8
    info: dict = {"backbone": evaluate.backbone, "num_samples": n, "test_images": int(test.sum())}

    net = None
    backbone: Backbone
    if evaluate.backbone == "domain":
        net = domain_backbone(params, prepared, images, train, test, device)
        info["domain"] = net.config()
        info["domain_accuracy"] = net.accuracy
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


def domain_backbone(
    params: Params,
    prepared: Prepared,
    images: np.ndarray,  # (N, C, S, S) uint8, both splits
    train: np.ndarray,  # (N,) bool
    test: np.ndarray,  # (N,) bool
    device: torch.device,
) -> DomainNet:
    """The domain network trained on the train split, held to evaluate.domain.min_accuracy
    on the test split; its accuracy is kept on it (`net.accuracy`)."""
    evaluate = params.evaluate
    labels = prepared.manifest["label"].to_numpy()
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
    net.accuracy = round(held_out, 6)
    return net


def write_reference(directory: Path, reference: Reference, net: DomainNet | None) -> None:
    """Into a staging directory, which the caller swaps in whole (fileio.atomic_dir)."""
    save_reference(directory, reference)
    if net is not None:
        save_weights(net, directory / DOMAIN_WEIGHTS)
