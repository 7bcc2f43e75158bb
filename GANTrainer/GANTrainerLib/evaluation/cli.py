"""``volgan evaluate``: distribution metrics, real-vs-real baseline and memorisation check of generated volumes."""

from __future__ import annotations

import argparse

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
                   help="aydin2024: the anchor's FID/MD/AUC-PRD exactly (deterministic); default: better defaults")
    p.add_argument("--inception-weights", metavar="F", help="pytorch-fid pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--medicalnet-weights", metavar="F", help="MedicalNet resnet_10_23dataset.pth")
    p.add_argument("--bootstrap", type=int, default=200, metavar="N", help="bootstrap replicates (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of clustering, splits, bootstrap, fallback network")
    p.add_argument("--knn-k", type=int, default=5, help="k of precision/recall/density/coverage")
    p.add_argument("--copy-quantile", type=float, default=0.01,
                   help="real-vs-real NN tail beyond which a generated volume is a suspected copy")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.set_defaults(func=_cmd_evaluate)

    f = sub.add_parser(
        "evaluate-morphometry",
        help="morphometric fidelity of generated bone: per-parameter distances with a real-vs-real baseline",
        description="Measure the exact bone panel of every real and generated patch and compare the distributions "
                    "per parameter (Wasserstein, KS), next to the real-vs-real baseline; writes fidelity.json, "
                    "fidelity.md and violins.png to --out.",
    )
    f.add_argument("--real", required=True, help="folder of real patches")
    f.add_argument("--fake", required=True, help="folder of generated patches")
    f.add_argument("--out", required=True, help="report folder (must be new or empty unless --overwrite)")
    f.add_argument("--threshold", default="miccai2020",
                   help="bone threshold in image units, or 'miccai2020' (225; default)")
    f.add_argument("--seed", type=int, default=0, help="seed of the real-vs-real split")
    f.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    f.set_defaults(func=_cmd_fidelity)


def _cmd_fidelity(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args

    from .fidelity import bone_fidelity, write_fidelity_report

    threshold = args.threshold if args.threshold == "miccai2020" else float(args.threshold)
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
        copy_quantile=args.copy_quantile, overwrite=args.overwrite, progress=progress_from_args(args),
    )
    for m in report["metrics"].values():  # the summary is the result, printed even with --quiet (no bars)
        ci = "" if not m["ci95"] else f" [{_fmt(m['ci95'][0])}, {_fmt(m['ci95'][1])}]"
        print(f"{m['label']}: {_fmt(m['real_vs_generated'])}{ci}  (real vs real {_fmt(m['real_vs_real'])}; "
              f"{m['extractor']})")
    print(f"suspected copies: {len(report['memorisation']['suspects'])}")
    print(f"report: {args.out}/report.md")
    return 0
