"""Trabecular-bone (spongiosa) phantom with controllable BV/TV, trabecular thickness and anisotropy.

Structure model
---------------
Level sets of band-pass filtered, anisotropic Gaussian random fields. Two independent fields ``G1``,
``G2`` are drawn once per sample (white noise shaped in Fourier space by a Gaussian shell around the
wavenumber ``k0``; the wave-vector's z component is scaled by ``a`` so that structures are elongated along z,
the preferred direction of vertebral trabeculae). The bone is ::

    f = sqrt(G1**2 + rodness * G2**2),     bone = f < quantile(f, BV/TV)

``rodness = 0`` gives thickened zero-level surfaces of ``G1`` (plate-like bone), ``rodness = 1`` the
neighbourhood of the intersection curves of the zero sets of ``G1`` and ``G2`` (rod-like bone); values in
between give struts of elliptical cross-section (the plate–rod continuum of Stauber & Müller 2006).
Level-set models of this kind are the standard random-field description of porous media (Teubner 1991;
Roberts 1997, "Statistical reconstruction of three-dimensional porous media from two-dimensional images").
Why this model: BV/TV is met *exactly* by construction (threshold at a quantile), the thickness scales as
``1/k0`` and the mean-intercept-length ratio along z as ``a`` (an affine stretch scales intercepts), so
both are reached by a short fixed-point iteration on the *same* white noise, which keeps the
dependence smooth; the structure is defined on a continuous field, so partial volumes at the surface come
from the field itself and there are no grid or checkerboard artefacts.

Measures (ground truth in the manifest)
---------------------------------------
- BV/TV: voxel count of the mask / patch volume.
- Tb.Th: mean local thickness (Hildebrand & Rüegsegger 1997, J Microsc 185:67-75): for every bone voxel
  the diameter ``2 r`` of the largest ball that contains it and fits in the bone, ``r`` = Euclidean
  distance from the ball's centre voxel to the nearest background voxel centre (the BoneJ convention; the
  thinnest possible structure, one voxel, measures two voxel widths).
- DA: ratio of the mean intercept length (Harrigan & Mann 1984, J Mater Sci 19:761-767) along z to its
  mean along x and y; 1 = isotropic, > 1 = elongated along z.

Rendering (MICCAI 2020 spongiosa units, Iarussi et al. 2020; docs/generation.md, "Built-in phantoms")
------------------------------------------------------------------------------------------------------
``image = marrow + (tissue - marrow) * occupancy`` with a partial-volume occupancy from the field, blurred
by a Gaussian point-spread function (HR-pQCT XCT-I, 164 µm voxels; MacNeil & Boyd 2007, Med Eng Phys
29:1096-1105), plus spatially correlated Gaussian noise. Defaults are calibrated so that the statistics at
the paper's bone threshold 225 match the published generator's samples: BV/TV@225 ≈ 0.18 ± 0.075,
BMD ≈ 122 ± 35, TMD ≈ 338 ± 27, marrow ≈ 74 ± 16 (docs/generation.md).

References
----------
Hildebrand T, Rüegsegger P. A new method for the model-independent assessment of thickness in
three-dimensional images. J Microsc 1997;185:67-75.
Harrigan TP, Mann RW. Characterization of microstructural anisotropy in orthotropic materials using a
second rank tensor. J Mater Sci 1984;19:761-767.
Stauber M, Müller R. Volumetric spatial decomposition of trabecular bone into rods and plates.
Bone 2006;38:475-484.
Iarussi E, et al. Generative modelling of 3D spongiosa. MICCAI 2020 (anchor of this project).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np
from scipy import ndimage as ndi

from VolGANCore import Volume, VolGANError

__all__ = [
    "BoneRendering",
    "make_bone_phantom",
    "bone_structure",
    "local_thickness",
    "mean_intercept_da",
    "image_measures",
    "extract_patches",
    "validate_bone_targets",
]

BONE_THRESHOLD = 225.0       # bone threshold of the MICCAI 2020 paper (its units)
WINDOW = (-350.0, 1100.0)    # intensity window mapped to [-1, 1] for the networks


@dataclasses.dataclass(frozen=True)
class BoneRendering:
    """HR-pQCT-like rendering parameters (means; per-sample values are drawn around them)."""

    tissue: float = 385.0             # mean tissue mineral density of fully mineralised bone (paper units)
    tissue_sd: float = 30.0           # between-sample spread of the tissue density
    marrow: float = 60.0              # marrow level before partial volume (below-225 mean ≈ 74, docs/generation.md)
    marrow_sd: float = 12.0           # between-sample spread of the marrow level
    psf_sigma_mm: float = 0.06        # Gaussian PSF sigma in mm (≈ 0.37 voxel at 164 µm)
    noise_sd: float = 24.0            # noise standard deviation (paper units) after correlation
    noise_corr_mm: float = 0.09       # Gaussian correlation length of the noise in mm
    marrow_texture_sd: float = 8.0    # slow marrow inhomogeneity (paper units)


# --------------------------------------------------------------------------------------------------------
# Measures (used to steer the generator to its targets and recorded as ground truth)
# --------------------------------------------------------------------------------------------------------
def local_thickness(mask: np.ndarray, spacing_mm: float = 1.0, context: Optional[np.ndarray] = None,
                    region: Optional[tuple] = None) -> float:
    """Mean local thickness (Hildebrand & Rüegsegger 1997) of a binary structure, in mm.

    Parameters
    ----------
    mask : ndarray of bool, shape (D, H, W)
        The structure (isotropic voxels).
    spacing_mm : float
        Voxel size in mm.
    context, region : optional
        When given, distances are computed on ``context`` (a larger block containing ``mask``) and the
        mean is taken over ``context[region]`` (so that struts cut by the patch border are not thinned).

    Returns
    -------
    float
        Mean over bone voxels of the diameter of the largest inscribed ball containing the voxel (mm);
        NaN for an empty mask.
    """
    full = context if context is not None else mask
    full = np.asarray(full, dtype=bool)
    if not full.any():
        return float("nan")
    # squared distances are integers (voxel units): compare them exactly, no float rounding at ball edges
    d2 = np.rint(ndi.distance_transform_edt(full) ** 2).astype(np.int64)
    dt = np.sqrt(d2)
    # Every bone voxel c is the centre of a ball of radius dt(c). A ball lying inside a face-neighbour's
    # ball (dt(c') >= dt(c) + 1) adds nothing, so only the remaining centres are scattered, one radius
    # level at a time: lt(x) = max over balls containing x of their diameter.
    pad = np.pad(dt, 1)
    inner = np.zeros(full.shape, dtype=bool)
    core = (slice(1, -1),) * 3
    for axis in range(3):
        for step in (-1, 1):
            inner |= np.roll(pad, step, axis=axis)[core] >= dt + 1.0 - 1e-4
    centres = np.argwhere(full & ~inner)
    radii2 = d2[tuple(centres.T)]
    lt = np.zeros(full.shape, dtype=np.float32)
    flat = lt.reshape(-1)
    dims = np.asarray(full.shape)
    strides = np.asarray([full.shape[1] * full.shape[2], full.shape[2], 1])
    for r2 in np.unique(radii2):
        c = centres[radii2 == r2]
        r = math.sqrt(r2)
        k = int(np.ceil(r))
        g = np.mgrid[-k:k + 1, -k:k + 1, -k:k + 1].reshape(3, -1).T
        off = g[(g ** 2).sum(1) < r2]
        pts = (c[:, None, :] + off[None]).reshape(-1, 3)
        ok = np.all((pts >= 0) & (pts < dims), axis=1)
        idx = pts[ok] @ strides
        flat[idx] = np.maximum(flat[idx], 2.0 * r)
    lt *= full
    sel = full if region is None else np.zeros_like(full)
    if region is not None:
        sel[region] = full[region]
    return float(lt[sel].mean() * spacing_mm) if sel.any() else float("nan")


def mean_intercept_da(mask: np.ndarray) -> float:
    """Degree of anisotropy as the mean-intercept-length ratio MIL(z) / mean(MIL(x), MIL(y)).

    MIL along an axis = total test-line length through the volume / number of bone-surface crossings
    (Harrigan & Mann 1984); crossings are counted between neighbouring voxels along the axis.
    """
    m = np.asarray(mask, dtype=np.int8)
    mil = []
    for axis in range(3):
        crossings = np.count_nonzero(np.diff(m, axis=axis))
        mil.append(m.size / max(crossings, 1))
    return float(mil[0] / (0.5 * (mil[1] + mil[2])))


def image_measures(image: np.ndarray, threshold: float = BONE_THRESHOLD) -> dict[str, float]:
    """BMD (mean), TMD (mean above threshold), marrow (mean below) and BV/TV at ``threshold``."""
    bone = image > threshold
    return {
        "bmd": float(image.mean()),
        "tmd": float(image[bone].mean()) if bone.any() else float("nan"),
        "marrow_mean": float(image[~bone].mean()) if (~bone).any() else float("nan"),
        "bvtv_at_threshold": float(bone.mean()),
    }


# --------------------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------------------
def _white_spectra(rng: np.random.Generator, shape: tuple[int, int, int], n: int) -> list[np.ndarray]:
    return [np.fft.rfftn(rng.standard_normal(shape).astype(np.float32)) for _ in range(n)]


def _kgrid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    kz = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None, None]
    ky = np.fft.fftfreq(shape[1]).astype(np.float32)[None, :, None]
    kx = np.fft.rfftfreq(shape[2]).astype(np.float32)[None, None, :]
    kxy2 = ky ** 2 + kx ** 2
    return kz, kxy2


def _field_structure(spectra, kz, kxy2, shape, k0, stretch, bandwidth, rodness, bvtv):
    """Return (f, threshold) for wavenumber ``k0`` (cycles/voxel) and z stretch ``stretch``."""
    kmag = np.sqrt(kxy2 + (kz * stretch) ** 2)
    filt = np.exp(-0.5 * ((kmag - k0) / (bandwidth * k0)) ** 2).astype(np.float32)
    g1 = np.fft.irfftn(spectra[0] * filt, s=shape, axes=(0, 1, 2))
    g1 /= g1.std() + 1e-12
    if rodness > 0:
        g2 = np.fft.irfftn(spectra[1] * filt, s=shape, axes=(0, 1, 2))
        g2 /= g2.std() + 1e-12
        f = np.sqrt(g1 * g1 + rodness * g2 * g2)
    else:
        f = np.abs(g1)
    return f


def validate_bone_targets(bvtv: float, tbth_mm: float, da: float, spacing_mm: float, size: int,
                          rodness: float = 0.6) -> None:
    """Raise :class:`VolGANError` naming the argument if a target cannot be reached."""
    if not (isinstance(size, (int, np.integer)) and size >= 8):
        raise VolGANError(f"size: patch edge must be an integer ≥ 8 voxels, got {size!r}")
    if not (np.isfinite(spacing_mm) and spacing_mm > 0):
        raise VolGANError(f"spacing_mm: voxel size must be positive, got {spacing_mm!r} mm")
    if not (np.isfinite(bvtv) and 0.03 <= bvtv <= 0.6):
        raise VolGANError(f"bvtv: BV/TV must lie in [0.03, 0.6] for a trabecular structure, got {bvtv!r} "
                          "(values outside are not spongiosa: use e.g. 0.1–0.35)")
    if not np.isfinite(tbth_mm) or tbth_mm < 2.0 * spacing_mm:
        raise VolGANError(f"tbth_mm: Tb.Th {tbth_mm!r} mm is below two voxels ({2 * spacing_mm:.3f} mm), the "
                          "smallest local thickness a voxel structure can have; raise --tbth-mm or lower --spacing-mm")
    if tbth_mm > size * spacing_mm / 4:
        raise VolGANError(f"tbth_mm: Tb.Th {tbth_mm!r} mm is more than a quarter of the patch edge "
                          f"({size * spacing_mm:.2f} mm); lower --tbth-mm or raise --size")
    if not (np.isfinite(da) and 1.0 <= da <= 3.0):
        raise VolGANError(f"da: degree of anisotropy (MIL ratio z / xy) must lie in [1, 3], got {da!r}")
    if not (0.0 <= rodness <= 1.0):
        raise VolGANError(f"rodness: must lie in [0, 1] (0 plates, 1 rods), got {rodness!r}")


def bone_structure(
    rng: np.random.Generator,
    size: int = 32,                   # patch edge in voxels
    spacing_mm: float = 0.164,        # isotropic voxel size (mm)
    bvtv: float = 0.2,                # target bone volume fraction
    tbth_mm: float = 0.38,            # target mean local thickness (mm)
    da: float = 1.3,                  # target MIL ratio z / xy
    rodness: float = 0.6,             # 0 = plates, 1 = rods
    bandwidth: float = 0.35,          # relative width of the spectral shell
    pad: int = 8,                     # context voxels on each side (no wrap-around at the patch border)
    tol: float = 0.03,                # relative tolerance of the fixed-point iteration
    max_iter: int = 6,                # iterations of the thickness / anisotropy fixed point
    init: Optional[tuple[float, float]] = None,  # initial (thickness·k0 constant, stretch/DA ratio)
) -> dict[str, Any]:
    """Draw one structure whose mask reaches the requested BV/TV, Tb.Th and DA.

    Returns a dict with ``mask`` (bool, size³), ``field`` (float32 f - threshold, size³, negative in bone,
    for partial-volume rendering), ``grad`` (|∇f| in voxel units), the measured ``bvtv``, ``tbth_mm``,
    ``da``, the field parameters ``k0_per_voxel``, ``stretch`` and the iteration count.
    """
    validate_bone_targets(bvtv, tbth_mm, da, spacing_mm, size, rodness)
    n = size + 2 * pad
    shape = (n, n, n)
    spectra = _white_spectra(rng, shape, 2)
    kz, kxy2 = _kgrid(shape)
    region = (slice(pad, pad + size),) * 3
    th_vox = tbth_mm / spacing_mm
    c_th, c_da = init if init is not None else (0.21, 1.0)
    k0 = c_th / th_vox
    stretch = max(1.0, da * c_da)
    best = None
    prev = None
    for it in range(1, max_iter + 1):
        f = _field_structure(spectra, kz, kxy2, shape, k0, stretch, bandwidth, rodness, bvtv)
        thr = float(np.quantile(f[region], bvtv))
        full = f < thr
        mask = full[region]
        th = local_thickness(mask, 1.0, context=full, region=region)
        d = mean_intercept_da(mask)
        err = max(abs(th / th_vox - 1.0), abs(d / da - 1.0))
        if best is None or err < best[0]:
            best = (err, f, thr, th, d, k0, stretch, it)
        if err < tol:
            break
        # log-thickness vs log-k0: slope -1 in the continuum (thickness ∝ 1/k0), flatter near the two-voxel
        # floor; a secant estimate of the slope once two points exist. MIL ratio grows ~ with the stretch.
        slope = -1.0
        if prev is not None and abs(math.log(k0 / prev[0])) > 1e-3:
            slope = float(np.clip(math.log(th / prev[1]) / math.log(k0 / prev[0]), -3.0, -0.25))
        prev = (k0, th)
        k0 = float(np.clip(k0 * math.exp(math.log(th_vox / th) / slope), 0.01, 0.45))
        stretch = float(np.clip(stretch * (da / d), 0.5, 8.0))
    err, f, thr, th, d, k0, stretch, it = best
    fc = f[region] - thr
    g = np.sqrt(sum(np.gradient(f, axis=a)[region] ** 2 for a in range(3)))
    mask = fc < 0
    return {
        "mask": mask,
        "field": fc.astype(np.float32),
        "grad": g.astype(np.float32),
        "bvtv": float(mask.mean()),
        "tbth_mm": float(th * spacing_mm),
        "da": float(d),
        "k0_per_voxel": float(k0),
        "stretch": float(stretch),
        "iterations": int(it),
        "relative_error": float(err),
        "constants": (float(k0 * th), float(stretch / d)),
    }


# --------------------------------------------------------------------------------------------------------
# Rendering and the public generator
# --------------------------------------------------------------------------------------------------------
def _correlated_noise(rng: np.random.Generator, shape, sd: float, corr_vox: float) -> np.ndarray:
    n = rng.standard_normal(shape).astype(np.float32)
    if corr_vox > 0:
        n = ndi.gaussian_filter(n, corr_vox, mode="wrap")
        n /= n.std() + 1e-12
    return n * sd


def render_bone(rng: np.random.Generator, structure: dict[str, Any], spacing_mm: float,
                rendering: BoneRendering) -> tuple[np.ndarray, dict[str, float]]:
    """HR-pQCT-like image (float32, paper units) of a structure from :func:`bone_structure`."""
    tissue = float(rendering.tissue + rendering.tissue_sd * rng.standard_normal())
    marrow = float(rendering.marrow + rendering.marrow_sd * rng.standard_normal())
    # partial volume: signed distance to the level set ≈ (f - t) / |∇f| (voxels); a one-voxel ramp
    sd_vox = structure["field"] / np.maximum(structure["grad"], 1e-3)
    occ = np.clip(0.5 - sd_vox, 0.0, 1.0).astype(np.float32)
    shape = occ.shape
    slow = _correlated_noise(rng, shape, rendering.marrow_texture_sd, 6.0)
    img = marrow + slow + (tissue - marrow) * occ
    img = ndi.gaussian_filter(img, rendering.psf_sigma_mm / spacing_mm, mode="reflect")
    img = img + _correlated_noise(rng, shape, rendering.noise_sd, rendering.noise_corr_mm / spacing_mm)
    return img.astype(np.float32), {"tissue_density": tissue, "marrow_level": marrow}


def _positive(value: float, name: str) -> float:
    if not np.isfinite(value) or value < 0:
        raise VolGANError(f"{name}: must be a finite number ≥ 0, got {value!r}")
    return float(value)


def make_bone_phantom(
    seed: int,
    size: int = 32,                        # patch edge (voxels)
    spacing_mm: float = 0.164,             # isotropic voxel size (mm), HR-pQCT XCT-I
    bvtv: float = 0.2,                     # target BV/TV of the mask
    tbth_mm: float = 0.38,                 # target mean local thickness (mm), BoneJ convention
    da: float = 1.3,                       # target MIL ratio z / xy
    rodness: float = 0.6,                  # 0 plate-like … 1 rod-like
    bvtv_sd: float = 0.0,                  # per-sample spread of the BV/TV target (0 = fixed)
    tbth_sd_mm: float = 0.0,               # per-sample spread of the Tb.Th target (mm)
    da_sd: float = 0.0,                    # per-sample spread of the DA target
    rendering: BoneRendering = BoneRendering(),  # intensity model
    index: int = 0,                        # sample index within a dataset (seeds an independent stream)
) -> tuple[Volume, Volume, dict[str, Any]]:
    """One trabecular-bone patch: HR-pQCT-like image, ground-truth mask, and every parameter.

    Parameters
    ----------
    seed : int
        Random seed; ``(seed, index)`` determines the sample exactly (same bytes on CPU).
    size, spacing_mm : int, float
        Patch edge in voxels and isotropic voxel size in mm.
    bvtv, tbth_mm, da : float
        Targets for the mask's bone volume fraction, mean local thickness (mm) and mean-intercept-length
        ratio z/xy; reached to within a few percent (BV/TV exactly to one voxel).
    rodness : float
        Plate (0) to rod (1) regime.
    bvtv_sd, tbth_sd_mm, da_sd : float
        When > 0, each sample's targets are drawn from normal distributions around the targets
        (clipped to valid ranges), giving a population like the real data (BV/TV 0.18 ± 0.075).
    rendering : BoneRendering
        Intensity model.

    Returns
    -------
    image : Volume
        float32 in the MICCAI 2020 units (window [-350, 1100]).
    mask : Volume
        uint8 ground-truth bone mask.
    params : dict
        Sampled targets, field parameters, rendering parameters, measured mask measures (``bvtv``,
        ``tbth_mm``, ``da``) and image measures at threshold 225 (``bmd``, ``tmd``, ...).

    Example
    -------
    >>> img, mask, p = make_bone_phantom(0, size=32, bvtv=0.2)   # doctest: +SKIP
    >>> round(p["measured"]["bvtv"], 2)                           # doctest: +SKIP
    0.2
    """
    for name, v in (("bvtv_sd", bvtv_sd), ("tbth_sd_mm", tbth_sd_mm), ("da_sd", da_sd)):
        _positive(v, name)
    validate_bone_targets(bvtv, tbth_mm, da, spacing_mm, size, rodness)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0xB0E]))
    t_bvtv = float(np.clip(bvtv + bvtv_sd * rng.standard_normal(), 0.05, 0.5)) if bvtv_sd else float(bvtv)
    t_th = float(np.clip(tbth_mm + tbth_sd_mm * rng.standard_normal(), 2.05 * spacing_mm,
                         size * spacing_mm / 4)) if tbth_sd_mm else float(tbth_mm)
    t_da = float(np.clip(da + da_sd * rng.standard_normal(), 1.0, 3.0)) if da_sd else float(da)
    st = bone_structure(rng, size=size, spacing_mm=spacing_mm, bvtv=t_bvtv, tbth_mm=t_th, da=t_da,
                        rodness=rodness)
    image, rparams = render_bone(rng, st, spacing_mm, rendering)
    spacing = (float(spacing_mm),) * 3
    img_vol = Volume(image, spacing=spacing)
    mask_vol = Volume(st["mask"].astype(np.uint8), spacing=spacing)
    params = {
        "seed": int(seed),
        "index": int(index),
        "size": int(size),
        "spacing_mm": float(spacing_mm),
        "targets": {"bvtv": t_bvtv, "tbth_mm": t_th, "da": t_da, "rodness": float(rodness)},
        "field": {"k0_per_voxel": st["k0_per_voxel"], "z_stretch": st["stretch"],
                  "iterations": st["iterations"], "relative_error": st["relative_error"]},
        "rendering": {**dataclasses.asdict(rendering), **rparams},
        "measured": {"bvtv": st["bvtv"], "tbth_mm": st["tbth_mm"], "da": st["da"]},
        "image_measures": image_measures(image),
    }
    return img_vol, mask_vol, params


def extract_patches(image: Volume, mask: Volume, size: int, count: int,
                    rng: np.random.Generator) -> list[tuple[Volume, Volume, tuple[int, int, int]]]:
    """Cut ``count`` random ``size``³ patches (image, mask, corner index) from a larger block.

    Each patch keeps its geometry: its origin is the physical position of its first voxel.
    """
    shape = image.shape
    if size > min(shape):
        raise VolGANError(f"patch size {size} is larger than the block {shape}; lower --size or raise the block")
    if count < 1:
        raise VolGANError(f"count: need at least one patch, got {count}")
    out = []
    for _ in range(count):
        c = tuple(int(rng.integers(0, s - size + 1)) for s in shape)
        sl = tuple(slice(a, a + size) for a in c)
        origin = tuple(image.index_to_physical((c[2], c[1], c[0])))
        out.append((image.with_array(image.array[sl].copy(), spacing=image.spacing, origin=origin),
                    mask.with_array(mask.array[sl].copy(), spacing=mask.spacing, origin=origin), c))
    return out
