"""The prepared data's train/test split, read once: the images and labels of each split,
as the reference, train and evaluate stages use them, and the label check that every use
of the labels (the domain backbone, the conditional GAN) shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genpipe.data.canonical import Prepared, read_prepared
from genpipe.errors import DataError


@dataclass
class Split:
    train: np.ndarray  # (N, C, S, S) uint8, in memory
    test: np.ndarray  # (M, C, S, S) uint8, in memory
    train_labels: np.ndarray  # (N,) int64, -1 when unlabeled
    test_labels: np.ndarray  # (M,) int64, -1 when unlabeled
    num_classes: int  # as fetch counted them (info.json)
    directory: Path  # data/prepared, for messages


def read_split(prepared_dir: Path) -> Split:
    """data/prepared's images and labels, split by the manifest's `split` column."""
    return split_of(read_prepared(prepared_dir), Path(prepared_dir))


def split_of(prepared: Prepared, directory: Path) -> Split:
    """A prepared dataset's images and labels (read from `directory`, or made in memory),
    split by the manifest's `split` column."""
    split = prepared.manifest["split"].to_numpy()
    labels = prepared.manifest["label"].to_numpy()
    images = np.asarray(prepared.images)  # (N, C, S, S) uint8, memory-mapped
    train, test = split == "train", split == "test"
    return Split(images[train], images[test], labels[train], labels[test],
                 int(prepared.info.get("num_classes", 0)), directory)  # fmt: skip


def require_images(split: Split, *, test: bool = False) -> None:
    """The train split (and the test split, with `test`) must hold images."""
    if len(split.train) == 0 or (test and len(split.test) == 0):
        both = " and the test split" * test
        raise DataError(
            f"{split.directory}: expected images in the train split{both}; found "
            f"{len(split.train)} train and {len(split.test)} test"
        )


def class_shares(labels: np.ndarray | None, key: str, count: int | None = None,
                 hint: str = "") -> list[float]:  # fmt: skip
    """The classes' shares of `labels`, for `key`, a param that needs labeled data: a label
    for each of `count` images (when given), every one in 0..K-1 and at least 2 classes, or
    one line saying what was found (and `hint`, what to do instead)."""
    if labels is None or (count is not None and len(labels) != count):
        found = "none" if labels is None else f"{len(labels):,}"
        each = "each train image" if count is None else f"each of the {count:,} train images"
        raise DataError(f"{key}: expected a label for {each}; got {found}")
    unlabeled = int((labels < 0).sum())
    n = len(np.unique(labels))
    if unlabeled or n < 2:
        found = f"{unlabeled:,} unlabeled images" if unlabeled else f"{n} class{'es' * (n != 1)}"
        raise DataError(
            f"{key}: expected labeled train images in at least 2 classes (a folder source "
            f"labels images by their first-level subfolder); found {found}{hint}"
        )
    classes = int(labels.max()) + 1
    return (np.bincount(labels, minlength=classes) / len(labels)).tolist()
