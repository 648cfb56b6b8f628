"""The feature networks whose statistics FID, KID and precision/recall compare.

``inception``: the standard FID Inception-v3 (2048-d pool3; metrics/inception.py), which
needs its weights file. ``domain``: a small CNN classifier that the reference stage trains
on the train split's labels, deterministically; its penultimate layer gives the features.
It works offline and knows the data's own classes, but its numbers compare only with runs
that used the same domain network (the reference stage's output).

Every backbone takes uint8 images (N, C, H, W) and returns float features (N, D).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from genpipe.errors import MetricsError
from genpipe.params import DomainParams

log = logging.getLogger(__name__)

Backbone = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, C, H, W) -> (N, D) float


class DomainNet(nn.Module):
    """Conv layers halving the resolution down to 4 x 4 (doubling the width, up to 4x),
    then a `feature_dim` layer (the features) and the class logits."""

    def __init__(
        self, image_size: int, channels: int, num_classes: int, width: int, feature_dim: int
    ):
        super().__init__()
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.width, self.feature_dim = width, feature_dim
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        size, c = image_size, width
        while size > 4:  # 8 -> 4; 28 -> 14 -> 7 -> 4; 64 -> 32 -> 16 -> 8 -> 4
            c_out = min(2 * c, 4 * width)
            layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), nn.ReLU()]
            size, c = (size + 1) // 2, c_out
        self.conv = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c * 4 * 4, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)
        # set after training to the RMS of the train split's features, so that the features
        # are O(1) per dimension as Inception's are: KID's kernel (x.y / d + 1)^3 assumes it
        self.register_buffer("feature_scale", torch.ones(()))

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] float (N, C, S, S) -> the penultimate layer (N, feature_dim)."""
        return self.embed(self.conv(x))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, S, S) -> (N, feature_dim): the penultimate layer, rescaled."""
        x = images.float().div(127.5).sub(1.0)  # as the models see their data: [-1, 1]
        return self.embedding(x) / self.feature_scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, S, S) -> class logits (N, num_classes)."""
        x = images.float().div(127.5).sub(1.0)
        return self.head(self.embedding(x))

    def config(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "num_classes": self.num_classes,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }


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


def train_domain_network(
    images: np.ndarray,  # (N, C, S, S) uint8, the train split
    labels: np.ndarray,  # (N,) int in [0, num_classes)
    num_classes: int,
    params: DomainParams,
    seed: int,
    device: torch.device,
) -> DomainNet:
    """Adam on cross-entropy, batches drawn by index on the device with a seeded generator:
    bitwise reproducible on the CPU."""
    check_labels(labels, num_classes)
    _, channels, size, _ = images.shape
    torch.manual_seed(seed)  # weight init
    net = DomainNet(size, channels, num_classes, params.width, params.feature_dim).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=params.lr)
    x_all = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # (N, C, S, S) uint8
    y_all = torch.from_numpy(labels.astype(np.int64)).to(device)
    batches = torch.Generator(device=device).manual_seed(seed + 3)
    net.train()
    bar = tqdm(range(params.steps), desc="train domain network", unit="step", disable=None)
    for step in bar:
        index = torch.randint(len(x_all), (params.batch_size,), generator=batches, device=device)
        loss = F.cross_entropy(net(x_all[index]), y_all[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
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


def load_domain_network(weights: Path, config: dict[str, Any], device: torch.device) -> DomainNet:
    """The domain network the reference stage saved (safetensors + its config)."""
    from safetensors.torch import load_file

    net = DomainNet(**config)
    net.load_state_dict(load_file(weights))
    return net.to(device).eval().requires_grad_(False)


@torch.inference_mode()
def extract_features(
    backbone: Backbone,
    images: np.ndarray | torch.Tensor,  # (N, C, S, S) uint8
    batch_size: int,
    device: torch.device,
    desc: str = "features",
) -> np.ndarray:
    """(N, D) float64 features, in batches, in inference mode, on the device."""
    if images.dtype not in (np.uint8, torch.uint8):
        raise MetricsError(f"{desc}: expected uint8 images; got {images.dtype}")
    out = []
    bar = tqdm(total=len(images), desc=desc, unit="img", disable=None, leave=False)
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(np.ascontiguousarray(batch))
        out.append(backbone(batch.to(device)).double().cpu().numpy())
        bar.update(len(batch))
    bar.close()
    return np.concatenate(out)
