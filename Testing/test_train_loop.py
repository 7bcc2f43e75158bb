"""The training loop: bit-for-bit resume, NaN handling, graceful stop, progressive schedule, DDP with gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from GANTrainerLib.run import read_metrics, read_status
from GANTrainerLib.train import TrainSettings, _Phase, train
from VolGANCore import CancelToken, Volume, VolGANError, write_volume
from VolumetricGANLib.checkpoint import load_checkpoint, load_generator

from tiny_arch import tiny_stylegan_d, tiny_stylegan_g

TINY = dict(
    family="stylegan2-3d",
    generator=tiny_stylegan_g([4, 8, 8], [1, 2, 2], width=8, z_dim=8, mapping_layers=1),
    discriminator=tiny_stylegan_d([4, 8, 8], [1, 2, 2], width=8, mbstd_group_size=2),
    batch=2, loss=dict(kind="stylegan2", r1_interval=2, pl_weight=1.0, pl_interval=2, style_mixing_prob=0.5),
    augment=dict(p=0.5, translation=0.25, cutout=0.25), ada_target=0.6, ada_kimg=0.01, kimg=1.0,
    snapshot_kimg=1.0, sample_kimg=1.0, log_steps=1, preprocess=dict(intensity="minmax"), ema_kimg=0.01,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train") / "data"
    rng = np.random.default_rng(0)
    for k in range(5):
        write_volume(Volume(rng.normal(size=(4, 8, 8)).astype(np.float32), spacing=(0.5, 0.5, 1.0)), folder / f"c{k}.nrrd")
    return folder


def settings(**kw):
    return TrainSettings(**{**TINY, **kw})


def tensors(path):
    return load_checkpoint(path)["tensors"]


@pytest.mark.slow
def test_resumed_run_is_bit_for_bit_the_uninterrupted_one(data, tmp_path):
    straight = train(data, tmp_path / "a", settings(), max_steps=4, log=lambda m: None)
    first = train(data, tmp_path / "b", settings(), max_steps=2, log=lambda m: None)
    messages = []
    second = train(data, tmp_path / "b", settings(), resume=True, max_steps=2, log=messages.append)
    assert first["step"] == 2 and second["step"] == straight["step"] == 4
    assert messages and messages[0].startswith("resumed from step 2 (0.00 kimg)")
    a, b = tensors(straight["checkpoint"]), tensors(second["checkpoint"])
    for part in ("G", "D", "G_ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    ta, tb = load_checkpoint(straight["checkpoint"])["training"], load_checkpoint(second["checkpoint"])["training"]
    assert ta["augment_p"] == tb["augment_p"] and ta["nimg"] == tb["nimg"] == 8
    assert "resumed from step 2" in (tmp_path / "b" / "log.txt").read_text()


# The training state every checkpoint holds (TrainingState). Runs written by earlier versions resume only while these
# keys keep their names and meaning: add keys (restore must accept their absence), never rename or drop one.
TRAINING_KEYS_STYLEGAN2_ADA = {"step", "nimg", "opt_g", "opt_d", "scaler_g", "scaler_d", "sampler", "latent_rng", "rng",
                               "ada", "augment_p", "pl_mean", "settings"}
TRAINING_KEYS_PROGRESSIVE = {"step", "nimg", "opt_g", "opt_d", "scaler_g", "scaler_d", "sampler", "latent_rng", "rng",
                             "settings", "progress"}


def _same(a, b, where="training"):
    """Deep equality of checkpoint contents (tensors bit for bit)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{k}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
