"""`volgan import` and `volgan generate` subcommands (steering is added by a later issue).

    volgan import --format miccai2020-pgan g_net.pth --out spongiosa.vgan
    volgan generate --checkpoint spongiosa.vgan --n 16 --seed 0 --out samples/
    volgan generate --checkpoint cow.vgan --mode interpolate --seeds 1 2 --steps 9 --out path/
    volgan generate --checkpoint cow.vgan --mode variation --seed 3 --n 8 --out var/
    volgan generate --checkpoint cow.vgan --mode mix --seed 3 --seeds 4 5 6 --cutoff 4 --out mix/
    volgan generate --checkpoint spongiosa.vgan --mode invert --target patch.nii.gz --out inverted/
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def register(sub) -> None:
    """Add this package's subcommands to the ``volgan`` parser."""
    from .importers import IMPORTERS

    p = sub.add_parser("import", help="convert published generator weights into a volgan checkpoint (.vgan)",
                       description="Convert published generator weights into a self-describing volgan checkpoint "
                                   "(config + tensors, safe to load) with a model card beside it.")
    p.add_argument("source", help="the published weights file, e.g. g_net.pth")
    p.add_argument("--format", required=True, choices=sorted(IMPORTERS), help="format of the source file")
    p.add_argument("--out", required=True, help="checkpoint to write (.vgan)")
    p.add_argument("--name", help="model name for the model card")
    p.add_argument("--config", help="aydin2024-stylegan: their .config.json (default: the one next to SOURCE)")
    p.add_argument("--fmap-max", type=int,
                   help="aydin2024-stylegan: channel cap used in training (default: inferred from tensor shapes)")
    p.add_argument("--reference-image",
                   help="aydin2024-stylegan: an ROI crop of the model's D×H×W; generated volumes get its geometry")
    p.add_argument("--clamp", action="store_true",
                   help="aydin2024-stylegan: clamp output to [0, 1] as the authors' script does")
    p.add_argument("--truncation-mean-samples", type=int,
                   help="aydin2024-stylegan: latents for the truncation mean (default 10000; the authors used 2000)")
    p.set_defaults(func=_cmd_import)

    g = sub.add_parser("generate", help="sample volumes from a generator checkpoint",
                       description="Sample volumes (one file each, numbered in latent order, geometry and physical "
                                   "units from the checkpoint) plus latents.npz and manifest.json.")
    g.add_argument("--checkpoint", required=True, help="a .vgan checkpoint")
    g.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    g.add_argument("--mode", default="sample", choices=["sample", "interpolate", "variation", "mix", "invert"],
                   help="sample (default); interpolate between two seeds/latents; variation: fixed w, N noise "
                        "draws; mix: coarse styles of --seed, fine styles of each of --seeds; invert: project "
                        "--target into the latent space")
    g.add_argument("--n", type=int, help="number of samples (variation: number of noise draws)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--seeds", type=int, nargs="+", help="interpolate: two end seeds; mix: seeds of the fine styles")
    g.add_argument("--latents", help="(N, z_dim) .npy or a latents.npz to use instead of the seed")
    g.add_argument("--truncation", type=float, help="truncation ψ (StyleGAN; default from the checkpoint, 1 = off)")
    g.add_argument("--truncation-cutoff", type=int, help="truncate only the first K w layers")
    g.add_argument("--noise", choices=["random", "const", "none"], help="noise inputs (default from the checkpoint)")
    g.add_argument("--steps", type=int, default=8, help="interpolate: volumes along the path (default 8)")
    g.add_argument("--space", choices=["auto", "z", "w"], default="auto", help="interpolate: slerp in z or lerp in w")
    g.add_argument("--cutoff", type=int, help="mix: first w layer taken from the --seeds styles")
    g.add_argument("--variant", action="append", metavar="PART=a,b,c,d",
                   help="sample, models conditioned on the CoW variant: anterior=L-A1,Acom,3rd-A2,R-A1 and/or "
                        "posterior=L-Pcom,L-P1,R-P1,R-Pcom as 0/1 (e.g. posterior=0,1,1,1; repeatable); a part not "
                        "given follows the training frequencies (default: both do)")
    g.add_argument("--batch", type=int, default=8, help="samples per forward pass (default 8)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    g.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                   help="mixed precision (auto: bf16/fp16 on GPU, off on CPU); NaN batches are re-run in fp32")
    g.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd", "mha"], help="volume file format")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    g.add_argument("--target", help="invert: the volume to reproduce (on the model's grid unless --resample)")
    g.add_argument("--invert-space", default="auto", choices=["auto", "w+", "w", "z"],
                   help="invert: latent space (auto: W+ for StyleGAN models, z otherwise)")
    g.add_argument("--invert-steps", type=int, default=300, help="invert: optimisation steps (default 300)")
    g.add_argument("--resample", action="store_true", help="invert: resample a target that is off the model grid")
    g.set_defaults(func=_cmd_generate)

    st = sub.add_parser("steer", help="steer a bone generator to target micro-structure (latent optimisation)",
                        description="Optimise latents until the exact morphometry of each sample is within the "
                                    "tolerance of the targets (differentiable proxies, calibrated against the exact "
                                    "measures during the run). Writes volumes, latents.npz, report.json and a plot.")
    st.add_argument("--checkpoint", required=True, help="a bone (spongiosa) .vgan model")
    st.add_argument("--target", action="append", default=[], metavar="NAME=VALUE",
                    help="exact-unit target, e.g. BV/TV=0.22, Tb.Th=0.4mm (repeatable)")
    st.add_argument("--change", action="append", default=[], metavar="NAME=±P%",
                    help="relative change of a starting sample, e.g. BV/TV=-20%% (needs --from)")
    st.add_argument("--from", dest="from_latents", help="starting latents: a latents.npz (z) or an (N, z_dim) .npy")
    st.add_argument("--n", type=int, default=8, help="samples when starting from a seed (default 8)")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--steps", type=int, default=200, help="maximum optimisation steps (default 200)")
    st.add_argument("--tolerance", type=float, default=0.05, help="relative tolerance of success (default 0.05)")
    st.add_argument("--pool", type=int, default=None,
                    help="targets mode: random latents measured exactly to start from (default max(128, 4·n))")
    st.add_argument("--keep", action="append", default=None, metavar="NAME",
                    help="change mode: parameter held at its start value (repeatable; default TMD)")
    st.add_argument("--device", default="auto")
    st.add_argument("--format", default="nii.gz", choices=["nii.gz", "nii", "nrrd", "mha"])
    st.add_argument("--out", required=True, help="output folder (new or empty unless --overwrite)")
    st.add_argument("--overwrite", action="store_true")
    st.set_defaults(func=_cmd_steer)


def _cmd_import(args: argparse.Namespace) -> int:
    from .importers import import_model

    from VolGANCore.errors import VolGANError

    kwargs = {"name": args.name} if args.name else {}
    aydin_only = {"config": args.config, "fmap_max": args.fmap_max, "reference_image": args.reference_image,
                  "clamp": args.clamp or None, "truncation_mean_samples": args.truncation_mean_samples}
    given = {k: v for k, v in aydin_only.items() if v is not None}
    if args.format == "aydin2024-stylegan":
        kwargs.update(given)
    elif given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise VolGANError(f"{flags}: only for --format aydin2024-stylegan")
    out = import_model(args.format, args.source, args.out, **kwargs)
    from .checkpoint import card_path

    print(f"wrote {out} and its model card {card_path(out)}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args
    from VolGANCore.errors import VolGANError

    from . import generate as gen

    common = dict(batch=args.batch, amp=args.amp, progress=progress_from_args(args))
    sequence = False
    if args.variant and args.mode != "sample":
        raise VolGANError(f"--variant: only with --mode sample (not {args.mode})")
    if args.mode == "invert":
        return _invert(args)
    if args.mode == "sample":
        result = gen.generate(args.checkpoint, n=args.n, seed=args.seed, truncation=args.truncation,
                              noise=args.noise, latents=args.latents, truncation_cutoff=args.truncation_cutoff,
                              device=args.device, variant=args.variant, **common)
    elif args.mode == "interpolate":
        seeds = args.seeds if args.latents is None else None
        if args.latents is None and (not args.seeds or len(args.seeds) != 2):
            raise VolGANError("--mode interpolate: give --seeds A B or --latents with two rows")
        result = gen.interpolate(args.checkpoint, steps=args.steps, seeds=seeds, latents=args.latents,
                                 space=args.space, truncation=args.truncation, noise=args.noise,
                                 device=args.device, **common)
        sequence = True
    elif args.mode == "variation":
        result = gen.variation(args.checkpoint, k=args.n or 8, seed=args.seed, truncation=args.truncation,
                               device=args.device, **common)
    else:
        if not args.seeds or args.cutoff is None:
            raise VolGANError("--mode mix: give --seeds (fine-style seeds) and --cutoff (first layer they drive)")
        result = gen.mix(args.checkpoint, args.seed, args.seeds, args.cutoff, truncation=args.truncation,
                         noise=args.noise, device=args.device, **common)
    out = gen.write_generated(result, args.out, fmt=args.format, overwrite=args.overwrite, sequence=sequence)
    info = result.info
    if info.get("warning"):
        print(f"volgan generate: warning: {info['warning']}", file=sys.stderr)
    print(f"wrote {len(result.volumes)} volume(s) to {out} ({info['device']}, amp {info['amp'] or 'off'}, "
          f"{info['seconds']:.2f} s)" + (f"; sequence file {out}/sequence.{args.format}" if sequence else "")
          + (" with their generated label maps (*_labels)" if result.labels is not None else ""))
    if not getattr(args, "quiet", False):
        print(json.dumps({k: info[k] for k in ("mode", "fp32_retries")}))
    return 0


def _invert(args: argparse.Namespace) -> int:
    """`--mode invert`: reconstruction, latents.npz and report.json in an atomically written folder."""
    from VolGANCore.atomic import atomic_directory, atomic_write_json
    from VolGANCore.cli import progress_from_args
    from VolGANCore.errors import VolGANError
    from VolGANCore.io import read_volume, write_volume

    from .invert import invert

    if not args.target:
        raise VolGANError("--mode invert: give --target VOLUME")
    result = invert(args.checkpoint, read_volume(args.target), space=args.invert_space, steps=args.invert_steps,
                    seed=args.seed, resample=args.resample, device=args.device, progress=progress_from_args(args))
    with atomic_directory(args.out, overwrite=args.overwrite) as tmp:
        write_volume(result.volume, tmp / f"reconstruction.{args.format}")
        np.savez(tmp / "latents.npz", **result.latents_dict(), **{f"noise{i}": n for i, n in enumerate(result.noise)})
        atomic_write_json(tmp / "report.json", {"target": str(args.target), **result.info,
                                                "mse_history_every_10_steps": result.history})
    i = result.info
    print(f"inverted {args.target} into {i['space']}: PSNR {i['psnr_db']:.2f} dB, NCC {i['ncc']:.4f}, "
          f"RMSE {i['rmse_physical']:.4g} {i['units']}" + (f" ({i['resampled']})" if i["resampled"] else "")
          + f"; wrote {args.out}")
    return 0


def _cmd_steer(args: argparse.Namespace) -> int:
    from VolGANCore.atomic import atomic_directory, atomic_write_json
    from VolGANCore.cli import progress_from_args
    from VolGANCore.io import write_volume

    from VolGANCore import InputFileError

    from .checkpoint import read_config
    from .generate import read_latents
    from .steer import parse_targets, plot_trajectories, steer, steering_support

    targets, changes = parse_targets(args.target + args.change)
    config = read_config(args.checkpoint)
    supported, note = steering_support(config)   # from the config alone, before any work
    if not supported:
        raise InputFileError(args.checkpoint, note, "steer a trabecular-bone (spongiosa) model")
    latents = read_latents(args.from_latents, int(config["z_dim"]), "--from") if args.from_latents else None
    keep = tuple(args.keep) if args.keep is not None else ("TMD",)
    result = steer(args.checkpoint, targets, changes, n=args.n, seed=args.seed, latents=latents, steps=args.steps,
                   tolerance=args.tolerance, pool=args.pool, keep=keep, device=args.device,
                   progress=progress_from_args(args))
    with atomic_directory(args.out, overwrite=args.overwrite) as tmp:
        for i, v in enumerate(result.volumes):
            write_volume(v, tmp / f"steered_{i:04d}.{args.format}")
        np.savez(tmp / "latents.npz", z=result.latents.astype(np.float32))
        atomic_write_json(tmp / "report.json", {"info": result.info, "samples": result.rows})
        plot_trajectories(result, tmp / "trajectories.png")
    for w in result.info["warnings"]:
        print(f"volgan steer: warning: {w}", file=sys.stderr)
    print(f"{result.info['success_rate']:.0%} of {result.info['samples']} samples within "
          f"{args.tolerance:.0%} of every target (exact morphometry) in {result.info['seconds']:.1f} s; wrote {args.out}")
    return 0
