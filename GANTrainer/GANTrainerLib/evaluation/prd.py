"""Precision and recall for distributions (PRD, Sajjadi et al. 2018), with seeded k-means and a NumPy-2.4-safe AUC.

Both feature sets are pooled and clustered with k-means into ``num_clusters`` cells; the two histograms over
the cells are compared for ``num_angles`` slopes λ = tan θ, θ ∈ [ε, π/2 − ε]:
α(λ) = Σ min(λ·p_ref, p_eval) (precision), β(λ) = α(λ)/λ (recall); the curve is averaged over ``num_runs``
clusterings. The anchor (Aydin 2024) used Sajjadi's code with 10 clusters, 10 runs, 1001 angles, the
generated set as "eval" and the real set as "reference", MiniBatchKMeans without a seed, and ``np.trapz``
over the recall-sorted points. Here k-means is our own full-batch Lloyd algorithm with k-means++ starts drawn
from a seeded generator (``n_init`` starts per run, best inertia kept), so the same seed gives the same
curve, and the AUC is the trapezoid rule written out (``np.trapz`` no longer exists in NumPy 2.4).

Two rules of ours (Sajjadi's code has neither):

* **Number of clusters** (when not given): ``k = clip(⌊n / 10⌋, 2, 20)`` for n samples per set, i.e. at
  least 10 samples of each set per cell on average, never more than Sajjadi's default of 20 and never fewer
  than 2 (:func:`prd_num_clusters`). Histogram noise alone lowers the AUC of two samples of one distribution:
  with 20 per set over 10 equally likely cells its expectation is 0.64, over 2 cells 0.96 (multinomial
  simulation); the rule keeps it near 0.9 or above for every n ≥ 20.
* **Unequal set sizes.** Sajjadi's ``compute_prd_from_embedding`` (and the anchor's copy) raises a
  ``ValueError`` when the sets differ in size (``enforce_balance=True``, its default). Here each run instead
  clusters a seeded subsample of the larger set of the smaller set's size.

References
----------
Sajjadi M. S. M. et al., "Assessing generative models via precision and recall", NeurIPS 2018.
Arthur D., Vassilvitskii S., "k-means++: the advantages of careful seeding", SODA 2007.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kmeans", "prd_from_histograms", "prd_from_features", "prd_auc", "prd_f_beta", "prd_num_clusters",
           "prd_sample_warning", "PRD", "PRD_SAMPLES_PER_CLUSTER"]

PRD_SAMPLES_PER_CLUSTER = 10  # the cluster rule's samples of each set per cell
PRD_MAX_CLUSTERS = 20         # Sajjadi's default number of clusters
PRD_MIN_CLUSTERS = 2


def prd_num_clusters(n_per_set: int) -> int:
    """The number of clusters for ``n_per_set`` samples per set: ``clip(⌊n / 10⌋, 2, 20)`` (module docstring)."""
    return int(min(PRD_MAX_CLUSTERS, max(PRD_MIN_CLUSTERS, int(n_per_set) // PRD_SAMPLES_PER_CLUSTER)))


def prd_sample_warning(n_per_set: int, num_clusters: int, what: str = "PRD") -> str | None:
    """A one-line warning when ``n_per_set`` is below 10 samples per cluster, else None."""
    need = PRD_SAMPLES_PER_CLUSTER * int(num_clusters)
    if int(n_per_set) >= need:
        return None
    return (f"{what}: {int(n_per_set)} samples per set for {int(num_clusters)} clusters, below the {need} "
            f"({PRD_SAMPLES_PER_CLUSTER} per cluster) that PRD needs; histogram noise alone pulls the AUC of two "
            "samples of one distribution well below 1, so read it only next to its real-vs-real baseline")


def _sq_dists(x: np.ndarray, c: np.ndarray, x_sq: np.ndarray | None = None) -> np.ndarray:
    x_sq = (x * x).sum(1) if x_sq is None else x_sq
    d = x_sq[:, None] + (c * c).sum(1)[None, :] - 2.0 * x @ c.T
    return np.maximum(d, 0.0)


def kmeans(x, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4):
    """Seeded k-means (k-means++ starts, Lloyd iterations, best of ``n_init``).

    Parameters
    ----------
    x : array (n, d)
        Points.
    k : int
        Number of clusters, 1 ≤ k ≤ n.
    seed : int
        Seed of the generator that draws the k-means++ starts (same seed → same result).
    n_init : int
        Number of starts; the solution with the lowest inertia is returned.
    max_iter : int
        Lloyd iterations stop after ``max_iter``, when the assignments no longer change, or when the centres
        move less than ``tol`` (below).
    tol : float
        Convergence threshold on the summed squared centre shift, relative to the mean per-feature variance
        of ``x`` (scikit-learn's ``KMeans`` convention).

    Returns
    -------
    labels : int array (n,)
    centres : array (k, d)
    inertia : float
        Sum of squared distances to the assigned centres.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if x.ndim != 2 or n == 0:
        raise ValueError(f"x: expected a non-empty (n, d) array, got shape {x.shape}")
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 ≤ k ≤ n = {n}, got {k}")
    rng = np.random.default_rng(seed)
    x_sq = (x * x).sum(1)
    rows = np.arange(n)
    dim = x.shape[1]
    shift_tol = float(np.mean(np.var(x, axis=0))) * tol
    m = max(1, int(n_init))
    centres = np.empty((m, k, dim))
    for s in range(m):  # k-means++ seeding, one start after the other from the same generator
        centres[s, 0] = x[rng.integers(n)]
        closest = _sq_dists(x, centres[s, :1], x_sq)[:, 0]
        for j in range(1, k):
            total = closest.sum()
            idx = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
            centres[s, j] = x[idx]
            closest = np.minimum(closest, _sq_dists(x, centres[s, j:j + 1], x_sq)[:, 0])
    # Lloyd iterations of all starts at once: one (n × starts·k) distance product per iteration
    prev = np.full((n, m), -1)
    active = np.ones(m, bool)
    for _ in range(max_iter):
        act = np.flatnonzero(active)
        if act.size == 0:
            break
        a = act.size
        d = _sq_dists(x, centres[act].reshape(a * k, dim), x_sq).reshape(n, a, k)
        labels = d.argmin(2)
        unchanged = (labels == prev[:, act]).all(0)  # converged: assignments no longer change
        prev[:, act] = labels
        flat = labels + (np.arange(a) * k)[None, :]
        counts = np.bincount(flat.ravel(), minlength=a * k).reshape(a, k)
        onehot = np.zeros((a * k, n))
        onehot[flat.ravel(), np.repeat(rows, a)] = 1.0
        sums = (onehot @ x).reshape(a, k, dim)  # per-cluster sums as one product (np.add.at is ~100× slower)
        new = np.where(counts[:, :, None] > 0, sums / np.maximum(counts, 1)[:, :, None], centres[act])
        empty = counts == 0
        for s in np.flatnonzero(empty.any(1)):  # re-seed empty clusters at the points farthest from their centres
            far = np.argsort(-d[rows, s, labels[:, s]], kind="stable")[: int(empty[s].sum())]
            new[s, np.flatnonzero(empty[s])] = x[far]
        shift = ((new - centres[act]) ** 2).sum((1, 2))
        centres[act] = np.where(unchanged[:, None, None], centres[act], new)
        active[act[unchanged | ((shift <= shift_tol) & ~empty.any(1))]] = False
    d = _sq_dists(x, centres.reshape(m * k, dim), x_sq).reshape(n, m, k)
    labels = d.argmin(2)
    inertia = np.take_along_axis(d, labels[:, :, None], 2)[:, :, 0].sum(0)
    best = int(np.argmin(inertia))
    return labels[:, best], centres[best].copy(), float(inertia[best])


def prd_from_histograms(eval_dist, ref_dist, num_angles: int = 1001, epsilon: float = 1e-10):
    """PRD curve of two discrete distributions over the same cells (Sajjadi et al. 2018, Eq. 3).

    Returns
    -------
    precision, recall : arrays (num_angles,)
        For slopes tan θ with θ equally spaced in [epsilon, π/2 − epsilon]; both clipped to [0, 1].
    """
    eval_dist = np.asarray(eval_dist, np.float64)
    ref_dist = np.asarray(ref_dist, np.float64)
    if eval_dist.shape != ref_dist.shape or eval_dist.ndim != 1:
        raise ValueError(f"eval_dist {eval_dist.shape} and ref_dist {ref_dist.shape} must be 1-D of equal length")
    if not 0 < epsilon < 0.1:
        raise ValueError(f"epsilon: expected 0 < epsilon < 0.1, got {epsilon}")
    if not 3 <= num_angles <= 1_000_000:
        raise ValueError(f"num_angles: expected 3..1e6, got {num_angles}")
    slopes = np.tan(np.linspace(epsilon, np.pi / 2 - epsilon, num_angles))
    precision = np.minimum(ref_dist[None, :] * slopes[:, None], eval_dist[None, :]).sum(1)
    recall = precision / slopes
    return np.clip(precision, 0, 1), np.clip(recall, 0, 1)


def _histograms(labels: np.ndarray, n_eval: int, k: int):
    e = np.bincount(labels[:n_eval], minlength=k) / n_eval
    r = np.bincount(labels[n_eval:], minlength=k) / (labels.shape[0] - n_eval)
    return e, r


def prd_from_features(
    eval_features,
    ref_features,
    num_clusters: int | None = None,
    num_angles: int = 1001,
    num_runs: int = 10,
    seed: int = 0,
    n_init: int = 10,
):
    """PRD curve from embeddings: k-means on the pooled sets, ``num_runs`` clusterings averaged.

    Parameters
    ----------
    eval_features : array (n_eval, d)
        Embeddings of the distribution under test (the generated set).
    ref_features : array (n_ref, d)
        Embeddings of the reference distribution (the real set).
    num_clusters : int or None
        k-means cells; None: :func:`prd_num_clusters` of the samples per set (the anchor used 10). A run
        never uses more cells than it has distinct pooled points (``num_clusters_per_run`` in ``info``).
    num_angles, num_runs : int
        Sajjadi's parameters (the anchor: 1001, 10).
    seed : int
        Run r clusters with a seed drawn from ``(seed, r)``. When the two sets differ in size, run r also
        draws a subsample of the larger set of the smaller one's size from that generator (our rule:
        Sajjadi's code refuses unequal sizes).

    Returns
    -------
    precision, recall : arrays (num_angles,)
    info : dict
        ``num_clusters`` (requested or from the rule), ``num_clusters_per_run`` (what each run used),
        ``cluster_rule``, ``balanced_to`` (samples per set), ``runs``, ``num_angles``.
    """
    ev = np.asarray(eval_features, np.float64)
    rf = np.asarray(ref_features, np.float64)
    if ev.ndim != 2 or rf.ndim != 2 or ev.shape[1] != rf.shape[1]:
        raise ValueError(f"eval_features {ev.shape} and ref_features {rf.shape} must be (n, d) with one d")
    if min(len(ev), len(rf)) < 1:
        raise ValueError("prd_from_features: both feature sets need at least one sample")
    n = min(len(ev), len(rf))
    rule = "given" if num_clusters is not None else f"clip(floor(n / {PRD_SAMPLES_PER_CLUSTER}), " \
        f"{PRD_MIN_CLUSTERS}, {PRD_MAX_CLUSTERS}) with n = {n} per set"
    k_req = int(num_clusters) if num_clusters is not None else prd_num_clusters(n)
    if k_req < 1:
        raise ValueError(f"num_clusters: expected ≥ 1, got {num_clusters}")
    precisions, recalls, ks = [], [], []
    for r in range(int(num_runs)):
        rng = np.random.default_rng([seed, r])
        e = ev if len(ev) == n else ev[np.sort(rng.choice(len(ev), n, replace=False))]
        f = rf if len(rf) == n else rf[np.sort(rng.choice(len(rf), n, replace=False))]
        pooled = np.vstack([e, f])
        # no more cells than distinct points in what this run clusters (balanced subsamples may be few)
        k = int(min(k_req, len(np.unique(pooled, axis=0))))
        labels, _, _ = kmeans(pooled, k, seed=int(rng.integers(2**31)), n_init=n_init)
        p, q = prd_from_histograms(*_histograms(labels, n, k), num_angles=num_angles)
        precisions.append(p)
        recalls.append(q)
        ks.append(k)
    info = {"num_clusters": k_req, "num_clusters_per_run": ks, "cluster_rule": rule, "balanced_to": n,
            "runs": int(num_runs), "num_angles": int(num_angles)}
    return np.mean(precisions, 0), np.mean(recalls, 0), info


def prd_auc(precision, recall) -> float:
    """Area under the PRD curve: trapezoid rule over the points sorted by recall (the anchor's AUC-PRD).

    Points with equal recall keep their order (ascending slope: a stable sort). Their order matters at the edge
    of a run of ties, where the first of them joins the previous point; the anchor's ``np.argsort`` (quicksort)
    leaves it unspecified, which moved the area by less than 1e-4 in the tests.
    """
    p = np.asarray(precision, np.float64)
    r = np.asarray(recall, np.float64)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"precision {p.shape} and recall {r.shape} must be 1-D of equal length")
    order = np.argsort(r, kind="stable")
    p, r = p[order], r[order]
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) * 0.5))


