"""Training throughput (volumes/s): one full iteration = D step + G step (forward, backward, optimiser), CPU.

Groups
------
- ``CoW StyleGAN 32x64x64 bs2 (anchor size)``, fp32, batch 2, no accumulation — the size at which the CoW
  anchor's CPU time was published (3.4 s per D+G iteration, ≈ 0.7 M generator parameters, one thread):

  * reference ``CoW anchor (re-implemented)``: the training iteration of claim-berlin/3D_StyleGAN_Circle_of_Willis
    (a 3-D port of lucidrains/stylegan2-pytorch), re-typed here in its own structure (:class:`CowAnchor`):
    style vectoriser (8 × [linear with weight and bias × lr_mlp 0.1, LeakyReLU]), learned 4³ constant + conv,
    generator blocks with trilinear up-sampling (isotropic to 32³, then in-plane), one grouped conv per
    modulated layer with the demodulation computed per sample, ``Linear(1, C)`` noise on a uniform S³ noise
    image, grey-scale skip outputs up-sampled trilinearly and blurred ([1, 2, 1]³, replicate border); residual
    D with blurred strided down-sampling (its last-block broadcast quirk included); style mixing 0.9;
    ``AugWrapper`` with p = 0.5 (flip, translation, cutout, brightness + contrast); hinge loss as they wrote
    it; one-centred GP (λ = 10) on reals every 16 steps; path length only after 5k steps and EMA only after
    20k steps (so neither at the measured steps); Adam β = (0.5, 0.9), lr 4e-5, TTUR 1.5; D not frozen in
    the G step; everything NCDHW, as their code runs. Size: their channel formula ``min(fmap_max,
    nc·2^(i+1))`` with ``network_capacity = 2`` and their default ``fmap_max = 512``: G (their ``Generator``
    class) 0.67 M parameters, channels 64-32-16-8-4 from 4³ to 32×64×64; the mapping network (2.1 M) is a
    separate module there and is counted apart; D 5.9 M (channels 8 … 256).
  * ``GANTrainerLib, anchor's schedule``: :func:`GANTrainerLib.train.train_iteration` — the training loop's
    own code (D step, G step with D frozen, EMA every step, ADA bookkeeping) on parts from
    :func:`~GANTrainerLib.train.build_train_parts`, with the weights stored channels-last as ``train()``
    does — on a StyleGAN2-3D of comparable size: synthesis 0.58 M parameters (−13 %), anisotropic 2×4×4
    constant and four ×2 steps, channels 80-40-20-10-5 (1.25× the anchor's per level), z = w = 512 with
    8 mapping layers (2.1 M); D with the anchor's widths per level (8 at 32×64×64 … 128 at 2×4×4; 1.4 M).
    Objective of the ``cow-stylegan-anchor`` preset: hinge, R1 γ = 10 every 16 steps, path length from 5k
    steps (off here, as for the anchor), style mixing 0.9, augmentation p = 0.5 (translation, cutout, L-R
    flip, contrast). The like-for-like comparison.
  * ``GANTrainerLib, cow-stylegan recipe``: the same networks with the shipped ``cow-stylegan`` objective
    (logistic loss, R1 γ = 1 every 16, path length every 4 steps from step 0 on half the batch, style mixing
    0.9, every augmentation of the preset incl. rotation/zoom, at p = 0.5): our default costs more per
    iteration than the anchor's early-training schedule because it regularises path length from the start.

- ``CoW preset 32x128x128 bs{B}``: the shipped ``cow-stylegan`` preset (G 2×8×8 → 32×128×128, channels
  256-256-128-64-32, 8.2 M + 2.1 M; D 15.6 M) through ``train_iteration``, fp32 vs bf16 autocast
  (``amp="bf16"``, CPU autocast; this CPU has AMX-BF16). B = 2 by default (``VOLGAN_BENCH_PRESET_BATCH=8``
  for the shipped batch: ≈ 2 min and > 12 GB per iteration on one CPU thread). The full run times one
  iteration of each kind (R1 + path length, plain, path length) and reports the amortised figures; with
  ``--quick`` the capacity is halved (``channel_base``/``channel_max`` × 0.5: the full preset takes ≈ 30 s per
  iteration) and a single plain iteration is timed per case.
- ``spongiosa PGAN 32^3 bs16``: the ``spongiosa-pgan`` preset at its final resolution (α = 1, i.e. progress =
  max_res), fp32 and bf16, against a re-implementation of the spongiosa anchor's training iteration
  (emmanueliarussi/generative3DSpongiosa ``train.py``, :class:`SpongiosaAnchor`: WScale → Conv3d → LeakyReLU
  → PixelNorm blocks, nearest up-sampling, tanh; critic with whole-batch minibatch-std and 4³ pooling conv;
  WGAN-GP λ = 10 with drift 1e-3; Adam lr 1e-3 β = (0, 0.99); EMA every step; z on the unit hypersphere;
  batch 16; NCDHW) as the reference. Same layout and parameter count (0.26 M + 0.26 M) on both sides.

Protocol
--------
Everything runs on ``VOLGAN_BENCH_THREADS`` CPU threads (default 1, as the anchor's published time was taken
on one thread), from random weights on random volumes held in memory (data loading is not timed for anyone).
The lazy regularisers make iterations unequal, so a timed call of group 1 in the full run covers one whole
16-step cycle (steps 16k … 16k+15, exactly the mix of a long run: the table's ratio is then the amortised
one); with ``--quick`` a call runs one iteration of each kind in the cycle (e.g. with GP / without), so the
table's per-call throughput over-weights regularised iterations — read the figures ``s/it amortised``
(per-kind median times weighted by how often each kind occurs in 16 steps) and ``amortised ratio``
(reference s/it ÷ this s/it) instead. Before the first timed call each implementation runs one untimed plain
iteration. Medians of 2 calls (full) or 1 (``--quick``). Figures: parameters of G (synthesis / mapping) and D,
seconds per iteration of each kind, amortised seconds per iteration and volumes/s, amortised ratio. Peak memory
is not reported: on the CPU it cannot be separated per case cheaply.

    .venv/bin/python benchmarks/run.py train [--quick]
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Case  # noqa: E402

THREADS = int(os.environ.get("VOLGAN_BENCH_THREADS", "1"))
CYCLE = 16  # the lazy-regulariser period shared by the anchor (GP every 16) and our presets (R1 every 16)

# The anchor at the size of its published CPU timing: 32×64×64 output, ≈ 0.7 M parameters in its ``Generator``
# class (0.67 M; the 2.1 M mapping network is a separate module in their code): network_capacity 2, their default
# fmap_max 512 → G channels 64-32-16-8-4 (4³ … 32×64×64), D channels 8-16-32-64-128-256 (5.9 M).
COW_ANCHOR_SIZE = dict(image_size=64, depth=32, network_capacity=2, fmap_max=512, latent_dim=512, style_depth=8)
# Ours at a comparable size: synthesis network 0.58 M (−13 %), channels 80-40-20-10-5 per level (1.25× the
# anchor's), anisotropic 2×4×4 constant; D with the anchor's widths per level (8 at 32×64×64 … 128 at 2×4×4).
COW_OURS_G = dict(z_dim=512, w_dim=512, output_shape=[32, 64, 64], base_shape=[2, 4, 4], channel_base=80,
                  channel_max=80, mapping_layers=8, mapping_lr_multiplier=0.01, architecture="skip")
COW_OURS_D = dict(img_shape=[32, 64, 64], base_shape=[2, 4, 4], channel_base=128, channel_max=128,
                  architecture="resnet", mbstd_group_size=4)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# =============================================================================================================
# The CoW anchor's training iteration, re-typed in its own structure (lucidrains-style 3-D StyleGAN2).
# =============================================================================================================
def _blur3d(x: torch.Tensor, f: torch.Tensor | None = None) -> torch.Tensor:
    """Their ``Blur``: kornia ``filter3d`` with a normalised [1, 2, 1]³ kernel and replicate borders."""
    f = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device) if f is None else f.to(x.dtype)
    k = f[:, None, None] * f[None, :, None] * f[None, None, :]
    k = (k / k.sum()).expand(x.shape[1], 1, 3, 3, 3)
    return F.conv3d(F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


class _Blur(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("f", torch.tensor([1.0, 2.0, 1.0]))  # a buffer, as theirs (it is in their state dicts)

    def forward(self, x):
        return _blur3d(x, self.f)


class _AnchorEqualLinear(nn.Module):
    def __init__(self, dim, lr_mul):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.lr_mul = lr_mul

    def forward(self, x):
        return F.linear(x, self.weight * self.lr_mul, bias=self.bias * self.lr_mul)


class _StyleVectorizer(nn.Module):
    def __init__(self, dim, depth, lr_mul):
        super().__init__()
        layers = []
        for _ in range(depth):
            layers += [_AnchorEqualLinear(dim, lr_mul), nn.LeakyReLU(0.2, inplace=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(F.normalize(x, dim=1))


class _Conv3DMod(nn.Module):
    """Per-sample weights ``w·(style + 1)``, demodulated per sample, run as one grouped convolution."""

    def __init__(self, cin, cout, kernel, demod=True):
        super().__init__()
        self.filters, self.demod, self.kernel = cout, demod, kernel
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, a=0, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, x, y):
        b, c, d, h, w = x.shape
        weights = self.weight[None] * (y[:, None, :, None, None, None] + 1)
        if self.demod:
            weights = weights * torch.rsqrt((weights ** 2).sum(dim=(2, 3, 4, 5), keepdim=True) + 1e-8)
        x = x.reshape(1, -1, d, h, w)
        weights = weights.reshape(b * self.filters, *weights.shape[2:])
        x = F.conv3d(x, weights, padding=(self.kernel - 1) // 2, groups=b)
        return x.reshape(-1, self.filters, d, h, w)


class _GrayscaleBlock(nn.Module):
    def __init__(self, latent_dim, cin, upsample, xy_upsample):
        super().__init__()
        self.to_style = nn.Linear(latent_dim, cin)
        self.conv = _Conv3DMod(cin, 1, 1, demod=False)
        factor = (1, 2, 2) if xy_upsample else 2
        self.upsample = nn.Sequential(nn.Upsample(scale_factor=factor, mode="trilinear", align_corners=False),
                                      _Blur()) if upsample else None

    def forward(self, x, prev_rgb, istyle):
        x = self.conv(x, self.to_style(istyle))
        if prev_rgb is not None:
            x = x + prev_rgb
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class _GeneratorBlock(nn.Module):
    def __init__(self, latent_dim, cin, filters, upsample, upsample_rgb, xy_upsample, xy_upsample_rgb):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False) \
            if upsample and not xy_upsample else None
        self.xy_upsample = nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear", align_corners=False) \
            if xy_upsample else None
        self.to_style1 = nn.Linear(latent_dim, cin)
        self.to_noise1 = nn.Linear(1, filters)
        self.conv1 = _Conv3DMod(cin, filters, 3)
        self.to_style2 = nn.Linear(latent_dim, filters)
        self.to_noise2 = nn.Linear(1, filters)
        self.conv2 = _Conv3DMod(filters, filters, 3)
        self.activation = nn.LeakyReLU(0.2, inplace=True)
        self.to_grayscale = _GrayscaleBlock(latent_dim, filters, upsample_rgb, xy_upsample_rgb)

    def forward(self, x, prev_rgb, istyle, inoise):
        if self.upsample is not None:
            x = self.upsample(x)
        elif self.xy_upsample is not None:
            x = self.xy_upsample(x)
        inoise = inoise[:, :x.shape[2], :x.shape[3], :x.shape[4], :]
        noise1 = self.to_noise1(inoise).permute((0, 4, 1, 2, 3))
        noise2 = self.to_noise2(inoise).permute((0, 4, 1, 2, 3))
        x = self.activation(self.conv1(x, self.to_style1(istyle)) + noise1)
        x = self.activation(self.conv2(x, self.to_style2(istyle)) + noise2)
        return x, self.to_grayscale(x, prev_rgb, istyle)


class _AnchorGenerator(nn.Module):
    def __init__(self, image_size, depth, latent_dim, network_capacity, fmap_max):
        super().__init__()
        self.image_size, self.latent_dim = image_size, latent_dim
        self.num_layers = int(math.log2(image_size) - 1)
        num_layers_z = int(math.log2(depth) - 2)
        filters = [min(fmap_max, network_capacity * 2 ** (i + 1)) for i in range(self.num_layers)][::-1]
        filters = [filters[0], *filters]
        self.initial_block = nn.Parameter(torch.randn((1, filters[0], 4, 4, 4)))
        self.initial_conv = nn.Conv3d(filters[0], filters[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            _GeneratorBlock(latent_dim, cin, cout, upsample=ind != 0, upsample_rgb=ind != self.num_layers - 1,
                            xy_upsample=ind > num_layers_z, xy_upsample_rgb=ind >= num_layers_z)
            for ind, (cin, cout) in enumerate(zip(filters[:-1], filters[1:])))

    def forward(self, styles, input_noise):
        x = self.initial_conv(self.initial_block.expand(styles.shape[0], -1, -1, -1, -1))
        rgb = None
        for style, block in zip(styles.transpose(0, 1), self.blocks):
            x, rgb = block(x, rgb, style, input_noise)
        return rgb


class _AnchorDiscriminatorBlock(nn.Module):
    def __init__(self, cin, filters, downsample=True, xy_specific=False):
        super().__init__()
        stride = (1, 2, 2) if xy_specific else (2, 2, 2) if downsample else 1
        self.conv_res = nn.Conv3d(cin, filters, 1, stride=stride)
        self.net = nn.Sequential(nn.Conv3d(cin, filters, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Conv3d(filters, filters, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))
        self.downsample = nn.Sequential(_Blur(), nn.Conv3d(filters, filters, 3, padding=1,
                                                           stride=(1, 2, 2) if xy_specific else (2, 2, 2))) \
            if downsample else None

    def forward(self, x):
        res = self.conv_res(x)
        x = self.net(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return (x + res) * (1 / math.sqrt(2))   # last block: res is 2×1×1, silently broadcast (their quirk)


class _AnchorDiscriminator(nn.Module):
    def __init__(self, image_size, depth, network_capacity, fmap_max):
        super().__init__()
        num_layers = int(math.log2(image_size) - 1)
        num_layers_z = int(math.log2(depth) - 1)
        filters = [1] + [min(fmap_max, network_capacity * 4 * 2 ** i) for i in range(num_layers + 1)]
        pairs = list(zip(filters[:-1], filters[1:]))
        self.blocks = nn.ModuleList(
            _AnchorDiscriminatorBlock(cin, cout, downsample=ind != len(pairs) - 1, xy_specific=ind >= num_layers_z)
            for ind, (cin, cout) in enumerate(pairs))
        self.final_conv = nn.Conv3d(filters[-1], filters[-1], 3, padding=1)
        self.to_logit = nn.Linear(2 * 2 * 2 * filters[-1], 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        x = self.final_conv(x)
        return self.to_logit(x.reshape(x.shape[0], -1)).squeeze()


def _rand_brightness(x, scale):
    return x + (torch.rand(x.size(0), 1, 1, 1, 1, dtype=x.dtype) - 0.5) * scale


def _rand_contrast(x, scale):
    m = x.mean(dim=[1, 2, 3, 4], keepdim=True)
    return (x - m) * ((torch.rand(x.size(0), 1, 1, 1, 1, dtype=x.dtype) - 0.5) * 2.0 * scale + 1.0) + m


def _rand_translation(x, ratio=0.125):
    """Their index-gather translation (on a 1-voxel padded copy: zero offset still moves by one voxel)."""
    sx, sy, sz = int(x.size(3) * ratio + 0.5), int(x.size(4) * ratio + 0.5), int(x.size(2) * ratio + 0.5)
    tx = torch.randint(-sx, sx + 1, size=[x.size(0), 1, 1, 1])
    ty = torch.randint(-sy, sy + 1, size=[x.size(0), 1, 1, 1])
    tz = torch.randint(-sz, sz + 1, size=[x.size(0), 1, 1, 1])
    gb, gz, gy, gx = torch.meshgrid(torch.arange(x.size(0)), torch.arange(x.size(2)), torch.arange(x.size(3)),
                                    torch.arange(x.size(4)), indexing="ij")
    gx = torch.clamp(gx + tx, 0, x.size(4) - 1)
    gy = torch.clamp(gy + ty, 0, x.size(3) - 1)
    gz = torch.clamp(gz + tz, 0, x.size(2) - 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 1, 1, 0, 0])
    return x_pad.permute(0, 2, 3, 4, 1).contiguous()[gb, gz, gy, gx].permute(0, 4, 1, 2, 3)


def _rand_cutout(x, ratio=0.5):
    size = (int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5), int(x.size(4) * ratio + 0.5))
    ox = torch.randint(0, x.size(4) + (1 - size[2] % 2), size=[x.size(0), 1, 1, 1])
    oy = torch.randint(0, x.size(3) + (1 - size[1] % 2), size=[x.size(0), 1, 1, 1])
    oz = torch.randint(0, x.size(2) + (1 - size[0] % 2), size=[x.size(0), 1, 1, 1])
    gb, gz, gx, gy = torch.meshgrid(torch.arange(x.size(0)), torch.arange(size[0]), torch.arange(size[1]),
                                    torch.arange(size[2]), indexing="ij")
    gx = torch.clamp(gx + ox - size[2] // 2, min=0, max=x.size(4) - 1)
    gy = torch.clamp(gy + oy - size[1] // 2, min=0, max=x.size(3) - 1)
    gz = torch.clamp(gz + oz - size[0] // 2, min=0, max=x.size(2) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), x.size(4), dtype=x.dtype)
    mask[gb, gz, gx, gy] = 0
    return x * mask.unsqueeze(1)


_ANCHOR_AUGMENTS = {
    "contrast": [partial(_rand_brightness, scale=1.0), partial(_rand_contrast, scale=0.5)],
    "translation": [_rand_translation],
    "cutout": [_rand_cutout],
}


class _AugWrapper(nn.Module):
    def __init__(self, D, rng: random.Random):
        super().__init__()
        self.D, self.rng = D, rng

    def forward(self, images, prob=0.0, types=(), detach=False):
        if self.rng.random() < prob:
            if not prob < self.rng.random():        # their random_hflip(images, prob=0.5)
                images = torch.flip(images, dims=(3,))
            for t in types:
                for fn in _ANCHOR_AUGMENTS[t]:
                    images = fn(images)
            images = images.contiguous()
        if detach:
            images = images.detach()
        return self.D(images)


class CowAnchor:
    """The CoW anchor's networks, optimisers and ``Trainer.train()`` iteration (early-training branch set).

    ``iteration()`` runs one D step and one G step exactly in their order: latents (style mixing with
    probability 0.9, one cut per batch), uniform noise image, G forward *with* autograd recording, augmented D on
    detached fakes and on reals, hinge loss, GP on reals every 16 steps, backward, step; then the G step without
    freezing D; path length after 5000 steps every 32; EMA after 20000 steps every 10; parameter averaging reset
    at step 2 mod 1000 up to 25000.
    """

    def __init__(self, image_size=64, depth=32, network_capacity=4, fmap_max=48, latent_dim=512, style_depth=8,
                 lr_mlp=0.1, lr=4e-5, ttur_mult=1.5, batch_size=2, aug_prob=0.5,
                 aug_types=("translation", "cutout", "contrast"), mixed_prob=0.9, seed=0):
        torch.manual_seed(seed)
        self.rng = random.Random(seed)
        self.image_size, self.latent_dim, self.batch_size = image_size, latent_dim, batch_size
        self.S = _StyleVectorizer(latent_dim, style_depth, lr_mlp)
        self.G = _AnchorGenerator(image_size, depth, latent_dim, network_capacity, fmap_max)
        self.D = _AnchorDiscriminator(image_size, depth, network_capacity, fmap_max)
        self.SE = _StyleVectorizer(latent_dim, style_depth, lr_mlp)
        self.GE = _AnchorGenerator(image_size, depth, latent_dim, network_capacity, fmap_max)
        self.D_aug = _AugWrapper(self.D, self.rng)
        for m in (self.SE, self.GE):
            m.requires_grad_(False)
        self.G_opt = torch.optim.Adam(list(self.G.parameters()) + list(self.S.parameters()), lr=lr, betas=(0.5, 0.9))
        self.D_opt = torch.optim.Adam(self.D.parameters(), lr=lr * ttur_mult, betas=(0.5, 0.9))
        for mod in (self.S, self.G, self.D):
            for m in mod.modules():
                if type(m) in (nn.Conv3d, nn.Linear):
                    nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in", nonlinearity="leaky_relu")
        for block in self.G.blocks:
            for lin in (block.to_noise1, block.to_noise2):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        self.reset_parameter_averaging()
        self.num_layers = self.G.num_layers
        self.aug_kwargs = {"prob": aug_prob, "types": list(aug_types)}
        self.mixed_prob = mixed_prob
        self.pl_mean = None
        self.steps = 0
        for m in (self.S, self.G, self.D):
            m.train()

    def reset_parameter_averaging(self):
        self.SE.load_state_dict(self.S.state_dict())
        self.GE.load_state_dict(self.G.state_dict())

    def ema(self, beta=0.995):
        for ma, cur in ((self.SE, self.S), (self.GE, self.G)):
            for p_cur, p_ma in zip(cur.parameters(), ma.parameters()):
                p_ma.data = p_ma.data * beta + (1 - beta) * p_cur.data

    # their latent helpers
    def _noise_list(self, n, layers):
        return [(torch.randn(n, self.latent_dim), layers)]

    def _mixed_list(self, n, layers):
        tt = int(torch.rand((), device="cpu").numpy() * layers)   # a CPU draw also under a CUDA default device
        return self._noise_list(n, tt) + self._noise_list(n, layers - tt)

    def _styles(self, latent_descr):
        return torch.cat([self.S(z)[:, None, :].expand(-1, k, -1) for z, k in latent_descr], dim=1)

    def _image_noise(self, n):
        s = self.image_size
        return torch.empty(n, s, s, s, 1).uniform_(0.0, 1.0)

    def n_params(self) -> dict:
        return {"params_G_synthesis": n_params(self.G), "params_G_mapping": n_params(self.S),
                "params_D": n_params(self.D)}

    def kind(self, step: int) -> str:
        gp = step % 16 == 0
        pl = step > 5000 and step % 32 == 0
        return "+".join(k for k, on in (("gp", gp), ("pl", pl)) if on) or "plain"

    def iteration(self, reals: torch.Tensor) -> dict:
        """One ``Trainer.train()`` call at ``self.steps`` (gradient_accumulate_every = 1, fp16 off)."""
        b, layers = self.batch_size, self.num_layers
        apply_gp = self.steps % 16 == 0
        apply_pl = self.steps > 5000 and self.steps % 32 == 0
        self.D_opt.zero_grad()
        get_latents = self._mixed_list if self.rng.random() < self.mixed_prob else self._noise_list
        w_styles = self._styles(get_latents(b, layers))
        generated = self.G(w_styles, self._image_noise(b))
        fake_output = self.D_aug(generated.clone().detach(), detach=True, **self.aug_kwargs)
        image_batch = reals.clone().requires_grad_()
        real_output = self.D_aug(image_batch, **self.aug_kwargs)
        divergence = (F.relu(1 + real_output) + F.relu(1 - fake_output)).mean()     # their hinge_loss(real, fake)
        disc_loss = divergence
        if apply_gp:
            (g,) = torch.autograd.grad(real_output, image_batch, torch.ones(real_output.size()), create_graph=True,
                                       retain_graph=True, only_inputs=True)
            gp = 10 * ((g.reshape(b, -1).norm(2, dim=1) - 1) ** 2).mean()
            disc_loss = disc_loss + gp
        disc_loss.backward()
        d_loss = float(divergence.detach().item())
        self.D_opt.step()

        self.G_opt.zero_grad()
        w_styles = self._styles(get_latents(b, layers))
        generated = self.G(w_styles, self._image_noise(b))
        fake_output = self.D_aug(generated, **self.aug_kwargs)
        loss = fake_output.mean()                                                    # their gen_hinge_loss
        gen_loss = loss
        if apply_pl:
            n_vox = generated.shape[2] * generated.shape[3] * generated.shape[4]
            noise = torch.randn(generated.shape) / (n_vox ** (1 / 3))
            (g,) = torch.autograd.grad((generated * noise).sum(), w_styles, create_graph=True, retain_graph=True)
            pl_lengths = (g ** 2).sum(dim=2).mean(dim=1).sqrt()
            if self.pl_mean is not None:
                gen_loss = gen_loss + ((pl_lengths - self.pl_mean) ** 2).mean()
            avg = float(pl_lengths.detach().mean())
            self.pl_mean = avg if self.pl_mean is None else 0.99 * self.pl_mean + 0.01 * avg
        gen_loss.backward()
        g_loss = float(loss.detach().item())
        self.G_opt.step()
        if self.steps % 10 == 0 and self.steps > 20000:
            self.ema()
        if self.steps <= 25000 and self.steps % 1000 == 2:
            self.reset_parameter_averaging()
        self.steps += 1
        return {"loss_D": d_loss, "loss_G": g_loss}


# =============================================================================================================
# The spongiosa anchor's training iteration (MICCAI 2020 progressive WGAN-GP), at its final resolution.
# =============================================================================================================
class _WScale(nn.Module):
    def __init__(self, conv, gain):
        super().__init__()
        self.scale = (gain / conv.weight[0].numel()) ** 0.5

    def forward(self, x):
        return x * self.scale


class _PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


def _sp_conv(nin, nout, k=3, p=1, gain=2.0, act=None, pn=False):
    from collections import OrderedDict

    c = nn.Conv3d(nin, nout, k, padding=p)
    layers = OrderedDict([("ws", _WScale(c, gain)), ("conv", c)])
    if act is not None:
        layers["activ"] = act
    if pn:
        layers["pn"] = _PixelNorm()
    return nn.Sequential(layers)


def _sp_channels(i, nch):
    return int(nch * 2 ** (8 - max(3, i)))


def _sp_init(module: nn.Module) -> None:
    """Their initialisation: N(0, 1) conv weights (WScale does the scaling), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.normal_(m.weight, 0, 1)
            nn.init.constant_(m.bias, 0)


