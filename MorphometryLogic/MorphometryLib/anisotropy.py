"""Degree of anisotropy: mean intercept length (MIL) ellipsoid and structure-tensor (fabric) forms.

MIL (Harrigan & Mann 1984; BoneJ2-style): for each of ``n_directions`` unit vectors ``v`` (a Fibonacci
lattice on the half-sphere, in physical mm), a grid of parallel test lines with a random offset crosses the
volume; ``MIL(v) = total line length / number of bone–marrow interface crossings`` (a direction with no
crossing counts one). The points ``±MIL(v)·v`` are fitted by a centred ellipsoid ``xᵀMx = 1`` (linear least
squares on the six entries of ``M``); with ``λ`` the eigenvalues of ``M`` (= 1/semi-axis²)::

    DA = 1 − λmin/λmax          (0 isotropic, → 1 strongly anisotropic; BoneJ: 1 − c²/a²)

Structure tensor (fabric) form, faster: ``T = Σ ∇u ∇uᵀ`` over the ROI with ``u`` the binary image smoothed
by a Gaussian of ``sigma`` voxels and the gradient in mm⁻¹; ``DA_ST = 1 − λmin(T)/λmax(T)``. Both are 1 for
parallel plates and ≈ 0 for a cubic lattice, but they are different functions of the structure (the
MIL is driven by ⟨|n·v|⟩, the tensor by ⟨(n·v)²⟩ of the surface normals n): report them under their own
names. The differentiable counterpart (:mod:`MorphometryLib.differentiable`) is the tensor form.

References
----------
Harrigan TP, Mann RW. Characterization of microstructural anisotropy in orthotropic materials using a
second rank tensor. J Mater Sci 19:761–767, 1984.
Whitehouse WJ. The quantitative morphology of anisotropic trabecular bone. J Microsc 101:153–168, 1974.
Doube M et al. BoneJ. Bone 47:1076–1079, 2010.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .surface import face_cross, pool_normals, surface_statistics

__all__ = ["fibonacci_directions", "mean_intercept_lengths", "mesh_intercept_lengths", "pool_normals",
           "mil_from_pooled_normals", "fit_ellipsoid", "mil_anisotropy", "structure_tensor_anisotropy"]


def fibonacci_directions(n: int) -> np.ndarray:
    """``n`` near-uniform unit vectors on the half-sphere (last component ≥ 0), shape (n, 3)."""
    i = np.arange(n) + 0.5
    z = 1.0 - i / n  # (0, 1]
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _basis(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1.0, 0.0, 0.0]) if abs(v[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u1 = np.cross(v, a)
    u1 /= np.linalg.norm(u1)
    return u1, np.cross(v, u1)


def mean_intercept_lengths(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    directions: np.ndarray | None = None,
    n_directions: int = 128,
    line_spacing: float | None = None,
    step: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """MIL (mm) along each direction through a binary volume.

    Parameters
    ----------
    mask : bool ndarray (D, H, W)
    spacing : 3 floats
        Voxel size in mm along (D, H, W).
    directions : (n, 3) array, optional
        Unit vectors in (D, H, W) physical axes; default :func:`fibonacci_directions`.
    n_directions : int
        Number of directions when ``directions`` is not given.
    line_spacing : float, optional
        Distance (mm) between parallel test lines; default: the box diagonal / 24.
    step : float, optional
        Sampling step along a line (mm); default half the smallest spacing.
    seed : int
        Seed of the random line-grid offsets (reproducible).

    Returns
    -------
    directions (n, 3), mil (n,) in mm.
    """
    m = np.asarray(mask, dtype=bool)
    sp = np.asarray(spacing, np.float64)
    shape = np.asarray(m.shape)
    dirs = fibonacci_directions(n_directions) if directions is None else np.asarray(directions, np.float64)
    ext = (shape - 1) * sp
    centre = ext / 2.0
    radius = 0.5 * float(np.linalg.norm(shape * sp))
    if line_spacing is None:
        line_spacing = 2.0 * radius / 24.0
    if step is None:
        step = 0.5 * float(sp.min())
    rng = np.random.default_rng(seed)
    grid = np.arange(-radius, radius + 1e-9, line_spacing)
    ts = np.arange(-radius, radius + 1e-9, step)
    mils = np.empty(len(dirs))
    for k, v in enumerate(dirs):
        v = v / np.linalg.norm(v)
        u1, u2 = _basis(v)
        sh = rng.uniform(0, line_spacing, 2)
        a, b = np.meshgrid(grid + sh[0], grid + sh[1], indexing="ij")
        keep = a * a + b * b <= radius * radius
        a, b = a[keep], b[keep]
        starts = centre + a[:, None] * u1 + b[:, None] * u2  # (L, 3)
        pts = starts[:, None, :] + ts[None, :, None] * v  # (L, T, 3) mm
        idx = np.rint(pts / sp).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < shape), axis=2)
        np.clip(idx, 0, shape - 1, out=idx)
        val = m[idx[..., 0], idx[..., 1], idx[..., 2]] & inside
        # crossings between consecutive samples that are both inside the volume
        both = inside[:, 1:] & inside[:, :-1]
        crossings = int(np.count_nonzero((val[:, 1:] != val[:, :-1]) & both))
        length = float(np.count_nonzero(both)) * step
        mils[k] = length / max(crossings, 1) if length > 0 else np.nan
    return dirs, mils


def mil_from_pooled_normals(pooled: np.ndarray, volume_mm3: float, directions: np.ndarray) -> np.ndarray:
    """MIL (mm) along each direction, exact in expectation over random test lines (see
    :func:`mesh_intercept_lengths`), from :func:`pool_normals` sums."""
    pooled = np.asarray(pooled, np.float64)
    pooled = pooled[np.any(pooled != 0, axis=1)]
    dirs = np.asarray(directions, np.float64)
    # three outer products, not a matmul: a (bins × 3)·(3 × dirs) product would wake OpenBLAS' thread pool,
    # whose spinning threads slow down everything else on a small, busy machine
    dots = pooled[:, 0, None] * dirs[None, :, 0]
    dots += pooled[:, 1, None] * dirs[None, :, 1]
    dots += pooled[:, 2, None] * dirs[None, :, 2]
    pl = np.abs(dots, out=dots).sum(axis=0)
    pl /= float(volume_mm3)
    with np.errstate(divide="ignore"):
        return np.where(pl > 0, 1.0 / pl, np.inf)


def mesh_intercept_lengths(
    verts: np.ndarray,
    faces: np.ndarray,
    volume_mm3: float,
    directions: np.ndarray,
    fc: np.ndarray | None = None,
) -> np.ndarray:
    """MIL (mm) along each direction, exact in expectation over random test lines, from a surface mesh.

    Stereology (Cauchy–Crofton): a random line of direction ``v`` meets a surface ``S`` inside a volume
    ``V`` ``P_L(v) = (1/V)·∫_S |n·v| dA`` times per unit length, so ``MIL(v) = V / Σ_t A_t |n_t·v|`` over
    the mesh triangles. This is what line sampling estimates, without its sampling noise.
    """
    fn = 0.5 * (face_cross(verts, faces) if fc is None else fc)  # area-weighted normals (float32)
    return mil_from_pooled_normals(pool_normals(fn), volume_mm3, directions)


def fit_ellipsoid(directions: np.ndarray, mil: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred MIL ellipsoid ``xᵀMx = 1`` through the points ``MIL(v)·v``; returns (eigenvalues, eigenvectors).

    Fitted as ``vᵀMv = 1/MIL(v)²`` (linear least squares in the six entries of ``M``), which stays well
    conditioned when some directions have (near-)infinite MIL (plates). Eigenvalues ascending.
    """
    v = np.asarray(directions, np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    x, y, z = v.T
    a = np.stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z, 2 * y * z], axis=1)
    rhs = np.where(np.isfinite(mil), 1.0 / np.asarray(mil, np.float64) ** 2, 0.0)
    coef, *_ = np.linalg.lstsq(a, rhs, rcond=None)
    m = np.array([[coef[0], coef[3], coef[4]], [coef[3], coef[1], coef[5]], [coef[4], coef[5], coef[2]]])
    return np.linalg.eigh(m)


