"""The Circle-of-Willis 3-D StyleGAN generator of Aydin et al. 2024, reproduced exactly (family ``aydin2024-stylegan3d``).

The authors' code (claim-berlin/3D_StyleGAN_Circle_of_Willis, ``stylegan2_pytorch.py``, MIT licence) is a
3-D port of lucidrains/stylegan2-pytorch. Its generator differs from NVlabs' StyleGAN2 in many details, so
it gets its own family here; the module layout mirrors theirs so that their EMA tensors (``SE.*``,
``GE.*``) load one-to-one under the prefixes ``mapping.`` and ``synthesis.`` (see
:mod:`VolumetricGANLib.import_aydin2024`). What is reproduced:

- mapping ("style vectoriser"): ``z / ‖z‖₂`` then ``style_depth`` × [linear with weight and bias both
  multiplied by ``lr_mlp`` (no 1/√fan-in scaling), LeakyReLU(0.2)]; the resulting 512-d *style* is our w.
  One style per generator block (``num_ws = log2(image_size) − 1``); every block uses its style three
  times (conv1, conv2 and the grey-scale output, each through its own ordinary ``nn.Linear``).
- synthesis: a learned ``(1, C, 4, 4, 4)`` constant → a plain 3×3×3 ``Conv3d`` with bias (no activation)
  → blocks. Block 0 keeps 4³; blocks ``1..L`` (``L = log2(depth) − 2``, 3 for depth 32) up-sample ×2
  trilinearly on all axes; later blocks ×2 in-plane only (``scale_factor=(1, 2, 2)``), so 4³ → 32³ →
  32×64×64 → 32×128×128.
- each block: [up-sample] → modulated conv 3×3×3 with weights ``w·(style + 1)``, demodulated by
  ``rsqrt(Σ w'² + 1e-8)``, no bias → ``+ noise·a + b`` (per-channel ``nn.Linear(1, C)``) → LeakyReLU(0.2),
  twice; then a grey-scale 1×1×1 modulated conv (not demodulated) added to the previous grey-scale image,
  which is up-sampled for the next block by trilinear ×2 (all axes for blocks < L, in-plane from block L
  on) followed by a normalised [1, 2, 1]³ blur with replicate borders (kornia ``filter3d``).
- noise: ONE noise image per sample, ``(N, S, S, S, 1)`` uniform [0, 1) (S = image_size), cropped to
  ``[:, :D, :H, :W]`` at every layer (both convs of a block read the same crop). Only the first ``depth``
  slices are ever read, so our noise images are ``(N, depth, S, S, 1)``; a full S³ image is accepted too.
- channels: ``min(fmap_max, network_capacity · 2^(i+1))`` for i = num_layers−1 … 0, the constant having
  as many channels as block 0.

Our additions, all as named options: ``noise_mode`` 'random' (per-sample seeded uniform noise images,
:meth:`AydinGenerator.make_noise`), 'const' (one fixed noise image drawn from ``const_noise_seed``) or
'none' (a zero noise image: only the per-channel noise biases remain); truncation toward a stored
``mapping.w_avg`` (their ``truncate_style``: ``ψ·(w − w̄) + w̄``); ``output_layout`` 'itk' transposes the
two in-plane axes so the array is (D, H, W) = SimpleITK's (z, y, x) of their NIfTI files (their tensors
are (z, x, y): the training loader transposes nibabel's (x, y, z) array by (2, 0, 1)), 'authors' keeps
their tensor order; ``fused_modconv`` picks the grouped convolution (theirs) or the equivalent
activation-scaling path.

References
----------
Aydin O.U., Hilbert A., Koch A., Lohrke F., Rieger J., Tanioka S., Frey D. "Generative modeling of the
Circle of Willis using 3D-StyleGAN." NeuroImage 304 (2024) 120936.
claim-berlin/3D_StyleGAN_Circle_of_Willis (MIT), read as reference; no code copied.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MappedGenerator, ShapeError, assert_shape

__all__ = ["FAMILY", "AydinGenerator", "AydinMapping", "AydinSynthesis", "aydin_channels", "aydin_plan"]

FAMILY = "aydin2024-stylegan3d"
NOISE_MODES = ("random", "const", "none")
LAYOUTS = ("itk", "authors")


def aydin_channels(image_size: int, network_capacity: int, fmap_max: int) -> list[int]:
    """Output channels of every generator block: ``min(fmap_max, nc·2^(i+1))``, largest first.

    Example
    -------
    >>> aydin_channels(128, 8, 1024)
    [512, 256, 128, 64, 32, 16]
    """
    n = int(math.log2(image_size)) - 1
    return [min(int(fmap_max), int(network_capacity) * 2 ** (i + 1)) for i in range(n)][::-1]


def aydin_plan(image_size: int, depth: int) -> list[dict[str, Any]]:
    """Per block: input up-sampling factor (or None), grey-scale up-sampling factor (or None), output shape.

    Example
    -------
    >>> [p["shape"] for p in aydin_plan(128, 32)]
    [(4, 4, 4), (8, 8, 8), (16, 16, 16), (32, 32, 32), (32, 64, 64), (32, 128, 128)]
    """
    n = int(math.log2(image_size)) - 1
    n_z = int(math.log2(depth)) - 2
    plan, shape = [], (4, 4, 4)
    for i in range(n):
        up = None if i == 0 else ((1, 2, 2) if i > n_z else (2, 2, 2))
        if up is not None:
            shape = tuple(s * f for s, f in zip(shape, up))
        rgb_up = None if i == n - 1 else ((1, 2, 2) if i >= n_z else (2, 2, 2))
        plan.append({"up": up, "rgb_up": rgb_up, "shape": shape})
    return plan


class _ScaledLinear(nn.Module):
    """Their ``EqualLinear``: ``F.linear(x, W·lr_mul, b·lr_mul)`` (no 1/√fan-in factor)."""

    def __init__(self, dim: int, lr_mul: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.lr_mul = float(lr_mul)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.lr_mul, self.bias * self.lr_mul)


class AydinMapping(nn.Module):
    """z → style w (their ``StyleVectorizer``), with truncation toward the stored mean ``w_avg``.

    ``net`` is an ``nn.Sequential`` of [linear, LeakyReLU] pairs so parameter names match theirs
    (``net.0``, ``net.2``, …). Runs in fp32 even under autocast.
    """

    def __init__(
        self,
        latent_dim: int,       # z and w dimension (512 in the paper)
        style_depth: int,      # linear layers (8)
        lr_mlp: float,         # multiplier of weights and biases (their config's lr_mlp, 0.1)
        num_ws: int,           # copies of w handed to the synthesis network (one per block)
    ) -> None:
        super().__init__()
        self.latent_dim, self.num_ws = int(latent_dim), int(num_ws)
        layers: list[nn.Module] = []
        for _ in range(int(style_depth)):
            layers += [_ScaledLinear(self.latent_dim, lr_mlp), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)
        self.register_buffer("w_avg", torch.zeros(self.latent_dim))

    def style(self, z: torch.Tensor) -> torch.Tensor:
        """One style per sample, (N, latent_dim), exactly their ``SE(z)``."""
        assert_shape(z, [None, self.latent_dim], "AydinMapping z")
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.net(F.normalize(z.float(), dim=1))

    @torch.no_grad()
    def estimate_w_avg(self, n: int = 100_000, seed: int = 0, batch: int = 4096) -> torch.Tensor:
        """Mean style of ``n`` seeded N(0, I) latents (their quirk: n = 2000, unseeded); stored in ``w_avg``."""
        if int(n) < 1:
            raise ValueError(f"estimate_w_avg: n must be at least 1, got {n}")
        g = torch.Generator().manual_seed(int(seed))
        dev = self.w_avg.device
        total = torch.zeros(self.latent_dim, dtype=torch.float64, device=dev)
        done = 0
        while done < n:
            m = min(int(batch), int(n) - done)
            z = torch.randn(m, self.latent_dim, generator=g).to(dev)
            total += self.style(z).double().sum(0)
            done += m
        self.w_avg.copy_((total / n).to(self.w_avg.dtype))
        return self.w_avg

    def forward(
        self,
        z: torch.Tensor,                       # (N, latent_dim) latents
        truncation_psi: float = 1.0,           # 1 = off; their generation script uses 0.9
        truncation_cutoff: int | None = None,  # truncate only the first `cutoff` styles (None = all, theirs)
    ) -> torch.Tensor:
        w = self.style(z)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else max(0, min(int(truncation_cutoff), self.num_ws))
            avg = self.w_avg.reshape(1, 1, -1).to(ws.dtype)
            head = float(truncation_psi) * (ws[:, :cut] - avg) + avg
            ws = torch.cat([head, ws[:, cut:]], dim=1)
        return ws


def _modulated_conv(x: torch.Tensor, weight: torch.Tensor, style: torch.Tensor, demod: bool, fused: bool,
                    padding: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Their ``Conv3DMod``: weights ``w·(style + 1)`` per sample, optional demodulation, no bias.

    ``fused`` runs it as one grouped convolution over the batch (their implementation); otherwise the
    equivalent activation-scaling form ``conv(x ⊙ (style + 1), w)`` shares one weight tensor and the
    demodulation coefficients (N, C_out) are returned separately, for the caller to fold into its next
    element-wise operation. Returns ``(y, demod_coefficients or None)``.
    """
    n, c = x.shape[:2]
    s = style.to(torch.float32) + 1
    if fused:
        w = weight.unsqueeze(0) * s.reshape(n, 1, c, 1, 1, 1)
        if demod:
            w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4, 5), keepdim=True) + 1e-8)
        out_c = w.shape[1]
        y = F.conv3d(x.reshape(1, n * c, *x.shape[2:]), w.reshape(n * out_c, *w.shape[2:]).to(x.dtype),
                     padding=padding, groups=n)
        return y.reshape(n, out_c, *y.shape[2:]), None
    y = F.conv3d(x * s.to(x.dtype).reshape(n, c, 1, 1, 1), weight.to(x.dtype), padding=padding)
    if not demod:
        return y, None
    wsq = weight.square().sum(dim=(2, 3, 4))                       # (out, in)
    return y, torch.rsqrt(s.square() @ wsq.t() + 1e-8)             # (n, out)


