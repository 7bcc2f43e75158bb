"""Every generation mode on an imported Aydin et al. 2024 CoW 3-D StyleGAN, with geometry kept.

Uses the tiny checkpoint in their format at ../shared/anchors/cow_stylegan_c24_tiny/ (32×64×64 output).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from VolGANCore.cli import main as volgan_main
from VolGANCore.errors import InputFileError
from VolGANCore.io import read_volume, write_volume
from VolGANCore.volume import Volume
from VolumetricGANLib.checkpoint import load_generator
from VolumetricGANLib.generate import generate, interpolate, mix, variation, write_generated
from VolumetricGANLib.import_aydin2024 import import_aydin2024

REPO = Path(__file__).resolve().parents[1]
ANCHOR = REPO.parent / "shared" / "anchors" / "cow_stylegan_c24_tiny"
MODEL = ANCHOR / "model_1.pt"
MRA = REPO.parent / "shared" / "data" / "topcow" / "topcow_mra_crop.mha"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason=f"{ANCHOR} is absent: ../shared is not beside this checkout")

SPACING = (0.297, 0.297, 0.6)
SHAPE = (32, 64, 64)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The fixture with non-zero noise scales (theirs are zero at initialisation) so variation shows."""
    folder = tmp_path_factory.mktemp("aydin_gen")
    sd = dict(torch.load(MODEL, map_location="cpu", weights_only=True)["GAN"])
    g = torch.Generator().manual_seed(7)
    for key in [k for k in sd if ".to_noise" in k]:
        sd[key] = torch.randn(sd[key].shape, generator=g) * (0.3 if key.endswith("weight") else 0.1)
    torch.save({"GAN": sd}, folder / "model_1.pt")
    (folder / ".config.json").write_text((ANCHOR / ".config.json").read_text())
    out = import_aydin2024(folder / "model_1.pt", folder / "cow.vgan", truncation_mean_samples=300)
    return load_generator(out)


def _check_geometry(vol: Volume, spacing=SPACING):
    assert vol.shape == SHAPE
    assert np.allclose(vol.spacing, spacing, atol=1e-6)
    assert np.allclose(vol.array_spacing, spacing[::-1], atol=1e-6)     # (D, H, W) order: 0.6, 0.297, 0.297


@pytest.mark.slow
def test_sample_with_truncation(model):
    G = model.generator
    res = generate(model, n=2, seed=5, truncation=0.7, noise="const", device="cpu")
    assert len(res.volumes) == 2 and res.w.shape == (2, 5, 512)
    for v in res.volumes:
        _check_geometry(v)
        assert np.isfinite(v.array).all()
    with torch.no_grad():
        w = G.mapping.style(torch.from_numpy(res.z))
        want = G.mapping.w_avg + 0.7 * (w - G.mapping.w_avg)
    assert np.allclose(res.w, want[:, None].expand(-1, 5, -1).numpy(), atol=1e-5)
    # ψ = 0: every sample is the mean style; with the constant noise image the volumes coincide
    flat = generate(model, n=2, seed=5, truncation=0.0, noise="const", device="cpu")
    assert np.allclose(flat.volumes[0].array, flat.volumes[1].array, atol=1e-6)
    assert not np.allclose(res.volumes[0].array, res.volumes[1].array, atol=1e-3)
    # checkpoint defaults: ψ 0.9 (their generation script) and random noise, reproducible per seed
    a = generate(model, n=2, seed=9, device="cpu")
    b = generate(model, n=2, seed=9, device="cpu", batch=1)
    assert a.info["truncation_psi"] == 0.9 and a.info["noise_mode"] == "random"
    assert np.allclose(a.volumes[1].array, b.volumes[1].array, atol=1e-5)


@pytest.mark.slow
def test_noise_modes(model):
    G = model.generator
    ws = G.mapping(torch.randn(1, 512, generator=torch.Generator().manual_seed(0))).expand(2, -1, -1)
    with torch.no_grad():
        const = G.synthesis(ws, noise_mode="const")
        assert torch.equal(const, G.synthesis(ws, noise_mode="const"))
        assert torch.allclose(const, G.synthesis(ws, noise=G.synthesis.noise_const.expand(2, -1, -1, -1, -1)))
        none = G.synthesis(ws, noise_mode="none")
        assert torch.allclose(none, G.synthesis(ws, noise=torch.zeros(2, 32, 64, 64, 1)), atol=1e-6)
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        noise = G.make_noise(2, gens)
        assert noise[0].shape == (2, 32, 64, 64, 1) and 0 <= float(noise[0].min()) and float(noise[0].max()) < 1
        full = torch.zeros(2, 64, 64, 64, 1)                    # their S³ image is accepted and cropped
        full[:, :32] = noise[0]
        assert torch.allclose(G.synthesis(ws, noise=noise), G.synthesis(ws, noise=full))
        assert not torch.allclose(const, none)
        with pytest.raises(ValueError, match="noise"):
            G.synthesis(ws, noise=torch.zeros(2, 16, 64, 64, 1))


