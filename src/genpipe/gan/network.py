"""DCGAN generator and discriminator, the GAN losses, the gradient penalty and the EMA update.

Shapes follow pytorch/examples dcgan: the generator grows a base x base map (7 for 28,
else 4) by stride-2 transposed convs; the discriminator mirrors it back down to one logit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from genpipe.params.schema import GanLoss, GanParams
from genpipe.resolution import resolution_plan

__all__ = [
    "Discriminator",
    "Generator",
    "discriminator_loss",
    "ema_update",
    "recompute_batchnorm",
    "gan_config",
    "generator_loss",
    "gradient_penalty",
    "init_weights",
    "minibatch_stddev",
    "prior_labels",
    "r1_penalty",
    "resolution_plan",
]

LOSSES = get_args(GanLoss)
MIN_CHANNELS = 8  # the narrowest layer, however many times the width is halved


def _widths(width: int, n: int) -> list[int]:
    """width, width//2, ... (n entries), never below MIN_CHANNELS (or width, if smaller)."""
    floor = min(width, MIN_CHANNELS)
    return [max(width >> i, floor) for i in range(n)]


def init_weights(module: nn.Module) -> None:
    """DCGAN init: conv weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            # under spectral norm `weight` is computed; initialise the stored original
            sn = getattr(m, "parametrizations", None)
            nn.init.normal_(sn.weight.original if sn else m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def prior_labels(n: int, class_weights: list[float], device: torch.device | None = None) -> Tensor:
    """(n,) class labels in the proportions `class_weights`, exactly up to rounding (largest
    remainder), interleaved rather than grouped: the labels a conditional generator samples
    the data's distribution with. Deterministic, so fixed noise gives fixed samples; with
    equal weights, 0, 1, ..., K-1, 0, 1, ..."""
    w = torch.tensor(class_weights, dtype=torch.float64)
    share = n * w / w.sum()
    counts = share.floor().long()
    extra = n - int(counts.sum())
    counts[torch.argsort(counts - share, stable=True)[:extra]] += 1  # largest remainders
    labels = torch.repeat_interleave(torch.arange(len(w)), counts)
    # the j-th of a class's c labels sits at (j + 0.5) / c of the way: its share spread out
    keys = torch.cat([(torch.arange(int(c)) + 0.5) / max(int(c), 1) for c in counts])
    return labels[torch.argsort(keys, stable=True)].to(device)


class Generator(nn.Module):
    """z (N, z_dim) -> image (N, C, S, S) in [-1, 1]. Conditional (`class_weights`, the
    train split's class shares): the label's one-hot joins z, and a call without labels
    samples them from those shares (prior_labels)."""

    def __init__(self, image_size: int, channels: int, z_dim: int, width: int, depth: int = 0,
                 class_weights: list[float] | None = None):  # fmt: skip
        super().__init__()
        class_weights = list(class_weights) if class_weights else None
        self._config = dict(
            image_size=image_size, channels=channels, z_dim=z_dim, width=width, depth=depth,
            class_weights=class_weights,
        )  # fmt: skip
        self.class_weights = class_weights
        self.num_classes = len(class_weights) if class_weights else 0
        base, n_up = resolution_plan(image_size)
        widths = _widths(width, n_up + 1)  # widths[i]: feature maps at base * 2**i
        self.z_dim = z_dim
        z_in = z_dim + self.num_classes
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_in, widths[0], base, 1, 0, bias=False),  # 1x1 -> base x base
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),  # doubles H and W
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            for _ in range(depth):
                layers += [
                    nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                ]
        layers += [nn.Conv2d(widths[-1], channels, 3, 1, 1), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        z = z.reshape(-1, self.z_dim)
        if self.num_classes:
            labels = self.labels(len(z), z.device) if labels is None else labels
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)
        return self.main(z[:, :, None, None])  # (N, C, S, S)

    def labels(self, n: int, device: torch.device | None = None) -> Tensor | None:
        """The labels that n samples take from the data's class shares; None when
        unconditional."""
        return prior_labels(n, self.class_weights, device) if self.class_weights else None

    def config(self) -> dict:
        """Constructor kwargs: Generator(**netG.config()) rebuilds the architecture."""
        return dict(self._config)


def minibatch_stddev(h: Tensor, group: int) -> Tensor:
    """(N, C, H, W) features -> (N, 1, H, W): ProGAN's minibatch standard deviation (Karras
    et al. 2018). The batch falls into runs of `group` consecutive samples (the largest
    divisor of N up to it), so a rank's slice of the batch under torchrun forms the groups
    one process would; each sample's map is its group's per-feature standard deviation,
    averaged over C, H and W. A discriminator that sees how alike a batch's images are can
    tell a generator whose images are too alike."""
    n, _, height, width = h.shape
    g = max(d for d in range(1, min(group, n) + 1) if n % d == 0)
    # y[a, b]: sample a * g + b, its features in channels_last's order (a view of the
    # training's memory format). Not torch.var: its CPU kernel took 6x as long here
    y = h.float().permute(0, 2, 3, 1).reshape(n // g, g, -1)
    deviation = y - y.mean(dim=1, keepdim=True)
    std = (deviation.square().mean(dim=1) + 1e-8).sqrt()  # (n // g, H * W * C)
    per_group = std.mean(dim=1).repeat_interleave(g)  # (n,)
    return per_group[:, None, None, None].expand(n, 1, height, width).to(h.dtype)


class Discriminator(nn.Module):
    """image (N, C, S, S) -> logits (N,). Conditional (`num_classes`): a projection
    discriminator (Miyato & Koyama 2018), whose logit gains the inner product of a learned
    class embedding with the image's features, summed over the last map. `minibatch_std`
    (a group size; 0: off): the last layer also sees minibatch_stddev's map."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        width: int,
        depth: int = 0,
        spectral_norm: bool = False,
        batch_norm: bool = True,
        num_classes: int = 0,
        minibatch_std: int = 0,
    ):
        super().__init__()
        self._config = dict(
            image_size=image_size,
            channels=channels,
            width=width,
            depth=depth,
            spectral_norm=spectral_norm,
            batch_norm=batch_norm,
            num_classes=num_classes,
            minibatch_std=minibatch_std,
        )
        self.minibatch_std = minibatch_std
        base, n_up = resolution_plan(image_size)
        widths = _widths(width, n_up)[::-1]  # widths[i]: feature maps at S / 2**(i+1)
        use_bn = batch_norm and not spectral_norm

        def block(c_in: int, c_out: int, kernel: int, stride: int, pad: int, bn: bool) -> list:
            conv = nn.Conv2d(c_in, c_out, kernel, stride, pad, bias=not bn)
            return [conv, nn.BatchNorm2d(c_out)] if bn else [conv]

        layers: list[nn.Module] = []
        c_in = channels
        for i, c_out in enumerate(widths):
            # no BatchNorm on the first layer, as in DCGAN: it sees the raw images
            layers += block(c_in, c_out, 4, 2, 1, use_bn and i > 0)  # halves H and W
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            for _ in range(depth):
                layers += block(c_out, c_out, 3, 1, 1, use_bn)
                layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        extra = 1 if minibatch_std else 0  # the minibatch_stddev map beside the features
        layers.append(nn.Conv2d(c_in + extra, 1, base, 1, 0))  # base x base -> 1x1
        self.main = nn.Sequential(*layers)
        self.embed = nn.Embedding(num_classes, c_in) if num_classes else None
        init_weights(self)
        if self.embed is not None:
            nn.init.xavier_uniform_(self.embed.weight)
        if spectral_norm:
            for m in self.main:
                if isinstance(m, nn.Conv2d):
                    _spectral_norm(m)
            if self.embed is not None:
                _spectral_norm(self.embed)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is None and not self.minibatch_std:
            return self.main(x).flatten()  # (N, 1, 1, 1) -> (N,)
        *body, head = self.main
        h = x
        for layer in body:
            h = layer(h)  # (N, c, base, base): the features the label is projected on
        if self.minibatch_std:
            logits = head(torch.cat([h, minibatch_stddev(h, self.minibatch_std)], 1)).flatten()
        else:
            logits = head(h).flatten()
        if self.embed is None:
            return logits
        if labels is None:
            raise ValueError("a conditional discriminator scores an image with its label")
        return logits + (self.embed(labels).to(h.dtype) * h.sum(dim=(2, 3))).sum(dim=1)

    def config(self) -> dict:
        """Constructor kwargs: Discriminator(**netD.config()) rebuilds the architecture."""
        return dict(self._config)


