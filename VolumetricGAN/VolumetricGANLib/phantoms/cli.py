"""`volgan phantom ...` subcommands.

    volgan phantom cow  --n 20 --seed 0 --out cow_phantoms [--shape 32 128 128] [--spacing-mm 0.6]
    volgan phantom bone --n 200 --seed 0 --out bone_phantoms [--size 32] [--spacing-mm 0.164]
                        [--bvtv 0.2] [--tbth-mm 0.38] [--da 1.3] [--patches K]
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    """Add the phantom subcommands to the ``volgan`` parser."""
    p = sub.add_parser("phantom", help="write built-in ground-truth phantoms (CoW TOF-MRA, trabecular bone)",
                       description="Write synthetic, ground-truth-labelled datasets: Circle-of-Willis TOF-MRA crops "
                                   "with TopCoW labels, or trabecular-bone patches with masks.")
    psub = p.add_subparsers(dest="phantom_command", required=True, metavar="KIND")

    c = psub.add_parser("cow", help="Circle-of-Willis TOF-MRA crops with TopCoW 2023 labels",
                        description="Write N TOF-MRA-like Circle-of-Willis crops (images/), TopCoW label maps "
                                    "(labels/) and manifest.json with every sampled parameter and variant.")
    _common(c)
    c.add_argument("--shape", type=int, nargs=3, default=[32, 128, 128], metavar=("D", "H", "W"),
                   help="volume shape (default 32 128 128)")
    c.add_argument("--spacing-mm", type=float, nargs="+", default=[0.6], metavar="MM",
                   help="voxel size in mm: one value (isotropic) or three (x y z); default 0.6")
    c.add_argument("--label-scheme", default="topcow13", choices=["topcow13", "aydin7"],
                   help="label ids: TopCoW 2023 (default) or the 7-class merge")
    c.set_defaults(func=_cmd_cow)

    b = psub.add_parser("bone", help="trabecular-bone (spongiosa) patches with masks",
                        description="Write N HR-pQCT-like trabecular-bone patches (images/, MICCAI 2020 units), "
                                    "ground-truth masks (masks/) and manifest.json with targets and measured "
                                    "BV/TV, Tb.Th, DA, BMD, TMD.")
    _common(b)
    b.add_argument("--size", type=int, default=32, help="patch edge in voxels (default 32)")
    b.add_argument("--spacing-mm", type=float, default=0.164, help="isotropic voxel size in mm (default 0.164)")
    b.add_argument("--bvtv", type=float, default=0.2, help="target bone volume fraction (default 0.2)")
    b.add_argument("--tbth-mm", type=float, default=0.38,
                   help="target mean trabecular thickness in mm, local-thickness definition (default 0.38; "
                        "at least two voxels)")
    b.add_argument("--da", type=float, default=1.3, help="target degree of anisotropy, MIL ratio z/xy (default 1.3)")
    b.add_argument("--rodness", type=float, default=0.6, help="0 = plate-like … 1 = rod-like (default 0.6)")
    b.add_argument("--bvtv-sd", type=float, default=0.0, help="per-sample spread of the BV/TV target (default 0)")
    b.add_argument("--tbth-sd-mm", type=float, default=0.0, help="per-sample spread of the Tb.Th target (default 0)")
    b.add_argument("--da-sd", type=float, default=0.0, help="per-sample spread of the DA target (default 0)")
    b.add_argument("--patches", type=int, default=None, metavar="K",
                   help="generate N larger blocks and cut K random patches from each (N·K files)")
    b.add_argument("--block-size", type=int, default=96, help="block edge in voxels with --patches (default 96)")
    b.set_defaults(func=_cmd_bone)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, required=True, help="number of volumes")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed → identical files")
    p.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nrrd", "mha"], help="file format (default nii.gz)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def _cmd_cow(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args

    from .dataset import write_cow_dataset

    out = write_cow_dataset(args.out, args.n, args.seed, shape=args.shape,
                            spacing_mm=args.spacing_mm[0] if len(args.spacing_mm) == 1 else args.spacing_mm,
                            label_scheme=args.label_scheme, fmt=args.format, overwrite=args.overwrite,
                            progress=progress_from_args(args))
    if not args.quiet:
        print(f"wrote {args.n} CoW phantom(s) to {out} (images/, labels/, manifest.json)")
    return 0


def _cmd_bone(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args

    from .dataset import write_bone_dataset

    out = write_bone_dataset(args.out, args.n, args.seed, size=args.size, spacing_mm=args.spacing_mm,
                             bvtv=args.bvtv, tbth_mm=args.tbth_mm, da=args.da, rodness=args.rodness,
                             bvtv_sd=args.bvtv_sd, tbth_sd_mm=args.tbth_sd_mm, da_sd=args.da_sd,
                             patches=args.patches, block_size=args.block_size, fmt=args.format,
                             overwrite=args.overwrite, progress=progress_from_args(args))
    if not args.quiet:
        total = args.n * (args.patches or 1)
        print(f"wrote {total} bone phantom(s) to {out} (images/, masks/, manifest.json)")
    return 0
