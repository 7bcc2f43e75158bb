"""Joint image + label generation (issue 21, first part): the label head, conditioning, label-aware
augmentation, and the CoW variant-fidelity metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from GANTrainerLib.augment import DiffAugment3D
from GANTrainerLib.evaluation.variants import conditional_accuracy, total_variation, variant_fidelity, variant_matrix
from VolGANCore.errors import VolGANError
from VolGANCore.labels import TOPCOW13
from VolumetricGANLib.labelmaps import (
    class_ids,
    decode_classes,
    discriminator_input,
    hard_labels,
    labels_to_onehot,
    lr_flip_permutation,
    parse_variant,
    split_output,
    variant_vector,
)
from VolumetricGANLib.networks.layers import ShapeError
from VolumetricGANLib.networks.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

K = len(TOPCOW13.ids) + 1
TINY = dict(z_dim=16, w_dim=16, output_shape=(4, 16, 16), base_shape=(1, 4, 4), channel_base=16, channel_max=16,
            mapping_layers=2)


def test_an_image_only_generator_is_unchanged_by_the_label_option():
    """Same seed, same weights, same output: label_classes=0 / c_dim=0 builds the network it always built."""
    torch.manual_seed(3)
    a = StyleGAN2Generator(**TINY)
    torch.manual_seed(3)
    b = StyleGAN2Generator(**TINY, label_classes=0, c_dim=0)
    assert "label_classes" not in a.config() and "c_dim" not in a.config()
    z = torch.randn(2, 16)
    assert torch.equal(a(z), b(z))
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]


@pytest.mark.parametrize("architecture", ["skip", "resnet"])
def test_the_label_head_emits_class_logits_at_full_resolution(architecture):
    G = StyleGAN2Generator(**TINY, architecture=architecture, label_classes=K)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, 1 + K, 4, 16, 16)
    img, logits = split_output(x, K)
    # the label branch is trained: logits get gradients through tolabel at every level that has one
    logits.square().mean().backward()
    heads = [n for n, p in G.named_parameters() if "tolabel" in n and p.grad is not None and p.grad.abs().sum() > 0]
    expected = len(G.synthesis.blocks) if architecture == "skip" else 1
    assert len({h.split(".tolabel")[0] for h in heads}) == expected
    rebuilt = StyleGAN2Generator(**G.config())
    assert rebuilt.label_classes == K
    labels = hard_labels(logits.detach(), "topcow13")
    assert labels.shape == (3, 4, 16, 16) and set(np.unique(labels)) <= set(class_ids("topcow13").tolist())


def test_label_classes_must_include_background():
    with pytest.raises(ValueError, match="at least 2"):
        StyleGAN2Generator(**TINY, label_classes=1)


def test_conditioning_changes_the_sample_and_is_required():
    G = StyleGAN2Generator(**TINY, label_classes=K, c_dim=8).eval()
    z = torch.randn(2, 16)
    c0, c1 = torch.zeros(2, 8), torch.ones(2, 8)
    assert not torch.allclose(G(z, c=c0), G(z, c=c1))
    assert torch.equal(G(z, c=c1), G(z, c=c1))
    with pytest.raises(ShapeError, match="conditional"):
        G(z)
    with pytest.raises(ShapeError, match="unconditional"):
        StyleGAN2Generator(**TINY).mapping(z, c=c0)


def test_the_discriminator_projects_on_the_condition():
    D = StyleGAN2Discriminator(img_shape=(4, 16, 16), base_shape=(1, 4, 4), img_channels=1 + K,
                               channel_base=16, channel_max=16, c_dim=8)
    x = torch.randn(2, 1 + K, 4, 16, 16)
    a, b = D(x, c=torch.zeros(2, 8)), D(x, c=torch.ones(2, 8))
    assert a.shape == (2, 1) and not torch.allclose(a, b)
    assert StyleGAN2Discriminator(**D.config()).c_dim == 8
    with pytest.raises(ShapeError):
        D(x)


def test_one_hot_and_discriminator_inputs_live_on_the_same_simplex():
    ids = torch.tensor(TOPCOW13.ids_with_background).view(1, 1, 1, 1, -1).expand(2, 1, 2, 3, -1)
    oh = labels_to_onehot(ids, "topcow13")
    assert oh.shape == (2, K, 2, 3, K) and torch.equal(oh.sum(1), torch.ones(2, 2, 3, K))
    assert np.array_equal(hard_labels(oh, "topcow13"), ids[:, 0].numpy())  # id 15 (3rd-A2) round-trips
    with pytest.raises(VolGANError, match=r"unknown label id\(s\) \[13\]"):
        labels_to_onehot(torch.full((1, 1, 2, 2, 2), 13), "topcow13")
    fake = discriminator_input(torch.randn(2, 1 + K, 2, 3, 4), K)
    assert torch.allclose(fake[:, 1:].sum(1), torch.ones(2, 2, 3, 4), atol=1e-6)


def test_straight_through_fakes_are_one_hot_with_the_softmax_gradient():
    torch.manual_seed(0)
    x = torch.randn(2, 1 + K, 2, 3, 4, requires_grad=True)
    st = discriminator_input(x, K, "straight-through")
    assert torch.equal(st[:, 1:].detach().round(), labels_to_onehot(torch.from_numpy(
        hard_labels(x[:, 1:].detach(), "topcow13")).unsqueeze(1).float(), "topcow13"))
    assert torch.equal(st[:, :1], x[:, :1])
    w = torch.randn(2, K, 2, 3, 4)
    (st[:, 1:] * w).sum().backward()
    grad_st = x.grad.clone()
    x.grad = None
    (discriminator_input(x, K)[:, 1:] * w).sum().backward()
    assert torch.allclose(grad_st, x.grad) and grad_st[:, 1:].abs().sum() > 0  # the softmax's gradient
    with pytest.raises(ValueError, match="straight-through"):
        discriminator_input(x, K, "argmax")


def test_foreground_first_decoding_keeps_vessels_whose_artery_is_unsure():
    # a voxel 40 % background, 30 % L-ICA, 30 % R-ICA: the argmax calls it background, foreground-first an artery
    p = torch.zeros(1, K, 1, 1, 3)
    p[0, :, 0, 0, 0] = torch.eye(K)[0] * 0.4 + (torch.eye(K)[4] + torch.eye(K)[6]) * 0.3
    p[0, :, 0, 0, 1] = torch.eye(K)[0] * 0.6 + torch.eye(K)[2] * 0.4        # background either way
    p[0, :, 0, 0, 2] = torch.eye(K)[0] * 0.2 + torch.eye(K)[13] * 0.8       # 3rd-A2 either way
    logits = p.clamp_min(1e-6).log()
    assert decode_classes(logits).flatten().tolist() == [0, 0, 13]
    assert decode_classes(logits, "foreground").flatten().tolist() == [4, 0, 13]
    assert hard_labels(logits, "topcow13", "foreground").flatten().tolist() == [4, 0, 15]
    st = discriminator_input(torch.cat([torch.zeros(1, 1, 1, 1, 3), logits], 1), K, "straight-through", "foreground")
    assert st[0, 1:, 0, 0].argmax(0).tolist() == [4, 0, 13]   # D sees what generation writes
    with pytest.raises(ValueError, match="argmax, foreground"):
        decode_classes(logits, "max")


def test_the_label_decoding_is_recorded_with_the_generator(tmp_path):
    from VolumetricGANLib.checkpoint import load_generator, make_config, save_checkpoint
    from VolumetricGANLib.generate import generate, synthesize

    torch.manual_seed(0)
    arch = dict(TINY, label_classes=K, label_decoding="foreground")
    G = StyleGAN2Generator(**arch)
    cfg = make_config("stylegan2-3d", arch, spacing=(1.2, 1.2, 1.2), label_scheme="topcow13", name="fg",
                      intensity={"network_range": [-1, 1], "physical_range": [0, 1], "units": "TOF", "clip": False})
    path = save_checkpoint(tmp_path / "fg.vgan", cfg, G_ema=G)
    loaded = load_generator(path).generator
    res = generate(path, n=2, seed=3, device="cpu", noise="const")   # writes the recorded decoding's labels
    out = synthesize(loaded, None, torch.as_tensor(np.asarray(res.latents["w"])).float(), "const", None, None)
    assert loaded.label_decoding == "foreground"
    for i in range(2):
        assert np.array_equal(res.labels[i].array, hard_labels(out[i:i + 1, 1:], "topcow13", "foreground")[0])
    assert G.label_decoding == "foreground" and G._config["label_decoding"] == "foreground"
    assert "label_decoding" not in StyleGAN2Generator(**TINY, label_classes=K)._config   # argmax: configs as before
    from GANTrainerLib.joint import JointSpec

    assert JointSpec.of(G, "topcow13").decoding == "foreground"
    with pytest.raises(ValueError, match="label_decoding 'max'"):
        StyleGAN2Generator(**TINY, label_classes=K, label_decoding="max")


def test_a_left_right_mirror_swaps_left_and_right_classes():
    perm = lr_flip_permutation("topcow13")
    names = ["image", "background"] + [TOPCOW13.name_of(i) for i in TOPCOW13.ids]
    swapped = [names[p] for p in perm]
    assert swapped[names.index("L-ICA")] == "R-ICA" and swapped[names.index("R-Pcom")] == "L-Pcom"
    assert swapped[names.index("BA")] == "BA" and swapped[:2] == ["image", "background"]
    # an L-ICA blob on the left becomes an R-ICA blob on the right after the mirror
    lab = torch.zeros(1, 1, 2, 4, 8, dtype=torch.long)
    lab[..., :2] = TOPCOW13.id_of("L-ICA")
    x = torch.cat([torch.rand(1, 1, 2, 4, 8), labels_to_onehot(lab, "topcow13")], 1)
    aug = DiffAugment3D(p=1.0, translation=0, cutout=0, flip_axes=(2,), intensity_channels=1,
                        flip_permutations={2: perm})
    out = aug(x)
    got = hard_labels(out[:, 1:], "topcow13")[0]
    assert (got[..., -2:] == TOPCOW13.id_of("R-ICA")).all() and (got[..., :-2] == 0).all()
    assert torch.equal(out[:, :1], torch.flip(x[:, :1], dims=(4,)))


def test_intensity_augmentation_leaves_label_channels_alone():
    x = torch.cat([torch.rand(4, 1, 4, 8, 8), labels_to_onehot(torch.randint(0, 3, (4, 1, 4, 8, 8)), "topcow13")], 1)
    aug = DiffAugment3D(p=1.0, translation=0, cutout=0, flip_axes=(), brightness=0.5, contrast=0.5,
                        intensity_channels=1)
    out = aug(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 1:], x[:, 1:]) and not torch.allclose(out[:, :1], x[:, :1])
    # image-only batches draw the same random numbers as before the option existed
    img = x[:, :1]
    old = DiffAugment3D(p=1.0, translation=0, cutout=0, flip_axes=(), brightness=0.5, contrast=0.5)
    assert torch.allclose(old(img, generator=torch.Generator().manual_seed(0)), out[:, :1])


def test_variant_strings_and_vectors():
    v = parse_variant(["anterior=1,1,0,1", "posterior=0,1,1,0"])
    assert variant_vector(v).tolist() == [1, 1, 0, 1, 0, 1, 1, 0]
    assert parse_variant("posterior=0,1,1,1", default=v)["anterior"] == [1, 1, 0, 1]
    for bad in ("posterior=0,1,1", "middle=1,1,1,1", "posterior=0,1,2,1"):
        with pytest.raises(VolGANError, match="--variant"):
            parse_variant(bad, default=v)
    with pytest.raises(VolGANError, match="anterior"):
        parse_variant("posterior=0,1,1,1")


def test_total_variation_and_fidelity_report():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 2, (200, 8))
    assert total_variation(real, real) == 0.0
    collapsed = np.tile(real[:1], (200, 1))          # a mode-collapsed generator: one variant only
    fid_good = variant_fidelity(real, real[rng.permutation(200)], n_boot=50)
    fid_bad = variant_fidelity(real, collapsed, n_boot=50)
    assert fid_good["tvd"]["joint"] == 0.0 and fid_bad["tvd"]["joint"] > 0.9
    lo, hi = fid_bad["ci"]["joint"]["low"], fid_bad["ci"]["joint"]["high"]
    assert 0.0 <= lo <= fid_bad["tvd"]["joint"] <= hi <= 1.0
    # the real-vs-real floor is what sampling alone gives: far below the collapsed model's distance
    assert 0 < fid_bad["real_vs_real"]["anterior"] < fid_bad["tvd"]["anterior"]
    pres = fid_bad["presence"]["Acom"]
    assert pres["real"] == pytest.approx(real[:, 1].mean()) and pres["generated"] == real[0, 1]
    assert fid_bad["frequencies"]["posterior"][0]["generated_frequency"] in (0.0, 1.0)
    with pytest.raises(VolGANError, match="generated variants"):
        variant_fidelity(real, [[0, 1]])


def test_conditional_accuracy_per_part_and_segment():
    req = [[1, 1, 0, 1, 0, 1, 1, 0]] * 4
    obs = [[1, 1, 0, 1, 0, 1, 1, 0], [1, 0, 0, 1, 0, 1, 1, 0], [1, 1, 0, 1, 1, 1, 1, 0], [1, 1, 0, 1, 0, 1, 0, 0]]
    acc = conditional_accuracy(req, obs)
    assert acc["accuracy"] == 0.25 and acc["anterior"] == 0.75 and acc["posterior"] == 0.5
    assert acc["per_segment"]["Acom"] == 0.75 and acc["per_segment"]["R-P1"] == 0.75
    resolved = conditional_accuracy(req, obs, segments=["L-A1", "R-A1", "L-P1", "R-P1"])
    assert resolved["accuracy"] == 0.75 and resolved["anterior"] == 1.0
    only_anterior = conditional_accuracy(req, obs, segments=["L-A1"])
    assert only_anterior["posterior"] is None
    with pytest.raises(VolGANError, match="choose from"):
        conditional_accuracy(req, obs, segments=["Pcom"])
    assert variant_matrix([{"anterior": [1, 0, 0, 1], "posterior": [0, 1, 1, 0]}]).tolist() == [[1, 0, 0, 1, 0, 1, 1, 0]]


def test_the_cached_set_keeps_label_maps_beside_the_images(tmp_path, rng):
    from GANTrainerLib.data import CachedVolumeSet, Preprocess
    from VolGANCore import Volume
    from VolGANCore.io import write_volume

    images, labels = tmp_path / "images", tmp_path / "labels"
    truth = []
    for k in range(2):
        lab = rng.choice(np.asarray(TOPCOW13.ids_with_background, np.uint8), size=(6, 10, 10))
        write_volume(Volume(rng.normal(size=(6, 10, 10)).astype(np.float32), spacing=(0.3, 0.3, 0.6)),
                     images / f"c{k}.nrrd")
        write_volume(Volume(lab, spacing=(0.3, 0.3, 0.6)), labels / f"c{k}.nrrd")
        truth.append(lab[1:5, 1:9, 1:9])
    recipe = Preprocess(roi_shape=(4, 8, 8), intensity="minmax")
    plain = CachedVolumeSet.build(images, recipe, tmp_path / "cache", labels_folder=labels)
    joint = CachedVolumeSet.build(images, recipe, tmp_path / "cache", labels_folder=labels, keep_labels="topcow13")
    assert plain[0].shape == (1, 4, 8, 8) and joint[1].shape == (2, 4, 8, 8)
    assert joint.cache_dir != plain.cache_dir and isinstance(joint.labels, np.memmap)
    np.testing.assert_array_equal(joint[1][0], plain[1][0])
    np.testing.assert_array_equal(joint[1][1], truth[1])
    again = CachedVolumeSet.build(images, recipe, tmp_path / "cache", labels_folder=labels, keep_labels="topcow13")
    np.testing.assert_array_equal(again[0][1], truth[0])
    write_volume(Volume(np.full((6, 10, 10), 13, np.uint8), spacing=(0.3, 0.3, 0.6)), labels / "c1.nrrd")
    with pytest.raises(VolGANError, match=r"c1\.nrrd: unknown label id\(s\) \[13\]"):
        CachedVolumeSet.build(images, recipe, tmp_path / "cache", labels_folder=labels, keep_labels="topcow13")
    with pytest.raises(VolGANError, match="needs a label folder"):
        CachedVolumeSet.build(images, recipe, tmp_path / "cache", keep_labels="topcow13")


def test_variant_vectors_on_the_device_match_cow_variants(tmp_path):
    """The torch rule (max-pool dilation) gives cow_variants' vectors: on the real TopCoW crop, on each of its
    arteries removed in turn, and on phantoms of several variants."""
    from conftest import shared_file
    from MorphometryLib.vessels import cow_variants
    from VolGANCore.io import read_label_volume
    from VolumetricGANLib.labelmaps import variant_vectors
    from VolumetricGANLib.phantoms import write_cow_dataset
    from VolGANCore import list_volumes

    maps = [read_label_volume(shared_file("data", "topcow", "topcow_mr_roi_003_labels.nii.gz"), scheme="topcow13")]
    for lid in (3, 9, 10, 12):  # L-PCA, L-Pcom, Acom, L-ACA removed: different vectors from the same anatomy
        lab = maps[0].with_array(np.where(maps[0].array == lid, 0, maps[0].array))
        lab.label_scheme = "topcow13"
        maps.append(lab)
    folder = write_cow_dataset(tmp_path / "ph", n=4, seed=11, shape=(16, 64, 64), spacing_mm=1.0) / "labels"
    maps += [read_label_volume(p, scheme="topcow13") for p in list_volumes(folder)]
    expected = [variant_vector(cow_variants(m)).tolist() for m in maps]
    assert len({tuple(e) for e in expected}) >= 4  # the comparison covers several distinct variants
    for m, e in zip(maps, expected):
        ids = torch.from_numpy(np.asarray(m.array).astype(np.int64))[None, None]
        assert variant_vectors(labels_to_onehot(ids, "topcow13")).tolist() == [e]


def test_soft_variant_scores_are_the_variant_vector_on_one_hot_maps_and_pass_gradients():
    """variant_scores: 0/1 on one-hot maps (equal to variant_vectors), in between on probabilities, and
    differentiable towards the classes that decide each segment."""
    from VolumetricGANLib.labelmaps import variant_scores, variant_vectors

    ids = torch.zeros(2, 1, 4, 16, 16, dtype=torch.int64)
    ids[:, :, 1:3, 4:12, 7:9] = TOPCOW13.id_of("BA")
    ids[0, :, 1:3, 4:8, 9:11] = TOPCOW13.id_of("R-PCA")     # touches BA: R-P1 present in the first
    ids[1, :, 1:3, 4:8, 12:14] = TOPCOW13.id_of("R-PCA")    # a gap: absent in the second
    ids[1, :, 1, 2, 2] = TOPCOW13.id_of("Acom")
    onehot = labels_to_onehot(ids, "topcow13")
    scores = variant_scores(onehot)
    assert torch.equal(scores, variant_vectors(onehot)) and scores[:, [1, 6]].tolist() == [[0, 1], [1, 0]]
    logits = (onehot * 4.0).requires_grad_(True)            # a softened version of the same maps
    soft = variant_scores(torch.softmax(logits, 1))
    assert ((soft > 0) & (soft < 1)).all() and torch.equal((soft > 0.5).float(), scores)
    soft[1, 1].backward()                                  # the Acom score of the second map: its Acom voxel only
    where = logits.grad[1].abs().sum(0).nonzero().tolist()
    acom = list(class_ids("topcow13")).index(TOPCOW13.id_of("Acom"))
    assert where == [[1, 2, 2]] and logits.grad[1, acom, 1, 2, 2] > 0    # more Acom logit, more Acom
    assert logits.grad[0].abs().sum() == 0                 # and nothing from the other map
    with pytest.raises(VolGANError, match=r"expected \(N, 14, D, H, W\)"):
        variant_scores(onehot[:, :5])


@pytest.mark.slow
def test_the_variant_consistency_term_teaches_the_generator_its_condition():
    """StyleGAN2Loss(variant_weight): the generator loss carries the binary cross-entropy between the variant its
    class probabilities show and the requested one; minimising that term alone makes the samples show the
    requested variants (not one for all: the pool holds two opposite vectors)."""
    from GANTrainerLib.joint import JointSpec, VariantPool
    from GANTrainerLib.losses import StyleGAN2Loss

    torch.manual_seed(0)
    G = StyleGAN2Generator(**TINY, label_classes=K, c_dim=8)
    D = StyleGAN2Discriminator(img_shape=(4, 16, 16), base_shape=(1, 4, 4), img_channels=1 + K, channel_base=16,
                               channel_max=16, c_dim=8, mbstd_group_size=2)
    spec = JointSpec.of(G, "topcow13")
    pool = VariantPool(torch.tensor([[1, 1, 0, 1, 0, 1, 1, 0], [0, 0, 1, 0, 1, 0, 0, 1]], dtype=torch.float32))
    loss = StyleGAN2Loss(G, D, r1_gamma=0.0, pl_weight=0.0, joint=spec, c_pool=pool, variant_weight=2.0,
                         style_mixing_prob=0.0)
    plain = StyleGAN2Loss(G, D, r1_gamma=0.0, pl_weight=0.0, joint=spec, c_pool=pool, style_mixing_prob=0.0)
    torch.manual_seed(1)
    total, stats = loss.generator_loss(torch.randn(4, 16), step=0)
    torch.manual_seed(1)
    base, base_stats = plain.generator_loss(torch.randn(4, 16), step=0)
    assert "reg/variant" not in base_stats
    assert torch.allclose(total, base + 2.0 * stats["reg/variant"], atol=1e-5)
    opt = torch.optim.Adam(G.parameters(), lr=0.01)
    c = pool.sample(8, generator=torch.Generator().manual_seed(0))
    assert len(set(map(tuple, c.tolist()))) == 2
    z = torch.randn(8, 16)
    first = None
    for _ in range(60):
        opt.zero_grad(set_to_none=True)
        vc, match = loss.variant_consistency(G(z, c=c), c)
        first = float(vc.detach()) if first is None else first
        vc.backward()
        opt.step()
    vc, match = loss.variant_consistency(G(z, c=c).detach(), c)
    assert float(vc) < 0.2 * first and float(match) == 1.0, (first, float(vc), float(match))
    with pytest.raises(ValueError, match="variant_weight needs a generator conditioned"):
        StyleGAN2Loss(StyleGAN2Generator(**TINY, label_classes=K), D, joint=JointSpec("topcow13", K),
                      variant_weight=1.0)


def test_the_hinge_consistency_term_stops_pushing_beyond_its_margin():
    """variant_margin m: zero loss (and no gradient) once every requested segment scores ≥ 0.5 + m and every
    unwanted one ≤ 0.5 − m; linear in the shortfall otherwise. The cross-entropy keeps pushing."""
    from GANTrainerLib.joint import JointSpec, VariantPool
    from GANTrainerLib.losses import StyleGAN2Loss

    G = StyleGAN2Generator(**TINY, label_classes=K, c_dim=8)
    D = StyleGAN2Discriminator(img_shape=(4, 16, 16), base_shape=(1, 4, 4), img_channels=1 + K, channel_base=16,
                               channel_max=16, c_dim=8, mbstd_group_size=2)
    spec = JointSpec.of(G, "topcow13")
    vec = torch.tensor([[0, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)   # the Acom only
    pool = VariantPool(vec)
    hinge = StyleGAN2Loss(G, D, joint=spec, c_pool=pool, variant_weight=1.0, variant_margin=0.25)
    bce = StyleGAN2Loss(G, D, joint=spec, c_pool=pool, variant_weight=1.0)
    acom = list(class_ids("topcow13")).index(TOPCOW13.id_of("Acom"))

    def fake(p_acom: float) -> torch.Tensor:
        """One voxel at Acom probability p_acom (rest background); everything else background."""
        logits = torch.full((1, 1 + K, 4, 16, 16), -30.0)
        logits[:, 1] = 30.0                                  # channel 1 of the output = background
        logits[0, 1, 1, 2, 2] = 0.0
        logits[0, 1 + acom, 1, 2, 2] = float(torch.logit(torch.tensor(p_acom)))
        return logits.requires_grad_(True)

    c = pool.sample(1)
    for p, expected in ((0.9, 0.0), (0.75, 0.0), (0.6, 0.15 / 8), (0.2, 0.55 / 8)):
        x = fake(p)
        value, match = hinge.variant_consistency(x, c)
        assert value.item() == pytest.approx(expected, abs=1e-4), p
        assert match.item() == float(p > 0.5)
        value.backward()
        assert (x.grad.abs().sum() > 0) == (expected > 0)   # no push once beyond the margin
    x = fake(0.9)
    bce.variant_consistency(x, c)[0].backward()
    assert x.grad.abs().sum() > 0                           # the cross-entropy pushes a present Acom still higher
    with pytest.raises(ValueError, match=r"variant_margin must be in \[0, 0.5\)"):
        StyleGAN2Loss(G, D, joint=spec, c_pool=pool, variant_weight=1.0, variant_margin=0.5)


def test_the_consistency_term_scores_only_the_segments_it_is_given():
    """variant_segments: the term averages over the named segments only, so a segment left out (here the Acom, one
    voxel at 16×64×64) neither costs nor pushes the generator, while the others still do; unknown, repeated or no
    names are refused."""
    from GANTrainerLib.joint import JointSpec, VariantPool
    from GANTrainerLib.losses import StyleGAN2Loss

    G = StyleGAN2Generator(**TINY, label_classes=K, c_dim=8)
    D = StyleGAN2Discriminator(img_shape=(4, 16, 16), base_shape=(1, 4, 4), img_channels=1 + K, channel_base=16,
                               channel_max=16, c_dim=8, mbstd_group_size=2)
    spec = JointSpec.of(G, "topcow13")
    pool = VariantPool(torch.zeros(1, 8))                   # every segment asked absent
    every = StyleGAN2Loss(G, D, joint=spec, c_pool=pool, variant_weight=1.0)
    no_acom = StyleGAN2Loss(G, D, joint=spec, c_pool=pool, variant_weight=1.0,
                            variant_segments=["R-Pcom", "L-A1", "R-A1", "L-P1", "R-P1", "L-Pcom"])
    assert no_acom.variant_columns == [0, 3, 4, 5, 6, 7]      # in the vector's order, whatever the names' order
    ids = list(class_ids("topcow13"))

    def fake(*names: str) -> torch.Tensor:
        """Background everywhere but one confident voxel of each named class."""
        logits = torch.full((1, 1 + K, 4, 16, 16), -30.0)
        logits[:, 1] = 30.0
        for i, name in enumerate(names):
            logits[0, 1, 1, 2 + 3 * i, 2] = -30.0
            logits[0, 1 + ids.index(TOPCOW13.id_of(name)), 1, 2 + 3 * i, 2] = 30.0
        return logits.requires_grad_(True)

    c = pool.sample(1)
    x = fake("Acom")                                         # an unwanted Acom
    value, match = no_acom.variant_consistency(x, c)
    assert value.item() == pytest.approx(0.0, abs=1e-5) and match.item() == 1.0
    value.backward()
    assert x.grad.abs().sum() == 0                           # nothing pushes the Acom away
    value, match = every.variant_consistency(x, c)
    assert value.item() > 1.0 and match.item() == 0.0        # the full term does: −log(1e-6) / 8
    x = fake("L-Pcom")                                       # an unwanted Pcom still costs
    value, match = no_acom.variant_consistency(x, c)
    assert value.item() == pytest.approx(every.variant_consistency(x, c)[0].item() * 8 / 6, rel=1e-4)
    assert match.item() == 0.0
    for bad in (["Acom", "Acom"], ["L-Acom"], []):
        with pytest.raises(ValueError, match="name each segment once"):
            StyleGAN2Loss(G, D, joint=spec, c_pool=pool, variant_weight=1.0, variant_segments=bad)


def test_the_diversity_term_compares_the_foreground_the_labels_draw():
    """Joint models: the diversity term compares where the labels lie (label > 0) — the reals' label maps, and the
    fakes' decoded labels with the softmax's gradient. Fakes that differ in their intensity
    (background shading) or in probabilities no label shows count as identical, yet the term reaches the class
    logits; fakes without labels count as identical too."""
    from GANTrainerLib.joint import JointSpec, VariantPool
    from GANTrainerLib.losses import StyleGAN2Loss, pairwise_similarity

    G = StyleGAN2Generator(**TINY, label_classes=K, c_dim=8)
    D = StyleGAN2Discriminator(img_shape=(4, 16, 16), base_shape=(1, 4, 4), img_channels=1 + K, channel_base=16,
                               channel_max=16, c_dim=8, mbstd_group_size=2)
    spec = JointSpec.of(G, "topcow13")
    loss = StyleGAN2Loss(G, D, joint=spec, c_pool=VariantPool(torch.ones(1, 8)), diversity_weight=1.0)
    ids = torch.zeros(2, 1, 4, 16, 16)
    ids[0, 0, 1, 2:6, 3] = TOPCOW13.id_of("BA")
    ids[1, 0, 2, 8, 4:9] = TOPCOW13.id_of("Acom")
    reals, _ = spec.reals(torch.cat([torch.rand(2, 1, 4, 16, 16), ids], dim=1))
    assert torch.equal(loss._diversity_features(reals, generated=False), (ids > 0).float())

    torch.manual_seed(0)
    logits = torch.full((2, K, 4, 16, 16), -5.0)
    logits[:, 0] = 5.0                                         # background everywhere ...
    logits[:, 3, 1, 2:6, 3] = 10.0                             # ... but one labelled segment, the same in both
    logits[:, 4] += torch.rand(2, 4, 16, 16) * 4               # faint probabilities that differ, never decoded
    intensity = torch.rand(2, 1, 4, 16, 16)                    # and different intensities
    fake = torch.cat([intensity, logits], dim=1).requires_grad_(True)
    loss.real_similarity = torch.tensor(0.2)
    excess, similar = loss.diversity_excess(fake)
    assert similar.item() == pytest.approx(1.0, abs=1e-5) and excess.item() == pytest.approx(0.8, abs=1e-5)
    excess.backward()
    assert fake.grad[:, 1:].abs().sum() > 0                    # the labels' softmax gets the gradient
    assert pairwise_similarity(torch.softmax(logits, 1)[:, 4:5]) < 0.5   # the faint channel itself does differ
    assert pairwise_similarity(intensity) < 0.5                           # and so do the intensities
    bare = torch.cat([intensity, torch.full((2, K, 4, 16, 16), -5.0).index_fill(1, torch.tensor([0]), 5.0)], 1)
    assert loss.diversity_excess(bare)[1].item() == pytest.approx(1.0)   # no labels at all: alike, not diverse


@pytest.mark.slow
def test_one_joint_training_step_reaches_the_label_head():
    """D and G losses of a conditional joint model: finite, R1 over the one-hot reals, gradients into tolabel
    and the conditioning embeddings; fakes are conditioned on the pool's vectors."""
    from GANTrainerLib.joint import JointSpec, VariantPool, joint_augment_kwargs
    from GANTrainerLib.losses import StyleGAN2Loss

    torch.manual_seed(0)
    G = StyleGAN2Generator(**TINY, label_classes=K, c_dim=8)
    D = StyleGAN2Discriminator(img_shape=(4, 16, 16), base_shape=(1, 4, 4), img_channels=1 + K, channel_base=16,
                               channel_max=16, c_dim=8, mbstd_group_size=2)
    spec = JointSpec.of(G, "topcow13")
    assert spec == JointSpec("topcow13", K, 8)
    ids = torch.zeros(4, 1, 4, 16, 16)
    ids[:, :, 1:3, 4:12, 7:9] = TOPCOW13.id_of("BA")
    ids[:2, :, 1:3, 4:8, 9:11] = TOPCOW13.id_of("R-PCA")    # touches BA: R-P1 present in the first two
    reals = torch.cat([torch.rand(4, 1, 4, 16, 16) * 2 - 1, ids], 1)
    d_in, c_real = spec.reals(reals)
    assert d_in.shape == (4, 1 + K, 4, 16, 16) and c_real[:, 6].tolist() == [1, 1, -1, -1]
    assert c_real[2].tolist() == [-1] * 8  # the variant with every segment absent is a condition too
    pool = VariantPool((c_real + 1) / 2)
    assert pool.frequencies()["counts"] == [2, 2]
    aug = DiffAugment3D(**joint_augment_kwargs(dict(p=0.5, translation=0.125, cutout=0.25, flip_axes=[2],
                                                    brightness=0.1), spec))
    loss = StyleGAN2Loss(G, D, aug, r1_gamma=1.0, r1_interval=1, pl_weight=2.0, pl_interval=1, joint=spec,
                         c_pool=pool)
    d_loss, d_stats = loss.discriminator_loss(reals, torch.randn(4, 16), step=0)
    assert torch.isfinite(d_loss) and float(d_stats["reg/r1"]) > 0
    d_loss.backward()
    assert D.c_embed.weight.grad.abs().sum() > 0 and D.fromrgb.weight.grad[:, 1:].abs().sum() > 0
    g_loss, g_stats = loss.generator_loss(torch.randn(4, 16), step=0)
    assert torch.isfinite(g_loss) and "reg/pl_penalty" in g_stats
    assert float(g_stats["scores/fake"]) != 0  # D's projection is not blind to any drawn condition
    g_loss.backward()
    assert G.synthesis.blocks[-1].tolabel.weight.grad.abs().sum() > 0
    assert G.mapping.embed.weight.grad.abs().sum() > 0
    assert set(map(tuple, loss.sample_c(64).tolist())) <= set(map(tuple, c_real.tolist()))
    seen = []
    D.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 1:].detach()))
    st = StyleGAN2Loss(G, D, aug, r1_gamma=1.0, pl_weight=0.0, joint=spec, c_pool=pool, fake_labels="straight-through")
    st.generator_loss(torch.randn(4, 16), step=1)[0].backward()
    fake_labels = seen[-1]  # what D saw of the fakes: one-hot (or all zero where cutout or a shift emptied a voxel)
    assert set(fake_labels.unique().round(decimals=4).tolist()) == {0.0, 1.0}
    assert set(fake_labels.sum(1).round(decimals=4).unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="fake_labels"):
        StyleGAN2Loss(G, D, aug, joint=spec, c_pool=pool, fake_labels="gumbel")


