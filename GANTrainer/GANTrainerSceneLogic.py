"""MRML-level logic of the GANTrainer module: no Qt, so it runs in Slicer and headless (slicer-core).

The module's ``GANTrainerLogic`` (in GANTrainer.py) inherits these methods, so they are callable from the
Slicer Python console: ``slicer.util.getModuleLogic("GANTrainer").validateDataset("/data/cow")``.
"""

from __future__ import annotations

from pathlib import Path

from VolGANCore import mrml
from VolGANCore.dataset import DatasetReport, validate_dataset


class GANTrainerSceneLogic:
    """Scene-facing operations of the GANTrainer panel."""

    def __init__(self, scene=None):
        self._scene = scene

    @property
    def scene(self):
        if self._scene is not None:
            return self._scene
        import slicer

        return slicer.mrmlScene

    def validateDataset(self, imagesFolder, labelsFolder=None, labelScheme=None, progress=None, cancel=None,
                        tableNode=None):
        """Validate a training folder; return ``(report, tableNode)`` with one row per volume.

        Columns: case, file, shape (D×H×W), spacing (mm), min, max, label ids, problems. A folder that cannot
        be listed at all (missing, empty) raises :class:`VolGANCore.VolGANError` with the fix.
        """
        scheme = None if labelScheme in (None, "", "none") else labelScheme
        labels = labelsFolder if str(labelsFolder or "") not in ("", ".") else None
        report: DatasetReport = validate_dataset(imagesFolder, labels_folder=labels, label_scheme=scheme,
                                                 progress=progress, cancel=cancel)
        rows = []
        for entry in report.entries:
            problems = [p for p in report.problems if Path(p.split(":", 1)[0]).name in
                        (entry["file"], entry.get("labels_file"))]
            rows.append({
                "case": entry["case"],
                "file": entry["file"],
                "shape (D×H×W)": "×".join(str(s) for s in entry.get("shape_dhw", [])),
                "spacing x,y,z (mm)": ", ".join(f"{s:.4g}" for s in entry.get("spacing_xyz_mm", [])),
                "min": entry.get("min"),
                "max": entry.get("max"),
                "label ids": " ".join(str(i) for i in entry.get("label_ids", [])),
                "problems": "; ".join(problems),
            })
        table = mrml.table_from_rows(rows, self.scene, name="Dataset validation", node=tableNode)
        table.SetAttribute("GANTrainer.DatasetFolder", str(imagesFolder))
        table.SetAttribute("GANTrainer.DatasetValid", "true" if report.ok else "false")
        return report, table
