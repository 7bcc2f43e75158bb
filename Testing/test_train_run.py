"""Run-folder bookkeeping: pollable status, metrics, checkpoint retention (last K + best), signals, montages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from VolGANCore.errors import VolGANError
from VolumetricGANLib.checkpoint import card_path
from GANTrainerLib.run import GracefulStop, TrainingRun, read_metrics, read_status, save_montage


def fake_ckpt(run, step):
    p = run.checkpoint_path(step)
    p.write_bytes(b"x")
    card_path(p).write_text("card")
    return p


def test_keeps_last_k_and_best(tmp_path):
    run = TrainingRun(tmp_path / "run", keep_last=2, best_mode="min", tensorboard=False)
    metrics = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 6.0}
    for step, m in metrics.items():
        run.register_checkpoint(fake_ckpt(run, step), step, metric=m)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.vgan"))
    assert kept == ["ckpt-0000002.vgan", "ckpt-0000004.vgan", "ckpt-0000005.vgan"]
    assert not (tmp_path / "run" / "checkpoints" / "ckpt-0000001.card.md").exists()
    assert (tmp_path / "run" / "checkpoints" / "ckpt-0000002.card.md").exists()
    status = read_status(tmp_path / "run")
    assert status["best"]["step"] == 2 and len(status["checkpoints"]) == 3
    assert run.latest_checkpoint().name == "ckpt-0000005.vgan"
    # paths relative to the run folder: the folder can be moved (the demo writes it aside, then renames it)
    assert [e["path"] for e in status["checkpoints"]] == [f"checkpoints/ckpt-000000{i}.vgan" for i in (2, 4, 5)]
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)
    run2 = TrainingRun(moved, keep_last=2, best_mode="min", tensorboard=False)
    run2.register_checkpoint(fake_ckpt(run2, 6), 6, metric=9.0)
    assert sorted(p.name for p in (moved / "checkpoints").glob("*.vgan")) == [
        "ckpt-0000002.vgan", "ckpt-0000005.vgan", "ckpt-0000006.vgan"]


def test_a_rewound_run_keeps_the_checkpoints_it_writes(tmp_path):
    """Newer checkpoints deleted to resume from an older one (a diverged GAN run rewound): run.json still lists
    them, but they must not count among the last K, or every new checkpoint, the one a killed run resumes from,
    would be deleted as soon as it is written; the best is chosen among the files that exist."""
    run = TrainingRun(tmp_path / "run", keep_last=2, best_mode="min", tensorboard=False)
    for step, m in {10: 5.0, 20: 1.0, 30: 4.0, 40: 3.0, 45: None}.items():   # 45: written at a stop
        run.register_checkpoint(fake_ckpt(run, step), step, metric=m)
    assert [e["step"] for e in read_status(tmp_path / "run")["checkpoints"]] == [20, 40, 45]
    for step in (40, 45):                                 # rewind to step 20
        run.checkpoint_path(step).unlink()
        card_path(run.checkpoint_path(step)).unlink()
    again = TrainingRun(tmp_path / "run", keep_last=2, best_mode="min", tensorboard=False)  # the resumed process
    again.register_checkpoint(fake_ckpt(again, 30), 30, metric=6.0)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.vgan")) == [
        "ckpt-0000020.vgan", "ckpt-0000030.vgan"]
    for step in (40, 50):
        again.register_checkpoint(fake_ckpt(again, step), step)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.vgan")) == [
        "ckpt-0000020.vgan", "ckpt-0000040.vgan", "ckpt-0000050.vgan"]     # the last 2 and the best on disk
    status = read_status(tmp_path / "run")
    assert status["best"]["step"] == 20 and [e["step"] for e in status["checkpoints"]] == [20, 40, 50]


def test_status_and_metrics_survive_a_new_process(tmp_path):
    run = TrainingRun(tmp_path / "run", tensorboard=True)
    run.log_scalars(10, 0.08, {"loss/G": 1.5, "loss/D": 0.7})
    run.log("resumed from step 10")
    run.update_status(state="running", step=10)
    run.close()
    assert read_metrics(tmp_path / "run") == [{"step": 10, "kimg": 0.08, "loss/G": 1.5, "loss/D": 0.7}]
    again = TrainingRun(tmp_path / "run", tensorboard=False)
    assert again.status["state"] == "running" and again.status["latest"]["loss/G"] == 1.5
    assert "resumed from step 10" in (tmp_path / "run" / "log.txt").read_text()
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    with open(tmp_path / "run" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 11, "kimg"')  # a line still being written by the trainer
    assert len(read_metrics(tmp_path / "run")) == 1


def test_graceful_stop_turns_sigterm_into_a_flag(tmp_path):
    code = "\n".join([
        "import os, signal, sys, time",
        "from GANTrainerLib.run import GracefulStop",
        "with GracefulStop() as stop:",
        "    os.kill(os.getpid(), signal.SIGTERM)",
        "    for _ in range(100):",
        "        if stop.requested:",
        "            break",
        "        time.sleep(0.01)",
        "    print('stopped by', stop.requested)",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "stopped by SIGTERM"
    before = signal.getsignal(signal.SIGINT)
    with GracefulStop():
        pass
    assert signal.getsignal(signal.SIGINT) is before


def test_montage_png(tmp_path, rng):
    path = save_montage(rng.uniform(-1, 1, size=(2, 1, 8, 16, 16)), tmp_path / "m.png", title="step 5")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert os.listdir(tmp_path) == ["m.png"]


def _png_size(path):
    data = Path(path).read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_label_projection_keeps_every_labelled_ray_and_its_most_frequent_label():
    from GANTrainerLib.run import label_projection

    lab = np.zeros((4, 3, 3), np.int16)
    lab[:, 0, 0] = [1, 2, 2, 0]   # 2 is the commonest label on this ray
    lab[3, 1, 1] = 15             # a single labelled voxel at the far end still shows
    proj = label_projection(lab)
    assert proj.tolist() == [[2, 0, 0], [0, 15, 0], [0, 0, 0]]
    assert label_projection(np.zeros((2, 2, 2), np.int16)).tolist() == [[0, 0], [0, 0]]


def test_a_montage_with_labels_adds_a_coloured_column_and_checks_the_shapes(tmp_path, rng):
    vols = rng.uniform(-1, 1, size=(2, 8, 16, 16))
    lab = np.zeros((2, 8, 16, 16), np.int16)
    lab[:, 2:5, 4:12, 7:9] = 1
    plain = save_montage(vols, tmp_path / "plain.png")
    joint = save_montage(vols, tmp_path / "joint.png", labels=lab, label_scheme="topcow13", row_titles=["a", "b"])
    (wp, hp), (wj, hj) = _png_size(plain), _png_size(joint)
    assert hj == hp and wj == pytest.approx(wp * 5 / 4, rel=0.02)
    with pytest.raises(ValueError, match="do not match"):
        save_montage(vols, tmp_path / "bad.png", labels=lab[:, :4])
    with pytest.raises(VolGANError, match=r"unknown label id\(s\) \[13\]"):
        save_montage(vols, tmp_path / "bad.png", labels=lab * 13)  # id 13 is not a TopCoW class
    assert sorted(os.listdir(tmp_path)) == ["joint.png", "plain.png"]


def test_keeping_no_checkpoint_is_refused(tmp_path):
    with pytest.raises(VolGANError, match="at least 1"):
        TrainingRun(tmp_path / "run", keep_last=0, tensorboard=False)


def test_demo_prefers_a_shipped_model_over_its_smoke_run(tmp_path, monkeypatch):
    from GANTrainerLib import demo

    smoke = tmp_path / "out" / "runs" / "tiny-spongiosa" / "checkpoints"
    smoke.mkdir(parents=True)
    (smoke / "ckpt-0000006.vgan").write_bytes(b"x")
    shipped = tmp_path / "models"
    shipped.mkdir()
    monkeypatch.setattr(demo, "SHIPPED_MODELS", shipped)
    path, how = demo.demo_model(tmp_path / "out", "tiny-spongiosa")
    assert path.name == "ckpt-0000006.vgan" and "smoke-run" in how
    (shipped / "tiny-spongiosa.vgan").write_bytes(b"x")
    assert demo.demo_model(tmp_path / "out", "tiny-spongiosa")[0].name == "tiny-spongiosa.vgan"
    (shipped / "spongiosa-pgan.vgan").write_bytes(b"x")  # the full preset's model wins over the tiny one
    path, how = demo.demo_model(tmp_path / "out", "tiny-spongiosa")
    assert path.name == "spongiosa-pgan.vgan" and "shipped" in how
