"""Steering a generator to target micro-structure by latent optimisation (docs/generation.md, "Steering").

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

    from .generate import resolve_model

    t0 = time.perf_counter()
    targets, changes = dict(targets or {}), dict(changes or {})
    if not targets and not changes:
        raise VolGANError("steer: give at least one --target or --change")
    if changes and latents is None:
        raise VolGANError("steer: --change needs a starting sample (--from a latents file or an inverted volume)")
    loaded = resolve_model(checkpoint_or_model, None, device)
    model, config = loaded.generator, loaded.config
    support_note = _check_model(model, config, checkpoint_or_model)
    ren = _Renderer.of(model, config)
    meas = _Measurement.of(config, targets, changes, keep, threshold, width)
    opts = _Options(tolerance, lr, seed, polish_within, polish_k, polish_rounds)
    n_pool = 0 if not targets else int(pool) if pool else max(128, 4 * n)
    pool_set = _draw_pool(ren, meas, n_pool, seed) if n_pool else None
    warnings = [support_note] if support_note else []
    goal = _target_goals(meas.names, targets, pool_set, n if latents is None else len(latents), warnings)
    begin = _starting_points(ren, meas, pool_set, goal, latents, targets, changes)
    obj = _Objective.of(ren, meas, begin, pool_set, content_weight if changes else None)
    st = _State.initial(begin, obj, meas.names, tolerance, lr)
    with Progress(steps, "steer", progress, cancel) as bar:
        for step in range(1, steps + 1):
            if st.success.all():
                bar.set(steps, message="all samples within tolerance")
                break
            st.steps_run = step
            act = np.flatnonzero(~st.success)
            _descend(st, act, ren, meas, obj)
            if step % check_every == 0 or step == steps:
                _check(st, act, step, ren, meas, obj, opts, pool_set, begin.order)
            bar.advance(message=f"{int(st.success.sum())}/{len(st.success)} within {tolerance:.0%}")
    info = {"mode": "change" if changes else "targets", "pool": n_pool, "threshold": threshold, "warnings": warnings,
            "changes": changes, "targets": {k: np.asarray(v).tolist() for k, v in targets.items()}}
    return _result(st, begin, ren, meas, obj, tolerance, info, t0)


# ---------------------------------------------------------------------------------------------------------------
# the steps of steer
def _check_model(model, config, source) -> str:
    """Refuse a model that steering cannot measure; return the support note ('' when none)."""
    if int(getattr(model, "img_channels", 1)) != 1:
        raise VolGANError("steer: the model must generate single-channel grey-level volumes")
    supported, support_note = steering_support(config)
    if not supported:
        where = f"{source}: " if isinstance(source, (str, os.PathLike)) else "steer: "
        raise VolGANError(f"{where}{support_note} (steer a trabecular-bone model, e.g. spongiosa-pgan)")
    return support_note


@dataclasses.dataclass
class _Renderer:
    """The frozen generator as a map from latents to volumes in physical units."""

    render: Any                  # z (torch) -> (N, 1, D, H, W) physical units, with gradients
    render_np: Any               # z (torch) -> (N, D, H, W) numpy, no gradients, in batches of 16
    dev: Any                     # torch device of the model
    z_dim: int
    distribution: str
    hyper: bool                  # latents live on the hypersphere
    voxels: int
    value_range: float           # width of the physical intensity range

    @classmethod
    def of(cls, model, config) -> "_Renderer":
        dev = next(model.parameters()).device
        for p in model.parameters():
            p.requires_grad_(False)
        dist = config["latent"]["distribution"]
        hyper = dist == "hypersphere"
        intensity = config["intensity"]
        render, render_np = _render(model, intensity, hyper)
        voxels = int(np.prod(getattr(model, "output_shape", (32, 32, 32))))
        value_range = float(intensity["physical_range"][1]) - float(intensity["physical_range"][0])
        return cls(render, render_np, dev, model.z_dim, dist, hyper, voxels, value_range)

    def micro_batch(self, n: int) -> int:
        """On the CPU, micro-batches keep activations small (large blocks are mmap-ed afresh at every step by the
        allocator); on a GPU the whole batch at once."""
        return n if self.dev.type != "cpu" else max(1, 131072 // max(self.voxels, 1))


@dataclasses.dataclass(frozen=True)
class _Measurement:
    """The steered parameters and how they are measured: exactly, and by their differentiable proxies."""

    names: list                  # steerable parameter names, in STEERABLE order
    proxies: list                # their proxy keys in MorphometryLib.differentiable
    spacing: tuple               # (x, y, z) mm, as Volume and the soft measures take it
    threshold: float
    width: float

    @classmethod
    def of(cls, config, targets, changes, keep, threshold, width) -> "_Measurement":
        names = sorted(set(targets) | set(changes) | (set(keep) if changes else set()), key=list(STEERABLE).index)
        return cls(names, [STEERABLE[k][0] for k in names], tuple(config["spacing"]), threshold, width)

    def exact(self, volumes: np.ndarray) -> np.ndarray:
        return _exact(volumes, self.spacing, self.threshold, self.names)

    def soft(self, x):
        """Proxy values (N, K) of rendered volumes, differentiable."""
        import torch
        from MorphometryLib.differentiable import soft_morphometry

        soft = soft_morphometry(x, self.threshold, self.width, spacing=self.spacing, parameters=self.proxies)
        return torch.stack([soft[k] for k in self.proxies], 1)

    def soft_np(self, ren: _Renderer, zz) -> np.ndarray:
        """Proxy values (N, K) of latents as numpy, in batches of 16."""
        import torch
        from MorphometryLib.differentiable import soft_morphometry

        with torch.no_grad():
            out = []
            for i in range(0, len(zz), 16):
                sm = soft_morphometry(ren.render(zz[i:i + 16]), self.threshold, self.width, spacing=self.spacing,
                                      parameters=self.proxies)
                out.append(np.stack([sm[k].cpu().numpy() for k in self.proxies], 1))
            return np.concatenate(out)


@dataclasses.dataclass(frozen=True)
class _Options:
    """The search's settings: success tolerance, Adam's rate, the seed and the exact refinement's knobs."""

    tolerance: float
    lr: float
    seed: int
    polish_within: float
    polish_k: int
    polish_rounds: int