def gan_config(image_size: int, channels: int, params: GanParams,
               class_weights: list[float] | None = None) -> dict:  # fmt: skip
    """{"generator": kwargs, "discriminator": kwargs} from the data shape and a GanParams;
    with gan.conditional, `class_weights` are the train split's class shares.

    The WGAN-GP critic gets no BatchNorm: the penalty is per sample, and BatchNorm
    would make each critic output depend on the rest of the batch (Gulrajani et al. 2017).
    gan.minibatch_std brings back a dependence on the sample's group, on purpose: ProGAN
    trained WGAN-GP with it.
    """
    if params.conditional and not class_weights:
        raise ValueError("gan.conditional: expected the train split's class shares")
    weights = list(class_weights) if params.conditional and class_weights else None
    return {
        "generator": dict(
            image_size=image_size,
            channels=channels,
            z_dim=params.z_dim,
            width=params.width,
            depth=params.depth,
            class_weights=weights,
        ),
        "discriminator": dict(
            image_size=image_size,
            channels=channels,
            width=params.width,
            depth=params.depth,
            spectral_norm=params.spectral_norm,
            batch_norm=params.loss != "wgan-gp",
            num_classes=len(weights) if weights else 0,
            minibatch_std=params.minibatch_std,
        ),
    }


def _check_kind(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"gan.loss: expected one of {', '.join(LOSSES)}; got {kind!r}")


