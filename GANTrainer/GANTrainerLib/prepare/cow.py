"""``volgan prepare cow``: whole TOF-MRA scans -> Circle-of-Willis crops on a template grid, as the CoW paper did.

The paper (docs/preparation.md) registered every TOF-MRA rigidly (6 dof, mutual information, FSL flirt) to a TOF template,
cropped x 80:208, y 120:248, z 40:72 on the template grid, did not skull-strip, and min-max normalised each volume.
Here: SimpleITK Euler 3-D, Mattes mutual information, three resolution levels with full sampling at the finest.
Like flirt, a coarse search comes first: after a centre-of-mass initialisation an exhaustive search over rotations
(±``search_deg`` about each axis in ``search_step_deg`` steps) at the coarsest level picks the best-scoring start;
it and the plain centre start are both refined over the coarse levels (a coarse metric can mislead), the better of
the two by the full-sampling metric on the last coarse grid goes on to the finest level, and its final metric,
evaluated with full sampling, is recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from VolGANCore import Volume, VolGANError
from VolGANCore.atomic import atomic_write_json
from VolGANCore.dataset import case_id, list_volumes, write_manifest
from VolGANCore.errors import InputFileError
from VolGANCore.geometry import resample
from VolGANCore.io import read_label_volume, read_volume, sha256_file, write_volume
from VolGANCore.progress import CancelToken, ProgressCallback

from .bone import save_qc_figure, scan_header
from .runner import CaseStore, file_stamp

__all__ = ["PAPER_ROI", "parse_roi", "register_rigid", "resample_onto", "orientation_code", "build_template",
           "prepare_cow"]

PAPER_ROI = ((80, 208), (120, 248), (40, 72))   # x, y, z voxel index ranges on the template grid (docs/preparation.md)
# A case is flagged "suspect" when its final Mattes MI is below this fraction of the template's self-match. Measured
# (benchmarks/prepare_quality_flag.py, docs/preparation.md): good registrations of the real TOF-MRA, also deformed
# by up to 3 mm with bias, blur and noise, 0.42-0.90; deliberately failed ones (60°-180° starts without the search,
# unrelated scans, noise) 0.001-0.33.
SUSPECT_RATIO = 0.375
COARSE_SAMPLES = 30000   # metric samples per coarse level (regular grid), capped at every voxel


def parse_roi(text: str) -> tuple[tuple[int, int], ...]:
    """``"x0:x1,y0:y1,z0:z1"`` -> ((x0, x1), (y0, y1), (z0, z1)); a readable error otherwise."""
    try:
        parts = [tuple(int(v) for v in p.split(":")) for p in str(text).split(",")]
        if len(parts) != 3 or any(len(p) != 2 or p[1] <= p[0] or p[0] < 0 for p in parts):
            raise ValueError
    except ValueError:
        raise VolGANError(f"--roi '{text}': expected x0:x1,y0:y1,z0:z1 in template voxel indices with x0 < x1 "
                          "(the paper's box is 80:208,120:248,40:72)") from None
    return tuple(parts)  # type: ignore[return-value]


def _to_sitk(vol: Volume):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array))
    img.SetSpacing(tuple(float(s) for s in vol.spacing))
    img.SetOrigin(tuple(float(o) for o in vol.origin))
    img.SetDirection(tuple(float(d) for d in vol.direction.reshape(-1)))
    return img


def orientation_code(direction: np.ndarray) -> str:
    """The nearest anatomical axis letters (LPS) of each index axis, e.g. "LPS" or "RAI"."""
    letters = ("LR", "PA", "SI")
    d = np.asarray(direction).reshape(3, 3)
    out = ""
    for col in range(3):
        axis = int(np.argmax(np.abs(d[:, col])))
        out += letters[axis][0 if d[axis, col] > 0 else 1]
    return out


def register_rigid(fixed: Volume, moving: Volume, search_deg: float = 30.0, search_step_deg: float = 30.0,
                   iterations: int = 100, shrink: Sequence[int] = (4, 2, 1), smooth_mm: Sequence[float] = (1.0, 0.5, 0.0),
                   bins: int = 32, seed: int = 0, coarse_samples: Optional[int] = COARSE_SAMPLES,
                   finest_best_only: bool = True, finest_learning_rate: float = 1.0, min_step: float = 1e-4):
    """Rigid (Euler 3-D) registration of ``moving`` onto ``fixed`` by Mattes mutual information.

    A centre-of-mass start, then (``search_deg`` > 0) an exhaustive search over rotations of ±``search_deg`` in
    ``search_step_deg`` steps about each axis on the coarsest grid. The plain centre start and the search's best are
    both refined over the coarse levels (``shrink[:-1]``; about ``coarse_samples`` regularly placed samples per
    level, None: 25 %); with ``finest_best_only`` the one with the better full-sampling metric on the last coarse
    grid goes on to the finest level alone (otherwise both), which uses every voxel, starts with steps of
    ``finest_learning_rate`` mm and stops at ``min_step`` mm. Of the finished starts the one with the better final
    metric (full sampling on the finest grid) is kept.

    Returns ``(transform, metric)``: a SimpleITK Euler3DTransform mapping fixed-space points to moving-space points
    (the resampling direction) and its final metric (lower is better).
    """
    import SimpleITK as sitk

    f = sitk.Cast(_to_sitk(fixed), sitk.sitkFloat32)
    m = sitk.Cast(_to_sitk(moving), sitk.sitkFloat32)
    centre = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                               sitk.CenteredTransformInitializerFilter.MOMENTS)
    n_fixed = int(np.prod(f.GetSize()))

    def fraction(level_shrink: int) -> float:
        if coarse_samples is None:
            return 0.25
        return float(min(1.0, coarse_samples / max(1.0, n_fixed / level_shrink ** 3)))

    def method(levels: Sequence[int], sigmas: Sequence[float], fractions: Sequence[float], learning_rate=1.0):
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
        r.SetInterpolator(sitk.sitkLinear)
        r.SetMetricSamplingStrategy(r.REGULAR)
        r.SetMetricSamplingPercentagePerLevel(list(fractions), seed)
        r.SetOptimizerAsRegularStepGradientDescent(learningRate=learning_rate, minStep=min_step,
                                                   numberOfIterations=iterations, relaxationFactor=0.6,
                                                   gradientMagnitudeTolerance=1e-8)
        r.SetOptimizerScalesFromPhysicalShift()
        r.SetShrinkFactorsPerLevel(list(levels))
        r.SetSmoothingSigmasPerLevel(list(sigmas))
        r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        return r

    starts = [centre]
    n = int(round(search_deg / search_step_deg)) if search_deg > 0 and search_step_deg > 0 else 0
    if n > 0:        # every start of the grid, the plain centre start (0°) included, by its metric
        search = method([shrink[0]], [smooth_mm[0]], [fraction(shrink[0])])
        search.SetOptimizerAsExhaustive([n, n, n, 0, 0, 0], stepLength=np.deg2rad(search_step_deg))
        search.SetOptimizerScales([1, 1, 1, 1, 1, 1])
        searched = sitk.Euler3DTransform(centre)
        search.SetInitialTransform(searched, inPlace=True)
        search.Execute(f, m)
        if not np.allclose(searched.GetParameters(), centre.GetParameters()):
            starts.append(searched)    # a coarse metric can mislead: refine both, keep the better
    coarse = list(shrink[:-1])
    refined = []
    for s in starts:
        t = sitk.Euler3DTransform(s)
        if coarse:
            r = method(coarse, smooth_mm[:-1], [fraction(k) for k in coarse])
            r.SetInitialTransform(t, inPlace=True)
            r.Execute(f, m)
        refined.append(t)
    if finest_best_only and len(refined) > 1 and coarse:
        # the better start on the last coarse grid, every voxel of it, before the costly finest level
        k, sigma = coarse[-1], smooth_mm[len(coarse) - 1]
        fk, mk = ((sitk.Shrink(sitk.SmoothingRecursiveGaussian(img, sigma) if sigma > 0 else img, [k] * 3))
                  for img in (f, m))
        value = []
        for t in refined:
            e = method([1], [0.0], [1.0])
            e.SetInitialTransform(sitk.Euler3DTransform(t))
            value.append(float(e.MetricEvaluate(fk, mk)))
        refined = [refined[int(np.argmin(value))]]
    best = None
    for t in refined:
        r = method([shrink[-1]], [smooth_mm[-1]], [1.0], learning_rate=finest_learning_rate if coarse else 1.0)
        r.SetInitialTransform(t, inPlace=True)
        r.Execute(f, m)
        final = method([shrink[-1]], [smooth_mm[-1]], [1.0])   # the final metric with full sampling on the finest grid
        final.SetInitialTransform(sitk.Euler3DTransform(t))
        value = float(final.MetricEvaluate(f, m))
        if best is None or value < best[1]:
            best = (sitk.Euler3DTransform(t), value)
    return best


def resample_onto(moving: Volume, reference: Volume, transform=None, label: bool = False, default: float = 0.0) -> Volume:
    """``moving`` on ``reference``'s grid through ``transform`` (fixed -> moving points): B-spline, nearest for labels."""
    import SimpleITK as sitk

    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(_to_sitk(reference.with_array(np.zeros(reference.shape, np.uint8))))
    f.SetInterpolator(sitk.sitkNearestNeighbor if label else sitk.sitkBSpline)
    f.SetDefaultPixelValue(float(default))
    if transform is not None:
        f.SetTransform(transform)
    arr = sitk.GetArrayFromImage(f.Execute(_to_sitk(moving)))
    return reference.with_array(arr.astype(moving.array.dtype, copy=False), label_scheme=moving.label_scheme,
                                metadata={})