def test_training_state_layout_is_pinned_and_restore_then_capture_gives_it_back(data, tmp_path):
    from GANTrainerLib.data import InfiniteSampler
    from GANTrainerLib.distributed import Dist
    from GANTrainerLib.train import TrainingState, build_train_parts
    from VolumetricGANLib.networks import build_discriminator, build_generator

    s = settings()
    out = train(data, tmp_path / "r", s, max_steps=3, log=lambda m: None)
    blob = load_checkpoint(out["checkpoint"])
    assert set(blob["tensors"]) == {"G", "D", "G_ema"}
    assert set(blob["training"]) == TRAINING_KEYS_STYLEGAN2_ADA
    tr = blob["training"]
    assert (tr["step"], tr["nimg"]) == (3, 6) and len(tr["sampler"]) == len(tr["latent_rng"]) == 1
    assert set(tr["ada"]) >= {"p", "rt", "count", "sum"} and tr["augment_p"] == tr["ada"]["p"]
    # restored into fresh networks and streams, captured again: the same checkpoint contents, bit for bit
    G, D = build_generator(s.family, s.generator), build_discriminator(s.family, s.discriminator)
    state = TrainingState(build_train_parts(s, G, D), InfiniteSampler(5, seed=s.seed), torch.Generator())
    restored = state.restore(blob, out["checkpoint"], Dist(), "cpu")
    assert restored.learning_rates == "" and restored.quick_metrics is None
    again = state.capture(Dist(), state.sampler.state_dict())
    _same(again.pop("training"), tr)
    for part in ("G", "D", "G_ema"):
        _same(again[part].state_dict(), blob["tensors"][part], part)
    # a checkpoint that lacks the optional keys (as runs without them wrote) still restores
    old = dict(blob, training={k: v for k, v in tr.items() if k not in ("ada", "augment_p", "pl_mean", "rng")})
    fresh = TrainingState(build_train_parts(s, G, D), InfiniteSampler(5, seed=s.seed), torch.Generator())
    fresh.restore(old, out["checkpoint"], Dist(), "cpu")
    assert (fresh.step, fresh.nimg) == (3, 6) and fresh.parts.augment.p == 0.5   # p from the settings
    with pytest.raises(VolGANError, match="holds no training state"):
        fresh.restore(dict(blob, training=None), out["checkpoint"], Dist(), "cpu")


@pytest.mark.slow
def test_run_folder_is_observable_and_checkpoint_generates(data, tmp_path):
    out = train(data, tmp_path / "r", settings(), max_steps=3, log=lambda m: None)
    status = read_status(tmp_path / "r")
    assert status["state"] == "finished" and status["step"] == 3
    rows = read_metrics(tmp_path / "r")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"loss/G", "loss/D", "augment/p", "scores/real"} <= set(rows[-1])
    assert any("reg/r1" in r for r in rows) and any("reg/pl_penalty" in r for r in rows)
    assert list((tmp_path / "r" / "samples").glob("*.png"))
    loaded = load_generator(out["checkpoint"])
    G, cfg = loaded.generator, loaded.config
    assert cfg["spacing"] == [0.5, 0.5, 1.0] and G(torch.randn(1, 8)).shape == (1, 1, 4, 8, 8)


def test_the_diversity_term_starts_after_its_kimg_and_is_logged(data, tmp_path):
    """loss.diversity_start_kimg counts the images the loop has shown (batch 2: 4 images = after two steps)."""
    loss = dict(TINY["loss"], diversity_weight=1.0, diversity_start_kimg=0.004)
    train(data, tmp_path / "d", settings(loss=loss), max_steps=4, log=lambda m: None)
    rows = read_metrics(tmp_path / "d")
    assert [("reg/similarity" in r) for r in rows] == [False, False, True, True]
    assert all(-1 <= r["reg/similarity"] <= 1 and -1 <= r["reg/similarity_real"] <= 1 for r in rows[2:])


