"""`volgan prepare ...`: whole scans -> training datasets.

    volgan prepare bone --images DIR [--masks DIR] --out DIR [--spacing 0.164] [--calibration SLOPE,INTERCEPT | --from-hu]
                        [--cortex-mm 1.0] [--stride 32] [--min-fill 0.02] [--size 32]
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``volgan prepare`` and its kinds to the ``volgan`` parser."""
    p = sub.add_parser("prepare", help="turn whole scans into training datasets (spongiosa patches, CoW crops)",
                       description="Prepare real scans for `volgan train`: resample, calibrate or register, mask or "
                                   "crop, and write images/ (+ masks/ or labels/), manifest.json and a QC picture.")
    psub = p.add_subparsers(dest="prepare_command", required=True, metavar="KIND")
    b = psub.add_parser("bone", help="HR-pQCT / micro-CT scans -> 32³ spongiosa patches at 164 µm",
                        description="Resample HR-pQCT / micro-CT scans to --spacing (B-spline; masks nearest), calibrate "
                                    "them to mg HA/cm³ (the spongiosa paper's units), build a spongiosa mask when "
                                    "--masks is not given (periosteal surface by threshold 225 and closing, cortex removed "
                                    "by an erosion of --cortex-mm), and cut --size³ patches on a --stride grid lying fully "
                                    "inside the mask with BV/TV ≥ --min-fill. Writes images/, masks/ (bone at 225), "
                                    "manifest.json and qc_montage.png; train with --data OUT/images.")
    b.add_argument("--images", required=True, metavar="DIR", help="folder of 3-D scans (NIfTI, NRRD, MetaImage)")
    b.add_argument("--masks", metavar="DIR", help="spongiosa masks with the same file names, on the scans' grids")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty unless --overwrite)")
    b.add_argument("--spacing", type=float, default=0.164, metavar="MM", help="isotropic voxel size (default 0.164 mm)")
    cal = b.add_mutually_exclusive_group()
    cal.add_argument("--calibration", metavar="SLOPE,INTERCEPT",
                     help="density = slope·value + intercept in mg HA/cm³ (default: images already in mg HA/cm³)")
    cal.add_argument("--from-hu", action="store_true",
                     help="images in Hounsfield units: Scanco XtremeCT II rule, density ≈ 0.38629·HU − 4.92")
    b.add_argument("--cortex-mm", type=float, default=1.0, help="cortex removed from an automatic mask (default 1.0 mm)")
    b.add_argument("--closing-mm", type=float, default=1.0,
                   help="closing radius of the automatic periosteal surface (default 1.0 mm)")
    b.add_argument("--stride", type=int, default=None, metavar="N", help="patch grid step in voxels (default: --size)")
    b.add_argument("--min-fill", type=float, default=0.02, metavar="F",
                   help="least bone fraction (BV/TV at 225) of a kept patch (default 0.02)")
    b.add_argument("--size", type=int, default=32, help="patch edge in voxels (default 32)")
    b.add_argument("--format", default="nii.gz", choices=["nii.gz", "nrrd", "mha"], help="file format (default nii.gz)")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    b.set_defaults(func=_cmd_bone)


def _cmd_bone(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args

    from .bone import parse_calibration, prepare_bone

    calibration = parse_calibration(args.calibration) if args.calibration else None
    out = prepare_bone(args.images, args.out, masks=args.masks, spacing_mm=args.spacing, calibration=calibration,
                       from_hu=args.from_hu, cortex_mm=args.cortex_mm, closing_mm=args.closing_mm, stride=args.stride,
                       min_fill=args.min_fill, size=args.size, fmt=args.format, overwrite=args.overwrite,
                       progress=progress_from_args(args))
    if not args.quiet:
        from VolGANCore.dataset import read_manifest

        n = len(read_manifest(out)["cases"])
        print(f"wrote {n} patch(es) to {out} (images/, masks/, manifest.json, qc_montage.png); "
              f"train with --data {out}/images")
    return 0
