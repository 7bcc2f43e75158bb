"""StyleGAN2-3D: mapping network, synthesis network (skip or residual), residual discriminator.

Anisotropic volumes come from an anisotropic learned constant (e.g. 2×8×8 → 32×128×128 by four ×2
steps), from per-axis up-sampling factors (e.g. 4×4×4 → 32×128×128: three isotropic steps, then
in-plane-only steps, as the Circle-of-Willis anchor does), or both. ``up_factors`` lists the factor per
axis for every step; by default it is derived from ``output_shape / base_shape`` with each axis doubling
in the first ``log2(ratio)`` steps ("early" schedule).

The generator's public interface (shared by every family in :mod:`VolumetricGANLib.networks`):
``z_dim``, ``has_w``, ``num_ws``, ``output_shape``, ``config()``, ``mapping(z, psi, cutoff)``,
``synthesis(ws, noise_mode, noise)``, ``make_noise(n, generators)`` and ``forward(z, ...)``.

References
----------
Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020; Karras et al.,
"Training Generative Adversarial Networks with Limited Data", NeurIPS 2020 (NVlabs/stylegan2-ada-pytorch
``training/networks.py``, read as reference; no code copied).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from .layers import (
    EqualConv3d,
    EqualLinear,
    MappedGenerator,
    ModulatedConv3d,
    Resample3d,
    ShapeError,
    assert_shape,
    like_weight_layout,
    minibatch_std,
    normalize_2nd_moment,
)

__all__ = ["derive_up_factors", "MappingNetwork", "SynthesisNetwork", "StyleGAN2Generator",
           "StyleGAN2Discriminator", "level_channels"]

FAMILY = "stylegan2-3d"


def derive_up_factors(output_shape: Sequence[int], base_shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """Per-step up-sampling factors taking ``base_shape`` to ``output_shape`` ("early" schedule).

    Every axis ratio must be a power of two; axis *a* doubles in the first ``log2(out_a / base_a)`` steps.

    Example
    -------
    >>> derive_up_factors((32, 128, 128), (4, 4, 4))
    [(2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]
    """
    out = [int(s) for s in output_shape]
    base = [int(s) for s in base_shape]
    if len(out) != 3 or len(base) != 3 or min(out + base) < 1:
        raise ValueError(f"output_shape {tuple(output_shape)} / base_shape {tuple(base_shape)}: need 3 positive ints each")
    steps = []
    for o, b, name in zip(out, base, "DHW"):
        ratio = o // b
        if o % b or ratio & (ratio - 1):
            raise ValueError(f"output_shape: axis {name} = {o} is not base_shape {b} times a power of two "
                             f"(choose sizes such as {b * 2 ** max(0, round(math.log2(max(o / b, 1))))})")
        steps.append(int(math.log2(ratio)))
    n = max(steps)
    return [tuple(2 if s < k else 1 for k in steps) for s in range(n)]  # type: ignore[misc]


def level_channels(level: int, channel_base: int, channel_max: int, channel_min: int = 1) -> int:
    """Channels at resolution level ``level`` (0 = the constant): ``channel_base / 2^level`` within bounds."""
    return int(max(channel_min, min(channel_max, channel_base // (2 ** level))))


class MappingNetwork(nn.Module):
    """z → w: normalise z, ``num_layers`` equalised FC layers with lr multiplier, track ``w_avg``.

    Truncation ``w' = w_avg + ψ (w − w_avg)`` is applied to the first ``cutoff`` of the ``num_ws`` copies
    (all when ``cutoff`` is None). Runs in fp32 even under autocast (as stylegan2-ada does).
    """

    def __init__(
        self,
        z_dim: int,                    # input latent dimension
        w_dim: int,                    # intermediate latent dimension
        num_ws: int,                   # number of w copies consumed by the synthesis network
        num_layers: int = 8,           # fully connected layers
        lr_multiplier: float = 0.01,   # learning-rate multiplier of the FC layers
        w_avg_beta: float = 0.995,     # decay of the running mean of w (tracked in training mode)
        c_dim: int = 0,                # conditioning vector length (0 = unconditional)
    ) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws = int(z_dim), int(w_dim), int(num_ws)
        self.c_dim = int(c_dim)
        self.num_layers = int(num_layers)
        self.w_avg_beta = float(w_avg_beta)
        if self.c_dim:
            # c is embedded to w_dim, normalised, and concatenated to the normalised z (StyleGAN2-ADA's rule)
            self.embed = EqualLinear(self.c_dim, self.w_dim)
        feats = [self.z_dim + (self.w_dim if self.c_dim else 0)] + [self.w_dim] * self.num_layers
        self.layers = nn.ModuleList(
            EqualLinear(feats[i], feats[i + 1], activation="lrelu", lr_multiplier=lr_multiplier)
            for i in range(self.num_layers)
        )
        self.register_buffer("w_avg", torch.zeros(self.w_dim))

    def forward(
        self,
        z: torch.Tensor,                       # (N, z_dim)
        truncation_psi: float = 1.0,           # 1 = no truncation, 0 = every sample is w_avg
        truncation_cutoff: int | None = None,  # truncate only the first `cutoff` ws (None = all)
        update_w_avg: bool | None = None,      # default: update in training mode
        c: torch.Tensor | None = None,         # (N, c_dim) conditioning vectors (conditional networks only)
    ) -> torch.Tensor:
        assert_shape(z, [None, self.z_dim], "MappingNetwork z")
        if self.c_dim and c is None:
            raise ShapeError(f"MappingNetwork: this network is conditional (c_dim={self.c_dim}); pass c")
        if not self.c_dim and c is not None:
            raise ShapeError("MappingNetwork: this network is unconditional; c must be None")
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = normalize_2nd_moment(z.float())
            if self.c_dim:
                assert_shape(c, [z.shape[0], self.c_dim], "MappingNetwork c")
                x = torch.cat([x, normalize_2nd_moment(self.embed(c.float()))], dim=1)
            for layer in self.layers:
                x = layer(x)
            if update_w_avg if update_w_avg is not None else self.training:
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
            ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
            if truncation_psi != 1:
                cut = self.num_ws if truncation_cutoff is None else int(truncation_cutoff)
                avg = self.w_avg.reshape(1, 1, -1)
                ws = torch.cat([avg.lerp(ws[:, :cut], truncation_psi), ws[:, cut:]], dim=1)
        return ws


class _SynthesisBlock(nn.Module):
    """One resolution level: (up-sample) conv0, conv1, toRGB; skip or residual wiring."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, shape: tuple[int, int, int],
                 up: tuple[int, int, int] | None, img_channels: int, architecture: str, is_last: bool,
                 use_noise: bool, conv_clamp: float | None, resample_filter: Sequence[float],
                 fused_modconv: bool | str, label_classes: int = 0) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.shape = in_ch, out_ch, shape
        self.architecture = architecture
        self.is_first = up is None
        self.is_last = is_last
        kw = dict(use_noise=use_noise, conv_clamp=conv_clamp, resample_filter=resample_filter,
                  fused_modconv=fused_modconv)
        if self.is_first:
            self.const = nn.Parameter(torch.randn(out_ch, *shape))
            self.num_conv = 1
        else:
            self.conv0 = ModulatedConv3d(in_ch, out_ch, w_dim, shape, up=up, **kw)
            self.num_conv = 2
        self.conv1 = ModulatedConv3d(out_ch, out_ch, w_dim, shape, **kw)
        self.num_torgb = 1 if (architecture == "skip" or is_last) else 0
        if self.num_torgb:
            self.torgb = ModulatedConv3d(out_ch, img_channels, w_dim, shape, kernel_size=1, use_noise=False,
                                         activation="linear", demodulate=False, conv_clamp=conv_clamp,
                                         fused_modconv=fused_modconv)
            if label_classes:
                # the label branch: class logits beside toRGB, from the same features and style
                self.tolabel = ModulatedConv3d(out_ch, label_classes, w_dim, shape, kernel_size=1, use_noise=False,
                                               activation="linear", demodulate=False, conv_clamp=conv_clamp,
                                               fused_modconv=fused_modconv)
        self.label_classes = int(label_classes) if self.num_torgb else 0
        if architecture == "skip" and not self.is_first:
            self.img_up = Resample3d(img_channels, up=up, resample_filter=resample_filter)
            if label_classes:
                self.label_up = Resample3d(label_classes, up=up, resample_filter=resample_filter)
        if architecture == "resnet" and not self.is_first:
            self.skip = EqualConv3d(in_ch, out_ch, 1, bias=False, up=up, resample_filter=resample_filter)

    def forward(self, x, img, ws, noise_mode, noise, logits=None):
        n = ws.shape[0]
        if self.is_first:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat(n, 1, 1, 1, 1)
            x = self.conv1(like_weight_layout(x, self.conv1.weight), ws[:, 0], noise_mode, noise[0])
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, ws[:, 0], noise_mode, noise[0])
            x = self.conv1(x, ws[:, 1], noise_mode, noise[1], gain=math.sqrt(0.5))
            x = y.add_(x)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, noise[0])
            x = self.conv1(x, ws[:, 1], noise_mode, noise[1])
        if img is not None and self.architecture == "skip":
            img = self.img_up(img)
            logits = self.label_up(logits) if logits is not None else None
        if self.num_torgb:
            y = self.torgb(x, ws[:, self.num_conv]).float()
            img = img.add_(y) if img is not None else y
            if self.label_classes:
                y = self.tolabel(x, ws[:, self.num_conv]).float()
                logits = logits.add_(y) if logits is not None else y
        return x, img, logits


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) → volume (N, img_channels + label_classes, *output_shape).

    With ``label_classes`` K > 0 the last K channels are class logits (background first) from a label
    branch beside toRGB at every resolution (skip architecture: summed over up-sampled levels, as the image).
    """

    def __init__(
        self,
        w_dim: int,                                    # intermediate latent dimension
        output_shape: Sequence[int],                   # (D, H, W) of the generated volume
        base_shape: Sequence[int],                     # (D, H, W) of the learned constant
        up_factors: Sequence[Sequence[int]] | None,    # per-step factor per axis; None = derived
        img_channels: int = 1,                         # output channels
        channel_base: int = 512,                       # channels at the constant level (before capping)
        channel_max: int = 256,                        # upper bound on channels per level
        channel_min: int = 1,                          # lower bound on channels per level
        architecture: str = "skip",                    # 'skip' or 'resnet'
        use_noise: bool = True,                        # noise inputs in every conv
        conv_clamp: float | None = 256.0,              # clamp activations to ±conv_clamp
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # low-pass taps for up-sampling
        fused_modconv: bool | str = "auto",            # modulated-conv path
        label_classes: int = 0,                        # class-logit channels of a label branch (0 = none)
    ) -> None:
        super().__init__()
        if architecture not in ("skip", "resnet"):
            raise ValueError(f"architecture: expected 'skip' or 'resnet', got {architecture!r}")
        self.w_dim = int(w_dim)
        self.output_shape = tuple(int(s) for s in output_shape)
        self.base_shape = tuple(int(s) for s in base_shape)
        self.img_channels = int(img_channels)
        self.label_classes = int(label_classes)
        if self.label_classes == 1 or self.label_classes < 0:
            raise ValueError(f"label_classes: 0 (no labels) or at least 2 (background + classes), got {label_classes}")
        if up_factors is None:
            up_factors = derive_up_factors(self.output_shape, self.base_shape)
        self.up_factors = [tuple(int(f) for f in step) for step in up_factors]
        shapes = [self.base_shape]
        for step in self.up_factors:
            if len(step) != 3 or any(f not in (1, 2) for f in step):
                raise ValueError(f"up_factors: each step must be 3 factors of 1 or 2, got {step}")
            shapes.append(tuple(s * f for s, f in zip(shapes[-1], step)))
        if shapes[-1] != self.output_shape:
            raise ValueError(f"up_factors {self.up_factors} take base_shape {self.base_shape} to {shapes[-1]}, "
                             f"not output_shape {self.output_shape}")
        self.shapes = shapes
        self.channels = [level_channels(i, channel_base, channel_max, channel_min) for i in range(len(shapes))]
        self.blocks = nn.ModuleList()
        self.num_ws = 0
        for i, shape in enumerate(shapes):
            block = _SynthesisBlock(
                self.channels[max(i - 1, 0)], self.channels[i], self.w_dim, shape,
                None if i == 0 else self.up_factors[i - 1], self.img_channels, architecture,
                i == len(shapes) - 1, use_noise, conv_clamp, resample_filter, fused_modconv, self.label_classes)
            self.blocks.append(block)
            self.num_ws += block.num_conv
        self.num_ws += self.blocks[-1].num_torgb
        self.architecture = architecture
        self.use_noise = use_noise

    def noise_shapes(self) -> list[tuple[int, int, int]]:
        """Spatial shape of every noise input, in the order :meth:`forward` consumes them."""
        out = []
        for b in self.blocks:
            out += [b.shape] * b.num_conv
        return out

    def make_noise(self, n: int, generators: Sequence[torch.Generator] | None = None,
                   device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Random noise inputs for ``n`` samples; sample *i* drawn from ``generators[i]`` (reproducible).

        Drawing per sample makes a sample's noise independent of the batch it was generated in.
        """
        shapes = self.noise_shapes()
        if generators is None:
            return [torch.randn(n, 1, *s, device=device) for s in shapes]
        if len(generators) != n:
            raise ValueError(f"make_noise: {len(generators)} generators for {n} samples")
        per_sample = [[torch.randn(1, 1, *s, generator=g) for s in shapes] for g in generators]
        return [torch.cat([p[j] for p in per_sample]).to(device) for j in range(len(shapes))]

    def forward(
        self,
        ws: torch.Tensor,                               # (N, num_ws, w_dim)
        noise_mode: str = "const",                      # 'random', 'const' or 'none'
        noise: Sequence[torch.Tensor] | None = None,    # explicit noise per conv (see noise_shapes)
    ) -> torch.Tensor:
        assert_shape(ws, [None, self.num_ws, self.w_dim], "SynthesisNetwork ws")
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode: expected 'random', 'const' or 'none', got {noise_mode!r}")
        n_noise = len(self.noise_shapes())
        if noise is not None and len(noise) != n_noise:
            raise ShapeError(f"SynthesisNetwork: {len(noise)} noise tensors given, the network has {n_noise} noise inputs")
        x = img = logits = None
        w_idx = n_idx = 0
        for block in self.blocks:
            nz = list(noise[n_idx:n_idx + block.num_conv]) if noise is not None else [None] * block.num_conv
            x, img, logits = block(x, img, ws[:, w_idx:w_idx + block.num_conv + block.num_torgb], noise_mode, nz,
                                   logits)
            w_idx += block.num_conv
            n_idx += block.num_conv
        if logits is not None:
            img = torch.cat([img, logits], dim=1)
        assert_shape(img, [ws.shape[0], self.img_channels + self.label_classes, *self.output_shape],
                     "SynthesisNetwork output")
        return img


class StyleGAN2Generator(MappedGenerator):
    """StyleGAN2-3D generator: :class:`MappingNetwork` + :class:`SynthesisNetwork`.

    Output is linear (no tanh), nominally in [-1, 1]; the checkpoint's intensity mapping turns it into
    physical units. ``config()`` returns every constructor argument, so a checkpoint can rebuild the
    network from JSON alone.

    Example
    -------
    >>> G = StyleGAN2Generator(z_dim=32, w_dim=32, output_shape=(8, 32, 32), base_shape=(2, 8, 8),
    ...                        channel_base=32, channel_max=32, mapping_layers=2)
    >>> G(torch.randn(2, 32)).shape
    torch.Size([2, 1, 8, 32, 32])
    """

    family = FAMILY

    def __init__(
        self,
        z_dim: int = 512,                                # input latent dimension
        w_dim: int = 512,                                # intermediate latent dimension
        output_shape: Sequence[int] = (32, 128, 128),    # (D, H, W) of generated volumes
        base_shape: Sequence[int] = (2, 8, 8),           # (D, H, W) of the learned constant
        up_factors: Sequence[Sequence[int]] | None = None,  # per-step factor per axis (None = derived)
        img_channels: int = 1,                           # output channels
        channel_base: int = 512,                         # channels at the constant level (halved per level)
        channel_max: int = 256,                          # upper bound on channels
        channel_min: int = 1,                            # lower bound on channels
        mapping_layers: int = 8,                         # FC layers of the mapping network
        mapping_lr_multiplier: float = 0.01,             # learning-rate multiplier of the mapping network
        w_avg_beta: float = 0.995,                       # decay of the tracked mean of w
        architecture: str = "skip",                      # 'skip' or 'resnet'
        use_noise: bool = True,                          # noise inputs
        conv_clamp: float | None = 256.0,                # activation clamp (fp16 safety)
        resample_filter: Sequence[float] = (1, 3, 3, 1), # low-pass taps for up-sampling
        fused_modconv: bool | str = "auto",              # modulated-conv path
        label_classes: int = 0,                          # class-logit output channels (0 = image only)
        label_decoding: str = "argmax",                  # how the logits become a label map (labelmaps.decode_classes)
        c_dim: int = 0,                                  # conditioning vector length (0 = unconditional)
    ) -> None:
        super().__init__()
        self._config = dict(
            z_dim=int(z_dim), w_dim=int(w_dim), output_shape=[int(s) for s in output_shape],
            base_shape=[int(s) for s in base_shape],
            up_factors=None if up_factors is None else [[int(f) for f in s] for s in up_factors],
            img_channels=int(img_channels), channel_base=int(channel_base), channel_max=int(channel_max),
            channel_min=int(channel_min), mapping_layers=int(mapping_layers),
            mapping_lr_multiplier=float(mapping_lr_multiplier), w_avg_beta=float(w_avg_beta),
            architecture=str(architecture), use_noise=bool(use_noise),
            conv_clamp=None if conv_clamp is None else float(conv_clamp),
            resample_filter=[float(t) for t in resample_filter], fused_modconv=fused_modconv,
        )
        from VolGANCore.names import LABEL_DECODINGS

        if label_decoding not in LABEL_DECODINGS:
            raise ValueError(f"label_decoding {label_decoding!r}: choose one of {', '.join(LABEL_DECODINGS)}")
        if label_classes:  # older checkpoints' configs carry neither key: they rebuild unchanged
            self._config["label_classes"] = int(label_classes)
            if label_decoding != "argmax":
                self._config["label_decoding"] = str(label_decoding)
        if c_dim:
            self._config["c_dim"] = int(c_dim)
        self.z_dim, self.w_dim = int(z_dim), int(w_dim)
        self.c_dim = int(c_dim)
        self.synthesis = SynthesisNetwork(w_dim, output_shape, base_shape, up_factors, img_channels,
                                          channel_base, channel_max, channel_min, architecture, use_noise,
                                          conv_clamp, resample_filter, fused_modconv, label_classes)
        self.num_ws = self.synthesis.num_ws
        self.output_shape = self.synthesis.output_shape
        self.img_channels = self.synthesis.img_channels
        self.label_classes = self.synthesis.label_classes
        self.label_decoding = str(label_decoding)
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier, w_avg_beta,
                                      c_dim)


