"""Differentiable bone morphometry in torch, for steering generators (docs/morphometry.md,
"Differentiable counterparts"; docs/generation.md, "Steering").

All functions take a batch ``x`` of shape ``(N, 1, D, H, W)`` (grey levels in image units), run on any
device, and return one value per sample, shape ``(N,)``. Under ``torch.autocast`` they compute in fp32
(half-precision inputs are upcast; float64 inputs stay float64, e.g. for ``gradcheck``).

Definitions (``s = sigmoid((x − threshold)/width)`` is the soft bone mask; ``spacing`` is (x, y, z) mm
like :class:`VolGANCore.Volume`, i.e. along (W, H, D))::

    soft BV/TV  = mean(s)                         MICCAI 2020 preset: threshold 225, width 10
    BMD         = mean(x)
    TMD         = Σ x·s / Σ s
    BS/TV       = mean |∇s|   (mm⁻¹; central differences in mm; coarea: ∫|∇s| dV = area of the 0.5 level)
    plate model = Tb.Th = 2·BV/TV / BS/TV,  Tb.N = BS/TV / 2,  Tb.Sp = 1/Tb.N − Tb.Th  (Parfitt 1987)
    DA (tensor) = 1 − λmin/λmax of T = Σ ∇s ∇sᵀ   (optionally after a Gaussian of ``sigma`` voxels)

An optional ``roi`` (N or 1, 1, D, H, W) in [0, 1] weights the voxels (TV = Σ roi).
How these agree with the exact measures (:mod:`MorphometryLib.bone`) over a population of random
structures is tabulated in docs/morphometry.md and checked in Testing/test_morphometry_differentiable.py.

References
----------
Iarussi E, Thomsen F, Delrieux C. Generative modelling of 3D in-silico spongiosa with controllable
micro-structural parameters. MICCAI 2020 (soft BV/TV at threshold 225).
Parfitt AM et al. J Bone Miner Res 2:595–610, 1987 (plate model).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from VolGANCore.errors import VolGANError

__all__ = [
    "PRESETS",
    "soft_mask",
    "soft_bv_tv",
    "bmd",
    "tmd",
    "soft_bs_tv",
    "plate_model",
    "structure_tensor_da",
    "soft_morphometry",
]

PRESETS: dict[str, dict[str, float]] = {"miccai2020": {"threshold": 225.0, "width": 10.0}}
SOFT_PARAMETERS = ("BV/TV", "BMD", "TMD", "BS/TV", "Tb.Th", "Tb.Sp", "Tb.N", "DA")


def _prepare(x: torch.Tensor, what: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise VolGANError(f"{what}: expected a torch.Tensor of shape (N, 1, D, H, W), got {type(x).__name__}")
    if x.dim() == 3:
        x = x[None, None]
    elif x.dim() == 4:
        x = x[:, None]
    if x.dim() != 5 or x.shape[1] != 1:
        raise VolGANError(f"{what}: expected shape (N, 1, D, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.float64:
        x = x.float()
    return x


def _resolve(threshold, width, preset):
    if preset is not None:
        if preset not in PRESETS:
            raise VolGANError(f"preset: unknown {preset!r} (choose from {sorted(PRESETS)})")
        threshold = PRESETS[preset]["threshold"] if threshold is None else threshold
        width = PRESETS[preset]["width"] if width is None else width
    if threshold is None:
        raise VolGANError("threshold: give the bone threshold (image units) or preset='miccai2020'")
    width = 10.0 if width is None else float(width)
    if width <= 0:
        raise VolGANError(f"width: the sigmoid width must be positive, got {width}")
    return float(threshold), width


def _no_autocast(x: torch.Tensor):
    return torch.autocast(device_type=x.device.type, enabled=False)


def _weighted_mean(v: torch.Tensor, roi: torch.Tensor | None) -> torch.Tensor:
    if roi is None:
        return v.flatten(1).mean(1)
    w = roi.to(v.dtype).expand_as(v)
    return (v * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-12)


def soft_mask(x: torch.Tensor, threshold: float | None = None, width: float | None = None, preset: str | None = None) -> torch.Tensor:
    """Soft bone mask ``sigmoid((x − threshold)/width)``, shape (N, 1, D, H, W)."""
    t, w = _resolve(threshold, width, preset)
    x = _prepare(x)
    with _no_autocast(x):
        return torch.sigmoid((x - t) / w)


def soft_bv_tv(x, threshold=None, width=None, preset=None, roi=None) -> torch.Tensor:
    """Soft BV/TV = mean of the soft mask (MICCAI 2020: ``preset="miccai2020"``), shape (N,)."""
    s = soft_mask(x, threshold, width, preset)
    with _no_autocast(s):
        return _weighted_mean(s, roi)


def bmd(x, roi=None) -> torch.Tensor:
    """Bone mineral density: mean grey level (image units), shape (N,)."""
    x = _prepare(x)
    with _no_autocast(x):
        return _weighted_mean(x, roi)


def tmd(x, threshold=None, width=None, preset=None, roi=None) -> torch.Tensor:
    """Tissue mineral density: soft-mask-weighted mean grey level ``Σ x·s / Σ s``, shape (N,)."""
    x = _prepare(x)
    s = soft_mask(x, threshold, width, preset)
    with _no_autocast(x):
        w = s if roi is None else s * roi.to(s.dtype)
        return (x * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-12)


def _gradient(s: torch.Tensor, spacing: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Central differences (mm⁻¹) along D, H, W with replicate padding; ``spacing`` is (x, y, z) mm."""
    sx, sy, sz = (float(v) for v in spacing)
    p = F.pad(s, (1, 1, 1, 1, 1, 1), mode="replicate")
    gd = (p[:, :, 2:, 1:-1, 1:-1] - p[:, :, :-2, 1:-1, 1:-1]) / (2.0 * sz)
    gh = (p[:, :, 1:-1, 2:, 1:-1] - p[:, :, 1:-1, :-2, 1:-1]) / (2.0 * sy)
    gw = (p[:, :, 1:-1, 1:-1, 2:] - p[:, :, 1:-1, 1:-1, :-2]) / (2.0 * sx)
    return gd, gh, gw