class _SpongiosaGenerator(nn.Module):
    def __init__(self, max_res=3, nch=1):
        super().__init__()
        from collections import OrderedDict

        act = nn.LeakyReLU(0.2)
        self.max_res = max_res
        self.toRGBs = nn.ModuleList(_sp_conv(_sp_channels(i, nch), 1, 1, 0, 1.0) for i in range(max_res + 1))
        self.blocks = nn.ModuleList([nn.Sequential(OrderedDict([
            ("conv0", _sp_conv(nch * 32, nch * 32, 4, 3, act=act, pn=True)),
            ("conv1", _sp_conv(nch * 32, nch * 32, act=act, pn=True))]))])
        for i in range(max_res):
            nin, nout = _sp_channels(i, nch), _sp_channels(i + 1, nch)
            self.blocks.append(nn.Sequential(OrderedDict([("conv0", _sp_conv(nin, nout, act=act, pn=True)),
                                                          ("conv1", _sp_conv(nout, nout, act=act, pn=True))])))
        self.pn = _PixelNorm()
        _sp_init(self)

    def forward(self, z, progress=None):
        progress = self.max_res if progress is None else min(progress, self.max_res)
        alpha = progress - int(progress)
        y1 = self.blocks[0](self.pn(z))
        y0 = y1
        for i in range(1, int(math.ceil(progress)) + 1):
            y1 = F.interpolate(y1, scale_factor=2)
            y0 = y1
            y1 = self.blocks[i](y0)
        y = self.toRGBs[int(math.ceil(progress))](y1)
        if progress % 1 != 0:
            y = alpha * y + (1 - alpha) * self.toRGBs[int(progress)](y0)
        return torch.tanh(y)


