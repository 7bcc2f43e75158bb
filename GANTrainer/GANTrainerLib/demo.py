"""`make demo`: run what the extension can do end to end on built-in data, writing to ``demo_output/``.

Each step is a function ``step(out: Path, log: list[str]) -> dict`` that writes its files under ``out`` and
returns figures for ``demo.json``; ``summary.md`` collects what every step reported. The output folder is
built atomically: an interrupted demo leaves the previous ``demo_output/`` untouched.

    python -m GANTrainerLib.demo --out demo_output
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from VolGANCore.atomic import atomic_directory, atomic_write_json, atomic_write_text

Step = Callable[[Path, list], dict]


def step_environment(out: Path, log: list[str]) -> dict:
    from VolGANCore.env import environment_report, format_environment

    rep = environment_report()
    atomic_write_json(out / "environment.json", rep)
    log.extend(["```", *format_environment(rep), "```"])
    return {"devices": rep["compute"].get("devices", [])}


DEMO_COW = 4        # CoW phantoms (32×128×128)
DEMO_BONE = 16      # bone phantom patches (32³ at 164 µm)


def step_phantoms(out: Path, log: list[str]) -> dict:
    from VolumetricGANLib.phantoms import write_bone_dataset, write_cow_dataset

    from VolGANCore.progress import TqdmProgress

    bar = TqdmProgress()
    cow = write_cow_dataset(out / "phantoms" / "cow", n=DEMO_COW, seed=0, progress=bar)
    bone = write_bone_dataset(out / "phantoms" / "bone", n=DEMO_BONE, seed=0, bvtv=0.18, bvtv_sd=0.05, progress=bar)
    fig = overview_figure(cow, bone, out / "phantoms" / "overview.png")
    manifest = json.loads((cow / "manifest.json").read_text())
    variants = [_variant_text(c["variant"]) for c in manifest["cases"]]
    log += [f"- {DEMO_COW} CoW TOF-MRA phantoms (32×128×128, TopCoW labels) in `phantoms/cow/`; variants: "
            + "; ".join(variants),
            f"- {DEMO_BONE} trabecular-bone patches (32³ at 164 µm, BV/TV 0.18 ± 0.05) in `phantoms/bone/`",
            f"- figure: `phantoms/{fig.name}`"]
    return {"cow": DEMO_COW, "bone": DEMO_BONE}


def _variant_text(v: dict) -> str:
    """One line per subject: what departs from a complete circle (from the phantom manifest)."""
    if v.get("complete_circle"):
        return "complete circle"
    notes = [f"{side}-Pcom {v['pcom'][side]}" for side in ("R", "L") if v["pcom"][side] != "present"]
    notes += [f"{side}-P1 {v['p1'][side]}" for side in ("R", "L") if v["p1"][side] != "normal"]
    notes += [f"{side} fetal PCA" for side in ("R", "L") if v["fetal_pca"][side]]
    notes += [f"{side}-A1 {v['a1'][side]}" for side in ("R", "L") if v["a1"][side] != "normal"]
    notes += ["Acom " + v["acom"]] if v["acom"] != "present" else []
    notes += ["3rd-A2"] if v["third_a2"] else []
    return ", ".join(notes) or "incomplete circle"


def step_validate(out: Path, log: list[str]) -> dict:
    from VolGANCore.dataset import validate_dataset

    figures = {}
    for name, labels, scheme in (("cow", "labels", "topcow13"), ("bone", "masks", None)):
        root = out / "phantoms" / name
        report = validate_dataset(root / "images", labels_folder=root / labels, label_scheme=scheme)
        atomic_write_json(root / "validation.json", report.to_dict())
        log.append("    " + report.summary().replace("\n", "\n    ").replace(str(out) + "/", ""))
        figures[name] = report.ok
    return {"valid": figures}


def step_morphometry(out: Path, log: list[str]) -> dict:
    """The bone panel of every phantom patch (CSV), and the CoW variant vectors against the phantom's truth."""
    from MorphometryLib import batch_bone_morphometry, cow_variants, write_rows_csv

    from VolGANCore import read_label_volume
    from VolGANCore.dataset import list_volumes

    bone = out / "phantoms" / "bone"
    rows = batch_bone_morphometry(bone / "images", threshold="miccai2020")
    write_rows_csv(rows, out / "morphometry" / "bone_panel.csv")
    manifest = json.loads((bone / "manifest.json").read_text())
    truth = [c["measured"]["bvtv"] for c in manifest["cases"]]
    measured = [r["BV/TV"] for r in rows]
    keys = ("BV/TV", "Tb.Th [mm]", "Tb.Sp [mm]", "Tb.N [1/mm]", "Conn.D [1/mm^3]", "SMI", "DA", "BMD [image units]",
            "TMD [image units]")
    import numpy as np

    log.append("Bone panel of the phantom patches at threshold 225 (`morphometry/bone_panel.csv`), mean ± SD:")
    log.append("")
    log.append("| " + " | ".join(keys) + " |")
    log.append("|" + "---|" * len(keys))
    log.append("| " + " | ".join(f"{np.mean([r[k] for r in rows]):.3g} ± {np.std([r[k] for r in rows]):.2g}"
                                 for k in keys) + " |")
    log.append("")
    log.append(f"BV/TV of the rendered image at 225 vs the phantom's ground-truth mask: mean |difference| "
               f"{np.mean(np.abs(np.array(measured) - np.array(truth))):.3f}.")
    cow = out / "phantoms" / "cow"
    cow_manifest = {c["case"]: c for c in json.loads((cow / "manifest.json").read_text())["cases"]}
    lines = []
    for path in list_volumes(cow / "labels"):
        v = cow_variants(read_label_volume(path, scheme="topcow13"))
        case = cow_manifest[path.name.split(".")[0]]
        lines.append(f"- `{path.name}`: anterior {v['anterior']} (L-A1, Acom, 3rd-A2, R-A1), posterior "
                     f"{v['posterior']} (L-Pcom, L-P1, R-P1, R-Pcom); phantom: {_variant_text(case['variant'])}")
    log.append("")
    log.append("CoW variant vectors measured on the phantom labels (TopCoW definition) next to the phantom's truth:")
    log += lines
    return {"bone_rows": len(rows), "cow_cases": len(lines)}


