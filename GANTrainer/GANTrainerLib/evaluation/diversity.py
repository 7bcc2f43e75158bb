"""Intra-set diversity by 3-D MS-SSIM: the mean multi-scale structural similarity of distinct pairs in one set.

A generator that collapses onto a few modes produces volumes that resemble each other: their mean pairwise
MS-SSIM (Wang et al. 2003) is higher than that of the real set (Odena et al. 2017 introduced this reading
for GAN samples). **Lower = more diverse**; the figure to compare with is the same mean over pairs of real
volumes.

Computation (MONAI's :func:`monai.metrics.regression.compute_ms_ssim`, 3-D, Gaussian window σ = 1.5):

* Each volume is windowed to its own 0.5–99.5 % percentiles and mapped to [0, 1] (``data_range`` 1), so
  the figure does not depend on the intensity units of either set; a constant volume becomes all zeros.
* **Scales for small volumes.** MS-SSIM halves the volume between scales and filters every scale with a
  valid (unpadded) window, so the coarsest scale must still hold one window. With ``m`` the smallest
  spatial axis and ``k`` the window (default 7; shrunk to the largest odd size ≤ ``m`` when ``m < k``,
  at least 3), the number of scales ``n`` is the largest ``n ≤ 5`` with ``m // 2**(n-1) ≥ k`` and
  ``m // max(1, n-1)**2 > k - 1`` (the size check MONAI applies). The weights are the first ``n`` of
  Wang's five (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), renormalised to sum 1; ``n = 1`` is plain SSIM.
  Examples with k = 7: 8×32×32 → 1 scale, 32×128×128 and 32³ → 3 scales, 64³ → 4, 128³ → 5.
* **Pairs.** All distinct pairs when a set has at most ``n_pairs`` of them, else ``n_pairs`` distinct
  pairs drawn without replacement from a generator seeded with ``seed`` (the same seed → the same pairs
  and the same value).

References
----------
Wang Z., Simoncelli E. P., Bovik A. C., Multiscale structural similarity for image quality assessment,
Asilomar Conference on Signals, Systems and Computers, 2003.
Odena A., Olah C., Shlens J., Conditional image synthesis with auxiliary classifier GANs, ICML 2017.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from VolGANCore.errors import VolGANError

__all__ = ["MSSSIM_WEIGHTS", "msssim_settings", "normalise_for_msssim", "sample_pairs", "pairwise_ms_ssim",
           "ms_ssim", "msssim_diversity", "mean_over_subset"]

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
KERNEL_SIGMA = 1.5


def msssim_settings(shape: Sequence[int], kernel_size: int = 7) -> dict:
    """Window size, number of scales and weights for volumes of ``shape`` (module docstring: the rule)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise VolGANError(f"MS-SSIM: expected a 3-D shape (D, H, W), got {shape}")
    m = min(shape)
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise VolGANError(f"MS-SSIM: kernel size must be odd and ≥ 3, got {kernel_size}")
    if m < 3:
        raise VolGANError(f"MS-SSIM: volumes of shape {shape} are too small (each side must be ≥ 3 voxels)")
    k = kernel_size if m >= kernel_size else (m if m % 2 else m - 1)
    n = 1
    for cand in range(2, len(MSSSIM_WEIGHTS) + 1):
        if m // 2 ** (cand - 1) >= k and m // max(1, cand - 1) ** 2 > k - 1:
            n = cand
        else:
            break
    w = np.asarray(MSSSIM_WEIGHTS[:n], np.float64)
    w = w / w.sum()
    return {"kernel_size": int(k), "kernel_sigma": KERNEL_SIGMA, "n_scales": int(n),
            "weights": [float(x) for x in w], "smallest_axis": int(m), "data_range": 1.0,
            "normalisation": "per-volume 0.5-99.5 % percentile window to [0, 1]"}


