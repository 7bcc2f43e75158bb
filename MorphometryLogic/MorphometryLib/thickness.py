"""Exact local thickness (Hildebrand & Rüegsegger maximal spheres), painted as Fiji's LocalThickness does.

Definition
----------
For a binary structure X on a voxel grid with spacing ``(sd, sh, sw)`` mm, let ``d(q)`` be the Euclidean
distance (mm) from the centre of a structure voxel ``q`` to the nearest *background voxel centre* (the
EDT, ``edt`` package; the image border is not background, as in Fiji's ``EDT_S1D``). The local thickness
of a structure voxel ``p`` is the diameter of the largest *closed* ball centred in X that contains it::

    τ(p) = 2 · max{ d(q) : q ∈ X, |p − q| ≤ d(q) }

This is the rule of Fiji's ``Local_Thickness_Parallel`` (Dougherty & Kunzelmann 2007), which paints the
balls of the distance-ridge points with ``r1Squared <= rSquared``, ``rSquared = (int)(r·r + 0.5)``: on an
isotropic grid the squared distances are integers, so the comparison is exact, and the ridge (``Distance_Ridge``)
only drops balls contained in a neighbour's ball, so painting the ridge equals painting every voxel's ball.
Fiji has no anisotropic spacing; here the same closed-ball rule is applied in mm, with a relative tolerance of
1e-5 on ``|p − q|² ≤ d²(q)`` for the float32 squared distances (none on isotropic grids). Tb.Th is the mean of
τ over the bone voxels, Tb.Sp the same over the marrow (background) voxels.

``bonej=True`` adds BoneJ Thickness's two further steps (``LocalThicknessWrapper``): Fiji's
``Clean_Up_Local_Thickness`` (the closed balls also paint background voxels at exactly ``d(q)``; painted voxels
that touch an unpainted 26-neighbour take the mean of their interior painted 26-neighbours, in float32 as
Fiji sums them) and ``MaskThicknessMapWithOriginal`` (background set to 0), then the map is scaled by the
voxel size. BoneJ works in voxels, so this mode needs isotropic voxels.

Algorithm (exact, no O(N·r³) painting of every voxel)
----------------------------------------------------
1. Squared EDT with the ``edt`` package (multi-threaded, anisotropic). Every voxel starts at its own ball's
   diameter ``2·d(p)``, so the smallest balls (``d² = 1``) are not stamped (in the ``bonej`` mode their reach
   into the background, the background voxels face-adjacent to the structure, is set directly).
2. Candidate centres: a ball contained in a neighbour's ball (``B(q) ⊆ B(n)``, ``d(n) > d(q)``) can never give
   a larger maximum, so it is dropped — an exact pruning (Fiji's ``Distance_Ridge`` test, on the same discrete
   balls) that leaves the distance ridge (a thin, surface-like set).
3. The remaining balls are stamped, vectorised, in ascending radius order: offsets of the largest ball are
   sorted by length once; a centre of radius ``d`` needs the prefix of offsets with ``|o|² ≤ d²``; stamping
   in ascending order makes the last write the maximum. A centre with a greater 26-neighbour stamps only
   the crescent its ball adds to the neighbour's (exact by induction, see :func:`_stamp`), which cuts the
   writes by about ``4r/3``.
The result is identical to painting every voxel's closed ball by brute force, and on isotropic grids to a
transcription of Fiji's EDT → Distance_Ridge → Local_Thickness_Parallel (checked voxel by voxel in
Testing/test_morphometry_thickness.py, as is the ``bonej`` mode against a transcription of the two BoneJ steps).

References
----------
Hildebrand T, Rüegsegger P. A new method for the model-independent assessment of thickness in
three-dimensional images. J Microsc 185:67–75, 1997.
Doube M et al. BoneJ: free and extensible bone image analysis in ImageJ. Bone 47:1076–1079, 2010.
Dougherty R, Kunzelmann K-H. Computing local thickness of 3D structures with ImageJ. Microsc Microanal
13(S02):1678–1679, 2007.
"""

from __future__ import annotations

import itertools
import os
from typing import Sequence

import numpy as np

from VolGANCore.errors import VolGANError
from VolGANCore.progress import Progress

__all__ = ["local_thickness", "squared_distance_map", "ridge_candidates", "clean_up_local_thickness",
           "bonej_pixel_width", "thickness_statistics"]

