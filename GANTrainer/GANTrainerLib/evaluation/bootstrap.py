"""Resampling confidence intervals over samples (volumes), and the real-vs-real split.

Set-distance metrics (Fréchet distances, MMD, PRD, k-NN metrics) are strongly biased by the *effective*
sample size, and the ordinary bootstrap duplicates about 37 % of the samples: on 60 + 60 samples of 32-d
features the with-replacement replicates of a Fréchet distance of 11.3 averaged 19.4, so neither the
percentile nor the basic interval contained the estimate. The default scheme is therefore **half-sampling**
(McCarthy 1969; subsampling, Politis & Romano 1994): each replicate draws ⌊n/2⌋ samples *without*
replacement from each set. For a smooth statistic the spread of half-sample replicates estimates the
sampling spread at full size (for a mean, Var(half-sample mean | data) = s²/n exactly up to the finite-
population factor), and there are no duplicates (k-NN metrics stay defined). The interval is the replicates'
2.5–97.5 % percentiles *re-centred on the full-sample estimate* (their mean shifted onto it), which removes
the half-size bias; the shift is reported as ``bias``. ``scheme="replacement"`` gives the classic bootstrap
with basic (reverse-percentile) intervals (Davison & Hinkley 1997, §5.2). Intervals are clipped to a
metric's natural range when one is given. The resampling unit is the *volume*: a metric over slices
resamples whole volumes (all their slices), since slices of one volume are not independent.

References
----------
McCarthy P. J., "Pseudo-replication: half samples", Rev. Int. Stat. Inst. 37, 1969.
Politis D. N., Romano J. P., "Large sample confidence regions based on subsamples under minimal
assumptions", Ann. Stat. 22, 1994.
Davison A. C., Hinkley D. V., "Bootstrap Methods and their Application", Cambridge University Press 1997.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

__all__ = ["bootstrap_ci", "bootstrap_many", "split_halves", "SCHEMES"]

SCHEMES = ("half", "replacement")


def _draw(rng: np.random.Generator, n: int, scheme: str) -> np.ndarray:
    if scheme == "half":
        return np.sort(rng.permutation(n)[: max(2, n // 2)])
    return rng.integers(0, n, n)


def bootstrap_many(
    statistics: Callable[[np.ndarray, np.ndarray], dict],
    n_real: int,
    n_fake: int,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    on_replicate: Optional[Callable[[], None]] = None,
    estimates: Optional[dict] = None,
    bounds: Optional[dict] = None,
    scheme: str = "half",
) -> dict:
    """Resampling intervals of several named statistics ``statistics(real_idx, fake_idx) -> {name: float}``.

    Parameters
    ----------
    statistics : callable
        Takes index arrays into the real and fake sets, returns named floats (None/NaN entries are skipped).
    n_real, n_fake : int
        Set sizes.
    n_boot : int
        Replicates (0: no intervals, returns ``{}``).
    seed : int
        Seed of the resampling generator (same seed → same intervals).
    alpha : float
        1 − coverage (0.05 → 95 % intervals).
    on_replicate : callable or None
        Called after each replicate (progress / cancellation).
    estimates : dict or None
        Full-sample values by name; needed for the re-centred (half) and basic (replacement) intervals,
        plain percentile intervals otherwise.
    bounds : dict or None
        name → (low, high) natural range (None for open ends); intervals are clipped to it.
    scheme : {"half", "replacement"}
        Half-sampling without replacement (default) or the classic bootstrap (module docstring).

    Returns
    -------
    dict
        name → ``{"low", "high", "sd", "bias", "n_boot", "level", "method"}``.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")
    rng = np.random.default_rng(seed)
    collected: dict[str, list[float]] = {}
    for _ in range(max(0, int(n_boot))):
        ri = _draw(rng, n_real, scheme)
        fi = _draw(rng, n_fake, scheme)
        for name, value in statistics(ri, fi).items():
            if value is not None and np.isfinite(value):
                collected.setdefault(name, []).append(float(value))
        if on_replicate:
            on_replicate()
    out = {}
    for name, values in collected.items():
        v = np.asarray(values)
        q_lo, q_hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
        est = None if estimates is None else estimates.get(name)
        if est is None:
            lo, hi, method, bias = q_lo, q_hi, "percentile", None
        elif scheme == "half":
            shift = est - v.mean()
            lo, hi, method, bias = q_lo + shift, q_hi + shift, "half-sampling, re-centred percentile", -shift
        else:
            lo, hi, method, bias = 2 * est - q_hi, 2 * est - q_lo, "basic bootstrap", v.mean() - est
        lo_b, hi_b = (bounds or {}).get(name, (None, None))
        lo = lo if lo_b is None else max(lo, lo_b)
        hi = hi if hi_b is None else min(hi, hi_b)
        out[name] = {"low": float(lo), "high": float(hi), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                     "bias": None if bias is None else float(bias), "n_boot": int(v.size),
                     "level": 1 - alpha, "method": method}
    return out


def bootstrap_ci(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_real: int,
    n_fake: int,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    estimate: Optional[float] = None,
    scheme: str = "half",
) -> dict:
    """Interval of one statistic ``statistic(real_idx, fake_idx) -> float`` (see :func:`bootstrap_many`)."""
    res = bootstrap_many(lambda a, b: {"s": statistic(a, b)}, n_real, n_fake, n_boot, seed, alpha,
                         estimates=None if estimate is None else {"s": estimate}, scheme=scheme)
    if "s" not in res:
        return {"low": None, "high": None, "sd": None, "bias": None, "n_boot": 0, "level": 1 - alpha,
                "method": None}
    return res["s"]


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, seeded halves of ``range(n)`` of equal size ⌊n/2⌋ (one sample left out when n is odd)."""
    if n < 4:
        raise ValueError(f"the real-vs-real baseline needs ≥ 4 real samples, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    h = n // 2
    return np.sort(perm[:h]), np.sort(perm[h:2 * h])
