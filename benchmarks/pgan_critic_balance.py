#!/usr/bin/env python
"""Experiment: does the spongiosa PGAN's critic keep up with its generator, and does its generator paint frames?

Not a throughput benchmark (``run.py`` does not pick it up): it reproduces the observation behind the advice in
docs/training.md that short CPU runs of ``tiny-spongiosa`` should give the critic a larger learning rate than
the generator. It trains the published 32³ networks at their 16³ level from scratch (cheap on a CPU), with the
trainer's own :class:`GANTrainerLib.losses.WGANGPLoss`, on bone phantoms in the trainer's window, and prints
every ``--every`` steps:

- ``wdist``: the critic's Wasserstein estimate E[D(real)] − E[D(fake)] at the critic step (before its update).
  A healthy critic keeps it positive; negative means the generator's last step already fooled it.
- ``spread``: voxel-wise SD across 64 generated volumes over the same for real ones (``spread_ratio`` of the
  quick metrics); it falls towards 0 when the generator collapses.
- ``frame``: the quick metrics' ``frame_index`` of the same 64 volumes: how much more their intensity mean and SD
  change with distance to the border than the real patches' do (in real SDs); border frames raise it.

A variant is ``LR_G:LR_D`` or ``LR_G:LR_D:PADDING`` (the generator's ``padding_mode``, zeros by default).

    .venv/bin/python benchmarks/pgan_critic_balance.py                          # both variants, 300 steps
    .venv/bin/python benchmarks/pgan_critic_balance.py --variants 1e-3:1e-3 --steps 600
    .venv/bin/python benchmarks/pgan_critic_balance.py --variants 1e-4:1e-3:zeros 1e-4:1e-3:replicate \
        --steps 600 --every 100

Measured 2026-11-22 with the defaults (2-core CPU, one thread, 512 patches, bf16 autocast, batch 16, 300 steps,
about 165 s per variant): with the published 1e-3 for both, ``wdist`` stayed negative (−0.96 … −1.56) and
``spread`` fell 1.45 → 0.46; with G 1e-4 / D 1e-3, ``wdist`` stayed positive (+24.6 falling to +4.0) and
``spread`` fell from the untrained 3.06 towards the data's 1 (1.18 at step 300). An fp32 run of the 1:1 variant
(an earlier version of this harness) collapsed the same way (spread 1.49 → 0.46).

Border frames, measured 2026-11-22 with the third command (same machine, G 1e-4 / D 1e-3, 600 steps, about
350 s per variant, the two run side by side): with the published zero padding ``frame`` fell from 0.81 (step 100)
to 0.28 (step 600) and the samples show square frames; with ``replicate`` it stayed at 0.04–0.08 from step 100
on, while ``spread`` (0.84 vs 0.88 at step 600) and ``wdist`` (+3.7 vs +4.0) were those of the zero-padded run.
A second measurement on 2026-11-23 added ``circular`` (three variants side by side, ``--every 300``): ``frame`` at
steps 300 / 600 was 0.39 / 0.27 (zeros), 0.048 / 0.047 (replicate) and 0.017 / 0.034 (circular), ``spread`` at
step 600 0.88, 0.81 and 0.90. Mid-slices at step 600: zeros shows a rim, replicate streaks running in from the
faces (a copied border value is copied again by every following layer), circular neither. Repeated bf16 runs
agreed here only to about the second digit (zeros at step 600: 0.278 and 0.275); the test suite checks that a
seeded fp32 run repeats exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from GANTrainerLib.data import normalise
from GANTrainerLib.losses import WGANGPLoss
from GANTrainerLib.evaluation.border import border_profile, frame_index
from GANTrainerLib.presets import get_preset
from VolGANCore import read_volume
from VolGANCore.env import conv_kernels
from VolumetricGANLib.networks.pgan import ProgressiveDiscriminator, ProgressiveGenerator
from VolumetricGANLib.phantoms import write_bone_dataset

WINDOW = tuple(get_preset("tiny-spongiosa")["preprocess"]["window"])  # the trainer's window → [-1, 1]


def load_patches(folder: Path) -> torch.Tensor:
    """The phantom patches as the trainer prepares them: the spongiosa window mapped to [-1, 1], clipped."""
    files = sorted((folder / "images").glob("*.nii.gz"))
    vols = [normalise(read_volume(p), "window", window=WINDOW).array for p in files]
    return torch.from_numpy(np.stack(vols))[:, None]


def run(reals: torch.Tensor, lr_g: float, lr_d: float, steps: int, batch: int, every: int, level: float,
        amp: bool, seed: int, padding: str = "zeros") -> list[tuple[int, float, float, float]]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    G, D = ProgressiveGenerator(3, 1, padding_mode=padding), ProgressiveDiscriminator(3, 1)
    opt_g = torch.optim.Adam(G.parameters(), lr_g, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr_d, betas=(0.0, 0.99))
    loss = WGANGPLoss(G, D)
    factor = 2 ** (G.max_res - int(level))
    data = F.avg_pool3d(reals, factor) if factor > 1 else reals

    def z(n):
        v = torch.randn(n, G.z_dim)
        return v / v.norm(dim=1, keepdim=True)

    def autocast():
        return torch.autocast("cpu", torch.bfloat16) if amp else contextlib.nullcontext()

    real_spread = data[:64, 0].std(0).mean().item()
    real_profile = border_profile(data[:64, 0].numpy())
    rows = []
    with conv_kernels("cpu", torch.bfloat16 if amp else None):   # as the training loop: right bf16 gradients
        for step in range(1, steps + 1):
            D.requires_grad_(True)
            opt_d.zero_grad(set_to_none=True)
            with autocast():
                l_d, st = loss.discriminator_loss(data[rng.choice(len(data), batch, replace=False)], z(batch), step,
                                                  progress=level)
            l_d.backward()
            opt_d.step()
            D.requires_grad_(False)
            opt_g.zero_grad(set_to_none=True)
            with autocast():
                l_g, _ = loss.generator_loss(z(batch), step, progress=level)
            l_g.backward()
            opt_g.step()
            if step % every == 0:
                with torch.no_grad():
                    fake = G(z(64), progress=level).float()[:, 0]
                spread = fake.std(0).mean().item() / real_spread
                rows.append((step, float(st["wdist"]), spread, frame_index(real_profile, border_profile(fake.numpy()))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=["1e-3:1e-3", "1e-4:1e-3"],
                    help="LR_G:LR_D[:PADDING] (PADDING: the generator's padding_mode, zeros by default)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--level", type=float, default=2.0, help="progressive level to train at (2 = 16³)")
    ap.add_argument("--patches", type=int, default=512, help="phantom patches to train on")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_bone_dataset(Path(tmp) / "bone", n=max(1, args.patches // 8), seed=args.seed, patches=8,
                                    bvtv=0.2, bvtv_sd=0.05, tbth_sd_mm=0.04, da_sd=0.1)
        reals = load_patches(folder)
    print(f"{len(reals)} phantom patches, level {args.level:g}, batch {args.batch}, "
          f"{'fp32' if args.fp32 else 'bf16 autocast'}, {args.threads} thread(s)")
    for variant in args.variants:
        lr_g, lr_d, *pad = variant.split(":")
        padding = pad[0] if pad else "zeros"
        t0 = time.perf_counter()
        rows = run(reals, float(lr_g), float(lr_d), args.steps, args.batch, args.every, args.level, not args.fp32,
                   args.seed, padding)
        print(f"\nG {float(lr_g):g} / D {float(lr_d):g}, G padding {padding} ({time.perf_counter() - t0:.0f} s)\n"
              "| step | wdist | spread | frame |\n|---|---|---|---|")
        for step, wdist, spread, frames in rows:
            print(f"| {step} | {wdist:+.2f} | {spread:.2f} | {frames:.3f} |")


if __name__ == "__main__":
    main()
