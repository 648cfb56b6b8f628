"""The networks: shapes, GAN losses and penalty, spectral norm, EMA, the autoencoder, configs.

Tiny widths on CPU. Loss values are checked against closed forms; the gradient penalty
against a linear critic whose input gradient is known exactly.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
from torch import nn

from genpipe.autoencoder.network import AutoEncoder, vae_kl
from genpipe.gan.network import (
    LOSSES,
    Discriminator,
    Generator,
    discriminator_loss,
    ema_decay_at,
    ema_update,
    gan_config,
    generator_loss,
    gradient_penalty,
    minibatch_stddev,
    prior_labels,
    r1_penalty,
    recompute_batchnorm,
)
from genpipe.params.schema import GanParams
from genpipe.resolution import resolution_plan

SIZES = (8, 16, 28, 32, 64)
Z_DIM = 8
WIDTH = 16
LATENT = 6


def images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 2 - 1  # (N, C, S, S) in [-1, 1)


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, Z_DIM, generator=torch.Generator().manual_seed(seed))  # (N, z_dim)


def weights(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


# --- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_size", "plan"), [(8, (4, 1)), (16, (4, 2)), (28, (7, 2)), (32, (4, 3)), (64, (4, 4))]
)
def test_resolution_plan(image_size, plan):
    base, n_up = resolution_plan(image_size)
    assert (base, n_up) == plan
    assert base * 2**n_up == image_size


@pytest.mark.parametrize("image_size", [4, 7, 30, 48, 0, True, 8.0])
def test_resolution_plan_rejects_other_sizes(image_size):
    with pytest.raises(ValueError, match=r"image_size: expected .*; got"):
        resolution_plan(image_size)


@pytest.mark.parametrize(
    ("image_size", "channels", "depth"),
    [(size, channels, 0) for size in SIZES for channels in (1, 3)]
    + [(8, 3, 1), (28, 1, 1), (64, 3, 1)],
)
def test_output_shapes(image_size, channels, depth):
    torch.manual_seed(0)
    netG = Generator(image_size, channels, Z_DIM, WIDTH, depth=depth)
    fake = netG(noise(3))
    assert fake.shape == (3, channels, image_size, image_size)
    with torch.no_grad():  # large weights drive the output far past +-1 but for the tanh
        for p in netG.parameters():
            p.mul_(50)
        saturated = netG(noise(3))
    assert saturated.min() >= -1 and saturated.max() <= 1
    assert saturated.abs().max() > 0.99

    for spectral_norm in (False, True):
        netD = Discriminator(image_size, channels, WIDTH, depth=depth, spectral_norm=spectral_norm)
        assert netD(fake).shape == (3,)

    x = images(3, channels, image_size)
    for kind in ("ae", "vae"):
        ae = AutoEncoder(image_size, channels, LATENT, WIDTH, depth=depth, kind=kind)
        recon, mu, logvar = ae(x)
        assert recon.shape == x.shape
        assert recon.min() >= -1 and recon.max() <= 1  # tanh
        assert mu.shape == (3, LATENT)
        assert logvar is None if kind == "ae" else logvar.shape == (3, LATENT)
        assert ae.decode(mu).shape == x.shape


def test_depth_adds_layers_at_every_resolution():
    def convs(net: nn.Module) -> int:
        return sum(isinstance(m, nn.Conv2d | nn.ConvTranspose2d) for m in net.modules())

    _, n_up = resolution_plan(32)
    for depth in (1, 2):
        assert (
            convs(Generator(32, 1, Z_DIM, WIDTH, depth))
            == convs(Generator(32, 1, Z_DIM, WIDTH)) + depth * n_up
        )
        assert (
            convs(Discriminator(32, 1, WIDTH, depth))
            == convs(Discriminator(32, 1, WIDTH)) + depth * n_up
        )
        # encoder and decoder
        assert (
            convs(AutoEncoder(32, 1, LATENT, WIDTH, depth))
            == convs(AutoEncoder(32, 1, LATENT, WIDTH)) + 2 * depth * n_up
        )


def test_generator_widths_halve_from_width():
    netG = Generator(32, 3, Z_DIM, 64)
    outs = [m.out_channels for m in netG.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert outs == [64, 32, 16, 8]
    netD = Discriminator(32, 3, 64)
    outs = [m.out_channels for m in netD.modules() if isinstance(m, nn.Conv2d)]
    assert outs == [16, 32, 64, 1]  # mirrors the generator, widest at base x base


def test_bad_kinds_are_errors():
    with pytest.raises(ValueError, match="expected one of ae, vae; got 'gan'"):
        AutoEncoder(8, 1, LATENT, WIDTH, kind="gan")
    with pytest.raises(ValueError, match="expected one of non-saturating"):
        discriminator_loss("wasserstein", torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="expected one of non-saturating"):
        generator_loss("lsgan", torch.zeros(2))


# --- GAN losses ------------------------------------------------------------------------------


def test_losses_at_zero_logits():
    zeros = torch.zeros(5)
    assert discriminator_loss("non-saturating", zeros, zeros).item() == pytest.approx(math.log(4))
    assert generator_loss("non-saturating", zeros).item() == pytest.approx(math.log(2))
    assert discriminator_loss("hinge", zeros, zeros).item() == pytest.approx(2.0)
    assert generator_loss("hinge", zeros).item() == 0.0
    assert discriminator_loss("wgan-gp", zeros, zeros).item() == 0.0


def test_losses_at_known_logits():
    real, fake = torch.tensor([3.0, 0.5]), torch.tensor([-2.0, 1.0])
    # BCE with logits: softplus(-real) + softplus(fake)
    expected = (math.log1p(math.exp(-3)) + math.log1p(math.exp(-0.5))) / 2 + (
        math.log1p(math.exp(-2)) + math.log1p(math.exp(1))
    ) / 2
    assert discriminator_loss("non-saturating", real, fake).item() == pytest.approx(expected)
    # hinge: only the margins violated count: 1 - 0.5 for real, 1 + 1 for fake
    assert discriminator_loss("hinge", real, fake).item() == pytest.approx((0.5 + 2.0) / 2)
    assert discriminator_loss("wgan-gp", real, fake).item() == pytest.approx(-0.5 - 1.75)
    assert generator_loss("wgan-gp", fake).item() == pytest.approx(0.5)
    # in fp32 whatever the logits' dtype
    assert discriminator_loss("hinge", real.bfloat16(), fake.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("kind", LOSSES)
def test_one_adam_step_trains_both_networks(kind):
    torch.manual_seed(0)
    netG = Generator(16, 1, Z_DIM, WIDTH)
    netD = Discriminator(16, 1, WIDTH, batch_norm=kind != "wgan-gp")
    optD = torch.optim.Adam(netD.parameters(), lr=1e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=1e-4, betas=(0.5, 0.999))
    real, z = images(8, 1, 16), noise(8)

    # (1) Update D
    def d_loss() -> torch.Tensor:
        fake = netG(z).detach()
        loss = discriminator_loss(kind, netD(real), netD(fake))
        if kind == "wgan-gp":
            alpha = torch.rand(len(real), generator=torch.Generator().manual_seed(1))
            loss = loss + 10.0 * gradient_penalty(netD, real, fake, alpha)
        return loss

    before_d, before_loss = weights(netD), d_loss()
    optD.zero_grad()
    before_loss.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in netD.parameters())
    assert all(p.grad is None or not p.grad.any() for p in netG.parameters())  # fake detached
    optD.step()
    # every conv weight moves (a bias can have an exactly zero gradient: hinge and wgan-gp
    # give the output bias -1 from the real and +1 from the fake term)
    assert all(
        not torch.equal(a, b)
        for a, b in zip(before_d, netD.parameters(), strict=True)
        if b.dim() == 4
    )
    assert d_loss().item() < before_loss.item()

    # (2) Update G
    before_g = weights(netG)
    g_before = generator_loss(kind, netD(netG(z)))
    optG.zero_grad()
    g_before.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in netG.parameters())
    optG.step()
    assert all(not torch.equal(a, b) for a, b in zip(before_g, netG.parameters(), strict=True))
    assert generator_loss(kind, netD(netG(z))).item() < g_before.item()


class LinearCritic(nn.Module):
    """D(x) = <w, x>: its gradient with respect to x is w for every x."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w  # (N,)