def _self_information(template: Volume, bins: int = 32) -> float:
    import SimpleITK as sitk

    f = sitk.Cast(_to_sitk(template), sitk.sitkFloat32)
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    r.SetInitialTransform(sitk.Euler3DTransform())
    return float(r.MetricEvaluate(f, f))


def quality_figures(template_roi: np.ndarray, moved_roi: np.ndarray, metric: float, self_info: float) -> dict:
    """The registration-quality figures of one case: its final metric as a fraction of the template's self-match
    (``metric_ratio``; Mattes MI is negative, so 1 is a perfect match and 0 none), the normalised cross-correlation of
    the registered ROI with the template's ROI over the voxels inside the scan (``roi_ncc``), and that fraction
    (``roi_inside``)."""
    inside = np.isfinite(moved_roi)
    a = np.asarray(template_roi, np.float64)[inside]
    b = np.asarray(moved_roi, np.float64)[inside]
    ncc = 0.0
    if a.size > 1:
        a, b = a - a.mean(), b - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        ncc = float((a * b).sum() / den) if den > 0 else 0.0
    return {"metric_ratio": float(metric / self_info) if self_info else 0.0, "roi_ncc": ncc,
            "roi_inside": float(inside.mean())}


def build_template(images: Sequence[Volume], rounds: int = 3, **register_kw) -> Volume:
    """Group-wise rigid template: start from the first volume, register every volume to the current mean and
    average them on its grid, ``rounds`` times."""
    template = images[0].with_array(images[0].array.astype(np.float32))
    for _ in range(rounds):
        moved = []
        for vol in images:
            t, _ = register_rigid(template, vol, **register_kw)
            moved.append(resample_onto(vol.with_array(vol.array.astype(np.float32)), template, t,
                                       default=float(np.percentile(vol.array, 1))).array)   # background outside
        template = template.with_array(np.mean(moved, axis=0).astype(np.float32))
    return template


