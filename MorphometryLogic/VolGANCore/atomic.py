"""Atomic file and folder writes: a reader never sees a half-written output.

A file is written to a temporary name in the same folder and renamed over the target with
:func:`os.replace` (atomic on POSIX and Windows for same-filesystem renames). A folder of outputs is built
under a temporary sibling and renamed into place at the end, so an interrupted job leaves no partial folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_directory",
    "full_suffix",
]


def full_suffix(path: str | os.PathLike) -> str:
    """The file's full extension, keeping compound suffixes such as ``.nii.gz`` and ``.seg.nrrd``."""
    name = Path(path).name.lower()
    for compound in (".nii.gz", ".seg.nrrd", ".tar.gz"):
        if name.endswith(compound):
            return Path(path).name[-len(compound):]
    return Path(path).suffix


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``, else delete it.

    The temporary name keeps the target's extension so that writers choosing a format by extension
    (SimpleITK, torch, matplotlib) behave as for the target.

    Example
    -------
    >>> with atomic_path("model.vgan") as tmp:          # doctest: +SKIP
    ...     torch.save(state, tmp)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = full_suffix(target)
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    tmp = target.with_name(f".{stem}.tmp-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer did not create {tmp}")
        with open(tmp, "rb") as fh:  # flush file contents to disk before the rename makes them visible
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the target path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically and return the target path."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Serialise ``obj`` as JSON (NumPy scalars and arrays converted) and write it atomically."""
    return atomic_write_text(target, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder of outputs under a temporary sibling; move it to ``target`` only on success.

    If ``target`` exists and is non-empty, ``overwrite=False`` raises :class:`FileExistsError` before any
    work starts; ``overwrite=True`` replaces it at the end (the old folder survives a failed run).
    """
    from .errors import VolGANError

    target = Path(target)
    if target.exists() and not target.is_dir():
        raise VolGANError(f"{target}: exists and is not a folder (choose another output folder)")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise VolGANError(f"{target}: output folder is not empty (choose a new folder or pass --overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
