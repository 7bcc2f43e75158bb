"""Small Qt helpers for the module widgets: a progress callback bound to a progress bar + Cancel button,
the typed-parameter-node life cycle, and the Environment section. Imported only inside the Slicer application."""

from __future__ import annotations

from VolGANCore.progress import CancelToken, ProgressEvent

__all__ = ["PanelProgress", "JobWatcher", "ParameterNodeWidgetMixin", "environment_text"]


class PanelProgress:
    """A ``ProgressCallback`` that drives a QProgressBar and a status label, with a Cancel button.

    Made once per panel (the button's slot is connected once); each run calls :meth:`begin`, which returns the
    callback with a fresh :class:`CancelToken` in :attr:`token`::

        self.progress = PanelProgress(self.ui.progressBar, self.ui.statusLabel, self.ui.cancelButton)  # setup()
        with self.progress.begin() as progress:                                                          # a run
            logic.generate(..., progress=progress, cancel=progress.token)
    """

    def __init__(self, bar, label=None, cancel_button=None):
        self.bar = bar
        self.label = label
        self.token = CancelToken()
        self.cancel_button = cancel_button
        if cancel_button is not None:
            cancel_button.enabled = False
            cancel_button.connect("clicked(bool)", self.cancel)

    def begin(self) -> "PanelProgress":
        """Start a run: a new cancel token, Cancel enabled."""
        self.token = CancelToken()
        if self.cancel_button is not None:
            self.cancel_button.enabled = True
        return self

    def __enter__(self) -> "PanelProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.end()  # Cancel is disabled however the run ended

    def end(self) -> None:
        if self.cancel_button is not None:
            self.cancel_button.enabled = False

    def cancel(self, *_args) -> None:
        self.token.cancel()

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
        if event.finished:
            self.end()
        slicer.app.processEvents()


class JobWatcher:
    """A :class:`VolGANCore.jobs.BackgroundJob` shown in a panel section.

    A panel timer polls the job's ``job.json`` (so Slicer stays responsive and the job outlives the panel): the
    progress bar and status label follow its progress; Cancel asks for a graceful stop and, if the job has not
    stopped ``grace_s`` seconds later, ends its processes; when the job ends, ``finished(status)`` runs once for a
    finished job, and the label says how any other ended. :meth:`reattach` (from the panel's ``enter()``) picks
    up a job of this ``kind`` started before the module was closed or Slicer restarted.
    """

    def __init__(self, panel, kind: str, bar, label, cancel_button=None, finished=None, what: str = "Job",
                 grace_s: float = 60.0, interval_ms: int = 2000):
        self.panel, self.kind, self.bar, self.label = panel, kind, bar, label
        self.finished, self.what, self.grace_s = finished, what, grace_s
        self.job = None
        self.timer = panel.addTimer(interval_ms, self.poll)
        if cancel_button is not None:
            cancel_button.connect("clicked(bool)", self.cancel)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.isRunning()

    def start(self, argv, outFolder=None):
        """Start ``volgan ARGV`` in the background and watch it; returns the job."""
        from VolGANCore.jobs import BackgroundJob

        self.job = BackgroundJob.start([str(a) for a in argv], kind=self.kind, outFolder=outFolder)
        self.bar.setMaximum(1000)
        self.bar.setValue(0)
        self.label.text = f"{self.what} started"
        self.timer.start()
        self.panel.updateButtonStates()
        return self.job

    def reattach(self) -> None:
        from VolGANCore import VolGANError
        from VolGANCore.jobs import BackgroundJob

        if self.job is None:
            try:
                job = BackgroundJob.latest(self.kind)
            except VolGANError:  # psutil not installed yet: no job can have been started from a panel
                job = None
            self.job = job if job is not None and job.isRunning() else None
        if self.job is not None:
            self.timer.start()
            self.poll()

    def pause(self) -> None:
        """The panel is closed: stop polling; the job goes on."""
        self.timer.stop()

    def cancel(self, *_args) -> None:
        if self.job is not None:
            self.job.stop(timeout=None)  # a stop request; poll() ends the processes if it is not honoured in time
            self.label.text = f"{self.what}: cancelling at the next step (nothing half-written is kept)"

    def poll(self) -> None:
        import slicer

        job = self.job
        if job is None:
            self.timer.stop()
            return
        forced = job.stopIfOverdue(self.grace_s)
        status = job.poll()
        progress = status.get("progress") or {}
        fraction = progress.get("fraction")
        self.bar.setMaximum(1000 if fraction is not None else 0)
        if fraction is not None:
            self.bar.setValue(int(round(1000 * fraction)))
        eta = progress.get("eta_s") if status.get("running") else None
        eta_text = "" if not eta else f", about {eta:.0f} s left" if eta < 90 else f", about {eta / 60:.0f} min left"
        message = f" — {progress['message']}" if progress.get("message") else ""
        self.label.text = f"{self.what} {status.get('state', '?')}: {progress.get('description', '')}{message}{eta_text}"
        if status.get("running"):
            return
        self.timer.stop()
        self.job = None
        self.bar.setMaximum(1000)
        self.panel.updateButtonStates()
        if status.get("state") != "finished":
            why = status.get("message") or job.lastLogLines(1)
            self.label.text = f"{self.what} {status.get('state')}: {why}" + (
                " (its processes were ended: it did not stop in time)" if forced else "")
            return
        self.bar.setValue(1000)
        if self.finished is not None:
            with slicer.util.tryWithErrorDisplay(f"Loading the results of the {self.what.lower()} failed.",
                                                 waitCursor=True):
                self.finished(status)


