"""Fetch a pinned file from a list of mirrors: verified by SHA-256, written atomically.

A pin holds the SHA-256 of the file (the archive) and, where known, of its decompressed
payload (the content): a file passes when either matches, so a copy that was compressed
again (a distribution's package, a mirror) is accepted for the same data.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

from genpipe.data.formats import gunzip_chunks
from genpipe.errors import DataError, DownloadError, exception_text
from genpipe.fileio import CHUNK_SIZE, sha256_files

log = logging.getLogger(__name__)

MAX_DELAY_S = 600.0  # the longest wait between two attempts, however many retries


def cache_dir() -> Path:
    """Where verified downloads are kept.

    $GENPIPE_CACHE_DIR, else $XDG_CACHE_HOME/genpipe, else ~/.cache/genpipe.
    """
    if env := os.environ.get("GENPIPE_CACHE_DIR"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "genpipe"


def content_sha256(path: Path) -> str:
    """SHA-256 of a gzip file's decompressed payload, inflated a chunk at a time with a size
    bound (formats.MAX_GUNZIP_BYTES); DataError for a truncated, corrupt or bomb file."""
    digest = hashlib.sha256()
    for chunk in gunzip_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Pin:
    archive: str  # SHA-256 of the file's bytes, as `sha256sum` prints it
    content: str | None = None  # SHA-256 of its gzip-decompressed payload; None: not pinned

    def expected(self) -> str:
        if self.content is None:
            return f"sha256 {self.archive}"
        return f"archive sha256 {self.archive} or content sha256 {self.content}"


def mismatch(path: Path, pin: Pin, archive: str | None = None) -> str | None:
    """None when the file's bytes or its decompressed payload match the pin; else one line
    with the expected and the found sums. `archive`: the file's SHA-256 if already known."""
    archive = archive or sha256_files([path])
    if archive == pin.archive:
        return None
    if pin.content is None:
        return f"expected {pin.expected()}; found {archive}"
    try:
        content = content_sha256(path)
    except DataError as exc:
        found = f"archive {archive}, no content sum ({exc})"
    else:
        if content == pin.content:
            return None
        found = f"archive {archive}, content {content}"
    return f"expected {pin.expected()}; found {found}"


class _AttemptFailed(Exception):
    """One request failed; `transient` says whether the same mirror deserves another try."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """exc and everything it wraps: requests wraps urllib3, which wraps the socket's OSError."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        todo.extend(x for x in inner if isinstance(x, BaseException))


def _describe(exc: requests.RequestException, timeout: float) -> str:
    """A short, one-line reason for a failed request."""
    causes = list(_causes(exc))
    if isinstance(exc, requests.Timeout) or any(isinstance(c, TimeoutError) for c in causes):
        return f"timed out after {timeout:g}s"
    for c in causes:
        if isinstance(c, http.client.IncompleteRead) and isinstance(c.partial, int):
            return f"incomplete body (got {c.partial} of {c.partial + c.expected} bytes)"
        if isinstance(c, ConnectionRefusedError):
            return "connection refused"
        if isinstance(c, ConnectionResetError):
            return "connection reset"
        if isinstance(c, socket.gaierror):
            return "host not found"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "incomplete body"
    return exception_text(exc)[:200]


def _fetch(session: requests.Session, url: str, dest: Path, pin: Pin, timeout: float) -> None:
    """One GET of url into a temp file next to dest, renamed to dest only if it matches pin."""
    # Closed by the `with` below, before the rename; delete=False keeps the name ours to manage.
    tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115
        dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False
    )
    try:
        with tmp, session.get(url, stream=True, timeout=timeout) as response:
            if response.status_code >= 400:
                code = response.status_code
                raise _AttemptFailed(
                    f"HTTP {code} {response.reason}", transient=code >= 500 or code == 429
                )
            total = int(response.headers.get("Content-Length", 0)) or None
            digest = hashlib.sha256()
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=dest.name, leave=False, disable=None
            ) as bar:
                for chunk in response.iter_content(CHUNK_SIZE):
                    tmp.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            tmp.flush()
            os.fsync(tmp.fileno())
        if problem := mismatch(Path(tmp.name), pin, archive=digest.hexdigest()):
            raise _AttemptFailed(f"sha256 mismatch: {problem}", transient=False)
        os.replace(tmp.name, dest)
    except requests.RequestException as e:
        Path(tmp.name).unlink(missing_ok=True)
        raise _AttemptFailed(_describe(e, timeout), transient=True) from e
    except BaseException:  # includes KeyboardInterrupt: never leave a .part behind
        Path(tmp.name).unlink(missing_ok=True)
        raise


def download(
    name: str,
    sha256: str | Pin,
    mirrors: Sequence[str],
    dest_dir: Path,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """Return dest_dir/name holding the file this pin (or archive sha256) accepts, fetched
    from the first good mirror.

    Transient failures (connection errors, timeouts, HTTP 5xx/429, short bodies) are retried
    `retries` times per mirror with exponential backoff; a 4xx or a wrong checksum moves on
    to the next mirror at once.
    """
    pin = sha256 if isinstance(sha256, Pin) else Pin(sha256)
    for digest in (pin.archive, pin.content):
        if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise DownloadError(f"{name}: expected a 64-digit lowercase hex sha256, got {digest!r}")
    if not mirrors:
        raise DownloadError(f"{name}: expected at least one mirror URL, got none")
    urls = [f"{mirror.rstrip('/')}/{name}" for mirror in mirrors]
    for url in urls:
        if urlsplit(url).scheme not in ("http", "https"):
            raise DownloadError(f"{name}: expected an http:// or https:// mirror URL, got {url}")

    dest = Path(dest_dir) / name
    if dest.is_file() and mismatch(dest, pin) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)

    failures, reason = [], ""
    with requests.Session() as session:
        # The checksum pins the bytes on the wire: ask servers not to re-encode them.
        session.headers["Accept-Encoding"] = "identity"
        for url in urls:
            log.info("downloading %s", url)
            for attempt in range(max(retries, 0) + 1):
                if attempt:
                    delay = min(backoff * 2 ** (attempt - 1), MAX_DELAY_S)
                    log.warning("retrying %s in %gs: %s", url, delay, reason)
                    time.sleep(delay)
                try:
                    _fetch(session, url, dest, pin, timeout)
                    return dest
                except _AttemptFailed as e:
                    reason = str(e)
                    if not e.transient:
                        break
            if (n := attempt + 1) > 1:
                reason += f" ({n} attempts)" if " after " in reason else f" after {n} attempts"
            failures.append(f"{url}: {reason}")
    raise DownloadError(
        f"could not download {name} from {len(urls)} mirror{'s' * (len(urls) > 1)}: "
        + "; ".join(failures)
    )
