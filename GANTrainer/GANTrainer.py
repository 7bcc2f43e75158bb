"""GANTrainer: train 3-D GANs (StyleGAN2-3D, progressive WGAN-GP-3D) and evaluate generated data.

The widget only moves values between the .ui, the parameter node and the logic. The science lives in
GANTrainerLib / VolumetricGANLib / MorphometryLib (no Slicer imports); MRML-level logic in
GANTrainerSceneLogic (no Qt).
"""

import logging
import os
import pathlib
from typing import Annotated

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from GANTrainerSceneLogic import GANTrainerSceneLogic
from VolGANSlicer.widgets import PanelProgress, ParameterNodeWidgetMixin


class GANTrainer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GAN Trainer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Deep Learning")]
        self.parent.dependencies = []
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


class GANTrainerWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GANTrainer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GANTrainerLogic()

        self.observeSceneClose()
        self.ui.validateButton.connect("clicked(bool)", self.onValidateButton)
        self.setupEnvironmentSection(needTorch=True)
        self.initializeParameterNode()

    def updateButtonStates(self) -> None:
        ready = bool(self._parameterNode) and str(self._parameterNode.imagesFolder) not in ("", ".")
        self.ui.validateButton.enabled = ready
        self.ui.validateButton.toolTip = _("Read every volume and report problems") if ready else _(
            "Choose an images folder first")

    def onValidateButton(self) -> None:
        p = self._parameterNode
        progress = PanelProgress(self.ui.progressBar, self.ui.statusLabel)
        with slicer.util.tryWithErrorDisplay(_("Dataset validation failed."), waitCursor=True):
            report, table = self.logic.validateDataset(p.imagesFolder, p.labelsFolder, p.labelScheme,
                                                       progress=progress, cancel=progress.token)
            self.ui.statusLabel.text = report.summary().splitlines()[0] + (
                "" if report.ok else _(" — {n} problem(s), see the table").format(n=len(report.problems)))
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


class GANTrainerLogic(GANTrainerSceneLogic, ScriptedLoadableModuleLogic):
    """Console use: ``slicer.util.getModuleLogic("GANTrainer").validateDataset(folder)``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        GANTrainerSceneLogic.__init__(self)

    def getParameterNode(self):
        return GANTrainerParameterNode(super().getParameterNode())


class GANTrainerTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
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
