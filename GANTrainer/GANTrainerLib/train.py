"""The training loop for both GAN families: AMP, accumulation, EMA, ADA, lazy regularisers, DDP, resume.

One function, :func:`train`, drives a run folder (:class:`GANTrainerLib.run.TrainingRun`). The loop
knows nothing about architectures (networks come from the checkpoint family registry) and the loss objects
own their regularisation schedules (docs/training.md, "The loop"). One iteration (D step, G step, EMA and ADA updates) is
:func:`train_iteration` over the parts made by :func:`build_train_parts`, so benchmarks time the same code.
The loop (``_train``) reads top to bottom: setup, resume, the iterations with their reports (scalars, samples,
quick metrics, checkpoints), the final snapshot. What a checkpoint saves to resume is defined in one place,
:class:`TrainingState` (``capture`` / ``restore``). Process-group helpers live in :mod:`GANTrainerLib.distributed`,
the optimiser step that skips non-finite losses in :mod:`GANTrainerLib.optim`.

Mixed precision: ``amp="auto"`` is bf16 autocast on GPUs that support it (no scaler needed), fp16 with one
GradScaler *per optimiser* otherwise (the CoW anchor shared one between G and D); the mapping network runs
in fp32 (the generator casts its own inputs) and loss reductions are fp32 (the losses cast logits). A
non-finite loss skips that optimiser step (and halves the fp16 loss scale); ``max_bad_steps`` consecutive
failures stop the run with a message — it never trains on NaNs silently.

Checkpoints every ``snapshot_kimg`` (and at least every ``snapshot_minutes``) and when stopped by
SIGINT/SIGTERM; ``resume=True`` continues from the newest checkpoint of the run folder with the same step
count, optimiser and scaler states, RNG streams, data order, EMA and augmentation probability — on CPU a
resumed run is bit-for-bit the uninterrupted one (tested).

Multi-GPU: start with ``torchrun --nproc_per_node G -m VolGANCore.cli train ...``: each rank seeds its own stream,
gradients are all-reduced (sum / world) after every backward, rank 0 alone writes files
(:mod:`GANTrainerLib.distributed`). Works with the gloo backend on CPU (tested with 2 processes).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

from VolGANCore import VolGANError
from VolGANCore.env import amp_dtype, conv_kernels, onednn_off_for_training
from VolGANCore.progress import CancelToken, Progress, ProgressCallback

from .distributed import Dist, all_reduce_grads, any_rank, broadcast_params, gather_states, init_distributed
from .optim import finite_step

__all__ = ["TrainSettings", "train", "settings_from_preset", "TrainParts", "build_train_parts", "train_iteration",
           "TrainingState"]


@dataclasses.dataclass
class TrainSettings:
    """Every knob of a run (presets in :mod:`GANTrainerLib.presets`); JSON-serialisable."""

    family: str                                  # "stylegan2-3d" or "pgan-3d"
    generator: dict                              # generator constructor kwargs
    discriminator: dict                          # discriminator constructor kwargs
    batch: int = 8                               # volumes per optimiser step and rank (before accumulation)
    accumulate: int = 1                          # micro-batches per optimiser step
    lr_g: float = 0.0025                         # generator learning rate
    lr_d: float = 0.0025                         # discriminator learning rate (TTUR: different from lr_g)
    betas: tuple = (0.0, 0.99)                   # Adam betas
    ema_kimg: Optional[float] = 10.0             # EMA half-life in thousands of images (None: use ema_beta)
    ema_rampup: Optional[float] = 0.05           # EMA half-life ≤ ramp-up × images seen (None: no ramp)
    ema_beta: Optional[float] = None             # fixed EMA decay per step (the CoW anchor's 0.995)
    loss: dict = dataclasses.field(default_factory=dict)      # {"kind": "stylegan2"|"wgan-gp", ...kwargs}
    augment: dict = dataclasses.field(default_factory=dict)   # DiffAugment3D kwargs
    ada_target: Optional[float] = None           # adaptive augmentation target r_t (None: fixed p)
    ada_kimg: float = 100.0                      # ADA speed: p can move 0 → 1 in this many kimg
    progressive: Optional[dict] = None           # {"kimg_per_phase", "fade_fraction"} for pgan-3d
    preprocess: dict = dataclasses.field(default_factory=dict)  # GANTrainerLib.data.Preprocess kwargs
    patch_size: Optional[int] = None             # cut cubes of this size inside the label mask (bone)
    intensity: dict = dataclasses.field(default_factory=dict)  # network → physical units (checkpoint)
    anatomy: str = ""
    label_scheme: Optional[str] = None
    latent: str = "normal"                       # "normal" or "hypersphere"
    kimg: float = 1000.0                         # training length in thousands of real images shown to D
    snapshot_kimg: float = 50.0                  # checkpoint interval
    snapshot_minutes: Optional[float] = None     # also checkpoint at least this often (wall clock)
    sample_kimg: float = 10.0                    # montage interval
    metrics_kimg: Optional[float] = None         # quick-metrics interval (GANTrainerLib.quick_metrics); None/0: off
    metrics_n: int = 64                          # real and generated volumes in the quick Fréchet distance
    metrics_morph_n: int = 16                    # bone presets: patches per set in the morphometric W1
    metrics_track: str = "fd_quick"              # the quick metric that picks the best checkpoint (lower is better)
    metrics_budget: Optional[float] = 0.1        # skip due evaluations while they took > this share of the time
    metrics_inception_weights: Optional[str] = None   # pytorch-fid Inception weights file (slice features)
    metrics_medicalnet_weights: Optional[str] = None  # MedicalNet ResNet-10 weights file (volume features; preferred)
    log_steps: int = 10                          # scalar logging interval (one host sync per interval)
    amp: str = "auto"                            # "auto" | "bf16" | "fp16" | "off"
    channels_last: bool = True                   # channels-last-3d weights (CPU and CUDA) and CUDA batches
    seed: int = 0
    keep_last: int = 3                           # checkpoints kept besides the best
    max_bad_steps: int = 20                      # consecutive non-finite steps before giving up
    preset: str = ""

    def to_dict(self) -> dict:
        return json_clean(dataclasses.asdict(self))


def json_clean(obj):
    return json.loads(json.dumps(obj))


def settings_from_preset(name: str, **overrides: Any) -> TrainSettings:
    """A preset with field overrides (``None`` overrides are ignored, so CLI defaults can pass through)."""
    from .presets import get_preset

    cfg = get_preset(name)
    cfg["preset"] = name
    phase_kimg = overrides.pop("phase_kimg", None)
    padding = overrides.pop("padding", None)
    fake_labels = overrides.pop("fake_labels", None)
    label_decoding = overrides.pop("label_decoding", None)
    r1_gamma = overrides.pop("r1_gamma", None)
    variant_weight = overrides.pop("variant_weight", None)
    variant_margin = overrides.pop("variant_margin", None)
    variant_segments = overrides.pop("variant_segments", None)
    diversity_weight = overrides.pop("diversity_weight", None)
    diversity_start = overrides.pop("diversity_start_kimg", None)
    for key in ("lr_g", "lr_d", "ema_kimg"):  # command-line numbers that must be positive
        value = overrides.get(key)
        if value is not None and not float(value) > 0:
            raise VolGANError(f"--{key.replace('_', '-')} must be > 0 (got {value})")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if phase_kimg is not None:
        if not cfg.get("progressive"):
            raise VolGANError(f"--phase-kimg sets the progressive-growing schedule; preset '{name}' "
                              f"({cfg.get('family')}) does not grow progressively")
        if not phase_kimg > 0:
            raise VolGANError(f"--phase-kimg must be > 0 (got {phase_kimg})")
        cfg["progressive"] = dict(cfg["progressive"], kimg_per_phase=float(phase_kimg))
    if padding is not None:
        from VolumetricGANLib.networks.pgan import FAMILY as PGAN, PADDING_MODES

        if cfg.get("family") != PGAN:
            raise VolGANError(f"--padding sets the progressive generator's conv padding; preset '{name}' "
                              f"({cfg.get('family')}) is not a {PGAN} preset")
        if padding not in PADDING_MODES:
            raise VolGANError(f"--padding {padding!r}: choose one of {', '.join(PADDING_MODES)}")
        generator = {k: v for k, v in cfg["generator"].items() if k != "padding_mode"}
        cfg["generator"] = generator if padding == "zeros" else dict(generator, padding_mode=padding)
    if fake_labels is not None:
        from VolGANCore.names import FAKE_LABEL_INPUTS

        _joint_only(cfg, name, "--fake-labels sets what the discriminator sees of generated labels")
        if fake_labels not in FAKE_LABEL_INPUTS:
            raise VolGANError(f"--fake-labels {fake_labels!r}: choose one of {', '.join(FAKE_LABEL_INPUTS)}")
        cfg["loss"] = dict(cfg.get("loss") or {}, fake_labels=fake_labels)
    if label_decoding is not None:
        from VolGANCore.names import LABEL_DECODINGS

        _joint_only(cfg, name, "--label-decoding sets how generated class scores become labels")
        if label_decoding not in LABEL_DECODINGS:
            raise VolGANError(f"--label-decoding {label_decoding!r}: choose one of {', '.join(LABEL_DECODINGS)}")
        generator = {k: v for k, v in cfg["generator"].items() if k != "label_decoding"}  # the default unwritten
        cfg["generator"] = generator if label_decoding == "argmax" else dict(generator, label_decoding=label_decoding)
    if r1_gamma is not None:
        kind = (cfg.get("loss") or {}).get("kind")
        if kind != "stylegan2":
            raise VolGANError(f"--r1-gamma sets the StyleGAN2 loss's R1 weight; preset '{name}' trains with {kind} "
                              "(its gradient penalty is the loss's own)")
        if not float(r1_gamma) >= 0:
            raise VolGANError(f"--r1-gamma must be ≥ 0 (got {r1_gamma}; 0 turns R1 off)")
        cfg["loss"] = dict(cfg["loss"], r1_gamma=float(r1_gamma))
    if variant_weight is not None:
        _joint_only(cfg, name, "--variant-weight weighs the generator's variant-consistency term")
        if not cfg["generator"].get("c_dim"):
            raise VolGANError(f"--variant-weight: preset '{name}' is not conditioned on the CoW variant")
        if not float(variant_weight) >= 0:
            raise VolGANError(f"--variant-weight must be ≥ 0 (got {variant_weight}; 0 turns the term off)")
        cfg["loss"] = dict(cfg["loss"], variant_weight=float(variant_weight))
    if variant_margin is not None:
        _needs_weight(cfg, "variant_weight", "--variant-margin shapes the variant-consistency term")
        if not 0 <= float(variant_margin) < 0.5:
            raise VolGANError(f"--variant-margin must be in [0, 0.5) (got {variant_margin}; 0: cross-entropy)")
        cfg["loss"] = dict(cfg["loss"], variant_margin=float(variant_margin))
    if variant_segments is not None:
        from VolGANCore.names import COW_VARIANT_SEGMENTS

        from .losses import segment_columns

        _needs_weight(cfg, "variant_weight", "--variant-segments picks what the variant-consistency term scores")
        names = [n.strip() for n in variant_segments.split(",")] if isinstance(variant_segments, str) \
            else [str(n) for n in variant_segments]
        try:
            columns = segment_columns(names)
        except ValueError:
            raise VolGANError(f"--variant-segments {','.join(names)}: name each segment once, comma-separated, "
                              f"from {','.join(COW_VARIANT_SEGMENTS)}") from None
        cfg["loss"] = dict(cfg["loss"], variant_segments=[COW_VARIANT_SEGMENTS[i] for i in columns])
    if diversity_weight is not None:
        kind = (cfg.get("loss") or {}).get("kind")
        if kind != "stylegan2":
            raise VolGANError(f"--diversity-weight weighs a term of the StyleGAN2 loss; preset '{name}' trains "
                              f"with {kind}")
        if not float(diversity_weight) >= 0:
            raise VolGANError(f"--diversity-weight must be ≥ 0 (got {diversity_weight}; 0 turns the term off)")
        cfg["loss"] = dict(cfg["loss"], diversity_weight=float(diversity_weight))
    if diversity_start is not None:
        _needs_weight(cfg, "diversity_weight", "--diversity-start-kimg delays the diversity term")
        if not float(diversity_start) >= 0:
            raise VolGANError(f"--diversity-start-kimg must be ≥ 0 (got {diversity_start})")
        cfg["loss"] = dict(cfg["loss"], diversity_start_kimg=float(diversity_start))
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise VolGANError(f"unknown training setting(s) {unknown}")
    return TrainSettings(**cfg)


def _needs_weight(cfg: dict, weight: str, what: str) -> None:
    """Refuse an option that shapes a loss term when the run does not switch that term on (``loss[weight]`` > 0)."""
    if not float((cfg.get("loss") or {}).get(weight, 0)) > 0:
        raise VolGANError(f"{what}: give it a --{weight.replace('_', '-')}")


def _joint_only(cfg: dict, name: str, what: str) -> None:
    """Refuse an option of joint image + label presets for a preset whose generator makes no labels."""
    if not (cfg.get("generator") or {}).get("label_classes"):
        raise VolGANError(f"{what}; preset '{name}' generates no labels (use a *-labels preset)")


# -- mixed precision -----------------------------------------------------------------------------------------
# -- the loop -------------------------------------------------------------------------------------------------
class _Phase:
    """Progressive-growing schedule: progress value (0 … max_res) as a function of images shown."""

    def __init__(self, settings: TrainSettings, max_res: int) -> None:
        prog = settings.progressive or {}
        self.kimg_per_phase = float(prog.get("kimg_per_phase", 0) or 0)
        self.fade = float(prog.get("fade_fraction", 0.5))
        self.max_res = max_res

    def progress(self, nimg: int) -> Optional[float]:
        if self.kimg_per_phase <= 0:
            return None
        phase_f = nimg / (self.kimg_per_phase * 1000.0)
        level = int(phase_f)
        within = phase_f - level
        # each level after the first: fade in during the first `fade` of its phase, then stabilise
        if level == 0:
            return 0.0
        if level > self.max_res:
            return float(self.max_res)
        # level L ≥ 1: fade from L−1 to L during the first `fade` of its phase, then stabilise at L
        return float(level - 1) + within / self.fade if within < self.fade else float(level)

    def reals_at(self, reals, progress: Optional[float]):
        """Downsample reals to the current resolution (blending the fade-in like PGGAN)."""
        import torch.nn.functional as F

        if progress is None:
            return reals
        top = int(math.ceil(progress))
        factor = 2 ** (self.max_res - top)
        x = F.avg_pool3d(reals, factor) if factor > 1 else reals
        alpha = progress - int(progress)
        if alpha > 0:
            low = F.interpolate(F.avg_pool3d(x, 2), scale_factor=2, mode="nearest")
            x = alpha * x + (1 - alpha) * low
        return x


def _ema_beta(settings: TrainSettings, nimg: int, batch_total: int) -> float:
    if settings.ema_beta is not None:
        return float(settings.ema_beta)
    ema_nimg = float(settings.ema_kimg or 0) * 1000.0
    if settings.ema_rampup is not None:
        ema_nimg = min(ema_nimg, nimg * float(settings.ema_rampup))
    return 0.5 ** (batch_total / max(ema_nimg, 1e-8))


def _apply_learning_rates(optimisers: dict) -> str:
    """Set each optimiser's learning rate to this run's setting after loading a checkpoint's optimiser state (which
    carries the rate it was saved with); returns the changes as text ("G 0.001 → 0.0002"), empty if none."""
    changes = []
    for name, (opt, lr) in optimisers.items():
        for group in opt.param_groups:
            if group["lr"] != lr:
                changes.append(f"{name} {group['lr']:g} → {lr:g}")
                group["lr"] = lr
    return ", ".join(changes)


# What a resumed run may change without changing what it trains: its length, reporting and memory layout (the
# learning rates are reported from the optimiser state, the networks are checked, the random streams are restored).
# Any other setting that differs from the one the checkpoint was trained with is said on resume.
_RESUME_FREE = frozenset({"kimg", "snapshot_kimg", "snapshot_minutes", "sample_kimg", "metrics_kimg", "metrics_n",
                          "metrics_morph_n", "metrics_track", "metrics_budget", "metrics_inception_weights",
                          "metrics_medicalnet_weights", "log_steps", "keep_last", "max_bad_steps", "channels_last",
                          "seed", "lr_g", "lr_d", "generator", "discriminator"})
_UNSET = object()


def _changed_settings(saved: dict, now: dict) -> str:
    """The training settings ``now`` that differ from the checkpoint's ``saved`` ones (both
    :meth:`TrainSettings.to_dict`) as text ("loss.r1_gamma 0.5 → 3.3"), empty if none. Dicts are compared key by
    key; a key one side lacks shows as "unset"."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    def show(v) -> str:
        return "unset" if v is _UNSET else json.dumps(v)

    a, b = (flat({k: v for k, v in d.items() if k not in _RESUME_FREE}) for d in (saved, now))
    return ", ".join(f"{k} {show(a.get(k, _UNSET))} → {show(b.get(k, _UNSET))}"
                     for k in sorted(a.keys() | b.keys()) if a.get(k, _UNSET) != b.get(k, _UNSET))


