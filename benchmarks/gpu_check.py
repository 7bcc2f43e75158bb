"""One prepared GPU check: proves every CUDA path, measures GPU figures, then trains with the time left.

A GPU machine is lent for minutes (about 15 of machine time, at most 10 per command, start-up included, bare
each time), so everything a GPU session needs is this one command. It writes under ``--out`` (default
``gpu_check/``)::

    summary.md, summary.json   one line per step: pass / fail / skipped / timed out, its reason, its figures
    gpu_check.log              every step's full output and tracebacks
    runs/<preset>/             the training runs of step 4 (checkpoints, samples, metrics, log)
    models/<preset>.vgan       their exported generators (with model cards and montages)

The summary is rewritten after every step, so a killed check still leaves a valid one. ``--budget-s`` (default
480) bounds the whole run: every step has its own time box inside it, steps that no longer fit are skipped
with the reason, and a watchdog ends the process (summary written) if a step overruns the budget.

Steps, in order of value
------------------------
1. ``environment``: GPU, driver, torch, CUDA, cuDNN, bf16 support.
2. Correctness (each CUDA path a pass/fail line): a training step of each family under bf16 and under fp16
   with GradScaler; no host sync inside a training iteration (``torch.cuda.set_sync_debug_mode``); an injected
   inf skipped on device (fused Adam's ``found_inf`` for bf16, the NaN-poisoned GradScaler for fp16) without a
   host sync; BatchFeeder (side-stream prefetch) against plain loading; channels-last-3D against contiguous;
   generation under AMP against fp32; ``torchrun --nproc_per_node 1 -m VolGANCore.cli train`` on NCCL; steering
   and inversion; a DynUNet AMP step; three iterations of the joint image + label preset ``cow-stylegan-labels``.
3. Throughput, side by side in the same run: our training iteration against the anchors' re-implemented
   iterations (``benchmarks/bench_train.py``) at the anchors' settings, with peak GPU memory; generation
   volumes/s; steering seconds per sample; evaluation features/s; a segmentation iteration.
4. With the time left: ``spongiosa-pgan``, ``cow-stylegan`` and ``cow-stylegan-labels`` (with the phantoms'
   labels) trained concurrently on the built-in phantoms
   (made in the background from the start), run lengths sized from step 3's speed so each finishes with its
   quick metrics; exported with cards.

``--dry-run`` runs the same steps at tiny sizes on the CPU and reports the CUDA-only ones as skipped (a test in
``make test`` runs it). The script needs no install of the project: it puts the package folders on
``sys.path`` (and on ``PYTHONPATH`` for the processes it starts).

    python benchmarks/gpu_check.py [--out gpu_check] [--budget-s 480] [--dry-run] [--only STEP,...]
    make gpu-check [GPU_PYTHON=python3]

docs/training.md ("Checking a GPU") gives the command for a bare lent machine and what its set-up costs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACKAGE_DIRS = [ROOT / "MorphometryLogic", ROOT / "VolumetricGAN", ROOT / "GANTrainer"]
for _p in [HERE, *PACKAGE_DIRS]:
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

PASS, FAIL, SKIP, TIMEOUT = "pass", "fail", "skipped", "timed out"
CYCLE = 16  # lazy-regulariser period of the presets and of the CoW anchor (R1 / GP every 16 steps)


class StepTimeout(Exception):
    """A step ran past its time box (raised by :meth:`Ctx.check` inside the step's loops)."""


class Skip(Exception):
    """A step (or part of one) cannot run here; the message says why."""


@dataclasses.dataclass
class Step:
    name: str
    group: str                        # "environment", "correctness", "throughput", "training"
    fn: Callable[["Check", "Ctx"], Optional[dict]]
    box_s: float                      # time box on a GPU (the dry run on the CPU: 4× as long)
    cuda_only: bool = False           # reported as skipped in the dry run and on machines without CUDA
    what: str = ""                    # one line for the summary


@dataclasses.dataclass
class Ctx:
    """What a running step sees: its deadline, the device, the sizes, and a logger."""

    check: "Check"
    deadline: float
    notes: list = dataclasses.field(default_factory=list)
    figures: dict = dataclasses.field(default_factory=dict)

    @property
    def dry(self) -> bool:
        return self.check.dry

    @property
    def dev(self):
        return self.check.dev

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise StepTimeout()

    def note(self, text: str) -> None:
        self.notes.append(text)

    def log(self, text: str) -> None:
        self.check.log(text)


# =============================================================================================================
# The check: step bookkeeping, time boxes, summary, watchdog
# =============================================================================================================
class Check:
    def __init__(self, out: Path, budget_s: float, dry: bool, device: str, only: Optional[set]):
        import torch

        self.out, self.budget_s, self.dry, self.only = out, float(budget_s), dry, only
        self.t0 = time.monotonic()
        self.end = self.t0 + self.budget_s
        self.cuda = torch.cuda.is_available() and not dry and device != "cpu"
        self.dev = torch.device(("cuda" if device == "auto" else device) if self.cuda else "cpu")
        self.results: list[dict] = []
        self.env: dict = {}
        self.state: dict = {}           # shared between steps (data folders, measured speeds, ...)
        self.current: Optional[dict] = None
        self.out.mkdir(parents=True, exist_ok=True)
        self._log = open(self.out / "gpu_check.log", "a", buffering=1)
        self._lock = threading.Lock()
        self.background: list[subprocess.Popen] = []

    # -- logging / summary -----------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self.t0:7.1f} s]"
        with self._lock:
            for line in str(text).splitlines() or [""]:
                self._log.write(f"{stamp} {line}\n")
        print(f"{stamp} {text}", flush=True)

    def left(self) -> float:
        return self.end - time.monotonic()

    def summary(self) -> dict:
        counts: dict = {}
        for r in self.results:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "dry_run": self.dry, "budget_s": self.budget_s,
                "elapsed_s": round(time.monotonic() - self.t0, 1), "device": str(self.dev), "environment": self.env,
                "counts": counts, "steps": self.results}

    def write_summary(self) -> None:
        data = self.summary()
        _write_atomic(self.out / "summary.json", json.dumps(_jsonable(data), indent=2))
        _write_atomic(self.out / "summary.md", render_markdown(data))

    # -- steps -------------------------------------------------------------------------------------------------
    def run(self, steps: list[Step]) -> dict:
        self._start_watchdog()
        for step in steps:
            self.run_step(step)
        self.stop_background()
        self.write_summary()
        return self.summary()

    def run_step(self, step: Step) -> None:
        rec = {"step": step.name, "group": step.group, "what": step.what, "status": SKIP, "reason": "",
               "seconds": 0.0, "figures": {}, "notes": []}
        box = step.box_s * (4 if self.dry else 1)     # the dry run's CPU sizes are small but the CPU is slow
        why = None
        if self.only is not None and step.name not in self.only and step.group not in self.only:
            why = "not selected (--only)"
        elif step.cuda_only and not self.cuda:
            why = "CUDA only: dry run on the CPU" if self.dry else "CUDA only: no CUDA device"
        elif self.left() < min(box, 20.0):
            why = f"budget: {self.left():.0f} s left of {self.budget_s:.0f} s"
        if why:
            rec["reason"] = why
            self.results.append(rec)
            self.log(f"SKIP {step.name}: {why}")
            self.write_summary()
            return
        box = min(box, self.left())
        ctx = Ctx(self, time.monotonic() + box)
        self.current = rec
        self.results.append(rec)
        self.log(f"---- {step.name} (box {box:.0f} s): {step.what}")
        t = time.monotonic()
        try:
            figures = step.fn(self, ctx) or {}
            rec["figures"].update(ctx.figures)
            rec["figures"].update(figures)
            rec["status"] = PASS
        except StepTimeout:
            rec["status"], rec["reason"] = TIMEOUT, f"ran past its {box:.0f} s box"
            rec["figures"].update(ctx.figures)
        except Skip as exc:
            rec["status"], rec["reason"] = SKIP, str(exc)
            rec["figures"].update(ctx.figures)
        except CheckFailed as exc:
            rec["status"], rec["reason"] = FAIL, str(exc)
            rec["figures"].update(ctx.figures)
        except Exception as exc:  # a crash is a failure of that step, not of the check
            rec["status"] = FAIL
            rec["reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            rec["figures"].update(ctx.figures)
            self.log(traceback.format_exc())
        finally:
            rec["seconds"] = round(time.monotonic() - t, 2)
            rec["notes"] = list(ctx.notes)
            self.current = None
            _release_gpu()
        self.log(f"{rec['status'].upper()} {step.name} ({rec['seconds']:.1f} s){': ' + rec['reason'] if rec['reason'] else ''}"
                 + (f" {json.dumps(_jsonable(rec['figures']))}" if rec["figures"] else ""))
        self.write_summary()

    def _start_watchdog(self) -> None:
        grace = 30.0

        def watch():
            while True:
                time.sleep(1.0)
                if time.monotonic() > self.end + grace:
                    rec = self.current
                    if rec is not None:
                        rec["status"], rec["reason"] = TIMEOUT, "the watchdog ended the check: the budget was spent"
                    self.log("watchdog: budget spent; summary written, exiting")
                    self.stop_background()
                    self.write_summary()
                    os._exit(3)

        threading.Thread(target=watch, name="gpu-check-watchdog", daemon=True).start()

    def stop_background(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                with contextlib.suppress(Exception):
                    os.killpg(proc.pid, signal.SIGKILL)
        self.background = []


class CheckFailed(Exception):
    """A correctness condition did not hold; the message is the summary's reason."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    try:
        return float(obj)
    except Exception:
        return str(obj)


def _release_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def render_markdown(data: dict) -> str:
    env = data["environment"]
    lines = [f"# GPU check, {data['date']}", ""]
    lines.append(f"{'Dry run on the CPU' if data['dry_run'] else 'Device ' + data['device']}; "
                 f"{data['elapsed_s']:.0f} s of a {data['budget_s']:.0f} s budget; "
                 + ", ".join(f"{v} {k}" for k, v in sorted(data["counts"].items())) + ".")
    if env:
        lines += ["", "| environment | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in env.items()]
    for group in ("correctness", "throughput", "training"):
        rows = [r for r in data["steps"] if r["group"] == group]
        if not rows:
            continue
        lines += ["", f"## {group.capitalize()}", "", "| step | status | s | reason / figures |", "|---|---|---|---|"]
        for r in rows:
            figs = "; ".join(f"{k} {_fmt(v)}" for k, v in r["figures"].items())
            notes = "; ".join(r["notes"])
            text = " — ".join(t for t in (r["reason"], figs, notes) if t)
            lines.append(f"| {r['step']} | {r['status']} | {r['seconds']:.1f} | {text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# =============================================================================================================
# Sizes: the real settings on a GPU, tiny ones in the dry run
# =============================================================================================================
def family_presets(check: Check) -> dict[str, tuple[str, int]]:
    """family -> (preset, batch) for the correctness steps."""
    if check.dry:
        return {"stylegan2-3d": ("tiny-cow", 2), "pgan-3d": ("tiny-spongiosa", 2)}
    return {"stylegan2-3d": ("cow-stylegan", 4), "pgan-3d": ("spongiosa-pgan", 16)}


def tiny_dry_networks(settings) -> None:
    """Shrink a preset's networks further for the dry run (8×16×16 StyleGAN, 8³ PGAN)."""
    if settings.family == "stylegan2-3d":
        settings.generator = dict(settings.generator, output_shape=[4, 16, 16], base_shape=[1, 4, 4], channel_base=8,
                                  channel_max=8, z_dim=16, w_dim=16, mapping_layers=1)
        settings.discriminator = dict(settings.discriminator, img_shape=[4, 16, 16], base_shape=[1, 4, 4],
                                      channel_base=8, channel_max=8, mbstd_group_size=2)
    else:
        settings.generator = dict(settings.generator, max_res=1)
        settings.discriminator = dict(settings.discriminator, max_res=1)


def make_parts(check: Check, family: str, amp: str, batch: Optional[int] = None, preset: Optional[str] = None,
               c_pool=None):
    """Networks on the device (channels-last as train() stores them) and the loop's parts for ``family``."""
    import torch

    from GANTrainerLib.train import build_train_parts, settings_from_preset
    from VolGANCore.env import amp_dtype
    from VolumetricGANLib.networks import build_discriminator, build_generator
    from VolumetricGANLib.networks.layers import to_channels_last_3d

    name, default_batch = family_presets(check)[family]
    s = settings_from_preset(preset or name, amp=amp, batch=batch or default_batch)
    if check.dry:
        tiny_dry_networks(s)
    if s.augment:
        s.augment = {**s.augment, "p": 0.5}  # exercise the augmentation kernels too
    dtype, scaler = amp_dtype(s.amp, check.dev.type, training=True)
    torch.manual_seed(0)
    G = build_generator(s.family, s.generator).to(check.dev)
    D = build_discriminator(s.family, s.discriminator).to(check.dev)
    to_channels_last_3d(G)
    to_channels_last_3d(D)
    parts = build_train_parts(s, G, D, check.dev.type, dtype, scaler, c_pool=c_pool)
    G.train()
    D.train()
    return parts


def reals_for(parts, check: Check, n: Optional[int] = None, seed: int = 1):
    import torch

    G = parts.G
    shape = tuple(G.output_shape)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n or parts.settings.batch, 1, *shape, generator=g) * 2 - 1
    x = x.to(check.dev)
    return x.contiguous(memory_format=torch.channels_last_3d) if check.cuda else x


def latents_for(parts, check: Check):
    import torch

    def latents(n):
        z = torch.randn(n, parts.G.z_dim, device=check.dev)
        return z / z.norm(dim=1, keepdim=True) if parts.settings.latent == "hypersphere" else z

    return latents


def iterate(parts, check: Check, step: int, reals, prog_top: bool = True):
    """One :func:`train_iteration` at ``step`` (a progressive generator at its top level)."""
    from GANTrainerLib.train import train_iteration

    prog = float(parts.G.max_res) if parts.kind == "wgan-gp" and prog_top else None
    batch_total = parts.settings.batch * parts.settings.accumulate
    return train_iteration(parts, step, step * batch_total, batch_total, lambda: reals, latents_for(parts, check), prog)


@contextlib.contextmanager
def host_sync_monitor(check: Check):
    """Collects the host synchronisations of the CUDA calls inside (``torch.cuda.set_sync_debug_mode('warn')``)."""
    import torch

    found: list[str] = []
    if not check.cuda:
        yield None
        return
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            found.append(f"{Path(w.filename).name}:{w.lineno}")


def params_of(module):
    return [p.detach().clone() for p in module.parameters()]


def finite_all(module) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def changed(before, module) -> bool:
    import torch

    return any(not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters()))


