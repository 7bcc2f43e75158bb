"""VolumetricGAN: generate Circle-of-Willis angiograms and spongiosa patches, interpolate, invert and steer.

The widget only moves values between the .ui, the parameter node and the logic. The science lives in
VolumetricGANLib / MorphometryLib (no Slicer imports); MRML-level logic in VolumetricGANSceneLogic (no Qt).
"""

import logging
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

from VolGANSlicer.widgets import PanelProgress, ParameterNodeWidgetMixin
from VolumetricGANSceneLogic import GENERATION_MODES, VolumetricGANSceneLogic


class VolumetricGAN(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Volumetric GAN")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Deep Learning")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerVolumetricGAN developers"]
        self.parent.helpText = _(
            "Generate 3-D Circle-of-Willis TOF-MRA angiograms (3-D StyleGAN2) and trabecular-bone patches "
            "(progressive 3-D GAN), and create built-in ground-truth phantoms of both. "
            '<a href="https://github.com/SlicerVolumetricGAN/SlicerVolumetricGAN#volumetricgan">Documentation</a>.')
        self.parent.acknowledgementText = _(
            "After Aydin et al., NeuroImage 2024 and Iarussi et al., MICCAI 2020. TopCoW label scheme after "
            "the TopCoW 2023 challenge.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register both phantoms as sample data; they are generated locally when chosen, never downloaded."""
    import SampleData

    def make_loader(kind):
        def load(source):
            image_node, _label_node, _params = VolumetricGANSceneLogic().loadPhantom(kind, seed=0)
            return [image_node]
        return load

    for kind, title in (("cow", "CoW TOF-MRA phantom"), ("bone", "Trabecular bone phantom")):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="VolumetricGAN",
            sampleName=title,
            uris=None,
            fileNames=None,
            nodeNames=f"{kind}_phantom_000",
            thumbnailFileName=None,
            loadFileType="VolumeFile",
            customDownloader=make_loader(kind),
        )


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
    phantomKind: Annotated[str, Choice(["cow", "bone"])] = "cow"
    phantomSeed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0


class VolumetricGANWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VolumetricGAN.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VolumetricGANLogic()

        self.observeSceneClose()
        self.ui.createPhantomButton.connect("clicked(bool)", self.onCreatePhantom)
        self.ui.generateButton.connect("clicked(bool)", self.onGenerate)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.setupEnvironmentSection(needTorch=True)
        self.initializeParameterNode()

    def updateButtonStates(self) -> None:
        p = self._parameterNode
        has_model = bool(p) and str(p.checkpoint) not in ("", ".") and p.checkpoint.is_file()
        self.ui.generateButton.enabled = has_model
        self.ui.generateButton.toolTip = _("Generate volumes into the scene") if has_model else _(
            "Choose a .vgan model first (or import a published one)")
        mode = p.mode if p else "sample"
        self.ui.seedBSpinBox.enabled = mode in ("interpolate", "mix")
        self.ui.stepsSpinBox.enabled = mode == "interpolate"
        self.ui.countSpinBox.enabled = mode in ("sample", "variation")

    def onGenerate(self) -> None:
        p = self._parameterNode
        progress = PanelProgress(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton)
        with slicer.util.tryWithErrorDisplay(_("Generation failed."), waitCursor=True):
            from VolGANSlicer.dependencies import ensure_all

            if not ensure_all(self.resourcePath("../requirements.txt")):
                return
            out = self.logic.generateVolumes(str(p.checkpoint), p.mode, n=p.count, seed=p.seed,
                                             truncation=p.truncation, noise=p.noise, seedB=p.seedB, steps=p.steps,
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
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Import failed."), waitCursor=True):
            out = self.logic.importPublishedModel(path)
            self._parameterNode.checkpoint = pathlib.Path(out)
            self.ui.statusLabel.text = _("Imported as {out} (model card beside it)").format(out=out)

    def onCreatePhantom(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Creating the phantom failed."), waitCursor=True):
            image_node, label_node, _params = self.logic.loadPhantom(p.phantomKind, p.phantomSeed)
            slicer.util.setSliceViewerLayers(background=image_node, fit=True)
            self.ui.statusLabel.text = _("Created {image} and {labels}").format(
                image=image_node.GetName(), labels=label_node.GetName())


class VolumetricGANLogic(VolumetricGANSceneLogic, ScriptedLoadableModuleLogic):
    """Console use: ``slicer.util.getModuleLogic("VolumetricGAN").loadPhantom("cow", seed=1)``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        VolumetricGANSceneLogic.__init__(self)

    def getParameterNode(self):
        return VolumetricGANParameterNode(super().getParameterNode())


class VolumetricGANTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
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
