"""VolumetricGAN's MRML-level logic on a real (slicer-core) scene: built-in phantoms as nodes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from VolGANCore import TOPCOW13, VolGANError, mrml


def test_cow_phantom_becomes_volume_and_named_segmentation(headless):
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    image, seg, params = VolumetricGANSceneLogic(headless.scene).loadPhantom("cow", seed=2)
    vol = mrml.node_to_volume(image)
    assert vol.shape == (32, 128, 128)
    assert json.loads(image.GetAttribute("VolumetricGAN.PhantomParameters"))["seed"] == 2
    segmentation = seg.GetSegmentation()
    names = {segmentation.GetNthSegment(k).GetName() for k in range(segmentation.GetNumberOfSegments())}
    expected = {TOPCOW13.name_of(i) for i in params["classes_in_label"]}
    assert names == expected and {"BA", "L-ICA", "R-ICA"} <= names


def test_bone_phantom_becomes_volume_and_labelmap(headless):
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    image, mask, params = VolumetricGANSceneLogic(headless.scene).loadPhantom("bone", seed=1)
    assert mask.IsA("vtkMRMLLabelMapVolumeNode")
    m = mrml.node_to_volume(mask).array
    assert m.mean() == pytest.approx(params["measured"]["bvtv"], abs=1e-6)
    assert image.GetSpacing() == pytest.approx((0.164, 0.164, 0.164))


def test_unknown_kind(headless):
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    with pytest.raises(VolGANError, match="phantom kind 'lung'"):
        VolumetricGANSceneLogic(headless.scene).loadPhantom("lung")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from VolumetricGANLib.checkpoint import make_config, save_checkpoint
    from VolumetricGANLib.networks import build_generator

    arch = dict(z_dim=8, w_dim=8, output_shape=[4, 8, 8], base_shape=[1, 2, 2], channel_base=8, channel_max=8,
                mapping_layers=1)
    torch.manual_seed(0)
    G = build_generator("stylegan2-3d", arch)
    with torch.no_grad():  # a fresh StyleGAN2 starts with zero noise strengths: make noise matter, as after training
        for name, p in G.named_parameters():
            if "noise" in name:
                p.fill_(0.5)
    cfg = make_config("stylegan2-3d", arch, spacing=(0.3, 0.3, 0.6), name="tinycow",
                      intensity={"network_range": [-1, 1], "physical_range": [0, 1], "units": "normalised TOF"})
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.vgan", cfg, G_ema=G)


def test_generate_samples_into_volume_nodes_reproducibly(headless, tiny_checkpoint):
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    logic = VolumetricGANSceneLogic(headless.scene)
    a = logic.generateVolumes(tiny_checkpoint, "sample", n=3, seed=5, device="cpu")
    b = logic.generateVolumes(tiny_checkpoint, "sample", n=3, seed=5, device="cpu")
    c = logic.generateVolumes(tiny_checkpoint, "sample", n=3, seed=6, device="cpu")
    assert len(a["volumes"]) == 3 and a["sequence"] is None
    first = mrml.node_to_volume(a["volumes"][0])
    assert first.shape == (4, 8, 8) and first.spacing == pytest.approx((0.3, 0.3, 0.6))
    assert np.array_equal(first.array, mrml.node_to_volume(b["volumes"][0]).array)
    assert not np.array_equal(first.array, mrml.node_to_volume(c["volumes"][0]).array)
    rows = mrml.rows_from_table(a["table"])
    assert [r["index"] for r in rows] == [0, 1, 2] and rows[0]["seed"] == 5 and rows[0]["units"] == "normalised TOF"


def test_interpolation_is_a_browsable_sequence(headless, tiny_checkpoint):
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    out = VolumetricGANSceneLogic(headless.scene).generateVolumes(tiny_checkpoint, "interpolate", seed=1, seedB=2,
                                                                  steps=5, device="cpu")
    seq = out["sequence"]
    assert seq.GetNumberOfDataNodes() == 5 and seq.GetNthIndexValue(4) == "1"
    first = mrml.node_to_volume(seq.GetNthDataNode(0)).array
    last = mrml.node_to_volume(seq.GetNthDataNode(4)).array
    middle = mrml.node_to_volume(seq.GetNthDataNode(2)).array
    assert not np.array_equal(first, last)
    assert np.abs(middle - first).max() > 0 and np.abs(middle - last).max() > 0


def test_variation_and_mix_and_bad_mode(headless, tiny_checkpoint):
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    logic = VolumetricGANSceneLogic(headless.scene)
    var = logic.generateVolumes(tiny_checkpoint, "variation", n=2, seed=3, device="cpu")
    a, b = (mrml.node_to_volume(n).array for n in var["volumes"])
    assert not np.array_equal(a, b)
    mixed = logic.generateVolumes(tiny_checkpoint, "mix", seed=3, seedB=4, cutoff=1, device="cpu")
    assert len(mixed["volumes"]) == 1
    with pytest.raises(VolGANError, match="generation mode 'dream'"):
        logic.generateVolumes(tiny_checkpoint, "dream")


def test_import_published_spongiosa_model_then_generate(headless, tmp_path):
    from conftest import shared_file
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    src = shared_file("anchors", "spongiosa_g_net.pth")
    logic = VolumetricGANSceneLogic(headless.scene)
    out = logic.importPublishedModel(src, modelsFolder=tmp_path)
    assert out.name == "miccai2020-pgan-spongiosa_g_net.vgan" and out.exists()
    assert (tmp_path / "miccai2020-pgan-spongiosa_g_net.card.md").exists()
    res = logic.generateVolumes(out, "sample", n=2, seed=0, device="cpu")
    vol = mrml.node_to_volume(res["volumes"][0])
    assert vol.shape == (32, 32, 32) and vol.spacing == pytest.approx((0.164,) * 3)
    assert -350 <= vol.array.min() and vol.array.max() <= 1100


def test_import_refuses_unknown_files(headless, tmp_path):
    import torch

    from VolGANCore import InputFileError
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InputFileError, match="other.pth: not a published generator format"):
        VolumetricGANSceneLogic(headless.scene).importPublishedModel(tmp_path / "other.pth", modelsFolder=tmp_path)


def test_import_published_cow_model_in_the_panel_logic(headless, tmp_path):
    """The panel's "Import published model…" recognises the CoW authors' format and keeps its provenance."""
    from conftest import shared_file
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    src = shared_file("anchors", "cow_stylegan_c24_tiny", "model_1.pt")
    logic = VolumetricGANSceneLogic(headless.scene)
    out = logic.importPublishedModel(src, modelsFolder=tmp_path)
    assert out.name == "aydin2024-stylegan-model_1.vgan"
    card = (tmp_path / "aydin2024-stylegan-model_1.card.md").read_text()
    assert "MIT" in card and "Aydin" in card
    res = logic.generateVolumes(out, "sample", n=1, seed=0, device="cpu")
    vol = mrml.node_to_volume(res["volumes"][0])
    assert vol.shape == (32, 64, 64) and vol.spacing == pytest.approx((0.297, 0.297, 0.6))


def test_cli_import_of_the_cow_format_and_option_checks(tmp_path):
    import subprocess
    import sys

    from conftest import shared_file

    src = shared_file("anchors", "cow_stylegan_c24_tiny", "model_1.pt")
    run = lambda *a: subprocess.run([sys.executable, "-m", "VolGANCore.cli", *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    ok = run("import", "--format", "aydin2024-stylegan", str(src), "--out", str(tmp_path / "cow.vgan"))
    assert ok.returncode == 0, ok.stderr
    bad = run("import", "--format", "miccai2020-pgan", str(src), "--out", str(tmp_path / "x.vgan"), "--fmap-max", "512")
    assert bad.returncode == 2 and "--fmap-max: only for --format aydin2024-stylegan" in bad.stderr


def test_invert_a_volume_node(headless, tiny_checkpoint):
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    logic = VolumetricGANSceneLogic(headless.scene)
    target = logic.generateVolumes(tiny_checkpoint, "sample", n=1, seed=9, device="cpu")["volumes"][0]
    node, info = logic.invertVolume(tiny_checkpoint, target, steps=30, device="cpu")
    assert info["space"] == "w+" and info["mse_network"] < info["mse_network_start"]
    assert mrml.node_to_volume(node).same_geometry(mrml.node_to_volume(target))
    assert "psnr_db" in node.GetAttribute("VolumetricGAN.Inversion")