# =============================================================================================================
# 1. Environment
# =============================================================================================================
def step_environment(check: Check, ctx: Ctx) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "cuda_available": torch.cuda.is_available()}
    if check.cuda:
        props = torch.cuda.get_device_properties(check.dev)
        env.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "compute_capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
                    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                    "bf16": torch.cuda.is_bf16_supported(), "nccl": ".".join(map(str, torch.cuda.nccl.version()))})
        with contextlib.suppress(Exception):
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            env["driver, max SM clock, power limit"] = q.stdout.strip()
    check.env.update(env)
    return {}


# =============================================================================================================
# 2. Correctness
# =============================================================================================================
def three_iterations(parts, check: Check, ctx: Ctx, reals) -> None:
    """Three training iterations (step 0 carries the lazy regularisers, R1 / path length; 1 and 2 are plain):
    every step taken, losses and weights finite, both networks updated; then no host sync in a plain iteration."""
    g0, d0 = params_of(parts.G), params_of(parts.D)
    oks = []
    for step in range(3):
        ok_d, ok_g, st_d, st_g = iterate(parts, check, step, reals)
        oks.append((float(ok_d), float(ok_g)))
        ctx.check_time()
    losses = {k: float(v) for k, v in {**st_d, **st_g}.items() if k.startswith("loss")}
    expect(all(a == 1.0 and b == 1.0 for a, b in oks), f"a step was skipped as non-finite: {oks}")
    expect(all(math.isfinite(v) for v in losses.values()), f"non-finite losses {losses}")
    expect(changed(g0, parts.G) and changed(d0, parts.D), "the weights did not change")
    expect(finite_all(parts.G) and finite_all(parts.D) and finite_all(parts.G_ema), "non-finite weights")
    if parts.scaler_d.is_enabled():
        ctx.figures["fp16 loss scale G/D"] = f"{parts.scaler_g.get_scale():g}/{parts.scaler_d.get_scale():g}"
    # no host sync inside a plain iteration (the loop reads device values at log steps only): step 5 has no
    # lazy regulariser (R1 every 16, path length every 4) and no ADA update (every 4 steps, one sync by design)
    with host_sync_monitor(check) as syncs:
        iterate(parts, check, 5, reals)
    if syncs is not None:
        ctx.figures["host syncs per plain iteration"] = len(syncs)
        expect(not syncs, f"host syncs inside the iteration at {sorted(set(syncs))[:5]}")
    else:
        ctx.note("host-sync count: CUDA only")
    ctx.figures.update({k: round(v, 4) for k, v in losses.items()})


