"""MRML-level logic of the VolumetricGAN module: no Qt, so it runs in Slicer and headless (slicer-core).

The module's ``VolumetricGANLogic`` (VolumetricGAN.py) inherits these methods, so they are callable from
the Python console, e.g. ``slicer.util.getModuleLogic("VolumetricGAN").loadPhantom("cow", seed=3)``.

Volumes this module generates or steers carry their latent z (``VolumetricGAN.latent``, comma-separated) and
their checkpoint (``VolumetricGAN.checkpoint``), so *simulate change* starts from the sample itself instead
of an inversion.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np

from VolGANCore import VolGANError, mrml
from VolumetricGANLib.steer import STEERABLE, steering_support   # torch-free: the panel builds without torch

PHANTOM_KINDS = ("cow", "bone")
GENERATION_MODES = ("sample", "interpolate", "variation", "mix")

# steerable micro-structure parameters (the library's own list) and their units
STEERING_PARAMETERS = tuple(STEERABLE)
STEERING_UNITS = {"BV/TV": "", "BMD": "image units", "TMD": "image units", "Tb.Th": "mm", "Tb.Sp": "mm",
                  "Tb.N": "1/mm", "DA": ""}
LATENT_ATTRIBUTE = "VolumetricGAN.latent"
CHECKPOINT_ATTRIBUTE = "VolumetricGAN.checkpoint"
# whether a model can be steered, from its config alone (no torch): one rule for the library, CLI and panel
steeringSupport = steering_support


def _parameterName(key) -> str:
    """``"Tb.Th"`` or ``"Tb.Th [mm]"`` → ``"Tb.Th"``; anything else is refused with the known names."""
    name = str(key).split("[")[0].strip()
    if name not in STEERING_PARAMETERS:
        raise VolGANError(f"steering parameter '{key}': choose from {', '.join(STEERING_PARAMETERS)}")
    return name


def _unitSuffix(name: str) -> str:
    unit = STEERING_UNITS[name]
    return f" [{unit}]" if unit else ""


def _latentText(z) -> str:
    return ",".join(f"{float(v):.9g}" for v in np.asarray(z, dtype=np.float64).reshape(-1))


def _within(value: float, target: float, tolerance: float) -> bool:
    """The success rule of steering: the exact value is within ``tolerance`` (relative) of the target."""
    return bool(np.isfinite(value) and abs(value - target) <= tolerance * abs(target))


def _sameFile(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(str(a)) == os.path.abspath(str(b))


class VolumetricGANSceneLogic(mrml.SceneLogic):
    """Scene-facing operations of the VolumetricGAN panel."""

    def __init__(self, scene=None):
        super().__init__(scene)
        self._models: dict = {}  # (checkpoint path, device) -> (LoadedModel, mtime): loaded once per file version
        self._modelInfos: dict = {}  # (checkpoint path, mtime) -> modelInfo(): configs read once per file version

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
        """The :class:`~VolumetricGANLib.checkpoint.LoadedModel` of a ``.vgan`` file, cached until the file changes."""
        import os

        from VolumetricGANLib.checkpoint import load_generator

        key = (os.path.abspath(str(checkpoint)), device)
        mtime = os.path.getmtime(checkpoint) if os.path.exists(checkpoint) else None
        cached = self._models.get(key)
        if cached is None or cached[1] != mtime:
            self._models[key] = (load_generator(checkpoint, device=device), mtime)
        return self._models[key][0]

    def generateVolumes(self, checkpoint, mode: str = "sample", n: int = 4, seed: int = 0, truncation=None,
                        noise=None, seedB: int = 1, cutoff: int = 4, steps: int = 8, device: str = "auto",
                        progress=None, cancel=None, name=None, variant=None):
        """Generate into the scene; returns ``{"volumes": [nodes], "segmentations": [nodes], "sequence": node|None,
        "table": node}``.

        ``sample``: ``n`` volumes, row ``index`` of the latents drawn from ``seed`` (same seed and n, same
        volumes; ``latents.npz`` of a CLI run reproduces any single one);
        ``interpolate``: ``steps`` volumes from ``seed`` to ``seedB`` (slerp in z / lerp in w) as a sequence
        node browsable with the Sequences toolbar; ``variation``: ``n`` noise draws for one w; ``mix``: the
        coarse styles of ``seed`` with the fine styles of ``seedB`` from layer ``cutoff``. Volume nodes carry
        their checkpoint (``VolumetricGAN.checkpoint``) and, in ``sample`` mode, their latent z
        (``VolumetricGAN.latent``), from which :meth:`simulateChange` starts. The table lists
        each volume with its mode, seed and index (and, for spongiosa, the measured micro-structure once
        steering lands). A joint image + label model's generated labels become one segmentation node per
        volume (TopCoW names and colours); a model conditioned on the CoW variant samples ``variant``
        (``"posterior=0,1,1,1"``…; default: the training frequencies), listed per volume in the table.
        """
        from VolumetricGANLib import generate as gen

        if mode not in GENERATION_MODES:
            raise VolGANError(f"generation mode '{mode}': choose one of {GENERATION_MODES}")
        model = self.loadModel(checkpoint, device)
        common = dict(device=device, progress=progress, cancel=cancel)
        if variant and mode != "sample":
            raise VolGANError(f"a CoW variant can be chosen in sample mode only (not {mode})")
        if mode == "sample":
            result = gen.generate(model, n=n, seed=seed, truncation=truncation, noise=noise, variant=variant or None,
                                  **common)
        elif mode == "interpolate":
            result = gen.interpolate(model, steps=steps, seeds=[seed, seedB], truncation=truncation, noise=noise,
                                     **common)
        elif mode == "variation":
            result = gen.variation(model, k=n, seed=seed, truncation=truncation, **common)
        else:
            result = gen.mix(model, seed_a=seed, seeds_b=[seedB], cutoff=cutoff, truncation=truncation,
                             noise=noise, **common)
        volumes, _latents = result
        config = model.config
        source = str(Path(checkpoint).resolve())
        name = name or (config.get("name") or "generated")
        out = {"volumes": [], "segmentations": [], "sequence": None, "table": None}
        if mode == "interpolate":
            seq, _browser = mrml.volumes_to_sequence(volumes, self.scene, name=f"{name} interpolation {seed}-{seedB}",
                                                     index_name="t", index_values=[k / max(1, len(volumes) - 1)
                                                                                   for k in range(len(volumes))])
            out["sequence"] = seq
        else:
            for k, vol in enumerate(volumes):
                node = mrml.volume_to_node(vol, self.scene, name=f"{name} {mode} {seed}-{k}")
                node.SetAttribute(CHECKPOINT_ATTRIBUTE, source)
                if mode == "sample":  # G(z) alone reproduces it: simulate change can start from z
                    node.SetAttribute(LATENT_ATTRIBUTE, _latentText(result.z[k]))
                out["volumes"].append(node)
                if result.labels is not None:  # a joint model's own labels, as TopCoW segments
                    out["segmentations"].append(mrml.labelmap_to_segmentation(
                        result.labels[k], scene=self.scene, name=f"{name} {mode} {seed}-{k} labels"))
        rows = [{"mode": mode, "index": k, "seed": seed,
                 "checkpoint": str(checkpoint), "units": config["intensity"].get("units", ""),
                 "min": float(v.array.min()), "max": float(v.array.max())} for k, v in enumerate(volumes)]
        if result.variants is not None:
            for row, v in zip(rows, result.variants):
                row["anterior (L-A1, Acom, 3rd-A2, R-A1)"] = ",".join(str(int(b)) for b in v[:4])
                row["posterior (L-Pcom, L-P1, R-P1, R-Pcom)"] = ",".join(str(int(b)) for b in v[4:])
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

    # -- model catalogue ---------------------------------------------------------------------------------
    @staticmethod
    def shippedModelsFolders() -> list:
        """Folders searched for models that ship with the extension (``Resources/Models``)."""
        here = Path(__file__).resolve().parent
        return [here / "Resources" / "Models", here.parent / "Resources" / "Models"]

    def modelInfo(self, checkpoint) -> dict:
        """What a ``.vgan`` is, from its config alone: name, family, anatomy, shape, spacing, units, steerability.

        Only the config is read (:func:`VolumetricGANLib.checkpoint.read_config`: no tensor, no PyTorch), so the
        panel lists models before PyTorch is installed. Cached until the file changes.
        """
        from VolumetricGANLib.checkpoint import card_path, generates_labels, is_conditional, read_config

        path = Path(checkpoint)
        if not path.is_file():
            raise VolGANError(f"{path}: model file not found")
        key = (os.path.abspath(path), os.path.getmtime(path))
        if key in self._modelInfos:
            return dict(self._modelInfos[key])
        config = read_config(path)
        ok, note = steeringSupport(config)
        card = card_path(path)
        info = {"path": path, "card": card if card.is_file() else None, "name": config.get("name") or path.stem,
                "family": config["family"], "anatomy": config.get("anatomy") or "",
                "outputShape": tuple(int(s) for s in config["output_shape"]),
                "spacing": tuple(float(s) for s in config["spacing"]),
                "units": config["intensity"].get("units", ""), "labelScheme": config.get("label_scheme"),
                "styleControls": "stylegan" in str(config["family"]).lower(),  # truncation, noise, variation, mix
                "steerable": ok and not note, "steeringNote": note,  # the panel steers bone models only
                "labels": generates_labels(config),      # joint image + label model: a segmentation per volume
                "conditional": is_conditional(config)}  # CoW variant choice
        self._modelInfos[key] = info
        return dict(info)

    def shippedModels(self, folders=None) -> dict:
        """``{name: info}`` of the ``.vgan`` models found, each with its model card (``info["card"]``) if present.

        ``folders`` default to the extension's ``Resources/Models`` and the user models folder
        (:meth:`defaultModelsFolder`, where imports land); missing folders are skipped. ``info`` is
        :meth:`modelInfo` (``path``, ``family``, ``anatomy``, ``steerable``, …); a file that cannot be read
        is listed with ``info["error"]`` instead. A name found twice is qualified by its folder.
        """
        if folders is None:
            folders = [*self.shippedModelsFolders(), self.defaultModelsFolder()]
        elif isinstance(folders, (str, os.PathLike)):
            folders = [folders]
        found: dict = {}
        seen = set()
        for folder in folders:
            folder = Path(folder)
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.vgan")):
                real = os.path.realpath(path)
                if real in seen:
                    continue
                seen.add(real)
                name = path.name[: -len(".vgan")]
                if name in found:
                    name = f"{name} ({folder.name})"
                try:
                    found[name] = self.modelInfo(path)
                except VolGANError as exc:
                    from VolumetricGANLib.checkpoint import card_path

                    card = card_path(path)
                    found[name] = {"path": path, "card": card if card.is_file() else None, "error": str(exc),
                                   "steerable": False}
        return found

    def shippedModelFor(self, anatomy: str, folders=None, labels: bool = False) -> dict:
        """``modelInfo`` of the extension's shipped model of ``anatomy`` (``"circle-of-willis"`` or
        ``"spongiosa"``): an image-only one, or with ``labels`` a joint image + label one; the full-preset model
        is preferred to a tiny one. ``folders`` default to :meth:`shippedModelsFolders` (not the user's models)."""
        folders = self.shippedModelsFolders() if folders is None else folders
        found = [info for info in self.shippedModels(folders).values()
                 if "error" not in info and info["anatomy"] == anatomy and info["labels"] == bool(labels)]
        if not found:
            where = ", ".join(str(f) for f in ([folders] if isinstance(folders, (str, os.PathLike)) else folders))
            raise VolGANError(f"no shipped {anatomy} model{' with labels' if labels else ''} in {where}; reinstall "
                              f"the extension, or train one with `volgan train` and load its checkpoint in the "
                              f"VolumetricGAN module")
        return sorted(found, key=lambda info: (info["name"].startswith("tiny"), info["name"]))[0]

    def loadShippedSample(self, anatomy: str, seed: int = 0, folders=None, labels: bool = False):
        """One volume sampled (``seed``) from the shipped model of ``anatomy`` into the scene (what the Sample
        Data module's VolumetricGAN entries load); returns the volume node. With ``labels``, from the joint
        model: its generated labels land beside the volume as a segmentation node (TopCoW names and colours)."""
        info = self.shippedModelFor(anatomy, folders, labels)
        return self.generateVolumes(info["path"], mode="sample", n=1, seed=seed, device="cpu")["volumes"][0]

    # -- steering ----------------------------------------------------------------------------------------
    @staticmethod
    def _checkSteering(n: int, tolerance: float, steps: int, checkEvery: int) -> None:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise VolGANError(f"steering: samples {n!r}: expected at least 1")
        if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
            raise VolGANError(f"steering: tolerance {tolerance!r}: expected a fraction in (0, 1), e.g. 0.05 for 5 %")
        if not isinstance(steps, (int, np.integer)) or steps < 1:
            raise VolGANError(f"steering: steps {steps!r}: expected at least 1")
        if not isinstance(checkEvery, (int, np.integer)) or checkEvery < 1:
            raise VolGANError(f"steering: checkEvery {checkEvery!r}: expected at least 1")

    @staticmethod
    def _checkTargets(targets) -> dict:
        if not targets or not hasattr(targets, "items"):
            raise VolGANError("steering: give targets as {parameter: value}, e.g. {'BV/TV': 0.22, 'Tb.Th': 0.4}")
        out = {}
        for key, value in targets.items():
            name = _parameterName(key)
            try:
                v = np.asarray(value, dtype=float)
            except (TypeError, ValueError):
                raise VolGANError(f"steering target {name}={value!r}: expected a number in "
                                  f"{STEERING_UNITS[name] or 'units of the parameter'}") from None
            if v.ndim > 1 or not np.all(np.isfinite(v)) or (name != "BMD" and np.any(v <= 0)):
                raise VolGANError(f"steering target {name}={value!r}: expected a finite"
                                  f"{'' if name == 'BMD' else ' positive'} number")
            out[name] = float(v) if v.ndim == 0 else v
        return out

    @staticmethod
    def _checkChanges(changes) -> tuple[dict, list]:
        """Percent changes ``{"BV/TV": -20}`` (or ``"-20%"``) → (non-zero changes as fractions, zero-change names)."""
        if not changes or not hasattr(changes, "items"):
            raise VolGANError("simulate change: give changes in percent as {parameter: percent}, e.g. {'BV/TV': -20}")
        fractions, zero = {}, []
        for key, value in changes.items():
            name = _parameterName(key)
            text = str(value).strip().rstrip("%").strip() if isinstance(value, str) else value
            try:
                pct = float(text)
            except (TypeError, ValueError):
                raise VolGANError(f"simulate change {name}={value!r}: expected a change in percent, e.g. -20") from None
            if not math.isfinite(pct) or pct <= -100:
                raise VolGANError(f"simulate change {name}={value!r}: expected a finite change above -100 %")
            if pct == 0:
                zero.append(name)
            else:
                fractions[name] = pct / 100.0
        if not fractions:
            raise VolGANError("simulate change: every change is 0 %; give at least one non-zero change")
        return fractions, zero

    def _steeringModel(self, checkpoint, device):
        model = self.loadModel(checkpoint, device)
        ok, note = steeringSupport(model.config)
        if not ok:
            raise VolGANError(f"{checkpoint}: {note}")
        threshold = float((model.config.get("defaults") or {}).get("bone_threshold", 225.0))
        return model, threshold, [note] if note else []

    @contextlib.contextmanager
    def _sceneTransaction(self):
        """Nodes added inside are removed again if the block fails: a result appears whole or not at all."""
        scene = self.scene
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        try:
            yield
        except BaseException:
            added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
            for node in reversed([nd for nd in added if nd is not None and nd.GetID() not in before]):
                if scene.IsNodePresent(node):
                    scene.RemoveNode(node)
            raise

    def _steeredNode(self, volume, config, name, checkpoint, z, info):
        from VolGANCore import Volume
        from VolumetricGANLib.generate import volume_geometry

        node = mrml.volume_to_node(Volume(volume.array.astype(np.float32), **volume_geometry(config)),
                                   self.scene, name=name)
        node.SetAttribute(LATENT_ATTRIBUTE, _latentText(z))
        node.SetAttribute(CHECKPOINT_ATTRIBUTE, str(Path(checkpoint).resolve()))
        node.SetAttribute("VolumetricGAN.Steering", json.dumps(info, default=str))
        return node

    def _trajectoryCharts(self, result, prefix: str, checkEvery: int):
        """One table of exact values per check (columns per parameter and sample, with the targets) and one
        plot chart per parameter (solid: exact value at each check; dashed: that sample's target)."""
        slicer = mrml._slicer()
        names = result.info["parameters"]
        checks = len(next(iter(result.trajectories.values())))
        columns = {"check": list(range(checks))}
        for name in names:
            traj = np.asarray(result.trajectories[name], dtype=float)
            for i in range(traj.shape[1]):
                columns[f"{name} exact{_unitSuffix(name)} sample {i}"] = traj[:, i].tolist()
                columns[f"{name} target sample {i}"] = [result.rows[i][f"{name} target"]] * checks
        rows = [{k: v[r] for k, v in columns.items()} for r in range(checks)]
        table = mrml.table_from_rows(rows, self.scene, name=f"{prefix} trajectories")
        charts = {}
        for name in names:
            chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{prefix} {name} trajectory")
            chart.SetTitle(f"{prefix}: {name}")
            chart.SetXAxisTitle(f"check (every {checkEvery} steps; 0 = start)")
            chart.SetYAxisTitle(f"{name} exact{_unitSuffix(name)}")
            for i in range(len(result.rows)):
                exact = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} sample {i}")
                target = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} target {i}")
                for ps, column in ((exact, f"{name} exact{_unitSuffix(name)} sample {i}"),
                                   (target, f"{name} target sample {i}")):
                    ps.SetAndObserveTableNodeID(table.GetID())
                    ps.SetXColumnName("check")
                    ps.SetYColumnName(column)
                    ps.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeLine)
                    chart.AddAndObservePlotSeriesNodeID(ps.GetID())
                exact.SetUniqueColor()
                exact.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
                target.SetColor(exact.GetColor())
                target.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
                target.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            charts[name] = chart
        return table, charts

    def steerVolumes(self, checkpoint, targets: dict, n: int = 4, seed: int = 0, tolerance: float = 0.05,
                     steps: int = 200, checkEvery: int = 20, device: str = "auto", progress=None, cancel=None,
                     namePrefix: str | None = None) -> dict:
        """Generate ``n`` bone samples steered to exact-morphometry ``targets`` (latent optimisation).

        ``targets``: ``{parameter: value}`` in the parameter's units, parameters from
        :data:`STEERING_PARAMETERS` (e.g. ``{"BV/TV": 0.22, "Tb.Th": 0.4, "TMD": 340}``; Tb.Th/Tb.Sp in mm,
        Tb.N in 1/mm, BMD/TMD in the model's image units). A sample succeeds when every exact parameter
        (MorphometryLib, not the differentiable proxy) is within ``tolerance`` (relative) of its target.
        Targets outside what the model generates are clamped, with a warning in ``info["warnings"]``.

        Returns ``{"volumes": [nodes], "table": node, "charts": {parameter: chart}, "chart": first chart,
        "trajectoryTable": node, "info": dict}``: one volume node per sample (model spacing, latent and
        checkpoint as node attributes), a results table with one row per sample (per parameter: target,
        start, proxy and exact value, units in the column names, and whether it is within tolerance; overall
        success), and a plot chart per parameter of the exact value at every check. ``info`` holds the
        success rate, warnings, threshold and seconds. Nothing is added to the scene if the run fails or is
        cancelled.
        """
        from VolumetricGANLib.steer import steer

        targets = self._checkTargets(targets)
        self._checkSteering(n, tolerance, steps, checkEvery)
        model, threshold, warnings = self._steeringModel(checkpoint, device)
        config = model.config
        result = steer(model, targets=targets, n=int(n), seed=int(seed), tolerance=float(tolerance), steps=int(steps),
                       check_every=int(checkEvery), threshold=threshold, device=device, progress=progress,
                       cancel=cancel)
        info = dict(result.info)
        info["warnings"] = warnings + list(result.info.get("warnings") or [])
        info["checkpoint"] = str(checkpoint)
        prefix = namePrefix or f"{config.get('name') or 'model'} steered {seed}"
        with self._sceneTransaction():
            volumes = [self._steeredNode(vol, config, f"{prefix}-{i}", checkpoint, result.latents[i],
                                         {"mode": "targets", "targets": {k: result.rows[i][f"{k} target"]
                                                                         for k in info["parameters"]},
                                          "success": result.rows[i]["success"]})
                       for i, vol in enumerate(result.volumes)]
            table = mrml.table_from_rows(self._steeringRows(result, volumes, tolerance), self.scene,
                                         name=f"{prefix} results")
            trajectories, charts = self._trajectoryCharts(result, prefix, int(checkEvery))
        return {"volumes": volumes, "table": table, "charts": charts, "chart": next(iter(charts.values())),
                "trajectoryTable": trajectories, "info": info}

    @staticmethod
    def _steeringRows(result, volumes, tolerance) -> list:
        rows = []
        for i, (r, node) in enumerate(zip(result.rows, volumes)):
            row = {"sample": i, "volume": node.GetName(), "success": bool(r["success"])}
            for name in result.info["parameters"]:
                unit = _unitSuffix(name)
                target, exact = r[f"{name} target"], r[f"{name} exact"]
                row[f"{name} target{unit}"] = target
                row[f"{name} start{unit}"] = r[f"{name} start (exact)"]
                row[f"{name} proxy{unit}"] = r[f"{name} proxy"]
                row[f"{name} exact{unit}"] = exact
                row[f"{name} within tolerance"] = _within(exact, target, tolerance)
            rows.append(row)
        return rows

    def _startLatent(self, checkpoint, volumeNode, model, device):
        """The z a volume node was generated from, if it still is G(z) of this model; else (None, why not)."""
        from VolumetricGANLib.generate import generate

        text = volumeNode.GetAttribute(LATENT_ATTRIBUTE)
        source = volumeNode.GetAttribute(CHECKPOINT_ATTRIBUTE)
        if not text:
            return None, "the volume was not generated by this module"
        if not source or not _sameFile(source, checkpoint):
            return None, f"the volume was generated by another model ({source})"
        try:
            z = np.array([float(v) for v in text.split(",")], dtype=np.float32)
        except ValueError:
            return None, f"its {LATENT_ATTRIBUTE} attribute is not a list of numbers"
        if z.shape != (int(model.generator.z_dim),) or not np.all(np.isfinite(z)):
            return None, f"its stored latent has {z.size} values, the model needs {model.generator.z_dim}"
        vol = mrml.node_to_volume(volumeNode)
        again = generate(model, latents=z[None], device=device).volumes[0]
        lo, hi = (float(v) for v in model.config["intensity"]["physical_range"])
        if vol.shape != again.shape or not np.allclose(vol.array, again.array, atol=1e-3 * abs(hi - lo), rtol=0):
            return None, "the volume no longer matches its stored latent (edited since it was generated?)"
        return z, ""

    def simulateChange(self, checkpoint, volumeNode, changes: dict, keep=("TMD",), tolerance: float = 0.05,
                       steps: int = 200, checkEvery: int = 20, invertSteps: int = 300, resample: bool = False,
                       device: str = "auto", progress=None, cancel=None, name: str | None = None) -> dict:
        """Apply relative changes in **percent** (e.g. ``{"BV/TV": -20}``, bone loss) to a bone volume node.

        The start is the node's own latent when this module generated or steered it (attribute
        ``VolumetricGAN.latent``, same checkpoint, and the node still equals G(z)); any other volume is first
        inverted into z (``invertSteps`` steps; it must be on the model grid, or pass ``resample=True``).
        The parameters in ``keep`` (and any given a 0 % change) are held at their start values, and the
        appearance by a content term. Returns ``{"volume": node, "table": node, "info": dict}``: the new node
        is named e.g. ``"<name> BV/TV -20%"``; the table has one row per steered parameter (before and after,
        exact; change % and target change %); ``info["start"]`` says where the latent came from
        (``"latent"`` or ``"inversion"``, with the inversion's errors), plus success and warnings.
        """
        from VolumetricGANLib.steer import steer

        fractions, zero = self._checkChanges(changes)
        keep = [_parameterName(k) for k in (keep or ())] + zero
        keep = tuple(dict.fromkeys(k for k in keep if k not in fractions))
        self._checkSteering(1, tolerance, steps, checkEvery)
        if volumeNode is None or not hasattr(volumeNode, "GetImageData"):
            raise VolGANError("simulate change: choose a volume node")
        model, threshold, warnings = self._steeringModel(checkpoint, device)
        config = model.config
        z, why = self._startLatent(checkpoint, volumeNode, model, device)
        start = {"from": "latent", "reason": ""}
        if z is None:
            from VolumetricGANLib.invert import invert

            inverted = invert(model, mrml.node_to_volume(volumeNode), space="z", steps=int(invertSteps),
                              resample=resample, device=device, progress=progress, cancel=cancel)
            z = inverted.latent.astype(np.float32)
            start = {"from": "inversion", "reason": why, "inversion": inverted.info}
        result = steer(model, changes=fractions, latents=z[None], keep=keep, tolerance=float(tolerance),
                       steps=int(steps), check_every=int(checkEvery), threshold=threshold, device=device,
                       progress=progress, cancel=cancel)
        info = dict(result.info)
        info["warnings"] = warnings + list(result.info.get("warnings") or [])
        info["start"] = start
        info["keep"] = list(keep)
        info["checkpoint"] = str(checkpoint)
        label = " ".join(f"{k} {100 * v:+g}%" for k, v in fractions.items())
        name = name or f"{volumeNode.GetName()} {label}"
        r = result.rows[0]
        rows = []
        for p in info["parameters"]:
            before, after, target = r[f"{p} start (exact)"], r[f"{p} exact"], r[f"{p} target"]
            rows.append({"parameter": p, "unit": STEERING_UNITS[p], "before (exact)": before, "after (exact)": after,
                         "change %": 100.0 * (after / before - 1.0) if before else math.nan,
                         "target change %": 100.0 * fractions.get(p, 0.0), "kept": p in keep,
                         "within tolerance": _within(after, target, tolerance)})
        with self._sceneTransaction():
            node = self._steeredNode(result.volumes[0], config, name, checkpoint, result.latents[0],
                                     {"mode": "change", "changes_percent": {k: 100 * v for k, v in fractions.items()},
                                      "keep": list(keep), "from": volumeNode.GetName(), "start": start["from"],
                                      "success": r["success"]})
            table = mrml.table_from_rows(rows, self.scene, name=f"{name} before-after")
        return {"volume": node, "table": table, "info": info}
