"""The downstream segmentation experiment of Aydin et al. 2024: do generated volumes help a CoW segmenter?

Protocol (``docs/evaluation.md``, "Downstream segmentation experiment"):

1. The real labelled set is split into k folds (seeded). For fold f the held-out real volumes are used only for
   scoring: neither the teacher nor any student of fold f sees them.
2. Labels for the synthetic volumes come from, in this order of precedence: ``synthetic_labels`` (e.g. joint
   image + label generation), a saved ``teacher`` checkpoint (its training data are unknown to us: the report
   warns that held-out volumes may have been among them), or a teacher DynUNet trained per fold on all real
   training volumes of that fold (the paper's recipe, without leakage).
3. Students are trained per regime: ``real`` (n_real real volumes of the fold's training part), ``synthetic``
   (n_synthetic teacher-labelled synthetic volumes) and ``real+synthetic`` (both, sampled uniformly from the
   pooled set). The fourth regime, ``synthetic-generated`` ("synthetic, generated labels"), trains on the same
   synthetic volumes with their own generated labels (``synthetic_labels``, or a joint image + label
   ``synthetic_model``'s); asked for, it runs next to ``synthetic`` (teacher labels), whose teacher is then
   trained (or given) as usual. When the real-only student would see exactly the teacher's training set with the same recipe,
   the teacher is reused as that student (``reuse_teacher``; recorded in the results).
4. Every regime's student labels the held-out volumes (sliding window); each case is scored per class with Dice
   and a distance — ``scoring="volgan"``: HD95 in mm with our empty-class rules; ``"paper"``: EvaluateSegmentation's
   HDRFDST@0.95 in voxels with the paper's absent-class rule (:mod:`.metrics`) — TopCoW detection (IoU ≥ 0.25),
   variant vectors and the TopCoW 2023 metric suite (:mod:`.topcow`).
5. Results: per class mean ± SD per regime (volgan: over folds of the fold means; paper: over cases), detection
   rates, variant accuracy, the TopCoW suite aggregated over the held-out cases, and a paired Wilcoxon
   signed-rank test between regimes over the per-case mean Dice (each real case is held out exactly once).

The network is pluggable: ``trainer`` is any callable taking a :class:`TrainRequest` and returning a predictor
``predict(image: Volume, case: str) -> label array``. The default is :class:`DynUNetTrainer`;
:class:`OracleTrainer` returns known label maps and checks the bookkeeping (every score must be perfect).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np

from VolGANCore.dataset import case_id, list_volumes
from VolGANCore.errors import InputFileError, VolGANError
from VolGANCore.io import read_label_volume, read_volume, write_volume
from VolGANCore.labels import convert_labels, get_scheme
from VolGANCore.progress import CancelToken, Progress, ProgressCallback
from VolGANCore.volume import Volume

from .metrics import DETECTION_CLASSES, DETECTION_IOU, SCORINGS, nanmean_or_nan, score_case

__all__ = ["REGIMES", "STANDARD_REGIMES", "Case", "TrainRequest", "Predictor", "DynUNetTrainer", "OracleTrainer",
           "load_labelled_set", "load_image_set", "make_folds", "paired_wilcoxon", "summarise",
           "run_segmentation_experiment", "prediction_path", "EMPTY_CLASS_RULES", "PAPER_RULES", "SCORINGS"]

REGIMES = ("real", "synthetic", "real+synthetic", "synthetic-generated")
STANDARD_REGIMES = REGIMES[:3]  # the paper's three; synthetic-generated (generated labels) when asked for

EMPTY_CLASS_RULES = (
    "A class absent from both prediction and ground truth is not scored (Dice and HD95 NaN, left out of every "
    "mean). A class present in only one of them scores Dice 0 and HD95 = the volume diagonal in mm, "
    "sqrt(Σ (n_i·s_i)²). HD95 is in mm (voxel spacing applied), the symmetric 95th percentile of surface distances "
    "(MONAI). Detection (TopCoW): IoU ≥ 0.25 with the ground truth, rate over the cases where the class is present "
    "in the ground truth."
)

PAPER_RULES = (
    "Scoring 'paper' (Aydin et al. 2024, EvaluateSegmentation -use DICE,HDRFDST@0.95@ -unit voxel per class): a class "
    "missing from the prediction or from the ground truth is not scored (no Dice, no distance; left out of every "
    "mean), so missed and false-positive classes do not enter the means. HD95 is HDRFDST@0.95 in voxels: the "
    "distances from every voxel of one mask outside the other to the nearest voxel of the other, both directions "
    "pooled, element int(0.95·(n − 1)) of the sorted list; distances are exact here (EvaluateSegmentation's search "
    "stops early at random, which can only raise its value). Values are mean ± SD (n − 1) over the held-out cases. "
    "Detection (TopCoW): IoU ≥ 0.25 with the ground truth, rate over the cases where the class is present in the "
    "ground truth."
)


# ---------------------------------------------------------------------------------------------------------------
# data
@dataclasses.dataclass
class Case:
    """One volume of the experiment: its id, image, label map (scheme ids; None if unlabelled) and files."""

    case: str
    image: Volume
    label: Optional[np.ndarray]
    image_path: Path
    label_path: Optional[Path] = None


def _read_labels(path: Path, image: Volume, image_path: Path, scheme: str, input_scheme: str | None) -> np.ndarray:
    lab = read_label_volume(path)
    src = input_scheme or lab.label_scheme or "topcow13"
    get_scheme(src).check(lab.array, f"{path}")
    if not lab.same_geometry(image):
        raise InputFileError(
            path, f"geometry differs from its image {image_path} (shape {lab.shape} vs {image.shape}, spacing "
                  f"{tuple(round(s, 5) for s in lab.spacing)} vs {tuple(round(s, 5) for s in image.spacing)} mm, "
                  "or origin/direction)", "resample the label map onto its image's grid")
    try:
        return convert_labels(lab.array, src, scheme).astype(np.int16)
    except VolGANError as exc:
        raise InputFileError(path, f"labels in scheme '{src}' cannot be used for --label-scheme {scheme}: {exc}",
                             f"use --label-scheme {src}") from None


def load_labelled_set(images_dir: str | os.PathLike, labels_dir: str | os.PathLike, scheme: str,
                      input_scheme: str | None = None, what: str = "real",
                      progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> list[Case]:
    """Read images and their label maps (same case ids), check ids and geometry, convert to ``scheme``.

    ``input_scheme`` is the scheme of the files (default: the file header's ``volgan_label_scheme``, else TopCoW).
    """
    files = list_volumes(images_dir)
    label_files = {case_id(p): p for p in list_volumes(labels_dir)}
    cases = []
    with Progress(len(files), f"read {what} set", progress, cancel) as prog:
        for p in files:
            cid = case_id(p)
            lp = label_files.get(cid)
            if lp is None:
                raise InputFileError(p, f"has no label map named {cid}.* in {labels_dir}",
                                     "add it, or remove the image from the folder")
            img = read_volume(p)
            cases.append(Case(cid, img, _read_labels(lp, img, p, scheme, input_scheme), p, lp))
            prog.advance(1, cid)
    return cases


def load_image_set(images_dir: str | os.PathLike, what: str = "synthetic",
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> list[Case]:
    """Read a folder of unlabelled images."""
    files = list_volumes(images_dir)
    out = []
    with Progress(len(files), f"read {what} set", progress, cancel) as prog:
        for p in files:
            out.append(Case(case_id(p), read_volume(p), None, p))
            prog.advance(1, p.name)
    return out


def _check_spacing(cases: Sequence[Case]) -> tuple[float, float, float]:
    ref = cases[0]
    for c in cases[1:]:
        if not np.allclose(c.image.spacing, ref.image.spacing, rtol=1e-3, atol=1e-6):
            raise InputFileError(
                c.image_path, f"spacing {tuple(round(s, 5) for s in c.image.spacing)} mm differs from "
                              f"{tuple(round(s, 5) for s in ref.image.spacing)} mm of {ref.image_path}",
                "resample real and synthetic volumes to one spacing (the network is planned for one)")
    return ref.image.array_spacing


def make_folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """k disjoint, nearly equal folds of ``range(n)`` after a seeded shuffle (each index in exactly one fold)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 2:
        raise VolGANError(f"--folds: expected an integer ≥ 2, got {k!r}")
    if k > n:
        raise VolGANError(f"--folds {k}: only {n} real labelled volume(s); use at most {n} folds")
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF01D])).permutation(n)
    return [np.sort(f) for f in np.array_split(perm, k)]