class _SpongiosaDiscriminator(nn.Module):
    def __init__(self, max_res=3, nch=1):
        super().__init__()
        from collections import OrderedDict

        act = nn.LeakyReLU(0.2)
        self.max_res = max_res
        self.fromRGBs = nn.ModuleList(_sp_conv(1, _sp_channels(i, nch), 1, 0, act=act) for i in range(max_res + 1))
        self.blocks = nn.ModuleList([nn.Sequential(OrderedDict([
            ("conv_std", _sp_conv(nch * 32 + 1, nch * 32, act=act)),
            ("conv_pool", _sp_conv(nch * 32, nch * 32, 4, 0, act=act)),
            ("conv_class", _sp_conv(nch * 32, 1, 1, 0, 1.0))]))])
        for i in range(max_res):
            nin, nout = _sp_channels(i + 1, nch), _sp_channels(i, nch)
            self.blocks.append(nn.Sequential(OrderedDict([("conv0", _sp_conv(nin, nin, act=act)),
                                                          ("conv1", _sp_conv(nin, nout, act=act))])))
        _sp_init(self)

    def forward(self, x, progress=None):
        progress = self.max_res if progress is None else min(progress, self.max_res)
        alpha = progress - int(progress)
        y0 = self.fromRGBs[int(math.ceil(progress))](x)
        if progress % 1 != 0:
            y1 = self.fromRGBs[int(progress)](F.avg_pool3d(x, kernel_size=2, stride=2))
            y0 = self.blocks[int(math.ceil(progress))](y0)
            y0 = alpha * F.avg_pool3d(y0, kernel_size=2, stride=2) + (1 - alpha) * y1
        for i in range(int(progress), 0, -1):
            y0 = F.avg_pool3d(self.blocks[i](y0), kernel_size=2, stride=2)
        std = (y0.var(dim=0) + 1e-8).sqrt().mean().view(1, 1, 1, 1)
        y = self.blocks[0](torch.cat((y0, std.expand_as(y0[:, 0].unsqueeze(1))), dim=1))
        return y.squeeze()


