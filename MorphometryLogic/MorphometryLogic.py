"""MorphometryLogic: bone micro-structure and vessel morphometry in physical units (exact and differentiable).

The widget only moves values between the .ui, the parameter node and the logic. The measures live in
MorphometryLib (no Slicer imports); MRML-level logic in MorphometrySceneLogic (no Qt).
"""

import pathlib
from typing import Annotated, Optional, Union

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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

from MorphometrySceneLogic import MorphometrySceneLogic
from VolGANCore.names import BONE_PARAMETERS   # MorphometryLib's parameters, importable before its dependencies
from VolGANSlicer.widgets import PanelProgress, ParameterNodeWidgetMixin


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
    inputVolume: vtkMRMLScalarVolumeNode
    thresholdMode: Annotated[str, Choice(["value", "otsu", "miccai2020", "binary"])] = "value"
    threshold: Annotated[float, WithinRange(-2000.0, 5000.0)] = 225.0  # image units (the .ui slider's range)
    roiNode: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]
    batchFolder: pathlib.Path
    csvPath: pathlib.Path
    labelsNode: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]
    angiogram: Optional[vtkMRMLScalarVolumeNode]


class MorphometryLogicWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.previewNode = None
        self.resultsTable = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MorphometryLogic.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MorphometryLogicLogic()

        for name, meaning in BONE_PARAMETERS.items():
            self.ui.parametersCheckableComboBox.addItem(name)
            index = self.ui.parametersCheckableComboBox.model().index(self.ui.parametersCheckableComboBox.count - 1, 0)
            self.ui.parametersCheckableComboBox.setCheckState(index, 0 if name == "plate" else 2)
            self.ui.parametersCheckableComboBox.setItemData(self.ui.parametersCheckableComboBox.count - 1, meaning, 3)
        self.progress = PanelProgress(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton)
        self.observeSceneClose()
        self.ui.computeBoneButton.connect("clicked(bool)", self.onComputeBone)
        self.ui.batchButton.connect("clicked(bool)", self.onBatch)
        self.ui.computeVesselsButton.connect("clicked(bool)", self.onComputeVessels)
        self.ui.previewCheckBox.connect("toggled(bool)", self.updatePreview)
        self.whenChanged(("threshold", "thresholdMode", "inputVolume"), self.updatePreview)
        self.ui.roiSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateSegmentList)
        self.setupEnvironmentSection(needTorch=False)
        self.initializeParameterNode()

    def updateButtonStates(self) -> None:
        p = self._parameterNode
        self.ui.computeBoneButton.enabled = bool(p and p.inputVolume)
        self.ui.thresholdSliderWidget.enabled = bool(p and p.thresholdMode == "value")
        self.ui.batchButton.enabled = bool(p) and str(p.batchFolder) not in ("", ".") and str(p.csvPath) not in ("", ".")
        self.ui.computeVesselsButton.enabled = bool(p and p.labelsNode)

    def updateSegmentList(self, node=None) -> None:
        self.ui.segmentComboBox.clear()
        if node is not None and node.IsA("vtkMRMLSegmentationNode"):
            segmentation = node.GetSegmentation()
            for k in range(segmentation.GetNumberOfSegments()):
                self.ui.segmentComboBox.addItem(segmentation.GetNthSegment(k).GetName(),
                                                segmentation.GetNthSegmentID(k))
        self.ui.segmentComboBox.enabled = self.ui.segmentComboBox.count > 0

    def updatePreview(self, *_args) -> None:
        p = self._parameterNode
        if not (p and p.inputVolume and self.ui.previewCheckBox.checked and p.thresholdMode == "value"):
            if self.previewNode is not None:
                slicer.util.setSliceViewerLayers(label=None)
            return
        self.previewNode = self.logic.thresholdPreview(p.inputVolume, p.threshold, previewNode=self.previewNode)
        slicer.util.setSliceViewerLayers(background=p.inputVolume, label=self.previewNode, labelOpacity=0.5)

    def _thresholdArguments(self) -> dict:
        p = self._parameterNode
        return {"value": {"threshold": p.threshold}, "otsu": {"otsu": True},
                "miccai2020": {"threshold": "miccai2020"}, "binary": {}}[p.thresholdMode]

    def _checkedParameters(self) -> list:
        box = self.ui.parametersCheckableComboBox
        return [box.itemText(i) for i in range(box.count) if box.checkState(box.model().index(i, 0)) == 2]

    def onComputeBone(self) -> None:
        p = self._parameterNode
        if not self.ensureDependencies():
            return
        with self.progress.begin() as progress, \
                slicer.util.tryWithErrorDisplay(_("Bone morphometry failed."), waitCursor=True):
            segment = self.ui.segmentComboBox.currentData if self.ui.segmentComboBox.count else None
            out = self.logic.computeBone(p.inputVolume, maskNode=p.roiNode, segmentId=segment,
                                         parameters=self._checkedParameters(), tableNode=self.resultsTable,
                                         progress=progress, cancel=progress.token, **self._thresholdArguments())
            self.resultsTable = out["table"]
            self._showTable(out["table"])
            if out["maps"]:
                slicer.util.setSliceViewerLayers(background=p.inputVolume, foreground=out["maps"]["Tb.Th"],
                                                 foregroundOpacity=0.6)
            if out["chart"] is not None:
                slicer.modules.plots.logic().ShowChartInLayout(out["chart"])
            v = out["values"]
            self.ui.statusLabel.text = _("BV/TV {bvtv:.3f}, Tb.Th {tbth} mm").format(
                bvtv=v.get("BV/TV", float("nan")), tbth=f"{v['Tb.Th [mm]']:.3f}" if "Tb.Th [mm]" in v else "–")

    def onBatch(self) -> None:
        p = self._parameterNode
        if not self.ensureDependencies():
            return
        with self.progress.begin() as progress, \
                slicer.util.tryWithErrorDisplay(_("Batch morphometry failed."), waitCursor=True):
            table = self.logic.batchBone(p.batchFolder, p.csvPath, parameters=self._checkedParameters(),
                                         progress=progress, cancel=progress.token, **self._thresholdArguments())
            self._showTable(table)
            self.ui.statusLabel.text = _("{n} volumes measured; CSV written to {csv}").format(
                n=table.GetNumberOfRows(), csv=p.csvPath)

    def onComputeVessels(self) -> None:
        p = self._parameterNode
        if not self.ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("Vessel morphometry failed."), waitCursor=True):
            out = self.logic.computeVessels(p.labelsNode, imageNode=p.angiogram)
            self._showTable(out["table"])
            v = out["variants"]
            self.ui.statusLabel.text = _("Variant vectors: anterior {a} ({an}), posterior {b} ({bn})").format(
                a=v["anterior"], an=", ".join(v["anterior_names"]), b=v["posterior"], bn=", ".join(v["posterior_names"]))

    @staticmethod
    def _showTable(table) -> None:
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()


