"""Run-time environment facts: package versions, compute devices and mixed-precision support."""

from __future__ import annotations

import contextlib
import functools
import importlib
import platform
import sys
from typing import Any, NamedTuple

__all__ = ["package_versions", "device_report", "pick_device", "AMP_MODES", "Amp", "amp_dtype", "environment_report",
           "format_environment", "cpu_bf16_conv3d_grads_ok", "onednn_off_for_training", "conv_kernels"]

_PACKAGES = ("numpy", "scipy", "SimpleITK", "nibabel", "torch", "monai", "tqdm", "slicer", "vtk")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages this extension uses (None where absent)."""
    from importlib import metadata

    dist_names = {"slicer": "slicer-core", "SimpleITK": "SimpleITK"}
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(dist_names.get(name, name))
        except metadata.PackageNotFoundError:
            try:
                mod = importlib.import_module(name)
                out[name] = getattr(mod, "__version__", "installed")
            except Exception:
                out[name] = None
    return out


def device_report() -> dict[str, Any]:
    """Which devices torch can use and which autocast dtypes work on each (imports torch)."""
    try:
        import torch
    except ImportError:
        return {"torch": None, "devices": ["cpu"], "note": "torch is not installed: install torch to train or generate"}
    rep: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "devices": ["cpu"]}
    rep["cpu"] = {"name": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                  "amp": ["bfloat16"]}
    if not cpu_bf16_conv3d_grads_ok():
        rep["cpu"]["bf16_note"] = ("oneDNN's bf16 conv3d weight gradients are wrong on this CPU; bf16 training "
                                   "here uses torch's native convolution instead (slower)")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            name = f"cuda:{i}"
            rep["devices"].append(name)
            amp = ["float16"] + (["bfloat16"] if torch.cuda.is_bf16_supported() else [])
            rep[name] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                         "capability": f"{props.major}.{props.minor}", "amp": amp}
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        rep["devices"].append("mps")
        rep["mps"] = {"amp": ["float16"]}
    return rep


def pick_device(requested: str = "auto") -> str:
    """Resolve ``auto`` to cuda > mps > cpu; validate an explicit device string with a clear error."""
    from .errors import VolGANError

    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        dev = torch.device(requested)
    except RuntimeError as exc:
        raise VolGANError(f"--device {requested}: {exc} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VolGANError(f"--device {requested}: no CUDA GPU is visible to torch {torch.__version__} "
                          f"(CUDA build: {torch.version.cuda}); install a CUDA build of torch or use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise VolGANError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s) visible")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise VolGANError(f"--device {requested}: MPS is not available on this machine")
    return str(dev)


AMP_MODES = ("auto", "bf16", "fp16", "off")


@functools.lru_cache(maxsize=None)
def cpu_bf16_conv3d_grads_ok() -> bool:
    """Whether bf16 conv3d weight gradients on this CPU agree with float64 (checked once per process, ~10 ms).

    Found 2026-12-07 with torch 2.13.0 (oneDNN) on an AMD EPYC with avx512_bf16: for a 3×3×3 convolution of an
    input two voxels deep — the base resolution (2×8×8) of the StyleGAN presets — oneDNN's bf16 weight gradient is
    garbage (relative errors of 1e24 to inf, NaN now and then, a different value on every call), while the forward
    pass, the input gradient, float32 and torch's native bf16 kernel are right. Training under bf16 on such a CPU
    must not use oneDNN's convolutions (:func:`conv_kernels`). The check runs the case three times.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 2, 4, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(16, 16, 3, 3, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 16, 2, 4, 4, generator=gen, dtype=torch.float64)

    def weight_grad(g, x, w):   # stride 1, padding 1, dilation 1, no transpose, 1 group: the weight gradient only
        return torch.ops.aten.convolution_backward(g, x, w, None, [1] * 3, [1] * 3, [1] * 3, False, [0] * 3, 1,
                                                   [False, True, False])[1].double()

    ref = weight_grad(g, x, w)
    with _onednn(True):
        for _ in range(3):
            got = weight_grad(g.bfloat16(), x.bfloat16(), w.bfloat16())
            if not bool(((got - ref).abs().max() <= 0.05 * ref.abs().max()).item()):
                return False
    return True


