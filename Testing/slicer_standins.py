"""Inert stand-ins for what a test may not run: Qt/CTK widget classes and Slicer's application state.

Slicer's own Python layer (``../shared/slicer/<version>``: util, parameterNodeWrapper, ScriptedLoadableModule,
SampleData) runs for real over slicer-core's MRML (see :mod:`slicer_layer`). Those files import ``qt`` and
``ctk``, a few ``slicer.qMRML*``/``slicer.qSlicer*`` widget classes, and read ``slicer.app`` /
``slicer.modules``; this file provides exactly those, and nothing of Slicer's logic.

The widgets keep state the way PythonQt exposes it (``widget.value``, ``widget.currentPath``, ``combo.count``),
call slots in the order they were connected (as Qt does), and pass a slot only as many signal arguments as it
takes (as PythonQt does). :class:`UiLoader` builds a widget tree from a Qt Designer ``.ui`` file: classes,
object names, properties (dynamic ones such as ``SlicerParameterName`` included) and parent/child links.
"""

from __future__ import annotations

import builtins
import inspect
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

__all__ = ["Signal", "QObject", "make_qt", "make_ctk", "FakeApplication", "SLICER_WIDGET_CLASSES"]


class Signal:
    """A Qt signal: slots run in connection order with as many arguments as each accepts."""

    def __init__(self) -> None:
        self.slots: list = []

    def connect(self, slot) -> None:
        self.slots.append(slot)

    def disconnect(self, slot=None) -> None:
        if slot is None:
            self.slots.clear()
        elif slot in self.slots:
            self.slots.remove(slot)

    def emit(self, *args) -> None:
        for slot in list(self.slots):
            _call_slot(slot, args)


def _call_slot(slot, args):
    try:
        params = list(inspect.signature(slot).parameters.values())
    except (TypeError, ValueError):
        return slot(*args)
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return slot(*args)
    n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    return slot(*args[:n])


