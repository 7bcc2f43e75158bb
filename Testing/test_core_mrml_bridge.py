"""The MRML bridge against real MRML nodes from the slicer-core wheel (no fake `slicer` module)."""

from __future__ import annotations

import numpy as np
import pytest

from VolGANCore import TOPCOW13, Volume, VolGANError, mrml, read_label_volume, read_volume
from conftest import shared_file

OBLIQUE = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def test_real_mrml_is_used(headless):
    import slicer

    assert slicer.vtkMRMLScene.__module__ == "slicer_core.MRMLCore"  # the compiled MRML library
    assert isinstance(headless.scene, slicer.vtkMRMLScene)
    assert slicer.mrmlScene is headless.scene


def test_scalar_volume_round_trip_with_geometry(headless, rng):
    vol = Volume(rng.normal(size=(6, 7, 8)).astype(np.float32), spacing=(0.297, 0.31, 0.6),
                 origin=(10.0, -20.5, 3.25), direction=OBLIQUE)
    node = mrml.volume_to_node(vol, headless.scene, "v")
    assert node.IsA("vtkMRMLScalarVolumeNode")
    # Slicer's own view of the geometry: RAS origin = LPS origin with x, y negated
    assert node.GetOrigin() == pytest.approx((-10.0, 20.5, 3.25))
    assert node.GetSpacing() == pytest.approx(vol.spacing)
    import slicer

    assert np.array_equal(slicer.util.arrayFromVolume(node), vol.array)  # slicer.util agrees on (D,H,W)
    back = mrml.node_to_volume(node)
    assert back.same_geometry(vol, rtol=0, atol=1e-12)
    assert np.array_equal(back.array, vol.array)


def test_labelmap_node_is_coloured_by_scheme(headless):
    lab = Volume(np.array([[[0, 1, 15]]], np.int16), label_scheme="topcow13")
    node = mrml.volume_to_node(lab, headless.scene, "l", labelmap=True)
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    ct = node.GetDisplayNode().GetColorNode()
    assert ct.GetColorName(15) == "3rd-A2" and ct.GetColorName(1) == "BA"
    rgba = [0.0] * 4
    ct.GetColor(4, rgba)
    assert tuple(rgba[:3]) == pytest.approx(TOPCOW13.colour_of(4))
    assert mrml.node_to_volume(node).label_scheme == "topcow13"


def test_segmentation_has_topcow_names_colours_and_round_trips(headless):
    path = shared_file("data", "topcow", "topcow_mr_roi_003_labels.nii.gz")
    lab = read_label_volume(path, scheme="topcow13")
    seg = mrml.labelmap_to_segmentation(lab, "topcow13", headless.scene, name="CoW")
    segmentation = seg.GetSegmentation()
    present = sorted(set(np.unique(lab.array).tolist()) - {0})
    assert segmentation.GetNumberOfSegments() == len(present)
    for k in range(segmentation.GetNumberOfSegments()):
        s = segmentation.GetNthSegment(k)
        assert s.GetName() == TOPCOW13.name_of(int(s.GetLabelValue()))
        assert s.GetColor() == pytest.approx(TOPCOW13.colour_of(int(s.GetLabelValue())))
    back = mrml.segmentation_to_labelmap(seg, lab)
    assert np.array_equal(back.array, lab.array)


def test_unknown_label_ids_are_refused(headless):
    with pytest.raises(VolGANError, match=r"unknown label id\(s\) \[13\]"):
        mrml.labelmap_to_segmentation(Volume(np.array([[[0, 13]]], np.int16)), "topcow13", headless.scene)


def test_table_and_plot_chart_nodes(headless):
    rows = [{"case": "a", "BV/TV": 0.2, "ok": True}, {"case": "b", "BV/TV": 0.31, "ok": False, "note": "x"}]
    table = mrml.table_from_rows(rows, headless.scene, "Morphometry")
    assert table.GetNumberOfRows() == 2 and table.GetNumberOfColumns() == 4
    assert table.GetTable().GetColumnByName("BV/TV").IsA("vtkDoubleArray")
    back = mrml.rows_from_table(table)
    assert back[1]["BV/TV"] == pytest.approx(0.31) and back[0]["case"] == "a" and back[1]["note"] == "x"
    chart = mrml.plot_chart({"G loss": ([0, 1, 2], [3.0, 2.0, 1.5]), "D loss": ([0, 1, 2], [1.0, 1.1, 0.9])},
                            headless.scene, "Losses", x_label="kimg", y_label="loss")
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = chart.GetNthPlotSeriesNode(0)
    data = headless.scene.GetNodeByID(series.GetTableNodeID())
    assert data.GetTable().GetColumnByName("G loss").GetValue(2) == pytest.approx(1.5)
    with pytest.raises(VolGANError, match="x has 2 values, y has 3"):
        mrml.plot_chart({"bad": ([0, 1], [1, 2, 3])}, headless.scene)


def test_sequence_of_volumes(headless, rng):
    vols = [Volume(np.full((3, 4, 5), k, np.float32), spacing=(0.5, 0.5, 1.0)) for k in range(4)]
    seq, browser = mrml.volumes_to_sequence(vols, headless.scene, "interp", index_values=[0.0, 0.25, 0.5, 1.0])
    assert seq.GetNumberOfDataNodes() == 4
    item = seq.GetNthDataNode(2)
    assert item.GetSpacing() == pytest.approx((0.5, 0.5, 1.0))
    assert mrml.node_to_volume(item).array.mean() == 2
    assert browser.GetNumberOfItems() == 4


def test_real_tof_crop_into_scene(headless):
    vol = read_volume(shared_file("data", "topcow", "topcow_mra_crop.mha"))
    node = mrml.volume_to_node(vol, headless.scene, "tof")
    assert mrml.node_to_volume(node).same_geometry(vol)


def test_storage_node_writes_what_we_read(headless, tmp_path, rng):
    """A node saved by MRML's own storage node reads back through VolGANCore with the same geometry."""
    vol = Volume(rng.normal(size=(4, 5, 6)).astype(np.float32), spacing=(0.3, 0.4, 0.5), origin=(1, 2, 3),
                 direction=OBLIQUE)
    node = mrml.volume_to_node(vol, headless.scene, "v")
    node.AddDefaultStorageNode()
    storage = node.GetStorageNode()
    storage.SetFileName(str(tmp_path / "v.nrrd"))
    assert storage.WriteData(node)
    back = read_volume(tmp_path / "v.nrrd")
    assert back.same_geometry(vol, atol=1e-6)
    assert np.array_equal(back.array, vol.array)