# ---------------------------------------------------------------------------------------------------------------
# pluggable networks
class Predictor(Protocol):
    def __call__(self, image: Volume, case: str) -> np.ndarray: ...


@dataclasses.dataclass
class TrainRequest:
    """What a trainer gets: one network to train for one role in one fold."""

    role: str                          # "teacher", "real", "synthetic" or "real+synthetic"
    fold: int                          # 0-based fold index
    cases: list[str]                   # training case ids (synthetic ones prefixed "syn:")
    images: list[Volume]
    labels: list[np.ndarray]           # label maps in scheme ids
    label_ids: list[int]               # background first: the network's output channels
    scheme: str
    spacing: tuple[float, float, float]  # (D, H, W) mm
    checkpoint: Optional[Path]         # where to save the trained network (None: do not save)
    seed: int
    progress: Optional[ProgressCallback] = None
    cancel: Optional[CancelToken] = None


class DynUNetTrainer:
    """The default trainer: :func:`.network.train_network` with a named config; saves the checkpoint."""

    def __init__(self, config: str = "small", epochs: int | None = None, device: str = "cpu", amp: str = "auto"):
        from .network import get_config

        self.config = get_config(config, epochs)
        self.device = device
        self.amp = amp

    def describe(self) -> dict[str, Any]:
        return {"network": "MONAI DynUNet", **dataclasses.asdict(self.config), "device": self.device, "amp": self.amp}

    def __call__(self, req: TrainRequest) -> Predictor:
        from .network import train_network

        model = train_network(
            [v.array for v in req.images], req.labels, req.label_ids, req.spacing, self.config, device=self.device,
            seed=req.seed, description=f"fold {req.fold + 1} {req.role}", amp=self.amp,
            provenance={"role": req.role, "fold": req.fold, "scheme": req.scheme, "training_cases": req.cases},
            progress=req.progress, cancel=req.cancel)
        if req.checkpoint is not None:
            model.save(req.checkpoint)
        return model


class OracleTrainer:
    """A stand-in "network" that returns the known label map of each case (pipeline checks: perfect scores).

    ``truth`` maps case ids to label maps; synthetic cases are looked up under ``"syn:<case>"`` first, then
    under their plain id.
    """

    def __init__(self, truth: dict[str, np.ndarray]):
        self.truth = truth
        self.requests: list[TrainRequest] = []

    def describe(self) -> dict[str, Any]:
        return {"network": "oracle (returns the known label maps)"}

    def __call__(self, req: TrainRequest) -> Predictor:
        self.requests.append(req)

        def predict(image: Volume, case: str) -> np.ndarray:
            lab = self.truth.get(case, self.truth.get(case.split(":", 1)[-1]))
            if lab is None:
                raise KeyError(f"oracle has no label map for case {case!r}")
            return np.asarray(lab).copy()

        return predict


