"""Convolutional autoencoder (kind "ae") and variational autoencoder (kind "vae").

The encoder halves the image with stride-2 convs down to base x base (7 for 28, else 4),
widening width, 2*width, ...; a linear layer maps to the latent. The decoder mirrors it.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor, nn

from genpipe.params.schema import AutoencoderKind
from genpipe.resolution import resolution_plan

__all__ = ["KINDS", "AutoEncoder", "vae_kl"]

KINDS = get_args(AutoencoderKind)  # config.json's kind, which genpipe may not have written


class AutoEncoder(nn.Module):
    """image (N, C, S, S) -> latent (N, latent_dim) -> reconstruction (N, C, S, S) in [-1, 1]."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int,
        width: int,
        depth: int = 0,
        kind: str = "ae",
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"autoencoder.kind: expected one of {', '.join(KINDS)}; got {kind!r}")
        self._config = dict(
            image_size=image_size,
            channels=channels,
            latent_dim=latent_dim,
            width=width,
            depth=depth,
            kind=kind,
        )
        base, n_up = resolution_plan(image_size)
        self.kind = kind
        widths = [width << i for i in range(n_up)]  # widths[i]: feature maps at S / 2**(i+1)
        self.bottom = (widths[-1], base, base)  # the feature map at the bottleneck
        flat = widths[-1] * base * base

        def block(conv: nn.Module, c: int, encoder: bool) -> list[nn.Module]:
            """conv + BN + activation, then `depth` extra 3x3 convs at the same resolution."""

            def act() -> nn.Module:
                return nn.LeakyReLU(0.2) if encoder else nn.ReLU()

            layers = [conv, nn.BatchNorm2d(c), act()]
            for _ in range(depth):
                layers += [nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), act()]
            return layers

        enc: list[nn.Module] = []
        c_in = channels
        for c_out in widths:
            enc += block(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), c_out, encoder=True)
            c_in = c_out
        self.encoder = nn.Sequential(*enc, nn.Flatten())  # (N, flat)
        self.to_mu = nn.Linear(flat, latent_dim)
        self.to_logvar = nn.Linear(flat, latent_dim) if kind == "vae" else None

        self.from_z = nn.Linear(latent_dim, flat)
        dec: list[nn.Module] = [nn.BatchNorm2d(widths[-1]), nn.ReLU()]
        # up from S / 2**(i+1) to S / 2**i: feature maps widths[i-1], and width at S itself
        for c_in, c_out in zip(widths[::-1], [*widths[-2::-1], width], strict=True):
            up = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)  # doubles H and W
            dec += block(up, c_out, encoder=False)
        dec += [nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(mu, logvar), each (N, latent_dim); logvar is None for a plain autoencoder."""
        h = self.encoder(x)  # (N, flat)
        logvar = self.to_logvar(h) if self.to_logvar is not None else None
        return self.to_mu(h), logvar

    def decode(self, z: Tensor) -> Tensor:
        h = self.from_z(z).view(z.shape[0], *self.bottom)  # (N, widths[-1], base, base)
        return self.decoder(h)  # (N, C, S, S)

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, eps: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(reconstruction, mu, logvar). A VAE in training mode samples z with `generator`,
        or takes its noise `eps` (N, latent_dim) as given."""
        mu, logvar = self.encode(x)
        z = mu
        if logvar is not None and self.training:
            # reparameterisation: z = mu + eps * sigma, eps ~ N(0, I)
            if eps is None:
                eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + eps.to(mu.dtype) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar

    def config(self) -> dict:
        """Constructor kwargs: AutoEncoder(**ae.config()) rebuilds the architecture."""
        return dict(self._config)


def vae_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims, averaged over the batch."""
    mu, logvar = mu.float(), logvar.float()
    return (-0.5 * (1.0 + logvar - mu.square() - logvar.exp()).sum(dim=1)).mean()