def step_train(family: str, amp: str) -> Callable:
    def run(check: Check, ctx: Ctx) -> dict:
        import torch

        if amp == "bf16" and check.cuda and not torch.cuda.is_bf16_supported():
            raise Skip("this GPU has no bf16")
        parts = make_parts(check, family, amp)
        three_iterations(parts, check, ctx, reals_for(parts, check))
        return {}

    return run


def joint_reals(check: Check, preset: str, seed: int = 1):
    """Labelled reals for ``preset`` (a joint model): intensity and TopCoW label ids, ``(N, 2, D, H, W)``, a
    different communicating artery in each volume, so the batch holds several CoW variants; and their pool."""
    import torch

    from GANTrainerLib.joint import VariantPool
    from GANTrainerLib.train import settings_from_preset
    from VolGANCore.labels import TOPCOW13
    from VolumetricGANLib.labelmaps import labels_to_onehot, variant_vectors

    s = settings_from_preset(preset)
    if check.dry:
        tiny_dry_networks(s)
    n, (d, h, w) = s.batch, s.generator["output_shape"]
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, 1, d, h, w)
    present = ("L-Pcom", "R-Pcom", "Acom", "3rd-A2")   # segments whose presence alone sets their variant entry
    for i in range(n):
        ids[i, :, d // 4: d // 2, h // 4: h // 2, w // 4: w // 2] = TOPCOW13.id_of(present[i % len(present)])
    pool = VariantPool(variant_vectors(labels_to_onehot(ids, "topcow13"), "topcow13").to(check.dev))
    x = torch.cat([torch.rand(n, 1, d, h, w, generator=g) * 2 - 1, ids], dim=1).to(check.dev)
    return (x.contiguous(memory_format=torch.channels_last_3d) if check.cuda else x), pool


def step_train_joint(check: Check, ctx: Ctx) -> dict:
    """Three iterations of the joint image + label preset (issue 21) under bf16 (fp32 on a GPU without bf16):
    finite, every network updated, no host sync in a plain iteration."""
    import torch

    amp = "bf16" if (not check.cuda or torch.cuda.is_bf16_supported()) else "off"
    preset = "tiny-cow-labels" if check.dry else "cow-stylegan-labels"
    reals, pool = joint_reals(check, preset)
    parts = make_parts(check, "stylegan2-3d", amp, batch=reals.shape[0], preset=preset, c_pool=pool)
    three_iterations(parts, check, ctx, reals)
    ctx.figures.update({"amp": amp, "variants in the pool": len(pool.frequencies()["counts"])})
    return {}


def step_inf_skip(amp: str) -> Callable:
    def run(check: Check, ctx: Ctx) -> dict:
        import torch

        if amp == "bf16" and check.cuda and not torch.cuda.is_bf16_supported():
            raise Skip("this GPU has no bf16")
        parts = make_parts(check, "pgan-3d", amp)
        reals = reals_for(parts, check)
        iterate(parts, check, 0, reals)             # a good step first: fused Adam state, scaler warmed up
        poisoned = reals.clone()
        poisoned[0] = float("inf")                   # a whole volume: augmentation cannot shift it out
        d0 = params_of(parts.D)
        scale0 = parts.scaler_d.get_scale() if parts.scaler_d.is_enabled() else None
        with host_sync_monitor(check) as syncs:
            ok_d, _, _, _ = iterate(parts, check, 1, poisoned)
        expect(float(ok_d) == 0.0, f"the poisoned D step was not reported as skipped (ok_d={float(ok_d)})")
        expect(not changed(d0, parts.D), "the poisoned D step changed the critic's weights")
        expect(finite_all(parts.D), "the critic's weights are not finite after the poisoned step")
        if scale0 is not None:
            scale1 = parts.scaler_d.get_scale()
            ctx.figures["loss scale before/after"] = f"{scale0:g}/{scale1:g}"
            expect(scale1 == scale0 / 2, f"the fp16 loss scale went {scale0:g} -> {scale1:g}, not halved")
        if syncs is not None:
            ctx.figures["host syncs"] = len(syncs)
            expect(not syncs, f"the skip synchronised with the host at {sorted(set(syncs))[:5]}")
            ctx.note("device-side skip: " + ("GradScaler inf check" if scale0 is not None else "fused Adam found_inf"))
        else:
            ctx.note("CPU: the host-side skip path (the device-side one is CUDA only)")
        ok_d, ok_g, _, _ = iterate(parts, check, 2, reals)    # and training goes on
        expect(float(ok_d) == 1.0 and float(ok_g) == 1.0, "the step after the skipped one did not step")
        return {}

    return run


def data_folder(check: Check, name: str, shape, n: int) -> Path:
    """A folder of ``n`` random volumes (NRRD) of ``shape`` for the loader checks."""
    import numpy as np

    from VolGANCore import Volume, write_volume

    folder = check.out / "work" / name
    if not folder.exists():
        rng = np.random.default_rng(0)
        for k in range(n):
            write_volume(Volume(rng.normal(size=shape).astype(np.float32), spacing=(0.5, 0.5, 1.0)),
                         folder / f"c{k:03d}.nrrd")
    return folder


def step_batch_feeder(check: Check, ctx: Ctx) -> dict:
    import torch

    from GANTrainerLib.data import BatchFeeder, CachedVolumeSet, InfiniteSampler, Preprocess

    shape = (4, 16, 16) if check.dry else (32, 128, 128)
    folder = data_folder(check, "feeder", shape, 12)
    ds = CachedVolumeSet.build(folder, Preprocess(intensity="minmax"), check.out / "work" / "cache")
    batches = 6
    with BatchFeeder(ds, InfiniteSampler(len(ds), seed=3), 4, check.dev, channels_last=check.cuda, prefetch=3) as fed, \
            BatchFeeder(ds, InfiniteSampler(len(ds), seed=3), 4, "cpu", prefetch=0) as plain:
        for k in range(batches):
            a = fed.next()
            if check.cuda:
                a = a * 1.0                          # use it on the consumer stream at once, as the loop does
            b = plain.next()
            expect(torch.equal(a.float().cpu(), b), f"batch {k} differs between prefetching and plain loading")
            expect(fed.state_dict() == plain.state_dict(), f"sampler states differ after batch {k}")
            if check.cuda:
                expect(a.is_contiguous(memory_format=torch.channels_last_3d), "the prefetched batch is not channels-last")
    ctx.note("side-stream copy + event wait" if check.cuda else "CPU: prefetch thread only (the side stream is CUDA)")
    return {"batches compared": batches}


def step_channels_last(check: Check, ctx: Ctx) -> dict:
    import torch

    from VolumetricGANLib.networks.layers import to_channels_last_3d

    figures = {}
    with _exact_math():
        for family in ("stylegan2-3d", "pgan-3d"):
            parts = make_parts(check, family, "off", batch=2)
            G = copy.deepcopy(parts.G).eval()
            D = copy.deepcopy(parts.D).eval()
            G_cont = copy.deepcopy(G)
            D_cont = copy.deepcopy(D)
            for m in (G_cont, D_cont):
                for t in list(m.parameters()) + list(m.buffers()):
                    t.data = t.data.contiguous()
            to_channels_last_3d(G)
            to_channels_last_3d(D)
            z = latents_for(parts, check)(2)
            kw = {"noise_mode": "const"} if family == "stylegan2-3d" else {"progress": float(G.max_res)}
            with torch.no_grad():
                img_cl, img_c = G(z, **kw), G_cont(z, **kw)
                d_cl, d_c = D(img_c.contiguous(memory_format=torch.channels_last_3d), **_d_kw(family, G)), \
                    D_cont(img_c.contiguous(), **_d_kw(family, G))
            for what, a, b in (("G", img_cl, img_c), ("D", d_cl, d_c)):
                err = float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))
                figures[f"{family} {what} max rel diff"] = err
                expect(err <= 1e-4, f"{family} {what}: channels-last and contiguous differ by {err:.2e} (> 1e-4)")
    ctx.note("fp32 with TF32 off; tolerance 1e-4 of the output's largest magnitude")
    return figures


