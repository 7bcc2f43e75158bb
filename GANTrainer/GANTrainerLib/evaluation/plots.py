"""PNG figures of an evaluation report: PRD curve, nearest-neighbour histograms, nearest-neighbour montage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_plots", "mid_slice_image"]

MAX_SUSPECT_PNGS = 50


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def mid_slice_image(volume: np.ndarray) -> np.ndarray:
    """Middle slice along D, windowed to the volume's 0.5–99.5 % percentiles, in [0, 1]."""
    lo, hi = np.percentile(volume, [0.5, 99.5])
    s = volume[volume.shape[0] // 2].astype(np.float64)
    return np.clip((s - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(s)


def _pair_figure(plt, fake, real, title_fake, title_real, path: Path):
    fig, ax = plt.subplots(1, 2, figsize=(6, 3.2))
    for a, img, t in ((ax[0], mid_slice_image(fake), title_fake), (ax[1], mid_slice_image(real), title_real)):
        a.imshow(img, cmap="gray", vmin=0, vmax=1)
        a.set_title(t, fontsize=8)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(folder: Path, report: dict, real: np.ndarray, fake: np.ndarray) -> dict:
    """Write the figures into ``folder`` and return their relative paths by name."""
    plt = _pyplot()
    folder = Path(folder)
    out = {}

    curve = report["prd_curve"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for key, style, label in (("real_vs_generated", "-", "real vs generated"), ("real_vs_real", "--", "real vs real (halves)")):
        c = curve[key]
        ax.plot(np.asarray(c["recall"]), np.asarray(c["precision"]), style, label=label)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall β")
    ax.set_ylabel("precision α")
    ax.set_title(f"PRD ({curve['extractor']})", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "prd_curve.png", dpi=100)
    plt.close(fig)
    out["prd_curve"] = "prd_curve.png"

    mem = report["memorisation"]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    for a, key, thr, xlabel in ((ax[0], "ncc", mem["thresholds"]["ncc_above"], "NCC to nearest training volume"),
                                (ax[1], "feature_distance", mem["thresholds"]["feature_distance_below"],
                                 f"feature distance to nearest ({mem['extractor']})")):
        g = np.asarray(mem["fake_nn"][key])
        r = np.asarray(mem["real_nn"][key])
        both = np.concatenate([g, r])
        bins = np.linspace(both.min(), both.max() + 1e-12, 25)
        a.hist(r, bins=bins, alpha=0.6, density=True, label="real → other real")
        a.hist(g, bins=bins, alpha=0.6, density=True, label="generated → real")
        a.axvline(thr, color="k", ls=":", label="suspect threshold")
        a.set_xlabel(xlabel, fontsize=8)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "nn_histogram.png", dpi=100)
    plt.close(fig)
    out["nn_histogram"] = "nn_histogram.png"

    order = np.argsort(-np.asarray(mem["fake_nn"]["ncc"]), kind="stable")[:8]
    suspects = {s["index"] for s in mem["suspects"]}
    fig, axes = plt.subplots(len(order), 2, figsize=(5, 2.4 * len(order)), squeeze=False)
    for row, j in enumerate(order):
        i = mem["fake_nn"]["ncc_index"][j]
        flag = "  SUSPECT" if j in suspects else ""
        axes[row, 0].imshow(mid_slice_image(fake[j]), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"generated {mem['fake_cases'][j]}{flag}", fontsize=7)
        axes[row, 1].imshow(mid_slice_image(real[i]), cmap="gray", vmin=0, vmax=1)
        axes[row, 1].set_title(f"nearest real {mem['real_cases'][i]} (NCC {mem['fake_nn']['ncc'][j]:.3f})", fontsize=7)
        for a in axes[row]:
            a.axis("off")
    fig.tight_layout()
    fig.savefig(folder / "nn_montage.png", dpi=90)
    plt.close(fig)
    out["nn_montage"] = "nn_montage.png"

    border = report.get("border")
    if border:
        prof = border["profile"]
        d = np.asarray(prof["distance_voxels"])
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
        for a, stat in ((ax[0], "mean"), (ax[1], "sd")):
            for key, style in (("real", "--"), ("generated", "-")):
                a.plot(d, np.asarray(prof[key][stat]), style, marker="o", ms=3, label=key)
            a.set_xlabel("distance to the nearest face [voxels]", fontsize=8)
            a.set_ylabel(f"intensity {'mean' if stat == 'mean' else 'SD'} in the shell", fontsize=8)
            a.legend(fontsize=7)
        f = border["frame_index"]
        rvg, rvr = f["real_vs_generated"], f["real_vs_real"]
        fig.suptitle("border profile: frame index " + ("–" if rvg is None else f"{rvg:.3f}")
                     + " (real halves " + ("–" if rvr is None else f"{rvr:.3f}") + ")", fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "border_profile.png", dpi=100)
        plt.close(fig)
        out["border_profile"] = "border_profile.png"

    if mem["suspects"]:
        (folder / "suspects").mkdir(exist_ok=True)
        out["suspects"] = []
        for s in mem["suspects"][:MAX_SUSPECT_PNGS]:
            name = f"suspects/{s['fake_case']}_vs_{s['real_case_ncc']}.png"
            _pair_figure(plt, fake[s["index"]], real[s["ncc_index"]], f"generated {s['fake_case']}",
                         f"training {s['real_case_ncc']} (NCC {s['ncc']:.3f})", folder / name)
            out["suspects"].append(name)
    return out