def _update_ema(G_ema, G, beta: float) -> None:
    import torch

    with torch.no_grad():
        for pe, p in zip(G_ema.parameters(), G.parameters()):
            pe.lerp_(p.detach(), 1.0 - beta)
        for be, b in zip(G_ema.buffers(), G.buffers()):
            be.copy_(b)


def _check_same_networks(saved: dict, G, settings: TrainSettings, ckpt) -> None:
    """Refuse to resume networks of another configuration (e.g. another ``--padding``): the parameters would load
    into the new networks without complaint when only a setting without parameters changed."""
    now = {"architecture": G.config(), "discriminator": json_clean(settings.discriminator)}
    for key, value in now.items():
        before = saved.get(key)
        if before is not None and value is not None and before != value:
            diff = sorted(k for k in set(before) | set(value) if before.get(k) != value.get(k))
            what = "generator" if key == "architecture" else "discriminator"

            def show(d):
                return ", ".join(f"{k}={d[k]!r}" if k in d else f"{k} unset (default)" for k in diff)

            raise VolGANError(f"{ckpt}: its {what} was built with {show(before)}, this run asks for {show(value)}; "
                              "resume with the run's original options, or start a new run (another --out)")


def _checkpoint_config(settings: TrainSettings, spacing, name: str) -> dict:
    from VolumetricGANLib.checkpoint import make_config

    return make_config(
        family=settings.family,
        architecture=settings.generator,
        spacing=spacing,
        intensity=settings.intensity or None,
        discriminator=settings.discriminator,
        label_scheme=settings.label_scheme,
        anatomy=settings.anatomy,
        latent=settings.latent,
        name=name,
        description=f"Trained with `volgan train --preset {settings.preset or 'custom'}`.",
    )