class _Inert:
    """The value of a method a stand-in does not model: callable, returns None."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args, **kwargs):
        return None


class _EnumsOnClass(type):
    """``qt.QFont.TypeWriter``, ``qt.QSizePolicy.Expanding``: a Qt enum value not modelled is a distinct int."""

    def __getattr__(cls, name):
        if name[:1].isupper():
            return sum(map(ord, name)) + 1000
        raise AttributeError(name)


class QObject(metaclass=_EnumsOnClass):
    """Base stand-in: properties, dynamic properties, children, signals by name, old-style ``connect``."""

    _defaults: dict = {}

    def __init__(self, *args, **kwargs) -> None:
        d = self.__dict__
        d["_props"] = dict(self._defaults)
        d["_dyn"] = {}
        d["_signals"] = {}
        d["_children"] = []
        d["_parent"] = None
        d["name"] = ""
        if args and isinstance(args[0], QObject):
            self.setParent(args[0])
        elif args and isinstance(args[0], str) and "text" in self._defaults:
            self._props["text"] = args[0]

    # -- properties ------------------------------------------------------------------------------------
    def __getattr__(self, name):
        props = self.__dict__.get("_props", {})
        if name in props:
            return props[name]
        if name.startswith("set") and len(name) > 3 and name[3].isupper():
            prop = name[3].lower() + name[4:]
            return lambda value=None, *rest: self._set(prop, value)
        if name[:1].islower() and (name.endswith(("Changed", "Collapsed", "clicked", "toggled", "timeout",
                                                  "activated", "triggered", "pressed", "released", "Edited",
                                                  "Selected", "Added", "Removed", "finished"))):
            return self.signal(name)
        return _Inert(name)

    def __setattr__(self, name, value):
        if isinstance(getattr(type(self), name, None), builtins.property) or name in self.__dict__:
            object.__setattr__(self, name, value)
        else:
            self._set(name, value)

    def _set(self, prop: str, value) -> None:
        self._props[prop] = value

    def signal(self, name: str) -> Signal:
        return self._signals.setdefault(name, Signal())

    def connect(self, signature: str, slot) -> bool:
        self.signal(signature.split("(", 1)[0]).connect(slot)
        return True

    def disconnect(self, signature: str, slot=None) -> bool:
        self.signal(signature.split("(", 1)[0]).disconnect(slot)
        return True

    def property(self, name: str):
        return self._dyn.get(name)

    def setProperty(self, name: str, value) -> None:
        self._dyn[name] = value

    # -- object tree -----------------------------------------------------------------------------------
    def setParent(self, parent) -> None:
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self.__dict__["_parent"] = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self) -> list:
        return list(self._children)

    def findChildren(self, cls=None) -> list:
        out = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                out.append(child)
            out.extend(child.findChildren(cls))
        return out

    def className(self) -> str:
        return type(self).__name__

    def isWidgetType(self) -> bool:
        return isinstance(self, QWidget)

    @builtins.property
    def objectName(self):
        return self.name

    def setObjectName(self, name: str) -> None:
        self.__dict__["name"] = name


class QWidget(QObject):
    _defaults = {"enabled": True, "visible": True, "toolTip": ""}

    def windowFlags(self) -> int:
        return self._props.get("windowFlags", 0)

    def layout(self):
        lay = self._props.get("layout")
        if lay is None:
            lay = self._props["layout"] = QLayout(self)
        return lay

    def setLayout(self, layout) -> None:
        self._props["layout"] = layout
        layout._owner = self

    def setMRMLScene(self, scene) -> None:
        self._props["mrmlScene"] = scene
        for child in self.findChildren():
            if hasattr(type(child), "setMRMLScene") and child is not self:
                child._props["mrmlScene"] = scene


class QLayout(QObject):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.__dict__["_owner"] = args[0] if args and isinstance(args[0], QWidget) else None

    def addWidget(self, widget, *args) -> None:
        if self._owner is not None:
            widget.setParent(self._owner)

    def addRow(self, *args) -> None:
        for a in args:
            if isinstance(a, QWidget):
                self.addWidget(a)

    def addLayout(self, *args) -> None:
        pass

    def addStretch(self, *args) -> None:
        pass


class _Value(QWidget):
    """Spin boxes and sliders: ``value`` clamped to [minimum, maximum]; ``valueChanged`` on change."""

    _defaults = {**QWidget._defaults, "minimum": 0.0, "maximum": 99.0, "value": 0.0, "decimals": 2, "singleStep": 1.0}

    def _set(self, prop, value):
        old = self._props.get("value")
        super()._set(prop, value)
        if prop in ("minimum", "maximum", "value"):
            v = min(max(self._props["value"], self._props["minimum"]), self._props["maximum"])
            self._props["value"] = v
            if v != old:
                self.signal("valueChanged").emit(v)

    def setRange(self, lo, hi) -> None:
        self.minimum = lo
        self.maximum = hi


class QComboBox(QWidget):
    _defaults = {**QWidget._defaults, "currentIndex": -1}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__["_items"] = []  # [text, {role: data}, check state]

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def currentText(self) -> str:
        i = self._props["currentIndex"]
        return self._items[i][0] if 0 <= i < len(self._items) else ""

    @property
    def currentData(self):
        return self.itemData(self._props["currentIndex"])

    def _set(self, prop, value):
        old = self._props.get("currentIndex")
        super()._set(prop, value)
        if prop == "currentIndex" and value != old:
            self.signal("currentIndexChanged").emit(value)

    def addItem(self, text, data=None) -> None:
        self._items.append([str(text), {256: data}, 0])
        if self._props["currentIndex"] < 0:
            self.currentIndex = 0

    def addItems(self, texts) -> None:
        for t in texts:
            self.addItem(t)

    def clear(self) -> None:
        self._items.clear()
        self.currentIndex = -1

    def itemText(self, i: int) -> str:
        return self._items[i][0]

    def itemData(self, i: int, role: int = 256):
        return self._items[i][1].get(role) if 0 <= i < len(self._items) else None

    def setItemData(self, i: int, value, role: int = 256) -> None:
        self._items[i][1][role] = value

    def findText(self, text: str) -> int:
        return next((i for i, item in enumerate(self._items) if item[0] == text), -1)

    def findData(self, data) -> int:
        return next((i for i, item in enumerate(self._items) if item[1].get(256) == data), -1)

    def setCurrentIndex(self, i: int) -> None:
        self.currentIndex = i

    # ctkCheckableComboBox
    def model(self):
        return types.SimpleNamespace(index=lambda row, col=0: row)

    def setCheckState(self, index, state) -> None:
        self._items[index][2] = state

    def checkState(self, index) -> int:
        return self._items[index][2]


class QCheckBox(QWidget):
    _defaults = {**QWidget._defaults, "checked": False, "text": ""}

    def _set(self, prop, value):
        old = self._props.get("checked")
        super()._set(prop, value)
        if prop == "checked" and bool(value) != bool(old):
            self.signal("toggled").emit(bool(value))
            self.signal("stateChanged").emit(2 if value else 0)


class QPushButton(QWidget):
    _defaults = {**QWidget._defaults, "text": "", "checkable": False, "checked": False}

    def click(self) -> None:
        if self.enabled:
            self.signal("clicked").emit(False)


class QLineEdit(QWidget):
    _defaults = {**QWidget._defaults, "text": ""}

    def _set(self, prop, value):
        old = self._props.get("text")
        super()._set(prop, value)
        if prop == "text" and value != old:
            self.signal("textChanged").emit(value)


class ctkPathLineEdit(QWidget):
    _defaults = {**QWidget._defaults, "currentPath": ""}

    def _set(self, prop, value):
        old = self._props.get("currentPath")
        super()._set(prop, value)
        if prop == "currentPath" and value != old:
            self.signal("currentPathChanged").emit(value)


class ctkCollapsibleButton(QWidget):
    _defaults = {**QWidget._defaults, "collapsed": False, "text": ""}

    def _set(self, prop, value):
        old = self._props.get("collapsed")
        super()._set(prop, value)
        if prop == "collapsed" and bool(value) != bool(old):
            self.signal("contentsCollapsed").emit(bool(value))


class qMRMLNodeComboBox(QWidget):
    """The node selector: ``nodeTypes``, ``currentNode()``/``setCurrentNode()``, ``currentNodeChanged``."""

    _defaults = {**QWidget._defaults, "nodeTypes": (), "noneEnabled": False, "mrmlScene": None}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__["_node"] = None

    def currentNode(self):
        return self._node

    def currentNodeID(self):
        return self._node.GetID() if self._node is not None else ""

    def setCurrentNode(self, node) -> None:
        if node is not None and self.nodeTypes and not any(node.IsA(t) for t in self.nodeTypes):
            raise TypeError(f"{self.name}: {node.GetClassName()} is not one of {list(self.nodeTypes)}")
        if node is not self._node:
            self.__dict__["_node"] = node
            self.signal("currentNodeChanged").emit(node)
            self.signal("currentNodeIDChanged").emit(node.GetID() if node is not None else "")


class QTextEdit(QWidget):
    _defaults = {**QWidget._defaults, "plainText": ""}

    def toPlainText(self) -> str:
        return self.plainText

    def appendPlainText(self, text: str) -> None:
        self.plainText = (self.plainText + "\n" if self.plainText else "") + text

    append = appendPlainText

    def verticalScrollBar(self):
        return self.__dict__.setdefault("_scrollBar", _Value())


class QTableWidget(QWidget):
    _defaults = {**QWidget._defaults, "rowCount": 0, "columnCount": 0}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__["_cells"] = {}

    def setItem(self, row, col, item) -> None:
        self._cells[(row, col)] = item

    def item(self, row, col):
        return self._cells.get((row, col))


class QTableWidgetItem(QObject):
    _defaults = {"text": "", "checkState": 0, "flags": 0}

    def text(self) -> str:  # a method in PythonQt
        return self._props["text"]

    def checkState(self) -> int:
        return self._props["checkState"]

    def setCheckState(self, state) -> None:
        self._props["checkState"] = state


class QTimer(QObject):
    _defaults = {"interval": 0, "active": False, "singleShot": False}

    def start(self, *args) -> None:
        self._props["active"] = True

    def stop(self) -> None:
        self._props["active"] = False

    def isActive(self) -> bool:
        return self._props["active"]

    @staticmethod
    def singleShot(msec, slot) -> None:
        _EVENTS.append((time.monotonic() + msec / 1000.0, slot))


# the event loop: QTimer.singleShot queues, FakeApplication.processEvents runs what is due
_EVENTS: list = []


def process_events() -> int:
    now = time.monotonic()
    due = [e for e in _EVENTS if e[0] <= now]
    for e in due:
        _EVENTS.remove(e)
    for _t, slot in due:
        slot()
    return len(due)


class QThread(QObject):
    _main = None

    @staticmethod
    def currentThread():
        if QThread._main is None:
            QThread._main = QObject()
        return QThread._main

    @staticmethod
    def msleep(ms) -> None:
        time.sleep(ms / 1000.0)


class QFile(QObject):
    ReadOnly = 1

    def __init__(self, path="", *args):
        super().__init__()
        self.__dict__["path"] = str(path)

    def exists(self) -> bool:
        return Path(self.path).is_file()

    def open(self, *args) -> bool:
        return self.exists()

    def close(self) -> None:
        pass


class QMessageBoxStandIn(QWidget):
    Ok, Cancel, Yes, No, Retry, Close = 0x400, 0x400000, 0x4000, 0x10000, 0x80000, 0x200000
    Critical, Question, Information, Warning = 3, 4, 1, 2


class ctkMessageBox(QMessageBoxStandIn):
    """A message box that records what it showed and answers with :attr:`answer` (class-wide)."""

    shown: list = []
    answer = QMessageBoxStandIn.Ok

    def exec_(self):
        ctkMessageBox.shown.append(self.text)
        return ctkMessageBox.answer

    exec = exec_


_QT_CONSTANTS = {
    "Checked": 2, "Unchecked": 0, "PartiallyChecked": 1, "DisplayRole": 0, "ToolTipRole": 3, "UserRole": 256,
    "ItemIsUserCheckable": 16, "ItemIsEnabled": 32, "ItemIsSelectable": 1, "ItemIsEditable": 2,
    "WaitCursor": 3, "ArrowCursor": 0, "ShiftModifier": 0x02000000, "Horizontal": 1, "Vertical": 2,
    "ToolButtonTextUnderIcon": 3,
}


class _QtNamespace:
    def __getattr__(self, name):
        if name in _QT_CONSTANTS:
            return _QT_CONSTANTS[name]
        return hash(name) % 100000 + 1000


class _ClassModule(types.ModuleType):
    """``qt`` / ``ctk``: known stand-ins by name; any other class name gets its own inert QWidget subclass
    (one class per name, so ``type(w) == qt.QSpinBox`` holds as in PythonQt)."""

    def __init__(self, name: str, classes: dict):
        super().__init__(name)
        self._classes = dict(classes)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = self._classes.get(name)
        if cls is None:
            cls = self._classes[name] = type(name, (QWidget,), {})
        return cls


def _sub(name: str, base: type) -> type:
    return type(name, (base,), {})


def make_qt() -> types.ModuleType:
    classes = {
        "QObject": QObject, "QWidget": QWidget, "QLayout": QLayout, "QTimer": QTimer, "QFile": QFile,
        "QComboBox": QComboBox, "QCheckBox": QCheckBox, "QPushButton": QPushButton, "QTextEdit": QTextEdit,
        "QPlainTextEdit": _sub("QPlainTextEdit", QTextEdit), "QTableWidget": QTableWidget,
        "QTableWidgetItem": QTableWidgetItem, "QThread": QThread, "QSpinBox": _sub("QSpinBox", _Value),
        "QDoubleSpinBox": _sub("QDoubleSpinBox", _Value), "QSlider": _sub("QSlider", _Value),
        "QLabel": type("QLabel", (QWidget,), {"_defaults": {**QWidget._defaults, "text": ""}}),
        "QLineEdit": QLineEdit,
        "QProgressBar": type("QProgressBar", (QWidget,), {"_defaults": {**QWidget._defaults, "value": 0,
                                                                         "minimum": 0, "maximum": 100}}),
        "QMessageBox": QMessageBoxStandIn, "QUiLoader": UiLoader,
        "QVBoxLayout": _sub("QVBoxLayout", QLayout), "QHBoxLayout": _sub("QHBoxLayout", QLayout),
        "QFormLayout": _sub("QFormLayout", QLayout), "QGridLayout": _sub("QGridLayout", QLayout),
    }
    module = _ClassModule("qt", classes)
    module.Qt = _QtNamespace()
    module.QApplication = types.SimpleNamespace(setOverrideCursor=lambda *a: None,
                                                restoreOverrideCursor=lambda *a: None)
    module.QFileDialog = types.SimpleNamespace(getOpenFileName=lambda *a, **k: "",
                                               getExistingDirectory=lambda *a, **k: "")
    module.QSettings = _Settings
    return module


def make_ctk() -> types.ModuleType:
    classes = {
        "ctkPathLineEdit": ctkPathLineEdit, "ctkCollapsibleButton": ctkCollapsibleButton,
        "ctkSliderWidget": _sub("ctkSliderWidget", _Value), "ctkDoubleSpinBox": _sub("ctkDoubleSpinBox", _Value),
        "ctkDoubleSlider": _sub("ctkDoubleSlider", _Value), "ctkComboBox": _sub("ctkComboBox", QComboBox),
        "ctkCheckableComboBox": _sub("ctkCheckableComboBox", QComboBox),
        "ctkCheckBox": _sub("ctkCheckBox", QCheckBox), "ctkMessageBox": ctkMessageBox,
        "ctkDirectoryButton": type("ctkDirectoryButton", (QWidget,), {"_defaults": {**QWidget._defaults,
                                                                                     "directory": ""}}),
    }
    return _ClassModule("ctk", classes)


SLICER_WIDGET_CLASSES = {
    "qMRMLNodeComboBox": qMRMLNodeComboBox,
    "qMRMLWidget": _sub("qMRMLWidget", QWidget),
    "qSlicerWidget": _sub("qSlicerWidget", QWidget),
    "qMRMLSliderWidget": _sub("qMRMLSliderWidget", _Value),
    "qMRMLSpinBox": _sub("qMRMLSpinBox", _Value),
    "qMRMLRangeWidget": _sub("qMRMLRangeWidget", QWidget),
    "qMRMLSubjectHierarchyTreeView": _sub("qMRMLSubjectHierarchyTreeView", QWidget),
    "qMRMLSegmentSelectorWidget": _sub("qMRMLSegmentSelectorWidget", QWidget),
    "qMRMLScreenShotDialog": _sub("qMRMLScreenShotDialog", QWidget),
    "qSlicerScriptedLoadableModule": _sub("qSlicerScriptedLoadableModule", QObject),
}


class _Settings:
    store: dict = {}

    def __init__(self, *args):
        pass

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value

    def contains(self, key) -> bool:
        return key in self.store


# -- .ui files ---------------------------------------------------------------------------------------------
def _ui_value(prop: ET.Element):
    child = next(iter(prop), None)
    if child is None:
        return None
    tag, text = child.tag, (child.text or "")
    if tag == "bool":
        return text.strip() == "true"
    if tag == "number":
        return int(text)
    if tag == "double":
        return float(text)
    if tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    if tag in ("string", "cstring", "enum", "set"):
        return text
    return None


class UiLoader(QObject):
    """``qt.QUiLoader``: builds the widget tree of a Qt Designer file with stand-in classes."""

    resolve = None  # set by slicer_layer: class name -> class (qt, ctk, then slicer.q*)

    def load(self, qfile):
        root = ET.parse(qfile.path).getroot()
        top = root.find("widget")
        return self._build(top, None)

    def _build(self, elem: ET.Element, parent):
        cls = UiLoader.resolve(elem.get("class"))
        w = cls()
        w.setObjectName(elem.get("name") or "")
        if parent is not None:
            w.setParent(parent)
        for prop in elem.findall("property"):
            name, value = prop.get("name"), _ui_value(prop)
            if prop.get("stdset") == "0":
                w.setProperty(name, value)
            elif name not in ("geometry", "sizePolicy", "font", "icon", "alignment", "orientation"):
                setattr(w, name, value)
        self._add_children(elem, w, direct=True)
        return w

    def _add_children(self, node: ET.Element, w, direct: bool) -> None:
        """Child widgets sit under <widget>, or inside its <layout>/<item> elements; an <item> directly under a
        combo box's <widget> is one of its entries."""
        for child in node:
            if child.tag == "widget":
                self._build(child, w)
            elif child.tag == "item" and direct and isinstance(w, QComboBox):
                w.addItem(_ui_value(child.find("property")) or "")
            elif child.tag in ("layout", "item"):
                self._add_children(child, w, direct=False)


