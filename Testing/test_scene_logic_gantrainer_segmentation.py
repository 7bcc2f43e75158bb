"""The downstream segmentation experiment from the GANTrainer panel's logic, in a real (slicer-core) scene.

One tiny real run per module, started from the panel in Slicer's own Python layer (a generator file as the
synthetic source, 2 folds, one epoch of the small DynUNet, three generated volumes) and run as a background job.
Its results are loaded as tables, a per-case Dice chart and segmentation nodes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time

import numpy as np
import pytest

from VolGANCore import InputFileError, VolGANError, mrml, read_label_volume, read_volume, write_volume
from VolGANCore.labels import get_scheme

from tiny_arch import tiny_stylegan_g

pytestmark = pytest.mark.slow  # every test here shares a module fixture that takes tens of seconds

SHAPE, SPACING = (16, 32, 32), 2.4
REGIMES = ("real", "synthetic", "real+synthetic")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    from GANTrainerLib.segmentation.demo import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Four real labelled CoW phantoms and a tiny StyleGAN2 generator (random weights) on their grid."""
    import torch

    from VolumetricGANLib.checkpoint import make_config, save_checkpoint
    from VolumetricGANLib.networks import StyleGAN2Generator
    from VolumetricGANLib.phantoms import write_cow_dataset

    root = tmp_path_factory.mktemp("segpanel")
    real = write_cow_dataset(root / "real", n=4, seed=0, shape=SHAPE, spacing_mm=SPACING)
    arch = tiny_stylegan_g(SHAPE, (2, 4, 4), width=8, z_dim=8, mapping_layers=1)
    torch.manual_seed(0)
    cfg = make_config("stylegan2-3d", arch, spacing=(SPACING,) * 3, name="tiny-cow",
                      intensity={"network_range": [-1, 1], "physical_range": [0, 1], "units": "a.u.", "clip": False})
    ckpt = save_checkpoint(root / "tiny-cow.vgan", cfg, G_ema=StyleGAN2Generator(**arch))
    return real, ckpt, root


@pytest.fixture(scope="module")
def experiment(inputs):
    """The panel's Run, once, in Slicer 5.8.1's own Python layer: the "Downstream segmentation" section filled
    in through the parameter node, Run clicked (a BackgroundJob through launchConsoleProcess and a PythonSlicer
    on PATH), the panel's poll called as its QTimer would until the job ended and the panel loaded the results.
    Returns the job's volgan argv, the results folder, results.json and what the panel showed."""
    from install_layout import write_fake_pythonslicer
    from slicer_layer import slicer_layer

    real, ckpt, root = inputs
    out = root / "exp"
    launcher = write_fake_pythonslicer(root / "bin", python_args=())
    panel = {"polls": []}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{launcher.parent}{os.pathsep}{os.environ['PATH']}")
        mp.setenv("VOLGAN_HOME", str(root / "home"))
        mp.setenv("OMP_NUM_THREADS", "1")               # one torch thread in the job (2 shared cores)
        with slicer_layer("5.8.1") as layer:
            layer.app.__dict__["startupEnvironment"] = _StartupEnvironment
            widget = layer.make_widget("GANTrainer")
            ui, p = widget.ui, widget._parameterNode
            panel["run enabled when empty"] = ui.segRunButton.enabled
            p.segSyntheticSource = "model"
            panel["model widgets visible"] = [getattr(ui, n).visible for n in (
                "segSyntheticModelPathLineEdit", "segNGenerateSpinBox", "segSyntheticFolderPathLineEdit")]
            for name, value in (("segRealImages", real / "images"), ("segRealLabels", real / "labels"),
                                ("segSyntheticModel", ckpt), ("segNGenerate", 3), ("segOutFolder", out),
                                ("segConfig", "small"), ("segFolds", 2), ("segEpochs", 1), ("device", "cpu")):
                setattr(p, name, value)
            panel["spin box ranges"] = [(getattr(ui, n).minimum, getattr(ui, n).maximum) for n in (
                "segNGenerateSpinBox", "segFoldsSpinBox", "segEpochsSpinBox")]
            panel["run enabled when filled"] = ui.segRunButton.enabled
            ui.segRunButton.click()
            watcher = widget.segmentationWatcher
            job = watcher.job
            panel["after run"] = (job is not None, watcher.timer.isActive(), ui.segRunButton.enabled,
                                  ui.segCancelButton.enabled)
            t0 = time.time()
            while watcher.job is not None and time.time() - t0 < 300:
                watcher.poll()                              # what the panel's QTimer calls every 2 s
                panel["polls"].append((ui.segProgressBar.value, ui.segStatusLabel.text))
                time.sleep(0.25)
            status = job.poll()
            loaded = widget.segmentationResult
            panel.update({"status": status, "log": job.lastLogLines(), "timer active": watcher.timer.isActive(),
                          "final": (ui.segProgressBar.value, ui.segStatusLabel.text, ui.segRunButton.enabled,
                                    ui.segCancelButton.enabled),
                          "loaded": None if loaded is None else {r: len(v) for r, v in loaded.segmentations.items()},
                          "summary": None if loaded is None else loaded.summary()})
    assert status["state"] == "finished", (status, panel["log"])
    return status["argv"], out, json.loads((out / "results.json").read_text()), panel


