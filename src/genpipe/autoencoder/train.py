"""The autoencoder training loop, written out: reconstruct, (vae: add the KL term), step."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from genpipe import runtime, training
from genpipe.autoencoder.network import AutoEncoder, vae_kl
from genpipe.images import pairs_grid, to_float, to_uint8
from genpipe.params import Params

log = logging.getLogger("genpipe.train.autoencoder")


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
    cfg, train = params.autoencoder, params.train
    _, channels, size, _ = images.shape
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
    trainlog = training.TrainLog(rows=[])
    start = 0
    state = training.load_checkpoint(checkpoint, identity)
    if state is not None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        scaler.load_state_dict(state["scaler"])
        training.set_rng_states(state["rng"], batches, noise)
        trainlog.rows = state["log"]
        start = state["step"]
        log.info("resuming from %s at step %d of %d", checkpoint, start, cfg.steps)
        for row in trainlog.rows if run is not None else []:  # this run gets the whole curve
            run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def save(step: int) -> None:
        training.save_checkpoint(checkpoint, {
            "identity": json.dumps(identity, sort_keys=True), "step": step,
            "finished": step == cfg.steps,
            "net": net.state_dict(), "opt": opt.state_dict(), "scaler": scaler.state_dict(),
            "rng": training.rng_states(batches, noise), "log": trainlog.rows,
        })  # fmt: skip

    B = train.batch_size
    pixels = channels * size * size
    monitor = training.LossMonitor(("loss", "mse"))
    bar = tqdm(total=cfg.steps, initial=start, desc="train autoencoder", unit="step",
               disable=None)  # fmt: skip
    tick, tick_step = time.perf_counter(), start
    net.train()
    for step in range(start + 1, cfg.steps + 1):
        x = data.batch(B, batches)  # (B, C, S, S) in [-1, 1]
        with runtime.autocast(device, dtype):
            recon, mu, logvar = step_net(x, generator=noise)
        mse = F.mse_loss(recon.float(), x)  # per pixel, on the [-1, 1] scale
        if cfg.kind == "vae":  # per image: Gaussian reconstruction term + weighted KL
            loss = mse * pixels + cfg.kl_weight * vae_kl(mu.float(), logvar.float())
        else:
            loss = mse
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        monitor.add(step, loss, mse / 4)  # logged MSE on the [0, 1] pixel scale

        if step % train.log_every == 0 or step == cfg.steps:
            losses = monitor.drain()  # raises at a non-finite loss
            now = time.perf_counter()
            images_per_s = (step - tick_step) * B / (now - tick)
            tick, tick_step = now, step
            row = {"step": step, "epoch": round(step * B / len(data), 4), **losses,
                   "images_per_s": round(images_per_s, 1)}  # fmt: skip
            trainlog.rows.append(row)
            if run is not None:
                run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
            bar.set_postfix(loss=f"{losses['loss']:.4f}", mse=f"{losses['mse']:.4f}",
                            img_s=f"{images_per_s:.0f}")  # fmt: skip
        if step % train.checkpoint_every == 0 or step == cfg.steps:
            monitor.check()  # never checkpoint weights that saw a non-finite loss
            save(step)
            trainlog.write(log_path)
        bar.update(1)
    bar.close()
    trainlog.write(log_path)

    config = {"model": "autoencoder", "image_size": size, "channels": channels,
              "autoencoder": runtime.unwrap(net).config()}  # fmt: skip
    return AutoencoderResult(net=net, config=config)


@torch.no_grad()
def reconstruction_grid(net: torch.nn.Module, images: np.ndarray, device: torch.device):
    """Originals (top row of each pair) above their reconstructions, 8 per row."""
    x = to_float(torch.from_numpy(np.ascontiguousarray(images[:32])).to(device))
    return pairs_grid(images[:32], to_uint8(net.eval()(x)[0]))
