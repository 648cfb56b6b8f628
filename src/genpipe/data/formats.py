"""Readers for the on-disk formats of the classic datasets: IDX (MNIST) and the
CIFAR-10 binary version inside its tar.gz. Never the pickled CIFAR version."""

from __future__ import annotations

import gzip
import math
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from genpipe.errors import DataError

IDX_UBYTE = 0x08
CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + 3x32x32 pixels


# The largest official payload is CIFAR-10's tar, about 185 MB; MNIST's train images are
# 47 MB. Anything that inflates past this is a decompression bomb, not a dataset.
MAX_GUNZIP_BYTES = 1 << 30
GUNZIP_CHUNK = 1 << 20


def gunzip_chunks(path: Path, limit: int | None = None) -> Iterator[bytes]:
    """The decompressed payload of a gzip file in 1 MiB chunks, refused past `limit` bytes
    (default MAX_GUNZIP_BYTES)."""
    limit = MAX_GUNZIP_BYTES if limit is None else limit
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(GUNZIP_CHUNK):  # at most one chunk inflated at a time
                total += len(chunk)
                if total > limit:
                    raise DataError(
                        f"{path.name}: expected at most {limit} bytes once decompressed; "
                        "found more (a decompression bomb?)"
                    )
                yield chunk
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{path.name}: expected a complete gzip file; found a truncated or corrupt one ({exc})"
        ) from None


def read_gzip(path: Path, limit: int | None = None) -> bytes:
    return b"".join(gunzip_chunks(path, limit))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions, gzip-compressed."""
    raw = read_gzip(path)
    want = f"0x000008{ndim:02x}"
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != IDX_UBYTE or raw[3] != ndim:
        found = f"0x{raw[:4].hex()}" if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DataError(
            f"{path.name}: expected an IDX file of unsigned bytes with {ndim} dimensions "
            f"(magic {want}); found {found}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path.name}: expected a {header}-byte IDX header; found {len(raw)} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = math.prod(dims)  # exact: np.prod wraps around in int64 for huge dims
    if len(raw) - header != size:
        raise DataError(
            f"{path.name}: expected {size} bytes of data for shape {dims}; "
            f"found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, H, W) images and (N,) labels from an IDX images/labels pair."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has "
            f"{len(labels)} labels; expected equal counts"
        )
    return images[:, None], labels.astype(np.int64)


def check_member(archive: str, member: tarfile.TarInfo) -> None:
    """Refuse absolute paths, '..', links and special files: nothing may land outside."""
    path = PurePosixPath(member.name)
    drive = bool(path.parts) and ":" in path.parts[0]  # C:\... on Windows
    if path.is_absolute() or member.name.startswith(("/", "\\")) or drive:
        problem = "an absolute path"
    elif ".." in path.parts:
        problem = "a '..' path component"
    elif member.issym() or member.islnk():
        problem = f"a link to {member.linkname!r}"
    elif not (member.isfile() or member.isdir()):
        problem = "a special file"
    else:
        return
    raise DataError(
        f"{archive}: expected only plain files and folders inside the archive; "
        f"member {member.name!r} is {problem}"
    )


def read_tar_members(path: Path, names: Iterable[str]) -> dict[str, bytes]:
    """Read the named members of a tar archive into memory, after checking every member."""
    wanted = set(names)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                check_member(path.name, member)
            for member in members:
                if member.isfile() and member.name in wanted:
                    found[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{path.name}: expected a readable tar archive; found a corrupt one ({exc})"
        ) from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise DataError(f"{path.name}: expected members {missing}; found none of that name")
    return found


def parse_cifar_batch(name: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) images and (N,) labels from one CIFAR-10 binary batch."""
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise DataError(
            f"{name}: expected a whole number of {CIFAR_RECORD}-byte records; "
            f"found {len(raw)} bytes"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)
