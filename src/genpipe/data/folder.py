"""A user's folder of PNG/JPEG images, flat or in class subfolders.

Labels come from the sorted names of the first-level subfolders; a flat folder
is unlabeled (-1). Hidden files and folders (names starting with '.') are
ignored. Every other file must be a readable PNG or JPEG of at most
``data.max_image_pixels`` pixels: bad files fail the stage, or are skipped and
counted with ``data.on_bad_file: skip``.

Symbolic links (to files or folders) are followed when their target lies inside
the folder: a link out of it, a broken link or a link that loops fails the stage,
naming the link and its target. ``data.path`` itself may be a link; the folder is
where it points. Links out are refused because the images end up in the prepared
dataset that DVC pushes and MLflow logs: a folder must not pull in files from
wherever its links point.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from genpipe.data.canonical import fit_image
from genpipe.errors import DataError, exception_text

log = logging.getLogger(__name__)

IMAGE_FORMATS = {"PNG", "JPEG", "MPO"}  # MPO: a camera JPEG with extra frames
SHOWN_BAD_FILES = 5
PILLOW_MAX_IMAGE_PIXELS = 89_478_485  # Image.MAX_IMAGE_PIXELS as Pillow ships it

UNREADABLE = "unreadable"
TOO_LARGE = "too_large"


@dataclass
class FolderImages:
    images: np.ndarray  # (N, C, S, S) uint8, already fitted
    labels: np.ndarray  # (N,) int64, -1 when unlabeled
    sources: list[str]  # paths relative to the folder, POSIX style
    class_names: list[str]
    skipped: list[str] = field(default_factory=list)


def list_files(root: Path) -> list[Path]:
    """Every non-hidden file under `root`, in a stable (sorted) order, following links that
    stay inside `root`'s target. Paths are as seen through the links (under `root`)."""
    real_root = root.resolve()
    files: list[Path] = []
    others: list[str] = []  # FIFOs, sockets, devices: no image can be read from them

    def walk(folder: Path, ancestors: tuple[Path, ...]) -> None:
        try:
            listed = sorted(folder.iterdir())
        except OSError as exc:  # a folder this user may not read, say
            where = folder.relative_to(root).as_posix() if folder != root else "."
            raise DataError(
                f"data.path {root}: expected folders this user can read; found {where}, "
                f"which cannot be listed ({exc.strerror or exception_text(exc)})"
            ) from None
        for path in listed:
            if path.name.startswith("."):
                continue
            if path.is_symlink():
                _check_link(path, root, real_root, ancestors)
            if path.is_dir():
                walk(path, (*ancestors, path.resolve()))
            elif path.is_file():
                files.append(path)
            else:
                others.append(path.relative_to(root).as_posix())

    walk(root, (real_root,))
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        log.warning("data.path %s: skipped %d entr%s that %s not a file or folder (a FIFO, "
                    "socket or device): %s", root, len(others),
                    "y" if len(others) == 1 else "ies", "is" if len(others) == 1 else "are",
                    shown)  # fmt: skip
    return sorted(files)


def _check_link(path: Path, root: Path, real_root: Path, ancestors: tuple[Path, ...]) -> None:
    """Refuse, in one line naming the link and its target, a link that is broken, leaves
    the folder or loops back to a folder that contains it."""
    link = path.relative_to(root).as_posix()
    try:
        target = path.resolve()
    except (RuntimeError, OSError):  # Python's "Symlink loop from ..."
        raise DataError(
            f"data.path {root}: expected links without loops; found {link}, a link that "
            "leads back to itself (a -> b -> a)"
        ) from None
    if not target.exists():
        raise DataError(
            f"data.path {root}: expected links to existing files or folders; "
            f"found {link} -> {target}, which does not exist"
        )
    if not target.is_relative_to(real_root):
        raise DataError(
            f"data.path {root}: expected links to point inside the folder ({real_root}); "
            f"found {link} -> {target}, outside it (copy or move the files into the folder)"
        )
    if target in ancestors:
        raise DataError(
            f"data.path {root}: expected links without loops; found {link} -> {target}, "
            "a folder that contains the link"
        )


