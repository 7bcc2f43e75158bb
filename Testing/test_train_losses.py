"""GAN losses: lazy R1 scaled by its interval, hinge/logistic, path length, WGAN-GP on an analytic critic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from GANTrainerLib.losses import StyleGAN2Loss, WGANGPLoss, pairwise_similarity
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


def test_pairwise_similarity_is_the_mean_correlation_between_every_two_volumes():
    torch.manual_seed(0)
    x = torch.randn(5, 2, 3, 4, 4)
    flat = x.flatten(2).transpose(0, 1).double().numpy()
    expect = np.mean([np.corrcoef(ch)[np.triu_indices(5, 1)].mean() for ch in flat])
    assert pairwise_similarity(x).item() == pytest.approx(expect, abs=1e-5)
    same = x[:1].repeat(3, 1, 1, 1, 1)
    assert pairwise_similarity(same).item() == pytest.approx(1.0, abs=1e-5)
    assert pairwise_similarity(torch.cat([x[:1], -x[:1]])).item() == pytest.approx(-1.0, abs=1e-5)
    empty = torch.zeros(1, 1, 3, 4, 4)
    assert pairwise_similarity(torch.cat([empty, empty])).item() == pytest.approx(1.0)   # two constants: alike
    assert pairwise_similarity(torch.cat([empty, x[:1, :1]])).item() == pytest.approx(0.0, abs=1e-6)
    assert pairwise_similarity(torch.cat([empty, empty, x[:1, :1]])).item() == pytest.approx(1 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        pairwise_similarity(x[:1])


def test_the_diversity_term_charges_fakes_only_for_resembling_each_other_more_than_reals_do(nets):
    """diversity_weight: D steps keep a running mean of the reals' pairwise similarity (the first step sets it);
    the generator pays weight × how far its fakes' similarity exceeds it, nothing below it."""
    G, D = nets
    torch.manual_seed(2)
    reals, reals2 = torch.randn(4, 1, 4, 8, 8), torch.randn(4, 1, 4, 8, 8)
    loss = StyleGAN2Loss(G, D, r1_gamma=0, style_mixing_prob=0, noise_mode="const", diversity_weight=3.0,
                         similarity_decay=0.25, similarity_pool=1)
    plain = StyleGAN2Loss(G, D, r1_gamma=0, style_mixing_prob=0, noise_mode="const")
    z = torch.randn(4, 16)
    _, st = loss.generator_loss(z, step=0)
    assert "reg/similarity" not in st                          # no reals seen yet: no bound, no term
    loss.discriminator_loss(reals, z, step=1)
    first = pairwise_similarity(reals)
    assert loss.real_similarity.item() == pytest.approx(first.item(), abs=1e-6)
    loss.discriminator_loss(reals2, z, step=1)
    assert loss.real_similarity.item() == pytest.approx(first.lerp(pairwise_similarity(reals2), 0.25).item(), abs=1e-6)
    base, _ = plain.generator_loss(z, step=1)
    with torch.no_grad():
        fakes_similar = pairwise_similarity(G(z, noise_mode="const")).item()
    loss.real_similarity = torch.tensor(fakes_similar - 0.1)
    total, st = loss.generator_loss(z, step=1)
    assert st["reg/similarity"].item() == pytest.approx(fakes_similar, abs=1e-5)
    assert total.item() == pytest.approx(base.item() + 3.0 * 0.1, abs=1e-4)
    loss.real_similarity = torch.tensor(fakes_similar + 0.1)   # fakes already less alike than reals: no charge
    total, _ = loss.generator_loss(z, step=1)
    assert total.item() == pytest.approx(base.item(), abs=1e-5)
    late = StyleGAN2Loss(G, D, r1_gamma=0, style_mixing_prob=0, noise_mode="const", diversity_weight=3.0,
                         diversity_start_kimg=1.0, similarity_pool=1)
    late.real_similarity = torch.tensor(fakes_similar - 0.1)
    late.nimg = 999
    assert "reg/similarity" not in late.generator_loss(z, step=1)[1]     # before its start: off
    late.nimg = 1000
    assert late.generator_loss(z, step=1)[0].item() == pytest.approx(base.item() + 3.0 * 0.1, abs=1e-4)
    with pytest.raises(ValueError, match="diversity_weight must be ≥ 0"):
        StyleGAN2Loss(G, D, diversity_weight=-1.0)
    with pytest.raises(ValueError, match="diversity_start_kimg must be ≥ 0"):
        StyleGAN2Loss(G, D, diversity_weight=1.0, diversity_start_kimg=-1)


