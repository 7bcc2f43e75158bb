"""VolumetricGANLib.checkpoint: self-describing safe checkpoints, clear errors, model card, resume state."""

from __future__ import annotations

import dataclasses
import os
import pickle
import random

import numpy as np
import pytest
import torch

from VolGANCore.errors import InputFileError
from VolumetricGANLib.checkpoint import (
    FORMAT_VERSION,
    capture_rng_state,
    card_path,
    load_checkpoint,
    load_discriminator,
    load_generator,
    make_config,
    restore_rng_state,
    save_checkpoint,
    to_network,
    to_physical,
)
from VolumetricGANLib.networks import StyleGAN2Discriminator, StyleGAN2Generator

from tiny_arch import tiny_stylegan_d, tiny_stylegan_g

ARCH = tiny_stylegan_g()
DARCH = tiny_stylegan_d()


def _config():
    return make_config("stylegan2-3d", ARCH, spacing=(0.3, 0.3, 0.6), discriminator=DARCH,
                       intensity={"network_range": [-1, 1], "physical_range": [0, 1000], "units": "a.u.", "clip": False},
                       anatomy="test", name="tiny")


def _models():
    torch.manual_seed(0)
    G = StyleGAN2Generator(**ARCH)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    return G, StyleGAN2Discriminator(**DARCH)


