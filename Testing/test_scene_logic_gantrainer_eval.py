"""GANTrainer's evaluation reports in a real (slicer-core) scene: run, load, tables, charts, bad folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from VolGANCore import Cancelled, CancelToken, InputFileError, RecordingProgress, Volume, mrml, write_volume


@pytest.fixture(scope="module")
def volume_sets(tmp_path_factory):
    """Six real and six generated 8×24×24 volumes: a bright block that moves, plus noise."""
    root = tmp_path_factory.mktemp("evalsets")
    rng = np.random.default_rng(0)
    for name, n, shift in (("real", 6, 0.0), ("fake", 6, 0.2)):
        for k in range(n):
            a = rng.normal(size=(8, 24, 24)).astype(np.float32) * 0.3 + shift
            a[:, 6:18, 4 + k:14 + k] += 1.0
            write_volume(Volume(a, spacing=(0.5, 0.5, 1.0)), root / name / f"c{k}.nii.gz")
    return root


def _series(chart):
    return {chart.GetNthPlotSeriesNode(i).GetName(): chart.GetNthPlotSeriesNode(i)
            for i in range(chart.GetNumberOfPlotSeriesNodes())}


@pytest.mark.slow
def test_run_evaluation_loads_metrics_table_and_pr_chart(headless, volume_sets, tmp_path):
    from GANTrainerSceneLogic import GANTrainerSceneLogic

    logic = GANTrainerSceneLogic(headless.scene)
    rec = RecordingProgress()
    loaded = logic.runEvaluation(volume_sets / "real", volume_sets / "fake", tmp_path / "rep", progress=rec,
                                 protocol="default", n_bootstrap=3, seed=2, device="cpu", inception_weights="")
    assert rec.events[-1].finished and (tmp_path / "rep" / "report.json").is_file()
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    rows = {r["key"]: r for r in mrml.rows_from_table(loaded.table)}
    assert set(report["metrics"]) | {"msssim_diversity", "frame_index"} == set(rows)
    frames = rows["frame_index"]
    assert frames["real vs generated"] == pytest.approx(report["border"]["frame_index"]["real_vs_generated"])
    assert frames["real vs real"] == pytest.approx(report["border"]["frame_index"]["real_vs_real"])
    fd = rows["frechet_3d"]
    assert fd["extractor"] == "fallback-random-resnet10-seed2" and fd["fallback features"] == "yes"
    assert fd["real vs generated"] == pytest.approx(report["metrics"]["frechet_3d"]["real_vs_generated"])
    assert fd["CI 95% low"] <= fd["CI 95% high"] and np.isfinite(fd["real vs real"])
    div = rows["msssim_diversity"]
    assert div["real vs generated"] == pytest.approx(report["diversity"]["msssim"]["generated"]["mean"])
    assert div["real vs real"] == pytest.approx(report["diversity"]["msssim"]["real"]["mean"])
    series = _series(loaded.chart)
    assert {"PRD real vs generated", "PRD real vs real (halves)", "k-NN precision/recall (real vs generated)"} <= set(series)
    prd_table = headless.scene.GetNodeByID(series["PRD real vs generated"].GetTableNodeID())
    assert prd_table.GetNumberOfRows() == 1001
    knn = mrml.rows_from_table(headless.scene.GetNodeByID(
        series["k-NN precision/recall (real vs generated)"].GetTableNodeID()))
    assert knn == [{"recall": pytest.approx(report["metrics"]["recall"]["real_vs_generated"]),
                    "k-NN precision/recall (real vs generated)": pytest.approx(report["metrics"]["precision"]["real_vs_generated"])}]
    assert "suspected cop" in loaded.summary()
    assert f"{len(report['warnings'])} warning" in loaded.summary() and report["warnings"]  # 6 volumes: too few for PRD
    # loading again in place of the first: no pile-up of tables and charts
    n_tables = headless.scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    again = logic.loadReport(tmp_path / "rep", previous=loaded)
    assert again.kind == "evaluation" and headless.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == n_tables
    # cancelling: the library stops at the next step and leaves no report folder
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        logic.runEvaluation(volume_sets / "real", volume_sets / "fake", tmp_path / "cancelled", cancel=token,
                            n_bootstrap=0, device="cpu")
    assert not (tmp_path / "cancelled").exists()


@pytest.mark.slow
def test_fidelity_reports_bone_and_cow(headless, tmp_path):
    from GANTrainerLib.evaluation.fidelity import bone_fidelity, cow_fidelity, write_fidelity_report
    from GANTrainerSceneLogic import GANTrainerSceneLogic, histogram_pair
    from VolumetricGANLib.phantoms import write_bone_dataset, write_cow_dataset

    logic = GANTrainerSceneLogic(headless.scene)
    real = write_bone_dataset(tmp_path / "bone_r", n=4, seed=0) / "images"
    gen = write_bone_dataset(tmp_path / "bone_g", n=2, seed=1, bvtv=0.3) / "images"
    bone = bone_fidelity(real, gen)
    write_fidelity_report(bone, tmp_path / "bone_rep")
    loaded = logic.loadReport(tmp_path / "bone_rep")
    rows = {r["parameter"]: r for r in mrml.rows_from_table(loaded.table)}
    assert set(rows) == {r["parameter"] for r in bone["parameters"]}
    bvtv = next(r for r in bone["parameters"] if r["parameter"] == "BV/TV")
    assert rows["BV/TV"]["W1/SD"] == pytest.approx(bvtv["wasserstein_over_sd"])
    assert rows["BV/TV"]["KS real vs real"] == pytest.approx(bvtv["ks_real_vs_real"])
    worst = max(bone["parameters"], key=lambda r: r["wasserstein_over_sd"])["parameter"]
    assert loaded.chart.GetAttribute("GANTrainer.Parameter") == worst  # default: the least faithful parameter
    for name, ps in _series(loaded.chart).items():
        assert ps.GetPlotType() == ps.PlotTypeScatterBar  # bars at their bin centres (PlotTypeBar drops X)
        data = mrml.rows_from_table(headless.scene.GetNodeByID(ps.GetTableNodeID()))
        centres = [r[ps.GetXColumnName()] for r in data]
        assert centres == sorted(centres) and centres[0] < centres[-1]  # the parameter's axis, not 0, 1, 2, …
        fractions = [r[name] for r in data]
        assert sum(fractions) == pytest.approx(1.0), name  # every case falls in one of the common bins

    labels = write_cow_dataset(tmp_path / "cow", n=4, seed=5, shape=(16, 64, 64), spacing_mm=1.0) / "labels"
    write_fidelity_report(cow_fidelity(labels, labels), tmp_path / "cow_rep")
    cow = logic.loadFidelityReport(tmp_path / "cow_rep", parameter="BA length [mm]", previous=loaded)
    assert set(cow.tables) == {"parameters", "presence", "variants"}
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1  # the bone chart was replaced
    presence = mrml.rows_from_table(cow.tables["presence"])
    assert [r["artery"] for r in presence][:2] == ["BA", "R-PCA"] and all(r["difference"] == 0 for r in presence)
    assert cow.tables["variants"].GetAttribute("GANTrainer.TVAnterior") == "0"
    ba = next(r for r in mrml.rows_from_table(cow.table) if r["parameter"] == "BA length [mm]")
    assert ba["Wasserstein"] == 0 and ba["n real"] == 4
    series = _series(cow.chart)
    assert set(series) == {"real (n = 4)", "generated (n = 4)"}
    centres, fr, fg = histogram_pair([1.0, 1.0], [1.0])
    assert fr == fg and sum(fr) == 1.0 and len(centres) == 3  # constant values: one bin around them holds all
    with pytest.raises(Exception, match="not a parameter"):
        logic.loadFidelityReport(tmp_path / "cow_rep", parameter="nope")


def test_bad_report_folders_are_clear_errors(headless, tmp_path):
    from GANTrainerSceneLogic import GANTrainerSceneLogic

    logic = GANTrainerSceneLogic(headless.scene)
    with pytest.raises(InputFileError, match="holds neither report.json"):
        logic.loadReport(tmp_path)
    with pytest.raises(InputFileError, match="report folder not found"):
        logic.loadEvaluationReport(tmp_path / "missing")
    (tmp_path / "report.json").write_text("{broken")
    with pytest.raises(InputFileError, match=r"report.json: is not valid JSON"):
        logic.loadReport(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(InputFileError, match="is not a volgan-evaluation report"):
        logic.loadEvaluationReport(tmp_path)
    assert headless.scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0


@pytest.mark.slow
def test_panel_evaluates_in_the_background_then_shows_the_report(volume_sets, tmp_path, monkeypatch):
    """Evaluate in the panel (Slicer 5.12.3's own layer) runs `volgan evaluate` as a BackgroundJob through
    PythonSlicer; the panel's poll follows it and loads the report; Cancel ends a second run with no report."""
    import time

    from install_layout import put_fake_pythonslicer_on_path
    from slicer_layer import slicer_layer

    put_fake_pythonslicer_on_path(monkeypatch, tmp_path / "bin", python_args=())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with slicer_layer("5.12.3") as layer:
        widget = layer.make_widget("GANTrainer")
        ui, p = widget.ui, widget._parameterNode
        assert not ui.evaluateButton.enabled
        p.evalRealFolder, p.evalFakeFolder, p.evalOutFolder = volume_sets / "real", volume_sets / "fake", tmp_path / "rep"
        p.device = "cpu"
        assert ui.evaluateButton.enabled and not ui.cancelEvaluationButton.enabled
        assert not ui.evalMedicalnetBackgroundComboBox.enabled  # the default protocol has no background
        p.evalProtocol = "aydin2024"
        assert ui.evalMedicalnetBackgroundComboBox.enabled and p.evalMedicalnetBackground == "noise"
        p.evalProtocol = "default"
        ui.evaluateButton.click()
        watcher = widget.evaluationWatcher
        assert watcher.running and not ui.evaluateButton.enabled and ui.cancelEvaluationButton.enabled
        assert watcher.job.poll()["argv"][:2] == ["evaluate", "--real"]
        t0 = time.time()
        while watcher.job is not None and time.time() - t0 < 240:
            watcher.poll()  # what the panel's timer does every 2 s
            time.sleep(0.2)
        assert watcher.job is None and not watcher.timer.isActive()
        assert widget.loadedReport is not None and widget.loadedReport.kind == "evaluation", ui.statusLabel.text
        report = json.loads((tmp_path / "rep" / "report.json").read_text())
        rows = {r["key"] for r in mrml.rows_from_table(widget.loadedReport.table)}
        assert set(report["metrics"]) <= rows
        assert layer.app.layoutManager().layouts[-1] == layer.slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView
        selection = layer.app.applicationLogic().GetSelectionNode()
        assert selection.GetActiveTableID() == widget.loadedReport.table.GetID()  # the report's table is shown
        assert ui.progressBar.value == 1000 and ui.evaluateButton.enabled and not ui.cancelEvaluationButton.enabled

        p.evalOutFolder = tmp_path / "rep2"
        ui.evaluateButton.click()
        job = watcher.job
        ui.cancelEvaluationButton.click()  # a stop request: the job ends at its next step
        t0 = time.time()
        while watcher.job is not None and time.time() - t0 < 120:
            watcher.poll()
            time.sleep(0.2)
        assert job.poll()["state"] == "cancelled", job.lastLogLines()
        assert "Evaluation cancelled" in ui.statusLabel.text
        assert not (tmp_path / "rep2").exists()  # nothing half-written
        assert widget.loadedReport.folder == tmp_path / "rep"  # the first report stays shown


def test_evaluation_args_pass_the_medicalnet_background_with_the_anchor_protocol(tmp_path):
    from GANTrainerSceneLogic import GANTrainerSceneLogic
    from VolGANCore import VolGANError

    folders = (tmp_path / "real", tmp_path / "fake", tmp_path / "out")
    anchor = GANTrainerSceneLogic.evaluationArgs(*folders, protocol="aydin2024")
    assert anchor[anchor.index("--medicalnet-background") + 1] == "noise"  # the paper's rule by default
    zero = GANTrainerSceneLogic.evaluationArgs(*folders, protocol="aydin2024", medicalnetBackground="zero")
    assert zero[zero.index("--medicalnet-background") + 1] == "zero"
    assert "--medicalnet-background" not in GANTrainerSceneLogic.evaluationArgs(*folders, medicalnetBackground="zero")
    with pytest.raises(VolGANError, match="MedicalNet background 'grey'"):
        GANTrainerSceneLogic.evaluationArgs(*folders, protocol="aydin2024", medicalnetBackground="grey")
