"""MRML-level logic of the VolumetricGAN module: no Qt, so it runs in Slicer and headless (slicer-core).

The module's ``VolumetricGANLogic`` (VolumetricGAN.py) inherits these methods, so they are callable from
the Python console, e.g. ``slicer.util.getModuleLogic("VolumetricGAN").loadPhantom("cow", seed=3)``.
"""

from __future__ import annotations

from VolGANCore import VolGANError, mrml

PHANTOM_KINDS = ("cow", "bone")


class VolumetricGANSceneLogic:
    """Scene-facing operations of the VolumetricGAN panel."""

    def __init__(self, scene=None):
        self._scene = scene

    @property
    def scene(self):
        if self._scene is not None:
            return self._scene
        import slicer

        return slicer.mrmlScene

    def loadPhantom(self, kind: str = "cow", seed: int = 0, name: str | None = None):
        """Generate a built-in phantom locally and add it to the scene.

        ``cow``: a TOF-MRA-like Circle-of-Willis volume and a segmentation with the TopCoW artery names and
        colours. ``bone``: a trabecular-bone patch in the MICCAI 2020 density units and its ground-truth
        mask as a labelmap. Returns ``(image_node, label_node, parameters)``; the phantom's sampled
        parameters are stored as a JSON attribute ``VolumetricGAN.PhantomParameters`` on the image node.
        """
        import json

        from VolumetricGANLib.phantoms import make_bone_phantom, make_cow_phantom

        if kind not in PHANTOM_KINDS:
            raise VolGANError(f"phantom kind '{kind}': choose one of {PHANTOM_KINDS}")
        name = name or f"{kind}_phantom_{seed:03d}"
        if kind == "cow":
            image, labels, params = make_cow_phantom(seed)
            image_node = mrml.volume_to_node(image, self.scene, name=name)
            label_node = mrml.labelmap_to_segmentation(labels, "topcow13", self.scene, name=f"{name}_arteries")
        else:
            image, mask, params = make_bone_phantom(seed)
            image_node = mrml.volume_to_node(image, self.scene, name=name)
            label_node = mrml.volume_to_node(mask, self.scene, name=f"{name}_mask", labelmap=True)
        image_node.SetAttribute("VolumetricGAN.PhantomParameters", json.dumps(params, default=str))
        return image_node, label_node, params
