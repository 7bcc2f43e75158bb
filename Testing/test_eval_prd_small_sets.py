"""PRD on small sets: the cluster rule, the figures the docs quote for it, and real-vs-real halves of 20 + 20
CoW phantoms (fallback features) scoring AUC-PRD ≥ 0.8 with the defaults."""

from __future__ import annotations

import numpy as np
import pytest

from GANTrainerLib.evaluation.prd import prd_auc, prd_from_histograms, prd_num_clusters, prd_sample_warning


def _null_auc(n: int, k: int, draws: int = 400, seed: int = 0) -> float:
    """Mean AUC of two samples of n from one distribution over k equally likely cells (histogram noise only)."""
    rng = np.random.default_rng(seed)
    p = np.full(k, 1.0 / k)
    return float(np.mean([prd_auc(*prd_from_histograms(rng.multinomial(n, p) / n, rng.multinomial(n, p) / n))
                          for _ in range(draws)]))


def test_cluster_rule_and_the_histogram_noise_it_is_built_on():
    assert [prd_num_clusters(n) for n in (1, 19, 20, 39, 50, 100, 199, 200, 5000)] == [2, 2, 2, 3, 5, 10, 19, 20, 20]
    # the figures in prd.py and docs/evaluation.md: 20 per set, 10 cells 0.64, 2 cells 0.96
    assert _null_auc(20, 10) == pytest.approx(0.64, abs=0.02)
    assert _null_auc(20, 2) == pytest.approx(0.96, abs=0.02)
    # with the rule the null AUC stays at about 0.9 or above for every n ≥ 20
    for n in (20, 29, 35, 50, 99, 150, 400):
        assert _null_auc(n, prd_num_clusters(n)) > 0.89, n
    assert prd_sample_warning(100, 10) is None and prd_sample_warning(99, 10).startswith("PRD: 99 samples per set")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """40 CoW TOF-MRA phantoms (16×64×64 at 1 mm) as the real set, 4 others as the generated one."""
    from VolumetricGANLib.phantoms import write_cow_dataset

    root = tmp_path_factory.mktemp("prd")
    real = write_cow_dataset(root / "real", n=40, seed=0, shape=(16, 64, 64), spacing_mm=1.0) / "images"
    fake = write_cow_dataset(root / "fake", n=4, seed=1, shape=(16, 64, 64), spacing_mm=1.0) / "images"
    return real, fake


@pytest.mark.slow
def test_real_vs_real_halves_of_20_plus_20_phantoms_score_high_with_the_defaults(phantoms, tmp_path):
    """The report's real-vs-real halves (20 + 20, fallback features): AUC-PRD ≥ 0.8 with the default protocol;
    the paper's 10 clusters on the same halves stay below it."""
    from GANTrainerLib.evaluation.prd import prd_from_features
    from GANTrainerLib.evaluation.report import evaluate

    rep = evaluate(*phantoms, tmp_path / "rep", n_bootstrap=0, msssim_pairs=0)
    prd = rep["metrics"]["prd_auc"]
    assert rep["settings"]["prd_clusters"] == 2 and prd["extractor"] == "fallback-random-resnet10-seed0"
    assert len(rep["real_vs_real_split"]["half_a"]) == len(rep["real_vs_real_split"]["half_b"]) == 20
    assert prd["real_vs_real"] >= 0.8
    warnings = rep["warnings"]
    assert any(w.startswith("PRD real vs generated: 4 samples per set for 2 clusters") for w in warnings)
    assert not any(w.startswith("PRD real vs real") for w in warnings)  # 20 per set is enough for 2 clusters
    assert any("no intervals (--bootstrap 0) with 4 volumes" in w for w in warnings)
    files = rep["inputs"]["real"]["files"]
    a, b = ([files.index(c + ".nii.gz") for c in rep["real_vs_real_split"][h]] for h in ("half_a", "half_b"))
    feats = np.load(tmp_path / "rep" / "features.npz")["volume_features_real"]
    assert prd_auc(*prd_from_features(feats[b], feats[a], num_clusters=2)[:2]) == pytest.approx(prd["real_vs_real"])
    # the old default of 10 clusters on the same halves: histogram noise dominates at 20 per set
    assert prd_auc(*prd_from_features(feats[b], feats[a], num_clusters=10)[:2]) < 0.8
