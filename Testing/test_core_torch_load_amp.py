"""VolGANCore's shared PyTorch rules: safe_torch_load (one readable line per bad file, nothing unpickled runs),
amp_dtype (the one --amp rule of generate, segmentation and training) and conv_kernels (bf16 training on a CPU
whose oneDNN conv3d weight gradients are wrong)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import VolGANCore.env as env
from VolGANCore.env import Amp, amp_dtype, conv_kernels, cpu_bf16_conv3d_grads_ok
from VolGANCore.errors import InputFileError, VolGANError
from VolGANCore.torchfile import pickle_globals, safe_torch_load

FIX = "pass the original weights"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _load_error(path, **kw) -> str:
    with pytest.raises(InputFileError) as info:
        safe_torch_load(path, "weights file", FIX, **kw)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg and msg.endswith(")")
    return msg


@pytest.mark.parametrize("kind", ["torch zip", "bare pickle"])
def test_unsafe_pickle_is_named_and_never_executed(tmp_path, kind):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"weight": torch.zeros(2), "x": _Evil(marker)}
    if kind == "torch zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    msg = _load_error(path)
    system = f"{os.system.__module__}.system"                     # posix.system (nt.system on Windows)
    assert system in pickle_globals(path)
    assert f"unsafe file: unpickling it would import and call code ({system}" in msg
    assert "nothing in it was executed" in msg and f"({FIX}; re-export untrusted models" in msg
    assert not marker.exists()


def test_truncated_not_a_zip_empty_missing_and_folder(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(1000.0)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert _load_error(cut) == (f"{cut}: is truncated or damaged: its zip archive is incomplete "
                                f"({FIX} (copy it again if it was cut short))")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not torch")
    assert _load_error(junk) == (f"{junk}: is not a PyTorch weights file: neither a zip archive nor an old-style "
                                 f"file that a safe load reads ({FIX})")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert _load_error(empty) == f"{empty}: is empty (0 bytes), not a PyTorch weights file ({FIX})"
    assert _load_error(tmp_path / "absent.pt") == f"{tmp_path / 'absent.pt'}: weights file not found (check the path; {FIX})"
    assert _load_error(tmp_path) == f"{tmp_path}: is a folder, not a weights file ({FIX})"
    assert pickle_globals(junk) == [] and pickle_globals(good) == []


def test_state_dict_is_unwrapped_only_when_asked(tmp_path):
    sd = {"conv.weight": torch.randn(2, 3), "conv.bias": torch.randn(2)}
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": sd, "epoch": 3}, wrapped)
    got = safe_torch_load(wrapped, "weights file", FIX, state_dict=True)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    kept = safe_torch_load(wrapped, "weights file", FIX)
    assert set(kept) == {"state_dict", "epoch"} and kept["epoch"] == 3
    plain = tmp_path / "plain.pth"
    torch.save(sd, plain)
    assert set(safe_torch_load(plain, "weights file", FIX, state_dict=True)) == set(sd)
    odd = tmp_path / "odd.pth"                                     # "state_dict" that is not a dict stays put
    torch.save({"state_dict": torch.zeros(1)}, odd)
    assert isinstance(safe_torch_load(odd, "weights file", FIX, state_dict=True)["state_dict"], torch.Tensor)


# -- amp_dtype ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "mps"])
def test_amp_off_the_gpu(device):
    for off in ("off", "OFF", None, "none", "fp32"):
        assert amp_dtype(off, device) == Amp(None, False)
    assert amp_dtype("auto", device) == Amp(None, False)            # CPU/MPS: auto means fp32
    assert amp_dtype("bf16", device) == Amp(torch.bfloat16, False)  # CPU autocast runs bf16
    assert amp_dtype("bf16", device, training=True) == Amp(torch.bfloat16, False)
    assert amp_dtype("fp16", device) == Amp(torch.float16, False)   # inference: autocast fp16, no scaler
    with pytest.raises(VolGANError, match=r"--amp fp16 needs a CUDA GPU; on CPU use --amp bf16 or off"):
        amp_dtype("fp16", device, training=True)
    with pytest.raises(VolGANError, match=r"--amp fp8: choose auto, bf16, fp16 or off"):
        amp_dtype("fp8", device)


@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "CUDA_DEVICE"])
def test_amp_on_cuda_follows_bf16_support(monkeypatch, bf16, device):
    """The CUDA branches, with torch.cuda's bf16 query replaced (no GPU needed)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    dev = torch.device("cuda", 0) if device == "CUDA_DEVICE" else device
    auto = amp_dtype("auto", dev, training=True)
    assert auto == (Amp(torch.bfloat16, False) if bf16 else Amp(torch.float16, True))
    assert amp_dtype("auto", dev) == auto
    assert amp_dtype("fp16", dev) == Amp(torch.float16, True)
    assert amp_dtype("fp16", dev, training=True) == Amp(torch.float16, True)
    assert amp_dtype("off", dev) == Amp(None, False)
    if bf16:
        assert amp_dtype("bf16", dev) == Amp(torch.bfloat16, False)
    else:
        with pytest.raises(VolGANError, match=r"--amp bf16: this GPU has no bfloat16 support; use --amp fp16"):
            amp_dtype("bf16", dev, training=True)
    dtype, scaler = amp_dtype("auto", dev)                           # unpacks as a (dtype, grad scaler) pair
    assert (dtype, scaler) == tuple(auto)


