"""Training-data preprocessing keeps geometry; the cache is reused and invalidated correctly; the sampler."""

from __future__ import annotations

import numpy as np
import pytest

from GANTrainerLib.data import CachedVolumeSet, InfiniteSampler, Preprocess, crop_or_pad, extract_patches, normalise, resample
from VolGANCore import Volume, VolGANError, write_volume

OBLIQUE = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def test_crop_keeps_physical_positions(rng):
    vol = Volume(rng.normal(size=(10, 12, 14)).astype(np.float32), spacing=(0.3, 0.4, 0.6), origin=(5, -3, 2),
                 direction=OBLIQUE)
    out = crop_or_pad(vol, (4, 6, 8), centre_index=(5, 6, 7))
    # voxel (d,h,w) of the crop sits at the same physical point as the source voxel it came from
    start = np.floor(np.array([5, 6, 7]) - (np.array([4, 6, 8]) - 1) / 2).astype(int)  # (3, 3, 3)
    for dhw in [(0, 0, 0), (3, 5, 7), (1, 2, 3)]:
        src = tuple(np.array(dhw) + start)
        assert out.array[dhw] == vol.array[src]
        np.testing.assert_allclose(out.index_to_physical(dhw[::-1]), vol.index_to_physical(src[::-1]))


def test_pad_outside_the_volume(rng):
    vol = Volume(np.ones((4, 4, 4), np.float32))
    out = crop_or_pad(vol, (6, 6, 6), centre_index=(0, 0, 0), pad_value=-5)
    assert out.array[0, 0, 0] == -5 and out.array[-1, -1, -1] == 1
    assert (out.array == 1).sum() == 27 and np.all(out.array[3:, 3:, 3:] == 1)  # box starts at index -3


def test_resample_keeps_centre_and_extent(rng):
    vol = Volume(rng.normal(size=(8, 16, 16)).astype(np.float32), spacing=(0.5, 0.5, 1.0), origin=(1, 2, 3))
    out = resample(vol, (1.0, 1.0, 1.0))
    assert out.shape == (8, 8, 8) and out.spacing == (1.0, 1.0, 1.0)
    c_in = vol.index_to_physical((np.array(vol.shape[::-1]) - 1) / 2)
    c_out = out.index_to_physical((np.array(out.shape[::-1]) - 1) / 2)
    np.testing.assert_allclose(c_in, c_out, atol=1e-9)


def test_label_resampling_is_nearest(rng):
    lab = Volume(rng.integers(0, 3, size=(6, 6, 6)).astype(np.int16), spacing=(1, 1, 1))
    out = resample(lab, (0.5, 0.5, 0.5), label=True)
    assert set(np.unique(out.array)) <= {0, 1, 2}


def test_downsample_keeps_the_physical_region(rng):
    from GANTrainerLib.data import downsample

    vol = Volume(rng.normal(size=(4, 8, 8)).astype(np.float32), spacing=(0.3, 0.3, 0.6), origin=(1, 2, 3),
                 direction=OBLIQUE)
    out = downsample(vol, 2)
    assert out.shape == (2, 4, 4) and out.spacing == (0.6, 0.6, 1.2)
    assert out.array[1, 2, 3] == pytest.approx(vol.array[2:4, 4:6, 6:8].mean(), rel=1e-6)
    # the first output voxel's centre is the centre of the first 2×2×2 block
    np.testing.assert_allclose(out.index_to_physical((0, 0, 0)), vol.index_to_physical((0.5, 0.5, 0.5)))
    with pytest.raises(VolGANError, match="not divisible"):
        downsample(Volume(np.zeros((3, 4, 4), np.float32)), 2)


