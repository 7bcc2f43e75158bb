"""Quick metrics during training (best checkpoint, retention, resume) and the sync-free GPU feeding helpers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from GANTrainerLib import quick_metrics
from GANTrainerLib.data import BatchFeeder, InfiniteSampler
from GANTrainerLib.quick_metrics import morph_w1, quick_frechet, voxel_spread
from GANTrainerLib.run import read_metrics, read_status
from GANTrainerLib.distributed import Dist
from GANTrainerLib.optim import finite_step
from GANTrainerLib.train import settings_from_preset, train
from VolumetricGANLib.checkpoint import load_checkpoint

from tiny_arch import tiny_stylegan_d, tiny_stylegan_g


@pytest.fixture(scope="module")
def bone(tmp_path_factory):
    from VolumetricGANLib.phantoms import write_bone_dataset

    folder = tmp_path_factory.mktemp("quick") / "bone"
    return write_bone_dataset(folder, n=6, seed=0, bvtv=0.18, bvtv_sd=0.05) / "images"


def tiny_bone(**kw):
    """tiny-spongiosa (batch 8: one step = 0.008 kimg) with quick metrics at every step, last checkpoint kept; at
    full resolution from the start (below a progressive top level, quick metrics are not ranked)."""
    s = settings_from_preset("tiny-spongiosa", metrics_kimg=0.008, keep_last=1, metrics_n=6, metrics_morph_n=6)
    return dataclasses.replace(s, **{"snapshot_minutes": None, "metrics_budget": None, "progressive": None, **kw})


def ckpt_names(out):
    return {p.name for p in (out / "checkpoints").glob("*.vgan")}


def test_quick_frechet_is_zero_for_identical_sets_and_grows_with_a_shift():
    a = np.random.default_rng(0).normal(size=(64, 512))
    assert quick_frechet(a, a) == pytest.approx(0.0, abs=1e-8)
    half, one = quick_frechet(a, a + 0.5), quick_frechet(a, a + 1.0)
    assert half == pytest.approx(512 * 0.25, rel=1e-6)        # same covariance: only ‖Δμ‖² = d·c² remains
    assert one > half > 0


def test_morph_w1_is_zero_for_equal_sets_and_one_for_a_one_sd_shift():
    real = {"BV/TV": [0.1, 0.2, 0.3], "Tb.Th [mm]": [0.30, 0.35, 0.40], "BMD [image units]": [float("nan")]}
    assert morph_w1(real, real) == pytest.approx(0.0)
    shifted = {"BV/TV": [0.2, 0.3, 0.4], "Tb.Th [mm]": [0.35, 0.40, 0.45]}  # each by its real SD (0.1, 0.05)
    assert morph_w1(real, shifted) == pytest.approx(1.0)
    assert morph_w1(real, {}) is None                          # nothing generated was measurable


def test_voxel_spread_ratio_is_one_for_the_data_and_falls_to_zero_for_a_collapsed_model():
    real = np.random.default_rng(0).normal(size=(32, 4, 8, 8))
    assert voxel_spread(real) / voxel_spread(real) == 1.0
    assert voxel_spread(real.mean(0) + 0.5 * (real - real.mean(0))) / voxel_spread(real) == pytest.approx(0.5)
    assert voxel_spread(np.repeat(real[:1], 32, axis=0)) == pytest.approx(0.0, abs=1e-12)  # all the same volume
    assert math.isnan(voxel_spread(real[:1]))


@pytest.mark.slow
def test_metrics_pick_the_best_checkpoint_and_resume_remembers_it(bone, tmp_path, monkeypatch):
    out = tmp_path / "run"
    s = tiny_bone(snapshot_kimg=0.008)                         # a checkpoint and quick metrics at every step
    train(bone, out, s, max_steps=3, device="cpu", log=lambda m: None)
    rows = [r for r in read_metrics(out) if "metrics/fd_quick" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    fds = [r["metrics/fd_quick"] for r in rows]
    assert all(math.isfinite(v) and v > 0 for v in fds)
    assert all(math.isfinite(r["metrics/morph_w1"]) and 0 <= r["metrics/morph_unmeasurable"] <= 1 for r in rows)
    assert all(0 < r["metrics/spread_ratio"] < 10 and 0 <= r["metrics/frame_index"] < 10 for r in rows)
    best = read_status(out)["best"]
    assert best["metric_name"] == "fd_quick" and best["metric"] == pytest.approx(min(fds))
    assert best["step"] == 1 + int(np.argmin(fds))
    assert ckpt_names(out) == {f"ckpt-{best['step']:07d}.vgan", "ckpt-0000003.vgan"}  # the rest pruned
    blob = load_checkpoint(out / best["path"])
    assert blob["metrics"]["fd_quick"] == pytest.approx(best["metric"])           # also in its model card
    assert "fd_quick" in (out / best["path"]).with_name(f"ckpt-{best['step']:07d}.card.md").read_text()
    assert len(list((out / "metrics").glob("real-*.npz"))) == 1                   # real features cached

    # resumed, every new value is worse: the best so far comes back from the checkpoint and stays the best
    monkeypatch.setattr(quick_metrics, "quick_frechet", lambda a, b: 1e6)
    messages = []
    train(bone, out, s, resume=True, max_steps=2, device="cpu", log=messages.append)
    assert any(m.startswith(f"quick metrics: best fd_quick so far {best['metric']}") for m in messages)
    status = read_status(out)
    assert status["quick_metrics"]["best"] == pytest.approx(best["metric"])
    assert status["quick_metrics"]["best_step"] == best["step"]
    assert status["quick_metrics"]["last"]["fd_quick"] == 1e6 and status["quick_metrics"]["last"]["step"] == 5
    assert status["best"]["path"] == best["path"]
    assert ckpt_names(out) == {f"ckpt-{best['step']:07d}.vgan", "ckpt-0000005.vgan"}
    resumed_state = load_checkpoint(out / "checkpoints" / "ckpt-0000005.vgan")["training"]["quick_metrics"]
    assert resumed_state["best_step"] == best["step"]


@pytest.mark.slow
def test_a_new_best_between_snapshots_is_saved_and_kept(bone, tmp_path, monkeypatch):
    values = iter([3.0, 1.0, 2.0, 5.0])
    monkeypatch.setattr(quick_metrics, "quick_frechet", lambda a, b: next(values))
    out = tmp_path / "run"
    train(bone, out, tiny_bone(snapshot_kimg=1.0, metrics_morph_n=0), max_steps=4, device="cpu", log=lambda m: None)
    assert [r["metrics/fd_quick"] for r in read_metrics(out) if "metrics/fd_quick" in r] == [3.0, 1.0, 2.0, 5.0]
    # steps 1 and 2 improved (each saved as "best"), 3 did not (no checkpoint), 4 is the final one;
    # keep_last = 1 pruned step 1, the best (step 2) stays
    assert ckpt_names(out) == {"ckpt-0000002.vgan", "ckpt-0000004.vgan"}
    status = read_status(out)
    assert (status["best"]["step"], status["best"]["metric"], status["best"]["metric_name"]) == (2, 1.0, "fd_quick")
    assert load_checkpoint(out / "checkpoints" / "ckpt-0000002.vgan")["provenance"]["reason"] == "best"
    assert "quick metrics at step 3: fd_quick 2" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_quick_metrics_leave_the_training_streams_untouched(bone, tmp_path):
    s = tiny_bone(snapshot_kimg=1.0, metrics_morph_n=2)
    with_metrics = train(bone, tmp_path / "a", s, max_steps=3, device="cpu", log=lambda m: None)
    without = train(bone, tmp_path / "b", dataclasses.replace(s, metrics_kimg=None), max_steps=3, device="cpu",
                    log=lambda m: None)
    assert len([r for r in read_metrics(tmp_path / "a") if "metrics/fd_quick" in r]) == 3
    assert not any("metrics/fd_quick" in r for r in read_metrics(tmp_path / "b"))
    assert with_metrics["g_param_checksum"] == without["g_param_checksum"]


@pytest.mark.slow
def test_data_too_small_for_the_feature_network_trains_without_quick_metrics(tmp_path):
    from GANTrainerLib.train import TrainSettings
    from VolGANCore import Volume, write_volume

    for k in range(3):
        vol = Volume(np.random.default_rng(k).normal(size=(4, 8, 8)).astype(np.float32))
        write_volume(vol, tmp_path / f"c{k}.nrrd")
    s = TrainSettings(family="stylegan2-3d", batch=2, kimg=1.0, log_steps=1, metrics_kimg=0.002,
                      generator=tiny_stylegan_g([4, 8, 8], [1, 2, 2], width=8, z_dim=8, mapping_layers=1),
                      discriminator=tiny_stylegan_d([4, 8, 8], [1, 2, 2], width=8, mbstd_group_size=2),
                      preprocess=dict(intensity="minmax"))
    messages = []
    out = train(tmp_path, tmp_path / "run", s, max_steps=1, device="cpu", log=messages.append)
    assert out["state"] == "finished" and any("quick metrics off" in m and "≥ 8 voxels" in m for m in messages)
    assert not any("metrics/fd_quick" in r for r in read_metrics(tmp_path / "run"))


class _Volumes:
    def __init__(self, n):
        self.data = np.arange(n * 2 * 3 * 3, dtype=np.float32).reshape(n, 2, 3, 3)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if self.data is None:
            raise ValueError("broken cache")
        return self.data[i][None]


def test_batch_feeder_prefetch_matches_on_demand_and_resumes_exactly():
    on_demand = BatchFeeder(_Volumes(7), InfiniteSampler(7, seed=3), 3)
    with BatchFeeder(_Volumes(7), InfiniteSampler(7, seed=3), 3, prefetch=2) as ahead:
        for _ in range(4):
            x = ahead.next()
            assert x.shape == (3, 1, 2, 3, 3) and torch.equal(x, on_demand.next())
            assert ahead.state_dict() == on_demand.state_dict()  # the position handed out, not the one read ahead
        state = ahead.state_dict()
    assert state == {"epoch": 1, "pos": 5, "seed": 3}               # 12 indices: one epoch of 7, then 5
    sampler = InfiniteSampler(7, seed=3)
    sampler.load_state_dict(state)
    assert torch.equal(BatchFeeder(_Volumes(7), sampler, 3).next(), on_demand.next())
    broken = _Volumes(3)
    broken.data = None
    with BatchFeeder(broken, InfiniteSampler(3), 2, prefetch=1) as feeder, pytest.raises(ValueError, match="broken"):
        feeder.next()                                                # a reader error reaches the training loop


@pytest.mark.parametrize("scaled", [False, True])
def test_device_side_step_skips_a_non_finite_loss_without_a_host_decision(scaled):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=scaled, init_scale=1024.0)
    x = torch.randn(5, 4)

    def step(bad: bool):
        opt.zero_grad(set_to_none=True)
        loss = net(x).sum() * (float("nan") if bad else 1.0)
        scaler.scale(loss).backward()
        return finite_step(loss, opt, scaler, Dist(), device_side=True)

    ok = step(False)
    assert torch.is_tensor(ok) and float(ok) == 1.0 and opt.param_groups[0]["fused"]
    before = [p.detach().clone() for p in net.parameters()]
    steps_before = [opt.state[p]["step"].clone() for p in net.parameters()]
    bad = 0
    for _ in range(2):
        ok = step(True)
        bad = (bad + 1) * (1 - ok)                                  # the training loop's device-side counter
    assert float(ok) == 0.0 and float(bad) == 2.0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))          # skipped: weights kept
    assert all(torch.equal(opt.state[p]["step"], s) for p, s in zip(net.parameters(), steps_before))
    if scaled:
        assert scaler.get_scale() == 256.0                          # backed off twice
    ok = step(False)
    bad = (bad + 1) * (1 - ok)
    assert float(bad) == 0.0 and not all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_cli_passes_the_quick_metric_options():
    from VolGANCore import cli

    args = cli.build_parser().parse_args(["train", "--preset", "tiny-cow", "--data", "d", "--out", "o",
                                          "--metrics-kimg", "0", "--medicalnet-weights", "m.pth",
                                          "--metrics-track", "fd_quick"])
    assert (args.metrics_kimg, args.medicalnet_weights, args.inception_weights) == (0.0, "m.pth", None)
    assert settings_from_preset("tiny-cow").metrics_kimg == settings_from_preset("tiny-cow").snapshot_kimg


@pytest.mark.slow
def test_a_collapsed_generator_is_never_the_best_however_good_its_frechet_distance(bone, tmp_path, monkeypatch):
    fds = iter([3.0, 1.0, 2.0])
    spreads = iter([1.0, 0.5, 0.1, 1.0])   # the real spread, then the fake one at each step (step 2 collapsed)
    monkeypatch.setattr(quick_metrics, "quick_frechet", lambda a, b: next(fds))
    monkeypatch.setattr(quick_metrics, "voxel_spread", lambda v: next(spreads))
    out = tmp_path / "run"
    train(bone, out, tiny_bone(snapshot_kimg=1.0, metrics_morph_n=0), max_steps=3, device="cpu", log=lambda m: None)
    rows = [r for r in read_metrics(out) if "metrics/fd_quick" in r]
    assert [(r["metrics/fd_quick"], r["metrics/spread_ratio"]) for r in rows] == [(3.0, 0.5), (1.0, 0.1), (2.0, 1.0)]
    status = read_status(out)
    assert (status["best"]["step"], status["best"]["metric"]) == (3, 2.0)    # step 2 had the lowest fd but collapsed
    log = (out / "log.txt").read_text()
    assert "quick metrics at step 2: fd_quick 1, spread_ratio 0.1" in log and "mode collapse? (not ranked)" in log
    assert "quick metrics at step 1: fd_quick 3, spread_ratio 0.5, frame_index" in log  # 0.5: not below