def step_train_smoke(out: Path, log: list[str]) -> dict:
    """A few optimiser steps of each tiny preset: shows the whole training machinery, not a usable model."""
    from .train import settings_from_preset, train

    figures = {}
    for preset, data, steps in (("tiny-spongiosa", "bone", 6), ("tiny-cow", "cow", 3)):
        run = out / "runs" / preset
        result = train(out / "phantoms" / data / "images", run, settings_from_preset(preset), max_steps=steps,
                       log=lambda m: None)
        result["checkpoint"] = str(Path(result["checkpoint"]).relative_to(out))
        figures[preset] = {k: result[k] for k in ("state", "step", "kimg", "checkpoint")}
        log.append(f"- `volgan train --preset {preset}`: {result['step']} steps, checkpoint `{result['checkpoint']}`, "
                   f"samples in `runs/{preset}/samples/`, TensorBoard in `runs/{preset}/tensorboard/` "
                   "(a smoke run on CPU — the shipped models are trained far longer)")
    return figures


def step_generate(out: Path, log: list[str]) -> dict:
    """Sample and interpolate with the shipped models (``VolumetricGAN/Resources/Models``), or the smoke-run
    checkpoints where a model is not shipped."""
    from VolumetricGANLib.generate import generate, interpolate, write_generated

    figures = {}
    for preset in ("tiny-spongiosa", "tiny-cow"):
        ckpt, source = demo_model(out, preset)
        folder = out / "generated" / preset
        result = generate(ckpt, n=16 if preset == "tiny-spongiosa" else 4, seed=0, device="cpu")
        write_generated(result, folder / "samples")
        path = interpolate(ckpt, steps=5, seeds=[0, 1], device="cpu")
        write_generated(path, folder / "interpolation", sequence=True)
        v = result.volumes[0]
        figures[preset] = {"shape": list(v.shape), "spacing_mm": list(v.spacing)}
        log.append(f"- `volgan generate` with {source}: {len(result.volumes)} samples {v.shape} at {', '.join(f'{x:g}' for x in v.spacing)} mm "
                   f"and a 5-step interpolation (also as one 4-D sequence file) in `generated/{preset}/`")
    return figures


JOINT_MODEL = "tiny-cow-labels"


