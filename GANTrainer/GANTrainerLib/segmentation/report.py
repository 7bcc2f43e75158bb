"""``results.md`` and the per-class Dice box plot of the downstream segmentation experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from VolGANCore.labels import get_scheme

__all__ = ["render_markdown", "write_boxplot"]


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def _pm(mean: Any, sd: Any, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and not np.isfinite(mean)):
        return "—"
    s = _f(sd, digits)
    return f"{_f(mean, digits)} ± {s}" if s != "—" else _f(mean, digits)


def render_markdown(results: dict[str, Any]) -> str:
    """A one-page report: settings, per-class tables per regime, detection, variants, paired tests, rules."""
    st = results["settings"]
    paper = st.get("scoring", "volgan") == "paper"
    hd, unit = ("hd95_vox", "voxels") if paper else ("hd95_mm", "mm")
    regimes = st["regimes"]
    summ = results["summary"]
    net = st.get("network", {})
    lines = [
        "# Downstream segmentation experiment",
        "",
        f"Real labelled volumes: {results['inputs']['n_real']} (`{results['inputs']['real_images']}`); "
        f"synthetic volumes used: {st['n_synthetic_used']} of {results['inputs']['n_synthetic']} "
        f"(`{results['inputs']['synthetic']}`). Label scheme `{st['label_scheme']}`; {st['folds']}-fold split of the "
        f"real set (seed {st['seed']}); students per fold: real {st['n_real'] or 'all training volumes'}, "
        f"synthetic {st['n_synthetic_used']}.",
        "",
        f"Synthetic labels: {results['teacher']}. Network: {net.get('network', '?')}"
        + (f", config `{net.get('name')}` ({net.get('epochs')} epochs × {net.get('iters_per_epoch')} iterations, "
           f"batch {net.get('batch_size')}, patch ≤ {tuple(net.get('patch_size', ()))})" if "name" in net else "")
        + f"; device `{st['device']}`. Runtime {results.get('runtime_s', '?')} s.",
        "",
        "Every score is on held-out real volumes that neither the teacher nor the students of their fold saw. "
        + ("Scoring `paper` (Aydin et al. 2024: EvaluateSegmentation's Dice and HDRFDST@0.95 in voxels; classes "
           "missing from the prediction or the ground truth are not scored): values are mean ± SD over the held-out "
           "cases (SD with n − 1; — where undefined)." if paper else
           "Scoring `volgan`: values are mean ± SD over folds of the per-fold mean (SD with n − 1; — where undefined)."),
        "",
    ]
    sch = get_scheme(st["label_scheme"])
    names = [sch.name_of(i) for i in sch.ids]
    lines += ["## Dice per class", "", "| Class | " + " | ".join(regimes) + " |", "|---|" + "---|" * len(regimes)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_pm(summ[r]["per_class"][n]["dice_mean"], summ[r]["per_class"][n]["dice_sd"])
                                              for r in regimes) + " |")
    lines.append("| **mean over classes** | " + " | ".join(_pm(summ[r]["mean_dice"], summ[r]["mean_dice_sd"])
                                                       for r in regimes) + " |")
    title = "HDRFDST@0.95 per class (voxels)" if paper else "HD95 per class (mm)"
    lines += ["", f"## {title}", "", "| Class | " + " | ".join(regimes) + " |", "|---|" + "---|" * len(regimes)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_pm(summ[r]["per_class"][n][f"{hd}_mean"],
                                                   summ[r]["per_class"][n][f"{hd}_sd"], 2) for r in regimes) + " |")
    lines.append("| **mean over classes** | " + " | ".join(_pm(summ[r][f"mean_{hd}"], summ[r][f"mean_{hd}_sd"], 2)
                                                       for r in regimes) + " |")
    lines.append("")
    det_names = list(summ[regimes[0]]["detection"])
    if det_names:
        lines += [f"## Detection (TopCoW: IoU ≥ {st.get('detection_iou', 0.25)})", "",
                  "Rate over the held-out cases where the class is present in the ground truth (detected / present); "
                  "FP = cases without the class in the ground truth where the network predicted it.", "",
                  "| Class | " + " | ".join(regimes) + " |", "|---|" + "---|" * len(regimes)]
        for n in det_names:
            cells = []
            for r in regimes:
                d = summ[r]["detection"][n]
                cells.append(f"{_f(d['rate'], 2)} ({d['detected']}/{d['n_present']}), FP {d['false_positives']}/{d['n_absent']}")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    if summ[regimes[0]]["variants"] is not None:
        lines += ["## CoW variant vectors (exact-match accuracy)", "",
                  "Anterior = [L-A1, Acom, 3rd-A2, R-A1], posterior = [L-Pcom, L-P1, R-P1, R-Pcom] "
                  "(`MorphometryLib.vessels.cow_variants` on prediction and ground truth).", "",
                  "| Regime | anterior | posterior | both | n |", "|---|---|---|---|---|"]
        for r in regimes:
            v = summ[r]["variants"]
            lines.append(f"| {r} | {_f(v['anterior_accuracy'], 2)} | {_f(v['posterior_accuracy'], 2)} | "
                         f"{_f(v['both_accuracy'], 2)} | {v['n']} |")
        lines.append("")
    lines += _topcow_section(summ, regimes)
    if results["tests"]:
        lines += ["## Paired tests between regimes", "",
                  "Wilcoxon signed-rank test (two-sided, `scipy.stats.wilcoxon`) over the per-case mean Dice; each real "
                  "case is held out once, so pairs are cases.", "",
                  "| a | b | n | median (b − a) | p | note |", "|---|---|---|---|---|---|"]
        for t in results["tests"]:
            lines.append(f"| {t['a']} | {t['b']} | {t['n']} | {_f(t['median_difference'])} | "
                         f"{_f(t['p_value'], 4)} | {t['note']} |")
        lines.append("")
    if results.get("nnunet"):
        lines += ["## nnU-Net v2 datasets", "", "Same cases and split (`splits_final.json`; copy it to "
                  "`nnUNet_preprocessed/<dataset>/` after planning):", ""]
        lines += [f"- {reg}: `{d['folder']}` ({d['numTraining']} cases)" for reg, d in results["nnunet"].items()]
        lines.append("")
    lines += ["## Rules", "", results["empty_class_rules"], ""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    plot = results.get("plots", {}).get("dice_boxplot")
    if plot:
        lines += [f"![Per-class Dice per regime]({plot})", ""]
    return "\n".join(lines)


def _ms(d: Any, digits: int = 3) -> str:
    return "—" if d is None else _pm(d.get("mean"), d.get("sd"), digits)


def _topcow_section(summ: dict[str, Any], regimes: Sequence[str]) -> list[str]:
    """The TopCoW 2023 metric suite per regime (``GANTrainerLib.segmentation.topcow``), if it was computed."""
    suites = {r: summ[r].get("topcow") for r in regimes}
    if not any(suites.values()):
        return []
    lines = ["## TopCoW 2023 metric suite", "",
             "The challenge's definitions (CoWBenchmark/TopCoW_Eval_Metrics; `docs/evaluation.md`): per case over the "
             "classes in the prediction or the ground truth, class average (cls-avg) and merged vessel tree "
             "(label > 0); mean ± SD over the held-out cases. HD95 in mm (90 mm for a class in only one map).", "",
             "| Metric | " + " | ".join(regimes) + " |", "|---|" + "---|" * len(regimes)]
    rows = [("Dice, cls-avg", "dice", "cls_avg", 3), ("Dice, merged", "dice", "merged", 3),
            ("clDice, merged", "cldice", "merged", 3), ("clDice, cls-avg", "cldice", "cls_avg", 3),
            ("Betti-0 error, cls-avg", "b0_error", "cls_avg", 2), ("Betti-0 error, merged", "b0_error", "merged", 2),
            ("HD95 (mm), cls-avg", "hd95", "cls_avg", 2), ("HD95 (mm), merged", "hd95", "merged", 2)]
    for label, key, sub, digits in rows:
        lines.append(f"| {label} | " + " | ".join(_ms((suites[r] or {}).get(key, {}).get(sub), digits)
                                                  for r in regimes) + " |")
    ref = next(s for s in suites.values() if s)
    if ref.get("detection") is not None:
        lines.append("| Group-2 detection F1, mean | " + " | ".join(_f(suites[r]["detection"]["mean_f1"])
                                                               for r in regimes) + " |")
        for region in ("anterior", "posterior"):
            lines.append(f"| Variant-balanced accuracy, {region} | " + " | ".join(
                _f(suites[r]["variant_balanced_accuracy"][region]) for r in regimes) + " |")
        for region in ("anterior", "posterior"):
            lines.append(f"| Topology match rate, {region} | " + " | ".join(
                _f(suites[r]["topology_match_rate"][region]) for r in regimes) + " |")
    lines += ["", "Per class over the cases that score it: clDice / Betti-0 error"
              + (" / group-2 detection F1 (TP-FP-FN over the cases)" if ref.get("detection") is not None else "")
              + ":", "", "| Class | " + " | ".join(regimes) + " |", "|---|" + "---|" * len(regimes)]
    names = list(dict.fromkeys(n for r in regimes if suites[r] for n in suites[r]["cldice"]["per_class"]))
    for n in names:
        cells = []
        for r in regimes:
            s = suites[r] or {}
            cell = (f"{_ms(s.get('cldice', {}).get('per_class', {}).get(n))} / "
                    f"{_ms(s.get('b0_error', {}).get('per_class', {}).get(n), 2)}")
            det = (s.get("detection") or {}).get(n)
            if det is not None:
                cell += f" / F1 {_f(det['f1'], 2)} ({det['TP']}-{det['FP']}-{det['FN']})"
            cells.append(cell)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def write_boxplot(path: Path, rows: list[dict[str, Any]], scheme: str, regimes: Sequence[str]) -> str:
    """Per-class Dice of the held-out cases, one box per regime within each class; returns the file name."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from VolGANCore.atomic import atomic_path

    sch = get_scheme(scheme)
    names = [sch.name_of(i) for i in sch.ids]
    k = len(regimes)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(names) * max(1, k / 2)), 3.8))
    colours = ["#4363d8", "#f58231", "#3cb44b", "#911eb4"]
    for j, reg in enumerate(regimes):
        data, pos = [], []
        for i, n in enumerate(names):
            v = np.asarray([r["dice"][n] for r in rows if r["regime"] == reg], float)
            v = v[np.isfinite(v)]
            if v.size:
                data.append(v)
                pos.append(i + (j - (k - 1) / 2) * width)
        if data:
            bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, manage_ticks=False,
                            medianprops={"color": "black"}, flierprops={"markersize": 3})
            for b in bp["boxes"]:
                b.set_facecolor(colours[j % len(colours)])
                b.set_alpha(0.75)
        ax.plot([], [], "s", color=colours[j % len(colours)], label=reg)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice (held-out real cases)")
    ax.set_title("Per-class Dice per training regime", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(path).name
