"""Morphometric fidelity of Circle-of-Willis label maps: a set against itself, a class removed, bad label ids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from GANTrainerLib.evaluation.fidelity import cow_fidelity, detect_fidelity_kind, write_fidelity_report
from VolGANCore import VolGANError, list_volumes, read_label_volume, write_volume

pytestmark = pytest.mark.slow  # every test here shares a module fixture that takes tens of seconds


@pytest.fixture(scope="module")
def cow(tmp_path_factory):
    """Five small TopCoW phantoms (16×64×64 at 1 mm: ~2 s), and a copy of their labels without L-MCA and Acom."""
    from VolumetricGANLib.phantoms import write_cow_dataset

    root = tmp_path_factory.mktemp("cowfid")
    real = write_cow_dataset(root / "set", n=5, seed=3, shape=(16, 64, 64), spacing_mm=1.0) / "labels"
    for path in list_volumes(real):
        lab = read_label_volume(path, scheme="topcow13")
        lab.array = np.where(np.isin(lab.array, [7, 10]), 0, lab.array).astype(np.int16)  # 7 L-MCA, 10 Acom
        write_volume(lab, root / "removed" / path.name)
    return real, root / "removed"


def test_set_against_itself_is_identical(cow):
    real, _ = cow
    assert detect_fidelity_kind(real) == "cow"
    res = cow_fidelity(real, real)
    assert res["kind"] == "cow" and res["n_real"] == res["n_generated"] == 5
    measured = [r for r in res["parameters"] if r["wasserstein"] is not None]
    assert len(measured) >= 20  # most arteries in most subjects: the zeros below are not vacuous
    for r in measured:
        assert r["wasserstein"] == 0.0 and r["ks"] == 0.0, r["parameter"]
    assert any((r["wasserstein_real_vs_real"] or 0) > 0 for r in measured)  # two real halves do differ
    for side in ("anterior", "posterior"):
        assert res["variants"][side]["tv_distance"] == 0.0
    assert all(p["difference"] == 0 and p["fisher_p"] == 1.0 and not p["flagged"] for p in res["presence"])
    assert res["flags"] == []


def test_removed_artery_is_flagged(cow, tmp_path):
    real, removed = cow
    res = cow_fidelity(real, removed)
    pres = {p["artery"]: p for p in res["presence"]}
    assert pres["L-MCA"]["real_frequency"] == 1.0 and pres["L-MCA"]["generated_frequency"] == 0.0
    assert pres["L-MCA"]["flagged"] and pres["L-MCA"]["flag"] == "never generated"
    assert pres["L-MCA"]["fisher_p"] < 0.01 and pres["L-MCA"]["difference"] == -1.0
    assert not pres["R-MCA"]["flagged"] and pres["R-MCA"]["generated_frequency"] == 1.0
    # the anterior vector [L-A1, Acom, 3rd-A2, R-A1] loses Acom: TV = the real frequency of an Acom
    assert res["variants"]["anterior"]["tv_distance"] == pytest.approx(pres["Acom"]["real_frequency"])
    assert pres["Acom"]["real_frequency"] > 0.3
    assert res["variants"]["posterior"]["tv_distance"] == 0.0  # MCA and Acom are not in the posterior vector
    # the joint 8-bit vector loses the same Acom; its interval holds the estimate; the Acom segment's rate drops
    joint = res["variants"]["joint"]
    assert joint["tv_distance"] == pytest.approx(pres["Acom"]["real_frequency"]) and len(joint["names"]) == 8
    assert joint["tv_distance_ci"]["low"] <= joint["tv_distance"] <= joint["tv_distance_ci"]["high"]
    seg = res["variant_segments"]
    assert seg["Acom"]["real"] == pres["Acom"]["real_frequency"] and seg["Acom"]["generated"] == 0.0
    assert seg["L-P1"]["difference"] == 0.0
    rows = {r["parameter"]: r for r in res["parameters"]}
    assert rows["L-MCA length [mm]"]["n_generated"] == 0 and rows["L-MCA length [mm]"]["wasserstein"] is None
    assert rows["R-MCA length [mm]"]["wasserstein"] == 0.0
    write_fidelity_report(res, tmp_path / "rep")
    md = (tmp_path / "rep" / "fidelity.md").read_text()
    assert "| L-MCA | 1.00 (5/5) | 0.00 (0/5) |" in md and "**never generated**" in md
    assert json.loads((tmp_path / "rep" / "fidelity.json").read_text())["flags"][0].startswith("L-MCA: never generated")
    for png in ("violins.png", "presence.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:4] == b"\x89PNG"


def test_cli_auto_detects_cow_and_reports(cow, tmp_path, capsys):
    from VolGANCore.cli import main

    real, removed = cow
    assert main(["--quiet", "evaluate-morphometry", "--real", str(real), "--fake", str(removed),
                 "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "CoW morphometric fidelity of 5 generated vs 5 real" in out and "L-MCA: never generated" in out
    assert json.loads((tmp_path / "rep" / "fidelity.json").read_text())["kind"] == "cow"
    # --threshold is a bone option: refused with the fix
    assert main(["--quiet", "evaluate-morphometry", "--real", str(real), "--fake", str(removed), "--threshold", "200",
                 "--out", str(tmp_path / "rep2")]) == 2
    err = capsys.readouterr().err
    assert "applies to bone patches only" in err and err.strip().count("\n") == 0


def test_unknown_label_ids_are_a_clear_error(cow, tmp_path, capsys):
    from VolGANCore.cli import main

    real, _ = cow
    bad = tmp_path / "bad"
    for k, path in enumerate(list_volumes(real)[:3]):
        lab = read_label_volume(path)
        if k == 1:
            lab.array[lab.array == 5] = 13  # 13 is unused in TopCoW 2023
        write_volume(lab, bad / path.name)
    with pytest.raises(VolGANError, match=r"cow_0001\.nii\.gz: label id\(s\) \[13\] are not TopCoW 2023 artery ids"):
        cow_fidelity(real, bad)
    assert main(["--quiet", "evaluate-morphometry", "--real", str(real), "--fake", str(bad), "--kind", "cow",
                 "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "cow_0001.nii.gz" in err and "allowed: 0 background" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "rep").exists()
