"""GANTrainer's dataset preparation from the console (logic.prepareDataset) and as a background job's arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from VolGANCore import Cancelled, CancelToken, RecordingProgress, Volume, VolGANError, write_volume
from VolGANCore.cli import main


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two 72³ scans at 164 µm in mg HA/cm³: smooth-noise trabeculae (400) in marrow (0), with spongiosa masks."""
    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(4)
    for k in range(2):
        field = ndi.gaussian_filter(rng.normal(size=(72, 72, 72)), 2.0)
        arr = np.where(field > np.percentile(field, 75), 400.0, 0.0).astype(np.float32)
        mask = np.zeros(arr.shape, np.uint8)
        mask[4:68, 4:68, 4:68] = 1
        vol = Volume(arr, spacing=(0.164,) * 3)
        write_volume(vol, root / "images" / f"s{k}.nii.gz")
        write_volume(vol.with_array(mask), root / "masks" / f"s{k}.nii.gz")
    return root


def test_prepare_dataset_bone_from_the_console(headless, scans, tmp_path):
    from GANTrainerSceneLogic import GANTrainerSceneLogic

    logic = GANTrainerSceneLogic(headless.scene)
    rec = RecordingProgress()
    folders = logic.prepareDataset("bone", scans / "images", tmp_path / "out", progress=rec, masks=scans / "masks",
                                   labels="", stride=16, min_fill=0.0)
    assert rec.events[-1].finished
    doc = json.loads((tmp_path / "out" / "manifest.json").read_text())
    # masks span voxels 4..67; grid corners 0, 16, 32 (a 32³ patch must end by 72): 16 and 32 fit, 8 per scan
    assert folders["cases"] == len(doc["cases"]) == 16 and folders["labels"] is None
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == sorted(
        c["image"].split("/")[1] for c in doc["cases"])
    assert folders["images"] == str(tmp_path / "out" / "images")
    assert all(abs(c["bvtv"] - 0.25) < 0.15 for c in doc["cases"])
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        logic.prepareDataset("bone", scans / "images", tmp_path / "cancelled", cancel=token, masks=scans / "masks")
    assert not (tmp_path / "cancelled").exists()


def test_prepare_dataset_args_run_as_the_cli(scans, tmp_path):
    from GANTrainerSceneLogic import GANTrainerSceneLogic

    argv = GANTrainerSceneLogic.prepareDatasetArgs("bone", scans / "images", tmp_path / "job", masksFolder=scans / "masks",
                                                   stride=32, minFill=0.0)
    assert argv[:2] == ["prepare", "bone"] and "--from-hu" not in argv
    assert main(["--quiet", *argv]) == 0
    assert GANTrainerSceneLogic.preparedTrainingFolders(tmp_path / "job")["cases"] == 2     # stride 32: only corner 32 fits
    cow = GANTrainerSceneLogic.prepareDatasetArgs("cow", "/scans", "/out", template="/t.nii.gz", roi="0:8,0:8,0:8",
                                                  workers=3)
    assert cow == ["prepare", "cow", "--images", "/scans", "--out", "/out", "--template", "/t.nii.gz",
                   "--roi", "0:8,0:8,0:8", "--label-scheme", "topcow13", "--workers", "3", "--format", "nii.gz"]
    assert "--build-template" in GANTrainerSceneLogic.prepareDatasetArgs("cow", "/s", "/o", buildTemplate=True)
    with pytest.raises(VolGANError, match="template"):
        GANTrainerSceneLogic.prepareDatasetArgs("cow", "/s", "/o", template="/t.nii.gz", buildTemplate=True)
    with pytest.raises(VolGANError, match="kind"):
        GANTrainerSceneLogic.prepareDatasetArgs("knee", "/s", "/o")
    with pytest.raises(VolGANError, match="scans folder"):
        GANTrainerSceneLogic.prepareDatasetArgs("bone", "", "/o")
    with pytest.raises(VolGANError, match="not written by volgan prepare"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "manifest.json").write_text(json.dumps({"kind": "cow-tof-mra-phantom", "cases": []}))
        GANTrainerSceneLogic.preparedTrainingFolders(tmp_path / "other")


def test_panel_prepares_in_the_background_then_fills_the_dataset_folder(scans, tmp_path, monkeypatch):
    """Prepare dataset in the panel (Slicer 5.12.3's own layer) runs `volgan prepare bone` as a BackgroundJob through
    PythonSlicer; when it finishes, the Dataset section's images folder is the prepared one."""
    import time

    from install_layout import put_fake_pythonslicer_on_path
    from slicer_layer import slicer_layer

    put_fake_pythonslicer_on_path(monkeypatch, tmp_path / "bin", python_args=())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with slicer_layer("5.12.3") as layer:
        widget = layer.make_widget("GANTrainer")
        ui, p = widget.ui, widget._parameterNode
        assert not ui.prepareButton.enabled
        p.prepScansFolder, p.prepMasksFolder, p.prepOutFolder = scans / "images", scans / "masks", tmp_path / "prep"
        assert ui.prepareButton.enabled and ui.prepCalibrationComboBox.visible and not ui.prepTemplatePathLineEdit.visible
        ui.prepareButton.click()
        watcher = widget.prepareWatcher
        assert watcher.job.poll()["argv"][:4] == ["prepare", "bone", "--images", str(scans / "images")]
        t0 = time.time()
        while watcher.job is not None and time.time() - t0 < 240:
            watcher.poll()
            time.sleep(0.2)
        assert (tmp_path / "prep" / "manifest.json").is_file(), ui.statusLabel.text
        assert str(p.imagesFolder) == str(tmp_path / "prep" / "images") and "Prepared 2 volume" in ui.statusLabel.text
        p.prepKind = "cow"
        assert not ui.prepCalibrationComboBox.visible and ui.prepTemplatePathLineEdit.visible
