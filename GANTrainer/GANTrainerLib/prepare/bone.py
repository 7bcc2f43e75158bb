"""``volgan prepare bone``: HR-pQCT / micro-CT scans -> 32³ spongiosa patches in the paper's density units.

Steps per scan: resample to the paper's 164 µm (cubic B-spline for images, nearest neighbour for masks), calibrate
the grey values to density, build a spongiosa mask when none is given, and cut ``size``³ patches on a ``stride``
grid, each lying fully inside the mask and with a bone fraction of at least ``min_fill``.

Density units (docs/preparation.md). The spongiosa preset's window [-350, 1100] and bone threshold 225 are in the
MICCAI 2020 paper's units, Scanco's calibrated density in mg HA/cm³: the paper's samples give BMD 122, TMD 338 and
marrow ≈ 74 (docs/generation.md, "Built-in phantoms"), HR-pQCT values in mg HA/cm³. Images already in mg HA/cm³ need
no calibration; other grey values are mapped linearly with ``calibration=(slope, intercept)`` (density = slope·value +
intercept). Hounsfield units are mapped with Scanco's rule: µ = µ_water·(1 + HU/1000), density = slope_µ·µ +
intercept_µ, with the XtremeCT II defaults µ_water = 0.2409 /cm, slope_µ = 1603.51904 mg HA/cm³·cm, intercept_µ =
-391.209015 mg HA/cm³ (the values an XtremeCT II AIM header carries; ITK's IOScanco module tests read these same
numbers), i.e. density ≈ 0.38629·HU − 4.92.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from VolGANCore import Volume, VolGANError
from VolGANCore.atomic import atomic_path
from VolGANCore.dataset import case_id, list_volumes, write_manifest
from VolGANCore.errors import InputFileError
from VolGANCore.geometry import resample
from VolGANCore.io import read_volume, write_volume
from VolGANCore.progress import CancelToken, ProgressCallback

from .runner import CaseStore, file_stamp

__all__ = ["BONE_THRESHOLD", "SCANCO_XCT2", "hu_to_density", "parse_calibration", "resample_to_spacing",
           "spongiosa_mask", "cut_patches", "prepare_bone"]

BONE_THRESHOLD = 225.0     # mg HA/cm³: the paper's bone threshold (docs/preparation.md)
# Scanco XtremeCT II calibration: linear attenuation of water (/cm), density = slope·µ + intercept (mg HA/cm³)
SCANCO_XCT2 = {"mu_water": 0.2409, "slope": 1603.51904, "intercept": -391.209015}
UNITS = "mg HA/cm³ (MICCAI 2020 density units)"


def hu_to_density(mu_water: float = SCANCO_XCT2["mu_water"], slope: float = SCANCO_XCT2["slope"],
                  intercept: float = SCANCO_XCT2["intercept"]) -> tuple[float, float]:
    """(a, b) with density = a·HU + b, from Scanco's attenuation calibration (module docstring)."""
    return slope * mu_water / 1000.0, slope * mu_water + intercept