def normalise_for_msssim(volume: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """The volume's own percentile window mapped to [0, 1] and clipped (float32); constant → zeros."""
    v = np.asarray(volume, dtype=np.float64)
    lo, hi = np.percentile(v, percentiles)
    if not hi > lo:
        return np.zeros(v.shape, np.float32)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def sample_pairs(n: int, n_pairs: int, seed: int = 0) -> np.ndarray:
    """Distinct index pairs ``(i, j)``, ``i < j < n``: all of them when there are ≤ ``n_pairs``, else a
    seeded sample of ``n_pairs`` without replacement. Returns an int array (m, 2), rows sorted."""
    if n < 2 or n_pairs < 1:
        return np.zeros((0, 2), np.int64)
    total = n * (n - 1) // 2
    if total <= n_pairs:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], axis=1).astype(np.int64)
    rng = np.random.default_rng(seed)
    if total <= 4_000_000:
        pick = np.sort(rng.choice(total, size=n_pairs, replace=False))
        # row i of the upper triangle starts at offset i*n - i*(i+1)/2 (pairs (i, i+1) … (i, n-1))
        starts = np.arange(n) * n - np.arange(n) * (np.arange(n) + 1) // 2
        i = np.searchsorted(starts, pick, side="right") - 1
        j = pick - starts[i] + i + 1
        return np.stack([i, j], axis=1).astype(np.int64)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < n_pairs:  # huge sets: rejection sampling, no n² table
        a, b = rng.integers(0, n, 2)
        if a != b:
            chosen.add((int(min(a, b)), int(max(a, b))))
    return np.array(sorted(chosen), np.int64)


def pairwise_ms_ssim(
    volumes: Sequence[np.ndarray],
    pairs: np.ndarray,
    settings: Optional[dict] = None,
    device: str = "cpu",
    batch: int = 8,
    normalised: bool = False,
    on_batch: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
    """MS-SSIM of each pair ``(i, j)`` of ``volumes`` (arrays of one shape (D, H, W)); float64 array.

    ``normalised=True`` means the volumes are already in [0, 1] (:func:`normalise_for_msssim`).
    ``on_batch(k)`` is called after each batch with the number of pairs it held (progress, cancellation).
    """
    import torch
    from monai.metrics.regression import compute_ms_ssim

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return np.zeros(0)
    shape = np.asarray(volumes[0]).shape
    settings = settings or msssim_settings(shape)
    vols = volumes if normalised else [normalise_for_msssim(v) for v in volumes]
    out = np.zeros(len(pairs))
    for s in range(0, len(pairs), batch):
        chunk = pairs[s:s + batch]
        x = torch.from_numpy(np.stack([vols[i] for i in chunk[:, 0]])[:, None]).to(device)
        y = torch.from_numpy(np.stack([vols[j] for j in chunk[:, 1]])[:, None]).to(device)
        with torch.no_grad():
            val = compute_ms_ssim(x, y, spatial_dims=3, data_range=1.0, kernel_size=settings["kernel_size"],
                                  kernel_sigma=settings["kernel_sigma"], weights=tuple(settings["weights"]))
        out[s:s + len(chunk)] = val.reshape(-1).double().cpu().numpy()
        if on_batch is not None:
            on_batch(len(chunk))
    return out


def ms_ssim(a: np.ndarray, b: np.ndarray, kernel_size: int = 7, device: str = "cpu") -> float:
    """MS-SSIM of two volumes of one shape, each windowed to [0, 1] (1 = identical structure)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise VolGANError(f"MS-SSIM: shapes differ, {a.shape} vs {b.shape}")
    return float(pairwise_ms_ssim([a, b], np.array([[0, 1]]), msssim_settings(a.shape, kernel_size), device)[0])


def mean_over_subset(pairs: np.ndarray, values: np.ndarray, members: np.ndarray) -> Optional[float]:
    """Mean of ``values`` over the pairs whose two ends are both in ``members`` (None when there is none)."""
    if len(pairs) == 0:
        return None
    inside = np.isin(pairs[:, 0], members) & np.isin(pairs[:, 1], members)
    return float(values[inside].mean()) if inside.any() else None


def msssim_diversity(
    volumes: Sequence[np.ndarray],
    n_pairs: int = 100,
    seed: int = 0,
    kernel_size: int = 7,
    device: str = "cpu",
    on_batch: Optional[Callable[[int], None]] = None,
) -> dict:
    """Mean MS-SSIM over distinct pairs of one set (lower = more diverse).

    Returns
    -------
    dict: ``mean``, ``sd`` (over pairs), ``n_pairs``, ``pairs`` (m × 2), ``values`` (per pair), ``settings``.
    """
    volumes = list(volumes)
    if len(volumes) < 2:
        raise VolGANError(f"MS-SSIM diversity needs ≥ 2 volumes in a set, got {len(volumes)}")
    settings = msssim_settings(np.asarray(volumes[0]).shape, kernel_size)
    pairs = sample_pairs(len(volumes), n_pairs, seed)
    values = pairwise_ms_ssim(volumes, pairs, settings, device, on_batch=on_batch)
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n_pairs": int(len(pairs)), "pairs": pairs, "values": values, "settings": settings}
