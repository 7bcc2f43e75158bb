"""Per-artery scores of a predicted Circle-of-Willis label map against the ground truth.

Every function takes label maps in one scheme's ids (``VolGANCore.labels``: TopCoW 2023 or the 7-class merge of
Aydin et al. 2024) as ``(D, H, W)`` integer arrays and the voxel spacing in the same array order
(``Volume.array_spacing``), so distances come out in millimetres.

Empty-class rules (the same in the code, ``results.md`` and ``docs/evaluation.md``):

* a class absent from both the prediction and the ground truth is **not scored**: Dice and HD95 are NaN and
  the class is left out of every mean (per case, per fold and over folds);
* a class present in exactly one of them scores **Dice 0** and **HD95 = the volume diagonal in mm**,
  ``sqrt(Σ (n_i · s_i)²)`` over the three axes (n voxels of spacing s mm): the worst distance the volume allows.

Dice and IoU come from one vectorised confusion count over all classes (checked against MONAI's ``DiceMetric``
in the tests); HD95 is MONAI's ``compute_hausdorff_distance`` (``percentile=95``, symmetric: the larger of the
two directed 95th percentiles of surface-voxel distances) with the voxel spacing, i.e. in mm, never in voxels
as in the anchor code.

TopCoW 2023 detection (Pcom, Acom, 3rd-A2): a class counts as detected in a case when its IoU with the ground
truth is ≥ 0.25; the detection rate is over the cases where the class is present in the ground truth. Variant
vectors (anterior: L-A1, Acom, 3rd-A2, R-A1; posterior: L-Pcom, L-P1, R-P1, R-Pcom) come from
:func:`MorphometryLib.vessels.cow_variants` on prediction and ground truth; a case is right when the vector
matches exactly. They need left/right classes, so they exist only in the TopCoW scheme.

Two scorings of Dice and the distance (``scoring``; ``docs/evaluation.md`` sets them side by side):

* ``"volgan"`` (the default): the rules above — HD95 in mm (MONAI's surface HD95), a class in only one map scores
  Dice 0 and the volume diagonal;
* ``"paper"``: what Aydin et al. 2024 ran — EvaluateSegmentation (Visceral-Project) per class with
  ``-use DICE,HDRFDST@0.95@ -unit voxel`` — reproduced by :func:`hdrfdst_voxels`, and its absent-class rule: a
  class missing from the prediction or from the ground truth gives no scores (EvaluateSegmentation stops at
  "image is empty"), so missed and false-positive classes leave the means, like classes absent from both.
  The paper's tables are mean ± SD over cases (``pandas.DataFrame.std``, n − 1).

Every case also gets the TopCoW 2023 metric suite (:mod:`.topcow`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from VolGANCore.errors import VolGANError
from VolGANCore.labels import LabelScheme, get_scheme

__all__ = [
    "DETECTION_IOU",
    "DETECTION_CLASSES",
    "volume_diagonal_mm",
    "overlap_counts",
    "dice_per_class",
    "iou_per_class",
    "hd95_per_class",
    "detection_per_class",
    "variant_vectors",
    "hdrfdst_voxels",
    "paper_scores_per_class",
    "SCORINGS",
    "score_case",
    "nanmean_or_nan",
]

SCORINGS = ("volgan", "paper")
PAPER_QUANTILE = 0.95  # HDRFDST@0.95@ in the paper's EvaluateSegmentation call
DETECTION_IOU = 0.25  # TopCoW 2023: a small vessel is "detected" when IoU ≥ 0.25
DETECTION_CLASSES = {  # per scheme, the classes of the TopCoW detection task that exist in it
    "topcow13": ("R-Pcom", "L-Pcom", "Acom", "3rd-A2"),
    "aydin7": ("Pcom", "Acom"),  # sides merged; 3rd-A2 is part of ACA there
}


def _check_pair(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise VolGANError(f"prediction shape (D,H,W) {pred.shape} differs from the ground truth's {gt.shape} "
                          "(predict on the ground truth's grid)")
    if pred.ndim != 3:
        raise VolGANError(f"expected 3-D label maps (D, H, W), got shape {pred.shape}")
    if spacing is not None:
        sp = np.asarray(spacing, float)
        if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise VolGANError(f"spacing: expected 3 positive numbers in mm (D, H, W order), got {spacing!r}")
    return pred, gt


def volume_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Diagonal of the volume's extent in mm, ``sqrt(Σ (n_i · s_i)²)``: HD95 of a class found in only one map."""
    return float(math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing))))