def test_joint_settings_are_checked():
    from GANTrainerLib.joint import JointSpec, joint_augment_kwargs

    G = StyleGAN2Generator(**TINY, label_classes=K)
    assert JointSpec.of(StyleGAN2Generator(**TINY), None) is None
    with pytest.raises(VolGANError, match="no label_scheme"):
        JointSpec.of(G, None)
    with pytest.raises(VolGANError, match="aydin7 has 8 classes"):
        JointSpec.of(G, "aydin7")
    with pytest.raises(VolGANError, match="needs the label branch"):
        JointSpec.of(StyleGAN2Generator(**TINY, c_dim=8), "topcow13")
    with pytest.raises(VolGANError, match="left-right"):
        joint_augment_kwargs({"flip_axes": [0, 2]}, JointSpec.of(G, "topcow13"))
    with pytest.raises(VolGANError, match="keep_labels"):
        JointSpec.of(G, "topcow13").reals(torch.zeros(2, 1, 4, 16, 16))


def test_majority_label_downsampling_keeps_thin_vessels_in_place_and_can_keep_every_class():
    from VolGANCore import Volume
    from VolGANCore.geometry import downsample

    lab = np.zeros((4, 8, 8), np.int16)
    lab[:, 2:4, 2:4] = 4          # a vessel filling a block, with a minority id on the block's first voxel
    lab[:, 2, 2] = 6
    lab[:, 5, 4:6] = 5            # a 1-voxel-thin vessel on odd rows: half of its blocks
    lab[0:2, 7, 7] = 9            # a quarter of a block: background under the majority rule
    first = downsample(Volume(lab), 2, label=True).array
    major = downsample(Volume(lab), 2, label=True, label_mode="majority").array
    assert (first[:, 1, 1] == 6).all() and (first[:, 2, 2] == 0).all()  # the corner: minority id, vessel missed
    assert (major[:, 1, 1] == 4).all() and (major[:, 2, 2] == 5).all() and (major == 9).sum() == 0
    assert np.count_nonzero(major) == 4
    # keeping every class present: the dropped quarter-block class keeps its densest block, the rest is the majority
    lab[2:4, 6, 6] = 9            # a second, sparser trace of class 9 (one voxel of its block)
    lab[2, 6, 7] = 0
    kept = downsample(Volume(lab), 2, label=True, label_mode="majority-present").array
    major = downsample(Volume(lab), 2, label=True, label_mode="majority").array
    assert (major == 9).sum() == 0 and (kept == 9).sum() == 1 and kept[0, 3, 3] == 9
    # class 6 (a line inside class 4's blocks) has no background block: it takes its first densest block from 4
    assert (major == 6).sum() == 0 and (kept == 6).sum() == 1 and kept[0, 1, 1] == 6
    changed = np.argwhere(kept != major).tolist()
    assert changed == [[0, 1, 1], [0, 3, 3]] and set(np.unique(kept)) == set(np.unique(lab))
    # a dropped class whose (tied) densest blocks are another class's and background's keeps the background one
    lab2 = np.zeros((2, 4, 4), np.int16)
    lab2[:, 0:2, 0:2] = 4
    lab2[0, 0, 0], lab2[0, 2, 2] = 7, 7   # one voxel inside class 4's block, one in a background block
    kept2 = downsample(Volume(lab2), 2, label=True, label_mode="majority-present").array
    assert kept2[0, 0, 0] == 4 and kept2[0, 1, 1] == 7 and set(np.unique(kept2)) == {0, 4, 7}
    with pytest.raises(VolGANError, match="label_mode"):
        downsample(Volume(lab), 2, label=True, label_mode="mean")


