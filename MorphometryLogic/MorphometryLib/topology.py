"""Euler characteristic, connectivity and connectivity density (Odgaard & Gundersen edge correction).

Conventions
-----------
- Foreground is 26-connected, background 6-connected (BoneJ). The Euler characteristic χ of the
  foreground is that of the union of its closed voxel cubes, ``χ = V − E + F − C`` (vertices, edges,
  faces, cubes of the cubical complex), counted exactly with vectorised ORs of shifted arrays.
- The structure inside a sample box is part of a larger one; its contribution to the Euler
  characteristic of the whole is (inclusion–exclusion over a tiling of space by boxes, Odgaard &
  Gundersen 1993)::

      Δχ = χ(X∩V) − ½ Σ_faces χ(X∩F) + ¼ Σ_edges χ(X∩E) − ⅛ Σ_corners χ(X∩P)

  with the face, edge and corner sets taken as the outermost voxel layers/lines/corner voxels (2-D χ with
  8-connectivity, 1-D χ = number of runs). Connectivity (β₁) = 1 − Δχ, Conn.D = (1 − Δχ)/TV (mm⁻³).

References
----------
Odgaard A, Gundersen HJG. Quantification of connectivity in cancellous bone, with special emphasis on
3-D reconstructions. Bone 14:173–182, 1993.
Toriwaki J, Yonekura T. Euler number and connectivity indexes of a three dimensional digital picture.
Forma 17:183–209, 2002.
"""

from __future__ import annotations

import numpy as np

__all__ = ["euler_characteristic", "euler_characteristic_2d", "delta_chi", "connectivity"]


def _or_shifts(p: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """OR of ``p`` shifted by 0/1 along each axis in ``axes`` (result one shorter along those axes)."""
    out = None
    nd = p.ndim
    for bits in range(1 << len(axes)):
        sl = [slice(None)] * nd
        for j, ax in enumerate(axes):
            sl[ax] = slice(1, None) if (bits >> j) & 1 else slice(0, -1)
        v = p[tuple(sl)]
        out = v.copy() if out is None else np.logical_or(out, v, out=out)
    return out


def euler_characteristic(mask: np.ndarray) -> int:
    """Euler characteristic of a 3-D binary image (26-connected foreground), exact.

    Parameters
    ----------
    mask : bool ndarray (D, H, W)

    Returns
    -------
    int: objects − tunnels + cavities.

    Example
    -------
    >>> euler_characteristic(np.ones((3, 3, 3), bool))
    1
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim == 2:
        return euler_characteristic_2d(m)
    p = np.pad(m, 1)
    cubes = int(np.count_nonzero(m))
    faces = sum(int(np.count_nonzero(_or_shifts(p, (a,)))) for a in range(3))
    edges = sum(int(np.count_nonzero(_or_shifts(p, ax))) for ax in ((1, 2), (0, 2), (0, 1)))
    verts = int(np.count_nonzero(_or_shifts(p, (0, 1, 2))))
    return verts - edges + faces - cubes


def euler_characteristic_2d(mask: np.ndarray) -> int:
    """Euler characteristic of a 2-D binary image (8-connected foreground): objects − holes."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim == 1:
        return _euler_1d(m)
    p = np.pad(m, 1)
    squares = int(np.count_nonzero(m))
    edges = sum(int(np.count_nonzero(_or_shifts(p, (a,)))) for a in range(2))
    verts = int(np.count_nonzero(_or_shifts(p, (0, 1))))
    return verts - edges + squares


def _euler_1d(m: np.ndarray) -> int:
    m = np.asarray(m, dtype=bool).astype(np.int8)
    return int(np.count_nonzero(np.diff(np.concatenate([[0], m])) == 1))


def delta_chi(mask: np.ndarray, chi: int | None = None) -> float:
    """Edge-corrected Euler characteristic Δχ (Odgaard & Gundersen 1993) of a sample box.

    Parameters
    ----------
    mask : bool ndarray (D, H, W)
    chi : int, optional
        The Euler characteristic of ``mask`` if already known.

    Returns
    -------
    float (multiples of 1/8).
    """
    m = np.asarray(mask, dtype=bool)
    if chi is None:
        chi = euler_characteristic(m)
    faces = 0
    for ax in range(3):
        for idx in (0, -1):
            faces += euler_characteristic_2d(np.take(m, idx, axis=ax))
    edges = 0
    for ax in range(3):  # lines parallel to axis ax at the 4 corners of the perpendicular plane
        others = [a for a in range(3) if a != ax]
        for i in (0, -1):
            for j in (0, -1):
                sl = [slice(None)] * 3
                sl[others[0]] = i
                sl[others[1]] = j
                edges += _euler_1d(m[tuple(sl)])
    corners = sum(int(m[i, j, k]) for i in (0, -1) for j in (0, -1) for k in (0, -1))
    return float(chi - faces / 2.0 + edges / 4.0 - corners / 8.0)


def connectivity(mask: np.ndarray, spacing=(1.0, 1.0, 1.0), roi_volume_mm3: float | None = None) -> dict[str, float]:
    """Euler characteristic, Δχ, connectivity (1 − Δχ) and Conn.D (mm⁻³) of a sample box.

    Parameters
    ----------
    mask : bool ndarray (D, H, W)
    spacing : 3 floats
        Voxel size in mm (for the total volume TV).
    roi_volume_mm3 : float, optional
        TV to divide by (default: the whole box).

    Returns
    -------
    dict with ``euler``, ``delta_chi``, ``connectivity``, ``conn_density_per_mm3``.
    """
    m = np.asarray(mask, dtype=bool)
    tv = float(roi_volume_mm3) if roi_volume_mm3 else float(m.size * np.prod(spacing))
    chi = euler_characteristic(m)
    dchi = delta_chi(m, chi)
    conn = 1.0 - dchi
    return {"euler": int(chi), "delta_chi": dchi, "connectivity": conn, "conn_density_per_mm3": conn / tv}
