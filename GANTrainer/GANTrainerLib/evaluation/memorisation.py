"""Memorisation check: is a generated volume a near-copy of a training volume?

For every generated volume: its nearest training volume by normalised cross-correlation (NCC, Pearson
correlation of all voxels) and by feature distance (Euclidean, 3-D features). The yardstick is the
real-vs-real nearest-neighbour distribution (each training volume against the *other* training volumes):
two different subjects are rarely closer than that. A generated volume is a **suspected copy** when its
NCC to its nearest training volume exceeds the ``1 − quantile`` quantile of the real-vs-real NN NCCs *and*
its feature distance is below the ``quantile`` quantile of the real-vs-real NN feature distances (both
criteria: with few real volumes either tail alone is met by chance by about one generated volume in n).
Each generated volume's criteria met are reported, so a stricter or looser reading is possible.

References
----------
Meehan C., Chaudhuri K., Dasgupta S., "A non-parametric test to detect data-copying in generative models",
AISTATS 2020 (nearest-neighbour distances against a held-out real baseline).
"""

from __future__ import annotations

import numpy as np

from .knn import pairwise_distances

__all__ = ["standardise_rows", "ncc_matrix", "memorisation_check"]


def standardise_rows(x) -> np.ndarray:
    """Rows centred and scaled to unit norm (float32); constant rows become zeros (NCC 0 with anything)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def ncc_matrix(a_std: np.ndarray, b_std: np.ndarray, block: int = 64) -> np.ndarray:
    """NCC between every row of ``a_std`` and of ``b_std`` (both from :func:`standardise_rows`), float64."""
    out = np.empty((a_std.shape[0], b_std.shape[0]))
    for s in range(0, a_std.shape[0], block):
        out[s:s + block] = a_std[s:s + block].astype(np.float64) @ b_std.T.astype(np.float64)
    return np.clip(out, -1.0, 1.0)


def memorisation_check(
    real_vox,
    fake_vox,
    real_features,
    fake_features,
    quantile: float = 0.01,
) -> dict:
    """Nearest training volume of each generated one, the real-vs-real yardstick, and suspected copies.

    Parameters
    ----------
    real_vox, fake_vox : arrays (N, V), (M, V)
        Standardised flattened volumes (:func:`standardise_rows`).
    real_features, fake_features : arrays (N, d), (M, d)
        3-D features of the same volumes.
    quantile : float
        Tail of the real-vs-real distribution beyond which a generated volume is suspect (0 < q < 0.5).

    Returns
    -------
    dict
        ``fake_nn`` (per generated volume: ``ncc``, ``ncc_index``, ``feature_distance``, ``feature_index``),
        ``real_nn`` (the same for real vs other real), ``thresholds`` and ``suspects`` (indices into the
        generated set, sorted by NCC descending) and ``criteria_counts`` (how many generated volumes met
        each criterion alone).
    """
    if not 0 < quantile < 0.5:
        raise ValueError(f"quantile: expected 0 < quantile < 0.5, got {quantile}")
    n_real = real_vox.shape[0]
    if n_real < 2:
        raise ValueError("memorisation_check needs ≥ 2 real volumes for the real-vs-real yardstick")
    c_fr = ncc_matrix(fake_vox, real_vox)
    c_rr = ncc_matrix(real_vox, real_vox)
    np.fill_diagonal(c_rr, -np.inf)
    d_fr = pairwise_distances(fake_features, real_features)
    d_rr = pairwise_distances(real_features, real_features)
    np.fill_diagonal(d_rr, np.inf)

    def nn(c, d):
        ci, di = c.argmax(1), d.argmin(1)
        rows = np.arange(c.shape[0])
        return {"ncc": c[rows, ci], "ncc_index": ci, "feature_distance": d[rows, di], "feature_index": di}

    f, r = nn(c_fr, d_fr), nn(c_rr, d_rr)
    ncc_thr = float(np.quantile(r["ncc"], 1 - quantile))
    dist_thr = float(np.quantile(r["feature_distance"], quantile))
    suspects = []
    for j in np.argsort(-f["ncc"], kind="stable"):
        crit = []
        if f["ncc"][j] > ncc_thr:
            crit.append("ncc")
        if f["feature_distance"][j] < dist_thr:
            crit.append("feature")
        if len(crit) == 2:
            suspects.append({"index": int(j), "criteria": crit, "ncc": float(f["ncc"][j]),
                             "ncc_index": int(f["ncc_index"][j]),
                             "feature_distance": float(f["feature_distance"][j]),
                             "feature_index": int(f["feature_index"][j])})
    med = float(np.median(r["feature_distance"]))
    return {
        "fake_nn": {k: v.tolist() for k, v in f.items()},
        "real_nn": {k: v.tolist() for k, v in r.items()},
        "thresholds": {"quantile": quantile, "ncc_above": ncc_thr, "feature_distance_below": dist_thr},
        "suspects": suspects,
        "criteria_counts": {"ncc": int((f["ncc"] > ncc_thr).sum()),
                            "feature": int((f["feature_distance"] < dist_thr).sum())},
        "feature_distance_ratio_median": float(np.median(f["feature_distance"]) / med) if med > 0 else None,
    }