def _roi_slices(roi) -> tuple[slice, slice, slice]:
    (x0, x1), (y0, y1), (z0, z1) = roi
    return slice(z0, z1), slice(y0, y1), slice(x0, x1)


def _check_inputs(images, labels, template_path, roi, label_scheme):
    files = list_volumes(images)
    label_files = {case_id(p): p for p in list_volumes(labels)} if labels is not None else {}
    heads = {f: scan_header(f) for f in files}
    pairs = []
    for f in files:
        lab = None
        if labels is not None:
            lab = label_files.get(case_id(f))
            if lab is None:
                raise InputFileError(f, f"has no label map in {labels} (same file name expected)",
                                     "add it, or leave out --labels")
            lh, ih = scan_header(lab), heads[f]
            if (tuple(lh.GetSize()) != tuple(ih.GetSize()) or not np.allclose(lh.GetSpacing(), ih.GetSpacing(), atol=1e-4)
                    or not np.allclose(lh.GetOrigin(), ih.GetOrigin(), atol=1e-3)
                    or not np.allclose(lh.GetDirection(), ih.GetDirection(), atol=1e-4)):
                raise InputFileError(lab, f"is on another grid than {f.name} (size, spacing, origin or direction differ)",
                                     "resample the labels onto their image first")
            read_label_volume(lab, scheme=label_scheme)     # unknown label ids -> one line naming the file
        pairs.append((f, lab))
    orient = {orientation_code(np.reshape(h.GetDirection(), (3, 3))) for h in heads.values()}
    if template_path is not None:
        th = scan_header(template_path)
        t_orient = orientation_code(np.reshape(th.GetDirection(), (3, 3)))
        odd = sorted(o for o in orient if o != t_orient)
        if odd:
            raise InputFileError(template_path, f"is oriented {t_orient}, the images {', '.join(odd)}",
                                 "reorient the template (or the images) so that they share axes, e.g. with "
                                 "SimpleITK.DICOMOrient")
    else:   # --build-template: the template lies on the first scan's grid
        th = heads[files[0]]
    size = th.GetSize()
    for axis, (lo, hi) in zip("xyz", roi):
        if hi > size["xyz".index(axis)]:
            where = template_path if template_path is not None else f"{files[0]}, whose grid a built template takes"
            raise VolGANError(f"--roi {axis} {lo}:{hi} reaches beyond the template's {tuple(size[:3])} voxels "
                              f"({where}); pass a --roi inside it")
    return pairs


