"""Exact bone morphometry on analytic phantoms (MorphometryLib.bone, .thickness, .topology, .surface, .anisotropy)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MorphometryLogic"))

from VolGANCore import Volume  # noqa: E402
from VolGANCore.errors import VolGANError  # noqa: E402
from MorphometryLib import bone_morphometry, thickness_map  # noqa: E402
from MorphometryLib.anisotropy import mil_anisotropy, structure_tensor_anisotropy  # noqa: E402
from MorphometryLib.surface import structure_model_index, surface_area  # noqa: E402
from MorphometryLib.thickness import local_thickness  # noqa: E402
from MorphometryLib.topology import connectivity, delta_chi, euler_characteristic  # noqa: E402

SHARED = REPO.parent / "shared"


# ----------------------------------------------------------------------------------------------- phantoms
def plates(t: int, s: int, n_plates: int = 3, size: int = 24, axis: int = 0) -> np.ndarray:
    """Parallel plates t voxels thick, s apart, with half gaps at both ends (a periodic cut) along ``axis``."""
    line = np.zeros(n_plates * (t + s), bool)
    for k in range(n_plates):
        line[s // 2 + k * (t + s): s // 2 + k * (t + s) + t] = True
    shape = [size, size, size]
    shape[axis] = line.size
    view = [1, 1, 1]
    view[axis] = line.size
    return np.broadcast_to(line.reshape(view), shape).copy()


def rods(radius: float, centres, size: int = 48) -> np.ndarray:
    """Parallel rods along D (crossing the whole volume) of the given radius (voxels) at (h, w) centres."""
    h, w = np.mgrid[:size, :size]
    sl = np.zeros((size, size), bool)
    for ch, cw in centres:
        sl |= (h - ch) ** 2 + (w - cw) ** 2 <= radius * radius
    return np.broadcast_to(sl, (size, size, size)).copy()


def lattice(cells: int = 4, period: int = 10, radius: float = 2.5) -> np.ndarray:
    """Cubic lattice of orthogonal rods; the box cuts every rod half-way between nodes."""
    n = cells * period
    z, y, x = np.mgrid[:n, :n, :n].astype(float)
    c = period / 2 - 0.5
    a, b, d = (z % period - c) ** 2, (y % period - c) ** 2, (x % period - c) ** 2
    r2 = radius * radius
    return (b + d <= r2) | (a + d <= r2) | (a + b <= r2)


def random_structure(shape, sigma, fraction, seed) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return f > np.quantile(f, 1 - fraction)


# ------------------------------------------------------------------------------------------- thickness
# (exactness of the local-thickness map against the closed-ball rule, Fiji and BoneJ: test_morphometry_thickness.py)
@pytest.mark.parametrize("t,s", [(4, 6), (6, 10), (2, 8)])
def test_plates_give_exact_thickness_spacing_surface_and_topology(t, s):
    m = plates(t, s)
    r = bone_morphometry(Volume(m, spacing=(0.1, 0.1, 0.1)), parameters=["BV/TV", "BS", "Tb.Th", "Tb.Sp", "Tb.N", "Conn", "SMI", "DA", "DA.ST"])
    assert r["BV/TV"] == pytest.approx(t / (t + s), abs=1e-12)
    assert r["Tb.Th [mm]"] == pytest.approx(0.1 * t, rel=1e-6)  # 0.0 %
    assert r["Tb.Th SD [mm]"] == pytest.approx(0.0, abs=1e-6)
    assert r["Tb.Sp [mm]"] == pytest.approx(0.1 * s, rel=1e-6)
    assert r["Tb.Sp max [mm]"] == pytest.approx(0.1 * s, rel=1e-6)
    assert r["Tb.N [1/mm]"] == pytest.approx(1 / (0.1 * (t + s)), rel=1e-6)
    assert r["BS/BV [1/mm]"] == pytest.approx(2 / (0.1 * t), rel=0.02)
    assert r["Euler"] == 3  # three separate plates
    assert abs(r["SMI"]) < 0.05
    assert r["DA"] >= 0.99 and r["DA (structure tensor)"] >= 0.99


def test_anisotropic_spacing_is_honoured():
    # plates stacked along D (z spacing 0.6) and along W (x spacing 0.3): thickness in mm follows the axis
    for axis, sp_axis in ((0, 0.6), (2, 0.3)):
        m = plates(4, 6, axis=axis)
        v = Volume(m, spacing=(0.3, 0.45, 0.6))  # (x, y, z) -> array axes (D, H, W) = (0.6, 0.45, 0.3)
        r = bone_morphometry(v, parameters=["BV/TV", "BS", "Tb.Th", "Tb.Sp"])
        assert r["Tb.Th [mm]"] == pytest.approx(4 * sp_axis, rel=1e-6)
        assert r["Tb.Sp [mm]"] == pytest.approx(6 * sp_axis, rel=1e-6)
        assert r["BS/BV [1/mm]"] == pytest.approx(2 / (4 * sp_axis), rel=0.02)
        assert r["TV [mm^3]"] == pytest.approx(m.size * 0.3 * 0.45 * 0.6)


@pytest.mark.parametrize("radius", [3.0, 4.0, 6.0])
def test_rods_surface_smi_and_thickness(radius):
    m = rods(radius, [(12.3, 12.1), (33.7, 34.2)])
    area = m[0].sum() / 2  # voxels per rod cross-section
    r_eff = np.sqrt(area / np.pi)
    bs = surface_area(m)
    assert bs / m.sum() == pytest.approx(2 / r_eff, rel=0.06)
    assert structure_model_index(m) == pytest.approx(3.0, rel=0.10)
    assert euler_characteristic(m) == 2
    tmap = local_thickness(m)
    assert abs(tmap[m].max() - 2 * r_eff) <= 1.0  # the digital disc's inscribed ball, within a voxel


def test_euler_characteristic_is_exact_on_known_shapes():
    z, y, x = np.mgrid[:32, :32, :32]
    rr = (z - 16) ** 2 + (y - 16) ** 2 + (x - 16) ** 2
    ball = rr <= 81
    shell = ball & (rr > 25)                     # one cavity: χ = 2
    rad = np.sqrt((y - 16.0) ** 2 + (x - 16.0) ** 2)
    torus = (rad - 9) ** 2 + (z - 16) ** 2 <= 9   # one tunnel: χ = 0
    ball_and_torus = torus | (rr <= 4)          # a ball in the torus' hole, not touching it: χ = 0 + 1
    assert euler_characteristic(ball) == 1
    assert euler_characteristic(shell) == 2
    assert euler_characteristic(torus) == 0
    assert euler_characteristic(ball_and_torus) == 1
    diag = np.zeros((3, 3, 3), bool)
    diag[0, 0, 0] = diag[1, 1, 1] = True          # 26-connected: one object
    assert euler_characteristic(diag) == 1


def test_lattice_euler_connectivity_density_and_isotropy():
    m = lattice(cells=4, period=10, radius=2.5)
    assert euler_characteristic(m) == 64 - 3 * 16 * 3  # nodes − internal rods of the skeleton graph
    assert delta_chi(m) == pytest.approx(-2.0 * 64)    # −2 per unit cell: Odgaard–Gundersen
    c = connectivity(m, spacing=(0.1, 0.1, 0.1))
    assert c["conn_density_per_mm3"] == pytest.approx(129 / (40 * 0.1) ** 3)
    assert mil_anisotropy(m)["da"] <= 0.02
    assert mil_anisotropy(m, method="lines")["da"] <= 0.05
    assert structure_tensor_anisotropy(m)["da"] <= 0.02


def test_elongated_structure_is_anisotropic_along_its_axis():
    m = random_structure((48, 24, 24), (6, 1.5, 1.5), 0.3, 3)
    r = mil_anisotropy(m)
    assert r["da"] > 0.3
    assert abs(r["main_direction"][0]) > 0.9  # longest MIL along D


def test_grey_image_threshold_bmd_tmd_and_roi():
    m = plates(4, 6)
    img = np.where(m, 400.0, 50.0).astype(np.float32)
    img += np.random.default_rng(0).normal(0, 5, img.shape).astype(np.float32)
    v = Volume(img, spacing=(0.164,) * 3)
    r = bone_morphometry(v, threshold="miccai2020", parameters=["BV/TV", "BMD", "TMD"])
    assert r["BV/TV"] == pytest.approx(0.4)
    assert r["Threshold [image units]"] == 225.0
    assert r["BMD [image units]"] == pytest.approx(0.4 * 400 + 0.6 * 50, abs=1.0)
    assert r["TMD [image units]"] == pytest.approx(400, abs=1.0)
    ro = bone_morphometry(v, otsu=True, parameters=["BV/TV"])
    assert ro["BV/TV"] == pytest.approx(0.4, abs=1e-3) and 50 < ro["Threshold [image units]"] < 400
    roi = np.zeros(m.shape, bool)
    roi[:15] = True  # plate 1 (3..6) and plate 2 (13..16) partly: bone voxels 4 + 2 of 15 layers
    rr = bone_morphometry(v, mask=roi, threshold=225, parameters=["BV/TV", "Tb.Th"])
    assert rr["BV/TV"] == pytest.approx(6 / 15)
    assert rr["TV [mm^3]"] == pytest.approx(roi.sum() * 0.164**3)


def test_thickness_map_volume_keeps_geometry():
    m = plates(4, 6)
    v = Volume(m.astype(np.uint8), spacing=(0.2, 0.2, 0.3), origin=(5.0, -3.0, 2.0))
    tm = thickness_map(v)
    assert tm.same_geometry(v) and tm.array.dtype == np.float32
    assert np.allclose(tm.array[m], 4 * 0.3) and np.all(tm.array[~m] == 0)
    sp = thickness_map(v, phase="space")
    assert np.allclose(sp.array[~m], 6 * 0.3)
    res, maps = bone_morphometry(v, parameters=["Tb.Th", "Tb.Sp"], return_maps=True)
    assert np.array_equal(maps["Tb.Th"].array, tm.array)


def test_bad_inputs_give_readable_errors_or_warnings():
    m = plates(4, 6)
    v = Volume(m, spacing=(0.1, 0.1, 0.1))
    with pytest.raises(VolGANError, match="no bone voxel"):
        bone_morphometry(Volume(np.zeros((8, 8, 8), bool), spacing=(1, 1, 1)))
    with pytest.raises(VolGANError, match="every voxel"):
        bone_morphometry(Volume(np.ones((8, 8, 8), bool), spacing=(1, 1, 1)))
    with pytest.raises(VolGANError, match="region of interest is empty"):
        bone_morphometry(v, mask=np.zeros(m.shape, bool))
    with pytest.raises(VolGANError, match="geometry differs"):
        bone_morphometry(v, mask=Volume(np.ones(m.shape, bool), spacing=(0.2, 0.1, 0.1)))
    with pytest.raises(VolGANError, match="shape"):
        bone_morphometry(v, mask=np.ones((3, 3, 3), bool))
    grey = np.random.default_rng(0).normal(size=(8, 8, 8))
    with pytest.raises(VolGANError, match="not binary"):
        bone_morphometry(Volume(grey, spacing=(1, 1, 1)))
    with pytest.raises(VolGANError, match="unknown"):
        bone_morphometry(v, parameters=["Tb.Foo"])
    with pytest.raises(VolGANError, match="BMD and TMD need a grey"):
        bone_morphometry(v, parameters=["BMD"])
    with pytest.warns(UserWarning, match="assuming 1 mm isotropic"):
        r = bone_morphometry(m, parameters=["Tb.Th"])
    assert r["Tb.Th [mm]"] == pytest.approx(4.0)
    with pytest.warns(UserWarning, match="taking 255 as bone"):
        bone_morphometry(Volume(np.where(m, 255, 7).astype(np.uint8), spacing=(1, 1, 1)), parameters=["BV/TV"])


def test_real_trabecular_crop_panel_is_consistent():
    path = SHARED / "data" / "trabecular" / "didsr_trabecular_roi_1.nrrd"
    if not path.exists():
        pytest.skip(f"shared test data absent: {path}")
    from VolGANCore import read_volume

    v = read_volume(path, dtype=None)
    crop = v.with_array(np.ascontiguousarray(v.array[100:148, 100:148, 100:148]), spacing=(0.05, 0.05, 0.05))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = bone_morphometry(crop, parameters=["BV/TV", "BS", "Tb.Th", "Tb.Sp", "Conn", "SMI", "DA", "plate"])
    assert 0.05 < r["BV/TV"] < 0.6
    # model-independent vs plate-model thickness agree within a factor of two on real bone
    assert 0.5 < r["Tb.Th [mm]"] / r["Tb.Th (plate model) [mm]"] < 2.0
    assert r["Tb.Th max [mm]"] >= r["Tb.Th [mm]"] > 0 and r["Tb.Sp [mm]"] > r["Tb.Th [mm]"]
    assert -1.0 < r["SMI"] < 4.0 and 0 <= r["DA"] <= 1


def test_batch_over_arrays_in_worker_processes_keeps_order_and_reports_failures():
    from MorphometryLib import batch_bone_morphometry

    stack = np.stack([plates(2, 8, size=12), plates(4, 6, size=12), np.zeros((30, 12, 12), bool)])
    rows = batch_bone_morphometry(stack, spacing=(0.1, 0.1, 0.1), parameters=["BV/TV", "Tb.Th"], workers=2, chunk_size=1)
    assert [r["case"] for r in rows] == ["00000", "00001", "00002"]
    assert rows[0]["Tb.Th [mm]"] == pytest.approx(0.2) and rows[1]["Tb.Th [mm]"] == pytest.approx(0.4)
    assert rows[2]["error"].startswith("image: no bone voxel") and np.isnan(rows[2]["Tb.Th [mm]"])
    with pytest.raises(VolGANError, match="spacing"):
        batch_bone_morphometry(stack)


@pytest.mark.parametrize("with_roi,fork", [(False, True), (True, True), (True, False)])
def test_surface_in_parallel_slabs_equals_one_pass(with_roi, fork, monkeypatch):
    """Slabs (with one context cube layer each side) give the single-pass mesh's area, SMI flow and MIL."""
    from skimage.measure import marching_cubes

    from MorphometryLib.anisotropy import fibonacci_directions, mil_from_pooled_normals, pool_normals
    from MorphometryLib.surface import _smoothed_padded, face_cross, surface_mesh, surface_statistics

    from MorphometryLib.surface import _can_fork

    monkeypatch.setenv("VOLGAN_NO_FORK", "0" if fork else "1")
    assert _can_fork() == (fork and hasattr(__import__("os"), "fork"))  # forked processes, or threads
    mask = random_structure((100, 40, 44), 2.0, 0.3, seed=5)
    sp = (0.05, 0.04, 0.03)
    roi = None
    if with_roi:
        z, y, x = np.mgrid[:100, :40, :44]
        roi = (y - 20) ** 2 + (x - 22) ** 2 < 18 ** 2
    one = surface_statistics(mask, sp, roi, normal_bins=True, workers=1)
    three = surface_statistics(mask, sp, roi, normal_bins=True, workers=3)
    assert one["faces"] == three["faces"] > 0
    assert three["area"] == pytest.approx(one["area"], rel=1e-6)
    assert three["dadr"] == pytest.approx(one["dadr"], rel=1e-5)
    dirs = fibonacci_directions(64)
    mil = lambda pooled: mil_from_pooled_normals(pooled, 1.0, dirs)  # noqa: E731 - (normals on bin edges may
    np.testing.assert_allclose(mil(three["pooled_normals"]), mil(one["pooled_normals"]), rtol=1e-5)  # swap bins)
    # the assembled mesh has the same triangles whatever the slabs
    v1, f1 = surface_mesh(mask, sp, roi, workers=1)
    v3, f3 = surface_mesh(mask, sp, roi, workers=3)
    assert len(f1) == len(f3) == one["faces"]
    area = lambda v, f: 0.5 * np.linalg.norm(face_cross(v, f).astype(np.float64), axis=1).sum()  # noqa: E731
    assert area(v3, f3) == pytest.approx(area(v1, f1), rel=1e-6) == pytest.approx(one["area"], rel=1e-6)
    # and a plain single marching-cubes pass over the whole padded image, cut to the image box, agrees
    verts, faces, _n, _v = marching_cubes(_smoothed_padded(mask, 0.7), 0.5, allow_degenerate=True)
    verts -= 1.0
    cent = verts[faces].mean(1)
    keep = np.all((cent >= -0.5) & (cent <= np.asarray(mask.shape) - 0.5), axis=1)
    if roi is not None:
        ijk = np.clip(np.rint(cent).astype(int), 0, np.asarray(mask.shape) - 1)
        keep &= roi[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    fc = face_cross((verts * np.asarray(sp)).astype(np.float32), faces[keep])
    assert int(keep.sum()) == one["faces"]
    assert 0.5 * np.linalg.norm(fc.astype(np.float64), axis=1).sum() == pytest.approx(one["area"], rel=1e-6)
    np.testing.assert_allclose(mil(pool_normals(0.5 * fc)), mil(one["pooled_normals"]), rtol=1e-5)


def test_a_failing_slab_worker_is_reported():
    from MorphometryLib.surface import _can_fork, _fork_map

    if not _can_fork():
        pytest.skip("no fork on this platform: slabs run in threads (tested above)")

    def fn(item):
        if item == 0:
            raise ValueError("broken slab")
        return item * 2

    assert _fork_map(fn, [1, 2, 3]) == [2, 4, 6]
    with pytest.raises(RuntimeError, match="worker process failed: ValueError: broken slab"):
        _fork_map(fn, [0, 1])
