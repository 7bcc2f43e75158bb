"""`volgan prepare bone` on the real trabecular ROI of ../shared/data, embedded in a cortex shell as a scan in HU."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_file

from GANTrainerLib.prepare.bone import SCANCO_XCT2, hu_to_density, parse_calibration, prepare_bone
from VolGANCore import Volume, VolGANError
from VolGANCore.cli import main
from VolGANCore.io import read_volume, write_volume

pytestmark = pytest.mark.slow  # every test here shares a module fixture that takes tens of seconds

FINE = 0.082          # the ROI is declared at half the paper's 164 µm, so preparing resamples it 2:1
CORTEX, SOFT = 12, 10  # cortex shell (≈ 1 mm) and soft tissue around it, in fine voxels
BONE_HU, CORTEX_HU = 1150.0, 1500.0


@pytest.fixture(scope="module")
def roi() -> np.ndarray:
    """A 200³ crop of the segmented real ROI (bool)."""
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_file("data", "trabecular", "didsr_trabecular_roi_1.nrrd")))) > 0
    return a[50:250, 50:250, 50:250]


def _scan_hu(seg: np.ndarray, seed: int = 0) -> Volume:
    """The ROI as the spongiosa of a scan in HU: marrow 0, trabeculae 1150, a 1500 HU cortex, soft tissue 0, noise."""
    n = seg.shape[0] + 2 * (CORTEX + SOFT)
    hu = np.zeros((n,) * 3, np.float32)
    shell = slice(SOFT, n - SOFT)
    hu[shell, shell, shell] = CORTEX_HU
    inner = slice(SOFT + CORTEX, n - SOFT - CORTEX)
    hu[inner, inner, inner] = np.where(seg, BONE_HU, 0.0)
    hu += np.random.default_rng(seed).normal(0.0, 20.0, hu.shape).astype(np.float32)
    return Volume(hu, spacing=(FINE,) * 3, origin=(5.0, -3.0, 2.0))


@pytest.fixture(scope="module")
def prepared(roi, tmp_path_factory):
    base = tmp_path_factory.mktemp("bone")
    scan = _scan_hu(roi)
    (base / "in").mkdir()
    write_volume(scan, base / "in" / "vertebra.nii.gz")
    out = base / "out"
    rc = main(["--quiet", "prepare", "bone", "--images", str(base / "in"), "--out", str(out), "--from-hu",
               "--stride", "16"])
    assert rc == 0
    return base, scan, json.loads((out / "manifest.json").read_text())


def test_patches_lie_in_the_spongiosa_and_match_its_bvtv(prepared, roi):
    base, scan, manifest = prepared
    cases = manifest["cases"]
    assert len(cases) >= 27 and (base / "out" / "qc_montage.png").stat().st_size > 10_000
    seg = np.zeros(scan.shape, bool)
    inner = slice(SOFT + CORTEX, scan.shape[0] - SOFT - CORTEX)
    seg[inner, inner, inner] = roi
    measured, truth = [], []
    for case in cases:
        img = read_volume(base / "out" / case["image"])
        mask = read_volume(base / "out" / case["mask"], dtype=np.uint8)
        assert img.shape == (32, 32, 32) and np.allclose(img.spacing, 0.164, rtol=1e-5)
        assert mask.array.mean() == pytest.approx(case["bvtv"], abs=1e-6)
        # the patch's footprint on the fine grid: its first voxel centre sits between two fine voxels
        start = np.rint(scan.physical_to_index(case["origin_mm"])[::-1] - 0.5).astype(int)
        assert np.all(start >= SOFT + CORTEX) and np.all(start + 64 <= scan.shape[0] - SOFT - CORTEX), \
            f"{case['case']} reaches into the cortex"
        truth.append(seg[tuple(slice(s, s + 64) for s in start)].mean())
        measured.append(case["bvtv"])
    measured, truth = np.asarray(measured), np.asarray(truth)
    assert np.max(np.abs(measured - truth)) < 0.02, "a patch's BV/TV differs from its footprint in the ROI"
    # the ROI's BV/TV within the sampling error of the patches (independent blocks: covered volume / 32³)
    n_eff = max(1, int(manifest["sources"][0]["mask_fraction"] * np.prod(manifest["sources"][0]["shape_resampled"])
                       // 32 ** 3))
    se = measured.std(ddof=1) / np.sqrt(n_eff)
    assert abs(measured.mean() - roi.mean()) < 3 * se + 0.01, (measured.mean(), roi.mean(), se)


def test_scanco_hu_rule_and_calibration_round_trip(roi, tmp_path):
    a, b = hu_to_density()
    mu_water, slope, intercept = SCANCO_XCT2["mu_water"], SCANCO_XCT2["slope"], SCANCO_XCT2["intercept"]
    for hu in (-1000.0, 0.0, 1000.0):   # density = slope·µ + intercept with µ = µ_water·(1 + HU/1000)
        assert a * hu + b == pytest.approx(slope * mu_water * (1 + hu / 1000) + intercept, abs=1e-9)
    assert parse_calibration("2.5,-100") == (2.5, -100.0)
    with pytest.raises(VolGANError, match="slope,intercept"):
        parse_calibration("2.5")
    scan = _scan_hu(roi[:80, :80, :80], seed=1)
    density = scan.array * np.float32(a) + np.float32(b)
    raw = (density + 100.0) / 2.5          # the same scan in a scanner's own units: density = 2.5·raw − 100
    for name, arr in (("hu", scan.array), ("raw", raw), ("density", density)):
        (tmp_path / name).mkdir()
        write_volume(scan.with_array(arr.astype(np.float32)), tmp_path / name / "s.nrrd")
    common = dict(cortex_mm=1.0, stride=16, min_fill=0.0)
    prepare_bone(tmp_path / "hu", tmp_path / "o_hu", from_hu=True, **common)
    prepare_bone(tmp_path / "raw", tmp_path / "o_raw", calibration=parse_calibration("2.5,-100"), **common)
    prepare_bone(tmp_path / "density", tmp_path / "o_d", **common)
    names = [c["image"] for c in json.loads((tmp_path / "o_hu" / "manifest.json").read_text())["cases"]]
    assert names
    for other in ("o_raw", "o_d"):
        assert [c["image"] for c in json.loads((tmp_path / other / "manifest.json").read_text())["cases"]] == names
        for n in names:
            ref = read_volume(tmp_path / "o_hu" / n).array
            np.testing.assert_allclose(read_volume(tmp_path / other / n).array, ref, atol=0.05)
    assert float(read_volume(tmp_path / "o_hu" / names[0]).array.max()) > 300   # density units, not HU


def _run(argv, capsys):
    rc = main(["--quiet", *argv])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path, capsys):
    import SimpleITK as sitk

    good = Volume(np.zeros((40, 40, 40), np.float32), spacing=(0.164,) * 3)
    # a 2-D image
    (tmp_path / "flat").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((50, 50), np.float32)), str(tmp_path / "flat" / "slice.nrrd"))
    rc, err = _run(["prepare", "bone", "--images", str(tmp_path / "flat"), "--out", str(tmp_path / "o1")], capsys)
    assert rc == 2 and "slice.nrrd" in err and "3-D" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o1").exists()
    # masks on another grid
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    write_volume(good, tmp_path / "img" / "a.nii.gz")
    write_volume(good.with_array(np.ones((40, 40, 40), np.uint8), spacing=(0.2,) * 3), tmp_path / "msk" / "a.nii.gz")
    rc, err = _run(["prepare", "bone", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "msk"),
                    "--out", str(tmp_path / "o2")], capsys)
    assert rc == 2 and "msk/a.nii.gz" in err and "another grid" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o2").exists()
    # an empty folder
    (tmp_path / "empty").mkdir()
    rc, err = _run(["prepare", "bone", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o3")], capsys)
    assert rc == 2 and "empty" in err and "no volumes" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o3").exists()
    # a scan without bone above 225 (uncalibrated): refused during the work, and the output folder never appears
    rc, err = _run(["prepare", "bone", "--images", str(tmp_path / "img"), "--out", str(tmp_path / "o4")], capsys)
    assert rc == 2 and "calibrat" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o4").exists() and not list(tmp_path.glob(".o4*")) and not (tmp_path / "o4.cache").exists()


def _small_scans(roi, folder, n):
    folder.mkdir()
    for i in range(n):
        write_volume(_scan_hu(roi[:96, :96, :96], seed=i), folder / f"s{i}.nii.gz")


def test_workers_and_resume_after_a_cancel(roi, tmp_path):
    from VolGANCore import Cancelled
    from VolGANCore.progress import CancelToken, RecordingProgress

    _small_scans(roi, tmp_path / "in", 3)
    kw = dict(from_hu=True, size=16, stride=16)
    token = CancelToken()

    def stop_after_first(event):
        if event.done >= 1:
            token.cancel()

    with pytest.raises(Cancelled):
        prepare_bone(tmp_path / "in", tmp_path / "out", progress=stop_after_first, cancel=token, **kw)
    assert not (tmp_path / "out").exists() and (tmp_path / "out.cache" / "rows" / "s0.json").exists()
    events = RecordingProgress()
    prepare_bone(tmp_path / "in", tmp_path / "out", workers=2, progress=events, **kw)
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["source"] for s in doc["sources"]] == ["s0.nii.gz", "s1.nii.gz", "s2.nii.gz"]
    assert doc["sources"][0].get("resumed") is True and not any(s.get("resumed") for s in doc["sources"][1:])
    assert not (tmp_path / "out.cache").exists()
    messages = [e.message for e in events.events if e.message]
    assert messages[0] == "1 case(s) done before (same recipe)"
    assert sorted(messages[1:]) == [f"s{i}: ok ({doc['sources'][i]['patches']} patch(es))" for i in (1, 2)]
    # the same patches as one uninterrupted run in one process
    prepare_bone(tmp_path / "in", tmp_path / "ref", **kw)
    ref = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert [c["image"] for c in doc["cases"]] == [c["image"] for c in ref["cases"]] and len(ref["cases"]) >= 3
    assert [c["bvtv"] for c in doc["cases"]] == [c["bvtv"] for c in ref["cases"]]
    for c in doc["cases"]:
        np.testing.assert_array_equal(read_volume(tmp_path / "out" / c["image"]).array,
                                      read_volume(tmp_path / "ref" / c["image"]).array)


def test_rerun_into_the_finished_folder_only_does_new_or_changed_scans(roi, tmp_path, monkeypatch, capsys):
    import GANTrainerLib.prepare.bone as bone

    _small_scans(roi, tmp_path / "in", 2)
    argv = ["--quiet", "prepare", "bone", "--images", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
            "--from-hu", "--size", "16", "--stride", "16"]
    assert main(argv) == 0
    first = json.loads((tmp_path / "out" / "manifest.json").read_text())
    original, done = bone._prepare_scan, []

    def count(args):
        done.append(args[0].name)
        return original(args)

    monkeypatch.setattr(bone, "_prepare_scan", count)
    assert main(argv) == 0                       # the same scans and recipe: nothing is prepared again
    assert done == [] and json.loads((tmp_path / "out" / "manifest.json").read_text())["cases"] == first["cases"]
    write_volume(_scan_hu(roi[:96, :96, :96], seed=2), tmp_path / "in" / "s2.nii.gz")     # a new scan
    write_volume(_scan_hu(roi[:96, :96, :96], seed=7), tmp_path / "in" / "s1.nii.gz")     # a changed one
    (tmp_path / "in" / "s0.nii.gz").rename(tmp_path / "s0.nii.gz")                        # a removed one
    assert main(argv) == 0
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(done) == ["s1.nii.gz", "s2.nii.gz"] and [s["source"] for s in doc["sources"]] == ["s1.nii.gz", "s2.nii.gz"]
    names = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert names == sorted(c["image"][len("images/"):] for c in doc["cases"]) and not any(n.startswith("s0") for n in names)
    capsys.readouterr()
    rc = main(argv[:-1] + ["8"])                 # another recipe (stride) without --overwrite
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "another recipe" in err and "out" in err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == doc
    assert main(argv[:-1] + ["8", "--overwrite"]) == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["parameters"]["stride"] == 8
