"""Building blocks shared by the 3-D GAN families.

Equalised-learning-rate linear and conv3d layers, modulated/demodulated conv3d (a grouped "fused" path
and an activation-scaling path), fp16-safe pre-normalisation and activation clamping, noise injection,
and separable FIR resampling in 3-D with an independent factor per axis (so an anisotropic generator can
up-sample in-plane only).

Tensors are ``(N, C, D, H, W)``. Nothing here calls ``.item()`` or otherwise synchronises with the host
inside ``forward``; shape checks compare Python ints only. Every layer works with
``torch.channels_last_3d`` inputs (depthwise/grouped convolutions, no ``.view`` on the input).

References
----------
Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020 (modulation,
demodulation, skip/residual architectures); Karras et al., "Training Generative Adversarial Networks with
Limited Data", NeurIPS 2020 (fp16 pre-normalisation, conv clamping; NVlabs/stylegan2-ada-pytorch, read as
reference); Karras et al., "Progressive Growing of GANs", ICLR 2018 (equalised learning rate, PixelNorm,
minibatch standard deviation).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ShapeError",
    "assert_shape",
    "as_triple",
    "normalize_2nd_moment",
    "pixel_norm",
    "bias_act",
    "Resample3d",
    "EqualLinear",
    "EqualConv3d",
    "modulated_conv3d",
    "ModulatedConv3d",
    "minibatch_std",
    "to_channels_last_3d",
    "like_weight_layout",
    "LRELU_GAIN",
]

LRELU_GAIN = math.sqrt(2.0)  # gain that keeps the variance of leaky-ReLU(0.2) activations near 1


class ShapeError(ValueError):
    """A tensor of the wrong shape reached a network boundary; the message names the boundary."""


def assert_shape(x: torch.Tensor, shape: Sequence[int | None], what: str) -> None:
    """Raise :class:`ShapeError` if ``x.shape`` does not match ``shape`` (``None`` = any size).

    Only Python ints are compared, so the check never synchronises with an accelerator.
    """
    if x.ndim != len(shape) or any(s is not None and int(a) != int(s) for a, s in zip(x.shape, shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ShapeError(f"{what}: expected a tensor of shape {want}, got {tuple(x.shape)}")


def as_triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """``2`` → ``(2, 2, 2)``; a 3-sequence of positive ints is kept; anything else raises ``ValueError``."""
    if isinstance(value, int):
        t = (value, value, value)
    else:
        t = tuple(int(v) for v in value)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{name}: expected a positive int or 3 positive ints (D, H, W), got {value!r}")
    return t  # type: ignore[return-value]


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` so that its mean square along ``dim`` is 1 (StyleGAN's latent normalisation)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """PixelNorm of Karras et al. 2018: ``x / sqrt(mean_c x² + eps)`` over the channel axis.

    Written with the exact operations of the MICCAI 2020 spongiosa code (``x ** 2``, ``mean``, ``rsqrt``)
    so that an imported generator reproduces the published output bit for bit.
    """
    return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + eps)


def bias_act(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
    alpha: float = 0.2,
) -> torch.Tensor:
    """Add a per-channel bias, apply the activation, multiply by ``gain``, clamp to ``±clamp``.

    ``activation`` is ``"linear"`` or ``"lrelu"`` (slope ``alpha``; its default gain √2 is applied
    on top of ``gain``). Clamping bounds activations so that fp16 never overflows (stylegan2-ada).
    ``"lrelu"`` runs as one fused autograd function (:class:`_BiasLReLU`: one new tensor, in-place
    activation/gain/clamp, backward from the saved output in two passes), which matters on the CPU where
    every extra pass over a large activation costs an allocation and a sweep of memory.
    """
    if activation == "lrelu" and gain > 0 and alpha > 0:
        return _BiasLReLU.apply(x, bias, float(alpha), float(gain * LRELU_GAIN),
                                None if clamp is None or clamp < 0 else float(clamp))
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.to(x.dtype).reshape(shape)
    if activation == "lrelu":
        x = F.leaky_relu(x, alpha)
        gain = gain * LRELU_GAIN
    elif activation != "linear":
        raise ValueError(f"activation: expected 'linear' or 'lrelu', got {activation!r}")
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def _lrelu_gain_clamp_grad(grad: torch.Tensor, y: torch.Tensor, alpha: float, gain: float,
                           clamp: float | None) -> torch.Tensor:
    """``grad · gain · slope · [|y| < clamp]`` where ``y`` is the *output* of bias + lrelu + gain + clamp.

    The output carries the sign of the pre-activation (gain > 0), so it selects the slope, and it equals ±clamp
    exactly where the clamp is active (no gradient there).
    """
    g = torch.ops.aten.leaky_relu_backward(grad, y, alpha, True)
    if clamp is not None:
        g = torch.ops.aten.hardtanh_backward(g, y, -clamp, clamp)
    return g.mul_(gain) if gain != 1 else g


class _LReLUGrad(torch.autograd.Function):
    """The backward of :class:`_BiasLReLU` as a function of the incoming gradient.

    It is linear in ``grad`` (``y`` only selects slopes; the second derivative of a piecewise-linear function
    is zero almost everywhere), so its own backward is the same operation — double backward (R1, path length)
    works through it.
    """

    @staticmethod
    def forward(ctx, grad, y, alpha, gain, clamp):
        ctx.save_for_backward(y)
        ctx.args = (alpha, gain, clamp)
        return _lrelu_gain_clamp_grad(grad, y, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, gg):
        (y,) = ctx.saved_tensors
        return _LReLUGrad.apply(gg, y, *ctx.args), None, None, None, None


class _BiasLReLU(torch.autograd.Function):
    """``clamp(leaky_relu(x + bias, alpha) · gain, ±clamp)`` with one output allocation; saves only the output."""

    @staticmethod
    def forward(ctx, x, bias, alpha, gain, clamp):
        if bias is not None:
            y = x + bias.to(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
        else:
            y = x.clone()
        F.leaky_relu_(y, alpha)
        if gain != 1:
            y.mul_(gain)
        if clamp is not None:
            y.clamp_(-clamp, clamp)
        ctx.save_for_backward(y)
        ctx.args = (alpha, gain, clamp)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        gx = _LReLUGrad.apply(grad, y, *ctx.args)
        gb = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
            dims = [0] + list(range(2, gx.ndim))
            gb = gx.sum(dim=dims, dtype=torch.float32).to(ctx.bias_dtype)
        return gx if ctx.needs_input_grad[0] else None, gb, None, None, None


def _fir_kernel(taps: Sequence[float]) -> torch.Tensor:
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    if f.ndim != 1 or f.numel() < 1 or float(f.sum()) == 0:
        raise ValueError(f"resample_filter: expected a 1-D list of taps with a non-zero sum, got {list(taps)!r}")
    return f / f.sum()


class Resample3d(nn.Module):
    """Separable FIR up- or down-sampling of ``(N, C, D, H, W)`` tensors by 1 or 2 per axis.

    Up-sampling inserts zeros and low-pass filters (a depthwise transposed convolution, gain = factor per
    axis, so a constant stays constant away from the border); down-sampling low-pass filters and decimates
    (a depthwise strided convolution). Axes with factor 1 are neither filtered nor resampled, which makes
    in-plane-only steps (factor ``(1, 2, 2)``) exact along the slice axis.

    Parameters
    ----------
    channels : int
        Number of channels (the filter is applied to each channel alone).
    up : int or 3 ints
        Up-sampling factor per axis (D, H, W), each 1 or 2.
    down : int or 3 ints
        Down-sampling factor per axis, each 1 or 2 (only one of ``up``/``down`` may differ from 1).
    resample_filter : list of float
        1-D low-pass taps, e.g. ``[1, 3, 3, 1]`` (an even length suits factor 2).
    """

    def __init__(
        self,
        channels: int,                                   # channels filtered independently
        up: int | Sequence[int] = 1,                     # up-sampling factor per axis (D, H, W): 1 or 2
        down: int | Sequence[int] = 1,                   # down-sampling factor per axis: 1 or 2
        resample_filter: Sequence[float] = (1, 3, 3, 1), # low-pass taps applied along resampled axes
    ) -> None:
        super().__init__()
        self.channels = int(channels)
        self.up = as_triple(up, "up")
        self.down = as_triple(down, "down")
        if max(self.up) > 2 or max(self.down) > 2:
            raise ValueError(f"Resample3d: factors must be 1 or 2 per axis, got up={self.up}, down={self.down}")
        if max(self.up) > 1 and max(self.down) > 1:
            raise ValueError("Resample3d: up-sample or down-sample, not both")
        f = _fir_kernel(resample_filter)
        k = f.numel()
        if (k - 2) % 2 != 0:
            raise ValueError(f"resample_filter: a factor-2 filter needs an even number of taps, got {k}")
        factors = self.up if max(self.up) > 1 else self.down
        self.factors = factors
        self.is_up = max(self.up) > 1
        self.active = max(factors) > 1
        # One separable 3-D kernel: outer product of the per-axis taps ([1] along axes left alone).
        taps = [f * (factors[a] if self.is_up else 1.0) if factors[a] > 1 else torch.ones(1) for a in range(3)]
        kernel = taps[0][:, None, None] * taps[1][None, :, None] * taps[2][None, None, :]
        self.register_buffer("kernel", kernel.expand(self.channels, 1, *kernel.shape).clone(), persistent=False)
        self.kshape = tuple(t.numel() for t in taps)
        self.padding = tuple((self.kshape[a] - factors[a]) // 2 if factors[a] > 1 else 0 for a in range(3))

    def out_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Spatial output shape for a spatial input shape (D, H, W)."""
        if self.is_up:
            return tuple(int(s) * u for s, u in zip(shape, self.up))  # type: ignore[return-value]
        return tuple(int(s) // d for s, d in zip(shape, self.down))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.channels, None, None, None], "Resample3d input")
        if not self.active:
            return x
        if not self.is_up:
            for a, d in enumerate(self.down):
                if d > 1 and x.shape[2 + a] % d:
                    raise ShapeError(f"Resample3d: axis {'DHW'[a]} of size {x.shape[2 + a]} is not divisible by {d}")
        w = self.kernel.to(x.dtype)
        if self.is_up:
            return F.conv_transpose3d(x, w, stride=self.up, padding=self.padding, groups=self.channels)
        return F.conv3d(x, w, stride=self.down, padding=self.padding, groups=self.channels)

    def extra_repr(self) -> str:
        kind = "up" if self.is_up else "down"
        return f"channels={self.channels}, {kind}={self.factors}"


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate (weights ~ N(0, 1/lr_mul²), scaled at run time).

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output.
    bias : bool
        Learn an additive bias.
    activation : str
        ``"linear"`` or ``"lrelu"``.
    lr_multiplier : float
        Learning-rate multiplier (0.01 in StyleGAN's mapping network).
    bias_init : float
        Initial bias (1 for the style affines so that styles start at 1).
    """

    def __init__(
        self,
        in_features: int,             # input size
        out_features: int,            # output size
        bias: bool = True,            # learn an additive bias
        activation: str = "linear",   # 'linear' or 'lrelu'
        lr_multiplier: float = 1.0,   # learning-rate multiplier of weight and bias
        bias_init: float = 0.0,       # initial value of the bias
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.in_features], "EqualLinear input")
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None
        if self.bias is not None:
            b = self.bias.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, self.activation)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, activation={self.activation}"


class EqualConv3d(nn.Module):
    """3-D convolution with equalised learning rate, optional FIR up/down-sampling and clamping.

    Up-sampling happens before the convolution and down-sampling before it too (filter, decimate, then
    convolve at the low resolution), which costs a fraction of a strided full-resolution convolution.
    """

    def __init__(
        self,
        in_channels: int,                                # input channels
        out_channels: int,                               # output channels
        kernel_size: int,                                # cubic kernel size (odd, or 1)
        bias: bool = True,                               # learn an additive bias
        activation: str = "linear",                      # 'linear' or 'lrelu'
        up: int | Sequence[int] = 1,                     # up-sampling factor per axis before the conv
        down: int | Sequence[int] = 1,                   # down-sampling factor per axis before the conv
        resample_filter: Sequence[float] = (1, 3, 3, 1), # low-pass taps for resampling
        conv_clamp: float | None = None,                 # clamp outputs to ±conv_clamp (None = off)
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.padding = self.kernel_size // 2
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 3)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.resample = Resample3d(in_channels, up=up, down=down, resample_filter=resample_filter)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        assert_shape(x, [None, self.in_channels, None, None, None], "EqualConv3d input")
        x = self.resample(x)
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = F.conv3d(x, w, padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=gain, clamp=clamp)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, k={self.kernel_size}, activation={self.activation}"


def modulated_conv3d(
    x: torch.Tensor,              # input (N, I, D, H, W)
    weight: torch.Tensor,         # weight (O, I, k, k, k)
    styles: torch.Tensor,         # per-sample modulation (N, I)
    noise: torch.Tensor | None = None,  # optional additive noise broadcastable to the output
    padding: int = 0,             # spatial zero padding
    demodulate: bool = True,      # normalise each output channel's weights per sample
    fused: bool = True,           # one grouped conv (True) or scale activations around a shared conv (False)
) -> torch.Tensor:
    """StyleGAN2 modulated (and demodulated) 3-D convolution.

    The fused path folds the styles into per-sample weights and runs one grouped ``conv3d`` (fast for small
    batches); the non-fused path scales the activations by the styles before, and by the demodulation
    coefficients after, one shared convolution (fast for large batches, and what mixed precision prefers).
    Both compute the same function. In reduced precision the weights and styles are pre-normalised by
    their maxima first so that no intermediate overflows fp16 (demodulation removes the scale again).

    Returns
    -------
    Tensor (N, O, D', H', W')
    """
    batch = x.shape[0]
    out_ch, in_ch, kd, kh, kw = weight.shape
    assert_shape(x, [batch, in_ch, None, None, None], "modulated_conv3d input")
    assert_shape(styles, [batch, in_ch], "modulated_conv3d styles")

    low_precision = x.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(x.device.type)
    if low_precision and demodulate:
        weight = weight * (1.0 / math.sqrt(in_ch * kd * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3, 4], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    w = None
    dcoefs = None
    if demodulate or fused:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, in_ch, 1, 1, 1)  # (N, O, I, k, k, k)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4, 5]) + 1e-8).rsqrt()  # (N, O)

    if not fused:
        x = x * styles.to(x.dtype).reshape(batch, in_ch, 1, 1, 1)
        x = F.conv3d(x, weight.to(x.dtype), padding=padding)
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch, out_ch, 1, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    if demodulate:
        w = w * dcoefs.reshape(batch, out_ch, 1, 1, 1, 1)
    x = x.reshape(1, batch * in_ch, *x.shape[2:])
    x = F.conv3d(x, w.reshape(batch * out_ch, in_ch, kd, kh, kw).to(x.dtype), padding=padding, groups=batch)
    x = x.reshape(batch, out_ch, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


class ModulatedConv3d(nn.Module):
    """A StyleGAN2 synthesis layer in 3-D: style affine, (up-sampling), modulated conv, noise, bias, act.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    w_dim : int
        Dimension of the intermediate latent w that drives the style affine.
    shape : 3 ints
        Spatial output shape (D, H, W) of this layer (after up-sampling); sets the constant noise size.
    kernel_size : int
        3 for synthesis convs, 1 for toRGB.
    up : int or 3 ints
        Up-sampling factor per axis applied to the input first.
    use_noise : bool
        Learn a per-layer noise strength and keep a constant noise buffer.
    activation : str
        ``"lrelu"`` for synthesis convs, ``"linear"`` for toRGB.
    demodulate : bool
        Demodulate (False for toRGB).
    conv_clamp : float or None
        Clamp activations to ±conv_clamp (fp16 safety).
    fused_modconv : bool or "auto"
        Force the grouped (True) or activation-scaling (False) path; "auto" picks grouped for batch ≤ 4
        outside autocast, unless the activations are channels-last (training with channels-last weights).
    """

    def __init__(
        self,
        in_channels: int,                                # input channels
        out_channels: int,                               # output channels
        w_dim: int,                                      # intermediate latent dimension
        shape: Sequence[int],                            # spatial output shape (D, H, W)
        kernel_size: int = 3,                            # convolution kernel size
        up: int | Sequence[int] = 1,                     # up-sampling factor per axis before the conv
        use_noise: bool = True,                          # noise input with learned strength
        activation: str = "lrelu",                       # 'lrelu' (synthesis) or 'linear' (toRGB)
        demodulate: bool = True,                         # weight demodulation
        resample_filter: Sequence[float] = (1, 3, 3, 1), # low-pass taps for up-sampling
        conv_clamp: float | None = None,                 # clamp activations to ±conv_clamp
        fused_modconv: bool | str = "auto",              # grouped conv / activation scaling / auto
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.w_dim = int(w_dim)
        self.shape = tuple(int(s) for s in shape)
        self.kernel_size = int(kernel_size)
        self.padding = self.kernel_size // 2
        self.activation = activation
        self.demodulate = demodulate
        self.conv_clamp = conv_clamp
        self.fused_modconv = fused_modconv
        self.use_noise = use_noise
        self.up = Resample3d(in_channels, up=up, resample_filter=resample_filter)
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *(kernel_size,) * 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 3)  # used when not demodulating
        if use_noise:
            self.register_buffer("noise_const", torch.randn(1, 1, *self.shape))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def _fused(self, x: torch.Tensor) -> bool:
        if self.fused_modconv != "auto":
            return bool(self.fused_modconv)
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
            return False  # channels-last activations: the grouped conv would copy them to NCDHW and run slower
        return x.shape[0] <= 4 and not torch.is_autocast_enabled(x.device.type) and x.dtype == torch.float32

    def forward(
        self,
        x: torch.Tensor,                      # (N, in_channels, D/up, H/up, W/up)
        w: torch.Tensor,                      # (N, w_dim)
        noise_mode: str = "const",            # 'random', 'const' or 'none'
        noise: torch.Tensor | None = None,    # explicit noise (N or 1, 1, D, H, W); overrides noise_mode
        gain: float = 1.0,                    # extra activation gain (residual architectures)
    ) -> torch.Tensor:
        in_shape = self.up.out_shape(x.shape[2:]) if x.ndim == 5 else None
        assert_shape(x, [None, self.in_channels, None, None, None], "ModulatedConv3d input")
        if in_shape != self.shape:
            raise ShapeError(f"ModulatedConv3d: input of spatial shape {tuple(x.shape[2:])} gives {in_shape} "
                             f"after up-sampling {self.up.up}, layer expects {self.shape}")
        assert_shape(w, [x.shape[0], self.w_dim], "ModulatedConv3d w")
        styles = self.affine(w)
        if not self.demodulate:
            styles = styles * self.weight_gain
        n = None
        if self.use_noise:
            if noise is not None:
                assert_shape(noise, [None, 1, *self.shape], "ModulatedConv3d noise")
                n = noise * self.noise_strength
            elif noise_mode == "random":
                n = torch.randn(x.shape[0], 1, *self.shape, device=x.device, dtype=x.dtype) * self.noise_strength
            elif noise_mode == "const":
                n = self.noise_const * self.noise_strength
            elif noise_mode != "none":
                raise ValueError(f"noise_mode: expected 'random', 'const' or 'none', got {noise_mode!r}")
        x = self.up(x)
        x = modulated_conv3d(x, self.weight, styles, noise=n, padding=self.padding,
                             demodulate=self.demodulate, fused=self._fused(x))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"{self.in_channels} -> {self.out_channels}, shape={self.shape}, k={self.kernel_size}, "
                f"noise={self.use_noise}, demodulate={self.demodulate}")


def to_channels_last_3d(module: nn.Module) -> nn.Module:
    """Store every 5-D parameter and buffer of ``module`` channels-last-3d, in place; returns ``module``.

    Convolutions then run (and return) channels-last, which is several times faster for few channels on the
    CPU (oneDNN) and is what tensor cores want on a GPU. Tensors of other ranks (e.g. a 4-D learned constant)
    stay as they are — ``Module.to(memory_format=torch.channels_last_3d)`` would refuse them.
    """
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.dim() == 5 and not t.is_contiguous(memory_format=torch.channels_last_3d):
                t.data = t.data.contiguous(memory_format=torch.channels_last_3d)
    return module


def like_weight_layout(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last-3d if ``weight`` is unambiguously stored that way, else ``x`` unchanged.

    A convolution with one input channel or a 1×1×1 kernel cannot tell the two layouts apart and returns
    NCDHW; this puts its output back into the layout the following layers were stored in.
    """
    cl = torch.channels_last_3d
    if x.dim() == 5 and weight.dim() == 5 and weight.is_contiguous(memory_format=cl) and not weight.is_contiguous():
        return x.contiguous(memory_format=cl)
    return x


def minibatch_std(x: torch.Tensor, group_size: int = 4, num_channels: int = 1) -> torch.Tensor:
    """Append the minibatch standard deviation as extra feature channels (Karras et al. 2018).

    The batch is split into groups of ``group_size`` (the largest divisor of N not above it; 0 = the
    whole batch); each group's per-feature standard deviation is averaged over features and voxels,
    giving ``num_channels`` extra constant channels per sample.
    """
    n, c, d, h, w = x.shape
    g = n if group_size in (0, None) else min(int(group_size), n)
    while n % g:
        g -= 1
    f = int(num_channels)
    if c % f:
        raise ShapeError(f"minibatch_std: {c} channels are not divisible by num_channels={f}")
    y = x.reshape(g, n // g, f, c // f, d, h, w).float()
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt()          # (n/g, f, c/f, d, h, w)
    y = y.mean(dim=[2, 3, 4, 5])                         # (n/g, f)
    y = y.reshape(-1, f, 1, 1, 1).to(x.dtype).repeat(g, 1, d, h, w)
    return torch.cat([x, y], dim=1)


class MappedGenerator(nn.Module):
    """The generator contract shared by the w-space families (StyleGAN2-3D, the CoW StyleGAN of Aydin 2024).

    A subclass sets ``self.mapping`` (z → ws, with truncation), ``self.synthesis`` (ws → volume, with
    ``make_noise``), ``self._config`` (its constructor arguments) and ``num_ws`` / ``output_shape``;
    ``default_noise_mode`` is the family's default for :meth:`forward`.
    """

    has_w = True
    default_noise_mode = "const"

    def config(self) -> dict:
        """Every constructor argument (JSON-serialisable)."""
        return dict(self._config)

    def make_noise(self, n, generators=None, device="cpu"):
        """Per-sample noise inputs of the synthesis network (reproducible with per-sample generators)."""
        return self.synthesis.make_noise(n, generators, device)

    def forward(
        self,
        z: torch.Tensor,                               # (N, z_dim)
        truncation_psi: float = 1.0,                   # truncation strength (1 = off)
        truncation_cutoff: int | None = None,          # truncate only the first `cutoff` ws
        noise_mode: str | None = None,                 # 'random', 'const' or 'none' (None: the family default)
        noise=None,                                    # explicit noise inputs
        c: torch.Tensor | None = None,                 # (N, c_dim) conditioning (conditional generators only)
    ) -> torch.Tensor:
        if c is None:
            ws = self.mapping(z, truncation_psi, truncation_cutoff)
        else:
            ws = self.mapping(z, truncation_psi, truncation_cutoff, c=c)
        return self.synthesis(ws, noise_mode=noise_mode or self.default_noise_mode, noise=noise)
