"""The data sources and `fetch_dataset`, which turns any of them into the canonical format.

The official sources' mirrors and SHA-256 pins below are defaults: params
(`data.mirrors`, `data.sha256`) override them, e.g. to use an internal mirror. With
`data.local` their official files are read in place from the directory `data.path`
instead (an air-gapped copy, a distribution's package), verified by the same pins.

Each file is pinned by the SHA-256 of its archive bytes and, where a real copy
established it, of its decompressed payload: a file passes when either matches, so a
copy compressed again (Debian recompresses Fashion-MNIST) is accepted for the same data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genpipe.data import download, formats
from genpipe.data.canonical import Prepared, build_manifest, content_split, fit_array, image_sha1
from genpipe.data.download import Pin
from genpipe.data.folder import read_folder
from genpipe.data.origins import MIRRORS
from genpipe.errors import DataError, ParamsError
from genpipe.params.schema import DataParams

log = logging.getLogger(__name__)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR_DIR = "cifar-10-batches-bin"
CIFAR_BATCHES = {
    "train": [f"{CIFAR_DIR}/data_batch_{i}.bin" for i in range(1, 6)],
    "test": [f"{CIFAR_DIR}/test_batch.bin"],
}


@dataclass(frozen=True)
class RemoteSource:
    files: dict[str, Pin]  # official file name -> its pinned SHA-256 sums
    mirrors: tuple[str, ...]  # base URLs, tried in order
    class_names: tuple[str, ...]


REMOTE_SOURCES = {
    "mnist": RemoteSource(
        files={
            "train-images-idx3-ubyte.gz": Pin(
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
            ),
            "train-labels-idx1-ubyte.gz": Pin(
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
            ),
            "t10k-images-idx3-ubyte.gz": Pin(
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
            ),
            "t10k-labels-idx1-ubyte.gz": Pin(
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
            ),
        },
        mirrors=MIRRORS["mnist"],
        class_names=tuple("0123456789"),
    ),
    # content sums: computed from Debian's dataset-fashion-mnist (recompressed, same IDX
    # payload; 60,000/10,000 images, 6,000 a class, first train labels 9 0 0 3 0 2 7 2 5 5)
    # and equal to those other projects publish for the upstream files decompressed
    "fashion-mnist": RemoteSource(
        files={
            "train-images-idx3-ubyte.gz": Pin(
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                content="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            "train-labels-idx1-ubyte.gz": Pin(
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                content="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            "t10k-images-idx3-ubyte.gz": Pin(
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                content="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            "t10k-labels-idx1-ubyte.gz": Pin(
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                content="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        },
        mirrors=MIRRORS["fashion-mnist"],
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "cifar10": RemoteSource(
        files={
            "cifar-10-binary.tar.gz": Pin(
                "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
            ),
        },
        mirrors=MIRRORS["cifar10"],
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
    ),
}


@dataclass(frozen=True)
class RawImages:
    images: np.ndarray  # (N, C, H, W) uint8, the source's own size
    labels: np.ndarray  # (N,) int64, -1 when unlabeled
    sources: list[str]  # per-image provenance: file name (and record index)
    class_names: list[str]
    splits: np.ndarray | None = None  # the official split, or None to split by content
    skipped: int = 0  # bad files skipped (folder source)


def check_source_params(data: DataParams) -> None:
    """Params rules that need the source registry; run before anything is written."""
    remote = REMOTE_SOURCES.get(data.source)
    known = sorted(remote.files) if remote else []
    for name in data.sha256:
        if name not in known:
            allowed = (
                ", ".join(known) if known else f"none: source {data.source!r} downloads nothing"
            )
            raise ParamsError(f"data.sha256.{name}: unknown file (allowed: {allowed})")


def fetch_dataset(data: DataParams, cache: Path | None = None) -> Prepared:
    """Fetch `data.source` and convert it to the canonical format in memory."""
    check_source_params(data)
    if data.source == "digits":
        raw = load_digits()
    elif data.source == "folder":
        raw = load_folder(data)
    else:
        files = local_files(data) if data.local else fetch_files(data, cache)
        if data.source == "cifar10":
            raw = load_cifar10(files)
        else:
            raw = load_idx(files, REMOTE_SOURCES[data.source].class_names)

    images = fit_array(raw.images, data.image_size, data.channels)
    sha1 = image_sha1(images)
    splits = raw.splits if raw.splits is not None else content_split(sha1, data.test_fraction)
    manifest = build_manifest(images, raw.labels, splits, raw.sources)
    counts = manifest["split"].value_counts()
    info = {
        "source": data.source,
        "class_names": raw.class_names,
        "num_classes": len(raw.class_names),
        "shape": list(images.shape),
        "counts": {split: int(counts.get(split, 0)) for split in ("train", "test")},
        "skipped_files": raw.skipped,
    }
    return Prepared(images=images, manifest=manifest, info=info)


def source_pins(data: DataParams) -> dict[str, Pin]:
    """Each official file's pin; a `data.sha256` override is the file's own SHA-256 (what
    `sha256sum` prints) and replaces both built-in sums of that file."""
    pins = REMOTE_SOURCES[data.source].files
    return {name: Pin(data.sha256[name]) if name in data.sha256 else pin
            for name, pin in pins.items()}  # fmt: skip


def fetch_files(data: DataParams, cache: Path | None = None) -> dict[str, Path]:
    """Download (or reuse from the cache) every file of a remote source, verified."""
    mirrors = data.mirrors or REMOTE_SOURCES[data.source].mirrors
    dest = (cache or download.cache_dir()) / data.source
    opts = data.download
    return {
        name: download.download(
            name,
            pin,
            mirrors,
            dest,
            timeout=opts.timeout,
            retries=opts.retries,
            backoff=opts.backoff,
        )
        for name, pin in source_pins(data).items()
    }


def local_files(data: DataParams) -> dict[str, Path]:
    """Every official file of the source, read in place from the directory `data.path`
    (nothing downloaded, nothing copied), verified by archive or content sum."""
    folder = Path(data.path)
    pins = source_pins(data)
    missing = [name for name in pins if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"data.path: expected {data.source}'s official files in {folder}; "
            f"missing {', '.join(missing)}"
        )
    for name, pin in pins.items():
        if problem := download.mismatch(folder / name, pin):
            raise DataError(f"{folder / name}: {problem}")
    log.info("read %d verified %s files from %s", len(pins), data.source, folder)
    return {name: folder / name for name in pins}


def load_digits() -> RawImages:
    """scikit-learn's bundled 8x8 digits, 0-16 rescaled to 0-255."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    return RawImages(
        images=images,
        labels=digits.target.astype(np.int64),
        sources=[f"sklearn-digits#{i}" for i in range(len(images))],
        class_names=[str(c) for c in digits.target_names],
    )


