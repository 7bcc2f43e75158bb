"""``evaluate``: real vs generated volumes — distribution metrics, real-vs-real baseline, memorisation, report.

Two protocols (see ``docs/evaluation.md``):

``aydin2024``
    The anchor's figures, reproducibly: FID over 2-D slices (first 32 along the third NIfTI axis, per-slice
    min-max to 8 bit), MD (Fréchet distance of MedicalNet features after the anchor's normalisation, its
    background filled with N(0, 1) noise as the anchor did, seeded per volume from (seed, set, index);
    ``medicalnet_background="zero"`` fills 0 instead, which is not the paper's MD) and AUC-PRD (10 clusters,
    10 runs, 1001 angles, on the MedicalNet features, generated set as "eval").
``default``
    Every slice with one robust window per volume, MedicalNet on z-scored volumes, and in addition PRD's
    F8/F1/8, improved precision/recall, density/coverage and MMD on the volume features. PRD's number of
    clusters follows :func:`.prd.prd_num_clusters` of the smallest per-set size the report clusters.

Both protocols add: a bootstrap 95 % interval for each real-vs-generated figure (volumes resampled), the
same figure between two disjoint halves of the real set (the real-vs-real baseline), the memorisation
check, and the intra-set diversity (mean 3-D MS-SSIM over distinct pairs of the generated set, next to the
same mean over the real set; :mod:`.diversity`), and the border-artefact check (the frame index of
:mod:`.border`, with its real-vs-real value). Every figure carries the name of the extractor it came from;
fallbacks say so.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from VolGANCore.dataset import case_id, list_volumes
from VolGANCore.errors import VolGANError
from VolGANCore.io import read_volume
from VolGANCore.progress import CancelToken, Progress, ProgressCallback

from . import preprocess
from .bootstrap import bootstrap_many, split_halves
from .border import border_report
from .diversity import mean_over_subset, msssim_settings, normalise_for_msssim, pairwise_ms_ssim, sample_pairs
from .features import make_slice_extractor, make_volume_extractor
from .frechet import frechet_distance_from_features
from .knn import precision_recall_density_coverage
from .memorisation import memorisation_check, standardise_rows
from .mmd import median_bandwidth, mmd_rbf
from .prd import prd_auc, prd_f_beta, prd_from_features, prd_num_clusters, prd_sample_warning

__all__ = ["PROTOCOLS", "evaluate", "compute_metrics", "load_volume_set"]

PROTOCOLS = ("default", "aydin2024")

_META = {  # key: (label with weights, better, protocols)
    "frechet_2d": ("FID (2-D slices)", "lower", PROTOCOLS),
    "frechet_3d": ("MD (MedicalNet Fréchet distance)", "lower", PROTOCOLS),
    "prd_auc": ("AUC-PRD", "higher", PROTOCOLS),
    "prd_f8": ("PRD F8 (recall-weighted)", "higher", ("default",)),
    "prd_f1_8": ("PRD F1/8 (precision-weighted)", "higher", ("default",)),
    "precision": ("Improved precision (k-NN)", "higher", ("default",)),
    "recall": ("Improved recall (k-NN)", "higher", ("default",)),
    "density": ("Density", "≈ 1", ("default",)),
    "coverage": ("Coverage", "higher", ("default",)),
    "mmd2": ("MMD² (RBF, unbiased)", "lower", ("default",)),
}


_BOUNDS = {"frechet_2d": (0.0, None), "frechet_3d": (0.0, None), "prd_auc": (0.0, 1.0), "prd_f8": (0.0, 1.0),
           "prd_f1_8": (0.0, 1.0), "precision": (0.0, 1.0), "recall": (0.0, 1.0), "density": (0.0, None),
           "coverage": (0.0, 1.0), "mmd2": (None, None)}


def load_volume_set(folder: str | os.PathLike, what: str) -> tuple[list[Path], np.ndarray]:
    """Read every volume of ``folder`` (float32); all must share one shape. Returns (paths, array (N, D, H, W))."""
    paths = list_volumes(folder)
    arrays = []
    for p in paths:
        arrays.append(read_volume(p).array)
        if arrays[-1].shape != arrays[0].shape:
            raise VolGANError(f"{p}: shape (D,H,W) {arrays[-1].shape} differs from {arrays[0].shape} of "
                              f"{paths[0].name} in the {what} folder (all volumes must share one shape)")
    return paths, np.stack(arrays)


def compute_metrics(
    slice_feats: list[np.ndarray],
    vol_feats: np.ndarray,
    real_idx: np.ndarray,
    fake_idx: np.ndarray,
    protocol: str,
    seed: int,
    knn_k: int = 5,
    mmd_bandwidth: Optional[float] = None,
    device: str = "cpu",
    keep_curve: bool = False,
    prd_clusters: Optional[int] = None,
) -> dict[str, Any]:
    """All scalar metrics of ``fake_idx`` against ``real_idx`` (indices into one pooled list of volumes).

    Parameters
    ----------
    slice_feats : list of arrays (n_slices_i, d2)
        Slice features of every volume (real and fake pooled).
    vol_feats : array (n_volumes, d3)
        Volume features, same order.
    real_idx, fake_idx : int arrays
        Which volumes play "real" and which "generated" (repeats allowed: bootstrap).
    protocol : {"default", "aydin2024"}
    seed : int
        PRD clustering seed.
    knn_k : int
        k of the k-NN metrics (computed on the distinct volumes only).
    mmd_bandwidth : float or None
        Fixed RBF σ (None: median heuristic on these samples).
    keep_curve : bool
        Also return the PRD curve (``_prd_precision``, ``_prd_recall``).
    prd_clusters : int or None
        PRD's k-means cells (None: the rule of :func:`.prd.prd_num_clusters` on these sets).
    """
    out: dict[str, Any] = {}
    s_real = np.concatenate([slice_feats[i] for i in real_idx])
    s_fake = np.concatenate([slice_feats[i] for i in fake_idx])
    out["frechet_2d"] = frechet_distance_from_features(s_real, s_fake, device)
    v_real, v_fake = vol_feats[real_idx], vol_feats[fake_idx]
    out["frechet_3d"] = frechet_distance_from_features(v_real, v_fake, device)
    p, r, info = prd_from_features(v_fake, v_real, num_clusters=prd_clusters, num_angles=1001, num_runs=10, seed=seed)
    out["prd_auc"] = prd_auc(p, r)
    if keep_curve:
        out["_prd_precision"], out["_prd_recall"], out["_prd_info"] = p, r, info
    if protocol == "default":
        out["prd_f8"], out["prd_f1_8"] = prd_f_beta(p, r)
        ur, uf = vol_feats[np.unique(real_idx)], vol_feats[np.unique(fake_idx)]
        if min(len(ur), len(uf)) >= 2:
            prdc = precision_recall_density_coverage(ur, uf, knn_k)
            for key in ("precision", "recall", "density", "coverage"):
                out[key] = prdc[key]
            out["_knn_k"] = prdc["k"]
        out["mmd2"] = mmd_rbf(v_real, v_fake, mmd_bandwidth)[0]
    return out


def _set_summary(folder, paths, arrays) -> dict:
    return {"folder": str(folder), "n": len(paths), "shape_dhw": list(arrays.shape[1:]),
            "files": [p.name for p in paths]}


def evaluate(
    real_dir: str | os.PathLike,
    fake_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    protocol: str = "default",
    inception_weights: str | os.PathLike | None = None,
    medicalnet_weights: str | os.PathLike | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    device: str = "cpu",
    knn_k: int = 5,
    copy_quantile: float = 0.01,
    msssim_pairs: int = 100,
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    medicalnet_background: Optional[str] = None,
) -> dict[str, Any]:
    """Evaluate generated volumes against real ones and write ``out_dir`` (report.json, report.md, plots).

    Parameters
    ----------
    real_dir, fake_dir : path-like
        Folders of volumes (NIfTI/NRRD/MHA), one shape throughout. ``real_dir`` should be the training set
        for the memorisation check to mean "copied from training". Inputs are only read.
    out_dir : path-like
        Report folder, written atomically (built aside, renamed at the end).
    protocol : {"default", "aydin2024"}
        Metric set and preprocessing (module docstring).
    inception_weights, medicalnet_weights : path-like or None
        pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` and MedicalNet's ``resnet_10_23dataset.pth``;
        without them the documented fallback extractors are used and named in every figure.
    n_bootstrap : int
        Bootstrap replicates for the 95 % intervals (0: none).
    seed : int
        Seeds the fallback network, PRD clustering, the real/real split and the bootstrap.
    device : str
        Torch device for the networks and the linear algebra.
    knn_k : int
        k for precision/recall/density/coverage.
    copy_quantile : float
        Tail of the real-vs-real nearest-neighbour distribution beyond which a generated volume is a
        suspected copy.
    msssim_pairs : int
        Distinct pairs per set for the MS-SSIM diversity (all pairs when a set has fewer; 0: skip it).
    overwrite : bool
        Replace an existing non-empty ``out_dir``.
    medicalnet_background : {"noise", "zero"} or None
        ``aydin2024`` only: how the MedicalNet input's background (the voxels at each volume's minimum) is
        filled after the z-scoring — ``"noise"``, the paper's N(0, 1), seeded per volume from
        ``(seed, set, index)`` (set 0 = real, 1 = generated; index in file order), or ``"zero"``. None: the
        protocol's rule (``"noise"``). The ``default`` protocol z-scores all voxels and has no background.

    Returns
    -------
    dict
        The report (as written to report.json).
    """
    cfg = _checked_settings(protocol, n_bootstrap, seed, device, knn_k, copy_quantile, msssim_pairs,
                            medicalnet_background)
    out_dir = Path(out_dir)
    _check_outside_inputs(out_dir, (real_dir, fake_dir))
    sets = _read_sets(real_dir, fake_dir)
    slice_ext = make_slice_extractor(inception_weights, device)
    vol_ext = make_volume_extractor(medicalnet_weights, device, seed)
    # one PRD k for every PRD figure of the report (estimate, halves, replicates), from its smallest clustering
    cfg.prd_clusters = 10 if protocol == "aydin2024" else prd_num_clusters(min(sets.n_real // 2, sets.n_fake))
    div_pairs = {"generated": sample_pairs(sets.n_fake, msssim_pairs, seed),
                 "real": sample_pairs(sets.n_real, msssim_pairs, seed + 1)}
    total = (sets.n_real + sets.n_fake) + n_bootstrap + 3 + sum(len(v) for v in div_pairs.values())
    with Progress(total, "evaluate", progress, cancel) as prog:
        feats = _extract_features(sets, cfg, slice_ext, vol_ext, prog)
        found = _compare_sets(sets, feats, cfg, div_pairs, prog)
    _name_suspects(found.memorisation, sets)
    report = _assemble_report(sets, feats, found, cfg, slice_ext, vol_ext)
    _write_report(out_dir, report, sets, feats, overwrite)
    return report


# ---------------------------------------------------------------------------------------------------------------
# the steps of evaluate
@dataclasses.dataclass
class _Settings:
    """The checked settings of one evaluation (``prd_clusters`` is set once the set sizes are known)."""

    protocol: str
    n_bootstrap: int
    seed: int
    device: str
    knn_k: int
    copy_quantile: float
    msssim_pairs: int
    background: Optional[str]            # MedicalNet background rule (aydin2024 only)
    prd_clusters: int = 0


@dataclasses.dataclass
class _Sets:
    """The real and the generated volumes as read, with their files."""

    real_dir: Any
    fake_dir: Any
    real_paths: list[Path]
    real: np.ndarray                     # (N, D, H, W)
    fake_paths: list[Path]
    fake: np.ndarray

    @property
    def n_real(self) -> int:
        return len(self.real)

    @property
    def n_fake(self) -> int:
        return len(self.fake)

    @property
    def real_ids(self) -> list[str]:
        return [case_id(p) for p in self.real_paths]

    @property
    def fake_ids(self) -> list[str]:
        return [case_id(p) for p in self.fake_paths]


@dataclasses.dataclass
class _Features:
    """Slice and volume features of every volume, real first; ``ri``/``fi`` index the real and generated ones."""

    slices: list[np.ndarray]
    volumes: np.ndarray
    ri: np.ndarray
    fi: np.ndarray


@dataclasses.dataclass
class _Findings:
    """Every figure of the report before it is laid out."""

    main: dict                           # real vs generated (with the PRD curve)
    base: dict                           # real half vs real half
    cis: dict                            # bootstrap intervals of ``main``
    memorisation: dict
    border: dict
    diversity: Optional[dict]
    bandwidth: float                     # MMD σ (median heuristic on the full sets)
    half_a: np.ndarray
    half_b: np.ndarray


def _checked_settings(protocol, n_bootstrap, seed, device, knn_k, copy_quantile, msssim_pairs, background) -> _Settings:
    if protocol not in PROTOCOLS:
        raise VolGANError(f"--protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    if n_bootstrap < 0:
        raise VolGANError(f"--bootstrap: expected ≥ 0 replicates, got {n_bootstrap}")
    if not 0 < copy_quantile < 0.5:
        raise VolGANError(f"--copy-quantile: expected 0 < q < 0.5, got {copy_quantile}")
    if knn_k < 1:
        raise VolGANError(f"--knn-k: expected ≥ 1, got {knn_k}")
    if isinstance(msssim_pairs, bool) or not isinstance(msssim_pairs, (int, np.integer)) or msssim_pairs < 0:
        raise VolGANError(f"--msssim-pairs: expected a whole number ≥ 0 (0 skips the diversity), got {msssim_pairs!r}")
    return _Settings(protocol, n_bootstrap, seed, device, knn_k, copy_quantile, msssim_pairs,
                     _medicalnet_background(protocol, background))


def _check_outside_inputs(out_dir: Path, inputs) -> None:
    for folder in inputs:
        f, o = Path(folder).resolve(), out_dir.resolve()
        if o == f or f in o.parents:
            raise VolGANError(f"--out {out_dir}: is inside the input folder {folder} (inputs are never modified; "
                              "choose a report folder elsewhere)")


def _read_sets(real_dir, fake_dir) -> _Sets:
    """Both sets, checked: one shape, ≥ 4 real (two halves of ≥ 2), ≥ 2 generated, sides ≥ 8 voxels."""
    real_paths, real = load_volume_set(real_dir, "real")
    fake_paths, fake = load_volume_set(fake_dir, "generated")
    if real.shape[1:] != fake.shape[1:]:
        raise VolGANError(f"{fake_dir}: generated volumes have shape (D,H,W) {fake.shape[1:]} but the real ones "
                          f"{real.shape[1:]} (resample or crop one set to the other's shape)")
    if len(real_paths) < 4:
        raise VolGANError(f"{real_dir}: {len(real_paths)} real volume(s); at least 4 are needed (two disjoint "
                          "halves of ≥ 2 for the real-vs-real baseline)")
    if len(fake_paths) < 2:
        raise VolGANError(f"{fake_dir}: {len(fake_paths)} generated volume(s); at least 2 are needed")
    if min(real.shape[1:]) < 8:
        raise VolGANError(f"{real_dir}: volumes of shape {real.shape[1:]} are too small for the 3-D network "
                          "(each side must be ≥ 8 voxels)")
    return _Sets(real_dir, fake_dir, real_paths, real, fake_paths, fake)


def _extract_features(sets: _Sets, cfg: _Settings, slice_ext, vol_ext, prog: Progress) -> _Features:
    """Each volume preprocessed by the protocol's rule, then its slice features and its volume features."""
    n_r, n_f = sets.n_real, sets.n_fake
    slice_feats: list[np.ndarray] = []
    vol_feats = np.zeros((n_r + n_f, vol_ext.dim))
    for i, arr in enumerate(np.concatenate([sets.real, sets.fake])):
        if cfg.protocol == "aydin2024":
            slices = preprocess.anchor_slices_uint8(arr)
            stream = [cfg.seed, 0, i] if i < n_r else [cfg.seed, 1, i - n_r]  # (seed, set, index): one per volume
            vin = preprocess.anchor_medicalnet_input(arr, background=cfg.background, seed=stream)
        else:
            slices = preprocess.default_slices(arr)
            vin = preprocess.default_medicalnet_input(arr)
        slice_feats.append(slice_ext(slices))
        vol_feats[i] = vol_ext(vin[None])[0]
        prog.advance(1, f"features {i + 1}/{n_r + n_f}")
    return _Features(slice_feats, vol_feats, np.arange(n_r), np.arange(n_r, n_r + n_f))


def _compare_sets(sets: _Sets, feats: _Features, cfg: _Settings, div_pairs: dict, prog: Progress) -> _Findings:
    """Real vs generated, its real-vs-real baseline and bootstrap intervals, memorisation, border, diversity."""
    ri, fi = feats.ri, feats.fi
    bandwidth = median_bandwidth(feats.volumes[ri], feats.volumes[fi])
    kw = dict(protocol=cfg.protocol, seed=cfg.seed, knn_k=cfg.knn_k, mmd_bandwidth=bandwidth, device=cfg.device,
              prd_clusters=cfg.prd_clusters)
    main = compute_metrics(feats.slices, feats.volumes, ri, fi, keep_curve=True, **kw)
    prog.advance(1, "metrics")
    half_a, half_b = split_halves(sets.n_real, cfg.seed)
    base = compute_metrics(feats.slices, feats.volumes, half_a, half_b, keep_curve=True, **kw)
    prog.advance(1, "real-vs-real baseline")
    cis = bootstrap_many(
        lambda a, b: {k: v for k, v in compute_metrics(feats.slices, feats.volumes, ri[a], fi[b], **kw).items()
                      if not k.startswith("_")},
        sets.n_real, sets.n_fake, cfg.n_bootstrap, cfg.seed, on_replicate=lambda: prog.advance(1, "bootstrap"),
        estimates={k: v for k, v in main.items() if not k.startswith("_")}, bounds=_BOUNDS)
    mem = memorisation_check(standardise_rows(sets.real), standardise_rows(sets.fake), feats.volumes[ri],
                             feats.volumes[fi], cfg.copy_quantile)
    prog.advance(1, "memorisation")
    border = border_report(sets.real, sets.fake, half_a, half_b)
    diversity = None
    if cfg.msssim_pairs > 0:
        diversity = _msssim_diversity(sets.real, sets.fake, div_pairs, half_a, half_b, cfg.n_bootstrap, cfg.seed,
                                      cfg.device, lambda k, what: prog.advance(k, f"MS-SSIM {what}"))
    return _Findings(main, base, cis, mem, border, diversity, bandwidth, half_a, half_b)


def _metric_table(found: _Findings, protocol: str, slice_ext, vol_ext) -> dict[str, Any]:
    """The protocol's figures with their extractor, interval and real-vs-real value (``_META`` order)."""
    main, base, cis = found.main, found.base, found.cis
    metrics: dict[str, Any] = {}
    for key, (label, better, protos) in _META.items():
        if protocol not in protos or key not in main:
            continue
        ext = slice_ext if key == "frechet_2d" else vol_ext
        if ext.fallback and key in ("frechet_2d", "frechet_3d"):
            label = f"Fréchet distance ({'2-D slices' if key == 'frechet_2d' else 'volumes'}, fallback features)"
        ci = cis.get(key)
        metrics[key] = {
            "label": label, "extractor": ext.name, "fallback_features": ext.fallback, "better": better,
            "real_vs_generated": float(main[key]),
            "ci95": None if ci is None else [ci["low"], ci["high"]], "bootstrap_sd": None if ci is None else ci["sd"],
            "bootstrap_replicates": 0 if ci is None else ci["n_boot"],
            "bootstrap_bias": None if ci is None else ci["bias"],
            "real_vs_real": None if base.get(key) is None else float(base[key]),
        }
    return metrics


def _notes(sets: _Sets, found: _Findings, cfg: _Settings, slice_ext, vol_ext) -> list[str]:
    """How each figure was made: the halves, the bootstrap, PRD, the background rule, k-NN/MMD, MS-SSIM, fallbacks."""
    main, prd_k = found.main, cfg.prd_clusters
    prd_rule = "the paper's" if cfg.protocol == "aydin2024" else \
        f"clip(floor(n / 10), 2, 20) for n = {min(sets.n_real // 2, sets.n_fake)}, the smallest per-set size the " \
        "report clusters"
    notes = [
        "real_vs_real: the same metric between two disjoint, seeded halves of the real set "
        f"({len(found.half_a)} vs {len(found.half_b)} volumes). Fréchet distances are biased upward in small samples, "
        "so this half-size baseline overstates the full-size real-vs-real value.",
        f"ci95: {cfg.n_bootstrap} half-sampling replicates (⌊n/2⌋ volumes of each set drawn without replacement), "
        "percentile interval re-centred on the estimate; bootstrap_bias = replicate mean − estimate "
        "(the half-size bias that the re-centring removes).",
        f"PRD on the volume features; {prd_k} clusters ({prd_rule}; the same k for the estimate, the halves and "
        "the replicates), 10 runs, 1001 angles, k-means seeded "
        f"(seed {cfg.seed}); sets balanced to {main['_prd_info']['balanced_to']} samples per run"
        f"{_clusters_used(main['_prd_info'], found.base['_prd_info'], prd_k)}.",
    ]
    if cfg.protocol == "aydin2024":
        notes.append("MedicalNet input: the anchor's normalisation; background (voxels at each volume's minimum) "
                     + ("filled with N(0, 1) noise as the paper did, seeded per volume from (seed, set, index)."
                        if cfg.background == "noise" else "filled with 0 (--medicalnet-background zero): not the "
                        "paper's MD and AUC-PRD, which filled it with N(0, 1) noise."))
    if cfg.protocol == "default":
        notes.append(f"k-NN metrics with k = {main.get('_knn_k', cfg.knn_k)}; their bootstrap replicates use the "
                     "distinct resampled volumes (conservative intervals). MMD² with σ = "
                     f"{found.bandwidth:.6g} (median heuristic on the full sets, kept fixed in the bootstrap).")
    if found.diversity is not None:
        d = found.diversity["msssim"]
        notes.append(f"MS-SSIM diversity: mean 3-D MS-SSIM over {d['generated']['n_pairs']} generated and "
                     f"{d['real']['n_pairs']} real distinct pairs (seeded), lower = more diverse; "
                     f"{d['settings']['n_scales']} scale(s), {d['settings']['kernel_size']}-voxel Gaussian window "
                     f"(σ {d['settings']['kernel_sigma']}), each volume windowed to its 0.5–99.5 % percentiles; "
                     "real halves = the same mean over the sampled real pairs inside each half.")
    for ext in (slice_ext, vol_ext):
        if ext.fallback:
            notes.append(f"{ext.name}: FALLBACK features (no weights given) — values are not FID/MD and are "
                         "comparable only with reports made with the same extractor name.")
    return notes


def _warnings(sets: _Sets, found: _Findings, cfg: _Settings) -> list[str]:
    """Too few samples for PRD's clusters; no intervals on a small set."""
    n_small = min(sets.n_real, sets.n_fake)
    warnings = [w for w in (prd_sample_warning(n_small, cfg.prd_clusters, "PRD real vs generated"),
                            prd_sample_warning(len(found.half_a), cfg.prd_clusters, "PRD real vs real (halves)")) if w]
    if cfg.n_bootstrap == 0 and n_small < 100:
        warnings.append(f"no intervals (--bootstrap 0) with {n_small} volumes in the smaller set: below 100 "
                        "volumes every figure here varies a lot from sample to sample; rerun with --bootstrap 200")
    return warnings


def _name_suspects(mem: dict, sets: _Sets) -> None:
    """Give each suspected copy its generated case and its nearest real cases by name."""
    fake_ids, real_ids = sets.fake_ids, sets.real_ids
    for s in mem["suspects"]:
        s["fake_case"] = fake_ids[s["index"]]
        s["real_case_ncc"] = real_ids[s["ncc_index"]]
        s["real_case_feature"] = real_ids[s["feature_index"]]


def _assemble_report(sets: _Sets, feats: _Features, found: _Findings, cfg: _Settings, slice_ext, vol_ext) -> dict:
    """The report as written to report.json (without its plots)."""
    from VolGANCore import __version__

    main, base, real_ids = found.main, found.base, sets.real_ids
    return {
        "kind": "volgan-evaluation",
        "volgan_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protocol": cfg.protocol,
        "seed": cfg.seed,
        "settings": {"n_bootstrap": cfg.n_bootstrap, "knn_k": cfg.knn_k, "copy_quantile": cfg.copy_quantile,
                     "mmd_bandwidth": found.bandwidth, "device": cfg.device, "msssim_pairs": cfg.msssim_pairs,
                     "medicalnet_background": cfg.background, "prd_clusters": cfg.prd_clusters,
                     "slices_per_volume": int(np.mean([len(s) for s in feats.slices]))},
        "inputs": {"real": _set_summary(sets.real_dir, sets.real_paths, sets.real),
                   "generated": _set_summary(sets.fake_dir, sets.fake_paths, sets.fake)},
        "extractors": {"slices_2d": slice_ext.describe(), "volumes_3d": vol_ext.describe()},
        "metrics": _metric_table(found, cfg.protocol, slice_ext, vol_ext),
        "prd_curve": {"extractor": vol_ext.name,
                      "real_vs_generated": {"precision": main["_prd_precision"], "recall": main["_prd_recall"]},
                      "real_vs_real": {"precision": base["_prd_precision"], "recall": base["_prd_recall"]}},
        "memorisation": {**found.memorisation, "extractor": vol_ext.name, "fake_cases": sets.fake_ids,
                         "real_cases": real_ids},
        "diversity": found.diversity,
        "border": found.border,
        "real_vs_real_split": {"half_a": [real_ids[i] for i in found.half_a],
                               "half_b": [real_ids[i] for i in found.half_b]},
        "notes": _notes(sets, found, cfg, slice_ext, vol_ext),
        "warnings": _warnings(sets, found, cfg),
    }


def _write_report(out_dir: Path, report: dict, sets: _Sets, feats: _Features, overwrite: bool) -> None:
    """report.json, report.md, the plots and features.npz, in one atomic folder; adds ``plots`` to the report."""
    from VolGANCore.atomic import atomic_directory, atomic_write_json, atomic_write_text

    from .plots import write_plots
    from .report_md import render_markdown

    ri, fi = feats.ri, feats.fi
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        plots = write_plots(tmp, report, sets.real, sets.fake)
        report["plots"] = plots
        atomic_write_json(tmp / "report.json", report)
        atomic_write_text(tmp / "report.md", render_markdown(report))
        np.savez_compressed(tmp / "features.npz", volume_features_real=feats.volumes[ri],
                            volume_features_generated=feats.volumes[fi],
                            slice_features_real=np.concatenate([feats.slices[i] for i in ri]),
                            slice_features_generated=np.concatenate([feats.slices[i] for i in fi]))


def _medicalnet_background(protocol: str, background: Optional[str]) -> Optional[str]:
    """The MedicalNet background rule of ``protocol`` (None for ``default``, which has no background)."""
    if background is not None and background not in preprocess.MEDICALNET_BACKGROUNDS:
        raise VolGANError(f"--medicalnet-background: expected one of {preprocess.MEDICALNET_BACKGROUNDS}, "
                          f"got {background!r}")
    if protocol != "aydin2024":
        if background is not None:
            raise VolGANError(f"--medicalnet-background {background}: applies to --protocol aydin2024 only (the "
                              "default protocol z-scores all voxels and has no background); drop it or add "
                              "--protocol aydin2024")
        return None
    return background or "noise"


def _clusters_used(main_info: dict, base_info: dict, k: int) -> str:
    """'' when every run used k cells, else which runs had fewer distinct points than k."""
    runs = {"real vs generated": main_info["num_clusters_per_run"], "real vs real": base_info["num_clusters_per_run"]}
    short = {name: ks for name, ks in runs.items() if min(ks) < k}
    return "".join(f"; {name}: fewer distinct points than clusters, runs used {ks}" for name, ks in short.items())


def _msssim_diversity(real, fake, pairs, half_a, half_b, n_bootstrap, seed, device, advance) -> dict:
    """Mean MS-SSIM within the generated and the real set, half-sampling intervals, halves and a verdict."""
    settings = msssim_settings(real.shape[1:])
    sets = {"generated": fake, "real": real}
    values = {}
    for name, arr in sets.items():
        vols = [normalise_for_msssim(v) for v in arr]
        values[name] = pairwise_ms_ssim(vols, pairs[name], settings, device, normalised=True,
                                        on_batch=lambda k, name=name: advance(k, name))
    cis = bootstrap_many(
        lambda a, b: {"generated": mean_over_subset(pairs["generated"], values["generated"], b),
                      "real": mean_over_subset(pairs["real"], values["real"], a)},
        len(real), len(fake), n_bootstrap, seed,
        estimates={k: float(v.mean()) for k, v in values.items()},
        bounds={"generated": (0.0, 1.0), "real": (0.0, 1.0)})
    out: dict[str, Any] = {"settings": settings}
    for name in sets:
        v = values[name]
        ci = cis.get(name)
        out[name] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                     "n_pairs": int(len(v)), "ci95": None if ci is None else [ci["low"], ci["high"]],
                     "pairs": pairs[name].tolist(), "values": v.tolist()}
    out["real_halves"] = [mean_over_subset(pairs["real"], values["real"], h) for h in (half_a, half_b)]
    g, r = out["generated"], out["real"]
    if g["ci95"] is None or r["ci95"] is None:
        verdict = "undetermined (no intervals: --bootstrap 0)"
    elif g["ci95"][0] > r["ci95"][1]:
        verdict = "less diverse than the real set"
    elif g["ci95"][1] < r["ci95"][0]:
        verdict = "more diverse than the real set"
    else:
        verdict = "comparable to the real set"
    out["verdict"] = verdict
    out["less_diverse_than_real"] = verdict.startswith("less")
    return {"msssim": out, "better": "lower = more diverse; ≈ real set",
            "rule": "less/more diverse when the two 95 % intervals do not overlap"}