class SpongiosaAnchor:
    """The spongiosa anchor's ``train.py`` inner loop body at progress ``p`` (their ``P.p``), batch ``batch``."""

    def __init__(self, max_res=3, nch=1, batch_size=16, lambda_gp=10.0, gamma=1.0, e_drift=1e-3, seed=0):
        import copy

        torch.manual_seed(seed)
        self.netG = _SpongiosaGenerator(max_res, nch)
        self.netD = _SpongiosaDiscriminator(max_res, nch)
        self.netGs = copy.deepcopy(self.netG)
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=1e-3, betas=(0.0, 0.99))
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=1e-3, betas=(0.0, 0.99))
        self.batch_size, self.nch, self.p = batch_size, nch, float(max_res)
        self.lambda_gp, self.gamma, self.e_drift = lambda_gp, gamma, e_drift
        self.global_step = 0
        self.netG.train()

    def n_params(self) -> dict:
        return {"params_G": n_params(self.netG), "params_D": n_params(self.netD)}

    def kind(self, step: int) -> str:
        return "plain"

    def _z(self):
        z = torch.randn(self.batch_size, self.nch * 32, 1, 1, 1)
        return z / z.norm(p=2, dim=1, keepdim=True)

    def iteration(self, batch: torch.Tensor) -> dict:
        self.global_step += 1
        self.netD.zero_grad()
        with torch.no_grad():
            fake_images = self.netG(self._z(), self.p)
        D_real = self.netD(batch, self.p)
        D_fake = self.netD(fake_images, self.p)
        real_data, fake_data = batch.data, fake_images.data
        alpha = torch.rand(self.batch_size, 1, 1, 1, 1, requires_grad=True)
        interpolates = real_data + alpha * (fake_data - real_data)
        d_int = self.netD(interpolates, self.p)
        (g,) = torch.autograd.grad(d_int, interpolates, torch.ones(d_int.size()), create_graph=True,
                                   retain_graph=True, only_inputs=True)
        g = g.view(self.batch_size, -1)
        gp = (((g.norm(2, dim=1) - self.gamma) / self.gamma) ** 2).mean() * self.lambda_gp
        drift = (D_real ** 2).mean() * self.e_drift
        d_loss = D_fake.mean() - D_real.mean()
        d_loss_w = d_loss + gp + drift
        d_loss_w.backward()
        self.optD.step()
        out_d = d_loss_w.item()
        self.netG.zero_grad()
        g_loss = -self.netD(self.netG(self._z(), self.p), self.p).mean()
        g_loss.backward()
        self.optG.step()
        alpha_ema = min(1 - 1 / (self.global_step + 1), 0.999)
        for pe, p in zip(self.netGs.parameters(), self.netG.parameters()):
            pe.data.mul_(alpha_ema).add_(p.data, alpha=1 - alpha_ema)
        return {"loss_D": out_d, "loss_G": g_loss.item()}