class LayoutManager(QObject):
    def __init__(self):
        super().__init__()
        self.__dict__["layouts"] = []

    def setLayout(self, layout) -> None:
        self.layouts.append(layout)

    def sliceViewNames(self) -> list:
        return []

    def mrmlSliceLogics(self):
        import vtk

        return vtk.vtkCollection()


class _ProcessEnvironment:
    """The parts of QProcessEnvironment that Slicer's util reads, over ``os.environ`` at call time."""

    def keys(self) -> list:
        import os

        return list(os.environ)

    def value(self, key: str) -> str:
        import os

        return os.environ[key]


class FakeApplication(QObject):
    """``slicer.app``: application state only (settings, testing flag, module manager, layout manager)."""

    def __init__(self, testing: bool = True):
        super().__init__()
        self.__dict__["_testing"] = testing
        self.__dict__["applicationName"] = "Slicer"
        self.__dict__["processed_events"] = 0

    @staticmethod
    def translate(context, text):
        return text  # no translation installed

    def testingEnabled(self) -> bool:
        return self._testing

    def setTesting(self, on: bool) -> None:
        self.__dict__["_testing"] = on

    def processEvents(self, *args) -> None:
        self.__dict__["processed_events"] += 1
        process_events()

    def thread(self):
        return QThread.currentThread()

    def startupEnvironment(self):
        """``slicer.app.startupEnvironment()``: a QProcessEnvironment (``keys()``, ``value(k)``) over this process's
        environment, as Slicer's launcher left it (what ``slicer.util.startupEnvironment()`` reads)."""
        return _ProcessEnvironment()

    def topLevelWidgets(self) -> list:
        main = self.__dict__.get("_mainWindow")
        if main is None:
            main = self.__dict__["_mainWindow"] = QWidget()
            main.setObjectName("qSlicerMainWindow")
        return [main]

    def moduleManager(self):
        return self.__dict__.setdefault("_moduleManager", QObject())

    def layoutManager(self):
        """The view layout: records the layouts asked for (``layouts``); there are no views to show them."""
        return self.__dict__.setdefault("_layoutManager", LayoutManager())

    def applicationLogic(self):
        return self.__dict__.get("_applicationLogic")  # the real vtkSlicerApplicationLogic (slicer_layer sets it)

    def settings(self):
        return _Settings()

    userSettings = settings

    def setOverrideCursor(self, *args) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass
