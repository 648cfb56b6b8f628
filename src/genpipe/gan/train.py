"""The GAN training loop, written out: (1) update D, (2) update G, (3) update the EMA; at
the end, (4) the EMA's BatchNorm statistics recomputed for its own weights."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from genpipe import distributed, runtime, training
from genpipe.checkpoint import Checkpoint, run_identity
from genpipe.data.split import class_shares
from genpipe.errors import TrainingError
from genpipe.gan.network import (
    Discriminator,
    Generator,
    discriminator_loss,
    ema_decay_at,
    ema_update,
    gan_config,
    generator_loss,
    gradient_penalty,
    r1_penalty,
    recompute_batchnorm,
)
from genpipe.images import GRID_SAMPLES, image_grid, to_uint8
from genpipe.params.rules import minibatch_group_error
from genpipe.params.schema import GanParams, Params
from genpipe.progress import Progress
from genpipe.schedule import lr_factor, set_lr


@dataclass
class GanResult:
    netG: Generator
    netD: Discriminator
    ema: Generator  # what evaluation uses
    config: dict[str, Any]  # rebuilds the networks without params.yaml


@dataclass
class Gan:
    """The networks, their EMA and optimizers, and how a step runs them."""

    cfg: GanParams
    device: torch.device
    dtype: torch.dtype | None  # autocast's; None: fp32
    netG: Generator
    netD: Discriminator
    stepG: nn.Module  # what the step calls: netG, or its torch.compile'd or DDP view
    stepD: nn.Module
    # D as the G phase calls it: never DDP's wrapper, as D's weights are frozen then and
    # DDP's reducer would wait for their gradients; its BatchNorm still syncs
    scoreD: nn.Module
    ema: Generator
    optG: torch.optim.Optimizer
    optD: torch.optim.Optimizer
    scalerG: torch.amp.GradScaler
    scalerD: torch.amp.GradScaler
    B: int  # batch size
    graphed: bool  # the step is replayed as a CUDA graph
    world: distributed.World | None = None  # under torchrun: this rank's slice of each batch
    stream: torch.cuda.Stream | None = None  # when graphed: the step's warm-up and capture


def build_gan(params: Params, channels: int, size: int, device: torch.device,
              world: distributed.World | None = None,
              class_weights: list[float] | None = None) -> Gan:  # fmt: skip
    """Seeded networks on the device, in train.precision and train.compile's form; under
    torchrun (`world`), BatchNorm over the global batch and the step's views in DDP. With
    gan.conditional, `class_weights` are the train split's class shares."""
    cfg, train = params.gan, params.train
    dtype = runtime.resolve_precision(train.precision, device)
    runtime.seed_everything(params.training_seed, device, train.cpu_threads)
    # fp16's loss scaler checks for infs on the host, which a graph cannot hold; compile
    # has graphs of its own
    cuda = device.type == "cuda"
    graphed = cuda and train.cuda_graphs and not train.compile and dtype != torch.float16
    # a graph bakes in the lr it was captured with: a decaying lr runs eagerly
    graphed = graphed and cfg.lr_decay == "none"
    # under DDP too: NCCL's all-reduces are captured with the step, once DDP is built on the
    # stream that warms the step up and captures it (training.CudaGraphStep)
    stream = torch.cuda.Stream(device) if graphed else None

    networks = gan_config(size, channels, cfg, class_weights)  # WGAN-GP's: no BatchNorm
    netG = runtime.prepare_module(Generator(**networks["generator"]), device, train.compile)
    netD = runtime.prepare_module(Discriminator(**networks["discriminator"]), device, train.compile)
    if world is not None:  # before the EMA's copy and the optimizers: the same tensors
        netG = distributed.sync_batchnorm(netG)
        netD = distributed.sync_batchnorm(netD)
    # compiled views share their weights with netG/netD, which are what is saved
    with training.on_stream(stream):  # rank 0's weights broadcast there, too
        stepG = distributed.data_parallel(netG, world, device)
        stepD = distributed.data_parallel(netD, world, device)
    scoreD = stepD if world is None else netD
    if train.compile:  # one process only: params and distributed.joined refuse DDP's
        stepG, stepD = torch.compile(stepG), torch.compile(stepD)
        scoreD = stepD
    betas = (cfg.beta1, cfg.beta2)
    return Gan(
        cfg=cfg,
        device=device,
        dtype=dtype,
        netG=netG,
        netD=netD,
        stepG=stepG,
        stepD=stepD,
        scoreD=scoreD,
        ema=copy.deepcopy(netG).eval().requires_grad_(False),
        # capturable on CUDA, graphed or not: Adam keeps its step count on the device, where
        # a graph can update it, and train.cuda_graphs changes the speed, not the weights
        optG=torch.optim.Adam(netG.parameters(), lr=cfg.lr_g, betas=betas, capturable=cuda),
        optD=torch.optim.Adam(netD.parameters(), lr=cfg.lr_d, betas=betas, capturable=cuda),
        scalerG=runtime.grad_scaler(device, dtype),
        scalerD=runtime.grad_scaler(device, dtype),
        B=train.batch_size,
        graphed=graphed,
        world=world,
        stream=stream,
    )