@dataclasses.dataclass
class _Pool:
    """Random latents measured exactly and by the proxies (targets mode: start points and the range check)."""

    z: Any                       # (P, z_dim) torch
    exact: np.ndarray            # (P, K)
    soft: np.ndarray             # (P, K)


def _draw_pool(ren: _Renderer, meas: _Measurement, n_pool: int, seed: int) -> _Pool:
    from .generate import sample_z

    pool_z = sample_z(n_pool, ren.z_dim, seed + 7919, ren.distribution).to(ren.dev)
    return _Pool(pool_z, meas.exact(ren.render_np(pool_z)), meas.soft_np(ren, pool_z))


def _target_goals(names, targets: dict, pool: Optional[_Pool], n_samples: int, warnings: list) -> np.ndarray:
    """Exact-unit goals (N, K) of the absolute targets, clamped to the pool's range ± 25 % (with a warning);
    the other columns are 0 until the starting points fill them."""
    goal = np.zeros((n_samples, len(names)))
    if not targets:
        return goal
    for j, name in enumerate(names):
        if name not in targets:
            continue
        col = pool.exact[:, j][np.isfinite(pool.exact[:, j])]
        lo, hi = (np.min(col), np.max(col)) if col.size else (-np.inf, np.inf)
        margin = 0.25 * (hi - lo)
        t = np.broadcast_to(np.asarray(targets[name], dtype=float), (len(goal),)).copy()
        outside = (t < lo - margin) | (t > hi + margin)
        if outside.any():
            warnings.append(f"{name} target(s) {np.unique(t[outside]).round(4).tolist()} outside what this model "
                            f"generates ({lo:.3g}–{hi:.3g}); clamped to [{lo - margin:.3g}, {hi + margin:.3g}]")
            t = np.clip(t, lo - margin, hi + margin)
        goal[:, j] = t
    return goal


@dataclasses.dataclass
class _Start:
    z0: Any                      # (N, z_dim) torch starting latents
    exact0: np.ndarray           # (N, K) their exact values
    goal: np.ndarray             # (N, K) exact-unit goals
    order: Optional[np.ndarray]  # targets mode: pool members by preference per sample (restarts); else None


