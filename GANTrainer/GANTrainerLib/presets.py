"""Training presets: the anchors' published recipes, our improved defaults, and tiny CPU presets.

A preset is a plain dict of :class:`GANTrainerLib.train.TrainSettings` fields; command-line options
override single fields. Sources of the anchor numbers: docs/training.md, "The anchors' recipes" (Aydin et al. 2024,
the authors' ``stylegan2_pytorch.py`` README recipe; Iarussi et al. 2020, the authors' training script).
"""

from __future__ import annotations

import copy
from typing import Any

from VolGANCore import VolGANError

__all__ = ["PRESETS", "get_preset"]

_COW_INTENSITY = {"network_range": [-1.0, 1.0], "physical_range": [0.0, 1.0], "units": "min-max normalised TOF",
                  "clip": False}
_BONE_INTENSITY = {"network_range": [-1.0, 1.0], "physical_range": [-350.0, 1100.0],
                   "units": "MICCAI 2020 density units", "clip": False}

PRESETS: dict[str, dict[str, Any]] = {
    # Our default for CoW angiograms: StyleGAN2-ADA-style hyper-parameters in 3-D, anisotropic constant.
    "cow-stylegan": dict(
        family="stylegan2-3d", anatomy="circle-of-willis", label_scheme=None,
        generator=dict(z_dim=512, w_dim=512, output_shape=[32, 128, 128], base_shape=[2, 8, 8], channel_base=512,
                       channel_max=256, mapping_layers=8, mapping_lr_multiplier=0.01, architecture="skip"),
        discriminator=dict(img_shape=[32, 128, 128], base_shape=[2, 8, 8], channel_base=512, channel_max=256,
                           architecture="resnet", mbstd_group_size=4),
        batch=8, accumulate=1, lr_g=0.0025, lr_d=0.0025, betas=[0.0, 0.99], ema_kimg=10.0, ema_rampup=0.05,
        loss=dict(kind="stylegan2", loss="logistic", r1_gamma=1.0, r1_interval=16, pl_weight=2.0, pl_interval=4,
                  style_mixing_prob=0.9),
        augment=dict(p=0.0, translation=0.125, cutout=0.5, flip_axes=[2], brightness=0.1, contrast=0.2,
                     rotation_deg=5.0, scaling=0.05),
        ada_target=0.6, ada_kimg=100.0,
        preprocess=dict(roi_shape=[32, 128, 128], roi_centre="centre", intensity="minmax"),
        intensity=_COW_INTENSITY, kimg=5000.0, snapshot_kimg=50.0, sample_kimg=10.0, metrics_kimg=50.0,
    ),
    # The CoW anchor's recipe (Aydin 2024 README): hinge loss, Adam (0.5, 0.9) lr 4e-5 with TTUR 1.5,
    # batch 8 × 4 accumulation, EMA 0.995, DiffAugment translation+cutout+contrast at p = 0.5, L-R flips,
    # one-centred gradient penalty every 16 steps (here: R1 every 16, scaled), path length every 32 after 5k.
    "cow-stylegan-anchor": dict(
        family="stylegan2-3d", anatomy="circle-of-willis", label_scheme=None,
        generator=dict(z_dim=512, w_dim=512, output_shape=[32, 128, 128], base_shape=[4, 4, 4],
                       up_factors=[[2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]], channel_base=512,
                       channel_max=512, mapping_layers=8, mapping_lr_multiplier=0.1, architecture="skip"),
        discriminator=dict(img_shape=[32, 128, 128], base_shape=[4, 4, 4],
                           down_factors=[[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                           channel_base=512, channel_max=512, architecture="resnet", mbstd_group_size=4),
        batch=8, accumulate=4, lr_g=4e-5, lr_d=6e-5, betas=[0.5, 0.9], ema_beta=0.995,
        loss=dict(kind="stylegan2", loss="hinge", r1_gamma=10.0, r1_interval=16, pl_weight=2.0, pl_interval=32,
                  pl_start_step=5000, style_mixing_prob=0.9),
        augment=dict(p=0.5, translation=0.125, cutout=0.5, flip_axes=[2], contrast=0.4),
        ada_target=None,
        preprocess=dict(roi_shape=[32, 128, 128], roi_centre="centre", intensity="minmax"),
        intensity=_COW_INTENSITY, kimg=5000.0, snapshot_kimg=50.0, sample_kimg=10.0, metrics_kimg=50.0,
    ),
    # Spongiosa: progressive WGAN-GP 4³ → 32³ as published (Adam 1e-3, β (0, 0.99), batch 16, GP 10,
    # drift 1e-3), with an EMA generator and adaptive augmentation added.
    "spongiosa-pgan": dict(
        family="pgan-3d", anatomy="spongiosa", label_scheme=None, latent="hypersphere",
        generator=dict(max_res=3, nch=1),
        discriminator=dict(max_res=3, nch=1, mbstd_group_size=0),
        batch=16, accumulate=1, lr_g=1e-3, lr_d=1e-3, betas=[0.0, 0.99], ema_kimg=1.0, ema_rampup=None,
        loss=dict(kind="wgan-gp", gp_lambda=10.0, drift=1e-3),
        augment=dict(p=0.0, translation=0.125, cutout=0.0, flip_axes=[0, 1, 2]),
        ada_target=None,
        progressive=dict(kimg_per_phase=60.0, fade_fraction=0.5),
        preprocess=dict(intensity="window", window=[-350.0, 1100.0]), patch_size=32,
        intensity=_BONE_INTENSITY, kimg=480.0, snapshot_kimg=20.0, sample_kimg=5.0, metrics_kimg=20.0,
    ),
}

# Every preset measures the quick metrics (GANTrainerLib.quick_metrics) at every periodic snapshot
# (metrics_kimg = snapshot_kimg), so each such checkpoint competes for "best".
# Tiny presets: minutes on a CPU, first checkpoint within a minute (snapshot by wall time too).
PRESETS["tiny-cow"] = dict(
    copy.deepcopy(PRESETS["cow-stylegan"]),
    generator=dict(z_dim=64, w_dim=64, output_shape=[8, 32, 32], base_shape=[2, 8, 8], channel_base=32,
                   channel_max=32, mapping_layers=2, mapping_lr_multiplier=0.01, architecture="skip"),
    discriminator=dict(img_shape=[8, 32, 32], base_shape=[2, 8, 8], channel_base=32, channel_max=32,
                       architecture="resnet", mbstd_group_size=2),
    preprocess=dict(roi_shape=[32, 128, 128], roi_centre="centre", intensity="minmax", downsample=4),
    batch=4, lr_g=0.002, lr_d=0.002, ema_kimg=0.5, ema_rampup=0.05, kimg=2.0, snapshot_kimg=0.5, metrics_kimg=0.5,
    sample_kimg=0.5, snapshot_minutes=1.0,
    loss=dict(kind="stylegan2", loss="logistic", r1_gamma=0.5, r1_interval=4, pl_weight=0.0, style_mixing_prob=0.5),
)
# tiny-spongiosa gives the critic 5× the generator's rate: at the published 1:1 (1e-3) short CPU runs collapsed
# at 32³ (docs/training.md, "Critic balance"; benchmarks/pgan_critic_balance.py). Its generator pads circularly
# (a stationary texture has no border): with zeros short runs paint square frames, with copies of the border
# streaks (docs/training.md, "Border frames").
PRESETS["tiny-spongiosa"] = dict(
    copy.deepcopy(PRESETS["spongiosa-pgan"]),
    generator=dict(PRESETS["spongiosa-pgan"]["generator"], padding_mode="circular"),
    lr_g=2e-4, lr_d=1e-3, batch=8, progressive=dict(kimg_per_phase=0.4, fade_fraction=0.5), kimg=2.0,
    snapshot_kimg=0.5, metrics_kimg=0.5, sample_kimg=0.5, snapshot_minutes=1.0, ema_kimg=0.1,
)


# Joint image + label CoW generation (issue 21): the generator also emits the 14 TopCoW class channels
# (background + 13 arteries) and is conditioned on the 8-entry CoW variant vector; the discriminator sees the
# intensity and the class probabilities (GANTrainerLib.joint). Training needs a label folder.
_JOINT = dict(label_classes=14, c_dim=8)
# D sees the fakes' labels as straight-through one-hot maps: with the softmax a CPU run labelled its vessels at
# 2 kimg and lost every label by 3 kimg, its background logit saturated (docs/joint-generation.md, "Proof on the CPU").
PRESETS["cow-stylegan-labels"] = dict(
    copy.deepcopy(PRESETS["cow-stylegan"]), label_scheme="topcow13",
    generator=dict(PRESETS["cow-stylegan"]["generator"], **_JOINT),
    discriminator=dict(PRESETS["cow-stylegan"]["discriminator"], img_channels=15, c_dim=8),
    loss=dict(PRESETS["cow-stylegan"]["loss"], fake_labels="straight-through"),
)
# 16×64×64 at 1.2 mm from the 0.6 mm phantoms: labels reduced by block majority, in step with the averaged image,
# keeping every class present (the majority alone drops the Acom from 22 % of the phantoms that have one, and the
# Pcom from 7–10 %, so their variant vectors, the conditioning, would say absent where the image shows the artery).
# The discriminator keeps at least 16 channels per level: tiny-cow's widths halve to 4 at 16×64×64, and a first
# layer mapping 15 input channels (intensity + 14 classes) to 4 checked where labels lie but barely which artery
# they name; with 16 a CPU run reached in 4 kimg the labels the narrow one had at 18 (docs/joint-generation.md).
# R1 at StyleGAN2-ADA's rule, 0.0002 × voxels / batch = 3.3 (tiny-cow's 0.5 fits its 8×32×32): at 0.5 the wide
# discriminator won ever more clearly and the samples drifted towards one (between-sample correlation 0.65 → 0.77
# from 4 to 6 kimg); at 3.3 a CPU run kept 0.64 at 6 kimg with more classes and closer class fractions.
PRESETS["tiny-cow-labels"] = dict(
    copy.deepcopy(PRESETS["tiny-cow"]), label_scheme="topcow13",
    generator=dict(PRESETS["tiny-cow"]["generator"], output_shape=[16, 64, 64], base_shape=[2, 8, 8], **_JOINT),
    discriminator=dict(PRESETS["tiny-cow"]["discriminator"], img_shape=[16, 64, 64], base_shape=[2, 8, 8],
                       img_channels=15, c_dim=8, channel_min=16),
    preprocess=dict(roi_shape=[32, 128, 128], roi_centre="centre", intensity="minmax", downsample=2,
                    label_downsample="majority-present"),
    loss=dict(PRESETS["tiny-cow"]["loss"], fake_labels="straight-through", r1_gamma=3.3),
)


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of preset ``name``; a readable error listing the presets otherwise."""
    try:
        return copy.deepcopy(PRESETS[name])
    except KeyError:
        raise VolGANError(f"unknown preset '{name}' (choose one of {', '.join(sorted(PRESETS))})") from None