def mil_anisotropy(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    method: str = "mesh",
    n_directions: int = 256,
    line_spacing: float | None = None,
    seed: int = 0,
    roi: np.ndarray | None = None,
    mesh: tuple[np.ndarray, np.ndarray] | None = None,
    fc: np.ndarray | None = None,
    pooled_normals: np.ndarray | None = None,
) -> dict[str, object]:
    """Degree of anisotropy by the MIL ellipsoid (Harrigan & Mann 1984; BoneJ2): ``DA = 1 − λmin/λmax``.

    Parameters
    ----------
    mask : bool ndarray (D, H, W)
    spacing : 3 floats
        mm along (D, H, W).
    method : {"mesh", "lines"}
        ``"mesh"`` (default): MIL from the marching-cubes surface, exact in expectation over random lines
        (:func:`mesh_intercept_lengths`), deterministic and fast. ``"lines"``: BoneJ2-style sampling with
        grids of parallel test lines (:func:`mean_intercept_lengths`).
    n_directions : int
        Directions (Fibonacci half-sphere).
    line_spacing, seed
        For ``method="lines"``.
    roi : bool ndarray, optional
        Region of interest (``"mesh"`` only: the surface inside it over its volume).
    mesh : (verts, faces), optional
        A mesh from :func:`MorphometryLib.surface.surface_mesh` to reuse.
    fc : (F, 3) array, optional
        Its :func:`MorphometryLib.surface.face_cross`, to reuse.
    pooled_normals : (B, 3) array, optional
        ``surface_statistics(..., normal_bins=True)["pooled_normals"]`` of the same mask, to reuse (``"mesh"``).

    Returns
    -------
    dict: ``da`` (NaN if undefined), ``eigenvalues`` (ascending, of M; 1/semi-axis²), ``main_direction``
    (unit vector in (D, H, W) axes along the longest MIL), ``method``.
    """
    sp = np.asarray(spacing, np.float64)
    if method == "lines":
        dirs, mil = mean_intercept_lengths(mask, sp, n_directions=n_directions, line_spacing=line_spacing, seed=seed)
    elif method == "mesh":
        dirs = fibonacci_directions(n_directions)
        tv = float((np.count_nonzero(roi) if roi is not None else np.asarray(mask).size) * np.prod(sp))
        if mesh is not None:
            verts, faces = mesh
            mil = mesh_intercept_lengths(verts, faces, tv, dirs, fc) if len(faces) else np.full(len(dirs), np.inf)
        else:
            if pooled_normals is None:
                pooled_normals = surface_statistics(mask, sp, roi, flow=False, normal_bins=True)["pooled_normals"]
            mil = np.full(len(dirs), np.inf) if pooled_normals is None else \
                mil_from_pooled_normals(pooled_normals, tv, dirs)
    else:
        raise ValueError(f"method: expected 'mesh' or 'lines', got {method!r}")
    ok = ~np.isnan(mil)
    w, vec = fit_ellipsoid(dirs[ok], mil[ok])
    da = float(1.0 - max(w[0], 0.0) / w[-1]) if w[-1] > 0 else float("nan")
    return {"da": da, "eigenvalues": w.tolist(), "main_direction": vec[:, 0].tolist(), "method": method}


