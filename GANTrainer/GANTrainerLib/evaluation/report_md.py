"""Markdown rendering of an evaluation report (report.md)."""

from __future__ import annotations

__all__ = ["render_markdown"]


def _fmt(v) -> str:
    if v is None:
        return "–"
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.3e}"
    return f"{v:.4f}"


def render_markdown(report: dict) -> str:
    """One page: inputs, extractors, the metric table with CI and real-vs-real baseline, memorisation, notes."""
    inp = report["inputs"]
    lines = [
        f"# Evaluation report ({report['protocol']} protocol)",
        "",
        f"- real: `{inp['real']['folder']}` — {inp['real']['n']} volumes of shape (D,H,W) {tuple(inp['real']['shape_dhw'])}",
        f"- generated: `{inp['generated']['folder']}` — {inp['generated']['n']} volumes",
        f"- seed {report['seed']}, bootstrap replicates {report['settings']['n_bootstrap']}, "
        f"volgan {report['volgan_version']}, {report['created_utc']}",
        *_background_line(report["settings"].get("medicalnet_background")),
        "",
    ]
    if report.get("warnings"):  # reports written before warnings existed have none
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in report["warnings"]] + [""]
    lines += ["## Feature extractors", ""]
    for role, ext in report["extractors"].items():
        tag = " — **fallback (no weights given): not FID/MD**" if ext["fallback"] else ""
        src = f", weights `{ext['weights']['path']}`" if ext.get("weights") else ""
        lines.append(f"- {role}: `{ext['name']}` ({ext['dim']}-d{src}){tag}")
    lines += ["", "## Distribution metrics", "",
              "| Metric | Real vs generated | 95 % CI | Real vs real (halves) | Better | Extractor |",
              "|---|---|---|---|---|---|"]
    for m in report["metrics"].values():
        ci = "–" if not m["ci95"] else f"[{_fmt(m['ci95'][0])}, {_fmt(m['ci95'][1])}]"
        lines.append(f"| {m['label']} | {_fmt(m['real_vs_generated'])} | {ci} | {_fmt(m['real_vs_real'])} | "
                     f"{m['better']} | `{m['extractor']}` |")
    lines += _diversity_lines(report.get("diversity"))
    lines += _border_lines(report.get("border"))
    mem = report["memorisation"]
    thr = mem["thresholds"]
    lines += ["", "## Memorisation", "",
              f"Nearest training volume of each generated volume by NCC and by feature distance (`{mem['extractor']}`), "
              f"against the real-vs-real nearest-neighbour distribution. Suspect: NCC > {thr['ncc_above']:.4f} and "
              f"feature distance < {_fmt(thr['feature_distance_below'])} (the {thr['quantile']:g} tails of the "
              "real-vs-real distribution). Met alone: NCC by "
              f"{mem['criteria_counts']['ncc']}, features by {mem['criteria_counts']['feature']} generated volume(s).", ""]
    if mem["suspects"]:
        lines += [f"**{len(mem['suspects'])} suspected copies:**", "",
                  "| Generated | Nearest (NCC) | NCC | Nearest (features) | Distance | Criteria |", "|---|---|---|---|---|---|"]
        for s in mem["suspects"]:
            lines.append(f"| {s['fake_case']} | {s['real_case_ncc']} | {s['ncc']:.4f} | {s['real_case_feature']} | "
                         f"{_fmt(s['feature_distance'])} | {', '.join(s['criteria'])} |")
    else:
        lines.append("No suspected copies.")
    plots = report.get("plots", {})
    lines += ["", "## Figures", ""]
    for name in ("prd_curve", "nn_histogram", "nn_montage", "border_profile"):
        if name in plots:
            lines.append(f"![{name}]({plots[name]})")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _background_line(background) -> list:
    """The MedicalNet background rule of an ``aydin2024`` report (none for ``default`` and older reports)."""
    if not background:
        return []
    what = "N(0, 1) noise seeded per volume (the paper's rule)" if background == "noise" else \
        "0 (not the paper's rule, which fills N(0, 1) noise)"
    return [f"- MedicalNet background (voxels at each volume's minimum): {what}"]


def _ci(ci) -> str:
    return "–" if not ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _border_lines(border) -> list:
    """The border-artefact section (absent from reports written before it existed)."""
    if not border:
        return []
    f = border["frame_index"]
    return ["", "## Border artefacts", "",
            f"Frame index, generated vs real: **{_fmt(f['real_vs_generated'])}** (real vs real halves "
            f"{_fmt(f['real_vs_real'])}). Per shell of voxels at the same distance from the nearest face, the mean "
            "and SD relative to the whole volume's, generated minus real, as a voxel-weighted RMS in real SDs: "
            "near the halves' value when the generated borders look like the real ones; frames or dark rims "
            "along the faces raise it (figure `border_profile`)."]


def _diversity_lines(div) -> list:
    """The MS-SSIM diversity section (empty when it was skipped with ``--msssim-pairs 0``)."""
    if not div:
        return []
    d = div["msssim"]
    st = d["settings"]
    a, b = d["real_halves"]
    return ["", "## Diversity (3-D MS-SSIM within each set)", "",
            f"Mean MS-SSIM over distinct pairs of volumes of one set: **lower = more diverse**; a generator that "
            f"collapses onto few modes has a higher value than the real set. {st['n_scales']} scale(s), "
            f"{st['kernel_size']}-voxel Gaussian window (σ {st['kernel_sigma']}), weights "
            f"{', '.join(f'{w:.3f}' for w in st['weights'])}; each volume windowed to its 0.5–99.5 % percentiles.", "",
            "| Set | Mean MS-SSIM | 95 % CI | SD over pairs | Pairs |", "|---|---|---|---|---|",
            f"| generated | {_fmt(d['generated']['mean'])} | {_ci(d['generated']['ci95'])} | "
            f"{_fmt(d['generated']['sd'])} | {d['generated']['n_pairs']} |",
            f"| real (baseline) | {_fmt(d['real']['mean'])} | {_ci(d['real']['ci95'])} | {_fmt(d['real']['sd'])} | "
            f"{d['real']['n_pairs']} |",
            f"| real halves A / B | {_fmt(a)} / {_fmt(b)} | – | – | – |", "",
            f"Generated set: **{d['verdict']}** ({div['rule']})."]
