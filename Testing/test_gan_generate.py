"""VolumetricGANLib.generate and `volgan generate`: files, geometry, units, latents, reproducibility, modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from VolGANCore import read_volume
from VolGANCore.cli import main as volgan_main
from VolGANCore.errors import Cancelled, VolGANError
from VolGANCore.progress import CancelToken, RecordingProgress
from VolumetricGANLib.checkpoint import load_generator, make_config, save_checkpoint
from VolumetricGANLib.generate import generate, interpolate, mix, variation, write_generated
from VolumetricGANLib.networks import StyleGAN2Generator

from tiny_arch import tiny_stylegan_g

ARCH = tiny_stylegan_g()
INTENSITY = {"network_range": [-1, 1], "physical_range": [0, 1000], "units": "a.u.", "clip": False}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(1)
    G = StyleGAN2Generator(**ARCH)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        for m in G.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.3)
    cfg = make_config("stylegan2-3d", ARCH, spacing=(0.3, 0.3, 0.6), intensity=INTENSITY, name="tiny",
                      defaults={"truncation_psi": 1.0, "noise_mode": "const"})
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.vgan", cfg, G_ema=G)


def test_generate_volumes_geometry_units_latents(ckpt):
    prog = RecordingProgress()
    res = generate(ckpt, n=5, seed=3, batch=2, device="cpu", progress=prog)
    vols, lat = res
    assert len(vols) == 5 and lat["z"].shape == (5, 16) and lat["w"].shape == (5, 6, 16)
    v = vols[0]
    assert v.shape == (8, 32, 32) and v.spacing == (0.3, 0.3, 0.6)
    centre = v.index_to_physical([(32 - 1) / 2, (32 - 1) / 2, (8 - 1) / 2])
    assert np.allclose(centre, 0, atol=1e-9)
    G = load_generator(ckpt).generator
    with torch.no_grad():
        raw = G(torch.from_numpy(lat["z"]))[:, 0].numpy()
    # [-1, 1] → [0, 1000]; atol 1e-2 is 1e-5 of the range: float32 results of different batch compositions (2 here,
    # 5 above) differ by a few 1e-6 in network units on some CPUs (their conv kernels), 2e-3 after the scaling
    assert np.allclose(vols[3].array, (raw[3] + 1) * 500, atol=1e-2)
    assert prog.events[-1].finished and prog.events[-1].done == 5


@pytest.mark.slow
def test_same_seed_same_volumes_batch_invariant_and_latents_file(ckpt, tmp_path):
    a = generate(ckpt, n=4, seed=7, batch=4, device="cpu", noise="random")
    b = generate(ckpt, n=4, seed=7, batch=1, device="cpu", noise="random")
    c = generate(ckpt, n=4, seed=8, batch=4, device="cpu", noise="random")
    for va, vb in zip(a.volumes, b.volumes):                            # 1e-5 of the range (see above)
        assert np.allclose(va.array, vb.array, atol=1e-2)
    assert not np.allclose(a.volumes[0].array, c.volumes[0].array)
    assert len({int(s) for s in a.noise_seeds}) == 4
    # latents written by one run reproduce it
    out = write_generated(a, tmp_path / "run")
    again = generate(ckpt, latents=out / "latents.npz", device="cpu", noise="const")
    const = generate(ckpt, n=4, seed=7, device="cpu", noise="const")
    assert np.allclose(again.volumes[2].array, const.volumes[2].array, atol=1e-5)
    with pytest.raises(VolGANError, match="holds 4 latents"):
        generate(ckpt, n=3, latents=out / "latents.npz", device="cpu")
    np.save(tmp_path / "bad.npy", np.zeros((2, 15), np.float32))
    with pytest.raises(VolGANError, match=r"\(N, 16\)"):
        generate(ckpt, latents=tmp_path / "bad.npy", device="cpu")


def test_truncation_zero_collapses_to_w_avg(ckpt):
    res = generate(ckpt, n=3, seed=0, truncation=0.0, device="cpu")
    assert np.allclose(res.volumes[0].array, res.volumes[2].array, atol=1e-4)
    assert np.allclose(res.w[0], res.w[1])
    with pytest.raises(VolGANError, match="--noise"):
        generate(ckpt, n=1, noise="loud", device="cpu")


def test_write_generated_files_and_atomic_folder(ckpt, tmp_path):
    res = generate(ckpt, n=3, seed=1, device="cpu")
    out = write_generated(res, tmp_path / "gen", fmt="nrrd")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["latents.npz", "manifest.json", "sample_0000.nrrd", "sample_0001.nrrd", "sample_0002.nrrd"]
    back = read_volume(out / "sample_0001.nrrd")
    assert back.same_geometry(res.volumes[1]) and np.allclose(back.array, res.volumes[1].array)
    man = json.loads((out / "manifest.json").read_text())
    assert man["kind"] == "generated" and man["parameters"]["seed"] == 1 and man["model"]["units"] == "a.u."
    with pytest.raises(VolGANError, match="not empty"):
        write_generated(res, out)
    # cancellation: no output folder appears
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        generate(ckpt, n=2, seed=0, device="cpu", cancel=token)


@pytest.mark.slow
def test_amp_nan_is_detected_and_retried_in_fp32(ckpt):
    loaded = load_generator(ckpt)
    G = loaded.generator
    orig = G.synthesis.forward

    def flaky(ws, noise_mode="const", noise=None):
        out = orig(ws, noise_mode=noise_mode, noise=noise)
        if torch.is_autocast_enabled("cpu"):
            out = out + float("nan")
        return out

    G.synthesis.forward = flaky
    res = generate(loaded, n=3, seed=0, batch=2, amp="bf16", device="cpu")
    assert res.info["fp32_retries"] == 2 and "fp32" in res.info["warning"]
    assert all(np.isfinite(v.array).all() for v in res.volumes)
    ref = generate(ckpt, n=3, seed=0, device="cpu")
    assert np.allclose(res.volumes[2].array, ref.volumes[2].array, atol=1e-3)


def test_modes_interpolate_variation_mix(ckpt, tmp_path):
    it = interpolate(ckpt, steps=4, seeds=(1, 2), device="cpu")
    a = generate(ckpt, n=1, seed=1, device="cpu").volumes[0].array
    b = generate(ckpt, n=1, seed=2, device="cpu").volumes[0].array
    assert np.allclose(it.volumes[0].array, a, atol=1e-3) and np.allclose(it.volumes[-1].array, b, atol=1e-3)
    assert np.allclose(it.w[1], it.w[0] + (it.w[3] - it.w[0]) / 3, atol=1e-5)   # lerp in w
    zi = interpolate(ckpt, steps=3, seeds=(1, 2), space="z", device="cpu")
    assert np.allclose(np.linalg.norm(zi.z[1]), 0.5 * (np.linalg.norm(zi.z[0]) + np.linalg.norm(zi.z[2])), rtol=0.2)
    out = write_generated(it, tmp_path / "path", sequence=True)
    seq = __import__("SimpleITK").ReadImage(str(out / "sequence.nii.gz"))
    assert seq.GetDimension() == 4 and seq.GetSize()[3] == 4
    var = variation(ckpt, k=3, seed=5, device="cpu")
    assert np.allclose(var.w[0], var.w[2]) and not np.allclose(var.volumes[0].array, var.volumes[1].array)
    mx = mix(ckpt, seed_a=1, seeds_b=[2, 3], cutoff=2, device="cpu")
    wa = generate(ckpt, n=1, seed=1, device="cpu").w[0]
    wb = generate(ckpt, n=1, seed=3, device="cpu").w[0]
    assert np.allclose(mx.w[1, :2], wa[:2]) and np.allclose(mx.w[1, 2:], wb[2:])


def test_cli_generate(ckpt, tmp_path):
    out = tmp_path / "cli"
    rc = volgan_main(["--quiet", "generate", "--checkpoint", str(ckpt), "--n", "3", "--seed", "4", "--batch", "2",
                      "--truncation", "0.9", "--noise", "random", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.glob("sample_*")) == [f"sample_000{i}.nii.gz" for i in range(3)]
    lat = np.load(out / "latents.npz")
    assert lat["z"].shape == (3, 16) and lat["w"].shape[0] == 3 and lat["noise_seed"].shape == (3,)
    res = generate(ckpt, n=3, seed=4, truncation=0.9, noise="random", device="cpu")
    assert np.allclose(read_volume(out / "sample_0002.nii.gz").array, res.volumes[2].array, atol=1e-2)
    rc = volgan_main(["--quiet", "generate", "--checkpoint", str(tmp_path / "missing.vgan"), "--out", str(tmp_path / "x")])
    assert rc == 2 and not (tmp_path / "x").exists()
    rc = volgan_main(["--quiet", "generate", "--checkpoint", str(ckpt), "--mode", "interpolate", "--seeds", "1", "2",
                      "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "interp")])
    assert rc == 0 and (tmp_path / "interp" / "sequence.nii.gz").is_file()