# -- conv_kernels: bf16 conv3d weight gradients on CPU ----------------------------------------------------------------
def _bf16_weight_grad_error(seed: int) -> float:
    """Relative max error of a bf16-autocast conv3d weight gradient against float64, for the StyleGAN presets'
    base resolution (an input two voxels deep, 3×3×3 kernel) with the current oneDNN switch."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 2, 8, 8, generator=gen).to(memory_format=torch.channels_last_3d)
    w = torch.randn(16, 16, 3, 3, 3, generator=gen, requires_grad=True)
    g = torch.randn(2, 16, 2, 8, 8, generator=gen)
    (ref,) = torch.autograd.grad(torch.nn.functional.conv3d(x.double(), w.double(), padding=1), w, g.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.conv3d(x, w, padding=1)
    (got,) = torch.autograd.grad(y, w, g.bfloat16())
    return float((got.double() - ref).abs().max() / ref.abs().max())


def test_bf16_training_kernels_give_right_conv3d_weight_gradients_on_this_cpu():
    with conv_kernels("cpu", torch.bfloat16):
        errors = [_bf16_weight_grad_error(seed) for seed in range(5)]
    assert all(e < 0.05 for e in errors), errors            # bf16 rounding: ~0.4 %; the oneDNN fault: 1e24 to NaN
    assert torch.backends.mkldnn.enabled                    # the switch is restored after the block


def test_the_onednn_check_tells_the_truth_about_this_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)
    errors = [_bf16_weight_grad_error(seed) for seed in range(5)]
    assert cpu_bf16_conv3d_grads_ok() == all(e < 0.05 for e in errors), errors


@pytest.mark.parametrize("kernel_ok", [True, False])
def test_conv_kernels_turn_onednn_off_only_for_bf16_on_a_cpu_with_the_fault(monkeypatch, kernel_ok):
    monkeypatch.setattr(env, "cpu_bf16_conv3d_grads_ok", lambda: kernel_ok)
    for device, dtype, off in (("cpu", torch.bfloat16, not kernel_ok), ("cpu", None, False),
                               ("cuda", torch.bfloat16, False), ("cuda", torch.float16, False)):
        with conv_kernels(device, dtype):
            assert torch.backends.mkldnn.enabled == (not off), (device, dtype)
        assert torch.backends.mkldnn.enabled
    noted = [line for line in env.format_environment() if "oneDNN's bf16 conv3d weight gradients are wrong" in line]
    assert len(noted) == (0 if kernel_ok else 1)           # `volgan info` and the panels say so
