"""VolumetricGAN's MRML-level logic on a real (slicer-core) scene: built-in phantoms as nodes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from VolGANCore import TOPCOW13, VolGANError, mrml


def test_cow_phantom_becomes_volume_and_named_segmentation(headless):
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    image, seg, params = VolumetricGANSceneLogic(headless.scene).loadPhantom("cow", seed=2)
    vol = mrml.node_to_volume(image)
    assert vol.shape == (32, 128, 128)
    assert json.loads(image.GetAttribute("VolumetricGAN.PhantomParameters"))["seed"] == 2
    segmentation = seg.GetSegmentation()
    names = {segmentation.GetNthSegment(k).GetName() for k in range(segmentation.GetNumberOfSegments())}
    expected = {TOPCOW13.name_of(i) for i in params["classes_in_label"]}
    assert names == expected and {"BA", "L-ICA", "R-ICA"} <= names


def test_bone_phantom_becomes_volume_and_labelmap(headless):
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    image, mask, params = VolumetricGANSceneLogic(headless.scene).loadPhantom("bone", seed=1)
    assert mask.IsA("vtkMRMLLabelMapVolumeNode")
    m = mrml.node_to_volume(mask).array
    assert m.mean() == pytest.approx(params["measured"]["bvtv"], abs=1e-6)
    assert image.GetSpacing() == pytest.approx((0.164, 0.164, 0.164))


def test_unknown_kind(headless):
    from VolumetricGANSceneLogic import VolumetricGANSceneLogic

    with pytest.raises(VolGANError, match="phantom kind 'lung'"):
        VolumetricGANSceneLogic(headless.scene).loadPhantom("lung")
