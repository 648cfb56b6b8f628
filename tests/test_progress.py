"""Progress without a TTY: one formatted line per interval, no bar; and `genpipe ci-retrain`
streaming its stages' output as it happens."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genpipe import ci, progress
from genpipe.metrics import features
from genpipe.params.schema import DomainParams

from builders import random_images, train_domain

CPU = torch.device("cpu")


@pytest.fixture
def no_tty(monkeypatch, caplog):
    """stderr is no terminal, as under `dvc repro` in CI (tests/test_train.py replaces
    sys.stderr itself); returns the lines the genpipe logger got."""
    monkeypatch.setattr(progress, "interactive", lambda: False)
    caplog.set_level("INFO", logger="genpipe")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "genpipe.progress"]


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (45, "45s"), (72, "1m12s"),
                                               (3600 + 180, "1h03m")])  # fmt: skip
def test_duration(seconds, text):
    assert progress.duration(seconds) == text


def test_report_line_has_values_throughput_and_eta(no_tty, monkeypatch):
    clock = iter([100.0, 110.0])  # 10 s for 500 of 2000 steps: 30 s to go
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with progress.Progress("train gan", 2000) as bar:
        bar.update(500)
        bar.report({"loss_d": 0.6123, "loss_g": 1.2341}, images_per_s=5120.4)
    assert no_tty() == ["train gan: step 500/2000, loss_d 0.6123, loss_g 1.234, 5,120 img/s, "
                        "ETA 30s"]  # fmt: skip


def test_update_logs_each_time_it_passes_a_multiple_of_every(no_tty):
    bar = progress.Progress("features", 1000, unit="img", every=300)
    for _ in range(10):
        bar.update(100)
    bar.close()
    assert [line.split(", ")[0] for line in no_tty()] == [
        "features: 300/1,000 img", "features: 600/1,000 img", "features: 900/1,000 img"
    ]  # fmt: skip
    assert "img/s" in no_tty()[0] and "ETA" in no_tty()[0]


def test_feature_extraction_is_quiet_when_short_and_logs_per_n_batches_when_long(no_tty):
    images = np.zeros((120, 1, 2, 2), np.uint8)
    backbone = lambda x: x.flatten(1).float()  # noqa: E731
    features.extract_features(backbone, images, batch_size=2, device=CPU)  # 60 batches
    assert [line.split(", ")[0] for line in no_tty()] == ["features: 100/120 img"]
    features.extract_features(backbone, images, batch_size=120, device=CPU)  # 1 batch
    assert len(no_tty()) == 1


def test_domain_network_training_logs_its_loss(no_tty):
    images = random_images(40, 1, 8, seed=1)
    labels = np.arange(40) % 2
    params = DomainParams(steps=200, width=4, feature_dim=4, batch_size=8)
    train_domain(images, labels, 2, params, seed=0, device=CPU)
    lines = [line for line in no_tty() if line.startswith("train domain network")]
    assert [line.split(", ")[0] for line in lines] == [
        "train domain network: step 100/200", "train domain network: step 200/200"
    ]  # fmt: skip
    assert ", loss " in lines[0] and "ETA" in lines[0] and "done in" in lines[1]


def test_ci_runs_dvc_with_unbuffered_python(monkeypatch):
    monkeypatch.setenv("PYTHONUNBUFFERED", "")
    env = ci.dvc_env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


@pytest.mark.integration
def test_a_stage_in_that_env_reaches_the_pipe_line_by_line():
    """What `dvc repro` hands a stage: a pipe. Each line arrives while the stage still runs."""
    script = "import time; print('step 1', flush=False); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script], env=ci.dvc_env(),
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)  # block-buffered: only at exit
        assert ready and proc.stdout.readline() == "step 1\n"
    finally:
        proc.kill()
        proc.wait()
