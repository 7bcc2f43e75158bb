"""MRML-level logic of the VolumetricGAN module: no Qt, so it runs in Slicer and headless (slicer-core).

The module's ``VolumetricGANLogic`` (VolumetricGAN.py) inherits these methods, so they are callable from
the Python console, e.g. ``slicer.util.getModuleLogic("VolumetricGAN").loadPhantom("cow", seed=3)``.
"""

from __future__ import annotations

import json

from VolGANCore import VolGANError, mrml

PHANTOM_KINDS = ("cow", "bone")
GENERATION_MODES = ("sample", "interpolate", "variation", "mix")


class VolumetricGANSceneLogic(mrml.SceneLogic):
    """Scene-facing operations of the VolumetricGAN panel."""

    def __init__(self, scene=None):
        super().__init__(scene)
        self._models: dict = {}  # checkpoint path -> (model, config, mtime): loaded once per file version

    def loadPhantom(self, kind: str = "cow", seed: int = 0, name: str | None = None):
        """Generate a built-in phantom locally and add it to the scene.

        ``cow``: a TOF-MRA-like Circle-of-Willis volume and a segmentation with the TopCoW artery names and
        colours. ``bone``: a trabecular-bone patch in the MICCAI 2020 density units and its ground-truth
        mask as a labelmap. Returns ``(image_node, label_node, parameters)``; the phantom's sampled
        parameters are stored as a JSON attribute ``VolumetricGAN.PhantomParameters`` on the image node.
        """
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

    # -- models ------------------------------------------------------------------------------------------
    @staticmethod
    def defaultModelsFolder():
        from pathlib import Path

        return Path.home() / ".volgan" / "models"

    def importPublishedModel(self, path, modelsFolder=None, fmt=None, **options):
        """Convert published weights (format detected safely unless ``fmt`` is given) into ``modelsFolder``.

        Returns the written ``.vgan`` path; its model card (provenance, licence) is written beside it.
        """
        from pathlib import Path

        from VolumetricGANLib.importers import detect_format, import_model

        src = Path(path)
        fmt = fmt or detect_format(src)
        folder = Path(modelsFolder) if modelsFolder else self.defaultModelsFolder()
        folder.mkdir(parents=True, exist_ok=True)
        stem = src.name.split(".")[0]
        out = folder / f"{fmt}-{stem}.vgan"
        return import_model(fmt, src, out, **options)

    # -- generation --------------------------------------------------------------------------------------
    def loadModel(self, checkpoint, device: str = "auto"):
        """The generator and config of a ``.vgan`` file, cached until the file changes."""
        import os

        from VolumetricGANLib.checkpoint import load_generator

        key = (os.path.abspath(str(checkpoint)), device)
        mtime = os.path.getmtime(checkpoint) if os.path.exists(checkpoint) else None
        cached = self._models.get(key)
        if cached is None or cached[2] != mtime:
            model, config = load_generator(checkpoint, device=device)
            self._models[key] = (model, config, mtime)
        return self._models[key][:2]

    def generateVolumes(self, checkpoint, mode: str = "sample", n: int = 4, seed: int = 0, truncation=None,
                        noise=None, seedB: int = 1, cutoff: int = 4, steps: int = 8, device: str = "auto",
                        progress=None, cancel=None, name=None):
        """Generate into the scene; returns ``{"volumes": [nodes], "sequence": node|None, "table": node}``.

        ``sample``: ``n`` volumes, row ``index`` of the latents drawn from ``seed`` (same seed and n, same
        volumes; ``latents.npz`` of a CLI run reproduces any single one);
        ``interpolate``: ``steps`` volumes from ``seed`` to ``seedB`` (slerp in z / lerp in w) as a sequence
        node browsable with the Sequences toolbar; ``variation``: ``n`` noise draws for one w; ``mix``: the
        coarse styles of ``seed`` with the fine styles of ``seedB`` from layer ``cutoff``. The table lists
        each volume with its mode, seed and index (and, for spongiosa, the measured micro-structure once
        steering lands).
        """
        from VolumetricGANLib import generate as gen

        if mode not in GENERATION_MODES:
            raise VolGANError(f"generation mode '{mode}': choose one of {GENERATION_MODES}")
        model = self.loadModel(checkpoint, device)
        common = dict(device=device, progress=progress, cancel=cancel)
        if mode == "sample":
            result = gen.generate(model, n=n, seed=seed, truncation=truncation, noise=noise, **common)
        elif mode == "interpolate":
            result = gen.interpolate(model, steps=steps, seeds=[seed, seedB], truncation=truncation, noise=noise,
                                     **common)
        elif mode == "variation":
            result = gen.variation(model, k=n, seed=seed, truncation=truncation, **common)
        else:
            result = gen.mix(model, seed_a=seed, seeds_b=[seedB], cutoff=cutoff, truncation=truncation,
                             noise=noise, **common)
        volumes, _latents = result
        config = model[1]
        name = name or (config.get("name") or "generated")
        out = {"volumes": [], "sequence": None, "table": None}
        if mode == "interpolate":
            seq, _browser = mrml.volumes_to_sequence(volumes, self.scene, name=f"{name} interpolation {seed}-{seedB}",
                                                     index_name="t", index_values=[k / max(1, len(volumes) - 1)
                                                                                   for k in range(len(volumes))])
            out["sequence"] = seq
        else:
            for k, vol in enumerate(volumes):
                out["volumes"].append(mrml.volume_to_node(vol, self.scene, name=f"{name} {mode} {seed}-{k}"))
        rows = [{"mode": mode, "index": k, "seed": seed,
                 "checkpoint": str(checkpoint), "units": config["intensity"].get("units", ""),
                 "min": float(v.array.min()), "max": float(v.array.max())} for k, v in enumerate(volumes)]
        out["table"] = mrml.table_from_rows(rows, self.scene, name=f"{name} {mode} results")
        return out

    def invertVolume(self, checkpoint, volumeNode, space: str = "auto", steps: int = 300, resample: bool = False,
                     device: str = "auto", progress=None, cancel=None):
        """Project a volume node into the model's latent space; returns ``(reconstruction node, info dict)``.

        The reconstruction lands on the model grid (the input's own grid when it already matches); ``info``
        holds PSNR, NCC and RMSE in physical units and, with ``resample=True``, what was resampled.
        """
        from VolumetricGANLib.invert import invert

        model = self.loadModel(checkpoint, device)
        result = invert(model, mrml.node_to_volume(volumeNode), space=space, steps=steps, resample=resample,
                        device=device, progress=progress, cancel=cancel)
        node = mrml.volume_to_node(result.volume, self.scene, name=f"{volumeNode.GetName()} inverted ({result.space})")
        node.SetAttribute("VolumetricGAN.Inversion", json.dumps(result.info))
        return node, result.info