@pytest.mark.slow
def test_the_tiny_joint_preset_keeps_every_artery_and_its_variant_presence_at_1_2_mm(tmp_path):
    """tiny-cow-labels reduces 0.6 mm phantom labels to 1.2 mm: every class of every phantom stays present, so
    the presence bits of its variant vectors (the conditioning) are the full-resolution ones; the plain majority
    drops short thin arteries (the Acom) from some of these same phantoms."""
    from GANTrainerLib.data import Preprocess
    from GANTrainerLib.presets import get_preset
    from VolGANCore import list_volumes, read_label_volume, read_volume
    from VolumetricGANLib.labelmaps import variant_vectors
    from VolumetricGANLib.phantoms import write_cow_dataset

    data = write_cow_dataset(tmp_path / "set", n=10, seed=0)
    pre = Preprocess.from_settings(get_preset("tiny-cow-labels")["preprocess"])
    plain = dataclasses.replace(pre, label_downsample="majority")
    presence = [1, 2, 4, 7]                                   # Acom, 3rd-A2, L-Pcom, R-Pcom

    def bits(lab):
        onehot = labels_to_onehot(torch.as_tensor(np.asarray(lab, np.int64))[None, None], "topcow13")
        return variant_vectors(onehot)[0, presence].tolist()

    dropped = 0
    for img, lab in zip(list_volumes(data / "images"), list_volumes(data / "labels")):
        full = read_label_volume(lab)
        _, kept = pre.apply(read_volume(img), full)
        _, majority = plain.apply(read_volume(img), full)
        assert kept.shape == (16, 64, 64) and set(np.unique(kept.array)) == set(np.unique(full.array))
        assert bits(kept.array) == bits(full.array)
        dropped += len(set(np.unique(full.array)) - set(np.unique(majority.array)))
    assert dropped > 0