@pytest.mark.slow
def test_non_finite_losses_stop_the_run_with_a_message(data, tmp_path, monkeypatch):
    from GANTrainerLib import losses

    real = losses.StyleGAN2Loss.discriminator_loss

    def nan_loss(self, *a, **k):
        total, stats = real(self, *a, **k)
        return total * float("nan"), stats

    monkeypatch.setattr(losses.StyleGAN2Loss, "discriminator_loss", nan_loss)
    with pytest.raises(VolGANError, match="3 consecutive non-finite losses"):
        train(data, tmp_path / "n", settings(max_bad_steps=3), max_steps=10, log=lambda m: None)
    assert not (tmp_path / "n").exists()   # it failed before any checkpoint: it leaves nothing half-done
    with pytest.raises(VolGANError, match="3 consecutive non-finite losses"):   # with a checkpoint: kept, marked
        train(data, tmp_path / "m", settings(max_bad_steps=3, snapshot_kimg=0.002), max_steps=10, log=lambda m: None)
    assert read_status(tmp_path / "m")["state"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("kernel_ok", [False, True])
def test_bf16_training_on_a_cpu_with_wrong_onednn_gradients_runs_without_onednn_and_says_so(data, tmp_path,
                                                                                             monkeypatch, kernel_ok):
    """VolGANCore.env.conv_kernels around every step, forward (the losses) and backward (a gradient hook) alike."""
    import VolGANCore.env as env
    from GANTrainerLib import losses

    monkeypatch.setattr(env, "cpu_bf16_conv3d_grads_ok", lambda: kernel_ok)
    seen = []
    real = losses.StyleGAN2Loss.discriminator_loss

    def spy(self, *a, **k):
        seen.append(("forward", torch.backends.mkldnn.enabled))
        total, stats = real(self, *a, **k)
        total.register_hook(lambda g: seen.append(("backward", torch.backends.mkldnn.enabled)))
        return total, stats

    monkeypatch.setattr(losses.StyleGAN2Loss, "discriminator_loss", spy)
    train(data, tmp_path / "b", settings(amp="bf16"), max_steps=2, log=lambda m: None)
    assert len(seen) == 4 and {on for _, on in seen} == {kernel_ok}, seen
    assert torch.backends.mkldnn.enabled                       # restored after each step
    noted = "oneDNN's bf16 conv3d weight gradients are wrong here" in (tmp_path / "b" / "log.txt").read_text()
    assert noted == (not kernel_ok)


@pytest.mark.slow
def test_cancel_checkpoints_and_marks_stopped(data, tmp_path):
    token = CancelToken()

    def cancel_after_two(event):
        if event.description == "train" and event.done >= 2:
            token.cancel()

    out = train(data, tmp_path / "s", settings(), max_steps=50, progress=cancel_after_two, cancel=token,
                log=lambda m: None)
    assert out["state"] == "stopped" and out["step"] == 3  # the step in flight finishes, then it stops
    assert read_status(tmp_path / "s")["state"] == "stopped"
    assert load_checkpoint(out["checkpoint"])["provenance"]["reason"] == "stopped"


@pytest.mark.slow
def test_resume_with_new_learning_rates_uses_them_and_says_so(data, tmp_path):
    train(data, tmp_path / "r", settings(), max_steps=1, log=lambda m: None)
    messages = []
    out = train(data, tmp_path / "r", settings(lr_g=2e-4), resume=True, max_steps=1, log=messages.append)
    assert messages[0].endswith("; learning rates now G 0.0025 → 0.0002"), messages[0]   # not the saved rate
    opt_g = load_checkpoint(out["checkpoint"])["training"]["opt_g"]
    assert [g["lr"] for g in opt_g["param_groups"]] == [2e-4]
    messages = []
    train(data, tmp_path / "r", settings(lr_g=2e-4), resume=True, max_steps=1, log=messages.append)
    assert "learning rates" not in messages[0]                                 # unchanged: nothing to say
    assert "settings" not in messages[0]


@pytest.mark.slow
def test_resume_with_other_training_settings_says_which(data, tmp_path):
    train(data, tmp_path / "r", settings(), max_steps=1, log=lambda m: None)
    messages = []
    loss = dict(TINY["loss"], r1_gamma=2.0, pl_weight=0.5)
    train(data, tmp_path / "r", settings(loss=loss, ada_kimg=0.02, kimg=5.0, log_steps=5), resume=True, max_steps=1,
          log=messages.append)   # a longer run, other logging: free; the loss and ADA's speed: said
    assert messages[0].endswith("; settings other than the checkpoint's: ada_kimg 0.01 → 0.02, "
                                "loss.pl_weight 1.0 → 0.5, loss.r1_gamma unset → 2.0"), messages[0]
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "loss.r1_gamma unset → 2.0" in log                                 # the run's own record says it too


def test_resume_without_checkpoint_is_a_clear_error(data, tmp_path):
    with pytest.raises(VolGANError, match="--resume: no checkpoint"):
        train(data, tmp_path / "empty", settings(), resume=True, max_steps=1)


def test_progressive_schedule_fades_in_every_level():
    ph = _Phase(TrainSettings(family="pgan-3d", generator={}, discriminator={},
                              progressive=dict(kimg_per_phase=1.0, fade_fraction=0.5)), max_res=3)
    at = lambda k: ph.progress(int(k * 1000))  # noqa: E731
    assert at(0.5) == 0.0
    assert at(1.25) == pytest.approx(0.5) and at(1.75) == 1.0
    assert at(2.25) == pytest.approx(1.5) and at(3.25) == pytest.approx(2.5) and at(3.6) == 3.0
    assert at(9.0) == 3.0
    reals = torch.randn(2, 1, 32, 32, 32)
    assert ph.reals_at(reals, 1.0).shape[-1] == 8
    faded = ph.reals_at(reals, 1.5)
    assert faded.shape[-1] == 16


def tiny_pgan(folder, **generator):
    """Three random 8³ bone volumes in ``folder`` and 8³ progressive settings (``generator``: extra G options)."""
    rng = np.random.default_rng(1)
    for k in range(3):
        write_volume(Volume(rng.uniform(-350, 1100, size=(8, 8, 8)).astype(np.float32), spacing=(0.164,) * 3),
                     folder / f"b{k}.nrrd")
    return TrainSettings(family="pgan-3d", generator=dict(max_res=1, nch=1, **generator),
                         discriminator=dict(max_res=1, nch=1), batch=2, lr_g=1e-3, lr_d=1e-3, betas=[0.0, 0.99],
                         loss=dict(kind="wgan-gp"), progressive=dict(kimg_per_phase=0.004, fade_fraction=0.5),
                         latent="hypersphere", preprocess=dict(intensity="window", window=[-350.0, 1100.0]),
                         kimg=1.0, snapshot_kimg=1.0, sample_kimg=1.0, log_steps=1, ema_kimg=0.01,
                         intensity={"network_range": [-1, 1], "physical_range": [-350, 1100], "units": "density"})


@pytest.mark.slow
def test_progressive_gan_trains(tmp_path):
    folder = tmp_path / "bone"
    s = tiny_pgan(folder)
    out = train(folder, tmp_path / "run", s, max_steps=4, log=lambda m: None)
    levels = [r["progress/level"] for r in read_metrics(tmp_path / "run")]
    assert levels[0] == 0.0 and levels[-1] > 0.0
    cfg = load_generator(out["checkpoint"]).config
    assert cfg["latent"]["distribution"] == "hypersphere" and cfg["intensity"]["physical_range"] == [-350, 1100]
    assert set(load_checkpoint(out["checkpoint"])["training"]) == TRAINING_KEYS_PROGRESSIVE


def _torchrun_tiny(data, out, nproc: int, port: int) -> list[dict]:
    """train() on TINY under ``torchrun --nproc_per_node nproc`` (gloo, one thread each); every rank's result."""
    script = out.parent / f"{out.name}_train.py"
    script.write_text(textwrap.dedent(f"""
        import json
        from GANTrainerLib.train import TrainSettings, train
        s = TrainSettings(**json.loads({json.dumps(json.dumps(TINY))}))
        out = train({str(data)!r}, {str(out)!r}, s, max_steps=3, device="cpu", log=lambda m: None)
        print("RESULT " + json.dumps(out), flush=True)
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--master_port", str(port), str(script)], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines() if "RESULT " in line]


@pytest.mark.slow
def test_ddp_two_processes_with_gloo(data, tmp_path):
    results = _torchrun_tiny(data, tmp_path / "ddp", nproc=2, port=29517)
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["world"] == 2 for r in results)
    assert results[0]["g_param_checksum"] == results[1]["g_param_checksum"]   # gradients were averaged
    ckpt = load_checkpoint(next(r["checkpoint"] for r in results if r["rank"] == 0))
    assert ckpt["training"]["nimg"] == 3 * 2 * 2                              # batch × world per step
    assert len(ckpt["training"]["latent_rng"]) == 2                            # both ranks' streams saved


@pytest.mark.slow
def test_torchrun_with_one_process_joins_a_group_and_trains_exactly_like_a_plain_run(data, tmp_path):
    """One torchrun process runs every collective of the loop (how gpu_check proves NCCL on one GPU): a group of one
    averages nothing, so the weights are the plain run's bit for bit."""
    (result,) = _torchrun_tiny(data, tmp_path / "one", nproc=1, port=29519)
    assert result["process_group"] is True and result["world"] == 1
    assert read_status(tmp_path / "one")["process_group"] == "gloo"   # what gpu_check reads (nccl on a GPU)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the torchrun process (reductions depend on the thread count)
    try:
        plain = train(data, tmp_path / "plain", settings(), max_steps=3, device="cpu", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    assert plain["process_group"] is False
    a, b = tensors(plain["checkpoint"]), tensors(result["checkpoint"])
    for part in ("G", "D"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs between torchrun and a plain run"


def test_phase_kimg_sets_the_progressive_schedule_and_is_refused_where_it_cannot_apply():
    from GANTrainerLib.train import _Phase, settings_from_preset

    s = settings_from_preset("tiny-spongiosa", phase_kimg=3)
    assert s.progressive == {"kimg_per_phase": 3.0, "fade_fraction": 0.5}
    phase = _Phase(s, 3)
    assert [phase.progress(n) for n in (2999, 3000, 3750, 4500, 6000, 99000)] == [0.0, 0.0, 0.5, 1.0, 1.0, 3.0]
    assert settings_from_preset("tiny-spongiosa").progressive["kimg_per_phase"] == 0.4  # preset untouched
    with pytest.raises(VolGANError, match="does not grow progressively"):
        settings_from_preset("tiny-cow", phase_kimg=1)
    with pytest.raises(VolGANError, match="must be > 0"):
        settings_from_preset("tiny-spongiosa", phase_kimg=0)


@pytest.mark.slow
def test_padding_reaches_the_saved_generator_and_a_resume_with_another_padding_is_refused(tmp_path):
    from GANTrainerLib.train import settings_from_preset

    assert settings_from_preset("tiny-spongiosa").generator["padding_mode"] == "circular"    # the preset's own
    assert settings_from_preset("tiny-spongiosa", padding="replicate").generator["padding_mode"] == "replicate"
    assert "padding_mode" not in settings_from_preset("tiny-spongiosa", padding="zeros").generator
    assert "padding_mode" not in settings_from_preset("spongiosa-pgan").generator         # as published
    assert settings_from_preset("spongiosa-pgan", padding="reflect").generator["padding_mode"] == "reflect"
    with pytest.raises(VolGANError, match="--padding sets the progressive generator"):
        settings_from_preset("tiny-cow", padding="replicate")
    folder = tmp_path / "bone"
    out = train(folder, tmp_path / "run", tiny_pgan(folder, padding_mode="replicate"), max_steps=2,
                log=lambda m: None)
    loaded = load_generator(out["checkpoint"])
    G, cfg = loaded.generator, loaded.config
    assert cfg["architecture"]["padding_mode"] == "replicate" and G.blocks[1].conv0.conv.padding_mode == "replicate"
    with pytest.raises(VolGANError, match=r"generator was built with padding_mode='replicate', this run asks for "
                                          r"padding_mode unset \(default\); resume with the run's original options"):
        train(folder, tmp_path / "run", tiny_pgan(folder), resume=True, max_steps=3, log=lambda m: None)
    again = train(folder, tmp_path / "run", tiny_pgan(folder, padding_mode="replicate"), resume=True, max_steps=1,
                  log=lambda m: None)
    assert again["step"] == 3                                                 # resumed at step 2, one more


def test_learning_rate_and_ema_overrides_reach_the_settings_and_refuse_non_positive_values():
    from GANTrainerLib.cli import register
    from GANTrainerLib.train import settings_from_preset

    s = settings_from_preset("tiny-spongiosa", lr_g=2e-4, lr_d=3e-4, ema_kimg=1.5)
    assert (s.lr_g, s.lr_d, s.ema_kimg) == (2e-4, 3e-4, 1.5)
    assert (settings_from_preset("tiny-spongiosa").lr_g, settings_from_preset("tiny-spongiosa").lr_d) == (2e-4, 1e-3)
    for key in ("lr_g", "lr_d", "ema_kimg"):
        with pytest.raises(VolGANError, match=f"--{key.replace('_', '-')} must be > 0"):
            settings_from_preset("tiny-spongiosa", **{key: 0.0})
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--preset", "tiny-spongiosa", "--data", "d", "--out", "o",
                              "--lr-g", "5e-4", "--lr-d", "6e-4", "--ema-kimg", "2"])
    assert (args.lr_g, args.lr_d, args.ema_kimg) == (5e-4, 6e-4, 2.0)


@pytest.mark.slow
def test_bad_data_creates_no_run_folder_and_a_failed_run_removes_what_it_made(data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VolGANError, match="no volumes found"):
        train(empty, tmp_path / "never", settings(), max_steps=1, log=lambda m: None)
    assert not (tmp_path / "never").exists()
    nested = tmp_path / "phantoms"                       # what `volgan phantom` writes: the volumes in images/
    (nested / "images").mkdir(parents=True)
    write_volume(Volume(np.zeros((4, 8, 8), np.float32)), nested / "images" / "a.nrrd")
    with pytest.raises(VolGANError, match=r"its sub-folder\(s\) images/ hold volumes .*pass .*phantoms/images"):
        train(nested, tmp_path / "never", settings(), max_steps=1, log=lambda m: None)
    # fails after the run folder was made (the generator makes another shape): it is removed again
    wrong = settings(generator=dict(TINY["generator"], output_shape=[4, 16, 16], base_shape=[1, 4, 4]))
    with pytest.raises(VolGANError, match="training volumes have shape"):
        train(data, tmp_path / "made", wrong, max_steps=1, log=lambda m: None)
    assert not (tmp_path / "made").exists()
    # in a folder that existed (e.g. the panel's job folder) only what the run added goes
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text("{}")
    with pytest.raises(VolGANError, match="training volumes have shape"):
        train(data, job, wrong, max_steps=1, log=lambda m: None)
    assert sorted(p.name for p in job.iterdir()) == ["job.json"]
    # a run folder with checkpoints is kept whole, for --resume
    kept = train(data, tmp_path / "kept", settings(), max_steps=1, log=lambda m: None)
    with pytest.raises(VolGANError):
        train(data, tmp_path / "kept", wrong, resume=True, max_steps=1, log=lambda m: None)
    assert Path(kept["checkpoint"]).is_file() and (tmp_path / "kept" / "log.txt").is_file()
