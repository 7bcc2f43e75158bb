"""Differentiable 3-D augmentation for GAN discriminators (DiffAugment / ADA style).

The same random transform family is applied to real and generated batches before the discriminator, so that
D cannot overfit a small training set while G still sees gradients through every operation (Zhao et al.,
NeurIPS 2020, "Differentiable Augmentation for Data-Efficient GAN Training"; Karras et al., NeurIPS 2020,
"Training Generative Adversarial Networks with Limited Data" for the adaptive probability).

Each operation is applied to each sample independently with probability ``p``:

- ``translation``: integer shift of up to ``translation × size`` voxels per axis with zero fill. A shift of 0
  is the identity — the CoW anchor's implementation moved every volume by one voxel even at zero offset.
- ``cutout``: zero a random box of ``cutout × size`` per axis.
- ``flip``: mirror along the given axes (default: W, the left-right axis of a CoW ROI).
- ``brightness`` / ``contrast``: add ``U(-b, b)``; scale around the per-sample mean by ``exp(U(-c, c))``.
- ``rotation`` / ``scaling``: small rotation about the D axis (in-plane, degrees) and isotropic zoom
  ``exp(U(-s, s))``, by trilinear resampling (``grid_sample``, zero padding).

Joint image + label batches (intensity, then class probabilities) are augmented label-aware:
``intensity_channels`` limits brightness and contrast to the leading intensity channels, geometric
operations move every channel together, and ``flip_permutations`` re-orders the channels of a mirrored
sample (a left-right mirror turns the left ICA's channel into the right ICA's; see
:func:`VolumetricGANLib.labelmaps.lr_flip_permutation`). Zero fill outside the volume and in cut-out boxes is
applied to reals and fakes alike, so it tells the discriminator nothing.

Tensors are ``(N, C, D, H, W)``; every operation is vectorised over the batch (no Python loop over samples)
and keeps dtype and device, so it runs inside autocast on a GPU.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["DiffAugment3D", "AdaptiveAugment", "translate", "cutout", "flip"]


def _assert_5d(x: torch.Tensor) -> None:
    if x.ndim != 5:
        raise ValueError(f"augmentation expects (N, C, D, H, W) tensors, got shape {tuple(x.shape)}")


def translate(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift each sample by integer ``shifts`` (N, 3) voxels along (D, H, W) with zero fill.

    ``out[..., i] = x[..., i - s]`` where that index is inside the volume, else 0; ``s = 0`` is the identity.
    """
    _assert_5d(x)
    n = x.shape[0]
    out = x
    for axis in range(3):
        size = x.shape[2 + axis]
        s = shifts[:, axis].to(torch.long).view(n, 1)
        src = torch.arange(size, device=x.device).view(1, size) - s              # (N, size)
        valid = (src >= 0) & (src < size)
        src = src.clamp(0, size - 1)
        shape = [n, 1, 1, 1, 1]
        shape[2 + axis] = size
        index = src.view(shape).expand_as(out)
        out = torch.gather(out, 2 + axis, index) * valid.view(shape).to(out.dtype)
    return out