# =============================================================================================================
# Ours: GANTrainerLib's training iteration (train.train_iteration) on our networks.
# =============================================================================================================
class OursTrainer:
    """Our networks + :func:`GANTrainerLib.train.build_train_parts` + :func:`train_iteration` (the loop's code)."""

    def __init__(self, preset: str, generator: Optional[dict] = None, discriminator: Optional[dict] = None,
                 amp: str = "off", seed: int = 0, augment_p: Optional[float] = None, device: str = "cpu",
                 **overrides):
        from GANTrainerLib.train import build_train_parts, settings_from_preset
        from VolGANCore.env import amp_dtype
        from VolumetricGANLib.networks import build_discriminator, build_generator
        from VolumetricGANLib.networks.layers import to_channels_last_3d

        s = settings_from_preset(preset, amp=amp, **overrides)
        if generator is not None:
            s.generator = dict(generator)
        if discriminator is not None:
            s.discriminator = dict(discriminator)
        if augment_p is not None and s.augment:
            s.augment = {**s.augment, "p": float(augment_p)}
        self.settings = s
        self.device = torch.device(device)
        dtype, scaler = amp_dtype(s.amp, self.device.type, training=True)
        torch.manual_seed(seed)
        self.G = build_generator(s.family, s.generator).to(self.device)
        self.D = build_discriminator(s.family, s.discriminator).to(self.device)
        if s.channels_last:                                   # as train() does
            to_channels_last_3d(self.G)
            to_channels_last_3d(self.D)
        self.parts = build_train_parts(s, self.G, self.D, self.device.type, dtype, scaler)
        self.G.train()
        self.D.train()
        self.batch_total = s.batch * s.accumulate
        self.prog = float(self.G.max_res) if s.family == "pgan-3d" else None
        self.nimg = 0
        self.steps = 0

    def n_params(self) -> dict:
        if hasattr(self.G, "mapping"):
            return {"params_G_synthesis": n_params(self.G.synthesis), "params_G_mapping": n_params(self.G.mapping),
                    "params_D": n_params(self.D)}
        return {"params_G": n_params(self.G), "params_D": n_params(self.D)}

    def kind(self, step: int) -> str:
        loss = self.parts.loss
        if self.parts.kind != "stylegan2":
            return "plain"
        r1 = loss.r1_gamma > 0 and step % loss.r1_interval == 0
        pl = loss.pl_weight > 0 and step >= loss.pl_start_step and step % loss.pl_interval == 0
        return "+".join(k for k, on in (("r1", r1), ("pl", pl)) if on) or "plain"

    def _latents(self, n):
        z = torch.randn(n, self.G.z_dim, device=self.device)
        if self.settings.latent == "hypersphere":
            z = z / z.norm(dim=1, keepdim=True)
        return z

    def iteration(self, reals: torch.Tensor) -> dict:
        from GANTrainerLib.train import train_iteration

        ok_d, ok_g, st_d, st_g = train_iteration(self.parts, self.steps, self.nimg, self.batch_total, lambda: reals,
                                                 self._latents, self.prog)
        self.steps += 1
        self.nimg += self.batch_total
        return {"loss_D": st_d["loss/D"], "loss_G": st_g["loss/G"], "ok_d": ok_d, "ok_g": ok_g}


