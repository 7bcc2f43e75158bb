"""Evaluation metrics: Fréchet distance at 2048-d (ours vs scipy.linalg.sqrtm, the formula of pytorch-fid and
of the anchor; MONAI's ``get_fid_score`` when monai is installed), PRD, and feature-extraction throughput.

Accuracy: each scipy/MONAI row reports the relative difference of our value from its value on the same data.
Networks run with random weights (same arithmetic as the published ones).
"""

from __future__ import annotations

import numpy as np

from harness import Case


def _stats(rng, n: int, d: int):
    a = rng.normal(size=(n, d)) @ (rng.normal(size=(d, d)) / np.sqrt(d))
    b = rng.normal(size=(n, d)) @ (rng.normal(size=(d, d)) / np.sqrt(d)) + 0.05
    return a, b, (a.mean(0), np.cov(a, rowvar=False)), (b.mean(0), np.cov(b, rowvar=False))


def _scipy_fd(mu1, s1, mu2, s2) -> float:
    import scipy.linalg

    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def cases(quick: bool) -> list[Case]:
    import torch

    from GANTrainerLib.evaluation.features import RandomResNet10VolumeExtractor, StatsSliceExtractor
    from GANTrainerLib.evaluation.frechet import frechet_distance, frechet_distance_from_features
    from GANTrainerLib.evaluation.inception import FIDInceptionV3
    from GANTrainerLib.evaluation.knn import precision_recall_density_coverage
    from GANTrainerLib.evaluation.prd import prd_auc, prd_from_features, prd_num_clusters

    rng = np.random.default_rng(0)
    out: list[Case] = []
    d = 512 if quick else 2048
    n = d + 2000
    a, b, st1, st2 = _stats(rng, n, d)
    ref = {}

    def scipy_case():
        v = _scipy_fd(*st1, *st2)
        return {"rel_diff_ours_vs_this": abs(ref["ours"] - v) / v}

    def ours_case():
        ref["ours"] = frechet_distance(*st1, *st2)

    group = f"Fréchet distance {d}-d (from mean+cov)"
    # ours first: BLAS threads left spinning by scipy's sqrtm would otherwise slow torch's threads down
    out.append(Case(group, "GANTrainerLib frechet_distance (Cholesky + eigvalsh)", ours_case, repeats=3))
    out.append(Case(group, "scipy.linalg.sqrtm (pytorch-fid / anchor formula)", scipy_case, reference=True,
                    repeats=1, warmup=0))
    try:
        from monai.metrics.fid import get_fid_score

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out.append(Case(group, "MONAI get_fid_score (from features)",
                        lambda: {"rel_diff_ours_vs_this": abs(ref["ours"] - float(get_fid_score(ta, tb)))
                                 / float(get_fid_score(ta, tb))}, repeats=1, warmup=0))
    except ImportError:
        pass

    # low-rank path: fewer samples than dimensions (e.g. 300 volumes, 2048-d)
    a2, b2 = a[:300], b[:300]
    st1b = (a2.mean(0), np.cov(a2, rowvar=False))
    st2b = (b2.mean(0), np.cov(b2, rowvar=False))
    ref2 = {}

    def lowrank_case():
        ref2["ours"] = frechet_distance_from_features(a2, b2)

    def scipy_lowrank_case():
        v = _scipy_fd(*st1b, *st2b)
        return {"rel_diff_ours_vs_this": abs(ref2["ours"] - v) / v}
    group = f"Fréchet distance {d}-d, 300 samples per set"
    out.append(Case(group, "GANTrainerLib frechet_distance_from_features (nuclear norm)", lowrank_case, repeats=3))
    out.append(Case(group, "scipy.linalg.sqrtm", scipy_lowrank_case, reference=True, repeats=1, warmup=0))

    nv = 200 if quick else 1000
    fa, fb = rng.normal(size=(nv, 512)), rng.normal(size=(nv, 512)) + 0.1
    out.append(Case(f"PRD {nv}+{nv} x 512-d (default {prd_num_clusters(nv)} clusters, 10 runs, 1001 angles)",
                    "GANTrainerLib prd (seeded k-means)",
                    lambda: {"auc": prd_auc(*prd_from_features(fb, fa)[:2])}, reference=True, repeats=3))
    out.append(Case(f"PRD {nv}+{nv} x 512-d (the paper's 10 clusters, 10 runs, 1001 angles)",
                    "GANTrainerLib prd (seeded k-means)",
                    lambda: {"auc": prd_auc(*prd_from_features(fb, fa, num_clusters=10)[:2])}, reference=True, repeats=3))
    out.append(Case(f"P/R/D/C {nv}+{nv} x 512-d (k=5)", "GANTrainerLib precision_recall_density_coverage",
                    lambda: (precision_recall_density_coverage(fa, fb), None)[1], reference=True, repeats=3))

    n_sl = 8 if quick else 32
    slices = (rng.random((n_sl, 128, 128)) * 255).astype(np.uint8)
    net = FIDInceptionV3()
    x = torch.from_numpy(slices).float()[:, None] / 255

    def inception():
        with torch.inference_mode():
            net(x)

    group = f"slice features ({n_sl} slices 128²)"
    out.append(Case(group, "FIDInceptionV3 pool3 (resize 299²)", inception, reference=True, repeats=2,
                    unit_count=n_sl, unit="slices"))
    stats = StatsSliceExtractor()
    out.append(Case(group, "fallback-slice-stats-v1", lambda: (stats(slices), None)[1], repeats=3,
                    unit_count=n_sl, unit="slices"))
    nvol = 1 if quick else 4
    vols = rng.normal(size=(nvol, 128, 128, 32)).astype(np.float32)
    res = RandomResNet10VolumeExtractor()
    out.append(Case(f"volume features ({nvol} × 32×128×128)", "MedicalNet ResNet-10 (random weights)",
                    lambda: (res(vols), None)[1], reference=True, repeats=2, unit_count=nvol, unit="volumes"))
    return out