@dataclasses.dataclass
class TrainParts:
    """Everything one training iteration needs besides data and latents (built by :func:`build_train_parts`)."""

    settings: TrainSettings
    G: Any                                       # generator being trained
    D: Any                                       # discriminator / critic
    G_ema: Any                                   # moving average of G (no gradients)
    opt_g: Any                                   # Adam over G
    opt_d: Any                                   # Adam over D
    scaler_g: Any                                # GradScaler of G (enabled for fp16 only)
    scaler_d: Any                                # GradScaler of D (its own: the anchor shared one)
    loss: Any                                    # StyleGAN2Loss or WGANGPLoss
    kind: str                                    # "stylegan2" or "wgan-gp"
    augment: Any = None                          # DiffAugment3D or None
    ada: Any = None                              # AdaptiveAugment or None
    device_type: str = "cpu"                     # autocast device type
    autocast_dtype: Any = None                   # torch.bfloat16 / torch.float16 / None (fp32)

    def autocast(self):
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def kernels(self):
        """The context of a whole training step (forward and backward): :func:`VolGANCore.env.conv_kernels`."""
        return conv_kernels(self.device_type, self.autocast_dtype)


def build_train_parts(settings: TrainSettings, G, D, device_type: str = "cpu", autocast_dtype=None,
                      use_scaler: bool = False, c_pool=None) -> TrainParts:
    """EMA copy, optimisers, scalers, augmentation, ADA and loss object for ``G`` and ``D`` (already on the device).

    A joint image + label generator (:mod:`GANTrainerLib.joint`) gets label-aware augmentation and a loss that
    one-hot encodes the reals' labels; a conditional one draws its fakes' CoW variants from ``c_pool``.
    :func:`train` builds its parts here; benchmarks and tests use it to run the real training step on their own
    networks. Consumes no random numbers.
    """
    import torch

    from .augment import AdaptiveAugment, DiffAugment3D
    from .joint import JointSpec, joint_augment_kwargs
    from .losses import StyleGAN2Loss, WGANGPLoss

    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=settings.lr_g, betas=tuple(settings.betas), eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=settings.lr_d, betas=tuple(settings.betas), eps=1e-8)
    scaler_g = torch.amp.GradScaler(device_type, enabled=use_scaler)
    scaler_d = torch.amp.GradScaler(device_type, enabled=use_scaler)
    joint = JointSpec.of(G, settings.label_scheme)
    augment = DiffAugment3D(**joint_augment_kwargs(settings.augment, joint)) if settings.augment else None
    ada = AdaptiveAugment(target=settings.ada_target, speed_kimg=settings.ada_kimg,
                          p=augment.p if augment else 0.0) if (augment and settings.ada_target) else None
    loss_kw = {k: v for k, v in settings.loss.items() if k != "kind"}
    kind = settings.loss.get("kind", "stylegan2" if G.has_w else "wgan-gp")
    if kind == "stylegan2":
        loss = StyleGAN2Loss(G, D, augment, joint=joint, c_pool=c_pool, **loss_kw)
    elif joint is not None:
        raise VolGANError("joint image + label generators train with the stylegan2 loss (loss.kind)")
    else:
        loss = WGANGPLoss(G, D, augment, **loss_kw)
    return TrainParts(settings, G, D, G_ema, opt_g, opt_d, scaler_g, scaler_d, loss, kind, augment, ada,
                      device_type, autocast_dtype)