def test_gradient_penalty_of_a_linear_critic():
    w = torch.randn(3 * 8 * 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    real, fake = images(4, 3, 8).double(), images(4, 3, 8, seed=1).double()

    alpha = torch.rand(4, generator=torch.Generator().manual_seed(2))
    unit = LinearCritic(w / w.norm())
    assert gradient_penalty(unit, real, fake, alpha).item() == pytest.approx(0.0, abs=1e-12)

    double = LinearCritic(2 * w / w.norm())  # ||grad|| = 2: penalty (2 - 1)^2
    gp = gradient_penalty(double, real, fake, alpha)
    assert gp.item() == pytest.approx(1.0)
    # the graph was kept: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = w at ||w|| = 2
    gp.backward()
    torch.testing.assert_close(double.w.grad, double.w.detach())


def test_r1_penalty_of_a_linear_critic():
    # D(x) = w . x: grad_x D = w for every image, so the penalty is ||w||^2, graph kept
    w = torch.randn(3 * 8 * 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    critic = LinearCritic(w)
    real = images(4, 3, 8).double().requires_grad_(True)
    r1 = r1_penalty(real, critic(real))
    assert r1.item() == pytest.approx(w.square().sum().item())
    r1.backward()  # d/dw ||w||^2 = 2 w
    torch.testing.assert_close(critic.w.grad, 2 * w)


def test_gradient_penalty_scores_the_interpolates_alpha_names():
    """alpha 1 scores the reals, alpha 0 the fakes: the penalty is the same as at those
    images themselves, and another alpha gives another penalty."""
    torch.manual_seed(0)
    netD = Discriminator(8, 1, WIDTH, batch_norm=False)
    real, fake = images(4, 1, 8), images(4, 1, 8, seed=1)

    def gp(a: float, x: torch.Tensor, y: torch.Tensor) -> float:
        return gradient_penalty(netD, x, y, torch.full((4,), a)).item()

    assert gp(1.0, real, fake) == pytest.approx(gp(0.0, real, real), rel=1e-6)
    assert gp(0.0, real, fake) == pytest.approx(gp(1.0, fake, fake), rel=1e-6)
    assert gp(0.3, real, fake) != gp(0.7, real, fake)


def test_spectral_norm_bounds_every_conv():
    torch.manual_seed(0)
    netD = Discriminator(16, 3, WIDTH, depth=1, spectral_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in netD.modules())
    x = images(4, 3, 16)
    for _ in range(20):  # one power iteration per training-mode forward
        netD(x)
    convs = [m for m in netD.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5  # two down, one extra after each, the output conv
    for conv in convs:
        assert hasattr(conv, "parametrizations")
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item()
        # power iteration underestimates sigma, so the normalised weight sits just above 1;
        # DCGAN init alone gives sigma well below 1
        assert 0.999 < sigma < 1.05


# --- EMA -------------------------------------------------------------------------------------


def test_ema_decay_ramps_up_to_the_configured_decay():
    assert ema_decay_at(1, 0.999) == pytest.approx(2 / 11)
    decays = [ema_decay_at(step, 0.999) for step in range(1, 20_000)]
    assert decays == sorted(decays) and decays[-1] == 0.999
    # what is left of the random initial weights after the default 2000 steps
    left = 1.0
    for decay in decays[:2000]:
        left *= decay
    assert left < 1e-6 < 0.999**2000


def test_ema_update():
    torch.manual_seed(0)
    model, ema = Generator(8, 1, Z_DIM, WIDTH), Generator(8, 1, Z_DIM, WIDTH)
    with torch.no_grad():  # BatchNorm and biases start equal in both: move every parameter
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model(noise(4))  # training-mode forward: BatchNorm running stats move
    assert not all(torch.equal(a, b) for a, b in zip(ema.buffers(), model.buffers(), strict=True))
    start = [p.detach().clone() for p in ema.parameters()]
    target = [p.detach().clone() for p in model.parameters()]
    assert not any(torch.equal(a, b) for a, b in zip(start, target, strict=True))

    ema_update(ema, model, 0.0)  # weight = 1 - decay
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), start, strict=True))

    ema_update(ema, model, torch.tensor(0.5))  # as the step passes it: a tensor on the device
    for e, a, b in zip(ema.parameters(), start, target, strict=True):
        torch.testing.assert_close(e, (a + b) / 2)

    ema_update(ema, model, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), target, strict=True))

    for (name, e), b in zip(ema.named_buffers(), model.buffers(), strict=True):
        assert torch.equal(e, b), name


