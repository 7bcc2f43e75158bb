"""GANTrainer: train 3-D GANs (StyleGAN2-3D, progressive WGAN-GP-3D) and evaluate generated data.

The widget only moves values between the .ui, the parameter node and the logic. The science lives in
GANTrainerLib / VolumetricGANLib / MorphometryLib (no Slicer imports); MRML-level logic in
GANTrainerSceneLogic (no Qt).
"""

import logging
import os
import pathlib
from typing import Annotated

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from GANTrainerLib.presets import PRESETS
from GANTrainerSceneLogic import (
    PREPARE_CALIBRATIONS,
    PREPARE_FORMATS,
    PREPARE_LABEL_SCHEMES,
    PREPARE_ROIS,
    RUN_PLOTS,
    GANTrainerSceneLogic,
    TrainingProcess,
    updateRunPlot,
)
from VolGANSlicer.widgets import JobWatcher, PanelProgress, ParameterNodeWidgetMixin


class GANTrainer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GAN Trainer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = ["MorphometryLogic"]  # VolGANCore and VolGANSlicer are installed with it
        self.parent.contributors = ["SlicerVolumetricGAN developers"]
        self.parent.helpText = _(
            "Train 3-D GANs of anatomy from a folder of volumes (mixed precision, differentiable augmentation, "
            "resumable) and evaluate generated data. Start by validating a dataset folder. "
            '<a href="https://github.com/SlicerVolumetricGAN/SlicerVolumetricGAN#gantrainer">Documentation</a>.')
        self.parent.acknowledgementText = _(
            "Recipes after Aydin et al., NeuroImage 2024 (3-D StyleGAN of the Circle of Willis) and "
            "Iarussi et al., MICCAI 2020 (generative 3-D spongiosa).")


@parameterNodeWrapper
class GANTrainerParameterNode:
    imagesFolder: pathlib.Path
    labelsFolder: pathlib.Path
    labelScheme: Annotated[str, Choice(["none", "topcow13", "aydin7"])] = "none"
    preset: Annotated[str, Choice(sorted(PRESETS))] = "tiny-spongiosa"
    runFolder: pathlib.Path
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    trainingPlot: Annotated[str, Choice(list(RUN_PLOTS))] = "losses"
    evalRealFolder: pathlib.Path
    evalFakeFolder: pathlib.Path
    evalOutFolder: pathlib.Path
    inceptionWeights: pathlib.Path
    medicalnetWeights: pathlib.Path
    evalProtocol: Annotated[str, Choice(["default", "aydin2024"])] = "default"
    evalMedicalnetBackground: Annotated[str, Choice(["noise", "zero"])] = "noise"  # aydin2024 only
    segRealImages: pathlib.Path
    segRealLabels: pathlib.Path
    segSyntheticSource: Annotated[str, Choice(["folder", "model"])] = "folder"
    segSyntheticFolder: pathlib.Path
    segSyntheticModel: pathlib.Path
    segNGenerate: Annotated[int, WithinRange(1, 100000)] = 100
    segOutFolder: pathlib.Path
    segConfig: Annotated[str, Choice(["small", "full"])] = "small"
    segFolds: Annotated[int, WithinRange(2, 50)] = 5
    segEpochs: Annotated[int, WithinRange(0, 1000)] = 0  # 0: the config's own
    # Prepare dataset (`volgan prepare bone|cow`); GANTrainerSceneLogic.prepareDatasetArgsFromParameters maps these
    prepKind: Annotated[str, Choice(["bone", "cow"])] = "bone"
    prepScansFolder: pathlib.Path
    prepMasksFolder: pathlib.Path  # bone: spongiosa masks; cow: label maps
    prepOutFolder: pathlib.Path
    prepFormat: Annotated[str, Choice(list(PREPARE_FORMATS))] = "nii.gz"
    prepOverwrite: bool = False
    prepTemplateSource: Annotated[str, Choice(["file", "build"])] = "file"  # cow
    prepTemplate: pathlib.Path  # cow, template source "file"
    prepTemplateIterations: Annotated[int, WithinRange(1, 20)] = 3  # cow, template source "build"
    prepRoi: Annotated[str, Choice(list(PREPARE_ROIS))] = "paper box"  # cow
    prepRoiText: str = ""  # cow, ROI "custom": x0:x1,y0:y1,z0:z1 in template voxels
    prepRoiMarginMm: Annotated[float, WithinRange(0.0, 100.0)] = 5.0  # cow, ROI "around labels"
    prepCowSpacing: str = ""  # cow: empty = the template's; one value (isotropic) or three (x y z) mm
    prepLabelScheme: Annotated[str, Choice(list(PREPARE_LABEL_SCHEMES))] = "topcow13"  # cow
    prepWorkers: Annotated[int, WithinRange(1, 64)] = 1  # cases prepared in parallel (both kinds)
    prepBoneSpacing: Annotated[float, WithinRange(0.001, 10.0)] = 0.164  # bone (mm)
    prepCalibration: Annotated[str, Choice(list(PREPARE_CALIBRATIONS))] = "none"  # bone
    prepSlope: str = ""  # bone, calibration "slope+intercept"
    prepIntercept: str = ""  # bone, calibration "slope+intercept" (mg HA/cm³)
    prepCortexMm: Annotated[float, WithinRange(0.0, 20.0)] = 1.0  # bone, automatic masks
    prepClosingMm: Annotated[float, WithinRange(0.0, 20.0)] = 1.0  # bone, automatic masks
    prepStride: Annotated[int, WithinRange(0, 1024)] = 0  # bone: 0 = the patch size
    prepMinFill: Annotated[float, WithinRange(0.0, 1.0)] = 0.02  # bone
    prepPatchSize: Annotated[int, WithinRange(4, 256)] = 32  # bone


class GANTrainerWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.pollTimer = None
        self.lossChart = None
        self.sampleNode = None
        self.lastCheckpoint = None
        self.loadedReport = None  # the evaluation/fidelity report shown in the scene (replaced by the next one)
        self.evaluationWatcher = None  # `volgan evaluate` in the background (JobWatcher)
        self.segmentationWatcher = None  # the downstream experiment in the background (JobWatcher)
        self.segmentationResult = None  # its results shown in the scene (replaced by the next ones)
        self.prepareWatcher = None  # `volgan prepare` in the background (JobWatcher)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GANTrainer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GANTrainerLogic()

        self.observeSceneClose()
        self.ui.validateButton.connect("clicked(bool)", self.onValidateButton)
        self.ui.startTrainingButton.connect("clicked(bool)", lambda: self.onStartTraining(resume=False))
        self.ui.resumeTrainingButton.connect("clicked(bool)", lambda: self.onStartTraining(resume=True))
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)
        self.whenChanged(("trainingPlot",), self.updateTrainingPlot)
        self.validateProgress = PanelProgress(self.ui.progressBar, self.ui.statusLabel)
        self.evaluationWatcher = JobWatcher(self, "evaluate", self.ui.progressBar, self.ui.statusLabel,
                                            self.ui.cancelEvaluationButton, finished=self.onEvaluationFinished,
                                            what="Evaluation")
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.ui.loadReportButton.connect("clicked(bool)", self.onLoadReportButton)
        self.pollTimer = self.addTimer(2000, self.onPollTraining)  # stopped by cleanup()
        self.ui.segRunButton.connect("clicked(bool)", self.onRunSegmentationExperiment)
        self.ui.segLoadResultsButton.connect("clicked(bool)", self.onLoadSegmentationResults)
        self.segmentationWatcher = JobWatcher(self, "segmentation-experiment", self.ui.segProgressBar,
                                              self.ui.segStatusLabel, self.ui.segCancelButton,
                                              finished=self.onSegmentationExperimentFinished,
                                              what="Segmentation experiment")
        self.prepareWatcher = JobWatcher(self, "prepare", self.ui.progressBar, self.ui.statusLabel,
                                         self.ui.cancelPrepareButton, finished=self.onPrepareFinished,
                                         what="Dataset preparation")
        self.ui.prepareButton.connect("clicked(bool)", self.onPrepareButton)
        self.setupEnvironmentSection(needTorch=True)
        self.initializeParameterNode()

    def enter(self) -> None:
        super().enter()
        # reopening the module re-attaches to a run that kept going while the panel was closed
        # (and, after restarting Slicer, with no run folder chosen yet, to the newest run started from a panel)
        p = self._parameterNode
        if p and self.logic.training is None:
            self.logic.training = TrainingProcess.running(p.runFolder)
            if self.logic.training is not None and str(p.runFolder) in ("", "."):
                p.runFolder = self.logic.training.runFolder
        if self.logic.training is not None:
            self.pollTimer.start()
            self.onPollTraining()
        # background evaluations and experiments started before the module was closed or Slicer restarted
        self.evaluationWatcher.reattach()
        self.segmentationWatcher.reattach()
        self.prepareWatcher.reattach()

    def exit(self) -> None:
        self.pollTimer.stop()  # the run goes on; enter() picks it up again
        self.evaluationWatcher.pause()
        self.segmentationWatcher.pause()
        self.prepareWatcher.pause()
        super().exit()

    def updateButtonStates(self) -> None:
        p = self._parameterNode
        ready = bool(p) and str(p.imagesFolder) not in ("", ".")
        self.ui.validateButton.enabled = ready
        self.ui.validateButton.toolTip = _("Read every volume and report problems") if ready else _(
            "Choose an images folder first")
        running = self.logic.training is not None and self.logic.training.isRunning()
        can_train = ready and bool(p) and str(p.runFolder) not in ("", ".") and not running
        self.ui.startTrainingButton.enabled = can_train
        self.ui.resumeTrainingButton.enabled = can_train
        self.ui.stopTrainingButton.enabled = running
        can_evaluate = bool(p) and all(str(f) not in ("", ".") for f in (p.evalRealFolder, p.evalFakeFolder, p.evalOutFolder))
        evaluating = self.evaluationWatcher is not None and self.evaluationWatcher.running
        self.ui.evaluateButton.enabled = can_evaluate and not evaluating
        self.ui.evaluateButton.toolTip = _("Running…") if evaluating else _(
            "Compare the generated with the real volumes in the background and show the report") if \
            can_evaluate else _("Choose the real, generated and output folders first")
        self.ui.cancelEvaluationButton.enabled = evaluating
        self.ui.evalMedicalnetBackgroundComboBox.enabled = bool(p) and p.evalProtocol == "aydin2024"
        self.updateSegmentationButtons()
        self.updatePrepareButtons()

    def updatePrepareButtons(self) -> None:
        p = self._parameterNode
        can_prepare = bool(p) and all(str(f) not in ("", ".") for f in (p.prepScansFolder, p.prepOutFolder))
        preparing = self.prepareWatcher is not None and self.prepareWatcher.running
        self.ui.prepareButton.enabled = can_prepare and not preparing
        self.ui.cancelPrepareButton.enabled = preparing
        # only the options of the chosen kind (and of its choices: template, ROI, calibration) are shown
        used = self.logic.prepareFieldsInUse(p) if p else set()
        for field, widgets in self.prepareFieldWidgets().items():
            for widget in widgets:
                widget.visible = field in used
        if p:
            self.ui.prepMasksFolderLabel.text = _("Labels folder:") if p.prepKind == "cow" else _("Masks folder:")

    def prepareFieldWidgets(self) -> dict:
        """``{field: [its widget, its label]}`` of the Prepare dataset section's bound widgets (``<field>Label``)."""
        out = {}
        for widget in vars(self.ui).values():
            field = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
            if field and str(field).startswith("prep"):
                label = getattr(self.ui, f"{field}Label", None)
                out[str(field)] = [widget] + ([label] if label is not None else [])
        return out

    def onPrepareButton(self) -> None:
        p = self._parameterNode
        if not self.ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Starting the dataset preparation failed."), waitCursor=True):
            argv = self.logic.prepareDatasetArgsFromParameters(p)  # a bad combination stops here, nothing starts
            self.prepareWatcher.start(argv, outFolder=p.prepOutFolder)

    def onPrepareFinished(self, status) -> None:
        """Fill in the dataset section with the prepared folders."""
        folders = self.logic.preparedTrainingFolders(status.get("out_folder"))
        p = self._parameterNode
        p.imagesFolder = pathlib.Path(folders["images"])
        if folders["labels"]:
            p.labelsFolder = pathlib.Path(folders["labels"])
        self.ui.statusLabel.text = _("Prepared {n} volume(s); the images folder is filled in").format(n=folders["cases"])

    def onStartTraining(self, resume: bool) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Starting training failed."), waitCursor=True):
            if not self.ensureDependencies():
                return
            labels = p.labelsFolder if str(p.labelsFolder) not in ("", ".") else None
            self.logic.training = TrainingProcess.start(p.preset, p.imagesFolder, p.runFolder, labelsFolder=labels,
                                                        resume=resume, device=p.device)
            self.lastCheckpoint = None
            self.ui.statusLabel.text = _("Training started (preset {preset})").format(preset=p.preset)
            self.pollTimer.start()
            self.updateButtonStates()

    def onStopTraining(self) -> None:
        if self.logic.training is not None:
            self.logic.training.stop(timeout=None)
            self.ui.statusLabel.text = _("Stopping: finishing the current step and writing a checkpoint…")

    def onPollTraining(self) -> None:
        proc = self.logic.training
        if proc is None:
            self.pollTimer.stop()
            return
        status = proc.poll()
        total, kimg = status.get("total_kimg") or 0, status.get("kimg") or 0
        self.ui.progressBar.setMaximum(1000)
        self.ui.progressBar.setValue(int(1000 * kimg / total) if total else 0)
        eta = status.get("eta_s")
        eta_text = _(", about {m:.0f} min left").format(m=eta / 60) if eta and status.get("running") else ""
        best = status.get("best") or {}
        best_text = _("; best {name} {value:.4g} at step {step}").format(
            name=best.get("metric_name") or _("metric"), value=best["metric"], step=best.get("step", "?")) \
            if best.get("metric") is not None else ""
        self.ui.statusLabel.text = _("{state}: step {step}, {kimg:.2f} of {total:g} kimg{eta}{best}").format(
            state=status.get("state", "?"), step=status.get("step", 0), kimg=kimg, total=total, eta=eta_text,
            best=best_text)
        if status.get("state") in ("failed", "stopped") and status.get("message"):
            self.ui.statusLabel.text += " — " + status["message"]
        if proc.stopIfOverdue():  # a stop request the trainer did not honour in time: its processes were ended
            status = proc.poll()
        self.ui.trainingLogTextEdit.setPlainText(proc.lastLogLines(30))
        self.updateTrainingPlot()
        ckpt = status.get("checkpoints", [{}])[-1].get("path") if status.get("checkpoints") else None
        if ckpt and ckpt != self.lastCheckpoint:
            self.lastCheckpoint = ckpt
            self.sampleNode = self.logic.loadLatestSample(proc.runFolder, node=self.sampleNode)
            if self.sampleNode is not None:
                slicer.util.setSliceViewerLayers(background=self.sampleNode, fit=True)
        if not status.get("running"):
            self.pollTimer.stop()
        self.updateButtonStates()

    def updateTrainingPlot(self) -> None:
        """Redraw the chosen plot (losses or quick metrics) of the run being watched."""
        proc, p = self.logic.training, self._parameterNode
        if proc is None or not p:
            return
        chart = updateRunPlot(self.logic, proc.runFolder, chartNode=self.lossChart, plot=p.trainingPlot)
        self.lossChart = chart
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onValidateButton(self) -> None:
        p = self._parameterNode
        if not self.ensureDependencies(needTorch=False):
            return
        with self.validateProgress.begin() as progress, \
                slicer.util.tryWithErrorDisplay(_("Dataset validation failed."), waitCursor=True):
            report, table = self.logic.validateDataset(p.imagesFolder, p.labelsFolder, p.labelScheme,
                                                       progress=progress, cancel=progress.token)
            self.ui.statusLabel.text = report.summary().splitlines()[0] + (
                "" if report.ok else _(" — {n} problem(s), see the table").format(n=len(report.problems)))
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


    def onEvaluateButton(self) -> None:
        p = self._parameterNode
        if not self.ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Starting the evaluation failed."), waitCursor=True):
            argv = self.logic.evaluationArgs(p.evalRealFolder, p.evalFakeFolder, p.evalOutFolder,
                                             protocol=p.evalProtocol, inceptionWeights=p.inceptionWeights,
                                             medicalnetBackground=p.evalMedicalnetBackground,
                                             medicalnetWeights=p.medicalnetWeights, device=p.device)
            self.evaluationWatcher.start(argv, outFolder=p.evalOutFolder)

    def onEvaluationFinished(self, status) -> None:
        self.showReport(self.logic.loadEvaluationReport(status.get("out_folder"), previous=self.loadedReport))

    @staticmethod
    def chooseFolder(title: str, current) -> str:
        """A folder from the user ("" if none), starting at ``current`` when one is set."""
        start = str(current) if current is not None and str(current) not in ("", ".") else ""
        return qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), title, start)

    def onLoadReportButton(self) -> None:
        folder = self.chooseFolder(_("Report folder"), self._parameterNode.evalOutFolder if self._parameterNode else None)
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Loading the report failed."), waitCursor=True):
            self.showReport(self.logic.loadReport(folder, previous=self.loadedReport))

    def showReport(self, loaded) -> None:
        """Table and chart of a loaded report in the plot + table layout; a one-line summary below."""
        self.loadedReport = loaded
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(loaded.table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        if loaded.chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(loaded.chart)
        self.ui.statusLabel.text = loaded.summary()

    # -- downstream segmentation experiment: a background job -------------------------------------------------
    def updateSegmentationButtons(self) -> None:
        p = self._parameterNode
        running = self.segmentationWatcher is not None and self.segmentationWatcher.running
        model = bool(p) and p.segSyntheticSource == "model"
        for name in ("segSyntheticModelLabel", "segSyntheticModelPathLineEdit", "segNGenerateLabel",
                     "segNGenerateSpinBox"):
            getattr(self.ui, name).visible = model
        for name in ("segSyntheticFolderLabel", "segSyntheticFolderPathLineEdit"):
            getattr(self.ui, name).visible = not model
        source = (p.segSyntheticModel if model else p.segSyntheticFolder) if p else ""
        ready = bool(p) and all(str(f) not in ("", ".") for f in (p.segRealImages, p.segRealLabels, source,
                                                                   p.segOutFolder))
        self.ui.segRunButton.enabled = ready and not running
        self.ui.segRunButton.toolTip = _("Running…") if running else _(
            "Train real, synthetic and real+synthetic segmenters per fold in the background") if ready else _(
            "Choose the real images and labels, the synthetic source and the output folder first")
        self.ui.segCancelButton.enabled = running

    def onRunSegmentationExperiment(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Starting the segmentation experiment failed."), waitCursor=True):
            if not self.ensureDependencies():
                return
            model = p.segSyntheticSource == "model"
            argv = self.logic.segmentationExperimentArgs(
                p.segRealImages, p.segRealLabels, p.segSyntheticModel if model else p.segSyntheticFolder,
                p.segOutFolder, config=p.segConfig, folds=p.segFolds, device=p.device,
                nGenerate=p.segNGenerate if model else None, epochs=p.segEpochs or None)
            self.segmentationWatcher.start(argv, outFolder=p.segOutFolder)
            self.ui.segStatusLabel.text = _("Segmentation experiment started ({config} network, {folds} folds)").format(
                config=p.segConfig, folds=p.segFolds)

    def onSegmentationExperimentFinished(self, status) -> None:
        self.showSegmentationExperiment(self.logic.loadSegmentationExperiment(status.get("out_folder"),
                                                                              previous=self.segmentationResult))

    def onLoadSegmentationResults(self) -> None:
        folder = self.chooseFolder(_("Segmentation results folder"),
                                   self._parameterNode.segOutFolder if self._parameterNode else None)
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Loading the segmentation results failed."), waitCursor=True):
            self.showSegmentationExperiment(self.logic.loadSegmentationExperiment(folder,
                                                                                  previous=self.segmentationResult))

    def showSegmentationExperiment(self, loaded) -> None:
        """Dice/HD95 table and per-case Dice chart in the plot + table layout; the first held-out prediction
        over its real image in the slice views."""
        self.segmentationResult = loaded
        self.ui.segStatusLabel.text = loaded.summary()
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no views (Slicer without a main window): the nodes are in the scene
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(loaded.table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        slicer.modules.plots.logic().ShowChartInLayout(loaded.chart)
        first = loaded.firstPrediction()
        if first is not None:
            image = self.logic.loadExperimentImage(loaded, first.GetAttribute("GANTrainer.Case"))
            slicer.util.setSliceViewerLayers(background=image, fit=True)


class GANTrainerLogic(GANTrainerSceneLogic, ScriptedLoadableModuleLogic):
    """Console use: ``slicer.util.getModuleLogic("GANTrainer").validateDataset(folder)``, ``.runEvaluation(real,
    generated, out)``, ``.loadReport(folder)``; ``TrainingProcess.start(preset, data, run)`` runs ``volgan train``
    in the background."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        GANTrainerSceneLogic.__init__(self)
        self.training = None  # the TrainingProcess the panel watches (kept while the module is closed)

    def getParameterNode(self):
        return GANTrainerParameterNode(super().getParameterNode())


class GANTrainerTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from VolGANSlicer.dependencies import ensure_all, requirements_file

        # in Slicer's testing mode the confirmation answers itself: the packages are installed if missing
        self.assertTrue(ensure_all(requirements_file(__file__), need_torch=False))
        self.setUp()
        self.test_validate_dataset()

    def test_validate_dataset(self):
        import tempfile

        import numpy as np
        from VolGANCore import Volume, write_volume

        self.delayDisplay("Validating a small dataset folder")
        folder = tempfile.mkdtemp()
        for k in range(2):
            write_volume(Volume(np.full((4, 5, 6), k, np.float32), spacing=(0.3, 0.3, 0.6)),
                         os.path.join(folder, f"case{k}.nii.gz"))
        report, table = GANTrainerLogic().validateDataset(folder)
        self.assertTrue(report.ok)
        self.assertEqual(table.GetNumberOfRows(), 2)
        logging.info("GANTrainer self-test passed")
        self.delayDisplay("Test passed")