class _StartupEnvironment:
    """``slicer.app.startupEnvironment()`` (a QProcessEnvironment) over this process's environment."""

    def keys(self):
        return list(os.environ)

    def value(self, key):
        return os.environ[key]


def _series(chart):
    return {chart.GetNthPlotSeriesNode(i).GetName(): chart.GetNthPlotSeriesNode(i)
            for i in range(chart.GetNumberOfPlotSeriesNodes())}


def _points(scene, ps):
    rows = mrml.rows_from_table(scene.GetNodeByID(ps.GetTableNodeID()))
    return [(r[ps.GetXColumnName()], r[ps.GetYColumnName()]) for r in rows]


def test_one_command_generates_the_synthetic_set_then_runs(inputs, experiment):
    from VolumetricGANLib.generate import generate

    real, ckpt, _ = inputs
    argv, out, res, _ = experiment
    assert argv[0] == "segmentation-experiment" and argv[argv.index("--synthetic-model") + 1] == str(ckpt)
    assert argv[argv.index("--n-generate") + 1] == "3" and "--synthetic" not in argv
    assert argv[argv.index("--folds") + 1] == "2" and argv[-2:] == ["--out", str(out)]
    files = sorted(p.name for p in (out / "synthetic").iterdir())
    assert files == ["latents.npz", "manifest.json", "sample_0000.nii.gz", "sample_0001.nii.gz", "sample_0002.nii.gz"]
    assert res["inputs"]["synthetic_model"] == str(ckpt) and res["inputs"]["synthetic"] == str(out / "synthetic")
    assert res["inputs"]["synthetic_cases_used"] == ["sample_0000", "sample_0001", "sample_0002"]
    again = generate(ckpt, n=3, seed=0, device="cpu")             # --seed 0 draws the same volumes
    for k, vol in enumerate(again.volumes):
        saved = read_volume(out / "synthetic" / f"sample_{k:04d}.nii.gz")
        assert np.allclose(saved.array, vol.array, atol=1e-5) and saved.same_geometry(vol)
        for f in (0, 1):                                            # each fold's teacher labelled every one
            assert read_label_volume(out / "teacher_labels" / f"fold{f}" / f"sample_{k:04d}.nii.gz").same_geometry(vol)
    assert json.loads((out / "synthetic" / "manifest.json").read_text())["kind"] == "generated"