def _d_kw(family: str, G) -> dict:
    return {"progress": float(G.max_res)} if family == "pgan-3d" else {}


@contextlib.contextmanager
def _exact_math():
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# Generation under autocast vs fp32, in units of the output range: bf16 keeps 8 bits of mantissa, fp16 11.
AMP_TOLERANCE = {"bf16": (0.05, 0.005), "fp16": (0.01, 0.001)}   # (max abs, mean abs) / output range


def step_generation_amp(check: Check, ctx: Ctx) -> dict:
    import numpy as np
    import torch

    from VolumetricGANLib.generate import generate

    amps = (["bf16"] if torch.cuda.is_bf16_supported() else []) + ["fp16"] if check.cuda else ["bf16"]
    figures = {}
    for family in ("stylegan2-3d", "pgan-3d"):
        model, config = model_with_config(check, family)
        with _exact_math():
            ref = np.stack([v.array for v in generate((model, config), n=4, seed=5, batch=4, device=str(check.dev),
                                                      amp="off").volumes])
        rng = float(ref.max() - ref.min()) or 1.0
        for amp in amps:
            out = np.stack([v.array for v in generate((model, config), n=4, seed=5, batch=4, device=str(check.dev),
                                                      amp=amp).volumes])
            mx, mean = float(np.abs(out - ref).max() / rng), float(np.abs(out - ref).mean() / rng)
            figures[f"{family} {amp} max/mean"] = f"{mx:.2e}/{mean:.2e}"
            tol_max, tol_mean = AMP_TOLERANCE[amp]
            expect(mx <= tol_max and mean <= tol_mean,
                   f"{family} under {amp} differs from fp32 by {mx:.2e} max / {mean:.2e} mean of the output range "
                   f"(tolerance {tol_max:g} / {tol_mean:g})")
        ctx.check_time()
    ctx.note("tolerances (max / mean abs diff ÷ output range): "
             + ", ".join(f"{k} {a:g}/{b:g}" for k, (a, b) in AMP_TOLERANCE.items() if k in amps))
    return figures


