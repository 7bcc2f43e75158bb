"""GAN losses: lazy R1 scaled by its interval, hinge/logistic, path length, WGAN-GP on an analytic critic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from GANTrainerLib.losses import StyleGAN2Loss, WGANGPLoss
from VolumetricGANLib.networks import StyleGAN2Discriminator, StyleGAN2Generator

from tiny_arch import tiny_stylegan_d, tiny_stylegan_g

TINY_G = tiny_stylegan_g((4, 8, 8), (1, 2, 2))
TINY_D = tiny_stylegan_d((4, 8, 8), (1, 2, 2), mbstd_group_size=2)


@pytest.fixture
def nets():
    torch.manual_seed(0)
    return StyleGAN2Generator(**TINY_G), StyleGAN2Discriminator(**TINY_D)


def test_r1_is_scaled_by_its_interval(nets):
    G, D = nets
    reals, z = torch.randn(2, 1, 4, 8, 8), torch.randn(2, 16)
    loss = StyleGAN2Loss(G, D, r1_gamma=2.0, r1_interval=4, style_mixing_prob=0, noise_mode="const")
    torch.manual_seed(1)
    total, stats = loss.discriminator_loss(reals, z, step=0)       # R1 due
    x = reals.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x)
    r1 = g.square().flatten(1).sum(1).mean()
    assert stats["reg/r1"].item() == pytest.approx(r1.item(), rel=1e-5)
    assert total.item() == pytest.approx(stats["loss/D"].item() + r1.item() * 2.0 / 2 * 4, rel=1e-5)
    total1, stats1 = loss.discriminator_loss(reals, z, step=1)      # not due: main loss only
    assert "reg/r1" not in stats1 and total1.item() == pytest.approx(stats1["loss/D"].item())


def test_logistic_and_hinge_main_terms(nets):
    G, D = nets
    reals, z = torch.randn(2, 1, 4, 8, 8), torch.randn(2, 16)
    for kind in ("logistic", "hinge"):
        loss = StyleGAN2Loss(G, D, loss=kind, r1_gamma=0, style_mixing_prob=0, noise_mode="const")
        _, st = loss.discriminator_loss(reals, z, step=1)
        with torch.no_grad():
            fr, rl = D(G(z, noise_mode="const")), D(reals)
        expect = (F.softplus(fr).mean() + F.softplus(-rl).mean()) if kind == "logistic" else \
            (F.relu(1 + fr).mean() + F.relu(1 - rl).mean())
        assert st["loss/D"].item() == pytest.approx(expect.item(), rel=1e-5)


@pytest.mark.slow
def test_generator_loss_with_path_length_updates_mean_and_backprops(nets):
    G, D = nets
    loss = StyleGAN2Loss(G, D, pl_weight=2.0, pl_interval=2)
    total, st = loss.generator_loss(torch.randn(4, 16), step=0)
    assert "reg/pl_penalty" in st and torch.isfinite(total) and loss.pl_mean.item() > 0
    total.backward()
    assert all(p.grad is not None for p in G.mapping.parameters() if p.requires_grad)
    _, st1 = loss.generator_loss(torch.randn(4, 16), step=1)
    assert "reg/pl_penalty" not in st1


def test_style_mixing_mixes_layers(nets):
    G, D = nets
    loss = StyleGAN2Loss(G, D, style_mixing_prob=1.0)
    torch.manual_seed(3)
    ws = loss._ws(torch.randn(8, 16))
    plain = G.mapping(torch.randn(8, 16), 1.0, None)
    assert torch.allclose(plain[:, 0], plain[:, -1])          # unmixed: every layer gets the same w
    assert not torch.allclose(ws[:, 0], ws[:, -1])            # mixed: the last layer comes from z2


class LinearCritic(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(1, *shape) * 0.1)

    def forward(self, x, progress=None):
        return (x * self.a).flatten(1).sum(1, keepdim=True)


class ConstGenerator(torch.nn.Module):
    def forward(self, z, progress=None):
        return torch.zeros(z.shape[0], 1, 2, 2, 2)


def test_wgan_gp_matches_analytic_penalty():
    torch.manual_seed(0)
    D = LinearCritic((1, 2, 2, 2))
    loss = WGANGPLoss(ConstGenerator(), D, gp_lambda=10.0, drift=1e-3)
    reals = torch.randn(4, 1, 2, 2, 2)
    total, st = loss.discriminator_loss(reals, torch.randn(4, 3), step=0)
    norm = D.a.detach().flatten().norm()
    assert st["reg/gp"].item() == pytest.approx(((norm - 1) ** 2).item(), rel=1e-5)
    real_s = D(reals).detach()
    expect = -(real_s.mean() - 0.0) + 10 * (norm - 1) ** 2 + 1e-3 * real_s.square().mean()
    assert total.item() == pytest.approx(expect.item(), rel=1e-5)
