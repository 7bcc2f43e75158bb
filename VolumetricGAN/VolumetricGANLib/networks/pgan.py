"""Progressive GAN-3D (WScale, PixelNorm, minibatch-std, tanh), compatible with the MICCAI 2020 weights.

The generator grows 4³ → 8³ → 16³ → 32³ (``max_res = 3``); a fractional ``progress`` fades the newest
level in (``alpha = progress − floor(progress)``). Module and parameter names follow the published
spongiosa code so that its state dict (``blocks.{i}.conv{j}.conv.weight``, ``toRGBs.{i}.conv.weight``)
loads with ``strict=True`` and reproduces the published output bit for bit: every convolution multiplies
its *input* by the WScale constant ``sqrt(gain / fan_in)`` (a Python float), then convolves, adds the bias,
applies LeakyReLU(0.2) and PixelNorm, in that order.

References
----------
Karras et al., "Progressive Growing of GANs for Improved Quality, Stability, and Variation", ICLR 2018.
Iarussi, Thomsen, Delrieux, "Generative Modelling of 3D in-silico Spongiosa with Controllable
Micro-Structural Parameters", MICCAI 2020 (emmanueliarussi/generative3DSpongiosa, CC BY 4.0).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from VolGANCore.names import PADDING_MODES  # nn.Conv3d padding modes of the 3×3×3 convs

from .layers import ShapeError, assert_shape, minibatch_std, pixel_norm

__all__ = ["pgan_channels", "WSConv3d", "ProgressiveGenerator", "ProgressiveDiscriminator", "PADDING_MODES"]

FAMILY = "pgan-3d"


def _check_padding_mode(mode: str) -> str:
    if mode not in PADDING_MODES:
        raise ValueError(f"padding_mode {mode!r}: choose one of {', '.join(PADDING_MODES)}")
    return str(mode)


def pgan_channels(level: int, nch: int) -> int:
    """Channels at level ``level`` in the published code: ``nch · 2^(8 − max(3, level))`` (32·nch up to 32³)."""
    return int(nch * 2 ** (8 - max(3, level)))


class WSConv3d(nn.Module):
    """Conv3d with WScale (input × sqrt(gain/fan_in)), bias, optional LeakyReLU(0.2) and PixelNorm.

    The wrapped ``nn.Conv3d`` is the attribute ``conv`` so state-dict keys read ``<name>.conv.weight``.
    """

    def __init__(
        self,
        in_channels: int,            # input channels
        out_channels: int,           # output channels
        kernel_size: int = 3,        # cubic kernel size
        padding: int = 1,            # padding on every side
        use_wscale: bool = True,     # equalised learning rate (WScale)
        gain: float = 2.0,           # WScale gain (2 for LeakyReLU layers, 1 for toRGB / class layers)
        activation: bool = True,     # LeakyReLU(0.2) after the conv
        use_pixel_norm: bool = False,  # PixelNorm after the activation
        padding_mode: str = "zeros",   # zeros (published), or values from the volume (replicate/reflect/circular)
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=padding, bias=True,
                              padding_mode=_check_padding_mode(padding_mode))
        nn.init.normal_(self.conv.weight, 0.0, 1.0) if use_wscale else nn.init.kaiming_normal_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.scale = (gain / self.conv.weight[0].numel()) ** 0.5 if use_wscale else None
        self.activation = activation
        self.use_pixel_norm = use_pixel_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.in_channels, None, None, None], "WSConv3d input")
        if self.scale is not None:
            x = x * self.scale
        x = self.conv(x)
        if self.activation:
            x = F.leaky_relu(x, 0.2)
        if self.use_pixel_norm:
            x = pixel_norm(x)
        return x


class _GBlock(nn.Module):
    def __init__(self, first: bool, cin: int, cout: int, ws: bool, pn: bool, padding_mode: str) -> None:
        super().__init__()
        if first:  # 1³ → 4³: a dense projection (each output voxel its own weights); its padding stays zeros
            self.conv0 = WSConv3d(cin, cout, 4, 3, ws, 2.0, True, pn)
        else:
            self.conv0 = WSConv3d(cin, cout, 3, 1, ws, 2.0, True, pn, padding_mode)
        self.conv1 = WSConv3d(cout, cout, 3, 1, ws, 2.0, True, pn, padding_mode)

    def forward(self, x):
        return self.conv1(self.conv0(x))


class ProgressiveGenerator(nn.Module):
    """Progressive 3-D generator: z (N, z_dim) on the unit hypersphere → tanh volume (N, C, S, S, S).

    ``z_dim`` equals the channels of the first level (``32·nch``); ``S = 4·2^max_res``.

    ``padding_mode`` sets the padding of the 3×3×3 convolutions. The published generator pads with zeros; at
    4³ and 8³ most voxels touch the border, so a briefly trained generator paints nested square frames that
    up-sampling carries to 32³. ``"circular"`` removes the border altogether, as suits a stationary texture such
    as spongiosa (``"replicate"`` paints streaks instead; docs/training.md, "Border frames").

    Example
    -------
    >>> G = ProgressiveGenerator(max_res=1, nch=1)
    >>> G(torch.randn(2, 32)).shape
    torch.Size([2, 1, 8, 8, 8])
    """

    family = FAMILY
    has_w = False

    def __init__(
        self,
        max_res: int = 3,              # levels above 4³: 3 → 32³
        nch: int = 1,                  # channel multiplier (32·nch channels up to 32³)
        img_channels: int = 1,         # output channels
        use_wscale: bool = True,       # equalised learning rate
        use_pixel_norm: bool = True,   # PixelNorm on z and after every generator conv
        padding_mode: str = "zeros",   # 3×3×3 conv padding: "zeros" (published), "replicate", "reflect", …
    ) -> None:
        super().__init__()
        if max_res < 0 or nch < 1:
            raise ValueError(f"max_res={max_res}, nch={nch}: need max_res ≥ 0 and nch ≥ 1")
        _check_padding_mode(padding_mode)
        self._config = dict(max_res=int(max_res), nch=int(nch), img_channels=int(img_channels),
                            use_wscale=bool(use_wscale), use_pixel_norm=bool(use_pixel_norm))
        if padding_mode != "zeros":  # absent = zeros: configs of published and older checkpoints stay unchanged
            self._config["padding_mode"] = padding_mode
        self.max_res = int(max_res)
        self.z_dim = pgan_channels(0, nch)
        self.img_channels = int(img_channels)
        self.use_pixel_norm = use_pixel_norm
        self.num_ws = 0
        self.output_shape = (4 * 2 ** self.max_res,) * 3
        self.toRGBs = nn.ModuleList(
            WSConv3d(pgan_channels(i, nch), img_channels, 1, 0, use_wscale, 1.0, False, False)
            for i in range(self.max_res + 1)
        )
        self.blocks = nn.ModuleList([_GBlock(True, self.z_dim, self.z_dim, use_wscale, use_pixel_norm,
                                             padding_mode)])
        for i in range(self.max_res):
            self.blocks.append(_GBlock(False, pgan_channels(i, nch), pgan_channels(i + 1, nch), use_wscale,
                                       use_pixel_norm, padding_mode))

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def make_noise(self, n, generators=None, device="cpu"):
        return []

    def forward(
        self,
        z: torch.Tensor,                  # (N, z_dim) or (N, z_dim, 1, 1, 1)
        progress: float | None = None,    # growth stage in [0, max_res]; fractional = fade-in (None = max)
        truncation_psi: float = 1.0,      # unsupported here (no w space); must be 1
        truncation_cutoff: int | None = None,
        noise_mode: str = "none",         # accepted for interface symmetry; the family has no noise
        noise: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if truncation_psi != 1:
            raise ValueError("truncation: progressive GAN generators have no w space; use truncation 1")
        if z.ndim == 2:
            assert_shape(z, [None, self.z_dim], "ProgressiveGenerator z")
            z = z.reshape(z.shape[0], self.z_dim, 1, 1, 1)
        assert_shape(z, [None, self.z_dim, 1, 1, 1], "ProgressiveGenerator z")
        p = float(self.max_res if progress is None else min(float(progress), self.max_res))
        if p < 0:
            raise ValueError(f"progress: expected a value in [0, {self.max_res}], got {progress}")
        alpha = p - int(p)
        top = int(math.ceil(p))
        x = pixel_norm(z) if self.use_pixel_norm else z
        y1 = self.blocks[0](x)
        y0 = y1
        for i in range(1, top + 1):
            y1 = F.interpolate(y1, scale_factor=2)
            y0 = y1
            y1 = self.blocks[i](y0)
        y = self.toRGBs[top](y1)
        if p % 1 != 0:
            y = alpha * y + (1 - alpha) * self.toRGBs[int(p)](y0)
        return torch.tanh(y)


class ProgressiveDiscriminator(nn.Module):
    """Progressive 3-D critic with fade-in and minibatch standard deviation; output (N, 1).

    Layer names follow the published code (``fromRGBs``, ``blocks.0.conv_std/conv_pool/conv_class``).
    ``mbstd_group_size = 0`` uses the whole batch as one group, as the published code does.
    """

    family = FAMILY

    def __init__(
        self,
        max_res: int = 3,            # levels above 4³
        nch: int = 1,                # channel multiplier
        img_channels: int = 1,       # input channels
        use_wscale: bool = True,     # equalised learning rate
        mbstd_group_size: int = 0,   # minibatch-std group (0 = whole batch)
        padding_mode: str = "zeros",  # 3×3×3 conv padding (zeros as published: lets the critic see the border)
    ) -> None:
        super().__init__()
        _check_padding_mode(padding_mode)
        self._config = dict(max_res=int(max_res), nch=int(nch), img_channels=int(img_channels),
                            use_wscale=bool(use_wscale), mbstd_group_size=int(mbstd_group_size))
        if padding_mode != "zeros":
            self._config["padding_mode"] = padding_mode
        self.max_res = int(max_res)
        self.img_channels = int(img_channels)
        self.mbstd_group_size = int(mbstd_group_size)
        c0 = pgan_channels(0, nch)
        self.fromRGBs = nn.ModuleList(
            WSConv3d(img_channels, pgan_channels(i, nch), 1, 0, use_wscale, 2.0, True, False)
            for i in range(self.max_res + 1)
        )
        last = nn.Module()
        last.conv_std = WSConv3d(c0 + 1, c0, 3, 1, use_wscale, 2.0, True, False, padding_mode)
        last.conv_pool = WSConv3d(c0, c0, 4, 0, use_wscale, 2.0, True, False)
        last.conv_class = WSConv3d(c0, 1, 1, 0, use_wscale, 1.0, False, False)
        self.blocks = nn.ModuleList([last])
        for i in range(self.max_res):
            b = nn.Module()
            b.conv0 = WSConv3d(pgan_channels(i + 1, nch), pgan_channels(i + 1, nch), 3, 1, use_wscale,
                               padding_mode=padding_mode)
            b.conv1 = WSConv3d(pgan_channels(i + 1, nch), pgan_channels(i, nch), 3, 1, use_wscale,
                               padding_mode=padding_mode)
            self.blocks.append(b)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i].conv1(self.blocks[i].conv0(x))

    def forward(self, img: torch.Tensor, progress: float | None = None) -> torch.Tensor:
        p = float(self.max_res if progress is None else min(float(progress), self.max_res))
        size = 4 * 2 ** int(math.ceil(p))
        assert_shape(img, [None, self.img_channels, size, size, size], f"ProgressiveDiscriminator input (progress {p:g})")
        alpha = p - int(p)
        y0 = self.fromRGBs[int(math.ceil(p))](img)
        if p % 1 != 0:
            y1 = self.fromRGBs[int(p)](F.avg_pool3d(img, 2))
            y0 = self._block(int(math.ceil(p)), y0)
            y0 = alpha * F.avg_pool3d(y0, 2) + (1 - alpha) * y1
        for i in range(int(p), 0, -1):
            y0 = F.avg_pool3d(self._block(i, y0), 2)
        y0 = minibatch_std(y0, self.mbstd_group_size, 1)
        last = self.blocks[0]
        y = last.conv_class(last.conv_pool(last.conv_std(y0)))
        if y.shape[2:] != (1, 1, 1):
            raise ShapeError(f"ProgressiveDiscriminator: epilogue produced spatial shape {tuple(y.shape[2:])}")
        return y.reshape(y.shape[0], 1)
