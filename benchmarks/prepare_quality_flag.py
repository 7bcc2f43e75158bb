"""Measure how well ``volgan prepare cow``'s quality figures separate good registrations from failed ones.

The real TOF-MRA crop of ../shared/data, padded into a template at half resolution (as Testing/test_prepare_cow.py
does), is seen through known rigid motions on a larger scan grid and registered back with the per-case
registration of ``prepare cow``:

- good: random motions within ±15° and ±10 mm, default coarse search (±15° here, as the tests), 20 iterations;
  also such motions of a degraded copy (a smooth random deformation of 1-4 mm, a bias field, blur and noise: the
  template's head as a rough stand-in for another subject on another scanner);
- failed on purpose: a start far off (60°, 90° or 180° about one axis) with the coarse search disabled, an
  unrelated scan (the real trabecular bone ROI), another subject's vessels without the brain (the TopCoW label
  crop as an image), and gamma noise.

For each case it prints the true error (largest ROI-corner displacement in template voxels, where the truth is
known), the final Mattes metric as a fraction of the template's self-match, and the normalised cross-correlation of
the registered ROI with the template's ROI; the last lines give the ranges of each group.

    .venv/bin/python benchmarks/prepare_quality_flag.py [--good 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for sub in ("MorphometryLogic", "VolumetricGAN", "GANTrainer"):
    sys.path.insert(0, str(REPO / sub))

PAD = (4, 10, 10)


def _template():
    from VolGANCore.geometry import downsample
    from VolGANCore.io import read_volume

    mra = read_volume(REPO.parent / "shared" / "data" / "topcow" / "topcow_mra_crop.mha")
    rng = np.random.default_rng(0)
    lo = float(np.percentile(mra.array, 1))
    inside = np.pad(np.ones(mra.shape, bool), [(p, p) for p in PAD])
    arr = np.pad(mra.array, [(p, p) for p in PAD])
    arr = np.where(inside, arr, lo + rng.normal(0, 3, arr.shape)).astype(np.float32)
    t = mra.with_array(arr, spacing=mra.spacing, origin=tuple(mra.index_to_physical((-PAD[2], -PAD[1], -PAD[0]))))
    even = tuple(slice(0, s - s % 2) for s in t.shape)
    return downsample(t.with_array(t.array[even], spacing=t.spacing), 2)


def _motion(template, angles_deg, shift_mm):
    import SimpleITK as sitk

    m = sitk.Euler3DTransform()
    m.SetCenter(tuple(template.index_to_physical((np.asarray(template.shape[::-1]) - 1) / 2)))
    m.SetRotation(*np.deg2rad(angles_deg))
    m.SetTranslation(tuple(shift_mm))
    return m


def _scan_grid(vol):
    from VolGANCore import Volume

    ext = np.asarray(vol.shape[::-1]) * np.asarray(vol.spacing) + np.array([20.0, 20.0, 24.0])
    size = np.ceil(ext / np.asarray(vol.spacing)).astype(int)
    centre = vol.index_to_physical((np.asarray(vol.shape[::-1]) - 1) / 2)
    origin = centre - vol.direction @ ((size - 1) / 2 * np.asarray(vol.spacing))
    return Volume(np.zeros(size[::-1], np.uint8), spacing=vol.spacing, origin=tuple(origin), direction=vol.direction)


def _moved(template, motion, default):
    from GANTrainerLib.prepare.cow import resample_onto

    return resample_onto(template, _scan_grid(template), motion.GetInverse(), default=default)


def _degrade(scan, rng, deform_mm: float, bias: float, noise: float, blur_mm: float):
    """The scan as another subject on another scanner, roughly: a smooth random deformation of up to ``deform_mm``,
    a multiplicative bias field of ±``bias``, a Gaussian blur of ``blur_mm`` and noise of ``noise`` × the range."""
    from scipy import ndimage as ndi

    a = scan.array.astype(np.float32)
    sp = np.asarray(scan.spacing)[::-1]                     # z, y, x mm

    def smooth_field():
        coarse = rng.normal(0, 1, (4, 4, 4))
        f = ndi.zoom(coarse, np.asarray(a.shape) / 4.0, order=3)[: a.shape[0], : a.shape[1], : a.shape[2]]
        return f / max(1e-6, float(np.abs(f).max()))

    grid = np.indices(a.shape, dtype=np.float32)
    coords = [grid[k] + deform_mm * smooth_field() / sp[k] for k in range(3)]
    a = ndi.map_coordinates(a, coords, order=1, mode="nearest")
    a = a * (1.0 + bias * smooth_field())
    a = ndi.gaussian_filter(a, blur_mm / sp)
    lo, hi = np.percentile(a, [1, 99.9])
    a = a + rng.normal(0, noise * (hi - lo), a.shape)
    return scan.with_array(a.astype(np.float32))


def _unrelated(template, kind: str, rng):
    """A scan on the scan grid with no TOF-MRA of this head in it."""
    from GANTrainerLib.prepare.cow import resample_onto
    from VolGANCore.io import read_label_volume, read_volume

    grid = _scan_grid(template)
    lo, hi = np.percentile(template.array, [1, 99.9])
    if kind == "noise":
        return grid.with_array(rng.gamma(2.0, 50.0, grid.shape).astype(np.float32))
    if kind == "bone":
        a = read_volume(REPO.parent / "shared" / "data" / "trabecular" / "didsr_trabecular_roi_1.nrrd")
        src = a.with_array(a.array.astype(np.float32), spacing=tuple(np.asarray(grid.spacing) * np.asarray(grid.shape[::-1])
                                                                    / np.asarray(a.shape[::-1])),
                           origin=grid.origin, direction=grid.direction)
        arr = resample_onto(src, grid.with_array(np.zeros(grid.shape, np.float32))).array
        arr = lo + (hi - lo) * (arr - arr.min()) / max(1e-6, float(arr.max() - arr.min()))
        return grid.with_array((arr + rng.normal(0, 3, arr.shape)).astype(np.float32))
    if kind == "vessels":     # another subject's arteries alone (the TopCoW label crop as an image), no brain
        lab = read_label_volume(REPO.parent / "shared" / "data" / "topcow" / "topcow_mr_roi_003_labels.nii.gz")
        src = lab.with_array((lab.array > 0).astype(np.float32), origin=tuple(template.origin), label_scheme=None)
        arr = resample_onto(src, grid.with_array(np.zeros(grid.shape, np.float32))).array
        arr = lo + (hi - lo) * np.clip(arr, 0, 1)
        return grid.with_array((arr + rng.normal(0, 3, arr.shape)).astype(np.float32))
    raise ValueError(kind)


def _corner_error(template, roi, found, truth) -> float:
    err = 0.0
    for corner in [(x, y, z) for x in roi[0] for y in roi[1] for z in roi[2]]:
        p = tuple(template.index_to_physical(corner))
        d = np.asarray(found.TransformPoint(p)) - np.asarray(truth.TransformPoint(p))
        err = max(err, float(np.max(np.abs(template.direction.T @ d) / np.asarray(template.spacing))))
    return err


DEGRADED = [(1.0, 0.2, 0.03, 0.5), (2.0, 0.3, 0.05, 0.8), (3.0, 0.3, 0.08, 1.0), (3.0, 0.4, 0.10, 1.2),
            (4.0, 0.4, 0.10, 1.5), (4.0, 0.5, 0.15, 1.5)]      # (deformation mm, bias, noise, blur mm)
FAR_OFF = [((60, 0, 0), "60° about x"), ((0, 0, 90), "90° about z"), ((0, 90, 0), "90° about y"),
           ((0, 0, 180), "180° about z"), ((180, 0, 0), "180° about x")]
UNRELATED = ("bone", "vessels", "noise")


def registration_cases(template, rng, n_good: int = 8, degraded=DEGRADED, far_off=FAR_OFF, unrelated=UNRELATED):
    """[(group, name, scan, true motion or None, search ± degrees)] (also used by Testing/test_prepare_cow.py)."""
    bg = float(np.percentile(template.array, 1))
    cases = []
    for i in range(n_good):
        m = _motion(template, rng.uniform(-15, 15, 3), rng.uniform(-10, 10, 3))
        cases.append(("good", f"random motion {i}", _moved(template, m, bg), m, 15.0))
    for deform, bias, noise, blur in degraded:
        m = _motion(template, rng.uniform(-15, 15, 3), rng.uniform(-10, 10, 3))
        scan = _degrade(_moved(template, m, bg), rng, deform, bias, noise, blur)
        cases.append(("good", f"random motion, deformed {deform:g} mm, bias ±{bias:g}, noise {noise:g}, "
                              f"blur {blur:g} mm", scan, m, 15.0))
    for angles, name in far_off:
        m = _motion(template, angles, (3.0, -2.0, 1.0))
        cases.append(("failed", f"{name}, no search", _moved(template, m, bg), m, 0.0))
    for kind in unrelated:
        cases.append(("failed", f"unrelated: {kind}", _unrelated(template, kind, rng), None, 15.0))
    return cases


def measure(n_good: int = 8, iterations: int = 20, settings: dict | None = None) -> list[dict]:
    from GANTrainerLib.prepare.cow import _self_information, quality_figures, register_rigid, resample_onto

    template = _template()
    roi = ((4, template.shape[2] - 4), (4, template.shape[1] - 4), (2, template.shape[0] - 2))
    self_info = _self_information(template)
    out = []
    for group, name, scan, truth, search in registration_cases(template, np.random.default_rng(2026), n_good):
        t0 = time.perf_counter()
        found, metric = register_rigid(template, scan, search_deg=search, iterations=iterations, **(settings or {}))
        sl = (slice(*roi[2]), slice(*roi[1]), slice(*roi[0]))
        moved = resample_onto(scan.with_array(scan.array.astype(np.float32)), template, found, default=np.nan).array
        fig = quality_figures(template.array[sl], moved[sl], metric, self_info)
        row = {"group": group, "case": name, "seconds": round(time.perf_counter() - t0, 1),
               "corner_error_vox": round(_corner_error(template, roi, found, truth), 2) if truth is not None else None,
               **{k: round(v, 4) for k, v in fig.items()}}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--good", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = measure(args.good, args.iterations)
    for key in ("metric_ratio", "roi_ncc"):
        for group in ("good", "failed"):
            v = [r[key] for r in rows if r["group"] == group and r.get(key) is not None]
            print(f"{key} {group}: {min(v):.3f} .. {max(v):.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
