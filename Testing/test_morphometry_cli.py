"""`volgan morphometry bone|vessels` end to end on small files (exit codes, JSON, CSV, errors)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MorphometryLogic"))

from VolGANCore import Volume, read_volume, write_volume  # noqa: E402
from VolGANCore.cli import main  # noqa: E402


def _plates(t=4, s=6, n=3, size=20):
    line = np.zeros(n * (t + s), bool)
    for k in range(n):
        line[s // 2 + k * (t + s): s // 2 + k * (t + s) + t] = True
    return np.broadcast_to(line[:, None, None], (line.size, size, size)).copy()


@pytest.fixture()
def grey_plates(tmp_path):
    m = _plates()
    img = np.where(m, 400.0, 60.0).astype(np.float32)
    img += np.random.default_rng(0).uniform(-5, 5, img.shape).astype(np.float32)  # grey, not binary
    path = tmp_path / "plates.nii.gz"
    write_volume(Volume(img, spacing=(0.1, 0.1, 0.2)), path)
    return path, m


def test_bone_json_threshold_and_thickness_map(grey_plates, tmp_path, capsys):
    path, m = grey_plates
    tmap = tmp_path / "th.nrrd"
    csv = tmp_path / "row.csv"
    rc = main(["--quiet", "morphometry", "bone", str(path), "--threshold", "225", "--json",
               "--parameters", "BV/TV", "Tb.Th", "Tb.Sp", "BMD", "--thickness-map", str(tmap), "--csv", str(csv)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["BV/TV"] == pytest.approx(0.4)
    assert out["Tb.Th [mm]"] == pytest.approx(4 * 0.2)  # plates stacked along z (0.2 mm)
    assert out["Tb.Sp [mm]"] == pytest.approx(6 * 0.2)
    assert out["BMD [image units]"] == pytest.approx(0.4 * 400 + 0.6 * 60, abs=0.5)
    tm = read_volume(tmap)
    assert tm.spacing == pytest.approx((0.1, 0.1, 0.2)) and np.allclose(tm.array[m], 0.8)
    assert "Tb.Th [mm]" in csv.read_text().splitlines()[0]


def test_bone_preset_otsu_and_mask(grey_plates, tmp_path, capsys):
    path, m = grey_plates
    assert main(["--quiet", "morphometry", "bone", str(path), "--preset", "miccai2020", "--json", "--parameters", "BV/TV"]) == 0
    assert json.loads(capsys.readouterr().out)["Threshold [image units]"] == 225.0
    roi = np.zeros(m.shape, np.uint8)
    roi[:10] = 1  # the first plate (rows 3..6) and marrow
    mpath = tmp_path / "roi.nii.gz"
    write_volume(Volume(roi, spacing=(0.1, 0.1, 0.2)), mpath)
    assert main(["--quiet", "morphometry", "bone", str(path), "--otsu", "--mask", str(mpath), "--json", "--parameters", "BV/TV"]) == 0
    assert json.loads(capsys.readouterr().out)["BV/TV"] == pytest.approx(0.4)


def test_bone_bad_inputs_exit_2_with_a_readable_message(grey_plates, tmp_path, capsys):
    path, m = grey_plates
    # grey image without threshold
    assert main(["morphometry", "bone", str(path)]) == 2
    err = capsys.readouterr().err
    assert "volgan morphometry: error:" in err and "not binary" in err and "--threshold" in err
    # mask on another grid
    wrong = tmp_path / "wrong.nii.gz"
    write_volume(Volume(np.ones((5, 5, 5), np.uint8), spacing=(1, 1, 1)), wrong)
    assert main(["morphometry", "bone", str(path), "--threshold", "225", "--mask", str(wrong)]) == 2
    assert "differs from the image" in capsys.readouterr().err
    # empty bone
    assert main(["morphometry", "bone", str(path), "--threshold", "5000"]) == 2
    assert "no bone voxel" in capsys.readouterr().err
    # missing file
    assert main(["morphometry", "bone", str(tmp_path / "nope.nii.gz")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_bone_nrrd_without_spacing_warns_what_was_assumed(tmp_path, capsys):
    m = _plates().astype(np.uint8)
    raw = tmp_path / "nospacing.nrrd"
    header = (f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {m.shape[2]} {m.shape[1]} {m.shape[0]}\n"
              "encoding: raw\nendian: little\n\n")
    raw.write_bytes(header.encode() + m.tobytes())
    assert main(["--quiet", "morphometry", "bone", str(raw), "--json", "--parameters", "Tb.Th"]) == 0
    cap = capsys.readouterr()
    assert "no voxel spacing; assumed 1 mm isotropic" in cap.err
    assert json.loads(cap.out)["Tb.Th [mm]"] == pytest.approx(4.0)
    assert main(["--quiet", "morphometry", "bone", str(raw), "--json", "--parameters", "Tb.Th", "--spacing", "1", "1", "0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["Tb.Th [mm]"] == pytest.approx(2.0)


def test_bone_folder_batch_writes_csv(tmp_path, capsys):
    folder = tmp_path / "patches"
    folder.mkdir()
    for i, t in enumerate((2, 4)):
        write_volume(Volume(_plates(t=t, s=6).astype(np.uint8), spacing=(0.1, 0.1, 0.1)), folder / f"p{i}.nii.gz")
    write_volume(Volume(np.zeros((8, 8, 8), np.uint8), spacing=(0.1, 0.1, 0.1)), folder / "p2_empty.nii.gz")
    csv = tmp_path / "all.csv"
    rc = main(["--quiet", "morphometry", "bone", str(folder), "--csv", str(csv), "--workers", "1", "--parameters", "BV/TV", "Tb.Th"])
    assert rc == 0
    lines = csv.read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("case,")
    assert "no bone voxel" in capsys.readouterr().err
    import csv as _csv

    rows = list(_csv.DictReader(open(csv)))
    assert float(rows[0]["Tb.Th [mm]"]) == pytest.approx(0.2) and float(rows[1]["Tb.Th [mm]"]) == pytest.approx(0.4)


def test_vessels_cli_json(tmp_path, capsys):
    lab = np.zeros((10, 30, 30), np.int16)
    lab[2:8, 10:14, 3:27] = 1  # a BA-labelled bar
    path = tmp_path / "cow.nii.gz"
    write_volume(Volume(lab, spacing=(0.3, 0.3, 0.6), label_scheme="topcow13"), path)
    assert main(["--quiet", "morphometry", "vessels", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ba = [r for r in out["arteries"] if r["artery"] == "BA"][0]
    assert ba["present"] == 1 and ba["length [mm]"] == pytest.approx(24 * 0.3, rel=0.1)
    assert out["variants"]["posterior"] == [0, 0, 0, 0]
    assert main(["--quiet", "morphometry", "vessels", str(path), "--binary", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["branch points"] == 0


def test_bone_bonej_flag_reaches_the_panel_and_the_folder_batch(tmp_path, capsys):
    # a 7 × 7 square rod: Fiji's map reads 6 at the four corner columns, BoneJ's clean-up makes them 8
    m = np.zeros((4, 13, 13), np.uint8)
    m[:, 3:10, 3:10] = 1
    path = tmp_path / "rod.nii.gz"
    write_volume(Volume(m, spacing=(0.1, 0.1, 0.1)), path)
    args = ["--quiet", "morphometry", "bone", str(path), "--json", "--parameters", "Tb.Th"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["Tb.Th [mm]"] == pytest.approx(0.1 * (45 * 8 + 4 * 6) / 49)
    assert main(args + ["--bonej"]) == 0
    assert json.loads(capsys.readouterr().out)["Tb.Th [mm]"] == pytest.approx(0.8)
    folder = tmp_path / "in"
    folder.mkdir()
    write_volume(Volume(m, spacing=(0.1, 0.1, 0.1)), folder / "rod.nii.gz")
    assert main(["--quiet", "morphometry", "bone", str(folder), "--json", "--workers", "1", "--parameters", "Tb.Th",
                 "--bonej"]) == 0
    assert json.loads(capsys.readouterr().out)["Tb.Th [mm]"] == pytest.approx(0.8)
    # anisotropic voxels: BoneJ measures in voxels, so the mode refuses them with one readable line, exit 2
    write_volume(Volume(m, spacing=(0.1, 0.1, 0.2)), path)
    assert main(["morphometry", "bone", str(path), "--parameters", "Tb.Th", "--bonej"]) == 2
    err = capsys.readouterr().err
    assert "isotropic voxels" in err and len(err.strip().splitlines()) == 1
