"""GANTrainer's dataset preparation from the console (logic.prepareDataset) and as a background job's arguments."""

from __future__ import annotations

import json
from pathlib import Path

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


# -- the panel's Prepare dataset options (Slicer's own layer: 5.8.1 and 5.12.3) ------------------------------------
BONE_ONLY = ("prepBoneSpacing", "prepCalibration", "prepCortexMm", "prepClosingMm", "prepStride", "prepMinFill",
             "prepPatchSize")
COW_ONLY = ("prepTemplateSource", "prepRoi", "prepCowSpacing", "prepLabelScheme")
# cow's registration knobs (console and command line only), and the --nan-policy every volume-reading command has
NOT_IN_THE_PANEL = {"help", "iterations", "search_deg", "nan_policy"}


@pytest.fixture(params=("5.8.1", "5.12.3"))
def layer(request):
    from slicer_layer import slicer_layer

    with slicer_layer(request.param) as loaded:
        yield loaded


def _panel_parameters(layer):
    py = layer.load_module("GANTrainer")
    p = py.GANTrainerParameterNode(layer.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    p.prepScansFolder, p.prepOutFolder = Path("/data/scans"), Path("/data/out")
    return p


def _prepare_parser(kind: str):
    """The real `volgan prepare KIND` parser (what a background job's arguments go through)."""
    import argparse

    from VolGANCore.cli import build_parser

    def sub(parser, name):
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return action.choices[name]

    return sub(sub(build_parser(), "prepare"), kind)


def _parsed(argv: list) -> dict:
    """``argv`` through the real parser: the options of the kind's sub-parser (its dests) and their values."""
    parser = _prepare_parser(argv[1])
    ns = vars(parser.parse_args(argv[2:]))
    return {a.dest: ns[a.dest] for a in parser._actions if a.dest in ns}


def test_panel_defaults_are_the_commands_defaults(layer):
    """A panel left at its defaults runs `volgan prepare` exactly as the command line's defaults do."""
    from GANTrainerSceneLogic import GANTrainerSceneLogic as logic

    p = _panel_parameters(layer)
    assert _parsed(logic.prepareDatasetArgsFromParameters(p)) == _parsed(
        ["prepare", "bone", "--images", "/data/scans", "--out", "/data/out"])
    p.prepKind, p.prepTemplate = "cow", Path("/data/template.nii.gz")
    assert _parsed(logic.prepareDatasetArgsFromParameters(p)) == _parsed(
        ["prepare", "cow", "--images", "/data/scans", "--out", "/data/out", "--template", "/data/template.nii.gz"])


def test_panel_choices_are_the_parsers_choices():
    from GANTrainerSceneLogic import PREPARE_FORMATS, PREPARE_LABEL_SCHEMES

    for kind in ("bone", "cow"):
        actions = {a.dest: a for a in _prepare_parser(kind)._actions}
        assert tuple(actions["format"].choices) == PREPARE_FORMATS, kind
    assert tuple({a.dest: a for a in _prepare_parser("cow")._actions}["label_scheme"].choices) == PREPARE_LABEL_SCHEMES


def test_panel_values_map_to_each_option_of_the_parser(layer):
    """Every option of `volgan prepare bone|cow` (but the two registration knobs) is reachable from the panel: the
    argv built from the panel's values, read by the real parser, holds each value in its option."""
    from GANTrainerSceneLogic import GANTrainerSceneLogic as logic

    p = _panel_parameters(layer)
    changed = {"bone": set(), "cow": set()}

    def check(kind, expected):
        got = _parsed(logic.prepareDatasetArgsFromParameters(p))
        assert {k: got[k] for k in expected} == expected, kind
        defaults = _parsed(["prepare", kind, "--images", "/x", "--out", "/y", *(
            ["--template", "/t"] if kind == "cow" else [])])
        changed[kind] |= {k for k in got if got[k] != defaults[k]}

    p.prepMasksFolder, p.prepBoneSpacing, p.prepCalibration = Path("/data/masks"), 0.082, "slope+intercept"
    p.prepSlope, p.prepIntercept = " 1603.519 ", "-391.209"
    p.prepCortexMm, p.prepClosingMm, p.prepStride, p.prepMinFill, p.prepPatchSize = 1.5, 0.5, 16, 0.1, 48
    p.prepFormat, p.prepOverwrite, p.prepWorkers = "nrrd", True, 2
    check("bone", {"images": "/data/scans", "out": "/data/out", "masks": "/data/masks", "spacing": 0.082,
                   "calibration": "1603.519,-391.209", "from_hu": False, "cortex_mm": 1.5, "closing_mm": 0.5,
                   "stride": 16, "min_fill": 0.1, "size": 48, "format": "nrrd", "overwrite": True, "workers": 2})
    p.prepCalibration = "from HU"
    check("bone", {"calibration": None, "from_hu": True})
    p.prepCalibration, p.prepStride = "none", 0
    check("bone", {"calibration": None, "from_hu": False, "stride": None})   # 0: the patch size, the command's default

    p.prepKind, p.prepMasksFolder, p.prepTemplateSource, p.prepTemplateIterations = "cow", Path("/data/labels"), "build", 5
    p.prepRoi, p.prepRoiText, p.prepCowSpacing = "custom", "10:120,20:140,5:37", "0.3, 0.3 0.5"
    p.prepLabelScheme, p.prepWorkers, p.prepFormat, p.prepOverwrite = "aydin7", 3, "mha", True
    check("cow", {"images": "/data/scans", "out": "/data/out", "labels": "/data/labels", "template": None,
                  "build_template": True, "template_iterations": 5, "roi": "10:120,20:140,5:37",
                  "roi_around_labels": None, "spacing": [0.3, 0.3, 0.5], "label_scheme": "aydin7", "workers": 3,
                  "format": "mha", "overwrite": True})
    p.prepTemplateSource, p.prepTemplate, p.prepRoi, p.prepRoiMarginMm = "file", Path("/data/t.nii.gz"), "around labels", 7.5
    p.prepCowSpacing = "0.25"
    check("cow", {"template": "/data/t.nii.gz", "build_template": False, "roi": None, "roi_around_labels": 7.5,
                  "spacing": [0.25]})
    p.prepRoi, p.prepCowSpacing = "paper box", ""
    check("cow", {"roi": None, "roi_around_labels": None, "spacing": None})

    for kind in ("bone", "cow"):
        options = {a.dest for a in _prepare_parser(kind)._actions} - NOT_IN_THE_PANEL
        assert changed[kind] == options, (kind, options - changed[kind])


@pytest.mark.parametrize("changes,message", [
    ({"prepKind": "cow", "prepRoi": "custom", "prepRoiText": "80:208,120:248"}, "custom ROI.*x0:x1,y0:y1,z0:z1"),
    ({"prepKind": "cow", "prepRoi": "custom", "prepRoiText": "80:208,120:248,72:40"}, "custom ROI"),
    ({"prepKind": "cow", "prepRoi": "custom", "prepRoiText": "  "}, "custom ROI: enter"),
    ({"prepKind": "cow", "prepRoi": "around labels"}, "choose a labels folder"),
    ({"prepKind": "cow", "prepTemplate": Path("")}, "choose a template file, or 'build'"),
    ({"prepKind": "cow", "prepCowSpacing": "0.3 0.3"}, "output spacing.*one value .* or three"),
    ({"prepKind": "cow", "prepCowSpacing": "0.3 -0.3 0.3"}, "output spacing"),
    ({"prepCalibration": "slope+intercept", "prepSlope": "1.0"}, "both the slope and the intercept"),
    ({"prepCalibration": "slope+intercept", "prepIntercept": "-4.9"}, "both the slope and the intercept"),
    ({"prepCalibration": "slope+intercept", "prepSlope": "one", "prepIntercept": "0"}, "calibration.*two numbers"),
    ({"prepCalibration": "slope+intercept", "prepSlope": "0", "prepIntercept": "0"}, "calibration.*non-zero"),
])
def test_invalid_panel_combinations_are_refused_with_the_field_named(layer, changes, message):
    from GANTrainerSceneLogic import GANTrainerSceneLogic as logic

    p = _panel_parameters(layer)
    p.prepTemplate = Path("/data/t.nii.gz")
    for name, value in changes.items():
        setattr(p, name, value)
    with pytest.raises(VolGANError, match=message):
        logic.prepareDatasetArgsFromParameters(p)


def _shown(widget, ui, field: str) -> bool:
    """The field's widget and its label are shown together (one row of the form)."""
    bound = [w for w in vars(ui).values() if hasattr(w, "property") and w.property("SlicerParameterName") == field]
    assert len(bound) == 1, field
    label = getattr(ui, f"{field}Label", None)
    assert label is None or label.visible == bound[0].visible, field
    return bound[0].visible


def test_kind_switching_shows_only_that_kinds_options(layer):
    widget = layer.make_widget("GANTrainer")
    ui, p = widget.ui, widget._parameterNode
    every = {w.property("SlicerParameterName") for w in vars(ui).values()
             if hasattr(w, "property") and str(w.property("SlicerParameterName") or "").startswith("prep")}
    always = {"prepKind", "prepScansFolder", "prepMasksFolder", "prepOutFolder", "prepFormat", "prepOverwrite",
              "prepWorkers"}
    assert set(BONE_ONLY) | set(COW_ONLY) | always < every      # plus the sub-choices' own rows

    def shown():
        return {f for f in every if _shown(widget, ui, f)}

    assert shown() == always | set(BONE_ONLY) and ui.prepMasksFolderLabel.text == "Masks folder:"
    p.prepCalibration = "slope+intercept"
    assert shown() == always | set(BONE_ONLY) | {"prepSlope", "prepIntercept"}
    p.prepKind = "cow"
    assert shown() == always | set(COW_ONLY) | {"prepTemplate"} and ui.prepMasksFolderLabel.text == "Labels folder:"
    p.prepTemplateSource, p.prepRoi = "build", "custom"
    assert shown() == always | set(COW_ONLY) | {"prepTemplateIterations", "prepRoiText"}
    p.prepRoi = "around labels"
    assert shown() == always | set(COW_ONLY) | {"prepTemplateIterations", "prepRoiMarginMm"}
    p.prepKind = "bone"
    assert shown() == always | set(BONE_ONLY) | {"prepSlope", "prepIntercept"}


def test_float_fields_show_their_defaults_at_the_spin_boxes_precision(layer):
    """A spin box rounds to its decimals (set in the .ui): 0.164 mm must not show as 0.16, nor 0.02 as 0.0."""
    widget = layer.make_widget("GANTrainer")
    ui, p = widget.ui, widget._parameterNode
    for w in vars(ui).values():
        field = w.property("SlicerParameterName") if hasattr(w, "property") else None
        if field and type(w).__name__ == "QDoubleSpinBox":
            assert round(getattr(p, field), w.decimals) == getattr(p, field), (field, w.decimals)


def test_a_bad_roi_text_is_refused_without_starting_a_job(layer, tmp_path):
    from VolGANCore.jobs import jobs_root

    widget = layer.make_widget("GANTrainer")
    ui, p = widget.ui, widget._parameterNode
    p.prepKind, p.prepScansFolder, p.prepOutFolder = "cow", tmp_path / "scans", tmp_path / "out"
    p.prepTemplate, p.prepRoi = tmp_path / "t.nii.gz", "custom"
    ui.prepRoiTextLineEdit.text = "80:208,120:248,40"       # typed in the panel: one range short
    assert p.prepRoiText == "80:208,120:248,40" and ui.prepareButton.enabled
    jobs_before = sorted(jobs_root().rglob("*"))
    with pytest.raises(VolGANError, match="custom ROI.*'80:208,120:248,40'.*x0:x1,y0:y1,z0:z1"):
        ui.prepareButton.click()     # in testing mode Slicer's tryWithErrorDisplay logs the message and re-raises
    assert widget.prepareWatcher.job is None and not (tmp_path / "out").exists()
    assert sorted(jobs_root().rglob("*")) == jobs_before
    p.prepKind, p.prepCalibration, p.prepSlope = "bone", "slope+intercept", "1.0"   # slope without intercept
    with pytest.raises(VolGANError, match="intercept"):
        ui.prepareButton.click()
    assert widget.prepareWatcher.job is None and not (tmp_path / "out").exists()
