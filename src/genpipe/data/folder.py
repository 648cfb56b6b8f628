"""A user's folder of PNG/JPEG images, flat or in class subfolders.

Labels come from the sorted names of the first-level subfolders; a flat folder
is unlabeled (-1). Hidden files and folders (names starting with '.') are
ignored. Every other file must be a readable PNG or JPEG: bad files fail the
stage, or are skipped and counted with ``data.on_bad_file: skip``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from genpipe.data.canonical import fit_image
from genpipe.errors import DataError

log = logging.getLogger(__name__)

IMAGE_FORMATS = {"PNG", "JPEG", "MPO"}  # MPO: a camera JPEG with extra frames
SHOWN_BAD_FILES = 5


@dataclass
class FolderImages:
    images: np.ndarray  # (N, C, S, S) uint8, already fitted
    labels: np.ndarray  # (N,) int64, -1 when unlabeled
    sources: list[str]  # paths relative to the folder, POSIX style
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)


def list_files(root: Path) -> list[Path]:
    """Every non-hidden file under `root`, in a stable (sorted) order."""
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        files.append(path)
    return files


def read_folder(root: Path, size: int, channels: int, on_bad_file: str = "fail") -> FolderImages:
    root = Path(root)
    if not root.is_dir():
        what = "a file" if root.exists() else "nothing"
        raise DataError(f"data.path: expected a directory of images; found {what} at {root}")
    files = list_files(root)
    top_level = [f for f in files if f.parent == root]
    class_names = sorted({f.relative_to(root).parts[0] for f in files if f.parent != root})
    if class_names and top_level:
        raise DataError(
            f"data.path {root}: expected images either all in class subfolders or none; "
            f"found {len(top_level)} files at the top level (e.g. {top_level[0].name}) "
            f"beside {len(class_names)} subfolders"
        )
    if not files:
        raise DataError(f"data.path {root}: expected PNG or JPEG images; found no files")

    class_index = {name: i for i, name in enumerate(class_names)}
    images, labels, sources, bad = [], [], [], []
    for path in tqdm(files, desc="reading images", unit="img", leave=False, disable=None):
        rel = path.relative_to(root).as_posix()
        pixels = _read_image(path, size, channels)
        if pixels is None:
            bad.append(rel)
            continue
        images.append(pixels)
        labels.append(class_index[rel.split("/")[0]] if class_names else -1)
        sources.append(rel)

    if bad:
        shown = ", ".join(bad[:SHOWN_BAD_FILES]) + (", ..." if len(bad) > SHOWN_BAD_FILES else "")
        if on_bad_file == "fail":
            raise DataError(
                f"data.path {root}: expected only readable PNG or JPEG files; found "
                f"{len(bad)} unreadable or non-image file(s): {shown} "
                "(set data.on_bad_file: skip to skip them)"
            )
        log.warning("skipped %d unreadable or non-image file(s): %s", len(bad), shown)
    if not images:
        raise DataError(f"data.path {root}: expected PNG or JPEG images; found none readable")
    return FolderImages(
        images=np.stack(images),
        labels=np.array(labels, dtype=np.int64),
        sources=sources,
        class_names=class_names,
        skipped=bad,
    )


def _read_image(path: Path, size: int, channels: int) -> np.ndarray | None:
    """The fitted (C, S, S) pixels, or None if the file is not a readable PNG/JPEG."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.format not in IMAGE_FORMATS:
                    return None
                image.load()  # decodes fully: truncated or corrupt data raises here
                if image.mode.startswith("I"):
                    # 16-bit grey PNG: convert("L") would clip every value above 255 to white
                    image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
                return fit_image(image, size, channels)
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ):
        return None