# =============================================================================================================
# Timing: iterations at chosen step numbers, per-kind times, amortised over the 16-step cycle.
# =============================================================================================================
class _Timed:
    """Runs an implementation's iterations at chosen steps and keeps per-kind timings."""

    def __init__(self, impl, reals: torch.Tensor, batch: int, quick: bool, mode: Optional[str] = None):
        self.impl, self.reals, self.batch, self.quick = impl, reals, batch, quick
        self.cycle = 1                                       # cycles start at 16: step 0 is nothing special
        self.times: dict[str, list[float]] = {}
        self.warmed = False
        lazy = len({impl.kind(s) for s in range(CYCLE, 2 * CYCLE)}) > 1
        # "cycle": 16 consecutive steps per call; "kinds": one step of each kind; "plain": one plain step;
        # "alike" (no lazy regularisers): 1 (quick) or 2 steps per call
        self.mode = mode or (("kinds" if quick else "cycle") if lazy else "alike")

    def steps(self) -> list[int]:
        """Step numbers of the next timed call."""
        base = CYCLE * self.cycle
        if self.mode == "alike":
            return list(range(base, base + (1 if self.quick else 2)))
        if self.mode == "cycle":
            return list(range(base, base + CYCLE))           # one whole cycle of the lazy regularisers
        if self.mode == "plain":
            return [next(s for s in range(base, base + CYCLE) if self.impl.kind(s) == "plain")]
        seen, out = set(), []
        for s in range(base, base + CYCLE):                  # one iteration of each kind in the cycle
            k = self.impl.kind(s)
            if k not in seen:
                seen.add(k)
                out.append(s)
        return out

    def _batch(self, i: int) -> torch.Tensor:
        n = self.reals.shape[0] // self.batch
        j = i % n
        return self.reals[j * self.batch:(j + 1) * self.batch]

    def _run(self, step: int) -> tuple[str, float, dict]:
        self.impl.steps = step
        if hasattr(self.impl, "nimg"):
            self.impl.nimg = step * self.batch
        k = self.impl.kind(step)
        t0 = time.perf_counter()
        out = self.impl.iteration(self._batch(step))
        return k, time.perf_counter() - t0, out

    def warm(self) -> None:
        if not self.warmed:
            with _threads(THREADS):
                self._run(CYCLE * 1000 + 1)                  # a plain iteration far from the measured steps
            self.warmed = True

    def __call__(self) -> dict:
        with _threads(THREADS):
            steps = self.steps()
            self.cycle += 1
            for s in steps:
                k, dt, out = self._run(s)
                self.times.setdefault(k, []).append(dt)
        return self.figures()

    def amortised(self) -> Optional[float]:
        """Seconds per iteration over a 16-step cycle: per-kind median times weighted by their frequency."""
        med = {k: statistics.median(v) for k, v in self.times.items()}
        kinds = [self.impl.kind(s) for s in range(CYCLE, 2 * CYCLE)]
        if any(k not in med for k in kinds):
            return None                                      # not every kind measured ("plain" mode)
        return sum(med[k] for k in kinds) / CYCLE

    def figures(self) -> dict:
        fig: dict = dict(self.impl.n_params())
        for k, v in sorted(self.times.items()):
            fig[f"s/it {k}"] = statistics.median(v)
        am = self.amortised()
        if am is not None:
            fig["s/it amortised"] = am
            fig["volumes/s amortised"] = self.batch / am
        return fig


