"""Folder writers for the built-in phantoms: ``images/``, ``labels/`` or ``masks/`` and ``manifest.json``.

Folders are built under a temporary sibling and moved into place at the end
(:func:`VolGANCore.atomic.atomic_directory`), so an interrupted or cancelled run leaves nothing behind.
Files are deterministic: the same arguments give byte-identical files on CPU.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from VolGANCore import Progress, VolGANError, atomic_directory, write_manifest, write_volume
from VolGANCore.progress import CancelToken, ProgressCallback

from .bone import BoneRendering, extract_patches, image_measures, local_thickness, make_bone_phantom, mean_intercept_da
from .cow import CowVariantConfig, make_cow_phantom, validate_cow_geometry

__all__ = ["write_cow_dataset", "write_bone_dataset", "FORMATS"]

FORMATS = ("nii.gz", "nrrd", "mha")


def _check_common(n: Any, seed: Any, fmt: str) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise VolGANError(f"n: number of phantoms must be an integer ≥ 1, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise VolGANError(f"seed: must be an integer ≥ 0, got {seed!r}")
    if fmt not in FORMATS:
        raise VolGANError(f"format: choose one of {', '.join(FORMATS)}, got {fmt!r}")


def write_cow_dataset(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    shape: Sequence[int] = (32, 128, 128),          # (D, H, W) voxels
    spacing_mm: float | Sequence[float] = 0.6,      # voxel size (mm), 1 or 3 values (x y z)
    label_scheme: str = "topcow13",                 # "topcow13" or "aydin7"
    config: Optional[CowVariantConfig] = None,      # variant frequencies (literature defaults)
    fmt: str = "nii.gz",                            # file format of images and labels
    overwrite: bool = False,                        # replace a non-empty output folder
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Write ``n`` Circle-of-Willis TOF-MRA phantoms with TopCoW labels to ``out``.

    Parameters
    ----------
    out : path
        Output folder (new or empty unless ``overwrite``); gets ``images/``, ``labels/``, ``manifest.json``.
    n, seed : int
        Number of subjects and the dataset seed; subject ``i`` depends only on ``(seed, i)``.
    shape, spacing_mm, label_scheme, config, fmt
        See :func:`VolumetricGANLib.phantoms.cow.make_cow_phantom`.

    Returns
    -------
    Path
        The output folder.
    """
    _check_common(n, seed, fmt)
    shape, spacing = validate_cow_geometry(shape, spacing_mm)
    if label_scheme not in ("topcow13", "aydin7"):
        raise VolGANError(f"label_scheme: choose 'topcow13' or 'aydin7', got {label_scheme!r}")
    config = config or CowVariantConfig()
    config.validate()
    entries = []
    with atomic_directory(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        with Progress(n, "cow phantoms", progress, cancel) as p:
            for i in range(n):
                img, lab, params = make_cow_phantom(seed, shape=shape, spacing_mm=spacing, index=i,
                                                    label_scheme=label_scheme, config=config)
                case = f"cow_{i:04d}"
                write_volume(img, tmp / "images" / f"{case}.{fmt}")
                write_volume(lab, tmp / "labels" / f"{case}.{fmt}")
                entries.append({"case": case, "image": f"images/{case}.{fmt}", "label": f"labels/{case}.{fmt}",
                                **img.geometry_dict(), **params})
                p.advance(1, case)
        write_manifest(tmp, entries, kind="cow-tof-mra-phantom", parameters={
            "n": int(n), "seed": int(seed), "shape_dhw": list(shape), "spacing_xyz_mm": list(spacing),
            "label_scheme": label_scheme, "format": fmt, "variant_config": dataclasses.asdict(config),
        }, extra={"generator": "VolumetricGANLib.phantoms.cow.make_cow_phantom",
                  "variant_summary": _variant_summary(entries)})
    return Path(out)


def _variant_summary(entries: list[dict[str, Any]]) -> dict[str, float]:
    n = len(entries)
    v = [e["variant"] for e in entries]
    return {
        "complete_circle": sum(x["complete_circle"] for x in v) / n,
        "fetal_pca_any": sum(any(x["fetal_pca"].values()) for x in v) / n,
        "pcom_missing_both": sum(all(x["pcom_missing"].values()) for x in v) / n,
        "acom_absent": sum(x["acom"] == "absent" for x in v) / n,
        "third_a2": sum(x["third_a2"] for x in v) / n,
    }


def write_bone_dataset(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    size: int = 32,                     # patch edge (voxels)
    spacing_mm: float = 0.164,          # isotropic voxel size (mm)
    bvtv: float = 0.2,                  # target BV/TV
    tbth_mm: float = 0.38,              # target mean local thickness (mm)
    da: float = 1.3,                    # target MIL ratio z / xy
    rodness: float = 0.6,               # 0 plates … 1 rods
    bvtv_sd: float = 0.0,               # per-sample spread of the targets (0 = fixed)
    tbth_sd_mm: float = 0.0,
    da_sd: float = 0.0,
    patches: Optional[int] = None,      # if set: n blocks of block_size³, this many patches cut from each
    block_size: int = 96,               # block edge (voxels) in patch mode
    rendering: BoneRendering = BoneRendering(),
    fmt: str = "nii.gz",
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Write trabecular-bone phantoms (``images/``, ``masks/``, ``manifest.json``) to ``out``.

    By default ``n`` independent ``size``³ patches; with ``patches=K``, ``n`` larger blocks of
    ``block_size``³ are generated and ``K`` random patches are cut from each (``n·K`` files), the way
    patches are taken from real HR-pQCT scans. The manifest records the sampled targets, the field
    parameters and the measured ground truth (mask BV/TV, Tb.Th, DA; image BMD, TMD, BV/TV at 225).
    """
    _check_common(n, seed, fmt)
    if patches is not None:
        if not isinstance(patches, (int, np.integer)) or patches < 1:
            raise VolGANError(f"patches: number of patches per block must be an integer ≥ 1, got {patches!r}")
        if not isinstance(block_size, (int, np.integer)) or block_size < size:
            raise VolGANError(f"block_size: must be an integer ≥ the patch size {size}, got {block_size!r}")
    # validates every target up front (raises naming the argument)
    from .bone import validate_bone_targets

    validate_bone_targets(bvtv, tbth_mm, da, spacing_mm, size if patches is None else block_size, rodness)
    validate_bone_targets(bvtv, tbth_mm, da, spacing_mm, size, rodness)
    entries = []
    total = n if patches is None else n * patches
    with atomic_directory(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        with Progress(total, "bone phantoms", progress, cancel) as p:
            k = 0
            for i in range(n):
                img, mask, params = make_bone_phantom(
                    seed, size=size if patches is None else block_size, spacing_mm=spacing_mm, bvtv=bvtv,
                    tbth_mm=tbth_mm, da=da, rodness=rodness, bvtv_sd=bvtv_sd, tbth_sd_mm=tbth_sd_mm, da_sd=da_sd,
                    rendering=rendering, index=i)
                if patches is None:
                    items = [(img, mask, params)]
                else:
                    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(i), 0xE7]))
                    items = []
                    for pi, pm, corner in extract_patches(img, mask, size, patches, rng):
                        m = pm.array.astype(bool)
                        pp = {**params, "block_index": i, "patch_corner_dhw": list(corner),
                              "block_measured": params["measured"],
                              "measured": {"bvtv": float(m.mean()), "tbth_mm": local_thickness(m, spacing_mm),
                                           "da": mean_intercept_da(m)},
                              "image_measures": image_measures(pi.array)}
                        items.append((pi, pm, pp))
                for im, ms, pr in items:
                    case = f"bone_{k:05d}"
                    write_volume(im, tmp / "images" / f"{case}.{fmt}")
                    write_volume(ms, tmp / "masks" / f"{case}.{fmt}")
                    entries.append({"case": case, "image": f"images/{case}.{fmt}", "mask": f"masks/{case}.{fmt}",
                                    **im.geometry_dict(), **pr})
                    k += 1
                    p.advance(1, case)
        write_manifest(tmp, entries, kind="trabecular-bone-phantom", parameters={
            "n": int(n), "seed": int(seed), "size": int(size), "spacing_mm": float(spacing_mm),
            "bvtv": float(bvtv), "tbth_mm": float(tbth_mm), "da": float(da), "rodness": float(rodness),
            "bvtv_sd": float(bvtv_sd), "tbth_sd_mm": float(tbth_sd_mm), "da_sd": float(da_sd),
            "patches": patches, "block_size": int(block_size) if patches else None, "format": fmt,
            "rendering": dataclasses.asdict(rendering), "units": "MICCAI 2020 spongiosa units",
            "window": [-350.0, 1100.0], "bone_threshold": 225.0,
        }, extra={"generator": "VolumetricGANLib.phantoms.bone.make_bone_phantom"})
    return Path(out)