def test_the_fakes_the_diversity_term_judges_share_their_noise(nets):
    """With random noise inputs the G step's fakes share one noise draw while the term is on, so four fakes of one
    latent are identical (similarity 1); drawn with private noise, as before the term starts, they are not."""
    G, D = nets
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(1.0)
    loss = StyleGAN2Loss(G, D, r1_gamma=0, style_mixing_prob=0, noise_mode="random", diversity_weight=1.0)
    loss.real_similarity = torch.tensor(0.0)
    z = torch.randn(1, 16).expand(4, -1)
    _, st = loss.generator_loss(z, step=1)
    assert st["reg/similarity"].item() == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        private, _ = loss.generate(z)
    assert pairwise_similarity(private).item() < 0.99


def test_the_diversity_term_can_compare_blocks_so_speckle_does_not_make_fakes_differ(nets):
    """similarity_pool 4: volumes with one layout and independent voxel speckle that averages out over
    each 4³ block count as alike; the same volumes compared voxel by voxel do not."""
    G, D = nets
    torch.manual_seed(5)
    layout = torch.randn(1, 1, 2, 2, 2).repeat_interleave(4, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)
    speckle = torch.randn(3, 1, 8, 8, 8)
    speckle = speckle - F.avg_pool3d(speckle, 4).repeat_interleave(4, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)
    fakes = layout + 3 * speckle
    blocks = StyleGAN2Loss(G, D, diversity_weight=1.0, similarity_pool=4)
    voxels = StyleGAN2Loss(G, D, diversity_weight=1.0)                  # the default: voxel by voxel
    blocks.real_similarity = voxels.real_similarity = torch.tensor(0.0)
    assert blocks.diversity_excess(fakes)[1].item() == pytest.approx(1.0, abs=1e-5)
    assert voxels.diversity_excess(fakes)[1].item() < 0.3
    with pytest.raises(ValueError, match="similarity_pool must be ≥ 1"):
        StyleGAN2Loss(G, D, similarity_pool=0)


def test_the_diversity_term_spreads_a_collapsed_generator(nets):
    """A generator taught to draw one volume whatever its latent (pairwise similarity near 1) draws different
    volumes again when the diversity term alone is minimised against reals that correlate 0."""
    G, D = nets
    torch.manual_seed(4)
    target = torch.randn(1, 1, 4, 8, 8)
    opt = torch.optim.Adam(G.parameters(), lr=0.01)
    z = torch.randn(8, 16)
    for _ in range(150):                                       # collapse it
        opt.zero_grad(set_to_none=True)
        F.mse_loss(G(z, noise_mode="const"), target.expand(8, -1, -1, -1, -1)).backward()
        opt.step()
    with torch.no_grad():
        collapsed = pairwise_similarity(G(z, noise_mode="const")).item()
    assert collapsed > 0.9
    loss = StyleGAN2Loss(G, D, r1_gamma=0, style_mixing_prob=0, noise_mode="const", diversity_weight=1.0,
                         similarity_pool=1)
    loss.real_similarity = torch.tensor(0.0)
    for _ in range(100):
        opt.zero_grad(set_to_none=True)
        loss.diversity_excess(G(z, noise_mode="const"))[0].backward()
        opt.step()
    with torch.no_grad():
        spread = pairwise_similarity(G(torch.randn(8, 16), noise_mode="const")).item()
    assert spread < 0.5, (collapsed, spread)


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
