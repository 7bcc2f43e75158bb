"""Volume I/O through SimpleITK that round-trips geometry.

Supported: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``).
NRRD and MetaImage store spacing/origin/direction as decimal text and round-trip them exactly;
NIfTI stores them as float32 (sform/qform), so they round-trip to float32 precision (~1e-7 relative).
Label-scheme metadata is stored in NRRD/MetaImage headers (key ``volgan_label_scheme``); NIfTI has no
free-form header, so folder datasets also record it in ``manifest.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .atomic import atomic_path, full_suffix
from .errors import InputFileError, VolGANError
from .volume import Volume, check_3d

__all__ = [
    "SUPPORTED_SUFFIXES",
    "NONFINITE_POLICIES",
    "nonfinite_policy",
    "sha256_file",
    "is_volume_file",
    "read_volume",
    "read_label_volume",
    "write_volume",
]

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# What reading does with NaN/Inf voxels: refuse the file (default), or fill them with 0 or with the volume's finite
# minimum (a background value for CT and MRA). Commands take --nan-policy; it travels to worker processes in the
# environment variable below.
NONFINITE_POLICIES = ("refuse", "zero", "min")
NONFINITE_ENV = "VOLGAN_NAN_POLICY"
_SCHEME_KEY = "volgan_label_scheme"
_SKIP_KEYS_PREFIX = ("ITK_", "NRRD_", "dim[", "pixdim", "qto_", "sto_", "srow_", "qform", "sform", "quatern",
                     "qoffset", "scl_", "bitpix", "datatype", "intent", "descrip", "aux_file", "cal_",
                     "xyzt_units", "toffset", "slice_", "dim_info", "vox_offset", "magic", "nifti_type")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file, read in chunks (provenance of weights, checkpoints and sources)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def is_volume_file(path: str | os.PathLike) -> bool:
    """True if the file name has a supported volume extension (case-insensitive)."""
    return full_suffix(path).lower() in SUPPORTED_SUFFIXES


def _check_suffix(path: Path) -> None:
    if not is_volume_file(path):
        raise InputFileError(
            path,
            f"unsupported file type '{full_suffix(path) or '(none)'}'",
            "use " + ", ".join(SUPPORTED_SUFFIXES),
        )


def nonfinite_policy(policy: str | None = None) -> str:
    """``policy``, else ``$VOLGAN_NAN_POLICY``, else ``"refuse"``; checked against :data:`NONFINITE_POLICIES`."""
    value = policy or os.environ.get(NONFINITE_ENV) or "refuse"
    if value not in NONFINITE_POLICIES:
        raise VolGANError(f"--nan-policy {value!r}: choose one of {', '.join(NONFINITE_POLICIES)}")
    return value


class NonFiniteFilled(UserWarning):
    """NaN/Inf voxels were replaced on reading, as ``--nan-policy`` asked."""


def read_volume(
    path: str | os.PathLike,
    dtype: np.dtype | type | None = np.float32,
    allow_nonfinite: bool = False,
    nan_policy: str | None = None,
) -> Volume:
    """Read a 3-D scalar volume with its geometry.

    Parameters
    ----------
    path : path-like
        A NIfTI, NRRD or MetaImage file.
    dtype : numpy dtype or None
        Cast the voxels to this type (default float32); ``None`` keeps the stored type.
    allow_nonfinite : bool
        True keeps NaN/Inf voxels as they are (internal uses that handle them); ``nan_policy`` is then ignored.
    nan_policy : "refuse", "zero", "min" or None
        NaN/Inf voxels: refuse the file with an error that gives their count and the first index (default), or
        replace them with 0 or with the volume's finite minimum (with a :class:`NonFiniteFilled` warning).
        ``None``: ``$VOLGAN_NAN_POLICY`` (set by the commands' ``--nan-policy``), else refuse. NIfTI needs care:
        ITK's NIfTI reader turns NaN/Inf into numbers without a word, so float NIfTI data are checked as stored.

    Raises
    ------
    InputFileError
        Missing, unsupported, corrupt, not 3-D, multi-component, or non-finite input; the message names
        the file, the problem and the fix.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "file not found", "check the path")
    if path.is_dir():
        raise InputFileError(path, "is a folder, not a volume file", "pass a file, or use a folder dataset")
    _check_suffix(path)
    policy = None if allow_nonfinite else nonfinite_policy(nan_policy)
    nifti = None
    if full_suffix(path).lower() in (".nii", ".nii.gz"):
        nifti = _check_nifti_complete(path)  # ITK reads truncated NIfTI data silently (zeros/garbage): refuse it
    # ITK's NIfTI reader turns NaN/Inf floats into numbers without a word; float NIfTI voxels are therefore taken
    # from nibabel (one decompression, as stored, scaled as ITK scales them) and only the geometry from ITK
    float_nifti = (nifti is not None and len(nifti.shape) == 3
                   and np.issubdtype(nifti.get_data_dtype(), np.floating))
    try:
        if float_nifti:
            image = sitk.ImageFileReader()
            image.SetFileName(str(path))
            image.ReadImageInformation()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1].replace("sitk::ERROR: ", "")
        if "No such file" in detail:  # MetaImage reports short data this way
            detail = "the image data is incomplete"
        raise InputFileError(path, f"cannot be read as a {full_suffix(path)} image: {detail}",
                             "the file is corrupt or truncated; re-export it") from None
    components = image.GetNumberOfComponents() if float_nifti else image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputFileError(path, f"has {components} components per voxel",
                             "a scalar (grey-value or label) volume is needed")
    dim = image.GetDimension()
    if float_nifti:   # NIfTI stores x fastest: (x, y, z) -> the (D, H, W) array ITK would give
        array = np.ascontiguousarray(np.asarray(nifti.dataobj).transpose(2, 1, 0))
    else:
        array = sitk.GetArrayFromImage(image)
    try:
        array = check_3d(array, str(path))
    except VolGANError:
        raise InputFileError(path, f"is {dim}-D with size {image.GetSize()}",
                             "a 3-D volume is needed; split series into one file per volume") from None
    spacing, origin, direction = _geometry_3d(image)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    if policy is not None:
        array = _handle_nonfinite(path, array, policy)
    metadata = {}
    scheme = None
    for key in image.GetMetaDataKeys():
        if key == _SCHEME_KEY:
            scheme = image.GetMetaData(key)
        elif key.startswith("volgan_"):
            metadata[key[len("volgan_"):]] = image.GetMetaData(key)
    return Volume(array, spacing=spacing, origin=origin, direction=direction, label_scheme=scheme,
                  metadata=metadata)