def model_with_config(check: Check, family: str, preset: Optional[str] = None):
    """A freshly initialised generator of ``family``'s preset (EMA mode) with its checkpoint config."""
    import torch

    from GANTrainerLib.train import _checkpoint_config, settings_from_preset
    from VolumetricGANLib.networks import build_generator

    name, _ = family_presets(check)[family]
    s = settings_from_preset(preset or name)
    if check.dry:
        tiny_dry_networks(s)
    spacing = [0.6, 0.6, 0.6] if family == "stylegan2-3d" else [0.164] * 3
    config = _checkpoint_config(s, spacing, s.preset)
    torch.manual_seed(0)
    model = build_generator(s.family, s.generator).to(check.dev).eval().requires_grad_(False)
    return model, config


def step_torchrun(check: Check, ctx: Ctx) -> dict:
    preset = "tiny-spongiosa"
    data = data_folder(check, "torchrun_data", (32, 32, 32), 8)
    out = check.out / "work" / "torchrun"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "VolGANCore.cli", "train", "--preset", preset, "--data", str(data), "--out", str(out),
           "--max-steps", "3", "--device", "cuda" if check.cuda else "cpu"]
    ctx.note("launch: torchrun --standalone --nproc_per_node 1 -m VolGANCore.cli train ...")
    proc = run_logged(check, cmd, timeout=max(10.0, ctx.left()))
    expect(proc == 0, f"torchrun exited with {proc} (see gpu_check.log)")
    from GANTrainerLib.run import read_status

    status = read_status(out) or {}
    backend = status.get("process_group")
    expect(status.get("state") == "finished" and status.get("step") == 3, f"run state {status.get('state')} "
           f"at step {status.get('step')}")
    want = "nccl" if check.cuda else "gloo"
    expect(backend == want, f"process group {backend!r}, expected {want!r}")
    return {"backend": backend, "steps": status.get("step")}


def step_steer_invert(check: Check, ctx: Ctx) -> dict:
    import numpy as np

    from VolumetricGANLib.generate import generate
    from VolumetricGANLib.invert import invert
    from VolumetricGANLib.steer import steer

    models = ROOT / "VolumetricGAN" / "Resources" / "Models"
    dev = str(check.dev)
    n, steps = (1, 3) if check.dry else (8, 60)
    t = time.monotonic()
    res = steer(str(models / "tiny-spongiosa.vgan"), targets={"BV/TV": 0.25}, n=n, steps=steps, check_every=3,
                pool=2 if check.dry else 64, device=dev)
    secs = time.monotonic() - t
    arrays = np.stack([v.array for v in res.volumes])
    expect(np.isfinite(arrays).all(), "steered volumes are not finite")
    expect(len(res.rows) == n, f"steering returned {len(res.rows)} rows for {n} samples")
    ctx.check_time()
    target = generate(str(models / "tiny-cow.vgan"), n=1, seed=11, device=dev).volumes[0]
    inv = invert(str(models / "tiny-cow.vgan"), target, steps=5 if check.dry else 100, device=dev)
    hist = [float(h) for h in inv.history]
    expect(np.isfinite(inv.volume.array).all() and all(map(math.isfinite, hist)), "inversion is not finite")
    expect(hist[-1] < hist[0], f"inversion did not reduce its error ({hist[0]:.4g} -> {hist[-1]:.4g})")
    return {"steer s/sample": secs / n, "steer success": res.info.get("success_rate"),
            "inversion MSE first/last": f"{hist[0]:.3g}/{hist[-1]:.3g}"}


def step_dynunet_amp(check: Check, ctx: Ctx) -> dict:
    import numpy as np

    from GANTrainerLib.segmentation.network import get_config, train_network

    cfg = dataclasses.replace(get_config("small"), iters_per_epoch=4, epochs=1)
    rng = np.random.default_rng(0)
    shape = (16, 48, 48)
    images = [rng.normal(size=shape).astype(np.float32) for _ in range(2)]
    labels = [(rng.random(shape) > 0.9).astype(np.int16) * 1 for _ in range(2)]
    for lab in labels:
        lab[lab > 0] = 1
    model = train_network(images, labels, [0, 1], (0.6, 0.6, 0.6), cfg, device=str(check.dev), amp="auto")
    loss = model.config["loss_last10"]
    expect(loss is not None and math.isfinite(loss), f"segmentation loss {loss}")
    pred = model.predict_array(images[0])
    expect(pred.shape == shape and set(np.unique(pred)) <= {0, 1}, f"prediction {pred.shape} {np.unique(pred)}")
    if not check.cuda:
        ctx.note("CPU: AMP is CUDA only, so this ran in fp32")
    return {"loss": round(float(loss), 4)}


# =============================================================================================================
# 3. Throughput
# =============================================================================================================
def _sync(check: Check) -> None:
    import torch

    if check.cuda:
        torch.cuda.synchronize()


def timed_cycle(check: Check, ctx: Ctx, iteration: Callable[[int], Any], steps: list[int]) -> tuple[float, float]:
    """(seconds per iteration over ``steps``, peak GPU memory GiB); one untimed iteration first."""
    import torch

    iteration(CYCLE * 1000 + 1)   # warm-up: a plain step far from the measured ones (cuDNN autotuning, caches)
    _sync(check)
    if check.cuda:
        torch.cuda.reset_peak_memory_stats(check.dev)
    t = time.perf_counter()
    done = 0
    for s in steps:
        iteration(s)
        done += 1
        if time.monotonic() > ctx.deadline - 5:   # keep what was measured; the summary says how many
            break
    _sync(check)
    secs = (time.perf_counter() - t) / done
    peak = torch.cuda.max_memory_allocated(check.dev) / 2**30 if check.cuda else float("nan")
    if done < len(steps):
        ctx.note(f"only {done} of {len(steps)} steps timed before the box closed")
    return secs, peak


def _bench_train():
    import importlib

    return importlib.import_module("bench_train")


