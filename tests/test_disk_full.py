"""A full disk while a stage writes an output: one line naming the path, a non-zero exit,
and the earlier output kept. Real full disks (a small tmpfs) where this machine may mount
one; otherwise the write is made to fail with ENOSPC as the kernel would."""

from __future__ import annotations

import errno
import json
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from genpipe.errors import DiskFullError, disk_full
from genpipe.fileio import atomic_dir, staged_outputs, write_json
from genpipe.stage import run_stage


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs at tmp_path/small (root only: skipped where mount is refused)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)  # even if a file is open


def fails_in_one_line(main, capsys) -> str:
    with pytest.raises(SystemExit) as excinfo:
        run_stage(main)
    assert excinfo.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    return err


def test_metrics_json_on_a_full_disk_is_one_line_and_keeps_the_old_file(small_disk, capsys):
    metrics = small_disk / "metrics.json"
    write_json(metrics, {"fid": 1.0})
    err = fails_in_one_line(lambda: write_json(metrics, {"fid": "x" * 200_000}), capsys)
    assert err.startswith(f"error: {metrics}: no space left on the device to write it")
    assert "the earlier output is kept" in err
    assert json.loads(metrics.read_text()) == {"fid": 1.0}
    assert [p.name for p in small_disk.iterdir()] == ["metrics.json"]  # no temporary left


def test_a_numpy_array_on_a_full_disk_is_one_line(small_disk, capsys):
    """numpy reports a short write without errno ("N requested and M written")."""
    def main() -> None:
        with atomic_dir(small_disk / "prepared") as tmp:
            np.zeros(100_000).tofile(tmp / "images.bin")

    err = fails_in_one_line(main, capsys)
    assert f"error: {small_disk / 'prepared'}: no space left" in err
    assert "requested and" in err and not (small_disk / "prepared").exists()


def test_a_staged_output_on_a_full_disk_names_the_outputs(small_disk, capsys):
    grid = small_disk / "eval_grid.png"
    grid.write_bytes(b"old")

    def main() -> None:  # weights as train stages write them
        with staged_outputs() as stage:
            save_file({"w": torch.zeros(100_000)}, str(stage(grid)))

    err = fails_in_one_line(main, capsys)
    assert f"error: {grid}: no space left on the device" in err
    assert grid.read_bytes() == b"old"


def test_a_full_disk_seen_only_in_a_cause_is_one_line(tmp_path, capsys):
    """torch's writer: a RuntimeError whose context is the ENOSPC."""
    def main() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
        except OSError:
            raise RuntimeError("unexpected pos 704 vs 598") from None

    def with_context() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
        except OSError as exc:
            raise RuntimeError("unexpected pos 704 vs 598") from exc

    err = fails_in_one_line(with_context, capsys)
    assert err == (f"error: no space left on the device (No space left on device: "
                   f"{tmp_path / 'x'}); free space there and rerun: the stage's earlier outputs "
                   "are kept as they were")  # fmt: skip
    with pytest.raises(RuntimeError):  # no full disk in the chain: not ours to explain
        run_stage(main)


def test_other_os_errors_are_not_called_a_full_disk():
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(PermissionError("Not enough free space to write 5 bytes")) is not None
    assert isinstance(DiskFullError("x", OSError(errno.ENOSPC, "full")), Exception)


def test_no_temporary_is_left_where_a_later_stage_would_read(small_disk):
    with pytest.raises(DiskFullError), atomic_dir(small_disk / "reference") as tmp:
        (tmp / "stats.bin").write_bytes(b"x" * 200_000)
    assert list(small_disk.iterdir()) == []


@pytest.mark.integration
def test_register_on_a_full_disk_is_one_line_and_leaves_the_training_run_finished(
    small_disk, tmp_path, monkeypatch, capsys
):
    """MLflow writes the model to its temporary folder, then copies it to the run's artifacts
    (here on the full tmpfs): one line, no traceback from MLflow's logger, and the training
    run it reopened still FINISHED."""
    from mlflow import MlflowClient

    from test_registry import do_register, gan_outputs

    monkeypatch.chdir(small_disk)  # the experiment's artifacts: ./mlruns, on the full disk
    store = f"sqlite:///{tmp_path}/mlflow.db"
    outputs = gan_outputs(tmp_path / "project", store, fid=1.0)
    capsys.readouterr()
    err = fails_in_one_line_among_warnings(lambda: do_register(outputs, store, "d1"), capsys)
    assert err.startswith("error: no space left on the device (No space left on device: ")
    run_id = json.loads(outputs.record.read_text())["run_id"]
    assert MlflowClient(store).get_run(run_id).info.status == "FINISHED"


def fails_in_one_line_among_warnings(main, capsys) -> str:
    """The error line, among library warnings (MLflow's), and no traceback."""
    with pytest.raises(SystemExit) as excinfo:
        run_stage(main)
    assert excinfo.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    return errors[0]