def read_folder(
    root: Path,
    size: int,
    channels: int,
    on_bad_file: str = "fail",
    max_image_pixels: int = PILLOW_MAX_IMAGE_PIXELS,
    background: str = "white",
) -> FolderImages:
    """Every image under `root` fitted to (C, S, S), labelled by its first-level subfolder."""
    root = Path(root)
    if not root.is_dir():
        if root.is_symlink():
            what = f"a link to {root.resolve()}, which is not a directory"
        else:
            what = "a file" if root.exists() else "nothing"
        raise DataError(f"data.path: expected a directory of images; found {what} at {root}")
    files = list_files(root)
    class_names = _class_names(root, files)
    class_index = {name: i for i, name in enumerate(class_names)}
    images, labels, sources = [], [], []
    bad: dict[str, list[str]] = {UNREADABLE: [], TOO_LARGE: []}  # reason -> "path (detail)"
    skipped = []
    with _pixel_limit_off():
        for path in tqdm(files, desc="reading images", unit="img", leave=False, disable=None):
            rel = path.relative_to(root).as_posix()
            pixels = _read_image(path, size, channels, max_image_pixels, background)
            if isinstance(pixels, tuple):
                reason, detail = pixels
                bad[reason].append(f"{rel} ({detail})" if detail else rel)
                skipped.append(rel)
                continue
            images.append(pixels)
            labels.append(class_index[rel.split("/")[0]] if class_names else -1)
            sources.append(rel)

    if skipped:
        found = _describe_bad(bad, max_image_pixels)
        if on_bad_file == "fail":
            raise DataError(
                f"data.path {root}: expected only readable PNG or JPEG files of at most "
                f"data.max_image_pixels ({max_image_pixels:,}) pixels; found {found} "
                f"({'raise data.max_image_pixels to read them, or ' if bad[TOO_LARGE] else ''}"
                "set data.on_bad_file: skip to skip them)"
            )
        log.warning("skipped %s", found)
    if not images:
        raise DataError(f"data.path {root}: expected PNG or JPEG images; found none readable")
    return FolderImages(
        images=np.stack(images),
        labels=np.array(labels, dtype=np.int64),
        sources=sources,
        class_names=class_names,
        skipped=skipped,
    )


def _class_names(root: Path, files: list[Path]) -> list[str]:
    """The sorted first-level subfolders holding files; [] for a flat folder."""
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
    return class_names


def _describe_bad(bad: dict[str, list[str]], max_image_pixels: int) -> str:
    """'N unreadable or non-image file(s): a, b; M image(s) over ...: c (WxH)'."""
    what = {
        UNREADABLE: "unreadable or non-image file(s)",
        TOO_LARGE: f"image(s) over data.max_image_pixels ({max_image_pixels:,} pixels)",
    }
    parts = []
    for reason, names in bad.items():
        if names:
            shown = ", ".join(names[:SHOWN_BAD_FILES])
            shown += ", ..." if len(names) > SHOWN_BAD_FILES else ""
            parts.append(f"{len(names)} {what[reason]}: {shown}")
    return "; ".join(parts)


@contextmanager
def _pixel_limit_off() -> Iterator[None]:
    """Lift Pillow's global decompression-bomb limit: `_read_image` applies
    data.max_image_pixels itself, from the header, before anything is decoded."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _read_image(
    path: Path, size: int, channels: int, max_image_pixels: int, background: str
) -> np.ndarray | tuple[str, str]:
    """The fitted (C, S, S) pixels, or (reason, detail) if the file is not a readable
    PNG/JPEG of at most `max_image_pixels` pixels."""
    try:
        with Image.open(path) as image:
            if image.format not in IMAGE_FORMATS:
                return UNREADABLE, ""
            width, height = image.size
            if width * height > max_image_pixels:
                return TOO_LARGE, f"{width}x{height}"
            image.load()  # decodes fully: truncated or corrupt data raises here
            if image.mode.startswith("I"):
                # 16-bit grey PNG: convert("L") would clip every value above 255 to white
                image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
            return fit_image(image, size, channels, background)
    except (OSError, SyntaxError, ValueError):
        return UNREADABLE, ""
