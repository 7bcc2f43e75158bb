"""Seconds per case of ``volgan prepare cow`` for a 512×512×150 TOF-MRA volume (CPU).

The real TOF-MRA crop of ../shared/data (140×123×34 at 0.297×0.297×0.6 mm) is placed in a 256×256×80 template at
0.6×0.6×1.0 mm (background: its 1st percentile plus noise); the case is the template seen through a rigid motion
(10°, 5°, -8°; 6, -4, 3 mm) on a 512×512×150 grid at 0.3×0.3×0.55 mm. One case is prepared with the command's
defaults (coarse search ±30° in 30° steps, 100 iterations per level, full sampling at the finest level) and the
paper's ROI; the wall time and the recovered motion are printed.

    .venv/bin/python benchmarks/bench_prepare_cow.py [--iterations 100] [--threads N] [--quick]
    python benchmarks/run.py prepare_cow [--quick]      # the same through the harness (--quick: 256×256×75 onto 128×128×40)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for sub in ("MorphometryLogic", "VolumetricGAN", "GANTrainer"):
    sys.path.insert(0, str(REPO / sub))


def prepare_one(iterations: int = 100, scan=(512, 512, 150), template_size=(256, 256, 80),
                settings: dict | None = None) -> dict:
    """Build the scan and template, prepare the case, return the figures (seconds, recovered motion)."""
    import SimpleITK as sitk

    from GANTrainerLib.prepare.cow import prepare_cow, resample_onto
    from VolGANCore import Volume
    from VolGANCore.io import read_volume, write_volume

    crop = read_volume(REPO.parent / "shared" / "data" / "topcow" / "topcow_mra_crop.mha")
    rng = np.random.default_rng(0)
    bg = float(np.percentile(crop.array, 1))
    scale = 256 / template_size[0]     # a smaller template keeps the physical field of view
    grid = Volume(np.zeros(template_size[::-1], np.float32), spacing=(0.6 * scale, 0.6 * scale, 1.0 * scale),
                  direction=crop.direction)
    centre = grid.index_to_physical((np.asarray(grid.shape[::-1]) - 1) / 2)
    crop = crop.with_array(crop.array, origin=tuple(np.asarray(crop.origin) - crop.index_to_physical(
        (np.asarray(crop.shape[::-1]) - 1) / 2) + centre))
    t = resample_onto(crop, grid, default=np.nan).array
    t = np.where(np.isfinite(t), t, bg + rng.normal(0, 3, t.shape)).astype(np.float32)
    template = grid.with_array(t)
    motion = sitk.Euler3DTransform()
    motion.SetCenter(tuple(centre))
    motion.SetRotation(*np.deg2rad([10.0, 5.0, -8.0]))
    motion.SetTranslation((6.0, -4.0, 3.0))
    size = np.array(scan)
    spacing = np.array([0.3, 0.3, 0.55]) * 512 / scan[0]
    scan_grid = Volume(np.zeros(size[::-1], np.uint8), spacing=tuple(spacing), direction=crop.direction,
                       origin=tuple(centre - crop.direction @ ((size - 1) / 2 * spacing)))
    scan = resample_onto(template, scan_grid, motion.GetInverse(), default=bg)
    f = [template_size[i] / (256, 256, 80)[i] for i in range(3)]       # the paper's box, scaled with the template
    box = tuple((int(lo * f[i]), int(hi * f[i])) for i, (lo, hi) in enumerate(((80, 208), (120, 248), (40, 72))))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_volume(template, tmp / "template.nrrd")
        write_volume(scan, tmp / "in" / "case.nrrd", compress=False)
        t0 = time.perf_counter()
        prepare_cow(tmp / "in", tmp / "out", template=tmp / "template.nrrd",
                    roi=box, register_kw={"iterations": iterations, **(settings or {})})
        wall = time.perf_counter() - t0
        row = json.loads((tmp / "out" / "manifest.json").read_text())["cases"][0]
    found = sitk.Euler3DTransform()
    found.SetCenter(row["transform"]["centre_mm"])
    found.SetRotation(*np.deg2rad(row["transform"]["angles_deg"]))
    found.SetTranslation(row["transform"]["translation_mm"])
    roi = [(x, y, z) for x in box[0] for y in box[1] for z in box[2]]   # the box corners
    err = max(float(np.max(np.abs(np.asarray(found.TransformPoint(p)) - np.asarray(motion.TransformPoint(p)))
                           / np.asarray(template.spacing)))
              for p in (tuple(template.index_to_physical(c)) for c in roi))
    return {"scan_shape_xyz": size.tolist(), "template_shape_xyz": list(template_size),
            "seconds_per_case": round(wall, 1), "true_angles_deg": [10.0, 5.0, -8.0],
            "found_angles_deg": np.round(row["transform"]["angles_deg"], 2).tolist(),
            "roi_corner_error_template_voxels": round(err, 3), "quality": row["quality"]}


def cases(quick: bool):
    """The harness's interface (benchmarks/run.py): one case, timed once (each run registers a whole scan)."""
    from harness import Case

    kw = dict(scan=(256, 256, 75), template_size=(128, 128, 40)) if quick else {}
    return [Case(group="prepare cow, one TOF-MRA case", name="volgan prepare cow (default settings)",
                 fn=lambda: {k: v for k, v in prepare_one(**kw).items() if k != "seconds_per_case"},
                 repeats=1, warmup=0)]


def main() -> int:
    import SimpleITK as sitk

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="SimpleITK threads (0: its default, all cores)")
    ap.add_argument("--quick", action="store_true", help="256×256×75 onto 128×128×40")
    args = ap.parse_args()
    if args.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    kw = dict(scan=(256, 256, 75), template_size=(128, 128, 40)) if args.quick else {}
    figures = prepare_one(args.iterations, **kw)
    figures["threads"] = args.threads or os.cpu_count()
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