# Relative tolerance of "inside the closed ball", |o|² ≤ d²·(1 + tol), for the float32 squared distances of
# anisotropic grids. Isotropic grids give integer squared distances, compared exactly (tol = 0), as Fiji does.
_TOL = 1e-5
_PAIRS_PER_CHUNK = 1 << 21

# The 26 neighbours in the order Fiji's Clean_Up_Local_Thickness visits (and sums) them, as array offsets
# (dD, dH, dW) = (dk, dj, di): faces, then the edges in two groups, then the corners (k + 1 first).
_FIJI_NEIGHBOURS = (
    (-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1),
    (-1, 1, 0), (1, 1, 0), (0, -1, 1), (0, 1, 1), (1, 0, -1), (1, 0, 1),
    (-1, -1, 0), (1, -1, 0), (0, -1, -1), (0, 1, -1), (-1, 0, -1), (-1, 0, 1),
    (1, 1, 1), (1, -1, 1), (1, 1, -1), (1, -1, -1),
    (-1, 1, 1), (-1, -1, 1), (-1, 1, -1), (-1, -1, -1),
)


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _tolerance(sp: np.ndarray) -> float:
    """0 where squared distances are exact integers (isotropic, integer squared spacing), else ``_TOL``."""
    return 0.0 if np.all(sp == sp[0]) and float(sp[0] ** 2).is_integer() else _TOL


def _unit_spacing(spacing: Sequence[float]) -> tuple[np.ndarray, float]:
    """Spacing scaled so the smallest axis is 1 (exact integer distances on isotropic grids) and the scale."""
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or sp.min() <= 0:
        raise VolGANError(f"spacing: expected 3 positive numbers (mm, array order D,H,W), got {spacing!r}")
    scale = float(sp.min())
    return sp / scale, scale


def bonej_pixel_width(spacing: Sequence[float]) -> float:
    """The voxel size BoneJ scales by (pixel width: x, the last array axis); isotropic voxels only.

    Raises
    ------
    VolGANError
        Anisotropic voxels (BoneJ measures in voxels, so its numbers would ignore the anisotropy).
    """
    sp, _ = _unit_spacing(spacing)
    if not np.allclose(sp, 1.0, rtol=1e-6, atol=0.0):
        raise VolGANError(
            f"spacing: the BoneJ mode measures in voxels like BoneJ, so it needs isotropic voxels, got "
            f"{tuple(float(v) for v in spacing)} mm (resample to isotropic voxels, or measure without bonej)"
        )
    return float(spacing[2])


