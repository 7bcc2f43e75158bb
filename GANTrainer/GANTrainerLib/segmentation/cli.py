"""``volgan segmentation-experiment`` (the downstream segmentation utility test) and ``volgan evaluate-segmentation``
(the TopCoW 2023 metric suite of any CoW segmentation); :func:`register` adds both (``VolGANCore.cli.PROJECT_COMMANDS``)."""

from __future__ import annotations

import argparse

__all__ = ["register", "register_segmentation_experiment", "register_evaluate_segmentation", "register_segment"]


def register(sub: argparse._SubParsersAction) -> None:
    register_segmentation_experiment(sub)
    register_evaluate_segmentation(sub)
    register_segment(sub)


def register_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment", help="label a folder of volumes with a saved segmenter (e.g. the experiment's teacher)",
        description="Label every volume of --images with a segmentation checkpoint written by volgan "
                    "segmentation-experiment (OUT/checkpoints/fold*_teacher.pt) and write OUT/<case>.nii.gz label maps "
                    "in its scheme. Use it to score an image-only generator's samples with volgan evaluate-morphometry "
                    "(CoW variant and artery fidelity via the teacher).")
    p.add_argument("--model", required=True, metavar="CKPT", help="segmentation checkpoint (.pt)")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of volumes (at the model's spacing)")
    p.add_argument("--out", required=True, metavar="DIR", help="label folder (new or empty unless --overwrite)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_cmd_segment)


def _cmd_segment(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args

    from .apply import segment_folder

    res = segment_folder(args.model, args.images, args.out, device=args.device, overwrite=args.overwrite,
                         progress=progress_from_args(args))
    print(f"labelled {res['cases']} volume(s) in scheme {res['scheme']} to {res['out']}")
    return 0


def register_segmentation_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segmentation-experiment",
        help="downstream test: CoW segmenters trained on real / synthetic / real+synthetic, scored on held-out real",
        description="k-fold downstream segmentation experiment (Aydin et al. 2024): a teacher trained on the real "
                    "labelled volumes of each fold labels the synthetic ones; DynUNet students trained on real only, "
                    "synthetic only and real + synthetic are scored on the held-out real volumes per artery (Dice, "
                    "HD95 in mm or, with --scoring paper, the paper's HDRFDST@0.95 in voxels; TopCoW detection, variant "
                    "vectors and the TopCoW 2023 metric suite) and compared with a paired Wilcoxon test. Writes "
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
    p.add_argument("--regimes", nargs="+", metavar="R", default=None,
                   choices=["real", "synthetic", "real+synthetic", "synthetic-generated"],
                   help="training regimes (default: real synthetic real+synthetic); synthetic-generated trains on the "
                        "synthetic volumes' own generated labels (--synthetic-labels, or a joint --synthetic-model) "
                        "next to synthetic, which then uses a teacher's labels")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold split of the real set (default 5)")
    p.add_argument("--n-real", type=int, metavar="N", help="real training volumes per student (default: all of the fold)")
    p.add_argument("--n-synthetic", type=int, metavar="M", help="synthetic training volumes per student (default: all)")
    p.add_argument("--config", choices=["small", "full"], default="small",
                   help="small: tiny DynUNet, minutes on CPU (pipeline check); full: nnU-Net-like, for a GPU")
    p.add_argument("--epochs", type=int, metavar="E", help="override the config's epochs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--amp", choices=["auto", "off"], default="auto", help="mixed precision on CUDA (bf16 or fp16)")
    p.add_argument("--seed", type=int, default=0, help="seed of folds, subsets, initialisation and sampling")
    p.add_argument("--scoring", choices=["volgan", "paper"], default="volgan",
                   help="volgan (default): HD95 in mm, a class in only one map scores Dice 0 and the volume diagonal, "
                        "mean ± SD over folds; paper: Aydin et al. 2024's EvaluateSegmentation HDRFDST@0.95 in voxels, "
                        "missed and false-positive classes left out, mean ± SD over cases")
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
        overwrite=args.overwrite, scoring=args.scoring, progress=progress_from_args(args),
        **({"regimes": tuple(args.regimes)} if args.regimes else {}))
    hd, unit = ("hd95_vox", "voxels (HDRFDST@0.95)") if args.scoring == "paper" else ("hd95_mm", "mm")
    for reg, s in res["summary"].items():  # the result, printed even with --quiet
        print(f"{reg}: mean Dice {_pm(s['mean_dice'], s['mean_dice_sd'])}, mean HD95 "
              f"{_pm(s[f'mean_{hd}'], s[f'mean_{hd}_sd'], 2)} {unit} over {s['n_cases']} held-out cases")
    for t in res["tests"]:
        p = "—" if t["p_value"] is None else f"{t['p_value']:.4g}"
        print(f"Wilcoxon {t['b']} vs {t['a']}: n = {t['n']}, p = {p}" + (f" ({t['note']})" if t["note"] else ""))
    for reg, d in res.get("nnunet", {}).items():
        print(f"nnU-Net dataset ({reg}): {d['folder']}")
    print(f"report: {args.out}/results.md")
    return 0


def register_evaluate_segmentation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-segmentation",
        help="score CoW segmentations against ground truth with the TopCoW 2023 metric suite",
        description="TopCoW 2023 metrics (the challenge's definitions) of predicted Circle-of-Willis label maps "
                    "against their ground truth: Dice, clDice (merged tree and per class), Betti-0 error, HD95 in mm "
                    "(per class, class average, merged), group-2 (Pcom, Acom, 3rd-A2) detection F1, variant-balanced "
                    "graph accuracy and topology match rate. --pred and --gt are two label-map files or two folders "
                    "whose files pair by name. Prints a summary, or everything as JSON with --json; writes nothing.",
    )
    p.add_argument("--pred", required=True, metavar="P", help="predicted label map, or a folder of them")
    p.add_argument("--gt", required=True, metavar="G", help="ground-truth label map, or a folder (same file names)")
    p.add_argument("--label-scheme", choices=["topcow13", "aydin7"], default="topcow13",
                   help="label ids of both (default topcow13; aydin7 has no sides: class metrics only)")
    p.add_argument("--json", action="store_true", help="print the per-case and aggregated metrics as JSON")
    p.set_defaults(func=_cmd_evaluate_segmentation)


def _cmd_evaluate_segmentation(args: argparse.Namespace) -> int:
    import json

    from VolGANCore.cli import progress_from_args

    from .evaluate import evaluate_segmentations, format_evaluation
    from .experiment import _finite_json

    res = evaluate_segmentations(args.pred, args.gt, args.label_scheme, progress=progress_from_args(args))
    print(json.dumps(_finite_json(res), indent=2) if args.json else format_evaluation(res))
    return 0
