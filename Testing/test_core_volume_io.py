"""Volume geometry and SimpleITK I/O: exact round trips, and one readable error per kind of bad input."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from VolGANCore import InputFileError, Volume, VolGANError, read_label_volume, read_volume, write_volume
from conftest import shared_file

OBLIQUE = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def make_volume(rng, shape=(5, 6, 7), dtype=np.float32):
    return Volume(rng.normal(size=shape).astype(dtype), spacing=(0.297, 0.31, 0.6), origin=(12.5, -30.25, 7.125),
                  direction=OBLIQUE)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_text_header_formats_round_trip_geometry_exactly(tmp_path, rng, suffix):
    vol = make_volume(rng)
    back = read_volume(write_volume(vol, tmp_path / f"v{suffix}"))
    assert back.spacing == vol.spacing
    assert back.origin == vol.origin
    assert np.array_equal(back.direction, vol.direction)
    assert np.array_equal(back.array, vol.array)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trips_geometry_to_float32_precision(tmp_path, rng, suffix):
    vol = make_volume(rng)
    back = read_volume(write_volume(vol, tmp_path / f"v{suffix}"))
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-7)
    np.testing.assert_allclose(back.origin, vol.origin, rtol=1e-7)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-7)
    assert np.array_equal(back.array, vol.array)
    assert back.shape == (5, 6, 7)


def test_array_order_is_dhw_and_spacing_xyz(tmp_path):
    """The last array axis is x (ITK index i): a ramp along W must appear along x in physical space."""
    arr = np.zeros((2, 3, 4), np.float32)
    arr[:] = np.arange(4)
    vol = Volume(arr, spacing=(0.5, 1.0, 2.0))
    back = read_volume(write_volume(vol, tmp_path / "ramp.nrrd"))
    assert back.array_spacing == (2.0, 1.0, 0.5)
    # voxel (i=3, j=0, k=0) sits 3 * 0.5 mm along x
    np.testing.assert_allclose(back.index_to_physical([3, 0, 0]), [1.5, 0, 0])
    np.testing.assert_allclose(back.physical_to_index(back.index_to_physical([1, 2, 1])), [1, 2, 1])
    assert back.array[0, 0, 3] == 3


def test_label_scheme_and_metadata_survive_nrrd(tmp_path):
    lab = Volume(np.array([[[0, 1], [15, 10]]], np.int16), spacing=(1, 1, 1), label_scheme="topcow13",
                 metadata={"source": "phantom seed 3"})
    back = read_label_volume(write_volume(lab, tmp_path / "l.nrrd"), scheme="topcow13")
    assert back.label_scheme == "topcow13"
    assert back.metadata == {"source": "phantom seed 3"}
    assert back.array.dtype == np.int16


def test_singleton_4d_is_read_as_3d(tmp_path):
    """The CoW authors write 128×128×32×1 NIfTIs: a trailing axis of length 1 is unambiguous."""
    import SimpleITK as sitk

    arr = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)  # SimpleITK order: t, z, y, x
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=False), str(tmp_path / "v4.nii.gz"))
    assert read_volume(tmp_path / "v4.nii.gz").shape == (2, 3, 4)


def test_true_4d_and_2d_are_refused_with_the_file_name(tmp_path):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False),
                    str(tmp_path / "series.nii.gz"))
    with pytest.raises(InputFileError, match=r"series\.nii\.gz: is 4-D"):
        read_volume(tmp_path / "series.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.float32)), str(tmp_path / "slice.nrrd"))
    with pytest.raises(InputFileError, match=r"slice\.nrrd: is 2-D"):
        read_volume(tmp_path / "slice.nrrd")


def test_missing_corrupt_unsupported_and_vector_files(tmp_path):
    import SimpleITK as sitk

    with pytest.raises(InputFileError, match="nothere.nii.gz: file not found"):
        read_volume(tmp_path / "nothere.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 10))
    with pytest.raises(InputFileError, match=r"bad\.nii\.gz: cannot be read .*corrupt"):
        read_volume(tmp_path / "bad.nii.gz")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputFileError, match=r"img\.png: unsupported file type '\.png'.*\.nii\.gz"):
        read_volume(tmp_path / "img.png")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 3), np.float32), isVector=True),
                    str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputFileError, match=r"rgb\.nrrd: has 3 components"):
        read_volume(tmp_path / "rgb.nrrd")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file_is_refused(tmp_path, rng, suffix):
    """ITK reads a truncated NIfTI silently (garbage voxels); every format must refuse it instead."""
    path = write_volume(make_volume(rng, (8, 8, 8)), tmp_path / f"v{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match=rf"v{suffix.replace('.', chr(92) + '.')}: .*(truncated|corrupt)"):
        read_volume(path)


def test_nan_and_inf_voxels_are_refused_unless_allowed(tmp_path, rng):
    vol = make_volume(rng)
    vol.array[1, 2, 3] = np.nan
    vol.array[0, 0, 0] = np.inf
    path = write_volume(vol, tmp_path / "nan.nrrd")
    with pytest.raises(InputFileError, match=r"nan\.nrrd: contains 2 NaN/Inf voxel"):
        read_volume(path)
    assert np.isnan(read_volume(path, allow_nonfinite=True).array[1, 2, 3])


def test_label_maps_must_be_integer_and_known(tmp_path):
    frac = Volume(np.array([[[0, 1.5]]], np.float32))
    write_volume(frac, tmp_path / "frac.nrrd")
    with pytest.raises(InputFileError, match=r"frac\.nrrd: is not a label map"):
        read_label_volume(tmp_path / "frac.nrrd")
    bad = Volume(np.array([[[0, 13, 4]]], np.int16))
    write_volume(bad, tmp_path / "l13.nii.gz")
    with pytest.raises(InputFileError, match=r"l13\.nii\.gz: unknown label id\(s\) \[13\].*topcow13"):
        read_label_volume(tmp_path / "l13.nii.gz", scheme="topcow13")


def test_write_is_atomic_and_leaves_nothing_on_failure(tmp_path, rng, monkeypatch):
    import SimpleITK as sitk

    target = tmp_path / "out.nii.gz"
    write_volume(make_volume(rng), target)
    before = target.read_bytes()

    def explode(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        write_volume(make_volume(rng), target)
    assert target.read_bytes() == before  # old file intact
    assert sorted(os.listdir(tmp_path)) == ["out.nii.gz"]  # no temp file left


def test_volume_validates_its_inputs(rng):
    with pytest.raises(VolGANError, match="spacing must be positive"):
        Volume(np.zeros((2, 2, 2)), spacing=(1, 0, 1))
    with pytest.raises(VolGANError, match="expected a 3-D array"):
        Volume(np.zeros((2, 2)))
    with pytest.raises(VolGANError, match="not orthonormal"):
        Volume(np.zeros((2, 2, 2)), direction=np.diag([1.0, 2.0, 1.0]))


def test_real_tof_crop_and_topcow_labels_read_with_geometry():
    mra = read_volume(shared_file("data", "topcow", "topcow_mra_crop.mha"))
    assert mra.shape == (34, 123, 140)
    np.testing.assert_allclose(mra.spacing, (0.297, 0.297, 0.6), rtol=1e-2)
    assert 10 < mra.array.min() and mra.array.max() < 1200
    lab = read_label_volume(shared_file("data", "topcow", "topcow_mr_roi_003_labels.nii.gz"), scheme="topcow13")
    ids = set(np.unique(lab.array).tolist()) - {0}
    assert ids and ids <= {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15}
    np.testing.assert_allclose(lab.spacing, (0.297, 0.297, 0.6), rtol=1e-2)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_nan_and_inf_are_refused_in_every_format_with_count_and_first_index(tmp_path, rng, suffix):
    """ITK's NIfTI reader turns NaN/Inf into numbers without a word: NIfTI data are checked as stored."""
    vol = make_volume(rng, (6, 7, 8))
    vol.array[2, 3, 4] = np.nan
    vol.array[5, 6, 7] = -np.inf
    path = write_volume(vol, tmp_path / f"nan{suffix}")
    with pytest.raises(InputFileError, match=r"contains 2 NaN/Inf voxel\(s\), the first at \(D,H,W\)=\(2, 3, 4\)"):
        read_volume(path)
    with pytest.raises(InputFileError, match=r"--nan-policy zero or min"):
        read_volume(path, dtype=None)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_nan_policy_fills_with_zero_or_the_finite_minimum_and_says_so(tmp_path, rng, suffix, monkeypatch):
    from VolGANCore.io import NonFiniteFilled

    vol = make_volume(rng, (6, 7, 8))
    vol.array += 5.0
    vol.array[2, 3, 4] = np.nan
    path = write_volume(vol, tmp_path / f"nan{suffix}")
    finite_min = float(np.nanmin(vol.array))
    with pytest.warns(NonFiniteFilled, match=r"1 NaN/Inf voxel\(s\) set to 0 \(--nan-policy zero\)"):
        assert read_volume(path, nan_policy="zero").array[2, 3, 4] == 0.0
    monkeypatch.setenv("VOLGAN_NAN_POLICY", "min")                  # what --nan-policy sets for worker processes
    with pytest.warns(NonFiniteFilled):
        filled = read_volume(path)
    assert filled.array[2, 3, 4] == pytest.approx(finite_min) and np.isfinite(filled.array).all()
    monkeypatch.setenv("VOLGAN_NAN_POLICY", "median")
    with pytest.raises(VolGANError, match="--nan-policy 'median': choose one of refuse, zero, min"):
        read_volume(path)


