"""VolGANCore: the bottom layer shared by every SlicerVolumetricGAN package.

Geometry-carrying volumes, safe I/O, folder datasets, progress/cancellation, atomic writes, label schemes,
the ``volgan`` CLI frame, and (in :mod:`VolGANCore.mrml`, which imports Slicer's MRML lazily) the bridge
to MRML nodes. Nothing here imports torch or Slicer at import time.
"""

from .errors import Cancelled, InputFileError, VolGANError
from .volume import Volume, as_volume, check_3d, check_finite
from .io import SUPPORTED_SUFFIXES, read_label_volume, read_volume, write_volume
from .atomic import atomic_directory, atomic_path, atomic_write_json, atomic_write_text
from .progress import CancelToken, LineProgress, Progress, ProgressEvent, RecordingProgress, TqdmProgress
from .dataset import DatasetReport, list_volumes, read_manifest, validate_dataset, write_manifest
from .labels import AYDIN7, SCHEMES, TOPCOW13, convert_labels, get_scheme

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "VolGANError", "InputFileError", "Cancelled",
    "Volume", "as_volume", "check_3d", "check_finite",
    "SUPPORTED_SUFFIXES", "read_volume", "read_label_volume", "write_volume",
    "atomic_directory", "atomic_path", "atomic_write_json", "atomic_write_text",
    "CancelToken", "LineProgress", "Progress", "ProgressEvent", "RecordingProgress", "TqdmProgress",
    "DatasetReport", "list_volumes", "read_manifest", "validate_dataset", "write_manifest",
    "AYDIN7", "SCHEMES", "TOPCOW13", "convert_labels", "get_scheme",
]
