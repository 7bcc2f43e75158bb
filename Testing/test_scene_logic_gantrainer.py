"""GANTrainer's MRML-level logic on a real (slicer-core) scene."""

from __future__ import annotations

import numpy as np
import pytest

from VolGANCore import InputFileError, Volume, write_volume
from VolGANCore import mrml
from conftest import wait_for


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


@pytest.fixture(scope="module")
def bone_patches(tmp_path_factory):
    from VolumetricGANLib.phantoms import write_bone_dataset

    return write_bone_dataset(tmp_path_factory.mktemp("bone") / "set", n=4, seed=0) / "images"


@pytest.mark.slow
def test_background_training_runs_reports_and_plots(headless, bone_patches, tmp_path):
    from GANTrainerSceneLogic import GANTrainerSceneLogic, TrainingProcess, updateRunPlot

    run = tmp_path / "run"
    proc = TrainingProcess.start("tiny-spongiosa", bone_patches, run, extraArgs=["--max-steps", "3", "--phase-kimg",
                                                                                "0.001", "--metrics-kimg", "0.008"],
                                 device="cpu")
    status = wait_for(proc, lambda s: not s["running"])
    assert status["returncode"] == 0, proc.lastLogLines()
    assert status["state"] == "finished" and status["step"] == 3
    # a new watcher (module reopened) sees the same finished run
    again = TrainingProcess.attach(run).poll()
    assert again["state"] == "finished" and not again["running"]
    assert TrainingProcess.latest().runFolder == run               # found without knowing the folder
    assert TrainingProcess.running(run) is None and TrainingProcess.running() is None   # nothing runs now
    assert TrainingProcess.attach(tmp_path / "never-trained") is None
    logic = GANTrainerSceneLogic(headless.scene)
    chart = updateRunPlot(logic, run)
    names = {chart.GetNthPlotSeriesNode(i).GetName() for i in range(chart.GetNumberOfPlotSeriesNodes())}
    assert {"loss/G", "loss/D", "reg/gp"} <= names and chart.GetName() == "Training losses (run)"
    chart2 = updateRunPlot(logic, run, chartNode=chart)          # refresh replaces, not piles up
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1 and chart2 is not None
    metrics = updateRunPlot(logic, run, chartNode=chart2, plot="quick metrics")   # the panel's other choice
    names = {metrics.GetNthPlotSeriesNode(i).GetName() for i in range(metrics.GetNumberOfPlotSeriesNodes())}
    assert {"metrics/fd_quick", "metrics/spread_ratio", "metrics/frame_index", "metrics/morph_w1"} <= names
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
    with pytest.raises(ValueError, match="choose one of losses, quick metrics"):
        updateRunPlot(logic, run, plot="gradients")
    bad = TrainingProcess.start("tiny-spongiosa", tmp_path / "nothing", tmp_path / "bad", device="cpu")
    failed = wait_for(bad, lambda s: not s["running"])
    assert failed["returncode"] == 2 and failed["state"] == "failed"
    assert "nothing: folder not found" in failed["message"]


@pytest.mark.slow
def test_background_training_stops_gracefully(bone_patches, tmp_path):
    from GANTrainerSceneLogic import TrainingProcess

    proc = TrainingProcess.start("tiny-spongiosa", bone_patches, tmp_path / "run", extraArgs=["--max-steps", "500"],
                                 device="cpu")
    wait_for(proc, lambda s: s.get("step", 0) >= 1)
    proc.stop()
    status = proc.poll()
    assert status["state"] == "stopped" and not status["running"], proc.lastLogLines()
    assert status["step"] < 500 and list((tmp_path / "run" / "checkpoints").glob("*.vgan"))
    resumed = TrainingProcess.start("tiny-spongiosa", bone_patches, tmp_path / "run", resume=True,
                                    extraArgs=["--max-steps", "1"], device="cpu")
    final = wait_for(resumed, lambda s: not s["running"])
    assert final["state"] == "finished" and final["step"] == status["step"] + 1
    assert "resumed from step" in (tmp_path / "run" / "log.txt").read_text()


def test_latest_sample_is_generated_from_the_newest_checkpoint(headless, tmp_path):
    """loadLatestSample: the run's newest checkpoint, loaded once, one seeded sample into a volume node."""
    import shutil
    from pathlib import Path

    from GANTrainerSceneLogic import GANTrainerSceneLogic
    from VolumetricGANLib.generate import generate

    models = Path(__file__).resolve().parents[1] / "VolumetricGAN" / "Resources" / "Models"
    logic = GANTrainerSceneLogic(headless.scene)
    assert logic.loadLatestSample(str(tmp_path / "run")) is None            # no checkpoint yet
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(models / "tiny-spongiosa.vgan", tmp_path / "run" / "checkpoints" / "ckpt-0000001.vgan")
    newest = tmp_path / "run" / "checkpoints" / "ckpt-0000002.vgan"
    shutil.copy(models / "tiny-cow.vgan", newest)
    node = logic.loadLatestSample(str(tmp_path / "run"), seed=3)
    assert node.GetAttribute("GANTrainer.Checkpoint") == str(newest)
    want = generate(str(newest), n=1, seed=3, device="cpu").volumes[0]
    got = mrml.node_to_volume(node)
    assert got.shape == want.shape == (8, 32, 32) and np.allclose(got.array, want.array, atol=1e-5)