def environment_text() -> str:
    """Versions, devices and AMP support: the same lines as `volgan info`."""
    from VolGANCore.env import format_environment

    return "\n".join(format_environment())


class ParameterNodeWidgetMixin:
    """The typed-parameter-node life cycle every module widget shares (Slicer's module-template idiom).

    The widget class derives from ``ScriptedLoadableModuleWidget, VTKObservationMixin`` and this mixin,
    sets ``self.logic`` and ``self.ui`` in ``setup()``, then calls :meth:`observeSceneClose` and
    :meth:`initializeParameterNode`. It may override :meth:`updateButtonStates`, called whenever the
    parameter node changes, and register :meth:`whenChanged` reactions to particular parameters.

    A slot connected to a widget's own signal runs before the parameter node has taken the widget's new value
    (Qt calls slots in connection order and ``connectGui`` connects last), so code that reads parameters
    reacts to the parameter node instead, through :meth:`whenChanged`.
    """

    _parameterNode = None
    _parameterNodeGuiTag = None
    _needTorch = True

    def observeSceneClose(self) -> None:
        import slicer

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def whenChanged(self, names, callback) -> None:
        """Call ``callback()`` after any of the parameters ``names`` changed in the parameter node (from the
        GUI, the Python console or a loaded scene)."""
        reactions = self.__dict__.setdefault("_reactions", [])
        reactions.append([tuple(names), callback, None])

    def _runReactions(self) -> None:
        p = self._parameterNode
        for reaction in self.__dict__.get("_reactions", []):
            names, callback, last = reaction
            now = tuple(_comparable(getattr(p, n)) for n in names) if p else None
            if now != last:
                reaction[2] = now
                if p and last is not None:
                    callback()

    def cleanup(self) -> None:
        """Module unloaded: stop the panel's timers, forget observers and the GUI connection."""
        for timer in self.__dict__.get("timers", ()):
            timer.stop()
        self.setParameterNode(None)
        self.removeObservers()

    def addTimer(self, interval_ms: int, slot):
        """A QTimer owned by the panel (stopped by :meth:`cleanup`)."""
        import qt

        timer = qt.QTimer()
        timer.setInterval(interval_ms)
        timer.connect("timeout()", slot)
        self.__dict__.setdefault("timers", []).append(timer)
        return timer

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

        if (inputParameterNode is not None and self._parameterNode is not None
                and inputParameterNode.parameterNode is self._parameterNode.parameterNode):
            return  # already shown: connecting again would clear and refill the combo boxes for nothing
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        for reaction in self.__dict__.get("_reactions", []):
            reaction[2] = None  # a new node: its values are the baseline
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            if self._parameterNodeGuiTag is None:
                # Slicer 5.8's connectGui does not return its tag (5.12's does), so disconnectGui(None) would leave
                # the connectors connected; a later connectGui then clears each combo box, its stale connector
                # reads index -1 and writes the *last* choice into the node. The tag is the last one handed out.
                self._parameterNodeGuiTag = self._parameterNode._nextParameterGUIsTag - 1
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._runReactions()
            self.updateButtonStates()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._runReactions()
        self.updateButtonStates()

    def updateButtonStates(self) -> None:
        """Enable/disable buttons from the parameter node (override)."""

    # -- dependencies --------------------------------------------------------------------------------------
    def requirementsPath(self) -> str:
        """The module's pip requirements (``Resources/<Module>-requirements.txt``: one flat install folder holds
        every module's resources, so the file name carries the module's)."""
        return self.resourcePath(f"{self.moduleName}-requirements.txt")

    def ensureDependencies(self, needTorch: bool | None = None) -> bool:
        """Before an action: the module's packages (and PyTorch unless ``needTorch`` is False) are importable,
        installing them after one confirmation. False if the user declined or the install failed (shown)."""
        from .dependencies import ensure_all

        need = self._needTorch if needTorch is None else needTorch
        return ensure_all(self.requirementsPath(), need_torch=need, requester=self.moduleName)

    # -- the "Environment" section every module .ui has -------------------------------------------------
    def setupEnvironmentSection(self, needTorch: bool = True) -> None:
        """Wire ``environmentCollapsibleButton`` / ``environmentTextEdit`` / ``installDependenciesButton``."""
        self._needTorch = needTorch
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.environmentCollapsibleButton.connect("contentsCollapsed(bool)", self.onEnvironmentToggled)

    def onInstallDependencies(self) -> None:
        import slicer

        with slicer.util.tryWithErrorDisplay("Installing dependencies failed.", waitCursor=True):
            self.ensureDependencies()
            self.ui.environmentTextEdit.setPlainText(environment_text())

    def onEnvironmentToggled(self, collapsed: bool) -> None:
        if not collapsed:
            self.ui.environmentTextEdit.setPlainText(environment_text())


def _comparable(value):
    """A parameter value as something ``==`` compares by content (MRML nodes by ID)."""
    get_id = getattr(value, "GetID", None)
    return get_id() if callable(get_id) else value