class _ModConv(nn.Module):
    """Holds the weight of a modulated convolution (their parameter name ``conv*.weight``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, demod: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel, kernel))
        self.demod = demod
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor, style: torch.Tensor, fused: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        return _modulated_conv(x, self.weight, style, self.demod, fused, self.padding)


class _Blur(nn.Module):
    """Normalised [1, 2, 1]³ blur with replicate borders (kornia ``filter3d(..., normalized=True)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("f", torch.tensor([1.0, 2.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f.to(x.dtype)
        k = f[:, None, None] * f[None, :, None] * f[None, None, :]
        k = (k / k.abs().sum()).reshape(1, 1, 3, 3, 3).repeat(x.shape[1], 1, 1, 1, 1)
        return F.conv3d(F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


class _Upsample(nn.Module):
    """Trilinear up-sampling (``align_corners=False``) by per-axis factors; holds no tensors."""

    def __init__(self, factor: Sequence[int]) -> None:
        super().__init__()
        self.factor = tuple(float(f) for f in factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode="trilinear", align_corners=False)


class _GrayscaleBlock(nn.Module):
    def __init__(self, latent_dim: int, channels: int, rgb_up: tuple[int, int, int] | None) -> None:
        super().__init__()
        self.to_style = nn.Linear(latent_dim, channels)
        self.conv = _ModConv(channels, 1, 1, demod=False)
        self.upsample = nn.Sequential(_Upsample(rgb_up), _Blur()) if rgb_up is not None else None

    def forward(self, x, prev, w, fused):
        y, _ = self.conv(x, self.to_style(w), fused)           # not demodulated
        if prev is not None:
            y = y + prev
        if self.upsample is not None:
            y = self.upsample(y)
        return y


class _Block(nn.Module):
    def __init__(self, latent_dim: int, in_ch: int, out_ch: int, up, rgb_up) -> None:
        super().__init__()
        self.up = _Upsample(up) if up is not None else None
        self.to_style1 = nn.Linear(latent_dim, in_ch)
        self.to_noise1 = nn.Linear(1, out_ch)
        self.conv1 = _ModConv(in_ch, out_ch, 3, demod=True)
        self.to_style2 = nn.Linear(latent_dim, out_ch)
        self.to_noise2 = nn.Linear(1, out_ch)
        self.conv2 = _ModConv(out_ch, out_ch, 3, demod=True)
        self.to_grayscale = _GrayscaleBlock(latent_dim, out_ch, rgb_up)

    @staticmethod
    def _conv_noise_act(conv: _ModConv, x, style, lin: nn.Linear, crop, fused):
        """LeakyReLU(modconv(x) + noise·a + b) with a, b from ``lin`` (their ``Linear(1, C)``), in few passes."""
        y, d = conv(x, style, fused)
        n = y.shape[0]
        b = lin.bias.reshape(1, -1, 1, 1, 1).to(y.dtype)
        y = torch.addcmul(b, y, d.to(y.dtype).reshape(n, -1, 1, 1, 1)) if d is not None else y + b
        if crop is not None:                               # noise_mode 'none' = a zero noise image: bias only
            y.addcmul_(crop.to(y.dtype), lin.weight.reshape(1, -1, 1, 1, 1).to(y.dtype))
        return F.leaky_relu_(y, 0.2)

    def forward(self, x, rgb, w, noise, fused):
        if self.up is not None:
            x = self.up(x)
        crop = None
        if noise is not None:
            d, h, ww = x.shape[2:]
            crop = noise[:, None, :d, :h, :ww, 0]          # (N, 1, D, H, W): their [:, :a, :b, :c, :] → channel
        x = self._conv_noise_act(self.conv1, x, self.to_style1(w), self.to_noise1, crop, fused)
        x = self._conv_noise_act(self.conv2, x, self.to_style2(w), self.to_noise2, crop, fused)
        return x, self.to_grayscale(x, rgb, w, fused)


class AydinSynthesis(nn.Module):
    """styles (N, num_ws, latent_dim) + one noise image per sample → grey-scale volume (N, 1, D, H, W).

    Parameter names match their ``Generator`` (``initial_block``, ``initial_conv``, ``blocks.i.*``).
    """

    use_noise = True

    def __init__(
        self,
        image_size: int,            # in-plane size S (their image_size; 128 in the paper)
        depth: int,                 # slices D (32: fixed in their code by num_layers_z = log2(32) − 2)
        latent_dim: int,            # style dimension
        channels: Sequence[int],    # output channels per block (aydin_channels)
        const_noise_seed: int,      # seed of the fixed noise image used by noise_mode='const'
        output_layout: str,         # 'itk' (z, y, x) or 'authors' (z, x, y)
        fused_modconv: bool | str,  # True (grouped, theirs), False (activation scaling), 'auto'
    ) -> None:
        super().__init__()
        self.image_size, self.depth, self.latent_dim = int(image_size), int(depth), int(latent_dim)
        self.plan = aydin_plan(self.image_size, self.depth)
        self.channels = [int(c) for c in channels]
        if len(self.channels) != len(self.plan):
            raise ValueError(f"channels: expected {len(self.plan)} values for image_size {image_size}, got {len(self.channels)}")
        if self.plan[-1]["shape"] != (self.depth, self.image_size, self.image_size):
            raise ValueError(f"depth {depth} / image_size {image_size}: the block plan ends at {self.plan[-1]['shape']} "
                             "(depth must be a power of two between 4 and image_size)")
        if output_layout not in LAYOUTS:
            raise ValueError(f"output_layout: expected one of {LAYOUTS}, got {output_layout!r}")
        self.output_layout = output_layout
        self.fused_modconv = fused_modconv
        self.num_ws = len(self.plan)
        self.initial_block = nn.Parameter(torch.randn(1, self.channels[0], 4, 4, 4))
        self.initial_conv = nn.Conv3d(self.channels[0], self.channels[0], 3, padding=1)
        ins = [self.channels[0]] + self.channels[:-1]
        self.blocks = nn.ModuleList(
            _Block(self.latent_dim, ci, co, p["up"], p["rgb_up"]) for ci, co, p in zip(ins, self.channels, self.plan))
        g = torch.Generator().manual_seed(int(const_noise_seed))
        self.register_buffer("noise_const", torch.rand(1, self.depth, self.image_size, self.image_size, 1, generator=g),
                             persistent=False)

    @property
    def noise_shape(self) -> tuple[int, int, int, int]:
        """Shape of one sample's noise image: (depth, S, S, 1) (their S³ × 1 image, as far as it is read)."""
        return (self.depth, self.image_size, self.image_size, 1)

    def make_noise(self, n: int, generators: Sequence[torch.Generator] | None = None,
                   device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """``[noise]`` with noise (n, depth, S, S, 1) uniform in [0, 1); sample *i* from ``generators[i]``."""
        if generators is None:
            return [torch.rand(n, *self.noise_shape, device=device)]
        if len(generators) != n:
            raise ValueError(f"make_noise: {len(generators)} generators for {n} samples")
        return [torch.cat([torch.rand(1, *self.noise_shape, generator=g) for g in generators]).to(device)]

    def _use_fused(self, n: int, device: torch.device) -> bool:
        # 'auto': on CPU the grouped convolution (theirs) measured ≈ 15 % faster than activation scaling at batch
        # 4–8 and equal at batch 1 (idle 2-core x86-64, tiny fixture); on GPUs it pays for single samples only,
        # as in StyleGAN2-ADA, since large batches make one big grouped convolution slower than a shared one.
        if self.fused_modconv == "auto":
            return device.type == "cpu" or n == 1
        return bool(self.fused_modconv)

    def forward(
        self,
        ws: torch.Tensor,                                              # (N, num_ws, latent_dim) styles
        noise_mode: str = "random",                                    # 'random', 'const' or 'none'
        noise: torch.Tensor | Sequence[torch.Tensor] | None = None,    # explicit noise image(s), see make_noise
    ) -> torch.Tensor:
        assert_shape(ws, [None, self.num_ws, self.latent_dim], "AydinSynthesis ws")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode: expected 'random', 'const' or 'none', got {noise_mode!r}")
        n = ws.shape[0]
        if noise is not None:
            if isinstance(noise, (list, tuple)):
                if len(noise) != 1:
                    raise ShapeError(f"AydinSynthesis: expected one noise image per batch, got a list of {len(noise)}")
                noise = noise[0]
            if (noise.ndim != 5 or noise.shape[0] != n or noise.shape[4] != 1 or noise.shape[1] < self.depth
                    or noise.shape[2] < self.image_size or noise.shape[3] < self.image_size):
                raise ShapeError(f"AydinSynthesis noise: expected ({n}, ≥{self.depth}, ≥{self.image_size}, "
                                 f"≥{self.image_size}, 1), got {tuple(noise.shape)}")
        elif noise_mode == "random":
            noise = self.make_noise(n, None, ws.device)[0]
        elif noise_mode == "const":
            noise = self.noise_const.expand(n, -1, -1, -1, -1)
        fused = self._use_fused(n, ws.device)
        x = self.initial_conv(self.initial_block.to(ws.dtype).expand(n, -1, -1, -1, -1))
        rgb = None
        for i, block in enumerate(self.blocks):
            x, rgb = block(x, rgb, ws[:, i], noise, fused)
        if self.output_layout == "itk":
            rgb = rgb.transpose(-1, -2)
        return rgb.float()


class AydinGenerator(MappedGenerator):
    """The CoW 3-D StyleGAN generator (Aydin et al. 2024): :class:`AydinMapping` + :class:`AydinSynthesis`.

    Output is linear, nominally in [0, 1] (their training data were min-max normalised per volume; their
    generation script clamps to [0, 1], which our checkpoints do only when asked, via the intensity
    mapping's ``clip``).

    Example
    -------
    >>> G = AydinGenerator(image_size=16, depth=8, network_capacity=1, fmap_max=8, latent_dim=32)
    >>> G(torch.randn(2, 32)).shape
    torch.Size([2, 1, 8, 16, 16])
    """

    family = FAMILY
    default_noise_mode = "random"  # their generation script draws a new noise image per sample
    img_channels = 1

    def __init__(
        self,
        image_size: int = 128,                 # in-plane size S of generated volumes
        depth: int = 32,                       # slices D of generated volumes
        network_capacity: int = 8,             # their network_capacity (channels nc·2^(i+1))
        fmap_max: int = 1024,                  # their fmap_max (cap on channels; not in their config)
        latent_dim: int = 512,                 # z and w dimension
        style_depth: int = 8,                  # mapping layers
        lr_mlp: float = 0.1,                   # mapping weight/bias multiplier (their config's lr_mlp)
        const_noise_seed: int = 0,             # seed of the noise image used by noise_mode='const'
        output_layout: str = "itk",            # 'itk': (D, H, W) = (z, y, x); 'authors': their (z, x, y)
        fused_modconv: bool | str = "auto",    # grouped conv (True), activation scaling (False), 'auto'
    ) -> None:
        super().__init__()
        for name, value in (("image_size", image_size), ("depth", depth)):
            if int(value) < 4 or int(value) & (int(value) - 1):
                raise ValueError(f"{name}: expected a power of two ≥ 4, got {value}")
        if int(depth) > int(image_size):
            raise ValueError(f"depth {depth} exceeds image_size {image_size}")
        if fused_modconv not in (True, False, "auto"):
            raise ValueError(f"fused_modconv: expected true, false or 'auto', got {fused_modconv!r}")
        self._config = dict(
            image_size=int(image_size), depth=int(depth), network_capacity=int(network_capacity),
            fmap_max=int(fmap_max), latent_dim=int(latent_dim), style_depth=int(style_depth),
            lr_mlp=float(lr_mlp), const_noise_seed=int(const_noise_seed), output_layout=str(output_layout),
            fused_modconv=fused_modconv,
        )
        self.z_dim = self.w_dim = int(latent_dim)
        channels = aydin_channels(int(image_size), int(network_capacity), int(fmap_max))
        self.synthesis = AydinSynthesis(image_size, depth, latent_dim, channels, const_noise_seed, output_layout,
                                        fused_modconv)
        self.num_ws = self.synthesis.num_ws
        self.mapping = AydinMapping(latent_dim, style_depth, lr_mlp, self.num_ws)
        d, s = int(depth), int(image_size)
        self.output_shape = (d, s, s)