def parse_calibration(text: str) -> tuple[float, float]:
    """``"slope,intercept"`` -> two floats; a readable error otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        slope, intercept = (float(p) for p in parts)
    except ValueError:
        raise VolGANError(f"--calibration '{text}': expected two numbers 'slope,intercept' "
                          "(density = slope·value + intercept), e.g. 1.0,0.0") from None
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise VolGANError(f"--calibration '{text}': the slope must be a non-zero finite number")
    return slope, intercept


def resample_to_spacing(volume: Volume, spacing_mm: float, label: bool = False) -> Volume:
    """Isotropic ``spacing_mm`` over the same extent: cubic B-spline for grey values, nearest for masks."""
    if np.allclose(volume.spacing, spacing_mm, rtol=1e-6, atol=0):
        return volume
    return resample(volume, (spacing_mm,) * 3, label=label, interpolation="bspline")


def _ball_close(mask: np.ndarray, radius_vox: float) -> np.ndarray:
    """Morphological closing with a Euclidean ball (distance transforms; the border is padded so it closes too)."""
    r = int(np.ceil(radius_vox)) + 1
    padded = np.pad(mask, r)
    dilated = ndi.distance_transform_edt(~padded) <= radius_vox
    closed = ndi.distance_transform_edt(dilated) > radius_vox
    return closed[(slice(r, -r),) * 3]


def spongiosa_mask(density: Volume, threshold: float = BONE_THRESHOLD, closing_mm: float = 1.0,
                   cortex_mm: float = 1.0) -> Volume:
    """Spongiosa mask of a calibrated scan: the periosteal volume (bone above ``threshold``, closed with a ball of
    ``closing_mm``, holes filled, largest component) eroded by ``cortex_mm`` to remove the cortex."""
    spacing = float(np.mean(density.spacing))
    bone = density.array > threshold
    if not bone.any():
        raise VolGANError(f"no voxel above the bone threshold {threshold:g} {UNITS}: is the image calibrated? "
                          "(pass --calibration or --from-hu)")
    closed = _ball_close(bone, closing_mm / spacing)
    filled = np.stack([ndi.binary_fill_holes(s) for s in closed])      # slice-wise: open ends of a cut bone
    filled = ndi.binary_fill_holes(filled)
    lab, n = ndi.label(filled)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        filled = lab == int(np.argmax(sizes))
    inner = ndi.distance_transform_edt(np.pad(filled, 1))[(slice(1, -1),) * 3] > cortex_mm / spacing
    return density.with_array(inner.astype(np.uint8))


def cut_patches(mask: np.ndarray, bone: np.ndarray, size: int, stride: int, min_fill: float) -> list[tuple]:
    """Corners (z, y, x) of ``size``³ patches on a ``stride`` grid lying fully inside ``mask`` whose bone fraction
    is at least ``min_fill``, with that fraction: [((z, y, x), bvtv), ...]."""
    out = []
    shape = mask.shape
    for z in range(0, shape[0] - size + 1, stride):
        for y in range(0, shape[1] - size + 1, stride):
            for x in range(0, shape[2] - size + 1, stride):
                sl = (slice(z, z + size), slice(y, y + size), slice(x, x + size))
                if not mask[sl].all():
                    continue
                bvtv = float(bone[sl].mean())
                if bvtv >= min_fill:
                    out.append(((z, y, x), bvtv))
    return out


def _same_grid(a, b, tol: float = 1e-4) -> bool:
    return (tuple(a.GetSize()) == tuple(b.GetSize())
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-5, atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=1e-5, atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def scan_header(path: Path):
    """The header of a 3-D scan (size, spacing, origin, direction) without its voxels; one clear error for an
    unreadable file or one with fewer than three non-singleton axes (prepare bone and cow)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputFileError(path, "cannot be read as an image", "the file is corrupt or truncated; re-export it") from None
    dims = [s for s in reader.GetSize() if s > 1]
    if reader.GetDimension() < 3 or len(dims) < 3:
        raise InputFileError(path, f"is {len(dims)}-D with size {tuple(reader.GetSize())}",
                             "a 3-D scan is needed; stack the slices into one volume file")
    return reader


def _check_inputs(images: str | os.PathLike, masks: Optional[str | os.PathLike], size: int, stride: int,
                  spacing_mm: float, min_fill: float, cortex_mm: float) -> list[tuple[Path, Optional[Path]]]:
    """Every problem that can be seen before any work: refuse it with one line naming the file and the fix."""
    if not (isinstance(size, int) and size >= 4):
        raise VolGANError(f"--size {size}: the patch edge must be an integer ≥ 4 voxels")
    if not (isinstance(stride, int) and stride >= 1):
        raise VolGANError(f"--stride {stride}: must be an integer ≥ 1 voxel")
    if not (np.isfinite(spacing_mm) and spacing_mm > 0):
        raise VolGANError(f"--spacing {spacing_mm}: must be a positive number of mm (the paper's is 0.164)")
    if not (0.0 <= min_fill <= 1.0):
        raise VolGANError(f"--min-fill {min_fill}: a bone fraction between 0 and 1")
    if not (np.isfinite(cortex_mm) and cortex_mm >= 0):
        raise VolGANError(f"--cortex-mm {cortex_mm}: must be ≥ 0 mm")
    files = list_volumes(images)
    mask_files = {case_id(p): p for p in list_volumes(masks)} if masks is not None else {}
    pairs = []
    for f in files:
        head = scan_header(f)
        extent = np.asarray(head.GetSize()[:3]) * np.asarray(head.GetSpacing()[:3])
        if np.any(extent < size * spacing_mm):
            raise InputFileError(f, f"spans {tuple(np.round(extent, 2))} mm, smaller than one {size}³ patch at "
                                    f"{spacing_mm} mm", "use a larger scan, or a smaller --size")
        m = None
        if masks is not None:
            m = mask_files.get(case_id(f))
            if m is None:
                raise InputFileError(f, f"has no mask in {masks} (same file name expected)",
                                     "add its mask or leave out --masks to build masks automatically")
            if not _same_grid(head, scan_header(m)):
                raise InputFileError(m, f"is on another grid than {f.name} (size, spacing, origin or direction differ)",
                                     "resample the mask onto its image first")
        pairs.append((f, m))
    return pairs