def test_recompute_batchnorm_averages_the_nets_own_batch_statistics_and_keeps_its_weights():
    torch.manual_seed(0)
    net = Generator(8, 1, Z_DIM, WIDTH, depth=1)
    net(noise(16))  # running statistics away from their reset values
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = {k: v.clone() for k, v in net.named_parameters()}
    seen: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in norms}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen[m].append(args[0])) for m in norms]
    batches = [noise(32, seed=s) for s in range(3)]

    recompute_batchnorm(net, batches)

    for hook in hooks:
        hook.remove()
    assert not net.training and all(m.momentum == 0.1 for m in norms)
    for name, value in net.named_parameters():
        assert torch.equal(value, weights[name]), name
    for m in norms:  # the plain average over the 3 batches, not a momentum-weighted one
        assert len(seen[m]) == 3 and int(m.num_batches_tracked) == 3
        means = torch.stack([x.mean((0, 2, 3)) for x in seen[m]])
        variances = torch.stack([x.var((0, 2, 3)) for x in seen[m]])  # unbiased, as BatchNorm
        torch.testing.assert_close(m.running_mean, means.mean(0))
        torch.testing.assert_close(m.running_var, variances.mean(0))


# --- autoencoder -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_autoencoder_step_reduces_mse(kind):
    torch.manual_seed(0)
    ae = AutoEncoder(8, 1, LATENT, WIDTH, kind=kind)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    x = images(16, 1, 8)

    def mse() -> torch.Tensor:
        return (ae(x, torch.Generator().manual_seed(0))[0] - x).square().mean()

    before = mse()
    opt.zero_grad()
    before.backward()
    opt.step()
    assert mse().item() < before.item()


