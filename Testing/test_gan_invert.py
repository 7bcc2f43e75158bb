"""Inversion: W+/W projection with noise regularisation for StyleGAN, z projection for the PGAN, grid checks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from VolGANCore import Volume, VolGANError, read_volume, write_volume
from VolumetricGANLib.checkpoint import make_config, save_checkpoint
from VolumetricGANLib.generate import generate
from VolumetricGANLib.invert import invert, noise_regularisation
from VolumetricGANLib.networks import build_generator

from tiny_arch import tiny_stylegan_g

ARCH = tiny_stylegan_g([8, 16, 16], [2, 4, 4])


@pytest.fixture(scope="module")
def stylegan():
    torch.manual_seed(0)
    G = build_generator("stylegan2-3d", ARCH).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if "noise" in name:
                p.fill_(0.2)
    cfg = make_config("stylegan2-3d", ARCH, spacing=(0.3, 0.3, 0.6),
                      intensity={"network_range": [-1, 1], "physical_range": [0, 100], "units": "u"})
    return G, cfg


@pytest.fixture(scope="module")
def pgan():
    torch.manual_seed(1)
    arch = dict(max_res=1, nch=1)
    P = build_generator("pgan-3d", arch).eval()
    cfg = make_config("pgan-3d", arch, spacing=(0.164,) * 3, latent="hypersphere",
                      intensity={"network_range": [-1, 1], "physical_range": [-350, 1100], "units": "density"})
    return P, cfg


@pytest.mark.slow
def test_w_plus_projection_reproduces_a_generated_volume(stylegan):
    target = generate(stylegan, n=1, seed=7).volumes[0]
    res = invert(stylegan, target, space="w+", steps=150, device="cpu")
    assert res.info["mse_network"] < res.info["mse_network_start"] / 4
    assert res.info["ncc"] > 0.9
    assert res.volume.same_geometry(target) and res.latent.shape == (stylegan[0].num_ws, 16)
    assert len(res.noise) == len(stylegan[0].make_noise(1))
    for n in res.noise:  # renormalised after every step
        assert abs(n.mean()) < 1e-4 and abs(n.std() - 1) < 1e-2


@pytest.mark.slow
def test_single_w_is_shared_by_all_layers(stylegan):
    target = generate(stylegan, n=1, seed=8).volumes[0]
    res = invert(stylegan, target, space="w", steps=40, device="cpu", optimise_noise=False)
    assert np.allclose(res.latent, res.latent[:1]) and res.noise == []
    assert res.info["mse_network"] < res.info["mse_network_start"]


@pytest.mark.slow
def test_pgan_projection_into_z_stays_on_the_sphere(pgan):
    target = generate(pgan, n=1, seed=3).volumes[0]
    res = invert(pgan, target, steps=150, device="cpu")
    assert res.space == "z" and np.linalg.norm(res.latent) == pytest.approx(1.0, abs=1e-5)
    assert res.info["ncc"] > 0.95 and res.info["psnr_db"] > 25
    again = generate(pgan, latents=res.latents_dict()["z"]).volumes[0]
    np.testing.assert_allclose(again.array, res.volume.array, atol=1e-3)     # the latent reproduces it


def test_noise_regulariser_is_small_for_white_noise_and_large_for_smooth_noise():
    torch.manual_seed(0)
    white = [torch.randn(1, 1, 16, 16, 16)]
    smooth = [torch.nn.functional.avg_pool3d(torch.randn(1, 1, 20, 20, 20), 5, stride=1)]
    smooth = [(s - s.mean()) / s.std() for s in smooth]
    assert noise_regularisation(white) < 0.05 and noise_regularisation(smooth) > 1.0


def test_off_grid_target_is_refused_or_resampled(stylegan, pgan):
    wrong = Volume(np.zeros((8, 16, 16), np.float32), spacing=(0.5, 0.5, 0.6))
    with pytest.raises(VolGANError, match=r"model generates \(8, 16, 16\) at \(0.3, 0.3, 0.6\) mm.*--resample"):
        invert(stylegan, wrong, steps=1)
    big = generate(pgan, n=1, seed=2).volumes[0]
    fine = Volume(np.repeat(np.repeat(np.repeat(big.array, 2, 0), 2, 1), 2, 2), spacing=(0.082,) * 3)
    res = invert(pgan, fine, steps=5, resample=True, device="cpu")
    assert "resampled" in res.info["resampled"] and res.volume.shape == (8, 8, 8)
    with pytest.raises(VolGANError, match="has no w space"):
        invert(pgan, big, space="w+")


@pytest.mark.slow
def test_cli_invert_writes_reconstruction_latents_and_report(pgan, tmp_path):
    P, cfg = pgan
    ckpt = save_checkpoint(tmp_path / "p.vgan", cfg, G_ema=P)
    write_volume(generate(pgan, n=1, seed=4).volumes[0], tmp_path / "target.nii.gz")
    out = subprocess.run([sys.executable, "-m", "VolGANCore.cli", "--quiet", "generate", "--checkpoint", str(ckpt),
                          "--mode", "invert", "--target", str(tmp_path / "target.nii.gz"), "--invert-steps", "60",
                          "--device", "cpu", "--out", str(tmp_path / "inv")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "PSNR" in out.stdout
    report = json.loads((tmp_path / "inv" / "report.json").read_text())
    assert report["space"] == "z" and report["mse_network"] < report["mse_network_start"]
    assert read_volume(tmp_path / "inv" / "reconstruction.nii.gz").shape == (8, 8, 8)
    assert np.load(tmp_path / "inv" / "latents.npz")["z"].shape == (1, 32)
    missing = subprocess.run([sys.executable, "-m", "VolGANCore.cli", "generate", "--checkpoint", str(ckpt),
                              "--mode", "invert", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and "give --target" in missing.stderr
