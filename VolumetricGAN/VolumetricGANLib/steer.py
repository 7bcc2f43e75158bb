"""Steering a generator to target micro-structure by latent optimisation (DESIGN.md §5).

Objective per sample (batched over all samples at once)::

    Σ_k w_k · ((p_k(G(z)) − p*_k) / p*_k)²  +  λ_content · MSE(G(z), G(z₀))  +  λ_prior · ‖z‖²-prior

with ``p_k`` the differentiable proxies of :mod:`MorphometryLib.differentiable` (soft BV/TV, BMD, TMD, BS/TV,
plate-model Tb.Th/Tb.Sp/Tb.N, structure-tensor DA). The proxies are biased against the exact measures (the
plate-model Tb.Th reads ≈ 45 % low), so targets are given in **exact** units and the proxy targets are
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
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from VolGANCore import VolGANError, Volume
from VolGANCore.progress import Progress

__all__ = ["STEERABLE", "parse_targets", "steering_support", "SteeringResult", "steer", "plot_trajectories"]

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


_BONE_WORDS = ("spongiosa", "bone", "trabecul")


def steering_support(config) -> tuple[bool, str]:
    """Whether a checkpoint config describes a model that steering can measure: ``(ok, note)``.

    Steering measures bone micro-structure, so the model must generate single-channel grey levels of
    trabecular bone (its anatomy names spongiosa / bone). A model that does not record its anatomy is
    allowed with a note; one of another anatomy (e.g. circle-of-willis) is not. Needs no torch (the panels use it).
    """
    anatomy = str(config.get("anatomy") or "").strip()
    if int(config.get("img_channels", 1)) != 1 or config.get("label_scheme"):
        return False, "steering needs a model that generates single-channel grey levels (not labels)"
    if any(word in anatomy.lower() for word in _BONE_WORDS):
        return True, ""
    if not anatomy:
        return True, ("the model does not record its anatomy; steering assumes trabecular bone in density units "
                      "with a bone threshold of 225")
    return False, f"steering measures bone micro-structure, but this is a '{anatomy}' model"


def parse_targets(specs: Sequence[str]) -> tuple[dict[str, float], dict[str, float]]:
    """``["BV/TV=0.22", "Tb.Th=0.4mm", "BV/TV=-20%"]`` → (absolute targets, relative changes in fractions)."""
    absolute, relative = {}, {}
    for spec in specs:
        m = _SPEC.match(spec)
        if not m or m.group(1) not in STEERABLE:
            raise VolGANError(f"target '{spec}': write NAME=VALUE[mm|%] with NAME one of {list(STEERABLE)}")
        name, value, unit = m.group(1), float(m.group(2)), m.group(3)
        if not math.isfinite(value):
            raise VolGANError(f"target '{spec}': the value must be a finite number")
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


def _render(model, intensity, hyper: bool):
    import torch

    from .checkpoint import to_physical

    def render(zz):
        if hyper:
            zz = zz / zz.norm(dim=1, keepdim=True)
        return to_physical(model(zz), intensity)

    def render_np(zz, batch: int = 16):
        with torch.no_grad():
            return np.concatenate([render(zz[i:i + batch])[:, 0].cpu().numpy() for i in range(0, len(zz), batch)])

    return render, render_np


def _ratio(num: np.ndarray, den: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """``num / den`` where ``den`` is finite and ``|den| > eps``, else 1 (no correction)."""
    ok = np.isfinite(den) & (np.abs(den) > eps)
    return np.where(ok, num / np.where(ok, den, 1.0), 1.0)


def _assign(pool_vals: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Pool member for every target (rows of ``goal``), greedily by the squared relative errors (the success
    criterion's terms), each used once while enough remain. Returns (N, P) pool indices ordered by
    preference (first = assigned)."""
    rel = (pool_vals[None, :, :] - goal[:, None, :]) / np.maximum(np.abs(goal[:, None, :]), 1e-12)
    d = np.nansum(rel ** 2, axis=2)
    d[:, ~np.all(np.isfinite(pool_vals), axis=1)] = np.inf
    order = np.argsort(d, axis=1)
    taken: set[int] = set()
    first = np.empty(len(goal), int)
    for i in np.argsort(d.min(axis=1)):  # easiest targets choose first
        cand = [j for j in order[i] if j not in taken] or list(order[i])
        first[i] = cand[0]
        if len(taken) < pool_vals.shape[0] - 1:
            taken.add(int(cand[0]))
    rest = [np.concatenate([[first[i]], [j for j in order[i] if j != first[i]]]) for i in range(len(goal))]
    return np.stack(rest)


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
    check_every: int = 10,                   # exact-measure checks (calibration, freezing, restarts) interval
    lr: float = 0.02,
    content_weight: float = 1.0,             # λ_content (change mode): keep the appearance
    threshold: float = 225.0,                # bone threshold (image units) of the exact and soft measures
    width: float = 10.0,                     # soft-threshold width
    pool: int | None = None,                 # targets mode: candidate latents measured exactly to start from
    polish_within: float = 3.0,              # a stuck sample within this × tolerance is refined on exact measures
    polish_k: int = 8,                       # candidates per refinement round
    polish_rounds: int = 2,                  # refinement rounds per check
    device: str = "auto",
    progress=None,
    cancel=None,
) -> SteeringResult:
    """Steer ``n`` samples (or the given latents) until every exact parameter is within ``tolerance``.

    Generate-to-targets starts every sample from the member of a pool of random latents (default
    ``max(128, 4·n)``, measured once with the exact panel) nearest to its targets in units of the pool's
    spread, so the optimisation closes a small gap instead of crossing the latent space; a sample that
    stops improving is restarted from its next-nearest pool member. The objective is
    ``Σ_k ((p_k − p̂*_k)/s_k)²`` with ``s_k`` the pool's spread of proxy ``k`` and ``p̂*_k`` the proxy target,
    re-calibrated at every check from the exact measure (``p̂* ← p̂*·target/exact``).
    """
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
    loaded = resolve_model(checkpoint_or_model, None, device)
    model, config = loaded.generator, loaded.config
    if int(getattr(model, "img_channels", 1)) != 1:
        raise VolGANError("steer: the model must generate single-channel grey-level volumes")
    supported, support_note = steering_support(config)
    if not supported:
        where = f"{checkpoint_or_model}: " if isinstance(checkpoint_or_model, (str, os.PathLike)) else "steer: "
        raise VolGANError(f"{where}{support_note} (steer a trabecular-bone model, e.g. spongiosa-pgan)")
    dev = next(model.parameters()).device
    for p in model.parameters():
        p.requires_grad_(False)
    dist = config["latent"]["distribution"]
    hyper = dist == "hypersphere"
    spacing = tuple(config["spacing"])  # soft measures take (x, y, z) like Volume
    intensity = config["intensity"]
    render, render_np = _render(model, intensity, hyper)
    names = sorted(set(targets) | set(changes) | (set(keep) if changes else set()), key=list(STEERABLE).index)
    proxies = [STEERABLE[k][0] for k in names]

    def soft_np(zz):
        with torch.no_grad():
            out = []
            for i in range(0, len(zz), 16):
                sm = soft_morphometry(render(zz[i:i + 16]), threshold, width, spacing=spacing, parameters=proxies)
                out.append(np.stack([sm[k].cpu().numpy() for k in proxies], 1))
            return np.concatenate(out)

    # the pool: random latents measured exactly (targets mode: start points and the range check)
    n_pool = 0 if not targets else int(pool) if pool else max(128, 4 * n)
    pool_z = pool_exact = pool_soft = None
    if n_pool:
        pool_z = sample_z(n_pool, model.z_dim, seed + 7919, dist).to(dev)
        pool_exact = _exact(render_np(pool_z), spacing, threshold, names)
        pool_soft = soft_np(pool_z)
    warnings = [support_note] if support_note else []
    goal = np.zeros((n if latents is None else len(latents), len(names)))
    if targets:
        for j, name in enumerate(names):
            if name not in targets:
                continue
            col = pool_exact[:, j][np.isfinite(pool_exact[:, j])]
            lo, hi = (np.min(col), np.max(col)) if col.size else (-np.inf, np.inf)
            margin = 0.25 * (hi - lo)
            t = np.broadcast_to(np.asarray(targets[name], dtype=float), (len(goal),)).copy()
            outside = (t < lo - margin) | (t > hi + margin)
            if outside.any():
                warnings.append(f"{name} target(s) {np.unique(t[outside]).round(4).tolist()} outside what this model "
                                f"generates ({lo:.3g}–{hi:.3g}); clamped to [{lo - margin:.3g}, {hi + margin:.3g}]")
                t = np.clip(t, lo - margin, hi + margin)
            goal[:, j] = t
    if latents is not None:
        z0 = torch.as_tensor(np.asarray(latents, np.float32)).to(dev)
        exact0 = _exact(render_np(z0), spacing, threshold, names)
        for j, name in enumerate(names):
            if name in changes:
                goal[:, j] = exact0[:, j] * (1.0 + changes[name])
            elif name not in targets:
                goal[:, j] = exact0[:, j]
        order = None
    else:
        order = _assign(pool_exact, goal)
        z0 = pool_z[torch.as_tensor(order[:, 0], device=dev)].clone()
        exact0 = pool_exact[order[:, 0]]
    start = render(z0).detach() if changes else None
    soft0 = soft_np(z0)
    if pool_soft is not None:
        scale = np.nanstd(pool_soft, axis=0)
    else:
        scale = 0.1 * np.nanmean(np.abs(soft0), axis=0)
    scale = torch.as_tensor(np.maximum(scale, 1e-6), dtype=torch.float32, device=dev)
    # proxy targets: each proxy's start value moved by the exact measure's required ratio (calibrated later)
    proxy_goal = torch.as_tensor(goal * _ratio(soft0, exact0), dtype=torch.float32, device=dev)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    traj = {k: [exact0[:, j].tolist()] for j, k in enumerate(names)}

    def errors(ex, g=goal):
        rel = np.abs(ex - g) / np.maximum(np.abs(g), 1e-12)
        return np.where(np.isfinite(rel), rel, np.inf)

    exact = exact0
    err = errors(exact)
    success = np.all(err <= tolerance, axis=1)
    best_err = err.max(axis=1)
    best_z = z0.detach().clone()
    stall = np.zeros(len(goal), int)
    next_candidate = np.ones(len(goal), int)
    restarts = polished = 0
    sigma = np.full(len(goal), 0.05)
    steps_run = 0
    # on the CPU, micro-batches keep activations small (large blocks are mmap-ed afresh at every step by the
    # allocator); on a GPU the whole batch at once
    voxels = int(np.prod(getattr(model, "output_shape", (32, 32, 32))))
    micro = len(goal) if dev.type != "cpu" else max(1, 131072 // max(voxels, 1))
    rng_range = float(intensity["physical_range"][1]) - float(intensity["physical_range"][0])
    with Progress(steps, "steer", progress, cancel) as bar:
        for step in range(1, steps + 1):
            if success.all():
                bar.set(steps, message="all samples within tolerance")
                break
            steps_run = step
            act = np.flatnonzero(~success)
            opt.zero_grad(set_to_none=False)
            for c0 in range(0, len(act), micro):
                idx = torch.as_tensor(act[c0:c0 + micro], device=dev)
                x = render(z[idx])
                soft = soft_morphometry(x, threshold, width, spacing=spacing, parameters=proxies)
                p = torch.stack([soft[k] for k in proxies], 1)
                per = ((p - proxy_goal[idx]) / scale).square().sum(1)
                if changes:
                    per = per + content_weight * 100.0 * (x - start[idx]).square().mean(dim=(1, 2, 3, 4)) / rng_range ** 2
                per.sum().backward()
            frozen = torch.as_tensor(success, device=dev)
            keep_z = z.detach()[frozen].clone()
            opt.step()
            with torch.no_grad():
                z[frozen] = keep_z  # Adam's momentum must not move samples that are done
            if step % check_every == 0 or step == steps:
                with torch.no_grad():
                    exact = exact.copy()
                    exact[act] = _exact(render_np(z.detach()[torch.as_tensor(act, device=dev)]), spacing, threshold, names)
                for j, k in enumerate(names):
                    traj[k].append(exact[:, j].tolist())
                err = errors(exact)
                worst = err.max(axis=1)
                better = worst < best_err - 1e-4
                with torch.no_grad():
                    bt = torch.as_tensor(better, device=dev)
                    best_z[bt] = z.detach()[bt]
                best_err = np.where(better, worst, best_err)
                success = best_err <= tolerance
                stall = np.where(better, 0, stall + 1)
                corr = np.clip(_ratio(goal, exact, eps=0.0), 0.8, 1.25)
                corr[success] = 1.0
                proxy_goal = proxy_goal * torch.as_tensor(corr, dtype=torch.float32, device=dev)
                stuck = np.flatnonzero(~success & (stall >= 2))
                # close but stuck (the proxies' bias left in the last few %): search around the best latent
                # with the exact measures themselves, a (1+K) evolution strategy with a 1/5-rule-like step size
                near = stuck[best_err[stuck] < polish_within * tolerance]
                if near.size and polish_rounds:
                    searched = near.copy()
                    for _ in range(polish_rounds):
                        near = near[best_err[near] > tolerance]  # done ones leave the search
                        if not near.size:
                            break
                        gen = torch.Generator(device="cpu").manual_seed(seed * 1000003 + step * 101 + _)
                        base = best_z[torch.as_tensor(near, device=dev)]
                        noise = torch.randn((len(near), polish_k, base.shape[1]), generator=gen).to(dev)
                        step_size = torch.as_tensor(sigma[near], dtype=base.dtype, device=dev)
                        cand = base[:, None, :] + (step_size * base.norm(dim=1) / np.sqrt(base.shape[1]))[:, None, None] \
                            * noise
                        ce = _exact(render_np(cand.reshape(-1, base.shape[1])), spacing, threshold, names)
                        cw = errors(ce, np.repeat(goal[near], polish_k, axis=0)).max(axis=1).reshape(len(near), polish_k)
                        pick = cw.argmin(axis=1)
                        for a, i in enumerate(near):
                            if cw[a, pick[a]] < best_err[i]:
                                best_err[i] = cw[a, pick[a]]
                                best_z[i] = cand[a, pick[a]]
                                exact[i] = ce[a * polish_k + pick[a]]
                                sigma[i] *= 1.5
                                stall[i] = 0
                            else:
                                sigma[i] *= 0.6
                        polished += len(near)
                    with torch.no_grad():
                        idx = torch.as_tensor(searched, device=dev)
                        z[idx] = best_z[idx]
                    success = best_err <= tolerance
                # far and stuck: start again from the next-nearest pool member
                far = np.setdiff1d(stuck, np.flatnonzero(best_err < polish_within * tolerance))
                if order is not None and far.size:
                    with torch.no_grad():
                        for i in far:
                            if next_candidate[i] >= order.shape[1]:
                                continue
                            cand_i = int(order[i, next_candidate[i]])
                            next_candidate[i] += 1
                            z[i] = pool_z[cand_i]
                            r0 = _ratio(pool_soft[cand_i], pool_exact[cand_i])
                            proxy_goal[i] = torch.as_tensor(goal[i] * r0, dtype=torch.float32, device=dev)
                            stall[i] = 0
                            restarts += 1
                if stuck.size:
                    opt = torch.optim.Adam([z], lr=lr)  # fresh moments after a jump
            bar.advance(message=f"{int(success.sum())}/{len(success)} within {tolerance:.0%}")
    zf = best_z
    with torch.no_grad():
        if hyper:
            zf = zf / zf.norm(dim=1, keepdim=True)
        xf = render(zf)
        final = xf[:, 0].cpu().numpy()
        softf = soft_morphometry(xf, threshold, width, spacing=spacing, parameters=proxies)
    exact = _exact(final, spacing, threshold, names)
    success = np.all(errors(exact) <= tolerance, axis=1)
    rows = []
    for i in range(len(final)):
        row: dict[str, Any] = {"sample": i, "success": bool(success[i])}
        for j, k in enumerate(names):
            row[f"{k} target"] = float(goal[i, j])
            row[f"{k} start (exact)"] = float(exact0[i, j])
            row[f"{k} proxy"] = float(softf[STEERABLE[k][0]][i])
            row[f"{k} exact"] = float(exact[i, j])
        rows.append(row)
    volumes = [Volume(v.astype(np.float32), spacing=spacing) for v in final]
    info = {"mode": "change" if changes else "targets", "parameters": names, "tolerance": tolerance,
            "success_rate": float(success.mean()), "samples": len(final), "seconds": time.perf_counter() - t0,
            "seconds_per_sample": (time.perf_counter() - t0) / max(len(final), 1), "steps": steps_run,
            "pool": n_pool, "restarts": restarts, "exact_refinements": polished, "threshold": threshold, "warnings": warnings,
            "changes": changes, "targets": {k: np.asarray(v).tolist() for k, v in targets.items()}}
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
