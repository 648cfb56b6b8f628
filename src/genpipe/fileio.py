"""Files: atomic writes (a reader, or a later stage, sees the old file or the new one, never
half), and the SHA-256 of files, which data, weights, references and code are known by."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from genpipe.errors import DiskFullError, disk_full

CHUNK_SIZE = 1 << 20  # 1 MiB: files are hashed and copied a chunk at a time


def sha256_files(files: Iterable[Path], root: Path | None = None) -> str:
    """Lowercase hex SHA-256 over the files' bytes in the order given (of one file: what
    `sha256sum` prints), read a chunk at a time. With `root`, each file's path relative to
    it and a NUL byte come before its bytes, so a renamed file changes the digest."""
    digest = hashlib.sha256()
    for path in files:
        if root is not None:
            digest.update(Path(path).relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; outputs are not
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if disk_full(exc) is not None:
            raise DiskFullError(str(path), disk_full(exc)) from None
        raise


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` whole (the old
    one is removed), else it is removed. A reader never sees a half-written directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; outputs are not
    try:
        yield tmp
        replace_dir(tmp, path)
    except Exception as exc:
        if disk_full(exc) is not None:
            raise DiskFullError(str(path), disk_full(exc)) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_outputs() -> Iterator[Callable[[Path], Path]]:
    """A stage's outputs, all or none: yields `stage(path)`, which returns a temporary path
    of the same name (file or directory) in a new folder beside `path`. When the block ends
    without error, every staged path that was written replaces its output (directories
    whole, so no stale file survives); on an error none does, and the outputs stay as they
    were. dvc.yaml marks them `persist: true` so that DVC does not delete them first."""
    pending: list[tuple[Path, Path]] = []  # (temporary folder, output)

    def stage(path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        pending.append((tmp, path))
        return tmp / path.name  # the output's own name: MLflow logs artifacts by it

    try:
        yield stage
        written = [(tmp / path.name, path) for tmp, path in pending if (tmp / path.name).exists()]
        for src, path in written:
            if src.is_dir():
                replace_dir(src, path)
            else:
                os.replace(src, path)
    except Exception as exc:
        if disk_full(exc) is not None:
            where = ", ".join(str(path) for _, path in pending) or "the stage's outputs"
            raise DiskFullError(where, disk_full(exc)) from None
        raise
    finally:
        for tmp, _ in pending:
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory `src` to `dst`, replacing what was there."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def umask_mode(path: Path) -> None:
    """Give a file the mode the umask allows (0644 under umask 022): for writers that make
    their files private (safetensors' save_file makes 0600)."""
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, payload: Any) -> None:
    """Sorted keys and a trailing newline, so equal payloads give equal bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
