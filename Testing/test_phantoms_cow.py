"""Circle-of-Willis phantom: variant frequencies (binomial tests), label ids, per-class components of
plausible radius, TOF-like intensities, determinism, CLI and bad input."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.stats import binomtest

from VolGANCore import TOPCOW13, read_label_volume, read_manifest, read_volume
from VolGANCore.cli import main as volgan_main
from VolumetricGANLib.phantoms import CowVariantConfig, make_cow_phantom, sample_cow_variants, write_cow_dataset

N_VARIANTS = 3000
ALPHA = 1e-3


@pytest.fixture(scope="module")
def variants():
    return sample_cow_variants(seed=2024, n=N_VARIANTS)


def _check(k, n, p):
    res = binomtest(int(k), int(n), p)
    assert res.pvalue > ALPHA, f"{k}/{n} = {k / n:.4f} vs configured {p:.4f} (p = {res.pvalue:.2e})"


def test_variant_frequencies_match_configuration(variants):
    c = CowVariantConfig()
    n = len(variants)
    fetal_any = [any(v["fetal_pca"].values()) for v in variants]
    _check(sum(fetal_any), n, c.fetal_pca)
    _check(sum(all(v["fetal_pca"].values()) for v in variants), n, c.fetal_pca_bilateral)
    no_fetal = [v for v, f in zip(variants, fetal_any) if not f]
    _check(sum(all(v["pcom_missing"].values()) for v in no_fetal), len(no_fetal), c.pcom_missing_both)
    _check(sum(sum(v["pcom_missing"].values()) == 1 for v in no_fetal), len(no_fetal), c.pcom_missing_one)
    uni = [v for v in variants if sum(v["fetal_pca"].values()) == 1]
    other = [v["pcom_missing"]["L" if v["fetal_pca"]["R"] else "R"] for v in uni]
    _check(sum(other), len(other), c.pcom_missing_other_given_fetal)
    _check(sum(v["a1"]["R"] != "normal" or v["a1"]["L"] != "normal" for v in variants), n, c.a1_variant)
    free = [v for v in variants if "aplastic" not in v["a1"].values()]
    _check(sum(v["acom"] == "absent" for v in free), len(free), c.acom_absent)
    _check(sum(v["third_a2"] for v in variants), n, c.third_a2)
    # complete circle, computed here from the configuration (Hindenes 2020: 11.9 %)
    p_complete = (1 - c.fetal_pca) * (1 - c.pcom_missing_both - c.pcom_missing_one) * (1 - c.a1_variant) * (1 - c.acom_absent)
    assert abs(p_complete - 0.119) < 0.01
    _check(sum(v["complete_circle"] for v in variants), n, p_complete)
    # commonest Tromsø variant: both Pcom missing, everything else complete (27.8 %)
    only_pcoms = [all(v["pcom_missing"].values()) and not any(v["fetal_pca"].values())
                  and set(v["a1"].values()) == {"normal"} and v["acom"] == "present" for v in variants]
    assert abs(np.mean(only_pcoms) - 0.278) < 0.03


def test_missing_segments_are_dependent(variants):
    """Conditional structure: a fetal side keeps (a large) Pcom, so Pcom absence depends on the fetal state;
    A1 aplasia forces an Acom; the other Pcom of a unilateral fetal PCA follows its own frequency."""
    fetal_sides = [v["pcom_missing"][s] for v in variants for s in "RL" if v["fetal_pca"][s]]
    plain_sides = [v["pcom_missing"][s] for v in variants for s in "RL" if not any(v["fetal_pca"].values())]
    assert len(fetal_sides) > 100 and not any(fetal_sides) and np.mean(plain_sides) > 0.5
    for v in variants:
        for s in "RL":
            if v["fetal_pca"][s]:
                assert v["pcom"][s] == "fetal" and v["p1"][s] in ("hypoplastic", "aplastic")
        if "aplastic" in v["a1"].values():
            assert v["acom"] == "present"


def test_custom_frequencies_are_used():
    cfg = dataclasses.replace(CowVariantConfig(), third_a2=0.5, acom_absent=0.0)
    v = sample_cow_variants(seed=1, n=600, config=cfg)
    _check(sum(x["third_a2"] for x in v), 600, 0.5)
    assert all(x["acom"] == "present" for x in v)
    with pytest.raises(ValueError, match="third_a2"):
        sample_cow_variants(seed=1, n=5, config=dataclasses.replace(cfg, third_a2=1.5))


# plausible lumen radius (mm) ranges per class, from literature diameters (ICA ≈ 4, BA ≈ 3, M1 ≈ 2.8,
# A1/P1 ≈ 2, Pcom/Acom ≈ 1–1.5 mm) with room for hypoplasia, asymmetry and 0.6-mm voxels
RADIUS_RANGE = {1: (1.0, 2.3), 2: (0.6, 1.7), 3: (0.6, 1.7), 4: (1.2, 2.7), 6: (1.2, 2.7), 5: (0.8, 2.1),
                7: (0.8, 2.1), 8: (0.3, 1.7), 9: (0.3, 1.7), 10: (0.3, 1.4), 11: (0.6, 1.7), 12: (0.6, 1.7),
                15: (0.3, 1.4)}


def _subjects_to_render():
    """A few subjects that between them show every class and the main variants."""
    v = sample_cow_variants(seed=7, n=200)
    want = [lambda x: x["third_a2"], lambda x: any(x["fetal_pca"].values()), lambda x: x["acom"] == "absent"]
    return [next(i for i, x in enumerate(v) if f(x)) for f in want]


@pytest.fixture(scope="module")
def rendered():
    return [(i, *make_cow_phantom(7, index=i)) for i in _subjects_to_render()]


@pytest.mark.slow
def test_labels_are_the_scheme_and_match_the_variant(rendered):
    seen = set()
    for i, img, lab, p in rendered:
        ids = set(int(x) for x in np.unique(lab.array)) - {0}
        assert ids <= set(TOPCOW13.ids)
        assert sorted(ids) == p["variant"]["classes_present"]
        assert lab.label_scheme == "topcow13" and lab.same_geometry(img) and img.shape == (32, 128, 128)
        seen |= ids
    assert seen == set(TOPCOW13.ids)       # every one of the 13 classes appears in these subjects


@pytest.mark.slow
def test_each_class_has_a_connected_component_of_plausible_radius(rendered):
    for i, img, lab, p in rendered:
        vessels = lab.array > 0
        # radius estimate (mm): largest distance from a voxel of the component to the nearest non-vessel voxel
        # centre (exact for a digital disk to within a voxel; a one-voxel-wide vessel gives one voxel width)
        dt = ndi.distance_transform_edt(vessels, sampling=lab.array_spacing)
        for c in p["variant"]["classes_present"]:
            comp, n = ndi.label(lab.array == c, structure=np.ones((3, 3, 3)))
            assert n >= 1
            sizes = np.bincount(comp.ravel())[1:]
            largest = comp == (1 + int(np.argmax(sizes)))
            assert sizes.max() >= 0.8 * sizes.sum(), f"class {c} fragmented: {sorted(sizes)}"
            r = float(dt[largest].max())
            lo, hi = RADIUS_RANGE[c]
            assert lo <= r <= hi, f"subject {i} class {c}: radius {r:.2f} mm outside [{lo}, {hi}]"


@pytest.mark.slow
def test_intensities_look_like_tof_mra(rendered):
    """Against a real TopCoW crop (docs/generation.md, "Built-in phantoms"): median ≈ 108, background 98 ± 30, vessels ≈ 5.9× the median."""
    for i, img, lab, p in rendered:
        a = img.array
        assert a.dtype == np.float32 and a.min() >= 0
        med = np.median(a)
        assert 80 < med < 135
        bg = a[ndi.binary_dilation(lab.array > 0, iterations=3) == 0]
        assert 10 < bg.std() < 45
        core = ndi.binary_erosion(lab.array > 0) & np.isin(lab.array, [1, 4, 6])
        assert 3.5 < a[core].mean() / med < 10
        # inflow: the ICA where it enters (bottom) is brighter than the distal M2 stubs
        assert a[core].mean() > a[lab.array == 5].mean()


def test_aydin7_scheme():
    img, lab7, p = make_cow_phantom(3, shape=(24, 96, 96), spacing_mm=0.8, label_scheme="aydin7")
    _, lab13, _ = make_cow_phantom(3, shape=(24, 96, 96), spacing_mm=0.8)
    assert set(np.unique(lab7.array)) <= set(range(8))
    np.testing.assert_array_equal(lab7.array > 0, lab13.array > 0)
    np.testing.assert_array_equal(lab7.array[lab13.array == 15], 5)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_dataset_deterministic_with_manifest(tmp_path):
    kw = dict(n=2, seed=4, shape=(16, 64, 64), spacing_mm=1.0)
    a = write_cow_dataset(tmp_path / "a", **kw)
    b = write_cow_dataset(tmp_path / "b", **kw)
    assert _digest(a) == _digest(b) and len(_digest(a)) == 5
    man = read_manifest(a)
    assert man["kind"] == "cow-tof-mra-phantom"
    for case in man["cases"]:
        img = read_volume(a / case["image"])
        lab = read_label_volume(a / case["label"], scheme="topcow13")
        assert img.same_geometry(lab) and img.spacing == pytest.approx((1.0, 1.0, 1.0))
        assert sorted(int(x) for x in np.unique(lab.array) if x) == case["classes_in_label"]
        for key in ("variant", "geometry", "pose", "rendering"):
            assert key in case


def test_cli_writes_folders_and_rejects_bad_input(tmp_path, capsys):
    out = tmp_path / "cow"
    assert volgan_main(["--quiet", "phantom", "cow", "--n", "1", "--seed", "2", "--out", str(out),
                        "--shape", "16", "48", "48", "--spacing-mm", "1.2"]) == 0
    assert (out / "images" / "cow_0000.nii.gz").exists() and (out / "labels" / "cow_0000.nii.gz").exists()
    assert (out / "manifest.json").exists()
    bone = tmp_path / "bone"
    assert volgan_main(["--quiet", "phantom", "bone", "--n", "2", "--out", str(bone), "--size", "24"]) == 0
    assert len(list((bone / "masks").iterdir())) == 2 and (bone / "manifest.json").exists()
    capsys.readouterr()
    bad = [
        (["phantom", "cow", "--n", "0", "--out", str(tmp_path / "x")], "n"),
        (["phantom", "cow", "--n", "1", "--spacing-mm", "-0.6", "--out", str(tmp_path / "x")], "spacing_mm"),
        (["phantom", "bone", "--n", "1", "--bvtv", "0.95", "--out", str(tmp_path / "x")], "bvtv"),
        (["phantom", "bone", "--n", "1", "--tbth-mm", "0.2", "--out", str(tmp_path / "x")], "tbth_mm"),
        (["phantom", "cow", "--n", "1", "--out", str(out)], "not empty"),
    ]
    for argv, word in bad:
        assert volgan_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and word in err and err.startswith("volgan phantom: error:")
    assert not (tmp_path / "x").exists()
