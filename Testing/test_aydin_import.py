"""`aydin2024-stylegan` import: the Circle-of-Willis 3-D StyleGAN checkpoints of Aydin et al. 2024.

The fixture ../shared/anchors/cow_stylegan_c24_tiny/ is a checkpoint in their exact on-disk format made
with their code at a tiny size (image_size 64, network_capacity 1, depth 32 → 32×64×64), with
``reference_io.npz`` = their ``GE(SE(z) repeated per block, noise)`` for two latents and two noise images.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from VolGANCore.errors import InputFileError, VolGANError
from VolumetricGANLib.checkpoint import card_path, load_checkpoint, load_generator
from VolumetricGANLib.import_aydin2024 import build_aydin2024, import_aydin2024
from VolumetricGANLib.importers import IMPORTERS, import_model
from VolumetricGANLib.networks.aydin2024 import FAMILY

REPO = Path(__file__).resolve().parents[1]
ANCHOR = REPO.parent / "shared" / "anchors" / "cow_stylegan_c24_tiny"
MODEL = ANCHOR / "model_1.pt"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason=f"{ANCHOR} is absent: ../shared is not beside this checkout")

TOL = 1e-4
N_MEAN = 256  # truncation-mean latents in tests (the default 10 000 is for real imports)


def reference_forward(sd: dict, z: torch.Tensor, noise: torch.Tensor, lr_mlp: float = 0.1, n_z: int = 3) -> torch.Tensor:
    """Their ``GE(SE(z) per block, noise)`` written from their code's description with plain functional calls
    on the raw state dict (not from VolumetricGANLib): L2-normalised z, 8 × (linear·lr_mlp, LeakyReLU 0.2);
    constant → conv3d; blocks: trilinear ×2 (all axes for blocks 1..n_z, in-plane after), two modulated
    convs (w·(s+1), demodulated) each + Linear(1, C)(noise crop) then LeakyReLU; grey-scale 1×1×1
    modulated conv summed, trilinear ×2 + normalised [1,2,1]³ replicate blur between blocks."""
    x = F.normalize(z, dim=1)
    for i in range(8):
        x = F.leaky_relu(F.linear(x, sd[f"SE.net.{2 * i}.weight"] * lr_mlp, sd[f"SE.net.{2 * i}.bias"] * lr_mlp), 0.2)
    style = x

    def modconv(h, weight, s, demod):
        b = h.shape[0]
        wts = weight[None] * (s[:, None, :, None, None, None] + 1)
        if demod:
            wts = wts * torch.rsqrt((wts ** 2).sum(dim=(2, 3, 4, 5), keepdim=True) + 1e-8)
        y = F.conv3d(h.reshape(1, -1, *h.shape[2:]), wts.reshape(-1, *weight.shape[1:]),
                     padding=weight.shape[-1] // 2, groups=b)
        return y.reshape(b, -1, *y.shape[2:])

    f = torch.tensor([1.0, 2.0, 1.0])
    k = (f[:, None, None] * f[None, :, None] * f[None, None, :] / 64).reshape(1, 1, 3, 3, 3)
    n = z.shape[0]
    h = F.conv3d(sd["GE.initial_block"].expand(n, -1, -1, -1, -1), sd["GE.initial_conv.weight"],
                 sd["GE.initial_conv.bias"], padding=1)
    n_blocks = len({key.split(".")[2] for key in sd if key.startswith("GE.blocks.")})
    rgb = None
    for i in range(n_blocks):
        p = f"GE.blocks.{i}."
        if i > 0:
            h = F.interpolate(h, scale_factor=(1, 2, 2) if i > n_z else (2, 2, 2), mode="trilinear", align_corners=False)
        crop = noise[:, :h.shape[2], :h.shape[3], :h.shape[4], :]
        for j in (1, 2):
            nz = F.linear(crop, sd[p + f"to_noise{j}.weight"], sd[p + f"to_noise{j}.bias"]).permute(0, 4, 1, 2, 3)
            s = F.linear(style, sd[p + f"to_style{j}.weight"], sd[p + f"to_style{j}.bias"])
            h = F.leaky_relu(modconv(h, sd[p + f"conv{j}.weight"], s, True) + nz, 0.2)
        s = F.linear(style, sd[p + "to_grayscale.to_style.weight"], sd[p + "to_grayscale.to_style.bias"])
        y = modconv(h, sd[p + "to_grayscale.conv.weight"], s, False)
        rgb = y if rgb is None else y + rgb
        if i < n_blocks - 1:
            rgb = F.interpolate(rgb, scale_factor=(1, 2, 2) if i >= n_z else (2, 2, 2), mode="trilinear",
                                align_corners=False)
            rgb = F.conv3d(F.pad(rgb, (1, 1, 1, 1, 1, 1), mode="replicate"), k)
    return rgb


def with_noise_weights(sd: dict) -> None:
    """Give the (all-zero, as at their initialisation) noise scales and biases seeded random values."""
    g = torch.Generator().manual_seed(7)
    for key in [k for k in sd if ".to_noise" in k]:
        sd[key] = torch.randn(sd[key].shape, generator=g) * (0.3 if key.endswith("weight") else 0.1)


@pytest.fixture(scope="module")
def ref():
    r = np.load(ANCHOR / "reference_io.npz")
    return {k: torch.from_numpy(r[k]) for k in r.files}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("aydin") / "cow_tiny.vgan"
    path = import_aydin2024(MODEL, out, truncation_mean_samples=N_MEAN)
    assert path == out
    return out


def _copy_with(tmp_path: Path, edit=None, config_edit=None) -> Path:
    """Their checkpoint folder in tmp_path, with the state dict and/or config edited."""
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    sd = dict(torch.load(MODEL, map_location="cpu", weights_only=True)["GAN"])
    if edit is not None:
        edit(sd)
    torch.save({"GAN": sd}, folder / "model_1.pt")
    cfg = json.loads((ANCHOR / ".config.json").read_text())
    if config_edit is not None:
        config_edit(cfg)
    (folder / ".config.json").write_text(json.dumps(cfg))
    return folder / "model_1.pt"


# -- exactness -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_direct_model_reproduces_reference_output(ref, fused):
    G, info = build_aydin2024(MODEL, output_layout="authors", truncation_mean_samples=N_MEAN)
    assert info["fmap_inferred"] and "fmap_max" in info["fmap_note"]
    G.synthesis.fused_modconv = fused
    with torch.no_grad():
        ws = G.mapping(ref["z"])
        assert ws.shape == (2, 5, 512)
        out = G.synthesis(ws, noise=ref["noise"])
    assert out.shape == ref["output"].shape == (2, 1, 32, 64, 64)
    err = float((out - ref["output"]).abs().max())
    assert err <= TOL, f"max abs error {err:.3g} (fused={fused})"


def test_reference_forward_is_their_output(ref):
    sd = torch.load(MODEL, map_location="cpu", weights_only=True)["GAN"]
    assert float((reference_forward(sd, ref["z"], ref["noise"]) - ref["output"]).abs().max()) <= TOL


@pytest.mark.slow
def test_noise_path_matches_reference_forward(tmp_path, ref):
    # the fixture's noise scales are zero (their initialisation), so the noise crop is checked here
    src = _copy_with(tmp_path, with_noise_weights)
    sd = torch.load(src, map_location="cpu", weights_only=True)["GAN"]
    want = reference_forward(sd, ref["z"], ref["noise"])
    assert float((want - ref["output"]).abs().max()) > 1e-2          # the noise does change the output
    for fused in (True, False):
        G, _ = build_aydin2024(src, output_layout="authors", truncation_mean_samples=8)
        G.synthesis.fused_modconv = fused
        with torch.no_grad():
            got = G(ref["z"], noise=ref["noise"])
        assert float((got - want).abs().max()) <= TOL, f"fused={fused}"
    out = import_aydin2024(src, tmp_path / "noisy.vgan", truncation_mean_samples=8)
    G = load_generator(out).generator
    with torch.no_grad():
        assert float((G(ref["z"], noise=ref["noise"]) - want.transpose(-1, -2)).abs().max()) <= TOL


@pytest.mark.slow
def test_round_trip_through_vgan_reproduces_reference_output(imported, ref):
    loaded = load_generator(imported)
    G, cfg = loaded.generator, loaded.config
    assert cfg["family"] == FAMILY and cfg["output_shape"] == [32, 64, 64]
    with torch.no_grad():
        out = G(ref["z"], noise=ref["noise"])              # mapping + synthesis, ψ = 1
    # stored layout 'itk': the array is (z, y, x); their tensor is (z, x, y)
    err = float((out - ref["output"].transpose(-1, -2)).abs().max())
    assert err <= TOL, f"max abs error {err:.3g} after save/load"
    G.synthesis.output_layout = "authors"
    with torch.no_grad():
        assert float((G(ref["z"], noise=ref["noise"]) - ref["output"]).abs().max()) <= TOL


def test_converted_checkpoint_records_provenance_licence_and_fmap(imported):
    blob = load_checkpoint(imported)
    prov, cfg = blob["provenance"], blob["config"]
    assert prov["source"]["format"] == "aydin2024-stylegan"
    assert prov["source"]["config"]["image_size"] == 64 and prov["source"]["config"]["lr_mlp"] == 0.1
    assert "MIT" in prov["license"] and "request" in prov["license"]
    assert prov["fmap_max"]["inferred"] is True and "tensor shapes" in prov["fmap_max"]["how"]
    assert cfg["architecture"]["fmap_max"] == 32 and cfg["architecture"]["lr_mlp"] == 0.1
    assert cfg["intensity"]["network_range"] == [0.0, 1.0] and cfg["intensity"]["clip"] is False
    assert cfg["spacing"] == [0.297, 0.297, 0.6]
    assert set(blob["tensors"]) == {"G_ema"} and "mapping.w_avg" in blob["tensors"]["G_ema"]
    card = card_path(imported).read_text()
    assert "Aydin" in card and "MIT" in card and "aydin2024-stylegan3d" in card


def test_fmap_max_is_inferred_when_capped_and_checked_when_given(tmp_path, ref):
    # fmap_max given explicitly and consistent: same network, same output
    G, info = build_aydin2024(MODEL, fmap_max=512, output_layout="authors", truncation_mean_samples=8)
    assert not info["fmap_inferred"]
    with torch.no_grad():
        assert float((G.synthesis(G.mapping(ref["z"]), noise=ref["noise"]) - ref["output"]).abs().max()) <= TOL
    # a cap that would change the channel counts is refused with the shape mismatches listed
    with pytest.raises(InputFileError, match=r"shape mismatches .*GE\.initial_block \(1, 32, 4, 4, 4\) vs \(1, 16, 4, 4, 4\)"):
        build_aydin2024(MODEL, fmap_max=16, truncation_mean_samples=8)


# -- refusals ------------------------------------------------------------------------------------------------
def test_missing_key_is_listed(tmp_path):
    src = _copy_with(tmp_path, lambda sd: sd.pop("GE.blocks.2.conv1.weight"))
    with pytest.raises(InputFileError, match=r"missing keys: GE\.blocks\.2\.conv1\.weight") as exc:
        import_aydin2024(src, tmp_path / "x.vgan", truncation_mean_samples=8)
    assert str(src) in str(exc.value) and not (tmp_path / "x.vgan").exists()


def test_renamed_key_is_listed_as_missing_and_unexpected(tmp_path):
    def rename(sd):
        sd["GE.blocks.1.to_style_1.weight"] = sd.pop("GE.blocks.1.to_style1.weight")

    src = _copy_with(tmp_path, rename)
    with pytest.raises(InputFileError) as exc:
        import_aydin2024(src, tmp_path / "x.vgan", truncation_mean_samples=8)
    msg = str(exc.value)
    assert "missing keys: GE.blocks.1.to_style1.weight" in msg
    assert "unexpected keys: GE.blocks.1.to_style_1.weight" in msg


def test_reshaped_tensor_is_listed(tmp_path):
    def reshape(sd):
        sd["GE.blocks.3.conv2.weight"] = torch.zeros(4, 4, 1, 3, 3)

    src = _copy_with(tmp_path, reshape)
    with pytest.raises(InputFileError, match=r"shape mismatches \(file vs expected\): "
                                             r"GE\.blocks\.3\.conv2\.weight \(4, 4, 1, 3, 3\) vs \(4, 4, 3, 3, 3\)"):
        import_aydin2024(src, tmp_path / "x.vgan", truncation_mean_samples=8)


def test_checkpoint_of_another_size_lists_every_difference(tmp_path):
    # the config says image_size 128: one more block is expected, and the 32-channel constant reads as a
    # cap (fmap_max 32), so the later blocks expect twice the channels they have
    src = _copy_with(tmp_path, config_edit=lambda c: c.update(image_size=128))
    with pytest.raises(InputFileError) as exc:
        import_aydin2024(src, tmp_path / "x.vgan", truncation_mean_samples=8)
    msg = str(exc.value)
    assert "missing keys: GE.blocks.4.to_grayscale.upsample.1.f, GE.blocks.5.to_style1.weight" in msg
    assert "(14 in all)" in msg
    assert "GE.blocks.1.conv1.weight (16, 32, 3, 3, 3) vs (32, 32, 3, 3, 3)" in msg
    assert "image_size 128" in msg and "fmap_max 32" in msg and "--config" in msg


def test_non_ema_tensors_are_ignored_and_foreign_files_refused(tmp_path):
    def add_training_nets(sd):
        for k in [k for k in sd if k.startswith(("SE.", "GE."))]:
            sd[k[0] + k[2:]] = sd[k].clone() * 0   # S.*, G.* (non-EMA copies)
        sd["D.final_conv.weight"] = torch.zeros(2, 2, 3, 3, 3)
        sd["D_aug.D.final_conv.weight"] = torch.zeros(2, 2, 3, 3, 3)

    src = _copy_with(tmp_path, add_training_nets)
    out = import_aydin2024(src, tmp_path / "full.vgan", truncation_mean_samples=8)
    ignored = load_checkpoint(out)["provenance"]["tensors_ignored"]
    assert ignored["S"] == 16 and ignored["D"] == 1 and ignored["D_aug"] == 1 and ignored["G"] > 50

    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(InputFileError, match=r"expected \{'GAN': state_dict\}"):
        import_aydin2024(plain, tmp_path / "y.vgan", config=ANCHOR / ".config.json")
    with pytest.raises(InputFileError, match="--config"):
        import_aydin2024(MODEL, tmp_path / "y.vgan", config=tmp_path / "nope.json")
    noconst = _copy_with(tmp_path / "nc", config_edit=lambda c: c.update(no_const=True))
    with pytest.raises(InputFileError, match="no_const"):
        import_aydin2024(noconst, tmp_path / "y.vgan")


def test_checkpoint_without_config_beside_it_needs_config_argument(tmp_path):
    lone = tmp_path / "model_7.pt"
    shutil.copyfile(MODEL, lone)
    with pytest.raises(InputFileError, match=r"\.config\.json was not found.*--config"):
        import_aydin2024(lone, tmp_path / "z.vgan")
    out = import_model("aydin2024-stylegan", lone, tmp_path / "z.vgan", config=ANCHOR / ".config.json",
                       fmap_max=None, reference_image=None, truncation_mean_samples=8)
    assert load_checkpoint(out)["config"]["family"] == FAMILY


# -- registry ------------------------------------------------------------------------------------------------
def test_format_and_family_are_registered():
    assert IMPORTERS["aydin2024-stylegan"] is import_aydin2024
    code = ("import VolumetricGANLib.networks as n, VolumetricGANLib.checkpoint as c; "
            f"print({FAMILY!r} in n.FAMILIES)")
    env_path = [str(REPO / "VolumetricGAN"), str(REPO / "MorphometryLogic")]
    res = subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = {env_path!r}; {code}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "True", "VolumetricGANLib.networks does not import the aydin2024 family"


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(VolGANError, match="fmap-max"):
        import_aydin2024(MODEL, tmp_path / "a.vgan", fmap_max=0)
    with pytest.raises(VolGANError, match="depth"):
        import_aydin2024(MODEL, tmp_path / "a.vgan", depth=48)
    with pytest.raises(VolGANError, match="spacing"):
        import_aydin2024(MODEL, tmp_path / "a.vgan", spacing=(0.3, -1, 0.6))
    with pytest.raises(VolGANError, match="either"):
        import_aydin2024(MODEL, tmp_path / "a.vgan", spacing=(0.3, 0.3, 0.6), reference_image=tmp_path / "r.nii.gz")
    assert not (tmp_path / "a.vgan").exists()
