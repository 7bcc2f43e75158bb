"""Fréchet distance between Gaussians fitted to two feature sets (FID, MedicalNet distance), computed stably.

    d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}

The matrix square root is never formed. tr (Σ₁Σ₂)^{1/2} is the sum of the square roots of the
eigenvalues of Σ₁Σ₂, which equal those of the symmetric PSD matrix Lᵀ Σ₂ L for any factor Σ₁ = L Lᵀ
(Cholesky, or the symmetric square root from ``eigh`` when Σ₁ is singular). One ``eigvalsh`` of a
symmetric matrix replaces the Schur-based ``scipy.linalg.sqrtm`` of the non-symmetric product (about 48 s
at 2048-d on a 2-core CPU, and prone to complex round-off): ~1–2 s here (``benchmarks/bench_evaluation.py``).
When a set has fewer samples than dimensions the covariances are low-rank and the trace is computed
exactly from the centred data instead: with Σᵢ = AᵢᵀAᵢ/(nᵢ−1), tr(Σ₁Σ₂)^{1/2} = ‖A₁A₂ᵀ‖_* / √((n₁−1)(n₂−1))
(the nuclear norm of an n₁×n₂ matrix), which is cheaper and has no rank-deficiency round-off at all.

References
----------
Heusel M. et al., "GANs trained by a two time-scale update rule converge to a local Nash equilibrium", NeurIPS 2017.
Dowson D. C., Landau B. V., "The Fréchet distance between multivariate normal distributions", J. Multivar. Anal. 1982.
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_statistics", "frechet_distance", "frechet_distance_from_features", "FrechetDistance"]


def _check_features(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (n_samples, n_features) array, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 samples for a covariance, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or Inf values")
    return x


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of an (n, d) feature array (``np.cov(rowvar=False)``)."""
    x = _check_features(features, "features")
    return x.mean(0), np.cov(x, rowvar=False)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, device: str = "cpu") -> float:
    import torch

    s1 = torch.as_tensor(sigma1, dtype=torch.float64, device=device)
    s2 = torch.as_tensor(sigma2, dtype=torch.float64, device=device)
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    factor, info = torch.linalg.cholesky_ex(s1)
    if int(info) != 0:  # singular or indefinite by round-off: symmetric square root with clipped eigenvalues
        w, u = torch.linalg.eigh(s1)
        factor = (u * w.clamp_min(0).sqrt()) @ u.T
    m = factor.T @ s2 @ factor
    ev = torch.linalg.eigvalsh(0.5 * (m + m.T))
    return float(ev.clamp_min(0).sqrt().sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, device: str = "cpu") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the squared form that FID reports).

    Parameters
    ----------
    mu1, mu2 : array (d,)
        Means.
    sigma1, sigma2 : array (d, d)
        Symmetric positive semi-definite covariances.
    device : str
        Torch device for the eigen-decomposition (float64).

    Returns
    -------
    float
        ``‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr(Σ₁Σ₂)^{1/2}``, clipped at 0 against round-off.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
                         f"sigma2 {sigma2.shape} do not describe two Gaussians of one dimension")
    diff = mu1 - mu2
    tr = _trace_sqrt_product(sigma1, sigma2, device)
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr))


def frechet_distance_from_features(features1, features2, device: str = "cpu") -> float:
    """Fréchet distance of Gaussians fitted to two (n, d) feature sets; exact low-rank path when n ≤ d."""
    import torch

    x1 = _check_features(features1, "features1")
    x2 = _check_features(features2, "features2")
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"features1 has {x1.shape[1]} features per sample, features2 {x2.shape[1]}")
    n1, n2, d = x1.shape[0], x2.shape[0], x1.shape[1]
    if min(n1, n2) <= d:
        a1 = torch.as_tensor(x1 - x1.mean(0), device=device)
        a2 = torch.as_tensor(x2 - x2.mean(0), device=device)
        nuclear = float(torch.linalg.svdvals(a1 @ a2.T).sum())
        tr = nuclear / np.sqrt((n1 - 1) * (n2 - 1))
        diff = x1.mean(0) - x2.mean(0)
        tr1 = float((a1 * a1).sum()) / (n1 - 1)
        tr2 = float((a2 * a2).sum()) / (n2 - 1)
        return max(0.0, float(diff @ diff + tr1 + tr2 - 2.0 * tr))
    return frechet_distance(*feature_statistics(x1), *feature_statistics(x2), device=device)


class FrechetDistance:
    """Metric object: ``FrechetDistance()(real_features, fake_features) -> float`` (MONAI-style wrapper).

    Parameters
    ----------
    device : str
        Torch device for the linear algebra.
    """

    def __init__(self, device: str = "cpu"):
        self.device = device

    def __call__(self, real, fake) -> float:
        return frechet_distance_from_features(real, fake, self.device)