def test_label_presets_build_joint_conditional_networks():
    from GANTrainerLib.joint import JointSpec
    from GANTrainerLib.presets import get_preset

    for name, shape in (("cow-stylegan-labels", [32, 128, 128]), ("tiny-cow-labels", [16, 64, 64])):
        p = get_preset(name)
        G = StyleGAN2Generator(**p["generator"])
        D = StyleGAN2Discriminator(**p["discriminator"])
        assert list(G.output_shape) == shape and D.img_channels == 1 + K and D.c_dim == G.c_dim == 8
        assert JointSpec.of(G, p["label_scheme"]) == JointSpec("topcow13", K, 8)
        assert p["preprocess"].get("label_downsample", "first") == ("majority-present" if name.startswith("tiny")
                                                                     else "first")
        assert p["loss"]["fake_labels"] == "straight-through"
        # the discriminator's first layer keeps every input channel's information: no fewer outputs than the
        # intensity + class channels it reads (tiny-cow's widths would give 4 for 15)
        assert D.fromrgb.weight.shape[0] >= D.img_channels
    # the tiny preset's R1 weight follows StyleGAN2-ADA's rule 0.0002 × voxels / batch (tiny-cow's 0.5 let the
    # wide discriminator win and the samples collapse)
    p = get_preset("tiny-cow-labels")
    assert p["loss"]["r1_gamma"] == pytest.approx(0.0002 * np.prod(p["generator"]["output_shape"]) / p["batch"],
                                                  rel=0.02)