def _starting_points(ren, meas, pool, goal, latents, targets, changes) -> _Start:
    """Given latents (their changed / kept values complete the goals), or each sample's nearest pool member."""
    import torch

    if latents is not None:
        z0 = torch.as_tensor(np.asarray(latents, np.float32)).to(ren.dev)
        exact0 = meas.exact(ren.render_np(z0))
        for j, name in enumerate(meas.names):
            if name in changes:
                goal[:, j] = exact0[:, j] * (1.0 + changes[name])
            elif name not in targets:
                goal[:, j] = exact0[:, j]
        return _Start(z0, exact0, goal, None)
    order = _assign(pool.exact, goal)
    z0 = pool.z[torch.as_tensor(order[:, 0], device=ren.dev)].clone()
    return _Start(z0, pool.exact[order[:, 0]], goal, order)


@dataclasses.dataclass
class _Objective:
    """Σ_k ((p_k − p̂*_k)/s_k)² (+ the content term in change mode), and the exact relative errors."""

    goal: np.ndarray             # (N, K) exact-unit goals
    scale: Any                   # (K,) torch: spread s_k of each proxy
    proxy_goal0: Any             # (N, K) torch: first proxy targets (calibrated later)
    start: Any                   # change mode: the starting volumes (content term); else None
    content_weight: Optional[float]
    value_range: float

    @classmethod
    def of(cls, ren: _Renderer, meas: _Measurement, begin: _Start, pool: Optional[_Pool],
           content_weight: Optional[float]) -> "_Objective":
        import torch

        start = ren.render(begin.z0).detach() if content_weight is not None else None
        soft0 = meas.soft_np(ren, begin.z0)
        if pool is not None:
            scale = np.nanstd(pool.soft, axis=0)
        else:
            scale = 0.1 * np.nanmean(np.abs(soft0), axis=0)
        scale = torch.as_tensor(np.maximum(scale, 1e-6), dtype=torch.float32, device=ren.dev)
        # proxy targets: each proxy's start value moved by the exact measure's required ratio (calibrated later)
        proxy_goal = torch.as_tensor(begin.goal * _ratio(soft0, begin.exact0), dtype=torch.float32, device=ren.dev)
        return cls(begin.goal, scale, proxy_goal, start, content_weight, ren.value_range)

    def per_sample(self, x, p, proxy_goal, idx):
        """The objective of each rendered sample ``x`` with proxy values ``p``."""
        per = ((p - proxy_goal) / self.scale).square().sum(1)
        if self.start is not None:
            per = per + self.content_weight * 100.0 * (x - self.start[idx]).square().mean(dim=(1, 2, 3, 4)) \
                / self.value_range ** 2
        return per

    def errors(self, ex: np.ndarray, g: Optional[np.ndarray] = None) -> np.ndarray:
        """Relative errors of exact values against the goals (inf where not measurable)."""
        g = self.goal if g is None else g
        rel = np.abs(ex - g) / np.maximum(np.abs(g), 1e-12)
        return np.where(np.isfinite(rel), rel, np.inf)


@dataclasses.dataclass
class _State:
    """What the optimisation changes: the latents and their optimiser, the calibrated proxy targets, the last
    exact values, the best latents so far and the bookkeeping of the refinements and restarts."""

    z: Any                       # (N, z_dim) torch, optimised
    opt: Any                     # Adam over z (fresh after a jump)
    proxy_goal: Any              # (N, K) torch
    exact: np.ndarray            # (N, K) exact values at the last check
    best_z: Any
    best_err: np.ndarray         # (N,) worst relative error of best_z
    success: np.ndarray          # (N,) bool: best_err within tolerance
    stall: np.ndarray            # (N,) checks without improvement
    next_candidate: np.ndarray   # (N,) next pool member to restart from
    sigma: np.ndarray            # (N,) step size of the exact refinement
    traj: dict                   # parameter -> exact values at each check
    restarts: int = 0
    polished: int = 0
    steps_run: int = 0

    @classmethod
    def initial(cls, begin: _Start, obj: _Objective, names, tolerance: float, lr: float) -> "_State":
        import torch

        z = begin.z0.clone().requires_grad_(True)
        traj = {k: [begin.exact0[:, j].tolist()] for j, k in enumerate(names)}
        n = len(begin.goal)
        err = obj.errors(begin.exact0)
        return cls(z, torch.optim.Adam([z], lr=lr), obj.proxy_goal0, begin.exact0, begin.z0.detach().clone(),
                   err.max(axis=1), np.all(err <= tolerance, axis=1), np.zeros(n, int), np.ones(n, int),
                   np.full(n, 0.05), traj)


