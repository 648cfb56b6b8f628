"""Training loops: determinism, checkpoints and resume (also after SIGKILL), the NaN guard."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genpipe import checkpoint, distributed, images, runtime, schedule, training, yamlio
from genpipe.autoencoder import train as ae_loop
from genpipe.data.canonical import (
    Prepared,
    build_manifest,
    content_split,
    image_sha1,
    write_prepared,
)
from genpipe.errors import DataError, TrainingError
from genpipe.gan import train as gan_loop
from genpipe.params.load import parse_params
from genpipe.progress import Progress

from builders import random_images

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
IMAGES = random_images(64, 1, 8, seed=7)  # (64, 1, 8, 8) uint8

TINY = {
    "train": {"batch_size": 16, "checkpoint_every": 4, "log_every": 4, "device": "cpu"},
    "gan": {"steps": 12, "z_dim": 8, "width": 16, "depth": 1},
    "autoencoder": {"steps": 12, "latent_dim": 4, "width": 8},
}


def tiny_params(**overrides):
    raw = {section: dict(values) for section, values in TINY.items()}
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    return parse_params(raw)


def run_gan(params, tmp_path: Path, name: str = "run"):
    return gan_loop.train_gan(params, IMAGES, "data-hash", CPU, tmp_path / name / "ckpt.pt",
                              tmp_path / name / "train_log.csv")  # fmt: skip


def run_ae(params, tmp_path: Path, name: str = "run"):
    return ae_loop.train_autoencoder(params, IMAGES, "data-hash", CPU, tmp_path / name / "ckpt.pt",
                                     tmp_path / name / "train_log.csv")  # fmt: skip


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# --- determinism --------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["non-saturating", "hinge", "wgan-gp"])
def test_gan_runs_are_bitwise_identical(tmp_path, loss):
    params = tiny_params(gan={"loss": loss})
    first, second = run_gan(params, tmp_path, "a"), run_gan(params, tmp_path, "b")
    for net in ("netG", "netD", "ema"):
        assert_same_weights(getattr(first, net), getattr(second, net))
    # every weight moved from where the seeded build put it, as training starts from
    init = gan_loop.build_gan(params, 1, 8, CPU)
    for net in ("netG", "netD"):
        start, end = getattr(init, net).state_dict(), getattr(first, net).state_dict()
        moved = [k for k in start if k.endswith("weight") and not torch.equal(start[k], end[k])]
        assert moved == [k for k in start if k.endswith("weight")], net


def test_r1_and_lr_decay_runs_are_bitwise_identical_and_change_the_weights(tmp_path):
    params = tiny_params(gan={"r1_weight": 1.0, "lr_decay": "linear"})
    first, second = run_gan(params, tmp_path, "a"), run_gan(params, tmp_path, "b")
    assert_same_weights(first.netG, second.netG)
    plain = run_gan(tiny_params(), tmp_path, "plain").netD.state_dict()
    assert not torch.equal(plain["main.0.weight"], first.netD.state_dict()["main.0.weight"])
    ae = tiny_params(autoencoder={"lr_decay": "cosine"})
    assert_same_weights(run_ae(ae, tmp_path, "c").net, run_ae(ae, tmp_path, "d").net)


@pytest.mark.parametrize(
    ("decay", "factors"),
    [
        ("none", [1, 1, 1, 1]),
        ("linear", [1, 0.75, 0.5, 0.25]),
        ("cosine", [1, 0.853553, 0.5, 0.146447]),
    ],
)
def test_lr_factor(decay, factors):
    got = [schedule.lr_factor(decay, step, 4) for step in range(1, 5)]
    assert got == pytest.approx(factors, abs=1e-6)


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_autoencoder_runs_are_bitwise_identical(tmp_path, kind):
    params = tiny_params(autoencoder={"kind": kind})
    assert_same_weights(run_ae(params, tmp_path, "a").net, run_ae(params, tmp_path, "b").net)


@pytest.mark.parametrize("shape", [(3, 1, 8, 8), (2, 3, 28, 28), (2, 1, 16, 12)])
def test_the_ssim_loss_is_the_evaluation_metric(shape):
    """The training term computes what evaluation scores (scikit-image's SSIM), on images
    near each other and on unrelated ones."""
    from genpipe.metrics import reconstruction

    rng = np.random.default_rng(4)
    x = rng.random(shape)
    for y in (np.clip(x + rng.normal(0, 0.1, shape), 0, 1), rng.random(shape)):
        want = reconstruction.ssim(x, y)
        got = ae_loop.ssim(torch.from_numpy(x), torch.from_numpy(y)).item()
        assert got == pytest.approx(want, abs=1e-10)
    assert reconstruction.ssim(x, np.clip(x + rng.normal(0, 0.1, shape), 0, 1)) > 0.3 > want


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_ssim_weight_adds_the_structure_term(tmp_path, kind):
    def curve(weight: float) -> list[dict[str, str]]:
        params = tiny_params(autoencoder={"kind": kind, "ssim_weight": weight})
        run_ae(params, tmp_path, f"w{weight}")
        with open(tmp_path / f"w{weight}" / "train_log.csv") as f:
            return list(csv.DictReader(f))

    plain, weighted = curve(0.0), curve(1.0)
    for row in plain if kind == "ae" else []:  # loss: the MSE on [-1, 1], logged on [0, 1]
        assert float(row["loss"]) == pytest.approx(4 * float(row["mse"]), rel=1e-6)
    for a, b in zip(plain, weighted, strict=True):  # 1 - SSIM > 0 on top, from the first row
        assert float(b["loss"]) > float(a["loss"]) and float(b["mse"]) != float(a["mse"])
    # 1 - SSIM of random reconstructions is near 1: the term is far from negligible
    gap = float(weighted[0]["loss"]) - float(plain[0]["loss"])
    assert gap > (0.1 if kind == "ae" else 0.1 * 64)


LABELS = np.arange(len(IMAGES)) % 4  # (64,): 4 classes of 16


def run_cgan(params, tmp_path: Path, name: str = "run", labels=LABELS):
    return gan_loop.train_gan(params, IMAGES, "data-hash", CPU, tmp_path / name / "ckpt.pt",
                              tmp_path / name / "train_log.csv", labels=labels)  # fmt: skip


@pytest.mark.parametrize("loss", ["hinge", "wgan-gp"])
def test_a_conditional_gan_trains_on_the_labels_bitwise_identically(tmp_path, loss):
    """gan.conditional: G draws for the real images' labels, D scores both with them; the
    labels change the weights, and the run is repeatable to the bit."""
    params = tiny_params(gan={"conditional": True, "loss": loss, "d_steps": 2,
                              "r1_weight": 0.1 if loss == "hinge" else 0.0})  # fmt: skip
    a, b = run_cgan(params, tmp_path, "a"), run_cgan(params, tmp_path, "b")
    assert_same_weights(a.ema, b.ema)
    assert_same_weights(a.netD, b.netD)
    assert a.config["generator"]["class_weights"] == [0.25] * 4
    assert a.config["discriminator"]["num_classes"] == 4
    shuffled = run_cgan(params, tmp_path, "c", labels=np.roll(LABELS, 1))
    assert not torch.equal(a.netD.embed.weight, shuffled.netD.embed.weight)
    rows = list(csv.DictReader((tmp_path / "a" / "train_log.csv").open()))
    assert rows and all(np.isfinite(float(r["loss_d"])) for r in rows)
    # evaluation's samples take the class shares, the same for any batch size
    from genpipe.gan.evaluate import generate

    torch.testing.assert_close(generate(a.ema, 40, 0, 7, CPU), generate(a.ema, 40, 0, 64, CPU))


@pytest.mark.parametrize("conditional", [False, True])
def test_a_minibatch_std_gan_trains_bitwise_identically(tmp_path, conditional):
    """gan.minibatch_std: D's last layer also sees each group's spread; repeatable to the
    bit, and other weights than without it."""
    params = tiny_params(gan={"minibatch_std": 4, "conditional": conditional})
    a, b = run_cgan(params, tmp_path, "a"), run_cgan(params, tmp_path, "b")
    assert_same_weights(a.ema, b.ema)
    assert_same_weights(a.netD, b.netD)
    assert a.config["discriminator"]["minibatch_std"] == 4
    plain = run_cgan(tiny_params(gan={"conditional": conditional}), tmp_path, "plain")
    assert a.netD.main[-1].in_channels == plain.netD.main[-1].in_channels + 1  # + the map
    assert not torch.equal(plain.ema.main[0].weight, a.ema.main[0].weight)


def test_an_outer_torchrun_whose_slices_the_group_does_not_split_is_refused(tmp_path):
    """params allow minibatch_std 8 with batches of 16 in one process; 4 processes of an
    outer torchrun get slices of 4, refused before any work or file."""
    params = tiny_params(gan={"minibatch_std": 8})
    world = distributed.World(rank=0, size=4, local_rank=0)
    with pytest.raises(TrainingError, match=r"^gan.minibatch_std: .*batch of 4; got 8$"):
        gan_loop.train_gan(params, IMAGES, "data-hash", CPU, tmp_path / "ckpt.pt",
                           tmp_path / "train_log.csv", world=world)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("labels", "found"),
    [(None, "got none"), (LABELS[:10], "got 10"), (np.full(64, -1), "found 64 unlabeled images"),
     (np.zeros(64, dtype=np.int64), "found 1 class")],
)  # fmt: skip
def test_a_conditional_gan_refuses_data_without_labels(tmp_path, labels, found):
    params = tiny_params(gan={"conditional": True})
    with pytest.raises(DataError, match=r"^gan.conditional: expected .*" + found):
        run_cgan(params, tmp_path, labels=labels)
    assert not (tmp_path / "run").exists()  # before any work


def test_gan_ema_ends_with_batchnorm_statistics_of_its_own_samples(tmp_path):
    own = run_gan(tiny_params(), tmp_path, "own")
    copied = run_gan(tiny_params(gan={"ema_bn_batches": 0}), tmp_path, "copied")
    # the same training: only the EMA's statistics differ
    assert_same_weights(own.netG, copied.netG)
    for (name, e), c in zip(own.ema.named_parameters(), copied.ema.parameters(), strict=True):
        assert torch.equal(e, c), name
    bn = "main.1.running_var"  # after the first layer, a linear function of z
    assert torch.equal(copied.ema.state_dict()[bn], copied.netG.state_dict()[bn])  # copied
    z = torch.randn(20_000, 8, 1, 1, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        var = own.ema.main[0](z).var((0, 2, 3))  # of the EMA's own first layer
    error = ((own.ema.state_dict()[bn] - var).abs() / var).max()
    assert error < 0.1
    assert ((copied.ema.state_dict()[bn] - var).abs() / var).max() > 10 * error
    assert not own.ema.training


def test_seed_changes_the_weights(tmp_path):
    a = run_gan(tiny_params(), tmp_path, "a").netG.state_dict()
    b = gan_loop.train_gan(parse_params({**TINY, "seed": 1}), IMAGES, "h", CPU,
                           tmp_path / "b.pt", tmp_path / "b.csv").netG.state_dict()  # fmt: skip
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_train_log_rows_are_the_same_bits_each_run(tmp_path):
    """train_log.csv is a cached DVC output: the losses per interval, no throughput."""
    run_gan(tiny_params(), tmp_path, "a")
    run_gan(tiny_params(), tmp_path, "b")
    log = (tmp_path / "a" / "train_log.csv").read_bytes()
    assert log == (tmp_path / "b" / "train_log.csv").read_bytes()
    rows = list(csv.DictReader((tmp_path / "a" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [4, 8, 12]
    assert set(rows[0]) == {"step", "epoch", "loss_d", "loss_g"}
    assert float(rows[-1]["epoch"]) == pytest.approx(12 * 16 / 64)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("model", ["gan", "autoencoder"])
def test_without_a_tty_training_logs_a_line_per_log_every_steps(tmp_path, monkeypatch, caplog,
                                                                model):  # fmt: skip
    """As under `dvc repro` piped by `genpipe ci-retrain`: no bar, a line per row."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    with caplog.at_level("INFO", logger="genpipe"):
        (run_gan if model == "gan" else run_ae)(tiny_params(), tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train ")]
    names = ("loss_d", "loss_g") if model == "gan" else ("loss", "mse")
    losses = ", ".join(rf"{name} -?[0-9.]+(e[-+]\d+)?" for name in names)  # .4g
    for line, step in zip(lines, (4, 8, 12), strict=True):
        assert re.fullmatch(rf"train {model}: step {step}/12, {losses}, [0-9,.]+ img/s, "
                            r"(ETA (\d+m)?\d+s|done in \d+s)", line), line  # fmt: skip
    assert "ETA" in lines[0] and "done in" in lines[-1]
    assert sys.stderr.getvalue() == ""  # no bar


def test_on_a_tty_training_shows_a_bar_and_logs_no_lines(tmp_path, monkeypatch, caplog):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with caplog.at_level("INFO", logger="genpipe"):
        run_gan(tiny_params(), tmp_path)
    assert not [r for r in caplog.records if r.getMessage().startswith("train gan")]
    assert "train gan: 100%" in terminal.getvalue() and "loss_d=" in terminal.getvalue()


def test_resumed_run_logs_from_where_it_resumes(tmp_path, monkeypatch, caplog):
    run_gan(tiny_params(gan={"steps": 8}), tmp_path)
    state = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    identity = checkpoint.run_identity("gan", tiny_params().model_dump(mode="json", by_alias=True),
                                     "data-hash")  # fmt: skip
    state.update(finished=False, identity=json.dumps(identity, sort_keys=True))
    torch.save(state, tmp_path / "run" / "ckpt.pt")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.clear()  # the first run's lines, when an earlier test left the logger at INFO
    with caplog.at_level("INFO", logger="genpipe"):
        run_gan(tiny_params(), tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("at step 8 of 12") and m.startswith("resuming from") for m in messages)
    assert [m.split(",")[0] for m in messages if m.startswith("train gan")] == [
        "train gan: step 12/12"
    ]


# --- checkpoints ----------------------------------------------------------------------------


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path):
    full = run_gan(tiny_params(), tmp_path, "full")
    # a run stopped after step 8 (its checkpoint is at step 8), then resumed to 12
    run_gan(tiny_params(gan={"steps": 8}), tmp_path, "resumed")
    ckpt = tmp_path / "resumed" / "ckpt.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 8 and state["finished"] is True
    state["finished"] = False  # as if it had been killed; steps is in the identity, so:
    identity = checkpoint.run_identity("gan", tiny_params().model_dump(mode="json", by_alias=True),
                                   "data-hash")  # fmt: skip
    state["identity"] = json.dumps(identity, sort_keys=True)
    torch.save(state, ckpt)
    logged = RecordingRun()
    resumed = gan_loop.train_gan(tiny_params(), IMAGES, "data-hash", CPU, ckpt,
                                 tmp_path / "resumed" / "train_log.csv", run=logged)  # fmt: skip
    for net in ("netG", "netD", "ema"):
        assert_same_weights(getattr(full, net), getattr(resumed, net))
    rows = list(csv.DictReader((tmp_path / "resumed" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [4, 8, 12]
    # the new MLflow run gets the curve from the start: steps before the resume are replayed
    assert [step for step, _ in logged.calls] == [4, 8, 12]
    # replayed rows are the checkpoint's (losses); the new ones carry their throughput too
    assert set(logged.calls[0][1]) == {"epoch", "loss_d", "loss_g"}
    assert set(logged.calls[-1][1]) == {"epoch", "loss_d", "loss_g", "images_per_s"}


class RecordingRun:
    """Stands in for tracking.training_run.TrainingRun: records what the loop logs."""

    def __init__(self):
        self.calls: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.calls.append((step, metrics))


def test_unfinished_checkpoint_under_other_params_is_refused(tmp_path):
    run_gan(tiny_params(), tmp_path)
    ckpt = tmp_path / "run" / "ckpt.pt"
    state = torch.load(ckpt, weights_only=True)
    state["finished"] = False
    torch.save(state, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(TrainingError, match=r"ckpt.pt: written under other params or data "
                                            r"\(gan.lr_g differ\); restore them"):  # fmt: skip
        run_gan(tiny_params(gan={"lr_g": 1e-3}), tmp_path)
    assert ckpt.read_bytes() == before  # never overwritten or mixed in


class EndingRun(RecordingRun):
    """A RecordingRun with a run id, which records the orphans it ends."""

    run_id = "new-run"

    def __init__(self):
        super().__init__()
        self.ended: list[tuple[str, bool]] = []

    def end_orphan(self, run_id: str, resumed: bool = True) -> None:
        self.ended.append((run_id, resumed))


@pytest.mark.parametrize("run_gan_or_ae", ["gan", "autoencoder"])
def test_a_refused_checkpoint_ends_the_killed_run_it_names(tmp_path, run_gan_or_ae):
    """kill -9, then other params: the checkpoint is refused and the message says to delete
    it, which would leave nothing naming the killed run; so its run is ended first."""
    train = gan_loop.train_gan if run_gan_or_ae == "gan" else ae_loop.train_autoencoder
    ckpt = tmp_path / "run" / "ckpt.pt"
    train(tiny_params(), IMAGES, "data-hash", CPU, ckpt, tmp_path / "run" / "log.csv")
    state = torch.load(ckpt, weights_only=True)
    state["finished"], state["mlflow_run_id"] = False, "killed-run"  # as kill -9 leaves it
    torch.save(state, ckpt)
    run = EndingRun()
    with pytest.raises(TrainingError, match="written under other params"):
        train(tiny_params(train={"batch_size": 8}), IMAGES, "data-hash", CPU, ckpt,
              tmp_path / "run" / "log.csv",
              run=run)  # fmt: skip
    assert run.ended == [("killed-run", False)]


def test_finished_checkpoint_does_not_block_new_params(tmp_path):
    run_gan(tiny_params(), tmp_path)
    other = run_gan(tiny_params(gan={"lr_g": 1e-3}), tmp_path)
    fresh = run_gan(tiny_params(gan={"lr_g": 1e-3}), tmp_path, "fresh")
    assert_same_weights(other.netG, fresh.netG)


@pytest.mark.parametrize("finished", [True, False])
def test_checkpoint_of_other_code_is_never_resumed(tmp_path, monkeypatch, caplog, finished):
    """After an edit to the network or the loop (which DVC reruns training for), a finished
    checkpoint must not stand in for the new run's weights, nor an unfinished one be
    continued by other code: the run starts afresh."""
    run_gan(tiny_params(gan={"steps": 4}), tmp_path)
    ckpt = tmp_path / "run" / "ckpt.pt"
    state = torch.load(ckpt, weights_only=True)
    state["finished"] = finished
    identity = json.loads(state["identity"])
    identity["code"] = "0" * 64  # as written by an earlier version of the code
    state["identity"] = json.dumps(identity, sort_keys=True)
    state["netG"] = {k: torch.zeros_like(v) for k, v in state["netG"].items()}
    torch.save(state, ckpt)
    with caplog.at_level("WARNING", logger="genpipe.training"):
        rerun = run_gan(tiny_params(gan={"steps": 4}), tmp_path)
    fresh = run_gan(tiny_params(gan={"steps": 4}), tmp_path, "fresh")
    assert_same_weights(rerun.netG, fresh.netG)
    assert ("written by other code at step 4" in caplog.text) is not finished


def test_code_fingerprint_covers_the_models_files():
    assert checkpoint.code_fingerprint("gan") != checkpoint.code_fingerprint("autoencoder")
    assert len(checkpoint.code_fingerprint("gan")) == 64


def test_foreign_checkpoint_file_is_refused(tmp_path):
    ckpt = tmp_path / "run" / "ckpt.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="expected a genpipe checkpoint"):
        run_gan(tiny_params(), tmp_path)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss = gan_loop.generator_loss
    calls = {"n": 0}

    def poisoned(kind, logits):
        calls["n"] += 1
        loss = real_loss(kind, logits)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(gan_loop, "generator_loss", poisoned)
    with pytest.raises(TrainingError, match=r"^step 7: loss_g is nan; training stopped"):
        run_gan(tiny_params(), tmp_path)
    state = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert state["step"] == 4 and not state["finished"]
    assert all(torch.isfinite(v).all() for v in state["netG"].values() if v.is_floating_point())


def test_loss_monitor_names_the_first_bad_step():
    monitor = training.LossMonitor(("a", "b"))
    monitor.add(1, torch.tensor(1.0), torch.tensor(2.0))
    monitor.add(2, torch.tensor(3.0), torch.tensor(4.0))
    assert monitor.drain() == {"a": 2.0, "b": 3.0}
    monitor.add(3, torch.tensor(1.0), torch.tensor(float("inf")))
    with pytest.raises(TrainingError, match="step 3: b is inf"):
        monitor.check()


# --- devices, batching, grids -----------------------------------------------------------------


def test_device_and_precision_resolution():
    assert runtime.resolve_device("cpu") == CPU
    assert runtime.resolve_precision("auto", CPU) is None  # fp32 on the CPU
    assert runtime.resolve_precision("bf16", CPU) is torch.bfloat16
    with pytest.raises(TrainingError, match="fp32 or bf16 on the CPU; got fp16"):
        runtime.resolve_precision("fp16", CPU)
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="train.device: expected a CUDA GPU"):
            runtime.resolve_device("cuda")


def test_device_batches_are_scaled_and_seeded():
    data = training.DeviceImages(IMAGES, CPU)
    a = data.batch(32, runtime.make_generator(CPU, 0))
    b = data.batch(32, runtime.make_generator(CPU, 0))
    assert a.shape == (32, 1, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    pixels = images.to_uint8(a)
    originals = {image.tobytes() for image in IMAGES}
    assert all(image.tobytes() in originals for image in pixels)  # exact round trip


def test_bf16_autocast_trains_on_cpu(tmp_path):
    """bf16 takes effect (other weights than fp32's, from the same seeded start), and the
    weights stay fp32: autocast, not a cast of the networks."""
    bf16 = run_gan(tiny_params(train={"precision": "bf16"}), tmp_path, "bf16").netG
    fp32 = run_gan(tiny_params(train={"precision": "fp32"}), tmp_path, "fp32").netG
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    weight = "main.0.weight"
    assert not torch.equal(bf16.state_dict()[weight], fp32.state_dict()[weight])
    torch.testing.assert_close(bf16.state_dict()[weight], fp32.state_dict()[weight],
                               atol=0.05, rtol=0)  # fmt: skip


def test_image_grid_layout():
    grid = images.image_grid(np.zeros((64, 3, 8, 8), np.uint8) + 255, rows=8)
    assert grid.mode == "RGB" and grid.size == (8 * 34 + 2, 8 * 34 + 2)


# --- the stage script: kill -9 and resume ----------------------------------------------------


def make_workdir(path: Path, params: dict) -> Path:
    images = random_images(80, 1, 8, seed=3)
    sha1 = image_sha1(images)
    manifest = build_manifest(images, np.arange(80) % 10, content_split(sha1, 0.2), ["x"] * 80)
    write_prepared(Prepared(images, manifest, {"num_classes": 10}), path / "data" / "prepared")
    (path / "params.yaml").write_text(yamlio.dump(params))
    return path


# SIGHUP as a terminal's session has it (pytest may run under nohup), or ignored as nohup does
HUP_DEFAULT = ["env", "--default-signal=HUP"]
NOHUP = ["nohup"]


def stage(workdir: Path, store: Path, prefix: list[str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    command = [*(prefix or []), sys.executable, str(REPO / "pipeline" / "train_gan.py")]
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.integration
def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path):
    params = {"train": {"batch_size": 16, "checkpoint_every": 20, "log_every": 20},
              "gan": {"steps": 600, "z_dim": 8, "width": 8, "depth": 0}}  # fmt: skip
    reference = make_workdir(tmp_path / "reference", params)
    killed = make_workdir(tmp_path / "killed", params)

    store = tmp_path / "mlflow.db"  # one store: MLflow creates its tables once
    proc = stage(killed, store)
    ckpt = killed / "checkpoints" / "gan" / "checkpoint.pt"
    first = wait_for_checkpoint(killed, proc)  # past the step-0 one
    # a second one: the run is training on from it, between two checkpoints, when killed
    wait_for_checkpoint(killed, proc, after_step=first)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_state = torch.load(ckpt, weights_only=True)
    step, orphan = killed_state["step"], killed_state["mlflow_run_id"]  # the killed run's
    assert first < step < 600

    resumed = stage(killed, store)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming from checkpoints/gan/checkpoint.pt at step {step} of 600" in err
    uninterrupted = stage(reference, store)
    out, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err

    for name in ("generator_ema", "generator", "discriminator"):
        a = load_file(reference / "models/gan/weights" / f"{name}.safetensors")
        b = load_file(killed / "models/gan/weights" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for name in ("config.json", "generator_ema.safetensors"):
        assert (reference / "models/gan/weights" / name).read_bytes() == (
            killed / "models/gan/weights" / name
        ).read_bytes()
    assert (reference / "reports/gan/samples.png").read_bytes() == (
        killed / "reports/gan/samples.png"
    ).read_bytes()

    # the killed process's run, left RUNNING, is ended by the resumed one, which names it
    from mlflow import MlflowClient

    resumed_id = json.loads((killed / "models/gan/mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{store}")
    assert orphan != resumed_id and client.get_run(orphan).info.status == "KILLED"
    resumed_run = client.get_run(resumed_id)
    assert resumed_run.info.status == "FINISHED"
    assert resumed_run.data.tags["genpipe.resumed_from_run_id"] == orphan


def wait_for_checkpoint(workdir: Path, proc: subprocess.Popen, after_step: int = 0) -> int:
    """The step of the training run's checkpoint once it is past `after_step`."""
    ckpt = workdir / "checkpoints" / "gan" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            step = torch.load(ckpt, weights_only=True)["step"]
        except (OSError, RuntimeError, EOFError):  # not there yet, or being replaced
            step = 0
        if step > after_step:
            return step
        time.sleep(0.01)
    ended = proc.poll() is not None
    proc.kill()  # a run left going would train on past the test
    raise AssertionError(proc.communicate()[1] if ended else f"no checkpoint past {after_step}")


@pytest.mark.integration
def test_sigkill_before_the_first_checkpoint_leaves_no_run_running(tmp_path):
    """kill -9 before a step of work is checkpointed: the step-0 checkpoint names the run,
    so the rerun goes on from it and ends the run the killed process left RUNNING."""
    params = {"train": {"batch_size": 16, "checkpoint_every": 10000, "log_every": 20},
              "gan": {"steps": 400, "z_dim": 8, "width": 8, "depth": 0}}  # fmt: skip
    workdir = make_workdir(tmp_path / "w", params)
    store = tmp_path / "mlflow.db"
    proc = stage(workdir, store)
    ckpt = workdir / "checkpoints" / "gan" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 0 and not state["finished"]
    orphan = state["mlflow_run_id"]

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    assert client.get_run(orphan).info.status == "RUNNING"
    rerun = stage(workdir, store)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "resuming from checkpoints/gan/checkpoint.pt at step 0 of 400" in err
    assert client.get_run(orphan).info.status == "KILLED"
    rerun_id = json.loads((workdir / "models/gan/mlflow_run.json").read_text())["run_id"]
    assert client.get_run(rerun_id).data.tags["genpipe.resumed_from_run_id"] == orphan


def test_a_step0_checkpoint_never_blocks_other_params_and_its_run_is_ended(tmp_path):
    """A step-0 checkpoint under other params holds no work: the run starts afresh (an
    unfinished one at a later step blocks it instead), and the run it names, if a killed
    process left it RUNNING, is ended without being called resumed."""
    net = torch.nn.Linear(2, 2)
    path = tmp_path / "checkpoint.pt"

    old = checkpoint.Checkpoint(path, {"lr": 1}, 10, {"net": net}, ())
    old.run_id = "killed"
    old.snapshot(0, [])
    restored = checkpoint.Checkpoint(path, {"lr": 2}, 10, {"net": net}, ()).restore("new")
    assert restored == checkpoint.Restored(0, [], orphan="killed", resumed=False)
    state = torch.load(path, weights_only=True)  # replaced by this run's own step-0 one
    assert state["step"] == 0 and state["mlflow_run_id"] == "new"

    old.snapshot(3, [])  # a step of work under the old params: kept, and the run refused
    with pytest.raises(TrainingError, match="written under other params"):
        checkpoint.Checkpoint(path, {"lr": 2}, 10, {"net": net}, ()).restore("new")
    assert torch.load(path, weights_only=True)["step"] == 3


def test_the_train_log_ends_the_run_a_killed_process_left_and_replays_its_rows():
    """The checkpoint knows no tracking store: it names the run it found, and the training
    log ends it (KILLED, by the run class) and sends the new run the curve so far."""
    calls = []

    class Run:
        def end_orphan(self, run_id, resumed):
            calls.append(("end", run_id, resumed))

        def log_metrics(self, metrics, step):
            calls.append(("log", step, metrics))

    rows = [{"step": 5, "loss": 1.5}]
    restored = checkpoint.Restored(5, rows, orphan="killed", resumed=True)
    with Progress("t", 10, 5) as progress:
        log = training.TrainLog(restored, Run(), progress)
    assert calls == [("end", "killed", True), ("log", 5, {"loss": 1.5})]
    assert log.rows is rows
    calls.clear()
    with Progress("t", 10) as progress:
        training.TrainLog(checkpoint.Restored(), Run(), progress)  # afresh, no file: nothing
    assert calls == []


@pytest.mark.parametrize("error", [TrainingError("step 4: loss_d is nan"), KeyboardInterrupt()])
def test_a_failed_run_puts_back_the_checkpoint_it_found(tmp_path, error):
    """Its step-0 checkpoint is for a kill that runs no code: an error or a signal puts back
    the file it replaced (a failed stage leaves its outputs as they were), or removes it,
    and its folder, where there was none. Once a step of work is saved, that file stays."""
    net = torch.nn.Linear(2, 2)

    def fail_after(path: Path, saved_step: int | None) -> None:
        with (
            pytest.raises(type(error)),
            checkpoint.Checkpoint(path, {"lr": 2}, 10, {"net": net}, ()) as ckpt,
        ):
            assert ckpt.restore("new").step == 0
            assert torch.load(path, weights_only=True)["mlflow_run_id"] == "new"
            if saved_step is not None:
                ckpt.snapshot(saved_step, [])
            raise error

    path = tmp_path / "kept" / "checkpoint.pt"
    checkpoint.Checkpoint(path, {"lr": 1}, 10, {"net": net}, ()).snapshot(10, [])  # finished
    before = path.read_bytes()
    fail_after(path, None)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary file

    fail_after(path, 4)  # a step of work saved: the new file stays
    assert torch.load(path, weights_only=True)["step"] == 4

    fresh = tmp_path / "fresh" / "checkpoint.pt"
    fail_after(fresh, None)
    assert not fresh.parent.exists()


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_keeps_the_checkpoint_and_marks_the_run_killed(tmp_path, signum):
    """`timeout`, `docker stop`, a cancelled CI job (SIGTERM); the SSH session that ran
    `dvc repro` closed (SIGHUP): either ends training as Ctrl-C does."""
    params = {"train": {"batch_size": 16, "checkpoint_every": 20, "log_every": 20},
              "gan": {"steps": 100000, "z_dim": 8, "width": 8, "depth": 0}}  # fmt: skip
    workdir = make_workdir(tmp_path / "w", params)
    store = tmp_path / "mlflow.db"
    proc = stage(workdir, store, HUP_DEFAULT)
    ckpt = workdir / "checkpoints" / "gan" / "checkpoint.pt"
    wait_for_checkpoint(workdir, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == f"error: terminated ({signal.Signals(signum).name})"
    assert "Traceback" not in err
    assert 0 < torch.load(ckpt, weights_only=True)["step"] < 100000

    from mlflow import MlflowClient

    # the run is named in the checkpoint (a resume ends it); no record of it is written, nor
    # any other output: evaluate never reads a killed run
    run_id = torch.load(ckpt, weights_only=True)["mlflow_run_id"]
    assert MlflowClient(f"sqlite:///{store}").get_run(run_id).info.status == "KILLED"
    written = [p for folder in ("models", "reports") for p in (workdir / folder).rglob("*")]
    assert not [p for p in written if not p.is_dir()]  # models/gan/, reports/gan/: empty


@pytest.mark.integration
def test_sighup_after_the_terminal_is_gone_still_exits_129(tmp_path):
    """An SSH session that closed: stderr is a terminal that no longer takes writes (EIO),
    so the one line cannot be written, and the exit code still says SIGHUP."""
    params = {"train": {"batch_size": 16, "checkpoint_every": 20, "log_every": 20},
              "gan": {"steps": 100000, "z_dim": 8, "width": 8, "depth": 0}}  # fmt: skip
    workdir = make_workdir(tmp_path / "w", params)
    master, terminal = pty.openpty()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    command = [*HUP_DEFAULT, sys.executable, str(REPO / "pipeline" / "train_gan.py")]
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=terminal)  # fmt: skip
    os.close(terminal)
    try:
        wait_for_checkpoint(workdir, proc)
    finally:
        os.close(master)  # the terminal hangs up: writes to it fail from now on
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 129


@pytest.mark.integration
def test_sighup_stays_ignored_under_nohup(tmp_path):
    """`nohup dvc repro &`: the stage inherits SIGHUP ignored, and a hang-up leaves it
    training; SIGTERM still stops it."""
    params = {"train": {"batch_size": 16, "checkpoint_every": 20, "log_every": 20},
              "gan": {"steps": 100000, "z_dim": 8, "width": 8, "depth": 0}}  # fmt: skip
    workdir = make_workdir(tmp_path / "w", params)
    proc = stage(workdir, tmp_path / "mlflow.db", NOHUP)
    step = wait_for_checkpoint(workdir, proc)
    proc.send_signal(signal.SIGHUP)
    wait_for_checkpoint(workdir, proc, after_step=step + 20)  # two checkpoints on: training
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err


# --- bad inputs to training --------------------------------------------------------------------


def test_batch_size_larger_than_the_train_split_fails_before_any_work(tmp_path):
    make_workdir(tmp_path, {})
    prepared = tmp_path / "data" / "prepared"
    split, _ = training.load_train_data(prepared, batch_size=1)
    n = len(split.train)
    message = f"train.batch_size: expected at most the train split's {n:,} images; got 100,000"
    with pytest.raises(TrainingError) as excinfo:
        training.load_train_data(prepared, batch_size=100_000)
    assert str(excinfo.value) == message
    with pytest.raises(TrainingError, match="train.batch_size: expected at most"):
        run_gan(tiny_params(train={"batch_size": 65}), tmp_path)  # IMAGES holds 64
    assert not (tmp_path / "run").exists()  # no checkpoint, no log: nothing ran


def test_truncated_manifest_parquet_names_the_file_and_the_fetch_stage(tmp_path):
    make_workdir(tmp_path, {})
    manifest = tmp_path / "data" / "prepared" / "manifest.parquet"
    manifest.write_bytes(manifest.read_bytes()[:100])
    with pytest.raises(DataError) as excinfo:
        training.load_train_data(manifest.parent, batch_size=1)
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(f"{manifest}: expected the fetch stage's")
    assert "dvc repro --force fetch" in message


def test_disk_full_while_checkpointing_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint(path, {"step": 1, "w": torch.zeros(1000)})
    before = path.read_bytes()

    class FullDisk(io.FileIO):
        def write(self, data):
            if self.tell() > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(checkpoint, "open", FullDisk, raising=False)
    with pytest.raises(TrainingError) as excinfo:
        checkpoint.save_checkpoint(path, {"step": 2, "w": torch.zeros(2**18)})  # 1 MiB
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: no space left on the device to write the checkpoint")
    assert "about 1.0 MiB" in message
    assert path.read_bytes() == before  # the old one, whole
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


@pytest.mark.parametrize(("stop", "status"), [(TrainingError("rank 1 of 2 exited with -9"),
                                               "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_workers_that_fail_leave_no_run_running(tmp_path, monkeypatch, stop, status):
    """Under torchrun a rank killed by SIGKILL cannot end its run: the launcher ends the run
    its checkpoint names, if it is still RUNNING."""
    from mlflow import MlflowClient

    from genpipe import distributed, paths, training

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("e")).info.run_id  # RUNNING
    paths.checkpoint("gan").parent.mkdir(parents=True)
    torch.save({"mlflow_run_id": run_id, "step": 0}, paths.checkpoint("gan"))

    def killed(name, train):
        raise stop

    monkeypatch.setattr(distributed, "launch", killed)
    with pytest.raises(type(stop)):
        training.launch("gan", tiny_params())
    assert client.get_run(run_id).info.status == status
