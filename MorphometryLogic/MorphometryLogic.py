"""MorphometryLogic: bone micro-structure and vessel morphometry in physical units (exact and differentiable).

The widget only moves values between the .ui, the parameter node and the logic. The measures live in
MorphometryLib (no Slicer imports).
"""

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from VolGANSlicer.widgets import ParameterNodeWidgetMixin, environment_text


class MorphometryLogic(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Morphometry")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerVolumetricGAN developers"]
        self.parent.helpText = _(
            "Bone micro-structure (BV/TV, Tb.Th, Tb.Sp, Tb.N, Conn.D, SMI, DA, BMD, TMD) and vessel morphometry "
            "(per-artery radius, length, Circle-of-Willis variants) in physical units. "
            '<a href="https://github.com/SlicerVolumetricGAN/SlicerVolumetricGAN#morphometrylogic">Documentation</a>.')
        self.parent.acknowledgementText = _(
            "Nomenclature after Bouxsein et al., JBMR 2010; thickness after Hildebrand & Rüegsegger 1997.")


@parameterNodeWrapper
class MorphometryLogicParameterNode:
    pass


class MorphometryLogicWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MorphometryLogic.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MorphometryLogicLogic()

        self.observeSceneClose()
        self.setupEnvironmentSection(needTorch=False)
        self.initializeParameterNode()


class MorphometryLogicLogic(ScriptedLoadableModuleLogic):
    def getParameterNode(self):
        return MorphometryLogicParameterNode(super().getParameterNode())


class MorphometryLogicTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.delayDisplay("Environment report")
        self.assertIn("volgan", environment_text())
        self.delayDisplay("Test passed")
