"""`volgan train` (and `torchrun ... -m VolGANCore.cli train` for several GPUs)."""

from __future__ import annotations

import argparse
import json
import os


def register(sub) -> None:
    from VolGANCore.names import FAKE_LABEL_INPUTS, LABEL_DECODINGS, PADDING_MODES

    from .presets import PRESETS

    p = sub.add_parser("train", help="train a GAN on a folder of volumes (resumable, AMP, DDP under torchrun)",
                       description="Train a GAN. Start several processes with "
                                   "`torchrun --nproc_per_node G -m VolGANCore.cli train ...` for multi-GPU.")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS), help="recipe (tiny-* run in minutes on CPU)")
    p.add_argument("--data", required=True, help="folder of training volumes (NIfTI/NRRD/MHA)")
    p.add_argument("--labels", help="label folder: bone masks for patch extraction, or labels for ROI centring")
    p.add_argument("--out", required=True, help="run folder (checkpoints, run.json, samples, TensorBoard)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], help="mixed precision (default: auto)")
    p.add_argument("--batch", type=int, help="volumes per step and GPU")
    p.add_argument("--accumulate", type=int, help="gradient-accumulation micro-batches per step")
    p.add_argument("--kimg", type=float, help="training length in thousands of images")
    p.add_argument("--snapshot-kimg", type=float, help="checkpoint interval in kimg")
    p.add_argument("--phase-kimg", type=float,
                   help="progressive presets: kimg per resolution level (half fade-in, half stabilisation)")
    p.add_argument("--padding", choices=PADDING_MODES,
                   help="progressive presets: padding of the generator's 3×3×3 convs (zeros as published; "
                        "circular avoids border frames in stationary textures, docs/training.md)")
    p.add_argument("--fake-labels", choices=FAKE_LABEL_INPUTS,
                   help="joint image + label presets: what the discriminator sees of the generated labels "
                        "(straight-through one-hot, the presets' choice, or softmax; docs/joint-generation.md)")
    p.add_argument("--label-decoding", choices=LABEL_DECODINGS,
                   help="joint image + label presets: how class scores become labels (argmax, the presets' choice, "
                        "or foreground first; recorded with the model; docs/joint-generation.md)")
    p.add_argument("--r1-gamma", type=float,
                   help="StyleGAN2 presets: R1 weight γ (StyleGAN2-ADA's rule of thumb: 0.0002 × voxels / batch)")
    p.add_argument("--variant-weight", type=float,
                   help="conditional *-labels presets: weight of the generator's variant-consistency term "
                        "(the variant its own labels show vs the one asked for; 0 turns it off)")
    p.add_argument("--variant-margin", type=float,
                   help="with --variant-weight: a hinge that stops pushing once a segment scores beyond 0.5 ± M "
                        "(default 0: cross-entropy)")
    p.add_argument("--variant-segments",
                   help="with --variant-weight: the segments the term scores, comma-separated (default: all 8, "
                        "L-A1,Acom,3rd-A2,R-A1,L-Pcom,L-P1,R-P1,R-Pcom; leave out those the resolution cannot draw)")
    p.add_argument("--diversity-weight", type=float,
                   help="StyleGAN2 presets: weight of a term against mode collapse (fakes of a batch that correlate "
                        "more than reals do; 0 turns it off; docs/joint-generation.md)")
    p.add_argument("--diversity-start-kimg", type=float,
                   help="with --diversity-weight: no diversity term before this many thousand images (default 0)")
    p.add_argument("--lr-g", type=float, help="generator learning rate (preset value otherwise)")
    p.add_argument("--lr-d", type=float, help="discriminator learning rate (preset value otherwise)")
    p.add_argument("--ema-kimg", type=float, help="half-life of the generator's moving average in kimg")
    p.add_argument("--metrics-kimg", type=float,
                   help="quick-metrics interval in kimg (picks the best checkpoint; 0 = off; presets: every snapshot)")
    p.add_argument("--metrics-track", choices=["fd_quick", "morph_w1"],
                   help="quick metric that picks the best checkpoint (default fd_quick; morph_w1: bone presets)")
    p.add_argument("--inception-weights", help="pytorch-fid Inception weights file for the quick Fréchet distance")
    p.add_argument("--medicalnet-weights", help="MedicalNet resnet_10_23dataset.pth for the quick Fréchet distance")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests)")
    p.set_defaults(func=_cmd_train)

    e = sub.add_parser("export", help="write a trained generator as a release model (.vgan + model card)",
                       description="Keep the EMA generator of a run's best (or newest) checkpoint, drop the "
                                   "discriminator and optimiser state, and write a model card quoting the run's "
                                   "commands, quick metrics and log.")
    e.add_argument("source", help="run folder (volgan train --out) or one checkpoint file")
    e.add_argument("--out", required=True, help="model file to write (.vgan); the card goes beside it")
    e.add_argument("--which", choices=["best", "latest"], default="best",
                   help="from a run folder: best by the tracked quick metric (default) or the newest checkpoint")
    e.add_argument("--name", help="model name for the config and card")
    e.add_argument("--description", help="one paragraph for the model card")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.set_defaults(func=_cmd_export)


def _cmd_train(args: argparse.Namespace) -> int:
    from VolGANCore.cli import progress_from_args

    from .train import settings_from_preset, train

    settings = settings_from_preset(args.preset, amp=args.amp, batch=args.batch, accumulate=args.accumulate,
                                    kimg=args.kimg, snapshot_kimg=args.snapshot_kimg, phase_kimg=args.phase_kimg,
                                    padding=args.padding, fake_labels=args.fake_labels,
                                    label_decoding=args.label_decoding, r1_gamma=args.r1_gamma,
                                    variant_weight=args.variant_weight, variant_margin=args.variant_margin,
                                    variant_segments=args.variant_segments, diversity_weight=args.diversity_weight,
                                    diversity_start_kimg=args.diversity_start_kimg,
                                    lr_g=args.lr_g, lr_d=args.lr_d, ema_kimg=args.ema_kimg, seed=args.seed,
                                    metrics_kimg=args.metrics_kimg, metrics_track=args.metrics_track,
                                    metrics_inception_weights=args.inception_weights,
                                    metrics_medicalnet_weights=args.medicalnet_weights)
    rank = int(os.environ.get("RANK", "0"))
    result = train(args.data, args.out, settings, labels=args.labels, resume=args.resume, device=args.device,
                   max_steps=args.max_steps, progress=progress_from_args(args) if rank == 0 else None,
                   log=print)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or rank == 0:
        print(json.dumps(result))
    return 0 if result["state"] in ("finished", "stopped") else 1


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import describe, export_model

    path = export_model(args.source, args.out, which=args.which, name=args.name, description=args.description,
                        overwrite=args.overwrite)
    print(describe(path))
    return 0
