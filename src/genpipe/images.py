"""The one conversion between uint8 images and the [-1, 1] floats the networks see, and
image grids for people."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

GRID_SAMPLES = 64  # a GAN's grids (train and evaluate): 8 x 8 samples from fixed noise


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [-1, 1], on the images' device."""
    return images.float().div(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float (N, C, H, W) -> uint8 numpy, rounded and clamped."""
    return x.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def unit_to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float numpy -> uint8, rounded as to_uint8 rounds."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, rows: int, min_tile: int = 32) -> Image.Image:
    """(N, C, S, S) uint8 -> one PIL image, rows x ceil(N / rows), 2 px gaps."""
    n, c, s, _ = images.shape
    scale = max(1, -(-min_tile // s))
    cols = -(-n // rows)
    tile = s * scale
    canvas = np.zeros((rows * (tile + 2) + 2, cols * (tile + 2) + 2, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, cols)
        big = image.transpose(1, 2, 0).repeat(scale, axis=0).repeat(scale, axis=1)
        canvas[2 + r * (tile + 2) : 2 + r * (tile + 2) + tile,
               2 + col * (tile + 2) : 2 + col * (tile + 2) + tile] = big  # fmt: skip
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def pairs_grid(originals: np.ndarray, reconstructions: np.ndarray, per_row: int = 8) -> Image.Image:
    """Rows of `per_row` originals, each above their reconstructions; (N, C, S, S) uint8."""
    pairs = [
        block
        for i in range(0, len(originals), per_row)
        for block in (originals[i : i + per_row], reconstructions[i : i + per_row])
    ]
    return image_grid(np.concatenate(pairs), rows=len(pairs))