def test_volgan_train_chooses_what_the_discriminator_sees_of_generated_labels():
    from GANTrainerLib.train import settings_from_preset
    from VolGANCore.cli import build_parser

    args = build_parser().parse_args(["train", "--preset", "tiny-cow-labels", "--data", "d", "--out", "o",
                                      "--fake-labels", "softmax"])
    s = settings_from_preset(args.preset, fake_labels=args.fake_labels)
    assert s.loss["fake_labels"] == "softmax" and s.loss["r1_gamma"] == 3.3   # the rest of the preset's loss kept
    assert settings_from_preset("tiny-cow-labels").loss["fake_labels"] == "straight-through"
    with pytest.raises(VolGANError, match="generates no labels"):
        settings_from_preset("tiny-cow", fake_labels="softmax")
    with pytest.raises(VolGANError, match="choose one of softmax, straight-through"):
        settings_from_preset("tiny-cow-labels", fake_labels="gumbel")


def test_volgan_train_sets_the_label_decoding_and_the_r1_weight():
    from GANTrainerLib.train import settings_from_preset
    from VolGANCore.cli import build_parser

    args = build_parser().parse_args(["train", "--preset", "tiny-cow-labels", "--data", "d", "--out", "o",
                                      "--label-decoding", "foreground", "--r1-gamma", "13"])
    s = settings_from_preset(args.preset, label_decoding=args.label_decoding, r1_gamma=args.r1_gamma)
    assert StyleGAN2Generator(**s.generator).label_decoding == "foreground"
    assert s.loss["r1_gamma"] == 13.0 and s.loss["fake_labels"] == "straight-through"   # the rest of the loss kept
    # argmax, the default, stays unwritten: the run's generator config is the preset's
    assert settings_from_preset("tiny-cow-labels", label_decoding="argmax").generator == \
        settings_from_preset("tiny-cow-labels").generator
    assert settings_from_preset("tiny-cow", r1_gamma=0).loss["r1_gamma"] == 0.0              # image-only: R1 too
    with pytest.raises(VolGANError, match="generates no labels"):
        settings_from_preset("tiny-cow", label_decoding="foreground")
    with pytest.raises(VolGANError, match="choose one of argmax, foreground"):
        settings_from_preset("tiny-cow-labels", label_decoding="sample")
    with pytest.raises(VolGANError, match="must be ≥ 0"):
        settings_from_preset("tiny-cow-labels", r1_gamma=-1.0)
    with pytest.raises(VolGANError, match="trains with wgan-gp"):
        settings_from_preset("tiny-spongiosa", r1_gamma=1.0)
    args = build_parser().parse_args(["train", "--preset", "tiny-cow-labels", "--data", "d", "--out", "o",
                                      "--variant-weight", "0.5"])
    assert settings_from_preset(args.preset, variant_weight=args.variant_weight).loss["variant_weight"] == 0.5
    with pytest.raises(VolGANError, match="generates no labels"):
        settings_from_preset("tiny-cow", variant_weight=1.0)
    with pytest.raises(VolGANError, match="--variant-weight must be ≥ 0"):
        settings_from_preset("tiny-cow-labels", variant_weight=-1.0)
    assert settings_from_preset("tiny-cow-labels", variant_weight=1.0, variant_margin=0.2).loss["variant_margin"] == 0.2
    with pytest.raises(VolGANError, match="give it a --variant-weight"):
        settings_from_preset("tiny-cow-labels", variant_margin=0.2)
    with pytest.raises(VolGANError, match=r"--variant-margin must be in \[0, 0.5\)"):
        settings_from_preset("tiny-cow-labels", variant_weight=1.0, variant_margin=0.7)
    args = build_parser().parse_args(["train", "--preset", "tiny-cow-labels", "--data", "d", "--out", "o",
                                      "--variant-weight", "1", "--variant-segments", "R-P1, L-A1"])
    assert settings_from_preset(args.preset, variant_weight=args.variant_weight,
                                variant_segments=args.variant_segments).loss["variant_segments"] == ["L-A1", "R-P1"]
    with pytest.raises(VolGANError, match="give it a --variant-weight"):
        settings_from_preset("tiny-cow-labels", variant_segments="L-A1")
    with pytest.raises(VolGANError, match="name each segment once, comma-separated, from L-A1,Acom"):
        settings_from_preset("tiny-cow-labels", variant_weight=1.0, variant_segments="L-A1,A1")
    args = build_parser().parse_args(["train", "--preset", "tiny-cow-labels", "--data", "d", "--out", "o",
                                      "--diversity-weight", "2"])
    assert settings_from_preset(args.preset, diversity_weight=args.diversity_weight).loss["diversity_weight"] == 2.0
    assert settings_from_preset("tiny-cow", diversity_weight=1.0).loss["diversity_weight"] == 1.0   # image-only too
    with pytest.raises(VolGANError, match="--diversity-weight must be ≥ 0"):
        settings_from_preset("tiny-cow-labels", diversity_weight=-0.5)
    with pytest.raises(VolGANError, match="trains with wgan-gp"):
        settings_from_preset("tiny-spongiosa", diversity_weight=1.0)
    assert settings_from_preset("tiny-cow-labels", diversity_weight=1.0,
                                diversity_start_kimg=2).loss["diversity_start_kimg"] == 2.0
    with pytest.raises(VolGANError, match="give it a --diversity-weight"):
        settings_from_preset("tiny-cow-labels", diversity_start_kimg=2)
    with pytest.raises(VolGANError, match="--diversity-start-kimg must be ≥ 0"):
        settings_from_preset("tiny-cow-labels", diversity_weight=1.0, diversity_start_kimg=-1)


