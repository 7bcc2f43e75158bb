"""VolumetricGAN: generate Circle-of-Willis angiograms and spongiosa patches, interpolate, invert and steer.

The widget only moves values between the .ui, the parameter node and the logic. The science lives in
VolumetricGANLib / MorphometryLib (no Slicer imports); MRML-level logic in VolumetricGANSceneLogic (no Qt).
"""

import logging
import pathlib
from pathlib import Path
from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
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

from VolGANCore import VolGANError
from VolGANSlicer.widgets import PanelProgress, ParameterNodeWidgetMixin
from VolumetricGANSceneLogic import GENERATION_MODES, STEERING_PARAMETERS, STEERING_UNITS, VolumetricGANSceneLogic


class VolumetricGAN(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Volumetric GAN")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = ["MorphometryLogic"]  # VolGANCore and VolGANSlicer are installed with it
        self.parent.contributors = ["SlicerVolumetricGAN developers"]
        self.parent.helpText = _(
            "Generate 3-D Circle-of-Willis TOF-MRA angiograms (3-D StyleGAN2) and trabecular-bone patches "
            "(progressive 3-D GAN), steer bone patches to target micro-structure or simulate a change "
            "(e.g. BV/TV -20 %), and create built-in ground-truth phantoms of both. "
            '<a href="https://github.com/SlicerVolumetricGAN/SlicerVolumetricGAN#volumetricgan">Documentation</a>.')
        self.parent.acknowledgementText = _(
            "After Aydin et al., NeuroImage 2024 and Iarussi et al., MICCAI 2020. TopCoW label scheme after "
            "the TopCoW 2023 challenge.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register both phantoms, and a sample of each shipped model, as sample data; all are made locally when
    chosen (the phantom generator, or the model in Resources/Models), never downloaded."""
    import SampleData

    def phantom_loader(kind):
        def load(source):
            image_node, _label_node, _params = VolumetricGANSceneLogic().loadPhantom(kind, seed=0)
            return [image_node]
        return load

    def model_loader(anatomy, labels):
        def load(source):
            return [VolumetricGANSceneLogic().loadShippedSample(anatomy, seed=0, labels=labels)]
        return load

    def register(title, loader, thumbnail=None):
        # Nothing to download: no URIs (SampleDataSource needs equal-length lists, so empty ones), and the Sample
        # Data module calls customDownloader(source) when the entry is chosen.
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="VolumetricGAN",
            sampleName=title,
            uris=[],
            fileNames=[],
            nodeNames=[],
            thumbnailFileName=str(thumbnail) if thumbnail else None,
            customDownloader=loader,
        )

    for kind, title in (("cow", "CoW TOF-MRA phantom"), ("bone", "Trabecular bone phantom")):
        register(title, phantom_loader(kind))
    logic = VolumetricGANSceneLogic()
    for anatomy, labels, title in (("circle-of-willis", False, "Synthetic CoW angiogram"),
                                   ("circle-of-willis", True, "Synthetic CoW angiogram with its artery labels"),
                                   ("spongiosa", False, "Synthetic spongiosa")):
        try:
            info = logic.shippedModelFor(anatomy, labels=labels)
        except VolGANError:  # an installation without that model: no entry
            continue
        montage = Path(info["path"]).with_name(Path(info["path"]).name.replace(".vgan", ".samples.png"))
        register(f"{title} ({info['name']} model)", model_loader(anatomy, labels),
                 montage if montage.is_file() else None)


@parameterNodeWrapper
class VolumetricGANParameterNode:
    checkpoint: pathlib.Path
    mode: Annotated[str, Choice(list(GENERATION_MODES))] = "sample"
    count: Annotated[int, WithinRange(1, 256)] = 4
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    seedB: Annotated[int, WithinRange(0, 2**31 - 1)] = 1
    truncation: Annotated[float, WithinRange(0.0, 1.5)] = 1.0
    noise: Annotated[str, Choice(["const", "random", "none"])] = "const"
    steps: Annotated[int, WithinRange(2, 256)] = 8
    variant: str = ""  # conditional CoW models: "anterior=…;posterior=…" (empty: the training frequencies)
    phantomKind: Annotated[str, Choice(["cow", "bone"])] = "cow"
    phantomSeed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    steerCount: Annotated[int, WithinRange(1, 64)] = 4
    steerSeed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    steerTolerance: Annotated[float, WithinRange(0.5, 50.0)] = 5.0  # percent
    steerSteps: Annotated[int, WithinRange(1, 5000)] = 200
    steerInputVolume: vtkMRMLScalarVolumeNode


class VolumetricGANWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._browseText = _("Browse…")

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VolumetricGAN.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VolumetricGANLogic()
        self.progress = PanelProgress(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton)

        self.observeSceneClose()
        self.ui.createPhantomButton.connect("clicked(bool)", self.onCreatePhantom)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerate)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.modelComboBox.connect("activated(int)", self.onModelChosen)
        self.ui.steerButton.connect("clicked(bool)", self.onSteer)
        self.ui.simulateChangeButton.connect("clicked(bool)", self.onSimulateChange)
        self.setupSteeringTable()
        self.setupEnvironmentSection(needTorch=True)
        self.refreshModelList()
        self.initializeParameterNode()

    def enter(self) -> None:
        self.refreshModelList()
        super().enter()

    # -- model choice ------------------------------------------------------------------------------------
    def refreshModelList(self) -> None:
        """Shipped and user models in the combo (item data: the path), then Browse…"""
        combo = self.ui.modelComboBox
        combo.clear()
        combo.addItem(_("(choose a model)"), "")
        for name, info in self.logic.shippedModels().items():
            if info.get("error"):
                continue
            combo.addItem(name, str(info["path"]))
            combo.setItemData(combo.count - 1, f"{info['family']} · {info['anatomy'] or '?'} · {info['path']}",
                              qt.Qt.ToolTipRole)
        combo.addItem(self._browseText, "")
        self._selectModelInCombo()

    def _selectModelInCombo(self) -> None:
        p = self._parameterNode
        current = str(p.checkpoint) if p else ""
        index = 0
        for i in range(1, self.ui.modelComboBox.count - 1):
            if self.ui.modelComboBox.itemData(i) == current:
                index = i
        self.ui.modelComboBox.setCurrentIndex(index)

    def onModelChosen(self, index: int) -> None:
        combo = self.ui.modelComboBox
        path = combo.itemData(index) or ""
        if index == combo.count - 1:  # Browse…
            path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("volgan model"), "",
                                                  _("volgan checkpoints (*.vgan)"))
        if path and self._parameterNode:
            self._parameterNode.checkpoint = pathlib.Path(path)
        self._selectModelInCombo()

    def currentModelInfo(self):
        """``(info, error)`` of the chosen model file (config only; cached by the logic)."""
        p = self._parameterNode
        if not p or str(p.checkpoint) in ("", ".") or not p.checkpoint.is_file():
            return None, _("Choose a .vgan model first (or import a published one)")
        try:
            return self.logic.modelInfo(p.checkpoint), ""
        except Exception as exc:  # a damaged or foreign file: say why in the panel
            return None, str(exc)

    def updateButtonStates(self) -> None:
        p = self._parameterNode
        info, error = self.currentModelInfo()
        has_model = info is not None
        mode = p.mode if p else "sample"
        style = bool(info and info["styleControls"])
        mode_ok = style or mode in ("sample", "interpolate")
        self.ui.generateButton.enabled = has_model and mode_ok
        self.ui.generateButton.toolTip = (_("Generate volumes into the scene") if has_model and mode_ok
                                          else error or _("variation and mix need a StyleGAN model"))
        self.ui.modelInfoLabel.text = error if not has_model else _(
            "{family} · {anatomy} · {shape} voxels at {spacing} mm · {units}").format(
            family=info["family"], anatomy=info["anatomy"] or _("anatomy not recorded"),
            shape="×".join(str(v) for v in info["outputShape"]),
            spacing="×".join(f"{v:g}" for v in info["spacing"]), units=info["units"])
        self.ui.seedBSpinBox.enabled = mode in ("interpolate", "mix")
        self.ui.stepsSpinBox.enabled = mode == "interpolate"
        self.ui.countSpinBox.enabled = mode in ("sample", "variation")
        self.ui.variantLineEdit.enabled = bool(info and info.get("conditional")) and mode == "sample"
        self.ui.truncationSliderWidget.enabled = style
        self.ui.noiseComboBox.enabled = style
        steerable = bool(info and info["steerable"])
        self.ui.steeringCollapsibleButton.enabled = steerable
        self.ui.steeringCollapsibleButton.toolTip = "" if steerable else (
            error or info["steeringNote"] or _("Steering needs a bone (spongiosa) model"))
        self.ui.steerButton.enabled = steerable
        has_volume = bool(p and p.steerInputVolume)
        self.ui.simulateChangeButton.enabled = steerable and has_volume
        self.ui.simulateChangeButton.toolTip = _(
            "A new volume: the chosen volume with the ticked Change % applied, the other ticked parameters kept"
        ) if has_volume else _("Choose the volume to change above")
        if p and self.ui.modelComboBox.count:
            self._selectModelInCombo()

    # -- steering ----------------------------------------------------------------------------------------
    def setupSteeringTable(self) -> None:
        """One row per steerable parameter: a Use tick box, a Target value and a Change % (defaults: BV/TV)."""
        table = self.ui.steeringTargetsTableWidget
        table.setRowCount(len(STEERING_PARAMETERS))
        table.setColumnCount(3)
        table.setHorizontalHeaderLabels([_("Use"), _("Target"), _("Change %")])
        shown_units = {n: u for n, u in STEERING_UNITS.items() if u and u != "image units"}  # mm, 1/mm
        table.setVerticalHeaderLabels([f"{n} [{shown_units[n]}]" if n in shown_units else n
                                       for n in STEERING_PARAMETERS])
        defaults = {"BV/TV": ("0.25", "-20")}
        for row, name in enumerate(STEERING_PARAMETERS):
            use = qt.QTableWidgetItem()
            use.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
            use.setCheckState(qt.Qt.Checked if name in defaults else qt.Qt.Unchecked)
            table.setItem(row, 0, use)
            target, change = defaults.get(name, ("", ""))
            table.setItem(row, 1, qt.QTableWidgetItem(target))
            table.setItem(row, 2, qt.QTableWidgetItem(change))

    def steeringTable(self, column: int) -> dict:
        """``{parameter: cell text}`` of the ticked rows for column 1 (Target) or 2 (Change %)."""
        table = self.ui.steeringTargetsTableWidget
        out = {}
        for row, name in enumerate(STEERING_PARAMETERS):
            if table.item(row, 0).checkState() == qt.Qt.Checked:
                item = table.item(row, column)
                out[name] = item.text().strip() if item is not None else ""
        return out

    def steeringTargets(self) -> dict:
        texts = self.steeringTable(1)
        missing = [n for n, t in texts.items() if not t]
        if missing:
            raise VolGANError(_("Enter a Target for {names} or untick it").format(names=", ".join(missing)))
        return texts  # the logic parses and checks the values

    def showSteeringResult(self, volume, table, chart=None) -> None:
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    def _runSteering(self, title: str, job) -> None:
        from VolGANCore import Cancelled

        if not self.ensureDependencies():
            return
        with self.progress.begin() as progress, slicer.util.tryWithErrorDisplay(title, waitCursor=True):
            try:
                info = job(progress)
            except Cancelled:
                self.ui.statusLabel.text = _("Cancelled; nothing was added to the scene")
                return
            for warning in info.get("warnings", []):
                logging.warning("VolumetricGAN steering: %s", warning)
            warnings = info.get("warnings") or []
            self.ui.statusLabel.text = _("{rate:.0%} of samples within {tol:.0%}").format(
                rate=info["success_rate"], tol=info["tolerance"]) + "".join(f"\n⚠ {w}" for w in warnings)

    def onSteer(self) -> None:
        p = self._parameterNode

        def job(progress):
            out = self.logic.steerVolumes(str(p.checkpoint), self.steeringTargets(), n=p.steerCount, seed=p.steerSeed,
                                          tolerance=p.steerTolerance / 100.0, steps=p.steerSteps, progress=progress,
                                          cancel=progress.token)
            self.showSteeringResult(out["volumes"][0], out["table"], out["chart"])
            return out["info"]

        self._runSteering(_("Steering failed."), job)

    def onSimulateChange(self) -> None:
        p = self._parameterNode

        def job(progress):
            changes = {n: (t or "0") for n, t in self.steeringTable(2).items()}
            out = self.logic.simulateChange(str(p.checkpoint), p.steerInputVolume, changes, keep=(),
                                            tolerance=p.steerTolerance / 100.0, steps=p.steerSteps, progress=progress,
                                            cancel=progress.token)
            self.showSteeringResult(out["volume"], out["table"])
            start = out["info"]["start"]
            if start["from"] == "inversion":
                out["info"]["warnings"].insert(0, _("started from an inversion ({why}; PSNR {psnr:.1f} dB)").format(
                    why=start["reason"], psnr=start["inversion"]["psnr_db"]))
            return out["info"]

        self._runSteering(_("Simulating the change failed."), job)

    def onGenerate(self) -> None:
        p = self._parameterNode
        if not self.ensureDependencies():
            return
        with self.progress.begin() as progress, \
                slicer.util.tryWithErrorDisplay(_("Generation failed."), waitCursor=True):
            out = self.logic.generateVolumes(str(p.checkpoint), p.mode, n=p.count, seed=p.seed,
                                             truncation=p.truncation, noise=p.noise, seedB=p.seedB, steps=p.steps,
                                             variant=(p.variant.strip() or None) if p.mode == "sample" else None,
                                             progress=progress, cancel=progress.token)
            if out["sequence"] is not None:
                browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForSequenceNode(out["sequence"])
                slicer.modules.sequences.toolBar().setActiveBrowserNode(browser)
                proxy = browser.GetProxyNode(out["sequence"])
                slicer.util.setSliceViewerLayers(background=proxy, fit=True)
                self.ui.statusLabel.text = _("Interpolation ready: use the Sequences toolbar to browse it")
            else:
                slicer.util.setSliceViewerLayers(background=out["volumes"][0], fit=True)
                self.ui.statusLabel.text = _("{n} volume(s) generated").format(n=len(out["volumes"]))

    def onImportModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Published generator weights"), "",
                                              _("PyTorch weights (*.pth *.pt)"))
        if not path or not self.ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Import failed."), waitCursor=True):
            out = self.logic.importPublishedModel(path)
            self.refreshModelList()
            self._parameterNode.checkpoint = pathlib.Path(out)
            self.ui.statusLabel.text = _("Imported as {out} (model card beside it)").format(out=out)

    def onCreatePhantom(self) -> None:
        p = self._parameterNode
        if not self.ensureDependencies(needTorch=False):
            return
        with slicer.util.tryWithErrorDisplay(_("Creating the phantom failed."), waitCursor=True):
            image_node, label_node, _params = self.logic.loadPhantom(p.phantomKind, p.phantomSeed)
            slicer.util.setSliceViewerLayers(background=image_node, fit=True)
            self.ui.statusLabel.text = _("Created {image} and {labels}").format(
                image=image_node.GetName(), labels=label_node.GetName())


class VolumetricGANLogic(VolumetricGANSceneLogic, ScriptedLoadableModuleLogic):
    """Console use: ``logic = slicer.util.getModuleLogic("VolumetricGAN")``, then e.g.
    ``logic.loadPhantom("cow", seed=1)``, ``logic.shippedModels()``,
    ``logic.steerVolumes(model, {"BV/TV": 0.22, "Tb.Th": 0.4}, n=4)`` or
    ``logic.simulateChange(model, volumeNode, {"BV/TV": -20})`` (all methods of VolumetricGANSceneLogic)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        VolumetricGANSceneLogic.__init__(self)

    def getParameterNode(self):
        return VolumetricGANParameterNode(super().getParameterNode())


class VolumetricGANTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from VolGANSlicer.dependencies import ensure_all, requirements_file

        # in Slicer's testing mode the confirmation answers itself: the packages are installed if missing
        self.assertTrue(ensure_all(requirements_file(__file__), need_torch=True))
        self.setUp()
        self.test_phantoms()

    def test_phantoms(self):
        self.delayDisplay("Creating both phantoms")
        logic = VolumetricGANLogic()
        image, segmentation, params = logic.loadPhantom("cow", seed=1)
        self.assertEqual(slicer.util.arrayFromVolume(image).shape, (32, 128, 128))
        self.assertGreater(segmentation.GetSegmentation().GetNumberOfSegments(), 5)
        image, mask, params = logic.loadPhantom("bone", seed=1)
        self.assertGreater(slicer.util.arrayFromVolume(mask).sum(), 0)
        logging.info("VolumetricGAN self-test passed")
        self.delayDisplay("Test passed")
