"""`volgan evaluate` end to end on tiny folders with the fallback extractors; determinism; bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from VolGANCore import Volume, write_volume

VOLGAN = [sys.executable, "-m", "VolGANCore.cli"]
SHAPE = (8, 32, 32)


def run(*args):
    return subprocess.run(VOLGAN + ["--quiet"] + [str(a) for a in args], capture_output=True, text=True, timeout=600)


def _folder(path: Path, n: int, seed: int, shift: float = 0.0, shape=SHAPE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for k in range(n):
        base = np.zeros(shape, np.float32)
        base[:, 8:24, 8 + k % 4:20 + k % 4] = 1.0  # a bright block that moves from case to case
        arr = (base + rng.normal(size=shape) * 0.3 + shift).astype(np.float32)
        write_volume(Volume(arr, spacing=(0.3, 0.3, 0.6)), path / f"case{k:02d}.nii.gz")
        arrays.append(arr)
    return arrays


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    real = _folder(root / "real", 6, seed=1)
    _folder(root / "fake", 6, seed=2, shift=0.1)
    # plant a near-copy of real case03 among the generated volumes
    copy = real[3] + np.random.default_rng(9).normal(size=SHAPE).astype(np.float32) * 0.01
    write_volume(Volume(copy, spacing=(0.3, 0.3, 0.6)), root / "fake" / "case05.nii.gz")
    return root


@pytest.mark.slow
def test_cli_end_to_end_with_fallback_extractors(folders):
    before = {k: _digest(folders / k) for k in ("real", "fake")}
    out = run("evaluate", "--real", folders / "real", "--fake", folders / "fake", "--out", folders / "rep",
              "--bootstrap", 5, "--seed", 3)
    assert out.returncode == 0, out.stderr
    assert "suspected copies: " in out.stdout and "fallback-random-resnet10-seed3" in out.stdout
    assert {k: _digest(folders / k) for k in ("real", "fake")} == before  # inputs untouched
    rep = json.loads((folders / "rep" / "report.json").read_text())
    assert rep["protocol"] == "default" and rep["inputs"]["real"]["n"] == 6
    assert rep["extractors"]["slices_2d"]["name"] == "fallback-slice-stats-v1"
    assert rep["extractors"]["volumes_3d"]["name"] == "fallback-random-resnet10-seed3"
    expected = {"frechet_2d", "frechet_3d", "prd_auc", "prd_f8", "prd_f1_8", "precision", "recall", "density",
                "coverage", "mmd2"}
    assert set(rep["metrics"]) == expected
    for key, m in rep["metrics"].items():
        assert m["extractor"].startswith("fallback-") and m["fallback_features"], key
        assert np.isfinite(m["real_vs_generated"]) and m["real_vs_real"] is not None, key
        assert m["ci95"] is not None and m["bootstrap_replicates"] == 5, key
    assert "FID" not in rep["metrics"]["frechet_2d"]["label"]  # a fallback is never called FID
    suspects = rep["memorisation"]["suspects"]
    assert suspects and suspects[0]["fake_case"] == "case05" and suspects[0]["real_case_ncc"] == "case03"
    assert len(rep["memorisation"]["fake_nn"]["ncc"]) == 6 and len(rep["prd_curve"]["real_vs_real"]["recall"]) == 1001
    border = rep["border"]
    assert border["frame_index"]["real_vs_generated"] >= 0 and border["frame_index"]["real_vs_real"] >= 0
    assert border["profile"]["distance_voxels"] == list(range(4)) and sum(border["profile"]["voxels"]) == 8 * 32 * 32
    assert "border frame index: " in out.stdout
    for png in ("prd_curve.png", "nn_histogram.png", "nn_montage.png", "border_profile.png",
                "suspects/case05_vs_case03.png"):
        assert (folders / "rep" / png).read_bytes()[:4] == b"\x89PNG", png
    md = (folders / "rep" / "report.md").read_text()
    assert "| Real vs generated | 95 % CI | Real vs real (halves) |" in md and "fallback" in md and "case05" in md
    assert "## Border artefacts" in md and "![border_profile](border_profile.png)" in md
    assert not list(folders.glob(".rep.partial-*"))
    # a second run into the same folder refuses without --overwrite
    again = run("evaluate", "--real", folders / "real", "--fake", folders / "fake", "--out", folders / "rep")
    assert again.returncode == 2 and "not empty" in again.stderr


@pytest.mark.slow
def test_same_seed_same_numbers_and_anchor_protocol(folders, tmp_path):
    from GANTrainerLib.evaluation.report import evaluate

    kw = dict(protocol="aydin2024", n_bootstrap=3, seed=5)
    a = evaluate(folders / "real", folders / "fake", tmp_path / "a", **kw)
    b = evaluate(folders / "real", folders / "fake", tmp_path / "b", **kw)
    assert set(a["metrics"]) == {"frechet_2d", "frechet_3d", "prd_auc"}
    assert json.dumps(a["metrics"], sort_keys=True) == json.dumps(b["metrics"], sort_keys=True)
    assert a["memorisation"]["fake_nn"] == b["memorisation"]["fake_nn"]
    assert a["settings"]["slices_per_volume"] == SHAPE[0]  # fewer than 32 slices: all of them
    assert a["extractors"]["volumes_3d"]["name"] == "fallback-random-resnet10-seed5"
    assert a["metrics"]["prd_auc"]["ci95"] is not None
    # the paper's MedicalNet background by default (seeded noise), its 10 clusters, and warnings for 6 volumes
    assert a["settings"]["medicalnet_background"] == "noise" and a["settings"]["prd_clusters"] == 10
    assert any(w.startswith("PRD real vs generated: 6 samples per set for 10 clusters") for w in a["warnings"])
    assert "MedicalNet background (voxels at each volume's minimum): N(0, 1) noise" in \
        (tmp_path / "a" / "report.md").read_text()
    z = evaluate(folders / "real", folders / "fake", tmp_path / "z", medicalnet_background="zero", **kw)
    assert z["settings"]["medicalnet_background"] == "zero"
    assert z["metrics"]["frechet_2d"]["real_vs_generated"] == a["metrics"]["frechet_2d"]["real_vs_generated"]
    assert z["metrics"]["frechet_3d"]["real_vs_generated"] != a["metrics"]["frechet_3d"]["real_vs_generated"]


def test_bad_input_is_one_line_exit_2(folders, tmp_path, capsys):
    from VolGANCore import cli

    (tmp_path / "empty").mkdir()
    cases = {
        "empty": (["--fake", tmp_path / "empty"], "no volumes found"),
        "shape": (["--fake", tmp_path / "small"], "shape"),
        "corrupt": (["--fake", tmp_path / "corrupt"], "bad.nii.gz"),
        "weights": (["--fake", folders / "fake", "--inception-weights", tmp_path / "nope.pth"], "weights file not found"),
        "inside": (["--fake", folders / "fake", "--out", folders / "fake" / "report"], "inside the input folder"),
        "background": (["--fake", folders / "fake", "--medicalnet-background", "zero"], "aydin2024 only"),
    }
    _folder(tmp_path / "small", 3, seed=4, shape=(8, 16, 16))
    _folder(tmp_path / "corrupt", 2, seed=5)
    (tmp_path / "corrupt" / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    for name, (args, needle) in cases.items():
        out_args = [] if "--out" in args else ["--out", tmp_path / f"out_{name}"]
        argv = ["--quiet", "evaluate", "--real", folders / "real", *args, *out_args]
        rc = cli.main([str(a) for a in argv])  # in-process: the same frame as the console script, faster
        err = capsys.readouterr().err
        assert rc == 2, (name, err)
        assert err.startswith("volgan evaluate: error: ") and err.strip().count("\n") == 0, name
        assert needle in err, (name, err)
        assert not (tmp_path / f"out_{name}").exists() and not (folders / "fake" / "report").exists(), name


@pytest.mark.slow
def test_real_tof_patches_copy_is_flagged_and_anchor_slices_cover_8_bits(tmp_path):
    from conftest import shared_file
    from GANTrainerLib.evaluation import preprocess
    from GANTrainerLib.evaluation.report import evaluate
    from VolGANCore import read_volume

    tof = read_volume(shared_file("data", "topcow", "topcow_mra_crop.mha")).array  # (34, 123, 140)
    s = preprocess.anchor_slices_uint8(tof)
    assert s.shape == (32, 140, 123) and s.dtype == np.uint8
    assert all(sl.min() == 0 and sl.max() == 255 for sl in s)  # real slices are never constant
    rng = np.random.default_rng(0)
    corners = [(int(rng.integers(0, 18)), int(rng.integers(0, 75)), int(rng.integers(0, 92))) for _ in range(12)]
    patches = [tof[z:z + 16, y:y + 48, x:x + 48] for z, y, x in corners]
    for k in range(6):
        write_volume(Volume(patches[k], spacing=(0.297, 0.297, 0.6)), tmp_path / "real" / f"r{k}.nii.gz")
    for k in range(6, 11):
        write_volume(Volume(patches[k], spacing=(0.297, 0.297, 0.6)), tmp_path / "fake" / f"g{k}.nii.gz")
    write_volume(Volume(patches[2] * 1.01 + 3.0, spacing=(0.297, 0.297, 0.6)), tmp_path / "fake" / "copy.nii.gz")
    rep = evaluate(tmp_path / "real", tmp_path / "fake", tmp_path / "rep", n_bootstrap=0, seed=1)
    top = rep["memorisation"]["suspects"][0]
    assert top["fake_case"] == "copy" and top["real_case_ncc"] == "r2" and top["ncc"] > 0.999
    assert rep["metrics"]["frechet_3d"]["ci95"] is None and rep["metrics"]["frechet_3d"]["real_vs_generated"] > 0
