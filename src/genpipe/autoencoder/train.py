"""The autoencoder training loop, written out: reconstruct, (vae: add the KL term), step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from genpipe import distributed, runtime, training
from genpipe.autoencoder.network import AutoEncoder, vae_kl
from genpipe.checkpoint import Checkpoint, run_identity
from genpipe.images import pairs_grid, to_float, to_uint8
from genpipe.params.schema import AutoencoderParams, Params
from genpipe.progress import Progress
from genpipe.schedule import lr_factor, set_lr


@dataclass
class AutoencoderResult:
    net: AutoEncoder
    config: dict[str, Any]  # rebuilds the network without params.yaml


def build_network(
    params: Params, channels: int, size: int, device: torch.device, world: distributed.World | None
) -> tuple[AutoEncoder, torch.nn.Module]:
    """The seeded network, and the view of it that the step calls: itself, or in DDP under
    torchrun (with BatchNorm over the global batch), torch.compile'd with train.compile."""
    cfg, train = params.autoencoder, params.train
    runtime.seed_everything(params.training_seed, device, train.cpu_threads)
    net = AutoEncoder(size, channels, cfg.latent_dim, cfg.width, cfg.depth, kind=cfg.kind)
    net = runtime.prepare_module(net, device, train.compile)
    if world is not None:
        net = distributed.sync_batchnorm(net)
    step_net = distributed.data_parallel(net, world, device)
    return net, torch.compile(step_net) if train.compile else step_net  # sharing net's weights


def train_autoencoder(
    params: Params,
    images: np.ndarray,  # (N, C, S, S) uint8, the train split
    data_hash: str,  # of the prepared data: a checkpoint must match it to be resumed
    device: torch.device,
    checkpoint: Path,
    log_path: Path,
    run: Any = None,  # a tracking.training_run.TrainingRun, or None
    world: distributed.World | None = None,  # under torchrun: rank 0 writes, all train
) -> AutoencoderResult:
    """params.autoencoder.steps steps on `images`, resumed from `checkpoint` when it holds
    this very run; the curve goes to `run` and the progress shown as it grows, to `log_path`
    at the end. Under torchrun each rank steps on its slice of every batch (BatchNorm over
    the global batch, gradients averaged by DDP); rank 0 writes the files."""
    cfg, train = params.autoencoder, params.train
    _, channels, size, _ = images.shape
    training.check_batch_size(train.batch_size, len(images))  # before any work
    dtype = runtime.resolve_precision(train.precision, device)
    net, step_net = build_network(params, channels, size, device, world)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scaler = runtime.grad_scaler(device, dtype)

    data = training.DeviceImages(images, device, train.compile)
    batches = runtime.make_generator(device, params.training_seed + 1)  # which images
    noise = runtime.make_generator(device, params.training_seed + 2)  # vae: the sampling noise
    identity = run_identity("autoencoder", params.model_dump(mode="json", by_alias=True),
                            data_hash, world.size if world else 1)  # fmt: skip
    states = {"net": net, "opt": opt, "scaler": scaler}
    ckpt = Checkpoint(checkpoint, identity, cfg.steps, states, (batches, noise), world)
    with ckpt:  # a failure before a step of work is saved puts back the file it found
        restored = training.restore_or_end(ckpt, run)
        B, pixels = train.batch_size, channels * size * size
        monitor = training.LossMonitor(("loss", "mse"), world)
        net.train()
        with Progress("train autoencoder", cfg.steps, restored.step) as progress:
            trainlog = training.TrainLog(restored, run, progress)
            for step in range(restored.step + 1, cfg.steps + 1):
                if cfg.lr_decay != "none":
                    set_lr(opt, cfg.lr * lr_factor(cfg.lr_decay, step, cfg.steps))
                # (1) Reconstruct x
                # (b, C, S, S) in [-1, 1]; eps: the VAE's noise, drawn here under torchrun
                x, eps = draw(data, B, batches, noise, cfg, world, dtype or torch.float32)
                with runtime.autocast(device, dtype):
                    recon, mu, logvar = step_net(x, generator=noise, eps=eps)
                # (2) The loss: reconstruction (+ structure) (+ the VAE's KL)
                loss, mse = autoencoder_loss(cfg, recon, x, mu, logvar, pixels)
                # (3) Step
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                monitor.add(step, loss, mse / 4)  # logged MSE on the [0, 1] pixel scale
                progress.update()
                if step % train.log_every == 0 or step == cfg.steps:  # drain: raises if non-finite
                    trainlog.add(step, step * B / len(data), monitor.drain(), B)
                if step % train.checkpoint_every == 0 or step == cfg.steps:
                    monitor.check()  # never checkpoint weights that saw a non-finite loss
                    ckpt.snapshot(step, trainlog.rows)
    distributed.check_same(net, world, "autoencoder")  # bitwise, once
    if world is None or world.main:
        trainlog.write(log_path)  # once, at the end: the rows so far live in the checkpoint

    config = {"model": "autoencoder", "image_size": size, "channels": channels,
              "autoencoder": runtime.unwrap(net).config()}  # fmt: skip
    return AutoencoderResult(net=net, config=config)