def train_iteration(
    parts: TrainParts,
    step: int,                                   # optimiser steps done so far (drives the lazy regularisers)
    nimg: int,                                   # images shown so far (drives the EMA ramp-up)
    batch_total: int,                            # images per iteration over all ranks and micro-batches
    next_reals,                                  # () -> a micro-batch of reals at the current resolution
    latents,                                     # (n) -> n latents
    prog: Optional[float] = None,                # progressive-growing level (pgan-3d), None otherwise
    dist: Optional[Dist] = None,
) -> tuple[bool, bool, dict, dict]:
    """One iteration of the training loop: a D step, a G step (D frozen), the EMA update and the ADA update.

    Each step accumulates ``settings.accumulate`` micro-batches, all-reduces the gradients over ranks and is
    skipped when its loss is not finite. Returns ``(ok_d, ok_g, stats_d, stats_g)``; the caller advances
    ``step`` by 1 and ``nimg`` by ``batch_total``.
    """
    with parts.kernels():
        return _train_iteration(parts, step, nimg, batch_total, next_reals, latents, prog, dist or Dist())


def _train_iteration(parts: TrainParts, step: int, nimg: int, batch_total: int, next_reals, latents,
                     prog: Optional[float], dist: Dist) -> tuple[bool, bool, dict, dict]:
    settings, G, D, loss, kind = parts.settings, parts.G, parts.D, parts.loss, parts.kind
    kw = {"progress": prog} if kind == "wgan-gp" else {}
    loss.nimg = nimg                             # for terms that start after so many images
    # ---- discriminator step ----
    D.requires_grad_(True)
    parts.opt_d.zero_grad(set_to_none=True)
    for _ in range(settings.accumulate):
        reals = next_reals()
        z = latents(settings.batch)
        with parts.autocast():
            l_d, st_d = loss.discriminator_loss(reals, z, step, **kw)
        parts.scaler_d.scale(l_d / settings.accumulate).backward()
        if parts.ada is not None:
            parts.ada.accumulate(st_d.pop("real_logits"))
        st_d.pop("real_logits", None)
    all_reduce_grads(list(D.parameters()), dist)
    ok_d = finite_step(l_d, parts.opt_d, parts.scaler_d, dist)
    # ---- generator step (D frozen: no parameter gradients wasted on it) ----
    D.requires_grad_(False)
    parts.opt_g.zero_grad(set_to_none=True)
    for _ in range(settings.accumulate):
        z = latents(settings.batch)
        with parts.autocast():
            l_g, st_g = loss.generator_loss(z, step, **kw)
        parts.scaler_g.scale(l_g / settings.accumulate).backward()
    all_reduce_grads(list(G.parameters()), dist)
    ok_g = finite_step(l_g, parts.opt_g, parts.scaler_g, dist)
    _update_ema(parts.G_ema, G, _ema_beta(settings, nimg + batch_total, batch_total))
    if parts.ada is not None and (step + 1) % parts.ada.interval == 0:
        parts.augment.p = parts.ada.update(settings.batch * dist.world)
    return ok_d, ok_g, st_d, st_g


def train(
    data: str | os.PathLike,                      # folder of training volumes
    out: str | os.PathLike,                       # run folder (created; resumed with resume=True)
    settings: TrainSettings,
    labels: str | os.PathLike | None = None,      # label folder (mask for bone patches, centroid for ROIs)
    resume: bool = False,                         # continue from the newest checkpoint in ``out``
    device: str = "auto",
    max_steps: Optional[int] = None,              # stop after this many optimiser steps (tests, smoke runs)
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    log=print,
) -> dict:
    """Train a GAN on the volumes in ``data``; returns a summary (steps, kimg, last checkpoint, state).

    The data (and label) folders are checked before anything is written. A run that fails before its first
    checkpoint removes what it created in ``out`` (the folder itself if it made it); a run folder that holds
    checkpoints is kept as it is, so it can be resumed.
    """
    from VolGANCore.dataset import list_volumes

    list_volumes(data)
    if labels is not None:
        list_volumes(labels)
    elif settings.generator.get("label_classes"):
        raise VolGANError(f"preset {settings.preset or 'custom'}: the generator makes images with their labels; "
                          "pass the label maps of the training volumes (--labels DIR)")
    if resume:
        _check_resumable(Path(out), settings)
    with _removed_unless_checkpointed(Path(out)):
        return _train(data, out, settings, labels, resume, device, max_steps, progress, cancel, log)


def _check_resumable(out: Path, settings: TrainSettings) -> None:
    """Before anything is written: ``out`` holds a checkpoint of this family whose generator has the settings this
    run names (from its config alone; the full network comparison follows once the networks are built)."""
    from VolumetricGANLib.checkpoint import read_config

    from .run import latest_checkpoint

    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise VolGANError(f"--resume: no checkpoint in {out / 'checkpoints'} (start without --resume)")
    config = read_config(ckpt)
    if config["family"] != settings.family:
        raise VolGANError(f"{ckpt}: a {config['family']} checkpoint; preset '{settings.preset or 'custom'}' trains "
                          f"{settings.family} (resume with the run's own preset, or start a new run with another --out)")
    saved = config.get("architecture") or {}
    wanted = json_clean(settings.generator)
    diff = sorted(k for k, v in wanted.items() if k in saved and saved[k] != v)
    if diff:
        raise VolGANError(f"{ckpt}: its generator has " + ", ".join(f"{k}={saved[k]!r}" for k in diff)
                          + f"; preset '{settings.preset or 'custom'}' asks for "
                          + ", ".join(f"{k}={wanted[k]!r}" for k in diff)
                          + " (resume with the run's own preset and options, or start a new run with another --out)")


@contextlib.contextmanager
def _removed_unless_checkpointed(out: Path):
    """On an exception, remove what the block created in ``out`` unless ``out`` then holds a checkpoint (rank 0)."""
    before = set(out.iterdir()) if out.exists() else None
    try:
        yield
    except BaseException:
        has_checkpoint = (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("*.vgan"))
        if int(os.environ.get("RANK", "0")) == 0 and not has_checkpoint and out.exists():
            import shutil

            created = [out] if before is None else sorted(set(out.iterdir()) - before)
            for path in created:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise


# -- the training state a checkpoint holds ---------------------------------------------------------------------
@dataclasses.dataclass
class Restored:
    """What :meth:`TrainingState.restore` tells the loop to report."""

    learning_rates: str = ""                     # "G 0.0025 → 0.0002" where this run's rates replaced the saved ones
    quick_metrics: Optional[str] = None          # the note on the restored best quick metric (None: none restored)
    quick_metrics_dropped: bool = False          # the saved best was not comparable with this run's quick metrics
    settings: str = ""                           # "loss.r1_gamma 0.5 → 3.3": other settings than the checkpoint's


