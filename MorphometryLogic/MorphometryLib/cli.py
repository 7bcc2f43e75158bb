"""`volgan morphometry ...` subcommands: ``bone`` (exact bone panel) and ``vessels`` (artery morphometry)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path


def register(sub) -> None:
    """Add this package's subcommands to the ``volgan`` parser."""
    p = sub.add_parser("morphometry", help="bone micro-structure and vessel morphometry in physical units")
    msub = p.add_subparsers(dest="morphometry_command", required=True, metavar="{bone,vessels}")

    b = msub.add_parser("bone", help="BV/TV, BS, Tb.Th/Tb.Sp/Tb.N, Conn.D, SMI, DA, BMD/TMD of an image (or a folder)")
    b.add_argument("image", help="binary or grey-level volume (.nii/.nii.gz/.nrrd/.mha), or a folder of them")
    b.add_argument("--mask", help="region-of-interest mask on the same grid (non-zero = inside)")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="bone threshold in image units (image >= T is bone)")
    g.add_argument("--otsu", action="store_true", help="use Otsu's threshold")
    g.add_argument("--preset", choices=["miccai2020"], help="named threshold (miccai2020 = 225)")
    b.add_argument("--parameters", nargs="+", metavar="P",
                   help="subset of BV/TV BS Tb.Th Tb.Sp Tb.N Conn SMI DA DA.ST BMD TMD plate (default: all that apply)")
    b.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="override the voxel spacing in mm (when the header lacks it)")
    b.add_argument("--tmd-erosion", type=int, default=0, help="erode bone by N voxels before the TMD mean")
    b.add_argument("--bonej", action="store_true",
                   help="Tb.Th/Tb.Sp as BoneJ Thickness reports them: Fiji's clean-up of the map's surface voxels "
                        "and the sample SD (isotropic voxels only); default: Fiji's local thickness without it")
    b.add_argument("--thickness-map", metavar="FILE", help="also write the Tb.Th map (mm) to this volume file")
    b.add_argument("--spacing-map", metavar="FILE", help="also write the Tb.Sp map (mm) to this volume file")
    b.add_argument("--csv", metavar="FILE", help="write the result row(s) to a CSV file")
    b.add_argument("--workers", type=int, help="worker processes for a folder (default: CPU count)")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b.set_defaults(func=_cmd_bone)

    v = msub.add_parser("vessels", help="per-artery presence, volume, length, radius, branch points and CoW variants")
    v.add_argument("labelmap", help="TopCoW label map (or a binary vessel mask with --binary)")
    v.add_argument("--image", help="the angiogram on the same grid (mean intensity per artery)")
    v.add_argument("--binary", action="store_true", help="treat the input as one binary vessel mask")
    v.add_argument("--scheme", default="topcow13", choices=["topcow13"], help="label scheme of the label map")
    v.add_argument("--csv", metavar="FILE", help="write the per-artery rows to a CSV file")
    v.add_argument("--json", action="store_true", help="print JSON instead of a table")
    v.set_defaults(func=_cmd_vessels)


def _warn(args, message: str) -> None:
    print(f"volgan morphometry: warning: {message}", file=sys.stderr)


def _nrrd_lacks_spacing(path: Path) -> bool:
    if not path.name.lower().endswith((".nrrd", ".nhdr")):
        return False
    head = []
    with open(path, "rb") as fh:
        for raw in fh:
            line = raw.decode("latin-1").strip()
            if not line:
                break
            head.append(line.lower())
            if len(head) > 200:
                break
    return not any(h.startswith(("spacings:", "space directions:")) for h in head)


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item"):
        return _jsonable(obj.item())
    return obj


def _print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(_jsonable(rows if len(rows) != 1 else rows[0]), indent=2))
        return
    for r in rows:
        width = max(len(k) for k in r)
        for k, val in r.items():
            text = f"{val:.6g}" if isinstance(val, float) else str(val)
            print(f"{k:<{width}}  {text}")
        if len(rows) > 1:
            print()


