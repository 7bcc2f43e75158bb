"""VolumetricGANLib.networks: layers, StyleGAN2-3D and progressive GAN-3D (tiny sizes, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from VolumetricGANLib.networks import (
    FAMILIES,
    ProgressiveDiscriminator,
    ProgressiveGenerator,
    ShapeError,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    build_generator,
    derive_up_factors,
)
from VolumetricGANLib.networks.layers import Resample3d, minibatch_std, modulated_conv3d

from tiny_arch import tiny_stylegan_d, tiny_stylegan_g

TINY = tiny_stylegan_g()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- layers ------------------------------------------------------------------------------------------------
def test_resample_per_axis_shapes_and_constant_preserved():
    x = torch.ones(2, 3, 4, 6, 8)
    up = Resample3d(3, up=(1, 2, 2))
    y = up(x)
    assert y.shape == (2, 3, 4, 12, 16)
    # away from the zero-padded border a constant stays constant (filter gain = factor per axis)
    assert torch.allclose(y[:, :, :, 2:-2, 2:-2], torch.ones_like(y[:, :, :, 2:-2, 2:-2]), atol=1e-6)
    # the untouched D axis is exact everywhere
    assert torch.equal(y[:, :, 0], y[:, :, 3])
    down = Resample3d(3, down=2)
    z = down(torch.ones(1, 3, 8, 8, 8))
    assert z.shape == (1, 3, 4, 4, 4)
    assert torch.allclose(z[:, :, 1:-1, 1:-1, 1:-1], torch.ones(1, 3, 2, 2, 2), atol=1e-6)
    with pytest.raises(ValueError, match="1 or 2"):
        Resample3d(3, up=4)


def test_resample_channels_last_3d():
    x = torch.randn(2, 4, 4, 8, 8)
    r = Resample3d(4, up=2)
    a = r(x)
    b = r(x.to(memory_format=torch.channels_last_3d))
    assert torch.allclose(a, b, atol=1e-6)


def test_modulated_conv_fused_equals_activation_scaling_and_demodulates():
    x = torch.randn(3, 8, 6, 6, 6)
    weight = torch.randn(5, 8, 3, 3, 3)
    styles = torch.rand(3, 8) + 0.5
    a = modulated_conv3d(x, weight, styles, padding=1, fused=True)
    b = modulated_conv3d(x, weight, styles, padding=1, fused=False)
    assert a.shape == (3, 5, 6, 6, 6)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # demodulation: unit-variance input → output variance ≈ 1 in the interior, whatever the style scale
    xl = torch.randn(2, 8, 12, 12, 12)
    out = modulated_conv3d(xl, weight, torch.full((2, 8), 37.0), padding=1)
    var = out[:, :, 2:-2, 2:-2, 2:-2].var().item()
    assert 0.7 < var < 1.3


def test_modulated_conv_low_precision_prenormalisation():
    x = torch.randn(2, 8, 6, 6, 6)
    weight = torch.randn(4, 8, 3, 3, 3) * 1e3      # would overflow fp16 without pre-normalisation
    styles = torch.rand(2, 8) * 1e3 + 1
    ref = modulated_conv3d(x, weight, styles, padding=1, fused=False)
    low = modulated_conv3d(x.bfloat16(), weight.bfloat16(), styles.bfloat16(), padding=1, fused=False)
    assert torch.isfinite(low).all()
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_minibatch_std_groups():
    x = torch.randn(6, 4, 2, 2, 2)
    y = minibatch_std(x, group_size=4)  # 4 does not divide 6 → groups of 3
    assert y.shape == (6, 5, 2, 2, 2)
    same = torch.zeros(4, 4, 2, 2, 2)
    assert torch.allclose(minibatch_std(same)[:, -1], torch.full((4, 2, 2, 2), 1e-4), atol=1e-5)


def test_derive_up_factors_and_bad_shape():
    assert derive_up_factors((32, 128, 128), (2, 8, 8)) == [(2, 2, 2)] * 4
    assert derive_up_factors((32, 128, 128), (4, 4, 4)) == [(2, 2, 2)] * 3 + [(1, 2, 2)] * 2
    with pytest.raises(ValueError, match="power of two"):
        derive_up_factors((24, 32, 32), (4, 4, 4))


# -- StyleGAN2-3D ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base,arch", [((2, 8, 8), "skip"), ((4, 4, 4), "resnet")])
def test_stylegan2_generator_anisotropic_shapes(base, arch):
    G = StyleGAN2Generator(**{**TINY, "base_shape": base, "architecture": arch})
    z = torch.randn(3, 16)
    with torch.no_grad():
        img = G(z)
    assert img.shape == (3, 1, 8, 32, 32)
    assert torch.isfinite(img).all() and img.std() > 0
    assert G.num_ws == G.mapping.num_ws == len(G.synthesis.noise_shapes()) + 1


@pytest.mark.slow
def test_stylegan2_noise_modes_and_reproducible_noise():
    G = StyleGAN2Generator(**TINY)
    with torch.no_grad():
        for blk in G.synthesis.modules():
            if hasattr(blk, "noise_strength"):
                blk.noise_strength.fill_(0.5)
        ws = G.mapping(torch.randn(2, 16))
        c1, c2 = G.synthesis(ws, "const"), G.synthesis(ws, "const")
        r1, r2 = G.synthesis(ws, "random"), G.synthesis(ws, "random")
        n1 = G.synthesis(ws, "none")
        assert torch.equal(c1, c2)
        assert not torch.allclose(r1, r2)
        assert not torch.allclose(c1, n1)
        gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]  # noqa: E731
        a = G.synthesis(ws, noise=G.make_noise(2, gens()))
        b = G.synthesis(ws, noise=G.make_noise(2, gens()))
        assert torch.equal(a, b)
        # sample 1's noise does not depend on its batch mates
        single = G.synthesis(ws[1:], noise=G.make_noise(1, [torch.Generator().manual_seed(6)]))
        assert torch.allclose(single[0], a[1], atol=1e-5)
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, "sometimes")


def test_mapping_truncation_and_w_avg():
    G = StyleGAN2Generator(**TINY)
    z = torch.randn(4, 16)
    G.train()
    assert torch.count_nonzero(G.mapping.w_avg) == 0
    G.mapping(z)
    assert torch.count_nonzero(G.mapping.w_avg) > 0      # tracked in training mode
    G.eval()
    avg = G.mapping.w_avg.clone()
    G.mapping(z)
    assert torch.equal(avg, G.mapping.w_avg)             # frozen in eval mode
    ws0 = G.mapping(z, truncation_psi=0)
    assert torch.allclose(ws0, avg.expand_as(ws0))
    full = G.mapping(z)
    cut = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(cut[:, 2:], full[:, 2:])
    assert torch.allclose(cut[:, :2], avg + 0.5 * (full[:, :2] - avg), atol=1e-6)


def test_shape_errors_are_readable():
    G = StyleGAN2Generator(**TINY)
    with pytest.raises(ShapeError, match=r"MappingNetwork z: expected a tensor of shape \(\*, 16\), got \(2, 15\)"):
        G(torch.randn(2, 15))
    D = StyleGAN2Discriminator(**tiny_stylegan_d())
    with pytest.raises(ShapeError, match="StyleGAN2Discriminator input"):
        D(torch.randn(2, 1, 8, 32, 30))


def test_discriminator_forward_backward():
    D = StyleGAN2Discriminator(**tiny_stylegan_d())
    x = torch.randn(4, 1, 8, 32, 32, requires_grad=True)
    out = D(x)
    assert out.shape == (4, 1)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # minibatch-std makes a sample's score depend on its group mates
    x2 = x.detach().clone()
    x2[1] += 3.0
    assert not torch.allclose(D(x.detach())[0], D(x2)[0])


def test_generator_gradients_and_channels_last():
    G = StyleGAN2Generator(**{**TINY, "fused_modconv": False})
    img = G(torch.randn(2, 16))
    img.square().mean().backward()
    assert G.mapping.layers[0].weight.grad is not None
    assert G.synthesis.blocks[0].const.grad.abs().sum() > 0


# -- progressive GAN-3D ------------------------------------------------------------------------------------
def test_pgan_shapes_fade_in_and_discriminator():
    G = ProgressiveGenerator(max_res=2, nch=1)
    z = torch.randn(3, 32)
    with torch.no_grad():
        assert G(z).shape == (3, 1, 16, 16, 16)
        assert G(z, progress=1).shape == (3, 1, 8, 8, 8)
        full = G(z, progress=2)
        half = G(z, progress=1.5)
        assert half.shape == full.shape
        assert -1 <= float(full.min()) and float(full.max()) <= 1   # tanh output
        assert not torch.allclose(half, full)
        assert torch.allclose(G(z, progress=1.999999), full, atol=1e-4)
    D = ProgressiveDiscriminator(max_res=2, nch=1)
    assert D(full).shape == (3, 1)
    assert D(half, progress=1.5).shape == (3, 1)
    with pytest.raises(ShapeError, match="progress 1"):
        D(full, progress=1)
    with pytest.raises(ValueError, match="no w space"):
        G(z, truncation_psi=0.7)


def test_pgan_padding_mode_replicate_keeps_the_state_dict_and_has_no_border_signal():
    from VolumetricGANLib.networks.pgan import WSConv3d

    zeros = ProgressiveGenerator(max_res=2, nch=1)
    rep = ProgressiveGenerator(max_res=2, nch=1, padding_mode="replicate")
    assert "padding_mode" not in zeros.config()                       # published configs stay as they were
    assert rep.config()["padding_mode"] == "replicate"
    rep.load_state_dict(zeros.state_dict(), strict=True)              # same parameters, only the padding differs
    z = torch.randn(2, 32)
    with torch.no_grad():
        assert not torch.allclose(zeros(z), rep(z))
        rebuilt = build_generator("pgan-3d", rep.config())
        rebuilt.load_state_dict(rep.state_dict())
        assert torch.equal(rebuilt(z), rep(z))                        # the config rebuilds the same network
    # a uniform feature map stays uniform through a replicate-padded conv; zero padding marks the border
    flat = torch.ones(1, 4, 4, 4, 4)
    for mode, uniform in (("replicate", True), ("zeros", False)):
        conv = WSConv3d(4, 4, 3, 1, padding_mode=mode)
        torch.nn.init.normal_(conv.conv.bias)
        with torch.no_grad():
            out = conv(flat)
        assert bool(torch.allclose(out, out[:, :, :1, :1, :1].expand_as(out))) is uniform, mode
    D = ProgressiveDiscriminator(max_res=2, nch=1, padding_mode="reflect")
    assert D(torch.zeros(2, 1, 16, 16, 16)).shape == (2, 1) and D.config()["padding_mode"] == "reflect"
    with pytest.raises(ValueError, match="padding_mode 'mirror': choose one of zeros, replicate"):
        ProgressiveGenerator(max_res=1, padding_mode="mirror")


def test_families_registry():
    assert {"stylegan2-3d", "pgan-3d"} <= set(FAMILIES)
    G = build_generator("stylegan2-3d", TINY)
    G2 = build_generator("stylegan2-3d", G.config())
    assert G2.config() == G.config()
    with pytest.raises(KeyError, match="unknown model family"):
        build_generator("nope", {})
    assert math.prod(G.output_shape) == 8 * 32 * 32
