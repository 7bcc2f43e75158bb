"""Batched exact bone morphometry over many volumes or patches (folder, file list, or an (N, D, H, W) array).

Each item is measured by :func:`MorphometryLib.bone.bone_morphometry`; items run in worker processes
(``workers``; the panel is CPU-bound numpy and releases no GIL worth threading). A failing item (e.g. a
patch with no bone) does not stop the batch: its row carries the error message and NaNs.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from VolGANCore.atomic import atomic_path
from VolGANCore.errors import VolGANError
from VolGANCore.progress import Progress
from VolGANCore.volume import Volume

__all__ = ["batch_bone_morphometry", "write_rows_csv"]


def _measure_chunk(items: list[tuple[str, Any]], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    from VolGANCore.io import read_volume

    from .bone import bone_morphometry

    rows = []
    for name, item in items:
        row: dict[str, Any] = {"case": name}
        try:
            if isinstance(item, (str, os.PathLike)):
                item = read_volume(item, dtype=None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row.update(bone_morphometry(item, **kwargs))
            row["error"] = ""
        except VolGANError as exc:
            row["error"] = str(exc)
        rows.append(row)
    return rows


def _items(inputs, spacing) -> list[tuple[str, Any]]:
    from VolGANCore.dataset import case_id, list_volumes

    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if path.is_dir():
            files = list_volumes(path)
            if not files:
                raise VolGANError(f"{path}: no volume files (.nii/.nii.gz/.nrrd/.mha) in this folder")
            return [(case_id(f), str(f)) for f in files]
        return [(case_id(path), str(path))]
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 3:
            inputs = inputs[None]
        if inputs.ndim == 5 and inputs.shape[1] == 1:
            inputs = inputs[:, 0]
        if inputs.ndim != 4:
            raise VolGANError(f"inputs: expected an (N, D, H, W) array, got shape {inputs.shape}")
        if spacing is None:
            raise VolGANError("spacing: an array batch needs spacing=(x, y, z) in mm")
        return [(f"{i:05d}", Volume(inputs[i], spacing=spacing)) for i in range(len(inputs))]
    out = []
    for i, it in enumerate(inputs):
        if isinstance(it, (str, os.PathLike)):
            out.append((case_id(it), str(it)))
        elif isinstance(it, Volume):
            out.append((f"{i:05d}", it))
        else:
            if spacing is None:
                raise VolGANError("spacing: arrays need spacing=(x, y, z) in mm")
            out.append((f"{i:05d}", Volume(np.asarray(it), spacing=spacing)))
    return out


def batch_bone_morphometry(
    inputs: str | os.PathLike | np.ndarray | Iterable[Any],
    spacing: Sequence[float] | None = None,
    threshold: float | str | None = None,
    otsu: bool = False,
    parameters: Iterable[str] | None = None,
    workers: int | None = None,
    chunk_size: int = 16,
    bonej: bool = False,
    progress=None,
    cancel=None,
) -> list[dict[str, Any]]:
    """Bone morphometry of many volumes; one row (dict) per input, in input order.

    Parameters
    ----------
    inputs : folder, file, (N, D, H, W) array, or iterable of files / Volumes / arrays
        What to measure. A folder is listed with :func:`VolGANCore.list_volumes`.
    spacing : 3 floats, optional
        (x, y, z) mm for array inputs (required for them).
    threshold, otsu, parameters, bonej
        As :func:`MorphometryLib.bone.bone_morphometry`.
    workers : int, optional
        Worker processes (default: the CPU count, at most 8; 1 = in this process).
    chunk_size : int
        Items per task sent to a worker.

    Returns
    -------
    list of dict: ``case`` (file stem or index), the panel's keys, and ``error`` ("" when measured).
    """
    items = _items(inputs, spacing)
    kwargs = {"threshold": threshold, "otsu": otsu, "parameters": None if parameters is None else list(parameters),
              "bonej": bool(bonej)}
    workers = max(1, min(8, os.cpu_count() or 1)) if workers is None else max(1, int(workers))
    chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
    rows: list[dict[str, Any]] = []
    with Progress(len(items), "bone morphometry (batch)", progress, cancel) as prog:
        if workers == 1 or len(chunks) == 1:
            for ch in chunks:
                rows.extend(_measure_chunk(ch, kwargs))
                prog.advance(len(ch))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_measure_chunk, ch, kwargs) for ch in chunks]
                try:
                    for fut, ch in zip(futures, chunks):
                        rows.extend(fut.result())
                        prog.advance(len(ch))
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    keys = [k for r in rows for k in r]
    cols = list(dict.fromkeys(keys))
    for r in rows:
        for k in cols:
            r.setdefault(k, math.nan)
    return rows


def write_rows_csv(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows (dicts with the same keys) as a CSV file, atomically; returns the path."""
    if not rows:
        raise VolGANError(f"{path}: nothing to write (no rows)")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in cols})
    return Path(path)
