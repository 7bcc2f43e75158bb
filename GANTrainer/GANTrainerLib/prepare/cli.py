"""`volgan prepare ...`: whole scans -> training datasets.

    volgan prepare bone --images DIR [--masks DIR] --out DIR [--spacing 0.164] [--calibration SLOPE,INTERCEPT | --from-hu]
                        [--cortex-mm 1.0] [--stride 32] [--min-fill 0.02] [--size 32] [--workers N]
    volgan prepare cow  --images DIR [--labels DIR] (--template FILE | --build-template)
                        [--roi x0:x1,y0:y1,z0:z1 | --roi-around-labels MM] --out DIR [--workers N]
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
                                    "manifest.json and qc_montage.png; train with --data OUT/images. Resumable: "
                                    "finished scans wait in OUT.cache/, and a rerun with the same recipe (also into "
                                    "the finished folder) skips unchanged scans.")
    b.add_argument("--images", required=True, metavar="DIR", help="folder of 3-D scans (NIfTI, NRRD, MetaImage)")
    b.add_argument("--masks", metavar="DIR", help="spongiosa masks with the same file names, on the scans' grids")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder: new, empty, or one prepared before with the same recipe (only new or changed scans are done)")
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
    b.add_argument("--workers", type=int, default=1, metavar="N", help="scans prepared in parallel (default 1)")
    b.add_argument("--overwrite", action="store_true", help="replace an output folder of another recipe (or not written "
                   "by volgan prepare); without it a rerun with the same recipe only adds new or changed scans")
    b.set_defaults(func=_cmd_bone)

    c = psub.add_parser("cow", help="TOF-MRA scans -> Circle-of-Willis crops registered to a template",
                        description="Register every TOF-MRA rigidly to a template (SimpleITK Euler 3-D, Mattes mutual "
                                    "information, coarse rotation search then three resolution levels, full sampling at "
                                    "the finest), resample images (B-spline) and labels (nearest) onto the template grid, "
                                    "crop the ROI (default: the CoW paper's x 80:208, y 120:248, z 40:72) and min-max "
                                    "normalise each crop to [0, 1]. Writes images/, labels/, manifest.json (transform, "
                                    "metric, quality flag, label coverage per case; failures listed and excluded) and "
                                    "qc_mips.png. Resumable: finished cases wait in OUT.cache/, and a rerun with the "
                                    "same recipe (also into the finished folder) skips unchanged scans.")
    c.add_argument("--images", required=True, metavar="DIR", help="folder of 3-D TOF-MRA scans")
    c.add_argument("--labels", metavar="DIR", help="their label maps (same file names, same grids)")
    tpl = c.add_mutually_exclusive_group(required=True)
    tpl.add_argument("--template", metavar="FILE", help="the TOF template the crops are defined on")
    tpl.add_argument("--build-template", action="store_true",
                     help="build one by group-wise rigid registration to the current mean (written as template.*)")
    c.add_argument("--template-iterations", type=int, default=3, metavar="K",
                   help="rounds of --build-template (default 3)")
    box = c.add_mutually_exclusive_group()
    box.add_argument("--roi", metavar="x0:x1,y0:y1,z0:z1", help="crop in template voxel indices (default: the paper's "
                                                                 "80:208,120:248,40:72)")
    box.add_argument("--roi-around-labels", type=float, metavar="MM",
                     help="crop the labels' bounding box on the template grid, grown by MM")
    c.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                   help="resample the crops to this voxel size: one value (isotropic) or three (x y z); default: "
                        "the template's")
    c.add_argument("--label-scheme", choices=["topcow13", "aydin7"], default="topcow13",
                   help="allowed label ids (default topcow13)")
    c.add_argument("--iterations", type=int, default=100, help="optimiser iterations per level (default 100)")
    c.add_argument("--search-deg", type=float, default=30.0,
                   help="coarse rotation search range about each axis, ± degrees (default 30; 0: none)")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder: new, empty, or one prepared before with the same recipe (only new or changed scans are done)")
    c.add_argument("--workers", type=int, default=1, metavar="N", help="cases registered in parallel (default 1)")
    c.add_argument("--format", default="nii.gz", choices=["nii.gz", "nrrd", "mha"], help="file format (default nii.gz)")
    c.add_argument("--overwrite", action="store_true", help="replace an output folder of another recipe (or not written "
                   "by volgan prepare); without it a rerun with the same recipe only adds new or changed scans")
    c.set_defaults(func=_cmd_cow)


def _cmd_bone(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args

    from .bone import parse_calibration, prepare_bone

    calibration = parse_calibration(args.calibration) if args.calibration else None
    out = prepare_bone(args.images, args.out, masks=args.masks, spacing_mm=args.spacing, calibration=calibration,
                       from_hu=args.from_hu, cortex_mm=args.cortex_mm, closing_mm=args.closing_mm, stride=args.stride,
                       min_fill=args.min_fill, size=args.size, fmt=args.format, overwrite=args.overwrite, workers=args.workers,
                       progress=progress_from_args(args))
    if not args.quiet:
        from VolGANCore.dataset import read_manifest

        n = len(read_manifest(out)["cases"])
        print(f"wrote {n} patch(es) to {out} (images/, masks/, manifest.json, qc_montage.png); "
              f"train with --data {out}/images")
    return 0


def _cmd_cow(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args

    from .cow import parse_roi, prepare_cow

    register_kw = {"iterations": args.iterations, "search_deg": args.search_deg}
    out = prepare_cow(args.images, args.out, labels=args.labels, template=args.template,
                      build_template_iterations=args.template_iterations if args.build_template else 0,
                      roi=parse_roi(args.roi) if args.roi else None, roi_around_labels_mm=args.roi_around_labels,
                      label_scheme=args.label_scheme, workers=args.workers,
                      spacing_mm=(args.spacing[0] if len(args.spacing) == 1 else args.spacing) if args.spacing else None,
                      fmt=args.format, overwrite=args.overwrite,
                      register_kw=register_kw, progress=progress_from_args(args))
    from VolGANCore.dataset import read_manifest

    doc = read_manifest(out)
    for row in doc.get("failed", []):
        print(f"volgan prepare cow: warning: {row['source']} excluded: {row['reason']}")
    if not args.quiet:
        suspect = sum(1 for r in doc["cases"] if r.get("quality") != "ok")
        print(f"wrote {len(doc['cases'])} case(s) to {out} ({len(doc.get('failed', []))} failed, {suspect} flagged "
              f"suspect; see qc_mips.png); train with --data {out}/images")
    return 0
