"""VolumetricGAN's MRML-level logic on a real (slicer-core) scene: built-in phantoms as nodes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from VolGANCore import TOPCOW13, VolGANError, mrml

from tiny_arch import tiny_stylegan_g


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

    arch = tiny_stylegan_g([4, 8, 8], [1, 2, 2], width=8, z_dim=8, mapping_layers=1)
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_invert_a_volume_node(headless, tiny_checkpoint):
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    logic = VolumetricGANSceneLogic(headless.scene)
    target = logic.generateVolumes(tiny_checkpoint, "sample", n=1, seed=9, device="cpu")["volumes"][0]
    node, info = logic.invertVolume(tiny_checkpoint, target, steps=30, device="cpu")
    assert info["space"] == "w+" and info["mse_network"] < info["mse_network_start"]
    assert mrml.node_to_volume(node).same_geometry(mrml.node_to_volume(target))
    assert "psnr_db" in node.GetAttribute("VolumetricGAN.Inversion")


# -- steering, simulate change and the model catalogue -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bone_checkpoint(tmp_path_factory):
    """A randomly initialised progressive GAN of 16³ spongiosa patches (fast to steer on a CPU)."""
    import torch

    from VolumetricGANLib.checkpoint import make_config, save_checkpoint
    from VolumetricGANLib.networks import build_generator

    torch.manual_seed(0)
    arch = dict(max_res=2, nch=1)
    G = build_generator("pgan-3d", arch)
    cfg = make_config("pgan-3d", arch, spacing=(0.2, 0.2, 0.2), latent="hypersphere", anatomy="spongiosa",
                      name="tinybone", defaults={"bone_threshold": 225.0},
                      intensity={"network_range": [-1, 1], "physical_range": [-350, 1100], "units": "density"})
    return save_checkpoint(tmp_path_factory.mktemp("bone") / "tinybone.vgan", cfg, G_ema=G)


def _exact(node, threshold, names):
    from MorphometryLib import bone_morphometry
    from VolumetricGANLib.steer import STEERABLE

    vals = bone_morphometry(mrml.node_to_volume(node), threshold=threshold,
                            parameters=sorted({"BV/TV", *names} - {"DA"} | ({"DA.ST"} if "DA" in names else set())))
    return {n: vals[STEERABLE[n][1]] for n in names}


def test_steering_units_are_the_ones_morphometry_measures_in():
    from VolumetricGANLib.steer import STEERABLE
    from VolumetricGANSceneLogic import STEERING_UNITS

    assert set(STEERING_UNITS) == set(STEERABLE)
    for name, (_proxy, exact_key) in STEERABLE.items():  # the units we print are the ones MorphometryLib measures in
        unit = STEERING_UNITS[name]
        assert (f"[{unit}]" in exact_key) if unit else ("[" not in exact_key)


@pytest.mark.slow
def test_steer_volumes_into_nodes_table_and_charts(headless, tiny_bone_checkpoint):
    from VolumetricGANLib.generate import generate
    from VolumetricGANSceneLogic import LATENT_ATTRIBUTE, VolumetricGANSceneLogic

    logic = VolumetricGANSceneLogic(headless.scene)
    out = logic.steerVolumes(tiny_bone_checkpoint, {"BV/TV": 0.01, "Tb.Th [mm]": 0.7}, n=2, seed=3, steps=4,
                             checkEvery=2, device="cpu", namePrefix="st")
    info = out["info"]
    assert info["parameters"] == ["BV/TV", "Tb.Th"] and 0.0 <= info["success_rate"] <= 1.0
    assert any("BV/TV" in w and "clamped" in w for w in info["warnings"])  # 0.01 is far below this model's range
    assert [v.GetName() for v in out["volumes"]] == ["st-0", "st-1"]
    rows = mrml.rows_from_table(out["table"])
    assert len(rows) == 2
    for col in ("sample", "volume", "success", "BV/TV target", "BV/TV start", "BV/TV proxy", "BV/TV exact",
                "Tb.Th target [mm]", "Tb.Th start [mm]", "Tb.Th proxy [mm]", "Tb.Th exact [mm]",
                "Tb.Th within tolerance"):
        assert col in rows[0], col
    assert rows[0]["BV/TV target"] > 0.01  # clamped into the model's range
    model = logic.loadModel(tiny_bone_checkpoint, "cpu")
    for node, row in zip(out["volumes"], rows):
        vol = mrml.node_to_volume(node)
        assert vol.shape == (16, 16, 16) and vol.spacing == pytest.approx((0.2, 0.2, 0.2))
        exact = _exact(node, info["threshold"], ["BV/TV", "Tb.Th"])
        assert row["BV/TV exact"] == pytest.approx(exact["BV/TV"], rel=1e-6)
        assert row["Tb.Th exact [mm]"] == pytest.approx(exact["Tb.Th"], rel=1e-6)
        z = np.array([float(v) for v in node.GetAttribute(LATENT_ATTRIBUTE).split(",")], np.float32)
        again = generate(model, latents=z[None], device="cpu").volumes[0].array
        assert np.allclose(again, vol.array, atol=1e-2)  # the stored latent reproduces the steered sample
    chart = out["charts"]["Tb.Th"]
    assert chart.GetNumberOfPlotSeriesNodes() == 4  # exact + target for each of the 2 samples
    traj = mrml.rows_from_table(out["trajectoryTable"])
    assert [r["check"] for r in traj] == [0, 1, 2]
    assert traj[-1]["Tb.Th exact [mm] sample 1"] == pytest.approx(rows[1]["Tb.Th exact [mm]"], rel=1e-6)


@pytest.mark.slow
def test_simulate_change_reuses_the_latent_of_a_generated_node(headless, tiny_bone_checkpoint, monkeypatch):
    import VolumetricGANLib.invert as inv
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    logic = VolumetricGANSceneLogic(headless.scene)
    node = logic.generateVolumes(tiny_bone_checkpoint, "sample", n=1, seed=4, device="cpu", name="b")["volumes"][0]

    def no_inversion(*a, **k):
        raise AssertionError("a generated node must not be inverted")

    monkeypatch.setattr(inv, "invert", no_inversion)
    out = logic.simulateChange(tiny_bone_checkpoint, node, {"BV/TV": -10, "Tb.Th": "0%"}, steps=4, checkEvery=2,
                               device="cpu")
    assert out["info"]["start"]["from"] == "latent"
    assert out["volume"].GetName() == "b sample 4-0 BV/TV -10%"
    assert out["info"]["keep"] == ["TMD", "Tb.Th"] and out["info"]["parameters"] == ["BV/TV", "TMD", "Tb.Th"]
    rows = {r["parameter"]: r for r in mrml.rows_from_table(out["table"])}
    before = _exact(node, out["info"]["threshold"], ["BV/TV", "TMD"])
    assert rows["BV/TV"]["before (exact)"] == pytest.approx(before["BV/TV"], rel=1e-5)
    assert rows["TMD"]["before (exact)"] == pytest.approx(before["TMD"], rel=1e-5)
    after = _exact(out["volume"], out["info"]["threshold"], ["BV/TV"])["BV/TV"]
    assert rows["BV/TV"]["after (exact)"] == pytest.approx(after, rel=1e-6)
    assert rows["BV/TV"]["change %"] == pytest.approx(100 * (after / before["BV/TV"] - 1), rel=1e-5)
    assert rows["BV/TV"]["target change %"] == pytest.approx(-10) and rows["TMD"]["target change %"] == 0


@pytest.mark.slow
def test_simulate_change_inverts_a_foreign_or_edited_volume(headless, tiny_bone_checkpoint):
    from VolumetricGANSceneLogic import LATENT_ATTRIBUTE, VolumetricGANSceneLogic

    logic = VolumetricGANSceneLogic(headless.scene)
    node = logic.generateVolumes(tiny_bone_checkpoint, "sample", n=1, seed=5, device="cpu")["volumes"][0]
    foreign = mrml.volume_to_node(mrml.node_to_volume(node), headless.scene, name="patch")  # no attributes
    out = logic.simulateChange(tiny_bone_checkpoint, foreign, {"BV/TV": "-20%"}, keep=(), steps=2, checkEvery=2,
                               invertSteps=3, device="cpu")
    start = out["info"]["start"]
    assert start["from"] == "inversion" and "not generated by this module" in start["reason"]
    assert "psnr_db" in start["inversion"] and out["volume"].GetName() == "patch BV/TV -20%"
    assert out["volume"].GetAttribute(LATENT_ATTRIBUTE)  # the result can be changed further without inversion
    arr = mrml.node_to_volume(node)
    mrml.volume_to_node(arr.with_array(arr.array + 200.0), headless.scene, node=node)  # edited after generation
    edited = logic.simulateChange(tiny_bone_checkpoint, node, {"BV/TV": 10}, keep=(), steps=1, checkEvery=1,
                                  invertSteps=2, device="cpu")
    assert edited["info"]["start"]["from"] == "inversion" and "no longer matches" in edited["info"]["start"]["reason"]


@pytest.mark.slow
def test_steering_refuses_bad_requests_and_leaves_the_scene_clean(headless, tiny_bone_checkpoint, tmp_path,
                                                                  monkeypatch):
    import VolumetricGANSceneLogic as sl
    from VolumetricGANLib.checkpoint import make_config, save_checkpoint
    from VolumetricGANLib.networks import build_generator

    logic = sl.VolumetricGANSceneLogic(headless.scene)
    with pytest.raises(VolGANError, match="steering parameter 'SMI'"):
        logic.steerVolumes(tiny_bone_checkpoint, {"SMI": 1.0})
    with pytest.raises(VolGANError, match="positive"):
        logic.steerVolumes(tiny_bone_checkpoint, {"Tb.Th": -0.1})
    with pytest.raises(VolGANError, match="tolerance"):
        logic.steerVolumes(tiny_bone_checkpoint, {"BV/TV": 0.2}, tolerance=5)
    with pytest.raises(VolGANError, match="above -100"):
        logic.simulateChange(tiny_bone_checkpoint, None, {"BV/TV": -120})
    with pytest.raises(VolGANError, match="every change is 0"):
        logic.simulateChange(tiny_bone_checkpoint, None, {"BV/TV": 0})
    arch = dict(max_res=1, nch=1)
    cfg = make_config("pgan-3d", arch, spacing=(0.3,) * 3, anatomy="circle-of-willis")
    cow = save_checkpoint(tmp_path / "cow.vgan", cfg, G_ema=build_generator("pgan-3d", arch), write_card=False)
    with pytest.raises(VolGANError, match="'circle-of-willis' model"):
        logic.steerVolumes(cow, {"BV/TV": 0.2}, device="cpu")
    count = headless.scene.GetNumberOfNodes()

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sl.mrml, "table_from_rows", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        logic.steerVolumes(tiny_bone_checkpoint, {"BV/TV": 0.6}, n=1, steps=1, device="cpu")
    assert headless.scene.GetNumberOfNodes() == count  # the volumes made before the failure were removed


def test_shipped_models_lists_vgan_files_with_cards_and_families(headless, tiny_bone_checkpoint, tiny_checkpoint,
                                                                 tmp_path):
    import shutil

    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    logic = VolumetricGANSceneLogic(headless.scene)
    shutil.copy(tiny_bone_checkpoint, tmp_path / "bone.vgan")
    shutil.copy(tiny_bone_checkpoint.with_name("tinybone.card.md"), tmp_path / "bone.card.md")
    shutil.copy(tiny_checkpoint, tmp_path / "cow.vgan")  # no card beside it
    (tmp_path / "broken.vgan").write_bytes(b"not a checkpoint")
    (tmp_path / "notes.txt").write_text("ignored")
    models = logic.shippedModels(tmp_path)
    assert sorted(models) == ["bone", "broken", "cow"]
    bone, cow = models["bone"], models["cow"]
    assert bone["path"] == tmp_path / "bone.vgan" and bone["card"] == tmp_path / "bone.card.md"
    assert bone["family"] == "pgan-3d" and bone["anatomy"] == "spongiosa" and bone["steerable"]
    assert bone["outputShape"] == (16, 16, 16) and bone["spacing"] == pytest.approx((0.2, 0.2, 0.2))
    assert cow["card"] is None and cow["family"] == "stylegan2-3d" and not cow["steerable"] and cow["styleControls"]
    assert "is not a PyTorch checkpoint" in models["broken"]["error"] and not models["broken"]["steerable"]
    assert logic.shippedModels(tmp_path / "missing") == {}


def test_shipped_sample_with_labels_comes_from_the_joint_model(headless, tmp_path):
    """The shipped CoW models side by side: the plain entry samples the image-only model, the labelled one the joint
    model, whose generated labels land as a TopCoW segmentation node beside the volume."""
    import shutil
    from pathlib import Path

    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    shipped = Path(__file__).resolve().parents[1] / "VolumetricGAN" / "Resources" / "Models"
    for name in ("tiny-cow", "tiny-cow-labels"):
        shutil.copy(shipped / f"{name}.vgan", tmp_path / f"{name}.vgan")
    logic = VolumetricGANSceneLogic(headless.scene)
    plain, joint = (logic.shippedModelFor("circle-of-willis", tmp_path, labels=x) for x in (False, True))
    assert (plain["name"], plain["labels"], joint["name"], joint["labels"]) == ("tiny-cow", False,
                                                                               "tiny-cow-labels", True)
    assert joint["conditional"] and joint["labelScheme"] == "topcow13"
    node = logic.loadShippedSample("circle-of-willis", seed=2, folders=tmp_path, labels=True)
    assert mrml.node_to_volume(node).shape == (16, 64, 64)
    segs = headless.scene.GetNodesByClass("vtkMRMLSegmentationNode")
    assert segs.GetNumberOfItems() == 1
    assert segs.GetItemAsObject(0).GetSegmentation().GetNumberOfSegments() >= 5   # arteries of one sample


def test_shipped_sample_prefers_the_full_model_and_says_where_none_is(headless, tiny_bone_checkpoint, tmp_path):
    import shutil

    from VolumetricGANSceneLogic import CHECKPOINT_ATTRIBUTE, VolumetricGANSceneLogic

    logic = VolumetricGANSceneLogic(headless.scene)
    shutil.copy(tiny_bone_checkpoint, tmp_path / "tiny-spongiosa.vgan")
    shutil.copy(tiny_bone_checkpoint, tmp_path / "spongiosa-pgan.vgan")
    assert logic.shippedModelFor("spongiosa", tmp_path)["path"] == tmp_path / "spongiosa-pgan.vgan"
    node = logic.loadShippedSample("spongiosa", seed=4, folders=tmp_path)
    assert node.GetAttribute(CHECKPOINT_ATTRIBUTE) == str((tmp_path / "spongiosa-pgan.vgan").resolve())
    expected = logic.generateVolumes(tmp_path / "spongiosa-pgan.vgan", n=1, seed=4, device="cpu")["volumes"][0]
    np.testing.assert_array_equal(mrml.node_to_volume(node).array, mrml.node_to_volume(expected).array)
    with pytest.raises(VolGANError, match=f"no shipped circle-of-willis model in {tmp_path}"):
        logic.loadShippedSample("circle-of-willis", folders=tmp_path)
    with pytest.raises(VolGANError, match=f"no shipped spongiosa model with labels in {tmp_path}"):
        logic.shippedModelFor("spongiosa", tmp_path, labels=True)
