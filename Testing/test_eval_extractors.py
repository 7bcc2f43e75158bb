"""Evaluation feature extractors: architectures that load the published state dicts, fallbacks, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from GANTrainerLib.evaluation import preprocess
from GANTrainerLib.evaluation.features import (MedicalNetVolumeExtractor, RandomResNet10VolumeExtractor,
                                               StatsSliceExtractor)
from GANTrainerLib.evaluation.inception import FIDInceptionV3, load_fid_inception
from GANTrainerLib.evaluation.medicalnet import MedicalNetResNet10, load_medicalnet
from GANTrainerLib.evaluation.weights import fit_state_dict
from VolGANCore.errors import InputFileError

# Names and shapes as they appear in the published files (pytorch-fid's pt_inception-2015-12-05-6726825d.pth:
# torchvision Inception3 names with the FID blocks and a 1008-way fc; MedicalNet resnet_10_23dataset.pth:
# DataParallel "module." keys, shortcut type B).
INCEPTION_KNOWN = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
MEDICALNET_KNOWN = {
    "conv1.weight": (64, 1, 7, 7, 7),
    "bn1.running_mean": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3, 3),
    "layer2.0.conv1.weight": (128, 64, 3, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1, 1),
    "layer2.0.downsample.1.running_var": (128,),
    "layer3.0.downsample.0.weight": (256, 128, 1, 1, 1),
    "layer4.0.conv2.weight": (512, 512, 3, 3, 3),
}


def _random_state(model: torch.nn.Module, seed: int, drop_counters: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            if not drop_counters:
                out[k] = torch.tensor(0)
            continue
        if k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif v.ndim >= 2:  # conv / linear weights: He scale keeps activations O(1) (no denormal slow-down)
            out[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith(".weight"):  # 1-D weights are BatchNorm scales
            out[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
    return out


@pytest.fixture(scope="module")
def inception_state():
    return _random_state(FIDInceptionV3(), 1, drop_counters=True)


def test_inception_has_the_published_names_and_shapes():
    sd = FIDInceptionV3().state_dict()
    for key, shape in INCEPTION_KNOWN.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in sd)
    n_params = sum(p.numel() for n, p in FIDInceptionV3().named_parameters() if not n.startswith("fc."))
    assert n_params == 21_785_568  # Inception-v3 trunk without the auxiliary head


def test_medicalnet_has_the_published_names_and_shapes():
    sd = MedicalNetResNet10().state_dict()
    for key, shape in MEDICALNET_KNOWN.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer1.0.downsample.0.weight" not in sd  # no projection where shapes do not change


@pytest.mark.slow
def test_inception_loads_bare_and_prefixed_state_dicts_and_computes_the_same(tmp_path, inception_state):
    ref = FIDInceptionV3(resize_input=False)  # 80² instead of 299²: same weights path, 14× fewer FLOPs
    ref.load_state_dict(inception_state, strict=False)
    x = torch.rand(2, 1, 80, 80)
    with torch.no_grad():
        want = ref(x)
    torch.save({"module." + k: v for k, v in inception_state.items()}, tmp_path / "prefixed.pth")
    net, info = load_fid_inception(tmp_path / "prefixed.pth")
    assert info["loaded"] == len(inception_state) and len(info["sha256"]) == 64 and info["prefix_stripped"]
    bare = FIDInceptionV3(resize_input=False)
    info_bare = fit_state_dict(bare, dict(inception_state), None, "pt_inception")  # the bare form, in memory
    assert info_bare["loaded"] == len(inception_state) and not info_bare["prefix_stripped"]
    net.resize_input = False
    with torch.no_grad():
        for model in (net, bare):
            got = model(x)
            assert got.shape == (2, 2048)
            torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_medicalnet_loads_wrapped_prefixed_file_and_ignores_segmentation_head(tmp_path):
    state = _random_state(MedicalNetResNet10(), 2)
    wrapped = {"state_dict": {"module." + k: v for k, v in state.items()}}
    wrapped["state_dict"]["module.conv_seg.0.weight"] = torch.zeros(512, 32, 2, 2, 2)
    torch.save(wrapped, tmp_path / "resnet_10_23dataset.pth")
    torch.save(state, tmp_path / "bare.pth")
    x = torch.randn(1, 1, 16, 24, 24)
    outs = []
    for name in ("resnet_10_23dataset.pth", "bare.pth"):
        net, info = load_medicalnet(tmp_path / name)
        torch.testing.assert_close(net.conv1.weight, state["conv1.weight"])
        with torch.no_grad():
            outs.append(net(x))
    assert info["ignored"] == [] and outs[0].shape == (1, 512)
    torch.testing.assert_close(outs[0], outs[1])
    ext = MedicalNetVolumeExtractor(tmp_path / "bare.pth")
    assert ext.name.startswith("medicalnet-resnet10-23dataset[sha256:") and not ext.fallback


def test_wrong_or_corrupt_weights_give_one_readable_error(tmp_path):
    torch.save({"state_dict": _random_state(MedicalNetResNet10(), 3)}, tmp_path / "medicalnet.pth")
    with pytest.raises(InputFileError) as err:
        load_fid_inception(tmp_path / "medicalnet.pth")
    msg = str(err.value)
    assert "medicalnet.pth" in msg and "missing key(s)" in msg and "unexpected key(s)" in msg
    assert "Conv2d_1a_3x3" in msg and "pt_inception-2015-12-05-6726825d.pth" in msg and "\n" not in msg
    bad = _random_state(MedicalNetResNet10(), 4)
    bad["layer4.0.conv2.weight"] = torch.zeros(512, 512, 1, 1, 1)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(InputFileError, match=r"shape mismatch.*layer4\.0\.conv2\.weight"):
        load_medicalnet(tmp_path / "shape.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"not a zip or pickle")
    with pytest.raises(InputFileError, match="corrupt.pth: is not a PyTorch weights file: neither a zip archive"):
        load_medicalnet(tmp_path / "corrupt.pth")
    with pytest.raises(InputFileError, match="weights file not found"):
        load_medicalnet(tmp_path / "absent.pth")


@pytest.mark.slow
def test_fallback_extractors_are_deterministic_and_labelled():
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(3, 8, 24, 24)).astype(np.float32)
    a = RandomResNet10VolumeExtractor(seed=0)
    b = RandomResNet10VolumeExtractor(seed=0)
    c = RandomResNet10VolumeExtractor(seed=1)
    fa, fb, fc = a(vols), b(vols), c(vols)
    assert fa.shape == (3, 512) and np.array_equal(fa, fb) and not np.allclose(fa, fc)
    assert np.all(np.isfinite(fa)) and fa.std() > 0
    assert a.name == "fallback-random-resnet10-seed0" and a.fallback
    s = StatsSliceExtractor()
    slices = (rng.random((5, 30, 20)) * 255).astype(np.uint8)
    f1 = s(slices)
    assert f1.shape == (5, s.dim) and np.array_equal(f1, s(slices))
    # histogram block sums to 1 and the 1×1 mean is the (resized) slice mean
    assert np.allclose(f1[:, -16:].sum(1), 1.0)
    assert np.allclose(f1[:, 0], slices.mean((1, 2)) / 255.0, atol=0.02)
    assert s.name.startswith("fallback-") and s.fallback


def test_anchor_slices_orientation_8bit_rule_and_constant_slices():
    rng = np.random.default_rng(5)
    vol = rng.normal(size=(40, 6, 9))
    vol[3] = 7.0  # a constant slice
    s = preprocess.anchor_slices_uint8(vol)
    assert s.shape == (32, 9, 6) and s.dtype == np.uint8
    k = 10
    nifti = vol.transpose(2, 1, 0)  # what nibabel returns: (i, j, k)
    sl = nifti[:, :, k]
    expect = np.floor(255 * (sl - sl.min()) / (sl.max() - sl.min())).astype(np.uint8)
    assert np.array_equal(s[k], expect)
    assert s[k].max() == 255 and s[k].min() == 0
    assert np.all(s[3] == 0)
    assert preprocess.anchor_slices_uint8(vol[:5]).shape[0] == 5


def test_medicalnet_inputs_are_deterministic_and_oriented():
    rng = np.random.default_rng(6)
    vol = rng.random((8, 10, 12)) * 100
    vol[0, 0, :4] = vol.min() - 5  # four background voxels at the minimum
    a = preprocess.anchor_medicalnet_input(vol, background="zero")
    assert a.shape == (12, 10, 8)
    assert np.array_equal(a, preprocess.anchor_medicalnet_input(vol, background="zero"))
    assert np.all(a[:4, 0, 0] == 0)
    fg = a != 0
    assert abs(a[fg].mean()) < 1e-5 and abs(a[fg].std() - 1) < 1e-4
    n1 = preprocess.anchor_medicalnet_input(vol, seed=3)  # the paper's rule (noise) is the default
    assert np.array_equal(n1, preprocess.anchor_medicalnet_input(vol, background="noise", seed=3))
    assert not np.array_equal(n1[:4, 0, 0], a[:4, 0, 0])
    assert np.all(preprocess.anchor_medicalnet_input(np.full((4, 4, 4), 3.0)) == 0)
    d = preprocess.default_medicalnet_input(vol)
    assert d.shape == (12, 10, 8) and abs(d.mean()) < 1e-5
