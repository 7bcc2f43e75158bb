"""The three modules against Slicer's own Python layer (5.8.1 and 5.12.3, from ../shared/slicer) over real MRML.

What runs is Slicer's code: parameterNodeWrapper (serializers, GUI connectors), ScriptedLoadableModule, util
(loadUI, childWidgetVariables, confirmations, pip_install), packaging (5.12) and SampleData. Only Qt/CTK widget
classes and application state are stand-ins (slicer_standins.py).
"""

from __future__ import annotations

import pathlib
import sys
import typing

import pytest

from slicer_layer import MODULES, VERSIONS, blocked_imports, slicer_layer

PARAMETER_NODES = {m: f"{m}ParameterNode" for m in MODULES}
# what a fresh Slicer lacks: PyTorch (SlicerPyTorch installs it) and every package the requirement files list
NOT_IN_A_FRESH_SLICER = ("torch", "monai", "matplotlib", "skimage", "edt", "nibabel", "tqdm", "psutil",
                         "tensorboard")


@pytest.fixture(params=VERSIONS)
def layer(request):
    with slicer_layer(request.param) as loaded:
        yield loaded


def _candidates(info, scene, tmp_path):
    """Values other than the default that the field's type and validators accept."""
    from slicer.parameterNodeWrapper.util import getNodeTypes, isNodeOrUnionOfNodes, splitAnnotations

    from slicer.parameterNodeWrapper import Choice, WithinRange

    declared = info.unalteredType
    if isNodeOrUnionOfNodes(declared):
        return [scene.AddNewNodeByClass(cls) for cls in getNodeTypes(declared)] + (
            [None] if type(None) in typing.get_args(declared) else [])
    actual, annotations = splitAnnotations(declared)
    choice = next((a for a in annotations if isinstance(a, Choice)), None)
    bounds = next((a for a in annotations if isinstance(a, WithinRange)), None)
    default = info.default.value
    if choice is not None:
        return [c for c in choice.choices if c != default]
    if actual in (int, float):
        lo, hi = (bounds.minimum, bounds.maximum) if bounds else (default - 10, default + 10)
        return [v for v in {actual(lo), actual(hi), actual(lo + (hi - lo) / 3)} if v != default]
    if issubclass(actual, pathlib.PurePath):
        return [actual(tmp_path / "a folder" / "file.nii.gz")]
    if actual is str:
        return ["another value"]
    if actual is bool:
        return [not default]
    raise AssertionError(f"no test value for {declared}")


@pytest.mark.parametrize("module", MODULES)
def test_parameter_node_wraps_real_node_and_round_trips_every_field(layer, module, tmp_path):
    py = layer.load_module(module)
    wrapper = getattr(py, PARAMETER_NODES[module])
    node = layer.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    first = wrapper(node)  # writes every default through Slicer's serializers
    assert wrapper.allParameters, module
    for name, info in wrapper.allParameters.items():
        assert node.GetParameter(name) != "" or info.default.value in (None, "", 0), name
        values = _candidates(info, layer.scene, tmp_path)
        assert values, f"{module}.{name}: nothing to round-trip"
        for value in values:
            setattr(first, name, value)
            again = getattr(wrapper(node), name)  # a new wrapper reads the MRML node, not a cache
            if hasattr(value, "GetID"):
                assert again is not None and again.GetID() == value.GetID(), name
            else:
                assert again == value, name
    # and the node survives a scene save/load cycle as text (Slicer stores parameters as strings)
    assert all(isinstance(node.GetParameter(n), str) for n in wrapper.allParameters)


