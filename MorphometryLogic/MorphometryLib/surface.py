"""Bone surface (marching cubes) and the structure model index (SMI).

Conventions
-----------
- The surface is the 0.5 iso-surface of the binary image (Lorensen & Cline marching cubes, scikit-image),
  in mm with the voxel spacing. Faces cut by the image border or by a region-of-interest mask are *not*
  bone surface: the image is padded by replicating its edge (so the structure continues through the
  border) and only triangles whose centroid lies inside the image box (and inside the ROI) are kept.
- SMI (Hildebrand & Rüegsegger 1997, mesh form): ``SMI = 6 · BV · (dBS/dr) / BS²``, with ``dBS/dr`` the
  rate of change of the surface area when every vertex moves along its unit normal (computed analytically
  per triangle). Vertex normals are the unit gradient of the smoothed image at the vertex, as in Lorensen &
  Cline's marching cubes (outward, in mm); area-weighted mesh normals give SMI within 0.5 % of these on
  plates, rods, balls, lattices and random structures, but need every triangle's fan assembled.
  Ideal plates give 0, rods 3, spheres 4. Concave surfaces (e.g. marrow cavities in dense bone) make
  ``dBS/dr`` negative and SMI negative or meaningless — see docs/morphometry.md (Jinnai 2002, Salmon 2015).

References
----------
Lorensen WE, Cline HE. Marching cubes. SIGGRAPH 1987.
Hildebrand T, Rüegsegger P. Quantification of bone microarchitecture with the structure model index.
Comput Methods Biomech Biomed Engin 1:15–23, 1997.
Salmon PL et al. Structure model index does not measure rods and plates in trabecular bone.
Front Endocrinol 6:162, 2015.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from VolGANCore.errors import VolGANError

SURFACE_SIGMA = 0.7  # voxels: Gaussian pre-smoothing before marching cubes (see surface_mesh)

__all__ = ["SURFACE_SIGMA", "face_cross", "pool_normals", "surface_mesh", "surface_statistics", "surface_area",
           "structure_model_index", "triangle_areas"]


def triangle_areas(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area of each triangle (units of ``verts``²)."""
    return 0.5 * np.sqrt(np.sum(face_cross(verts, faces) ** 2, axis=1, dtype=np.float64))


_CHUNK = 1 << 16  # triangles per block: the gathered rows stay in cache


def _cross_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.multiply(a[:, 1], b[:, 2], out=out[:, 0])
    out[:, 0] -= a[:, 2] * b[:, 1]
    np.multiply(a[:, 2], b[:, 0], out=out[:, 1])
    out[:, 1] -= a[:, 0] * b[:, 2]
    np.multiply(a[:, 0], b[:, 1], out=out[:, 2])
    out[:, 2] -= a[:, 1] * b[:, 0]