def test_the_panel_moves_values_runs_the_job_and_loads_the_results(experiment):
    _, out, res, panel = experiment
    assert panel["run enabled when empty"] is False and panel["run enabled when filled"] is True
    assert panel["model widgets visible"] == [True, True, False]          # source "model": model and count shown
    assert panel["spin box ranges"] == [(1, 100000), (2, 50), (0, 1000)]  # from the parameter node's WithinRange
    assert panel["after run"] == (True, True, False, True)                # job watched; Run off, Cancel on
    running = [(v, text) for v, text in panel["polls"] if text.startswith("Segmentation experiment running: segmentation experiment")]
    assert running and all(0 <= v <= 1000 for v, _ in running)
    assert [v for v, _ in running] == sorted(v for v, _ in running)      # the bar never runs backwards
    assert panel["final"][0] == 1000 and panel["final"][2:] == (True, False) and not panel["timer active"]
    assert panel["loaded"] == {reg: 4 for reg in REGIMES}                  # every held-out case, per regime
    assert panel["final"][1] == panel["summary"] and str(out) in panel["summary"]
    assert f"real+synthetic {res['summary']['real+synthetic']['mean_dice']:.3f}" in panel["summary"]


def test_run_asks_for_missing_packages_first_and_declining_starts_nothing(inputs, tmp_path, monkeypatch):
    from slicer_layer import slicer_layer
    from slicer_standins import ctkMessageBox

    real, ckpt, _ = inputs
    monkeypatch.setenv("VOLGAN_HOME", str(tmp_path / "home"))
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("volgan-absent-package>=1\n")
    with slicer_layer("5.12.3") as layer:
        layer.app.setTesting(False)
        widget = layer.make_widget("GANTrainer")
        monkeypatch.setattr(widget, "requirementsPath", lambda: str(reqs))
        p = widget._parameterNode
        for name, value in (("segRealImages", real / "images"), ("segRealLabels", real / "labels"),
                            ("segSyntheticFolder", real / "images"), ("segOutFolder", tmp_path / "out")):
            setattr(p, name, value)
        ctkMessageBox.answer = ctkMessageBox.Cancel
        widget.ui.segRunButton.click()
        assert len(ctkMessageBox.shown) == 1 and "volgan-absent-package" in ctkMessageBox.shown[0]
        assert widget.segmentationWatcher.job is None and not widget.segmentationWatcher.timer.isActive()
    assert not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


