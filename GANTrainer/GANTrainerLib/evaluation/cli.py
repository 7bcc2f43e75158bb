"""``volgan evaluate``: distribution metrics, real-vs-real baseline and memorisation check of generated volumes."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compare generated volumes with real ones (FID/MD/PRD, k-NN metrics, MMD, memorisation)",
        description="Compare a folder of generated volumes with a folder of real (training) volumes and write "
                    "report.json, report.md and PNG plots to --out. Inputs are only read.",
    )
    p.add_argument("--real", required=True, help="folder of real (training) volumes")
    p.add_argument("--fake", required=True, help="folder of generated volumes (same shape)")
    p.add_argument("--out", required=True, help="report folder (must be new or empty unless --overwrite)")
    p.add_argument("--protocol", choices=["default", "aydin2024"], default="default",
                   help="aydin2024: the anchor's FID/MD/AUC-PRD (seeded, so reproducible); default: better defaults")
    p.add_argument("--inception-weights", metavar="F", help="pytorch-fid pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--medicalnet-weights", metavar="F", help="MedicalNet resnet_10_23dataset.pth")
    p.add_argument("--medicalnet-background", choices=["noise", "zero"], default=None,
                   help="aydin2024 only: fill the MedicalNet input's background (voxels at each volume's minimum) "
                        "with N(0,1) noise seeded per volume, the paper's rule (default), or with 0")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap replicates (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of clustering, splits, bootstrap, fallback network")
    p.add_argument("--knn-k", type=int, default=5, help="k of precision/recall/density/coverage")
    p.add_argument("--copy-quantile", type=float, default=0.01,
                   help="real-vs-real NN tail beyond which a generated volume is a suspected copy")
    p.add_argument("--msssim-pairs", type=int, default=100, metavar="N",
                   help="distinct pairs per set for the MS-SSIM diversity (all pairs if fewer; 0: skip)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.set_defaults(func=_cmd_evaluate)

    f = sub.add_parser(
        "evaluate-morphometry",
        help="morphometric fidelity of generated bone patches or CoW label maps, with a real-vs-real baseline",
        description="bone: measure the exact bone panel of every real and generated patch and compare the "
                    "distributions per parameter (Wasserstein, KS). cow: from TopCoW label maps (of the generated "
                    "volumes: a teacher segmentation or joint generation), compare per artery the presence "
                    "frequency (Fisher's exact test), radius and centreline-length distributions, and the variant-"
                    "vector frequencies (total-variation distance). Every figure next to its real-vs-real baseline; "
                    "writes fidelity.json, fidelity.md and PNG plots to --out.",
    )
    f.add_argument("--real", required=True, help="folder of real patches (bone) or real TopCoW label maps (cow)")
    f.add_argument("--fake", required=True, help="folder of generated patches, or label maps of generated volumes")
    f.add_argument("--out", required=True, help="report folder (must be new or empty unless --overwrite)")
    f.add_argument("--kind", choices=["auto", "bone", "cow"], default="auto",
                   help="auto (default): cow when --real holds label maps (whole numbers, 3-20 distinct ids), "
                        "else bone")
    f.add_argument("--threshold", default=None,
                   help="bone only: threshold in image units, or 'miccai2020' (225; default)")
    f.add_argument("--alpha", type=float, default=0.05,
                   help="cow only: Fisher's exact test level at which an artery's presence is flagged")
    f.add_argument("--bootstrap", type=int, default=200, metavar="N",
                   help="cow only: resampling replicates of the variant distances' 95 %% intervals (0: none)")
    f.add_argument("--seed", type=int, default=0, help="seed of the real-vs-real split and the resampling")
    f.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    f.set_defaults(func=_cmd_fidelity)


def _cmd_fidelity(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args
    from VolGANCore.errors import VolGANError

    from .fidelity import bone_fidelity, cow_fidelity, detect_fidelity_kind, write_fidelity_report

    kind = detect_fidelity_kind(args.real) if args.kind == "auto" else args.kind
    if kind == "cow":
        if args.threshold is not None:
            raise VolGANError(f"--threshold {args.threshold}: applies to bone patches only, but --real {args.real} "
                              "holds label maps (cow); drop --threshold, or pass --kind bone")
        result = cow_fidelity(args.real, args.fake, seed=args.seed, alpha=args.alpha, progress=progress_from_args(args),
                              n_boot=args.bootstrap)
        out = write_fidelity_report(result, args.out, overwrite=args.overwrite)
        tv = result["variants"]
        print(f"CoW morphometric fidelity of {result['n_generated']} generated vs {result['n_real']} real label maps "
              f"written to {out}; variant TV distance " + ", ".join(
                  f"{side} {tv[side]['tv_distance']:.3f} (real vs real {tv[side]['tv_distance_real_vs_real']:.3f})"
                  for side in ("anterior", "posterior", "joint")))
        print("flagged: " + ("; ".join(result["flags"]) if result["flags"] else "none"))
        return 0
    threshold = args.threshold or "miccai2020"
    try:
        threshold = threshold if threshold == "miccai2020" else float(threshold)
    except ValueError:
        raise VolGANError(f"--threshold {args.threshold!r}: expected a number in image units or 'miccai2020'") from None
    result = bone_fidelity(args.real, args.fake, threshold=threshold, seed=args.seed,
                           progress=progress_from_args(args))
    out = write_fidelity_report(result, args.out, overwrite=args.overwrite)
    worst = max(result["parameters"], key=lambda r: r["wasserstein_over_sd"])
    print(f"morphometric fidelity of {result['n_generated']} generated vs {result['n_real']} real patches written to "
          f"{out}; largest W1/SD: {worst['parameter']} {worst['wasserstein_over_sd']:.3f} "
          f"(real vs real {worst['wasserstein_over_sd_real_vs_real']:.3f})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args
    from VolGANCore.env import pick_device

    from .report import evaluate
    from .report_md import _fmt

    report = evaluate(
        args.real, args.fake, args.out, protocol=args.protocol,
        inception_weights=args.inception_weights, medicalnet_weights=args.medicalnet_weights,
        n_bootstrap=args.bootstrap, seed=args.seed, device=pick_device(args.device), knn_k=args.knn_k,
        copy_quantile=args.copy_quantile, msssim_pairs=args.msssim_pairs, overwrite=args.overwrite,
        progress=progress_from_args(args), medicalnet_background=args.medicalnet_background,
    )
    for w in report.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    for m in report["metrics"].values():  # the summary is the result, printed even with --quiet (no bars)
        ci = "" if not m["ci95"] else f" [{_fmt(m['ci95'][0])}, {_fmt(m['ci95'][1])}]"
        print(f"{m['label']}: {_fmt(m['real_vs_generated'])}{ci}  (real vs real {_fmt(m['real_vs_real'])}; "
              f"{m['extractor']})")
    if report.get("diversity"):
        d = report["diversity"]["msssim"]
        ci = "" if not d["generated"]["ci95"] else f" [{_fmt(d['generated']['ci95'][0])}, {_fmt(d['generated']['ci95'][1])}]"
        halves = " / ".join(_fmt(h) for h in d["real_halves"])
        print(f"MS-SSIM diversity (mean over pairs, lower = more diverse): generated {_fmt(d['generated']['mean'])}{ci}"
              f"  (real {_fmt(d['real']['mean'])}; real halves {halves}) — {d['verdict']}")
    f = report["border"]["frame_index"]
    print(f"border frame index: {_fmt(f['real_vs_generated'])}  (real vs real {_fmt(f['real_vs_real'])})")
    print(f"suspected copies: {len(report['memorisation']['suspects'])}")
    print(f"report: {args.out}/report.md")
    return 0