def test_every_command_that_reads_volumes_takes_nan_policy_and_refuses_by_default(tmp_path, rng, monkeypatch, capsys):
    from VolGANCore.cli import NO_VOLUME_INPUT, _leaf_parsers, build_parser, main

    monkeypatch.delenv("VOLGAN_NAN_POLICY", raising=False)   # main() sets it; restored (removed) afterwards

    parser = build_parser()
    leaves = dict(_leaf_parsers(parser))
    for path, leaf in leaves.items():
        assert ("--nan-policy" in leaf._option_string_actions) == (path not in NO_VOLUME_INPUT), path
    assert {"morphometry bone", "evaluate", "train", "dataset validate", "generate"} <= set(leaves) - NO_VOLUME_INPUT
    vol = make_volume(rng, (8, 8, 8))
    vol.array[1, 1, 1] = np.nan
    path = write_volume(vol, tmp_path / "nan.nii.gz")
    assert main(["--quiet", "morphometry", "bone", str(path), "--threshold", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"volgan morphometry: error: {path}: contains 1 NaN/Inf voxel(s), the first at (D,H,W)=(1, 1, 1) "
                   "(replace them with the background value, or pass --nan-policy zero or min)"]
    assert main(["--quiet", "morphometry", "bone", str(path), "--threshold", "0.5", "--nan-policy", "zero"]) == 0
    assert "warning: " + str(path) + ": 1 NaN/Inf voxel(s) set to 0" in capsys.readouterr().err


def test_float_nifti_voxels_and_geometry_match_itk_also_with_intensity_scaling(tmp_path, rng):
    """Float NIfTI voxels come from nibabel (ITK hides NaN there): they must be exactly what ITK reads."""
    import nibabel as nib
    import SimpleITK as sitk

    data = rng.normal(size=(7, 6, 5)).astype(np.float32)            # NIfTI (x, y, z)
    affine = np.array([[-0.5, 0, 0, 10], [0, 0, 0.7, 20], [0, -0.6, 0, -5], [0, 0, 0, 1]])   # axes permuted
    for slope, inter, suffix in ((None, None, ".nii"), (None, None, ".nii.gz"), (2.0, -1.0, ".nii.gz")):
        img = nib.Nifti1Image(data, affine)
        img.header.set_slope_inter(slope, inter)
        path = tmp_path / f"scaled{slope}{suffix}"
        nib.save(img, str(path))
        ours = read_volume(path, dtype=None)
        itk = sitk.ReadImage(str(path))
        if slope is None:   # stored values: exactly ITK's
            np.testing.assert_array_equal(ours.array, sitk.GetArrayFromImage(itk))
        else:               # scaled in float64 here, in float32 by ITK
            np.testing.assert_allclose(ours.array, sitk.GetArrayFromImage(itk), rtol=1e-6)
        assert ours.spacing == pytest.approx(itk.GetSpacing()) and ours.origin == pytest.approx(itk.GetOrigin())
        np.testing.assert_allclose(ours.direction.ravel(), itk.GetDirection())
