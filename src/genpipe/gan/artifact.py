"""The GAN's weights directory (models/gan/weights/): what train@gan writes and what
evaluate@gan, register@gan and the served model read. Tensors only, beside a config.json
that rebuilds the networks without params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from genpipe.fileio import write_json
from genpipe.gan.network import Generator
from genpipe.params.configs import GeneratorConfig
from genpipe.weights import build_network, load_weights, read_config, save_weights

CONFIG = "config.json"
GENERATOR_EMA = "generator_ema.safetensors"  # what evaluation and serving use
GENERATOR = "generator.safetensors"
DISCRIMINATOR = "discriminator.safetensors"
STAGE = "train@gan"


def save_gan(directory: Path, netG: nn.Module, netD: nn.Module, ema: nn.Module,
             config: dict[str, Any]) -> None:  # fmt: skip
    """Into `directory`: the three networks and the config that rebuilds them."""
    save_weights(ema, Path(directory) / GENERATOR_EMA)
    save_weights(netG, Path(directory) / GENERATOR)
    save_weights(netD, Path(directory) / DISCRIMINATOR)
    write_json(Path(directory) / CONFIG, config)


def gan_config_of(directory: Path) -> dict[str, Any]:
    """config.json as train@gan wrote it, with a one-line error for anything else."""
    return read_config(Path(directory) / CONFIG, STAGE, "generator")


def load_generator(directory: Path, device: torch.device) -> Generator:
    """The EMA generator, in eval mode on `device`, gradients off."""
    config = gan_config_of(directory)
    netG = build_network(Generator, config["generator"], Path(directory) / CONFIG, STAGE,
                         GeneratorConfig, "generator")  # fmt: skip
    load_weights(netG, Path(directory) / GENERATOR_EMA, STAGE)
    return netG.to(device).eval().requires_grad_(False)


load_served = load_generator  # what serving.py loads for this model


def signature(directory: Path) -> tuple[Any, Any]:
    """The served model's MLflow signature and input example: seeds (and a conditional
    generator's optional labels) in, uint8 images (N, C, S, S) out."""
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    config = gan_config_of(directory)
    c, s = config["channels"], config["image_size"]
    images = Schema([TensorSpec(np.dtype(np.uint8), (-1, c, s, s))])
    columns = [ColSpec("long", "seed")]
    if config["generator"].get("class_weights"):
        columns.append(ColSpec("long", "label", required=False))
    example = pd.DataFrame({"seed": np.array([0, 1], dtype=np.int64)})
    return ModelSignature(inputs=Schema(columns), outputs=images), example