def _descend(st: _State, act: np.ndarray, ren: _Renderer, meas: _Measurement, obj: _Objective) -> None:
    """One Adam step on the samples ``act`` not yet within tolerance; the done ones stay where they are."""
    import torch

    st.opt.zero_grad(set_to_none=False)
    micro = ren.micro_batch(len(obj.goal))
    for c0 in range(0, len(act), micro):
        idx = torch.as_tensor(act[c0:c0 + micro], device=ren.dev)
        x = ren.render(st.z[idx])
        obj.per_sample(x, meas.soft(x), st.proxy_goal[idx], idx).sum().backward()
    frozen = torch.as_tensor(st.success, device=ren.dev)
    keep_z = st.z.detach()[frozen].clone()
    st.opt.step()
    with torch.no_grad():
        st.z[frozen] = keep_z  # Adam's momentum must not move samples that are done


def _check(st: _State, act, step: int, ren: _Renderer, meas: _Measurement, obj: _Objective, opts: _Options,
           pool: Optional[_Pool], order: Optional[np.ndarray]) -> None:
    """Measure the active samples exactly, keep improvements and re-calibrate the proxy targets; then refine the
    close but stuck samples on the exact measures and restart the far and stuck ones from the pool."""
    import torch

    _measure_active(st, act, ren, meas)
    _keep_improvements(st, obj, opts.tolerance, ren.dev)
    stuck = np.flatnonzero(~st.success & (st.stall >= 2))
    # close but stuck (the proxies' bias left in the last few %): search around the best latent
    near = stuck[st.best_err[stuck] < opts.polish_within * opts.tolerance]
    if near.size and opts.polish_rounds:
        _polish(st, near, step, ren, meas, obj, opts)
    # far and stuck: start again from the next-nearest pool member
    far = np.setdiff1d(stuck, np.flatnonzero(st.best_err < opts.polish_within * opts.tolerance))
    if order is not None and far.size:
        _restart(st, far, pool, order, obj.goal, ren.dev)
    if stuck.size:
        st.opt = torch.optim.Adam([st.z], lr=opts.lr)  # fresh moments after a jump


def _measure_active(st: _State, act, ren: _Renderer, meas: _Measurement) -> None:
    """Exact values of the active samples' current latents; every sample's values join the trajectories."""
    import torch

    with torch.no_grad():
        st.exact = st.exact.copy()
        st.exact[act] = meas.exact(ren.render_np(st.z.detach()[torch.as_tensor(act, device=ren.dev)]))
    for j, k in enumerate(meas.names):
        st.traj[k].append(st.exact[:, j].tolist())


def _keep_improvements(st: _State, obj: _Objective, tolerance: float, dev) -> None:
    """Remember latents that lowered a sample's worst error; count the checks without; re-calibrate each proxy
    target by ``target / exact`` (clamped to [0.8, 1.25]; samples within tolerance keep theirs)."""
    import torch

    worst = obj.errors(st.exact).max(axis=1)
    better = worst < st.best_err - 1e-4
    with torch.no_grad():
        bt = torch.as_tensor(better, device=dev)
        st.best_z[bt] = st.z.detach()[bt]
    st.best_err = np.where(better, worst, st.best_err)
    st.success = st.best_err <= tolerance
    st.stall = np.where(better, 0, st.stall + 1)
    corr = np.clip(_ratio(obj.goal, st.exact, eps=0.0), 0.8, 1.25)
    corr[st.success] = 1.0
    st.proxy_goal = st.proxy_goal * torch.as_tensor(corr, dtype=torch.float32, device=dev)


def _polish(st: _State, near: np.ndarray, step: int, ren, meas, obj, opts: _Options) -> None:
    """Refine samples ``near`` their targets on the exact measures themselves: a (1+K) evolution strategy around
    the best latent with a 1/5-rule-like step size, ``polish_rounds`` rounds; the searched samples continue from
    their best latent."""
    import torch

    searched = near.copy()
    for rnd in range(opts.polish_rounds):
        near = near[st.best_err[near] > opts.tolerance]  # done ones leave the search
        if not near.size:
            break
        _polish_round(st, near, opts.seed * 1000003 + step * 101 + rnd, ren, meas, obj, opts.polish_k)
        st.polished += len(near)
    with torch.no_grad():
        idx = torch.as_tensor(searched, device=ren.dev)
        st.z[idx] = st.best_z[idx]
    st.success = st.best_err <= opts.tolerance