def _montage(path: Path, tiles: list[tuple[np.ndarray, str]], window=(-350.0, 1100.0)) -> None:
    """QC montage: the middle axial slice of (up to 64) patches with their BV/TV."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    tiles = tiles[:64]
    cols = int(np.ceil(np.sqrt(max(1, len(tiles)))))
    rows = int(np.ceil(max(1, len(tiles)) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (patch, title) in zip(axes.ravel(), tiles):
        ax.imshow(patch[patch.shape[0] // 2], cmap="gray", vmin=window[0], vmax=window[1])
        ax.set_title(title, fontsize=6)
    fig.suptitle(f"volgan prepare bone: {len(tiles)} patch(es), middle axial slice, window {window}", fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.3)
    save_qc_figure(fig, path)


def save_qc_figure(fig, path) -> None:
    """Write a QC page atomically (a reader never sees half a PNG) and close the figure (prepare bone and cow)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _prepare_scan(args) -> dict:
    """One scan -> its patches (images/ and masks/ under the cache folder) and its record: the manifest's source row
    with its patch rows (``patches``) and files."""
    src, msrc, cache, fmt, recipe, stamp, slope, intercept, spacing_mm, closing_mm, cortex_mm, size, stride, min_fill = args
    vol = read_volume(src)
    dens = resample_to_spacing(vol.with_array(vol.array * np.float32(slope) + np.float32(intercept)), spacing_mm)
    if msrc is not None:
        mvol = read_volume(msrc, dtype=np.uint8)
        mask = resample_to_spacing(mvol, spacing_mm, label=True).array > 0
    else:
        mask = spongiosa_mask(dens, closing_mm=closing_mm, cortex_mm=cortex_mm).array > 0
    bone = dens.array > BONE_THRESHOLD
    found = cut_patches(mask, bone, size, stride, min_fill)
    stem = case_id(src)
    patches, files = [], []
    for k, ((z, y, x), bvtv) in enumerate(found):
        sl = (slice(z, z + size), slice(y, y + size), slice(x, x + size))
        origin = tuple(float(v) for v in dens.index_to_physical((x, y, z)))
        name = f"{stem}_p{k:04d}.{fmt}"
        patch = dens.with_array(dens.array[sl].astype(np.float32), spacing=dens.spacing, origin=origin,
                                metadata={"units": UNITS, "source": src.name})
        write_volume(patch, cache / "images" / name)
        write_volume(patch.with_array(bone[sl].astype(np.uint8)), cache / "masks" / name)
        patches.append({"case": case_id(name), "image": f"images/{name}", "mask": f"masks/{name}",
                        "source": src.name, "corner_zyx": [z, y, x], "origin_mm": origin, "bvtv": bvtv})
        files += [f"images/{name}", f"masks/{name}"]
    return {"case": stem, "source": src.name, "recipe": recipe, "stamp": stamp, "status": "ok",
            "mask": msrc.name if msrc is not None else "automatic",
            "shape_in": list(vol.shape), "spacing_in_mm": list(vol.spacing),
            "shape_resampled": list(dens.shape), "mask_fraction": float(mask.mean()),
            "bvtv_in_mask": float(bone[mask].mean()) if mask.any() else None,
            "patch_count": len(found), "patches": patches, "files": files, "note": f"{len(found)} patch(es)"}


def _previous_records(doc: dict) -> list[dict]:
    """The per-scan records of a finished ``prepare bone`` output (its ``sources`` with their patches and files)."""
    by_source: dict[str, list] = {}
    for c in doc.get("cases", []):
        by_source.setdefault(c.get("source"), []).append(c)
    out = []
    for rec in doc.get("sources", []):
        patches = by_source.get(rec.get("source"), [])
        out.append(dict(rec, patches=patches, files=[c[k] for c in patches for k in ("image", "mask")]))
    return out