class _Group:
    """Cases of one group; the reference's amortised time gives the others an ``amortised ratio`` figure.

    Implementations are built lazily (on the first untimed warm-up), on ``THREADS`` threads.
    """

    def __init__(self, name: str, quick: bool):
        self.name, self.quick = name, quick
        self.ref: Optional[_Timed] = None
        self.cases: list[Case] = []

    def add(self, label: str, make: Callable[[], object], reals_fn: Callable[[], torch.Tensor], batch: int,
            reference: bool = False, repeats: Optional[int] = None, mode: Optional[str] = None) -> None:
        state: dict = {}

        def timed() -> _Timed:
            if "t" not in state:
                with _threads(THREADS):
                    state["t"] = _Timed(make(), reals_fn(), batch, self.quick, mode)
                if reference:
                    self.ref = state["t"]
            return state["t"]

        def setup():
            t = timed()
            t.warm()
            case.unit_count = batch * len(t.steps())       # volumes per timed call (read by the harness)

        def fn():
            t = timed()
            fig = t()
            if not reference and self.ref is not None and self.ref.times:
                a, b = self.ref.amortised(), t.amortised()
                if a is not None and b is not None:
                    fig["amortised ratio"] = a / b          # reference s/it ÷ this s/it (> 1: faster)
            return fig

        case = Case(self.name, label, fn, setup=setup, repeats=repeats or (1 if self.quick else 2), warmup=0,
                    reference=reference, unit_count=None, unit="volumes")
        self.cases.append(case)


