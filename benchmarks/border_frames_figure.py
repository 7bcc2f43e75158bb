#!/usr/bin/env python
"""Figure: border frames of spongiosa generators — real patches next to models, with their border profiles.

Not a throughput benchmark (``run.py`` does not pick it up). For each model it draws mid-slices of ``--n-show``
samples (seed 0, latents on the hypersphere as in training) under the same number of real patches, and plots the
shell profile of :mod:`GANTrainerLib.evaluation.border` (intensity mean against the distance to the nearest
face) of 64 samples of each against 64 real patches, with the frame index in the legend. The real patches are
prepared as the trainer does (the spongiosa window mapped to [-1, 1]), so generator outputs compare directly.

    .venv/bin/python benchmarks/border_frames_figure.py --data bone2000/images \\
        --model "zeros (first shipped)=zeros.vgan" --model "replicate=replicate.vgan" \\
        --model "circular (shipped)=VolumetricGAN/Resources/Models/tiny-spongiosa.vgan" \\
        --out Resources/Screenshots/border_frames.png

(The README figure: ``zeros.vgan`` is the first shipped tiny-spongiosa.vgan, in git history before 2026-11-23;
``replicate.vgan`` the export of the replicate run in docs/training.md, *Border frames*.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from GANTrainerLib.data import normalise
from GANTrainerLib.evaluation.border import border_profile, frame_index
from GANTrainerLib.presets import get_preset
from VolGANCore import read_volume
from VolGANCore.dataset import list_volumes
from VolumetricGANLib.checkpoint import load_generator

WINDOW = tuple(get_preset("tiny-spongiosa")["preprocess"]["window"])  # the trainer's window → [-1, 1]


def real_patches(folder: Path, n: int, seed: int) -> np.ndarray:
    files = list_volumes(folder)
    pick = np.sort(np.random.default_rng(seed).choice(len(files), min(n, len(files)), replace=False))
    return np.stack([normalise(read_volume(files[i]), "window", window=WINDOW).array for i in pick])


def samples(path: str, n: int, seed: int) -> np.ndarray:
    G = load_generator(path).generator
    G.eval()
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    z = z / z.norm(dim=1, keepdim=True)
    with torch.inference_mode():
        return G(z).float()[:, 0].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder of real patches (the training data)")
    ap.add_argument("--model", action="append", required=True, help="LABEL=PATH of a .vgan (repeatable)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--n-show", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = real_patches(Path(args.data), 64, args.seed)
    ref = border_profile(real)
    columns = [("real phantom patches", real, None)]
    for spec in args.model:
        label, _, path = spec.partition("=")
        fake = samples(path, 64, args.seed)
        columns.append((label, fake, frame_index(ref, border_profile(fake))))
    k = args.n_show
    fig = plt.figure(figsize=(2.3 * len(columns) + 3.6, 2.3 * k))
    grid = fig.add_gridspec(k, len(columns) + 2)
    for c, (label, vols, fi) in enumerate(columns):
        for r in range(k):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(vols[r, vols.shape[1] // 2], cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label if fi is None else f"{label}\nframe index {fi:.3f}", fontsize=8)
    ax = fig.add_subplot(grid[:, len(columns):])
    for label, vols, fi in columns:
        mean, _, _ = border_profile(vols)
        ax.plot(np.arange(len(mean)), mean, "--" if fi is None else "-", marker="o", ms=3,
                label=label if fi is None else f"{label} ({fi:.3f})")
    ax.set_xlabel("distance to the nearest face [voxels]", fontsize=8)
    ax.set_ylabel("mean intensity in the shell (network units)", fontsize=8)
    ax.set_title("border profile, 64 volumes each", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}: " + ", ".join(f"{label} {fi:.3f}" for label, _, fi in columns if fi is not None))


if __name__ == "__main__":
    main()
