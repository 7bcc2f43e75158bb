"""3-D differentiable augmentation: exact geometry of each operation, gradients, and the ADA controller."""

from __future__ import annotations

import pytest
import torch

from GANTrainerLib.augment import AdaptiveAugment, DiffAugment3D, cutout, flip, translate


def ramp(n=2, shape=(4, 6, 8)):
    x = torch.arange(n * shape[0] * shape[1] * shape[2], dtype=torch.float32).view(n, 1, *shape) + 1
    return x


def test_zero_translation_is_identity():
    """The CoW anchor shifted by one voxel even at zero offset; ours must not."""
    x = ramp()
    assert torch.equal(translate(x, torch.zeros(2, 3, dtype=torch.long)), x)


def test_translation_moves_content_and_fills_zero():
    x = ramp()
    out = translate(x, torch.tensor([[1, 0, 0], [0, -2, 3]]))
    assert torch.equal(out[0, :, 1:], x[0, :, :-1]) and torch.all(out[0, :, 0] == 0)
    assert torch.equal(out[1, :, :, :-2, 3:], x[1, :, :, 2:, :-3])
    assert torch.all(out[1, :, :, -2:] == 0) and torch.all(out[1, :, :, :, :3] == 0)


def test_cutout_zeroes_exactly_the_box():
    x = ramp(1)
    out = cutout(x, torch.tensor([[2, 3, 4]]), (2, 2, 4))
    zero = out == 0
    assert zero.sum() == 2 * 2 * 4
    assert torch.all(zero[0, 0, 1:3, 2:4, 2:6])


def test_flip_only_selected_samples():
    x = ramp()
    out = flip(x, torch.tensor([True, False]), axis=2)
    assert torch.equal(out[0], torch.flip(x[0], dims=(3,))) and torch.equal(out[1], x[1])


def test_p_zero_is_identity_and_p_one_changes_every_sample():
    x = torch.randn(4, 1, 8, 16, 16)
    assert torch.equal(DiffAugment3D(p=0.0)(x), x)
    g = torch.Generator().manual_seed(0)
    out = DiffAugment3D(p=1.0, translation=0.25, cutout=0.5)(x, generator=g)
    assert all(not torch.equal(out[i], x[i]) for i in range(4))


def test_same_generator_seed_same_augmentation_and_gradients_flow():
    aug = DiffAugment3D(p=0.8, translation=0.125, cutout=0.5, brightness=0.2, contrast=0.3, rotation_deg=10, scaling=0.1)
    x = torch.randn(3, 1, 8, 16, 16, requires_grad=True)
    a = aug(x, generator=torch.Generator().manual_seed(5))
    b = aug(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    a.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_rotation_by_zero_with_unit_zoom_is_identity_up_to_interpolation():
    aug = DiffAugment3D(p=1.0, translation=0, cutout=0, flip_axes=(), rotation_deg=1e-9, scaling=1e-9)
    x = torch.randn(2, 1, 6, 10, 12)
    torch.testing.assert_close(aug(x, generator=torch.Generator().manual_seed(0)), x, atol=1e-5, rtol=1e-5)


def test_on_the_cpu_an_unchosen_batch_skips_the_resampling_and_draws_the_same_random_numbers(monkeypatch):
    import GANTrainerLib.augment as augment

    calls = []
    real = augment.F.grid_sample
    monkeypatch.setattr(augment.F, "grid_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(4, 2, 6, 10, 12)
    rotating = 0
    for seed in range(12):
        # rotation/zoom is the first stage that draws (no brightness or contrast): its choice is the first draw
        chosen = torch.rand(4, generator=torch.Generator().manual_seed(seed)) < 0.3
        rotating += bool(chosen.any())
        g_small, g_all = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        DiffAugment3D(p=0.3, rotation_deg=10, scaling=0.1)(x, generator=g_small)
        DiffAugment3D(p=1.0, rotation_deg=10, scaling=0.1)(x, generator=g_all)       # never skips
        assert torch.equal(g_small.get_state(), g_all.get_state())   # the same draws: runs stay reproducible
    assert len(calls) == rotating + 12 and 0 < rotating < 12   # grid_sample only where a sample is rotated
    unchosen = DiffAugment3D(p=1e-9, rotation_deg=10, scaling=0.1, flip_axes=(), translation=0, cutout=0)
    assert torch.equal(unchosen(x, generator=torch.Generator().manual_seed(0)), x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="probability p"):
        DiffAugment3D(p=1.5)
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        DiffAugment3D()(torch.zeros(2, 8, 8))


def test_ada_raises_p_when_d_overfits_and_lowers_it_otherwise():
    ada = AdaptiveAugment(target=0.6, speed_kimg=0.1, interval=1)
    for _ in range(3):
        ada.accumulate(torch.ones(8))      # D is sure every real is real: r_t = 1 > 0.6
        ada.update(batch_size=8)
    assert ada.rt == 1.0 and ada.p == pytest.approx(3 * 8 / 100)
    ada.accumulate(-torch.ones(8))
    ada.update(8)
    assert ada.p == pytest.approx(2 * 8 / 100)
    state = ada.state_dict()
    other = AdaptiveAugment()
    other.load_state_dict(state)
    assert other.p == ada.p and other.target == 0.6
    for _ in range(10):
        ada.accumulate(-torch.ones(8))
        ada.update(8)
    assert ada.p == 0.0