def test_results_load_as_tables_chart_and_segmentations(headless, experiment):
    from GANTrainerLib.segmentation.experiment import prediction_path
    from GANTrainerSceneLogic import GANTrainerSceneLogic

    _, out, res, _ = experiment
    scene = headless.scene
    logic = GANTrainerSceneLogic(scene)
    loaded = logic.loadSegmentationExperiment(out)
    scheme = get_scheme("topcow13")
    names = [scheme.name_of(i) for i in scheme.ids]

    # (a) per-class table: regime × class rows plus a per-regime mean row, values from results.json
    rows = mrml.rows_from_table(loaded.tables["per_class"])
    assert len(rows) == len(REGIMES) * (len(names) + 1)
    for r in rows:
        s = res["summary"][r["regime"]]
        if r["class"] == "mean over classes":
            expect = (s["mean_dice"], s["mean_dice_sd"], s["mean_hd95_mm"], s["n_cases"])
        else:
            c = s["per_class"][r["class"]]
            expect = (c["dice_mean"], c["dice_sd"], c["hd95_mm_mean"], c["n_cases"])
            assert r["n folds"] == c["n_folds"]
        for got, want in zip((r["Dice mean"], r["Dice SD"], r["HD95 mean (mm)"], r["n cases"]), expect):
            assert (math.isnan(got) if want is None else got == pytest.approx(want)), (r, expect)
    acom = next(r for r in rows if r["regime"] == "synthetic" and r["class"] == "Acom")
    rate = res["summary"]["synthetic"]["detection"]["Acom"]["rate"]
    assert math.isnan(acom["detection rate"]) if rate is None else acom["detection rate"] == pytest.approx(rate)
    tests = mrml.rows_from_table(loaded.tables["tests"])
    assert [(t["regime a"], t["regime b"]) for t in tests] == [(t["a"], t["b"]) for t in res["tests"]]
    assert all(t["n"] == 4 and "too small" in t["note"] for t in tests)     # 4 held-out cases: descriptive only

    # (b) chart: per regime every scored case's Dice and the per-class medians, x = class index ± regime offset
    series = _series(loaded.chart)
    assert set(series) == {f"{reg}: {what}" for reg in REGIMES for what in ("cases", "median")}
    for dx, reg in zip((-0.25, 0.0, 0.25), REGIMES):
        pts = _points(scene, series[f"{reg}: cases"])
        expect = [(k + dx, r["dice"][n]) for k, n in enumerate(names, 1)
                  for r in res["cases"] if r["regime"] == reg and r["dice"][n] is not None]
        assert len(pts) == len(expect) and np.allclose(pts, expect)
        med = _points(scene, series[f"{reg}: median"])
        assert [m[0] - dx for m in med] == pytest.approx(sorted({round(p[0] - dx) for p in expect}))
        for x, y in med:
            assert y == pytest.approx(float(np.median([p[1] for p in expect if p[0] == pytest.approx(x)])))
        assert series[f"{reg}: cases"].GetPlotType() == series[f"{reg}: cases"].PlotTypeScatter
        assert series[f"{reg}: median"].GetColor() == series[f"{reg}: cases"].GetColor()
    assert "1 BA" in loaded.chart.GetXAxisTitle() and "13 3rd-A2" in loaded.chart.GetXAxisTitle()

    # (c) every held-out prediction as a segmentation with TopCoW names and colours, the file's voxels and grid
    assert {reg: len(v) for reg, v in loaded.segmentations.items()} == {reg: 4 for reg in REGIMES}
    visible = [s for v in loaded.segmentations.values() for s in v if s.GetDisplayNode().GetVisibility()]
    assert visible == [loaded.firstPrediction()]
    for reg, segs in loaded.segmentations.items():
        for seg in segs:
            case, fold = seg.GetAttribute("GANTrainer.Case"), int(seg.GetAttribute("GANTrainer.Fold"))
            assert case in res["folds"][fold]["test"] and seg.GetAttribute("GANTrainer.Regime") == reg
            pred = read_label_volume(prediction_path(out, fold, reg, case))
            segmentation = seg.GetSegmentation()
            segments = [segmentation.GetNthSegment(k) for k in range(segmentation.GetNumberOfSegments())]
            assert sorted(s.GetName() for s in segments) == sorted(scheme.name_of(i) for i in np.unique(pred.array) if i)
            for s in segments:
                assert s.GetColor() == pytest.approx(scheme.colour_of(scheme.id_of(s.GetName())))
            if seg is loaded.firstPrediction():
                back = mrml.segmentation_to_labelmap(seg, pred)
                assert np.array_equal(back.array, pred.array)
    image = logic.loadExperimentImage(loaded, loaded.firstPrediction().GetAttribute("GANTrainer.Case"))
    src = read_volume(out.parent / "real" / "images" / f"{image.GetName()}.nii.gz")
    assert mrml.node_to_volume(image).same_geometry(src)
    assert "Segmentation experiment (2 folds, config small)" in loaded.summary() and "12 held-out" in loaded.summary()

    # loading again in place of the first (or loading only some cases) leaves no nodes behind
    counts = {c: scene.GetNumberOfNodesByClass(c) for c in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode",
                                                            "vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode")}
    again = logic.loadSegmentationExperiment(out, previous=loaded)
    assert image.GetScene() is None and counts["vtkMRMLScalarVolumeNode"] - 1 == \
        scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    assert all(scene.GetNumberOfNodesByClass(c) == n for c, n in counts.items() if c != "vtkMRMLScalarVolumeNode")
    case = res["folds"][1]["test"][0]
    some = logic.loadSegmentationExperiment(out, previous=again, cases=[case])
    assert [s.GetAttribute("GANTrainer.Case") for v in some.segmentations.values() for s in v] == [case] * 3
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 3


