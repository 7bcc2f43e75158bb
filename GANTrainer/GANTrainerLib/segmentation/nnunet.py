"""Export the experiment's data as nnU-Net v2 raw datasets, with the experiment's fold split.

One dataset per training regime (``Dataset<id>_<name><Regime>``), so the real nnU-Net can be trained on exactly
the same data and split::

    Dataset<id>_<name><Regime>/
        dataset.json          channel_names, labels {name: id} incl. background, numTraining, file_ending
        imagesTr/<case>_0000.nii.gz
        labelsTr/<case>.nii.gz
        splits_final.json     [{"train": [...], "val": [...]}, ...]: fold k trains on that regime's training
                              cases of fold k and validates on fold k's held-out real cases

nnU-Net v2 needs consecutive label values, so the TopCoW id 15 (3rd-A2) is written as 13; ``dataset.json`` keeps
the original ids under ``volgan_original_label_ids`` (nnU-Net ignores unknown keys). nnU-Net reads the split from
``nnUNet_preprocessed/Dataset<id>_<name><Regime>/splits_final.json``: copy the file there after
``nnUNetv2_plan_and_preprocess`` and train folds 0..k-1. Synthetic cases labelled by a per-fold teacher appear
once per fold (``syn_f<k>_<case>``, identical images hard-linked where the file system allows).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from VolGANCore.atomic import atomic_directory, atomic_write_json
from VolGANCore.errors import VolGANError
from VolGANCore.io import write_volume
from VolGANCore.labels import get_scheme
from VolGANCore.volume import Volume

__all__ = ["nnunet_labels", "export_nnunet_dataset", "export_regimes", "REGIME_SUFFIX"]

REGIME_SUFFIX = {"real": "Real", "synthetic": "Synthetic", "real+synthetic": "RealSynthetic",
                 "synthetic-generated": "SyntheticGenerated"}


def nnunet_labels(scheme: str) -> tuple[dict[str, int], dict[int, int]]:
    """(``labels`` for dataset.json with consecutive values incl. background, {scheme id: nnU-Net value})."""
    sch = get_scheme(scheme)
    labels = {"background": 0}
    remap = {0: 0}
    for k, i in enumerate(sch.ids, start=1):
        labels[sch.name_of(i)] = k
        remap[int(i)] = k
    return labels, remap


def export_nnunet_dataset(
    root: str | os.PathLike,
    dataset_id: int,
    name: str,
    cases: Sequence[tuple[str, Volume, np.ndarray, Any]],
    splits: Sequence[dict[str, list[str]]],
    scheme: str,
    description: str = "",
    overwrite: bool = False,
) -> Path:
    """Write one nnU-Net v2 raw dataset under ``root`` and return its folder.

    Parameters
    ----------
    cases : (case name, image Volume, label map in ``scheme`` ids, link key) tuples; cases sharing a non-None
        link key share one image file (hard link, else copy).
    splits : per fold ``{"train": [case names], "val": [case names]}`` (written as splits_final.json).
    """
    if not isinstance(dataset_id, (int, np.integer)) or not 1 <= int(dataset_id) <= 999:
        raise VolGANError(f"--nnunet-id: nnU-Net dataset ids are 1–999, got {dataset_id!r}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise VolGANError(f"nnU-Net dataset name {name!r}: use letters, digits, '_' or '-' only")
    names = [c[0] for c in cases]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise VolGANError(f"nnU-Net export: case names {dup[:5]} occur twice (rename the input files)")
    known = set(names)
    for k, s in enumerate(splits):
        missing = sorted((set(s["train"]) | set(s["val"])) - known)
        if missing:
            raise VolGANError(f"nnU-Net export: fold {k} names cases {missing[:5]} that are not in the dataset")
    labels, remap = nnunet_labels(scheme)
    lut = np.zeros(max(remap) + 1, np.uint8)
    for a, b in remap.items():
        lut[a] = b
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise VolGANError(f"--export-nnunet {root}: is a file, not a folder")
    folder = root / f"Dataset{int(dataset_id):03d}_{name}"
    sch = get_scheme(scheme)
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        written: dict[Any, Path] = {}
        for case, image, lab, key in cases:
            dst = tmp / "imagesTr" / f"{case}_0000.nii.gz"
            if key is not None and key in written:
                try:
                    os.link(written[key], dst)
                except OSError:
                    shutil.copyfile(written[key], dst)
            else:
                write_volume(Volume(image.array.astype(np.float32), spacing=image.spacing, origin=image.origin,
                                    direction=image.direction), dst)
                if key is not None:
                    written[key] = dst
            write_volume(image.with_array(lut[np.asarray(lab, np.int64)], label_scheme=None, metadata={}),
                         tmp / "labelsTr" / f"{case}.nii.gz")
        atomic_write_json(tmp / "dataset.json", {
            "name": name,
            "description": description or "Circle-of-Willis artery segmentation (exported by volgan segmentation-experiment)",
            "channel_names": {"0": "TOF-MRA"},
            "labels": labels,
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "overwrite_image_reader_writer": "SimpleITKIO",
            "volgan_label_scheme": scheme,
            "volgan_original_label_ids": {sch.name_of(i): int(i) for i in sch.ids},
        })
        atomic_write_json(tmp / "splits_final.json", [{"train": list(s["train"]), "val": list(s["val"])} for s in splits])
    return folder


def export_regimes(root, real, syn, syn_labels_by_fold: dict[int, dict[str, np.ndarray]],
                   train_sets: dict[str, list[dict[str, list[str]]]], scheme: str, first_id: int, name: str,
                   shared_synthetic: bool, overwrite: bool = False) -> dict[str, Any]:
    """One dataset per regime from the experiment's cases, labels and per-fold training sets."""
    out: dict[str, Any] = {}
    real_cases = [(c.case, c.image, c.label, ("real", c.case)) for c in real]
    syn_cases: list[tuple[str, Volume, np.ndarray, Any]] = []
    if shared_synthetic:
        lab = syn_labels_by_fold[0]
        syn_cases = [("syn_" + c.case, c.image, lab[c.case], ("syn", c.case)) for c in syn]
    else:
        for f in sorted(syn_labels_by_fold):
            lab = syn_labels_by_fold[f]
            syn_cases += [(f"syn_f{f}_{c.case}", c.image, lab[c.case], ("syn", c.case)) for c in syn]
    # the synthetic volumes with their own generated labels (the synthetic-generated regime)
    gen_cases = [("syn_gen_" + c.case, c.image, c.label, ("syn-gen", c.case)) for c in syn if c.label is not None]
    clash = {c[0] for c in real_cases} & {c[0] for c in syn_cases + gen_cases}
    if clash:
        raise VolGANError(f"nnU-Net export: real case ids {sorted(clash)[:3]} collide with synthetic case names; "
                          "rename the real files")
    for k, (reg, splits) in enumerate(train_sets.items()):
        cases = real_cases + {"real": [], "synthetic-generated": gen_cases}.get(reg, syn_cases)
        folder = export_nnunet_dataset(root, int(first_id) + k, f"{name}{REGIME_SUFFIX[reg]}", cases, splits, scheme,
                                       description=f"volgan segmentation experiment, regime '{reg}'",
                                       overwrite=overwrite)
        out[reg] = {"folder": str(folder), "dataset_id": int(first_id) + k, "numTraining": len(cases)}
    return out