@dataclasses.dataclass
class TrainingState:
    """Everything a resumed run needs to continue exactly: the one definition of a checkpoint's training state.

    :meth:`capture` writes it and :meth:`restore` reads it. A checkpoint holds the networks as ``tensors`` ``G``,
    ``D`` and ``G_ema``, and this ``training`` dict:

    * ``step``, ``nimg`` — optimiser steps done and images shown to D (over all ranks);
    * ``opt_g``, ``opt_d`` — the Adam states (on resume the learning rates become this run's settings);
    * ``scaler_g``, ``scaler_d`` — the GradScaler states (also when disabled);
    * ``sampler``, ``latent_rng`` — every rank's data-order position and latent-generator state, in rank order
      (a rank beyond the saved world continues rank 0's);
    * ``rng`` — the global RNG states (:func:`VolumetricGANLib.checkpoint.capture_rng_state`);
    * ``ada`` — the :class:`~GANTrainerLib.augment.AdaptiveAugment` state (with ADA only);
    * ``augment_p`` — the augmentation probability (with augmentation only);
    * ``pl_mean`` — the path-length regulariser's running mean (StyleGAN2 loss only);
    * ``settings`` — :meth:`TrainSettings.to_dict` (read by export and model cards; not restored);
    * ``quick_metrics`` — the best quick metric so far (with quick metrics only);
    * ``progress`` — the progressive level the last step trained at (pgan-3d only; read by export, not restored).

    Keys whose value is None are left out and :meth:`restore` accepts their absence, so checkpoints written before
    a key existed still resume. Add keys, never rename or drop them: older runs must keep resuming
    (Testing/test_train_loop.py pins this layout).
    """

    parts: TrainParts                            # networks, EMA, optimisers, scalers, augmentation, ADA, loss
    sampler: Any                                 # this rank's InfiniteSampler (capture reads the feeder's position)
    latent_gen: Any                              # this rank's torch.Generator of the latents
    quick: Any = None                            # QuickMetrics (rank 0, when on)
    step: int = 0                                # optimiser steps done
    nimg: int = 0                                # images shown to D over all ranks
    progress: Optional[float] = None             # progressive level the last step trained at (None: not progressive)

    def capture(self, dist: Dist, sampler_state: dict) -> Optional[dict]:
        """The checkpoint's ``G_ema``, ``G``, ``D`` and ``training`` (:func:`save_checkpoint` keywords) on rank 0,
        None on the other ranks. Every rank calls it at the same step (it gathers every rank's stream state).
        ``sampler_state``: the data position after the last batch handed out (``BatchFeeder.state_dict()``)."""
        from VolumetricGANLib.checkpoint import capture_rng_state

        samplers, latent_rngs = gather_states(dist, sampler_state, self.latent_gen.get_state())
        if not dist.main:
            return None
        p = self.parts
        training = {
            "step": self.step, "nimg": self.nimg, "opt_g": p.opt_g.state_dict(), "opt_d": p.opt_d.state_dict(),
            "scaler_g": p.scaler_g.state_dict(), "scaler_d": p.scaler_d.state_dict(),
            "sampler": samplers, "latent_rng": latent_rngs, "rng": capture_rng_state(),
            "ada": p.ada.state_dict() if p.ada else None, "augment_p": p.augment.p if p.augment else None,
            "pl_mean": getattr(p.loss, "pl_mean", None), "settings": p.settings.to_dict(),
            "quick_metrics": self.quick.state_dict() if self.quick is not None else None,
            "progress": self.progress,
        }
        training = {k: v for k, v in training.items() if v is not None}
        return {"G_ema": p.G_ema, "G": p.G, "D": p.D, "training": training}

    def restore(self, blob: dict, ckpt, dist: Dist, device) -> Restored:
        """Load a checkpoint's networks and training state (``blob`` from :func:`load_checkpoint`) into this run.

        Refuses a checkpoint without training state, or of networks configured otherwise than this run's."""
        from VolumetricGANLib.checkpoint import restore_rng_state

        p, settings = self.parts, self.parts.settings
        tr = blob.get("training") or {}
        if "G" not in blob["tensors"] or "D" not in blob["tensors"] or not tr:
            raise VolGANError(f"{ckpt}: holds no training state (G, D, optimisers); it cannot be resumed")
        _check_same_networks(blob["config"], p.G, settings, ckpt)
        p.G.load_state_dict(blob["tensors"]["G"])
        p.D.load_state_dict(blob["tensors"]["D"])
        p.G_ema.load_state_dict(blob["tensors"]["G_ema"])
        p.opt_g.load_state_dict(tr["opt_g"])
        p.opt_d.load_state_dict(tr["opt_d"])
        restored = Restored(_apply_learning_rates({"G": (p.opt_g, settings.lr_g), "D": (p.opt_d, settings.lr_d)}))
        if tr.get("settings"):
            restored.settings = _changed_settings(tr["settings"], settings.to_dict())
        p.scaler_g.load_state_dict(tr["scaler_g"])
        p.scaler_d.load_state_dict(tr["scaler_d"])
        self.step, self.nimg = int(tr["step"]), int(tr["nimg"])
        samplers, latent_rngs = tr["sampler"], tr["latent_rng"]
        self.sampler.load_state_dict(samplers[dist.rank] if dist.rank < len(samplers) else samplers[0])
        self.latent_gen.set_state(latent_rngs[dist.rank] if dist.rank < len(latent_rngs) else latent_rngs[0])
        if tr.get("rng") is not None:
            restore_rng_state(tr["rng"])
        if p.ada is not None and tr.get("ada"):
            p.ada.load_state_dict(tr["ada"])
        if p.augment is not None and tr.get("augment_p") is not None:
            p.augment.p = float(tr["augment_p"])
        if hasattr(p.loss, "pl_mean") and tr.get("pl_mean") is not None:
            p.loss.pl_mean = tr["pl_mean"].to(device)
        if self.quick is not None and tr.get("quick_metrics"):
            dropped = self.quick.load_state_dict(tr["quick_metrics"])
            restored.quick_metrics_dropped = bool(dropped)
            restored.quick_metrics = dropped or (f"quick metrics: best {self.quick.track} so far {self.quick.best} "
                                                 f"at step {self.quick.best_step}")
        return restored