@pytest.mark.parametrize("module", MODULES)
def test_every_bound_widget_accepts_its_field_and_moves_values_both_ways(layer, module, tmp_path):
    import slicer
    from slicer.parameterNodeWrapper import createGuiConnector

    py = layer.load_module(module)
    wrapper = getattr(py, PARAMETER_NODES[module])
    ui_widget = slicer.util.loadUI(str(pathlib.Path(py.__file__).parent / "Resources" / "UI" / f"{module}.ui"))
    ui = slicer.util.childWidgetVariables(ui_widget)
    bound = {w.property("SlicerParameterName"): w for w in vars(ui).values() if w.property("SlicerParameterName")}
    assert bound, module
    assert set(bound) <= set(wrapper.allParameters), set(bound) - set(wrapper.allParameters)
    params = wrapper(layer.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    params.connectGui(ui)  # Slicer's connectors: refuse unbounded sliders, combo boxes without Choice, ...
    for name, widget in bound.items():
        info = wrapper.allParameters[name]
        probe = createGuiConnector(widget, info.unalteredType)  # reads/writes the widget as Slicer does
        assert probe.read() == _plain(getattr(params, name)), f"{module}.{name}: widget shows the default"
        for value in _candidates(info, layer.scene, tmp_path):
            setattr(params, name, value)  # node -> widget
            assert _plain(probe.read()) == _plain(value), f"{module}.{name}: node -> widget"
        setattr(params, name, info.default.value)  # back to the default, so that every write below is a change
        for value in reversed(_candidates(info, layer.scene, tmp_path)):
            probe.write(value)  # widget -> node (through the widget's own signal)
            assert _plain(getattr(params, name)) == _plain(value), f"{module}.{name}: widget -> node"


def _plain(value):
    return value.GetID() if hasattr(value, "GetID") else value


def test_threshold_slider_range_comes_from_the_parameter_node(layer):
    """guiConnectors.py refuses a ctkSliderWidget bound to an unbounded float: the range is the annotation's."""
    import slicer

    py = layer.load_module("MorphometryLogic")
    ui = slicer.util.childWidgetVariables(slicer.util.loadUI(
        str(pathlib.Path(py.__file__).parent / "Resources" / "UI" / "MorphometryLogic.ui")))
    py.MorphometryLogicParameterNode(layer.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")).connectGui(ui)
    assert (ui.thresholdSliderWidget.minimum, ui.thresholdSliderWidget.maximum) == (-2000.0, 5000.0)
    assert ui.thresholdSliderWidget.value == 225.0


@pytest.mark.parametrize("module", MODULES)
def test_panel_builds_and_offers_install_without_torch_or_optional_packages(layer, module):
    with blocked_imports(*NOT_IN_A_FRESH_SLICER):
        py = layer.load_module(module)
        widget = layer.make_widget(module)  # setup() + enter(), as when the module is shown
        assert widget._parameterNode is not None
        button = widget.ui.installDependenciesButton
        assert button.signal("clicked").slots, "Install dependencies is wired"
        if module == "VolumetricGAN":  # the shipped models are listed from their configs alone
            items = [widget.ui.modelComboBox.itemText(i) for i in range(widget.ui.modelComboBox.count)]
            assert {"tiny-cow", "tiny-spongiosa"} <= set(items), items
        assert "torch" not in sys.modules or sys.modules["torch"] is None
    assert py is sys.modules[module]


class _PyTorchUtilsStandIn:
    """SlicerPyTorch's PyTorchUtilsLogic (another extension's code, which a test cannot run): records calls."""

    calls: list = []

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                     torchvisionVersionRequirement=None):
        _PyTorchUtilsStandIn.calls.append({"askConfirmation": askConfirmation, "requirement": torchVersionRequirement})
        return None  # as PyTorchUtils does when the install failed


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """A ``PythonSlicer`` on PATH that acts as ``PythonSlicer -m pip install REQ...``: it records its arguments
    and "installs" each requirement as a dist-info folder (at the lowest version it allows) in a folder on
    sys.path, so importlib.metadata sees it afterwards, as after a real pip install."""
    import textwrap

    site = tmp_path / "site"
    site.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "pip-calls.txt"
    script = bin_dir / "PythonSlicer"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import re, sys, pathlib
        args = sys.argv[1:]
        with open({str(log)!r}, "a") as f:
            f.write(" ".join(args) + "\\n")
        assert args[:3] == ["-m", "pip", "install"], args
        for req in args[3:]:
            if req.startswith("-"):
                continue
            m = re.match(r"([A-Za-z0-9_.-]+)\\s*(?:>=|==)?\\s*([0-9.]*)", req)
            name, version = m.group(1), m.group(2) or "1.0"
            d = pathlib.Path({str(site)!r}) / f"{{name.replace('-', '_')}}-{{version}}.dist-info"
            d.mkdir(exist_ok=True)
            (d / "METADATA").write_text(f"Metadata-Version: 2.1\\nName: {{name}}\\nVersion: {{version}}\\n")
        print("Successfully installed", " ".join(args[3:]))
        """))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.syspath_prepend(str(site))
    return log


def test_install_dependencies_asks_once_then_installs_through_slicers_pip(layer, fake_pip, tmp_path, monkeypatch):
    """One confirmation; pip through slicer.util.pip_install (5.8) / slicer.packaging.pip_install (5.12);
    the result is checked; torch through PyTorchUtils with the minimum version, and its failure is reported."""
    from slicer_standins import ctkMessageBox

    reqs = tmp_path / "GANTrainer-requirements.txt"
    reqs.write_text("# test\nvolgan-absent-package>=1.2\nnumpy>=1.0\n")
    layer.app.setTesting(False)  # real confirmations (answered by the stand-in message box)
    widget = layer.make_widget("MorphometryLogic")
    monkeypatch.setattr(widget, "requirementsPath", lambda: str(reqs))

    ctkMessageBox.answer = ctkMessageBox.Cancel
    assert widget.ensureDependencies(needTorch=False) is False
    assert len(ctkMessageBox.shown) == 1 and "volgan-absent-package>=1.2" in ctkMessageBox.shown[0]
    assert "numpy" not in ctkMessageBox.shown[0]  # installed already: not asked for
    assert not fake_pip.exists()  # declined: nothing ran

    ctkMessageBox.answer = ctkMessageBox.Ok
    assert widget.ensureDependencies(needTorch=False) is True
    assert len(ctkMessageBox.shown) == 2  # exactly one more question, none from Slicer's pip helpers
    assert fake_pip.read_text().splitlines() == ["-m pip install volgan-absent-package>=1.2"]
    assert widget.ensureDependencies(needTorch=False) is True and len(ctkMessageBox.shown) == 2  # satisfied now

    # PyTorch: through the PyTorch extension, with the minimum version; a failed install is reported
    monkeypatch.setitem(sys.modules, "PyTorchUtils", type(sys)("PyTorchUtils"))
    sys.modules["PyTorchUtils"].PyTorchUtilsLogic = _PyTorchUtilsStandIn
    _PyTorchUtilsStandIn.calls = []
    with blocked_imports("torch"):
        monkeypatch.setattr("importlib.metadata.version", _version_without("torch"))
        assert widget.ensureDependencies(needTorch=True) is False
    assert _PyTorchUtilsStandIn.calls == [{"askConfirmation": False, "requirement": ">=2.1"}]
    assert "torch>=2.1" in ctkMessageBox.shown[2] and len(ctkMessageBox.shown) == 4  # the question, the error
    assert "Installing PyTorch" in ctkMessageBox.shown[3]


def test_without_the_pytorch_extension_the_user_is_told_to_install_it(layer, monkeypatch):
    from slicer_standins import ctkMessageBox

    layer.app.setTesting(False)
    widget = layer.make_widget("VolumetricGAN")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    monkeypatch.setattr("importlib.metadata.version", _version_without("torch"))
    assert widget.ensureDependencies() is False
    assert len(ctkMessageBox.shown) == 1 and "Install the 'PyTorch' extension" in ctkMessageBox.shown[0]


def _version_without(name):
    import importlib.metadata as metadata

    real = metadata.version

    def version(dist):
        if dist == name:
            raise metadata.PackageNotFoundError(dist)
        return real(dist)

    return version


@pytest.mark.parametrize("module,buttons", [
    ("MorphometryLogic", ("computeBoneButton", "batchButton", "computeVesselsButton")),
    ("VolumetricGAN", ("generateButton", "steerButton", "simulateChangeButton", "createPhantomButton")),
    ("GANTrainer", ("validateButton", "startTrainingButton", "evaluateButton")),
])
def test_every_action_ensures_its_packages_before_it_runs(layer, module, buttons, tmp_path, monkeypatch):
    """Each action asks for what is missing first; declining runs nothing."""
    from slicer_standins import ctkMessageBox

    reqs = tmp_path / "reqs.txt"
    reqs.write_text("volgan-absent-package>=1\n")
    layer.app.setTesting(False)
    widget = layer.make_widget(module)
    monkeypatch.setattr(widget, "requirementsPath", lambda: str(reqs))
    ctkMessageBox.answer = ctkMessageBox.Cancel
    nodes_before = layer.scene.GetNumberOfNodes()
    status_before = widget.ui.statusLabel.text
    for k, name in enumerate(buttons, start=1):
        button = getattr(widget.ui, name)
        button.enabled = True
        button.click()
        assert len(ctkMessageBox.shown) == k, f"{name} did not ask for its packages"
        assert "volgan-absent-package" in ctkMessageBox.shown[-1]
    assert layer.scene.GetNumberOfNodes() == nodes_before and widget.ui.statusLabel.text == status_before


def test_threshold_preview_uses_the_value_just_chosen(layer):
    """The preview reacts to the parameter node, so it never reads the slider's previous value."""
    import numpy as np

    widget = layer.make_widget("MorphometryLogic")
    volume = layer.slicer.util.addVolumeFromArray(np.arange(1000, dtype=np.float32).reshape(10, 10, 10))
    widget.ui.inputVolumeSelector.setCurrentNode(volume)
    widget.ui.previewCheckBox.checked = True
    widget.ui.thresholdSliderWidget.value = 500.0
    preview = layer.slicer.util.arrayFromVolume(widget.previewNode)
    assert preview.sum() == 500  # voxels >= 500, not >= 225 (the previous value)
    widget.ui.thresholdSliderWidget.value = 900.0
    assert layer.slicer.util.arrayFromVolume(widget.previewNode).sum() == 100


def test_training_plot_choice_redraws_the_chosen_plot(layer, tmp_path, monkeypatch):
    import types

    widget = layer.make_widget("GANTrainer")
    py = sys.modules["GANTrainer"]
    drawn = []
    monkeypatch.setattr(py, "updateRunPlot", lambda logic, folder, chartNode=None, plot="": drawn.append(plot))
    widget.logic.training = types.SimpleNamespace(runFolder=tmp_path)  # a run being watched
    combo = widget.ui.trainingPlotComboBox
    combo.currentIndex = combo.findText("quick metrics")
    assert drawn == ["quick metrics"]  # the choice just made, drawn once
    combo.currentIndex = combo.findText("losses")
    assert drawn == ["quick metrics", "losses"]


def test_progress_cancel_is_connected_once_per_panel(layer):
    widget = layer.make_widget("VolumetricGAN")
    slots = len(widget.ui.cancelButton.signal("clicked").slots)
    for _ in range(3):
        with widget.progress.begin() as progress:
            assert widget.ui.cancelButton.enabled and not progress.token.cancelled
        assert not widget.ui.cancelButton.enabled
    assert len(widget.ui.cancelButton.signal("clicked").slots) == slots == 1
    with widget.progress.begin() as progress:
        widget.ui.cancelButton.click()
        assert progress.token.cancelled


def test_cleanup_stops_the_panels_timers_and_disconnects(layer):
    widget = layer.make_widget("GANTrainer")
    timers = widget.__dict__.get("timers", [])
    assert timers, "the poll timers belong to the panel (addTimer)"
    for t in timers:
        t.start()
    widget.cleanup()
    assert not any(t.isActive() for t in timers) and widget._parameterNode is None


def test_modules_declare_the_module_they_import_from(layer):
    for module in MODULES:
        layer.load_module(module)
    deps = {m: getattr(layer.slicer.modules, m.lower()).dependencies for m in MODULES}
    assert deps["VolumetricGAN"] == ["MorphometryLogic"] and deps["GANTrainer"] == ["MorphometryLogic"]
    assert deps["MorphometryLogic"] == []


def test_sample_data_registers_through_slicers_sampledata_and_each_entry_loads(layer):
    py = layer.load_module("VolumetricGAN")
    import SampleData

    py.registerSampleData()
    sources = SampleData.SampleDataLogic.sampleDataSourcesByCategory("VolumetricGAN")
    names = [s.sampleName for s in sources]
    assert len(sources) == 5, names  # two phantoms; the shipped CoW, joint CoW and spongiosa models
    assert "Synthetic CoW angiogram with its artery labels (tiny-cow-labels model)" in names
    assert "Synthetic CoW angiogram (tiny-cow model)" in names       # the image-only model for the plain entry
    for source in sources:
        assert source.customDownloader is not None
        before = layer.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
        segmentations = layer.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        nodes = source.customDownloader(source)  # what the Sample Data panel calls when the entry is chosen
        assert nodes and nodes[0].IsA("vtkMRMLScalarVolumeNode"), source.sampleName
        assert layer.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") > before
        assert layer.slicer.util.arrayFromVolume(nodes[0]).std() > 0, source.sampleName
        labelled = layer.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") - segmentations
        if "model" in source.sampleName:  # (the CoW phantom brings its label map too)
            assert labelled == (1 if "artery labels" in source.sampleName else 0), source.sampleName
        if "artery labels" in source.sampleName:
            seg = layer.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetItemAsObject(segmentations)
            segment_names = {seg.GetSegmentation().GetNthSegment(i).GetName()
                             for i in range(seg.GetSegmentation().GetNumberOfSegments())}
            from VolGANCore.labels import TOPCOW13

            assert segment_names and segment_names <= {TOPCOW13.name_of(i) for i in TOPCOW13.ids}, segment_names
    models = [s for s in sources if "model" in s.sampleName]
    assert all(s.thumbnailFileName and pathlib.Path(s.thumbnailFileName).is_file() for s in models)


@pytest.mark.parametrize("module", MODULES)
def test_leaving_and_reentering_the_module_keeps_values_and_one_connection_per_widget(layer, module):
    """Slicer 5.8's connectGui returns no tag: without care each exit/enter leaves a connector behind, and the
    next connection flips every combo-box parameter to its last choice."""
    widget = layer.make_widget(module)
    p = widget._parameterNode
    before = {name: _plain(getattr(p, name)) for name in type(p).allParameters}
    combos = [w for w in vars(widget.ui).values()
              if w.property("SlicerParameterName") and w.signal("currentIndexChanged").slots]
    assert combos
    for _ in range(3):
        widget.exit()
        widget.enter()
        layer.scene.Clear(False)  # closing the scene makes a new parameter node, connected anew
    p = widget._parameterNode
    assert {name: _plain(getattr(p, name)) for name in type(p).allParameters if name in before and
            not hasattr(getattr(p, name), "GetID")} == {k: v for k, v in before.items() if v is None or
                                                          not str(v).startswith("vtkMRML")}
    for combo in combos:
        assert len(combo.signal("currentIndexChanged").slots) == 1, combo.name


@pytest.mark.parametrize("module", MODULES)
def test_module_self_test_runs_the_real_logic(layer, module):
    """What Slicer's ctest runs (slicer_add_python_unittest): the module's ScriptedLoadableModuleTest."""
    py = layer.load_module(module)
    getattr(py, f"{module}Test")().runTest()
    assert layer.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") + \
        layer.scene.GetNumberOfNodesByClass("vtkMRMLTableNode") > 0  # it made real nodes


def test_volume_selectors_do_not_offer_labelmaps():
    """A vtkMRMLScalarVolumeNode selector also lists labelmaps (a subclass) unless it hides them."""
    import xml.etree.ElementTree as ET

    from slicer_layer import REPO

    checked = 0
    for module in MODULES:
        root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
        for w in root.iter("widget"):
            if w.get("class") != "qMRMLNodeComboBox":
                continue
            props = {p.get("name"): [s.text for s in p.iter("string")] for p in w.findall("property")}
            if props.get("nodeTypes") == ["vtkMRMLScalarVolumeNode"]:
                checked += 1
                assert "vtkMRMLLabelMapVolumeNode" in props.get("hideChildNodeTypes", []), w.get("name")
    assert checked >= 3


@pytest.mark.parametrize("version", VERSIONS)
def test_panels_build_from_the_installed_layout_without_torch(version, tmp_path):
    """One flat qt-scripted-modules folder made of exactly the listed files, no project install, no torch."""
    from install_layout import build_install_layout

    from slicer_layer import REPO

    flat = build_install_layout(REPO, tmp_path / "qt-scripted-modules")
    with blocked_imports(*NOT_IN_A_FRESH_SLICER), slicer_layer(version, installed=flat) as layer:
        for module in MODULES:
            widget = layer.make_widget(module)
            assert pathlib.Path(sys.modules[module].__file__).parent == flat
            assert pathlib.Path(sys.modules["VolGANCore"].__file__).parent.parent == flat
            assert pathlib.Path(widget.requirementsPath()).is_file(), widget.requirementsPath()
            assert widget.ui.installDependenciesButton.signal("clicked").slots
        combo = widget.ui.modelComboBox if module == "VolumetricGAN" else \
            layer.slicer.modules.VolumetricGANWidget.ui.modelComboBox
        shipped = {combo.itemText(i): combo.itemData(i) for i in range(combo.count)}
        assert pathlib.Path(shipped["tiny-cow"]).parent == flat / "Resources" / "Models"