@contextlib.contextmanager
def _onednn(enabled: bool):
    """torch's oneDNN (mkldnn) switch, set for the block and restored after it."""
    import torch

    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def onednn_off_for_training(device_type: str, dtype: Any) -> bool:
    """Whether training on ``device_type`` under autocast ``dtype`` must avoid oneDNN's convolutions: bf16 on a CPU
    where :func:`cpu_bf16_conv3d_grads_ok` finds its weight gradients wrong."""
    import torch

    return device_type == "cpu" and dtype == torch.bfloat16 and not cpu_bf16_conv3d_grads_ok()


def conv_kernels(device_type: str, dtype: Any):
    """The context of a training step on ``device_type`` under autocast ``dtype`` (forward and backward inside):
    oneDNN switched off where :func:`onednn_off_for_training` says so, so that torch's native convolution computes
    the weight gradients; a no-op everywhere else (GPUs, float32, a CPU whose kernel is right)."""
    return _onednn(False) if onednn_off_for_training(device_type, dtype) else contextlib.nullcontext()


class Amp(NamedTuple):
    """What an ``--amp`` mode means on one device (see :func:`amp_dtype`)."""

    dtype: Any            # torch.bfloat16 or torch.float16 for autocast; None: no autocast (fp32)
    grad_scaler: bool     # fp16 on CUDA: training must scale the loss (torch.amp.GradScaler); bf16 and fp32 need not


def amp_dtype(amp: str | None, device: Any, training: bool = False) -> Amp:
    """The mixed-precision rule of every command: ``--amp`` on ``device`` -> ``Amp(dtype, grad_scaler)``.

    ``auto``: bf16 on a CUDA GPU that supports it, else fp16 (with a loss scaler); off on CPU and MPS.
    ``bf16``: bfloat16 on any device (CPU autocast runs it); refused on a CUDA GPU without bfloat16.
    ``fp16``: float16; on CUDA it needs a loss scaler when training, and ``training=True`` refuses it off CUDA.
    ``off`` (also None, ``none``, ``fp32``): no autocast. ``device`` is a device string (``cuda:1``), a
    ``torch.device`` or a device type. Raises :class:`VolGANError` for an unknown mode or a refused combination.
    """
    import torch

    from .errors import VolGANError

    mode = "off" if amp is None else str(amp).lower()
    mode = "off" if mode in ("none", "fp32") else mode
    if mode not in AMP_MODES:
        raise VolGANError(f"--amp {amp}: choose auto, bf16, fp16 or off")
    cuda = (device.type if isinstance(device, torch.device) else str(device).split(":")[0]) == "cuda"
    if mode == "off" or (mode == "auto" and not cuda):
        return Amp(None, False)
    if mode == "auto":
        return Amp(torch.bfloat16, False) if torch.cuda.is_bf16_supported() else Amp(torch.float16, True)
    if mode == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise VolGANError("--amp bf16: this GPU has no bfloat16 support; use --amp fp16")
        return Amp(torch.bfloat16, False)
    if training and not cuda:
        raise VolGANError("--amp fp16 needs a CUDA GPU; on CPU use --amp bf16 or off")
    return Amp(torch.float16, cuda)


def environment_report() -> dict[str, Any]:
    from . import __version__

    return {
        "volgan": __version__,
        "platform": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "executable": sys.executable,
        "packages": package_versions(),
        "compute": device_report(),
    }


def format_environment(rep: dict[str, Any] | None = None) -> list[str]:
    """Human-readable lines of :func:`environment_report` (used by `volgan info` and the module panels)."""
    rep = rep or environment_report()
    lines = [f"volgan {rep['volgan']}  ({rep['platform']})",
             "packages: " + ", ".join(f"{k} {v or '-'}" for k, v in rep["packages"].items())]
    comp = rep["compute"]
    if comp.get("torch") is None:
        lines.append(comp["note"])
        return lines
    for dev in comp["devices"]:
        d = comp[dev]
        extra = f", {d['memory_gib']} GiB, compute capability {d['capability']}" if "memory_gib" in d else ""
        threads = f", {d['threads']} threads" if "threads" in d else ""
        lines.append(f"device {dev}: {d.get('name', '')}{extra}{threads}; AMP dtypes: {', '.join(d['amp'])}")
        if d.get("bf16_note"):
            lines.append(f"  note: {d['bf16_note']}")
    if len(comp["devices"]) == 1:
        lines.append("no GPU visible: training and generation run on the CPU "
                     "(see README > Troubleshooting > GPU not found)")
    return lines