# ---------------------------------------------------------------------------------------------------------------
# statistics
def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of paired values (``scipy.stats.wilcoxon``), with its caveats.

    Pairs with a NaN are dropped; zero differences are dropped (Wilcoxon's convention). With fewer than 6 non-zero
    differences the exact two-sided test cannot reach p < 0.05 (smallest p = 2/2^n), and the note says so.
    """
    from scipy.stats import wilcoxon

    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    d = b - a
    n = int(ok.sum())
    nz = int(np.count_nonzero(d))
    res: dict[str, Any] = {"n": n, "n_nonzero": nz, "median_difference": float(np.median(d)) if n else float("nan"),
                           "mean_difference": float(np.mean(d)) if n else float("nan"),
                           "statistic": None, "p_value": None, "note": ""}
    if n == 0:
        res["note"] = "no case has a finite mean Dice in both regimes: no test"
        return res
    if nz == 0:
        res["p_value"] = 1.0
        res["note"] = "all paired differences are zero"
        return res
    stat = wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    res["statistic"] = float(stat.statistic)
    res["p_value"] = float(stat.pvalue)
    if nz < 6:
        res["note"] = (f"n = {nz} non-zero differences is too small: the exact two-sided test cannot reach p < 0.05 "
                       f"(smallest possible p = {2 / 2 ** nz:.3g}); read the result as descriptive")
    return res


def _sd(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.std(x, ddof=1)) if x.size >= 2 else float("nan")


def summarise(rows: list[dict[str, Any]], scheme: str, regimes: Sequence[str], n_folds: int,
              scoring: str = "volgan") -> dict[str, Any]:
    """Per regime: per class Dice/HD95 mean ± SD, detection, variant accuracy, the TopCoW suite (``topcow``).

    ``scoring="volgan"``: mean ± SD over folds of the fold means, HD95 in mm (keys ``hd95_mm_*``);
    ``"paper"``: mean ± SD over the held-out cases, HDRFDST@0.95 in voxels (keys ``hd95_vox_*``).
    """
    from .topcow import topcow_aggregate

    if scoring not in SCORINGS:
        raise VolGANError(f"scoring: choose one of {list(SCORINGS)}, got {scoring!r}")
    hd = "hd95_vox" if scoring == "paper" else "hd95_mm"
    sch = get_scheme(scheme)
    names = [sch.name_of(i) for i in sch.ids]
    out: dict[str, Any] = {}
    for reg in regimes:
        rr = [r for r in rows if r["regime"] == reg]
        per_class = {}
        for n in names:
            fd, fh, nc = [], [], 0
            for f in range(n_folds):
                fr = [r for r in rr if r["fold"] == f]
                fd.append(nanmean_or_nan([r["dice"][n] for r in fr]))
                fh.append(nanmean_or_nan([r[hd][n] for r in fr]))
                nc += sum(np.isfinite(r["dice"][n]) for r in fr)
            fd_a, fh_a = np.asarray(fd), np.asarray(fh)
            if scoring == "paper":  # over cases, as the paper's per-class tables
                cd = np.asarray([r["dice"][n] for r in rr], float)
                ch = np.asarray([r[hd][n] for r in rr], float)
                stats = {"dice_mean": nanmean_or_nan(cd), "dice_sd": _sd(cd),
                         f"{hd}_mean": nanmean_or_nan(ch), f"{hd}_sd": _sd(ch)}
            else:
                stats = {"dice_mean": nanmean_or_nan(fd_a), "dice_sd": _sd(fd_a),
                         f"{hd}_mean": nanmean_or_nan(fh_a), f"{hd}_sd": _sd(fh_a)}
            per_class[n] = {**stats, "n_folds": int(np.isfinite(fd_a).sum()), "n_cases": int(nc),
                            "fold_dice": fd, f"fold_{hd}": fh}
        fm = np.asarray([nanmean_or_nan([r["mean_dice"] for r in rr if r["fold"] == f]) for f in range(n_folds)])
        fhm = np.asarray([nanmean_or_nan([r[f"mean_{hd}"] for r in rr if r["fold"] == f]) for f in range(n_folds)])
        if scoring == "paper":
            cm = np.asarray([r["mean_dice"] for r in rr], float)
            chm = np.asarray([r[f"mean_{hd}"] for r in rr], float)
        else:
            cm, chm = fm, fhm
        detection = {}
        for n in DETECTION_CLASSES.get(scheme, ()):
            present = [r["detection"][n] for r in rr if r["detection"][n]["in_gt"]]
            absent = [r["detection"][n] for r in rr if not r["detection"][n]["in_gt"]]
            k = sum(bool(d["detected"]) for d in present)
            detection[n] = {"rate": (k / len(present)) if present else float("nan"), "detected": k,
                            "n_present": len(present), "false_positives": sum(d["false_positive"] for d in absent),
                            "n_absent": len(absent)}
        variants = None
        vr = [r["variants"] for r in rr if r["variants"] is not None]
        if vr:
            ant = np.mean([v["anterior_match"] for v in vr])
            post = np.mean([v["posterior_match"] for v in vr])
            both = np.mean([v["anterior_match"] and v["posterior_match"] for v in vr])
            variants = {"anterior_accuracy": float(ant), "posterior_accuracy": float(post),
                        "both_accuracy": float(both), "n": len(vr)}
        suite = [r["topcow"] for r in rr if r.get("topcow") is not None]
        out[reg] = {"per_class": per_class, "mean_dice": nanmean_or_nan(cm), "mean_dice_sd": _sd(cm),
                    f"mean_{hd}": nanmean_or_nan(chm), f"mean_{hd}_sd": _sd(chm),
                    "fold_mean_dice": fm.tolist(), "n_cases": len(rr), "detection": detection, "variants": variants,
                    "topcow": topcow_aggregate(suite) if suite else None}
    return out


def _tests(rows: list[dict[str, Any]], regimes: Sequence[str]) -> list[dict[str, Any]]:
    by = {reg: {r["case"]: r["mean_dice"] for r in rows if r["regime"] == reg} for reg in regimes}
    out = []
    for i, a in enumerate(regimes):
        for b in regimes[i + 1:]:
            cases = sorted(set(by[a]) & set(by[b]))
            t = paired_wilcoxon([by[a][c] for c in cases], [by[b][c] for c in cases])
            out.append({"a": a, "b": b, "quantity": "per-case mean Dice (b − a)", **t})
    return out


# ---------------------------------------------------------------------------------------------------------------
def _slug(regime: str) -> str:
    return regime.replace("+", "_plus_")


def prediction_path(out: str | os.PathLike, fold: int, regime: str, case: str) -> Path:
    """Where the experiment in ``out`` saves the ``regime`` student's prediction of held-out ``case`` (0-based
    ``fold``): ``predictions/fold<f>/<regime>/<case>.nii.gz`` ("+" spelled "_plus_")."""
    return Path(out) / "predictions" / f"fold{int(fold)}" / _slug(regime) / f"{case}.nii.gz"


def _check_count(value: Any, name: str) -> None:
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
        raise VolGANError(f"{name}: expected an integer ≥ 1, got {value!r}")


def run_segmentation_experiment(
    real_images: str | os.PathLike,
    real_labels: str | os.PathLike,
    synthetic: str | os.PathLike | None,                  # folder of synthetic volumes (None: synthetic_model)
    out: str | os.PathLike,
    synthetic_labels: str | os.PathLike | None = None,   # labels of the synthetic volumes (skips the teacher)
    label_scheme: str = "topcow13",                       # scheme the networks learn and are scored in
    input_label_scheme: str | None = None,                # scheme of the label files (default: header, else topcow13)
    teacher: str | os.PathLike | None = None,             # saved teacher checkpoint (else one per fold is trained)
    folds: int = 5,                                       # k of the k-fold split of the real set
    n_real: int | None = None,                            # real training volumes per student (default: all of the fold)
    n_synthetic: int | None = None,                       # synthetic training volumes per student (default: all)
    config: str = "small",                                # "small" (CPU minutes) or "full" (GPU, nnU-Net-like)
    epochs: int | None = None,                            # override the config's epochs
    device: str = "auto",                                 # torch device ("auto": cuda > mps > cpu)
    amp: str = "auto",                                    # "auto" (bf16/fp16 on CUDA) or "off"
    regimes: Sequence[str] = STANDARD_REGIMES,            # training regimes to compare (REGIMES)
    seed: int = 0,                                        # folds, subsets, network initialisation, sampling
    reuse_teacher: bool = True,                           # teacher doubles as the real-only student when identical
    save_predictions: bool = True,                        # write held-out predictions (NIfTI) per regime
    export_nnunet: str | os.PathLike | None = None,       # also write nnU-Net v2 raw datasets here
    nnunet_id: int = 900,                                 # first nnU-Net dataset id (one per regime)
    nnunet_name: str = "VolGANCoW",                       # nnU-Net dataset name prefix
    overwrite: bool = False,                              # replace a non-empty --out
    scoring: str = "volgan",                              # "volgan" (HD95 in mm) or "paper" (HDRFDST@0.95, voxels)
    synthetic_model: str | os.PathLike | None = None,     # a .vgan generator instead of the synthetic folder ...
    n_generate: int | None = None,                        # ... sampling this many volumes into <out>/synthetic
    trainer: Optional[Callable[[TrainRequest], Predictor]] = None,  # pluggable network (default DynUNetTrainer)
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Run the downstream experiment and write ``out`` (results.json, results.md, dice_boxplot.png, checkpoints,
    teacher labels, held-out predictions); return the results dict. See the module docstring for the protocol.

    The synthetic volumes are either a folder (``synthetic``) or drawn from a generator: ``synthetic_model`` (a
    .vgan checkpoint) samples ``n_generate`` volumes with ``seed`` on ``device`` and writes them, with their
    latents and manifest, to ``out/synthetic`` (what ``volgan generate`` would write), so one call does both.

    ``scoring`` chooses Dice/distance rules and units: ``"volgan"`` (HD95 in mm, a class in only one map scores Dice
    0 and the volume diagonal, mean ± SD over folds) or ``"paper"`` (the paper's EvaluateSegmentation HDRFDST@0.95
    in voxels, such classes left out, mean ± SD over cases); the TopCoW 2023 suite is computed either way.

    Progress: one task, "segmentation experiment", over the folds' steps (teacher, teacher labels, each regime's
    student and its scoring); a training step advances with its network's iterations, so the fraction moves
    through folds × regimes × iterations. Reading the sets (and generating) are tasks of their own before it.

    Example (Slicer's Python console or any Python)::

        from GANTrainerLib.segmentation import run_segmentation_experiment
        res = run_segmentation_experiment("real/images", "real/labels", "generated", "seg_exp", folds=5,
                                          n_real=50, n_synthetic=500, config="full", device="cuda")
        res["summary"]["real+synthetic"]["mean_dice"]
    """
    from VolGANCore.atomic import atomic_directory
    from VolGANCore.env import pick_device

    t0 = time.perf_counter()
    say = log or (lambda s: None)
    regimes = tuple(regimes)
    _check_settings(label_scheme, input_label_scheme, regimes, n_real, n_synthetic, scoring, synthetic_labels, teacher)
    _check_synthetic_source(synthetic, synthetic_labels, synthetic_model, n_generate)
    out = Path(out)
    _check_outside_inputs(out, (real_images, real_labels, synthetic, synthetic_labels))
    if amp not in ("auto", "off"):
        raise VolGANError(f"amp: choose 'auto' or 'off', got {amp!r}")
    device = pick_device(device)
    trainer = _default_trainer(trainer, config, epochs, device, amp)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise VolGANError(f"{out}: output folder exists and is not empty (choose a new folder or pass --overwrite)")
    req = _Request(real_images, real_labels, synthetic, synthetic_labels, synthetic_model, label_scheme,
                   input_label_scheme, teacher, folds, n_real, n_synthetic, config, epochs, device, amp, regimes,
                   seed, scoring, save_predictions, export_nnunet)
    data = _read_data(req, n_generate, out, progress, cancel)
    teacher_model = None if teacher is None else _load_teacher(teacher, device, label_scheme, data.spacing)
    reuse = bool(reuse_teacher and req.trains_teacher and n_real is None and isinstance(trainer, DynUNetTrainer))
    record = _Record(train_sets={r: [] for r in regimes})
    with atomic_directory(out, overwrite=overwrite) as tmp, \
            Progress(folds * req.steps_per_fold, "segmentation experiment", progress, cancel) as outer:
        ws = _Workspace(tmp, _Steps(outer), cancel, say)
        shared = _shared_synthetic_labels(req, data, teacher_model, tmp)
        for f, test in enumerate(data.fold_idx):
            _run_fold(f, test, req, data, trainer, reuse, shared, ws, record)
        results = _results(req, data, record, trainer, reuse)
        _write_results(tmp, results, record.rows, req, t0)
    if export_nnunet is not None:
        _export_nnunet(results, req, data, record, nnunet_id, nnunet_name, overwrite, out)
    say(f"results: {out / 'results.md'}")
    return results