def structure_tensor_anisotropy(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    sigma: float = 1.0,
    roi: np.ndarray | None = None,
) -> dict[str, object]:
    """Degree of anisotropy of the global structure (fabric) tensor ``Σ ∇u∇uᵀ``: ``1 − λmin/λmax``.

    Parameters
    ----------
    mask : bool or float ndarray (D, H, W)
        Binary structure (or a soft mask in [0, 1]).
    spacing : 3 floats
        mm along (D, H, W).
    sigma : float
        Gaussian smoothing (voxels) before the gradient.
    roi : bool ndarray, optional
        Voxels summed over.

    Returns
    -------
    dict: ``da``, ``eigenvalues`` (ascending), ``normal_direction`` (the dominant normal, (D, H, W) axes).
    """
    from scipy.ndimage import gaussian_filter

    u = np.asarray(mask, np.float32)
    if sigma > 0:
        u = gaussian_filter(u, sigma, mode="nearest")
    g = [np.asarray(c, np.float32) for c in np.gradient(u, *[float(s) for s in spacing])]
    if roi is not None:
        sel = np.asarray(roi, bool)
        g = [c[sel] for c in g]
    t = np.empty((3, 3))
    for i in range(3):
        for j in range(i, 3):
            t[i, j] = t[j, i] = float(np.add.reduce(np.multiply(g[i], g[j]).ravel(), dtype=np.float64))
    w, vec = np.linalg.eigh(t)
    da = float(1.0 - w[0] / w[-1]) if w[-1] > 0 else float("nan")
    return {"da": da, "eigenvalues": w.tolist(), "normal_direction": vec[:, -1].tolist()}