class MorphometryLogicLogic(MorphometrySceneLogic, ScriptedLoadableModuleLogic):
    """Console use: ``slicer.util.getModuleLogic("MorphometryLogic").computeBone(volumeNode, threshold=225)``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        MorphometrySceneLogic.__init__(self)

    def getParameterNode(self):
        return MorphometryLogicParameterNode(super().getParameterNode())


class MorphometryLogicTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from VolGANSlicer.dependencies import ensure_all, requirements_file

        # in Slicer's testing mode the confirmation answers itself: the packages are installed if missing
        self.assertTrue(ensure_all(requirements_file(__file__), need_torch=False))
        self.setUp()
        self.test_plates()

    def test_plates(self):
        import numpy as np

        self.delayDisplay("Bone morphometry of parallel plates")
        a = np.zeros((40, 20, 20), np.float32)
        for z0 in range(3, 36, 10):
            a[z0:z0 + 4] = 1000.0
        node = slicer.util.addVolumeFromArray(a, ijkToRAS=np.diag([0.1, 0.1, 0.1, 1.0]), name="plates")
        out = MorphometryLogicLogic().computeBone(node, threshold=500)
        self.assertAlmostEqual(out["values"]["Tb.Th [mm]"], 0.4, delta=0.004)
        self.delayDisplay("Test passed")