# ---------------------------------------------------------------------------------------------------------------
# the steps of run_segmentation_experiment
def _check_settings(label_scheme, input_label_scheme, regimes, n_real, n_synthetic, scoring, synthetic_labels,
                    teacher) -> None:
    get_scheme(label_scheme)
    if input_label_scheme is not None:
        get_scheme(input_label_scheme)
    bad = [r for r in regimes if r not in REGIMES]
    if bad or not regimes or len(set(regimes)) != len(regimes):
        raise VolGANError(f"regimes: choose distinct ones of {list(REGIMES)}, got {list(regimes)}")
    _check_count(n_real, "--n-real")
    _check_count(n_synthetic, "--n-synthetic")
    if scoring not in SCORINGS:
        raise VolGANError(f"--scoring {scoring}: choose one of {', '.join(SCORINGS)}")
    if synthetic_labels is not None and teacher is not None and "synthetic-generated" not in regimes:
        raise VolGANError("pass either --synthetic-labels or --teacher, not both (given labels make the teacher unused; "
                          "to compare both, add the synthetic-generated regime)")


def _check_outside_inputs(out: Path, folders) -> None:
    for folder in folders:
        if folder is None:
            continue
        f, o = Path(folder).resolve(), out.resolve()
        if o == f or f in o.parents:
            raise VolGANError(f"--out {out}: is inside the input folder {folder} (choose an output folder elsewhere)")


