"""Circle-of-Willis variant fidelity: do generated samples reproduce the real frequencies of CoW variants?

A sample's variant is the TopCoW pair of presence vectors, anterior [L-A1, Acom, 3rd-A2, R-A1] and
posterior [L-Pcom, L-P1, R-P1, R-Pcom] (Yang et al., TopCoW 2023), measured on its label map by
:func:`MorphometryLib.vessels.cow_variants`: on the generated labels of a joint image+label model, or on a
teacher segmenter's labels of an image-only model (so the paper's model can be scored the same way).

- **Variant-frequency fidelity**: the total-variation distance ``½ Σ_v |p_real(v) − p_gen(v)|`` between the
  empirical distributions of the anterior, posterior and joint (8-bit) variant vectors, with resampling
  intervals over samples (:mod:`.bootstrap`, half-sampling by default) and the real-vs-real value between two
  disjoint halves of the real set: the plug-in TVD of finite samples is biased upwards, and that baseline
  shows the floor a perfect generator would reach at this sample size.
- **Per-segment presence rates**, real vs generated, for each of the eight segments.
- **Conditional accuracy** of a conditional model: the share of samples whose labels show the requested
  anterior / posterior / full variant, and per segment.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from VolGANCore.errors import VolGANError
from VolGANCore.names import COW_VARIANT_SEGMENTS

from .bootstrap import bootstrap_many, split_halves

__all__ = ["SEGMENTS", "PARTS", "variant_matrix", "total_variation", "variant_fidelity", "conditional_accuracy"]

SEGMENTS = COW_VARIANT_SEGMENTS
PARTS = {"anterior": slice(0, 4), "posterior": slice(4, 8), "joint": slice(0, 8)}


def variant_matrix(variants: Sequence[Mapping[str, Sequence[int]] | Sequence[int]], what: str = "variants") -> np.ndarray:
    """``cow_variants`` dicts (or 8-vectors) → an ``(n, 8)`` 0/1 matrix in :data:`SEGMENTS` order."""
    rows = []
    for i, v in enumerate(variants):
        row = list(v["anterior"]) + list(v["posterior"]) if isinstance(v, Mapping) else list(v)
        if len(row) != 8 or any(int(b) not in (0, 1) for b in row):
            raise VolGANError(f"{what}[{i}]: expected 4 anterior + 4 posterior values of 0 or 1, got {row}")
        rows.append([int(b) for b in row])
    if not rows:
        raise VolGANError(f"{what}: no samples")
    return np.asarray(rows, dtype=np.int64)


def _codes(m: np.ndarray, part: str) -> np.ndarray:
    bits = m[:, PARTS[part]]
    return bits @ (1 << np.arange(bits.shape[1])[::-1])


def total_variation(real: np.ndarray, fake: np.ndarray, part: str = "joint") -> float:
    """TVD between the empirical distributions of a part's variant vectors (rows of 0/1 matrices)."""
    a, b = _codes(real, part), _codes(fake, part)
    n_codes = 1 << (PARTS[part].stop - PARTS[part].start)
    pa = np.bincount(a, minlength=n_codes) / len(a)
    pb = np.bincount(b, minlength=n_codes) / len(b)
    return float(0.5 * np.abs(pa - pb).sum())


def variant_fidelity(real, generated, n_boot: int = 500, seed: int = 0) -> dict:
    """Variant-frequency fidelity of a generated set against a real one (module docstring).

    Returns
    -------
    dict
        ``tvd`` {part: value}, ``ci`` {part: interval}, ``real_vs_real`` {part: value or None (< 4 reals)},
        ``presence`` {segment: {"real", "generated", "difference"}}, ``frequencies`` {part: every variant seen, as
        ``{"vector": "1101", "real_count", "real_frequency", "generated_count", "generated_frequency"}``, the most
        common first}, ``n_real``, ``n_generated``.
    """
    r, g = variant_matrix(real, "real variants"), variant_matrix(generated, "generated variants")
    tvd = {p: total_variation(r, g, p) for p in PARTS}
    ci = bootstrap_many(lambda ri, fi: {p: total_variation(r[ri], g[fi], p) for p in PARTS}, len(r), len(g),
                        n_boot=n_boot, seed=seed, estimates=tvd, bounds={p: (0.0, 1.0) for p in PARTS})
    rvr = {p: None for p in PARTS}
    if len(r) >= 4:
        h1, h2 = split_halves(len(r), seed)
        rvr = {p: total_variation(r[h1], r[h2], p) for p in PARTS}
    presence = {s: {"real": float(r[:, k].mean()), "generated": float(g[:, k].mean()),
                    "difference": float(g[:, k].mean() - r[:, k].mean())} for k, s in enumerate(SEGMENTS)}
    freqs = {}
    for p in PARTS:
        a = ["".join(map(str, row)) for row in r[:, PARTS[p]]]
        b = ["".join(map(str, row)) for row in g[:, PARTS[p]]]
        keys = sorted(set(a) | set(b), key=lambda k: (-(a.count(k) + b.count(k)), k))
        freqs[p] = [{"vector": k, "real_count": a.count(k), "real_frequency": a.count(k) / len(a),
                     "generated_count": b.count(k), "generated_frequency": b.count(k) / len(b)} for k in keys]
    return {"tvd": tvd, "ci": ci, "real_vs_real": rvr, "presence": presence, "frequencies": freqs,
            "segments": list(SEGMENTS), "n_real": int(len(r)), "n_generated": int(len(g))}


def conditional_accuracy(requested, observed, segments: Sequence[str] | None = None) -> dict:
    """How often a conditional model's samples show the variant they were asked for.

    ``requested`` and ``observed`` are paired lists (variant dicts or 8-vectors). ``segments`` restricts the
    comparison to the segments the resolution resolves (default: all eight). Returns ``accuracy`` (all the
    chosen segments right), ``anterior`` / ``posterior`` (the chosen segments of that part right, None when
    none is chosen), ``per_segment`` {segment: share right} and ``n``.
    """
    q, o = variant_matrix(requested, "requested variants"), variant_matrix(observed, "observed variants")
    if q.shape != o.shape:
        raise VolGANError(f"conditional accuracy: {len(q)} requested variants but {len(o)} observed")
    chosen = list(SEGMENTS) if segments is None else list(segments)
    unknown = [s for s in chosen if s not in SEGMENTS]
    if unknown or not chosen:
        raise VolGANError(f"segments {unknown or chosen}: choose from {', '.join(SEGMENTS)}")
    cols = [SEGMENTS.index(s) for s in chosen]
    right = q[:, cols] == o[:, cols]
    out = {"accuracy": float(right.all(axis=1).mean()), "segments": chosen, "n": int(len(q)),
           "per_segment": {s: float(right[:, k].mean()) for k, s in enumerate(chosen)}}
    for part in ("anterior", "posterior"):
        idx = [k for k, c in enumerate(cols) if PARTS[part].start <= c < PARTS[part].stop]
        out[part] = float(right[:, idx].all(axis=1).mean()) if idx else None
    return out
