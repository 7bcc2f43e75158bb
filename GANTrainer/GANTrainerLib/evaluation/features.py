"""Feature extractors for slices (2-D) and volumes (3-D), each carrying the name that labels its numbers.

With weights (file paths given by the user, never downloaded):

* :class:`InceptionSliceExtractor` — pytorch-fid's Inception-v3, pool3, 2048-d (FID; Heusel et al. 2017).
* :class:`MedicalNetVolumeExtractor` — MedicalNet ResNet-10 (23 datasets), pooled layer4, 512-d (MD; Chen 2019).

Without weights, documented fallbacks (see ``docs/evaluation.md``) so that every command still runs and
nothing pretends to be FID:

* :class:`StatsSliceExtractor` (``fallback-slice-stats-v1``, 271-d): multi-scale pooled intensity statistics
  of each slice (block means at 1/2/4/8 grids, block SDs, gradient-magnitude means, a 16-bin histogram)
  after a 64×64 resize. Deterministic, interpretable, ~1000× cheaper than Inception; it sees the intensity
  distribution, coarse layout and edge density, not semantics.
* :class:`RandomResNet10VolumeExtractor` (``fallback-random-resnet10-seed<S>``, 512-d): the MedicalNet
  architecture with seeded random weights (Kaiming-normal from NumPy's PCG64, so identical on every
  platform and torch version; BatchNorm as identity). Randomly initialised CNN embeddings are a known,
  workable substitute where no pre-trained network fits the domain (Naeem et al. 2020, §5 "random
  embeddings"); values are comparable only between runs with the same extractor name.
"""

from __future__ import annotations

import abc

import os
from typing import Optional

import numpy as np

__all__ = [
    "SliceExtractor",
    "VolumeExtractor",
    "InceptionSliceExtractor",
    "StatsSliceExtractor",
    "MedicalNetVolumeExtractor",
    "RandomResNet10VolumeExtractor",
    "make_slice_extractor",
    "make_volume_extractor",
]


class _Extractor:
    name: str = "extractor"
    dim: int = 0
    weights: Optional[dict] = None  # provenance of the weights file (path, sha256), None for fallbacks
    fallback: bool = False

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim, "fallback": self.fallback, "weights": self.weights}


class SliceExtractor(_Extractor, abc.ABC):
    """Maps a stack of 2-D slices (N, H, W) — uint8, or float in [0, 1] — to features (N, dim) float64."""

    @abc.abstractmethod
    def __call__(self, slices: np.ndarray) -> np.ndarray:
        """Features of the slices, (N, dim) float64."""


class VolumeExtractor(_Extractor, abc.ABC):
    """Maps a stack of normalised volumes (N, D, H, W) float32 to features (N, dim) float64."""

    @abc.abstractmethod
    def __call__(self, volumes: np.ndarray) -> np.ndarray:
        """Features of the volumes, (N, dim) float64."""


