"""Slicer's own Python layer, at a given release, over slicer-core's real MRML — for tests of the module files.

``with slicer_layer("5.8.1") as layer:`` makes ``slicer.util``, ``slicer.parameterNodeWrapper``,
``slicer.ScriptedLoadableModule``, ``slicer.i18n`` (and ``slicer.packaging`` from 5.12) and the ``SampleData``
module resolve to the files of that release in ``../shared/slicer/slicer-<version>``, while MRML classes stay
slicer-core's. Only Qt/CTK widget classes and application state are stand-ins (:mod:`slicer_standins`).
On exit everything is put back as it was, so other tests in the same worker see plain slicer-core.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import types
from pathlib import Path

import pytest

import slicer_standins as standins

REPO = Path(__file__).resolve().parents[1]
SHARED_SLICER = REPO.parent / "shared" / "slicer"
VERSIONS = ("5.8.1", "5.12.3")
MODULES = ("MorphometryLogic", "VolumetricGAN", "GANTrainer")
# what a test loads through the layer and must forget afterwards
_OWNED = ("qt", "ctk", "SampleData", "VolGANSlicer", *MODULES)
# the project's own packages and scene logics: loaded from the installed layout instead, when one is given
_PROJECT = ("VolGANCore", "MorphometryLib", "VolumetricGANLib", "GANTrainerLib", "MorphometrySceneLogic",
            "VolumetricGANSceneLogic", "GANTrainerSceneLogic")


class _ModuleManager(standins.QObject):
    def __init__(self):
        super().__init__()
        self.__dict__["modules"] = {}

    def module(self, name):
        return self.modules.get(name)


class FakeLoadableModule(standins.QObject):
    """A module of another extension that the test cannot run (e.g. SlicerPyTorch's PyTorchUtils):
    ``slicer.util.getModuleLogic(name)`` returns ``logic``."""

    def __init__(self, name: str, logic):
        super().__init__()
        self.__dict__["name"] = name
        self.__dict__["_logic"] = logic

    def logic(self):
        return self._logic


@dataclasses.dataclass
class Layer:
    version: str
    slicer: types.ModuleType
    qt: types.ModuleType
    ctk: types.ModuleType
    scene: object
    widgets: list = dataclasses.field(default_factory=list)

    @property
    def app(self):
        return self.slicer.app

    def load_module(self, name: str):
        """Import the module file ``name``.py and instantiate its ScriptedLoadableModule as Slicer does
        (a ``qSlicerScriptedLoadableModule`` parent whose ``path`` is the file); returns the Python module."""
        import importlib

        py = importlib.import_module(name)
        parent = self.slicer.qSlicerScriptedLoadableModule()
        parent.__dict__["path"] = str(Path(py.__file__).resolve())
        parent.__dict__["name"] = name
        instance = getattr(py, name)(parent)
        setattr(self.slicer.modules, name.lower(), parent)
        setattr(self.slicer.modules, f"{name}Instance", instance)
        self.app.moduleManager().modules[name] = parent
        return py

    def add_other_module(self, name: str, logic) -> None:
        self.app.moduleManager().modules[name] = FakeLoadableModule(name, logic)

    def make_widget(self, name: str, setup: bool = True):
        """``<name>Widget`` on a stand-in panel, set up (and entered) as Slicer does when the module is shown."""
        py = sys.modules.get(name) or self.load_module(name)
        panel = self.qt.QWidget()
        panel.setLayout(self.qt.QVBoxLayout(panel))
        panel.__dict__["isEntered"] = False
        widget = getattr(py, f"{name}Widget")(panel)
        self.widgets.append(widget)
        if setup:
            widget.setup()
            setattr(self.slicer.modules, f"{name}Widget", widget)
            panel.__dict__["isEntered"] = True
            widget.enter()
        return widget


def shared_layer_dir(version: str) -> Path:
    path = SHARED_SLICER / f"slicer-{version}"
    if not path.is_dir():
        pytest.skip(f"{path} is absent: Slicer's own Python layer (../shared/slicer) is not beside this checkout")
    return path


@contextlib.contextmanager
def slicer_layer(version: str, testing: bool = True, installed: Path | None = None):
    """Load Slicer ``version``'s Python layer over slicer-core (see the module docstring).

    ``installed``: a folder laid out as Slicer installs the extension (``install_layout.build_install_layout``);
    the modules and every project package are then imported from there, not from the checkout.
    """
    root = shared_layer_dir(version)
    import slicer

    from VolGANCore import mrml

    owned = _OWNED + (_PROJECT if installed is not None else ())
    saved_modules = {k: v for k, v in sys.modules.items() if k.startswith("slicer.") or k.split(".")[0] in owned}
    saved_attrs = dict(vars(slicer))
    saved_path = list(slicer.__path__)
    saved_sys_path = list(sys.path)
    headless = mrml.create_headless_scene(set_global=False)

    for k in list(sys.modules):
        if k.startswith(("slicer.util", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule",
                         "slicer.i18n", "slicer.packaging")) or k.split(".")[0] in owned:
            del sys.modules[k]
    if installed is not None:
        module_dirs = {str(REPO / m) for m in MODULES}
        sys.path[:] = [str(installed)] + [p for p in sys.path if p not in module_dirs]
    qt, ctk = standins.make_qt(), standins.make_ctk()
    sys.modules["qt"], sys.modules["ctk"] = qt, ctk
    for name, cls in standins.SLICER_WIDGET_CLASSES.items():
        setattr(slicer, name, cls)
    app = standins.FakeApplication(testing)
    app.__dict__["_moduleManager"] = _ModuleManager()
    app.__dict__["_applicationLogic"] = headless.app_logic  # real MRML application logic
    slicer.app = app
    slicer.mrmlScene = headless.scene
    modules = types.ModuleType("slicer.modules")
    sys.modules["slicer.modules"] = modules
    slicer.modules = modules
    for name, logic in headless.logics.items():  # Slicer's own module logics, real (slicer.modules.plots.logic())
        setattr(modules, name.lower(), FakeLoadableModule(name, logic))
    slicer.__path__.insert(0, str(root / "Base" / "Python" / "slicer"))
    sys.path.insert(0, str(root / "Modules" / "Scripted" / "SampleData"))

    def resolve(class_name: str):
        if class_name in standins.SLICER_WIDGET_CLASSES:
            return standins.SLICER_WIDGET_CLASSES[class_name]
        return getattr(ctk, class_name) if class_name.startswith("ctk") else getattr(qt, class_name)

    standins.UiLoader.resolve = staticmethod(resolve)
    standins.ctkMessageBox.shown = []
    standins._EVENTS.clear()
    standins.ctkMessageBox.answer = standins.QMessageBoxStandIn.Ok
    import importlib

    for name in ("slicer.util", "slicer.i18n", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule"):
        mod = importlib.import_module(name)
        setattr(slicer, name.split(".", 1)[1], mod)
    assert Path(slicer.util.__file__).is_relative_to(root), slicer.util.__file__
    layer = Layer(version, slicer, qt, ctk, headless.scene)
    try:
        yield layer
    finally:
        for widget in layer.widgets:  # as when the module is unloaded
            widget.removeObservers()
        headless.close()
        for k in list(sys.modules):
            if k.startswith("slicer.") or k.split(".")[0] in owned:
                del sys.modules[k]
        sys.modules.update(saved_modules)
        for k in list(vars(slicer)):
            if k not in saved_attrs:
                delattr(slicer, k)
        for k, v in saved_attrs.items():
            if getattr(slicer, k, None) is not v:
                setattr(slicer, k, v)
        slicer.__path__[:] = saved_path
        sys.path[:] = saved_sys_path


@contextlib.contextmanager
def blocked_imports(*names: str):
    """``import name`` raises ImportError inside the block (as in a Slicer where the package is not installed);
    modules already imported elsewhere are put back afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in names}
    for k in saved:
        del sys.modules[k]
    for n in names:
        sys.modules[n] = None
    try:
        yield
    finally:
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