def test_the_panel_job_reports_progress_inside_training_and_cancels(inputs, tmp_path, monkeypatch):
    """What Run and Cancel do: the argv as a BackgroundJob; job.json carries the experiment's one progress task,
    moving inside a network's training; a stop request ends it "cancelled" with no results folder left."""
    from GANTrainerSceneLogic import GANTrainerSceneLogic
    from VolGANCore.jobs import BackgroundJob

    monkeypatch.setenv("VOLGAN_HOME", str(tmp_path / "home"))
    real, ckpt, _ = inputs
    out = tmp_path / "exp"
    argv = GANTrainerSceneLogic(scene=object()).segmentationExperimentArgs(
        real / "images", real / "labels", ckpt, out, folds=2, device="cpu", nGenerate=2, epochs=3)
    job = BackgroundJob.start(argv, kind="segmentation-experiment", outFolder=out, env={"OMP_NUM_THREADS": "1"})

    def training(status):
        p = status["progress"] or {}
        return p.get("description") == "segmentation experiment" and 0 < p["fraction"] < 1 and ": " in p["message"]

    t0 = time.time()
    while not training(status := job.poll()) and status["running"] and time.time() - t0 < 180:
        time.sleep(0.1)
    assert training(status), (status, job.lastLogLines())
    progress = status["progress"]
    assert progress["total"] == 2 * (2 + 2 * 3)
    assert re.fullmatch(r"fold [12] (teacher|synthetic|real\+synthetic): \d+/30, loss \d\.\d+", progress["message"])
    assert progress["done"] != int(progress["done"])                    # a step part-way through its iterations
    assert BackgroundJob.latest("segmentation-experiment").folder == job.folder     # what the panel re-attaches to
    job.stop(timeout=60)
    status = job.poll()
    assert status["state"] == "cancelled" and status["returncode"] == 130, job.lastLogLines()
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".exp")]


