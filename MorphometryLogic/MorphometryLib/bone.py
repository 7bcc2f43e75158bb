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

import dataclasses
import warnings
from typing import Any, Callable, Iterable, Sequence

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
    seg = _Segmentation.of(img, mask, threshold, otsu)
    chosen = _parameters(parameters, seg.grey)
    if bonej and ("Tb.Th" in chosen or "Tb.Sp" in chosen):
        thickness.bonej_pixel_width(seg.spacing)  # fail before the long steps
    _check_measurable(seg)
    res = _volume_fractions(seg)
    panel = _Panel(seg, tmd_erosion, da_directions, return_maps, bonej, cancel)
    with Progress(len(chosen), "bone morphometry", progress, cancel) as prog:
        panel.surface = _surface(seg, chosen, workers)
        for measure in _MEASURES:
            if any(p in chosen for p in measure.needs):
                res.update(measure.run(panel, res))
                prog.advance(1, measure.message)
    return (res, panel.maps) if return_maps else res


# ---------------------------------------------------------------------------------------------------------------
# the steps of bone_morphometry
@dataclasses.dataclass
class _Segmentation:
    """The image as every measure of the panel reads it: the bone mask, the region of interest and the spacing."""

    image: Volume
    bone: np.ndarray                 # bool, the whole image
    roi: np.ndarray | None           # bool region of interest (None: the whole image)
    threshold: float                 # NaN for a binary input
    grey: bool
    spacing: np.ndarray = dataclasses.field(init=False)   # (D, H, W) mm
    inside: np.ndarray = dataclasses.field(init=False)    # bone inside the region
    n_roi: int = dataclasses.field(init=False)
    n_bone: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.spacing = np.asarray(self.image.array_spacing, np.float64)
        self.inside = self.bone if self.roi is None else self.bone & self.roi
        self.n_roi = self.bone.size if self.roi is None else int(np.count_nonzero(self.roi))
        self.n_bone = int(np.count_nonzero(self.inside))

    @classmethod
    def of(cls, img: Volume, mask, threshold, otsu: bool) -> "_Segmentation":
        bone, info = segment_bone(img, threshold, otsu)
        return cls(img, bone, _roi_mask(mask, img), info["threshold"], info["grey"])

    @property
    def marrow(self) -> np.ndarray:
        """Marrow (not bone) inside the region."""
        return ~self.bone if self.roi is None else self.roi & ~self.bone

    @property
    def region(self) -> np.ndarray:
        """The region as a mask (all voxels without a ROI)."""
        return np.ones(self.bone.shape, bool) if self.roi is None else self.roi


def _check_measurable(seg: _Segmentation) -> None:
    """Refuse empty or full bone (inside the ROI): spacing, surface and thickness would be undefined."""
    where = " inside the mask" if seg.roi is not None else ""
    if seg.n_bone == 0:
        raise VolGANError(
            "image: no bone voxel" + where + (f" at threshold {seg.threshold:g}" if seg.grey else "")
            + " (lower the threshold, use --otsu, or check the mask)"
        )
    if seg.n_bone == seg.n_roi:
        raise VolGANError(
            "image: every voxel" + where + " is bone, so spacing, "
            "surface and thickness are undefined (raise the threshold or give a region that includes marrow)"
        )


def _volume_fractions(seg: _Segmentation) -> dict[str, float]:
    """Threshold, TV, BV and BV/TV: the part of the panel every call returns."""
    vox = float(np.prod(seg.spacing))
    return {"Threshold [image units]": seg.threshold, "TV [mm^3]": seg.n_roi * vox, "BV [mm^3]": seg.n_bone * vox,
            "BV/TV": seg.n_bone / seg.n_roi}


def _surface(seg: _Segmentation, chosen: list[str], workers: int | None) -> dict | None:
    """The bone surface statistics, once, when a parameter needs them (BS, SMI, DA, plate)."""
    if "BS" in chosen or "SMI" in chosen or "DA" in chosen or "plate" in chosen:
        return surface.surface_statistics(seg.bone, seg.spacing, seg.roi, flow="SMI" in chosen,
                                          normal_bins="DA" in chosen, workers=workers)
    return None


@dataclasses.dataclass
class _Panel:
    """What the measures share: the segmentation, the options, the surface (once) and the thickness maps."""

    seg: _Segmentation
    tmd_erosion: int
    da_directions: int
    return_maps: bool
    bonej: bool
    cancel: Any
    surface: dict | None = None
    maps: dict[str, Volume] = dataclasses.field(default_factory=dict)


def _surface_density(panel: _Panel, res: dict) -> dict[str, float]:
    bs = panel.surface["area"]
    return {"BS [mm^2]": bs, "BS/BV [1/mm]": bs / res["BV [mm^3]"], "BS/TV [1/mm]": bs / res["TV [mm^3]"]}