def _anchor_context(check: Check):
    """The anchors create their tensors without a device (their code called .cuda()): a default device does it."""
    import torch

    return torch.device(check.dev) if check.cuda else contextlib.nullcontext()


def _measure_impl(check: Check, ctx: Ctx, label: str, make, reals_shape, batch: int, figures: dict,
                  amp_ctx=None) -> Optional[float]:
    import torch

    with _anchor_context(check):
        impl = make()
        reals = (torch.rand(batch, 1, *reals_shape, device=check.dev) * 2 - 1)
    if hasattr(impl, "G") and hasattr(impl, "parts") and check.cuda:
        reals = reals.contiguous(memory_format=torch.channels_last_3d)

    def iteration(step):
        impl.steps = step
        if hasattr(impl, "nimg"):
            impl.nimg = step * batch
        with _anchor_context(check), (amp_ctx() if amp_ctx else contextlib.nullcontext()):
            impl.iteration(reals)

    steps = list(range(CYCLE, 2 * CYCLE)) if not check.dry else [CYCLE]
    secs, peak = timed_cycle(check, ctx, iteration, steps)
    params = impl.n_params()
    figures[f"{label}: s/it"] = secs
    figures[f"{label}: volumes/s"] = batch / secs
    if check.cuda:
        figures[f"{label}: peak GiB"] = round(peak, 2)
    figures[f"{label}: params M"] = "/".join(f"{v / 1e6:.2f}" for v in params.values())
    return secs   # the networks go with this frame; run_step frees the GPU cache after the step


def step_throughput_cow(check: Check, ctx: Ctx) -> dict:
    import torch

    bt = _bench_train()
    figures: dict = {}
    if check.dry:
        anchor = dict(image_size=16, depth=8, network_capacity=2, fmap_max=16, latent_dim=32, style_depth=2)
        shape, batch, ours_g, ours_d = (8, 16, 16), 2, _dry_cow_g(), _dry_cow_d()
    else:   # the anchor recipe: network_capacity 8, fmap_max 1024 (G 30 M, D 181 M), batch 8 per micro-batch
        anchor = dict(image_size=128, depth=32, network_capacity=8, fmap_max=1024, latent_dim=512, style_depth=8)
        shape, batch, ours_g, ours_d = (32, 128, 128), 8, None, None
    ref = _measure_impl(check, ctx, "CoW anchor re-implemented, fp32",
                        lambda: bt.CowAnchor(**anchor, batch_size=batch), shape, batch, figures)
    if check.cuda:   # the anchor trained under fp16 autocast (its GradScaler's cost is not re-implemented)
        _measure_impl(check, ctx, "CoW anchor under fp16 autocast", lambda: bt.CowAnchor(**anchor, batch_size=batch),
                      shape, batch, figures, amp_ctx=lambda: torch.autocast("cuda", dtype=torch.float16))
    amp = "auto" if check.cuda else "off"
    for preset in ("cow-stylegan-anchor", "cow-stylegan"):
        label = f"ours {preset}, amp {amp}"
        secs = _measure_impl(check, ctx, label, lambda: bt.OursTrainer(preset, ours_g, ours_d, amp=amp, batch=batch,
                                                                        accumulate=1, device=str(check.dev)),
                             shape, batch, figures)
        figures[f"{label}: ratio vs anchor fp32"] = ref / secs
        check.state.setdefault("speed", {})[preset] = batch / secs
        ctx.check_time()
    ctx.note(f"one 16-step cycle each (lazy regularisers amortised), batch {batch}, 32×128×128" if not check.dry
             else "dry run: tiny networks, two steps")
    return figures


def _dry_cow_g():
    return dict(z_dim=16, w_dim=16, output_shape=[8, 16, 16], base_shape=[1, 4, 4], channel_base=8, channel_max=8,
                mapping_layers=1, architecture="skip")


def _dry_cow_d():
    return dict(img_shape=[8, 16, 16], base_shape=[1, 4, 4], channel_base=8, channel_max=8, architecture="resnet",
                mbstd_group_size=2)


def step_throughput_spongiosa(check: Check, ctx: Ctx) -> dict:
    bt = _bench_train()
    figures: dict = {}
    batch, res = (4, 1) if check.dry else (16, 3)        # 32³ at batch 16 (the dry run: 8³ at batch 4)
    shape = (4 * 2 ** res,) * 3
    g = {"max_res": res, "nch": 1}
    ref = _measure_impl(check, ctx, "spongiosa anchor re-implemented, fp32",
                        lambda: bt.SpongiosaAnchor(max_res=res, batch_size=batch), shape, batch, figures)
    for amp in (("off", "bf16") if not check.cuda else ("off", "auto")):
        label = f"ours spongiosa-pgan, amp {amp}"
        secs = _measure_impl(check, ctx, label, lambda: bt.OursTrainer("spongiosa-pgan", g, dict(g, mbstd_group_size=0),
                                                                        amp=amp, batch=batch, device=str(check.dev)),
                             shape, batch, figures)
        figures[f"{label}: ratio vs anchor"] = ref / secs
        check.state.setdefault("speed", {})["spongiosa-pgan" if amp != "off" else "spongiosa-pgan fp32"] = batch / secs
        ctx.check_time()
    return figures


def step_throughput_generate(check: Check, ctx: Ctx) -> dict:
    from VolumetricGANLib.generate import generate

    figures = {}
    for family, n, batch in (("stylegan2-3d", 8 if check.dry else 64, 4 if check.dry else 16),
                             ("pgan-3d", 16 if check.dry else 1024, 8 if check.dry else 256)):
        model, config = model_with_config(check, family)
        generate((model, config), n=batch, batch=batch, device=str(check.dev))        # warm-up
        _sync(check)
        t = time.perf_counter()
        generate((model, config), n=n, batch=batch, device=str(check.dev))
        _sync(check)
        secs = time.perf_counter() - t
        figures[f"{config['name']} volumes/s (batch {batch}, to host, physical units)"] = n / secs
        ctx.check_time()
    return figures


def step_throughput_evaluation(check: Check, ctx: Ctx) -> dict:
    import torch

    from GANTrainerLib.evaluation.inception import FIDInceptionV3
    from GANTrainerLib.evaluation.medicalnet import MedicalNetResNet10

    figures = {}
    # random weights: the published files are not fetched (same network, same cost)
    vol = (8, 32, 32) if check.dry else (32, 128, 128)
    for label, net, shape, batch, reps in (
            ("Inception-v3 pool3 slices/s (128² → 299²)", FIDInceptionV3(), (1, 128, 128), 1 if check.dry else 64,
             1 if check.dry else 8),
            (f"MedicalNet ResNet-10 volumes/s ({'×'.join(map(str, vol))})", MedicalNetResNet10(), (1, *vol),
             1 if check.dry else 16, 1 if check.dry else 8)):
        net = net.to(check.dev).eval()
        x = torch.rand(batch, *shape, device=check.dev)
        with torch.inference_mode():
            net(x)
            _sync(check)
            t = time.perf_counter()
            for _ in range(reps):
                net(x)
            _sync(check)
        figures[label] = batch * reps / (time.perf_counter() - t)
        del net, x
        ctx.check_time()
    ctx.note("fp32, as the evaluation runs them")
    return figures


