"""Cross-implementation checks of the evaluation against the references it names (Testing/eval_references.py):
pytorch-fid's Inception, MONAI's ResNet-10 (MedicalNet), Sajjadi's PRD, the anchor's MedicalNet input, and a
40-digit Fréchet distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import eval_references as ref
from conftest import shared_file
from GANTrainerLib.evaluation import preprocess
from GANTrainerLib.evaluation.frechet import frechet_distance_from_features
from GANTrainerLib.evaluation.prd import kmeans, prd_auc, prd_from_features, prd_from_histograms
from VolGANCore import read_volume


@pytest.fixture(scope="module")
def mra():
    """The real TOF-MRA crop (D, H, W) = (34, 123, 140)."""
    return read_volume(shared_file("data", "topcow", "topcow_mra_crop.mha")).array


# -- Inception (FID) ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_inception_pool3_equals_pytorch_fid_with_the_same_weights(mra, tmp_path):
    """One random state dict (the published file's layout) in both; pool3 of random and real slices within 1e-5,
    the 299² resize and [-1, 1] scaling included; the anchor's 8-bit slices go through PNG and PIL as it did."""
    from GANTrainerLib.evaluation.features import InceptionSliceExtractor

    reference_trunk = ref.FIDInception3()
    state = ref.random_state_dict(reference_trunk, seed=0)
    reference_trunk.load_state_dict(state, strict=True)
    reference = ref.ReferenceFIDInception(reference_trunk).eval()
    torch.save(state, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    ours = InceptionSliceExtractor(tmp_path / "pt_inception-2015-12-05-6726825d.pth", batch_size=3)

    rng = np.random.default_rng(0)
    groups = [preprocess.anchor_slices_uint8(mra)[[0, 31]],               # real 8-bit slices, 140×123 (i, j)
              (rng.random((1, 64, 80)) * 256).astype(np.uint8),               # random, non-square
              np.concatenate([preprocess.default_slices(mra)[[12]],           # default protocol: float in [0, 1]
                              rng.random((1, 140, 123)).astype(np.float32)])]
    wants = []
    for slices in groups:
        if slices.dtype == np.uint8:
            x = torch.stack([ref.anchor_png_to_tensor(s) for s in slices])
        else:
            x = torch.from_numpy(slices)[:, None].expand(-1, 3, -1, -1)
        with torch.inference_mode():
            want = reference(x).double().numpy()
        got = ours(slices)
        assert got.shape == want.shape == (len(slices), 2048)
        assert np.max(np.abs(got - want)) <= 1e-5
        wants.append(want)
    wants = np.concatenate(wants)
    assert 0.05 < np.abs(wants).mean() < 20 and wants.std(0).mean() > 1e-3  # O(1), slice-dependent features
    # the check is sharp: the ImageNet Inception's average pool in Mixed_7c (the FID graph pools with max) moves it
    ours.net.Mixed_7c.pool = "avg"
    assert np.max(np.abs(ours(groups[-1]) - got)) > 1e-3  # got: the last group's features


# -- MedicalNet ResNet-10 against MONAI ---------------------------------------------------------------------

def _monai_resnet10(dilated: bool):
    from monai.networks.nets import resnet10

    net = resnet10(spatial_dims=3, n_input_channels=1, shortcut_type="B", bias_downsample=False, feed_forward=False,
                   conv1_t_size=7, conv1_t_stride=2)
    if dilated:  # MedicalNet's resnet.py: layer3/layer4 with stride 1 and dilation 2/4 where MONAI strides by 2
        for layer, d in ((net.layer3, 2), (net.layer4, 4)):
            block = layer[0]
            for conv in (block.conv1, block.conv2):
                conv.stride, conv.dilation, conv.padding = (1, 1, 1), (d, d, d), (d, d, d)
            block.downsample[0].stride = (1, 1, 1)
    return net.eval()


@pytest.mark.slow
def test_medicalnet_resnet10_equals_monai_resnet10_with_medicalnets_dilations(mra):
    """One state dict in ours and in MONAI's resnet10(shortcut_type="B", bias_downsample=False): the names and
    shapes load strictly into both; stem..layer2 agree; with MedicalNet's dilated layer3/4 the 512-d features agree
    within 1e-5 on a real and a random volume; MONAI's own (strided) layer3/4 compute different features."""
    from GANTrainerLib.evaluation.medicalnet import MedicalNetResNet10

    ours = MedicalNetResNet10()
    state = ref.random_state_dict(ours, seed=2)
    ours.load_state_dict(state, strict=True)
    monai_dilated, monai_strided = _monai_resnet10(True), _monai_resnet10(False)
    monai_dilated.load_state_dict(state, strict=True)
    monai_strided.load_state_dict(state, strict=True)
    real = preprocess.anchor_medicalnet_input(mra, seed=[0, 0, 0])  # (140, 123, 34), the paper's background rule
    noise = np.random.default_rng(1).standard_normal((40, 36, 20)).astype(np.float32)
    for vol in (real, noise):
        x = torch.from_numpy(vol)[None, None]
        with torch.inference_mode():
            want, got = monai_dilated(x).numpy(), ours(x).numpy()
            stem_ours = ours.layer2(ours.layer1(torch.nn.functional.max_pool3d(torch.relu(ours.bn1(ours.conv1(x))), 3, 2, 1)))
            stem_monai = monai_strided.layer2(monai_strided.layer1(monai_strided.maxpool(monai_strided.act(monai_strided.bn1(monai_strided.conv1(x))))))
            strided = monai_strided(x).numpy()
        assert got.shape == want.shape == (1, 512)
        assert 0.05 < np.abs(want).mean() < 50
        assert torch.equal(stem_ours, stem_monai)
        assert np.max(np.abs(got - want)) <= 1e-5
        assert np.max(np.abs(strided - got)) > 1e-2  # MONAI's resnet10 is not MedicalNet's network beyond layer2


# -- the anchor's MedicalNet input (background rule) -------------------------------------------------------

def test_medicalnet_background_noise_is_the_anchors_rule(mra):
    """Ours = the anchor's min-max + GANDataset normalisation with the same noise array, on the real crop and on a
    volume with a masked (zero) background; 'zero' differs only in the background; each (seed, set, index) stream
    is its own."""
    masked = mra.copy()
    masked[:, :40] = 0.0  # a skull-stripped-like background: many voxels at the minimum
    for vol in (mra, masked):
        stream = [7, 1, 3]
        noise = np.random.default_rng(stream).standard_normal(vol.transpose(2, 1, 0).shape)
        want = ref.anchor_gan_dataset_input(vol.transpose(2, 1, 0).astype(np.float64), noise)
        got = preprocess.anchor_medicalnet_input(vol, background="noise", seed=stream)
        assert got.dtype == np.float32 and np.array_equal(got, want)
        bg = vol.transpose(2, 1, 0) == vol.min()
        zero = preprocess.anchor_medicalnet_input(vol, background="zero")
        assert np.array_equal(zero[~bg], got[~bg]) and np.all(zero[bg] == 0) and bg.sum() >= 1
    assert bg.sum() > 0.25 * bg.size
    other = preprocess.anchor_medicalnet_input(masked, seed=[7, 0, 3])  # the real set's volume 3: other noise
    assert not np.array_equal(other[bg], got[bg]) and np.array_equal(other[~bg], got[~bg])


# -- PRD against Sajjadi's prd_score ------------------------------------------------------------------------

def test_prd_curve_and_auc_equal_sajjadis_and_the_anchors():
    rng = np.random.default_rng(3)
    for k in (2, 10, 20):
        e, r = rng.random(k), rng.random(k)
        e[rng.random(k) < 0.2] = 0.0  # empty cells of one histogram
        e, r = e / e.sum(), r / r.sum()
        want_p, want_r = ref.sajjadi_compute_prd(e, r)
        got_p, got_r = prd_from_histograms(e, r)
        np.testing.assert_array_equal(got_p, want_p)
        np.testing.assert_array_equal(got_r, want_r)
        # AUC: equal to the anchor's with a stable sort of the recall; with its default (quicksort) order of
        # tied recalls, within 1e-4 (the order of ties changes which point joins its neighbour)
        assert prd_auc(got_p, got_r) == ref.anchor_auc_prd(want_p, want_r, sort_kind="stable")
        assert abs(prd_auc(got_p, got_r) - ref.anchor_auc_prd(want_p, want_r)) < 1e-4
    for bad in (dict(epsilon=0.2), dict(num_angles=2)):
        with pytest.raises(ValueError):
            ref.sajjadi_compute_prd(e, r, **bad)
        with pytest.raises(ValueError):
            prd_from_histograms(e, r, **bad)


def test_prd_from_features_equals_sajjadis_algorithm_given_the_same_clusterings():
    """Sajjadi's pooling, histograms (np.histogram density), roles (generated = eval) and averaging over runs,
    with our seeded k-means as the clusterer of each run: identical curves."""
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(30, 6)), rng.normal(size=(30, 6)) + 0.4

    def our_kmeans(data, k, run):  # the labels our run `run` computes (seed 5)
        g = np.random.default_rng([5, run])
        return kmeans(data, k, seed=int(g.integers(2**31)))[0]

    want_p, want_r = ref.sajjadi_compute_prd_from_embedding(fake, real, our_kmeans, num_clusters=3, num_runs=4)
    got_p, got_r, info = prd_from_features(fake, real, num_clusters=3, num_runs=4, seed=5)
    np.testing.assert_allclose(got_p, want_p, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(got_r, want_r, rtol=1e-14, atol=1e-15)
    assert info["num_clusters_per_run"] == [3] * 4
    # unequal sizes: Sajjadi's code refuses them (enforce_balance); ours clusters a balanced subsample per run
    with pytest.raises(ValueError, match="not equal"):
        ref.sajjadi_compute_prd_from_embedding(fake[:20], real, our_kmeans, num_clusters=3)
    assert prd_from_features(fake[:20], real, num_clusters=3)[2]["balanced_to"] == 20


@pytest.mark.slow
def test_prd_with_the_anchors_minibatch_kmeans_agrees_with_ours():
    """The anchor's clusterer (scikit-learn MiniBatchKMeans, n_init 10): on separated groups it finds the same
    cells, so the curves are identical; on overlapping sets the AUCs agree within the spread over seeds."""
    cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(3, 8)) * 20

    def mbk(seed):
        return lambda data, k, run: cluster.MiniBatchKMeans(n_clusters=k, n_init=10, random_state=seed * 100 + run).fit(data).labels_

    real = np.vstack([c + rng.normal(size=(n, 8)) for c, n in zip(centres, (10, 12, 8))])
    fake = np.vstack([c + rng.normal(size=(n, 8)) for c, n in zip(centres, (14, 6, 10))])
    want = ref.sajjadi_compute_prd_from_embedding(fake, real, mbk(0), num_clusters=3, num_runs=3)
    got = prd_from_features(fake, real, num_clusters=3, num_runs=3)[:2]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    real, fake = rng.normal(size=(60, 16)), rng.normal(size=(60, 16)) + 0.5 * (np.arange(16) < 2)
    ours = [prd_auc(*prd_from_features(fake, real, 6, seed=s)[:2]) for s in range(3)]
    anchor = [ref.anchor_auc_prd(*ref.sajjadi_compute_prd_from_embedding(fake, real, mbk(s), num_clusters=6))
              for s in range(3)]
    spread = max(np.std(ours), np.std(anchor))
    assert abs(np.mean(ours) - np.mean(anchor)) < max(3 * spread, 0.02)


# -- Fréchet distance against a 40-digit reference ----------------------------------------------------------

def _frechet_mp(a: np.ndarray, b: np.ndarray, digits: int = 40) -> float:
    """‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2‖A₁A₂ᵀ‖_*/√((n₁−1)(n₂−1)) in ``digits``-digit arithmetic (mpmath)."""
    import mpmath as mp

    mp.mp.dps = digits
    A, B = mp.matrix(a.tolist()), mp.matrix(b.tolist())
    (n1, d), n2 = a.shape, b.shape[0]
    m1 = [mp.fsum(A[i, j] for i in range(n1)) / n1 for j in range(d)]
    m2 = [mp.fsum(B[i, j] for i in range(n2)) / n2 for j in range(d)]
    for M, m, n in ((A, m1, n1), (B, m2, n2)):
        for i in range(n):
            for j in range(d):
                M[i, j] -= m[j]
    nuclear = mp.fsum(mp.svd_r(A * B.T, compute_uv=False))
    t1 = mp.fsum(A[i, j] ** 2 for i in range(n1) for j in range(d)) / (n1 - 1)
    t2 = mp.fsum(B[i, j] ** 2 for i in range(n2) for j in range(d)) / (n2 - 1)
    return float(mp.fsum((x - y) ** 2 for x, y in zip(m1, m2)) + t1 + t2 - 2 * nuclear / mp.sqrt((n1 - 1) * (n2 - 1)))


def _frechet_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's and the anchor's formula: scipy.linalg.sqrtm of Σ₁Σ₂, real part."""
    import scipy.linalg

    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))


@pytest.mark.parametrize("n", [6, 23, 24, 25, 48])
def test_frechet_distance_matches_a_40_digit_reference_and_sqrtm_to_the_documented_tolerance(n):
    """24-d features: ours is within 1e-12 relative of the 40-digit value for n < d, n = d and n > d;
    scipy's sqrtm agrees with ours to 1e-6 when n ≤ d (its own error: the zero eigenvalues of the singular
    Σ₁Σ₂, ~2e-8 here) and to 1e-10 when n > d (docs/evaluation.md)."""
    rng = np.random.default_rng(n)
    d = 24
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    a, b = rng.normal(size=(n, d)) @ mix, rng.normal(size=(n, d)) @ mix + 0.05
    exact = _frechet_mp(a, b)
    ours = frechet_distance_from_features(a, b)
    assert abs(ours - exact) <= 1e-12 * exact
    assert abs(_frechet_sqrtm(a, b) - ours) <= (1e-6 if n <= d else 1e-10) * exact
