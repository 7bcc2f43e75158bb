"""`Volume`: a 3-D array that never travels without its geometry.

Conventions (README.md, "Data conventions")
--------------------------------------------
- ``array`` has shape ``(D, H, W)``: SimpleITK's ``GetArrayFromImage`` order and Slicer's KJI order.
- ``spacing``, ``origin`` and ``direction`` are in ITK's physical convention: LPS millimetres, spacing and
  origin ordered ``(x, y, z)`` = along the array axes ``(W, H, D)``; ``direction`` is the 3×3 matrix whose
  column *j* is the physical direction of index axis *j* (i, j, k). Physical point of voxel index
  ``(i, j, k)`` = ``origin + direction @ (spacing * (i, j, k))``.
- :attr:`Volume.array_spacing` gives the spacing in array-axis order ``(D, H, W)`` for functions over
  arrays (morphometry, distance maps).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from .errors import VolGANError

__all__ = ["Volume", "as_volume", "check_3d", "check_finite"]


def check_3d(array: np.ndarray, what: str = "volume") -> np.ndarray:
    """Return ``array`` as an ndarray if it is 3-D, else raise a readable :class:`VolGANError`.

    A trailing or leading axis of length 1 on a 4-D array (e.g. a ``128×128×32×1`` NIfTI written by
    other tools) is squeezed, because it is unambiguous; any other rank is refused.
    """
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise VolGANError(
            f"{what}: expected a 3-D array (D, H, W), got {array.ndim}-D with shape {tuple(array.shape)} "
            "(pass a single 3-D volume; split 4-D series into one file per volume)"
        )
    if min(array.shape) < 1:
        raise VolGANError(f"{what}: empty array of shape {tuple(array.shape)}")
    return array


def check_finite(array: np.ndarray, what: str = "volume") -> None:
    """Raise :class:`VolGANError` if ``array`` holds NaN or ±Inf voxels, saying how many and where."""
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        n = int(bad.sum())
        if n:
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise VolGANError(
                f"{what}: {n} non-finite (NaN/Inf) voxel(s), first at index (D,H,W)={first} "
                "(fix or mask them before use, e.g. replace with the background value)"
            )


@dataclasses.dataclass
class Volume:
    """A 3-D image with its geometry and optional label-scheme metadata.

    Parameters
    ----------
    array : ndarray, shape (D, H, W)
        Voxel values.
    spacing : 3 floats
        Voxel size in mm along (x, y, z) = (W, H, D) array axes.
    origin : 3 floats
        Physical LPS position (mm) of the centre of voxel (0, 0, 0).
    direction : 3×3 array
        Columns are the LPS directions of the index axes (i, j, k).
    label_scheme : str or None
        Name of the label scheme (``"topcow13"``, ``"aydin7"``) when ``array`` holds class labels.
    metadata : dict
        Free-form string metadata (written to NRRD/MHA headers).

    Example
    -------
    >>> v = Volume(np.zeros((32, 128, 128), np.float32), spacing=(0.3, 0.3, 0.6))
    >>> v.shape, v.array_spacing
    ((32, 128, 128), (0.6, 0.3, 0.3))
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    label_scheme: str | None = None
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = check_3d(self.array, "Volume.array")
        self.spacing = _triple(self.spacing, "spacing")
        self.origin = _triple(self.origin, "origin", positive=False)
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape == (9,):
            direction = direction.reshape(3, 3)
        if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
            raise VolGANError(f"direction: expected a finite 3×3 matrix, got shape {direction.shape}")
        if abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
            raise VolGANError(f"direction: matrix is not orthonormal (|det| = {abs(np.linalg.det(direction)):.4f})")
        self.direction = direction
        self.metadata = {str(k): str(v) for k, v in (self.metadata or {}).items()}

    # -- geometry -----------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def array_spacing(self) -> tuple[float, float, float]:
        """Spacing in array-axis order (D, H, W), for functions over ``array``."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def index_to_physical(self, ijk: Sequence[float] | np.ndarray) -> np.ndarray:
        """LPS point(s) (mm) of continuous index/indices (i, j, k) = (W, H, D) order; shape (..., 3)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction.T

    def physical_to_index(self, point: Sequence[float] | np.ndarray) -> np.ndarray:
        """Continuous index (i, j, k) of LPS point(s); inverse of :meth:`index_to_physical`."""
        point = np.asarray(point, dtype=np.float64) - np.asarray(self.origin)
        return (point @ np.linalg.inv(self.direction).T) / np.asarray(self.spacing)

    def ijk_to_ras_matrix(self) -> np.ndarray:
        """4×4 IJK→RAS matrix as Slicer's volume nodes use it (LPS flipped to RAS)."""
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        m = np.eye(4)
        m[:3, :3] = lps_to_ras @ self.direction @ np.diag(self.spacing)
        m[:3, 3] = lps_to_ras @ np.asarray(self.origin)
        return m

    def same_geometry(self, other: "Volume", rtol: float = 1e-5, atol: float = 1e-4) -> bool:
        """True if shape, spacing, origin and direction agree (to float32 precision by default)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=rtol, atol=atol)
            and np.allclose(self.origin, other.origin, rtol=rtol, atol=atol)
            and np.allclose(self.direction, other.direction, rtol=rtol, atol=atol)
        )

    def with_array(self, array: np.ndarray, **changes: Any) -> "Volume":
        """A new Volume with the same geometry (and metadata) and a different array of the same shape."""
        array = check_3d(array, "with_array")
        if array.shape != self.shape and "spacing" not in changes:
            raise VolGANError(f"with_array: shape {array.shape} differs from {self.shape}; pass new spacing")
        kw = dict(
            spacing=self.spacing,
            origin=self.origin,
            direction=self.direction.copy(),
            label_scheme=self.label_scheme,
            metadata=dict(self.metadata),
        )
        kw.update(changes)
        return Volume(array, **kw)

    def geometry_dict(self) -> dict[str, Any]:
        """JSON-serialisable geometry (for manifests and model cards)."""
        return {
            "shape_dhw": list(self.shape),
            "spacing_xyz_mm": list(self.spacing),
            "origin_lps_mm": list(self.origin),
            "direction": self.direction.reshape(-1).tolist(),
        }

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:g}" for s in self.spacing)
        scheme = f", label_scheme={self.label_scheme!r}" if self.label_scheme else ""
        return f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing=({sp}) mm{scheme})"


def _triple(values: Any, name: str, positive: bool = True) -> tuple[float, float, float]:
    try:
        t = tuple(float(v) for v in values)
    except TypeError:
        t = (float(values),) * 3
    if len(t) != 3 or not all(np.isfinite(t)):
        raise VolGANError(f"{name}: expected 3 finite numbers, got {values!r}")
    if positive and min(t) <= 0:
        raise VolGANError(f"{name}: voxel spacing must be positive, got {t} mm")
    return t  # type: ignore[return-value]


def as_volume(data: "Volume | np.ndarray", spacing: Sequence[float] | None = None, what: str = "input") -> Volume:
    """Accept a :class:`Volume` or an array (+ spacing in (x, y, z) mm) and return a Volume.

    An array without spacing is accepted with 1 mm isotropic spacing only if ``spacing`` is given
    explicitly; otherwise a :class:`VolGANError` asks for it (physical units depend on it).
    """
    if isinstance(data, Volume):
        if spacing is not None:
            return data.with_array(data.array, spacing=spacing)
        return data
    if spacing is None:
        raise VolGANError(f"{what}: an array has no voxel spacing; pass spacing=(x, y, z) in mm or a Volume")
    return Volume(np.asarray(data), spacing=spacing)