def prd_f_beta(precision, recall, beta: float = 8.0, epsilon: float = 1e-10) -> tuple[float, float]:
    """Sajjadi's summary (max F_β, max F_1/β): recall-weighted and precision-weighted maxima of the curve."""
    p = np.asarray(precision, np.float64)
    r = np.asarray(recall, np.float64)

    def fb(b):
        return (1 + b * b) * p * r / (b * b * p + r + epsilon)

    return float(fb(beta).max()), float(fb(1.0 / beta).max())


class PRD:
    """Metric object: ``PRD()(real, fake) -> dict`` (MONAI-style wrapper of :func:`prd_from_features`).

    The returned dict holds ``auc``, ``f_beta`` (F8), ``f_inv_beta`` (F1/8), the curve, the settings, and
    ``auc_ci95`` / ``auc_bootstrap`` (half-sampling interval of the AUC, :mod:`.bootstrap`; None without
    replicates) and ``warning`` (:func:`prd_sample_warning`, None when the sets are large enough).
    """

    def __init__(
        self,
        num_clusters: int | None = None,  # k-means cells; None: prd_num_clusters(n) (anchor: 10, Sajjadi: 20)
        num_runs: int = 10,               # clusterings averaged
        num_angles: int = 1001,           # slopes of the curve
        seed: int = 0,                    # seeds the k-means++ starts, balancing subsamples and replicates
        n_bootstrap: int | str = "auto",  # AUC interval replicates; "auto": 200 when a set has < 100 samples
    ):
        if not (n_bootstrap == "auto" or (isinstance(n_bootstrap, int) and n_bootstrap >= 0)):
            raise ValueError(f"n_bootstrap: expected 'auto' or a whole number ≥ 0, got {n_bootstrap!r}")
        self.num_clusters, self.num_runs, self.num_angles, self.seed = num_clusters, num_runs, num_angles, seed
        self.n_bootstrap = n_bootstrap

    def __call__(self, real, fake) -> dict:
        from .bootstrap import bootstrap_ci

        real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
        p, r, info = prd_from_features(fake, real, self.num_clusters, self.num_angles, self.num_runs, self.seed)
        f8, f18 = prd_f_beta(p, r)
        auc = prd_auc(p, r)
        n_boot = self.n_bootstrap
        if n_boot == "auto":
            n_boot = 200 if min(len(real), len(fake)) < 100 else 0
        ci = None
        if n_boot:  # same k in every replicate: the interval is that of this statistic
            k = info["num_clusters"]
            ci = bootstrap_ci(lambda a, b: prd_auc(*prd_from_features(fake[b], real[a], k, self.num_angles,
                                                                        self.num_runs, self.seed)[:2]),
                              len(real), len(fake), n_boot, self.seed, estimate=auc)
        return {"auc": auc, "f_beta": f8, "f_inv_beta": f18, "precision": p, "recall": r,
                "auc_ci95": None if ci is None else [max(0.0, ci["low"]), min(1.0, ci["high"])],
                "auc_bootstrap": ci, "warning": prd_sample_warning(info["balanced_to"], info["num_clusters"]),
                **info}
