"""Atomic writes: a stage's outputs are replaced all together on success, or not at all."""

from __future__ import annotations

import pytest

from genpipe.fileio import staged_outputs, write_json


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
