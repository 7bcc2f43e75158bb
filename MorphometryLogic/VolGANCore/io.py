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
    "sha256_file",
    "is_volume_file",
    "read_volume",
    "read_label_volume",
    "write_volume",
]

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
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


def read_volume(
    path: str | os.PathLike,
    dtype: np.dtype | type | None = np.float32,
    allow_nonfinite: bool = False,
) -> Volume:
    """Read a 3-D scalar volume with its geometry.

    Parameters
    ----------
    path : path-like
        A NIfTI, NRRD or MetaImage file.
    dtype : numpy dtype or None
        Cast the voxels to this type (default float32); ``None`` keeps the stored type.
    allow_nonfinite : bool
        If False (default), NaN/Inf voxels raise an error naming the file.

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
    if full_suffix(path).lower() in (".nii", ".nii.gz"):
        _check_nifti_complete(path)  # ITK reads truncated NIfTI data silently (zeros/garbage): refuse it
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1].replace("sitk::ERROR: ", "")
        if "No such file" in detail:  # MetaImage reports short data this way
            detail = "the image data is incomplete"
        raise InputFileError(path, f"cannot be read as a {full_suffix(path)} image: {detail}",
                             "the file is corrupt or truncated; re-export it") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputFileError(path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel",
                             "a scalar (grey-value or label) volume is needed")
    dim = image.GetDimension()
    array = sitk.GetArrayFromImage(image)
    try:
        array = check_3d(array, str(path))
    except VolGANError:
        raise InputFileError(path, f"is {dim}-D with size {image.GetSize()}",
                             "a 3-D volume is needed; split series into one file per volume") from None
    spacing, origin, direction = _geometry_3d(image)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    if not allow_nonfinite and np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputFileError(path, f"contains {bad} NaN/Inf voxel(s)",
                                 "replace them (e.g. with the background value) before use")
    metadata = {}
    scheme = None
    for key in image.GetMetaDataKeys():
        if key == _SCHEME_KEY:
            scheme = image.GetMetaData(key)
        elif key.startswith("volgan_"):
            metadata[key[len("volgan_"):]] = image.GetMetaData(key)
    return Volume(array, spacing=spacing, origin=origin, direction=direction, label_scheme=scheme,
                  metadata=metadata)


def _check_nifti_complete(path: Path) -> None:
    """Refuse a NIfTI file whose voxel data is shorter than its header promises.

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
            return
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
