"""Morphometric fidelity of generated bone: do the generated patches have the real micro-structure?

For each parameter of the exact bone panel (:func:`MorphometryLib.batch_bone_morphometry`) the real and the
generated distributions are compared by the 1-Wasserstein distance (also divided by the real standard
deviation, so parameters of different units can be read side by side) and the two-sample Kolmogorov–Smirnov
statistic — the per-parameter reliability test of the Bone-GAN follow-up of Iarussi et al. Every distance is
reported next to the same distance between two disjoint, seeded halves of the real set (the real-vs-real
baseline), and a violin plot shows both distributions per parameter.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from VolGANCore import VolGANError

__all__ = ["BONE_FIDELITY_KEYS", "bone_fidelity", "write_fidelity_report"]

BONE_FIDELITY_KEYS = ("BV/TV", "BS/TV [1/mm]", "Tb.Th [mm]", "Tb.Sp [mm]", "Tb.N [1/mm]", "Conn.D [1/mm^3]", "SMI",
                      "DA", "BMD [image units]", "TMD [image units]")


def _distances(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from scipy.stats import ks_2samp, wasserstein_distance

    w1 = float(wasserstein_distance(a, b))
    sd = float(np.std(a, ddof=1)) if len(a) > 1 else float("nan")
    return {"wasserstein": w1, "wasserstein_over_sd": w1 / sd if sd > 0 else float("nan"),
            "ks": float(ks_2samp(a, b).statistic), "ks_p": float(ks_2samp(a, b).pvalue)}


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
    return {"threshold": threshold, "n_real": len(values["real"]["BV/TV"]),
            "n_generated": len(values["generated"]["BV/TV"]), "unmeasurable": failed, "parameters": table,
            "values": values}


def write_fidelity_report(result: dict[str, Any], out: str | os.PathLike, overwrite: bool = False) -> Path:
    """``fidelity.json``, ``fidelity.md`` and ``violins.png`` in an atomically written folder."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from VolGANCore.atomic import atomic_directory, atomic_write_json, atomic_write_text

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
    params = [row["parameter"] for row in result["parameters"]]
    fig, axes = plt.subplots(1, len(params), figsize=(1.9 * len(params), 3.2), squeeze=False)
    for ax, key in zip(axes[0], params):
        data = [result["values"]["real"][key], result["values"]["generated"][key]]
        ax.violinplot(data, showmedians=True)
        ax.set_xticks([1, 2])
        ax.set_xticklabels(["real", "gen."], fontsize=7)
        ax.set_title(key, fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        fig.savefig(tmp / "violins.png", dpi=90)
        atomic_write_json(tmp / "fidelity.json", result)
        atomic_write_text(tmp / "fidelity.md", "\n".join(lines))
    plt.close(fig)
    return Path(out)