def _prepare_case(args) -> dict:
    """Register one case, write its ROI image (+ labels) into the cache folder; its record (a manifest row)."""
    src, lab, template, roi, cache, fmt, recipe, register_kw, self_info, spacing, stamp = args
    stem = case_id(src)
    row = {"case": stem, "source": src.name, "recipe": recipe, "stamp": stamp}
    try:
        vol = read_volume(src)
        transform, metric = register_rigid(template, vol, **register_kw)
    except (VolGANError, RuntimeError) as exc:
        return dict(row, status="failed", reason=str(exc).strip().splitlines()[-1])
    sl = _roi_slices(roi)
    grid = template.with_array(np.zeros(template.shape, np.uint8))
    origin = tuple(float(v) for v in template.index_to_physical((roi[0][0], roi[1][0], roi[2][0])))
    roi_grid = template.with_array(np.zeros(template.array[sl].shape, np.uint8), spacing=template.spacing,
                                   origin=origin, metadata={})
    moved = resample_onto(vol, roi_grid, transform, default=np.nan).array   # the ROI only, not the whole grid
    quality = quality_figures(template.array[sl], moved, metric, self_info)
    inside = quality["roi_inside"]
    if inside < 0.9:
        return dict(row, status="failed", metric=metric, reason=f"only {inside:.0%} of the ROI lies inside the scan "
                                                               "after registration (wrong field of view?)")
    moved = np.where(np.isfinite(moved), moved, np.nanmin(moved)).astype(np.float32)
    crop_grid = template.with_array(moved, spacing=template.spacing, origin=origin, metadata={})
    if spacing is not None:     # the same physical box at the chosen spacing (B-spline)
        crop_grid = resample(crop_grid, spacing, interpolation="bspline")
    lo, hi = float(crop_grid.array.min()), float(crop_grid.array.max())
    if hi <= lo:
        return dict(row, status="failed", metric=metric, reason="the ROI is constant after registration")
    out = crop_grid.with_array(((crop_grid.array - lo) / (hi - lo)).astype(np.float32),
                               metadata={"intensity": "minmax [0, 1]", "source": src.name})
    write_volume(out, cache / "images" / f"{stem}.{fmt}")
    params = np.asarray(transform.GetParameters(), float)
    row.update(status="ok", metric=metric, quality="ok" if quality["metric_ratio"] >= SUSPECT_RATIO else "suspect",
               metric_ratio=quality["metric_ratio"], roi_ncc=quality["roi_ncc"],
               transform={"type": "Euler3D", "angles_deg": np.rad2deg(params[:3]).tolist(),
                          "translation_mm": params[3:].tolist(), "centre_mm": list(transform.GetCenter())},
               image=f"images/{stem}.{fmt}", intensity_range=[lo, hi])
    if lab is not None:
        lv = read_label_volume(lab)
        full = resample_onto(lv, grid, transform, label=True).array
        crop = full[sl]
        total = int(np.count_nonzero(full))
        row["label_coverage"] = float(np.count_nonzero(crop) / total) if total else None
        lab_crop = template.with_array(crop.astype(np.int16), spacing=template.spacing, origin=origin,
                                       label_scheme=lv.label_scheme, metadata={})
        if spacing is not None:
            lab_crop = resample(lab_crop, spacing, label=True)
        write_volume(lab_crop, cache / "labels" / f"{stem}.{fmt}")
        row["label"] = f"labels/{stem}.{fmt}"
    row["files"] = [row["image"]] + ([row["label"]] if "label" in row else [])
    return row


