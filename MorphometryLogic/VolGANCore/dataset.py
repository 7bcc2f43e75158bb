"""Folder datasets: list the volumes in a folder, validate them up front, and keep a manifest.

A dataset folder holds one 3-D volume per file (NIfTI/NRRD/MHA), optionally with a sibling folder of
label maps with the same file names. ``manifest.json`` records, per file, shape, spacing, origin, value
range and any parameters the producer wants to keep (e.g. phantom ground truth).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .atomic import atomic_write_json, full_suffix
from .errors import InputFileError, VolGANError
from .io import SUPPORTED_SUFFIXES, is_volume_file, read_label_volume, read_volume
from .progress import CancelToken, Progress, ProgressCallback

__all__ = [
    "MANIFEST_NAME",
    "list_volumes",
    "case_id",
    "validate_dataset",
    "DatasetReport",
    "write_manifest",
    "read_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def case_id(path: str | os.PathLike) -> str:
    """File name without its (compound) extension: the key that pairs images with labels."""
    name = Path(path).name
    suffix = full_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def _volume_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_volume_file(p))


def list_volumes(folder: str | os.PathLike) -> list[Path]:
    """Sorted volume files directly inside ``folder``; a clear error if it is missing or holds none."""
    folder = Path(folder)
    if not folder.exists():
        raise InputFileError(folder, "folder not found", "check the path")
    if not folder.is_dir():
        raise InputFileError(folder, "is a file, not a folder", "pass the folder that holds the volumes")
    files = _volume_files(folder)
    if not files:
        inside = [d for d in sorted(folder.iterdir(), key=lambda d: (d.name != "images", d.name))
                  if d.is_dir() and not d.name.startswith(".") and _volume_files(d)]
        if inside:   # e.g. what `volgan phantom` writes: data/images, data/labels or data/masks
            names = ", ".join(f"{d.name}/" for d in inside)
            raise InputFileError(folder, f"no volumes directly inside; its sub-folder(s) {names} hold volumes",
                                 f"pass {inside[0]}, and its labels or masks folder where the command takes one")
        raise InputFileError(folder, "no volumes found", "looked for " + ", ".join(f"*{s}" for s in SUPPORTED_SUFFIXES))
    ids = [case_id(p) for p in files]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputFileError(folder, f"several files share the case id(s) {dup} (e.g. a.nii.gz and a.nrrd)",
                             "keep one file per case")
    return files


@dataclasses.dataclass
class DatasetReport:
    """Outcome of :func:`validate_dataset`: per-file entries and a list of problems (empty = valid)."""

    folder: str
    entries: list[dict[str, Any]]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        shapes = sorted({tuple(e["shape_dhw"]) for e in self.entries if "shape_dhw" in e})
        spacings = sorted({tuple(round(s, 5) for s in e["spacing_xyz_mm"]) for e in self.entries if "spacing_xyz_mm" in e})
        lines = [f"{self.folder}: {len(self.entries)} volume(s); shapes {shapes}; spacings (mm) {spacings}"]
        lines += [f"  problem: {p}" for p in self.problems] or ["  no problems found"]
        return "\n".join(lines)

    def raise_if_invalid(self) -> None:
        if self.problems:
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise VolGANError(f"dataset {self.folder} is not valid: {self.problems[0]}{more}")

    def to_dict(self) -> dict[str, Any]:
        return {"folder": self.folder, "ok": self.ok, "problems": self.problems, "entries": self.entries}


def validate_dataset(
    folder: str | os.PathLike,
    labels_folder: str | os.PathLike | None = None,
    expect_shape: Sequence[int] | None = None,
    expect_spacing: Sequence[float] | None = None,
    spacing_rtol: float = 1e-3,
    label_scheme: str | None = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> DatasetReport:
    """Read every volume (and label map) once and report shape, spacing, range and problems.

    Problems found: unreadable/corrupt files, non-3-D data, NaN/Inf voxels, shape or spacing that
    differ from ``expect_*`` (or, without expectations, from the first file), labels missing for an
    image, labels whose geometry differs from their image, unknown label ids. The report lists every
    problem instead of stopping at the first, so a user can fix a folder in one pass.
    """
    files = list_volumes(folder)
    label_files: dict[str, Path] = {}
    if labels_folder is not None:
        label_files = {case_id(p): p for p in list_volumes(labels_folder)}
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    ref_shape = tuple(expect_shape) if expect_shape is not None else None
    ref_spacing = tuple(expect_spacing) if expect_spacing is not None else None
    with Progress(len(files), "validate", progress, cancel) as p:
        for path in files:
            entry: dict[str, Any] = {"file": path.name, "case": case_id(path)}
            try:
                vol = read_volume(path)
            except VolGANError as exc:
                problems.append(str(exc))
                entries.append(entry)
                p.advance()
                continue
            entry.update(vol.geometry_dict())
            entry.update(min=float(vol.array.min()), max=float(vol.array.max()), mean=float(vol.array.mean()))
            if ref_shape is None:
                ref_shape = vol.shape
            if ref_spacing is None:
                ref_spacing = vol.spacing
            if vol.shape != tuple(ref_shape):
                problems.append(f"{path}: shape (D,H,W) {vol.shape} differs from {tuple(ref_shape)}")
            if not np.allclose(vol.spacing, ref_spacing, rtol=spacing_rtol):
                problems.append(f"{path}: spacing {tuple(round(s, 5) for s in vol.spacing)} mm differs from "
                                f"{tuple(round(s, 5) for s in ref_spacing)} mm (resample the folder to one spacing)")
            if labels_folder is not None:
                lab_path = label_files.get(case_id(path))
                if lab_path is None:
                    problems.append(f"{path}: no label map named {case_id(path)}.* in {labels_folder}")
                else:
                    try:
                        lab = read_label_volume(lab_path, scheme=label_scheme)
                        entry["labels_file"] = lab_path.name
                        entry["label_ids"] = [int(v) for v in np.unique(lab.array) if v]
                        if not lab.same_geometry(vol):
                            problems.append(f"{lab_path}: geometry differs from its image {path.name} "
                                            "(shape/spacing/origin/direction must match)")
                    except VolGANError as exc:
                        problems.append(str(exc))
            entries.append(entry)
            p.advance()
    if labels_folder is not None:
        orphans = sorted(set(label_files) - {case_id(f) for f in files})
        problems += [f"{label_files[o]}: label map without an image in {folder}" for o in orphans]
    return DatasetReport(str(folder), entries, problems)


def write_manifest(
    folder: str | os.PathLike,
    entries: Iterable[dict[str, Any]],
    kind: str,
    parameters: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``manifest.json`` (atomically) describing the dataset in ``folder``."""
    doc = {
        "manifest_version": MANIFEST_VERSION,
        "kind": kind,
        "parameters": parameters or {},
        "cases": list(entries),
    }
    if extra:
        doc.update(extra)
    return atomic_write_json(Path(folder) / MANIFEST_NAME, doc)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Read a dataset's ``manifest.json`` with a clear error if it is missing or malformed."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        raise InputFileError(path, "manifest not found", "was this folder written by volgan?")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"is not valid JSON ({exc})", "regenerate the dataset") from None
    if not isinstance(doc, dict) or "cases" not in doc:
        raise InputFileError(path, "has no 'cases' list", "regenerate the dataset")
    return doc
