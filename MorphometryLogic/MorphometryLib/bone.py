"""Exact bone micro-structure morphometry in physical units (Bouxsein et al. 2010 nomenclature).

Entry points
------------
- :func:`bone_morphometry` — the full panel for one image (a :class:`VolGANCore.Volume`, or an array plus
  ``spacing``), binary or grey-level with a threshold / Otsu, optionally inside a region-of-interest mask.
  Returns a flat ``dict`` whose keys carry the units (``"Tb.Th [mm]"``), ready for a table row.
- :func:`thickness_map` — the local-thickness map (bone or marrow phase) as a Volume in mm.
- :func:`segment_bone` — the binary bone mask that the panel uses, with what was assumed.

Parameters (``parameters=`` selects a subset by these names)
------------------------------------------------------------
``BV/TV``; ``BS`` (→ BS/BV, BS/TV; marching cubes, edge-aware); ``Tb.Th``, ``Tb.Sp`` (mean, SD, max;
Hildebrand & Rüegsegger maximal spheres painted as Fiji's LocalThickness, :mod:`.thickness`; ``bonej=True``:
BoneJ Thickness's map and statistics); ``Tb.N`` = 1/(Tb.Th + Tb.Sp);
``Conn`` (Euler characteristic, Δχ, connectivity, Conn.D; :mod:`.topology`); ``SMI``; ``DA`` (MIL
ellipsoid) and ``DA.ST`` (structure tensor), :mod:`.anisotropy`; ``BMD``, ``TMD`` (grey input only);
``plate`` (Parfitt plate-model Tb.Th/Tb.Sp/Tb.N from BV/TV and BS/TV, for comparison only).

References
----------
Bouxsein ML et al. Guidelines for assessment of bone microstructure in rodents using micro-computed
tomography. J Bone Miner Res 25:1468–1486, 2010.
Hildebrand T, Rüegsegger P. J Microsc 185:67–75, 1997. Odgaard A, Gundersen HJG. Bone 14:173–182, 1993.
Harrigan TP, Mann RW. J Mater Sci 19:761–767, 1984. Doube M et al. BoneJ. Bone 47:1076–1079, 2010.
Parfitt AM et al. Bone histomorphometry: standardization of nomenclature. J Bone Miner Res 2:595–610, 1987.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Sequence

import numpy as np

from VolGANCore.errors import VolGANError
from VolGANCore.names import BONE_PARAMETERS
from VolGANCore.progress import Progress
from VolGANCore.volume import Volume, check_3d, check_finite

from . import anisotropy, surface, thickness, topology

__all__ = ["ALL_PARAMETERS", "PRESETS", "bone_morphometry", "thickness_map", "segment_bone", "as_bone_volume"]

ALL_PARAMETERS = tuple(BONE_PARAMETERS)  # ("BV/TV", "BS", "Tb.Th", "Tb.Sp", "Tb.N", …, "BMD", "TMD", "plate")
DEFAULT_PARAMETERS = ("BV/TV", "BS", "Tb.Th", "Tb.Sp", "Tb.N", "Conn", "SMI", "DA", "DA.ST", "BMD", "TMD")

# Named thresholds: the MICCAI 2020 spongiosa paper's bone threshold, in its density units (docs/morphometry.md,
# "Differentiable counterparts"; docs/preparation.md).
PRESETS: dict[str, dict[str, float]] = {"miccai2020": {"threshold": 225.0, "width": 10.0}}


def as_bone_volume(data: Volume | np.ndarray, spacing: Sequence[float] | None = None, what: str = "image") -> Volume:
    """A :class:`Volume` from a Volume or an array (+ spacing (x, y, z) mm); warns when spacing is assumed.

    An array without ``spacing`` is measured with 1 mm isotropic voxels, and a ``UserWarning`` says so:
    every length, area and volume is then in voxel units.
    """
    if isinstance(data, Volume):
        return data if spacing is None else data.with_array(data.array, spacing=spacing)
    arr = check_3d(np.asarray(data), what)
    if spacing is None:
        warnings.warn(
            f"{what}: no voxel spacing given; assuming 1 mm isotropic (values are in voxel units; "
            "pass spacing=(x, y, z) in mm or a Volume)",
            UserWarning,
            stacklevel=3,
        )
        spacing = (1.0, 1.0, 1.0)
    return Volume(arr, spacing=spacing)


def segment_bone(
    image: Volume,
    threshold: float | str | None = None,
    otsu: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The bone mask of an image: ``image ≥ threshold``, Otsu's threshold, or a binary image as given.

    Parameters
    ----------
    image : Volume
    threshold : float or str, optional
        Bone threshold in image units, or a preset name (``"miccai2020"`` = 225).
    otsu : bool
        Use Otsu's threshold (scikit-image) instead.

    Returns
    -------
    mask : bool ndarray; info : dict with ``threshold`` (NaN for binary input) and ``grey`` (bool).

    Raises
    ------
    VolGANError
        A "binary" input (no threshold) with more than two distinct values.
    """
    arr = image.array
    check_finite(arr, "image")
    if isinstance(threshold, str):
        if threshold not in PRESETS:
            raise VolGANError(f"threshold: unknown preset {threshold!r} (use a number or one of {sorted(PRESETS)})")
        threshold = PRESETS[threshold]["threshold"]
    if threshold is not None and otsu:
        raise VolGANError("threshold and otsu: give one of them, not both")
    if otsu:
        from skimage.filters import threshold_otsu

        threshold = float(threshold_otsu(np.asarray(arr, np.float32)))
    if threshold is not None:
        return np.asarray(arr >= threshold), {"threshold": float(threshold), "grey": True}
    if arr.dtype == bool:
        return arr, {"threshold": float("nan"), "grey": False}
    lo, hi = arr.min(), arr.max()
    if lo != hi and np.any((arr != lo) & (arr != hi)):
        n_vals = np.unique(arr).size
        raise VolGANError(
            f"image: not binary ({n_vals} distinct values) and no threshold was given "
            "(pass threshold=<bone threshold in image units> / --threshold T, or otsu=True / --otsu)"
        )
    if lo != hi and lo != 0:
        warnings.warn(f"image: binary with values {[lo.item(), hi.item()]}; taking {hi.item()} as bone", UserWarning, stacklevel=2)
    bone = np.asarray(arr == hi) if (lo != hi or hi != 0) else np.zeros(arr.shape, bool)
    return bone, {"threshold": float("nan"), "grey": False}


