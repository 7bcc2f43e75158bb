"""GANTrainer's MRML-level logic on a real (slicer-core) scene."""

from __future__ import annotations

import numpy as np
import pytest

from VolGANCore import InputFileError, Volume, write_volume
from VolGANCore import mrml


def test_validate_dataset_fills_a_table(headless, tmp_path):
    from GANTrainerSceneLogic import GANTrainerSceneLogic

    for k, spacing in enumerate([(0.3, 0.3, 0.6), (0.3, 0.3, 0.6), (0.5, 0.5, 0.6)]):
        write_volume(Volume(np.full((4, 5, 6), k, np.float32), spacing=spacing), tmp_path / f"c{k}.nrrd")
    logic = GANTrainerSceneLogic(headless.scene)
    report, table = logic.validateDataset(str(tmp_path))
    assert not report.ok and len(report.problems) == 1
    rows = mrml.rows_from_table(table)
    assert [r["case"] for r in rows] == ["c0", "c1", "c2"]
    assert rows[0]["shape (D×H×W)"] == "4×5×6"
    assert rows[2]["problems"].startswith(str(tmp_path / "c2.nrrd") + ": spacing")
    assert rows[0]["problems"] == ""
    assert table.GetAttribute("GANTrainer.DatasetValid") == "false"
    # re-validating into the same table replaces its rows
    report2, table2 = logic.validateDataset(str(tmp_path), tableNode=table)
    assert table2 is table and table.GetNumberOfRows() == 3


def test_validate_dataset_on_missing_folder_raises_readable_error(headless, tmp_path):
    from GANTrainerSceneLogic import GANTrainerSceneLogic

    with pytest.raises(InputFileError, match="folder not found"):
        GANTrainerSceneLogic(headless.scene).validateDataset(str(tmp_path / "missing"))