def prepare_bone(
    images: str | os.PathLike,
    out: str | os.PathLike,
    masks: Optional[str | os.PathLike] = None,
    spacing_mm: float = 0.164,                        # the paper's isotropic voxel size
    calibration: Optional[Sequence[float]] = None,    # (slope, intercept): density = slope·value + intercept
    from_hu: bool = False,                            # images in HU: Scanco XtremeCT II rule (module docstring)
    cortex_mm: float = 1.0,                           # erosion removing the cortex from an automatic mask
    closing_mm: float = 1.0,                          # closing radius of the periosteal surface
    stride: Optional[int] = None,                     # patch grid step in voxels (default: size)
    min_fill: float = 0.02,                           # least bone fraction (BV/TV at 225) of a kept patch
    size: int = 32,
    fmt: str = "nii.gz",
    overwrite: bool = False,
    workers: int = 1,                                 # scans prepared in parallel
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Write ``images/`` (density patches), ``masks/`` (bone at 225), ``manifest.json`` and ``qc_montage.png``.

    Inputs are checked before anything is written (3-D scans, masks on the image's grid, patch fits); the output
    folder appears only when complete. The manifest lists each patch's source file, its corner (z, y, x) on the
    resampled grid, its physical origin and its BV/TV; per source the calibration and the mask's volume.

    Resumable (:mod:`.runner`): finished scans wait in ``OUT.cache/`` until the output is complete; a rerun with the
    same recipe, after an interruption or into the finished folder, skips every scan (and mask) that is unchanged.
    Another recipe into a finished folder needs ``overwrite``.
    """
    stride = size if stride is None else stride
    if calibration is not None and from_hu:
        raise VolGANError("--calibration and --from-hu are alternatives: pass one of them")
    if not isinstance(workers, int) or workers < 1:
        raise VolGANError(f"--workers {workers}: must be an integer ≥ 1")
    slope, intercept = hu_to_density() if from_hu else (tuple(calibration) if calibration is not None else (1.0, 0.0))
    pairs = _check_inputs(images, masks, size, stride, spacing_mm, min_fill, cortex_mm)
    params = {"spacing_mm": spacing_mm, "units": UNITS, "calibration": {"slope": slope, "intercept": intercept,
              "from_hu": bool(from_hu), "scanco": SCANCO_XCT2 if from_hu else None},
              "bone_threshold": BONE_THRESHOLD, "cortex_mm": cortex_mm, "closing_mm": closing_mm,
              "size": size, "stride": stride, "min_fill": min_fill,
              "masks": str(masks) if masks is not None else "automatic"}
    recipe = hashlib.sha256(json.dumps({k: v for k, v in params.items() if k != "masks"} | {
        "fmt": fmt, "masks": masks is not None}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    params["recipe"] = recipe
    store = CaseStore(out, "prepared-bone", recipe, overwrite, previous=_previous_records,
                      command="volgan prepare bone")
    items = []
    for src, msrc in pairs:
        stamp = file_stamp(src, msrc)
        items.append((case_id(src), stamp, (src, msrc, store.cache, fmt, recipe, stamp, slope, intercept, spacing_mm,
                                            closing_mm, cortex_mm, size, stride, min_fill)))
    results = store.run(_prepare_scan, items, workers, "prepare bone", progress, cancel)
    records = [results[case_id(src)][0] for src, _ in pairs]
    cases = [c for rec in records for c in rec["patches"]]
    if not cases:
        raise VolGANError(f"{images}: no {size}³ patch lies fully inside the spongiosa mask with BV/TV ≥ {min_fill} "
                          "(lower --min-fill or --cortex-mm, or pass --masks)")
    sources = [dict({k: v for k, v in rec.items() if k not in ("patches", "files", "note", "patch_count")},
                    patches=len(rec["patches"])) for rec in records]

    def write(tmp: Path) -> None:
        write_manifest(tmp, cases, kind="prepared-bone", parameters=params, extra={"sources": sources})
        tiles = [(read_volume(tmp / c["image"]).array, f"{case_id(c['source'])} #{c['case'].rsplit('_p', 1)[-1]} "
                                                        f"{c['bvtv']:.2f}") for c in cases[:64]]
        _montage(tmp / "qc_montage.png", tiles)

    return store.assemble(write, results)