def _roi_mask(mask: Volume | np.ndarray | None, image: Volume) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, Volume):
        if not mask.same_geometry(image):
            raise VolGANError(
                f"mask: geometry differs from the image (mask {mask.shape} at {mask.spacing} mm, origin "
                f"{tuple(round(o, 3) for o in mask.origin)}; image {image.shape} at {image.spacing} mm, origin "
                f"{tuple(round(o, 3) for o in image.origin)}) (resample the mask onto the image grid)"
            )
        arr = mask.array
    else:
        arr = check_3d(np.asarray(mask), "mask")
        if arr.shape != image.shape:
            raise VolGANError(f"mask: shape {arr.shape} differs from the image's {image.shape} (use a mask on the image grid)")
    roi = arr != 0
    if not roi.any():
        raise VolGANError("mask: the region of interest is empty (no non-zero voxel); give a mask that covers the bone")
    return roi


def _parameters(parameters: Iterable[str] | None, grey: bool) -> list[str]:
    if parameters is None:
        chosen = [p for p in DEFAULT_PARAMETERS if grey or p not in ("BMD", "TMD")]
    else:
        chosen = list(parameters)
        bad = [p for p in chosen if p not in ALL_PARAMETERS]
        if bad:
            raise VolGANError(f"parameters: unknown {bad} (choose from {list(ALL_PARAMETERS)})")
        if not grey and any(p in ("BMD", "TMD") for p in chosen):
            raise VolGANError("parameters: BMD and TMD need a grey-level image with a threshold (the input is binary)")
    if "Tb.N" in chosen:
        for need in ("Tb.Th", "Tb.Sp"):
            if need not in chosen:
                chosen.append(need)
    return chosen