@pytest.mark.slow
def test_variation_interpolation_and_mixing(model):
    var = variation(model, k=3, seed=2, truncation=0.8, device="cpu")
    assert np.allclose(var.w[0], var.w[1]) and np.allclose(var.w[0], var.w[2])
    assert not np.allclose(var.volumes[0].array, var.volumes[1].array, atol=1e-4)   # only the noise differs
    for v in var.volumes:
        _check_geometry(v)

    path = interpolate(model, steps=3, seeds=[1, 2], space="z", truncation=1.0, noise="const", device="cpu")
    start = generate(model, n=1, seed=1, truncation=1.0, noise="const", device="cpu")
    end = generate(model, n=1, seed=2, truncation=1.0, noise="const", device="cpu")
    assert np.allclose(path.volumes[0].array, start.volumes[0].array, atol=1e-4)
    assert np.allclose(path.volumes[2].array, end.volumes[0].array, atol=1e-4)
    mid = path.volumes[1].array
    assert not np.allclose(mid, start.volumes[0].array, atol=1e-3) and not np.allclose(mid, end.volumes[0].array, atol=1e-3)
    wpath = interpolate(model, steps=3, seeds=[1, 2], space="w", truncation=1.0, noise="const", device="cpu")
    assert np.allclose(wpath.w[1], 0.5 * (wpath.w[0] + wpath.w[2]), atol=1e-5)

    mixed = mix(model, 1, [2, 3], cutoff=2, truncation=1.0, noise="const", device="cpu")
    assert np.allclose(mixed.w[:, :2], start.w[0, :2], atol=1e-5)
    assert np.allclose(mixed.w[0, 2:], end.w[0, 2:], atol=1e-5)
    assert not np.allclose(mixed.volumes[0].array, end.volumes[0].array, atol=1e-3)   # coarse styles from seed 1
    _check_geometry(mixed.volumes[1])


def test_written_volumes_carry_spacing_in_dhw_order(model, tmp_path):
    res = generate(model, n=2, seed=0, truncation=0.9, noise="random", device="cpu")
    out = write_generated(res, tmp_path / "samples")
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(out.glob("sample_*.nii.gz"))
    assert len(files) == 2 and manifest["kind"] == "generated"
    back = read_volume(files[1])
    _check_geometry(back)
    assert np.allclose(back.array, res.volumes[1].array, atol=1e-5)


def test_reference_image_geometry_is_kept(tmp_path):
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ref = Volume(np.zeros(SHAPE, np.float32), spacing=(0.3, 0.31, 0.62), origin=(12.5, -30.0, 4.0), direction=direction)
    ref_path = write_volume(ref, tmp_path / "roi.nii.gz")
    out = import_aydin2024(MODEL, tmp_path / "cow_ref.vgan", reference_image=ref_path, truncation_mean_samples=8)
    res = generate(out, n=1, seed=0, device="cpu")
    vol = res.volumes[0]
    assert np.allclose(vol.spacing, (0.3, 0.31, 0.62), atol=1e-5)
    assert np.allclose(vol.origin, (12.5, -30.0, 4.0), atol=1e-4)
    assert np.allclose(vol.direction, direction, atol=1e-5)
    back = read_volume(write_generated(res, tmp_path / "ref_samples") / "sample_0000.nii.gz")
    assert back.shape == SHAPE and np.allclose(back.origin, (12.5, -30.0, 4.0), atol=1e-4)
    if MRA.is_file():   # a real TOF-MRA crop of another size is refused, naming it and the shapes
        with pytest.raises(InputFileError, match=r"topcow_mra_crop\.mha: reference image has shape .*32, 64, 64"):
            import_aydin2024(MODEL, tmp_path / "bad.vgan", reference_image=MRA, truncation_mean_samples=8)


@pytest.mark.slow
def test_authors_quirks_as_options(model, tmp_path):
    z = np.random.default_rng(3).standard_normal((2, 512)).astype(np.float32)
    plain = generate(model, latents=z, truncation=1.0, noise="const", device="cpu")
    lo = min(float(v.array.min()) for v in plain.volumes)
    hi = max(float(v.array.max()) for v in plain.volumes)
    assert lo < 0 or hi > 1, "the tiny model's raw output leaves [0, 1]; unclamped output must show it"
    src = Path(model.path).parent / "model_1.pt"        # the same weights, quirks switched on
    out = import_aydin2024(src, tmp_path / "quirks.vgan", clamp=True, truncation_mean_samples=2000)
    quirks = load_generator(out)
    clamped = generate(quirks, latents=z, truncation=1.0, noise="const", device="cpu")
    for a, b in zip(plain.volumes, clamped.volumes):
        assert np.array_equal(np.clip(a.array, 0, 1), b.array)
    with torch.no_grad():   # truncation mean: 2000 seeded latents through the EMA mapping net
        zz = torch.randn(2000, 512, generator=torch.Generator().manual_seed(0))
        Gq = quirks.generator
        assert torch.allclose(Gq.mapping.w_avg, Gq.mapping.style(zz).mean(0), atol=1e-5)


def test_cli_generate_on_imported_model(model, tmp_path):
    rc = volgan_main(["--quiet", "generate", "--checkpoint", model.path, "--n", "2", "--seed", "4",
                      "--truncation", "0.9", "--out", str(tmp_path / "cli"), "--device", "cpu"])
    assert rc == 0
    files = sorted((tmp_path / "cli").glob("sample_*.nii.gz"))
    assert len(files) == 2
    _check_geometry(read_volume(files[0]))


@pytest.mark.slow
def test_gradients_flow_to_styles_for_inversion(model):
    G = model.generator
    ws = G.mapping(torch.randn(1, 512, generator=torch.Generator().manual_seed(1))).detach().requires_grad_(True)
    for fused in (False, True):
        G.synthesis.fused_modconv = fused
        try:
            img = G.synthesis(ws, noise_mode="const")
            (grad,) = torch.autograd.grad(img.square().mean(), ws)
        finally:
            G.synthesis.fused_modconv = "auto"
        assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