def squared_distance_map(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Squared EDT (in units of ``spacing``²) from each structure voxel to the nearest background voxel centre.

    Parameters
    ----------
    mask : bool ndarray (D, H, W)
        The structure.
    spacing : 3 floats
        Voxel size along the array axes (D, H, W).

    Returns
    -------
    float32 ndarray (D, H, W), 0 on the background; +inf everywhere when there is no background.
    """
    import edt

    mask = np.ascontiguousarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    if mask.all():
        return np.full(mask.shape, np.inf, np.float32)
    threads = 1 if mask.size < (1 << 20) else _threads()  # thread start-up dominates on small patches
    # uint8 (a zero-copy view of the bools) takes edt's fast path: ~5× faster than bool input
    return edt.edtsq(mask.view(np.uint8), anisotropy=tuple(float(s) for s in spacing), black_border=False,
                     parallel=threads)


def _neighbour_offsets(reach: int) -> np.ndarray:
    """Half of the offsets in the (2·reach+1)³ cube (one of each ± pair), excluding 0."""
    offs = []
    for o in itertools.product(range(-reach, reach + 1), repeat=3):
        if o > (0, 0, 0):
            offs.append(o)
    return np.asarray(offs, dtype=np.int64)


def _ball_offsets(max_r2: float, sp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets (k, j, i) with physical |o|² ≤ max_r2 (the closed ball), sorted by |o|²; and their |o|²."""
    reach = np.floor(np.sqrt(max_r2) / sp).astype(int)
    axes = [np.arange(-r, r + 1) for r in reach]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    n2 = np.sum((g * sp) ** 2, axis=1)
    sel = n2 <= max_r2
    g, n2 = g[sel], n2[sel]
    order = np.argsort(n2, kind="stable")
    return g[order], n2[order]


def _prefix_lengths(d2: np.ndarray, on2: np.ndarray, tol: float) -> np.ndarray:
    """For each squared radius, how many of the sorted offsets (|o|² = ``on2``) lie in its closed ball,
    ``|o|² ≤ d²·(1 + tol)`` (a prefix, ties included).

    Integer squared radii (isotropic grids) go through a lookup table, others through a binary search.
    """
    d2 = np.asarray(d2)
    top = float(d2.max()) if d2.size else 0.0
    if d2.size > 4096 and top < 1 << 20:
        as_int = d2.astype(np.int32)
        if np.array_equal(as_int, d2):
            lut = np.searchsorted(on2, np.arange(int(top) + 1, dtype=np.float64) * (1 + tol), side="right")
            return lut.astype(np.int32)[as_int]
    return np.searchsorted(on2, d2.astype(np.float64) * (1 + tol), side="right").astype(np.int32)


def _float32_at_least(v: np.ndarray) -> np.ndarray:
    """float32 values no smaller than the float64 ``v`` (round up where the cast rounded down)."""
    f = v.astype(np.float32)
    low = f.astype(np.float64) < v
    f[low] = np.nextafter(f[low], np.float32(np.inf))
    return f


def _ordered_neighbours(reach: int) -> np.ndarray:
    """All offsets of the (2·reach+1)³ cube but 0, nearest first (faces, edges, corners)."""
    half = _neighbour_offsets(reach)
    both = np.concatenate([half, -half])
    return both[np.argsort(np.sum(both**2, axis=1), kind="stable")]


def ridge_candidates(d2: np.ndarray, spacing: Sequence[float], reach: int = 1, min_d2: float = 0.0) -> np.ndarray:
    """Linear indices (into ``d2``) of the centres of maximal discrete balls, ascending radius.

    The discrete ball of ``q`` is the set of voxel centres ``q + o`` with ``|o|² ≤ d²(q)`` (closed, as in
    Fiji). It lies inside the ball of ``n = q + e`` when ``max |o − e|²`` over its offsets is at most
    ``d²(n)``; that maximum only depends on how many (length-sorted) offsets the ball holds, so it is a
    prefix maximum looked up per voxel — Fiji's ``Distance_Ridge`` template, for the 26 neighbours. A
    contained ball (with ``d(n) > d(q)``) cannot raise any voxel's maximum and is dropped: the pruning is
    exact (cf. the centres of maximal balls, Remy & Thiel 2005).

    Parameters
    ----------
    d2 : float ndarray (D, H, W)
        Squared distance map (0 on the background), in units where ``spacing`` applies.
    spacing : 3 floats
        Spacing along (D, H, W) in the units of ``sqrt(d2)``.
    reach : int
        Neighbourhood half-width checked (1 = the 26 neighbours; larger values rarely remove more).
    min_d2 : float
        Only voxels with ``d² > min_d2`` are candidates (0: the whole structure, as Fiji).

    Returns
    -------
    int64 ndarray of linear indices into ``d2`` (C order), sorted by ascending ``d2``.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    tol = _tolerance(sp)
    shape = np.asarray(d2.shape)
    if not np.any(d2 > 0):
        return np.zeros(0, np.int64)
    pad = reach
    d2p = np.pad(np.asarray(d2, np.float32), pad)
    pshape = np.asarray(d2p.shape)
    pstrides = np.array([pshape[1] * pshape[2], pshape[2], 1], np.int64)
    flat = d2p.reshape(-1)
    itype = np.int32 if flat.size < 2**31 - 1 else np.int64
    idx = np.flatnonzero(flat > min_d2).astype(itype, copy=False)
    if idx.size == 0:
        return np.zeros(0, np.int64)
    dq = flat[idx]
    offs, on2 = _ball_offsets(float(dq.max()) * (1 + tol), sp)
    klen = _prefix_lengths(dq, on2, tol)
    above_dq = np.nextafter(dq, np.float32(np.inf))
    # The ball's offset set is symmetric under sign flips of each axis, so max|o − e|² only depends on
    # |e| per axis: 3 face, 3 edge and 1 corner class. Per class, q is contained in q + e's ball iff
    # d²(q + e) ≥ M(q) = max(next float above d²(q), max|o − e|²/(1 + tol)): one gather and one compare
    # per neighbour.
    thresholds: dict[tuple[int, ...], np.ndarray] = {}
    alive = np.ones(len(idx), bool)
    for e in _ordered_neighbours(reach):
        key = tuple(int(v) for v in np.abs(e))
        if key not in thresholds:
            pm = np.concatenate([[-1.0], np.maximum.accumulate(np.sum(((offs - np.abs(e)) * sp) ** 2, axis=1))])
            pm = _float32_at_least(pm / (1 + tol))
            thresholds[key] = np.maximum(above_dq, pm[klen])
        contained = flat[idx + itype(int(e @ pstrides))] >= thresholds[key]
        if contained.any():
            alive &= ~contained
            if np.count_nonzero(~alive) > len(alive) // 8:  # compress once enough are gone
                idx, dq, klen, above_dq = idx[alive], dq[alive], klen[alive], above_dq[alive]
                thresholds = {k: v[alive] for k, v in thresholds.items()}
                alive = np.ones(len(idx), bool)
    idx, dq = idx[alive], dq[alive]
    order = np.argsort(dq, kind="stable")
    idx = idx[order]
    # back to unpadded linear indices
    idx = idx.astype(np.int64)
    i, rem = np.divmod(idx, int(pshape[1] * pshape[2]))
    j, k = np.divmod(rem, int(pshape[2]))
    return ((i - pad) * int(shape[1]) + (j - pad)) * int(shape[2]) + (k - pad)


def _greater_neighbour(d2: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each centre, the index (into :func:`_ordered_neighbours`) of its nearest 26-neighbour that is
    greater in the strict order (d², linear index); −1 when it has none."""
    shape = np.asarray(d2.shape)
    d2p = np.pad(np.asarray(d2, np.float32), 1)
    pshape = np.asarray(d2p.shape)
    pstrides = np.array([pshape[1] * pshape[2], pshape[2], 1], np.int64)
    flat = d2p.reshape(-1)
    ijk = np.stack(np.unravel_index(centres, tuple(shape)), axis=1) + 1
    lin = ijk @ pstrides
    dq = flat[lin]
    choice = np.full(len(centres), -1, np.int64)
    todo = np.arange(len(centres))
    for j, e in enumerate(_ordered_neighbours(1)):
        if todo.size == 0:
            break
        off = int(e @ pstrides)
        dn = flat[lin[todo] + off]
        greater = (dn > dq[todo]) | ((dn == dq[todo]) & (off > 0))
        choice[todo[greater]] = j
        todo = todo[~greater]
    return choice


def _stamp(out: np.ndarray, d2: np.ndarray, centres: np.ndarray, sp: np.ndarray, cancel=None) -> None:
    """Stamp the closed balls of ``centres`` (linear indices, ascending d²) into ``out`` as a running maximum
    of the diameter ``2·d`` (float32, computed as Fiji does: ``(float)(2·sqrt(d²))``).

    Crescents instead of balls: if a 26-neighbour ``g = q + e`` of ``q`` is greater in the strict order
    (d², linear index), every voxel of ``B(g, d(q)) ⊆ B(g, d(g))`` receives at least ``d(g) ≥ d(q)`` anyway
    (by induction down the order: a chain of greater neighbours ends at a ball stamped whole), so ``q``
    stamps only ``B(q, d(q)) \\ B(q + e, d(q))`` — about ``3|e|/(4r)`` of the ball. In offset terms: the
    offsets ``o`` of the length-sorted prefix of length ``k`` whose shifted offset ``o − e`` ranks ≥ ``k``.
    Equal radii are stamped together (one value per write, so write order inside a call is irrelevant),
    in ascending order, so later writes are maxima. ``out`` is written through a padded copy (a ball may
    leave the image: the border is not background). A closed ball reaches the background voxels at exactly
    ``d(q)``, so ``out`` is painted there too (Fiji's raw map; :func:`local_thickness` masks it).
    """
    if centres.size == 0:
        return
    d2c = d2.reshape(-1)[centres].astype(np.float64)
    tol = _tolerance(sp)
    offs, on2 = _ball_offsets(float(d2c.max()) * (1 + tol), sp)
    pad = np.abs(offs).max(axis=0) + 1
    shape = np.asarray(out.shape)
    pshape = shape + 2 * pad
    work = np.zeros(tuple(pshape), np.float32)
    itype = np.int32 if work.size < 2**31 - 1 else np.int64
    pstrides = np.array([pshape[1] * pshape[2], pshape[2], 1], np.int64)
    lin_off = (offs @ pstrides).astype(itype)
    ijk = np.stack(np.unravel_index(centres, tuple(shape)), axis=1) + pad
    lin_c = (ijk @ pstrides).astype(itype)
    klen = _prefix_lengths(d2c, on2, tol)
    dvals = (2.0 * np.sqrt(d2c)).astype(np.float32)
    small = int(klen.sum()) < _PAIRS_PER_CHUNK  # few pairs: plain balls, less bookkeeping
    choice = np.full(len(centres), -1, np.int64) if small else _greater_neighbour(d2, centres)
    neigh = _ordered_neighbours(1)
    # rank of every offset in the sorted list, on a dense grid, to rank the shifted offsets o − e
    reach = np.abs(offs).max(axis=0) + 1
    grid = np.full(tuple(2 * reach + 1), np.iinfo(np.int64).max, np.int64)
    grid[tuple((offs + reach).T)] = np.arange(len(offs))
    flat = work.reshape(-1)
    # runs of equal radius (centres are sorted): one value per write
    bounds = np.flatnonzero((np.diff(klen) != 0) | (np.diff(dvals) != 0)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(klen)]])
    for a, b in zip(starts, stops):
        k = int(klen[a])
        if k == 0:
            continue
        value = dvals[a]
        ch = choice[a:b]
        for j in (np.unique(ch) if not small else (-1,)):
            if j < 0:
                offk = lin_off[:k]
            else:
                shifted = offs[:k] - neigh[j] + reach
                offk = lin_off[:k][grid[tuple(shifted.T)] >= k]
            if offk.size == 0:
                continue
            sel = lin_c[a:b][ch == j]
            step = max(1, _PAIRS_PER_CHUNK // offk.size)
            for c in range(0, len(sel), step):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                flat[sel[c : c + step, None] + offk[None, :]] = value
    core = tuple(slice(int(p), int(p + s)) for p, s in zip(pad, shape))
    np.maximum(out, work[core], out=out)


def clean_up_local_thickness(painted: np.ndarray) -> np.ndarray:
    """Fiji's ``Clean_Up_Local_Thickness`` of a raw painted map (0 = unpainted), as BoneJ runs it.

    A painted voxel with an unpainted 26-neighbour inside the image (a "surface" voxel; outside the image
    does not count) takes the mean of its *interior* painted 26-neighbours, summed in float32 in Fiji's
    order (:data:`_FIJI_NEIGHBOURS`); with none it keeps its value. Interior voxels are unchanged, and
    surface voxels only read interior ones, so the order of the voxels does not matter.

    Parameters
    ----------
    painted : float32 ndarray (D, H, W)
        The closed-ball map before masking: structure voxels and the background voxels the balls reach.

    Returns
    -------
    float32 ndarray, a new array.
    """
    t = np.asarray(painted, np.float32)
    on = t != 0
    interior = _all_26_neighbours(on)
    lin = np.flatnonzero(on & ~interior)
    shape = np.asarray(t.shape)
    pshape = shape + 2
    pstrides = np.array([pshape[1] * pshape[2], pshape[2], 1], np.int64)
    k, j, i = np.unravel_index(lin, t.shape)
    plin = (k + 1) * pstrides[0] + (j + 1) * pstrides[1] + (i + 1)
    inner = np.pad(np.where(interior, t, np.float32(0)), 1).reshape(-1)
    total = np.zeros(lin.size, np.float32)
    count = np.zeros(lin.size, np.int32)
    for e in _FIJI_NEIGHBOURS:
        v = inner[plin + int(np.dot(e, pstrides))]
        total += v  # float32 adds in Fiji's order (adding 0 for a non-interior neighbour changes nothing)
        count += v > 0
    out = t.copy()
    flat = out.reshape(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        flat[lin] = np.where(count > 0, total / count.astype(np.float32), flat[lin])
    return out


def _face_dilation(on: np.ndarray) -> np.ndarray:
    """``on`` or any of its 6 face neighbours on."""
    out = on.copy()
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(lo)] |= on[tuple(hi)]
        out[tuple(hi)] |= on[tuple(lo)]
    return out


def _all_26_neighbours(on: np.ndarray) -> np.ndarray:
    """``on`` and all of its 26 neighbours inside the image on (outside counts as on): a separable 3³ erosion."""
    out = on.copy()
    for axis in range(3):
        src = out.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(lo)] &= src[tuple(hi)]
        out[tuple(hi)] &= src[tuple(lo)]
    return out