def _default_trainer(trainer, config: str, epochs, device: str, amp: str):
    """The given trainer (the config is still validated: it is recorded), else a :class:`DynUNetTrainer`."""
    if trainer is None:
        return DynUNetTrainer(config, epochs, device, amp)
    from .network import get_config

    get_config(config, epochs)  # still validated: it is recorded
    return trainer


@dataclasses.dataclass(frozen=True)
class _Request:
    """The experiment as asked for (after the checks), recorded in the results."""

    real_images: Any
    real_labels: Any
    synthetic: Any                       # folder as given (None with a synthetic model)
    synthetic_labels: Any
    synthetic_model: Any
    label_scheme: str
    input_label_scheme: Optional[str]
    teacher: Any
    folds: int
    n_real: Optional[int]
    n_synthetic: Optional[int]
    config: str
    epochs: Optional[int]
    device: str
    amp: str
    regimes: tuple
    seed: Any                            # as given (folds, subsets, network initialisation, sampling)
    scoring: str
    save_predictions: bool
    export_nnunet: Any

    @property
    def teacher_labels(self) -> bool:
        """The synthetic/real+synthetic regimes learn a teacher's labels (not the given or generated ones)."""
        return "synthetic-generated" in self.regimes or (self.synthetic_labels is None and not self.joint_model)

    @property
    def joint_model(self) -> bool:
        """The synthetic volumes come from a joint image + label generator (with their own labels)."""
        if self.synthetic_model is None:
            return False
        from VolumetricGANLib.checkpoint import generates_labels, read_config

        return generates_labels(read_config(self.synthetic_model))

    @property
    def trains_teacher(self) -> bool:
        """A teacher is trained per fold (teacher labels wanted, no saved teacher)."""
        return self.teacher_labels and self.teacher is None

    @property
    def steps_per_fold(self) -> int:
        """Progress steps: teacher and its labels (or the given teacher's labels), each regime's student and scoring."""
        return (2 if self.trains_teacher else (1 if self.teacher is not None else 0)) + 2 * len(self.regimes)


@dataclasses.dataclass
class _Data:
    """The cases of the experiment and its split."""

    real: list[Case]
    syn_all: list[Case]                  # every synthetic case read or generated
    syn: list[Case]                      # the n_synthetic of them the students use
    synthetic: Any                       # their folder (``out/synthetic`` when generated)
    generated: Any                       # the generator's result to write (synthetic_model), else None
    spacing: tuple[float, float, float]  # (D, H, W) mm
    fold_idx: list[np.ndarray]
    label_ids: list[int]                 # background first: the networks' output channels


