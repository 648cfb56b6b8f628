"""The GAN training loop, written out: (1) update D, (2) update G, (3) update the EMA."""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from genpipe.models.gan import (
    Discriminator,
    Generator,
    discriminator_loss,
    ema_decay_at,
    ema_update,
    gan_config,
    generator_loss,
    gradient_penalty,
)
from genpipe.params import Params
from genpipe.train import common

log = logging.getLogger("genpipe.train.gan")

GRID_SAMPLES = 64  # an 8 x 8 grid from fixed noise


@dataclass
class GanResult:
    netG: Generator
    netD: Discriminator
    ema: Generator  # what evaluation uses
    config: dict[str, Any]  # rebuilds the networks without params.yaml


def train_gan(
    params: Params,
    images: np.ndarray,  # (N, C, S, S) uint8, the train split
    data_hash: str,  # of the prepared data: a checkpoint must match it to be resumed
    device: torch.device,
    checkpoint: Path,
    log_path: Path,
    run: Any = None,  # a tracking.TrainingRun, or None
) -> GanResult:
    cfg, train = params.gan, params.train
    _, channels, size, _ = images.shape
    dtype = common.resolve_precision(train.precision, device)
    common.seed_everything(params.seed, device, train.cpu_threads)

    networks = gan_config(size, channels, cfg)  # WGAN-GP's critic gets no BatchNorm
    netG = Generator(**networks["generator"])
    netD = Discriminator(**networks["discriminator"])
    netG = common.prepare_module(netG, device)
    netD = common.prepare_module(netD, device)
    ema = copy.deepcopy(netG).eval().requires_grad_(False)
    # compiled views share their weights with netG/netD, which are what is saved
    stepG = torch.compile(netG) if train.compile else netG
    stepD = torch.compile(netD) if train.compile else netD
    betas = (cfg.beta1, cfg.beta2)
    optG = torch.optim.Adam(netG.parameters(), lr=cfg.lr_g, betas=betas)
    optD = torch.optim.Adam(netD.parameters(), lr=cfg.lr_d, betas=betas)
    scalerG, scalerD = common.grad_scaler(device, dtype), common.grad_scaler(device, dtype)

    data = common.DeviceImages(images, device)
    batches = common.make_generator(device, params.seed + 1)  # which images
    noise = common.make_generator(device, params.seed + 2)  # z and GP interpolation
    identity = common.run_identity("gan", params.model_dump(mode="json", by_alias=True), data_hash)
    trainlog = common.TrainLog(rows=[])
    start = 0
    state = common.load_checkpoint(checkpoint, identity)
    if state is not None:
        netG.load_state_dict(state["netG"])
        netD.load_state_dict(state["netD"])
        ema.load_state_dict(state["ema"])
        optG.load_state_dict(state["optG"])
        optD.load_state_dict(state["optD"])
        scalerG.load_state_dict(state["scalerG"])
        scalerD.load_state_dict(state["scalerD"])
        common.set_rng_states(state["rng"], batches, noise)
        trainlog.rows = state["log"]
        start = state["step"]
        log.info("resuming from %s at step %d of %d", checkpoint, start, cfg.steps)
        for row in trainlog.rows if run is not None else []:  # this run gets the whole curve
            run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def save(step: int) -> None:
        common.save_checkpoint(checkpoint, {
            "identity": json.dumps(identity, sort_keys=True), "step": step,
            "finished": step == cfg.steps,
            "netG": netG.state_dict(), "netD": netD.state_dict(), "ema": ema.state_dict(),
            "optG": optG.state_dict(), "optD": optD.state_dict(),
            "scalerG": scalerG.state_dict(), "scalerD": scalerD.state_dict(),
            "rng": common.rng_states(batches, noise), "log": trainlog.rows,
        })  # fmt: skip

    B = train.batch_size
    monitor = common.LossMonitor(("loss_d", "loss_g"))
    bar = tqdm(total=cfg.steps, initial=start, desc="train gan", unit="step", disable=None)
    tick, tick_step = time.perf_counter(), start
    netG.train()
    netD.train()
    for step in range(start + 1, cfg.steps + 1):
        # (1) Update D: maximise D(x) - D(G(z)) in the chosen loss's form
        for i in range(cfg.d_steps):
            real = data.batch(B, batches)  # (B, C, S, S) in [-1, 1]
            z = torch.randn(B, cfg.z_dim, device=device, generator=noise)
            with common.autocast(device, dtype):
                # the last fake keeps G's graph: (2) scores it again rather than drawing anew
                with torch.set_grad_enabled(i == cfg.d_steps - 1):
                    fake = stepG(z)
                loss_d = discriminator_loss(cfg.loss, stepD(real), stepD(fake.detach()))
            if cfg.loss == "wgan-gp":  # the penalty's double backward stays in fp32
                loss_d = loss_d + cfg.gp_weight * gradient_penalty(
                    stepD, real, fake.detach().float(), generator=noise
                )
            optD.zero_grad(set_to_none=True)
            scalerD.scale(loss_d).backward()
            scalerD.step(optD)
            scalerD.update()

        # (2) Update G: make the updated D score G(z) as real
        with common.autocast(device, dtype):
            loss_g = generator_loss(cfg.loss, stepD(fake))
        optG.zero_grad(set_to_none=True)
        scalerG.scale(loss_g).backward()
        scalerG.step(optG)
        scalerG.update()

        # (3) The EMA of G's weights is what gets evaluated
        ema_update(ema, netG, ema_decay_at(step, cfg.ema_decay))
        monitor.add(step, loss_d, loss_g)

        if step % train.log_every == 0 or step == cfg.steps:
            losses = monitor.drain()  # raises at a non-finite loss
            now = time.perf_counter()
            images_per_s = (step - tick_step) * B * cfg.d_steps / (now - tick)  # real images
            tick, tick_step = now, step
            row = {"step": step, "epoch": round(step * B / len(data), 4), **losses,
                   "images_per_s": round(images_per_s, 1)}  # fmt: skip
            trainlog.rows.append(row)
            if run is not None:
                run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
            bar.set_postfix(loss_d=f"{losses['loss_d']:.3f}", loss_g=f"{losses['loss_g']:.3f}",
                            img_s=f"{images_per_s:.0f}")  # fmt: skip
        if step % train.checkpoint_every == 0 or step == cfg.steps:
            monitor.check()  # never checkpoint weights that saw a non-finite loss
            save(step)
            trainlog.write(log_path)
        bar.update(1)
    bar.close()
    trainlog.write(log_path)

    config = {
        "model": "gan", "image_size": size, "channels": channels, "loss": cfg.loss,
        "generator": common.unwrap(netG).config(),
        "discriminator": common.unwrap(netD).config(),
    }  # fmt: skip
    return GanResult(netG=netG, netD=netD, ema=ema, config=config)


@torch.no_grad()
def sample_grid(netG: torch.nn.Module, z_dim: int, seed: int, device: torch.device) -> Image.Image:
    """An 8 x 8 grid of samples from fixed noise, each image scaled up to at least 32 px."""
    noise = common.make_generator(device, seed)
    z = torch.randn(GRID_SAMPLES, z_dim, device=device, generator=noise)
    images = common.to_uint8(netG.eval()(z))  # (64, C, S, S)
    return common.image_grid(images, rows=8)
