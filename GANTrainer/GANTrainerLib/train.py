"""The training loop for both GAN families: AMP, accumulation, EMA, ADA, lazy regularisers, DDP, resume.

One function, :func:`train`, drives a run folder (:class:`GANTrainerLib.run.TrainingRun`). The loop
knows nothing about architectures (networks come from the checkpoint family registry) and the loss objects
own their regularisation schedules (docs/training.md, "The loop"). One iteration (D step, G step, EMA and ADA updates) is
:func:`train_iteration` over the parts made by :func:`build_train_parts`, so benchmarks time the same code.

Mixed precision: ``amp="auto"`` is bf16 autocast on GPUs that support it (no scaler needed), fp16 with one
GradScaler *per optimiser* otherwise (the CoW anchor shared one between G and D); the mapping network runs
in fp32 (the generator casts its own inputs) and loss reductions are fp32 (the losses cast logits). A
non-finite loss skips that optimiser step (and halves the fp16 loss scale); ``max_bad_steps`` consecutive
failures stop the run with a message — it never trains on NaNs silently.

Checkpoints every ``snapshot_kimg`` (and at least every ``snapshot_minutes``) and when stopped by
SIGINT/SIGTERM; ``resume=True`` continues from the newest checkpoint of the run folder with the same step
count, optimiser and scaler states, RNG streams, data order, EMA and augmentation probability — on CPU a
resumed run is bit-for-bit the uninterrupted one (tested).

Multi-GPU: start with ``torchrun --nproc_per_node G -m VolGANCore.cli train ...``: each rank seeds its own stream, gradients are all-reduced (sum / world) after every
backward, rank 0 alone writes files. Works with the gloo backend on CPU (tested with 2 processes).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from VolGANCore import VolGANError
from VolGANCore.progress import CancelToken, Progress, ProgressCallback

__all__ = ["TrainSettings", "train", "settings_from_preset", "TrainParts", "build_train_parts", "train_iteration"]


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
    import json

    return json.loads(json.dumps(obj))


def settings_from_preset(name: str, **overrides: Any) -> TrainSettings:
    """A preset with field overrides (``None`` overrides are ignored, so CLI defaults can pass through)."""
    from .presets import get_preset

    cfg = get_preset(name)
    cfg["preset"] = name
    phase_kimg = overrides.pop("phase_kimg", None)
    padding = overrides.pop("padding", None)
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
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise VolGANError(f"unknown training setting(s) {unknown}")
    return TrainSettings(**cfg)


# -- distributed helpers ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False                          # joined a process group: collectives run (also with world 1)

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True in a process started by ``torchrun`` (it sets the rendezvous variables), whatever the world size."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed(device_type: str) -> Dist:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU) when started by torchrun.

    A torchrun launch of one process joins a group of one too, so every collective of the loop runs: that is how
    ``torchrun --nproc_per_node 1`` proves the NCCL path on a single GPU (benchmarks/gpu_check.py).
    """
    import torch.distributed as tdist

    if not launched_by_torchrun():
        return Dist()
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), group=True)


def _all_reduce_grads(params: list, dist: Dist) -> None:
    """Average gradients over ranks in one flat buffer (one collective per optimiser step)."""
    if not dist.group:
        return
    import torch
    import torch.distributed as tdist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= dist.world
    torch.nan_to_num_(flat)  # a rank's NaN is caught by the finite check below, not spread as NaN weights
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _broadcast_params(module, dist: Dist) -> None:
    if not dist.group:
        return
    import torch.distributed as tdist

    for t in list(module.parameters()) + list(module.buffers()):
        tdist.broadcast(t.data, src=0)