def soft_bs_tv(x, threshold=None, width=None, preset=None, spacing=(1.0, 1.0, 1.0), roi=None, eps=1e-12) -> torch.Tensor:
    """Soft BS/TV (mm⁻¹) = mean gradient magnitude of the soft mask, shape (N,).

    ``eps`` (mm⁻²) keeps the square root differentiable where the mask is flat.
    """
    s = soft_mask(x, threshold, width, preset)
    with _no_autocast(s):
        gd, gh, gw = _gradient(s, spacing)
        mag = torch.sqrt(gd * gd + gh * gh + gw * gw + eps)
        return _weighted_mean(mag, roi)


def plate_model(x, threshold=None, width=None, preset=None, spacing=(1.0, 1.0, 1.0), roi=None) -> dict[str, torch.Tensor]:
    """Plate-model (Parfitt) Tb.Th, Tb.Sp (mm) and Tb.N (mm⁻¹) from soft BV/TV and soft BS/TV."""
    bvtv = soft_bv_tv(x, threshold, width, preset, roi)
    bstv = soft_bs_tv(x, threshold, width, preset, spacing, roi).clamp_min(1e-12)
    th = 2.0 * bvtv / bstv
    n = bstv / 2.0
    return {"Tb.Th": th, "Tb.N": n, "Tb.Sp": 1.0 / n - th}


def _gaussian_blur(s: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3.0 * sigma + 0.5))
    k = torch.arange(-r, r + 1, dtype=s.dtype, device=s.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    out = F.pad(s, (r, r, r, r, r, r), mode="replicate")
    out = F.conv3d(out, k.view(1, 1, -1, 1, 1))
    out = F.conv3d(out, k.view(1, 1, 1, -1, 1))
    return F.conv3d(out, k.view(1, 1, 1, 1, -1))


def structure_tensor_da(x, threshold=None, width=None, preset=None, spacing=(1.0, 1.0, 1.0), roi=None, sigma=0.0) -> torch.Tensor:
    """Degree of anisotropy ``1 − λmin/λmax`` of the structure tensor ``Σ ∇s∇sᵀ`` of the soft mask, shape (N,).

    Parameters
    ----------
    sigma : float
        Optional Gaussian smoothing (voxels) of the soft mask before the gradient.
    """
    s = soft_mask(x, threshold, width, preset)
    with _no_autocast(s):
        if sigma > 0:
            s = _gaussian_blur(s, sigma)
        g = torch.cat(_gradient(s, spacing), dim=1)  # (N, 3, D, H, W)
        if roi is not None:
            g = g * roi.to(g.dtype).sqrt()
        g = g.flatten(2)
        t = g @ g.transpose(1, 2) / g.shape[2]  # (N, 3, 3)
        w = torch.linalg.eigvalsh(t)
        return 1.0 - w[:, 0].clamp_min(0) / w[:, -1].clamp_min(1e-30)


def soft_morphometry(
    x: torch.Tensor,
    threshold: float | None = None,
    width: float | None = None,
    preset: str | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    roi: torch.Tensor | None = None,
    parameters: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """All differentiable parameters of a batch at once (each (N,)); keys as in :data:`SOFT_PARAMETERS`.

    Units: BV/TV 1; BMD, TMD image units; BS/TV, Tb.N mm⁻¹; Tb.Th, Tb.Sp mm; DA 1.
    """
    chosen = list(SOFT_PARAMETERS if parameters is None else parameters)
    bad = [p for p in chosen if p not in SOFT_PARAMETERS]
    if bad:
        raise VolGANError(f"parameters: unknown {bad} (choose from {list(SOFT_PARAMETERS)})")
    out: dict[str, torch.Tensor] = {}
    if "BV/TV" in chosen:
        out["BV/TV"] = soft_bv_tv(x, threshold, width, preset, roi)
    if "BMD" in chosen:
        out["BMD"] = bmd(x, roi)
    if "TMD" in chosen:
        out["TMD"] = tmd(x, threshold, width, preset, roi)
    if "BS/TV" in chosen:
        out["BS/TV"] = soft_bs_tv(x, threshold, width, preset, spacing, roi)
    if any(p in chosen for p in ("Tb.Th", "Tb.Sp", "Tb.N")):
        pm = plate_model(x, threshold, width, preset, spacing, roi)
        out.update({k: v for k, v in pm.items() if k in chosen})
    if "DA" in chosen:
        out["DA"] = structure_tensor_da(x, threshold, width, preset, spacing, roi)
    return out