def _polish_round(st: _State, near: np.ndarray, seed: int, ren: _Renderer, meas: _Measurement, obj: _Objective,
                  k: int) -> None:
    """``k`` seeded candidates around each sample's best latent, measured exactly; the best one is kept when it
    beats the sample's best (step size × 1.5), else the step size shrinks (× 0.6)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    base = st.best_z[torch.as_tensor(near, device=ren.dev)]
    noise = torch.randn((len(near), k, base.shape[1]), generator=gen).to(ren.dev)
    step_size = torch.as_tensor(st.sigma[near], dtype=base.dtype, device=ren.dev)
    cand = base[:, None, :] + (step_size * base.norm(dim=1) / np.sqrt(base.shape[1]))[:, None, None] * noise
    ce = meas.exact(ren.render_np(cand.reshape(-1, base.shape[1])))
    cw = obj.errors(ce, np.repeat(obj.goal[near], k, axis=0)).max(axis=1).reshape(len(near), k)
    pick = cw.argmin(axis=1)
    for a, i in enumerate(near):
        if cw[a, pick[a]] < st.best_err[i]:
            st.best_err[i] = cw[a, pick[a]]
            st.best_z[i] = cand[a, pick[a]]
            st.exact[i] = ce[a * k + pick[a]]
            st.sigma[i] *= 1.5
            st.stall[i] = 0
        else:
            st.sigma[i] *= 0.6


def _restart(st: _State, far: np.ndarray, pool: _Pool, order: np.ndarray, goal: np.ndarray, dev) -> None:
    """Move each sample of ``far`` to its next-nearest pool member (while any is left), with that member's
    proxy targets."""
    import torch

    with torch.no_grad():
        for i in far:
            if st.next_candidate[i] >= order.shape[1]:
                continue
            cand_i = int(order[i, st.next_candidate[i]])
            st.next_candidate[i] += 1
            st.z[i] = pool.z[cand_i]
            r0 = _ratio(pool.soft[cand_i], pool.exact[cand_i])
            st.proxy_goal[i] = torch.as_tensor(goal[i] * r0, dtype=torch.float32, device=dev)
            st.stall[i] = 0
            st.restarts += 1


def _result(st: _State, begin: _Start, ren: _Renderer, meas: _Measurement, obj: _Objective, tolerance: float,
            info: dict, t0: float) -> SteeringResult:
    """Render the best latents, judge them by the exact measures and tabulate targets, start, proxy and exact.
    ``info`` holds the request's part of the result's info (mode, pool, threshold, warnings, changes, targets)."""
    import time

    import torch
    from MorphometryLib.differentiable import soft_morphometry

    zf = st.best_z
    with torch.no_grad():
        if ren.hyper:
            zf = zf / zf.norm(dim=1, keepdim=True)
        xf = ren.render(zf)
        final = xf[:, 0].cpu().numpy()
        softf = soft_morphometry(xf, meas.threshold, meas.width, spacing=meas.spacing, parameters=meas.proxies)
    exact = meas.exact(final)
    success = np.all(obj.errors(exact) <= tolerance, axis=1)
    rows = []
    for i in range(len(final)):
        row: dict[str, Any] = {"sample": i, "success": bool(success[i])}
        for j, k in enumerate(meas.names):
            row[f"{k} target"] = float(obj.goal[i, j])
            row[f"{k} start (exact)"] = float(begin.exact0[i, j])
            row[f"{k} proxy"] = float(softf[STEERABLE[k][0]][i])
            row[f"{k} exact"] = float(exact[i, j])
        rows.append(row)
    volumes = [Volume(v.astype(np.float32), spacing=meas.spacing) for v in final]
    info = {"mode": info["mode"], "parameters": meas.names, "tolerance": tolerance,
            "success_rate": float(success.mean()), "samples": len(final), "seconds": time.perf_counter() - t0,
            "seconds_per_sample": (time.perf_counter() - t0) / max(len(final), 1), "steps": st.steps_run,
            "pool": info["pool"], "restarts": st.restarts, "exact_refinements": st.polished,
            "threshold": info["threshold"], "warnings": info["warnings"], "changes": info["changes"],
            "targets": info["targets"]}
    return SteeringResult(volumes, zf.cpu().numpy(), rows, {k: np.asarray(v) for k, v in st.traj.items()}, info)


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