def _cmd_bone(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args
    from VolGANCore.errors import InputFileError, VolGANError
    from VolGANCore.io import read_volume, write_volume

    from .batch import batch_bone_morphometry, write_rows_csv
    from .bone import bone_morphometry

    path = Path(args.image)
    threshold = args.preset if args.preset else args.threshold
    if path.is_dir():
        if args.mask or args.thickness_map or args.spacing_map:
            raise InputFileError(path, "--mask/--thickness-map/--spacing-map apply to one image, not a folder",
                                 "run per file, or drop those options")
        rows = batch_bone_morphometry(path, threshold=threshold, otsu=args.otsu, parameters=args.parameters,
                                      workers=args.workers, bonej=args.bonej, progress=progress_from_args(args))
        bad = [r for r in rows if r.get("error")]
        for r in bad:
            _warn(args, f"{r['case']}: {r['error']}")
        if args.csv:
            write_rows_csv(rows, args.csv)
        _print_rows(rows, args.json)
        return 1 if bad and len(bad) == len(rows) else 0

    image = read_volume(path, dtype=None)
    if args.spacing:
        image = image.with_array(image.array, spacing=tuple(args.spacing))
    elif _nrrd_lacks_spacing(path):
        _warn(args, f"{path}: the header has no voxel spacing; assumed 1 mm isotropic, so lengths are in voxels "
                    "(pass --spacing X Y Z in mm)")
    mask = None
    if args.mask:
        mask = read_volume(args.mask, dtype=None)
        if args.spacing:
            mask = mask.with_array(mask.array, spacing=tuple(args.spacing))
        if not mask.same_geometry(image):
            raise InputFileError(args.mask, f"mask geometry {mask.shape} at {mask.spacing} mm differs from the image's "
                                 f"{image.shape} at {image.spacing} mm", "resample the mask onto the image grid")
    want_maps = bool(args.thickness_map or args.spacing_map)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = bone_morphometry(image, mask=mask, threshold=threshold, otsu=args.otsu, parameters=args.parameters,
                                   tmd_erosion=args.tmd_erosion, return_maps=want_maps, bonej=args.bonej,
                                   progress=progress_from_args(args))
        except VolGANError as exc:   # the library says "image: ..."; the command names the file
            text = str(exc)
            raise VolGANError(f"{path}: {text[len('image: '):]}" if text.startswith("image: ") else text) from None
    for w in caught:
        _warn(args, str(w.message))
    res, maps = out if want_maps else (out, {})
    if args.thickness_map and "Tb.Th" in maps:
        write_volume(maps["Tb.Th"], args.thickness_map)
    if args.spacing_map and "Tb.Sp" in maps:
        write_volume(maps["Tb.Sp"], args.spacing_map)
    row = {"case": path.name, **res}
    if args.csv:
        write_rows_csv([row], args.csv)
    _print_rows([row], args.json)
    return 0


def _cmd_vessels(args: argparse.Namespace) -> int:
    from VolGANCore.io import read_label_volume, read_volume

    from .batch import write_rows_csv
    from .vessels import binary_vessel_morphometry, cow_variants, vessel_morphometry

    if args.binary:
        mask = read_volume(args.labelmap, dtype=None)
        res = binary_vessel_morphometry(mask)
        if args.json:
            print(json.dumps(_jsonable(res), indent=2))
        else:
            _print_rows([{k: v for k, v in res.items() if not isinstance(v, (list, dict))}], False)
        return 0
    labels = read_label_volume(args.labelmap, scheme=args.scheme)
    image = read_volume(args.image) if args.image else None
    rows = vessel_morphometry(labels, image=image)
    variants = cow_variants(labels)
    if args.csv:
        write_rows_csv(rows, args.csv)
    if args.json:
        print(json.dumps(_jsonable({"arteries": rows, "variants": variants}), indent=2))
        return 0
    cols = ["artery", "present", "volume [mm^3]", "length [mm]", "radius mean [mm]", "radius min [mm]",
            "radius max [mm]", "branch points"]
    print("  ".join(f"{c:>16}" for c in cols))
    for r in rows:
        print("  ".join(f"{(f'{r[c]:.4g}' if isinstance(r[c], float) else str(r[c])):>16}" for c in cols))
    print(f"anterior  [L-A1, Acom, 3rd-A2, R-A1]  = {variants['anterior']}")
    print(f"posterior [L-Pcom, L-P1, R-P1, R-Pcom] = {variants['posterior']}")
    return 0
