"""k-NN manifold metrics: improved precision/recall (Kynkäänniemi 2019) and density/coverage (Naeem 2020).

Each real sample Xᵢ gets a ball of radius rₖ(Xᵢ) = distance to its k-th nearest *other* real sample; the
fake samples Yⱼ likewise. With B(X, r) the open ball (``<``, as the reference ``prdc`` code):

* precision = (1/M) Σⱼ 1[∃ i: Yⱼ ∈ B(Xᵢ, rₖ(Xᵢ))]       — fakes inside the real manifold
* recall    = (1/N) Σᵢ 1[∃ j: Xᵢ ∈ B(Yⱼ, rₖ(Yⱼ))]       — reals inside the fake manifold
* density   = 1/(kM) Σⱼ Σᵢ 1[Yⱼ ∈ B(Xᵢ, rₖ(Xᵢ))]         — how many real balls hold each fake (≈ 1 if alike)
* coverage  = (1/N) Σᵢ 1[∃ j: Yⱼ ∈ B(Xᵢ, rₖ(Xᵢ))]        — real balls that hold at least one fake

Distances are Euclidean, computed in float64 blocks (memory O(block · n)).

References
----------
Kynkäänniemi T. et al., "Improved precision and recall metric for assessing generative models", NeurIPS 2019.
Naeem M. F. et al., "Reliable fidelity and diversity metrics for generative models", ICML 2020.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pairwise_distances", "knn_radii", "precision_recall_density_coverage", "PRDC"]


def pairwise_distances(a, b, block: int = 2048) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) in float64, by blocks of rows."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    bb = (b * b).sum(1)
    out = np.empty((a.shape[0], b.shape[0]))
    for s in range(0, a.shape[0], block):
        x = a[s:s + block]
        d2 = (x * x).sum(1)[:, None] + bb[None, :] - 2.0 * x @ b.T
        out[s:s + block] = np.sqrt(np.maximum(d2, 0.0))
    return out


def knn_radii(x, k: int) -> np.ndarray:
    """Distance of each row of ``x`` to its k-th nearest other row (the row itself excluded by index)."""
    x = np.asarray(x, np.float64)
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k: expected 1 ≤ k < n = {x.shape[0]}, got {k}")
    d = pairwise_distances(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def precision_recall_density_coverage(real, fake, k: int = 5) -> dict:
    """Improved precision/recall and density/coverage of ``fake`` against ``real`` features.

    Parameters
    ----------
    real : array (N, d)
    fake : array (M, d)
    k : int
        Neighbourhood size (Naeem et al.: 5; Kynkäänniemi et al.: 3). Reduced to ``min(N, M) − 1`` when a
        set is smaller (the value used is returned as ``k``).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``density``, ``coverage`` (floats) and ``k``.
    """
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"real {real.shape} and fake {fake.shape} must be (n, d) with one d")
    k_used = int(min(k, real.shape[0] - 1, fake.shape[0] - 1))
    if k_used < 1:
        raise ValueError(f"precision/recall/density/coverage need ≥ 2 samples per set (real {real.shape[0]}, "
                         f"fake {fake.shape[0]})")
    r_real = knn_radii(real, k_used)
    r_fake = knn_radii(fake, k_used)
    d_rf = pairwise_distances(real, fake)           # (N, M)
    inside_real = d_rf < r_real[:, None]            # fake j inside real ball i
    inside_fake = d_rf < r_fake[None, :]            # real i inside fake ball j
    return {
        "precision": float(inside_real.any(0).mean()),
        "recall": float(inside_fake.any(1).mean()),
        "density": float(inside_real.sum() / (k_used * fake.shape[0])),
        "coverage": float(inside_real.any(1).mean()),
        "k": k_used,
    }


class PRDC:
    """Metric object: ``PRDC(k=5)(real, fake) -> dict`` of precision, recall, density, coverage."""

    def __init__(self, k: int = 5):  # neighbourhood size
        self.k = k

    def __call__(self, real, fake) -> dict:
        return precision_recall_density_coverage(real, fake, self.k)
