"""Bridge between VolGANCore objects and real MRML nodes.

Works inside the Slicer application and headless with the ``slicer-core`` wheel (real MRML, no Qt):
:func:`create_headless_scene` wires a scene with a ``vtkSlicerApplicationLogic`` and the module logics
these conversions need (README.md, "Architecture": how the Slicer tier is tested). MRML is imported lazily, inside the functions, so importing
:mod:`VolGANCore` never needs Slicer.

Geometry: MRML volume nodes hold an IJK→RAS matrix; VolGANCore volumes hold LPS spacing/origin/direction
(ITK convention). Conversions flip the first two physical axes (LPS ↔ RAS) and are exact in float64.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import VolGANError
from .labels import get_scheme
from .volume import Volume, check_3d

__all__ = [
    "SceneLogic",
    "HeadlessSlicer",
    "create_headless_scene",
    "volume_to_node",
    "node_to_volume",
    "labelmap_to_segmentation",
    "segmentation_to_labelmap",
    "segment_to_mask",
    "color_table_for_scheme",
    "table_from_rows",
    "rows_from_table",
    "plot_chart",
    "volumes_to_sequence",
]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _slicer():
    try:
        import slicer  # real MRML: the Slicer application, or the slicer-core wheel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise VolGANError("MRML is not available: run inside 3D Slicer or `pip install slicer-core`") from exc
    return slicer


class SceneLogic:
    """Base of the modules' MRML-level logic classes: works on ``scene`` when given, else ``slicer.mrmlScene``
    (inside the Slicer application, or after :func:`create_headless_scene`)."""

    def __init__(self, scene=None):
        self._scene = scene

    @property
    def scene(self):
        return _scene(self._scene)


@dataclasses.dataclass
class HeadlessSlicer:
    """A scene with an application logic and the module logics used by the bridge."""

    scene: Any
    app_logic: Any
    logics: dict[str, Any]

    def close(self) -> None:
        self.scene.Clear(True)


def create_headless_scene(set_global: bool = True) -> HeadlessSlicer:
    """A new MRML scene wired like Slicer's (application logic + Volumes, Segmentations, SubjectHierarchy,
    Tables, Sequences, Plots logics). With ``set_global`` (and outside the Slicer application), also sets
    ``slicer.mrmlScene`` so that ``slicer.util`` array helpers work on it.
    """
    slicer = _slicer()
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    logics: dict[str, Any] = {}
    # The colour logic creates the default colour tables (Labels, Random, ...) that display nodes and plot
    # series look up. Headless it has no colour-file folder and logs an error about it: silence only that.
    import vtk

    was_on = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        colors = slicer.vtkSlicerColorLogic()
        colors.SetMRMLApplicationLogic(app)
        colors.SetMRMLScene(scene)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(was_on)
    app.SetModuleLogic("Colors", colors)
    logics["Colors"] = colors
    for name, cls in (
        ("Volumes", "vtkSlicerVolumesLogic"),
        ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
        ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
        ("Tables", "vtkSlicerTablesLogic"),
        ("Sequences", "vtkSlicerSequencesLogic"),
        ("Plots", "vtkSlicerPlotsLogic"),
    ):
        logic = getattr(slicer, cls)()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics[name] = logic
    if set_global and not hasattr(slicer, "app"):
        slicer.mrmlScene = scene
    return HeadlessSlicer(scene, app, logics)


def _scene(scene):
    if scene is not None:
        return scene
    slicer = _slicer()
    s = getattr(slicer, "mrmlScene", None)
    if s is None:
        raise VolGANError("no MRML scene: pass scene=... or call create_headless_scene() first")
    return s


def _vtk_matrix(m: np.ndarray):
    import vtk

    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, float(m[r, c]))
    return vm


def _image_data(array: np.ndarray):
    import vtk
    from vtk.util import numpy_support

    array = np.ascontiguousarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    img = vtk.vtkImageData()
    img.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    vtk_arr = numpy_support.numpy_to_vtk(array.reshape(-1), deep=True)
    vtk_arr.SetName("ImageScalars")
    img.GetPointData().SetScalars(vtk_arr)
    return img


def volume_to_node(volume: Volume, scene=None, name: str = "Volume", labelmap: bool = False, node=None):
    """Create (or update ``node``) a scalar or labelmap volume node holding ``volume`` with its geometry.

    Labelmaps get a display node; if ``volume.label_scheme`` is set, they are coloured with that scheme.
    """
    scene = _scene(scene)
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    array = volume.array
    if labelmap:
        if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
            raise VolGANError(f"{name}: a labelmap needs integer values")
        array = array.astype(np.int16)
    if node is None:
        node = scene.AddNewNodeByClass(cls, name)
    node.SetAndObserveImageData(_image_data(array))
    node.SetIJKToRASMatrix(_vtk_matrix(volume.ijk_to_ras_matrix()))
    node.CreateDefaultDisplayNodes()
    if labelmap and volume.label_scheme:
        ct = color_table_for_scheme(volume.label_scheme, scene)
        node.GetDisplayNode().SetAndObserveColorNodeID(ct.GetID())
    if volume.label_scheme:
        node.SetAttribute("VolumetricGAN.LabelScheme", volume.label_scheme)
    node.Modified()
    return node


def node_to_volume(node) -> Volume:
    """A :class:`Volume` (array copy + LPS geometry) from a scalar or labelmap volume node."""
    import vtk
    from vtk.util import numpy_support

    img = node.GetImageData()
    if img is None or img.GetPointData().GetScalars() is None:
        raise VolGANError(f"volume node '{node.GetName()}' holds no image data")
    if img.GetPointData().GetScalars().GetNumberOfComponents() != 1:
        raise VolGANError(f"volume node '{node.GetName()}' has several components per voxel; a scalar volume is needed")
    dims = img.GetDimensions()
    array = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0]).copy()
    vm = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vm)
    m = np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)])
    lin_lps = _LPS_TO_RAS @ m[:3, :3]
    spacing = np.linalg.norm(lin_lps, axis=0)
    direction = lin_lps / spacing
    origin = _LPS_TO_RAS @ m[:3, 3]
    scheme = node.GetAttribute("VolumetricGAN.LabelScheme")
    return Volume(check_3d(array, node.GetName()), spacing=tuple(spacing), origin=tuple(origin),
                  direction=direction, label_scheme=scheme or None)


def color_table_for_scheme(scheme_name: str, scene=None):
    """A colour table node with the scheme's class names and colours (reused if already in the scene)."""
    scene = _scene(scene)
    scheme = get_scheme(scheme_name)
    node_name = f"VolumetricGAN_{scheme.name}"
    existing = scene.GetFirstNodeByName(node_name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    ct = scene.AddNewNodeByClass("vtkMRMLColorTableNode", node_name)
    ct.SetTypeToUser()
    ct.SetNumberOfColors(max(scheme.ids) + 1)
    ct.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    for i in range(1, max(scheme.ids) + 1):
        if i not in scheme.ids:
            ct.SetColor(i, "(unused)", 0.0, 0.0, 0.0, 0.0)
    for label_id, name, (r, g, b) in scheme.classes:
        ct.SetColor(label_id, name, r, g, b, 1.0)
    ct.SetAttribute("Category", "VolumetricGAN")
    return ct


def labelmap_to_segmentation(volume: Volume, scheme: str | None = None, scene=None, name: str = "Segmentation"):
    """A segmentation node with one named, coloured segment per label present in ``volume``.

    ``scheme`` (default: ``volume.label_scheme``) names and colours the segments (TopCoW names and
    colours for ``topcow13``); unknown ids are refused. The segment's ``LabelValue`` tag keeps the id.
    """
    slicer = _slicer()
    scene = _scene(scene)
    scheme_name = scheme or volume.label_scheme
    if scheme_name is None:
        raise VolGANError(f"{name}: no label scheme given (pass scheme='topcow13' or 'aydin7')")
    sch = get_scheme(scheme_name)
    sch.check(volume.array, name)
    lab = dataclasses.replace(volume, label_scheme=sch.name)
    lab_node = volume_to_node(lab, scene, name=f"{name}_labelmap", labelmap=True)
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg_node.CreateDefaultDisplayNodes()
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lab_node, seg_node)
    scene.RemoveNode(lab_node)
    if not ok:
        raise VolGANError(f"{name}: importing the labelmap into a segmentation failed")
    segmentation = seg_node.GetSegmentation()
    for k in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(k)
        label_id = int(segment.GetLabelValue())
        segment.SetName(sch.name_of(label_id))
        segment.SetColor(*sch.colour_of(label_id))
        segment.SetTag("VolumetricGAN.LabelValue", str(label_id))
    seg_node.SetAttribute("VolumetricGAN.LabelScheme", sch.name)
    return seg_node