def test_round_trip_rebuilds_network_from_config(tmp_path):
    G, D = _models()
    path = save_checkpoint(tmp_path / "m.vgan", _config(), G_ema=G, G=G, D=D,
                           provenance={"data_summary": "unit test"}, metrics={"fid": np.float32(12.5)})
    assert path.is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp files left
    loaded = load_generator(path)
    G2, cfg = loaded.generator, loaded.config
    assert cfg["family"] == "stylegan2-3d" and cfg["spacing"] == [0.3, 0.3, 0.6] and cfg["z_dim"] == 16
    # a value: the file's facts are fields, the config is the stored one (nothing injected)
    assert loaded.path == str(path) and loaded.tensors == "G_ema" and loaded.device == torch.device("cpu")
    assert loaded.provenance["data_summary"] == "unit test" and loaded.metrics["fid"] == 12.5
    assert cfg == load_checkpoint(path)["config"] and not any(k.startswith("_") for k in cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.path = "elsewhere.vgan"
    assert load_generator(path, which="G").tensors == "G"
    assert not G2.training and not any(p.requires_grad for p in G2.parameters())
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(G.eval()(z), G2(z))
        assert torch.equal(G.mapping.w_avg, G2.mapping.w_avg)
    D2, _ = load_discriminator(path)
    x = torch.randn(2, 1, 8, 32, 32)
    assert torch.equal(D(x), D2(x))
    blob = load_checkpoint(path)
    assert blob["format_version"] == FORMAT_VERSION
    assert blob["metrics"]["fid"] == 12.5
    assert blob["provenance"]["data_summary"] == "unit test" and "torch_version" in blob["provenance"]
    card = card_path(path).read_text()
    assert "stylegan2-3d" in card and "8 × 32 × 32" in card and "0.3, 0.3, 0.6 mm" in card and "fid" in card


@pytest.mark.slow
def test_resume_state_round_trip(tmp_path):
    G, D = _models()
    opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99))
    G(torch.randn(2, 16)).mean().backward()
    opt.step()
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(9)
    rng = capture_rng_state()
    expect = (torch.rand(3), np.random.rand(3), random.random())
    training = {"step": 42, "opt_G": opt.state_dict(), "rng": rng}
    path = save_checkpoint(tmp_path / "r.vgan", _config(), G_ema=G, G=G, D=D, training=training)
    blob = load_checkpoint(path)
    assert blob["training"]["step"] == 42
    opt2 = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99))
    opt2.load_state_dict(blob["training"]["opt_G"])
    k = next(iter(opt.state))
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state[k]["exp_avg"])
    restore_rng_state(blob["training"]["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1]) and got[2] == expect[2]


def test_unsafe_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name, writer in (("evil.vgan", lambda p: torch.save({"format": "volgan-checkpoint", "x": Evil()}, p)),
                         ("evil.pkl", lambda p: p.write_bytes(pickle.dumps({"x": Evil()})))):
        path = tmp_path / name
        writer(path)
        with pytest.raises(InputFileError, match=r"unsafe file: .*system") as info:
            load_generator(path)
        assert str(path) in str(info.value) and "nothing in it was executed" in str(info.value)
        assert not marker.exists()


def test_not_a_checkpoint_errors(tmp_path):
    G, _ = _models()
    sd_path = tmp_path / "state.pt"
    torch.save(G.state_dict(), sd_path)
    with pytest.raises(InputFileError, match="not a volgan checkpoint"):
        load_generator(sd_path)
    pg = tmp_path / "g_net.pth"
    torch.save({"blocks.0.conv0.conv.weight": torch.zeros(1), "toRGBs.0.conv.bias": torch.zeros(1)}, pg)
    with pytest.raises(InputFileError, match="volgan import --format miccai2020-pgan"):
        load_generator(pg)
    junk = tmp_path / "junk.vgan"
    junk.write_bytes(b"definitely not torch")
    with pytest.raises(InputFileError, match="junk.vgan: is not a PyTorch checkpoint: neither a zip archive"):
        load_generator(junk)
    cut = tmp_path / "cut.vgan"                       # a checkpoint cut short (interrupted copy)
    cut.write_bytes(sd_path.read_bytes()[: sd_path.stat().st_size // 2])
    with pytest.raises(InputFileError, match="cut.vgan: is truncated or damaged: its zip archive is incomplete"):
        load_generator(cut)
    with pytest.raises(InputFileError, match="not found"):
        load_generator(tmp_path / "missing.vgan")


def test_family_shape_version_and_key_errors(tmp_path):
    G, _ = _models()
    path = save_checkpoint(tmp_path / "m.vgan", _config(), G_ema=G)
    with pytest.raises(InputFileError, match="is a 'stylegan2-3d' model, expected 'pgan-3d'"):
        load_generator(path, expect_family="pgan-3d")
    with pytest.raises(InputFileError, match=r"shape \(8, 32, 32\), expected \(32, 128, 128\)"):
        load_generator(path, expect_output_shape=(32, 128, 128))
    blob = torch.load(path, weights_only=True)
    newer = dict(blob, format_version=FORMAT_VERSION + 1)
    torch.save(newer, tmp_path / "newer.vgan")
    with pytest.raises(InputFileError, match="format version 2 is not supported.*update volgan"):
        load_generator(tmp_path / "newer.vgan")
    broken = dict(blob)
    sd = dict(blob["tensors"]["G_ema"])
    sd.pop("mapping.w_avg")
    sd["extra.weight"] = torch.zeros(1)
    sd["synthesis.blocks.0.const"] = torch.zeros(3, 2, 2, 2)
    broken["tensors"] = {"G_ema": sd}
    torch.save(broken, tmp_path / "broken.vgan")
    with pytest.raises(InputFileError) as info:
        load_generator(tmp_path / "broken.vgan")
    msg = str(info.value)
    assert "missing keys: mapping.w_avg" in msg and "unexpected keys: extra.weight" in msg
    assert "synthesis.blocks.0.const (3, 2, 2, 2) vs (16, 2, 8, 8)" in msg
    cfg_bad = dict(blob, config=dict(blob["config"], family="dcgan-9d"))
    torch.save(cfg_bad, tmp_path / "fam.vgan")
    with pytest.raises(InputFileError, match="unknown model family 'dcgan-9d'"):
        load_generator(tmp_path / "fam.vgan")


def test_save_refuses_unsafe_containers_and_wrong_tensors(tmp_path):
    G, _ = _models()
    with pytest.raises(ValueError, match="ndarray"):
        save_checkpoint(tmp_path / "a.vgan", _config(), G_ema=G, training={"x": np.zeros(3)})
    other = StyleGAN2Generator(**{**ARCH, "channel_max": 8})
    with pytest.raises(InputFileError, match="shape mismatches"):
        save_checkpoint(tmp_path / "b.vgan", _config(), G_ema=other)
    assert not (tmp_path / "a.vgan").exists() and not (tmp_path / "b.vgan").exists()


def test_intensity_mapping_inverse():
    inten = {"network_range": [-1, 1], "physical_range": [-350, 1100]}
    y = np.linspace(-1, 1, 11, dtype=np.float32)
    x = to_physical(y, inten)
    assert x[0] == -350 and x[-1] == 1100
    assert np.allclose(to_network(x, inten), y, atol=1e-6)
    with pytest.raises(InputFileError, match="spacing"):
        make_config("stylegan2-3d", ARCH, spacing=(0.3, -1, 0.6))


def test_command_line_is_a_shell_line_that_reproduces_the_command():
    import shlex

    from VolumetricGANLib.checkpoint import command_line

    argv = ["/home/u/.venv/bin/volgan", "export", "run", "--description", "a 'tiny' model", "--out", "m.vgan"]
    line = command_line(argv)
    assert line.startswith("volgan export run --description ")
    assert shlex.split(line) == ["volgan", *argv[1:]]