def step_throughput_segmentation(check: Check, ctx: Ctx) -> dict:
    import numpy as np

    from GANTrainerLib.segmentation.network import get_config, train_network

    name = "small" if check.dry else "full"
    base = get_config(name)
    iters = 2 if check.dry else 12
    cfg = dataclasses.replace(base, iters_per_epoch=iters, epochs=1)
    shape = tuple(base.patch_size)
    rng = np.random.default_rng(0)
    images = [rng.normal(size=shape).astype(np.float32) for _ in range(2)]
    labels = [(rng.random(shape) * 14).astype(np.int16) for _ in range(2)]
    t = time.perf_counter()
    train_network(images, labels, list(range(14)), (0.6, 0.3, 0.3), cfg, device=str(check.dev), amp="auto")
    _sync(check)
    secs = (time.perf_counter() - t) / iters
    return {f"DynUNet '{name}' s/it (patch {'×'.join(map(str, shape))}, batch {base.batch_size}, 14 classes, "
            "incl. set-up)": secs}


# =============================================================================================================
# 4. Training with the time left (phantoms made in the background from the start)
# =============================================================================================================
def start_phantoms(check: Check) -> None:
    """Write the phantom datasets in background processes (CPU) while the GPU steps run."""
    root = check.out / "work" / "phantoms"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cpus = os.cpu_count() or 2
    if check.dry:
        jobs = {"cow": [(2, 0)], "bone": [(4, 0)]}
    else:
        workers = max(1, min(12, cpus - 2))
        n_cow = 96
        jobs = {"cow": [(n_cow // workers + (k < n_cow % workers), k) for k in range(workers)],
                "bone": [(2, k) for k in range(max(1, workers // 2))]}   # 2 blocks of 96³, 128 patches each
    procs = []
    for kind, parts in jobs.items():
        for n, seed in parts:
            if n <= 0:
                continue
            out = root / f"{kind}_{seed:02d}"
            cmd = [sys.executable, "-m", "VolGANCore.cli", "phantom", kind, "--n", str(n), "--seed", str(1000 + seed),
                   "--out", str(out)]
            if kind == "cow" and check.dry:
                cmd += ["--shape", "8", "32", "32"]
            if kind == "bone" and not check.dry:
                cmd += ["--patches", "128"]
            log = open(check.out / "work" / f"phantom_{kind}_{seed:02d}.log", "w")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(threads=1),
                                          start_new_session=True))
    check.background += procs
    check.state["phantoms"] = {"root": root, "procs": procs, "t0": time.monotonic()}
    check.log(f"phantoms: {len(procs)} background writers started under {root}")


def phantom_paths(check: Check, wait_s: float) -> Optional[dict]:
    """Wait (up to ``wait_s``) for the phantom writers; gather each kind's images into one folder of links."""
    info = check.state.get("phantoms")
    if info is None:
        return None
    if "paths" in info:
        return info["paths"]
    deadline = time.monotonic() + max(0.0, wait_s)
    for p in info["procs"]:
        p.wait(timeout=max(0.1, deadline - time.monotonic()))
        if p.returncode != 0:
            raise CheckFailed(f"a phantom writer exited with {p.returncode} (see work/phantom_*.log)")
    paths = {}
    for kind, sub in (("cow", "images"), ("bone", "images"), ("cow_labels", "labels")):
        merged = info["root"] / kind.split("_")[0] / sub
        merged.mkdir(parents=True, exist_ok=True)
        for part in sorted(info["root"].glob(f"{kind.split('_')[0]}_*")):
            for f in sorted((part / sub).iterdir()):
                link = merged / f"{part.name}_{f.name}"   # the same name as its image: the pairs stay pairs
                if not link.exists():
                    link.symlink_to(f.resolve())
        paths[kind] = merged
    info["paths"] = paths
    check.log(f"phantoms ready after {time.monotonic() - info['t0']:.0f} s: "
              + ", ".join(f"{k} {len(list(v.iterdir()))} volumes" for k, v in paths.items()))
    return paths


def child_env(threads: Optional[int] = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in PACKAGE_DIRS] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_logged(check: Check, cmd: list[str], timeout: float) -> int:
    check.log("$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(),
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        check.log(out[-4000:])
        raise StepTimeout()
    check.log(out[-4000:])
    return proc.returncode


def step_train_runs(check: Check, ctx: Ctx) -> dict:
    from GANTrainerLib.run import read_status

    paths = phantom_paths(check, wait_s=min(120.0, ctx.left() - 60))
    plans = {"spongiosa-pgan": paths["bone"], "cow-stylegan": paths["cow"], "cow-stylegan-labels": paths["cow"]}
    reserve = 45.0 if not check.dry else 5.0       # export, montage, summary after the runs
    run_s = ctx.left() - reserve
    if run_s < (10 if check.dry else 60):
        raise Skip(f"only {run_s:.0f} s left for training")
    speeds = check.state.get("speed", {})
    procs = {}
    for preset, data in plans.items():
        out = check.out / "runs" / preset
        cmd = [sys.executable, "-m", "VolGANCore.cli", "train", "--preset", preset, "--data", str(data),
               "--out", str(out), "--device", str(check.dev)]
        if preset.endswith("-labels"):                                  # joint image + label model (issue 21)
            cmd += ["--labels", str(paths["cow_labels"])]
        if check.dry:
            cmd[cmd.index(preset)] = "tiny-" + ("spongiosa" if preset.startswith("spongiosa") else
                                                "cow-labels" if preset.endswith("-labels") else "cow")
            cmd += ["--max-steps", "2", "--kimg", "0.016", "--snapshot-kimg", "0.004", "--metrics-kimg", "0.004"]
            if preset.startswith("spongiosa"):
                cmd += ["--phase-kimg", "0.002"]                         # reach the top level in the first step
        else:
            # all run at once: a share of the measured speed each (the joint model's at the image-only model's),
            # 70 % of the time for steps, the rest for start-up, quick metrics and snapshots
            vps = speeds.get(preset.replace("-labels", ""), 8.0) / len(plans)
            kimg = max(0.1, vps * run_s * 0.7 / 1000.0)
            cmd += ["--kimg", f"{kimg:.3f}", "--snapshot-kimg", f"{kimg / 2:.3f}", "--metrics-kimg", f"{kimg / 2:.3f}"]
            if preset == "spongiosa-pgan":
                cmd += ["--phase-kimg", f"{kimg / 5:.3f}", "--padding", "circular"]   # reach 32³, no frames
        check.log("$ " + " ".join(cmd))
        (check.out / "runs").mkdir(exist_ok=True)
        log = open(check.out / "runs" / f"{preset}.out.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
        check.background.append(proc)   # the watchdog ends it with the check (its own session outlives ours)
        procs[preset] = (proc, out, log)
    # wait; at the box's end ask for a graceful stop (SIGINT: the run checkpoints), then kill
    stop_at = time.monotonic() + run_s
    for preset, (proc, out, log) in procs.items():
        try:
            proc.wait(timeout=max(1.0, stop_at - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            ctx.note(f"{preset}: stopped at the time box (SIGINT)")
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    figures = {}
    failed = []
    for preset, (proc, out, _) in procs.items():
        status = read_status(out) or {}
        metrics = status.get("latest_metrics") or {}
        figures[f"{preset}: state"] = f"{status.get('state')} at {status.get('kimg', 0):.2f} kimg (exit {proc.returncode})"
        for k in ("fd_quick", "spread_ratio", "frame_index", "morph_w1"):
            key = f"metrics/{k}"
            if key in metrics:
                figures[f"{preset}: {k}"] = metrics[key]
        if status.get("state") not in ("finished", "stopped"):
            failed.append(f"{preset} ended '{status.get('state')}' (see runs/{preset}.out.log)")
            continue
        model = check.out / "models" / f"{preset}.vgan"
        for which in ("best", "latest"):  # best needs a ranked checkpoint (quick metrics at the top resolution)
            rc = run_logged(check, [sys.executable, "-m", "VolGANCore.cli", "export", str(out), "--out", str(model),
                                    "--which", which, "--overwrite"], timeout=max(10.0, ctx.left()))
            if rc != 2:
                break
            ctx.note(f"{preset}: no ranked checkpoint to call best; exported the latest")
        if rc != 0:
            failed.append(f"{preset}: export exited with {rc}")
        else:
            figures[f"{preset}: model"] = str(model.relative_to(check.out))
    expect(not failed, "; ".join(failed))
    return figures


# =============================================================================================================
def all_steps() -> list[Step]:
    steps = [Step("environment", "environment", step_environment, 30, what="GPU, driver, torch, CUDA, bf16")]
    for family in ("stylegan2-3d", "pgan-3d"):
        steps.append(Step(f"train step {family} bf16", "correctness", step_train(family, "bf16"), 60,
                          what="3 training iterations under bf16 autocast; no host sync in a plain one"))
        steps.append(Step(f"train step {family} fp16", "correctness", step_train(family, "fp16"), 60, cuda_only=True,
                          what="3 training iterations under fp16 autocast with GradScaler"))
    steps += [
        Step("train step joint", "correctness", step_train_joint, 60,
             what="3 iterations of the joint image + label CoW preset (labels, variant conditioning)"),
        Step("inf skip bf16", "correctness", step_inf_skip("bf16"), 30,
             what="an inf in the reals: the D step is skipped (fused Adam found_inf), no host sync"),
        Step("inf skip fp16", "correctness", step_inf_skip("fp16"), 30, cuda_only=True,
             what="an inf in the reals: GradScaler skips the step and halves the scale, no host sync"),
        Step("batch feeder", "correctness", step_batch_feeder, 30,
             what="side-stream prefetch gives the same batches and sampler states as plain loading"),
        Step("channels-last", "correctness", step_channels_last, 40,
             what="channels-last-3D and contiguous G and D give equal outputs"),
        Step("generation amp", "correctness", step_generation_amp, 40,
             what="generation under autocast equals fp32 within the stated tolerance"),
        Step("torchrun", "correctness", step_torchrun, 90,
             what="torchrun --nproc_per_node 1 -m VolGANCore.cli train: a process group (NCCL on CUDA), 3 steps"),
        Step("steer + invert", "correctness", step_steer_invert, 60, what="steering and inversion on the device"),
        Step("dynunet amp", "correctness", step_dynunet_amp, 40, what="a DynUNet training run under AMP"),
        Step("train CoW", "throughput", step_throughput_cow, 100,
             what="CoW training iteration against the re-implemented anchor"),
        Step("train spongiosa", "throughput", step_throughput_spongiosa, 40,
             what="spongiosa PGAN iteration at 32³, batch 16, against the re-implemented anchor"),
        Step("generate", "throughput", step_throughput_generate, 30, what="generation volumes/s, both families"),
        Step("evaluation features", "throughput", step_throughput_evaluation, 30,
             what="Inception and MedicalNet features/s"),
        Step("segmentation", "throughput", step_throughput_segmentation, 40, what="DynUNet training iteration"),
        Step("train runs", "training", step_train_runs, 10_000,
             what="spongiosa-pgan, cow-stylegan and cow-stylegan-labels on the phantoms with the time left; exported"),
    ]
    return steps


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check", help="output folder (default gpu_check/)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="bound on the whole check in seconds (default 480)")
    ap.add_argument("--dry-run", action="store_true", help="the same steps at tiny sizes on the CPU")
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cuda:N or cpu")
    ap.add_argument("--only", help="comma-separated step names or groups (environment is always run)")
    ap.add_argument("--no-train", action="store_true", help="leave out step 4 (the training runs)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if args.budget_s <= 0:
        print(f"gpu_check: --budget-s must be > 0 (got {args.budget_s})", file=sys.stderr)
        return 2
    only = None
    if args.only:
        only = {s.strip() for s in args.only.split(",") if s.strip()} | {"environment"}
        known = {s.name for s in all_steps()} | {s.group for s in all_steps()}
        unknown = sorted(only - known)
        if unknown:
            print(f"gpu_check: --only {', '.join(unknown)}: unknown; choose from {', '.join(sorted(known))}",
                  file=sys.stderr)
            return 2
    os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]
    check = Check(out, args.budget_s, args.dry_run, args.device, only)
    steps = [s for s in all_steps() if not (args.no_train and s.group == "training")]
    if any(s.group == "training" and (only is None or "training" in only or s.name in only) for s in steps):
        start_phantoms(check)
    check.log(f"gpu_check: out {out}, budget {args.budget_s:.0f} s, {'dry run' if args.dry_run else 'device ' + str(check.dev)}")
    summary = check.run(steps)
    failed = [r["step"] for r in summary["steps"] if r["status"] in (FAIL, TIMEOUT)]
    check.log(f"done in {summary['elapsed_s']:.0f} s: " + ", ".join(f"{v} {k}" for k, v in summary["counts"].items())
              + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
