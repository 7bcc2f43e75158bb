"""``volgan segmentation-experiment``: the downstream segmentation utility test (registered by the evaluation CLI)."""

from __future__ import annotations

import argparse

__all__ = ["register_segmentation_experiment"]


def register_segmentation_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segmentation-experiment",
        help="downstream test: CoW segmenters trained on real / synthetic / real+synthetic, scored on held-out real",
        description="k-fold downstream segmentation experiment (Aydin et al. 2024): a teacher trained on the real "
                    "labelled volumes of each fold labels the synthetic ones; DynUNet students trained on real only, "
                    "synthetic only and real + synthetic are scored on the held-out real volumes per artery (Dice, "
                    "HD95 in mm, TopCoW detection, variant vectors) and compared with a paired Wilcoxon test. Writes "
                    "results.json, results.md, dice_boxplot.png, checkpoints, teacher labels and predictions to --out "
                    "(and, with --synthetic-model, the generated volumes to OUT/synthetic).",
    )
    p.add_argument("--real-images", required=True, metavar="DIR", help="folder of real TOF-MRA volumes")
    p.add_argument("--real-labels", required=True, metavar="DIR", help="their label maps (same file names)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", metavar="DIR", help="folder of synthetic (generated) volumes")
    src.add_argument("--synthetic-model", metavar="CKPT",
                     help="a generator (.vgan) to draw the synthetic volumes from (with --n-generate; written to "
                          "OUT/synthetic with their latents, as volgan generate writes them)")
    p.add_argument("--n-generate", type=int, metavar="N", help="with --synthetic-model: volumes to generate (seed: --seed)")
    p.add_argument("--synthetic-labels", metavar="DIR",
                   help="label maps of the synthetic volumes (e.g. joint image+label generation): no teacher is trained")
    p.add_argument("--label-scheme", choices=["topcow13", "aydin7"], default="topcow13",
                   help="classes the networks learn and are scored in (aydin7: the paper's 7 merged classes)")
    p.add_argument("--input-label-scheme", choices=["topcow13", "aydin7"],
                   help="scheme of the label files (default: the file header's, else topcow13)")
    p.add_argument("--teacher", metavar="CKPT", help="a saved teacher checkpoint (…/checkpoints/fold*_teacher.pt) "
                                                     "instead of training one per fold")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold split of the real set (default 5)")
    p.add_argument("--n-real", type=int, metavar="N", help="real training volumes per student (default: all of the fold)")
    p.add_argument("--n-synthetic", type=int, metavar="M", help="synthetic training volumes per student (default: all)")
    p.add_argument("--config", choices=["small", "full"], default="small",
                   help="small: tiny DynUNet, minutes on CPU (pipeline check); full: nnU-Net-like, for a GPU")
    p.add_argument("--epochs", type=int, metavar="E", help="override the config's epochs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--amp", choices=["auto", "off"], default="auto", help="mixed precision on CUDA (bf16 or fp16)")
    p.add_argument("--seed", type=int, default=0, help="seed of folds, subsets, initialisation and sampling")
    p.add_argument("--export-nnunet", metavar="DIR",
                   help="also write nnU-Net v2 raw datasets (one per regime, with splits_final.json) under DIR")
    p.add_argument("--nnunet-id", type=int, default=900, help="first nnU-Net dataset id (default 900)")
    p.add_argument("--out", required=True, metavar="DIR", help="results folder (new or empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results folder / nnU-Net datasets")
    p.set_defaults(func=_cmd_segmentation_experiment)


def _cmd_segmentation_experiment(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args

    from .experiment import run_segmentation_experiment
    from .report import _pm

    res = run_segmentation_experiment(
        args.real_images, args.real_labels, args.synthetic, args.out, synthetic_labels=args.synthetic_labels,
        synthetic_model=args.synthetic_model, n_generate=args.n_generate,
        label_scheme=args.label_scheme, input_label_scheme=args.input_label_scheme, teacher=args.teacher,
        folds=args.folds, n_real=args.n_real, n_synthetic=args.n_synthetic, config=args.config, epochs=args.epochs,
        device=args.device, amp=args.amp, seed=args.seed, export_nnunet=args.export_nnunet, nnunet_id=args.nnunet_id,
        overwrite=args.overwrite, progress=progress_from_args(args))
    for reg, s in res["summary"].items():  # the result, printed even with --quiet
        print(f"{reg}: mean Dice {_pm(s['mean_dice'], s['mean_dice_sd'])}, mean HD95 "
              f"{_pm(s['mean_hd95_mm'], s['mean_hd95_mm_sd'], 2)} mm over {s['n_cases']} held-out cases")
    for t in res["tests"]:
        p = "—" if t["p_value"] is None else f"{t['p_value']:.4g}"
        print(f"Wilcoxon {t['b']} vs {t['a']}: n = {t['n']}, p = {p}" + (f" ({t['note']})" if t["note"] else ""))
    for reg, d in res.get("nnunet", {}).items():
        print(f"nnU-Net dataset ({reg}): {d['folder']}")
    print(f"report: {args.out}/results.md")
    return 0
