"""Morphometric fidelity: do generated volumes have the real anatomy's measurements?

**Bone** (:func:`bone_fidelity`). For each parameter of the exact bone panel (:func:`MorphometryLib.batch_bone_morphometry`) the real and the
generated distributions are compared by the 1-Wasserstein distance (also divided by the real standard
deviation, so parameters of different units can be read side by side) and the two-sample Kolmogorov–Smirnov
statistic — the per-parameter reliability test of the Bone-GAN follow-up of Iarussi et al. Every distance is
reported next to the same distance between two disjoint, seeded halves of the real set (the real-vs-real
baseline), and a violin plot shows both distributions per parameter.

**Circle of Willis** (:func:`cow_fidelity`), on TopCoW 2023 label maps (for generated angiograms: the labels
of a teacher segmentation, or of joint image+label generation). Per artery class, from
:func:`MorphometryLib.vessels.vessel_morphometry`: the presence frequency in each set, their difference
(generated − real) with Fisher's exact test, and the distributions of the mean centreline radius and of the
centreline length over the subjects that have the artery (Wasserstein, W1/SD, KS, each next to its
real-vs-real baseline between two disjoint, seeded halves of the real subjects). From
:func:`MorphometryLib.vessels.cow_variants`: the frequency of each anterior [L-A1, Acom, 3rd-A2, R-A1] and
posterior [L-Pcom, L-P1, R-P1, R-Pcom] variant vector in each set and the total-variation distance
½ Σ |p_real − p_generated| between the two frequency tables (0 = same variant mix, 1 = disjoint), again
with its real-vs-real baseline. An artery is **flagged** when one set never has it and the other does, or
when Fisher's p < ``alpha``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from VolGANCore import VolGANError

from .variants import PARTS, SEGMENTS, variant_fidelity

__all__ = ["BONE_FIDELITY_KEYS", "COW_FIDELITY_MEASURES", "bone_fidelity", "cow_fidelity", "detect_fidelity_kind",
           "write_fidelity_report"]

COW_FIDELITY_MEASURES = ("radius mean [mm]", "length [mm]")
BONE_FIDELITY_KEYS = ("BV/TV", "BS/TV [1/mm]", "Tb.Th [mm]", "Tb.Sp [mm]", "Tb.N [1/mm]", "Conn.D [1/mm^3]", "SMI",
                      "DA", "BMD [image units]", "TMD [image units]")


def _distances(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from scipy.stats import ks_2samp, wasserstein_distance

    w1 = float(wasserstein_distance(a, b))
    sd = float(np.std(a, ddof=1)) if len(a) > 1 else float("nan")
    with warnings.catch_warnings():  # small samples with ties: scipy falls back to the asymptotic p, and says so
        warnings.filterwarnings("ignore", message=".*Exact calculation unsuccessful.*", category=RuntimeWarning)
        ks = ks_2samp(a, b)
    return {"wasserstein": w1, "wasserstein_over_sd": w1 / sd if sd > 0 else float("nan"),
            "ks": float(ks.statistic), "ks_p": float(ks.pvalue)}


def bone_fidelity(
    real: str | os.PathLike,                  # folder of real patches
    fake: str | os.PathLike,                  # folder of generated patches
    threshold: float | str = "miccai2020",    # bone threshold (image units) or a named preset
    keys: Sequence[str] = BONE_FIDELITY_KEYS, # panel keys to compare
    seed: int = 0,                            # seeds the real-vs-real split
    progress=None,
    cancel=None,
) -> dict[str, Any]:
    """Per-parameter real-vs-generated distances with the real-vs-real baseline; raw values included."""
    from MorphometryLib import batch_bone_morphometry

    rows = {}
    for name, folder in (("real", real), ("generated", fake)):
        rows[name] = batch_bone_morphometry(folder, threshold=threshold, progress=progress, cancel=cancel)
    values: dict[str, dict[str, list]] = {"real": {}, "generated": {}}
    failed = {name: [r["case"] for r in rs if r.get("error")] for name, rs in rows.items()}
    for name, rs in rows.items():
        ok = [r for r in rs if not r.get("error")]
        for key in keys:
            values[name][key] = [float(r[key]) for r in ok if key in r and math.isfinite(float(r[key]))]
    if len(values["real"]["BV/TV"]) < 4 or len(values["generated"]["BV/TV"]) < 2:
        raise VolGANError(f"morphometric fidelity needs ≥ 4 measurable real and ≥ 2 generated patches "
                          f"(got {len(values['real']['BV/TV'])} and {len(values['generated']['BV/TV'])}; "
                          f"unmeasurable: {failed})")
    rng = np.random.default_rng(seed)
    table = []
    for key in keys:
        r = np.asarray(values["real"][key])
        g = np.asarray(values["generated"][key])
        if len(r) < 4 or len(g) < 2:
            continue
        order = rng.permutation(len(r))
        half_a, half_b = r[order[: len(r) // 2]], r[order[len(r) // 2:]]
        row = {"parameter": key, "real_mean": float(r.mean()), "real_sd": float(r.std(ddof=1)),
               "generated_mean": float(g.mean()), "generated_sd": float(g.std(ddof=1)) if len(g) > 1 else 0.0}
        row.update({f"{k}": v for k, v in _distances(r, g).items()})
        row.update({f"{k}_real_vs_real": v for k, v in _distances(half_a, half_b).items()})
        table.append(row)
    return {"kind": "bone", "threshold": threshold, "n_real": len(values["real"]["BV/TV"]),
            "n_generated": len(values["generated"]["BV/TV"]), "unmeasurable": failed, "parameters": table,
            "values": values}


def _violins(ax, data: list) -> None:
    """Violins at x = 1, 2, …; a group with fewer than two distinct values (no density) is drawn as dots."""
    for x, vals in enumerate(data, start=1):
        vals = np.asarray(vals, float)
        if vals.size and np.unique(vals).size >= 2:
            ax.violinplot([vals], positions=[x], showmedians=True)
        elif vals.size:
            ax.plot(np.full(vals.size, x), vals, "o", ms=3, color="C0")
    ax.set_xlim(0.4, len(data) + 0.6)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def write_fidelity_report(result: dict[str, Any], out: str | os.PathLike, overwrite: bool = False) -> Path:
    """``fidelity.json``, ``fidelity.md`` and ``violins.png`` (CoW: also ``presence.png``) in an atomically
    written folder; ``result`` from :func:`bone_fidelity` or :func:`cow_fidelity`."""
    from VolGANCore.atomic import atomic_directory, atomic_write_json, atomic_write_text

    plt = _pyplot()
    if result.get("kind", "bone") == "cow":
        lines, figures = _cow_markdown(result), _cow_figures(plt, result)
    else:
        lines, figures = _bone_markdown(result), {"violins.png": _violin_figure(plt, result, result["parameters"])}
    try:
        with atomic_directory(out, overwrite=overwrite) as tmp:
            for name, fig in figures.items():
                fig.savefig(tmp / name, dpi=90)
            atomic_write_json(tmp / "fidelity.json", result)
            atomic_write_text(tmp / "fidelity.md", "\n".join(lines))
    finally:
        for fig in figures.values():
            plt.close(fig)
    return Path(out)


def _bone_markdown(result: dict[str, Any]) -> list[str]:
    lines = [f"# Morphometric fidelity (bone, threshold {result['threshold']})", "",
             f"{result['n_real']} real and {result['n_generated']} generated patches. W1/SD = Wasserstein distance "
             "divided by the real standard deviation; KS = two-sample Kolmogorov–Smirnov statistic. "
             "Real vs real = the same distance between two disjoint halves of the real set.", "",
             "| parameter | real mean ± SD | generated mean ± SD | W1/SD | W1/SD real vs real | KS | KS real vs real |",
             "|---|---|---|---|---|---|---|"]
    for row in result["parameters"]:
        lines.append(f"| {row['parameter']} | {row['real_mean']:.4g} ± {row['real_sd']:.2g} | "
                     f"{row['generated_mean']:.4g} ± {row['generated_sd']:.2g} | {row['wasserstein_over_sd']:.3f} | "
                     f"{row['wasserstein_over_sd_real_vs_real']:.3f} | {row['ks']:.3f} | {row['ks_real_vs_real']:.3f} |")
    lines += ["", "![violins](violins.png)", ""]
    return lines


def _violin_figure(plt, result: dict[str, Any], rows: list, ncols: int | None = None):
    params = [row["parameter"] for row in rows]
    ncols = ncols or max(1, len(params))
    nrows = max(1, -(-len(params) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.ravel(), params):
        _violins(ax, [result["values"]["real"][key], result["values"]["generated"][key]])
        ax.set_xticks([1, 2])
        ax.set_xticklabels(["real", "gen."], fontsize=7)
        ax.set_title(key, fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(params):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


# -- Circle of Willis ----------------------------------------------------------------------------------------
_COW_KIND_MAX_DISTINCT = 20


def detect_fidelity_kind(folder: str | os.PathLike) -> str:
    """``"cow"`` when the first volume of ``folder`` looks like a label map, else ``"bone"``.

    A label map here: whole-number voxels, at least 3 and at most 20 distinct values (background and ≥ 2
    classes; a binary mask is not a CoW label map), or a NRRD/MHA header naming a label scheme. Grey-value
    patches (bone) have hundreds of distinct values.
    """
    from VolGANCore.dataset import list_volumes
    from VolGANCore.io import read_volume

    first = list_volumes(folder)[0]
    vol = read_volume(first, dtype=None)
    if vol.label_scheme:
        return "cow"
    arr = np.asarray(vol.array)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
        return "bone"
    distinct = np.unique(arr).size
    return "cow" if 3 <= distinct <= _COW_KIND_MAX_DISTINCT else "bone"


def _read_cow_labels(path: Path):
    from VolGANCore import TOPCOW13
    from VolGANCore.io import read_label_volume

    lab = read_label_volume(path)
    if lab.label_scheme and lab.label_scheme != "topcow13":
        raise VolGANError(f"{path}: label map is in the '{lab.label_scheme}' scheme; CoW fidelity needs TopCoW 2023 "
                          "labels (13 classes with sides: per-side arteries and variant vectors), e.g. a teacher "
                          "segmentation in the topcow13 scheme")
    unknown = sorted(set(np.unique(lab.array).tolist()) - set(TOPCOW13.ids_with_background))
    if unknown:
        raise VolGANError(f"{path}: label id(s) {unknown} are not TopCoW 2023 artery ids (allowed: 0 background and "
                          f"{list(TOPCOW13.ids)}); pass TopCoW label maps (convert other schemes first), or "
                          "--kind bone for grey-value bone patches")
    lab.label_scheme = "topcow13"
    return lab


def _measure_cow_folder(folder, what: str, prog) -> list[dict[str, Any]]:
    from MorphometryLib.vessels import cow_variants, vessel_morphometry

    from VolGANCore.dataset import case_id, list_volumes

    cases = []
    for path in list_volumes(folder):
        lab = _read_cow_labels(path)
        rows = vessel_morphometry(lab)
        var = cow_variants(lab)
        cases.append({"case": case_id(path), "file": path.name, "rows": rows,
                      "anterior": "".join(str(v) for v in var["anterior"]),
                      "posterior": "".join(str(v) for v in var["posterior"])})
        prog.advance(1, f"{what} {case_id(path)}")
    return cases


def cow_fidelity(
    real: str | os.PathLike,          # folder of real TopCoW label maps
    fake: str | os.PathLike,          # folder of label maps of the generated volumes
    seed: int = 0,                    # seeds the real-vs-real split
    alpha: float = 0.05,              # Fisher's exact test level for flagging an artery's presence
    progress=None,
    cancel=None,
    n_boot: int = 200,                # resampling replicates of the variant distances' intervals (0: none)
) -> dict[str, Any]:
    """Per-artery presence, radius and length distributions, and variant-vector frequencies, real vs generated.

    Returns
    -------
    dict with ``kind`` ("cow"), ``n_real``, ``n_generated``, ``presence`` (one row per TopCoW class),
    ``parameters`` (one row per artery and measure: means, SDs, Wasserstein, W1/SD, KS and their real-vs-real
    values), ``variants`` (``anterior`` / ``posterior`` / ``joint``: frequency tables, total-variation distance,
    its interval and its real-vs-real value; :mod:`.variants`), ``variant_segments`` (presence rate of each of
    the eight variant segments, real vs generated), ``flags`` (readable lines), ``values`` (raw values per set
    and parameter) and ``cases`` (per-subject presence ids and variant vectors).
    """
    from scipy.stats import fisher_exact

    from VolGANCore import TOPCOW13
    from VolGANCore.dataset import list_volumes
    from VolGANCore.progress import Progress

    from .bootstrap import split_halves

    if not 0 < alpha < 1:
        raise VolGANError(f"--alpha: expected 0 < alpha < 1, got {alpha}")
    n_files = {name: len(list_volumes(folder)) for name, folder in (("real", real), ("generated", fake))}
    if n_files["real"] < 4 or n_files["generated"] < 2:
        raise VolGANError(f"CoW morphometric fidelity needs ≥ 4 real and ≥ 2 generated label maps (got "
                          f"{n_files['real']} in {real} and {n_files['generated']} in {fake}; the real-vs-real "
                          "baseline compares two halves of ≥ 2)")
    with Progress(2 * sum(n_files.values()), "CoW morphometry", progress, cancel) as prog:
        for folder in (real, fake):  # every file checked before the slow part: a bad id fails at once
            for path in list_volumes(folder):
                _read_cow_labels(path)
                prog.advance(1, f"checked {path.name}")
        sets = {"real": _measure_cow_folder(real, "real", prog), "generated": _measure_cow_folder(fake, "generated", prog)}
    n_r, n_g = len(sets["real"]), len(sets["generated"])
    half_a, half_b = split_halves(n_r, seed)
    halves = {"a": [sets["real"][i] for i in half_a], "b": [sets["real"][i] for i in half_b]}

    def present(cases, k):  # k: index of the class in TOPCOW13
        return [c["rows"][k]["present"] == 1 for c in cases]

    presence, flags = [], []
    for k, lid in enumerate(TOPCOW13.ids):
        name = TOPCOW13.name_of(lid)
        pr, pg = present(sets["real"], k), present(sets["generated"], k)
        ar, ag = sum(pr), sum(pg)
        _, p = fisher_exact([[ar, n_r - ar], [ag, n_g - ag]])
        fa, fb = (float(np.mean(present(halves[h], k))) for h in ("a", "b"))
        if ar > 0 and ag == 0:
            flag = "never generated"
        elif ar == 0 and ag > 0:
            flag = "never in the real set"
        elif p < alpha:
            flag = f"presence differs (Fisher p = {p:.3g} < {alpha:g})"
        else:
            flag = ""
        presence.append({"label": int(lid), "artery": name, "real_present": int(ar), "real_frequency": ar / n_r,
                         "generated_present": int(ag), "generated_frequency": ag / n_g,
                         "difference": ag / n_g - ar / n_r, "fisher_p": float(p),
                         "difference_real_vs_real": fb - fa, "flagged": bool(flag), "flag": flag})
        if flag:
            flags.append(f"{name}: {flag} (present in {ar}/{n_r} real, {ag}/{n_g} generated)")

    values: dict[str, dict[str, list]] = {"real": {}, "generated": {}}
    table = []
    for k, lid in enumerate(TOPCOW13.ids):
        name = TOPCOW13.name_of(lid)
        for measure in COW_FIDELITY_MEASURES:
            key = f"{name} {measure}"

            def vals(cases):
                return [float(c["rows"][k][measure]) for c in cases
                        if c["rows"][k]["present"] and math.isfinite(float(c["rows"][k][measure]))]

            r, g = np.asarray(vals(sets["real"])), np.asarray(vals(sets["generated"]))
            values["real"][key], values["generated"][key] = r.tolist(), g.tolist()
            row: dict[str, Any] = {"parameter": key, "artery": name, "label": int(lid), "measure": measure,
                                   "n_real": int(r.size), "n_generated": int(g.size),
                                   "real_mean": float(r.mean()) if r.size else None,
                                   "real_sd": float(r.std(ddof=1)) if r.size > 1 else None,
                                   "generated_mean": float(g.mean()) if g.size else None,
                                   "generated_sd": float(g.std(ddof=1)) if g.size > 1 else None}
            dist = _distances(r, g) if r.size >= 2 and g.size >= 2 else None
            ha, hb = np.asarray(vals(halves["a"])), np.asarray(vals(halves["b"]))
            base = _distances(ha, hb) if ha.size >= 2 and hb.size >= 2 else None
            for d in ("wasserstein", "wasserstein_over_sd", "ks", "ks_p"):
                row[d] = None if dist is None else _finite_or_none(dist[d])
                row[f"{d}_real_vs_real"] = None if base is None else _finite_or_none(base[d])
            # both W1/SD figures divide by the SD of the whole real set (a half's SD is too noisy a yardstick)
            sd = row["real_sd"]
            if base is not None:
                row["wasserstein_over_sd_real_vs_real"] = base["wasserstein"] / sd if sd else None
            table.append(row)

    def bits(c):
        return [int(b) for b in c["anterior"] + c["posterior"]]

    vf = variant_fidelity([bits(c) for c in sets["real"]], [bits(c) for c in sets["generated"]], n_boot=n_boot,
                          seed=seed)
    variants = {}
    for side, part in PARTS.items():
        variants[side] = {"names": list(SEGMENTS[part]), "table": vf["frequencies"][side],
                          "tv_distance": vf["tvd"][side], "tv_distance_ci": vf["ci"].get(side),
                          "tv_distance_real_vs_real": vf["real_vs_real"][side]}

    def case_rows(cases):
        return [{"case": c["case"], "file": c["file"], "present": [r["label"] for r in c["rows"] if r["present"]],
                 "anterior": c["anterior"], "posterior": c["posterior"]} for c in cases]

    return {"kind": "cow", "label_scheme": "topcow13", "n_real": n_r, "n_generated": n_g, "seed": seed, "alpha": alpha,
            "real_folder": str(real), "generated_folder": str(fake),
            "real_vs_real_split": {"half_a": [sets["real"][i]["case"] for i in half_a],
                                   "half_b": [sets["real"][i]["case"] for i in half_b]},
            "presence": presence, "parameters": table, "variants": variants, "variant_segments": vf["presence"],
            "flags": flags, "values": values,
            "cases": {"real": case_rows(sets["real"]), "generated": case_rows(sets["generated"])}}


def _finite_or_none(v) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _f(v, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _cow_markdown(result: dict[str, Any]) -> list[str]:
    n_r, n_g = result["n_real"], result["n_generated"]
    lines = ["# Morphometric fidelity (Circle of Willis, TopCoW labels)", "",
             f"{n_r} real and {n_g} generated label maps. Real vs real = the same figure between two disjoint, seeded "
             f"halves of the real subjects. Flagged (α = {result['alpha']:g}): an artery one set never has, or "
             "whose presence differs by Fisher's exact test.", "", "## Presence per artery", "",
             "| artery | real | generated | difference | Fisher p | difference real vs real | flag |",
             "|---|---|---|---|---|---|---|"]
    for row in result["presence"]:
        lines.append(f"| {row['artery']} | {row['real_frequency']:.2f} ({row['real_present']}/{n_r}) | "
                     f"{row['generated_frequency']:.2f} ({row['generated_present']}/{n_g}) | {row['difference']:+.2f} | "
                     f"{row['fisher_p']:.3g} | {row['difference_real_vs_real']:+.2f} | "
                     f"{'**' + row['flag'] + '**' if row['flagged'] else ''} |")
    lines += ["", "![presence](presence.png)", "", "## Radius and centreline length per artery", "",
              "Over the subjects that have the artery. W1 = Wasserstein distance (mm), W1/SD = divided by the real "
              "SD, KS = two-sample Kolmogorov–Smirnov statistic; – = fewer than 2 values in a set.", "",
              "| artery | measure | n real / gen. | real mean ± SD | generated mean ± SD | W1 | W1 real vs real | "
              "W1/SD | W1/SD real vs real | KS | KS real vs real |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["parameters"]:
        lines.append(f"| {row['artery']} | {row['measure']} | {row['n_real']} / {row['n_generated']} | "
                     f"{_f(row['real_mean'], '.3g')} ± {_f(row['real_sd'], '.2g')} | "
                     f"{_f(row['generated_mean'], '.3g')} ± {_f(row['generated_sd'], '.2g')} | "
                     f"{_f(row['wasserstein'])} | {_f(row['wasserstein_real_vs_real'])} | "
                     f"{_f(row['wasserstein_over_sd'])} | {_f(row['wasserstein_over_sd_real_vs_real'])} | "
                     f"{_f(row['ks'])} | {_f(row['ks_real_vs_real'])} |")
    lines += ["", "![violins](violins.png)", "", "## Variant vectors (TopCoW)", ""]
    for side, v in result["variants"].items():
        ci = v.get("tv_distance_ci")
        ci_text = f", 95 % interval {ci['low']:.3f}–{ci['high']:.3f}" if ci else ""
        lines += [f"**{side.capitalize()}** [{', '.join(v['names'])}] (1 = present): total-variation distance "
                  f"{v['tv_distance']:.3f}{ci_text} (real vs real {v['tv_distance_real_vs_real']:.3f}).", "",
                  "| vector | real | generated |", "|---|---|---|"]
        for t in v["table"]:
            lines.append(f"| `{t['vector']}` | {t['real_frequency']:.2f} ({t['real_count']}) | "
                         f"{t['generated_frequency']:.2f} ({t['generated_count']}) |")
        lines.append("")
    lines += ["## Flags", ""] + ([f"- {f}" for f in result["flags"]] or ["None."]) + [""]
    return lines


def _cow_figures(plt, result: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in result["parameters"] if r["n_real"] and r["n_generated"]]
    by_measure = [[r for r in rows if r["measure"] == m] for m in COW_FIDELITY_MEASURES]
    ncols = max([len(b) for b in by_measure] + [1])
    ordered = []
    for b in by_measure:  # one row of panels per measure
        ordered += b + [{"parameter": None}] * (ncols - len(b))
    fig_v, axes = plt.subplots(len(by_measure), ncols, figsize=(1.6 * ncols, 3.0 * len(by_measure)), squeeze=False)
    for ax, row in zip(axes.ravel(), ordered):
        if row["parameter"] is None:
            ax.axis("off")
            continue
        key = row["parameter"]
        _violins(ax, [result["values"]["real"][key], result["values"]["generated"][key]])
        ax.set_xticks([1, 2])
        ax.set_xticklabels(["real", "gen."], fontsize=7)
        ax.set_title(f"{row['artery']}\n{row['measure']}", fontsize=7)
        ax.tick_params(labelsize=6)
    fig_v.tight_layout()
    pres = result["presence"]
    x = np.arange(len(pres))
    fig_p, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(pres)), 3.4))
    ax.bar(x - 0.2, [r["real_frequency"] for r in pres], 0.4, label=f"real (n = {result['n_real']})")
    ax.bar(x + 0.2, [r["generated_frequency"] for r in pres], 0.4, label=f"generated (n = {result['n_generated']})")
    ax.set_xticks(x)
    ax.set_xticklabels([r["artery"] + (" *" if r["flagged"] else "") for r in pres], rotation=45, ha="right", fontsize=7)
    for tick, r in zip(ax.get_xticklabels(), pres):
        if r["flagged"]:
            tick.set_color("red")
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("presence frequency")
    ax.set_title("Artery presence (* flagged)", fontsize=8)
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    fig_p.tight_layout()
    return {"violins.png": fig_v, "presence.png": fig_p}
