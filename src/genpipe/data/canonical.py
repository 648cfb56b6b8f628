"""The canonical dataset: images.npy, manifest.parquet and info.json in one directory.

- ``images.npy``: uint8, (N, C, H, W), memory-mappable.
- ``manifest.parquet``: one row per image (see ``MANIFEST_COLUMNS``).
- ``info.json``: the source, the class names and the counts.

Splits are a function of content (the SHA-1 of the pixel bytes) unless the
source has an official split, so adding images never moves existing ones
between train and test, and identical images always share a split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from genpipe.errors import DataError
from genpipe.fileio import atomic_dir, sha256_files

IMAGES_FILE = "images.npy"
MANIFEST_FILE = "manifest.parquet"
INFO_FILE = "info.json"

# column -> pandas dtype family, in file order
MANIFEST_COLUMNS = {
    "index": "int64",
    "split": "str",
    "label": "int64",
    "sha1": "str",
    "mean": "float64",
    "std": "float64",
    "min": "int64",
    "max": "int64",
    "source": "str",
}
SPLITS = ("train", "test")
BACKGROUNDS = {"white": 255, "black": 0}  # data.background -> grey level under transparency
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass(frozen=True)
class Prepared:
    images: np.ndarray  # (N, C, H, W) uint8
    manifest: pd.DataFrame  # one row per image, MANIFEST_COLUMNS
    info: dict[str, Any]  # source, class_names, shape, counts


def fit_image(
    image: Image.Image, size: int, channels: int, background: str = "white"
) -> np.ndarray:
    """Composite any transparency onto `background`, convert to `channels`, centre-crop to
    a square and resize to `size`: (C, S, S) uint8."""
    image = ImageOps.exif_transpose(image)
    image = flatten_alpha(image, background)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        # crops to the target aspect ratio around the centre, then resizes (antialiased)
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1).copy()


def flatten_alpha(image: Image.Image, background: str = "white") -> Image.Image:
    """An image with transparency (RGBA, LA, PA, or a palette, grey or RGB image with a
    transparent colour) composited onto an opaque `background` ("white" or "black") as RGB;
    any other image unchanged. Converting to L or RGB would otherwise drop the alpha,
    keeping whatever colour lies under transparent pixels."""
    if image.mode not in ALPHA_MODES and "transparency" not in image.info:
        return image  # opaque: untouched, so its pixels are exactly as before
    rgba = image.convert("RGBA")  # a transparent palette entry or colour becomes alpha 0
    level = BACKGROUNDS[background]
    canvas = Image.new("RGBA", rgba.size, (level, level, level, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def fit_array(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """`fit_image` over an (N, C, H, W) uint8 array; a no-op when the shape already fits."""
    if images.shape[1:] == (channels, size, size):
        return np.ascontiguousarray(images)
    out = np.empty((len(images), channels, size, size), dtype=np.uint8)
    for i, pixels in enumerate(images):
        mode_pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
        out[i] = fit_image(Image.fromarray(mode_pixels), size, channels)
    return out


def image_sha1(images: np.ndarray) -> list[str]:
    """SHA-1 of each image's pixel bytes (C, H, W, C-order)."""
    return [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images]


def content_split(sha1: list[str], test_fraction: float) -> np.ndarray:
    """'test' for images whose hash falls in the lowest `test_fraction` of the hash space."""
    position = np.array([int(h[:15], 16) for h in sha1], dtype=np.float64) / 16.0**15
    return np.where(position < test_fraction, "test", "train")


def build_manifest(
    images: np.ndarray, labels: np.ndarray, splits: np.ndarray, sources: list[str]
) -> pd.DataFrame:
    n = len(images)
    flat = images.reshape(n, -1)
    mean = np.empty(n)
    std = np.empty(n)
    for start in range(0, n, 4096):  # chunks keep the float64 copy small
        chunk = flat[start : start + 4096].astype(np.float64)
        mean[start : start + 4096] = chunk.mean(axis=1)
        std[start : start + 4096] = chunk.std(axis=1)
    manifest = pd.DataFrame(
        {
            "index": np.arange(n, dtype=np.int64),
            "split": pd.array(splits, dtype="str"),
            "label": np.asarray(labels, dtype=np.int64),
            "sha1": pd.array(image_sha1(images), dtype="str"),
            "mean": mean,
            "std": std,
            "min": flat.min(axis=1, initial=255).astype(np.int64),
            "max": flat.max(axis=1, initial=0).astype(np.int64),
            "source": pd.array(sources, dtype="str"),
        }
    )
    return manifest


def write_prepared(prepared: Prepared, out_dir: Path) -> None:
    """Write the three files into `out_dir`, replacing it only once all are complete."""
    with atomic_dir(Path(out_dir)) as tmp:
        np.save(tmp / IMAGES_FILE, prepared.images, allow_pickle=False)
        prepared.manifest.to_parquet(tmp / MANIFEST_FILE, index=False, engine="pyarrow")
        (tmp / INFO_FILE).write_text(json.dumps(prepared.info, indent=2, sort_keys=True) + "\n")


def read_prepared(directory: Path) -> Prepared:
    """Open a prepared dataset; images are memory-mapped, never unpickled."""
    directory = Path(directory)
    for name in (IMAGES_FILE, MANIFEST_FILE, INFO_FILE):
        if not (directory / name).is_file():
            raise DataError(
                f"{directory / name}: expected the fetch stage's output; found no such file "
                "(run `dvc repro fetch`)"
            )
    try:
        images = np.load(directory / IMAGES_FILE, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{directory / IMAGES_FILE}: expected a .npy array; {exc}") from None
    try:
        manifest = pd.read_parquet(directory / MANIFEST_FILE)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(
            f"{directory / MANIFEST_FILE}: expected the fetch stage's manifest (Parquet); "
            f"could not read it ({str(exc).splitlines()[0][:200]}) (run `dvc repro --force fetch`)"
        ) from None
    try:
        info = json.loads((directory / INFO_FILE).read_text())
    except ValueError as exc:
        raise DataError(
            f"{directory / INFO_FILE}: expected the fetch stage's info as JSON; {exc} "
            "(run `dvc repro --force fetch`)"
        ) from None
    return Prepared(images=images, manifest=manifest, info=info)


def prepared_sha256(directory: Path) -> str:
    """SHA-256 of the prepared data (images.npy, then manifest.parquet): what runs, model
    versions and checkpoints are tagged with."""
    return sha256_files(Path(directory) / name for name in (IMAGES_FILE, MANIFEST_FILE))