def draw(
    gan: Gan, data: training.DeviceImages, batches: torch.Generator, noise: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """One step's randomness, for each of its D updates: which real images (d_steps, B), the
    noise z (d_steps, B, z_dim) and, for WGAN-GP, the interpolation weights (d_steps, B)."""
    cfg, B, device = gan.cfg, gan.B, gan.device
    index = torch.stack([data.draw(B, batches) for _ in range(cfg.d_steps)])
    z = torch.randn(cfg.d_steps, B, cfg.z_dim, device=device, generator=noise)
    if cfg.loss != "wgan-gp":
        return index, z
    return index, z, torch.rand(cfg.d_steps, B, device=device, generator=noise)


def gan_step(
    gan: Gan,
    data: training.DeviceImages,
    ema_weight: float | torch.Tensor,  # 1 - the EMA's decay at this step
    index: torch.Tensor,
    z: torch.Tensor,
    alpha: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step on the draws of `draw`; returns the last D loss and G's loss."""
    cfg, device, dtype = gan.cfg, gan.device, gan.dtype
    # (1) Update D: maximise D(x) - D(G(z)) in the chosen loss's form
    for i in range(cfg.d_steps):
        real = data.take(index[i])  # (B, C, S, S) in [-1, 1]
        real.requires_grad_(cfg.r1_weight > 0)  # R1 differentiates D(real) by the images
        # conditional: G draws for the real images' labels, and D scores both with them
        y = None if data.labels is None else data.labels[index[i]]
        labels = () if y is None else (y,)
        with runtime.autocast(device, dtype):
            # the last fake keeps G's graph: (2) scores it again rather than drawing anew
            with torch.set_grad_enabled(i == cfg.d_steps - 1):
                fake = gan.stepG(z[i], *labels)
            real_logits = gan.stepD(real, *labels)
            loss_d = discriminator_loss(cfg.loss, real_logits, gan.stepD(fake.detach(), *labels))
        if cfg.r1_weight > 0:  # R1 (Mescheder et al. 2018): keeps D flat on the real data
            loss_d = loss_d + 0.5 * cfg.r1_weight * r1_penalty(real, real_logits)
        if alpha is not None:  # WGAN-GP; the penalty's double backward stays in fp32
            loss_d = loss_d + cfg.gp_weight * gradient_penalty(
                gan.stepD, real, fake.detach().float(), alpha=alpha[i], labels=y
            )
        gan.optD.zero_grad(set_to_none=True)
        gan.scalerD.scale(loss_d).backward()
        gan.scalerD.step(gan.optD)
        gan.scalerD.update()

    # (2) Update G: make the updated D score G(z) as real. D's weights are frozen meanwhile:
    # the backward pass then skips their gradients, which G's update never reads
    gan.netD.requires_grad_(False)
    with runtime.autocast(device, dtype):
        loss_g = generator_loss(cfg.loss, gan.scoreD(fake, *labels))
    gan.optG.zero_grad(set_to_none=True)
    gan.scalerG.scale(loss_g).backward()
    gan.scalerG.step(gan.optG)
    gan.scalerG.update()
    gan.netD.requires_grad_(True)

    # (3) The EMA of G's weights is what gets evaluated
    ema_update(gan.ema, gan.netG, ema_weight)
    return loss_d.detach(), loss_g.detach()  # kept alive, the graphs would hold their memory


def make_step(
    gan: Gan, data: training.DeviceImages, batches: torch.Generator, noise: torch.Generator
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """step(t) runs training step t (from 1): draws its randomness, then runs gan_step,
    eagerly or, when gan.graphed, replayed as a CUDA graph. Under torchrun every rank draws
    the whole batch's randomness, the same on all, and steps on its own slice of it."""
    graphs = training.CudaGraphStep
    warmup = graphs.DDP_WARMUP if gan.world is not None else graphs.WARMUP
    graph = training.CudaGraphStep(functools.partial(gan_step, gan, data), "GAN", warmup,
                                   gan.stream)  # fmt: skip
    cfg = gan.cfg
    part = gan.world.part(gan.B) if gan.world is not None else None

    def step(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight = 1.0 - ema_decay_at(t, cfg.ema_decay)
        if cfg.lr_decay != "none":  # then gan.graphed is False: the new lr is read eagerly
            factor = lr_factor(cfg.lr_decay, t, cfg.steps)
            set_lr(gan.optG, cfg.lr_g * factor)
            set_lr(gan.optD, cfg.lr_d * factor)
        draws = draw(gan, data, batches, noise)
        if part is not None:  # (d_steps, B, ...) -> (d_steps, B / world size, ...)
            draws = tuple(x[:, part] for x in draws)
        if not gan.graphed:
            return gan_step(gan, data, weight, *draws)
        return graph(torch.full((), weight, device=gan.device), *draws)

    return step


def train_gan(
    params: Params,
    images: np.ndarray,  # (N, C, S, S) uint8, the train split
    data_hash: str,  # of the prepared data: a checkpoint must match it to be resumed
    device: torch.device,
    checkpoint: Path,
    log_path: Path,
    run: Any = None,  # a tracking.training_run.TrainingRun, or None
    world: distributed.World | None = None,  # under torchrun: rank 0 writes, all train
    labels: np.ndarray | None = None,  # (N,) the train split's: gan.conditional needs them
) -> GanResult:
    """params.gan.steps steps on `images`, resumed from `checkpoint` when it holds this very
    run; the curve goes to `run` and the progress shown as it grows, to `log_path` at the end.
    Under torchrun each rank steps on its slice of every batch; rank 0 writes the files."""
    cfg, train = params.gan, params.train
    _, channels, size, _ = images.shape
    training.check_batch_size(train.batch_size, len(images))  # before any work
    per_process = train.batch_size // (world.size if world else 1)
    if cfg.minibatch_std and per_process % cfg.minibatch_std:  # an outer torchrun's size
        raise TrainingError(minibatch_group_error(cfg.minibatch_std, per_process))
    # conditional: every image labeled, in 2 classes or more, checked before any work
    key, n = "gan.conditional", len(images)
    weights = class_shares(labels, key, n) if cfg.conditional else None
    gan = build_gan(params, channels, size, device, world, weights)
    data = training.DeviceImages(images, device, train.compile,
                                 labels if cfg.conditional else None)  # fmt: skip
    batches = runtime.make_generator(device, params.training_seed + 1)  # which images
    noise = runtime.make_generator(device, params.training_seed + 2)  # z and GP interpolation
    identity = run_identity("gan", params.model_dump(mode="json", by_alias=True),
                            data_hash, world.size if world else 1)  # fmt: skip
    states = {"netG": gan.netG, "netD": gan.netD, "ema": gan.ema, "optG": gan.optG,
              "optD": gan.optD, "scalerG": gan.scalerG, "scalerD": gan.scalerD}  # fmt: skip
    ckpt = Checkpoint(checkpoint, identity, cfg.steps, states, (batches, noise), world)
    with ckpt:  # a failure before a step of work is saved puts back the file it found
        restored = training.restore_or_end(ckpt, run)

        B = train.batch_size
        monitor = training.LossMonitor(("loss_d", "loss_g"), world)
        gan.netG.train()
        gan.netD.train()
        step_fn = make_step(gan, data, batches, noise)
        with Progress("train gan", cfg.steps, restored.step) as progress:
            trainlog = training.TrainLog(restored, run, progress)
            for step in range(restored.step + 1, cfg.steps + 1):
                loss_d, loss_g = step_fn(step)  # gan_step: (1) update D, (2) update G, (3) EMA
                monitor.add(step, loss_d, loss_g)
                progress.update()
                if step % train.log_every == 0 or step == cfg.steps:
                    # drain raises at a non-finite loss; D sees B * d_steps real images a step
                    trainlog.add(step, step * B / len(data), monitor.drain(), B * cfg.d_steps)
                if step % train.checkpoint_every == 0 or step == cfg.steps:
                    monitor.check()  # never checkpoint weights that saw a non-finite loss
                    ckpt.snapshot(step, trainlog.rows)
    # (4) The EMA's BatchNorm statistics, recomputed for its own weights
    standing_statistics(gan, params.training_seed)
    # the same weights on every rank make the same EMA: checked once, bitwise
    distributed.check_same(gan.ema, world, "gan EMA")
    if world is None or world.main:
        trainlog.write(log_path)  # once, at the end: the rows so far live in the checkpoint

    config = {
        "model": "gan", "image_size": size, "channels": channels, "loss": cfg.loss,
        "generator": runtime.unwrap(gan.netG).config(),
        "discriminator": runtime.unwrap(gan.netD).config(),
    }  # fmt: skip
    return GanResult(netG=gan.netG, netD=gan.netD, ema=gan.ema, config=config)


def standing_statistics(gan: Gan, seed: int) -> None:
    """The EMA generator's BatchNorm running statistics recomputed on gan.cfg.ema_bn_batches
    batches of seeded noise (recompute_batchnorm), in fp32 as evaluation runs it. Every rank
    draws the whole batch and takes its slice: the statistics are the global batch's, as in
    one process. With ema_bn_batches 0 the live G's, copied at each step, are kept."""
    if gan.cfg.ema_bn_batches == 0:
        return
    noise = runtime.make_generator(gan.device, seed + 3)  # beside train_gan's seed + 1, + 2
    part = gan.world.part(gan.B) if gan.world is not None else slice(None)
    labels = gan.ema.labels(gan.B, gan.device)  # conditional: the global batch's, sliced
    y = () if labels is None else (labels[part],)
    batches = (
        (torch.randn(gan.B, gan.cfg.z_dim, device=gan.device, generator=noise)[part], *y)
        for _ in range(gan.cfg.ema_bn_batches)
    )
    recompute_batchnorm(gan.ema, batches)


@torch.no_grad()
def sample_grid(netG: torch.nn.Module, z_dim: int, seed: int, device: torch.device) -> Image.Image:
    """An 8 x 8 grid of samples from fixed noise, each image scaled up to at least 32 px."""
    noise = runtime.make_generator(device, seed)
    z = torch.randn(GRID_SAMPLES, z_dim, device=device, generator=noise)
    return image_grid(to_uint8(netG.eval()(z)), rows=8)  # (64, C, S, S)
