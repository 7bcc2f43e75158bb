"""Distribution metrics against independent NumPy/SciPy computations on random features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

from GANTrainerLib.evaluation.bootstrap import bootstrap_ci, split_halves
from GANTrainerLib.evaluation.border import border_profile, border_report, frame_index
from GANTrainerLib.evaluation.frechet import (FrechetDistance, feature_statistics, frechet_distance,
                                              frechet_distance_from_features)
from GANTrainerLib.evaluation.knn import precision_recall_density_coverage
from GANTrainerLib.evaluation.memorisation import memorisation_check, standardise_rows
from GANTrainerLib.evaluation.mmd import mmd_rbf
from GANTrainerLib.evaluation.prd import PRD, kmeans, prd_auc, prd_f_beta, prd_from_features, prd_from_histograms


def test_frame_index_is_near_zero_for_the_same_texture_and_grows_with_border_frames():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(2, 48, 16, 16, 16))
    mean, sd, count = border_profile(real)
    assert len(mean) == 8 and count.sum() == 16 ** 3 and count[0] == 16 ** 3 - 14 ** 3   # shells 0 … 7
    assert np.allclose(mean, 0, atol=0.2) and np.allclose(sd, 1, atol=0.2)   # the inner shells are small
    same = frame_index(border_profile(real), border_profile(fake))
    framed = fake.copy()
    framed[:, [0, -1]] += 1.0                                         # two bright faces: a frame on every slice
    dim = fake.copy()
    dim[:, 1:-1, 1:-1, 1:-1] *= 0.5                                   # the inside half as textured as the border
    assert same < 0.02
    assert frame_index(border_profile(real), border_profile(framed)) > 10 * same
    assert frame_index(border_profile(real), border_profile(dim)) > 10 * same
    shifted = frame_index(border_profile(real), border_profile(fake + 3.0))   # brightness alone is not a frame
    assert shifted == pytest.approx(same, abs=1e-9)


def test_border_report_flags_framed_volumes_against_the_real_halves():
    rng = np.random.default_rng(1)
    real, clean = rng.normal(size=(2, 20, 8, 12, 12)) * 50 + 300    # physical-looking units
    framed = clean.copy()
    framed[:, :, [0, -1]] -= 60                                      # dark rims on two faces of every slice
    a, b = split_halves(len(real), 0)
    ok, bad = border_report(real, clean, a, b), border_report(real, framed, a, b)
    assert ok["frame_index"]["real_vs_real"] == bad["frame_index"]["real_vs_real"] < 0.1
    assert ok["frame_index"]["real_vs_generated"] < 0.1 < bad["frame_index"]["real_vs_generated"]
    prof = bad["profile"]
    assert prof["distance_voxels"] == [0, 1, 2, 3] and sum(prof["voxels"]) == 8 * 12 * 12
    assert prof["generated"]["mean"][0] < prof["real"]["mean"][0] - 10    # the rim shows in the outer shell
    flat = border_report(np.ones((4, 8, 8, 8)), clean[:2, :, :8, :8], [0, 1], [2, 3])
    assert flat["frame_index"] == {"real_vs_generated": None, "real_vs_real": None}   # no real spread: undefined


def scipy_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


@pytest.mark.parametrize("n1,n2,d", [(300, 250, 40), (25, 30, 60)])
def test_frechet_matches_scipy_sqrtm(rng, n1, n2, d):
    a = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d)) * 0.3
    b = rng.normal(size=(n2, d)) * 1.2 + 0.4
    want = scipy_fid(a, b)
    assert frechet_distance_from_features(a, b) == pytest.approx(want, rel=1e-6)
    assert frechet_distance(*feature_statistics(a), *feature_statistics(b)) == pytest.approx(want, rel=1e-5)
    assert FrechetDistance()(a, b) == pytest.approx(want, rel=1e-6)
    assert frechet_distance_from_features(a, a) == pytest.approx(0.0, abs=1e-8 * d)


def test_frechet_of_gaussians_in_closed_form():
    # diagonal covariances: d² = |Δμ|² + Σ (√s1 − √s2)²
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 0.0]), np.diag([9.0, 1.0, 4.0])  # s1 singular: the eigh fallback path
    want = 1 + 0 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2 + (0 - 2) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu1, s1, mu2[:2], s2[:2, :2])


def test_prd_curve_matches_direct_loop_and_auc_matches_scipy(rng):
    e = rng.random(10)
    r = rng.random(10)
    e, r = e / e.sum(), r / r.sum()
    p, q = prd_from_histograms(e, r, num_angles=101)
    for i, theta in enumerate(np.linspace(1e-10, np.pi / 2 - 1e-10, 101)):
        lam = np.tan(theta)
        alpha = sum(min(lam * r[c], e[c]) for c in range(10))
        assert p[i] == pytest.approx(min(alpha, 1.0), rel=1e-12)
        assert q[i] == pytest.approx(min(alpha / lam, 1.0), rel=1e-9)
    order = np.argsort(q, kind="stable")
    assert prd_auc(p, q) == pytest.approx(scipy.integrate.trapezoid(p[order], q[order]), rel=1e-12)
    f8, f18 = prd_f_beta(p, q)
    assert 0 < f8 <= 1 and 0 < f18 <= 1


def test_prd_auc_is_one_for_identical_and_zero_for_disjoint_sets(rng):
    real = rng.normal(size=(60, 8))
    same = prd_from_features(real, real, seed=1)
    assert prd_auc(same[0], same[1]) > 0.99
    far = prd_from_features(real + 100.0, real, seed=1)
    assert prd_auc(far[0], far[1]) < 0.01
    fake = rng.normal(size=(60, 8)) + 0.3
    a, b = PRD(seed=4, n_bootstrap=0)(real, fake), PRD(seed=4, n_bootstrap=0)(real, fake)
    assert a["auc"] == b["auc"] and np.array_equal(a["precision"], b["precision"])  # seeded: deterministic
    assert a["num_clusters"] == 6 and a["num_clusters_per_run"] == [6] * 10  # the rule: 60 per set -> 6
    assert a["runs"] == 10 and a["precision"].shape == (1001,) and a["auc_ci95"] is None
    assert a["warning"] is None
    assert PRD(num_clusters=10, n_bootstrap=0)(real, fake)["warning"].startswith("PRD: 60 samples per set")
    small = PRD(seed=4, num_runs=2)(real[:15, :2], fake[:15, :2])  # n < 100: intervals by default
    assert small["auc_bootstrap"]["n_boot"] == 200 and small["auc_ci95"][0] <= small["auc"] <= small["auc_ci95"][1]
    assert small["num_clusters"] == 2 and "15 samples per set for 2 clusters" in small["warning"]


def test_kmeans_recovers_separated_blobs_and_is_seeded(rng):
    centres = np.array([[0, 0], [10, 0], [0, 10]], float)
    x = np.vstack([c + rng.normal(size=(30, 2)) * 0.5 for c in centres])
    labels, cent, inertia = kmeans(x, 3, seed=0)
    for blob in range(3):
        assert len(set(labels[blob * 30:(blob + 1) * 30])) == 1
    assert len(set(labels)) == 3
    again = kmeans(x, 3, seed=0)
    assert np.array_equal(labels, again[0]) and inertia == again[2]
    brute = sum(((x[labels == c] - x[labels == c].mean(0)) ** 2).sum() for c in range(3))
    assert inertia == pytest.approx(brute, rel=1e-9)


def brute_prdc(real, fake, k):
    def kth(x, i):
        d = sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)
        return d[k - 1]

    rr = [kth(real, i) for i in range(len(real))]
    rf = [kth(fake, j) for j in range(len(fake))]
    dist = lambda a, b: float(np.sqrt(((a - b) ** 2).sum()))  # noqa: E731
    prec = np.mean([any(dist(y, real[i]) < rr[i] for i in range(len(real))) for y in fake])
    rec = np.mean([any(dist(x, fake[j]) < rf[j] for j in range(len(fake))) for x in real])
    dens = sum(dist(y, real[i]) < rr[i] for y in fake for i in range(len(real))) / (k * len(fake))
    cov = np.mean([any(dist(y, real[i]) < rr[i] for y in fake) for i in range(len(real))])
    return prec, rec, dens, cov


def test_prdc_matches_brute_force(rng):
    real = rng.normal(size=(40, 5))
    fake = rng.normal(size=(35, 5)) * 1.3 + 0.5
    got = precision_recall_density_coverage(real, fake, k=4)
    want = brute_prdc(real, fake, 4)
    assert (got["precision"], got["recall"], got["density"], got["coverage"]) == pytest.approx(want, rel=1e-12)
    same = precision_recall_density_coverage(real, real, k=3)
    assert same["precision"] == 1 and same["recall"] == 1 and same["coverage"] == 1
    far = precision_recall_density_coverage(real, fake + 50, k=3)
    assert far["precision"] == 0 and far["coverage"] == 0 and far["density"] == 0
    assert precision_recall_density_coverage(real[:4], fake[:6], k=5)["k"] == 3


def test_mmd_matches_brute_force(rng):
    x = rng.normal(size=(15, 3))
    y = rng.normal(size=(12, 3)) + 0.7
    s = 1.3
    k = lambda a, b: np.exp(-((a - b) ** 2).sum() / (2 * s * s))  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(15) for j in range(15) if i != j) / (15 * 14)
    yy = sum(k(y[i], y[j]) for i in range(12) for j in range(12) if i != j) / (12 * 11)
    xy = sum(k(a, b) for a in x for b in y) / (15 * 12)
    got, used = mmd_rbf(x, y, bandwidth=s)
    assert used == s and got == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    z = np.vstack([x, y])
    dists = [np.linalg.norm(z[i] - z[j]) for i in range(27) for j in range(i + 1, 27)]
    assert mmd_rbf(x, y)[1] == pytest.approx(np.median(dists), rel=1e-12)
    big = rng.normal(size=(200, 3))
    assert abs(mmd_rbf(big[:100], big[100:])[0]) < 0.05 < mmd_rbf(big[:100], big[100:] + 1.0)[0]


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate(rng):
    a = rng.normal(size=200)
    b = rng.normal(size=150) + 1.0
    stat = lambda ri, fi: b[fi].mean() - a[ri].mean()  # noqa: E731
    est = stat(np.arange(200), np.arange(150))
    se = np.sqrt(a.var(ddof=1) / 200 + b.var(ddof=1) / 150)
    for scheme in ("half", "replacement"):
        ci = bootstrap_ci(stat, 200, 150, n_boot=400, seed=3, estimate=est, scheme=scheme)
        assert ci == bootstrap_ci(stat, 200, 150, n_boot=400, seed=3, estimate=est, scheme=scheme)
        assert ci["low"] < est < ci["high"] and ci["n_boot"] == 400
        assert ci["sd"] == pytest.approx(se, rel=0.2)  # half-samples reproduce the full-size standard error
        assert ci["high"] - ci["low"] == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert bootstrap_ci(stat, 200, 150, n_boot=0)["low"] is None
    # a statistic biased by the effective sample size (a Fréchet distance): the re-centred interval holds it
    x = rng.normal(size=(60, 16))
    y = rng.normal(size=(60, 16)) + 0.3
    fd = lambda ri, fi: frechet_distance_from_features(x[ri], y[fi])  # noqa: E731
    full = fd(np.arange(60), np.arange(60))
    ci = bootstrap_ci(fd, 60, 60, n_boot=60, seed=0, estimate=full)
    assert ci["low"] < full < ci["high"] and ci["bias"] > 0
    h1, h2 = split_halves(9, seed=1)
    assert len(h1) == len(h2) == 4 and not set(h1) & set(h2)
    with pytest.raises(ValueError, match="≥ 4"):
        split_halves(3)


def test_memorisation_flags_a_planted_copy(rng):
    real = rng.normal(size=(10, 6, 8, 8))
    fake = rng.normal(size=(5, 6, 8, 8))
    fake[2] = real[7] + rng.normal(size=real[7].shape) * 0.01
    rf = rng.normal(size=(10, 16))
    ff = rng.normal(size=(5, 16))
    ff[2] = rf[7] + 1e-3
    out = memorisation_check(standardise_rows(real), standardise_rows(fake), rf, ff, quantile=0.05)
    top = out["suspects"][0]
    assert top["index"] == 2 and top["ncc_index"] == 7 and top["feature_index"] == 7
    assert set(top["criteria"]) == {"ncc", "feature"} and top["ncc"] > 0.99
    want = max(np.corrcoef(fake[0].ravel(), real[i].ravel())[0, 1] for i in range(10))
    assert out["fake_nn"]["ncc"][0] == pytest.approx(want, rel=1e-5)
    assert len(out["real_nn"]["ncc"]) == 10 and max(out["real_nn"]["ncc"]) < 0.5


def test_prd_on_small_sets_of_different_sizes_caps_the_clusters_per_run(rng):
    """6 real vs 5 generated: each run clusters 5 + 5 points, so at most 10 cells, never more than points."""
    from GANTrainerLib.evaluation.prd import prd_from_features

    p, r, info = prd_from_features(rng.normal(size=(5, 4)), rng.normal(size=(6, 4)), num_clusters=20, num_runs=3)
    assert info["balanced_to"] == 5 and info["num_clusters"] == 20 and info["num_clusters_per_run"] == [10] * 3
    assert np.all((p >= 0) & (p <= 1)) and np.all((r >= 0) & (r <= 1))