def step_joint(out: Path, log: list[str]) -> dict:
    """The shipped joint model: CoW volumes with their own artery labels, unconditional and for chosen variants,
    each sample's variant read back from its generated labels."""
    import numpy as np

    from MorphometryLib.vessels import cow_variants
    from VolumetricGANLib.checkpoint import load_generator
    from VolumetricGANLib.generate import generate, write_generated
    from VolumetricGANLib.labelmaps import variant_vector

    from .run import save_montage

    ckpt = SHIPPED_MODELS / f"{JOINT_MODEL}.vgan"
    if not ckpt.is_file():
        log.append(f"- no `{JOINT_MODEL}.vgan` in `VolumetricGAN/Resources/Models/` (none ships until one passes its "
                   "proof: docs/joint-generation.md, \"Proof on the CPU\"): skipped")
        return {"shipped": False}
    loaded = load_generator(ckpt, device="cpu")
    cond = loaded.config.get("conditioning") or {}
    commonest = [v for _, v in sorted(zip(cond.get("counts", []), cond.get("vectors", [])), key=lambda cv: -cv[0])]
    runs = [("unconditional", None, 2)] + [("variant-" + "".join(map(str, v)), v, 1) for v in commonest[:2]]
    rows, volumes, labels, figures = [], [], [], []
    for name, v, n in runs:
        res = generate(loaded, n=n, seed=0, device="cpu",
                       variant=None if v is None else {"anterior": v[:4], "posterior": v[4:]})
        write_generated(res, out / "generated" / JOINT_MODEL / name)
        for i, (vol, lab) in enumerate(zip(res.volumes, res.labels)):
            got = variant_vector(cow_variants(lab)).astype(int).tolist()
            asked = "drawn from the training frequencies" if v is None else "asked " + "".join(map(str, v))
            rows.append((f"{name}/sample_{i:04d}", f"{asked}, read back from its labels {''.join(map(str, got))}"))
            volumes.append(vol.array)
            labels.append(lab.array)
            figures.append({"sample": rows[-1][0], "requested": v, "read_back": got})
    lo, hi = (float(x) for x in loaded.config["intensity"]["physical_range"])
    folder = out / "generated" / JOINT_MODEL
    fig = save_montage(np.stack(volumes), folder / "samples.png", title=f"{JOINT_MODEL}: image and its own labels",
                       vmin=lo, vmax=hi, labels=np.stack(labels), label_scheme=loaded.config.get("label_scheme"),
                       row_titles=[r[0] for r in rows])
    names = ", ".join(cond.get("names", []))
    log += [f"- `volgan generate --checkpoint {JOINT_MODEL}.vgan` (shipped): {len(rows)} volumes with their own "
            f"TopCoW label maps (`sample_0000_labels.nii.gz`) in `generated/{JOINT_MODEL}/`; figure "
            f"`generated/{JOINT_MODEL}/{fig.name}` (last column: each ray coloured by its label). Variant vectors "
            f"({names}; segments the model's training left out of its variant-consistency term, such as the Acom of "
            f"a voxel or two at 1.2 mm, may differ from the request: docs/joint-generation.md):",
            *[f"    - `{r[0]}`: {r[1]}" for r in rows]]
    return {"shipped": True, "samples": figures}


def step_evaluate(out: Path, log: list[str]) -> dict:
    """A reduced `volgan evaluate` of the generated spongiosa patches against the phantom patches."""
    from .evaluation.report import evaluate

    here = os.getcwd()
    os.chdir(out)  # relative paths, so the report names the folders as they are after the demo, not its temp dir
    try:
        report = evaluate(Path("phantoms/bone/images"), Path("generated/tiny-spongiosa/samples"),
                          Path("evaluation/tiny-spongiosa"), n_bootstrap=0, seed=0, device="cpu")
    finally:
        os.chdir(here)
    md = (out / "evaluation" / "tiny-spongiosa" / "report.md").read_text(encoding="utf-8")
    _ckpt, source = demo_model(out, "tiny-spongiosa")
    caveat = ("a smoke-trained model, so expect large distances" if "smoke" in source else
              f"samples of the {source}; the {DEMO_BONE} real patches are a new phantom draw, not its training set, "
              "whose parameters its model card gives")
    log.append("`volgan evaluate --real phantoms/bone/images --fake generated/tiny-spongiosa/samples --bootstrap 0` "
               f"(fallback feature extractors: no Inception/MedicalNet weights are shipped; {caveat}). "
               "Report: `evaluation/tiny-spongiosa/report.md`. Its summary:")
    log.append("")
    log += ["> " + line for line in md.splitlines()[:40]]
    from .evaluation.fidelity import bone_fidelity, write_fidelity_report

    fid = bone_fidelity(out / "phantoms" / "bone" / "images", out / "generated" / "tiny-spongiosa" / "samples")
    write_fidelity_report(fid, out / "evaluation" / "tiny-spongiosa-morphometry")
    log += ["", "Morphometric fidelity (`volgan evaluate-morphometry`, `evaluation/tiny-spongiosa-morphometry/`):", ""]
    log += (out / "evaluation" / "tiny-spongiosa-morphometry" / "fidelity.md").read_text(encoding="utf-8").splitlines()[4:16]
    return {"report": "evaluation/tiny-spongiosa/report.json", "keys": sorted(report)[:12],
            "morphometric_fidelity": "evaluation/tiny-spongiosa-morphometry/fidelity.json"}


SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "VolumetricGAN" / "Resources" / "Models"


_SHIPPED_NAMES = {"tiny-spongiosa": ("spongiosa-pgan", "tiny-spongiosa"), "tiny-cow": ("cow-stylegan", "tiny-cow")}


def demo_model(out: Path, preset: str) -> tuple[Path, str]:
    """The shipped model for ``preset``'s anatomy (``VolumetricGAN/Resources/Models/<name>.vgan``, the full preset's
    name first, then the tiny one's) if the extension has one, else the demo's own smoke-run checkpoint; returns
    (path, how it was obtained)."""
    from .run import latest_checkpoint

    for name in _SHIPPED_NAMES.get(preset, (preset,)):
        shipped = SHIPPED_MODELS / f"{name}.vgan"
        if shipped.is_file():
            return shipped, f"shipped model `{shipped.name}`"
    return latest_checkpoint(out / "runs" / preset), f"the `{preset}` smoke-run checkpoint"


def step_steer(out: Path, log: list[str]) -> dict:
    """Steer two spongiosa patches to the exact morphometry of two other samples of the same model."""
    import numpy as np

    from VolGANCore.io import write_volume
    from VolumetricGANLib.generate import generate
    from VolumetricGANLib.steer import _exact, plot_trajectories, steer

    ckpt, source = demo_model(out, "tiny-spongiosa")
    names = ["BV/TV", "BMD", "TMD", "Tb.Th", "Tb.Sp"]
    ref = generate(ckpt, n=2, seed=100, device="cpu")
    arr = np.stack([v.array for v in ref.volumes])
    exact = _exact(arr, tuple(ref.volumes[0].spacing), 225.0, names)
    targets = {k: exact[:, j] for j, k in enumerate(names) if np.all(np.isfinite(exact[:, j]))}
    folder = out / "steering"
    folder.mkdir(parents=True, exist_ok=True)
    if not targets:
        log.append(f"- steering skipped: {source} generates no measurable bone at threshold 225")
        return {"skipped": True}
    res = steer(ckpt, targets=targets, n=2, seed=0, steps=60, pool=32, device="cpu")
    for i, v in enumerate(res.volumes):
        write_volume(v, folder / f"steered_{i:04d}.nii.gz")
    plot_trajectories(res, folder / "trajectories.png")
    log.append(f"`volgan steer` with {source}: two patches to the exact {', '.join(targets)} of two other samples "
               f"of the model; {res.info['success_rate']:.0%} within 5 % on every parameter after "
               f"{res.info['steps']} steps ({res.info['seconds']:.1f} s). `steering/trajectories.png`:")
    log.append("")
    log.append("| sample | " + " | ".join(f"{k} target / exact" for k in targets) + " | success |")
    log.append("|---|" + "---|" * (len(targets) + 1))
    for row in res.rows:
        log.append(f"| {row['sample']} | " + " | ".join(f"{row[f'{k} target']:.3g} / {row[f'{k} exact']:.3g}"
                                                       for k in targets) + f" | {row['success']} |")
    return {"success_rate": res.info["success_rate"], "model": source}


