"""Bootstrap confidence intervals over samples (volumes), and the real-vs-real split.

The resampling unit is the *volume*: a metric over slices resamples whole volumes (all their slices), since
slices of one volume are not independent. Percentile intervals (Efron & Tibshirani 1993, ch. 13).
k-NN metrics are undefined with duplicated points (a duplicate is its own nearest neighbour), so their
replicates use the distinct resampled volumes only (about 63 % of each set); their intervals are
therefore wider than a plain bootstrap's (conservative), which the report states.

References
----------
Efron B., Tibshirani R. J., "An Introduction to the Bootstrap", Chapman & Hall 1993.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

__all__ = ["bootstrap_ci", "bootstrap_many", "split_halves"]


def bootstrap_ci(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_real: int,
    n_fake: int,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    unique: bool = False,
    on_replicate: Optional[Callable[[], None]] = None,
) -> dict:
    """Percentile bootstrap interval of ``statistic(real_idx, fake_idx)`` resampling both sets.

    Parameters
    ----------
    statistic : callable
        Takes index arrays into the real and fake sets, returns a float.
    n_real, n_fake : int
        Set sizes.
    n_boot : int
        Replicates (0 disables: returns None bounds).
    seed : int
        Seed of the resampling generator (same seed → same interval).
    alpha : float
        1 − coverage (0.05 → 95 % interval).
    unique : bool
        Pass only the distinct resampled indices (for k-NN metrics, see module docstring).
    on_replicate : callable or None
        Called after each replicate (progress / cancellation).

    Returns
    -------
    dict
        ``low``, ``high``, ``sd`` of the replicates, ``n_boot``, ``level``.
    """
    if n_boot <= 0:
        return {"low": None, "high": None, "sd": None, "n_boot": 0, "level": 1 - alpha}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(n_boot)):
        ri = rng.integers(0, n_real, n_real)
        fi = rng.integers(0, n_fake, n_fake)
        if unique:
            ri, fi = np.unique(ri), np.unique(fi)
        try:
            values.append(float(statistic(ri, fi)))
        except ValueError:  # a replicate too small for the metric (e.g. < 2 distinct samples): skip it
            pass
        if on_replicate:
            on_replicate()
    if not values:
        return {"low": None, "high": None, "sd": None, "n_boot": 0, "level": 1 - alpha}
    v = np.asarray(values)
    lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return {"low": float(lo), "high": float(hi), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "n_boot": int(v.size), "level": 1 - alpha}


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, seeded halves of ``range(n)`` (sizes ⌊n/2⌋ and ⌈n/2⌉ − odd one left out: equal sizes)."""
    if n < 4:
        raise ValueError(f"the real-vs-real baseline needs ≥ 4 real samples, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    h = n // 2
    return np.sort(perm[:h]), np.sort(perm[h:2 * h])


def bootstrap_many(
    statistics: Callable[[np.ndarray, np.ndarray], dict],
    n_real: int,
    n_fake: int,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    on_replicate: Optional[Callable[[], None]] = None,
) -> dict:
    """Like :func:`bootstrap_ci` for a function returning several named floats: one interval per name.

    The same resamples serve every statistic (one pass). A statistic that raises ``ValueError`` on a
    replicate, or returns None/NaN, is left out of that replicate. Returns ``{name: interval dict}``.
    """
    rng = np.random.default_rng(seed)
    collected: dict[str, list[float]] = {}
    for _ in range(max(0, int(n_boot))):
        ri = rng.integers(0, n_real, n_real)
        fi = rng.integers(0, n_fake, n_fake)
        for name, value in statistics(ri, fi).items():
            if value is not None and np.isfinite(value):
                collected.setdefault(name, []).append(float(value))
        if on_replicate:
            on_replicate()
    out = {}
    for name, values in collected.items():
        v = np.asarray(values)
        lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
        out[name] = {"low": float(lo), "high": float(hi), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                     "n_boot": int(v.size), "level": 1 - alpha}
    return out
