"""Steering a generator to target micro-structure by latent optimisation (DESIGN.md §5).

Objective per sample (batched over all samples at once)::

    Σ_k w_k · ((p_k(G(z)) − p*_k) / p*_k)²  +  λ_content · MSE(G(z), G(z₀))  +  λ_prior · ‖z‖²-prior

with ``p_k`` the differentiable proxies of :mod:`MorphometryLib.differentiable` (soft BV/TV, BMD, TMD, BS/TV,
plate-model Tb.Th/Tb.Sp/Tb.N, structure-tensor DA). The proxies are biased against the exact measures (the
plate-model Tb.Th reads ≈ 44 % low), so targets are given in **exact** units and the proxy targets are
calibrated in a loop: every ``check_every`` steps the exact measures (:mod:`MorphometryLib.bone`) are taken,
samples within tolerance are frozen, and for the others each proxy target is multiplied by
``target / exact`` (clamped). Success is judged by the exact measures only.

Modes: **generate to targets** (fresh latents from a seed) and **simulate change** (start from given latents —
e.g. an inversion of a real patch — apply relative changes such as ``BV/TV=-20%``, keep the other parameters at
their starting values and the appearance close via the content term).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional, Sequence

import numpy as np

from VolGANCore import VolGANError, Volume
from VolGANCore.progress import Progress

from .checkpoint import to_physical

__all__ = ["STEERABLE", "parse_targets", "SteeringResult", "steer", "plot_trajectories"]

# steerable parameter → (proxy key in MorphometryLib.differentiable, exact key in MorphometryLib.bone_morphometry)
STEERABLE: dict[str, tuple[str, str]] = {
    "BV/TV": ("BV/TV", "BV/TV"),
    "BMD": ("BMD", "BMD [image units]"),
    "TMD": ("TMD", "TMD [image units]"),
    "Tb.Th": ("Tb.Th", "Tb.Th [mm]"),
    "Tb.Sp": ("Tb.Sp", "Tb.Sp [mm]"),
    "Tb.N": ("Tb.N", "Tb.N [1/mm]"),
    "DA": ("DA", "DA (structure tensor)"),
}
_SPEC = re.compile(r"^\s*([A-Za-z./]+)\s*=\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*(%|mm|1/mm)?\s*$")


def parse_targets(specs: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
    """``["BV/TV=0.22", "Tb.Th=0.4mm", "BV/TV=-20%"]`` → (absolute targets, relative changes in fractions)."""
    absolute, relative = {}, {}
    for spec in specs:
        m = _SPEC.match(spec)
        if not m or m.group(1) not in STEERABLE:
            raise VolGANError(f"target '{spec}': write NAME=VALUE[mm|%] with NAME one of {list(STEERABLE)}")
        name, value, unit = m.group(1), float(m.group(2)), m.group(3)
        if unit == "%":
            relative[name] = value / 100.0
        else:
            if value <= 0 and name != "BMD":
                raise VolGANError(f"target '{spec}': {name} must be positive")
            absolute[name] = value
    both = set(absolute) & set(relative)
    if both:
        raise VolGANError(f"targets: {sorted(both)} given both as a value and as a change")
    return absolute, relative


@dataclasses.dataclass
class SteeringResult:
    volumes: list            # steered Volumes (physical units)
    latents: np.ndarray      # (N, z_dim) final z
    rows: list               # per sample: targets, proxy and exact values, success
    trajectories: dict       # parameter → (steps, N) exact values at each check
    info: dict               # settings, success rate, seconds, warnings


def _exact(volumes: np.ndarray, spacing, threshold: float, names: Sequence[str]) -> np.ndarray:
    """Exact values (N, K) of ``names`` for (N, D, H, W) volumes in physical units."""
    from MorphometryLib import bone_morphometry

    wanted = {{"DA": "DA.ST"}.get(n, n) for n in names} | {"BV/TV"}
    out = np.full((len(volumes), len(names)), np.nan)
    for i, v in enumerate(volumes):
        try:
            vals = bone_morphometry(Volume(v, spacing=spacing), threshold=threshold, parameters=sorted(wanted))
        except VolGANError:  # empty or full bone: no structure to measure
            continue
        out[i] = [vals.get(STEERABLE[n][1], np.nan) for n in names]
    return out


def steer(
    checkpoint_or_model,                     # .vgan path or (model, config) of a bone model
    targets: dict | None = None,             # exact-unit targets, e.g. {"BV/TV": 0.22}; a value may be per sample (N,)
    changes: dict[str, float] | None = None, # relative changes, e.g. {"BV/TV": -0.2} (needs start latents)
    n: int = 8,                              # samples (ignored when latents are given)
    seed: int = 0,
    latents: np.ndarray | None = None,       # (N, z_dim) start latents ("simulate change")
    keep: Sequence[str] = ("TMD",),          # in change mode: parameters held at their start values
    tolerance: float = 0.05,                 # success: every exact parameter within this relative error
    steps: int = 200,                        # maximum optimisation steps
    check_every: int = 20,                   # exact-measure checks (and proxy calibration) interval
    lr: float = 0.03,
    content_weight: float = 1.0,             # λ_content (change mode): keep the appearance
    threshold: float = 225.0,                # bone threshold (image units) of the exact and soft measures
    width: float = 10.0,                     # soft-threshold width
    device: str = "auto",
    progress=None,
    cancel=None,
) -> SteeringResult:
    """Steer ``n`` samples (or the given latents) until every exact parameter is within ``tolerance``."""
    import time

    import torch
    from MorphometryLib.differentiable import soft_morphometry

    from .generate import resolve_model, sample_z

    t0 = time.perf_counter()
    targets, changes = dict(targets or {}), dict(changes or {})
    if not targets and not changes:
        raise VolGANError("steer: give at least one --target or --change")
    if changes and latents is None:
        raise VolGANError("steer: --change needs a starting sample (--from a latents file or an inverted volume)")
    model, config = resolve_model(checkpoint_or_model, None, device)
    if int(getattr(model, "img_channels", 1)) != 1:
        raise VolGANError("steer: the model must generate single-channel grey-level volumes")
    dev = next(model.parameters()).device
    for p in model.parameters():
        p.requires_grad_(False)
    hyper = config["latent"]["distribution"] == "hypersphere"
    z0 = sample_z(n, model.z_dim, seed, config["latent"]["distribution"]) if latents is None else \
        torch.as_tensor(np.asarray(latents, np.float32))
    z = z0.clone().to(dev).requires_grad_(True)
    spacing = tuple(config["spacing"])
    spacing_dhw = spacing  # soft measures take (x, y, z) like Volume
    intensity = config["intensity"]

    def render(zz):
        if hyper:
            zz = zz / zz.norm(dim=1, keepdim=True)
        return to_physical(model(zz), intensity)

    with torch.no_grad():
        start = render(z.detach())
    start_np = start[:, 0].cpu().numpy()
    names = sorted(set(targets) | set(changes) | (set(keep) if changes else set()), key=list(STEERABLE).index)
    exact0 = _exact(start_np, spacing, threshold, names)
    goal = np.zeros_like(exact0)
    warnings = []
    pop = _exact(render(sample_z(32, model.z_dim, seed + 1, config["latent"]["distribution"]).to(dev))
                 .detach()[:, 0].cpu().numpy(), spacing, threshold, names) if targets else None
    for j, name in enumerate(names):
        if name in targets:
            lo, hi = np.nanmin(pop[:, j]), np.nanmax(pop[:, j])
            margin = 0.25 * (hi - lo)
            t = np.broadcast_to(np.asarray(targets[name], dtype=float), (len(goal),)).copy()
            outside = (t < lo - margin) | (t > hi + margin)
            if outside.any():
                warnings.append(f"{name} target(s) {np.unique(t[outside]).round(4).tolist()} outside what this model "
                                f"generates ({lo:.3g}–{hi:.3g}); clamped to [{lo - margin:.3g}, {hi + margin:.3g}]")
                t = np.clip(t, lo - margin, hi + margin)
            goal[:, j] = t
        elif name in changes:
            goal[:, j] = exact0[:, j] * (1.0 + changes[name])
        else:
            goal[:, j] = exact0[:, j]
    with torch.no_grad():
        soft0 = soft_morphometry(start, threshold, width, spacing=spacing_dhw,
                                 parameters=[STEERABLE[k][0] for k in names])
    soft0_np = np.stack([soft0[STEERABLE[k][0]].cpu().numpy() for k in names], 1)
    ratio = np.where(np.isfinite(exact0) & (np.abs(exact0) > 1e-9), soft0_np / np.where(exact0 == 0, 1, exact0), 1.0)
    proxy_goal = torch.as_tensor(goal * ratio, dtype=torch.float32, device=dev)
    active = torch.ones(len(z), dtype=torch.bool, device=dev)
    opt = torch.optim.Adam([z], lr=lr)
    traj = {k: [exact0[:, j].tolist()] for j, k in enumerate(names)}
    exact = exact0
    success = np.all(np.abs(exact - goal) <= tolerance * np.abs(goal), axis=1)
    with Progress(steps, "steer", progress, cancel) as bar:
        for step in range(1, steps + 1):
            x = render(z)
            soft = soft_morphometry(x, threshold, width, spacing=spacing_dhw, parameters=[STEERABLE[k][0] for k in names])
            p = torch.stack([soft[STEERABLE[k][0]] for k in names], 1)
            per = ((p - proxy_goal) / proxy_goal.abs().clamp_min(1e-6)).square().sum(1)
            if changes:
                per = per + content_weight * (x - start).square().mean(dim=(1, 2, 3, 4)) / (
                    float(intensity["physical_range"][1]) - float(intensity["physical_range"][0])) ** 2 * 100
            loss = (per * active).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            z.grad[~active] = 0
            opt.step()
            if step % check_every == 0 or step == steps:
                with torch.no_grad():
                    vols = render(z.detach())[:, 0].cpu().numpy()
                exact = _exact(vols, spacing, threshold, names)
                for j, k in enumerate(names):
                    traj[k].append(exact[:, j].tolist())
                success = np.all(np.abs(exact - goal) <= tolerance * np.abs(goal), axis=1)
                active = torch.as_tensor(~success, device=dev)
                corr = np.clip(np.where(np.isfinite(exact) & (exact != 0), goal / np.where(exact == 0, 1, exact), 1.0),
                               0.8, 1.25)
                corr[success] = 1.0
                proxy_goal = proxy_goal * torch.as_tensor(corr, dtype=torch.float32, device=dev)
                if success.all():
                    bar.set(steps, message="all samples within tolerance")
                    break
            bar.advance(message=f"{int(success.sum())}/{len(success)} within {tolerance:.0%}")
    with torch.no_grad():
        zf = z.detach()
        if hyper:
            zf = zf / zf.norm(dim=1, keepdim=True)
        final = render(zf)[:, 0].cpu().numpy()
        softf = soft_morphometry(render(zf), threshold, width, spacing=spacing_dhw,
                                 parameters=[STEERABLE[k][0] for k in names])
    exact = _exact(final, spacing, threshold, names)
    success = np.all(np.abs(exact - goal) <= tolerance * np.abs(goal), axis=1)
    rows = []
    for i in range(len(final)):
        row: dict[str, Any] = {"sample": i, "success": bool(success[i])}
        for j, k in enumerate(names):
            row[f"{k} target"] = float(goal[i, j])
            row[f"{k} start (exact)"] = float(exact0[i, j])
            row[f"{k} proxy"] = float(softf[STEERABLE[k][0]][i])
            row[f"{k} exact"] = float(exact[i, j])
        rows.append(row)
    geometry = dict(spacing=spacing)
    volumes = [Volume(v.astype(np.float32), **geometry) for v in final]
    info = {"mode": "change" if changes else "targets", "parameters": names, "tolerance": tolerance,
            "success_rate": float(success.mean()), "samples": len(final), "seconds": time.perf_counter() - t0,
            "threshold": threshold, "warnings": warnings, "changes": changes, "targets": targets}
    return SteeringResult(volumes, zf.cpu().numpy(), rows, {k: np.asarray(v) for k, v in traj.items()}, info)


def plot_trajectories(result: SteeringResult, path) -> None:
    """One panel per parameter: exact value of every sample at each check, target dashed (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from VolGANCore.atomic import atomic_path

    names = result.info["parameters"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        traj = result.trajectories[name]
        for i in range(traj.shape[1]):
            line, = ax.plot(traj[:, i], marker=".", lw=1)
            ax.axhline(result.rows[i][f"{name} target"], color=line.get_color(), ls="--", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("check", fontsize=8)
    fig.suptitle(f"steering: {result.info['success_rate']:.0%} of samples within {result.info['tolerance']:.0%}",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
