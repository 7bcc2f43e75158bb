"""Score CoW segmentations from files with the TopCoW 2023 metric suite (``volgan evaluate-segmentation``).

:func:`evaluate_segmentations` pairs predictions with ground-truth label maps (two files, or two folders whose
files pair by case id = file name without extension), checks label ids and grids, scores every pair with
:func:`.topcow.topcow_case` and aggregates with :func:`.topcow.topcow_aggregate`. :func:`format_evaluation`
renders the result as text. Nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from VolGANCore.dataset import case_id, list_volumes
from VolGANCore.errors import InputFileError, VolGANError
from VolGANCore.io import read_label_volume
from VolGANCore.labels import get_scheme
from VolGANCore.progress import CancelToken, Progress, ProgressCallback

from .topcow import GROUP2, topcow_aggregate, topcow_case

__all__ = ["pair_segmentations", "evaluate_segmentations", "format_evaluation"]


def pair_segmentations(pred: str | os.PathLike, gt: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(case, prediction file, ground-truth file) triples; every file of each folder must find its partner."""
    pred, gt = Path(pred), Path(gt)
    for path, flag in ((pred, "--pred"), (gt, "--gt")):
        if not path.exists():
            raise InputFileError(path, f"not found ({flag})", "check the path")
    if pred.is_file() and gt.is_file():
        return [(case_id(gt), pred, gt)]
    if pred.is_file() != gt.is_file():
        kind = lambda p: "a file" if p.is_file() else "a folder"  # noqa: E731
        raise VolGANError(f"--pred {pred} is {kind(pred)} but --gt {gt} is {kind(gt)} "
                          "(pass two label-map files, or two folders whose files have the same names)")
    preds = {case_id(p): p for p in list_volumes(pred)}
    gts = {case_id(p): p for p in list_volumes(gt)}
    for mine, other, what, other_dir in ((preds, gts, "ground truth", gt), (gts, preds, "prediction", pred)):
        missing = sorted(set(mine) - set(other))
        if missing:
            more = f" ({len(missing)} unpaired: {', '.join(missing[:5])}{', …' if len(missing) > 5 else ''})"
            raise InputFileError(mine[missing[0]], f"has no {what} named {missing[0]}.* in {other_dir}{more}",
                                 "name each prediction like its ground truth, or remove the unpaired files")
    return [(c, preds[c], gts[c]) for c in sorted(gts)]


def evaluate_segmentations(pred: str | os.PathLike, gt: str | os.PathLike, label_scheme: str = "topcow13",
                           progress: Optional[ProgressCallback] = None,
                           cancel: Optional[CancelToken] = None) -> dict[str, Any]:
    """The TopCoW 2023 metric suite of predicted label maps against their ground truth.

    Parameters
    ----------
    pred, gt : file or folder
        Two label-map files, or two folders (pairs by case id).
    label_scheme : "topcow13" (default; all metrics) or "aydin7" (class metrics only).

    Returns
    -------
    dict: ``kind``, ``label_scheme``, ``pred``, ``gt``, ``cases`` (per case: ``case``, ``pred_file``,
    ``gt_file`` and :func:`.topcow.topcow_case`'s keys) and ``aggregate`` (:func:`.topcow.topcow_aggregate`).
    HD95 is in mm from the ground truth's spacing.
    """
    scheme = get_scheme(label_scheme)
    pairs = pair_segmentations(pred, gt)
    cases = []
    with Progress(len(pairs), "evaluate segmentations", progress, cancel) as prog:
        for case, pf, gf in pairs:
            g = read_label_volume(gf, scheme=scheme.name)
            p = read_label_volume(pf, scheme=scheme.name)
            if not p.same_geometry(g):
                raise InputFileError(
                    pf, f"grid differs from its ground truth {gf} (shape {p.shape} vs {g.shape}, spacing "
                        f"{tuple(round(s, 5) for s in p.spacing)} vs {tuple(round(s, 5) for s in g.spacing)} mm, "
                        "or origin/direction)", "resample the prediction onto the ground truth's grid")
            scores = topcow_case(p.array, g.array, g.array_spacing, scheme, g.direction)
            cases.append({"case": case, "pred_file": str(pf), "gt_file": str(gf), **scores})
            prog.advance(1, case)
    return {"kind": "volgan-segmentation-evaluation", "label_scheme": scheme.name, "pred": str(pred), "gt": str(gt),
            "cases": cases, "aggregate": topcow_aggregate(cases)}


def _v(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def format_evaluation(result: dict[str, Any]) -> str:
    """A plain-text summary: one row per case, the means over cases, detection, variants, topology."""
    agg = result["aggregate"]
    topo = agg.get("detection") is not None
    head = (f"{'case':<24} {'Dice':>6} {'Dice-bin':>8} {'clDice':>6} {'B0err':>6} {'HD95 mm':>8}"
            + ("  topology ant/post" if topo else ""))
    lines = [f"TopCoW 2023 metrics of {len(result['cases'])} segmentation(s) {result['pred']} against "
             f"{result['gt']} (label scheme {result['label_scheme']}; Dice, B0err and HD95 are class averages)", "",
             head]
    for c in result["cases"]:
        row = (f"{c['case'][:24]:<24} {_v(c['dice']['cls_avg']):>6} {_v(c['dice']['merged']):>8} "
               f"{_v(c['cldice']['merged']):>6} {_v(c['b0_error']['cls_avg'], 2):>6} {_v(c['hd95']['cls_avg'], 2):>8}")
        if topo:
            row += "  " + "/".join("yes" if c["topology"][r]["match"] else "no" for r in ("anterior", "posterior"))
        lines.append(row)

    def ms(d: dict, digits: int = 3) -> str:
        return f"{_v(d['mean'], digits)} ± {_v(d['sd'], digits)}"

    lines += ["", f"mean ± SD over {agg['n_cases']} case(s): Dice cls-avg {ms(agg['dice']['cls_avg'])}, merged "
                  f"{ms(agg['dice']['merged'])}; clDice merged {ms(agg['cldice']['merged'])}; Betti-0 error cls-avg "
                  f"{ms(agg['b0_error']['cls_avg'], 2)}; HD95 cls-avg {ms(agg['hd95']['cls_avg'], 2)} mm"]
    if topo:
        det = agg["detection"]
        lines.append("group-2 detection F1: " + ", ".join(
            f"{n} {_v(det[n]['f1'], 2)} (TP {det[n]['TP']}, FP {det[n]['FP']}, FN {det[n]['FN']})" for n in GROUP2)
            + f"; mean {_v(det['mean_f1'])}")
        vb, tm = agg["variant_balanced_accuracy"], agg["topology_match_rate"]
        lines.append(f"variant-balanced accuracy: anterior {_v(vb['anterior'])}, posterior {_v(vb['posterior'])}")
        lines.append(f"topology match rate (variant-balanced): anterior {_v(tm['anterior'])}, "
                     f"posterior {_v(tm['posterior'])}")
    return "\n".join(lines)