def segment_to_mask(seg_node, segment_id: str, reference: Volume) -> Volume:
    """One segment as a binary (uint8) :class:`Volume` on ``reference``'s grid."""
    import vtk

    slicer = _slicer()
    scene = seg_node.GetScene()
    if seg_node.GetSegmentation().GetSegment(segment_id) is None:
        raise VolGANError(f"segmentation '{seg_node.GetName()}' has no segment '{segment_id}'")
    ref_node = volume_to_node(dataclasses.replace(reference, array=np.zeros(reference.shape, np.uint8)), scene,
                              name="__volgan_reference")
    lab_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__volgan_export")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg_node, ids, lab_node, ref_node)
        mask = node_to_volume(lab_node).array > 0
    finally:
        scene.RemoveNode(lab_node)
        scene.RemoveNode(ref_node)
    return reference.with_array(mask.astype(np.uint8), label_scheme=None)


def segmentation_to_labelmap(seg_node, reference: Volume, scheme: str | None = None) -> Volume:
    """Back from a segmentation node to a label :class:`Volume` on ``reference``'s grid.

    Segment ids come from the ``VolumetricGAN.LabelValue`` tag or, failing that, from the segment name in
    ``scheme`` (default: the node's ``VolumetricGAN.LabelScheme`` attribute), else the segment's label value.
    """
    import vtk

    scheme_name = scheme or seg_node.GetAttribute("VolumetricGAN.LabelScheme")
    out = np.zeros(reference.shape, np.int16)
    segmentation = seg_node.GetSegmentation()
    for k in range(segmentation.GetNumberOfSegments()):
        seg_id = segmentation.GetNthSegmentID(k)
        segment = segmentation.GetSegment(seg_id)
        tag = vtk.reference("")
        if segment.GetTag("VolumetricGAN.LabelValue", tag) and str(tag):
            label_id = int(str(tag))
        elif scheme_name:
            label_id = get_scheme(scheme_name).id_of(segment.GetName())
        else:
            label_id = int(segment.GetLabelValue())
        out[segment_to_mask(seg_node, seg_id, reference).array > 0] = label_id
    return reference.with_array(out, label_scheme=scheme_name)