def face_cross(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(v1 − v0) × (v2 − v0) per triangle (float32, (F, 3)): the normal direction, length twice the area."""
    verts = np.ascontiguousarray(verts, dtype=np.float32)
    out = np.empty((len(faces), 3), np.float32)
    for i in range(0, len(faces), _CHUNK):
        f = faces[i:i + _CHUNK]
        p0 = verts[f[:, 0]]
        _cross_into(verts[f[:, 1]] - p0, verts[f[:, 2]] - p0, out[i:i + _CHUNK])
    return out


def pool_normals(area_normals: np.ndarray) -> np.ndarray:
    """Area-weighted triangle normals (F, 3) summed in bins of a 32³ grid over the unit normal (≤ 3.6° wide).

    Pooled sums add up over parts of a mesh, so a mesh can be processed slab by slab. Within a bin
    ``|Σn·v| = Σ|n·v|`` except for test directions nearly perpendicular to it, where both are small.
    """
    fn = np.asarray(area_normals, np.float32)
    out = np.zeros((32**3, 3), np.float64)
    for i in range(0, len(fn), 1 << 16):  # blocks that stay in cache
        f = fn[i:i + (1 << 16)]
        norm = np.sqrt(np.einsum("ij,ij->i", f, f))
        ok = norm > 0
        if not ok.all():
            f, norm = f[ok], norm[ok]
        q = (f / norm[:, None] + 1.0) * 16.0
        q = np.clip(q.astype(np.int32), 0, 31)
        b = (q[:, 0] * 32 + q[:, 1]) * 32 + q[:, 2]
        for c in range(3):
            out[:, c] += np.bincount(b, weights=f[:, c], minlength=32**3)
    return out


def _smoothed_padded(mask: np.ndarray, sigma: float) -> np.ndarray:
    padded = np.pad(mask, 1, mode="edge").astype(np.float32)
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        padded = gaussian_filter(padded, sigma, mode="nearest", truncate=3.0)
    return padded


def _slab_bounds(n_cubes: int, workers: int | None) -> list[tuple[int, int]]:
    """Split the cubes 0..n_cubes-1 along axis 0 into contiguous slabs, one per worker (≥ 32 cubes each)."""
    import os

    w = int(workers) if workers else (os.cpu_count() or 1)
    k = max(1, min(w, n_cubes // 32))
    edges = np.linspace(0, n_cubes, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _slab_mesh(field: np.ndarray, z0: int, z1: int, shape: np.ndarray, roi):
    """Marching cubes of the cubes z0..z1-1 (axis 0) of ``field`` (the padded grid), run with one extra plane
    of context on each side so that the gradient normals on the slab's boundary planes are central
    differences as in one pass over the whole grid; triangles are kept by the cube layer of their centroid.
    Returns (verts in unpadded voxel-index coordinates, faces, mask of the triangles that are this slab's
    bone surface, unit gradient normals in index space)."""
    from skimage.measure import marching_cubes

    lo, hi = max(z0 - 1, 0), min(z1 + 2, field.shape[0])
    verts, faces, normals, _v = marching_cubes(field[lo:hi], level=0.5, allow_degenerate=True)
    if len(faces) == 0:
        return verts, faces, np.zeros(0, bool), normals
    verts[:, 0] += lo
    cz = (verts[faces[:, 0], 0] + verts[faces[:, 1], 0] + verts[faces[:, 2], 0]) / 3.0
    own = (cz >= z0) & ((cz < z1) | (z1 == field.shape[0] - 1))
    verts -= 1.0  # voxel-index coordinates of the unpadded image
    # edge-aware: triangles with their centroid outside the image box (or the ROI) are not bone surface;
    # only triangles with a vertex beyond the box can have their centroid outside it
    v_out = np.any((verts < -0.5) | (verts > shape - 0.5), axis=1)
    cand = np.flatnonzero(v_out[faces[:, 0]] | v_out[faces[:, 1]] | v_out[faces[:, 2]])
    if cand.size:
        fc = faces[cand]
        cent = (verts[fc[:, 0]] + verts[fc[:, 1]] + verts[fc[:, 2]]) / 3.0
        own[cand] &= np.all((cent >= -0.5) & (cent <= shape - 0.5), axis=1)
    if roi is not None:
        idx = np.flatnonzero(own)
        f = faces[idx]
        cent = (verts[f[:, 0]] + verts[f[:, 1]] + verts[f[:, 2]]) / 3.0
        ijk = np.clip(np.rint(cent).astype(np.int64), 0, shape - 1)
        own[idx] = roi[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    return verts, faces, own, normals


def _can_fork() -> bool:
    """Whether slabs may run in forked processes: Linux/macOS ``fork``, the main thread, and not inside the
    Slicer application (never fork a Qt GUI process); ``VOLGAN_NO_FORK=1`` turns it off."""
    import multiprocessing as mp
    import os
    import sys
    import threading

    return (hasattr(os, "fork") and "fork" in mp.get_all_start_methods() and os.environ.get("VOLGAN_NO_FORK") != "1"
            and threading.current_thread() is threading.main_thread()
            and not any(name in sys.modules for name in ("qt", "PythonQt", "PyQt5", "PySide2", "PySide6")))


def _fork_map(fn, items: list) -> list:
    """``[fn(item) for item in items]`` with all but the last item in forked child processes (which inherit
    the arrays ``fn`` closes over without copying); results come back pickled through pipes, so ``fn``
    should return small values. A child that fails or dies raises here, naming what happened."""
    import multiprocessing as mp
    import warnings

    ctx = mp.get_context("fork")
    jobs = []

    def child(item, conn):
        try:
            conn.send(("ok", fn(item)))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        finally:
            conn.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded process forked" (py ≥ 3.12)
        for item in items[:-1]:
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=child, args=(item, send), daemon=True)
            proc.start()
            send.close()
            jobs.append((proc, recv))
    try:
        last = fn(items[-1])
        out = []
        for proc, recv in jobs:
            try:
                status, value = recv.recv()
            except EOFError:
                proc.join()
                raise RuntimeError(f"surface: a worker process died (exit code {proc.exitcode})") from None
            if status != "ok":
                raise RuntimeError(f"surface: a worker process failed: {value}")
            out.append(value)
        return out + [last]
    finally:
        for proc, recv in jobs:
            recv.close()
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()


def _map_slabs(fn, mask, sigma, workers, roi, processes: bool = False):
    """Run ``fn(verts, faces, own, normals)`` (see :func:`_slab_mesh`) on every slab of the smoothed, padded
    ``mask``, in slab order: in forked processes when ``processes`` (and :func:`_can_fork`; ``fn`` must then
    return small values — marching cubes holds the GIL for much of its time), else in a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    field = _smoothed_padded(mask, sigma)
    shape = np.asarray(mask.shape)
    roi = None if roi is None else np.asarray(roi, bool)
    slabs = _slab_bounds(field.shape[0] - 1, workers)

    def one(bounds):
        return fn(*_slab_mesh(field, bounds[0], bounds[1], shape, roi))

    if len(slabs) == 1:
        return [one(slabs[0])]
    if processes and _can_fork():
        return _fork_map(one, slabs)
    with ThreadPoolExecutor(len(slabs)) as ex:
        return list(ex.map(one, slabs))


def surface_mesh(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    roi: np.ndarray | None = None,
    sigma: float = SURFACE_SIGMA,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes mesh of a binary structure, edge-aware (border and ROI cuts are not surface).

    Parameters
    ----------
    mask : bool ndarray (D, H, W)
        The structure.
    spacing : 3 floats
        Voxel size in mm along (D, H, W).
    roi : bool ndarray (D, H, W), optional
        Region of interest; triangles whose centroid falls in a voxel outside it are dropped.
    sigma : float
        Gaussian pre-smoothing of the binary image, in voxels (0 = raw binary marching cubes). The default
        0.7 removes the staircase bias: flat faces are unchanged, rods of radius ≥ 3 voxels are within
        3 % of 2/r in BS/BV (raw: up to +7 %) and SMI reads 3.0 ± 0.1 on rods, 4.0 on balls.
    workers : int, optional
        Threads; the volume is meshed in slabs along axis 0 (default: one per CPU). Vertices on the planes
        between slabs appear once per slab (the triangles are the same as a single pass).

    Returns
    -------
    verts : float32 (V, 3), mm, array-axis order (D, H, W), origin at the centre of voxel (0, 0, 0)
    faces : int (F, 3)
    """
    mask = np.asarray(mask, dtype=bool)
    sp = np.asarray(spacing, np.float64)
    if not mask.any() or mask.all():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)

    def keep(verts, faces, own, _normals):
        used = np.zeros(len(verts), bool)
        faces = faces[own]
        used[faces.ravel()] = True
        remap = np.cumsum(used) - 1
        return (verts[used] * sp).astype(np.float32), remap[faces]

    parts = _map_slabs(keep, mask, sigma, workers, roi)
    offsets = np.cumsum([0] + [len(v) for v, _f in parts[:-1]])
    verts = np.concatenate([v for v, _f in parts])
    faces = np.concatenate([f + o for (_v, f), o in zip(parts, offsets)])
    return verts, faces


def surface_statistics(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    roi: np.ndarray | None = None,
    sigma: float = SURFACE_SIGMA,
    flow: bool = True,
    normal_bins: bool = False,
    workers: int | None = None,
) -> dict[str, object]:
    """Surface area, its normal-flow derivative and (optionally) pooled normals, slab by slab in parallel.

    The mesh of :func:`surface_mesh` is never assembled: each slab of cubes contributes its triangles' area,
    ``dA/dr`` for SMI (vertex normals from the image gradient, see the module notes) and, with
    ``normal_bins``, area-weighted normals pooled in 32³ direction bins for the MIL of
    :func:`MorphometryLib.anisotropy.mil_from_pooled_normals`. The triangles are those of one pass over the
    whole image (every cube emits its own), so the values equal the single-mesh computation up to
    floating-point summation order.

    Returns
    -------
    dict: ``area`` (mm²), ``dadr`` (mm; NaN unless ``flow``), ``faces`` (count) and ``pooled_normals``
    ((B, 3) or None).
    """
    mask = np.asarray(mask, dtype=bool)
    sp = np.asarray(spacing, np.float64)
    if not mask.any() or mask.all():
        return {"area": 0.0, "dadr": 0.0, "faces": 0, "pooled_normals": None}

    def stats(verts, faces, own, gnormals):
        if len(faces) == 0:
            return 0.0, 0.0, 0, None
        verts = (verts * sp).astype(np.float32)
        fo = faces[own]
        fco = face_cross(verts, fo)
        if flow:  # unit normals of the smoothed image's gradient, in mm (outward: "descent")
            normals = gnormals / sp
            normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        area = 0.5 * float(np.add.reduce(np.sqrt(np.einsum("ij,ij->i", fco, fco)), dtype=np.float64))
        dadr = _area_derivative(verts, fo, normals, fco) if flow else float("nan")
        pooled = None
        if normal_bins:
            pooled = pool_normals(0.5 * fco)
        return area, dadr, len(fo), pooled

    parts = _map_slabs(stats, mask, sigma, workers, roi, processes=True)
    pooled = None
    if normal_bins:
        got = [p[3] for p in parts if p[3] is not None]
        pooled = np.sum(got, axis=0) if got else None
    return {"area": float(sum(p[0] for p in parts)), "dadr": float(sum(p[1] for p in parts)),
            "faces": int(sum(p[2] for p in parts)), "pooled_normals": pooled}


def surface_area(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    roi: np.ndarray | None = None,
    sigma: float = SURFACE_SIGMA,
) -> float:
    """Bone surface BS (mm²) of the marching-cubes mesh (see :func:`surface_mesh`)."""
    return float(surface_statistics(mask, spacing, roi, sigma, flow=False)["area"])


def _area_derivative(verts: np.ndarray, faces: np.ndarray, normals: np.ndarray, fc: np.ndarray) -> float:
    """d(area)/dr of the mesh when every vertex moves along its unit normal, analytically.

    With ``c = a × b`` (``a = v1 − v0``, ``b = v2 − v0``) and the vertices moving by ``r·n_i``:
    ``dc/dr = (n1 − n0) × b + a × (n2 − n0)`` and ``dA/dr = ½ (c · dc/dr) / |c|``.
    """
    verts = np.ascontiguousarray(verts, dtype=np.float32)
    normals = np.ascontiguousarray(normals, dtype=np.float32)
    total = 0.0
    t1 = np.empty((min(len(faces), _CHUNK), 3), np.float32)
    t2 = np.empty_like(t1)
    for i in range(0, len(faces), _CHUNK):
        f, c = faces[i:i + _CHUNK], fc[i:i + _CHUNK]
        p0, n0 = verts[f[:, 0]], normals[f[:, 0]]
        a, b = verts[f[:, 1]] - p0, verts[f[:, 2]] - p0
        da, db = normals[f[:, 1]] - n0, normals[f[:, 2]] - n0
        m = len(f)
        _cross_into(da, b, t1[:m])
        _cross_into(a, db, t2[:m])
        t1[:m] += t2[:m]
        num = np.einsum("ij,ij->i", c, t1[:m])
        den = np.sqrt(np.einsum("ij,ij->i", c, c))
        ok = den > 0
        total += float(np.add.reduce(num[ok] / den[ok], dtype=np.float64))
    return 0.5 * total


def structure_model_index(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    roi: np.ndarray | None = None,
    stats: dict | None = None,
) -> float:
    """Structure model index (Hildebrand & Rüegsegger 1997), mesh-dilation form.

    Parameters
    ----------
    mask : bool ndarray (D, H, W)
        The structure.
    spacing : 3 floats
        Voxel size in mm along (D, H, W).
    roi : bool ndarray, optional
        Region of interest (BV and the surface are taken inside it).
    stats : dict, optional
        :func:`surface_statistics` of the same mask, to reuse.

    Returns
    -------
    float: ``6·BV·(dBS/dr)/BS²`` with ``dBS/dr`` the exact derivative of the mesh area as the vertices
    move along their unit normals (0 plates, 3 rods, 4 spheres; negative for concave structures).
    """
    mask = np.asarray(mask, dtype=bool)
    sp = np.asarray(spacing, np.float64)
    st = stats if stats is not None else surface_statistics(mask, sp, roi)
    if st["faces"] == 0:
        raise VolGANError("SMI: the structure has no surface (empty or full mask); SMI is undefined")
    bv = float((mask & roi).sum() if roi is not None else mask.sum()) * float(np.prod(sp))
    return float(6.0 * bv * st["dadr"] / (st["area"] ** 2))
