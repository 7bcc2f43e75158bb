"""`volgan import --format miccai2020-pgan`: the imported spongiosa generator reproduces the published one.

The reference below is an independent re-implementation of the published forward pass written from the
anchor README (../shared/anchors/README.md), with plain torch.nn.functional calls on the raw state dict:
z ∈ R³² on the unit hypersphere, PixelNorm, WScale convs (input × sqrt(gain / fan_in)), LeakyReLU(0.2),
nearest ×2 up-sampling, tanh of the last toRGB, and the map (y + 1)·725 − 350 to the paper's units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from VolGANCore.cli import main as volgan_main
from VolGANCore.errors import InputFileError
from VolumetricGANLib.checkpoint import card_path, load_checkpoint, load_generator
from VolumetricGANLib.generate import generate, sample_z
from VolumetricGANLib.importers import MICCAI2020_SHA256, import_miccai2020_pgan

ANCHOR = Path(__file__).resolve().parents[1].parent / "shared" / "anchors" / "spongiosa_g_net.pth"
needs_anchor = pytest.mark.skipif(not ANCHOR.is_file(), reason=f"published weights not found at {ANCHOR}")


def reference_forward(sd: dict, z: torch.Tensor) -> torch.Tensor:
    """The published generator, written from its description (not from VolumetricGANLib)."""

    def pn(x):
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)

    def wsconv(x, key, padding, gain, act):
        w, b = sd[key + ".conv.weight"], sd[key + ".conv.bias"]
        x = x * (gain / w[0].numel()) ** 0.5
        x = F.conv3d(x, w, b, padding=padding)
        return pn(F.leaky_relu(x, 0.2)) if act else x

    x = pn(z.reshape(z.shape[0], 32, 1, 1, 1))
    x = wsconv(x, "blocks.0.conv0", 3, 2.0, True)
    x = wsconv(x, "blocks.0.conv1", 1, 2.0, True)
    for i in (1, 2, 3):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = wsconv(x, f"blocks.{i}.conv0", 1, 2.0, True)
        x = wsconv(x, f"blocks.{i}.conv1", 1, 2.0, True)
    return torch.tanh(wsconv(x, "toRGBs.3", 0, 1.0, False))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    if not ANCHOR.is_file():
        pytest.skip(f"published weights not found at {ANCHOR}")
    out = tmp_path_factory.mktemp("imp") / "spongiosa.vgan"
    rc = volgan_main(["--quiet", "import", "--format", "miccai2020-pgan", str(ANCHOR), "--out", str(out)])
    assert rc == 0
    return out


@needs_anchor
@pytest.mark.slow
def test_import_reproduces_published_forward_bit_for_bit(imported):
    sd = torch.load(ANCHOR, map_location="cpu", weights_only=True)
    loaded = load_generator(imported)
    G = loaded.generator
    g = torch.Generator().manual_seed(2020)
    z = torch.randn(6, 32, generator=g)
    z = z / z.norm(p=2, dim=1, keepdim=True)
    with torch.no_grad():
        ours = G(z)
        ref = reference_forward(sd, z)
    assert ours.shape == (6, 1, 32, 32, 32)
    assert torch.equal(ours, ref), f"max abs diff {float((ours - ref).abs().max())}"
    # physical units exactly as the authors' denormalize_volume: ((y + 1) * 1450 / 2) - 350
    res = generate(loaded, latents=z.numpy(), batch=6, device="cpu")
    ref_phys = (((ref + 1.0) * (1100.0 - (-350.0)) / 2.0) - 350.0)[:, 0].numpy()
    for vol, r in zip(res.volumes, ref_phys):
        assert np.array_equal(vol.array, r)
        assert vol.spacing == (0.164, 0.164, 0.164)
    assert -350 <= min(v.array.min() for v in res.volumes) and max(v.array.max() for v in res.volumes) <= 1100


@needs_anchor
def test_imported_config_units_provenance_and_card(imported):
    blob = load_checkpoint(imported)
    cfg = blob["config"]
    assert cfg["family"] == "pgan-3d" and cfg["z_dim"] == 32 and cfg["output_shape"] == [32, 32, 32]
    assert cfg["spacing"] == [0.164, 0.164, 0.164]
    assert cfg["intensity"]["physical_range"] == [-350.0, 1100.0] and "225" in cfg["intensity"]["units"]
    assert cfg["latent"]["distribution"] == "hypersphere"
    src = blob["provenance"]["source"]
    assert src["sha256"] == MICCAI2020_SHA256 and src["sha256_matches_published"] and "CC BY 4.0" in src["license"]
    assert sum(v.numel() for v in blob["tensors"]["G_ema"].values()) == 259460
    card = card_path(imported).read_text()
    assert "Iarussi" in card and "259,460" in card and "0.164" in card
    # z drawn by generate lies on the unit hypersphere
    assert torch.allclose(sample_z(5, 32, 0, "hypersphere").norm(dim=1), torch.ones(5))


def test_import_rejects_wrong_files(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(InputFileError, match="not the MICCAI 2020 progressive generator"):
        import_miccai2020_pgan(other, tmp_path / "x.vgan")
    trunc = tmp_path / "trunc.pth"
    torch.save({"blocks.0.conv0.conv.weight": torch.zeros(32, 32, 4, 4, 4),
                "toRGBs.0.conv.weight": torch.zeros(1, 32, 1, 1, 1)}, trunc)
    with pytest.raises(InputFileError, match="missing"):
        import_miccai2020_pgan(trunc, tmp_path / "x.vgan")
    assert not (tmp_path / "x.vgan").exists()
    rc = volgan_main(["--quiet", "import", "--format", "miccai2020-pgan", str(tmp_path / "nope.pth"),
                      "--out", str(tmp_path / "y.vgan")])
    assert rc == 2