def _reals(n: int, shape, lo: float, hi: float, seed: int = 1) -> Callable[[], torch.Tensor]:
    def make():
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 1, *shape, generator=g) * (hi - lo) + lo
    return make


def cases(quick: bool) -> list[Case]:
    out: list[Case] = []

    # ---- 1. CoW StyleGAN at the anchor's CPU-timing size ----
    g1 = _Group("CoW StyleGAN 32x64x64 bs2 (anchor size)", quick)
    g1.add("CoW anchor (re-implemented)", lambda: CowAnchor(**COW_ANCHOR_SIZE, batch_size=2),
           _reals(4, (32, 64, 64), 0.0, 1.0), 2, reference=True)
    g1.add("GANTrainerLib, anchor's schedule",
           lambda: OursTrainer("cow-stylegan-anchor", COW_OURS_G, COW_OURS_D, batch=2, accumulate=1),
           _reals(4, (32, 64, 64), -1.0, 1.0), 2)
    g1.add("GANTrainerLib, cow-stylegan recipe",
           lambda: OursTrainer("cow-stylegan", COW_OURS_G, COW_OURS_D, augment_p=0.5, batch=2),
           _reals(4, (32, 64, 64), -1.0, 1.0), 2)
    out += g1.cases

    # ---- 2. the shipped CoW preset at 32×128×128, fp32 vs bf16 autocast ----
    from GANTrainerLib.presets import get_preset

    pre = get_preset("cow-stylegan")
    scale = 0.5 if quick else 1.0
    batch = int(os.environ.get("VOLGAN_BENCH_PRESET_BATCH", "2"))
    gen, dis = dict(pre["generator"]), dict(pre["discriminator"])
    for d in (gen, dis):
        d["channel_base"] = int(d["channel_base"] * scale)
        d["channel_max"] = int(d["channel_max"] * scale)
    cap = "" if scale == 1 else f", {scale:g}x capacity"
    g2 = _Group(f"CoW preset 32x128x128 bs{batch}{cap}", quick)
    for amp, name in (("off", "fp32"), ("bf16", "bf16 autocast")):
        g2.add(f"GANTrainerLib cow-stylegan, {name}",
               lambda amp=amp: OursTrainer("cow-stylegan", gen, dis, amp=amp, batch=batch, augment_p=0.5),
               _reals(batch, (32, 128, 128), -1.0, 1.0), batch, reference=amp == "off", repeats=1,
               mode="plain" if quick else "kinds")
    out += g2.cases

    # ---- 3. spongiosa progressive WGAN-GP at 32³ (α = 1) ----
    g3 = _Group("spongiosa PGAN 32^3 bs16", quick)
    reps = 1 if quick else 2
    g3.add("spongiosa anchor (re-implemented)", lambda: SpongiosaAnchor(batch_size=16),
           _reals(16, (32, 32, 32), -1.0, 1.0), 16, reference=True, repeats=reps)
    g3.add("GANTrainerLib spongiosa-pgan, fp32", lambda: OursTrainer("spongiosa-pgan", amp="off"),
           _reals(16, (32, 32, 32), -1.0, 1.0), 16, repeats=reps)
    g3.add("GANTrainerLib spongiosa-pgan, bf16 autocast", lambda: OursTrainer("spongiosa-pgan", amp="bf16"),
           _reals(16, (32, 32, 32), -1.0, 1.0), 16, repeats=reps)
    out += g3.cases
    return out