def _handle_nonfinite(path: Path, array: np.ndarray, policy: str) -> np.ndarray:
    """Refuse or fill the NaN/Inf voxels of ``array`` (D, H, W) as ``policy`` says (see :func:`read_volume`)."""
    if not np.issubdtype(array.dtype, np.floating) or np.isfinite(array).all():
        return array
    bad = ~np.isfinite(array)
    n = int(np.count_nonzero(bad))
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    if policy == "refuse":
        raise InputFileError(path, f"contains {n} NaN/Inf voxel(s), the first at (D,H,W)={first}",
                             "replace them with the background value, or pass --nan-policy zero or min")
    array = np.array(array, copy=True)
    value = 0.0 if policy == "zero" else float(np.min(array[~bad])) if n < array.size else 0.0
    array[bad] = value
    import warnings

    warnings.warn(f"{path}: {n} NaN/Inf voxel(s) set to {value:g} (--nan-policy {policy})", NonFiniteFilled,
                  stacklevel=3)
    return array


def _check_nifti_complete(path: Path):
    """Refuse a NIfTI file whose voxel data is shorter than its header promises; returns the nibabel image.

    Uncompressed: compare the file size. Gzipped: the gzip trailer holds the uncompressed size (mod 2³²);
    if it does not match, decompress the stream to be sure (multi-member files, > 4 GiB).
    """
    import gzip
    import struct
    import zlib

    import nibabel as nib

    try:
        image = nib.load(str(path))
        header = image.header  # nibabel resets vox_offset on this copy: the data offset is on the proxy
        expected = int(image.dataobj.offset) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    except Exception as exc:  # nibabel's own message says what is wrong with the header
        raise InputFileError(path, f"cannot be read as NIfTI: {str(exc).splitlines()[0]}",
                             "the file is corrupt or not a NIfTI image; re-export it") from None
    if full_suffix(path).lower() == ".nii":
        actual = path.stat().st_size
    else:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            actual = struct.unpack("<I", fh.read(4))[0]
        if actual == expected % 2**32:
            return image
        actual = 0
        try:
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    actual += len(chunk)
        except (EOFError, OSError, zlib.error):
            raise InputFileError(path, "is truncated: the compressed stream ends before the image data does",
                                 "the file is incomplete (interrupted copy or download); copy it again") from None
    if actual < expected:
        raise InputFileError(path, f"is truncated: the header promises {expected} bytes, the file holds {actual}",
                             "the file is incomplete (interrupted copy or download); copy it again")
    return image