# -- the loop -----------------------------------------------------------------------------------------------------
def _train(data, out, settings: TrainSettings, labels, resume, device, max_steps, progress, cancel, log) -> dict:
    """The loop after :func:`train`'s input checks: setup, resume, iterations with their reports, final snapshot."""
    import torch

    from .data import BatchFeeder, InfiniteSampler
    from .run import GracefulStop

    # -- setup: device and process group, run folder, data, networks, training parts, streams -----------------------
    dev, dist = _device_and_group(device)
    autocast_dtype, use_scaler = amp_dtype(settings.amp, dev.type, training=True)   # the project's one AMP rule
    out = Path(out)
    run = _open_run(out, settings, resume, dev, dist)
    dataset, config = _training_data(data, labels, out, settings, dist, progress, cancel)
    G, D = _build_networks(settings, dataset, dev)
    c_pool = _variant_pool(settings, G, dataset, dev, config)
    parts = build_train_parts(settings, G, D, dev.type, autocast_dtype, use_scaler, c_pool)
    if run is not None and onednn_off_for_training(dev.type, autocast_dtype):
        run.log(f"bf16 on this CPU: oneDNN's bf16 conv3d weight gradients are wrong here (torch {torch.__version__}); "
                "training uses torch's native convolutions instead (slower; --amp off is faster and exact)")
    phase = _Phase(settings, getattr(G, "max_res", 0))
    gen = torch.Generator(device=dev)                          # this rank's latents
    gen.manual_seed(int(settings.seed) * 1000 + dist.rank)
    torch.manual_seed(int(settings.seed) * 1000 + dist.rank)   # this rank's global stream (noise, augmentation)
    sampler = InfiniteSampler(len(dataset), seed=settings.seed, rank=dist.rank, world=dist.world)
    metrics_on, quick = _quick_metrics(settings, dataset, out, dev, dist, run, log)
    state = TrainingState(parts, sampler, gen, quick)

    # -- resume: the newest checkpoint's networks and training state; otherwise rank 0's initial networks -----------
    _resume_or_start(state, out, resume, dist, dev, run, log)

    # -- schedule, data feeding, latents ----------------------------------------------------------------------------
    batch_total = settings.batch * settings.accumulate * dist.world
    total_steps = int(math.ceil(settings.kimg * 1000 / batch_total))
    if max_steps is not None:
        total_steps = min(total_steps, state.step + int(max_steps))
    snapshot_every = max(1, int(round(settings.snapshot_kimg * 1000 / batch_total)))
    sample_every = max(1, int(round(settings.sample_kimg * 1000 / batch_total)))
    metrics_every = max(1, int(round(settings.metrics_kimg * 1000 / batch_total))) if metrics_on else 0
    # CUDA: a thread keeps the next batches pinned and copied on a side stream (no host sync); CPU: read on demand
    feeder = BatchFeeder(dataset, sampler, settings.batch, dev, channels_last=settings.channels_last,
                         prefetch=2 * settings.accumulate if dev.type == "cuda" else 0)
    latents = _Latents(G.z_dim, dev, gen, settings.latent)
    reports = _Reports(run, dist, out, config, data, len(dataset), parts, phase, quick,
                       z_fixed=_fixed_latents(settings, G.z_dim, dev), t_start=time.perf_counter(), c_pool=c_pool)

    # -- the iterations -----------------------------------------------------------------------------------------------
    non_finite = _NonFiniteSteps(dev)             # consecutive non-finite D / G steps
    stats_acc: dict[str, Any] = {}                # loss statistics summed since the last scalar log
    last_snapshot_time = time.perf_counter()
    saved_step = sampled_step = quick_step = -1   # steps of the latest checkpoint, montage and quick-metrics attempt
    quick_values: Optional[tuple] = None          # (step, {name: value}, ranked) of the latest quick metrics (rank 0)
    ended = "running"
    last_path = None
    if dist.main:
        run.update_status(state="running", step=state.step, kimg=state.nimg / 1000.0, total_kimg=settings.kimg,
                          preset=settings.preset, device=str(dev), world=dist.world, amp=str(autocast_dtype),
                          process_group=torch.distributed.get_backend() if dist.group else None)
    G.train()
    D.train()
    state.progress = phase.progress(state.nimg)
    # cancellation is checked by the loop itself (so it can checkpoint first), not by the progress bar
    with GracefulStop() as stop, Progress(total_steps, "train", progress if dist.main else None, None) as bar, feeder:
        bar.set(state.step)
        while state.step < total_steps:
            # ---- one iteration: D step, G step, EMA and ADA updates ----
            prog = state.progress = phase.progress(state.nimg)
            ok_d, ok_g, st_d, st_g = train_iteration(parts, state.step, state.nimg, batch_total,
                                                     lambda: phase.reals_at(feeder.next(), prog), latents, prog, dist)
            state.step += 1
            state.nimg += batch_total
            step, nimg = state.step, state.nimg

            # ---- non-finite losses: skipped steps, counted; too many in a row stop the run ----
            worst = non_finite.count(ok_d, ok_g, host_sync=step % settings.log_steps == 0 or step == total_steps
                                     or step % snapshot_every == 0)
            if worst >= settings.max_bad_steps:
                msg = (f"stopped: {worst} consecutive non-finite losses at step {step} "
                       "(lower the learning rates, use --amp bf16 or off, or check the data for outliers)")
                if dist.main:
                    run.log(msg)
                    run.update_status(state="failed", message=msg, step=step)
                raise VolGANError(msg)

            # ---- scalars: averaged over the interval, one host sync each ----
            for k, v in {**st_d, **st_g}.items():
                stats_acc[k] = stats_acc.get(k, 0.0) + v.float()
            if dist.main and (step % settings.log_steps == 0 or step == total_steps):
                reports.scalars(stats_acc, step, nimg, total_steps, prog, dev)
                stats_acc = {}

            # ---- samples, quick metrics, checkpoint ----
            if dist.main and step % sample_every == 0:
                sampled_step = reports.montage(step, nimg, prog)
            best_now = False
            if metrics_every and step % metrics_every == 0:
                quick_step = step
                best_now, quick_values = reports.quick_metrics(step, nimg, prog, quick_values)
            due_time = (settings.snapshot_minutes is not None
                        and time.perf_counter() - last_snapshot_time > settings.snapshot_minutes * 60)
            agree = dev.type != "cuda" or step % settings.log_steps == 0  # CUDA: host syncs at log steps only
            if dist.group:
                due_time = any_rank(due_time, dist) if agree else False
            if step % snapshot_every == 0 or due_time or best_now:
                reason = "periodic" if step % snapshot_every == 0 or due_time else "best"
                last_path = reports.snapshot(state, feeder, reason, quick_values) or last_path
                saved_step = step
                last_snapshot_time = time.perf_counter()

            # ---- stop requested (SIGINT / SIGTERM, the cancel token): checkpoint and end ----
            requested = stop.requested or (cancel is not None and cancel.cancelled)
            if dist.group:
                requested = any_rank(bool(requested), dist) if agree else False
            if requested:
                ended = "stopped"
                break
            bar.set(step)

    # -- the end: final samples, quick metrics and checkpoint unless this step has them --------------------------------
    step, nimg = state.step, state.nimg
    D.requires_grad_(True)
    if dist.main and sampled_step != step:
        reports.montage(step, nimg, phase.progress(nimg))
    if saved_step != step:
        if metrics_every and ended != "stopped" and quick_step != step:   # the final checkpoint competes for the
            _, quick_values = reports.quick_metrics(step, nimg, state.progress, quick_values)  # best too (all ranks)
        last_path = reports.snapshot(state, feeder, "stopped" if ended == "stopped" else "final",
                                     quick_values) or last_path
    final_state = "finished" if ended == "running" else ended
    if dist.main:
        run.update_status(state=final_state, step=step, kimg=nimg / 1000.0,
                          last_checkpoint=run.relative(last_path) if last_path else None)
        run.log(f"{final_state} at step {step} ({nimg / 1000:.2f} kimg)")
        run.close()
    with torch.no_grad():  # lets callers (and the DDP test) check that every rank holds the same weights
        checksum = float(sum(p.double().sum() for p in G.parameters()))
    return {"state": final_state, "step": step, "kimg": nimg / 1000.0, "checkpoint": str(last_path) if last_path else None,
            "rank": dist.rank, "world": dist.world, "process_group": dist.group, "g_param_checksum": checksum}


# -- setup steps of the loop ---------------------------------------------------------------------------------------
def _device_and_group(device: str):
    """The torch device and this process's place in the process group (its own GPU under torchrun)."""
    import torch

    from VolGANCore.env import pick_device

    dev = torch.device(pick_device(device))
    dist = init_distributed(dev.type)
    if dist.group and dev.type == "cuda":
        dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    return dev, dist