def test_vae_sampling_is_reproducible_and_only_in_training():
    torch.manual_seed(0)
    vae = AutoEncoder(8, 1, LATENT, WIDTH, kind="vae")
    x = images(4, 1, 8)
    vae(x)  # give BatchNorm running stats, then freeze them for the comparison
    vae.eval()
    eval_out, mu, _ = vae(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(eval_out, vae.decode(mu))  # eval: z = mu
    vae.training = True  # the VAE samples; its BatchNorm layers stay in eval mode

    def sample(seed: int) -> torch.Tensor:
        return vae(x, torch.Generator().manual_seed(seed))[0]

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    assert not torch.allclose(sample(1), eval_out)


def test_plain_autoencoder_is_deterministic_in_training():
    torch.manual_seed(0)
    ae = AutoEncoder(8, 1, LATENT, WIDTH, kind="ae")
    x = images(4, 1, 8)
    recon, mu, logvar = ae(x, torch.Generator().manual_seed(1))
    assert logvar is None
    assert torch.equal(recon, ae(x, torch.Generator().manual_seed(2))[0])


def test_vae_kl():
    zeros = torch.zeros(3, LATENT)
    assert vae_kl(zeros, zeros).item() == 0.0
    # KL(N(mu, 1) || N(0, 1)) = mu^2 / 2 per dimension, summed over the latent
    assert vae_kl(torch.ones(3, LATENT), zeros).item() == pytest.approx(LATENT / 2)
    # KL(N(0, s^2) || N(0, 1)) = (s^2 - 1 - log s^2) / 2 per dimension
    logvar = torch.full((3, LATENT), math.log(4.0))
    expected = LATENT * (4.0 - 1.0 - math.log(4.0)) / 2
    assert vae_kl(zeros, logvar).item() == pytest.approx(expected)
    assert vae_kl(zeros, -logvar).item() > 0


# --- configs, determinism, precision ---------------------------------------------------------


def networks() -> list[nn.Module]:
    return [
        Generator(28, 3, Z_DIM, WIDTH, depth=1),
        Discriminator(28, 3, WIDTH, depth=1, spectral_norm=True),
        Discriminator(16, 1, WIDTH, batch_norm=False),
        AutoEncoder(16, 3, LATENT, WIDTH, depth=1, kind="vae"),
        Generator(16, 1, Z_DIM, WIDTH, class_weights=[0.5, 0.3, 0.2]),
        Discriminator(16, 1, WIDTH, spectral_norm=True, num_classes=3),
        Discriminator(28, 1, WIDTH, depth=1, num_classes=3, minibatch_std=2),
    ]


def inputs(net: nn.Module) -> torch.Tensor:
    cfg = net.config()
    if isinstance(net, Generator):
        return noise(4)
    return images(4, cfg["channels"], cfg["image_size"])


def output(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    conditional = isinstance(net, Discriminator) and net.config()["num_classes"]
    out = net(x, torch.tensor([0, 1, 2, 1])) if conditional else net(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("index", range(7))
def test_config_round_trip(index):
    torch.manual_seed(0)
    net = networks()[index]
    x = inputs(net)
    output(net, x)  # training mode: moves BatchNorm stats and spectral-norm vectors
    cfg = json.loads(json.dumps(net.config()))
    assert cfg == net.config()
    assert set(cfg) == set(inspect.signature(type(net)).parameters)

    torch.manual_seed(1)  # a different init, overwritten by the state dict
    rebuilt = type(net)(**cfg)
    rebuilt.load_state_dict(net.state_dict())
    net.eval()
    rebuilt.eval()
    assert torch.equal(output(net, x), output(rebuilt, x))


def test_dcgan_init():
    torch.manual_seed(0)
    netG = Generator(64, 3, 100, 64)
    conv = torch.cat(
        [
            m.weight.flatten()
            for m in netG.modules()
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
        ]
    )
    bn = torch.cat([m.weight for m in netG.modules() if isinstance(m, nn.BatchNorm2d)])
    assert conv.std().item() == pytest.approx(0.02, rel=0.05)
    assert bn.mean().item() == pytest.approx(1.0, abs=0.01)
    assert bn.std().item() == pytest.approx(0.02, rel=0.2)


@pytest.mark.parametrize("index", range(7))
def test_channels_last_and_bf16_autocast(index):
    torch.manual_seed(0)
    net = networks()[index]
    x = inputs(net)
    output(net, x)
    net.eval()
    with torch.no_grad():
        reference = output(net, x)
        net.to(memory_format=torch.channels_last)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = output(net, x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)


def test_gan_config_builds_the_networks_from_params():
    params = GanParams(z_dim=32, width=16, depth=1, loss="wgan-gp")
    cfg = gan_config(28, 3, params)
    netG, netD = Generator(**cfg["generator"]), Discriminator(**cfg["discriminator"])
    assert netG(torch.randn(2, 32)).shape == (2, 3, 28, 28)
    # the WGAN-GP critic has no BatchNorm: the penalty is per sample
    assert not any(isinstance(m, nn.BatchNorm2d) for m in netD.modules())
    assert netD.config() == cfg["discriminator"]
    nsgan = gan_config(28, 3, GanParams())["discriminator"]
    assert nsgan["batch_norm"] is True and nsgan["spectral_norm"] is False
    assert nsgan["num_classes"] == 0 and cfg["generator"]["class_weights"] is None
    assert nsgan["minibatch_std"] == 0
    assert gan_config(28, 3, GanParams(minibatch_std=4))["discriminator"]["minibatch_std"] == 4


def test_a_conditional_gan_samples_the_class_shares_and_scores_with_the_label():
    cfg = gan_config(16, 1, GanParams(z_dim=8, width=16, conditional=True), [0.2, 0.3, 0.5])
    netG, netD = Generator(**cfg["generator"]), Discriminator(**cfg["discriminator"])
    assert cfg["discriminator"]["num_classes"] == 3
    with pytest.raises(ValueError, match="class shares"):
        gan_config(16, 1, GanParams(conditional=True))
    # without labels, a batch takes them in the class shares, interleaved, deterministically
    labels = netG.labels(10)
    assert labels.tolist() == [2, 1, 0, 2, 1, 2, 2, 0, 1, 2]
    assert torch.bincount(prior_labels(1000, [0.2, 0.3, 0.5])).tolist() == [200, 300, 500]
    assert prior_labels(4, [1, 1, 1, 1]).tolist() == [0, 1, 2, 3]
    netG.eval()
    z = torch.randn(10, 8)
    torch.testing.assert_close(netG(z), netG(z, labels))
    assert not torch.allclose(netG(z), netG(z, torch.zeros(10, dtype=torch.long)))
    # D's projection term: the same image scores differently under another label
    x = images(3, 1, 16)
    netD.eval()
    assert not torch.allclose(netD(x, torch.tensor([0, 0, 0])), netD(x, torch.tensor([1, 1, 1])))
    with pytest.raises(ValueError, match="scores an image with its label"):
        netD(x)


def test_minibatch_stddev_is_each_groups_spread():
    h = torch.randn(8, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    out = minibatch_stddev(h, 4)  # groups of 4 consecutive samples: 0-3 and 4-7
    assert out.shape == (8, 1, 2, 2)
    for i in range(8):
        group = h[i // 4 * 4 : i // 4 * 4 + 4]
        expected = (group.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(out[i], expected.expand(1, 2, 2))
    # a rank's slice of the batch under torchrun forms the same groups, and the memory
    # format does not change a bit
    torch.testing.assert_close(minibatch_stddev(h[4:], 4), out[4:])
    assert torch.equal(minibatch_stddev(h.contiguous(memory_format=torch.channels_last), 4), out)
    same = h[:1].expand(8, 3, 2, 2)  # a collapsed batch: no spread
    assert minibatch_stddev(same, 4).max() < 1e-3 < out.min()
    # a batch the group does not divide falls into the largest group that does: 6 -> 3
    three = (h[:3].var(0, unbiased=False) + 1e-8).sqrt().mean()
    torch.testing.assert_close(minibatch_stddev(h[:6], 4)[0, 0, 0, 0], three)


@pytest.mark.parametrize("minibatch_std", [0, 4])
def test_the_minibatch_std_discriminator_scores_an_image_against_its_group(minibatch_std):
    torch.manual_seed(0)
    netD = Discriminator(16, 1, WIDTH, batch_norm=False, minibatch_std=minibatch_std).eval()
    x = images(8, 1, 16)
    mate, other = x.clone(), x.clone()
    mate[2] = -mate[2]  # in sample 0's group of 4 (0 to 3)
    other[5] = -other[5]  # not
    torch.testing.assert_close(netD(other)[0], netD(x)[0])
    assert torch.equal(netD(mate)[0], netD(x)[0]) is (minibatch_std == 0)
    assert netD.main[-1].in_channels == WIDTH + (1 if minibatch_std else 0)


# --- the table of models --------------------------------------------------------------------


def test_the_table_names_the_schemas_models_and_each_package_provides_its_part():
    from genpipe import models
    from genpipe.metrics.keys import FID, MSE
    from genpipe.params.schema import MODELS

    assert tuple(models.TABLE) == MODELS  # the schema's names, in its order
    for name, model in models.TABLE.items():
        assert model.name == name
        for kind, functions in models.PROVIDES.items():
            module = model.module(kind)
            assert module.__name__ == f"genpipe.{name}.{kind}"
            missing = [f for f in functions if not callable(getattr(module, f, None))]
            assert not missing, f"genpipe.{name}.{kind} lacks {missing}"
    assert (models.get("gan").metric, models.get("autoencoder").metric) == (FID, MSE)
    assert models.get("gan").registered_name("team") == "team-gan"


def test_an_unknown_model_is_one_line_naming_the_models():
    from genpipe import models
    from genpipe.errors import ParamsError

    with pytest.raises(ParamsError, match="^model: expected one of gan, autoencoder; got 'vae'$"):
        models.get("vae")
    with pytest.raises(ParamsError, match="^usage: evaluate.py MODEL: expected one of gan, "
                                          "autoencoder; got gan extra$"):  # fmt: skip
        models.from_argv("evaluate.py", ["gan", "extra"])
    assert models.from_argv("register.py", ["autoencoder"]).name == "autoencoder"


@pytest.mark.parametrize("model", ["gan", "autoencoder"])
def test_a_packages_signature_describes_its_served_images(tmp_path, model):
    """What register logs with the served model: uint8 images (N, C, S, S) out, and in,
    seeds for the GAN and images for the autoencoder, from the weights' config.json."""
    import numpy as np

    from genpipe import models

    if model == "gan":
        config = {"model": "gan", "image_size": 8, "channels": 3,
                  "generator": Generator(8, 3, z_dim=4, width=8).config()}  # fmt: skip
    else:
        config = {"model": "autoencoder", "image_size": 16, "channels": 1,
                  "autoencoder": AutoEncoder(16, 1, latent_dim=3, width=4).config()}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    signature, example = models.get(model).artifact().signature(tmp_path)
    c, s = config["channels"], config["image_size"]
    [output] = signature.outputs.inputs
    assert (output.type, output.shape) == (np.dtype(np.uint8), (-1, c, s, s))
    if model == "gan":
        assert signature.inputs.input_names() == ["seed"]
        assert list(example["seed"]) == [0, 1]
    else:
        assert signature.inputs == signature.outputs and example.shape == (2, c, s, s)
