"""Bone surface (marching cubes) and the structure model index (SMI).

Conventions
-----------
- The surface is the 0.5 iso-surface of the binary image (Lorensen & Cline marching cubes, scikit-image),
  in mm with the voxel spacing. Faces cut by the image border or by a region-of-interest mask are *not*
  bone surface: the image is padded by replicating its edge (so the structure continues through the
  border) and only triangles whose centroid lies inside the image box (and inside the ROI) are kept.
- SMI (Hildebrand & Rüegsegger 1997, mesh form): ``SMI = 6 · BV · (dBS/dr) / BS²``, with ``dBS/dr`` the
  rate of change of the surface area when every vertex moves along its (area-weighted) unit normal
  (computed analytically per triangle).
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

__all__ = ["SURFACE_SIGMA", "face_cross", "surface_mesh", "surface_area", "structure_model_index", "triangle_areas"]


def triangle_areas(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area of each triangle (units of ``verts``²)."""
    return 0.5 * np.sqrt(np.sum(face_cross(verts, faces) ** 2, axis=1, dtype=np.float64))


def face_cross(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(v1 − v0) × (v2 − v0) per triangle (float32, (F, 3)): the normal direction, length twice the area."""
    cols = [np.ascontiguousarray(verts[:, c], dtype=np.float32) for c in range(3)]
    f0, f1, f2 = (np.ascontiguousarray(faces[:, k]) for k in range(3))
    a = [c[f1] - c[f0] for c in cols]
    b = [c[f2] - c[f0] for c in cols]
    out = np.empty((len(faces), 3), np.float32)
    np.subtract(a[1] * b[2], a[2] * b[1], out=out[:, 0])
    np.subtract(a[2] * b[0], a[0] * b[2], out=out[:, 1])
    np.subtract(a[0] * b[1], a[1] * b[0], out=out[:, 2])
    return out


def surface_mesh(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    roi: np.ndarray | None = None,
    sigma: float = SURFACE_SIGMA,
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

    Returns
    -------
    verts : float32 (V, 3), mm, array-axis order (D, H, W), origin at the centre of voxel (0, 0, 0)
    faces : int (F, 3)
    """
    from skimage.measure import marching_cubes

    mask = np.asarray(mask, dtype=bool)
    sp = np.asarray(spacing, np.float64)
    if not mask.any() or mask.all():
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    padded = np.pad(mask, 1, mode="edge").astype(np.float32)
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        padded = gaussian_filter(padded, sigma, mode="nearest", truncate=3.0)
    verts, faces, _n, _v = marching_cubes(padded, level=0.5, allow_degenerate=True)
    verts -= 1.0  # voxel-index coordinates of the unpadded image
    shape = np.asarray(mask.shape)
    # only triangles with a vertex beyond the image box can have their centroid outside it
    v_out = np.any((verts < -0.5) | (verts > shape - 0.5), axis=1)
    cand = np.flatnonzero(v_out[faces[:, 0]] | v_out[faces[:, 1]] | v_out[faces[:, 2]])
    keep = np.ones(len(faces), bool)
    if cand.size:
        fc = faces[cand]
        cent = (verts[fc[:, 0]] + verts[fc[:, 1]] + verts[fc[:, 2]]) / 3.0
        keep[cand] = np.all((cent >= -0.5) & (cent <= shape - 0.5), axis=1)
    if roi is not None:
        cent = (verts[faces[:, 0]] + verts[faces[:, 1]] + verts[faces[:, 2]]) / 3.0
        ijk = np.clip(np.rint(cent).astype(np.int64), 0, shape - 1)
        keep &= np.asarray(roi, bool)[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    if not keep.all():
        faces = faces[keep]
    verts = (verts * sp).astype(np.float32)
    return verts, faces


def surface_area(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    roi: np.ndarray | None = None,
    sigma: float = SURFACE_SIGMA,
) -> float:
    """Bone surface BS (mm²) of the marching-cubes mesh (see :func:`surface_mesh`)."""
    verts, faces = surface_mesh(mask, spacing, roi, sigma)
    return float(triangle_areas(verts, faces).sum()) if len(faces) else 0.0


def _vertex_normals(verts: np.ndarray, faces: np.ndarray, fc: np.ndarray | None = None) -> np.ndarray:
    fn = face_cross(verts, faces) if fc is None else fc  # length = 2·area: area-weighted
    n = len(verts)
    vn = np.empty((n, 3), np.float64)
    for c in range(3):
        vn[:, c] = sum(np.bincount(faces[:, k], weights=fn[:, c], minlength=n) for k in range(3))
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    # marching_cubes orders triangles so that these normals point into the structure: flip them outward
    return -vn / np.where(norm > 0, norm, 1.0)


def _area_derivative(verts: np.ndarray, faces: np.ndarray, normals: np.ndarray, fc: np.ndarray) -> float:
    """d(area)/dr of the mesh when every vertex moves along its unit normal, analytically.

    With ``c = a × b`` (``a = v1 − v0``, ``b = v2 − v0``) and the vertices moving by ``r·n_i``:
    ``dc/dr = (n1 − n0) × b + a × (n2 − n0)`` and ``dA/dr = ½ (c · dc/dr) / |c|``.
    """
    cols = [np.ascontiguousarray(verts[:, c], dtype=np.float32) for c in range(3)]
    nrm = [np.ascontiguousarray(normals[:, c], dtype=np.float32) for c in range(3)]
    f0, f1, f2 = (np.ascontiguousarray(faces[:, k]) for k in range(3))
    a = [c[f1] - c[f0] for c in cols]
    b = [c[f2] - c[f0] for c in cols]
    da = [c[f1] - c[f0] for c in nrm]
    db = [c[f2] - c[f0] for c in nrm]
    num = np.zeros(len(faces), np.float32)
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        dci = da[j] * b[k] - da[k] * b[j] + a[j] * db[k] - a[k] * db[j]
        num += fc[:, i] * dci
    den = np.sqrt(np.einsum("ij,ij->i", fc, fc))
    ok = den > 0
    return float(0.5 * np.add.reduce(num[ok] / den[ok], dtype=np.float64))


def structure_model_index(
    mask: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    roi: np.ndarray | None = None,
    mesh: tuple[np.ndarray, np.ndarray] | None = None,
    fc: np.ndarray | None = None,
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
    mesh : (verts, faces), optional
        A mesh from :func:`surface_mesh` to reuse.
    fc : (F, 3) array, optional
        :func:`face_cross` of that mesh, to reuse.

    Returns
    -------
    float: ``6·BV·(dBS/dr)/BS²`` with ``dBS/dr`` the exact derivative of the mesh area as the vertices
    move along their area-weighted normals (0 plates, 3 rods, 4 spheres; negative for concave structures).
    """
    mask = np.asarray(mask, dtype=bool)
    sp = np.asarray(spacing, np.float64)
    verts, faces = mesh if mesh is not None else surface_mesh(mask, sp, roi)
    if len(faces) == 0:
        raise VolGANError("SMI: the structure has no surface (empty or full mask); SMI is undefined")
    fc = face_cross(verts, faces) if fc is None else fc
    normals = _vertex_normals(verts, faces, fc)
    s0 = 0.5 * float(np.add.reduce(np.sqrt(np.einsum("ij,ij->i", fc, fc)), dtype=np.float64))
    ds = _area_derivative(verts, faces, normals, fc)
    bv = float((mask & roi).sum() if roi is not None else mask.sum()) * float(np.prod(sp))
    return float(6.0 * bv * ds / (s0 * s0))
