"""`volgan prepare cow` on the real TOF-MRA crop (and TopCoW label crop) of ../shared/data, moved by known rigid
transforms (up to ±15° and ±10 mm) into a larger field of view and registered back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_file

from GANTrainerLib.prepare.cow import build_template, prepare_cow, resample_onto
from VolGANCore import Cancelled, Volume
from VolGANCore.cli import main
from VolGANCore.geometry import downsample
from VolGANCore.io import read_label_volume, read_volume, write_volume
from VolGANCore.progress import CancelToken

PAD = (4, 10, 10)   # template margin around the crop (z, y, x voxels)
FAST = ["--iterations", "20", "--search-deg", "15"]


@pytest.fixture(scope="module")
def template_and_labels():
    """The MRA crop padded into a template; the label crop put on the same grid (another subject: it only travels)."""
    mra = read_volume(shared_file("data", "topcow", "topcow_mra_crop.mha"))
    lab = read_label_volume(shared_file("data", "topcow", "topcow_mr_roi_003_labels.nii.gz"))
    rng = np.random.default_rng(0)
    lo = float(np.percentile(mra.array, 1))
    inside = np.pad(np.ones(mra.shape, bool), [(p, p) for p in PAD])
    arr = np.pad(mra.array, [(p, p) for p in PAD])
    arr = np.where(inside, arr, lo + rng.normal(0, 3, arr.shape)).astype(np.float32)
    template = mra.with_array(arr, spacing=mra.spacing, origin=tuple(mra.index_to_physical((-PAD[2], -PAD[1], -PAD[0]))))
    L = np.zeros(mra.shape, np.int16)
    s = [min(a, b) for a, b in zip(mra.shape, lab.shape)]
    L[:s[0], :s[1], :s[2]] = lab.array[:s[0], :s[1], :s[2]]
    return template, template.with_array(np.pad(L, [(p, p) for p in PAD]), label_scheme="topcow13")


def _true_transform(template: Volume, rng):
    import SimpleITK as sitk

    t = sitk.Euler3DTransform()
    t.SetCenter(tuple(template.index_to_physical((np.asarray(template.shape[::-1]) - 1) / 2)))
    t.SetRotation(*np.deg2rad(rng.uniform(-15, 15, 3)))
    t.SetTranslation(tuple(rng.uniform(-10, 10, 3)))
    return t


def _moved(vol: Volume, t, label=False, default=0.0) -> Volume:
    """``vol`` seen through the rigid motion ``t`` (template -> scan points) on a larger, axis-aligned scan grid."""
    ext = np.asarray(vol.shape[::-1]) * np.asarray(vol.spacing) + np.array([20.0, 20.0, 24.0])
    size = np.ceil(ext / np.asarray(vol.spacing)).astype(int)
    centre = vol.index_to_physical((np.asarray(vol.shape[::-1]) - 1) / 2)
    origin = centre - vol.direction @ ((size - 1) / 2 * np.asarray(vol.spacing))
    grid = Volume(np.zeros(size[::-1], np.uint8), spacing=vol.spacing, origin=tuple(origin), direction=vol.direction)
    return resample_onto(vol, grid, t.GetInverse(), label=label, default=default)


def _euler(row):
    import SimpleITK as sitk

    t = sitk.Euler3DTransform()
    t.SetCenter(row["transform"]["centre_mm"])
    t.SetRotation(*np.deg2rad(row["transform"]["angles_deg"]))
    t.SetTranslation(row["transform"]["translation_mm"])
    return t


@pytest.mark.slow
def test_registration_recovers_known_rigid_motion_and_labels(template_and_labels, tmp_path):
    template, labels = template_and_labels
    truth = _true_transform(template, np.random.default_rng(19))
    lo = float(template.array.min())
    for sub in ("img", "lab"):
        (tmp_path / sub).mkdir()
    write_volume(_moved(template, truth, default=lo), tmp_path / "img" / "case.nrrd")
    write_volume(_moved(labels, truth, label=True), tmp_path / "lab" / "case.nrrd")
    write_volume(template, tmp_path / "template.nrrd")
    roi = [(PAD[2], template.shape[2] - PAD[2]), (PAD[1], template.shape[1] - PAD[1]), (PAD[0], template.shape[0] - PAD[0])]
    roi_text = ",".join(f"{a}:{b}" for a, b in roi)
    rc = main(["--quiet", "prepare", "cow", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
               "--template", str(tmp_path / "template.nrrd"), "--roi", roi_text, "--out", str(tmp_path / "out"), *FAST])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert doc["failed"] == [] and len(doc["cases"]) == 1
    row = doc["cases"][0]
    assert row["quality"] == "ok" and row["label_coverage"] > 0.95
    est = _euler(row)
    for cx in roi[0]:
        for cy in roi[1]:
            for cz in roi[2]:
                x = template.index_to_physical((cx, cy, cz))
                d = np.asarray(est.TransformPoint(tuple(x))) - np.asarray(truth.TransformPoint(tuple(x)))
                assert np.all(np.abs(template.direction.T @ d) / np.asarray(template.spacing) < 1.0)
    r_est, r_true = (np.asarray(t.GetMatrix()).reshape(3, 3) for t in (est, truth))
    angle = np.degrees(np.arccos(np.clip((np.trace(r_est.T @ r_true) - 1) / 2, -1, 1)))
    assert angle < 1.0
    sl = (slice(PAD[0], -PAD[0]), slice(PAD[1], -PAD[1]), slice(PAD[2], -PAD[2]))
    got = read_volume(tmp_path / "out" / row["label"], dtype=np.int16).array
    want = labels.array[sl]
    for k in np.unique(want[want > 0]):
        a, b = want == k, got == k
        if a.sum() > 200:   # the larger arteries one by one
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.9, k
    a, b = want > 0, got > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.95
    img = read_volume(tmp_path / "out" / row["image"]).array
    assert img.shape == want.shape and img.min() == 0.0 and img.max() == 1.0
    assert (tmp_path / "out" / "qc_mips.png").stat().st_size > 5_000
    assert not (tmp_path / "out.cache").exists()


def _half(vol: Volume, label: bool = False) -> Volume:
    """Half the resolution (cropped to even sizes first): small volumes for the slower tests."""
    even = tuple(slice(0, s - s % 2) for s in vol.shape)
    return downsample(vol.with_array(vol.array[even], spacing=vol.spacing), 2, label=label)


def _small_copies(template, n, seed, quarter=False, with_motions=False):
    small = _half(_half(template)) if quarter else _half(template)
    rng = np.random.default_rng(seed)
    lo = float(np.percentile(small.array, 1))
    motions = [_true_transform(small, rng) for _ in range(n)]
    copies = [_moved(small, t, default=lo) for t in motions]
    return (small, copies, motions) if with_motions else (small, copies)


@pytest.mark.slow
def test_several_random_motions_in_parallel_workers(template_and_labels, tmp_path):
    template, _ = template_and_labels
    small, copies, motions = _small_copies(template, 3, seed=1, with_motions=True)
    (tmp_path / "img").mkdir()
    for i, c in enumerate(copies):
        write_volume(c, tmp_path / "img" / f"c{i}.nrrd")
    write_volume(small, tmp_path / "t.nrrd")
    roi = ((2, 70), (2, 60), (2, 18))
    prepare_cow(tmp_path / "img", tmp_path / "out", template=tmp_path / "t.nrrd", roi=roi, workers=2,
                register_kw={"iterations": 20, "search_deg": 15.0})
    rows = json.loads((tmp_path / "out" / "manifest.json").read_text())["cases"]
    assert [r["case"] for r in rows] == ["c0", "c1", "c2"] and all(r["quality"] == "ok" for r in rows)
    for row, truth in zip(rows, motions):
        est = _euler(row)
        for corner in [(x, y, z) for x in roi[0] for y in roi[1] for z in roi[2]]:
            p = tuple(small.index_to_physical(corner))
            d = np.asarray(est.TransformPoint(p)) - np.asarray(truth.TransformPoint(p))
            assert np.all(np.abs(small.direction.T @ d) / np.asarray(small.spacing) < 1.0), row["case"]


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.slow
def test_build_template_converges_to_a_sharp_mean(template_and_labels):
    template, _ = template_and_labels
    small, copies = _small_copies(template, 6, seed=7, quarter=True)
    built = build_template(copies, 2, iterations=20, search_deg=15.0)
    naive = np.mean([c.array for c in copies], axis=0)
    # the built template is in the first copy's frame: it must look like that copy, far more than the plain mean does
    assert _ncc(built.array, copies[0].array) > 0.9
    assert _ncc(built.array, copies[0].array) > _ncc(naive, copies[0].array) + 0.1


@pytest.mark.slow
def test_resume_skips_done_cases(template_and_labels, tmp_path):
    template, _ = template_and_labels
    small, copies = _small_copies(template, 2, seed=3)
    (tmp_path / "img").mkdir()
    for i, c in enumerate(copies):
        write_volume(c, tmp_path / "img" / f"c{i}.nrrd")
    write_volume(small, tmp_path / "t.nrrd")
    token = CancelToken()
    kw = dict(template=tmp_path / "t.nrrd", roi=((2, 70), (2, 60), (2, 20)),
              register_kw={"iterations": 20, "search_deg": 0.0})

    def stop_after_first(event):
        if event.done >= 1:
            token.cancel()

    with pytest.raises(Cancelled):
        prepare_cow(tmp_path / "img", tmp_path / "out", progress=stop_after_first, cancel=token, **kw)
    assert not (tmp_path / "out").exists() and (tmp_path / "out.cache" / "rows" / "c0.json").exists()
    prepare_cow(tmp_path / "img", tmp_path / "out", **kw)
    rows = json.loads((tmp_path / "out" / "manifest.json").read_text())["cases"]
    assert [r["case"] for r in rows] == ["c0", "c1"]
    assert rows[0].get("resumed") is True and not rows[1].get("resumed")


def _one_line_error(argv, capsys):
    rc = main(["--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_give_one_line_and_write_nothing(template_and_labels, tmp_path, capsys):
    import SimpleITK as sitk

    template, labels = template_and_labels
    small = _half(template)
    small_lab = _half(labels, label=True)
    write_volume(small, tmp_path / "t.nrrd")
    for sub in ("img", "lab", "flat", "empty", "badlab", "grid"):
        (tmp_path / sub).mkdir()
    write_volume(small, tmp_path / "img" / "a.nrrd")
    write_volume(small_lab, tmp_path / "lab" / "a.nrrd")
    base = ["prepare", "cow", "--template", str(tmp_path / "t.nrrd"), "--roi", "0:10,0:10,0:10"]

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((60, 60), np.float32)), str(tmp_path / "flat" / "s.nrrd"))
    err = _one_line_error(base + ["--images", str(tmp_path / "flat"), "--out", str(tmp_path / "o1")], capsys)
    assert "s.nrrd" in err and "3-D" in err
    err = _one_line_error(base + ["--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o2")], capsys)
    assert "empty" in err and "no volumes" in err
    write_volume(small_lab.with_array(np.full(small.shape, 40, np.int16)), tmp_path / "badlab" / "a.nrrd")
    err = _one_line_error(base + ["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "badlab"),
                                  "--out", str(tmp_path / "o3")], capsys)
    assert "badlab/a.nrrd" in err and "unknown label id" in err and "40" in err
    write_volume(small_lab.with_array(small_lab.array, spacing=(1.0, 1.0, 1.0)), tmp_path / "grid" / "a.nrrd")
    err = _one_line_error(base + ["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "grid"),
                                  "--out", str(tmp_path / "o4")], capsys)
    assert "grid/a.nrrd" in err and "another grid" in err
    flipped = small.with_array(small.array, direction=small.direction @ np.diag([-1.0, 1.0, 1.0]))
    write_volume(flipped, tmp_path / "t_flipped.nrrd")
    err = _one_line_error(["prepare", "cow", "--template", str(tmp_path / "t_flipped.nrrd"), "--images",
                           str(tmp_path / "img"), "--roi", "0:10,0:10,0:10", "--out", str(tmp_path / "o5")], capsys)
    assert "t_flipped.nrrd" in err and "oriented" in err
    err = _one_line_error(base[:4] + ["--images", str(tmp_path / "img"), "--out", str(tmp_path / "o6")], capsys)
    assert "reaches beyond the template" in err      # the paper's box does not fit this small template
    err = _one_line_error(["prepare", "cow", "--build-template", "--images", str(tmp_path / "img"),
                           "--out", str(tmp_path / "o7")], capsys)
    assert "reaches beyond the template" in err and "a.nrrd" in err   # checked before a template is built
    for k in range(1, 8):
        assert not (tmp_path / f"o{k}").exists() and not (tmp_path / f"o{k}.cache").exists()


@pytest.mark.slow
def test_roi_around_labels_holds_every_label(template_and_labels, tmp_path):
    template, labels = template_and_labels
    small, small_lab = _half(template), _half(labels, label=True)
    rng = np.random.default_rng(5)
    lo = float(np.percentile(small.array, 1))
    for sub in ("img", "lab"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        t = _true_transform(small, rng)
        write_volume(_moved(small, t, default=lo), tmp_path / "img" / f"c{i}.nrrd")
        write_volume(_moved(small_lab, t, label=True), tmp_path / "lab" / f"c{i}.nrrd")
    write_volume(small, tmp_path / "t.nrrd")
    prepare_cow(tmp_path / "img", tmp_path / "out", labels=tmp_path / "lab", template=tmp_path / "t.nrrd",
                roi_around_labels_mm=1.0, register_kw={"iterations": 20, "search_deg": 15.0})
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (x0, x1), (y0, y1), (z0, z1) = doc["parameters"]["roi_xyz"]
    idx = np.argwhere(small_lab.array > 0)            # (z, y, x) of the template's own labels
    assert idx.size and x0 <= idx[:, 2].min() and idx[:, 2].max() < x1 and y0 <= idx[:, 1].min()
    assert idx[:, 1].max() < y1 and z0 <= idx[:, 0].min() and idx[:, 0].max() < z1
    assert all(r["label_coverage"] > 0.99 for r in doc["cases"])
    assert x1 - x0 < small.shape[2] and y1 - y0 < small.shape[1]     # a box around the labels, not the whole grid
    assert read_volume(tmp_path / "out" / doc["cases"][0]["image"]).shape == (z1 - z0, y1 - y0, x1 - x0)


def test_spacing_resamples_images_and_labels_onto_one_grid(template_and_labels, tmp_path):
    template, labels = template_and_labels
    small, small_lab = _half(template), _half(labels, label=True)
    for sub in ("img", "lab"):
        (tmp_path / sub).mkdir()
    write_volume(small, tmp_path / "img" / "a.nrrd")
    write_volume(small_lab, tmp_path / "lab" / "a.nrrd")
    write_volume(small, tmp_path / "t.nrrd")
    rc = main(["--quiet", "prepare", "cow", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
               "--template", str(tmp_path / "t.nrrd"), "--roi", "4:68,4:60,2:18", "--spacing", "0.8",
               "--out", str(tmp_path / "out"), "--iterations", "10", "--search-deg", "0"])
    assert rc == 0
    row = json.loads((tmp_path / "out" / "manifest.json").read_text())["cases"][0]
    img, lab = read_volume(tmp_path / "out" / row["image"]), read_volume(tmp_path / "out" / row["label"], dtype=np.int16)
    assert np.allclose(img.spacing, 0.8) and img.same_geometry(lab)
    # the same physical box: 64 × 0.59375 mm in x at 0.8 mm -> 48 voxels; 16 × 1.2 mm in z -> 24
    assert img.shape == (24, 42, 48) and img.array.min() == 0.0 and img.array.max() == 1.0
    sl = (slice(2, 18), slice(4, 60), slice(4, 68))
    assert abs((lab.array > 0).mean() - (small_lab.array[sl] > 0).mean()) < 0.02   # label volume kept


def test_an_unrelated_scan_is_never_accepted_as_ok(template_and_labels, tmp_path):
    """Noise has nothing to register to: where ITK's multi-threaded optimiser leaves it decides whether it is kept and
    flagged suspect or listed as failed (its ROI outside the scan); it is never an ok case."""
    template, _ = template_and_labels
    small = _half(template)
    (tmp_path / "img").mkdir()
    write_volume(small, tmp_path / "img" / "good.nrrd")
    noise = np.random.default_rng(0).gamma(2.0, 50.0, small.shape).astype(np.float32)   # no anatomy at all
    write_volume(small.with_array(noise), tmp_path / "img" / "noise.nrrd")
    write_volume(small, tmp_path / "t.nrrd")
    prepare_cow(tmp_path / "img", tmp_path / "out", template=tmp_path / "t.nrrd", roi=((4, 68), (4, 60), (2, 18)),
                register_kw={"iterations": 10, "search_deg": 0.0})
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    rows = {r["case"]: r for r in manifest["cases"]}
    failed = {r["case"]: r for r in manifest.get("failed", [])}
    assert rows["good"]["quality"] == "ok"
    noise = rows.get("noise") or failed["noise"]
    assert noise.get("quality", "suspect") == "suspect" and ("noise" in rows) != ("noise" in failed)
    assert noise["metric"] > rows["good"]["metric"]                      # Mattes MI: lower is better


def test_failed_cases_are_listed_and_left_out(template_and_labels, tmp_path, capsys):
    template, _ = template_and_labels
    small = _half(template)
    (tmp_path / "img").mkdir()
    write_volume(small, tmp_path / "img" / "good.nrrd")
    piece = small.array[8:14, 20:36, 20:36]          # a scan covering a small part of the ROI only
    write_volume(small.with_array(piece, spacing=small.spacing,
                                  origin=tuple(small.index_to_physical((20, 20, 8)))), tmp_path / "img" / "piece.nrrd")
    write_volume(small, tmp_path / "t.nrrd")
    rc = main(["prepare", "cow", "--images", str(tmp_path / "img"), "--template", str(tmp_path / "t.nrrd"),
               "--roi", "4:68,4:60,2:18", "--out", str(tmp_path / "out"), "--iterations", "10", "--search-deg", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "piece.nrrd excluded" in out
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [r["case"] for r in doc["cases"]] == ["good"] and [f["case"] for f in doc["failed"]] == ["piece"]
    assert doc["failed"][0]["reason"] and sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["good.nii.gz"]


def test_rerun_into_the_finished_folder_only_does_new_scans(template_and_labels, tmp_path, monkeypatch, capsys):
    import GANTrainerLib.prepare.cow as cow

    template, _ = template_and_labels
    small, copies = _small_copies(template, 3, seed=11, quarter=True)
    (tmp_path / "img").mkdir()
    for i, c in enumerate(copies[:2]):
        write_volume(c, tmp_path / "img" / f"c{i}.nrrd")
    write_volume(small, tmp_path / "t.nrrd")
    argv = ["--quiet", "prepare", "cow", "--images", str(tmp_path / "img"), "--template", str(tmp_path / "t.nrrd"),
            "--roi", "2:38,2:33,2:8", "--out", str(tmp_path / "out"), "--iterations", "10", "--search-deg", "0"]
    assert main(argv) == 0
    first = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [r["case"] for r in first["cases"]] == ["c0", "c1"] and first["parameters"]["recipe"]
    original, done = cow._prepare_case, []

    def no_work(args):
        raise AssertionError(f"{args[0].name} registered again")

    monkeypatch.setattr(cow, "_prepare_case", no_work)          # the same inputs and recipe: no registration at all
    assert main(argv) == 0
    again = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [r["transform"] for r in again["cases"]] == [r["transform"] for r in first["cases"]]
    assert all(r["resumed"] for r in again["cases"]) and not (tmp_path / "out.cache").exists()

    def count(args):
        done.append(args[0].name)
        return original(args)

    monkeypatch.setattr(cow, "_prepare_case", count)
    write_volume(copies[2], tmp_path / "img" / "c2.nrrd")      # one new scan: only it is registered
    assert main(argv) == 0
    third = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert done == ["c2.nrrd"] and [r["case"] for r in third["cases"]] == ["c0", "c1", "c2"]
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]
    assert third["cases"][0]["transform"] == first["cases"][0]["transform"] and not third["cases"][2].get("resumed")
    assert not list(tmp_path.glob(".out*")) and not (tmp_path / "out.cache").exists()

    capsys.readouterr()        # another recipe into the finished folder: one line, exit 2, the folder untouched
    rc = main([a if a != "10" else "12" for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "another recipe" in err and "--overwrite" in err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == third and done == ["c2.nrrd"]


def _c0_or_hang(args):
    """A per-case function for the cancel test: c0 is registered, any other case records its pid and hangs."""
    import os
    import time

    import GANTrainerLib.prepare.cow as cow

    src, cache = args[0], args[4]
    if src.name == "c0.nrrd":
        return cow._REAL_CASE(args)
    (cache.parent / f"pid-{src.name}").write_text(str(os.getpid()))
    time.sleep(300)
    raise AssertionError("a hanging worker was not terminated")


def _gone(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_cancel_with_workers_terminates_the_running_ones(template_and_labels, tmp_path, monkeypatch):
    import _thread
    import signal
    import threading
    import time

    import GANTrainerLib.prepare.cow as cow

    template, _ = template_and_labels
    small, copies = _small_copies(template, 3, seed=13, quarter=True)
    (tmp_path / "img").mkdir()
    for i, c in enumerate(copies):
        write_volume(c, tmp_path / "img" / f"c{i}.nrrd")
    write_volume(small, tmp_path / "t.nrrd")
    kw = dict(template=tmp_path / "t.nrrd", roi=((2, 38), (2, 33), (2, 8)), workers=3,
              register_kw={"iterations": 10, "search_deg": 0.0})
    monkeypatch.setattr(cow, "_REAL_CASE", cow._prepare_case, raising=False)
    monkeypatch.setattr(cow, "_prepare_case", _c0_or_hang)
    token = CancelToken()

    def stop_after_first(event):
        if event.done >= 1:
            token.cancel()

    t0 = time.monotonic()
    with pytest.raises(Cancelled):          # the token (the Python API, a Slicer console call)
        prepare_cow(tmp_path / "img", tmp_path / "out", progress=stop_after_first, cancel=token, **kw)
    assert time.monotonic() - t0 < 60       # not the 300 s the hanging workers would take
    pids = [int((tmp_path / f"pid-c{i}.nrrd").read_text()) for i in (1, 2)]
    assert all(_gone(p) for p in pids)
    assert not (tmp_path / "out").exists() and [p.name for p in (tmp_path / "out.cache" / "rows").iterdir()] == ["c0.json"]

    for i in (1, 2):                        # KeyboardInterrupt (Ctrl-C; a panel job's Cancel arrives as one)
        (tmp_path / f"pid-c{i}.nrrd").unlink()

    def interrupt_when_hanging():
        while not all((tmp_path / f"pid-c{i}.nrrd").exists() for i in (1, 2)):
            time.sleep(0.05)
        _thread.interrupt_main()

    # Python's own SIGINT handler, whatever an earlier test in this worker may have left: interrupt_main does
    # nothing under SIG_IGN or SIG_DFL (a full `make test` under heavy load once waited out the 300 s here)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_when_hanging, daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            prepare_cow(tmp_path / "img", tmp_path / "out", **kw)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - t0 < 60
    assert all(_gone(int((tmp_path / f"pid-c{i}.nrrd").read_text())) for i in (1, 2))

    monkeypatch.setattr(cow, "_prepare_case", cow._REAL_CASE)     # the rerun resumes c0 and does the others
    prepare_cow(tmp_path / "img", tmp_path / "out", **kw)
    rows = json.loads((tmp_path / "out" / "manifest.json").read_text())["cases"]
    assert [r["case"] for r in rows] == ["c0", "c1", "c2"] and rows[0]["resumed"] and not rows[1].get("resumed")


@pytest.mark.slow
def test_quality_flag_passes_good_registrations_and_flags_failed_ones(template_and_labels, tmp_path):
    """The measured criterion (benchmarks/prepare_quality_flag.py, docs/preparation.md) on a few of its cases: the
    real MRA moved (also deformed by 2 mm with bias, blur and noise) is ok; a 180° or 90° start without the search,
    and an unrelated scan (the real trabecular bone ROI), are suspect (or failed)."""
    from bench_scripts import load_benchmark

    bench = load_benchmark("prepare_quality_flag")
    small = _half(template_and_labels[0])
    cases = bench.registration_cases(small, np.random.default_rng(4), n_good=1, degraded=[(2.0, 0.3, 0.05, 0.8)],
                                     far_off=[((0, 0, 180), "180 z"), ((0, 90, 0), "90 y")], unrelated=("bone",))
    (tmp_path / "img").mkdir()
    names = []
    for k, (group, _, scan, _, _) in enumerate(cases):
        names.append(f"{k}_{group}")
        write_volume(scan, tmp_path / "img" / f"{names[-1]}.nrrd")
    write_volume(small, tmp_path / "t.nrrd")
    prepare_cow(tmp_path / "img", tmp_path / "out", template=tmp_path / "t.nrrd", roi=((4, 76), (4, 67), (2, 19)),
                register_kw={"iterations": 20, "search_deg": 0.0})
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    rows = {r["case"]: r for r in doc["cases"]}
    failed = {r["case"] for r in doc["failed"]}
    assert [n for n in names if n.endswith("good")] == ["0_good", "1_good"]
    for name in names:
        if name.endswith("good"):
            assert rows[name]["quality"] == "ok" and rows[name]["metric_ratio"] > 0.375, rows[name]
        else:
            assert name in failed or rows[name]["quality"] == "suspect", rows[name]
    assert sum(n in rows for n in names if n.endswith("failed")) >= 2      # most failures are kept, and flagged
