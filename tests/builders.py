"""Builders of tiny, valid (or deliberately broken) dataset files for tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# a copy of ../shared/reference/inception_fid_state_dict_keys.json: the entries of the state
# dict pytorch-fid and torch-fidelity load the standard FID Inception weights into
REFERENCE_KEYS = Path(__file__).parent / "data" / "inception_fid_state_dict_keys.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes, gzip-compressed (mtime 0: reproducible bytes)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 + array.ndim if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes(), mtime=0)


def random_images(n: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, channels, size, size) uint8 noise: every image distinct and far from blank."""
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), np.uint8)


def balanced_labels(n: int, classes: int = 10) -> np.ndarray:
    return (np.arange(n) % classes).astype(np.uint8)


def idx_dataset(n_train: int = 40, n_test: int = 20, size: int = 28) -> dict[str, bytes]:
    """The four MNIST-style files: file name -> gzip bytes."""
    return {
        "train-images-idx3-ubyte.gz": idx_bytes(random_images(n_train, 1, size, seed=1)[:, 0]),
        "train-labels-idx1-ubyte.gz": idx_bytes(balanced_labels(n_train)),
        "t10k-images-idx3-ubyte.gz": idx_bytes(random_images(n_test, 1, size, seed=2)[:, 0]),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(balanced_labels(n_test)),
    }


def cifar_batch(n: int, seed: int) -> bytes:
    """n CIFAR-10 binary records: a label byte then 3x32x32 pixels."""
    images = random_images(n, 3, 32, seed=seed).reshape(n, -1)
    labels = balanced_labels(n)[:, None]
    return np.concatenate([labels, images], axis=1).tobytes()


def tar_gz(
    members: dict[str, bytes],
    links: dict[str, str] | None = None,
    hardlinks: dict[str, str] | None = None,
) -> bytes:
    """A tar.gz of regular files (name -> bytes), plus symlinks/hardlinks (name -> target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for kind, mapping in ((tarfile.SYMTYPE, links), (tarfile.LNKTYPE, hardlinks)):
            for name, target in (mapping or {}).items():
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = target
                tar.addfile(info)
    return buffer.getvalue()


def cifar_archive(per_batch: int = 10, test: int = 10) -> bytes:
    root = "cifar-10-batches-bin"
    members = {f"{root}/data_batch_{i}.bin": cifar_batch(per_batch, seed=i) for i in range(1, 6)}
    members[f"{root}/test_batch.bin"] = cifar_batch(test, seed=99)
    members[f"{root}/batches.meta.txt"] = b"airplane\nautomobile\n"
    return tar_gz(members)


def write_png(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Path:
    """A noise PNG of `size` (width, height) in `mode` ('L' or 'RGB')."""
    channels = 1 if mode == "L" else 3
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], channels), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)
    return path


def state_dict_entries() -> list[dict]:
    """The reference entries: key, shape, dtype."""
    return json.loads(REFERENCE_KEYS.read_text())


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every entry, random but sane: He-scaled conv weights, running_var > 0."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for entry in state_dict_entries():
        key, shape = entry["key"], tuple(entry["shape"])
        if entry["dtype"] == "int64":  # num_batches_tracked
            state[key] = torch.tensor(int(torch.randint(1, 1000, (), generator=g)))
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("bn.weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 4:  # conv: keeps the activations' scale through the ReLUs
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
        else:  # bn bias, running_mean, fc
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def train_domain(images, labels, num_classes, params, seed, device):
    """metrics.domain.train_domain_network with the numbers of a DomainParams."""
    from genpipe.metrics.domain import train_domain_network

    return train_domain_network(
        images, labels, num_classes, steps=params.steps, batch_size=params.batch_size,
        lr=params.lr, width=params.width, feature_dim=params.feature_dim, seed=seed,
        device=device,
    )  # fmt: skip


# --- a reference on real data, without a network ------------------------------------------


def pixels(images: torch.Tensor) -> torch.Tensor:
    """A feature backbone: the pixels themselves, as floats."""
    return images.flatten(1).float()


def digits_split():
    """sklearn's digits as a Split: every fifth image in the test split (360 of 1797)."""
    from sklearn.datasets import load_digits

    from genpipe.data.split import Split

    data = load_digits()
    images = np.round(data.images * (255 / 16)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    test = np.arange(len(images)) % 5 == 0
    return Split(images[~test], images[test], data.target[~test], data.target[test], 10,
                 Path("prepared"))  # fmt: skip


def pixel_reference(split, params):
    """The reference stage's Reference of `split` with the pixels as features: the test
    split's statistics, a floor (the FID of as many train images), the memorisation check's
    train features. The GAN's evaluate_gan scores against it."""
    from genpipe.metrics.compare import (
        frechet_to_reference,
        kid_subset_size,
        reference_from_features,
    )
    from genpipe.metrics.features import extract_features
    from genpipe.reference import train_checked

    cpu = torch.device("cpu")
    n = len(split.test)
    info = {"num_samples": n, "kid_subset_size": kid_subset_size(1000, n, n)}
    reference = reference_from_features(extract_features(pixels, split.test, 256, cpu), info)
    floor = frechet_to_reference(reference, extract_features(pixels, split.train[:n], 256, cpu))
    info["floor"] = {"fid": floor}
    train_checked(reference, params, split, pixels, cpu)
    return reference