def _open_run(out: Path, settings: TrainSettings, resume: bool, dev, dist: Dist):
    """Rank 0's run folder (None on the other ranks); its log says how each session of the run was started (model
    cards quote it)."""
    import torch

    from VolumetricGANLib.checkpoint import command_line

    from .run import TrainingRun

    if not dist.main:
        return None
    run = TrainingRun(out, keep_last=settings.keep_last)
    backend = f" ({torch.distributed.get_backend()})" if dist.group else ""
    run.log(f"{'resume' if resume else 'start'}: {command_line()} (device {dev}, world {dist.world}{backend}, "
            f"amp {settings.amp}, torch threads {torch.get_num_threads()}, preset {settings.preset})")
    return run


def _training_data(data, labels, out: Path, settings: TrainSettings, dist: Dist, progress, cancel):
    """The preprocessed, cached training set and (rank 0) the checkpoint config; consumes no training random
    numbers (building the config instantiates a generator, so it comes before the seeds are set)."""
    from .data import CachedVolumeSet, Preprocess

    pre = Preprocess.from_settings(settings.preprocess)
    keep = settings.label_scheme if settings.generator.get("label_classes") else None  # joint: labels are data
    dataset = CachedVolumeSet.build(data, pre, out / "cache", labels_folder=labels, patch_size=settings.patch_size,
                                    progress=progress if dist.main else None, cancel=cancel, keep_labels=keep)
    config = _checkpoint_config(settings, _data_spacing(dataset), settings.preset or "model") if dist.main else None
    return dataset, config


def _build_networks(settings: TrainSettings, dataset, dev):
    """G and D from the run's seed (identical on every rank; rank 0 broadcasts them anyway), checked against the
    data's shape, weights channels-last when asked."""
    import torch

    from VolumetricGANLib.networks import build_discriminator, build_generator
    from VolumetricGANLib.networks.layers import to_channels_last_3d

    torch.manual_seed(int(settings.seed))
    G = build_generator(settings.family, settings.generator).to(dev)
    D = build_discriminator(settings.family, settings.discriminator).to(dev)
    if tuple(dataset.shape) != tuple(G.output_shape):
        raise VolGANError(f"training volumes have shape {tuple(dataset.shape)} after preprocessing but the "
                          f"generator makes {tuple(G.output_shape)} (set --roi / the preset's output shape)")
    if settings.channels_last:  # CPU too: oneDNN convolutions with few channels run several times faster
        to_channels_last_3d(G)  # 5-D tensors only (Module.to(memory_format=…) refuses StyleGAN2's 4-D constant)
        to_channels_last_3d(D)
    return G, D


def _variant_pool(settings: TrainSettings, G, dataset, dev, config: Optional[dict]):
    """A conditional joint generator's training variants (None otherwise); rank 0's checkpoint config records
    their frequencies, which unconditional sampling of the model follows."""
    from .joint import JointSpec, VariantPool

    spec = JointSpec.of(G, settings.label_scheme)
    if spec is None or not spec.c_dim:
        return None
    pool = VariantPool.from_dataset(dataset, spec, dev)
    if config is not None:
        config["conditioning"] = {"kind": "cow-variant", **pool.frequencies()}
    return pool


def _quick_metrics(settings: TrainSettings, dataset, out: Path, dev, dist: Dist, run, log):
    """(on, QuickMetrics or None): whether quick metrics run (the same answer on every rank) and rank 0's measurer
    (they pick the best checkpoint; :mod:`GANTrainerLib.quick_metrics`)."""
    if not settings.metrics_kimg:
        return False, None
    from .quick_metrics import QuickMetrics

    why_not = QuickMetrics.unusable(settings, dataset)
    if why_not and dist.main:
        log(why_not)
        run.log(why_not)
    if why_not is not None:
        return False, None
    return True, (QuickMetrics(settings, dataset, out, dev, _data_spacing(dataset)) if dist.main else None)


def _resume_or_start(state: TrainingState, out: Path, resume: bool, dist: Dist, dev, run, log) -> None:
    """With ``resume``: restore the newest checkpoint of ``out`` into ``state`` and say so (log and run log).
    Otherwise: every rank takes rank 0's initial networks, and the EMA generator starts as G."""
    from VolumetricGANLib.checkpoint import load_checkpoint

    from .run import latest_checkpoint

    parts = state.parts
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        raise VolGANError(f"--resume: no checkpoint in {out / 'checkpoints'} (start without --resume)")
    if ckpt is None:
        broadcast_params(parts.G, dist)
        broadcast_params(parts.D, dist)
        parts.G_ema.load_state_dict(parts.G.state_dict())
        return
    restored = state.restore(load_checkpoint(ckpt, map_location="cpu", expect_family=parts.settings.family), ckpt,
                             dist, dev)
    msg = f"resumed from step {state.step} ({state.nimg / 1000:.2f} kimg) of {ckpt}" + (
        f"; learning rates now {restored.learning_rates}" if restored.learning_rates else "") + (
        f"; settings other than the checkpoint's: {restored.settings}" if restored.settings else "")
    if dist.main:
        log(msg)
        run.log(msg)
    if restored.quick_metrics is not None:                # rank 0 only (it alone measures quick metrics)
        if restored.quick_metrics_dropped:
            run.clear_metrics()
        log(restored.quick_metrics)
        run.log(restored.quick_metrics)


class _NonFiniteSteps:
    """Consecutive skipped (non-finite) D and G steps. On CUDA the counts are device tensors, read on the host only
    at the steps the loop syncs anyway (:func:`GANTrainerLib.optim.finite_step` returns device flags there)."""

    def __init__(self, dev) -> None:
        import torch

        self.cuda = dev.type == "cuda"
        self.bad_d = self.bad_g = 0
        self.worst_bad = torch.zeros((), device=dev)   # CUDA: the longest run since the last host sync

    def count(self, ok_d, ok_g, host_sync: bool) -> int:
        """Add one iteration's outcomes; returns the longest current run of failures known on the host (on CUDA: 0
        unless ``host_sync``)."""
        import torch

        self.bad_d = (self.bad_d + 1) * (1 - ok_d)
        self.bad_g = (self.bad_g + 1) * (1 - ok_g)
        if not self.cuda:
            return max(self.bad_d, self.bad_g)
        self.worst_bad = torch.maximum(self.worst_bad, torch.maximum(self.bad_d, self.bad_g))
        if not host_sync:
            return 0
        worst, self.worst_bad = int(self.worst_bad), torch.zeros((), device=self.worst_bad.device)
        return worst


class _Latents:
    """``latents(n)``: n latents from this rank's generator (normal, or on the unit hypersphere)."""

    def __init__(self, z_dim: int, dev, gen, distribution: str) -> None:
        self.z_dim, self.dev, self.gen, self.hypersphere = z_dim, dev, gen, distribution == "hypersphere"

    def __call__(self, n: int):
        import torch

        z = torch.randn(n, self.z_dim, device=self.dev, generator=self.gen)
        return z / z.norm(dim=1, keepdim=True) if self.hypersphere else z


def _fixed_latents(settings: TrainSettings, z_dim: int, dev):
    """The montage's latents: the same every run and session, drawn outside the training streams."""
    import torch

    fixed_gen = torch.Generator(device=dev)
    fixed_gen.manual_seed(int(settings.seed))
    z_fixed = torch.randn(min(4, settings.batch), z_dim, device=dev, generator=fixed_gen)
    if settings.latent == "hypersphere":
        z_fixed = z_fixed / z_fixed.norm(dim=1, keepdim=True)
    return z_fixed