def test_experiment_args_refuse_empty_and_missing_inputs(inputs, tmp_path):
    from GANTrainerSceneLogic import GANTrainerSceneLogic

    real, ckpt, _ = inputs
    logic = GANTrainerSceneLogic(scene=object())              # no scene needed: nothing is created
    ok = dict(realImages=real / "images", realLabels=real / "labels", synthetic=real / "images", outFolder=tmp_path / "o")
    argv = logic.segmentationExperimentArgs(**ok, syntheticLabels=real / "labels", labelScheme="aydin7", nReal=1)
    assert argv[argv.index("--synthetic") + 1] == str(real / "images") and "--synthetic-model" not in argv
    assert argv[argv.index("--synthetic-labels") + 1] == str(real / "labels")
    assert argv[argv.index("--label-scheme") + 1] == "aydin7" and argv[argv.index("--n-real") + 1] == "1"
    for field, value, needle in (("realImages", "", "real images folder: no path chosen"),
                                 ("realLabels", ".", "real labels folder: no path chosen"),
                                 ("synthetic", None, "synthetic source (a folder of volumes or a .vgan model): no path"),
                                 ("outFolder", "", "output folder: no path chosen")):
        with pytest.raises(VolGANError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            logic.segmentationExperimentArgs(**{**ok, field: value})
    with pytest.raises(InputFileError, match=r"missing: not found \(choose an existing real labels folder\)"):
        logic.segmentationExperimentArgs(**{**ok, "realLabels": tmp_path / "missing"})
    with pytest.raises(VolGANError, match="number of volumes to generate: expected at least 1 for the model"):
        logic.segmentationExperimentArgs(**{**ok, "synthetic": ckpt})
    with pytest.raises(VolGANError, match="config 'huge'"):
        logic.segmentationExperimentArgs(**ok, config="huge")
    with pytest.raises(VolGANError, match="folds: expected at least 2"):
        logic.segmentationExperimentArgs(**ok, folds=1)


def test_bad_generator_sources_fail_before_any_work(inputs, tmp_path, capsys):
    """--synthetic-model errors: one line, exit 2, no output folder (the library checks them, not the panel)."""
    import torch

    from VolGANCore import cli
    from VolumetricGANLib.checkpoint import make_config, save_checkpoint
    from VolumetricGANLib.networks import StyleGAN2Generator

    real, ckpt, _ = inputs
    arch = tiny_stylegan_g(SHAPE, (2, 4, 4), width=8, z_dim=8, mapping_layers=1)
    torch.manual_seed(0)
    cfg = make_config("stylegan2-3d", arch, spacing=(0.6, 0.6, 1.2), name="other-grid",
                      intensity={"network_range": [-1, 1], "physical_range": [0, 1], "units": "a.u.", "clip": False})
    coarse = save_checkpoint(tmp_path / "other-grid.vgan", cfg, G_ema=StyleGAN2Generator(**arch))
    base = ["--quiet", "segmentation-experiment", "--real-images", real / "images", "--real-labels", real / "labels",
            "--folds", "2", "--device", "cpu"]
    cases = {
        "no count": (["--synthetic-model", ckpt], "also pass --n-generate N"),
        "zero count": (["--synthetic-model", ckpt, "--n-generate", "0"], "--n-generate: expected an integer ≥ 1"),
        "count without model": (["--synthetic", real / "images", "--n-generate", "2"], "only with --synthetic-model"),
        "labels for generated": (["--synthetic-model", ckpt, "--n-generate", "2", "--synthetic-labels",
                                  real / "labels"], "generated volumes have no label maps"),
        "other spacing": (["--synthetic-model", coarse, "--n-generate", "1"],
                          f"{coarse}: spacing (0.6, 0.6, 1.2) mm differs"),
        "missing model": (["--synthetic-model", tmp_path / "nope.vgan", "--n-generate", "1"], "nope.vgan: "),
    }
    for name, (extra, needle) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        rc = cli.main([str(a) for a in [*base, *extra, "--out", out]])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("volgan segmentation-experiment: error: "), (name, err)
        assert needle in err and err.strip().count("\n") == 0, (name, err)
        assert not out.exists(), name
    with pytest.raises(SystemExit) as both:                     # argparse: the two sources exclude each other
        cli.main([str(a) for a in [*base, "--synthetic", real / "images", "--synthetic-model", ckpt, "--out",
                                   tmp_path / "both"]])
    assert both.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_missing_or_damaged_results_are_clear_errors(headless, experiment, tmp_path):
    from GANTrainerLib.segmentation.experiment import prediction_path
    from GANTrainerSceneLogic import GANTrainerSceneLogic

    _, out, res, _ = experiment
    logic = GANTrainerSceneLogic(headless.scene)
    with pytest.raises(InputFileError, match="report folder not found"):
        logic.loadSegmentationExperiment(tmp_path / "missing")
    with pytest.raises(InputFileError, match=r"results.json: not found \(choose a results folder written by volgan "
                                             r"segmentation-experiment\)"):
        logic.loadSegmentationExperiment(tmp_path)
    (tmp_path / "results.json").write_text("{broken")
    with pytest.raises(InputFileError, match="results.json: is not valid JSON"):
        logic.loadSegmentationExperiment(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"kind": "volgan-evaluation"}))
    with pytest.raises(InputFileError, match="is not a volgan-segmentation-experiment report"):
        logic.loadSegmentationExperiment(tmp_path)
    partial = {k: v for k, v in res.items() if k != "summary"}
    (tmp_path / "results.json").write_text(json.dumps(partial))
    with pytest.raises(InputFileError, match=r"results.json: is incomplete \(KeyError: 'summary'\)"):
        logic.loadSegmentationExperiment(tmp_path)
    no_ba = json.loads(json.dumps(res))
    del no_ba["summary"]["synthetic"]["per_class"]["BA"]
    (tmp_path / "results.json").write_text(json.dumps(no_ba))
    with pytest.raises(InputFileError, match=r"is incomplete \(KeyError: 'BA'\) \(the results are damaged"):
        logic.loadSegmentationExperiment(tmp_path)
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0
    # a prediction holding an id outside the scheme: the file is named and nothing half-loaded stays
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    case = res["folds"][0]["test"][0]
    path = prediction_path(damaged, 0, "synthetic", case)
    lab = read_label_volume(path)
    arr = lab.array.copy()
    arr[0, 0, 0] = 13
    write_volume(lab.with_array(arr), path)
    with pytest.raises(InputFileError, match=rf"{case}.nii.gz: unknown label id\(s\) \[13\]"):
        logic.loadSegmentationExperiment(damaged)
    assert all(headless.scene.GetNumberOfNodesByClass(c) == 0 for c in
               ("vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLSegmentationNode", "vtkMRMLPlotSeriesNode"))