def _read_data(req: _Request, n_generate, out: Path, progress, cancel) -> _Data:
    """Read the real set and the synthetic one (or generate it); check the spacing and the sizes; split the folds
    and draw the synthetic subset."""
    real = load_labelled_set(req.real_images, req.real_labels, req.label_scheme, req.input_label_scheme, "real",
                             progress, cancel)
    generated, synthetic = None, req.synthetic
    if req.synthetic_model is not None:
        generated, syn_all = _generate_synthetic(req.synthetic_model, n_generate, req.seed, req.device, progress,
                                                 cancel, req.label_scheme)
        synthetic = out / "synthetic"
    elif req.synthetic_labels is not None:
        syn_all = load_labelled_set(synthetic, req.synthetic_labels, req.label_scheme, req.input_label_scheme,
                                    "synthetic", progress, cancel)
    else:
        syn_all = load_image_set(synthetic, "synthetic", progress, cancel)
    if "synthetic-generated" in req.regimes and any(c.label is None for c in syn_all):
        raise VolGANError("regime synthetic-generated: the synthetic volumes have no generated labels (pass "
                          "--synthetic-labels, or a joint image + label --synthetic-model)")
    spacing = _check_spacing(real + syn_all)
    fold_idx = make_folds(len(real), req.folds, req.seed)
    min_train = min(len(real) - len(f) for f in fold_idx)
    if req.n_real is not None and req.n_real > min_train:
        raise VolGANError(f"--n-real {req.n_real}: with {len(real)} real volumes in {req.folds} folds a fold trains on "
                          f"as few as {min_train}; use --n-real ≤ {min_train} (or fewer folds)")
    if req.n_synthetic is not None and req.n_synthetic > len(syn_all):
        raise VolGANError(f"--n-synthetic {req.n_synthetic}: {synthetic} holds {len(syn_all)} volume(s); "
                          f"use --n-synthetic ≤ {len(syn_all)}")
    rng = np.random.default_rng(np.random.SeedSequence([int(req.seed), 0x5B5]))
    syn = [syn_all[i] for i in sorted(rng.permutation(len(syn_all))[: (req.n_synthetic or len(syn_all))])]
    return _Data(real, syn_all, syn, synthetic, generated, spacing, fold_idx, [0, *get_scheme(req.label_scheme).ids])


def _load_teacher(teacher, device: str, label_scheme: str, spacing):
    """The saved teacher checkpoint, checked against the experiment's scheme and spacing."""
    from .network import SegmentationModel

    teacher_model = SegmentationModel.load(teacher, device)
    tsch = teacher_model.config.get("scheme")
    if tsch != label_scheme:
        raise InputFileError(teacher, f"the teacher predicts scheme '{tsch}' but the experiment uses '{label_scheme}'",
                             f"pass --label-scheme {tsch}")
    if not teacher_model.fits_spacing(spacing):
        raise InputFileError(teacher, f"the teacher was trained at spacing (D,H,W) {teacher_model.plan['spacing']} mm, "
                                      f"the data have {tuple(round(s, 5) for s in spacing)} mm",
                             "resample the data or train a teacher on this spacing")
    return teacher_model


