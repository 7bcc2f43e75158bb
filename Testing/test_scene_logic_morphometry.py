"""Morphometry panel logic on real MRML (slicer-core): bone and vessel tables, maps, charts, batch CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from VolGANCore import VolGANError, Volume, mrml, read_label_volume, write_volume
from conftest import shared_file


def plates(spacing=0.1):
    """Parallel plates 4 voxels thick, 6 apart, along z: grey values 1000 (bone) / 0."""
    a = np.zeros((40, 20, 20), np.float32)
    for z0 in range(3, 40 - 4, 10):
        a[z0:z0 + 4] = 1000.0
    return Volume(a, spacing=(spacing,) * 3)


def test_bone_panel_values_table_maps_and_histograms(headless):
    from MorphometrySceneLogic import MorphometrySceneLogic

    logic = MorphometrySceneLogic(headless.scene)
    node = mrml.volume_to_node(plates(), headless.scene, "plates")
    out = logic.computeBone(node, threshold=500)
    assert out["values"]["BV/TV"] == pytest.approx((plates().array > 0).mean())
    assert out["values"]["Tb.Th [mm]"] == pytest.approx(0.4, rel=0.01)
    rows = mrml.rows_from_table(out["table"])
    assert rows[0]["volume"] == "plates" and "Tb.Th [mm]" in rows[0]
    assert set(out["maps"]) == {"Tb.Th", "Tb.Sp"}
    tmap = mrml.node_to_volume(out["maps"]["Tb.Th"])
    assert tmap.same_geometry(plates()) and tmap.array.max() == pytest.approx(0.4, rel=0.01)
    assert out["chart"].GetNumberOfPlotSeriesNodes() == 2
    series = {out["chart"].GetNthPlotSeriesNode(i).GetName(): out["chart"].GetNthPlotSeriesNode(i) for i in range(2)}
    tbth = series["Tb.Th (mm)"]
    assert tbth.GetPlotType() == tbth.PlotTypeScatterBar  # Slicer's PlotTypeBar would drop the mm axis
    data = mrml.rows_from_table(headless.scene.GetNodeByID(tbth.GetTableNodeID()))
    x = [r[tbth.GetXColumnName()] for r in data]
    peak = max(data, key=lambda r: r["Tb.Th (mm)"])[tbth.GetXColumnName()]
    assert peak == pytest.approx(0.4, abs=0.03) and min(x) < 0.4 < max(x)  # bins on the mm axis, the plates' 0.4 mm
    again = logic.computeBone(node, threshold=500, tableNode=out["table"], thicknessMaps=False)
    assert again["table"].GetNumberOfRows() == 2 and again["maps"] == {}


def test_bone_panel_with_roi_segment_and_bad_mask(headless):
    from MorphometrySceneLogic import MorphometrySceneLogic

    logic = MorphometrySceneLogic(headless.scene)
    img = plates()
    node = mrml.volume_to_node(img, headless.scene, "plates")
    roi = np.zeros(img.shape, np.int16)
    roi[:, 5:15, 5:15] = 1
    seg = mrml.labelmap_to_segmentation(img.with_array(roi, label_scheme="aydin7"), "aydin7", headless.scene, "roi")
    seg_id = seg.GetSegmentation().GetNthSegmentID(0)
    inside = logic.computeBone(node, threshold=500, maskNode=seg, segmentId=seg_id, thicknessMaps=False)
    assert inside["values"]["TV [mm^3]"] == pytest.approx(roi.sum() * 0.001, rel=1e-6)
    other = mrml.volume_to_node(Volume(np.ones((4, 4, 4), np.uint8), spacing=(0.1,) * 3), headless.scene, "m",
                                labelmap=True)
    with pytest.raises(VolGANError, match="grid differs from the image"):
        logic.computeBone(node, threshold=500, maskNode=other)
    with pytest.raises(VolGANError, match="choose a segment"):
        logic.computeBone(node, threshold=500, maskNode=seg)


def test_bone_panel_bonej_mode_passes_through(headless, tmp_path):
    from MorphometrySceneLogic import MorphometrySceneLogic

    a = np.zeros((4, 13, 13), np.float32)
    a[:, 3:10, 3:10] = 1000.0  # a 7 × 7 square rod: BoneJ's clean-up lifts its corner columns from 6 to 8 voxels
    img = Volume(a, spacing=(0.1,) * 3)
    logic = MorphometrySceneLogic(headless.scene)
    node = mrml.volume_to_node(img, headless.scene, "rod")
    plain = logic.computeBone(node, threshold=500, parameters=["Tb.Th"], thicknessMaps=False)
    bonej = logic.computeBone(node, threshold=500, parameters=["Tb.Th"], thicknessMaps=False, bonej=True)
    assert plain["values"]["Tb.Th [mm]"] == pytest.approx(0.1 * (45 * 8 + 4 * 6) / 49)
    assert bonej["values"]["Tb.Th [mm]"] == pytest.approx(0.8)
    write_volume(img, tmp_path / "in" / "rod.nrrd")
    table = logic.batchBone(tmp_path / "in", tmp_path / "out.csv", threshold=500, parameters=["Tb.Th"], bonej=True)
    assert mrml.rows_from_table(table)[0]["Tb.Th [mm]"] == pytest.approx(0.8)


def test_threshold_preview_updates_one_node(headless):
    from MorphometrySceneLogic import MorphometrySceneLogic

    logic = MorphometrySceneLogic(headless.scene)
    node = mrml.volume_to_node(plates(), headless.scene, "plates")
    prev = logic.thresholdPreview(node, 500)
    assert mrml.node_to_volume(prev).array.sum() == (plates().array >= 500).sum()
    same = logic.thresholdPreview(node, 2000, previewNode=prev)
    assert same is prev and mrml.node_to_volume(prev).array.sum() == 0


def test_batch_writes_csv_and_table(headless, tmp_path):
    from MorphometrySceneLogic import MorphometrySceneLogic

    for k in range(3):
        write_volume(plates(), tmp_path / "in" / f"p{k}.nrrd")
    table = MorphometrySceneLogic(headless.scene).batchBone(tmp_path / "in", tmp_path / "out.csv", threshold=500)
    assert table.GetNumberOfRows() == 3
    with open(tmp_path / "out.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and float(rows[0]["BV/TV"]) == pytest.approx((plates().array > 0).mean())


def test_vessel_panel_on_real_topcow_labels(headless):
    from MorphometrySceneLogic import MorphometrySceneLogic

    labels = read_label_volume(shared_file("data", "topcow", "topcow_mr_roi_003_labels.nii.gz"), scheme="topcow13")
    node = mrml.volume_to_node(labels, headless.scene, "cow", labelmap=True)
    out = MorphometrySceneLogic(headless.scene).computeVessels(node)
    rows = mrml.rows_from_table(out["table"])
    present = {r["artery"] for r in rows if r["present"] == 1}
    assert present == {r["artery"] for r in out["rows"] if r["present"]}
    assert "BA" in present and all(r["length [mm]"] > 0 for r in rows if r["present"] == 1)
    vrow = mrml.rows_from_table(out["variantTable"])[0]
    assert [vrow[f"anterior {n}"] for n in out["variants"]["anterior_names"]] == out["variants"]["anterior"]
    # the segmentation route gives the same per-artery table
    seg = mrml.labelmap_to_segmentation(labels, "topcow13", headless.scene, "cowseg")
    img = mrml.volume_to_node(labels.with_array(labels.array.astype(np.float32), label_scheme=None), headless.scene, "ref")
    via_seg = MorphometrySceneLogic(headless.scene).computeVessels(seg, imageNode=img)
    assert [r["volume [mm^3]"] for r in via_seg["rows"]] == [r["volume [mm^3]"] for r in out["rows"]]
