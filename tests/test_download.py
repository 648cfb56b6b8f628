"""download(): mirrors, retries, checksums and atomic writes, against a local HTTP server."""

from __future__ import annotations

import gzip
import hashlib
import logging
import random
import socket
from pathlib import Path

import pytest

from genpipe.data import download as dl
from genpipe.errors import DownloadError
from genpipe.fileio import sha256_files

NAME = "train-images-idx3-ubyte.gz"
DATA = gzip.compress(random.Random(0).randbytes(4096), mtime=0)  # a real gzip file
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The backoff delays download() asked for, instead of sleeping them."""
    calls: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", calls.append)
    return calls


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_failed(excinfo: pytest.ExceptionInfo, dest_dir: Path, *fragments: str) -> str:
    """One-line message naming the file and each cause; nothing left in dest_dir."""
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"could not download {NAME} from ")
    for fragment in fragments:
        assert fragment in message
    assert list(dest_dir.iterdir()) == []  # no file at dest_dir/name, no .part
    return message


def test_success_then_cached(http_server, sleeps, tmp_path):
    http_server.route(f"/{NAME}", (200, DATA))
    dest_dir = tmp_path / "a" / "b"  # created on demand

    path = dl.download(NAME, SHA, [http_server.url + "/"], dest_dir)

    assert path == dest_dir / NAME
    assert path.read_bytes() == DATA
    assert sha256_files([path]) == SHA
    assert [p.name for p in dest_dir.iterdir()] == [NAME]
    assert dl.download(NAME, SHA, [http_server.url], dest_dir) == path
    assert http_server.hits[f"/{NAME}"] == 1  # the second call made no request
    assert sleeps == []


def test_corrupted_cache_is_replaced(http_server, tmp_path):
    http_server.route(f"/{NAME}", (200, DATA))
    (tmp_path / NAME).write_bytes(b"not the file")

    path = dl.download(NAME, SHA, [http_server.url], tmp_path)

    assert path.read_bytes() == DATA
    assert http_server.hits[f"/{NAME}"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [NAME]


def test_checksum_mismatch_is_not_retried(http_server, sleeps, tmp_path):
    http_server.route(f"/{NAME}", (200, b"wrong content"))

    with pytest.raises(DownloadError) as excinfo:
        dl.download(NAME, SHA, [http_server.url], tmp_path)

    wrong = hashlib.sha256(b"wrong content").hexdigest()
    _assert_failed(excinfo, tmp_path, f"sha256 mismatch: expected sha256 {SHA}; found {wrong}")
    assert http_server.hits[f"/{NAME}"] == 1
    assert sleeps == []


# the same payload compressed again (level 1, another mtime): other bytes, same content
RECOMPRESSED = gzip.compress(gzip.decompress(DATA), compresslevel=1, mtime=1)
CONTENT_SHA = hashlib.sha256(gzip.decompress(DATA)).hexdigest()


def test_recompressed_copy_passes_by_content(http_server, tmp_path):
    assert RECOMPRESSED != DATA
    http_server.route(f"/{NAME}", (200, RECOMPRESSED))
    pin = dl.Pin(SHA, content=CONTENT_SHA)

    path = dl.download(NAME, pin, [http_server.url], tmp_path)

    assert path.read_bytes() == RECOMPRESSED
    assert dl.download(NAME, pin, [http_server.url], tmp_path) == path  # the cache passes too
    assert http_server.hits[f"/{NAME}"] == 1


def test_other_content_names_both_pins_and_both_found_sums(http_server, tmp_path):
    other = gzip.compress(b"other payload", mtime=0)
    http_server.route(f"/{NAME}", (200, other))

    with pytest.raises(DownloadError) as excinfo:
        dl.download(NAME, dl.Pin(SHA, content=CONTENT_SHA), [http_server.url], tmp_path)

    _assert_failed(
        excinfo, tmp_path,
        f"expected archive sha256 {SHA} or content sha256 {CONTENT_SHA}; "
        f"found archive {hashlib.sha256(other).hexdigest()}, "
        f"content {hashlib.sha256(b'other payload').hexdigest()}",
    )  # fmt: skip


def test_content_sum_is_bounded(tmp_path, monkeypatch):
    from genpipe.data import formats

    bomb = tmp_path / NAME
    bomb.write_bytes(gzip.compress(bytes(5 << 20)))  # 5 MiB of zeros in a few KiB
    monkeypatch.setattr(formats, "MAX_GUNZIP_BYTES", 2 << 20)
    problem = dl.mismatch(bomb, dl.Pin(SHA, content=CONTENT_SHA))
    assert "expected at most 2097152 bytes once decompressed; found more" in problem


def test_truncated_gzip_fails_checksum(http_server, tmp_path):
    half = DATA[: len(DATA) // 2]  # served with a Content-Length that matches the cut
    http_server.route(f"/{NAME}", (200, half))

    with pytest.raises(DownloadError) as excinfo:
        dl.download(NAME, SHA, [http_server.url], tmp_path)

    _assert_failed(excinfo, tmp_path, "sha256 mismatch")


def test_short_body_is_retried_then_fails(http_server, sleeps, tmp_path):
    http_server.route(f"/{NAME}", ("truncate", DATA))

    with pytest.raises(DownloadError) as excinfo:
        dl.download(NAME, SHA, [http_server.url], tmp_path, retries=3, backoff=0.5)

    n = len(DATA)
    _assert_failed(excinfo, tmp_path, f"incomplete body (got {n // 2} of {n} bytes) after 4")
    assert http_server.hits[f"/{NAME}"] == 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_404_moves_to_next_mirror_without_retry(http_server, sleeps, tmp_path):
    http_server.route(f"/good/{NAME}", (200, DATA))

    path = dl.download(NAME, SHA, [f"{http_server.url}/bad", f"{http_server.url}/good"], tmp_path)

    assert path.read_bytes() == DATA
    assert http_server.hits[f"/bad/{NAME}"] == 1
    assert http_server.hits[f"/good/{NAME}"] == 1
    assert sleeps == []


@pytest.mark.parametrize("status", [500, 429])
def test_transient_error_then_success(http_server, sleeps, tmp_path, status):
    http_server.route(f"/{NAME}", (status, b"busy"), (200, DATA))

    path = dl.download(NAME, SHA, [http_server.url], tmp_path, backoff=0.25)

    assert path.read_bytes() == DATA
    assert http_server.hits[f"/{NAME}"] == 2
    assert sleeps == [0.25]


def test_503_forever(http_server, sleeps, tmp_path, caplog):
    http_server.route(f"/{NAME}", (503, b"down"))

    with (
        caplog.at_level(logging.INFO, logger="genpipe.data.download"),
        pytest.raises(DownloadError) as excinfo,
    ):
        dl.download(NAME, SHA, [http_server.url], tmp_path, retries=2, backoff=0.5)

    _assert_failed(excinfo, tmp_path, "HTTP 503 Service Unavailable after 3 attempts")
    assert http_server.hits[f"/{NAME}"] == 3
    assert sleeps == [0.5, 1.0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert infos == [f"downloading {http_server.url}/{NAME}"]
    assert warnings[0] == f"retrying {http_server.url}/{NAME} in 0.5s: HTTP 503 Service Unavailable"
    assert len(warnings) == 2


def test_connection_refused_on_every_mirror(sleeps, tmp_path):
    mirrors = [f"http://127.0.0.1:{_closed_port()}", f"http://127.0.0.1:{_closed_port()}/x"]

    with pytest.raises(DownloadError) as excinfo:
        dl.download(NAME, SHA, mirrors, tmp_path, retries=1, backoff=2.0)

    message = _assert_failed(excinfo, tmp_path, "from 2 mirrors: ")
    for mirror in mirrors:
        assert f"{mirror}/{NAME}: connection refused after 2 attempts" in message
    assert sleeps == [2.0, 2.0]  # the backoff restarts on each mirror


def test_timeout(http_server, sleeps, tmp_path):
    http_server.route(f"/{NAME}", ("hang", DATA))

    with pytest.raises(DownloadError) as excinfo:
        dl.download(NAME, SHA, [http_server.url], tmp_path, timeout=0.3, retries=1)

    _assert_failed(excinfo, tmp_path, "timed out after 0.3s (2 attempts)")
    assert http_server.hits[f"/{NAME}"] == 2
    assert sleeps == [1.0]


def test_non_http_url_is_rejected(tmp_path):
    dest_dir = tmp_path / "never"

    with pytest.raises(DownloadError, match=r"expected an http:// or https:// mirror URL") as e:
        dl.download(NAME, SHA, ["ftp://example.org/mnist"], dest_dir)

    assert f"ftp://example.org/mnist/{NAME}" in str(e.value)
    assert not dest_dir.exists()


def test_interrupt_leaves_no_part_file(http_server, tmp_path, monkeypatch):
    http_server.route(f"/{NAME}", (200, DATA))

    def interrupt(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dl.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        dl.download(NAME, SHA, [http_server.url], tmp_path)

    assert list(tmp_path.iterdir()) == []


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GENPIPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dl.cache_dir() == tmp_path / "cache"

    monkeypatch.delenv("GENPIPE_CACHE_DIR")
    assert dl.cache_dir() == tmp_path / "xdg" / "genpipe"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dl.cache_dir() == tmp_path / "home" / ".cache" / "genpipe"