def _thickness(name: str, panel: _Panel) -> dict[str, float]:
    """Mean, SD and max of the local thickness of the bone (Tb.Th) or the marrow (Tb.Sp); keeps the map if asked."""
    seg = panel.seg
    struct = seg.inside if name == "Tb.Th" else seg.marrow
    tmap = thickness.local_thickness(struct, seg.spacing, cancel=panel.cancel, bonej=panel.bonej)
    st = thickness.thickness_statistics(tmap, struct, ddof=1 if panel.bonej else 0)
    if panel.return_maps:
        panel.maps[name] = seg.image.with_array(tmap, label_scheme=None, metadata={"morphometry": f"{name} map, mm"})
    return {f"{name} [mm]": st["mean"], f"{name} SD [mm]": st["sd"], f"{name} max [mm]": st["max"]}


def _bone_thickness(panel: _Panel, res: dict) -> dict[str, float]:
    return _thickness("Tb.Th", panel)


def _marrow_thickness(panel: _Panel, res: dict) -> dict[str, float]:
    return _thickness("Tb.Sp", panel)


def _trabecular_number(panel: _Panel, res: dict) -> dict[str, float]:
    return {"Tb.N [1/mm]": 1.0 / (res["Tb.Th [mm]"] + res["Tb.Sp [mm]"])}


def _connectivity(panel: _Panel, res: dict) -> dict[str, float]:
    """Euler characteristic, Δχ, connectivity and its density, on the bone in the ROI's bounding box."""
    seg = panel.seg
    sub = seg.inside
    if seg.roi is not None:
        box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(seg.roi))
        sub = seg.inside[box]
    c = topology.connectivity(sub, seg.spacing, roi_volume_mm3=res["TV [mm^3]"])
    return {"Euler": c["euler"], "Delta chi": c["delta_chi"], "Connectivity": c["connectivity"],
            "Conn.D [1/mm^3]": c["conn_density_per_mm3"]}


def _smi(panel: _Panel, res: dict) -> dict[str, float]:
    seg = panel.seg
    return {"SMI": surface.structure_model_index(seg.bone, seg.spacing, seg.roi, stats=panel.surface)}


def _mil_anisotropy(panel: _Panel, res: dict) -> dict[str, float]:
    seg = panel.seg
    return {"DA": anisotropy.mil_anisotropy(seg.bone, seg.spacing, n_directions=panel.da_directions, roi=seg.roi,
                                           pooled_normals=panel.surface["pooled_normals"])["da"]}


def _structure_tensor_anisotropy(panel: _Panel, res: dict) -> dict[str, float]:
    seg = panel.seg
    return {"DA (structure tensor)": anisotropy.structure_tensor_anisotropy(seg.bone, seg.spacing, roi=seg.roi)["da"]}


def _bmd(panel: _Panel, res: dict) -> dict[str, float]:
    """Mean image value inside the region."""
    return {"BMD [image units]": float(np.mean(panel.seg.image.array[panel.seg.region], dtype=np.float64))}


def _tmd(panel: _Panel, res: dict) -> dict[str, float]:
    """Mean image value of the bone inside the region, eroded by ``tmd_erosion`` voxels (partial-volume guard)."""
    b = panel.seg.inside
    if panel.tmd_erosion > 0:
        from scipy.ndimage import binary_erosion

        eroded = binary_erosion(panel.seg.inside, iterations=int(panel.tmd_erosion))
        if eroded.any():
            b = eroded
        else:
            warnings.warn("tmd_erosion: the eroded bone is empty; TMD uses the uneroded bone", UserWarning,
                          stacklevel=3)
    return {"TMD [image units]": float(np.mean(panel.seg.image.array[b], dtype=np.float64))}


def _plate_model(panel: _Panel, res: dict) -> dict[str, float]:
    """Parfitt's plate-model Tb.Th, Tb.N, Tb.Sp from BV/TV and BS/TV."""
    bvtv, bstv = res["BV/TV"], res["BS/TV [1/mm]"]
    return {"Tb.Th (plate model) [mm]": 2.0 * bvtv / bstv, "Tb.N (plate model) [1/mm]": bstv / 2.0,
            "Tb.Sp (plate model) [mm]": 2.0 / bstv - 2.0 * bvtv / bstv}


@dataclasses.dataclass(frozen=True)
class _Measure:
    needs: tuple[str, ...]                          # runs when any of these parameters is chosen
    message: str                                    # its progress step
    run: Callable[[_Panel, dict], dict[str, float]]  # (panel, results so far) -> new results


# the panel in the order of its keys and progress steps
_MEASURES = (
    _Measure(("BS", "plate"), "surface", _surface_density),
    _Measure(("Tb.Th",), "Tb.Th", _bone_thickness),
    _Measure(("Tb.Sp",), "Tb.Sp", _marrow_thickness),
    _Measure(("Tb.N",), "Tb.N", _trabecular_number),
    _Measure(("Conn",), "connectivity", _connectivity),
    _Measure(("SMI",), "SMI", _smi),
    _Measure(("DA",), "DA", _mil_anisotropy),
    _Measure(("DA.ST",), "DA (structure tensor)", _structure_tensor_anisotropy),
    _Measure(("BMD",), "BMD", _bmd),
    _Measure(("TMD",), "TMD", _tmd),
    _Measure(("plate",), "plate model", _plate_model),
)