# -- mixed precision -----------------------------------------------------------------------------------------
def resolve_amp(amp: str, device_type: str):
    """(autocast dtype or None, use GradScaler) for the requested mode on this device."""
    import torch

    amp = amp.lower()
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise VolGANError(f"--amp {amp}: choose auto, bf16, fp16 or off")
    if amp == "off" or (amp == "auto" and device_type != "cuda"):
        return None, False
    if amp == "auto":
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    if amp == "bf16":
        if device_type == "cuda" and not torch.cuda.is_bf16_supported():
            raise VolGANError("--amp bf16: this GPU has no bfloat16 support; use --amp fp16")
        return torch.bfloat16, False
    if device_type != "cuda":
        raise VolGANError("--amp fp16 needs a CUDA GPU; on CPU use --amp bf16 or off")
    return torch.float16, True


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
    import json

    now = {"architecture": G.config(), "discriminator": json.loads(json.dumps(settings.discriminator))}
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


def build_train_parts(settings: TrainSettings, G, D, device_type: str = "cpu", autocast_dtype=None,
                      use_scaler: bool = False) -> TrainParts:
    """EMA copy, optimisers, scalers, augmentation, ADA and loss object for ``G`` and ``D`` (already on the device).

    :func:`train` builds its parts here; benchmarks and tests use it to run the real training step on their own
    networks. Consumes no random numbers.
    """
    import torch

    from .augment import AdaptiveAugment, DiffAugment3D
    from .losses import StyleGAN2Loss, WGANGPLoss

    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=settings.lr_g, betas=tuple(settings.betas), eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=settings.lr_d, betas=tuple(settings.betas), eps=1e-8)
    scaler_g = torch.amp.GradScaler(device_type, enabled=use_scaler)
    scaler_d = torch.amp.GradScaler(device_type, enabled=use_scaler)
    augment = DiffAugment3D(**settings.augment) if settings.augment else None
    ada = AdaptiveAugment(target=settings.ada_target, speed_kimg=settings.ada_kimg,
                          p=augment.p if augment else 0.0) if (augment and settings.ada_target) else None
    loss_kw = {k: v for k, v in settings.loss.items() if k != "kind"}
    kind = settings.loss.get("kind", "stylegan2" if G.has_w else "wgan-gp")
    loss = StyleGAN2Loss(G, D, augment, **loss_kw) if kind == "stylegan2" else WGANGPLoss(G, D, augment, **loss_kw)
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
    dist = dist or Dist()
    settings, G, D, loss, kind = parts.settings, parts.G, parts.D, parts.loss, parts.kind
    kw = {"progress": prog} if kind == "wgan-gp" else {}
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
    _all_reduce_grads(list(D.parameters()), dist)
    ok_d = _finite_step(l_d, parts.opt_d, parts.scaler_d, dist)
    # ---- generator step (D frozen: no parameter gradients wasted on it) ----
    D.requires_grad_(False)
    parts.opt_g.zero_grad(set_to_none=True)
    for _ in range(settings.accumulate):
        z = latents(settings.batch)
        with parts.autocast():
            l_g, st_g = loss.generator_loss(z, step, **kw)
        parts.scaler_g.scale(l_g / settings.accumulate).backward()
    _all_reduce_grads(list(G.parameters()), dist)
    ok_g = _finite_step(l_g, parts.opt_g, parts.scaler_g, dist)
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
    if resume:
        _check_resumable(Path(out), settings)
    with _removed_unless_checkpointed(Path(out)):
        return _train(data, out, settings, labels, resume, device, max_steps, progress, cancel, log)


def _check_resumable(out: Path, settings: TrainSettings) -> None:
    """Before anything is written: ``out`` holds a checkpoint of this family whose generator has the settings this
    run names (from its config alone; the full network comparison follows once the networks are built)."""
    import json

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
    wanted = json.loads(json.dumps(settings.generator))
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


