"""Vessel morphometry and CoW variants (MorphometryLib.vessels) on tube phantoms and a real TopCoW crop."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MorphometryLogic"))

from VolGANCore import Volume  # noqa: E402
from VolGANCore.errors import VolGANError  # noqa: E402
from MorphometryLib.vessels import (  # noqa: E402
    binary_vessel_morphometry, centreline_analysis, cow_variants, vessel_morphometry)

SHARED = REPO.parent / "shared"


def capsule(shape, p0, p1, radius, spacing) -> np.ndarray:
    """Voxels within ``radius`` mm of the segment p0–p1 (mm, array-axis order): a tube with round ends."""
    sp = np.asarray(spacing, float)
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) * sp
    d = p1 - p0
    t = np.clip((g - p0) @ d / (d @ d), 0, 1)
    return np.linalg.norm(g - (p0 + t[..., None] * d), axis=-1) <= radius


@pytest.mark.parametrize("spacing,radius_vox", [((1.0, 1.0, 1.0), 2), ((1.0, 1.0, 1.0), 4), ((0.6, 0.3, 0.3), 2)])
def test_tube_radius_and_length(spacing, radius_vox):
    rng = np.random.default_rng(7)
    shape = (48, 48, 48) if spacing[0] == 1.0 else (26, 52, 52)
    sp = np.asarray(spacing)
    ext = (np.asarray(shape) - 1) * sp
    r = radius_vox * sp.max()  # in voxels of the coarsest axis
    radii = []
    for _ in range(4):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        half = (ext.min() - 2 * r - 2 * sp.max()) / 2
        m = capsule(shape, ext / 2 - u * half, ext / 2 + u * half, r, sp)
        res = centreline_analysis(m, sp)
        radii.append(res["radii_mm"].mean())
        assert radii[-1] == pytest.approx(r, rel=0.10)
        assert res["length_mm"] == pytest.approx(2 * half + 2 * r, rel=0.05)  # tip to tip
        assert res["n_branch_points"] == 0 and res["n_end_points"] == 2
    assert np.mean(radii) == pytest.approx(r, rel=0.10)


def test_bifurcation_has_one_branch_point_and_binary_mode():
    sp = (0.5, 0.5, 0.5)
    shape = (50, 50, 30)
    m = (capsule(shape, (2.5, 12.5, 7.5), (12.5, 12.5, 7.5), 1.5, sp)
         | capsule(shape, (12.5, 12.5, 7.5), (22.5, 5.0, 7.5), 1.5, sp)
         | capsule(shape, (12.5, 12.5, 7.5), (22.5, 20.0, 7.5), 1.5, sp))
    res = binary_vessel_morphometry(Volume(m.astype(np.uint8), spacing=sp[::-1]))
    expected = 10 + 2 * np.hypot(10, 7.5) + 3 * 1.5  # three segments + three round tips
    assert res["branch points"] == 1 and res["end points"] == 3
    assert res["length [mm]"] == pytest.approx(expected, rel=0.05)
    assert res["radius mean [mm]"] == pytest.approx(1.5, rel=0.15)
    assert sum(res["radius histogram"]["length_mm"]) == pytest.approx(res["length [mm]"], rel=1e-6)
    with pytest.raises(VolGANError, match="not binary"):
        binary_vessel_morphometry(Volume(np.arange(27).reshape(3, 3, 3), spacing=(1, 1, 1)))
    with pytest.raises(VolGANError, match="empty"):
        binary_vessel_morphometry(Volume(np.zeros((3, 3, 3)), spacing=(1, 1, 1)))


def _synthetic_cow(with_left_a1: bool, with_acom: bool) -> Volume:
    """A toy label map: ICAs with ACAs on top, BA with PCAs, one Pcom; A1 = ACA touching the ICA."""
    lab = np.zeros((10, 40, 40), np.int16)
    lab[2:8, 30:36, 5:9] = 4     # R-ICA
    lab[2:8, 30:36, 31:35] = 6   # L-ICA
    lab[2:8, 20:30, 5:9] = 11    # R-ACA, touching R-ICA
    lab[2:8, 18:28, 31:35] = 12  # L-ACA: touches L-ICA only if extended to row 29
    if with_left_a1:
        lab[2:8, 28:30, 31:35] = 12
    if with_acom:
        lab[4:6, 22:24, 9:31] = 10
    lab[2:8, 2:8, 18:22] = 1      # BA
    lab[2:8, 8:12, 10:18] = 2     # R-PCA touching BA
    lab[2:8, 8:12, 24:30] = 3     # L-PCA not touching BA (gap at columns 22, 23)
    lab[4:6, 12:30, 12:14] = 8    # R-Pcom
    return Volume(lab, spacing=(0.3, 0.3, 0.6), label_scheme="topcow13")


def test_cow_variant_vectors_follow_the_topcow_rules():
    v = _synthetic_cow(with_left_a1=True, with_acom=True)
    cv = cow_variants(v)
    assert cv["anterior_names"] == ["L-A1", "Acom", "3rd-A2", "R-A1"]
    assert cv["anterior"] == [1, 1, 0, 1]
    assert cv["posterior"] == [0, 0, 1, 1]  # no L-Pcom; L-PCA does not touch BA; R-P1; R-Pcom
    cv2 = cow_variants(_synthetic_cow(with_left_a1=False, with_acom=False))
    assert cv2["anterior"] == [0, 0, 0, 1]
    rows = {r["artery"]: r for r in vessel_morphometry(v)}
    assert rows["3rd-A2"]["present"] == 0 and np.isnan(rows["3rd-A2"]["radius mean [mm]"])
    assert rows["R-ICA"]["volume [mm^3]"] == pytest.approx(6 * 6 * 4 * 0.3 * 0.3 * 0.6)
    with pytest.raises(VolGANError, match="not in the TopCoW scheme"):
        vessel_morphometry(v.with_array(np.full(v.shape, 13, np.int16)))


def test_real_topcow_label_crop():
    path = SHARED / "data" / "topcow" / "topcow_mr_roi_003_labels.nii.gz"
    if not path.exists():
        pytest.skip(f"shared test data absent: {path}")
    from VolGANCore import read_label_volume

    labels = read_label_volume(path, scheme="topcow13")
    rows = {r["artery"]: r for r in vessel_morphometry(labels)}
    present = {a for a, r in rows.items() if r["present"]}
    ids = set(np.unique(labels.array).tolist()) - {0}
    assert len(present) == len(ids)
    for a in present:
        r = rows[a]
        assert r["length [mm]"] > 1.0 and 0.2 < r["radius mean [mm]"] < 4.0, a
        assert r["radius min [mm]"] <= r["radius mean [mm]"] <= r["radius max [mm]"]
    # anatomy: internal carotids are the widest, communicating arteries narrower
    assert rows["R-ICA"]["radius mean [mm]"] > rows["R-Pcom"]["radius mean [mm]"]
    assert rows["L-ICA"]["radius mean [mm]"] > rows["L-Pcom"]["radius mean [mm]"]
    assert 0.8 < rows["BA"]["radius mean [mm]"] < 2.0
    cv = cow_variants(labels)
    assert cv["anterior"][1] == int(10 in ids) and cv["anterior"][2] == int(15 in ids)
    assert cv["posterior"][0] == int(9 in ids) and cv["posterior"][3] == int(8 in ids)
    assert all(v in (0, 1) for v in cv["anterior"] + cv["posterior"])


@pytest.mark.parametrize("seed", [1, 3, 4])  # no Acom; R-P1 aplastic (fetal PCA); L-Pcom absent
def test_cow_phantom_variants_and_presence_match_its_parameters(seed):
    from VolumetricGANLib.phantoms import make_cow_phantom

    _img, labels, params = make_cow_phantom(seed, shape=(32, 128, 128), spacing_mm=0.6)
    v = params["variant"]
    expected_anterior = [int(v["a1"]["L"] != "aplastic"), int(v["acom"] == "present"), int(bool(v["third_a2"])),
                         int(v["a1"]["R"] != "aplastic")]
    expected_posterior = [int(v["pcom"]["L"] != "absent"), int(v["p1"]["L"] != "aplastic"),
                          int(v["p1"]["R"] != "aplastic"), int(v["pcom"]["R"] != "absent")]
    cv = cow_variants(labels)
    assert cv["anterior"] == expected_anterior
    assert cv["posterior"] == expected_posterior
    rows = vessel_morphometry(labels)
    assert [r["label"] for r in rows if r["present"]] == v["classes_present"]
    ica = [r for r in rows if r["artery"] in ("R-ICA", "L-ICA")]
    assert all(r["length [mm]"] > 3 and 0.6 < r["radius mean [mm]"] < 3.5 for r in ica)