def autoencoder_loss(
    cfg: AutoencoderParams,
    recon: torch.Tensor,  # (b, C, S, S) in [-1, 1], as the network made it
    x: torch.Tensor,  # (b, C, S, S) in [-1, 1]
    mu: torch.Tensor,
    logvar: torch.Tensor | None,
    pixels: int,  # C * S * S
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, MSE per pixel on the [-1, 1] scale). The loss: the MSE, plus ssim_weight times
    (1 - SSIM) on [0, 1] as evaluation scores it; a VAE's is that per image (times the
    pixels: a Gaussian reconstruction term) plus kl_weight times the KL term."""
    recon = recon.float()
    loss = mse = F.mse_loss(recon, x)
    if cfg.ssim_weight:
        loss = loss + cfg.ssim_weight * (1.0 - ssim(recon.add(1).div(2), x.add(1).div(2)))
    if cfg.kind == "vae":
        assert logvar is not None
        loss = loss * pixels + cfg.kl_weight * vae_kl(mu.float(), logvar.float())
    return loss, mse


# SSIM's constants for data in [0, 1] (Wang et al. 2004; scikit-image's defaults)
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (N, C, H, W) images in [0, 1], differentiable: what evaluation's
    metrics.reconstruction.ssim (scikit-image) computes, each channel on its own with a
    uniform 7 x 7 window (or the largest odd one the images allow), valid positions only, and
    sample (co)variances."""
    n, c, h, w = x.shape
    win = min(7, h - (h % 2 == 0), w - (w % 2 == 0))
    x, y = x.reshape(n * c, 1, h, w), y.reshape(n * c, 1, h, w)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, win, stride=1)  # (N*C, 1, h - win + 1, w - win + 1)

    mx, my = mean(x), mean(y)
    unbiased = win * win / (win * win - 1)
    vx = (mean(x * x) - mx * mx) * unbiased
    vy = (mean(y * y) - my * my) * unbiased
    cxy = (mean(x * y) - mx * my) * unbiased
    num = (2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)
    return (num / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))).mean()


def draw(
    data: training.DeviceImages,
    B: int,
    batches: torch.Generator,
    noise: torch.Generator,
    cfg: AutoencoderParams,
    world: distributed.World | None,
    dtype: torch.dtype,  # mu's: autocast's, else fp32; the one-process network draws in it
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A step's images x (b, C, S, S) and, under torchrun for a VAE, its noise eps (b, latent):
    b = B in one process, where the network draws eps itself; else every rank draws the
    whole batch's, the same on all, and takes its slice (b = B / world size)."""
    if world is None:
        return data.batch(B, batches), None
    part = world.part(B)
    x = data.take(data.draw(B, batches)[part])
    if cfg.kind != "vae":
        return x, None
    return x, torch.randn(B, cfg.latent_dim, generator=noise, device=x.device, dtype=dtype)[part]


@torch.no_grad()
def reconstruction_grid(net: torch.nn.Module, images: np.ndarray, device: torch.device):
    """Originals (top row of each pair) above their reconstructions, 8 per row."""
    x = to_float(torch.from_numpy(np.ascontiguousarray(images[:32])).to(device))
    return pairs_grid(images[:32], to_uint8(net.eval()(x)[0]))