def test_image_view_gives_the_intensity_with_repeatable_conditions():
    from GANTrainerLib.joint import ImageView, VariantPool

    G = StyleGAN2Generator(**TINY, label_classes=K, c_dim=8).eval()
    pool = VariantPool(torch.tensor([[1, 1, 0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.float32))
    z = torch.randn(6, 16)
    a, b = ImageView(G, pool, seed=4)(z), ImageView(G, pool, seed=4)(z)
    assert a.shape == (6, 1, 4, 16, 16) and torch.equal(a, b)
    view = ImageView(G, pool, seed=4)
    chunked = torch.cat([view(z[:3]), view(z[3:])])
    assert torch.allclose(chunked, a, atol=1e-5)  # the same stream of conditions, whatever the chunking
    plain = StyleGAN2Generator(**TINY).eval()
    assert torch.equal(ImageView(plain, pool)(z), plain(z))


@pytest.fixture(scope="module")
def joint_checkpoint(tmp_path_factory):
    """A tiny conditional joint model saved as a .vgan, with the training frequencies of two variants."""
    from VolumetricGANLib.checkpoint import make_config, save_checkpoint

    torch.manual_seed(1)
    arch = dict(TINY, label_classes=K, c_dim=8)
    G = StyleGAN2Generator(**arch)
    cfg = make_config("stylegan2-3d", arch, spacing=(1.2, 1.2, 1.2), label_scheme="topcow13", name="tiny-joint",
                      intensity={"network_range": [-1, 1], "physical_range": [0, 1], "units": "TOF", "clip": False})
    cfg["conditioning"] = {"kind": "cow-variant", "names": ["L-A1", "Acom", "3rd-A2", "R-A1", "L-Pcom", "L-P1",
                                                            "R-P1", "R-Pcom"],
                           "vectors": [[1, 1, 0, 1, 0, 1, 1, 0], [1, 0, 0, 1, 1, 1, 1, 1]], "counts": [3, 1]}
    return save_checkpoint(tmp_path_factory.mktemp("joint") / "joint.vgan", cfg, G_ema=G)


def test_generate_writes_label_maps_beside_the_volumes_and_records_the_variants(joint_checkpoint, tmp_path):
    import json

    from VolGANCore.cli import main
    from VolGANCore.io import read_label_volume
    from VolumetricGANLib.generate import generate, sample_variants

    out = tmp_path / "s"
    assert main(["generate", "--checkpoint", str(joint_checkpoint), "--out", str(out), "--n", "5", "--seed", "2",
                 "--variant", "posterior=1,1,1,1", "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(p.name for p in out.iterdir())
    assert "sample_0004.nii.gz" in files and "sample_0004_labels.nii.gz" in files
    for e in manifest["cases"]:
        lab = read_label_volume(out / e["labels"], scheme="topcow13")   # every id in the TopCoW scheme
        assert lab.shape == (4, 16, 16) and e["variant"]["posterior"] == [1, 1, 1, 1]
        # anterior follows the training vectors whose posterior matches: only [1, 0, 0, 1]
        assert e["variant"]["anterior"] == [1, 0, 0, 1]
    assert np.load(out / "latents.npz")["variant"].shape == (5, 8)
    # the labels are the argmax of the class channels of the same forward pass
    res = generate(joint_checkpoint, n=2, seed=2, variant=["anterior=1,1,0,1", "posterior=0,1,1,0"], device="cpu")
    assert res.variants.tolist() == [[1, 1, 0, 1, 0, 1, 1, 0]] * 2 and res.labels[0].label_scheme == "topcow13"
    again = generate(joint_checkpoint, n=2, seed=2, variant="anterior=1,1,0,1;posterior=0,1,1,0", device="cpu")
    assert np.array_equal(res.labels[1].array, again.labels[1].array)
    other = generate(joint_checkpoint, n=2, seed=2, variant="anterior=0,0,0,0;posterior=0,0,0,0", device="cpu")
    assert not np.array_equal(res.volumes[0].array, other.volumes[0].array)  # the condition matters
    # unconditional draws follow the recorded frequencies (3:1), per sample independent of n
    drawn = sample_variants(json.loads(json.dumps(res.config)), 400, seed=0)
    assert 0.65 < (drawn[:, 1] == 1).mean() < 0.85
    assert np.array_equal(sample_variants(res.config, 3, seed=0), drawn[:3])


def test_conditional_generation_refuses_what_it_cannot_do(joint_checkpoint, tmp_path, capsys):
    from VolGANCore.cli import main

    for extra, message in ((["--variant", "posterior=0,1,1"], "four 0/1 values"),
                           (["--variant", "lateral=1,1,1,1"], "anterior=a,b,c,d or posterior"),
                           (["--mode", "interpolate", "--seeds", "1", "2"], "conditioned on the CoW variant"),
                           (["--mode", "variation", "--variant", "posterior=1,1,1,1"], "only with --mode sample")):
        capsys.readouterr()
        assert main(["generate", "--checkpoint", str(joint_checkpoint), "--out", str(tmp_path / "x"),
                     "--device", "cpu", *extra]) == 2, extra
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and message in err[0], (extra, err)
        assert not (tmp_path / "x").exists()


def test_generated_labels_become_topcow_segmentations_in_the_scene(headless, joint_checkpoint):
    from VolGANCore import mrml
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    logic = VolumetricGANSceneLogic(headless.scene)
    out = logic.generateVolumes(joint_checkpoint, n=2, seed=5, device="cpu", variant="posterior=0,1,1,0")
    assert len(out["volumes"]) == len(out["segmentations"]) == 2
    from VolumetricGANLib.generate import generate

    truth = generate(joint_checkpoint, n=2, seed=5, device="cpu", variant="posterior=0,1,1,0").labels[1].array
    seg = out["segmentations"][1].GetSegmentation()
    names = {seg.GetNthSegment(k).GetName() for k in range(seg.GetNumberOfSegments())}
    assert names == {TOPCOW13.name_of(int(i)) for i in np.unique(truth) if i} and len(names) >= 2  # named ids
    back = mrml.segmentation_to_labelmap(out["segmentations"][1], mrml.node_to_volume(out["volumes"][1]),
                                         scheme="topcow13")
    assert np.array_equal(back.array, truth)
    table = out["table"]
    col = table.GetTable().GetColumnByName("posterior (L-Pcom, L-P1, R-P1, R-Pcom)")
    assert [col.GetValue(r) for r in range(2)] == ["0,1,1,0", "0,1,1,0"]
    with pytest.raises(VolGANError, match="sample mode only"):
        logic.generateVolumes(joint_checkpoint, mode="variation", n=2, variant="posterior=0,1,1,0", device="cpu")


@pytest.mark.parametrize("version", ["5.8.1", "5.12.3"])
def test_the_panel_offers_the_variant_for_conditional_models_and_shows_their_labels(version, joint_checkpoint,
                                                                                     tmp_path):
    """Through Slicer's own layer: the variant field is live for a conditional model in sample mode only, its
    text reaches generation, and each volume comes with its TopCoW segmentation."""
    from slicer_layer import slicer_layer

    with slicer_layer(version) as layer:
        widget = layer.make_widget("VolumetricGAN")
        p = widget._parameterNode
        p.checkpoint = joint_checkpoint
        p.count = 2
        widget.updateButtonStates()
        assert widget.ui.variantLineEdit.enabled
        widget.ui.variantLineEdit.text = "posterior=0,1,1,0"
        assert p.variant == "posterior=0,1,1,0"
        before = layer.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        widget.ui.generateButton.click()
        assert layer.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before + 2
        table = layer.scene.GetNodesByClass("vtkMRMLTableNode")
        tables = [table.GetItemAsObject(k) for k in range(table.GetNumberOfItems())]
        col = tables[-1].GetTable().GetColumnByName("posterior (L-Pcom, L-P1, R-P1, R-Pcom)")
        assert col is not None and col.GetValue(0) == "0,1,1,0"
        p.mode = "interpolate"
        widget.updateButtonStates()
        assert not widget.ui.variantLineEdit.enabled
        plain = tmp_path / "plain.vgan"
        from VolumetricGANLib.checkpoint import make_config, save_checkpoint

        save_checkpoint(plain, make_config("stylegan2-3d", TINY, spacing=(1, 1, 1)), G_ema=StyleGAN2Generator(**TINY))
        p.checkpoint, p.mode = plain, "sample"
        widget.updateButtonStates()
        assert not widget.ui.variantLineEdit.enabled


@pytest.fixture(scope="module")
def cow_phantoms(tmp_path_factory):
    """Six CoW phantoms with TopCoW labels, 16×32×32 at 2.4 mm (small enough for a CPU smoke run)."""
    from VolumetricGANLib.phantoms import write_cow_dataset

    return write_cow_dataset(tmp_path_factory.mktemp("jointdata") / "set", n=6, seed=4, shape=(16, 32, 32),
                             spacing_mm=2.4)


def _joint_settings(**kw):
    from GANTrainerLib.train import settings_from_preset

    s = settings_from_preset("tiny-cow-labels", batch=2, kimg=1.0, log_steps=1, metrics_kimg=0.0, **kw)
    s.generator = dict(s.generator, z_dim=16, w_dim=16, output_shape=[8, 16, 16], base_shape=[2, 4, 4],
                       channel_base=16, channel_max=16)
    s.discriminator = dict(s.discriminator, img_shape=[8, 16, 16], base_shape=[2, 4, 4], channel_base=16,
                           channel_max=16)
    s.preprocess = dict(roi_shape=[16, 32, 32], roi_centre="centre", intensity="minmax", downsample=2,
                        label_downsample="majority-present")
    s.loss = dict(s.loss, r1_interval=1, pl_weight=1.0, pl_interval=1)
    return s


@pytest.mark.slow
def test_a_joint_conditional_run_trains_saves_its_variants_and_generates_labelled_volumes(cow_phantoms, tmp_path):
    """The real loop on phantoms with their labels: losses finite with R1 and path length, the checkpoint records
    the training variant frequencies, and the model generates volumes with TopCoW label maps; resume works."""
    from GANTrainerLib.run import read_metrics
    from GANTrainerLib.train import train
    from MorphometryLib.vessels import cow_variants
    from VolGANCore import list_volumes, read_label_volume
    from VolumetricGANLib.checkpoint import load_generator
    from VolumetricGANLib.generate import generate

    s = _joint_settings()
    res = train(cow_phantoms / "images", tmp_path / "run", s, labels=cow_phantoms / "labels", max_steps=2,
                device="cpu", log=lambda m: None)
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(np.isfinite(r["loss/D"]) and np.isfinite(r["loss/G"]) for r in rows)
    assert any("reg/r1" in r for r in rows) and any("reg/pl_penalty" in r for r in rows)
    loaded = load_generator(res["checkpoint"])
    cond = loaded.config["conditioning"]
    assert sum(cond["counts"]) == 6 and loaded.config["label_scheme"] == "topcow13"
    # the recorded vectors are the training labels' own (measured after the same preprocessing)
    from GANTrainerLib.data import Preprocess
    from VolGANCore import read_volume

    pre = Preprocess.from_settings(s.preprocess)
    expected = sorted(variant_vector(cow_variants(pre.apply(read_volume(p), read_label_volume(q))[1])).tolist()
                      for p, q in zip(list_volumes(cow_phantoms / "images"), list_volumes(cow_phantoms / "labels")))
    got = sorted(v for v, c in zip(cond["vectors"], cond["counts"]) for _ in range(c))
    assert got == expected
    out = generate(res["checkpoint"], n=3, seed=1, device="cpu")
    assert len(out.labels) == 3 and out.labels[0].shape == (8, 16, 16)
    assert all(tuple(v) in {tuple(x) for x in cond["vectors"]} for v in out.variants.tolist())
    png = sorted((tmp_path / "run" / "samples").glob("*.png"))[-1].read_bytes()
    assert int.from_bytes(png[16:20], "big") == round(2.2 * 5 * 80)  # 5 columns: the last shows the labels
    again = train(cow_phantoms / "images", tmp_path / "run", s, labels=cow_phantoms / "labels", resume=True,
                  max_steps=1, device="cpu", log=lambda m: None)
    assert again["step"] == 3


def test_a_joint_preset_without_labels_is_refused_before_anything_is_written(cow_phantoms, tmp_path):
    from GANTrainerLib.train import train

    with pytest.raises(VolGANError, match="--labels DIR"):
        train(cow_phantoms / "images", tmp_path / "run", _joint_settings(), max_steps=1, device="cpu")
    assert not (tmp_path / "run").exists()


def test_an_exported_joint_model_shows_its_generated_labels_in_the_card(joint_checkpoint, tmp_path):
    from GANTrainerLib.export import export_model, montage_path
    from VolumetricGANLib.checkpoint import card_path

    out = export_model(joint_checkpoint, tmp_path / "joint-release.vgan")
    card = card_path(out).read_text()
    assert "each ray coloured by its generated label" in card and "(joint-release.samples.png)" in card
    png = montage_path(out).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    again = export_model(joint_checkpoint, tmp_path / "again.vgan")
    assert montage_path(again).read_bytes() == png  # seed 0, the same model: the same picture


def test_the_demo_shows_a_shipped_joint_model_with_its_labels_and_read_back_variants(joint_checkpoint, tmp_path,
                                                                                      monkeypatch):
    import shutil

    from GANTrainerLib import demo

    monkeypatch.setattr(demo, "SHIPPED_MODELS", tmp_path / "models")
    log: list[str] = []
    assert demo.step_joint(tmp_path / "out", log) == {"shipped": False} and "skipped" in log[0]
    (tmp_path / "models").mkdir()
    shutil.copy(joint_checkpoint, tmp_path / "models" / f"{demo.JOINT_MODEL}.vgan")
    log = []
    figures = demo.step_joint(tmp_path / "out", log)
    folder = tmp_path / "out" / "generated" / demo.JOINT_MODEL
    # two unconditional samples, then the two training variants (the commoner first), each read back
    assert [f["requested"] for f in figures["samples"]] == [None, None, [1, 1, 0, 1, 0, 1, 1, 0],
                                                            [1, 0, 0, 1, 1, 1, 1, 1]]
    assert (folder / "variant-11010110" / "sample_0000_labels.nii.gz").is_file()
    assert (folder / "unconditional" / "sample_0001_labels.nii.gz").is_file() and (folder / "samples.png").is_file()
    from MorphometryLib.vessels import cow_variants
    from VolGANCore import read_label_volume
    from VolumetricGANLib.labelmaps import variant_vector

    read = variant_vector(cow_variants(read_label_volume(folder / "variant-10011111" / "sample_0000_labels.nii.gz")))
    assert figures["samples"][3]["read_back"] == read.astype(int).tolist()
    assert f"read back from its labels {''.join(map(str, figures['samples'][3]['read_back']))}" in log[-1]