def load_idx(paths: dict[str, Path], class_names: tuple[str, ...]) -> RawImages:
    """MNIST-style IDX files with the official train/test split."""
    parts = {}
    for split, (images_file, labels_file) in IDX_FILES.items():
        images, labels = formats.read_idx_pair(paths[images_file], paths[labels_file])
        parts[split] = (images, labels, [f"{images_file}#{i}" for i in range(len(images))])
    return _official_split(parts, class_names)


def load_cifar10(paths: dict[str, Path]) -> RawImages:
    """The CIFAR-10 binary version with its official split."""
    archive = paths["cifar-10-binary.tar.gz"]
    members = formats.read_tar_members(archive, [m for ms in CIFAR_BATCHES.values() for m in ms])
    parts = {}
    for split, names in CIFAR_BATCHES.items():
        batches = [formats.parse_cifar_batch(name, members[name]) for name in names]
        sources = [
            f"{name}#{i}" for name, b in zip(names, batches, strict=True) for i in range(len(b[1]))
        ]
        images = np.concatenate([b[0] for b in batches])
        parts[split] = (images, np.concatenate([b[1] for b in batches]), sources)
    return _official_split(parts, REMOTE_SOURCES["cifar10"].class_names)


def _official_split(
    parts: dict[str, tuple[np.ndarray, np.ndarray, list[str]]], class_names: tuple[str, ...]
) -> RawImages:
    """Train then test, each split as (images, labels, sources)."""
    order = ("train", "test")
    return RawImages(
        images=np.concatenate([parts[s][0] for s in order]),
        labels=np.concatenate([parts[s][1] for s in order]),
        sources=[source for s in order for source in parts[s][2]],
        class_names=list(class_names),
        splits=np.concatenate([np.full(len(parts[s][0]), s) for s in order]),
    )


def load_folder(data: DataParams) -> RawImages:
    folder = read_folder(
        Path(data.path),
        data.image_size,
        data.channels,
        data.on_bad_file,
        max_image_pixels=data.max_image_pixels,
        background=data.background,
    )
    return RawImages(
        images=folder.images,
        labels=folder.labels,
        sources=folder.sources,
        class_names=folder.class_names,
        skipped=len(folder.skipped),
    )
