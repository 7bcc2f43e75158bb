"""Maximum mean discrepancy with a Gaussian (RBF) kernel, unbiased U-statistic.

    MMD²ᵤ = 1/(m(m−1)) Σ_{i≠i'} k(xᵢ,xᵢ') + 1/(n(n−1)) Σ_{j≠j'} k(yⱼ,yⱼ') − 2/(mn) Σ k(xᵢ,yⱼ),
    k(a, b) = exp(−‖a−b‖² / (2σ²)).

σ defaults to the median heuristic: the median of the pairwise distances of the pooled set (distinct
pairs). The unbiased estimate can be slightly negative when the sets are alike; it is reported as is.

References
----------
Gretton A. et al., "A kernel two-sample test", JMLR 13, 2012.
"""

from __future__ import annotations

import numpy as np

from .knn import pairwise_distances

__all__ = ["median_bandwidth", "mmd_rbf", "MMD"]


def median_bandwidth(x, y) -> float:
    """Median pairwise Euclidean distance of the pooled samples (distinct pairs); 1.0 if all coincide."""
    z = np.vstack([np.asarray(x, np.float64), np.asarray(y, np.float64)])
    d = pairwise_distances(z, z)[np.triu_indices(z.shape[0], 1)]
    med = float(np.median(d)) if d.size else 0.0
    return med if med > 0 else 1.0


def mmd_rbf(x, y, bandwidth: float | None = None) -> tuple[float, float]:
    """Unbiased MMD² between samples ``x`` (m, d) and ``y`` (n, d) with an RBF kernel.

    Returns
    -------
    (mmd2, bandwidth) : float, float
        The estimate and the σ used (median heuristic when ``bandwidth`` is None).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x {x.shape} and y {y.shape} must be (n, d) with one d")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"mmd_rbf needs ≥ 2 samples per set (got {m} and {n})")
    s = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not s > 0:
        raise ValueError(f"bandwidth: expected > 0, got {bandwidth}")
    g = -0.5 / (s * s)
    kxx = np.exp(g * pairwise_distances(x, x) ** 2)
    kyy = np.exp(g * pairwise_distances(y, y) ** 2)
    kxy = np.exp(g * pairwise_distances(x, y) ** 2)
    t_xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    t_yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(t_xx + t_yy - 2.0 * kxy.mean()), s


class MMD:
    """Metric object: ``MMD(bandwidth=None)(real, fake) -> float`` (unbiased RBF MMD²)."""

    def __init__(self, bandwidth: float | None = None):  # RBF σ; None = median heuristic
        self.bandwidth = bandwidth

    def __call__(self, real, fake) -> float:
        return mmd_rbf(real, fake, self.bandwidth)[0]