def overlap_counts(pred: np.ndarray, gt: np.ndarray, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class id: (|P ∩ G|, |P|, |G|) in voxels, from one joint histogram of the two label maps."""
    pred, gt = _check_pair(pred, gt)
    ids = np.asarray(list(ids), np.int64)
    top = int(max(ids.max(initial=0), pred.max(initial=0), gt.max(initial=0))) + 1
    p = pred.astype(np.int64, copy=False).ravel()
    g = gt.astype(np.int64, copy=False).ravel()
    same = p == g
    inter_all = np.bincount(p[same], minlength=top)
    p_all = np.bincount(p, minlength=top)
    g_all = np.bincount(g, minlength=top)
    return inter_all[ids].astype(np.float64), p_all[ids].astype(np.float64), g_all[ids].astype(np.float64)


def dice_per_class(pred: np.ndarray, gt: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """Dice per class id; NaN where the class is absent from both maps, 0 where it is in only one."""
    inter, ps, gs = overlap_counts(pred, gt, ids)
    denom = ps + gs
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1.0), np.nan)
    return d


def iou_per_class(pred: np.ndarray, gt: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """Intersection over union per class id; NaN where the class is absent from both maps."""
    inter, ps, gs = overlap_counts(pred, gt, ids)
    union = ps + gs - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def hd95_per_class(pred: np.ndarray, gt: np.ndarray, ids: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """95th-percentile Hausdorff distance in mm per class id (MONAI, with spacing), with the empty-class rules.

    Parameters
    ----------
    pred, gt : int arrays (D, H, W)
        Label maps on the same grid.
    ids : class ids to score
    spacing : 3 floats
        Voxel size in mm in array order (D, H, W) — ``Volume.array_spacing``.
    """
    import torch
    from monai.metrics import compute_hausdorff_distance

    pred, gt = _check_pair(pred, gt, spacing)
    sp = [float(s) for s in spacing]
    diag = volume_diagonal_mm(gt.shape, sp)
    out = np.full(len(ids), np.nan)
    for k, cid in enumerate(ids):
        pm, gm = pred == cid, gt == cid
        ip, ig = bool(pm.any()), bool(gm.any())
        if not ip and not ig:
            continue
        if ip != ig:
            out[k] = diag
            continue
        # crop both masks to their joint bounding box + 1 voxel: surface distances do not change, work shrinks
        nz = np.nonzero(pm | gm)
        box = tuple(slice(max(0, int(a.min()) - 1), int(a.max()) + 2) for a in nz)
        yp = torch.from_numpy(np.ascontiguousarray(pm[box]))[None, None]
        yt = torch.from_numpy(np.ascontiguousarray(gm[box]))[None, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=sp)
        out[k] = float(hd.reshape(-1)[0])
    return out


def hdrfdst_voxels(pred: np.ndarray, gt: np.ndarray, quantile: float = PAPER_QUANTILE) -> float:
    """EvaluateSegmentation's ``HDRFDST@q@`` with ``-unit voxel`` of two binary masks, with exact distances.

    EvaluateSegmentation (``HausdorffDistanceMetric.h``) takes every voxel in the ground truth but not in the
    prediction and its distance to the nearest voxel of the prediction, and every voxel in the prediction but not
    in the ground truth and its distance to the nearest voxel of the ground truth — whole masks, not surfaces —
    pools both lists, sorts them and returns the element at index ``int(q · (n − 1))`` (the maximum when n ≤ 1,
    0 when the masks are equal). Distances are in voxel units (index differences; spacing ignored).

    Its nearest-distance search is not exact: it visits the candidates in a random order (``srand(time)``) and
    stops at the first one closer than the largest distance found so far, so a recorded distance can exceed the
    true nearest distance (never the maximum, the Hausdorff distance itself) and repeated runs differ. Here every
    distance is the exact nearest one (a Euclidean distance transform), so the result is deterministic and never
    above EvaluateSegmentation's for the same masks.

    Both masks must be non-empty (EvaluateSegmentation refuses empty images; see :func:`paper_scores_per_class`).
    """
    from scipy.ndimage import distance_transform_edt

    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if not p.any() or not g.any():
        raise VolGANError("hdrfdst_voxels: both masks must hold at least one voxel (EvaluateSegmentation reports "
                          "no distance for an empty image)")
    nz = np.nonzero(p | g)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    p, g = p[box], g[box]
    fn, fp = g & ~p, p & ~g
    d = np.concatenate([distance_transform_edt(~p)[fn], distance_transform_edt(~g)[fp]])
    if d.size == 0:
        return 0.0
    if quantile >= 1 or d.size == 1:
        return float(d.max())
    d.sort()
    return float(d[int(quantile * (d.size - 1))])


def paper_scores_per_class(pred: np.ndarray, gt: np.ndarray, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(Dice, HDRFDST@0.95 in voxels) per class id as the paper scored them: NaN for both where the class is
    missing from the prediction or the ground truth (EvaluateSegmentation writes no metrics then)."""
    pred, gt = _check_pair(pred, gt)
    dice = np.full(len(ids), np.nan)
    hd = np.full(len(ids), np.nan)
    inter, ps, gs = overlap_counts(pred, gt, ids)
    for k, cid in enumerate(ids):
        if ps[k] > 0 and gs[k] > 0:
            dice[k] = 2.0 * inter[k] / (ps[k] + gs[k])
            hd[k] = hdrfdst_voxels(pred == cid, gt == cid)
    return dice, hd


def detection_per_class(pred: np.ndarray, gt: np.ndarray, scheme: str | LabelScheme,
                        threshold: float = DETECTION_IOU) -> dict[str, dict[str, Any]]:
    """TopCoW detection of the small classes: per class ``in_gt``, ``in_pred``, ``iou``, ``detected``.

    ``detected`` is None where the class is absent from the ground truth (such cases do not enter the rate);
    a prediction of an absent class is a false positive (``false_positive`` True).
    """
    sch = scheme if isinstance(scheme, LabelScheme) else get_scheme(scheme)
    names = DETECTION_CLASSES.get(sch.name, ())
    ids = [sch.id_of(n) for n in names]
    if not ids:
        return {}
    inter, ps, gs = overlap_counts(pred, gt, ids)
    out = {}
    for n, i_, p_, g_ in zip(names, inter, ps, gs):
        union = p_ + g_ - i_
        iou = float(i_ / union) if union > 0 else float("nan")
        in_gt, in_pred = bool(g_ > 0), bool(p_ > 0)
        out[n] = {"in_gt": in_gt, "in_pred": in_pred, "iou": iou,
                  "detected": (bool(iou >= threshold) if in_gt else None),
                  "false_positive": bool(in_pred and not in_gt)}
    return out


def variant_vectors(labels: np.ndarray, spacing_xyz: Sequence[float], scheme: str) -> dict[str, Any] | None:
    """CoW variant vectors of a label map via :func:`MorphometryLib.vessels.cow_variants` (TopCoW scheme only)."""
    if scheme != "topcow13":
        return None
    from MorphometryLib.vessels import cow_variants
    from VolGANCore.volume import Volume

    v = cow_variants(Volume(np.asarray(labels), spacing=spacing_xyz, label_scheme="topcow13"))
    return {"anterior": [int(x) for x in v["anterior"]], "posterior": [int(x) for x in v["posterior"]]}


def score_case(pred: np.ndarray, gt: np.ndarray, spacing_dhw: Sequence[float], scheme: str,
               scoring: str = "volgan", direction: np.ndarray | None = None, suite: bool = True) -> dict[str, Any]:
    """Every score of one case: Dice and the distance per class, TopCoW detection, variant vectors, TopCoW suite.

    Returns a JSON-ready dict: ``dice`` ({class name: value, NaN = not scored}) and, with ``scoring="volgan"``,
    ``hd95_mm`` (MONAI HD95 in mm), with ``scoring="paper"`` ``hd95_vox`` (:func:`hdrfdst_voxels`); ``mean_dice``
    and ``mean_hd95_mm`` / ``mean_hd95_vox`` (over scored classes); ``detection`` and ``variants`` (None outside
    the TopCoW scheme) with ``anterior_match`` / ``posterior_match``; ``topcow`` (:func:`.topcow.topcow_case`,
    with ``direction`` for its left-right check; left out when ``suite`` is False).
    """
    if scoring not in SCORINGS:
        raise VolGANError(f"scoring: choose one of {list(SCORINGS)}, got {scoring!r}")
    sch = get_scheme(scheme)
    pred, gt = _check_pair(pred, gt, spacing_dhw)
    ids = list(sch.ids)
    if scoring == "paper":
        dice, hd = paper_scores_per_class(pred, gt, ids)
        hd_key = "hd95_vox"
    else:
        dice = dice_per_class(pred, gt, ids)
        hd = hd95_per_class(pred, gt, ids, spacing_dhw)
        hd_key = "hd95_mm"
    names = [sch.name_of(i) for i in ids]
    spacing_xyz = tuple(float(s) for s in reversed(tuple(spacing_dhw)))
    vg = variant_vectors(gt, spacing_xyz, scheme)
    vp = variant_vectors(pred, spacing_xyz, scheme)
    variants = None
    if vg is not None and vp is not None:
        variants = {"gt": vg, "pred": vp, "anterior_match": vg["anterior"] == vp["anterior"],
                    "posterior_match": vg["posterior"] == vp["posterior"]}
    out = {
        "dice": {n: float(d) for n, d in zip(names, dice)},
        hd_key: {n: float(h) for n, h in zip(names, hd)},
        "mean_dice": nanmean_or_nan(dice),
        f"mean_{hd_key}": nanmean_or_nan(hd),
        "detection": detection_per_class(pred, gt, sch),
        "variants": variants,
    }
    if suite:
        from .topcow import topcow_case

        out["topcow"] = topcow_case(pred, gt, spacing_dhw, sch, direction)
    return out


def nanmean_or_nan(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the finite values; NaN (without a warning) when there are none."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")