def discriminator_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's (critic's) loss on (N,) logits; for wgan-gp, without the penalty."""
    _check_kind(kind)
    # in fp32: the logits may come out of a bf16 autocast region
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "non-saturating":
        # BCE with logits: -log sigmoid(real) - log(1 - sigmoid(fake))
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    return fake.mean() - real.mean()  # wgan-gp


def generator_loss(kind: str, fake_logits: Tensor) -> Tensor:
    """The generator's loss on the discriminator's (N,) logits for its samples."""
    _check_kind(kind)
    fake = fake_logits.float()
    if kind == "non-saturating":
        return F.softplus(-fake).mean()  # -log sigmoid(fake)
    return -fake.mean()  # hinge and wgan-gp


def gradient_penalty(
    netD: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor, labels: Tensor | None = None
) -> Tensor:
    """WGAN-GP: mean over the batch of (||grad_x D(x_hat)||_2 - 1)^2 at random interpolates.

    The interpolation weights are `alpha` (N,), drawn by the caller with the run's noise
    generator. The graph is kept (create_graph=True), so backward on the result reaches
    netD's weights.
    """
    n = real.shape[0]
    alpha = alpha.to(real.dtype).reshape(n, 1, 1, 1)
    x_hat = torch.lerp(fake.detach().to(real.dtype), real.detach(), alpha).requires_grad_(True)
    scores = netD(x_hat) if labels is None else netD(x_hat, labels)  # conditional: the reals'
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norm = grad.float().reshape(n, -1).norm(2, dim=1)  # (N,)
    return ((norm - 1.0) ** 2).mean()


def r1_penalty(real: Tensor, real_logits: Tensor) -> Tensor:
    """R1: mean over the batch of ||grad_x D(x)||^2 at the real images, which must have been
    marked requires_grad before D scored them. The graph is kept, as in gradient_penalty."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return grad.float().square().reshape(len(real), -1).sum(dim=1).mean()


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay at `step` (from 1), ramped up as TensorFlow's ExponentialMovingAverage
    does with num_updates: min(decay, (1 + step) / (10 + step)). Without the ramp, 0.999
    over 2000 steps leaves 0.999^2000 = 13% of the random initial weights in the average."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, weight: float | Tensor) -> None:
    """ema = (1 - weight) * ema + weight * model for parameters; buffers (BatchNorm stats)
    copied. `weight` is 1 - decay: a 0-d tensor on the device (a CUDA graph's input) that
    holds the value the host computed, so graphed and eager steps agree to the bit."""
    # by position, not name: a torch.compile'd model prefixes its names with `_orig_mod.`
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.to(e.dtype), weight)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


@torch.no_grad()
def recompute_batchnorm(net: nn.Module, inputs: Iterable[Tensor | tuple[Tensor, ...]]) -> None:
    """Replace `net`'s BatchNorm running statistics by the plain average of the batch
    statistics it computes on `inputs` (each a tensor, or a tuple of net's arguments), then
    leave it in eval mode; the weights are kept.

    For the EMA generator ("standing statistics", Brock et al. 2019, BigGAN): ema_update
    copies the live G's running statistics, which belong to other weights, and in eval mode
    the EMA's samples are then normalised by statistics that are not their own."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    net.train()
    for x in inputs:
        net(*x) if isinstance(x, tuple) else net(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    net.eval()