def _as_unit_float(slices: np.ndarray):
    import torch

    arr = np.asarray(slices)
    if arr.ndim != 3:
        raise ValueError(f"slices: expected (N, H, W), got shape {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.float() / 255.0 if arr.dtype == np.uint8 else t.float()


class _TorchExtractor:
    def _load(self, loader, weights_path, device: str, batch_size: int, label: str) -> None:
        """Load published weights with ``loader`` (→ (net, provenance)) and name the extractor by their hash."""
        self.net, self.weights = loader(weights_path)
        self.device, self.batch_size = device, int(batch_size)
        self.net.to(device)
        self.name = f"{label}[sha256:{self.weights['sha256'][:8]}]"

    def _run(self, net, batches, device: str, batch_size: int) -> np.ndarray:
        import torch

        outs = []
        with torch.inference_mode():
            for start in range(0, batches.shape[0], batch_size):
                x = batches[start:start + batch_size].to(device)
                outs.append(net(x).double().cpu().numpy())
        return np.concatenate(outs, 0) if outs else np.zeros((0, self.dim))


class InceptionSliceExtractor(SliceExtractor, _TorchExtractor):
    """pytorch-fid Inception-v3 pool3 features (2048-d) of grey slices (repeated to RGB, resized to 299²)."""

    dim = 2048

    def __init__(
        self,
        weights_path: str | os.PathLike,   # pytorch-fid's pt_inception-2015-12-05-6726825d.pth
        device: str = "cpu",               # torch device
        batch_size: int = 64,              # slices per forward pass
    ):
        from .inception import load_fid_inception

        self._load(load_fid_inception, weights_path, device, batch_size, "inception-v3-fid")

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        x = _as_unit_float(slices)[:, None]
        return self._run(self.net, x, self.device, self.batch_size)


class StatsSliceExtractor(SliceExtractor):
    """Fallback 2-D features: multi-scale pooled intensity statistics (271-d), deterministic, no weights."""

    name = "fallback-slice-stats-v1"
    dim = 271
    fallback = True
    grids = (1, 2, 4, 8)
    bins = 16
    size = 64

    def __init__(self, device: str = "cpu", batch_size: int = 512):
        self.device, self.batch_size = device, int(batch_size)

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x_all = _as_unit_float(slices)
        outs = []
        for start in range(0, x_all.shape[0], self.batch_size):
            x = x_all[start:start + self.batch_size, None].to(self.device, torch.float64)
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=bool(x.shape[-1] > self.size or x.shape[-2] > self.size))
            gy = torch.zeros_like(x)
            gx = torch.zeros_like(x)
            gy[..., 1:-1, :] = 0.5 * (x[..., 2:, :] - x[..., :-2, :])
            gx[..., :, 1:-1] = 0.5 * (x[..., :, 2:] - x[..., :, :-2])
            grad = torch.sqrt(gx * gx + gy * gy)
            feats = []
            for g in self.grids:
                m = F.adaptive_avg_pool2d(x, g)
                feats.append(m.flatten(1))
                feats.append(torch.sqrt((F.adaptive_avg_pool2d(x * x, g) - m * m).clamp_min(0)).flatten(1))
                feats.append(F.adaptive_avg_pool2d(grad, g).flatten(1))
            idx = (x.clamp(0, 1) * self.bins).long().clamp_max(self.bins - 1).flatten(1)
            hist = torch.zeros(x.shape[0], self.bins, dtype=torch.float64, device=x.device)
            hist.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
            feats.append(hist / idx.shape[1])
            f = torch.cat(feats, 1)

            outs.append(f.cpu().numpy())
        return np.concatenate(outs, 0) if outs else np.zeros((0, self.dim))


class MedicalNetVolumeExtractor(VolumeExtractor, _TorchExtractor):
    """MedicalNet ResNet-10 (resnet_10_23dataset.pth) pooled layer4 features, 512-d."""

    dim = 512

    def __init__(
        self,
        weights_path: str | os.PathLike,   # MedicalNet's resnet_10_23dataset.pth
        device: str = "cpu",               # torch device
        batch_size: int = 4,               # volumes per forward pass
    ):
        from .medicalnet import load_medicalnet

        self._load(load_medicalnet, weights_path, device, batch_size, "medicalnet-resnet10-23dataset")

    def __call__(self, volumes: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))[:, None]
        return self._run(self.net, x, self.device, self.batch_size)


class RandomResNet10VolumeExtractor(VolumeExtractor, _TorchExtractor):
    """Fallback 3-D features: MedicalNet's ResNet-10 with seeded random (Kaiming fan-out) weights, 512-d."""

    dim = 512
    fallback = True

    def __init__(self, seed: int = 0, device: str = "cpu", batch_size: int = 4):
        import torch

        from .medicalnet import MedicalNetResNet10

        self.net = MedicalNetResNet10()
        rng = np.random.default_rng(seed)
        with torch.no_grad():
            for name, p in self.net.named_parameters():
                if p.ndim == 5:  # conv: Kaiming normal, fan-out, ReLU gain (MedicalNet's own initialisation)
                    fan_out = p.shape[0] * int(np.prod(p.shape[2:]))
                    w = rng.standard_normal(tuple(p.shape)) * np.sqrt(2.0 / fan_out)
                    p.copy_(torch.from_numpy(w.astype(np.float32)))
        self.net.eval().requires_grad_(False).to(device)
        self.device, self.batch_size = device, int(batch_size)
        self.name = f"fallback-random-resnet10-seed{int(seed)}"

    __call__ = MedicalNetVolumeExtractor.__call__


def make_slice_extractor(weights: str | os.PathLike | None, device: str = "cpu") -> SliceExtractor:
    """Inception-v3 (FID) if a weights file is given, else the documented statistics fallback."""
    return InceptionSliceExtractor(weights, device) if weights else StatsSliceExtractor(device)


def make_volume_extractor(weights: str | os.PathLike | None, device: str = "cpu", seed: int = 0) -> VolumeExtractor:
    """MedicalNet ResNet-10 if a weights file is given, else the seeded random-weight fallback."""
    return MedicalNetVolumeExtractor(weights, device) if weights else RandomResNet10VolumeExtractor(seed, device)
