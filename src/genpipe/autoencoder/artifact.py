"""The autoencoder's weights directory (models/autoencoder/weights/): what
train@autoencoder writes and what evaluate@autoencoder, register@autoencoder and the served
model read. Tensors only, beside a config.json that rebuilds the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from genpipe.autoencoder.network import AutoEncoder
from genpipe.fileio import write_json
from genpipe.params.configs import AutoEncoderConfig
from genpipe.weights import build_network, load_weights, read_config, save_weights

CONFIG = "config.json"
WEIGHTS = "autoencoder.safetensors"
STAGE = "train@autoencoder"


def save_autoencoder(directory: Path, net: nn.Module, config: dict[str, Any]) -> None:
    """Into `directory`: the network and the config that rebuilds it."""
    save_weights(net, Path(directory) / WEIGHTS)
    write_json(Path(directory) / CONFIG, config)


def load_autoencoder(directory: Path, device: torch.device) -> AutoEncoder:
    """The autoencoder, in eval mode on `device`, gradients off."""
    config = read_config(Path(directory) / CONFIG, STAGE, "autoencoder")
    net = build_network(AutoEncoder, config["autoencoder"], Path(directory) / CONFIG, STAGE,
                        AutoEncoderConfig, "autoencoder")  # fmt: skip
    load_weights(net, Path(directory) / WEIGHTS, STAGE)
    return net.to(device).eval().requires_grad_(False)


load_served = load_autoencoder  # what serving.py loads for this model


def signature(directory: Path) -> tuple[Any, Any]:
    """The served model's MLflow signature and input example: uint8 images (N, C, S, S) in,
    their reconstructions out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    config = read_config(Path(directory) / CONFIG, STAGE, "autoencoder")
    c, s = config["channels"], config["image_size"]
    images = Schema([TensorSpec(np.dtype(np.uint8), (-1, c, s, s))])
    return ModelSignature(inputs=images, outputs=images), np.zeros((2, c, s, s), np.uint8)