@dataclasses.dataclass
class _Record:
    """What the folds produce, in order: scores, fold splits, checkpoints and the nnU-Net export's inputs."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    fold_info: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    checkpoints: list[str] = dataclasses.field(default_factory=list)
    syn_labels_by_fold: dict[int, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    train_sets: dict[str, list[dict[str, list[str]]]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Workspace:
    """Where a run writes and reports: the output folder being built, the progress steps, cancel and log."""

    tmp: Path
    prog: "_Steps"
    cancel: Optional[CancelToken]
    say: Callable[[str], None]


def _shared_synthetic_labels(req: _Request, data: _Data, teacher_model, tmp: Path):
    """Write the generated volumes; label the synthetic set once when the labels are shared by all folds (a saved
    teacher's, written to ``teacher_labels``, or the given ones); None when each fold trains its teacher."""
    if data.generated is not None:
        from VolumetricGANLib.generate import write_generated

        write_generated(data.generated, tmp / "synthetic")
    if teacher_model is not None:
        shared = {c.case: np.asarray(teacher_model(c.image, "syn:" + c.case), np.int16) for c in data.syn}
        for c in data.syn:
            write_volume(c.image.with_array(shared[c.case], label_scheme=req.label_scheme),
                         tmp / "teacher_labels" / f"{c.case}.nii.gz")
        return shared
    if not req.teacher_labels:
        return {c.case: c.label for c in data.syn}
    return None


def _run_fold(f: int, test: np.ndarray, req: _Request, data: _Data, trainer, reuse: bool, shared, ws: _Workspace,
              record: _Record) -> None:
    """One fold: its teacher labels the synthetic set, each regime's student is trained and scored on the
    held-out real cases."""
    real = data.real
    train = np.setdiff1d(np.arange(len(real)), test)
    rng = np.random.default_rng(np.random.SeedSequence([int(req.seed), f, 0x5EA]))
    sub = np.sort(rng.permutation(train)[: (req.n_real or len(train))])
    info: dict[str, Any] = {"fold": f, "test": [real[i].case for i in test],
                            "teacher_train": [real[i].case for i in train],
                            "student_real_train": [real[i].case for i in sub]}
    ws.say(f"fold {f + 1}/{req.folds}: {len(train)} real for training, {len(test)} held out")
    fold_teacher, syn_labels = _fold_teacher(f, [real[i] for i in train], req, data, trainer, shared, ws, record)
    if req.export_nnunet is not None:  # kept only for the export (per-fold copies can be large)
        record.syn_labels_by_fold[f] = syn_labels
    syn_prefix = f"syn_f{f}_" if req.trains_teacher else "syn_"
    for reg in req.regimes:
        rc = [real[i] for i in sub] if reg in ("real", "real+synthetic") else []
        sc = data.syn if reg in ("synthetic", "real+synthetic", "synthetic-generated") else []
        generated = reg == "synthetic-generated"  # the synthetic volumes' own labels, not the teacher's
        sl = [c.label if generated else syn_labels[c.case] for c in sc]
        record.train_sets[reg].append({"train": [c.case for c in rc] + [("syn_gen_" if generated else syn_prefix)
                                                                        + c.case for c in sc],
                                       "val": [real[i].case for i in test]})
        if reg == "real" and reuse:
            model = fold_teacher
            info["real_student_is_teacher"] = True
        else:
            model = trainer(_train_request(f, reg, rc + sc, [c.label for c in rc] + sl,
                                           [c.case for c in rc] + ["syn:" + c.case for c in sc], req, data, trainer,
                                           ws, record))
        ws.prog.step(f"fold {f + 1} {reg}")
        record.rows.extend(_score_held_out(model, reg, f, [real[i] for i in test], req, ws.tmp))
        ws.prog.step(f"fold {f + 1} {reg} scored")
    record.fold_info.append(info)


def _fold_teacher(f: int, train: list[Case], req: _Request, data: _Data, trainer, shared, ws: _Workspace,
                  record: _Record):
    """The fold's teacher (trained on all its real training cases, when the experiment trains teachers) and the
    synthetic labels of the fold: the teacher's (written to ``teacher_labels/fold<f>``) or the shared ones."""
    if not req.trains_teacher:
        if req.teacher is not None:
            ws.prog.step("teacher labels")
        return None, shared
    fold_teacher = trainer(_train_request(f, "teacher", train, [c.label for c in train], [c.case for c in train],
                                          req, data, trainer, ws, record))
    ws.prog.step(f"fold {f + 1} teacher")
    syn_labels = {}
    for c in data.syn:
        syn_labels[c.case] = np.asarray(fold_teacher(c.image, "syn:" + c.case), np.int16)
    ws.prog.step(f"fold {f + 1} teacher labels")
    for c in data.syn:
        write_volume(c.image.with_array(syn_labels[c.case], label_scheme=req.label_scheme),
                     ws.tmp / "teacher_labels" / f"fold{f}" / f"{c.case}.nii.gz")
    return fold_teacher, syn_labels


def _train_request(f: int, role: str, cases: list[Case], labels: list[np.ndarray], names: list[str], req: _Request,
                   data: _Data, trainer, ws: _Workspace, record: _Record) -> TrainRequest:
    """What the trainer gets for ``role`` in fold ``f``; a DynUNet's checkpoint path joins the record."""
    ck = ws.tmp / "checkpoints" / f"fold{f}_{_slug(role)}.pt"
    if isinstance(trainer, DynUNetTrainer):
        record.checkpoints.append(str(ck.relative_to(ws.tmp)))
    return TrainRequest(role, f, names, [c.image for c in cases], labels, data.label_ids, req.label_scheme,
                        data.spacing, ck, int(req.seed) * 1000 + f * 10 + REGIMES_ROLE.index(role),
                        ws.prog.within(f"fold {f + 1} {role}"), ws.cancel)


def _score_held_out(model, reg: str, f: int, test: list[Case], req: _Request, tmp: Path) -> list[dict[str, Any]]:
    """The student's prediction of each held-out case (saved if asked), scored against its labels."""
    rows = []
    for c in test:
        pred = np.asarray(model(c.image, c.case))
        if pred.shape != c.image.shape:
            raise VolGANError(f"the {reg} network returned shape {pred.shape} for {c.image_path} "
                              f"of shape {c.image.shape}")
        if req.save_predictions:
            write_volume(c.image.with_array(pred.astype(np.int16), label_scheme=req.label_scheme),
                         prediction_path(tmp, f, reg, c.case))
        rows.append({"case": c.case, "fold": f, "regime": reg,
                     **score_case(pred, c.label, c.image.array_spacing, req.label_scheme, req.scoring,
                                  c.image.direction)})
    return rows


def _results(req: _Request, data: _Data, record: _Record, trainer, reuse: bool) -> dict[str, Any]:
    """The results dict (results.json without plots and runtime): settings, inputs, folds, summary, tests, cases."""
    from VolGANCore import __version__

    rows, regimes = record.rows, req.regimes
    summary = summarise(rows, req.label_scheme, regimes, req.folds, req.scoring)
    tests = _tests(rows, regimes)
    describe = getattr(trainer, "describe", None)
    return {
        "kind": "volgan-segmentation-experiment",
        "volgan_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"label_scheme": req.label_scheme, "input_label_scheme": req.input_label_scheme,
                     "folds": int(req.folds), "n_real": req.n_real, "n_synthetic": req.n_synthetic,
                     "n_synthetic_used": len(data.syn), "config": req.config, "epochs": req.epochs,
                     "device": req.device, "amp": req.amp, "seed": int(req.seed), "regimes": list(regimes),
                     "reuse_teacher": reuse, "spacing_dhw_mm": [float(s) for s in data.spacing],
                     "network": describe() if callable(describe) else {"network": type(trainer).__name__},
                     "detection_iou": DETECTION_IOU, "scoring": req.scoring},
        "inputs": {"real_images": str(req.real_images), "real_labels": str(req.real_labels),
                   "synthetic": str(data.synthetic),
                   "synthetic_labels": None if req.synthetic_labels is None else str(req.synthetic_labels),
                   "synthetic_model": None if req.synthetic_model is None else str(req.synthetic_model),
                   "n_real": len(data.real), "n_synthetic": len(data.syn_all),
                   "real_cases": [c.case for c in data.real], "synthetic_cases_used": [c.case for c in data.syn]},
        "teacher": _teacher_source(req),
        "folds": record.fold_info,
        "summary": summary,
        "tests": tests,
        "cases": rows,
        "checkpoints": record.checkpoints,
        "empty_class_rules": PAPER_RULES if req.scoring == "paper" else EMPTY_CLASS_RULES,
        "notes": _notes(req, reuse),
    }


