"""IDX and CIFAR-10 binary readers: round trips, and one-line DataErrors for broken files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from genpipe.data.formats import (
    CIFAR_RECORD,
    parse_cifar_batch,
    read_idx,
    read_idx_pair,
    read_tar_members,
)
from genpipe.errors import DataError

from builders import balanced_labels, cifar_archive, cifar_batch, idx_bytes, random_images, tar_gz


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def raw_idx(magic: int, dims: tuple[int, ...], data: bytes) -> bytes:
    """An IDX file whose header and data are free to disagree, gzip-compressed."""
    header = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)
    return gzip.compress(header + data, mtime=0)


def one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- IDX ---------------------------------------------------------------------------------------


def test_read_idx_round_trips_three_dims(tmp_path):
    images = random_images(5, 1, 7, seed=3)[:, 0, :, :6]  # (5, 7, 6): H != W catches a swap
    path = write(tmp_path / "imgs.gz", idx_bytes(images))
    out = read_idx(path, ndim=3)
    assert out.dtype == np.uint8
    assert out.shape == (5, 7, 6)
    np.testing.assert_array_equal(out, images)


def test_read_idx_round_trips_one_dim(tmp_path):
    labels = np.array([3, 0, 9, 255, 1], dtype=np.uint8)
    out = read_idx(write(tmp_path / "labels.gz", idx_bytes(labels)), ndim=1)
    assert out.shape == (5,)
    np.testing.assert_array_equal(out, labels)


def test_read_idx_pair_gives_nchw_images_and_int64_labels(tmp_path):
    images = random_images(4, 1, 5, seed=4)[:, 0]
    labels = np.array([7, 2, 2, 0], dtype=np.uint8)
    out_images, out_labels = read_idx_pair(
        write(tmp_path / "i.gz", idx_bytes(images)), write(tmp_path / "l.gz", idx_bytes(labels))
    )
    assert out_images.shape == (4, 1, 5, 5)
    np.testing.assert_array_equal(out_images[:, 0], images)
    assert out_labels.dtype == np.int64
    assert out_labels.tolist() == [7, 2, 2, 0]


def test_read_idx_pair_refuses_unequal_counts(tmp_path):
    images = write(tmp_path / "train-images.gz", idx_bytes(random_images(6, 1, 4)[:, 0]))
    labels = write(tmp_path / "train-labels.gz", idx_bytes(balanced_labels(5)))
    with pytest.raises(DataError) as excinfo:
        read_idx_pair(images, labels)
    message = one_line_error(excinfo)
    assert "train-images.gz has 6 images" in message
    assert "train-labels.gz has 5 labels" in message


def test_read_idx_refuses_images_file_read_as_labels(tmp_path):
    path = write(tmp_path / "images.gz", idx_bytes(random_images(2, 1, 4)[:, 0]))  # 0x0803
    with pytest.raises(DataError) as excinfo:
        read_idx(path, ndim=1)
    message = one_line_error(excinfo)
    assert message.startswith("images.gz:")
    assert "magic 0x00000801" in message
    assert "found 0x00000803" in message


def test_read_idx_refuses_garbage_magic(tmp_path):
    path = write(tmp_path / "junk.gz", idx_bytes(balanced_labels(3), magic=0x12345678))
    with pytest.raises(DataError) as excinfo:
        read_idx(path, ndim=1)
    message = one_line_error(excinfo)
    assert "junk.gz" in message and "0x00000801" in message and "0x12345678" in message


@pytest.mark.parametrize("content", [b"", b"\0\0"], ids=["empty", "two-bytes"])
def test_read_idx_refuses_file_shorter_than_magic(tmp_path, content):
    path = write(tmp_path / "short.gz", gzip.compress(content))
    with pytest.raises(DataError) as excinfo:
        read_idx(path, ndim=1)
    message = one_line_error(excinfo)
    assert "short.gz" in message and f"found {len(content)} bytes" in message


def test_read_idx_refuses_truncated_header(tmp_path):
    path = write(tmp_path / "hdr.gz", gzip.compress(struct.pack(">II", 0x0803, 2)))  # 1 of 3 dims
    with pytest.raises(DataError) as excinfo:
        read_idx(path, ndim=3)
    message = one_line_error(excinfo)
    assert "hdr.gz" in message and "16-byte IDX header" in message and "found 8 bytes" in message


def test_read_idx_refuses_truncated_gzip(tmp_path):
    data = idx_bytes(random_images(8, 1, 8)[:, 0])
    path = write(tmp_path / "cut.gz", data[: len(data) // 2])
    with pytest.raises(DataError) as excinfo:
        read_idx(path, ndim=3)
    message = one_line_error(excinfo)
    assert message.startswith("cut.gz:")
    assert "truncated or corrupt" in message and "gzip" in message


def test_read_idx_refuses_file_that_is_not_gzip(tmp_path):
    path = write(tmp_path / "plain.gz", struct.pack(">II", 0x0801, 1) + b"\x05")
    with pytest.raises(DataError) as excinfo:
        read_idx(path, ndim=1)
    assert "plain.gz" in one_line_error(excinfo)


@pytest.mark.parametrize("extra", [1, -1], ids=["one-byte-too-many", "one-byte-too-few"])
def test_read_idx_refuses_data_length_not_matching_dims(tmp_path, extra):
    data = bytes(range(24))  # exactly 2 x 3 x 4
    data = data + b"\x07" if extra > 0 else data[:-1]
    path = write(tmp_path / "len.gz", raw_idx(0x0803, (2, 3, 4), data))
    with pytest.raises(DataError) as excinfo:
        read_idx(path, ndim=3)
    message = one_line_error(excinfo)
    assert "len.gz" in message
    assert "expected 24 bytes" in message and f"found {24 + extra}" in message


def test_read_idx_refuses_dims_whose_product_overflows_int64(tmp_path):
    # 2**31 * 2**31 * 4 == 2**64, which np.prod wraps to 0: it must not match 0 data bytes
    path = write(tmp_path / "huge.gz", raw_idx(0x0803, (2**31, 2**31, 4), b""))
    with pytest.raises(DataError) as excinfo:
        read_idx(path, ndim=3)
    message = one_line_error(excinfo)
    assert "huge.gz" in message and f"expected {2**64} bytes" in message


# --- tar archives ------------------------------------------------------------------------------


def test_read_tar_members_returns_requested_bytes_only(tmp_path):
    archive = write(
        tmp_path / "a.tar.gz", tar_gz({"d/one.bin": b"first", "d/two.bin": b"\x00\x01\x02"})
    )
    assert read_tar_members(archive, ["d/two.bin"]) == {"d/two.bin": b"\x00\x01\x02"}
    assert read_tar_members(archive, ["d/one.bin", "d/two.bin"]) == {
        "d/one.bin": b"first",
        "d/two.bin": b"\x00\x01\x02",
    }


def test_read_tar_members_refuses_missing_member(tmp_path):
    archive = write(tmp_path / "a.tar.gz", tar_gz({"d/one.bin": b"first"}))
    with pytest.raises(DataError) as excinfo:
        read_tar_members(archive, ["d/one.bin", "d/absent.bin"])
    message = one_line_error(excinfo)
    assert "a.tar.gz" in message and "d/absent.bin" in message
    assert "d/one.bin" not in message


def test_read_tar_members_refuses_corrupt_archive(tmp_path):
    junk = np.random.default_rng(5).integers(0, 256, 4096, np.uint8).tobytes()
    archive = write(tmp_path / "junk.tar.gz", junk)
    with pytest.raises(DataError) as excinfo:
        read_tar_members(archive, ["x"])
    message = one_line_error(excinfo)
    assert message.startswith("junk.tar.gz:") and "corrupt" in message


def test_read_tar_members_refuses_truncated_archive(tmp_path):
    data = cifar_archive(per_batch=2, test=2)
    archive = write(tmp_path / "cut.tar.gz", data[: len(data) // 2])
    with pytest.raises(DataError) as excinfo:
        read_tar_members(archive, ["cifar-10-batches-bin/test_batch.bin"])
    assert "cut.tar.gz" in one_line_error(excinfo)


@pytest.mark.parametrize(
    ("unsafe", "member", "problem"),
    [
        ({"members": {"../evil.bin": b"x"}}, "../evil.bin", "a '..' path component"),
        ({"members": {"d/../../evil.bin": b"x"}}, "d/../../evil.bin", "a '..' path"),
        ({"members": {"/etc/evil": b"x"}}, "/etc/evil", "an absolute path"),
        ({"links": {"evil-sym": "../../etc/passwd"}}, "evil-sym", "a link to '../../etc/passwd'"),
        ({"hardlinks": {"evil-hard": "/etc/passwd"}}, "evil-hard", "a link to '/etc/passwd'"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink"],
)
def test_read_tar_members_refuses_unsafe_member(tmp_path, monkeypatch, unsafe, member, problem):
    # a good member first and requested: one unsafe member anywhere refuses the whole archive
    members = {"ok/good.bin": b"good", **unsafe.get("members", {})}
    data = tar_gz(members, links=unsafe.get("links"), hardlinks=unsafe.get("hardlinks"))
    archive = write(tmp_path / "bad.tar.gz", data)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # where a relative extraction would land
    with pytest.raises(DataError) as excinfo:
        read_tar_members(archive, ["ok/good.bin"])
    message = one_line_error(excinfo)
    assert message.startswith("bad.tar.gz:")
    assert f"member {member!r} is {problem}" in message
    # nothing was written: not here, not one level up, not where '..' or '/' would point
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz", "cwd"]
    assert list(cwd.iterdir()) == []
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith("evil")]
    assert not Path("/etc/evil").exists()


# --- CIFAR-10 binary ---------------------------------------------------------------------------


def test_parse_cifar_batch_matches_the_bytes_built():
    raw = cifar_batch(6, seed=7)
    images, labels = parse_cifar_batch("data_batch_1.bin", raw)
    assert images.shape == (6, 3, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, random_images(6, 3, 32, seed=7))
    np.testing.assert_array_equal(labels, balanced_labels(6))
    # spot check by byte offset: record 4, blue plane (c=2), row 5, column 9
    assert images[4, 2, 5, 9] == raw[4 * CIFAR_RECORD + 1 + 2 * 1024 + 5 * 32 + 9]
    assert labels[4] == raw[4 * CIFAR_RECORD]


def test_cifar_batch_read_from_archive(tmp_path):
    archive = write(tmp_path / "cifar.tar.gz", cifar_archive(per_batch=3, test=2))
    name = "cifar-10-batches-bin/test_batch.bin"
    images, labels = parse_cifar_batch(name, read_tar_members(archive, [name])[name])
    np.testing.assert_array_equal(images, random_images(2, 3, 32, seed=99))
    assert labels.tolist() == [0, 1]


@pytest.mark.parametrize("length", [0, CIFAR_RECORD - 1, 2 * CIFAR_RECORD + 1])
def test_parse_cifar_batch_refuses_partial_records(length):
    with pytest.raises(DataError) as excinfo:
        parse_cifar_batch("test_batch.bin", cifar_batch(3, seed=0)[:length])
    message = one_line_error(excinfo)
    assert "test_batch.bin" in message
    assert f"{CIFAR_RECORD}-byte records" in message and f"found {length} bytes" in message
