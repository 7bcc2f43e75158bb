"""Small Qt helpers for the module widgets: a progress callback bound to a progress bar + Cancel button,
and an environment summary. Imported only inside the Slicer application."""

from __future__ import annotations

from VolGANCore.progress import CancelToken, ProgressEvent

__all__ = ["PanelProgress", "environment_text"]


class PanelProgress:
    """A ``ProgressCallback`` that drives a QProgressBar and a status label, with a CancelToken for a button.

    Usage in a widget::

        progress = PanelProgress(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton)
        logic.generate(..., progress=progress, cancel=progress.token)
    """

    def __init__(self, bar, label=None, cancel_button=None):
        self.bar = bar
        self.label = label
        self.token = CancelToken()
        self.cancel_button = cancel_button
        if cancel_button is not None:
            cancel_button.enabled = True
            cancel_button.connect("clicked(bool)", lambda _=False: self.token.cancel())

    def __call__(self, event: ProgressEvent) -> None:
        import slicer

        frac = event.fraction
        self.bar.setMaximum(0 if frac is None else 1000)
        if frac is not None:
            self.bar.setValue(int(round(frac * 1000)))
        if self.label is not None:
            eta = f", about {event.eta_s:.0f} s left" if event.eta_s else ""
            msg = f" — {event.message}" if event.message else ""
            self.label.text = f"{event.description}: {event.done:g}/{event.total or '?'}{eta}{msg}"
        if event.finished and self.cancel_button is not None:
            self.cancel_button.enabled = False
        slicer.app.processEvents()


def environment_text() -> str:
    """Versions, devices and AMP support: the same lines as `volgan info`."""
    from VolGANCore.env import format_environment

    return "\n".join(format_environment())


class ParameterNodeWidgetMixin:
    """The typed-parameter-node life cycle every module widget shares (Slicer's module-template idiom).

    The widget class derives from ``ScriptedLoadableModuleWidget, VTKObservationMixin`` and this mixin,
    sets ``self.logic`` and ``self.ui`` in ``setup()``, then calls :meth:`observeSceneClose` and
    :meth:`initializeParameterNode`. It may override :meth:`updateButtonStates`, called whenever the
    parameter node changes.
    """

    _parameterNode = None
    _parameterNodeGuiTag = None
    _needTorch = True

    def observeSceneClose(self) -> None:
        import slicer

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self.updateButtonStates()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updateButtonStates()

    def updateButtonStates(self) -> None:
        """Enable/disable buttons from the parameter node (override)."""

    # -- the "Environment" section every module .ui has -------------------------------------------------
    def setupEnvironmentSection(self, needTorch: bool = True) -> None:
        """Wire ``environmentCollapsibleButton`` / ``environmentTextEdit`` / ``installDependenciesButton``."""
        self._needTorch = needTorch
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.environmentCollapsibleButton.connect("contentsCollapsed(bool)", self.onEnvironmentToggled)

    def requirementsPath(self) -> str:
        """The module's pip requirements (``Resources/<Module>-requirements.txt``: one flat install folder holds
        every module's resources, so the file name carries the module's)."""
        return self.resourcePath(f"{self.moduleName}-requirements.txt")

    def onInstallDependencies(self) -> None:
        import slicer

        from .dependencies import ensure_all

        with slicer.util.tryWithErrorDisplay("Installing dependencies failed.", waitCursor=True):
            ensure_all(self.requirementsPath(), need_torch=self._needTorch)
            self.ui.environmentTextEdit.setPlainText(environment_text())

    def onEnvironmentToggled(self, collapsed: bool) -> None:
        if not collapsed:
            self.ui.environmentTextEdit.setPlainText(environment_text())
