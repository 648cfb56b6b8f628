"""The autoencoder training loop, written out: reconstruct, (vae: add the KL term), step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from genpipe import runtime, training
from genpipe.autoencoder.network import AutoEncoder, vae_kl
from genpipe.images import pairs_grid, to_float, to_uint8
from genpipe.params import Params
from genpipe.progress import Progress


@dataclass
class AutoencoderResult:
    net: AutoEncoder
    config: dict[str, Any]  # rebuilds the network without params.yaml


def train_autoencoder(
    params: Params,
    images: np.ndarray,  # (N, C, S, S) uint8, the train split
    data_hash: str,  # of the prepared data: a checkpoint must match it to be resumed
    device: torch.device,
    checkpoint: Path,
    log_path: Path,
    run: Any = None,  # a tracking.TrainingRun, or None
) -> AutoencoderResult:
    """params.autoencoder.steps steps on `images`, resumed from `checkpoint` when it holds
    this very run; the curve goes to `run` and the progress shown as it grows, to `log_path`
    at the end."""
    cfg, train = params.autoencoder, params.train
    _, channels, size, _ = images.shape
    training.check_batch_size(train.batch_size, len(images))  # before any work
    dtype = runtime.resolve_precision(train.precision, device)
    runtime.seed_everything(params.seed, device, train.cpu_threads)
    net = AutoEncoder(size, channels, cfg.latent_dim, cfg.width, cfg.depth, kind=cfg.kind)
    net = runtime.prepare_module(net, device, train.compile)
    step_net = torch.compile(net) if train.compile else net  # shares net's weights
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scaler = runtime.grad_scaler(device, dtype)

    data = training.DeviceImages(images, device, train.compile)
    batches = runtime.make_generator(device, params.seed + 1)  # which images
    noise = runtime.make_generator(device, params.seed + 2)  # vae: the reparameterisation noise
    identity = training.run_identity("autoencoder", params.model_dump(mode="json", by_alias=True),
                                     data_hash)  # fmt: skip
    states = {"net": net, "opt": opt, "scaler": scaler}
    ckpt = training.Checkpoint(checkpoint, identity, cfg.steps, states, (batches, noise))
    start, rows = ckpt.restore(run)
    B, pixels = train.batch_size, channels * size * size
    monitor = training.LossMonitor(("loss", "mse"))
    net.train()
    with Progress("train autoencoder", cfg.steps, start) as progress:
        trainlog = training.TrainLog(rows, run, progress)
        for step in range(start + 1, cfg.steps + 1):
            if cfg.lr_decay != "none":
                training.set_lr(opt, cfg.lr * training.lr_factor(cfg.lr_decay, step, cfg.steps))
            # (1) Reconstruct x
            x = data.batch(B, batches)  # (B, C, S, S) in [-1, 1]
            with runtime.autocast(device, dtype):
                recon, mu, logvar = step_net(x, generator=noise)
            loss = mse = F.mse_loss(recon.float(), x)  # per pixel, on the [-1, 1] scale
            if cfg.kind == "vae":  # (2) per image: Gaussian reconstruction term + weighted KL
                loss = mse * pixels + cfg.kl_weight * vae_kl(mu.float(), logvar.float())
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
    trainlog.write(log_path)  # once, at the end: the rows so far live in the checkpoint

    config = {"model": "autoencoder", "image_size": size, "channels": channels,
              "autoencoder": runtime.unwrap(net).config()}  # fmt: skip
    return AutoencoderResult(net=net, config=config)


@torch.no_grad()
def reconstruction_grid(net: torch.nn.Module, images: np.ndarray, device: torch.device):
    """Originals (top row of each pair) above their reconstructions, 8 per row."""
    x = to_float(torch.from_numpy(np.ascontiguousarray(images[:32])).to(device))
    return pairs_grid(images[:32], to_uint8(net.eval()(x)[0]))