def _scale_map(t: np.ndarray, scale: float) -> None:
    """``t ← (float32)(t · scale)`` with the product in float64 (ImageJ's FloatProcessor.multiply), in slabs."""
    if scale == 1.0:
        return
    step = max(1, (1 << 22) // max(1, t[0].size))
    for a in range(0, t.shape[0], step):
        t[a : a + step] = t[a : a + step].astype(np.float64) * scale


def local_thickness(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    reach: int = 1,
    progress=None,
    cancel=None,
    bonej: bool = False,
) -> np.ndarray:
    """Local thickness map (mm) of a binary structure: diameter of the largest inscribed ball holding each voxel.

    Parameters
    ----------
    mask : array_like of bool, shape (D, H, W)
        The structure (bone for Tb.Th, marrow/space for Tb.Sp).
    spacing : 3 floats
        Voxel size in mm along the array axes (D, H, W) (``Volume.array_spacing``).
    reach : int
        Neighbourhood half-width of the exact ridge pruning (a speed knob; the result is the same).
    progress, cancel : optional
        :data:`VolGANCore.progress.ProgressCallback` and :class:`VolGANCore.progress.CancelToken`.
    bonej : bool
        BoneJ Thickness's map: also Fiji's ``Clean_Up_Local_Thickness`` (:func:`clean_up_local_thickness`)
        before the masking, then × the voxel size. Needs isotropic voxels (BoneJ measures in voxels).

    Returns
    -------
    float32 ndarray (D, H, W): τ(p) = 2·max{d(q) : |p − q| ≤ d(q)} in mm on the structure (cleaned up with
    ``bonej``), 0 elsewhere.

    Raises
    ------
    VolGANError
        If the structure fills the whole image (no background: thickness undefined), or ``bonej`` with
        anisotropic voxels.

    References
    ----------
    Hildebrand & Rüegsegger, J Microsc 185:67–75, 1997; Doube et al., Bone 47:1076–1079, 2010;
    Fiji LocalThickness (Local_Thickness_Parallel, Clean_Up_Local_Thickness, MaskThicknessMapWithOriginal).

    Example
    -------
    >>> m = np.zeros((20, 20, 20), bool); m[:, :, 6:10] = True       # a plate 4 voxels thick
    >>> float(local_thickness(m, (0.5, 0.5, 0.5))[m].mean())
    2.0
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise VolGANError(f"mask: expected a 3-D array (D, H, W), got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    sp, scale = _unit_spacing(spacing)
    if bonej:
        sp, scale = np.ones(3), bonej_pixel_width(spacing)
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return out
    if mask.all():
        raise VolGANError(
            "mask: the structure fills the whole image, so its thickness is undefined "
            "(check the threshold, or crop/mask a region that includes background)"
        )
    with Progress(4 if bonej else 3, "local thickness", progress, cancel) as prog:
        d2 = squared_distance_map(mask, sp)
        prog.advance(1, "distance map")
        # Every structure voxel lies in its own ball, so τ(p) ≥ 2·d(p): start from that. Then a ball of the
        # smallest radius (d² = 1: a face neighbour is background) adds nothing on the structure: such balls
        # are not stamped. Off the structure they paint exactly the background voxels face-adjacent to it,
        # with diameter 2, which only the BoneJ mode's clean-up reads (the rest is masked away).
        np.sqrt(d2, out=out, where=mask)
        out *= np.float32(2.0)
        if bonej:
            out[_face_dilation(mask) & ~mask] = 2.0
        centres = ridge_candidates(d2, sp, reach=reach, min_d2=1.0)
        prog.advance(1, f"{len(centres)} maximal balls")
        _stamp(out, d2, centres, sp, cancel)
        prog.advance(1, "stamped")
        if bonej:
            out = clean_up_local_thickness(out)
            prog.advance(1, "cleaned up (Fiji)")
    out[~mask] = 0  # the closed balls also reach background voxels (MaskThicknessMapWithOriginal)
    _scale_map(out, scale)
    return out


def thickness_statistics(tmap: np.ndarray, where: np.ndarray, ddof: int = 0) -> dict[str, float]:
    """Mean, SD and max of a thickness map over ``where``.

    ``ddof=0`` gives the population SD; ``ddof=1`` the sample SD of ImageJ's StackStatistics, which BoneJ
    Thickness reports.
    """
    vals = tmap[where].astype(np.float64)
    if vals.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "max": float("nan")}
    sd = float(vals.std(ddof=ddof)) if vals.size > ddof else 0.0  # one voxel: 0, as ImageJ
    return {"mean": float(vals.mean()), "sd": sd, "max": float(vals.max())}