# -- what the loop reports: scalars, montages, quick metrics, checkpoints -----------------------------------------
@dataclasses.dataclass
class _Reports:
    """The loop's outputs into the run folder. Holds only what stays fixed during a run; every method takes the
    loop's position and returns what the loop keeps (the loop's own counters live in the loop)."""

    run: Any                                     # TrainingRun (rank 0) or None
    dist: Dist
    out: Path
    config: Optional[dict]                       # checkpoint config (rank 0)
    data: Any                                    # training data folder (provenance)
    cases: int                                   # training volumes (provenance)
    parts: TrainParts
    phase: _Phase
    quick: Any                                   # QuickMetrics (rank 0, when on) or None
    z_fixed: Any                                 # the montage's latents
    t_start: float                               # perf_counter at the first iteration
    c_pool: Any = None                           # a conditional joint generator's VariantPool

    def _sampler(self):
        """What montages and quick metrics sample: G_ema, or a joint G_ema's intensity channel under repeatable
        conditions (:class:`GANTrainerLib.joint.ImageView`, fresh per use)."""
        G = self.parts.G_ema
        if not getattr(G, "label_classes", 0):
            return G
        from .joint import ImageView

        return ImageView(G, self.c_pool, seed=int(self.parts.settings.seed))

    def _generator_kwargs(self, prog) -> dict:
        return {"progress": prog} if self.parts.kind == "wgan-gp" else {"noise_mode": "const"}

    def scalars(self, stats_acc: dict, step: int, nimg: int, total_steps: int, prog, dev) -> None:
        """Rank 0: the interval's mean losses, augmentation, speed and memory into metrics.jsonl and the status."""
        import torch

        parts, run = self.parts, self.run
        log_steps = parts.settings.log_steps
        n = log_steps if step % log_steps == 0 else (step % log_steps)
        scalars = {k: float(v) / n for k, v in stats_acc.items()}   # one host sync per interval
        elapsed = time.perf_counter() - self.t_start
        scalars.update({"augment/p": parts.augment.p if parts.augment else 0.0,
                        "augment/rt": parts.ada.rt if parts.ada else 0.0,
                        "speed/kimg_per_s": (nimg / 1000.0) / max(elapsed, 1e-9) if step else 0.0})
        if prog is not None:
            scalars["progress/level"] = prog
        if dev.type == "cuda":
            scalars["memory/gpu_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        run.log_scalars(step, nimg / 1000.0, scalars)
        run.update_status(state="running", step=step, kimg=nimg / 1000.0,
                          eta_s=elapsed / max(step, 1) * (total_steps - step))

    def montage(self, step: int, nimg: int, prog) -> int:
        """Rank 0: G_ema's samples of the fixed latents as a PNG; returns ``step`` (the montage's step)."""
        import torch

        from VolumetricGANLib.labelmaps import hard_labels

        from .joint import ImageView
        from .run import save_montage

        sampler, labels, scheme = self._sampler(), None, self.parts.settings.label_scheme
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            if isinstance(sampler, ImageView):   # a joint model: its labels as well
                out = sampler.full(self.z_fixed, **self._generator_kwargs(prog)).float()
                imgs = out[:, :1].cpu().numpy()
                labels = hard_labels(out[:, 1:], scheme, sampler.G.label_decoding)
            else:
                imgs = sampler(self.z_fixed, **self._generator_kwargs(prog)).float().cpu().numpy()
        png = save_montage(imgs, self.out / "samples" / f"samples-{step:07d}.png",
                           title=f"step {step}, {nimg / 1000:.2f} kimg", labels=labels, label_scheme=scheme)
        self.run.log_image("samples", step, png)
        return step

    def quick_metrics(self, step: int, nimg: int, prog, latest: Optional[tuple]) -> tuple[bool, Optional[tuple]]:
        """Every rank calls this: rank 0 measures the quick metrics (unless over budget). Returns (whether the tracked
        one improved, on every rank; the latest ``(step, {name: value}, ranked)``, ``latest`` if none measured)."""
        quick, run, dist, phase = self.quick, self.run, self.dist, self.phase
        improved = False
        if dist.main:
            elapsed = time.perf_counter() - self.t_start
            if quick.over_budget(elapsed):
                run.log(f"quick metrics skipped at step {step}: they took {quick.spent_s:.1f} s of {elapsed:.1f} s "
                        f"(budget {100 * quick.budget:g} %)")
            else:
                # a progressive generator below its top level is not what its checkpoint generates (that is
                # the untrained top level), so it cannot be the best checkpoint
                top = prog is None or prog >= phase.max_res
                values, ranked, improved = quick.evaluate(self._sampler(), self._generator_kwargs(prog), step,
                                                          ranked=top)
                latest = (step, {**{k: v for k, v in values.items() if k != "seconds"},
                                 "quick_metrics_extractor": quick.extractor.name}, ranked)
                run.log_scalars(step, nimg / 1000.0, {f"metrics/{k}": v for k, v in values.items()},
                                status_key="latest_metrics")
                run.update_status(quick_metrics=quick.summary())
                if improved:
                    note = " (best so far)"
                elif not top:
                    note = f" (progressive level {prog:g} of {phase.max_res}: not ranked)"
                elif not ranked:  # quick.evaluate does not rank a collapsed generator
                    note = " — the samples vary far less than the real volumes: mode collapse? (not ranked)"
                else:
                    note = ""
                run.log(f"quick metrics at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
                        + note)
        if dist.group:
            improved = any_rank(improved, dist)
        return improved, latest

    def snapshot(self, state: TrainingState, feeder, reason: str, quick_values: Optional[tuple]) -> Optional[Path]:
        """Every rank calls this at the same step; rank 0 writes the checkpoint (with this step's quick metrics) and
        registers it (best / keep-last). Returns its path on rank 0, None elsewhere."""
        import torch

        from VolumetricGANLib.checkpoint import save_checkpoint

        saved = state.capture(self.dist, feeder.state_dict())
        if saved is None:
            return None
        step, nimg, run = state.step, state.nimg, self.run
        measured = quick_values[1] if quick_values and quick_values[0] == step else {}  # quick metrics of this step
        ranked = bool(measured) and quick_values[2]  # below a progressive top level or collapsed: not ranked
        path = run.checkpoint_path(step)
        with torch.random.fork_rng(devices=[]):  # saving rebuilds the network: keep the training RNG untouched
            save_checkpoint(path, self.config, **saved,
                            provenance={"data": str(self.data), "cases": self.cases, "reason": reason,
                                        "kimg": nimg / 1000.0, "preset": self.parts.settings.preset},
                            metrics={"kimg": nimg / 1000.0, "step": step, **measured})
        track = self.quick.track if self.quick is not None and ranked else None
        run.register_checkpoint(path, step, metric=measured.get(track) if track else None, metric_name=track)
        run.log(f"checkpoint {path.name} ({reason}) at {nimg / 1000:.2f} kimg")
        return path


def _data_spacing(dataset) -> list[float]:
    cases = dataset.meta.get("cases", [])
    if cases and "spacing_xyz_mm" in cases[0]:
        return [float(s) for s in cases[0]["spacing_xyz_mm"]]
    sp = dataset.meta.get("spacing_xyz_mm")
    if sp:
        return [float(s) for s in sp]
    raise VolGANError("cannot tell the voxel spacing of the training data")