def step_segmentation(out: Path, log: list[str]) -> dict:
    """The downstream experiment in its small CPU configuration: real = labelled CoW phantoms, synthetic = the
    generated tiny-cow samples labelled by the teacher (a pipeline check: the networks train for seconds)."""
    from .segmentation import reduced_demo

    summary = reduced_demo(out / "segmentation", synthetic_dir=out / "generated" / "tiny-cow" / "samples")
    dice = ", ".join(f"{k} {v:.2f}" for k, v in summary["mean_dice"].items())
    log.append(f"`volgan segmentation-experiment --config small` ({summary['real']}; synthetic: the generated "
               f"tiny-cow samples, labelled by the teacher; {summary['folds']} folds): mean Dice per training regime "
               f"{dice}. Report: `segmentation/experiment/results.md`, box plot "
               "`segmentation/experiment/dice_boxplot.png`. The small configuration trains for seconds, so these "
               "numbers only show the pipeline works; run `--config full` on a GPU for the paper's experiment.")
    return {"mean_dice": summary["mean_dice"], "report": "segmentation/experiment/results.md"}


def overview_figure(cow_dir: Path, bone_dir: Path, path: Path) -> Path:
    """CoW phantom MIP with its TopCoW labels, and bone patches: the README's first figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap

    from VolGANCore import TOPCOW13, read_label_volume, read_volume
    from VolGANCore.atomic import atomic_path
    from VolGANCore.dataset import list_volumes

    img = read_volume(list_volumes(cow_dir / "images")[0])
    lab = read_label_volume(list_volumes(cow_dir / "labels")[0], scheme="topcow13")
    bones = [read_volume(p) for p in list_volumes(bone_dir / "images")[:3]]
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
    mip = img.array.max(axis=0)
    # radiological view: anterior up (row 0 = anterior in LPS), patient's right on the left (column 0)
    axes[0].imshow(mip, cmap="gray", origin="upper")
    axes[0].set_title("CoW TOF-MRA phantom (axial MIP)", fontsize=9)
    colours = np.zeros((16, 4))
    for i, _name, rgb in TOPCOW13.classes:
        colours[i] = (*rgb, 1.0)
    lab_mip = np.zeros(lab.shape[1:], np.int16)
    for i in TOPCOW13.ids:                        # later ids drawn over earlier ones: small vessels stay visible
        lab_mip[(lab.array == i).any(axis=0)] = i
    axes[1].imshow(mip, cmap="gray", origin="upper")
    axes[1].imshow(np.ma.masked_equal(lab_mip, 0), cmap=ListedColormap(colours), vmin=0, vmax=15,
                   origin="upper", interpolation="nearest", alpha=0.85)
    axes[1].set_title("TopCoW artery labels", fontsize=9)
    for k, b in enumerate(bones):
        ax = axes[2 + k]
        ax.imshow(b.array[:, b.shape[1] // 2, :], cmap="gray", vmin=-350, vmax=1100, origin="lower")
        ax.set_title(f"bone patch {k} (coronal, 164 µm)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path


STEPS: list[tuple[str, Step]] = [
    ("Environment", step_environment),
    ("Built-in phantoms", step_phantoms),
    ("Dataset validation", step_validate),
    ("Morphometry", step_morphometry),
    ("Training (smoke runs of the tiny presets)", step_train_smoke),
    ("Generation", step_generate),
    ("Joint image + label generation (CoW variants)", step_joint),
    ("Evaluation", step_evaluate),
    ("Steering", step_steer),
    ("Downstream segmentation (small CPU configuration)", step_segmentation),
]


def run(out: Path, steps: list[tuple[str, Step]] | None = None) -> dict:
    steps = steps if steps is not None else STEPS
    results: dict = {}
    lines = ["# SlicerVolumetricGAN demo", "", f"Run on {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    with atomic_directory(out, overwrite=True) as tmp:
        for title, step in steps:
            t0 = time.perf_counter()
            print(f"[demo] {title} ...", flush=True)
            log: list[str] = []
            figures = step(tmp, log)
            seconds = time.perf_counter() - t0
            results[title] = {"seconds": round(seconds, 2), **(figures or {})}
            lines += [f"## {title} ({seconds:.1f} s)", "", *log, ""]
            print(f"[demo] {title} done in {seconds:.1f} s", flush=True)
        atomic_write_text(tmp / "summary.md", "\n".join(lines) + "\n")
        atomic_write_json(tmp / "demo.json", results)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_output", help="output folder (replaced atomically)")
    args = ap.parse_args(argv)
    results = run(Path(args.out))
    print(json.dumps(results, indent=2))
    print(f"[demo] outputs in {args.out}/ (start with {args.out}/summary.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
