"""Folder datasets, atomic outputs, progress/cancellation, label schemes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from VolGANCore import (
    AYDIN7,
    TOPCOW13,
    CancelToken,
    Cancelled,
    InputFileError,
    Progress,
    RecordingProgress,
    Volume,
    VolGANError,
    atomic_directory,
    atomic_write_json,
    convert_labels,
    list_volumes,
    read_manifest,
    validate_dataset,
    write_manifest,
    write_volume,
)


def write_case(folder, name, shape=(4, 5, 6), spacing=(0.3, 0.3, 0.6), value=1.0, labels=None):
    write_volume(Volume(np.full(shape, value, np.float32), spacing=spacing), folder / name)
    if labels is not None:
        write_volume(Volume(labels.astype(np.int16), spacing=spacing), folder.parent / "labels" / name)


def test_list_volumes_sorted_and_errors(tmp_path):
    with pytest.raises(InputFileError, match="folder not found"):
        list_volumes(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputFileError, match=r"no volumes found.*\*\.nii\.gz"):
        list_volumes(tmp_path)
    write_case(tmp_path, "b.nii.gz")
    write_case(tmp_path, "a.nrrd")
    assert [p.name for p in list_volumes(tmp_path)] == ["a.nrrd", "b.nii.gz"]
    write_case(tmp_path, "a.mha")
    with pytest.raises(InputFileError, match=r"share the case id\(s\) \['a'\]"):
        list_volumes(tmp_path)


def test_validate_reports_every_problem_at_once(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    (tmp_path / "labels").mkdir()
    lab = np.zeros((4, 5, 6))
    lab[1, 1, 1] = 4
    write_case(img, "c0.nii.gz", labels=lab)
    write_case(img, "c1.nii.gz", shape=(4, 5, 7), labels=np.zeros((4, 5, 7)))          # other shape
    write_case(img, "c2.nii.gz", spacing=(0.5, 0.5, 0.6), labels=lab)                   # other spacing
    bad = lab.copy()
    bad[0, 0, 0] = 13
    write_case(img, "c3.nii.gz", labels=bad)                                           # unknown label id
    write_case(img, "c4.nii.gz")                                                       # no labels
    (img / "c5.nii.gz").write_bytes(b"\x1f\x8b garbage")                              # corrupt
    events = RecordingProgress()
    report = validate_dataset(img, labels_folder=tmp_path / "labels", label_scheme="topcow13", progress=events)
    text = "\n".join(report.problems)
    assert not report.ok
    assert "c1.nii.gz: shape (D,H,W) (4, 5, 7) differs from (4, 5, 6)" in text
    assert "c2.nii.gz: spacing" in text
    assert "c3.nii.gz: unknown label id(s) [13]" in text
    assert "c4.nii.gz: no label map named c4.*" in text
    assert "c5.nii.gz" in text
    assert len(report.problems) == 5
    assert report.entries[0]["label_ids"] == [4]
    assert events.events[-1].finished and events.events[-1].done == 6
    with pytest.raises(VolGANError, match=r"is not valid: .*\(\+4 more\)"):
        report.raise_if_invalid()


def test_label_geometry_mismatch_is_reported(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    (tmp_path / "labels").mkdir()
    write_case(img, "c0.nrrd")
    write_volume(Volume(np.zeros((4, 5, 6), np.int16), spacing=(0.3, 0.3, 0.6), origin=(5, 0, 0)),
                 tmp_path / "labels" / "c0.nrrd")
    report = validate_dataset(img, labels_folder=tmp_path / "labels")
    assert any("geometry differs from its image" in p for p in report.problems)


def test_manifest_round_trip_and_errors(tmp_path):
    write_manifest(tmp_path, [{"case": "c0", "bvtv": np.float32(0.25)}], kind="bone-phantom",
                   parameters={"seed": 3})
    doc = read_manifest(tmp_path)
    assert doc["kind"] == "bone-phantom" and doc["cases"][0]["bvtv"] == pytest.approx(0.25)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputFileError, match="manifest.json: is not valid JSON"):
        read_manifest(tmp_path)


def test_atomic_directory_publishes_only_on_success(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("killed")
    assert not out.exists() and os.listdir(tmp_path) == []
    with atomic_directory(out) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (out / "done.txt").read_text() == "ok"
    with pytest.raises(VolGANError, match="output folder is not empty"):
        with atomic_directory(out):
            pass
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("v2")
    assert sorted(os.listdir(out)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_atomic_json_keeps_old_file_when_serialisation_fails(tmp_path):
    target = tmp_path / "run.json"
    atomic_write_json(target, {"step": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"step": object()})
    assert json.loads(target.read_text()) == {"step": 1}
    assert os.listdir(tmp_path) == ["run.json"]


def test_progress_reports_fraction_eta_and_cancels():
    events = RecordingProgress()
    token = CancelToken()
    with pytest.raises(Cancelled):
        with Progress(10, "work", events, token) as p:
            for i in range(10):
                if i == 4:
                    token.cancel()
                p.advance(message=f"item {i}")
    assert [e.done for e in events.events] == [0, 1, 2, 3, 4]  # the 5th advance raised before reporting
    assert events.events[2].fraction == pytest.approx(0.2)
    assert events.events[2].message == "item 1"
    assert not any(e.finished for e in events.events)


def test_label_scheme_conversion_is_a_lookup_that_keeps_3rd_a2():
    topcow = np.array(list(TOPCOW13.ids) + [0], dtype=np.int16)
    merged = convert_labels(topcow, "topcow13", "aydin7")
    names = [AYDIN7.name_of(int(v)) if v else "bg" for v in merged]
    assert names == ["BA", "PCA", "PCA", "ICA", "MCA", "ICA", "MCA", "Pcom", "Pcom", "Acom", "ACA", "ACA", "ACA", "bg"]
    assert TOPCOW13.name_of(15) == "3rd-A2"
    with pytest.raises(VolGANError, match=r"unknown label id\(s\) \[13\]"):
        convert_labels(np.array([13]), "topcow13", "aydin7")
    with pytest.raises(VolGANError, match="no conversion"):
        convert_labels(np.array([1]), "aydin7", "topcow13")