def _column_array(name: str, values: list[Any]):
    import vtk

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present):
        arr = vtk.vtkIntArray()
        conv = lambda v: -1 if v is None else int(v)  # noqa: E731
    elif all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) or v is None
             for v in values):
        arr = vtk.vtkDoubleArray()
        conv = lambda v: math.nan if v is None else float(v)  # noqa: E731
    else:
        arr = vtk.vtkStringArray()
        conv = lambda v: "" if v is None else str(v)  # noqa: E731
    arr.SetName(name)
    for v in values:
        arr.InsertNextValue(conv(v))
    return arr


def table_from_rows(rows: Sequence[Mapping[str, Any]], scene=None, name: str = "Table", node=None):
    """A table node with one row per mapping; columns in first-seen key order (missing cells empty/NaN).

    Numbers become double columns, booleans int columns, everything else strings. Put units in the keys,
    e.g. ``"Tb.Th (mm)"``.
    """
    scene = _scene(scene)
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    table.Initialize()
    for col in columns:
        table.AddColumn(_column_array(col, [row.get(col) for row in rows]))
    node.Modified()
    return node


def rows_from_table(node) -> list[dict[str, Any]]:
    """The inverse of :func:`table_from_rows`: a list of dicts (numbers as float, strings as str)."""
    table = node.GetTable()
    out: list[dict[str, Any]] = [dict() for _ in range(table.GetNumberOfRows())]
    for c in range(table.GetNumberOfColumns()):
        col = table.GetColumn(c)
        for r in range(table.GetNumberOfRows()):
            out[r][col.GetName()] = col.GetValue(r)
    return out


