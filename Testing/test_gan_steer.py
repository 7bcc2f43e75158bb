"""Steering the published spongiosa generator towards exact-morphometry targets (a first, untuned version)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from VolGANCore import VolGANError
from VolumetricGANLib.steer import parse_targets, steer
from conftest import shared_file


@pytest.fixture(scope="module")
def spongiosa(tmp_path_factory):
    from VolumetricGANLib.checkpoint import load_generator
    from VolumetricGANLib.importers import import_model

    path = import_model("miccai2020-pgan", shared_file("anchors", "spongiosa_g_net.pth"),
                        tmp_path_factory.mktemp("m") / "spongiosa.vgan")
    return path, load_generator(path, device="cpu")


def test_parse_targets():
    absolute, relative = parse_targets(["BV/TV=0.22", "Tb.Th=0.4mm", "BMD=-10%"])
    assert absolute == {"BV/TV": 0.22, "Tb.Th": 0.4} and relative == {"BMD": pytest.approx(-0.1)}
    with pytest.raises(VolGANError, match="NAME=VALUE"):
        parse_targets(["SMI=2"])
    with pytest.raises(VolGANError, match="both as a value and as a change"):
        parse_targets(["BV/TV=0.2", "BV/TV=-5%"])


def test_pool_assignment_prefers_the_nearest_member_and_uses_each_once():
    from VolumetricGANLib.steer import _assign

    pool = np.array([[0.10, 1.0], [0.20, 2.0], [0.30, 3.0], [np.nan, 2.0], [0.21, 2.1]])
    goal = np.array([[0.2, 2.0], [0.2, 2.0], [0.31, 3.1]])
    order = _assign(pool, goal)
    assert order[2, 0] == 2                      # the nearest member in relative error
    assert sorted(order[:2, 0]) == [1, 4]        # two identical targets get the two nearest, once each
    assert 3 not in order[:, :4]                 # a member that could not be measured comes last
    assert order.shape == (3, 5) and all(sorted(r) == list(range(5)) for r in order)


@pytest.mark.slow
def test_bvtv_target_is_approached_as_measured_exactly(spongiosa):
    _, model = spongiosa
    res = steer(model, targets={"BV/TV": 0.26}, n=2, seed=0, steps=40, check_every=10, pool=24, device="cpu")
    for row in res.rows:
        before = abs(row["BV/TV start (exact)"] - 0.26)
        after = abs(row["BV/TV exact"] - 0.26)
        assert after < 0.5 * before or after <= 0.05 * 0.26
    assert res.trajectories["BV/TV"].shape[1] == 2 and res.volumes[0].spacing == pytest.approx((0.164,) * 3)


@pytest.mark.slow
def test_simulated_loss_lowers_bvtv_from_a_given_sample(spongiosa):
    from VolumetricGANLib.generate import sample_z

    _, model = spongiosa
    z = sample_z(2, 32, 5, "hypersphere").numpy()
    res = steer(model, changes={"BV/TV": -0.2}, latents=z, keep=(), steps=40, check_every=10, lr=0.05, device="cpu")
    for row in res.rows:
        assert row["BV/TV exact"] < 0.9 * row["BV/TV start (exact)"]
        assert row["BV/TV target"] == pytest.approx(0.8 * row["BV/TV start (exact)"])


@pytest.mark.slow
def test_out_of_range_target_is_clamped_with_a_warning_and_bad_requests_refused(spongiosa):
    _, model = spongiosa
    res = steer(model, targets={"BV/TV": 0.95}, n=1, steps=1, pool=16, device="cpu")
    assert res.info["warnings"] and "clamped" in res.info["warnings"][0]
    assert res.rows[0]["BV/TV target"] < 0.95
    with pytest.raises(VolGANError, match="needs a starting sample"):
        steer(model, changes={"BV/TV": -0.2})
    with pytest.raises(VolGANError, match="at least one"):
        steer(model)


@pytest.mark.slow
def test_cli_writes_volumes_latents_report_and_plot(spongiosa, tmp_path):
    path, _ = spongiosa
    out = subprocess.run([sys.executable, "-m", "VolGANCore.cli", "--quiet", "steer", "--checkpoint", str(path),
                          "--target", "BV/TV=0.24", "--n", "2", "--steps", "10", "--pool", "16", "--device", "cpu",
                          "--out", str(tmp_path / "s")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert len(report["samples"]) == 2 and "BV/TV exact" in report["samples"][0]
    assert (tmp_path / "s" / "trajectories.png").stat().st_size > 1000
    assert np.load(tmp_path / "s" / "latents.npz")["z"].shape == (2, 32)
    assert sorted(p.name for p in (tmp_path / "s").glob("steered_*.nii.gz")) == ["steered_0000.nii.gz",
                                                                                 "steered_0001.nii.gz"]


@pytest.mark.slow
def test_a_model_of_another_anatomy_is_refused_before_any_work(tmp_path):
    """The shipped vessel model: the library, and the CLI from the config alone (no output folder made)."""
    from pathlib import Path

    from VolumetricGANLib.checkpoint import read_config
    from VolumetricGANLib.steer import steering_support

    cow = Path(__file__).resolve().parents[1] / "VolumetricGAN" / "Resources" / "Models" / "tiny-cow.vgan"
    assert steering_support(read_config(cow)) == (False, "steering measures bone micro-structure, but this is a "
                                                         "'circle-of-willis' model")
    with pytest.raises(VolGANError, match=r"tiny-cow\.vgan: steering measures bone .*'circle-of-willis' model"):
        steer(str(cow), {"BV/TV": 0.2}, n=1, steps=1, device="cpu")
    out = tmp_path / "steered"
    proc = subprocess.run([sys.executable, "-m", "VolGANCore.cli", "steer", "--checkpoint", str(cow),
                           "--target", "BV/TV=0.2", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines() == [
        f"volgan steer: error: {cow}: steering measures bone micro-structure, but this is a 'circle-of-willis' "
        "model (steer a trabecular-bone (spongiosa) model)"]
