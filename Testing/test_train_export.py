"""`volgan export`: a generator-only release model from a run, refused where it would generate untrained layers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from GANTrainerLib.export import export_model, montage_path, training_level
from GANTrainerLib.run import read_status
from GANTrainerLib.train import settings_from_preset, train
from VolGANCore import VolGANError
from VolGANCore.cli import main as volgan
from VolumetricGANLib.checkpoint import card_path, load_checkpoint
from VolumetricGANLib.generate import generate

pytestmark = pytest.mark.slow  # every test here shares a module fixture that takes tens of seconds


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """tiny-spongiosa through its whole progressive schedule in 6 steps (a level per step, batch 8), with a
    checkpoint and quick metrics at every step and every checkpoint kept."""
    from VolumetricGANLib.phantoms import write_bone_dataset

    root = tmp_path_factory.mktemp("export")
    images = write_bone_dataset(root / "bone", n=6, seed=0, bvtv=0.18, bvtv_sd=0.05) / "images"
    s = settings_from_preset("tiny-spongiosa", phase_kimg=0.008, snapshot_kimg=0.008, metrics_kimg=0.008,
                             keep_last=10, metrics_n=6, metrics_morph_n=0)
    s = dataclasses.replace(s, snapshot_minutes=None, metrics_budget=None)
    out = root / "run"
    train(images, out, s, max_steps=6, device="cpu", log=lambda m: None)
    return out


def levels(run):
    return {e["step"]: training_level(load_checkpoint(run / e["path"]))[0] for e in read_status(run)["checkpoints"]}


def test_quick_metrics_below_the_progressive_top_level_are_logged_but_never_the_best(run):
    lv = levels(run)
    assert lv == {1: 0.0, 2: 0.0, 3: 1.0, 4: 2.0, 5: 3.0, 6: 3.0}   # the level each step trained at
    entries = {e["step"]: e for e in read_status(run)["checkpoints"]}
    assert all(entries[s]["metric"] is None for s in (1, 2, 3, 4))
    assert all(entries[s]["metric"] is not None for s in (5, 6))
    assert read_status(run)["best"]["step"] in (5, 6)
    assert "(progressive level 1 of 3: not ranked)" in (run / "log.txt").read_text()


def test_export_keeps_only_the_ema_generator_generates_identically_and_cards_the_run(run, tmp_path):
    out = export_model(run, tmp_path / "bone.vgan", name="tiny-bone-test", description="A test release.")
    best = read_status(run)["best"]
    src = load_checkpoint(run / best["path"])
    blob = load_checkpoint(out)
    assert set(blob["tensors"]) == {"G_ema"} and blob.get("training") is None
    assert blob["config"]["name"] == "tiny-bone-test" and blob["config"]["discriminator"] is None
    assert blob["provenance"]["command"] == src["provenance"]["command"]     # how it was trained, not exported
    assert blob["provenance"]["exported_from"].startswith(f"ckpt-{best['step']:07d}.vgan")
    assert blob["metrics"]["fd_quick"] == pytest.approx(best["metric"])
    assert out.stat().st_size < 0.5 * (run / best["path"]).stat().st_size
    a = generate(run / best["path"], n=2, seed=3, device="cpu").volumes
    b = generate(out, n=2, seed=3, device="cpu").volumes
    assert all(torch.equal(torch.from_numpy(x.array), torch.from_numpy(y.array)) for x, y in zip(a, b))
    card = card_path(out).read_text()
    assert montage_path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(bone.samples.png)" in card
    for needle in ("A test release.", "## Training run", " start: ", "tiny-spongiosa",
                   "| step | kimg | fd_quick", "### Log (`log.txt`)", "by `fd_quick`"):
        assert needle in card, needle


def test_export_refuses_untrained_levels_an_existing_file_and_a_run_without_ranked_checkpoints(run, tmp_path):
    low = run / "checkpoints" / "ckpt-0000003.vgan"
    with pytest.raises(VolGANError, match="progressive level 1 of 3"):
        export_model(low, tmp_path / "low.vgan")
    (tmp_path / "x.vgan").write_bytes(b"keep me")
    with pytest.raises(VolGANError, match="--overwrite"):
        export_model(run, tmp_path / "x.vgan")
    assert (tmp_path / "x.vgan").read_bytes() == b"keep me"
    with pytest.raises(VolGANError, match="must end in .vgan"):
        export_model(run, tmp_path / "x.pt")
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    for which in ("best", "latest"):
        with pytest.raises(VolGANError, match="no checkpoints/ckpt-"):
            export_model(empty, tmp_path / "e.vgan", which=which)
    import shutil

    shutil.copy(low, empty / "checkpoints" / low.name)   # a checkpoint, but none scored at the full resolution
    with pytest.raises(VolGANError, match="--which latest"):
        export_model(empty, tmp_path / "e.vgan")


def test_cli_exports_the_newest_checkpoint(run, tmp_path, capsys):
    assert volgan(["export", str(run), "--out", str(tmp_path / "m.vgan"), "--which", "latest"]) == 0
    assert '"tensors": ["G_ema"]' in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "m.vgan")["provenance"]["exported_from"].startswith("ckpt-0000006.vgan")


def test_export_never_calls_a_collapsed_checkpoint_best_and_warns_when_one_is_exported_by_name(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    best = read_status(copy)["best"]
    other = next(e for e in read_status(copy)["checkpoints"] if e["step"] in (5, 6) and e["step"] != best["step"])
    path = copy / best["path"]
    blob = load_checkpoint(path)
    blob["metrics"]["spread_ratio"] = 0.1                      # the samples of the best one collapsed
    torch.save(blob, path)
    out = export_model(copy, tmp_path / "m.vgan")
    assert load_checkpoint(out)["provenance"]["exported_from"].startswith(f"ckpt-{other['step']:07d}.vgan")
    assert "mode collapse" not in card_path(out).read_text()
    card = card_path(export_model(path, tmp_path / "collapsed.vgan")).read_text()
    assert "**Warning: mode collapse.**" in card and "`spread_ratio` 0.1," in card
    blob = load_checkpoint(copy / other["path"])
    blob["metrics"]["spread_ratio"] = 0.2
    torch.save(blob, copy / other["path"])
    with pytest.raises(VolGANError, match="without mode collapse"):
        export_model(copy, tmp_path / "none.vgan")