class _DiscriminatorBlock(nn.Module):
    def __init__(self, in_ch, out_ch, down, architecture, conv_clamp, resample_filter):
        super().__init__()
        self.conv0 = EqualConv3d(in_ch, in_ch, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqualConv3d(in_ch, out_ch, 3, activation="lrelu", down=down,
                                 resample_filter=resample_filter, conv_clamp=conv_clamp)
        self.architecture = architecture
        if architecture == "resnet":
            self.skip = EqualConv3d(in_ch, out_ch, 1, bias=False, down=down, resample_filter=resample_filter)

    def forward(self, x):
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
            return y.add_(x)
        return self.conv1(self.conv0(x))


class StyleGAN2Discriminator(nn.Module):
    """Residual discriminator with minibatch standard deviation, mirroring the generator's levels.

    Input ``(N, img_channels, *img_shape)``; output ``(N, 1)`` logits. For a joint image+label generator,
    ``img_channels`` is 1 + K (intensity, then class probabilities). With ``c_dim`` > 0 the output is the
    projection of the features on an embedding of ``c`` (Miyato & Koyama, ICLR 2018, as StyleGAN2-ADA).
    """

    family = FAMILY

    def __init__(
        self,
        img_shape: Sequence[int] = (32, 128, 128),       # (D, H, W) of input volumes
        base_shape: Sequence[int] = (2, 8, 8),           # (D, H, W) where the epilogue runs
        down_factors: Sequence[Sequence[int]] | None = None,  # per-step factors (None = mirror of G's)
        img_channels: int = 1,                           # input channels
        channel_base: int = 512,                         # channels at the base level (halved per level up)
        channel_max: int = 256,                          # upper bound on channels
        channel_min: int = 1,                            # lower bound on channels
        architecture: str = "resnet",                    # 'resnet' or 'orig'
        mbstd_group_size: int = 4,                       # minibatch-std group size (0 = whole batch)
        mbstd_num_channels: int = 1,                     # minibatch-std feature channels
        conv_clamp: float | None = 256.0,                # activation clamp
        resample_filter: Sequence[float] = (1, 3, 3, 1), # low-pass taps for down-sampling
        c_dim: int = 0,                                  # conditioning vector length (0 = unconditional)
        cmap_dim: int | None = None,                     # projection width (default: base-level channels)
    ) -> None:
        super().__init__()
        self._config = dict(
            img_shape=[int(s) for s in img_shape], base_shape=[int(s) for s in base_shape],
            down_factors=None if down_factors is None else [[int(f) for f in s] for s in down_factors],
            img_channels=int(img_channels), channel_base=int(channel_base), channel_max=int(channel_max),
            channel_min=int(channel_min), architecture=architecture, mbstd_group_size=int(mbstd_group_size),
            mbstd_num_channels=int(mbstd_num_channels),
            conv_clamp=None if conv_clamp is None else float(conv_clamp),
            resample_filter=[float(t) for t in resample_filter],
        )
        if architecture not in ("resnet", "orig"):
            raise ValueError(f"architecture: expected 'resnet' or 'orig', got {architecture!r}")
        self.img_shape = tuple(int(s) for s in img_shape)
        self.base_shape = tuple(int(s) for s in base_shape)
        self.img_channels = int(img_channels)
        if down_factors is None:
            down_factors = list(reversed(derive_up_factors(self.img_shape, self.base_shape)))
        self.down_factors = [tuple(int(f) for f in s) for s in down_factors]
        n_levels = len(self.down_factors)
        ch = [level_channels(i, channel_base, channel_max, channel_min) for i in range(n_levels + 1)]
        self.fromrgb = EqualConv3d(self.img_channels, ch[n_levels], 1, activation="lrelu", conv_clamp=conv_clamp)
        self.blocks = nn.ModuleList(
            _DiscriminatorBlock(ch[n_levels - j], ch[n_levels - j - 1], self.down_factors[j], architecture,
                                conv_clamp, resample_filter)
            for j in range(n_levels)
        )
        shape = self.img_shape
        for f in self.down_factors:
            shape = tuple(s // d for s, d in zip(shape, f))
        if shape != self.base_shape:
            raise ValueError(f"down_factors {self.down_factors} take img_shape {self.img_shape} to {shape}, "
                             f"not base_shape {self.base_shape}")
        self.mbstd_group_size = int(mbstd_group_size)
        self.mbstd_num_channels = int(mbstd_num_channels)
        c0 = ch[0]
        self.epilogue_conv = EqualConv3d(c0 + self.mbstd_num_channels, c0, 3, activation="lrelu",
                                         conv_clamp=conv_clamp)
        self.epilogue_fc = EqualLinear(c0 * math.prod(self.base_shape), c0, activation="lrelu")
        self.c_dim = int(c_dim)
        if self.c_dim:
            self._config["c_dim"] = self.c_dim
            self.cmap_dim = int(cmap_dim or c0)
            self._config["cmap_dim"] = self.cmap_dim
            self.c_embed = EqualLinear(self.c_dim, self.cmap_dim)
            self.c_mapping = nn.Sequential(*(EqualLinear(self.cmap_dim, self.cmap_dim, activation="lrelu",
                                                         lr_multiplier=0.01) for _ in range(2)))
        self.out = EqualLinear(c0, self.cmap_dim if self.c_dim else 1)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        assert_shape(img, [None, self.img_channels, *self.img_shape], "StyleGAN2Discriminator input")
        if bool(self.c_dim) != (c is not None):
            raise ShapeError(f"StyleGAN2Discriminator: c_dim={self.c_dim}; pass c exactly when c_dim > 0")
        x = self.fromrgb(img)
        # fromrgb (1 input channel, 1×1×1 kernel) returns NCDHW whatever the layout: follow the next layer's
        x = like_weight_layout(x, self.blocks[0].conv0.weight if len(self.blocks) else self.epilogue_conv.weight)
        for block in self.blocks:
            x = block(x)
        if self.mbstd_num_channels > 0:
            x = minibatch_std(x, self.mbstd_group_size, self.mbstd_num_channels)
        x = self.epilogue_conv(x)
        x = self.epilogue_fc(x.flatten(1))
        x = self.out(x)
        if self.c_dim:
            assert_shape(c, [img.shape[0], self.c_dim], "StyleGAN2Discriminator c")
            cmap = self.c_mapping(normalize_2nd_moment(self.c_embed(c.to(x.dtype))))
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x