def thickness_map(
    image: Volume | np.ndarray,
    spacing: Sequence[float] | None = None,
    threshold: float | str | None = None,
    otsu: bool = False,
    mask: Volume | np.ndarray | None = None,
    phase: str = "bone",
    bonej: bool = False,
    progress=None,
    cancel=None,
) -> Volume:
    """Local-thickness map (mm; diameter, Fiji LocalThickness) of the bone or marrow phase as a Volume.

    Parameters
    ----------
    image : Volume or ndarray (D, H, W)
        Binary or grey-level image (then give ``threshold`` or ``otsu``).
    spacing : 3 floats, optional
        (x, y, z) mm when ``image`` is an array.
    threshold, otsu
        See :func:`segment_bone`.
    mask : Volume or ndarray, optional
        Region of interest; the phase is intersected with it.
    phase : {"bone", "space"}
        ``"bone"`` → Tb.Th map, ``"space"`` → Tb.Sp map (marrow inside the ROI).
    bonej : bool
        BoneJ Thickness's map (Fiji's clean-up of the surface voxels; isotropic voxels only), see
        :func:`MorphometryLib.thickness.local_thickness`.

    Returns
    -------
    Volume (float32, same geometry), 0 outside the phase.
    """
    img = as_bone_volume(image, spacing)
    bone, _ = segment_bone(img, threshold, otsu)
    roi = _roi_mask(mask, img)
    if phase == "bone":
        struct = bone if roi is None else bone & roi
    elif phase == "space":
        struct = ~bone if roi is None else roi & ~bone
    else:
        raise VolGANError(f"phase: expected 'bone' or 'space', got {phase!r}")
    tmap = thickness.local_thickness(struct, img.array_spacing, progress=progress, cancel=cancel, bonej=bonej)
    md = dict(img.metadata)
    md["morphometry"] = f"local thickness ({phase}{', BoneJ' if bonej else ''}), mm"
    return img.with_array(tmap, label_scheme=None, metadata=md)