def _qc_page(path: Path, folder: Path, rows: list[dict]) -> None:
    """Axial MIPs of every prepared case with their labels' outline, on one page."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    cols = int(np.ceil(np.sqrt(max(1, len(ok)))))
    rows_n = int(np.ceil(max(1, len(ok)) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(2.6 * cols, 2.8 * rows_n), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), ok):
        ax.imshow(read_volume(folder / r["image"]).array.max(axis=0), cmap="gray")
        if "label" in r:
            lab = read_volume(folder / r["label"], dtype=np.int16).array.max(axis=0)
            if lab.any():
                ax.contour(lab > 0, levels=[0.5], colors="red", linewidths=0.6)
        ax.set_title(f"{r['case']} ({r['quality']}, MI {r.get('metric_ratio', 0):.2f})", fontsize=7,
                     color="black" if r["quality"] == "ok" else "red")
    fig.suptitle("volgan prepare cow: axial MIP of each prepared case, label outline in red", fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.25)
    save_qc_figure(fig, path)


def prepare_cow(
    images: str | os.PathLike,
    out: str | os.PathLike,
    labels: Optional[str | os.PathLike] = None,
    template: Optional[str | os.PathLike] = None,
    build_template_iterations: int = 0,               # > 0: --build-template (group-wise, this many rounds)
    roi: Optional[Sequence[Sequence[int]]] = None,    # ((x0, x1), (y0, y1), (z0, z1)) on the template grid
    roi_around_labels_mm: Optional[float] = None,
    label_scheme: str = "topcow13",
    spacing_mm: Optional[float | Sequence[float]] = None,   # resample the crops to this spacing (x, y, z mm)
    workers: int = 1,
    fmt: str = "nii.gz",
    overwrite: bool = False,
    register_kw: Optional[dict] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Register every scan to the template, crop the ROI and write ``images/`` (min-max [0, 1]), ``labels/``,
    ``manifest.json`` (one row per case: transform, metric, quality flag, label coverage; failures listed under
    ``failed``), ``template`` (with --build-template) and ``qc_mips.png``.

    Resumable (:mod:`.runner`): finished cases wait in ``OUT.cache/`` (beside ``out``) with their recipe until the
    output folder is complete; a rerun with the same recipe, after an interruption or into the finished folder,
    skips every case whose scan (and label map) is unchanged. Another recipe into a finished folder needs
    ``overwrite``.
    """
    register_kw = dict(register_kw or {})
    if (template is None) == (build_template_iterations <= 0):
        raise VolGANError("pass exactly one of --template FILE and --build-template")
    if roi is not None and roi_around_labels_mm is not None:
        raise VolGANError("--roi and --roi-around-labels are alternatives: pass one of them")
    if roi_around_labels_mm is not None and labels is None:
        raise VolGANError("--roi-around-labels needs --labels")
    roi = tuple(tuple(int(v) for v in r) for r in (roi or PAPER_ROI)) if roi_around_labels_mm is None else None
    spacing = None
    if spacing_mm is not None:
        spacing = tuple(float(v) for v in np.broadcast_to(np.asarray(spacing_mm, float), (3,)))
        if not all(np.isfinite(v) and v > 0 for v in spacing):
            raise VolGANError(f"--spacing {spacing_mm}: voxel sizes must be positive numbers of mm")
    if not isinstance(workers, int) or workers < 1:
        raise VolGANError(f"--workers {workers}: must be an integer ≥ 1")
    pairs = _check_inputs(images, labels, template, roi or ((0, 1),) * 3, label_scheme)
    stamps = {case_id(f): file_stamp(f, lab) for f, lab in pairs}
    if template is not None:
        t_id = sha256_file(template)
    else:   # a built template is known by what it is built from; it is kept for a rerun of the same recipe
        t_id = hashlib.sha256(json.dumps({"built_from": [stamps[case_id(f)] for f, _ in pairs],
                                          "rounds": build_template_iterations, "register": register_kw},
                                         sort_keys=True, default=str).encode()).hexdigest()
    recipe = hashlib.sha256(json.dumps({"template": t_id, "roi": roi if roi is not None else
                                        f"around labels {roi_around_labels_mm} mm", "fmt": fmt, "register": register_kw,
                                        "spacing": spacing, "labels": labels is not None},
                                       sort_keys=True, default=str).encode()).hexdigest()[:16]
    store = CaseStore(out, "prepared-cow", recipe, overwrite, previous=lambda doc: doc.get("cases", []),
                      command="volgan prepare cow")
    if template is not None:
        tvol = read_volume(template)
    else:
        kept = store.reusable(f"template-{recipe}.nrrd", f"template.{fmt}")
        if kept is not None:
            tvol = read_volume(kept)
        else:
            vols = [read_volume(f) for f, _ in pairs]
            tvol = build_template(vols, rounds=build_template_iterations, **register_kw)
            write_volume(tvol, store.cache / f"template-{recipe}.nrrd")
    if roi is None:   # --roi-around-labels: the labels' bounding box on the template grid, grown by the margin
        previous = (store.previous_doc or {}).get("parameters", {}).get("roi_xyz")
        kept = store.reusable(f"roi-{recipe}.json")
        if kept is not None:
            roi = json.loads(kept.read_text(encoding="utf-8"))
        elif previous is not None:
            roi = previous
        else:
            roi = _roi_around_labels(pairs, tvol, roi_around_labels_mm, register_kw)
            atomic_write_json(store.cache / f"roi-{recipe}.json", roi)
        roi = tuple(tuple(int(v) for v in r) for r in roi)
    self_info = _self_information(tvol)
    items = [(case_id(f), stamps[case_id(f)],
              (f, lab, tvol, roi, store.cache, fmt, recipe, register_kw, self_info, spacing, stamps[case_id(f)]))
             for f, lab in pairs]
    results = store.run(_prepare_case, items, workers, "prepare cow", progress, cancel)
    ordered = [results[case_id(f)][0] for f, _ in pairs]
    good = [r for r in ordered if r["status"] == "ok"]
    failed = [r for r in ordered if r["status"] != "ok"]
    if not good:
        raise VolGANError(f"{images}: no case could be registered to the template ({failed[0]['reason']}); "
                          "check the template and the images' field of view")

    def write(tmp: Path) -> None:
        if template is None:
            write_volume(tvol, tmp / f"template.{fmt}")
        params = {"template": str(template) if template is not None else f"template.{fmt} (built)",
                  "template_id": t_id, "roi_xyz": roi, "intensity": "minmax [0, 1] per volume",
                  "spacing_mm": spacing or "the template's",
                  "label_scheme": label_scheme if labels is not None else None, "recipe": recipe,
                  "register": register_kw, "suspect_below_metric_ratio": SUSPECT_RATIO,
                  "template_self_information": self_info}
        write_manifest(tmp, good, kind="prepared-cow", parameters=params,
                       extra={"failed": [{k: r.get(k) for k in ("case", "source", "reason", "metric")} for r in failed]})
        _qc_page(tmp / "qc_mips.png", tmp, good)

    return store.assemble(write, results)


def _roi_around_labels(pairs, template: Volume, margin_mm: float, register_kw: dict):
    """Bounding box (template voxels) of every case's labels after registration, grown by ``margin_mm``."""
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for f, lab in pairs:
        t, _ = register_rigid(template, read_volume(f), **register_kw)
        moved = resample_onto(read_label_volume(lab), template, t, label=True).array
        idx = np.argwhere(moved > 0)
        if idx.size:
            lo = np.minimum(lo, idx.min(axis=0)[::-1])
            hi = np.maximum(hi, idx.max(axis=0)[::-1] + 1)
    if not np.all(np.isfinite(lo)):
        raise VolGANError("--roi-around-labels: no label lies on the template grid after registration")
    grow = np.ceil(margin_mm / np.asarray(template.spacing)).astype(int)
    size = np.asarray(template.shape[::-1])
    lo = np.maximum(0, lo.astype(int) - grow)
    hi = np.minimum(size, hi.astype(int) + grow)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi))
