"""Turning volumes into network inputs: the anchor protocol's slices and normalisations, and our defaults.

Axis conventions. Our arrays are (D, H, W) = (k, j, i) (SimpleITK order). NIfTI storage order, which
``nibabel.get_fdata()`` returns and the anchor code used, is (i, j, k) = ``array.transpose(2, 1, 0)``.
The anchor took "slices along the third NIfTI axis", i.e. ``data[:, :, k]`` = ``array[k].T``, and fed
MedicalNet the (i, j, k) volume, which is also the order MedicalNet was pre-trained in. Both protocols here
use these orders for real and generated volumes alike (the anchor fed a different orientation in training
and evaluation; we do not).

References
----------
Aydin O. U. et al., "Generative modeling of the Circle of Willis using 3D-StyleGAN", NeuroImage 2024
(evaluation code: claim-berlin/3D_StyleGAN_Circle_of_Willis, MedicalNet/evaluation.py).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "anchor_slices_uint8",
    "default_slices",
    "anchor_medicalnet_input",
    "default_medicalnet_input",
    "to_nifti_order",
    "ANCHOR_N_SLICES",
    "MEDICALNET_BACKGROUNDS",
]

ANCHOR_N_SLICES = 32
MEDICALNET_BACKGROUNDS = ("noise", "zero")  # the anchor's MedicalNet background rule (seeded), or zeros


def to_nifti_order(array: np.ndarray) -> np.ndarray:
    """(D, H, W) = (k, j, i) array -> NIfTI storage order (i, j, k), as ``nibabel.get_fdata()`` returns it."""
    return np.asarray(array).transpose(2, 1, 0)


def _slices_ij(array: np.ndarray, n_slices: int | None) -> np.ndarray:
    """Slices ``data[:, :, k]`` of the NIfTI-ordered data for k < n_slices, as an (n, I, J) float64 stack."""
    if array.ndim != 3:
        raise ValueError(f"array: expected a 3-D (D, H, W) volume, got shape {array.shape}")
    k = array.shape[0] if n_slices is None else min(int(n_slices), array.shape[0])
    return np.asarray(array[:k], dtype=np.float64).transpose(0, 2, 1)


def anchor_slices_uint8(array: np.ndarray, n_slices: int = ANCHOR_N_SLICES) -> np.ndarray:
    """The anchor's FID slices: the first ``n_slices`` along the third NIfTI axis, per-slice min-max to 8 bit.

    Each slice ``s`` becomes ``floor(255 · (s − min s) / (max s − min s))`` as uint8 (the anchor's
    ``(255 * norm).astype(np.uint8)``). **Constant slices** (max = min), where the anchor divided by zero
    and cast NaN to an undefined 8-bit value, become all-zero images here (explicit rule).

    Parameters
    ----------
    array : ndarray (D, H, W)
        One volume, any real dtype.
    n_slices : int
        Number of leading slices (the anchor: 32; fewer if the volume is thinner).

    Returns
    -------
    ndarray, uint8, shape (min(n_slices, D), W, H)
        The slices in NIfTI (i, j) orientation, exactly as the anchor wrote them to PNG.
    """
    s = _slices_ij(array, n_slices)
    lo = s.min(axis=(1, 2), keepdims=True)
    span = s.max(axis=(1, 2), keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    norm = np.where(span > 0, (s - lo) / safe, 0.0)
    return np.floor(255.0 * norm).astype(np.uint8)


def default_slices(array: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Our default 2-D inputs: every slice along the third NIfTI axis, one intensity window per volume.

    The window is the volume's ``percentiles`` (robust to a few hot voxels), mapped linearly to [0, 1]
    and clipped; no 8-bit rounding. Unlike per-slice min-max it keeps the contrast between slices (a dark
    slice stays dark). A constant volume gives all-zero slices.

    Returns
    -------
    ndarray, float32, shape (D, W, H), values in [0, 1]
    """
    s = _slices_ij(array, None)
    lo, hi = np.percentile(s, percentiles)
    if not hi > lo:
        return np.zeros(s.shape, np.float32)
    return np.clip((s - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def anchor_medicalnet_input(array: np.ndarray, background: str = "noise", seed=0) -> np.ndarray:
    """The anchor's MedicalNet input; the background rule is the paper's (seeded) or zeros.

    Steps, as the anchor's ``squeeze_and_normalize_nifti`` and ``GANDataset`` (MedicalNet/evaluation.py,
    MedicalNet/dataset.py): NIfTI order; min-max to [0, 1] per volume (the anchor overwrote the input files
    with it — we never do); z-score with the mean and population SD of the voxels > 0; then the
    **background** — the voxels equal to 0 after the min-max step, i.e. the voxels at the volume's minimum —
    is replaced after the z-scoring:

    * ``"noise"`` (the paper's rule): independent N(0, 1) values in the z-scored units, drawn here from
      ``numpy.random.default_rng(seed)`` so that a report is reproducible (the anchor drew them unseeded);
      ``seed`` may be a sequence, e.g. ``(seed, set, index)`` for one stream per volume;
    * ``"zero"``: 0, the noise's expectation (deterministic without a seed; not the paper's MD).

    Only the random draws differ from the anchor's. A constant volume (no voxel > 0 after min-max) becomes all
    zeros under both rules (the anchor divided by zero there).

    Returns
    -------
    ndarray, float32, shape (W, H, D)
    """
    if background not in MEDICALNET_BACKGROUNDS:
        raise ValueError(f"background: expected one of {MEDICALNET_BACKGROUNDS}, got {background!r}")
    v = to_nifti_order(np.asarray(array, dtype=np.float64))
    lo, hi = v.min(), v.max()
    if not hi > lo:
        return np.zeros(v.shape, np.float32)
    v = (v - lo) / (hi - lo)
    fg = v > 0
    mean, std = v[fg].mean(), v[fg].std()
    out = (v - mean) / (std if std > 0 else 1.0)
    if background == "zero":
        out[~fg] = 0.0
    else:
        noise = np.random.default_rng(seed).standard_normal(v.shape)
        out[~fg] = noise[~fg]
    return out.astype(np.float32)


def default_medicalnet_input(array: np.ndarray) -> np.ndarray:
    """Our default MedicalNet input: NIfTI order, z-score over all voxels (constant volume -> zeros), float32."""
    v = to_nifti_order(np.asarray(array, dtype=np.float64))
    std = v.std()
    if not std > 0:
        return np.zeros(v.shape, np.float32)
    return ((v - v.mean()) / std).astype(np.float32)