def bone_morphometry(
    image: Volume | np.ndarray,
    mask: Volume | np.ndarray | None = None,
    threshold: float | str | None = None,
    parameters: Iterable[str] | None = None,
    spacing: Sequence[float] | None = None,
    otsu: bool = False,
    tmd_erosion: int = 0,
    da_directions: int = 256,
    return_maps: bool = False,
    workers: int | None = None,
    bonej: bool = False,
    progress=None,
    cancel=None,
) -> dict[str, float] | tuple[dict[str, float], dict[str, Volume]]:
    """Bone micro-structure panel of one image, in physical units.

    Parameters
    ----------
    image : Volume or ndarray (D, H, W)
        Binary bone image, or grey-level with ``threshold``/``otsu``.
    mask : Volume or ndarray, optional
        Region of interest (same grid). TV, BV, the surface, thickness statistics, Δχ and densities are
        taken inside it.
    threshold : float or str, optional
        Bone threshold in image units (``image ≥ threshold`` is bone) or ``"miccai2020"`` (225).
    parameters : iterable of str, optional
        Subset of :data:`ALL_PARAMETERS`; default all that apply (BMD/TMD only for grey input).
    spacing : 3 floats, optional
        (x, y, z) mm for an array input (if missing: 1 mm assumed, with a warning).
    otsu : bool
        Otsu's threshold instead of ``threshold``.
    tmd_erosion : int
        Erode the bone mask by this many voxels (6-connected) before the TMD mean (partial-volume guard).
    da_directions : int
        Directions of the MIL fit.
    return_maps : bool
        Also return the thickness maps (``{"Tb.Th": Volume, "Tb.Sp": Volume}``).
    workers : int, optional
        Threads for the surface (slabs along the first axis; default one per CPU, 1 for small volumes).
    bonej : bool
        Tb.Th and Tb.Sp as BoneJ Thickness reports them: Fiji's clean-up of the surface voxels of the map, and
        the sample SD (n − 1) of ImageJ's statistics. Needs isotropic voxels. Default: the Fiji map without
        the clean-up (every value a maximal-sphere diameter) and the population SD.
    progress, cancel : optional
        Progress callback and cancel token (VolGANCore protocol).

    Returns
    -------
    dict (flat; keys carry units): ``BV/TV``, ``BV [mm^3]``, ``TV [mm^3]``, ``BS [mm^2]``, ``BS/BV [1/mm]``,
    ``BS/TV [1/mm]``, ``Tb.Th [mm]``, ``Tb.Th SD [mm]``, ``Tb.Th max [mm]``, ``Tb.Sp [mm]`` (…SD, max),
    ``Tb.N [1/mm]``, ``Euler``, ``Delta chi``, ``Connectivity``, ``Conn.D [1/mm^3]``, ``SMI``, ``DA``,
    ``DA (structure tensor)``, ``BMD [image units]``, ``TMD [image units]``, ``Threshold [image units]``;
    with ``"plate"``: ``Tb.Th (plate model) [mm]``, ``Tb.Sp (plate model) [mm]``, ``Tb.N (plate model) [1/mm]``.

    Raises
    ------
    VolGANError
        Empty or full bone (inside the ROI), empty ROI, a mask of another geometry, a non-binary image
        without threshold, unknown parameter names, ``bonej`` with anisotropic voxels.

    Example
    -------
    >>> v = Volume(np.pad(np.ones((8, 40, 40), bool), ((16, 16), (0, 0), (0, 0))), spacing=(0.1, 0.1, 0.1))
    >>> r = bone_morphometry(v, parameters=["BV/TV", "Tb.Th"])
    >>> round(r["BV/TV"], 3), round(r["Tb.Th [mm]"], 3)
    (0.2, 0.8)
    """
    img = as_bone_volume(image, spacing)
    bone, info = segment_bone(img, threshold, otsu)
    roi = _roi_mask(mask, img)
    chosen = _parameters(parameters, info["grey"])
    sp = np.asarray(img.array_spacing, np.float64)
    if bonej and ("Tb.Th" in chosen or "Tb.Sp" in chosen):
        thickness.bonej_pixel_width(sp)  # fail before the long steps
    vox = float(np.prod(sp))
    inside = bone if roi is None else bone & roi
    n_roi = bone.size if roi is None else int(np.count_nonzero(roi))
    n_bone = int(np.count_nonzero(inside))
    if n_bone == 0:
        raise VolGANError(
            "image: no bone voxel" + (" inside the mask" if roi is not None else "")
            + (f" at threshold {info['threshold']:g}" if info["grey"] else "")
            + " (lower the threshold, use --otsu, or check the mask)"
        )
    if n_bone == n_roi:
        raise VolGANError(
            "image: every voxel" + (" inside the mask" if roi is not None else "") + " is bone, so spacing, "
            "surface and thickness are undefined (raise the threshold or give a region that includes marrow)"
        )
    res: dict[str, float] = {}
    maps: dict[str, Volume] = {}
    res["Threshold [image units]"] = info["threshold"]
    res["TV [mm^3]"] = n_roi * vox
    res["BV [mm^3]"] = n_bone * vox
    res["BV/TV"] = n_bone / n_roi
    steps = len(chosen)
    surf = None
    with Progress(steps, "bone morphometry", progress, cancel) as prog:
        if "BS" in chosen or "SMI" in chosen or "DA" in chosen or "plate" in chosen:
            surf = surface.surface_statistics(bone, sp, roi, flow="SMI" in chosen, normal_bins="DA" in chosen,
                                              workers=workers)
        if "BS" in chosen or "plate" in chosen:
            bs = surf["area"]
            res["BS [mm^2]"] = bs
            res["BS/BV [1/mm]"] = bs / res["BV [mm^3]"]
            res["BS/TV [1/mm]"] = bs / res["TV [mm^3]"]
            prog.advance(1, "surface")
        for name, phase, struct in (
            ("Tb.Th", "bone", inside),
            ("Tb.Sp", "space", None),
        ):
            if name not in chosen:
                continue
            if struct is None:
                struct = ~bone if roi is None else roi & ~bone
            tmap = thickness.local_thickness(struct, sp, cancel=cancel, bonej=bonej)
            st = thickness.thickness_statistics(tmap, struct, ddof=1 if bonej else 0)
            res[f"{name} [mm]"] = st["mean"]
            res[f"{name} SD [mm]"] = st["sd"]
            res[f"{name} max [mm]"] = st["max"]
            if return_maps:
                maps[name] = img.with_array(tmap, label_scheme=None, metadata={"morphometry": f"{name} map, mm"})
            prog.advance(1, name)
        if "Tb.N" in chosen:
            res["Tb.N [1/mm]"] = 1.0 / (res["Tb.Th [mm]"] + res["Tb.Sp [mm]"])
            prog.advance(1, "Tb.N")
        if "Conn" in chosen:
            sub = inside
            if roi is not None:
                box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(roi))
                sub = inside[box]
            c = topology.connectivity(sub, sp, roi_volume_mm3=res["TV [mm^3]"])
            res["Euler"] = c["euler"]
            res["Delta chi"] = c["delta_chi"]
            res["Connectivity"] = c["connectivity"]
            res["Conn.D [1/mm^3]"] = c["conn_density_per_mm3"]
            prog.advance(1, "connectivity")
        if "SMI" in chosen:
            res["SMI"] = surface.structure_model_index(bone, sp, roi, stats=surf)
            prog.advance(1, "SMI")
        if "DA" in chosen:
            res["DA"] = anisotropy.mil_anisotropy(bone, sp, n_directions=da_directions, roi=roi,
                                                 pooled_normals=surf["pooled_normals"])["da"]
            prog.advance(1, "DA")
        if "DA.ST" in chosen:
            res["DA (structure tensor)"] = anisotropy.structure_tensor_anisotropy(bone, sp, roi=roi)["da"]
            prog.advance(1, "DA (structure tensor)")
        if "BMD" in chosen or "TMD" in chosen:
            arr = img.array
            sel = np.ones(bone.shape, bool) if roi is None else roi
            if "BMD" in chosen:
                res["BMD [image units]"] = float(np.mean(arr[sel], dtype=np.float64))
                prog.advance(1, "BMD")
            if "TMD" in chosen:
                b = inside
                if tmd_erosion > 0:
                    from scipy.ndimage import binary_erosion

                    eroded = binary_erosion(inside, iterations=int(tmd_erosion))
                    if eroded.any():
                        b = eroded
                    else:
                        warnings.warn("tmd_erosion: the eroded bone is empty; TMD uses the uneroded bone", UserWarning, stacklevel=2)
                res["TMD [image units]"] = float(np.mean(arr[b], dtype=np.float64))
                prog.advance(1, "TMD")
        if "plate" in chosen:
            bvtv, bstv = res["BV/TV"], res["BS/TV [1/mm]"]
            res["Tb.Th (plate model) [mm]"] = 2.0 * bvtv / bstv
            res["Tb.N (plate model) [1/mm]"] = bstv / 2.0
            res["Tb.Sp (plate model) [mm]"] = 2.0 / bstv - 2.0 * bvtv / bstv
            prog.advance(1, "plate model")
    return (res, maps) if return_maps else res