def cutout(x: torch.Tensor, centres: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero a box of ``size`` (d, h, w) voxels centred at ``centres`` (N, 3) in each sample."""
    _assert_5d(x)
    mask = torch.ones((x.shape[0], 1, *x.shape[2:]), device=x.device, dtype=x.dtype)
    grids = [torch.arange(s, device=x.device) for s in x.shape[2:]]
    inside = None
    for axis in range(3):
        lo = (centres[:, axis] - size[axis] // 2).view(-1, 1)
        in_axis = (grids[axis].view(1, -1) >= lo) & (grids[axis].view(1, -1) < lo + size[axis])  # (N, size)
        shape = [x.shape[0], 1, 1, 1, 1]
        shape[2 + axis] = x.shape[2 + axis]
        in_axis = in_axis.view(shape)
        inside = in_axis if inside is None else inside & in_axis
    return x * (mask - inside.to(x.dtype))


def flip(x: torch.Tensor, do: torch.Tensor, axis: int) -> torch.Tensor:
    """Mirror the samples where ``do`` (N,) is true along spatial ``axis`` (0 = D, 1 = H, 2 = W)."""
    _assert_5d(x)
    return torch.where(do.view(-1, 1, 1, 1, 1), torch.flip(x, dims=(2 + axis,)), x)


class DiffAugment3D(torch.nn.Module):
    """Random differentiable 3-D augmentation with a per-sample probability ``p`` for each operation.

    Example
    -------
    >>> aug = DiffAugment3D(p=0.5, translation=0.125, cutout=0.5, flip_axes=(2,))
    >>> d_real = D(aug(reals)); d_fake = D(aug(fakes))          # doctest: +SKIP
    """

    def __init__(
        self,
        p: float = 0.5,                     # probability of each operation, per sample (ADA updates it)
        translation: float = 0.125,         # max shift as a fraction of each axis length (0 disables)
        cutout: float = 0.5,                # cut-out box size as a fraction of each axis length (0 disables)
        flip_axes: Sequence[int] = (2,),    # spatial axes (0=D, 1=H, 2=W) that may be mirrored
        brightness: float = 0.0,            # additive offset range, in network units (data in [-1, 1])
        contrast: float = 0.0,              # log-scale range of the contrast factor
        rotation_deg: float = 0.0,          # max in-plane rotation about the D axis, degrees
        scaling: float = 0.0,               # log-scale range of an isotropic zoom
        intensity_channels: int | None = None,  # leading channels brightness/contrast act on (None = all)
        flip_permutations: dict[int, Sequence[int]] | None = None,  # axis → channel order after a mirror
    ) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation probability p must be in [0, 1], got {p}")
        for name, v in (("translation", translation), ("cutout", cutout)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1), got {v}")
        self.p = float(p)
        self.translation = float(translation)
        self.cutout = float(cutout)
        self.flip_axes = tuple(int(a) for a in flip_axes)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.rotation_deg = float(rotation_deg)
        self.scaling = float(scaling)
        self.intensity_channels = None if intensity_channels is None else int(intensity_channels)
        self.flip_permutations = {int(a): [int(c) for c in perm] for a, perm in (flip_permutations or {}).items()}
        for a, perm in self.flip_permutations.items():
            if sorted(perm) != list(range(len(perm))):
                raise ValueError(f"flip_permutations[{a}]: {perm} is not a permutation of 0..{len(perm) - 1}")

    def extra_repr(self) -> str:
        return (f"p={self.p:.3f}, translation={self.translation}, cutout={self.cutout}, flip_axes={self.flip_axes}, "
                f"brightness={self.brightness}, contrast={self.contrast}, rotation_deg={self.rotation_deg}, "
                f"scaling={self.scaling}")

    def _chosen(self, n: int, device, generator) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator) < self.p

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _assert_5d(x)
        if self.p <= 0:
            return x
        n, dev = x.shape[0], x.device
        sizes = x.shape[2:]
        for perm in self.flip_permutations.values():
            if len(perm) != x.shape[1]:
                raise ValueError(f"flip_permutations: {len(perm)} channels given for a {x.shape[1]}-channel batch")
        if self.brightness > 0 or self.contrast > 0:
            x = self._intensity(x, generator)
        if self.rotation_deg > 0 or self.scaling > 0:
            x = self._rotate_scale(x, generator)
        for axis in self.flip_axes:
            do = self._chosen(n, dev, generator)
            perm = self.flip_permutations.get(axis)
            x = flip(x, do, axis) if perm is None else torch.where(
                do.view(-1, 1, 1, 1, 1), torch.flip(x, dims=(2 + axis,))[:, perm], x)
        if self.translation > 0:
            limit = torch.tensor([int(round(s * self.translation)) for s in sizes], device=dev)
            shifts = torch.floor(torch.rand(n, 3, device=dev, generator=generator) * (2 * limit + 1)).to(torch.long) - limit
            shifts = shifts * self._chosen(n, dev, generator).view(-1, 1)
            x = translate(x, shifts)
        if self.cutout > 0:
            box = [max(1, int(round(s * self.cutout))) for s in sizes]
            centres = torch.stack([torch.randint(0, s, (n,), device=dev, generator=generator) for s in sizes], 1)
            out = cutout(x, centres, box)
            x = torch.where(self._chosen(n, dev, generator).view(-1, 1, 1, 1, 1), out, x)
        return x

    def _intensity(self, x: torch.Tensor, generator) -> torch.Tensor:
        """Brightness, then contrast, on the intensity channels only (all channels when not set)."""
        n, dev = x.shape[0], x.device
        k = x.shape[1] if self.intensity_channels is None else self.intensity_channels
        img = x[:, :k]
        if self.brightness > 0:
            off = (torch.rand(n, device=dev, generator=generator) * 2 - 1) * self.brightness
            off = off * self._chosen(n, dev, generator)
            img = img + off.view(-1, 1, 1, 1, 1).to(x.dtype)
        if self.contrast > 0:
            fac = torch.exp((torch.rand(n, device=dev, generator=generator) * 2 - 1) * self.contrast)
            fac = torch.where(self._chosen(n, dev, generator), fac, torch.ones_like(fac)).view(-1, 1, 1, 1, 1)
            mean = img.mean(dim=(1, 2, 3, 4), keepdim=True)
            img = (img - mean) * fac.to(x.dtype) + mean
        return img if k == x.shape[1] else torch.cat([img, x[:, k:]], dim=1)

    def _rotate_scale(self, x: torch.Tensor, generator) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        chosen = self._chosen(n, dev, generator)
        angle = (torch.rand(n, device=dev, generator=generator) * 2 - 1) * math.radians(self.rotation_deg)
        zoom = torch.exp((torch.rand(n, device=dev, generator=generator) * 2 - 1) * self.scaling)
        if dev.type == "cpu" and not bool(chosen.any()):
            # nothing to resample (the usual case at ADA's small p): skip the full-batch grid_sample and its
            # backward (3–6 % of a tiny-cow-labels step on the CPU, measured at p = 0.01). The random numbers are
            # drawn all the same, so runs stay reproducible; on a GPU the check would be a host sync.
            return x
        angle = torch.where(chosen, angle, torch.zeros_like(angle))
        zoom = torch.where(chosen, zoom, torch.ones_like(zoom))
        c, s = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.zeros(n, 3, 4, device=dev, dtype=torch.float32)
        # grid_sample's last coordinate is x (W), then y (H), then z (D): rotate in the (W, H) plane.
        theta[:, 0, 0], theta[:, 0, 1] = c, -s
        theta[:, 1, 0], theta[:, 1, 1] = s, c
        theta[:, 2, 2] = 1.0 / zoom
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return torch.where(chosen.view(-1, 1, 1, 1, 1), out.to(x.dtype), x)


class AdaptiveAugment:
    """ADA's controller: raise ``p`` when D overfits (r_t = E[sign D(real)] above target), lower it otherwise.

    ``p`` moves by ``batch × interval / (speed_kimg × 1000)`` per update, so it can go from 0 to 1 in
    ``speed_kimg`` thousand images (Karras et al. 2020 use target 0.6, speed 500 kimg). Accumulation is on
    the device (no host sync per step); :meth:`update` syncs once per ``interval`` steps.
    """

    def __init__(self, target: float = 0.6, speed_kimg: float = 500.0, interval: int = 4, p: float = 0.0,
                 p_max: float = 1.0) -> None:
        self.target = float(target)
        self.speed_kimg = float(speed_kimg)
        self.interval = int(interval)
        self.p = float(p)
        self.p_max = float(p_max)
        self.rt = 0.0
        self._sum = None
        self._count = 0

    def accumulate(self, d_real_logits: torch.Tensor) -> None:
        s = torch.sign(d_real_logits.detach().float()).sum()
        self._sum = s if self._sum is None else self._sum + s
        self._count += d_real_logits.numel()

    def update(self, batch_size: int) -> float:
        """Apply the accumulated r_t to ``p`` (call every ``interval`` steps); returns the new ``p``."""
        if not self._count:
            return self.p
        self.rt = float(self._sum) / self._count
        step = math.copysign(batch_size * self.interval / (self.speed_kimg * 1000.0), self.rt - self.target)
        self.p = min(self.p_max, max(0.0, self.p + step))
        self._sum, self._count = None, 0
        return self.p

    def state_dict(self) -> dict:
        """Settings, ``p``, r_t and the partial accumulation (so a resumed run updates ``p`` identically)."""
        return {"target": self.target, "speed_kimg": self.speed_kimg, "interval": self.interval, "p": self.p,
                "p_max": self.p_max, "rt": self.rt, "count": self._count,
                "sum": 0.0 if self._sum is None else float(self._sum)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("target", "speed_kimg", "interval", "p", "p_max", "rt"):
            setattr(self, key, type(getattr(self, key))(state[key]))
        self._count = int(state.get("count", 0))
        self._sum = torch.tensor(float(state.get("sum", 0.0))) if self._count else None