def _train(data, out, settings: TrainSettings, labels, resume, device, max_steps, progress, cancel, log) -> dict:
    import torch

    from VolGANCore.env import pick_device
    from VolumetricGANLib.checkpoint import (capture_rng_state, command_line, load_checkpoint, restore_rng_state,
                                             save_checkpoint)
    from VolumetricGANLib.networks import build_discriminator, build_generator
    from VolumetricGANLib.networks.layers import to_channels_last_3d

    from .data import BatchFeeder, CachedVolumeSet, InfiniteSampler, Preprocess
    from .run import GracefulStop, TrainingRun, latest_checkpoint, save_montage

    dev = torch.device(pick_device(device))
    dist = init_distributed(dev.type)
    if dist.group and dev.type == "cuda":
        dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    autocast_dtype, use_scaler = resolve_amp(settings.amp, dev.type)
    out = Path(out)
    run = TrainingRun(out, keep_last=settings.keep_last) if dist.main else None
    if run is not None:  # the log says how each session of the run was started (model cards quote it)
        backend = f" ({torch.distributed.get_backend()})" if dist.group else ""
        run.log(f"{'resume' if resume else 'start'}: {command_line()} (device {dev}, world {dist.world}{backend}, "
                f"amp {settings.amp}, torch threads {torch.get_num_threads()}, preset {settings.preset})")

    # -- data ------------------------------------------------------------------------------------------------
    pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.preprocess.items()})
    dataset = CachedVolumeSet.build(data, pre, out / "cache", labels_folder=labels, patch_size=settings.patch_size,
                                    progress=progress if dist.main else None, cancel=cancel)
    # config first: building it instantiates a generator, which must not touch the training RNG streams
    config = _checkpoint_config(settings, _data_spacing(dataset), settings.preset or "model") if dist.main else None
    torch.manual_seed(int(settings.seed))  # identical initial weights on every rank (and rank 0 broadcasts)
    G = build_generator(settings.family, settings.generator).to(dev)
    D = build_discriminator(settings.family, settings.discriminator).to(dev)
    if tuple(dataset.shape) != tuple(G.output_shape):
        raise VolGANError(f"training volumes have shape {tuple(dataset.shape)} after preprocessing but the "
                          f"generator makes {tuple(G.output_shape)} (set --roi / the preset's output shape)")
    if settings.channels_last:  # CPU too: oneDNN convolutions with few channels run several times faster
        to_channels_last_3d(G)  # 5-D tensors only (Module.to(memory_format=…) refuses StyleGAN2's 4-D constant)
        to_channels_last_3d(D)
    parts = build_train_parts(settings, G, D, dev.type, autocast_dtype, use_scaler)
    G_ema, opt_g, opt_d, scaler_g, scaler_d = parts.G_ema, parts.opt_g, parts.opt_d, parts.scaler_g, parts.scaler_d
    augment, ada, loss, kind = parts.augment, parts.ada, parts.loss, parts.kind
    phase = _Phase(settings, getattr(G, "max_res", 0))
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(settings.seed) * 1000 + dist.rank)
    torch.manual_seed(int(settings.seed) * 1000 + dist.rank)
    sampler = InfiniteSampler(len(dataset), seed=settings.seed, rank=dist.rank, world=dist.world)
    step, nimg = 0, 0
    quick = None  # quick metrics (rank 0): they pick the best checkpoint (GANTrainerLib.quick_metrics)
    metrics_on = bool(settings.metrics_kimg)
    if metrics_on:
        from .quick_metrics import QuickMetrics

        why_not = QuickMetrics.unusable(settings, dataset)  # the same answer on every rank
        metrics_on = why_not is None
        if why_not and dist.main:
            log(why_not)
            run.log(why_not)
        if metrics_on and dist.main:
            quick = QuickMetrics(settings, dataset, out, dev, _data_spacing(dataset))

    # -- resume ---------------------------------------------------------------------------------------------
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        raise VolGANError(f"--resume: no checkpoint in {out / 'checkpoints'} (start without --resume)")
    if ckpt is not None:
        blob = load_checkpoint(ckpt, map_location="cpu", expect_family=settings.family)
        tr = blob.get("training") or {}
        if "G" not in blob["tensors"] or "D" not in blob["tensors"] or not tr:
            raise VolGANError(f"{ckpt}: holds no training state (G, D, optimisers); it cannot be resumed")
        _check_same_networks(blob["config"], G, settings, ckpt)
        G.load_state_dict(blob["tensors"]["G"])
        D.load_state_dict(blob["tensors"]["D"])
        G_ema.load_state_dict(blob["tensors"]["G_ema"])
        opt_g.load_state_dict(tr["opt_g"])
        opt_d.load_state_dict(tr["opt_d"])
        changed = _apply_learning_rates({"G": (opt_g, settings.lr_g), "D": (opt_d, settings.lr_d)})
        scaler_g.load_state_dict(tr["scaler_g"])
        scaler_d.load_state_dict(tr["scaler_d"])
        step, nimg = int(tr["step"]), int(tr["nimg"])
        sampler.load_state_dict(tr["sampler"][dist.rank] if dist.rank < len(tr["sampler"]) else tr["sampler"][0])
        gen_states = tr["latent_rng"]
        gen.set_state(gen_states[dist.rank] if dist.rank < len(gen_states) else gen_states[0])
        if tr.get("rng") is not None:
            restore_rng_state(tr["rng"])
        if ada is not None and tr.get("ada"):
            ada.load_state_dict(tr["ada"])
        if augment is not None and tr.get("augment_p") is not None:
            augment.p = float(tr["augment_p"])
        if hasattr(loss, "pl_mean") and tr.get("pl_mean") is not None:
            loss.pl_mean = tr["pl_mean"].to(dev)
        msg = f"resumed from step {step} ({nimg / 1000:.2f} kimg) of {ckpt}" + (
            f"; learning rates now {changed}" if changed else "")
        if dist.main:
            log(msg)
            run.log(msg)
        if quick is not None and tr.get("quick_metrics"):
            dropped = quick.load_state_dict(tr["quick_metrics"])
            if dropped:
                run.clear_metrics()
            note = dropped or f"quick metrics: best {quick.track} so far {quick.best} at step {quick.best_step}"
            log(note)
            run.log(note)
    else:
        _broadcast_params(G, dist)
        _broadcast_params(D, dist)
        G_ema.load_state_dict(G.state_dict())

    batch_total = settings.batch * settings.accumulate * dist.world
    total_steps = int(math.ceil(settings.kimg * 1000 / batch_total))
    if max_steps is not None:
        total_steps = min(total_steps, step + int(max_steps))
    # CUDA: a thread keeps the next batches pinned and copied on a side stream (no host sync); CPU: read on demand
    feeder = BatchFeeder(dataset, sampler, settings.batch, dev, channels_last=settings.channels_last,
                         prefetch=2 * settings.accumulate if dev.type == "cuda" else 0)
    next_batch = feeder.next

    def latents(n):
        z = torch.randn(n, G.z_dim, device=dev, generator=gen)
        if settings.latent == "hypersphere":
            z = z / z.norm(dim=1, keepdim=True)
        return z

    def save(reason: str) -> Optional[Path]:
        """Every rank calls this at the same step (it gathers every rank's stream state); rank 0 writes."""
        states = _gather_states(dist, feeder.state_dict(), gen.get_state())
        if not dist.main:
            return None
        training = {
            "step": step, "nimg": nimg, "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
            "sampler": states[0], "latent_rng": states[1], "rng": capture_rng_state(),
            "ada": ada.state_dict() if ada else None, "augment_p": augment.p if augment else None,
            "pl_mean": getattr(loss, "pl_mean", None), "settings": settings.to_dict(),
            "quick_metrics": quick.state_dict() if quick is not None else None,
            "progress": last_prog,  # progressive level the last step trained at (None: not progressive)
        }
        training = {k: v for k, v in training.items() if v is not None}
        measured = quick_values[1] if quick_values and quick_values[0] == step else {}  # quick metrics of this step
        ranked = bool(measured) and quick_values[2]  # below a progressive top level or collapsed: not ranked
        path = run.checkpoint_path(step)
        with torch.random.fork_rng(devices=[]):  # saving rebuilds the network: keep the training RNG untouched
            save_checkpoint(path, config, G_ema=G_ema, G=G, D=D, training=training,
                            provenance={"data": str(data), "cases": len(dataset), "reason": reason,
                                        "kimg": nimg / 1000.0, "preset": settings.preset},
                            metrics={"kimg": nimg / 1000.0, "step": step, **measured})
        track = quick.track if quick is not None and ranked else None
        run.register_checkpoint(path, step, metric=measured.get(track) if track else None, metric_name=track)
        run.log(f"checkpoint {path.name} ({reason}) at {nimg / 1000:.2f} kimg")
        return path

    bad_d = bad_g = 0
    worst_bad = torch.zeros((), device=dev)
    stats_acc: dict[str, Any] = {}
    t_start = time.perf_counter()
    last_snapshot_time = time.perf_counter()
    snapshot_every = max(1, int(round(settings.snapshot_kimg * 1000 / batch_total)))
    sample_every = max(1, int(round(settings.sample_kimg * 1000 / batch_total)))
    fixed_gen = torch.Generator(device=dev)
    fixed_gen.manual_seed(int(settings.seed))  # montage latents: the same every run, outside the training stream
    z_fixed = torch.randn(min(4, settings.batch), G.z_dim, device=dev, generator=fixed_gen)
    if settings.latent == "hypersphere":
        z_fixed = z_fixed / z_fixed.norm(dim=1, keepdim=True)
    saved_step = -1
    sampled_step = -1
    metrics_every = max(1, int(round(settings.metrics_kimg * 1000 / batch_total))) if metrics_on else 0
    quick_values: Optional[tuple] = None  # (step, {name: value}, ranked) of the latest quick metrics (rank 0)
    quick_step = -1                       # step of the latest attempt (every rank)

    def measure_quick(prog) -> bool:
        """Rank 0 measures the quick metrics (unless over budget); True on every rank if the tracked one improved."""
        nonlocal quick_values, quick_step
        quick_step, improved = step, False
        if dist.main:
            elapsed = time.perf_counter() - t_start
            if quick.over_budget(elapsed):
                run.log(f"quick metrics skipped at step {step}: they took {quick.spent_s:.1f} s of {elapsed:.1f} s "
                        f"(budget {100 * quick.budget:g} %)")
            else:
                kw = {"progress": prog} if kind == "wgan-gp" else {"noise_mode": "const"}
                # a progressive generator below its top level is not what its checkpoint generates (that is
                # the untrained top level), so it cannot be the best checkpoint
                top = prog is None or prog >= phase.max_res
                values, ranked, improved = quick.evaluate(G_ema, kw, step, ranked=top)
                quick_values = (step, {**{k: v for k, v in values.items() if k != "seconds"},
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
            improved = _any_rank(improved, dist)
        return improved

    def montage(prog) -> None:
        nonlocal sampled_step
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            kw = {"progress": prog} if kind == "wgan-gp" else {"noise_mode": "const"}
            imgs = G_ema(z_fixed, **kw).float().cpu().numpy()
        png = save_montage(imgs, out / "samples" / f"samples-{step:07d}.png",
                           title=f"step {step}, {nimg / 1000:.2f} kimg")
        run.log_image("samples", step, png)
        sampled_step = step
    state = "running"
    last_path = None
    if dist.main:
        run.update_status(state="running", step=step, kimg=nimg / 1000.0, total_kimg=settings.kimg,
                          preset=settings.preset, device=str(dev), world=dist.world, amp=str(autocast_dtype),
                          process_group=torch.distributed.get_backend() if dist.group else None)
    G.train()
    D.train()
    last_prog = phase.progress(nimg)
    # cancellation is checked by the loop itself (so it can checkpoint first), not by the progress bar
    with GracefulStop() as stop, Progress(total_steps, "train", progress if dist.main else None, None) as bar, feeder:
        bar.set(step)
        while step < total_steps:
            prog = last_prog = phase.progress(nimg)
            ok_d, ok_g, st_d, st_g = train_iteration(parts, step, nimg, batch_total,
                                                     lambda: phase.reals_at(next_batch(), prog), latents, prog, dist)
            bad_d = (bad_d + 1) * (1 - ok_d)  # CUDA: device tensors, read at logging intervals only
            bad_g = (bad_g + 1) * (1 - ok_g)
            step += 1
            nimg += batch_total
            if dev.type == "cuda":
                worst_bad = torch.maximum(worst_bad, torch.maximum(bad_d, bad_g))
                sync_now = step % settings.log_steps == 0 or step == total_steps or step % snapshot_every == 0
                worst, worst_bad = (int(worst_bad), torch.zeros((), device=dev)) if sync_now else (0, worst_bad)
            else:
                worst = max(bad_d, bad_g)
            if worst >= settings.max_bad_steps:
                state = "failed"
                msg = (f"stopped: {worst} consecutive non-finite losses at step {step} "
                       "(lower the learning rates, use --amp bf16 or off, or check the data for outliers)")
                if dist.main:
                    run.log(msg)
                    run.update_status(state="failed", message=msg, step=step)
                raise VolGANError(msg)
            for k, v in {**st_d, **st_g}.items():
                stats_acc[k] = stats_acc.get(k, 0.0) + v.float()
            if dist.main and (step % settings.log_steps == 0 or step == total_steps):
                n = settings.log_steps if step % settings.log_steps == 0 else (step % settings.log_steps)
                scalars = {k: float(v) / n for k, v in stats_acc.items()}   # one host sync per interval
                elapsed = time.perf_counter() - t_start
                scalars.update({"augment/p": augment.p if augment else 0.0, "augment/rt": ada.rt if ada else 0.0,
                                "speed/kimg_per_s": (nimg / 1000.0) / max(elapsed, 1e-9) if step else 0.0})
                if prog is not None:
                    scalars["progress/level"] = prog
                if dev.type == "cuda":
                    scalars["memory/gpu_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
                run.log_scalars(step, nimg / 1000.0, scalars)
                run.update_status(state="running", step=step, kimg=nimg / 1000.0,
                                  eta_s=elapsed / max(step, 1) * (total_steps - step))
                stats_acc = {}
            if dist.main and step % sample_every == 0:
                montage(prog)
            best_now = bool(metrics_every) and step % metrics_every == 0 and measure_quick(prog)
            due_time = (settings.snapshot_minutes is not None
                        and time.perf_counter() - last_snapshot_time > settings.snapshot_minutes * 60)
            agree = dev.type != "cuda" or step % settings.log_steps == 0  # CUDA: host syncs at log steps only
            if dist.group:
                due_time = _any_rank(due_time, dist) if agree else False
            if step % snapshot_every == 0 or due_time or best_now:
                last_path = save("periodic" if step % snapshot_every == 0 or due_time else "best") or last_path
                saved_step = step
                last_snapshot_time = time.perf_counter()
            requested = stop.requested or (cancel is not None and cancel.cancelled)
            if dist.group:
                requested = _any_rank(bool(requested), dist) if agree else False
            if requested:
                state = "stopped"
                break
            bar.set(step)
    D.requires_grad_(True)
    if dist.main and sampled_step != step:
        montage(phase.progress(nimg))
    if saved_step != step:
        if metrics_every and state != "stopped" and quick_step != step:
            measure_quick(last_prog)  # the final checkpoint competes for the best too (every rank calls)
        last_path = save("stopped" if state == "stopped" else "final") or last_path
    final_state = "finished" if state == "running" else state
    if dist.main:
        run.update_status(state=final_state, step=step, kimg=nimg / 1000.0, last_checkpoint=run.relative(last_path) if last_path else None)
        run.log(f"{final_state} at step {step} ({nimg / 1000:.2f} kimg)")
        run.close()
    with torch.no_grad():  # lets callers (and the DDP test) check that every rank holds the same weights
        checksum = float(sum(p.double().sum() for p in G.parameters()))
    return {"state": final_state, "step": step, "kimg": nimg / 1000.0, "checkpoint": str(last_path) if last_path else None,
            "rank": dist.rank, "world": dist.world, "process_group": dist.group, "g_param_checksum": checksum}


def _finite_step(loss_value, optimizer, scaler, dist: Dist, device_side: Optional[bool] = None):
    """Step if the loss is finite on every rank; otherwise skip (and halve an fp16 scale).

    Returns whether it stepped. On CPU (and other non-CUDA devices): a Python bool, after one host sync. On CUDA:
    a 0-d float tensor on the device (1 = stepped) and no host sync: Adam runs its fused kernel, which skips the
    update when told ``found_inf``; with an fp16 GradScaler a non-finite loss instead poisons one gradient with
    NaN, so the scaler's own (device-side) inf check skips the step and backs off the scale. Count failures with
    ``(bad + 1) * (1 - ok)``, which works for both kinds of result. ``device_side`` forces either path (tests).
    """
    import torch

    finite = torch.isfinite(loss_value.detach()).to(torch.float32)
    if dist.group:
        import torch.distributed as tdist

        tdist.all_reduce(finite, op=tdist.ReduceOp.MIN)
    if finite.device.type == "cuda" if device_side is None else device_side:
        _set_fused_adam(optimizer, True)
        finite = finite.reshape(())
        if scaler.is_enabled():
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                smallest = min(grads, key=lambda t: t.numel())
                smallest.add_(torch.where(finite > 0, 0.0, float("nan")).to(smallest.dtype))
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.found_inf = 1.0 - finite
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf
        return finite
    if finite.item() < 1:
        optimizer.zero_grad(set_to_none=True)
        if scaler.is_enabled():
            scaler.update(scaler.get_scale() / 2)
        return False
    scaler.step(optimizer)
    scaler.update()
    return True


def _set_fused_adam(optimizer, on: bool) -> None:
    """Switch an Adam optimiser to its fused kernel (``on``) in place; moves its step counters to the parameters'
    device. Needed once per optimiser (also after loading a state saved without it); a no-op afterwards."""
    import torch

    optimizer._step_supports_amp_scaling = on  # GradScaler hands a fused optimiser found_inf (no sync)
    if bool(optimizer.param_groups[0].get("fused")) == on:  # (a state saved by a fused run loads as fused)
        return
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = (True, None) if on else (None, None)
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and torch.is_tensor(st.get("step")):
                st["step"] = st["step"].to(device=p.device if on else "cpu", dtype=torch.float32)


def _any_rank(flag: bool, dist: Dist) -> bool:
    import torch
    import torch.distributed as tdist

    on_gpu = tdist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _gather_states(dist: Dist, sampler_state: dict, gen_state) -> tuple[list, list]:
    """Every rank's sampler position and latent-RNG state (so a resumed multi-rank run continues exactly)."""
    if not dist.group:
        return [sampler_state], [gen_state]
    import torch.distributed as tdist

    box: list = [None] * dist.world
    tdist.all_gather_object(box, (sampler_state, gen_state.cpu()))
    return [b[0] for b in box], [b[1] for b in box]


def _data_spacing(dataset) -> list[float]:
    cases = dataset.meta.get("cases", [])
    if cases and "spacing_xyz_mm" in cases[0]:
        return [float(s) for s in cases[0]["spacing_xyz_mm"]]
    sp = dataset.meta.get("spacing_xyz_mm")
    if sp:
        return [float(s) for s in sp]
    raise VolGANError("cannot tell the voxel spacing of the training data")