def test_normalisation_modes():
    vol = Volume(np.linspace(-1000, 2000, 64, dtype=np.float32).reshape(4, 4, 4))
    assert normalise(vol, "minmax").array.min() == -1 and normalise(vol, "minmax").array.max() == 1
    w = normalise(vol, "window", window=(-350, 1100)).array
    assert w.min() == -1 and w.max() == 1
    mid = normalise(Volume(np.full((2, 2, 2), 375.0, np.float32)), "window", window=(-350, 1100))
    assert mid.array[0, 0, 0] == pytest.approx(0.0)
    assert mid.metadata["intensity_lo"] == "-350"
    with pytest.raises(VolGANError, match="the volume is constant"):
        normalise(Volume(np.zeros((2, 2, 2), np.float32)), "minmax")


def test_patches_inside_mask_only():
    arr = np.arange(64 ** 3, dtype=np.float32).reshape(64, 64, 64)
    mask = np.zeros_like(arr, dtype=np.uint8)
    mask[:32, :64, :32] = 1
    patches, origins = extract_patches(Volume(arr, spacing=(0.164,) * 3), Volume(mask), size=32)
    assert patches.shape == (2, 32, 32, 32)
    assert np.array_equal(patches[1], arr[:32, 32:64, :32])
    np.testing.assert_allclose(origins[1], (0, 32 * 0.164, 0))


def test_cache_is_built_once_and_invalidated_by_file_or_recipe_change(tmp_path, rng):
    data = tmp_path / "images"
    for k in range(3):
        write_volume(Volume(rng.normal(size=(6, 10, 10)).astype(np.float32), spacing=(0.3, 0.3, 0.6)), data / f"c{k}.nrrd")
    recipe = Preprocess(roi_shape=(4, 8, 8), intensity="minmax")
    a = CachedVolumeSet.build(data, recipe, tmp_path / "cache")
    assert len(a) == 3 and a[0].shape == (1, 4, 8, 8) and a[0].min() >= -1 and a[0].max() <= 1
    b = CachedVolumeSet.build(data, recipe, tmp_path / "cache")
    assert b.cache_dir == a.cache_dir and isinstance(b.array, np.memmap)
    c = CachedVolumeSet.build(data, Preprocess(roi_shape=(4, 6, 6)), tmp_path / "cache")
    assert c.cache_dir != a.cache_dir and c.shape == (4, 6, 6)
    write_volume(Volume(rng.normal(size=(6, 10, 10)).astype(np.float32), spacing=(0.3, 0.3, 0.6)), data / "c3.nrrd")
    d = CachedVolumeSet.build(data, recipe, tmp_path / "cache")
    assert d.cache_dir != a.cache_dir and len(d) == 4


def test_inconsistent_shapes_need_an_roi(tmp_path, rng):
    data = tmp_path / "images"
    write_volume(Volume(np.ones((4, 5, 6), np.float32) * rng.normal(size=(4, 5, 6)).astype(np.float32)), data / "a.nrrd")
    write_volume(Volume(rng.normal(size=(4, 5, 7)).astype(np.float32)), data / "b.nrrd")
    with pytest.raises(VolGANError, match=r"b\.nrrd: shape \(4, 5, 7\) after preprocessing differs"):
        CachedVolumeSet.build(data, Preprocess(), tmp_path / "cache")


def test_sampler_is_reproducible_disjoint_across_ranks_and_resumable():
    take = lambda s, n: [next(it) for it in [iter(s)] for _ in range(n)]  # noqa: E731
    a = take(InfiniteSampler(10, seed=3), 25)
    assert a == take(InfiniteSampler(10, seed=3), 25)
    assert sorted(a[:10]) == list(range(10))
    r0 = take(InfiniteSampler(10, seed=3, rank=0, world=2), 5)
    r1 = take(InfiniteSampler(10, seed=3, rank=1, world=2), 5)
    assert sorted(r0 + r1) == list(range(10))
    s = InfiniteSampler(10, seed=3)
    it = iter(s)
    first = [next(it) for _ in range(13)]
    state = s.state_dict()
    rest = [next(it) for _ in range(7)]
    s2 = InfiniteSampler(10, seed=0)
    s2.load_state_dict(state)
    it2 = iter(s2)
    assert [next(it2) for _ in range(7)] == rest
    assert first + rest == take(InfiniteSampler(10, seed=3), 20)
