"""Evaluation of generated volumes: feature extractors, distribution metrics, memorisation, reports.

Functional core (NumPy in, floats out) with small metric classes on top, MONAI style:

* :mod:`.frechet` — Fréchet distance (FID/MD), eigenvalue form, ``FrechetDistance``
* :mod:`.prd` — PRD curve, seeded k-means, AUC, F8/F1/8, the cluster rule, ``PRD``
* :mod:`.knn` — improved precision/recall, density/coverage, ``PRDC``
* :mod:`.mmd` — unbiased RBF MMD², ``MMD``
* :mod:`.bootstrap` — percentile intervals, real-vs-real halves
* :mod:`.memorisation` — nearest training volume by NCC and features, suspected copies
* :mod:`.diversity` — intra-set diversity: mean 3-D MS-SSIM over distinct pairs (MONAI)
* :mod:`.border` — border artefacts: per-shell intensity profiles and the frame index
* :mod:`.fidelity` — morphometric fidelity of bone patches and of CoW label maps
* :mod:`.inception`, :mod:`.medicalnet`, :mod:`.features` — networks (published weights from file paths) and fallbacks
* :mod:`.preprocess` — the anchor protocol's slices/normalisation and ours
* :mod:`.report` — :func:`evaluate` (``volgan evaluate``), writing report.json / report.md / PNGs

Torch is imported only where a network or the Fréchet linear algebra runs.
"""

from .bootstrap import bootstrap_ci, bootstrap_many, split_halves
from .border import border_profile, border_report, frame_index
from .diversity import ms_ssim, msssim_diversity, msssim_settings
from .frechet import FrechetDistance, feature_statistics, frechet_distance, frechet_distance_from_features
from .knn import PRDC, precision_recall_density_coverage
from .memorisation import memorisation_check, ncc_matrix, standardise_rows
from .mmd import MMD, mmd_rbf
from .prd import PRD, kmeans, prd_auc, prd_f_beta, prd_from_features, prd_from_histograms, prd_num_clusters

__all__ = [
    "FrechetDistance", "feature_statistics", "frechet_distance", "frechet_distance_from_features",
    "PRD", "kmeans", "prd_auc", "prd_f_beta", "prd_from_features", "prd_from_histograms", "prd_num_clusters",
    "PRDC", "precision_recall_density_coverage",
    "MMD", "mmd_rbf",
    "bootstrap_ci", "bootstrap_many", "split_halves",
    "border_profile", "border_report", "frame_index",
    "memorisation_check", "ncc_matrix", "standardise_rows",
    "ms_ssim", "msssim_diversity", "msssim_settings",
    "evaluate",
]


def evaluate(*args, **kwargs):
    """See :func:`GANTrainerLib.evaluation.report.evaluate` (imported lazily: it pulls in matplotlib)."""
    from .report import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
