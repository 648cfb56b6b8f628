"""Training on a CUDA GPU: the GAN step replayed as a CUDA graph, in one process and under
DDP. Skipped without one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from genpipe import checkpoint, distributed, training
from genpipe.gan import train as gan_loop
from genpipe.params.load import parse_params
from test_train import assert_same_weights

from net import free_port

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
IMAGES = np.random.default_rng(7).integers(0, 256, (64, 3, 16, 16), dtype=np.uint8)


def params(**overrides):
    raw = {
        "train": {"batch_size": 16, "checkpoint_every": 4, "log_every": 4, "device": "cuda",
                  "precision": "fp32"},
        "gan": {"steps": 12, "z_dim": 8, "width": 16, "depth": 1},
    }  # fmt: skip
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    return parse_params(raw)


def train(p, tmp_path: Path, name: str) -> gan_loop.GanResult:
    return gan_loop.train_gan(p, IMAGES, "data-hash", CUDA, tmp_path / name / "ckpt.pt",
                              tmp_path / name / "train_log.csv")  # fmt: skip


def test_graph_step_captures_once_then_replays_with_new_inputs():
    calls = []

    def double(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)  # Python runs only in the warm-up calls and the capture
        return x * 2

    step = training.CudaGraphStep(double, "test")
    for i in range(training.CudaGraphStep.WARMUP + 4):
        out = step(torch.full((3,), float(i), device=CUDA))
        assert out.tolist() == [2.0 * i] * 3
    assert step.graph is not None
    assert len(calls) == training.CudaGraphStep.WARMUP + 1


@pytest.mark.parametrize("loss", ["non-saturating", "hinge", "wgan-gp"])
def test_graphed_gan_training_is_bitwise_the_eager_training(tmp_path, loss):
    graphed = train(params(gan={"loss": loss}), tmp_path, "graphed")
    eager = train(params(gan={"loss": loss}, train={"cuda_graphs": False}), tmp_path, "eager")
    for net in ("netG", "netD", "ema"):
        assert_same_weights(getattr(graphed, net), getattr(eager, net))
    # and the graphed run really was graphed
    gan = gan_loop.build_gan(params(gan={"loss": loss}), 3, 16, CUDA)
    assert gan.graphed


def test_fp16_and_compile_run_without_graphs():
    assert not gan_loop.build_gan(params(train={"precision": "fp16"}), 3, 16, CUDA).graphed
    assert not gan_loop.build_gan(params(train={"compile": True}), 3, 16, CUDA).graphed


def test_graphed_run_resumes_from_its_checkpoint(tmp_path):
    full = train(params(), tmp_path, "full")
    train(params(gan={"steps": 8}), tmp_path, "resumed")  # its checkpoint is at step 8
    ckpt = tmp_path / "resumed" / "ckpt.pt"
    state = torch.load(ckpt, weights_only=True)
    state["finished"] = False  # as if it had been killed at step 8 of 12
    identity = checkpoint.run_identity("gan", params().model_dump(mode="json", by_alias=True),
                                   "data-hash")  # fmt: skip
    state["identity"] = json.dumps(identity, sort_keys=True)
    torch.save(state, ckpt)
    resumed = train(params(), tmp_path, "resumed")
    for net in ("netG", "netD", "ema"):
        assert_same_weights(getattr(full, net), getattr(resumed, net))


def test_default_bf16_graphed_training_gives_finite_weights(tmp_path):
    result = train(params(train={"precision": "auto"}, gan={"steps": 20}), tmp_path, "bf16")
    for value in result.ema.state_dict().values():
        assert torch.isfinite(value.float()).all()


@pytest.mark.parametrize("graphs", [True, False], ids=["graphed", "eager"])
@pytest.mark.parametrize("loss", ["non-saturating", "wgan-gp"])
def test_ddp_path_on_one_gpu_joins_nccl_and_trains_bitwise_as_the_plain_path(
    tmp_path, monkeypatch, loss, graphs
):
    """World size 1 under torchrun: the process group is NCCL's, the step runs through DDP's
    wrapper and GlobalBatchNorm2d, replayed as a CUDA graph after DDP's 11 eager warm-up
    steps (NCCL's all-reduce captured in it) or eagerly; one rank's all-reduce and its
    division by 1 change no bit, so the weights are the plain path's."""
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    steps = training.CudaGraphStep.DDP_WARMUP + 9
    p = params(gan={"loss": loss, "steps": steps}, train={"cuda_graphs": graphs})
    replays = []
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay",
                        lambda self: replays.append(1) or replay(self))  # fmt: skip
    with distributed.joined(p.train, CUDA) as (world, device):
        assert world == distributed.World(0, 1, 0)
        assert dist.get_backend() == "nccl"
        gan = gan_loop.build_gan(p, 3, 16, device, world)
        assert gan.graphed == graphs
        assert type(gan.stepD).__name__ == "DistributedDataParallel"
        ddp = gan_loop.train_gan(p, IMAGES, "data-hash", device, tmp_path / "ddp" / "ckpt.pt",
                                 tmp_path / "ddp" / "train_log.csv", world=world)  # fmt: skip
    assert not dist.is_initialized()  # the group is left at the end
    # every step after the warm-up was a replay (the first of them captured, then replayed)
    assert len(replays) == (steps - training.CudaGraphStep.DDP_WARMUP if graphs else 0)
    for key in env:
        monkeypatch.delenv(key)
    plain = train(p, tmp_path, "plain")
    for net in ("netG", "netD", "ema"):
        assert_same_weights(getattr(ddp, net), getattr(plain, net))
