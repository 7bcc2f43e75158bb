"""MRML-level logic of the MorphometryLogic module: no Qt, so it runs in Slicer and headless (slicer-core).

The module's logic class (MorphometryLogic.py) inherits these methods, so they are callable from the Python
console, e.g. ``slicer.util.getModuleLogic("MorphometryLogic").computeBone(volumeNode, threshold=225)``.
All measures come from :mod:`MorphometryLib`; this file only moves data between nodes and that library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from VolGANCore import VolGANError, mrml


class MorphometrySceneLogic(mrml.SceneLogic):
    """Scene-facing operations of the Morphometry panel."""

    # -- inputs -------------------------------------------------------------------------------------------
    def _mask(self, image, maskNode=None, segmentId: Optional[str] = None):
        """A region of interest from a labelmap node (non-zero) or one segment of a segmentation node."""
        if maskNode is None:
            return None
        if maskNode.IsA("vtkMRMLSegmentationNode"):
            if not segmentId:
                raise VolGANError(f"segmentation '{maskNode.GetName()}': choose a segment as the region of interest")
            return mrml.segment_to_mask(maskNode, segmentId, image)
        mask = mrml.node_to_volume(maskNode)
        if not mask.same_geometry(image):
            raise VolGANError(f"mask '{maskNode.GetName()}': its grid differs from the image "
                              f"({mask.shape} vs {image.shape} voxels, or spacing/origin); resample it first")
        return mask

    def thresholdPreview(self, volumeNode, threshold: float, previewNode=None):
        """A labelmap node ``volume ≥ threshold`` (created or updated) for the live threshold preview."""
        image = mrml.node_to_volume(volumeNode)
        mask = image.with_array((image.array >= threshold).astype(np.uint8), label_scheme=None)
        node = mrml.volume_to_node(mask, self.scene, name=f"{volumeNode.GetName()} ≥ {threshold:g}", labelmap=True,
                                   node=previewNode)
        return node

    # -- bone ---------------------------------------------------------------------------------------------
    def computeBone(self, volumeNode, threshold=None, otsu: bool = False, maskNode=None, segmentId=None,
                    parameters: Optional[Iterable[str]] = None, tableNode=None, thicknessMaps: bool = True,
                    histograms: bool = True, bonej: bool = False, progress=None, cancel=None):
        """Bone micro-structure of one volume node (``bonej``: Tb.Th/Tb.Sp as BoneJ Thickness reports them).

        Returns ``{"values": dict, "table": node, "maps": {"Tb.Th": node, "Tb.Sp": node}, "chart": node}``.
        The table gets one row per call (appended to ``tableNode`` when given), units in column names;
        thickness maps are volume nodes coloured with a rainbow table; the chart holds their histograms.
        """
        from MorphometryLib import bone_morphometry

        image = mrml.node_to_volume(volumeNode)
        mask = self._mask(image, maskNode, segmentId)
        result = bone_morphometry(image, mask=mask, threshold=threshold, otsu=otsu, parameters=parameters,
                                  return_maps=thicknessMaps, bonej=bonej, progress=progress, cancel=cancel)
        values, maps = result if thicknessMaps else (result, {})
        row = {"volume": volumeNode.GetName(), **values}
        table = self._append_row(row, tableNode, "Bone morphometry")
        out = {"values": values, "table": table, "maps": {}, "chart": None}
        series = {}
        for key, vol in maps.items():
            node = mrml.volume_to_node(vol, self.scene, name=f"{volumeNode.GetName()} {key} map (mm)")
            display = node.GetDisplayNode()
            if display is not None:
                display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeRainbow")
                display.SetAutoWindowLevel(True)
            out["maps"][key] = node
            if histograms:
                vals = vol.array[vol.array > 0]
                if vals.size:
                    counts, edges = np.histogram(vals, bins=24)
                    series[f"{key} (mm)"] = ((edges[:-1] + edges[1:]) / 2, counts / counts.sum())
        if series:
            out["chart"] = mrml.plot_chart(series, self.scene, name=f"{volumeNode.GetName()} thickness histograms",
                                           x_label="thickness (mm)", y_label="fraction of voxels", plot_type="bar")
        return out

    def _append_row(self, row: dict, tableNode, name: str):
        rows = mrml.rows_from_table(tableNode) if tableNode is not None else []
        rows.append(row)
        return mrml.table_from_rows(rows, self.scene, name=name, node=tableNode)

    def batchBone(self, folder, csvPath, threshold=None, otsu: bool = False, parameters=None, progress=None,
                  cancel=None, tableNode=None, bonej: bool = False):
        """Bone morphometry of every volume in ``folder``: a CSV file (written atomically) and a table node."""
        from MorphometryLib import batch_bone_morphometry, write_rows_csv

        rows = batch_bone_morphometry(folder, threshold=threshold, otsu=otsu, parameters=parameters,
                                      bonej=bonej, progress=progress, cancel=cancel)
        write_rows_csv(rows, csvPath)
        return mrml.table_from_rows(rows, self.scene, name=f"Bone morphometry of {Path(folder).name}", node=tableNode)

    # -- vessels ------------------------------------------------------------------------------------------
    def computeVessels(self, labelNode, imageNode=None, tableNode=None, variantTableNode=None):
        """Per-artery morphometry and the TopCoW variant vectors of a CoW label map or segmentation node.

        Returns ``{"rows": list, "variants": dict, "table": node, "variantTable": node}``.
        """
        from MorphometryLib import cow_variants, vessel_morphometry

        image = mrml.node_to_volume(imageNode) if imageNode is not None else None
        if labelNode.IsA("vtkMRMLSegmentationNode"):
            if image is None:
                raise VolGANError("a segmentation needs a reference image (the angiogram) to be turned into labels")
            labels = mrml.segmentation_to_labelmap(labelNode, image, scheme="topcow13")
        else:
            labels = mrml.node_to_volume(labelNode)
            labels.label_scheme = "topcow13"
        rows = vessel_morphometry(labels, image=image)
        variants = cow_variants(labels)
        table = mrml.table_from_rows(rows, self.scene, name=f"{labelNode.GetName()} arteries", node=tableNode)
        vrows = [{"label map": labelNode.GetName(),
                  **{f"anterior {n}": v for n, v in zip(variants["anterior_names"], variants["anterior"])},
                  **{f"posterior {n}": v for n, v in zip(variants["posterior_names"], variants["posterior"])}}]
        vtable = mrml.table_from_rows(vrows, self.scene, name=f"{labelNode.GetName()} CoW variants",
                                      node=variantTableNode)
        return {"rows": rows, "variants": variants, "table": table, "variantTable": vtable}
