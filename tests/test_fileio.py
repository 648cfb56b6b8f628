"""Atomic writes: a stage's outputs are replaced all together on success, or not at all."""

from __future__ import annotations

import hashlib
import random

import pytest

from genpipe.fileio import CHUNK_SIZE, sha256_files, staged_outputs, write_json


def test_staged_outputs_replace_all_on_success_and_nothing_on_failure(tmp_path):
    weights, log = tmp_path / "models/weights", tmp_path / "reports/train_log.csv"
    weights.mkdir(parents=True)
    (weights / "old.safetensors").write_text("old weights")  # not written again: stale
    log.parent.mkdir()
    log.write_text("old log")

    with pytest.raises(RuntimeError, match="diverged"), staged_outputs() as stage:
        staged = stage(weights)
        staged.mkdir()
        (staged / "config.json").write_text("{}")
        stage(log).write_text("half a log")
        raise RuntimeError("diverged")
    assert [p.name for p in weights.iterdir()] == ["old.safetensors"]
    assert log.read_text() == "old log"

    with staged_outputs() as stage:
        staged = stage(weights)
        assert staged.name == "weights" and staged.parent.parent == weights.parent
        staged.mkdir()
        write_json(staged / "config.json", {"a": 1})
        stage(log).write_text("new log")
        assert log.read_text() == "old log"  # nothing moves before the block ends
    assert [p.name for p in weights.iterdir()] == ["config.json"]  # replaced whole
    assert log.read_text() == "new log"
    # no temporary folder is left beside the outputs
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "config.json", "models", "reports", "train_log.csv", "weights"]  # fmt: skip


def test_sha256_of_a_file_is_sha256sums_across_chunks(tmp_path):
    data = random.Random(1).randbytes(CHUNK_SIZE * 2 + 123)
    (tmp_path / "f").write_bytes(data)
    assert sha256_files([tmp_path / "f"]) == hashlib.sha256(data).hexdigest()


def test_sha256_of_files_under_a_root_covers_their_names(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"one")
    (tmp_path / "b.bin").write_bytes(b"two")
    files = [tmp_path / "a.bin", tmp_path / "b.bin"]
    # each file's name and a NUL byte before its bytes, in the order given
    expected = hashlib.sha256(b"a.bin\0one" + b"b.bin\0two").hexdigest()
    assert sha256_files(files, root=tmp_path) == expected
    assert sha256_files(files) == hashlib.sha256(b"onetwo").hexdigest()
    (tmp_path / "b.bin").rename(tmp_path / "c.bin")  # the same bytes under another name
    assert sha256_files([tmp_path / "a.bin", tmp_path / "c.bin"], root=tmp_path) != expected