def _teacher_source(req: _Request) -> str:
    if req.teacher is not None:
        return f"checkpoint {req.teacher}"
    if req.synthetic_labels is not None:
        return "given synthetic labels"
    return "trained per fold on the fold's real training volumes"


def _notes(req: _Request, reuse: bool) -> list[str]:
    notes: list[str] = []
    if req.teacher is not None:
        notes.append("The teacher is a given checkpoint: its training data are unknown here. If it saw any of the real "
                     "volumes, the synthetic-label regimes are not independent of the held-out folds.")
    if reuse:
        notes.append("The real-only student of each fold is its teacher (same training volumes, same recipe).")
    if req.label_scheme != "topcow13":
        notes.append(f"Variant vectors need left/right classes: not available in scheme '{req.label_scheme}'.")
    return notes


def _write_results(tmp: Path, results: dict[str, Any], rows, req: _Request, t0: float) -> None:
    """The Dice box plot, then results.json (strict JSON) and results.md; adds ``plots`` and ``runtime_s``."""
    from VolGANCore.atomic import atomic_write_json, atomic_write_text

    from .report import render_markdown, write_boxplot

    results["plots"] = {"dice_boxplot": write_boxplot(tmp / "dice_boxplot.png", rows, req.label_scheme, req.regimes)}
    results["runtime_s"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(tmp / "results.json", _finite_json(results))
    atomic_write_text(tmp / "results.md", render_markdown(results))


def _export_nnunet(results: dict[str, Any], req: _Request, data: _Data, record: _Record, nnunet_id: int,
                   nnunet_name: str, overwrite: bool, out: Path) -> None:
    """nnU-Net v2 raw datasets, one per regime, with the experiment's split; recorded in the results files."""
    from VolGANCore.atomic import atomic_write_json, atomic_write_text

    from .nnunet import export_regimes
    from .report import render_markdown

    results["nnunet"] = export_regimes(req.export_nnunet, data.real, data.syn, record.syn_labels_by_fold,
                                       record.train_sets, req.label_scheme, nnunet_id, nnunet_name,
                                       shared_synthetic=not req.trains_teacher, overwrite=overwrite)
    atomic_write_json(out / "results.json", _finite_json(results))
    atomic_write_text(out / "results.md", render_markdown(results))


REGIMES_ROLE = ("teacher", *REGIMES)


class _Steps:
    """The experiment's one progress task in whole steps; :meth:`within` fills the current step with an inner
    task's fraction (a network's iterations), so the bar moves steadily and never runs backwards."""

    def __init__(self, prog: Progress):
        self.prog = prog
        self.done = 0

    def step(self, message: str) -> None:
        self.done += 1
        self.prog.set(self.done, message)

    def within(self, label: str) -> ProgressCallback:
        def report(event) -> None:
            if event.total and not event.finished:
                tail = f", {event.message}" if event.message else ""
                self.prog.set(self.done + event.fraction,
                              f"{label}: {event.done:.0f}/{event.total:.0f}{tail}")
        return report


def _check_synthetic_source(synthetic, synthetic_labels, synthetic_model, n_generate) -> None:
    if synthetic is not None and synthetic_model is not None:
        raise VolGANError("pass either --synthetic (a folder) or --synthetic-model (a generator), not both")
    if synthetic is None and synthetic_model is None:
        raise VolGANError("no synthetic volumes: pass --synthetic DIR, or --synthetic-model CKPT with --n-generate N")
    if synthetic_model is None:
        if n_generate is not None:
            raise VolGANError("--n-generate: only with --synthetic-model (a folder's volumes are used as they are)")
        return
    if synthetic_labels is not None:
        raise VolGANError("--synthetic-labels: not with --synthetic-model (generated volumes have no label maps; "
                          "the teacher labels them)")
    if n_generate is None:
        raise VolGANError(f"--synthetic-model {synthetic_model}: also pass --n-generate N (volumes to generate)")
    _check_count(n_generate, "--n-generate")


def _generate_synthetic(model, n: int, seed: int, device: str, progress, cancel, label_scheme: str = "topcow13"):
    """Sample ``n`` volumes from the generator ``model``; return the result and its cases (named as the files
    :func:`VolumetricGANLib.generate.write_generated` writes them), labelled with a joint model's own labels
    (converted to ``label_scheme``)."""
    from VolumetricGANLib.generate import generate, generated_file_names

    result = generate(model, n=n, seed=seed, device=device, progress=progress, cancel=cancel)
    names = generated_file_names(n)
    labels = [None] * n
    if result.labels is not None:
        labels = [np.asarray(lab.array if lab.label_scheme == label_scheme
                             else convert_labels(lab.array, lab.label_scheme, label_scheme), np.int16)
                  for lab in result.labels]
    return result, [Case(case_id(Path(name)), vol, lab, Path(model))
                    for name, vol, lab in zip(names, result.volumes, labels)]


def _finite_json(obj: Any) -> Any:
    """Replace NaN/Inf floats by None so that results.json is strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite_json(obj.item())
    return obj