def _geometry_3d(image) -> tuple[tuple, tuple, np.ndarray]:
    """Spacing, origin, direction of the first three axes of a (possibly 4-D, singleton) image."""
    dim = image.GetDimension()
    spacing = tuple(image.GetSpacing())[:3]
    origin = tuple(image.GetOrigin())[:3]
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    return spacing, origin, direction


def read_label_volume(
    path: str | os.PathLike,
    allowed_ids: Iterable[int] | None = None,
    scheme: str | None = None,
) -> Volume:
    """Read an integer label volume; refuse non-integer values and label ids outside ``allowed_ids``.

    ``scheme`` (e.g. ``"topcow13"``) sets the allowed ids from :mod:`VolGANCore.labels` and is recorded on
    the returned Volume.
    """
    from .labels import get_scheme

    vol = read_volume(path, dtype=None)
    arr = vol.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            n = int(np.count_nonzero(arr != np.round(arr)))
            raise InputFileError(path, f"is not a label map: {n} voxel(s) hold non-integer values",
                                 "labels must be whole numbers; was an intensity image passed as labels?")
    if arr.min() < 0:
        raise InputFileError(path, f"has negative label value {int(arr.min())}", "labels must be ≥ 0")
    if arr.max() > np.iinfo(np.int16).max:
        raise InputFileError(path, f"label value {int(arr.max())} is too large", "labels must be < 32768")
    arr = arr.astype(np.int16)
    if scheme is not None:
        allowed_ids = get_scheme(scheme).ids_with_background
        vol.label_scheme = scheme
    if allowed_ids is not None:
        unknown = sorted(set(np.unique(arr).tolist()) - set(int(i) for i in allowed_ids) - {0})
        if unknown:
            raise InputFileError(path, f"unknown label id(s) {unknown}",
                                 f"allowed: {sorted(set(allowed_ids) - {0})}" + (f" in scheme '{scheme}'" if scheme else ""))
    vol.array = arr
    return vol


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``volume`` with its geometry, atomically (no partial file is ever visible at ``path``).

    The format follows the extension. Label schemes and ``metadata`` go into NRRD/MHA headers.
    """
    import SimpleITK as sitk

    path = Path(path)
    _check_suffix(path)
    if not isinstance(volume, Volume):
        raise VolGANError(f"{path}: write_volume needs a Volume (with geometry), got {type(volume).__name__}")
    array = volume.array
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    elif array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in volume.spacing))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(float(d) for d in volume.direction.reshape(-1)))
    if volume.label_scheme:
        image.SetMetaData(_SCHEME_KEY, volume.label_scheme)
    for key, value in volume.metadata.items():
        image.SetMetaData(f"volgan_{key}", str(value))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path
