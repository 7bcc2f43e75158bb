"""benchmarks/bench_train.py: every implementation it times still trains (one tiny iteration each), so the
re-implemented anchors cannot rot unnoticed."""

from __future__ import annotations

import math

import pytest
import torch

from bench_scripts import load_benchmark
from tiny_arch import tiny_stylegan_d, tiny_stylegan_g

TINY_G = tiny_stylegan_g([8, 16, 16], [2, 4, 4], z_dim=32)
TINY_D = tiny_stylegan_d([8, 16, 16], [2, 4, 4], mbstd_group_size=2)


@pytest.fixture(scope="module")
def bt():
    return load_benchmark("bench_train")


def _snapshot(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _changed(before, *modules) -> bool:
    after = [p.detach() for m in modules for p in m.parameters()]
    return any(not torch.equal(a, b) for a, b in zip(before, after))


def _check(out: dict) -> None:
    assert math.isfinite(float(out["loss_D"])) and math.isfinite(float(out["loss_G"])), out
    assert bool(out.get("ok_d", True)) and bool(out.get("ok_g", True)), out


@pytest.mark.slow
def test_cow_anchor_reimplementation_trains(bt):
    torch.manual_seed(0)
    a = bt.CowAnchor(image_size=16, depth=8, network_capacity=2, fmap_max=16, latent_dim=32, style_depth=2,
                     batch_size=2)
    assert a.kind(0) == "gp" and a.kind(1) == "plain" and a.kind(5024) == "gp+pl"
    reals = torch.rand(2, 1, 8, 16, 16)
    before_g, before_d = _snapshot(a.G, a.S), _snapshot(a.D)
    _check(a.iteration(reals))               # step 0: with the gradient penalty
    assert _changed(before_g, a.G, a.S) and _changed(before_d, a.D)
    a.steps = 5024                           # a path-length step of the late schedule
    _check(a.iteration(reals))
    _check(a.iteration(reals))               # and a second one, now against the running mean


@pytest.mark.parametrize("preset, kw", [("cow-stylegan-anchor", dict(accumulate=1)),
                                        ("cow-stylegan", dict(augment_p=0.5)),
                                        ("cow-stylegan", dict(amp="bf16"))])
@pytest.mark.slow
def test_ours_stylegan_iteration_trains(bt, preset, kw):
    o = bt.OursTrainer(preset, TINY_G, TINY_D, batch=2, **kw)
    reals = torch.rand(2, 1, 8, 16, 16) * 2 - 1
    before_g, before_d, before_ema = _snapshot(o.G), _snapshot(o.D), _snapshot(o.parts.G_ema)
    o.steps = 0                              # R1 (and, for cow-stylegan, path length) at step 0
    _check(o.iteration(reals))
    assert _changed(before_g, o.G) and _changed(before_d, o.D) and _changed(before_ema, o.parts.G_ema)
    assert o.n_params()["params_G_synthesis"] > 0


@pytest.mark.slow
def test_spongiosa_anchor_and_ours_train(bt):
    torch.manual_seed(0)
    a = bt.SpongiosaAnchor(max_res=1, batch_size=4)
    reals = torch.rand(4, 1, 8, 8, 8) * 2 - 1
    before = _snapshot(a.netG, a.netD)
    _check(a.iteration(reals))
    assert _changed(before, a.netG) and _changed(before, a.netD)
    o = bt.OursTrainer("spongiosa-pgan", generator=dict(max_res=1, nch=1),
                       discriminator=dict(max_res=1, nch=1, mbstd_group_size=0), batch=4)
    assert o.n_params() == a.n_params()      # the same layout on both sides
    before = _snapshot(o.G, o.D)
    _check(o.iteration(reals))
    assert _changed(before, o.G) and _changed(before, o.D)


@pytest.mark.slow
def test_timing_amortises_over_the_regulariser_cycle(bt):
    a = bt.CowAnchor(image_size=16, depth=8, network_capacity=2, fmap_max=16, latent_dim=32, style_depth=2,
                     batch_size=2)
    t = bt._Timed(a, torch.rand(2, 1, 8, 16, 16), 2, quick=True)
    assert t.steps() == [16, 17]             # one iteration of each kind: with GP, without
    fig = t()
    assert {"s/it gp", "s/it plain", "s/it amortised", "params_G_synthesis"} <= set(fig)
    expect = (fig["s/it gp"] + 15 * fig["s/it plain"]) / 16
    assert fig["s/it amortised"] == pytest.approx(expect)


@pytest.mark.slow
def test_the_critic_balance_experiment_runs_and_reports_finite_estimates():
    mod = load_benchmark("pgan_critic_balance")
    reals = torch.rand(8, 1, 32, 32, 32) * 2 - 1
    rows = mod.run(reals, lr_g=1e-4, lr_d=1e-3, steps=4, batch=4, every=2, level=1.0, amp=False, seed=0)
    assert [r[0] for r in rows] == [2, 4]
    assert all(math.isfinite(w) and s > 0 and f >= 0 for _, w, s, f in rows)
    again = mod.run(reals, lr_g=1e-4, lr_d=1e-3, steps=4, batch=4, every=2, level=1.0, amp=False, seed=0)
    assert again == rows                                   # seeded: the figures in its docstring can be re-measured
    padded = mod.run(reals, lr_g=1e-4, lr_d=1e-3, steps=4, batch=4, every=2, level=1.0, amp=False, seed=0,
                     padding="replicate")
    assert padded != rows and all(math.isfinite(f) for *_, f in padded)   # the generator's padding reaches G


@pytest.mark.slow
def test_the_border_frames_figure_draws_real_patches_and_each_model(tmp_path, monkeypatch, capsys):
    import sys

    import numpy as np

    from VolGANCore import Volume, write_volume
    from VolumetricGANLib.checkpoint import make_config, save_checkpoint
    from VolumetricGANLib.networks import build_generator

    rng = np.random.default_rng(0)
    for k in range(4):
        write_volume(Volume(rng.uniform(-350, 1100, (16, 16, 16)).astype(np.float32), spacing=(0.164,) * 3),
                     tmp_path / "real" / f"p{k}.nii.gz")
    models = []
    for padding in ("zeros", "circular"):
        arch = dict(max_res=2, nch=1, padding_mode=padding)
        cfg = make_config("pgan-3d", arch, spacing=(0.164,) * 3, latent="hypersphere", anatomy="spongiosa")
        path = save_checkpoint(tmp_path / f"{padding}.vgan", cfg, G_ema=build_generator("pgan-3d", arch))
        models.append(f"{padding}={path}")
    mod = load_benchmark("border_frames_figure")
    out = tmp_path / "frames.png"
    monkeypatch.setattr(sys, "argv", ["border_frames_figure.py", "--data", str(tmp_path / "real"), "--out", str(out),
                                      "--model", models[0], "--model", models[1]])
    mod.main()
    assert out.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    values = [float(part.rsplit(" ", 1)[1]) for part in printed.strip().split(": ", 1)[1].split(", ")]
    assert printed.startswith(f"wrote {out}: zeros ") and len(values) == 2 and all(v >= 0 for v in values)