def plot_chart(
    series: Mapping[str, tuple[Iterable[float], Iterable[float]]],
    scene=None,
    name: str = "Chart",
    x_label: str = "x",
    y_label: str = "y",
    plot_type: str = "line",
):
    """A plot chart node with one series per entry ``{label: (x, y)}``; data live in one table node.

    ``plot_type``: ``line`` (loss curves, trajectories), ``scatter`` or ``bar`` (histograms: bars at their x
    values, Slicer's ``PlotTypeScatterBar``; its ``PlotTypeBar`` ignores X and would put the bins at 0, 1, 2, …).
    Returns the chart node; its table is reachable via the series' ``GetTableNodeID``.
    """
    slicer = _slicer()
    scene = _scene(scene)
    kinds = {"line": slicer.vtkMRMLPlotSeriesNode.PlotTypeLine,
             "scatter": slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter,
             "bar": slicer.vtkMRMLPlotSeriesNode.PlotTypeScatterBar}
    if plot_type not in kinds:
        raise VolGANError(f"plot_type '{plot_type}': choose one of {sorted(kinds)}")
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(name)
    chart.SetXAxisTitle(x_label)
    chart.SetYAxisTitle(y_label)
    for k, (label, (x, y)) in enumerate(series.items()):
        x = np.asarray(list(x), dtype=float)
        y = np.asarray(list(y), dtype=float)
        if x.shape != y.shape:
            raise VolGANError(f"series '{label}': x has {x.size} values, y has {y.size}")
        table = table_from_rows([{x_label: a, label: b} for a, b in zip(x, y)], scene, name=f"{name} {label} data")
        ps = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", label)
        ps.SetAndObserveTableNodeID(table.GetID())
        ps.SetXColumnName(x_label)
        ps.SetYColumnName(label)
        ps.SetPlotType(kinds[plot_type])
        ps.SetUniqueColor()
        chart.AddAndObservePlotSeriesNodeID(ps.GetID())
    return chart


def volumes_to_sequence(volumes: Sequence[Volume], scene=None, name: str = "Sequence",
                        index_name: str = "step", index_values: Sequence[float] | None = None):
    """A sequence node holding one scalar volume per item (e.g. an interpolation), plus a browser node.

    Returns ``(sequence_node, browser_node)``; the browser's proxy volume shows the current item.
    """
    scene = _scene(scene)
    if not volumes:
        raise VolGANError(f"{name}: no volumes to put in a sequence")
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    seq.SetIndexName(index_name)
    seq.SetIndexUnit("")
    tmp = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{name}_item")
    for k, vol in enumerate(volumes):
        volume_to_node(vol, scene, node=tmp)
        value = index_values[k] if index_values is not None else k
        seq.SetDataNodeAtValue(tmp, f"{value:g}" if isinstance(value, float) else str(value))
    scene.RemoveNode(tmp)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.SetAndObserveMasterSequenceNodeID(seq.GetID())
    return seq, browser
