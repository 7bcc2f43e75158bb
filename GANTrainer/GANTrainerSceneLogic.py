"""MRML-level logic of the GANTrainer module: no Qt, so it runs in Slicer and headless (slicer-core).

The module's ``GANTrainerLogic`` (in GANTrainer.py) inherits these methods, so they are callable from the
Slicer Python console: ``slicer.util.getModuleLogic("GANTrainer").validateDataset("/data/cow")``,
``.runEvaluation(real, generated, out)``, ``.loadReport(folder)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional

from VolGANCore import mrml
from VolGANCore.dataset import DatasetReport, validate_dataset

# the panel's Prepare dataset choices (the parameter node's Choice lists; the `volgan prepare` parser accepts them)
PREPARE_FORMATS = ("nii.gz", "nrrd", "mha")
PREPARE_LABEL_SCHEMES = ("topcow13", "aydin7")
PREPARE_ROIS = ("paper box", "custom", "around labels")        # cow: the paper's box, --roi, --roi-around-labels
PREPARE_CALIBRATIONS = ("none", "from HU", "slope+intercept")  # bone: as is, --from-hu, --calibration
PREPARE_COMMON_FIELDS = ("prepKind", "prepScansFolder", "prepMasksFolder", "prepOutFolder", "prepFormat",
                         "prepOverwrite", "prepWorkers")


class GANTrainerSceneLogic(mrml.SceneLogic):
    """Scene-facing operations of the GANTrainer panel."""

    def loadLatestSample(self, runFolder, node=None, seed: int = 0):
        """Generate one volume from the run's newest checkpoint into a volume node (created or updated)."""
        from GANTrainerLib.run import latest_checkpoint
        from VolumetricGANLib.checkpoint import load_generator
        from VolumetricGANLib.generate import generate

        ckpt = latest_checkpoint(runFolder)
        if ckpt is None:
            return None
        volumes, _latents = generate(load_generator(ckpt), n=1, seed=seed)
        node = mrml.volume_to_node(volumes[0], self.scene, name=f"Training sample ({Path(runFolder).name})", node=node)
        node.SetAttribute("GANTrainer.Checkpoint", str(ckpt))
        return node

    def validateDataset(self, imagesFolder, labelsFolder=None, labelScheme=None, progress=None, cancel=None,
                        tableNode=None):
        """Validate a training folder; return ``(report, tableNode)`` with one row per volume.

        Columns: case, file, shape (D×H×W), spacing (mm), min, max, label ids, problems. A folder that cannot
        be listed at all (missing, empty) raises :class:`VolGANCore.VolGANError` with the fix.
        """
        scheme = None if labelScheme in (None, "", "none") else labelScheme
        labels = labelsFolder if str(labelsFolder or "") not in ("", ".") else None
        report: DatasetReport = validate_dataset(imagesFolder, labels_folder=labels, label_scheme=scheme,
                                                 progress=progress, cancel=cancel)
        rows = []
        for entry in report.entries:
            problems = [p for p in report.problems if Path(p.split(":", 1)[0]).name in
                        (entry["file"], entry.get("labels_file"))]
            rows.append({
                "case": entry["case"],
                "file": entry["file"],
                "shape (D×H×W)": "×".join(str(s) for s in entry.get("shape_dhw", [])),
                "spacing x,y,z (mm)": ", ".join(f"{s:.4g}" for s in entry.get("spacing_xyz_mm", [])),
                "min": entry.get("min"),
                "max": entry.get("max"),
                "label ids": " ".join(str(i) for i in entry.get("label_ids", [])),
                "problems": "; ".join(problems),
            })
        table = mrml.table_from_rows(rows, self.scene, name="Dataset validation", node=tableNode)
        table.SetAttribute("GANTrainer.DatasetFolder", str(imagesFolder))
        table.SetAttribute("GANTrainer.DatasetValid", "true" if report.ok else "false")
        return report, table

    # -- dataset preparation (volgan prepare) ---------------------------------------------------------------
    def prepareDataset(self, kind: str, imagesFolder, outFolder, progress=None, cancel=None, **options) -> dict:
        """Run ``volgan prepare bone|cow`` synchronously (console use); return :meth:`preparedTrainingFolders`.

        ``options`` are :func:`GANTrainerLib.prepare.bone.prepare_bone`'s keywords for ``kind="bone"`` (``masks``,
        ``spacing_mm``, ``calibration``, ``from_hu``, ``cortex_mm``, ``closing_mm``, ``stride``, ``min_fill``,
        ``size``, ``fmt``, ``overwrite``) and :func:`GANTrainerLib.prepare.cow.prepare_cow`'s for ``kind="cow"``
        (``labels``, ``template``, ``build_template_iterations``, ``roi``, ``roi_around_labels_mm``, ``label_scheme``,
        ``spacing_mm``, ``workers``, ``register_kw``, ``fmt``, ``overwrite``); empty paths mean none. Cancelling raises :class:`VolGANCore.Cancelled` and leaves no output.
        """
        _required_path(imagesFolder, "scans folder")
        _required_path(outFolder, "output folder", must_exist=False)
        for key in ("masks", "labels", "template"):
            if key in options and _empty_path(options[key]):
                del options[key]      # an empty field of the panel: the function's default (none)
        if kind == "bone":
            from GANTrainerLib.prepare.bone import prepare_bone as run
        elif kind == "cow":
            from GANTrainerLib.prepare.cow import prepare_cow as run
        else:
            raise _error(f"dataset kind {kind!r}: choose 'bone' or 'cow'")
        run(str(imagesFolder), str(outFolder), progress=progress, cancel=cancel, **options)
        return self.preparedTrainingFolders(outFolder)

    @staticmethod
    def prepareDatasetArgs(kind: str, imagesFolder, outFolder, masksFolder=None, labelsFolder=None, template=None,
                           buildTemplate: bool = False, templateIterations: int = 3, roi: str = "",
                           roiAroundLabelsMm: Optional[float] = None, spacing=None, labelScheme: str = "topcow13",
                           calibration: str = "", fromHU: bool = False, cortexMm: float = 1.0, closingMm: float = 1.0,
                           stride: int = 0, minFill: float = 0.02, size: int = 32, workers: int = 1,
                           fmt: str = "nii.gz", overwrite: bool = False) -> list:
        """The ``volgan prepare …`` arguments for a background job (the panel's Prepare dataset section).

        Bone: scans, optional masks, ``spacing`` (default 0.164 mm), ``calibration`` ("slope,intercept") or
        ``fromHU``, cortex and closing (automatic masks), ``stride`` (0: the patch size), min fill, patch ``size``.
        CoW: scans, optional labels, a ``template`` file or ``buildTemplate`` (``templateIterations`` rounds), the ROI
        (``roi`` "x0:x1,y0:y1,z0:z1" in template voxels, or ``roiAroundLabelsMm``, or neither: the paper's box), an
        optional output ``spacing`` (one value or three, x y z; a string "0.3" or "0.3 0.3 0.5" too), the label
        scheme. Both: ``workers`` (cases in parallel), ``fmt``, ``overwrite``. Empty required folders, alternatives chosen together
        and values the command would refuse raise VolGANError naming the field before anything starts. When the
        job has finished, :meth:`preparedTrainingFolders` gives the training folders."""
        images = _required_path(imagesFolder, "scans folder", must_exist=False)
        out = _required_path(outFolder, "output folder", must_exist=False)
        if fmt not in PREPARE_FORMATS:
            raise _error(f"file format {fmt!r}: choose one of {', '.join(PREPARE_FORMATS)}")
        argv = ["prepare", kind, "--images", images, "--out", out]
        if kind == "bone":
            from GANTrainerLib.prepare.bone import parse_calibration

            if calibration and fromHU:
                raise _error("calibration and HU input are alternatives: choose one")
            if calibration:
                try:
                    parse_calibration(calibration)
                except Exception as exc:  # VolGANError with the command's own explanation
                    raise _error(f"calibration: {exc}") from None
            (spacing_mm,) = _spacing_values(0.164 if spacing is None else spacing, "spacing", counts=(1,))
            if int(size) < 4:
                raise _error(f"patch size {size}: at least 4 voxels")
            argv += ["--spacing", f"{spacing_mm:g}", "--cortex-mm", f"{float(cortexMm):g}",
                     "--closing-mm", f"{float(closingMm):g}", "--min-fill", f"{float(minFill):g}",
                     "--size", str(int(size))]
            if not _empty_path(masksFolder):
                argv += ["--masks", str(masksFolder)]
            if calibration:
                argv += ["--calibration", str(calibration)]
            if fromHU:
                argv.append("--from-hu")
            if stride:
                argv += ["--stride", str(int(stride))]
        elif kind == "cow":
            from GANTrainerLib.prepare.cow import parse_roi

            if buildTemplate == (not _empty_path(template)):
                raise _error("CoW preparation: choose a template file or 'build template', not both or neither")
            argv += ["--build-template", "--template-iterations", str(int(templateIterations))] if buildTemplate \
                else ["--template", str(template)]
            if not _empty_path(labelsFolder):
                argv += ["--labels", str(labelsFolder)]
            if roi and roiAroundLabelsMm is not None:
                raise _error("ROI: a custom box and a box around the labels are alternatives: choose one")
            if roi:
                try:
                    parse_roi(roi)
                except Exception as exc:  # VolGANError with the command's own explanation
                    raise _error(f"custom ROI: {exc}") from None
                argv += ["--roi", str(roi).strip()]
            if roiAroundLabelsMm is not None:
                if _empty_path(labelsFolder):
                    raise _error("ROI around the labels: choose a labels folder (or another ROI)")
                if not float(roiAroundLabelsMm) >= 0:
                    raise _error(f"ROI margin {roiAroundLabelsMm}: must be ≥ 0 mm")
                argv += ["--roi-around-labels", f"{float(roiAroundLabelsMm):g}"]
            if spacing is not None and str(spacing).strip() != "":
                argv += ["--spacing", *(f"{v:g}" for v in _spacing_values(spacing, "output spacing"))]
            if labelScheme not in PREPARE_LABEL_SCHEMES:
                raise _error(f"label scheme {labelScheme!r}: choose one of {', '.join(PREPARE_LABEL_SCHEMES)}")
            argv += ["--label-scheme", labelScheme]
        else:
            raise _error(f"dataset kind {kind!r}: choose 'bone' or 'cow'")
        if int(workers) < 1:
            raise _error(f"workers {workers}: at least 1")
        argv += ["--workers", str(int(workers)), "--format", fmt]
        if overwrite:
            argv.append("--overwrite")
        return argv

    @staticmethod
    def prepareFieldsInUse(params) -> set:
        """Names of the panel's ``prep*`` parameters that apply to the chosen kind and choices (``params``: the
        GANTrainer parameter node, or anything with its ``prep*`` attributes). The panel shows only these, and
        :meth:`prepareDatasetArgsFromParameters` reads only these."""
        used = set(PREPARE_COMMON_FIELDS)
        if params.prepKind == "cow":
            used |= {"prepTemplateSource", "prepRoi", "prepCowSpacing", "prepLabelScheme"}
            used.add("prepTemplateIterations" if params.prepTemplateSource == "build" else "prepTemplate")
            used |= {"custom": {"prepRoiText"}, "around labels": {"prepRoiMarginMm"}}.get(params.prepRoi, set())
        else:
            used |= {"prepBoneSpacing", "prepCalibration", "prepCortexMm", "prepClosingMm", "prepStride",
                     "prepMinFill", "prepPatchSize"}
            if params.prepCalibration == "slope+intercept":
                used |= {"prepSlope", "prepIntercept"}
        return used

    @classmethod
    def prepareDatasetArgsFromParameters(cls, params) -> list:
        """:meth:`prepareDatasetArgs` of the panel's ``prep*`` parameters (the one place that maps them to
        ``volgan prepare`` options); an invalid combination raises VolGANError naming the field, before any job
        starts."""
        p = params
        common = {"fmt": p.prepFormat, "overwrite": bool(p.prepOverwrite), "workers": p.prepWorkers}
        if p.prepKind == "cow":
            build = p.prepTemplateSource == "build"
            if not build and _empty_path(p.prepTemplate):
                raise _error("template: choose a template file, or 'build' to build one from the scans")
            if p.prepRoi not in PREPARE_ROIS:
                raise _error(f"ROI {p.prepRoi!r}: choose one of {', '.join(PREPARE_ROIS)}")
            if p.prepRoi == "custom" and not p.prepRoiText.strip():
                raise _error("custom ROI: enter the box as x0:x1,y0:y1,z0:z1 in template voxels "
                             "(the paper's is 80:208,120:248,40:72)")
            return cls.prepareDatasetArgs(
                "cow", p.prepScansFolder, p.prepOutFolder, labelsFolder=p.prepMasksFolder,
                template=None if build else p.prepTemplate, buildTemplate=build,
                templateIterations=p.prepTemplateIterations, roi=p.prepRoiText if p.prepRoi == "custom" else "",
                roiAroundLabelsMm=p.prepRoiMarginMm if p.prepRoi == "around labels" else None,
                spacing=p.prepCowSpacing, labelScheme=p.prepLabelScheme, **common)
        if p.prepCalibration not in PREPARE_CALIBRATIONS:
            raise _error(f"calibration {p.prepCalibration!r}: choose one of {', '.join(PREPARE_CALIBRATIONS)}")
        calibration = ""
        if p.prepCalibration == "slope+intercept":
            slope, intercept = str(p.prepSlope).strip(), str(p.prepIntercept).strip()
            if not slope or not intercept:
                raise _error("calibration: enter both the slope and the intercept (density = slope·value + "
                             "intercept, in mg HA/cm³)")
            calibration = f"{slope},{intercept}"
        return cls.prepareDatasetArgs(
            "bone", p.prepScansFolder, p.prepOutFolder, masksFolder=p.prepMasksFolder, spacing=p.prepBoneSpacing,
            calibration=calibration, fromHU=p.prepCalibration == "from HU", cortexMm=p.prepCortexMm,
            closingMm=p.prepClosingMm, stride=p.prepStride, minFill=p.prepMinFill, size=p.prepPatchSize, **common)

    @staticmethod
    def preparedTrainingFolders(outFolder) -> dict:
        """``{"images": …, "labels": … or None, "cases": n, "failed": [...]}`` of a ``volgan prepare`` output, for the
        training section's data (and labels) folder."""
        from VolGANCore.dataset import read_manifest

        doc = read_manifest(outFolder)
        if doc.get("kind") not in ("prepared-bone", "prepared-cow"):
            raise _error(f"{outFolder}: not written by volgan prepare (manifest kind {doc.get('kind')!r})")
        labels = Path(outFolder) / "labels"
        return {"images": str(Path(outFolder) / "images"), "labels": str(labels) if labels.is_dir() else None,
                "cases": len(doc["cases"]), "failed": doc.get("failed", [])}

    # -- evaluation reports ---------------------------------------------------------------------------------
    def runEvaluation(self, realFolder, fakeFolder, outFolder, progress=None, cancel=None, previous=None,
                      **options) -> "LoadedReport":
        """Run ``volgan evaluate`` synchronously (progress/cancel as every library call) and load its report.

        ``options`` are :func:`GANTrainerLib.evaluation.report.evaluate`'s keywords (``protocol``,
        ``inception_weights``, ``medicalnet_weights``, ``n_bootstrap``, ``seed``, ``device``, ``msssim_pairs``,
        ``overwrite``, ...); empty weight paths mean "none" and ``device="auto"`` picks one. Cancelling raises
        :class:`VolGANCore.Cancelled` and leaves no report folder behind.
        """
        from GANTrainerLib.evaluation.report import evaluate
        from VolGANCore.env import pick_device

        for key in ("inception_weights", "medicalnet_weights"):
            if key in options and _empty_path(options[key]):
                options[key] = None
        options["device"] = pick_device(options.get("device") or "auto")
        evaluate(str(realFolder), str(fakeFolder), str(outFolder), progress=progress, cancel=cancel, **options)
        return self.loadEvaluationReport(outFolder, previous=previous)

    @staticmethod
    def evaluationArgs(realFolder, fakeFolder, outFolder, protocol: str = "default", inceptionWeights=None,
                       medicalnetWeights=None, device: str = "auto", seed: int = 0, overwrite: bool = False,
                       medicalnetBackground: str = "noise") -> list:
        """The ``volgan evaluate …`` arguments of what :meth:`runEvaluation` does, for a background job (the
        panel's Evaluate). Empty folders raise :class:`VolGANCore.VolGANError` naming the field; empty weight
        paths mean none (the fallback extractors). ``medicalnetBackground`` ("noise", the paper's rule, or
        "zero") is passed with ``protocol="aydin2024"`` only (the default protocol has no background).
        :meth:`loadEvaluationReport` shows the result."""
        for field, value in (("real volumes folder", realFolder), ("generated volumes folder", fakeFolder),
                             ("report folder", outFolder)):
            _required_path(value, field, must_exist=False)
        if protocol not in ("default", "aydin2024"):
            raise _error(f"protocol {protocol!r}: choose 'default' or 'aydin2024'")
        if medicalnetBackground not in ("noise", "zero"):
            raise _error(f"MedicalNet background {medicalnetBackground!r}: choose 'noise' or 'zero'")
        argv = ["evaluate", "--real", str(realFolder), "--fake", str(fakeFolder), "--out", str(outFolder),
                "--protocol", protocol, "--device", device or "auto", "--seed", str(int(seed))]
        if protocol == "aydin2024":
            argv += ["--medicalnet-background", medicalnetBackground]
        for flag, value in (("--inception-weights", inceptionWeights), ("--medicalnet-weights", medicalnetWeights)):
            if not _empty_path(value):
                argv += [flag, str(value)]
        if overwrite:
            argv.append("--overwrite")
        return argv

    def loadEvaluationReport(self, reportDir, previous=None) -> "LoadedReport":
        """``report.json`` of ``volgan evaluate`` as a metrics table and a PR-curve chart.

        Table ``metrics``: one row per metric (label, key, real vs generated, 95 % CI, real vs real baseline,
        better, extractor, fallback flag) plus the MS-SSIM diversity (generated set; baseline = real set) and the
        border frame index.
        Chart: the PRD curves (real vs generated, real vs real halves) and, when the report has them, the
        improved precision/recall k-NN values as points. ``previous`` (a LoadedReport) is removed first.
        """
        report = _read_report_json(reportDir, "report.json", "volgan-evaluation",
                                   "a report folder written by volgan evaluate")
        self.removeLoadedReport(previous)
        rows = []
        for key, m in report.get("metrics", {}).items():
            ci = m.get("ci95") or [None, None]
            rows.append({"metric": m["label"], "key": key, "real vs generated": m["real_vs_generated"],
                         "CI 95% low": ci[0], "CI 95% high": ci[1], "real vs real": m.get("real_vs_real"),
                         "better": m.get("better", ""), "extractor": m.get("extractor", ""),
                         "fallback features": "yes" if m.get("fallback_features") else "no"})
        div = (report.get("diversity") or {}).get("msssim")
        if div:
            ci = div["generated"].get("ci95") or [None, None]
            rows.append({"metric": "MS-SSIM within set (generated; real vs real = within the real set)",
                         "key": "msssim_diversity", "real vs generated": div["generated"]["mean"],
                         "CI 95% low": ci[0], "CI 95% high": ci[1], "real vs real": div["real"]["mean"],
                         "better": "lower = more diverse (≈ real)",
                         "extractor": f"MS-SSIM 3-D, {div['settings']['n_scales']} scale(s)",
                         "fallback features": "no"})
        frames = (report.get("border") or {}).get("frame_index")
        if frames:
            rows.append({"metric": "Border frame index", "key": "frame_index",
                         "real vs generated": frames["real_vs_generated"], "CI 95% low": None, "CI 95% high": None,
                         "real vs real": frames["real_vs_real"], "better": "lower (≈ real vs real)",
                         "extractor": "shell profiles of the voxels", "fallback features": "no"})
        name = Path(reportDir).name
        scene = self.scene
        table = mrml.table_from_rows(rows, scene, name=f"Evaluation metrics ({name})")
        table.SetAttribute("GANTrainer.ReportFolder", str(reportDir))
        table.SetAttribute("GANTrainer.Protocol", str(report.get("protocol", "")))
        table.SetAttribute("GANTrainer.SuspectedCopies", str(len(report.get("memorisation", {}).get("suspects", []))))
        if div:
            table.SetAttribute("GANTrainer.DiversityVerdict", div.get("verdict", ""))
        curve = report.get("prd_curve", {})
        series = {}
        for key, label in (("real_vs_generated", "PRD real vs generated"), ("real_vs_real", "PRD real vs real (halves)")):
            if key in curve:
                series[label] = (curve[key]["recall"], curve[key]["precision"])
        chart = mrml.plot_chart(series, scene, name=f"Precision-recall ({name})", x_label="recall",
                                y_label="precision")
        metrics = report.get("metrics", {})
        if "precision" in metrics and "recall" in metrics:
            _add_series(scene, chart, "k-NN precision/recall (real vs generated)", [metrics["recall"]["real_vs_generated"]],
                        [metrics["precision"]["real_vs_generated"]], "recall", "scatter")
            if metrics["recall"].get("real_vs_real") is not None and metrics["precision"].get("real_vs_real") is not None:
                _add_series(scene, chart, "k-NN precision/recall (real vs real)", [metrics["recall"]["real_vs_real"]],
                            [metrics["precision"]["real_vs_real"]], "recall", "scatter")
        return LoadedReport("evaluation", report, {"metrics": table}, chart, Path(reportDir))

    def loadFidelityReport(self, reportDir, parameter: Optional[str] = None, previous=None) -> "LoadedReport":
        """``fidelity.json`` of ``volgan evaluate-morphometry`` (bone or CoW) as tables and a histogram chart.

        Table ``parameters``: one row per parameter (real and generated mean ± SD, Wasserstein, W1/SD, KS and
        their real-vs-real baselines); CoW reports add ``presence`` (per artery: frequencies, difference, Fisher
        p, flag) and ``variants`` (variant-vector frequencies; the total-variation distances are the table's
        attributes ``GANTrainer.TVAnterior`` / ``GANTrainer.TVPosterior``). Chart: bar-type histograms (fraction
        of cases per bin, common bins) of the real and generated values of ``parameter`` (default: the one with
        the largest W1/SD, i.e. the least faithful).
        """
        result = _read_report_json(reportDir, "fidelity.json", None,
                                   "a report folder written by volgan evaluate-morphometry")
        kind = result.get("kind", "bone")
        params = result.get("parameters", [])
        if parameter is not None and parameter not in {r["parameter"] for r in params}:
            raise _error(f"{parameter!r} is not a parameter of the fidelity report in {reportDir} "
                         f"(choose one of {[r['parameter'] for r in params]})")
        self.removeLoadedReport(previous)
        scene = self.scene
        name = Path(reportDir).name
        rows = []
        for r in params:
            row = {"parameter": r["parameter"]}
            if kind == "cow":
                row.update({"artery": r["artery"], "measure": r["measure"], "n real": r["n_real"],
                            "n generated": r["n_generated"]})
            row.update({"real mean": r.get("real_mean"), "real SD": r.get("real_sd"),
                        "generated mean": r.get("generated_mean"), "generated SD": r.get("generated_sd"),
                        "Wasserstein": r.get("wasserstein"), "W1/SD": r.get("wasserstein_over_sd"),
                        "KS": r.get("ks"), "KS p": r.get("ks_p"),
                        "Wasserstein real vs real": r.get("wasserstein_real_vs_real"),
                        "W1/SD real vs real": r.get("wasserstein_over_sd_real_vs_real"),
                        "KS real vs real": r.get("ks_real_vs_real")})
            rows.append(row)
        tables = {"parameters": mrml.table_from_rows(rows, scene, name=f"Morphometric fidelity ({name})")}
        if kind == "cow":
            tables["presence"] = mrml.table_from_rows(
                [{"artery": r["artery"], "label": r["label"], "real frequency": r["real_frequency"],
                  "generated frequency": r["generated_frequency"], "difference": r["difference"],
                  "Fisher p": r["fisher_p"], "difference real vs real": r["difference_real_vs_real"],
                  "flag": r["flag"]} for r in result["presence"]], scene, name=f"Artery presence ({name})")
            vrows = []
            for side, v in result["variants"].items():
                for t in v["table"]:
                    vrows.append({"side": side, "vector": t["vector"], "components": ", ".join(v["names"]),
                                  "real frequency": t["real_frequency"], "generated frequency": t["generated_frequency"],
                                  "real count": t["real_count"], "generated count": t["generated_count"]})
            tables["variants"] = mrml.table_from_rows(vrows, scene, name=f"CoW variants ({name})")
            for side in ("anterior", "posterior"):
                tables["variants"].SetAttribute(f"GANTrainer.TV{side.capitalize()}",
                                                f"{result['variants'][side]['tv_distance']:.6g}")
                tables["variants"].SetAttribute(f"GANTrainer.TV{side.capitalize()}RealVsReal",
                                                f"{result['variants'][side]['tv_distance_real_vs_real']:.6g}")
        for t in tables.values():
            t.SetAttribute("GANTrainer.ReportFolder", str(reportDir))
            t.SetAttribute("GANTrainer.FidelityKind", kind)
        if parameter is None:
            parameter = _least_faithful(params)
        chart = None
        if parameter is not None:
            real = result["values"]["real"].get(parameter, [])
            gen = result["values"]["generated"].get(parameter, [])
            centres, fr, fg = histogram_pair(real, gen)
            chart = mrml.plot_chart({f"real (n = {len(real)})": (centres, fr), f"generated (n = {len(gen)})": (centres, fg)},
                                    scene, name=f"Distribution of {parameter} ({name})", x_label=parameter,
                                    y_label="fraction of cases", plot_type="bar")
            chart.SetAttribute("GANTrainer.Parameter", parameter)
        return LoadedReport("fidelity", result, tables, chart, Path(reportDir))

    def loadReport(self, reportDir, previous=None) -> "LoadedReport":
        """Load whichever report ``reportDir`` holds: ``report.json`` (evaluation) or ``fidelity.json``."""
        folder = Path(reportDir)
        if (folder / "report.json").is_file():
            return self.loadEvaluationReport(folder, previous=previous)
        if (folder / "fidelity.json").is_file():
            return self.loadFidelityReport(folder, previous=previous)
        from VolGANCore import InputFileError

        raise InputFileError(folder, "holds neither report.json (volgan evaluate) nor fidelity.json "
                             "(volgan evaluate-morphometry)", "choose the report folder itself")

    def removeLoadedReport(self, loaded) -> None:
        """Remove the table and chart nodes (with the chart's series and their data tables) of ``loaded``."""
        if loaded is None:
            return
        scene = self.scene
        for t in loaded.tables.values():
            if t is not None and t.GetScene() is not None:
                scene.RemoveNode(t)
        if loaded.chart is not None and loaded.chart.GetScene() is not None:
            _remove_chart(scene, loaded.chart)
        for node in loaded.extraNodes():
            if node is not None and node.GetScene() is not None:
                scene.RemoveNode(node)

    # -- downstream segmentation experiment -----------------------------------------------------------------
    def segmentationExperimentArgs(self, realImages, realLabels, synthetic, outFolder, syntheticLabels=None,
                                   config: str = "small", folds: int = 5, labelScheme: str = "topcow13",
                                   device: str = "auto", nGenerate: Optional[int] = None,
                                   nReal: Optional[int] = None, nSynthetic: Optional[int] = None,
                                   epochs: Optional[int] = None, seed: int = 0, overwrite: bool = False) -> list:
        """The ``volgan`` arguments of the downstream experiment (``segmentation-experiment …``), checked first.

        ``synthetic`` is a folder of synthetic volumes or a generator file (.vgan): then the one command first
        samples ``nGenerate`` volumes into ``outFolder/synthetic``. Empty or missing inputs raise a
        :class:`VolGANCore.VolGANError` naming the field. Run the list with ``volgan`` (or
        ``VolGANCore.jobs.BackgroundJob.start``); :meth:`loadSegmentationExperiment` shows the results.
        """
        folder = _required_path
        argv = ["segmentation-experiment", "--real-images", folder(realImages, "real images folder"),
                "--real-labels", folder(realLabels, "real labels folder")]
        source = folder(synthetic, "synthetic source (a folder of volumes or a .vgan model)")
        if Path(source).is_file():
            if nGenerate is None or int(nGenerate) < 1:
                raise _error(f"number of volumes to generate: expected at least 1 for the model {source}")
            argv += ["--synthetic-model", source, "--n-generate", str(int(nGenerate))]
        else:
            argv += ["--synthetic", source]
        if not _empty_path(syntheticLabels):
            argv += ["--synthetic-labels", folder(syntheticLabels, "synthetic labels folder")]
        if config not in ("small", "full"):
            raise _error(f"config {config!r}: choose 'small' (CPU minutes, pipeline check) or 'full' (GPU)")
        if labelScheme not in ("topcow13", "aydin7"):
            raise _error(f"label scheme {labelScheme!r}: choose 'topcow13' or 'aydin7'")
        if int(folds) < 2:
            raise _error(f"folds: expected at least 2, got {folds}")
        argv += ["--config", config, "--folds", str(int(folds)), "--label-scheme", labelScheme,
                 "--device", device or "auto", "--seed", str(int(seed))]
        for flag, value in (("--n-real", nReal), ("--n-synthetic", nSynthetic), ("--epochs", epochs)):
            if value is not None:
                argv += [flag, str(int(value))]
        argv += ["--out", folder(outFolder, "output folder", must_exist=False)]
        if overwrite:
            argv.append("--overwrite")
        return argv

    def loadSegmentationExperiment(self, outFolder, previous=None, cases=None) -> "LoadedSegmentationExperiment":
        """``results.json`` of ``volgan segmentation-experiment`` as tables, a per-case Dice chart and the
        held-out predictions.

        Table ``per_class``: one row per regime × class — Dice and HD95 (mm) mean and SD over folds (of the fold
        means), folds and cases scored (``n folds``, ``n cases``), the detection rate where TopCoW defines one —
        and per regime a row ``mean over classes`` (per-case mean Dice/HD95, mean ± SD over folds); with the
        experiment's ``--scoring paper`` the columns are "HD95 mean (voxels)" / "HD95 SD (voxels)" (HDRFDST@0.95)
        and mean ± SD are over cases. Table ``tests``: the paired Wilcoxon signed-rank tests between regimes on the
        per-case mean Dice. Table ``topcow`` (when the results hold it): per regime the TopCoW 2023 metric suite
        (rows regime × metric, mean and SD over the held-out cases).

        Chart (Slicer plots have no box type, so the box plot is drawn as its data): x is the class index in
        the scheme's order (the x-axis title lists the names), shifted a little per regime so that regimes sit
        side by side; each regime has a scatter series of every held-out case's Dice ("<regime>: cases") and one
        of the per-class medians ("<regime>: median", larger squares). Classes absent from a case's ground truth
        and prediction are not scored and not drawn. The experiment's own box plot is ``dice_boxplot.png``.

        Predictions: each saved held-out prediction (``predictions/fold<f>/<regime>/<case>.nii.gz``; all of them,
        or only ``cases``) becomes a segmentation node with the scheme's names and colours, on the file's grid,
        named "<case> <regime> (fold f)". Only the first is visible. ``previous`` (a LoadedReport) is removed
        first.
        """
        from GANTrainerLib.segmentation.experiment import prediction_path
        from VolGANCore import InputFileError, read_label_volume
        from VolGANCore.labels import get_scheme

        folder = Path(outFolder)
        what = "a results folder written by volgan segmentation-experiment"
        results = _read_report_json(folder, "results.json", "volgan-segmentation-experiment", what)
        try:  # everything read from results.json before the scene changes
            regimes = list(results["settings"]["regimes"])
            scheme = get_scheme(results["settings"]["label_scheme"])
            names = [scheme.name_of(i) for i in scheme.ids]
            table_rows, test_rows = _segmentation_table_rows(results, regimes, names)
            topcow_rows = _topcow_table_rows(results, regimes)
            points = _dice_points(results["cases"], regimes, names)
            held_out = [(int(f["fold"]), [str(c) for c in f["test"]]) for f in results["folds"]]
        except (KeyError, TypeError, ValueError) as exc:  # (VolGANError is a ValueError: an unknown scheme)
            raise InputFileError(folder / "results.json", f"is incomplete ({type(exc).__name__}: {exc})",
                                 "the results are damaged; run the experiment again") from None
        self.removeLoadedReport(previous)
        scene = self.scene
        name = folder.name
        tables = {"per_class": mrml.table_from_rows(table_rows, scene, name=f"Segmentation Dice/HD95 ({name})"),
                  "tests": mrml.table_from_rows(test_rows, scene, name=f"Segmentation paired tests ({name})")}
        if topcow_rows:
            tables["topcow"] = mrml.table_from_rows(topcow_rows, scene, name=f"Segmentation TopCoW metrics ({name})")
        for t in tables.values():
            t.SetAttribute("GANTrainer.ReportFolder", str(folder))
        chart = self._dicePerCaseChart(points, names, f"Dice per case and class ({name})")
        chart.SetAttribute("GANTrainer.ReportFolder", str(folder))
        wanted = None if cases is None else set(cases)
        loaded = LoadedSegmentationExperiment("segmentation", results, tables, chart, folder,
                                              {reg: [] for reg in regimes})
        try:
            for fold, test in held_out:
                for reg in regimes:
                    for case in test:
                        path = prediction_path(folder, fold, reg, case)
                        if (wanted is not None and case not in wanted) or not path.is_file():
                            continue
                        seg = mrml.labelmap_to_segmentation(read_label_volume(path, scheme=scheme.name), scheme.name,
                                                            scene, name=f"{case} {reg} (fold {fold + 1})")
                        for key, value in (("Regime", reg), ("Case", case), ("Fold", str(fold)),
                                           ("ReportFolder", str(folder))):
                            seg.SetAttribute(f"GANTrainer.{key}", value)
                        seg.GetDisplayNode().SetVisibility(loaded.firstPrediction() is None)
                        loaded.segmentations[reg].append(seg)
        except BaseException:
            self.removeLoadedReport(loaded)  # a damaged prediction: nothing half-loaded stays
            raise
        return loaded

    def loadExperimentImage(self, loaded: "LoadedSegmentationExperiment", case: str):
        """The real image of held-out ``case`` of a loaded experiment as a volume node (removed with it)."""
        from VolGANCore import InputFileError, read_volume
        from VolGANCore.dataset import case_id, list_volumes

        if case in loaded.images and loaded.images[case].GetScene() is not None:
            return loaded.images[case]
        images = loaded.report["inputs"]["real_images"]
        path = next((p for p in list_volumes(images) if case_id(p) == case), None)
        if path is None:
            raise InputFileError(images, f"holds no image of case {case!r} any more",
                                 "restore the real images folder the experiment read")
        node = mrml.volume_to_node(read_volume(path), self.scene, name=case)
        loaded.images[case] = node
        return node

    def _dicePerCaseChart(self, points, names, title):
        """The chart of :func:`_dice_points`: per regime its cases and its medians, in one colour."""
        scene = self.scene
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", title)
        chart.SetTitle(title)
        chart.SetXAxisTitle("class: " + ", ".join(f"{k} {n}" for k, n in enumerate(names, 1)))
        chart.SetYAxisTitle("Dice")
        for (reg, (cases, medians)), colour in zip(points.items(), _REGIME_COLOURS * 3):
            _add_series(scene, chart, f"{reg}: cases", [p[0] for p in cases], [p[1] for p in cases], "class",
                        "scatter", colour=colour, size=6)
            _add_series(scene, chart, f"{reg}: median", [m[0] for m in medians], [m[1] for m in medians], "class",
                        "scatter", colour=colour, size=12, marker="square")
        return chart


@dataclasses.dataclass
class LoadedReport:
    """A report shown in the scene: ``kind`` ("evaluation" or "fidelity"), the parsed JSON, its table nodes
    by role, its plot chart node (None when there is nothing to plot) and the folder it came from."""

    kind: str
    report: dict
    tables: dict
    chart: Any
    folder: Path

    @property
    def table(self):
        """The main table (metrics, or per-parameter fidelity)."""
        return next(iter(self.tables.values()))

    def extraNodes(self) -> list:
        """Scene nodes besides the tables and the chart that belong to this report (removed with it)."""
        return []

    def summary(self) -> str:
        """One line for the panel's status label."""
        r = self.report
        if self.kind == "evaluation":
            n = len(r.get("memorisation", {}).get("suspects", []))
            div = (r.get("diversity") or {}).get("msssim")
            tail = f"; generated set {div['verdict']} (MS-SSIM)" if div else ""
            w = len(r.get("warnings") or [])
            tail += f"; {w} warning{'' if w == 1 else 's'} (see report.md)" if w else ""
            return (f"Evaluation ({r.get('protocol')}): {len(r.get('metrics', {}))} metrics, {n} suspected "
                    f"cop{'y' if n == 1 else 'ies'}{tail} — {self.folder}")
        if r.get("kind") == "cow":
            flags = r.get("flags", [])
            return (f"CoW fidelity: {r['n_generated']} generated vs {r['n_real']} real; "
                    + (f"{len(flags)} flagged: " + "; ".join(flags) if flags else "no artery flagged"))
        return f"Bone fidelity: {r['n_generated']} generated vs {r['n_real']} real patches — {self.folder}"


@dataclasses.dataclass
class LoadedSegmentationExperiment(LoadedReport):
    """A downstream segmentation experiment shown in the scene: ``tables`` ``per_class`` and ``tests``, the
    per-case Dice ``chart``, ``segmentations`` (regime → segmentation nodes of the held-out predictions, fold
    and case order) and ``images`` (case → volume node, from :meth:`GANTrainerSceneLogic.loadExperimentImage`)."""

    segmentations: dict = dataclasses.field(default_factory=dict)
    images: dict = dataclasses.field(default_factory=dict)

    def extraNodes(self) -> list:
        return [n for nodes in self.segmentations.values() for n in nodes] + list(self.images.values())

    def firstPrediction(self):
        """The first loaded prediction (the visible one) or None."""
        return next((n for nodes in self.segmentations.values() for n in nodes), None)

    def summary(self) -> str:
        r = self.report
        st = r["settings"]
        means = "; ".join(f"{reg} {_pm(s['mean_dice'], s.get('mean_dice_sd'))}" for reg, s in r["summary"].items())
        n = sum(len(v) for v in self.segmentations.values())
        return (f"Segmentation experiment ({st['folds']} folds, config {st['config']}): mean Dice {means}; "
                f"{n} held-out prediction(s) loaded — {self.folder}")


_REGIME_COLOURS = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17))  # real, synthetic, real+synthetic


def _segmentation_table_rows(results: dict, regimes: list, names: list) -> tuple:
    """Rows of the per-class Dice/HD95 table (regime × class, then a per-regime mean row) and of the tests."""
    rows = []
    hd, unit = ("hd95_vox", "voxels") if results["settings"].get("scoring") == "paper" else ("hd95_mm", "mm")
    for reg in regimes:
        s = results["summary"][reg]
        for cls in names:
            c = s["per_class"][cls]
            det = (s.get("detection") or {}).get(cls)
            rows.append({"regime": reg, "class": cls, "Dice mean": c["dice_mean"], "Dice SD": c["dice_sd"],
                         f"HD95 mean ({unit})": c[f"{hd}_mean"], f"HD95 SD ({unit})": c[f"{hd}_sd"],
                         "n folds": c["n_folds"], "n cases": c["n_cases"],
                         "detection rate": det["rate"] if det else None})
        rows.append({"regime": reg, "class": "mean over classes", "Dice mean": s["mean_dice"],
                     "Dice SD": s["mean_dice_sd"], f"HD95 mean ({unit})": s[f"mean_{hd}"],
                     f"HD95 SD ({unit})": s[f"mean_{hd}_sd"],
                     "n folds": sum(v is not None for v in s.get("fold_mean_dice", [])),
                     "n cases": s["n_cases"], "detection rate": None})
    tests = [{"regime a": t["a"], "regime b": t["b"], "quantity": t["quantity"], "n": t["n"],
              "non-zero differences": t["n_nonzero"], "median difference": t["median_difference"],
              "mean difference": t["mean_difference"], "Wilcoxon statistic": t["statistic"], "p": t["p_value"],
              "note": t["note"]} for t in results.get("tests", [])]
    return rows, tests


def _topcow_table_rows(results: dict, regimes: list) -> list:
    """Rows (regime × metric: mean, SD) of the TopCoW 2023 suite in results.json; [] when it is absent."""
    rows = []
    for reg in regimes:
        t = results["summary"][reg].get("topcow")
        if not t:
            continue
        for key, label in (("dice", "Dice"), ("cldice", "clDice"), ("b0_error", "Betti-0 error"),
                           ("hd95", "HD95 (mm)")):
            for sub, what in (("cls_avg", "class average"), ("merged", "merged tree")):
                rows.append({"regime": reg, "metric": f"{label}, {what}", "mean": t[key][sub]["mean"],
                             "SD": t[key][sub]["sd"]})
        if t.get("detection"):
            rows.append({"regime": reg, "metric": "group-2 detection F1, mean", "mean": t["detection"]["mean_f1"],
                         "SD": t["detection"]["sd_f1"]})
            for key, label in (("variant_balanced_accuracy", "variant-balanced accuracy"),
                               ("topology_match_rate", "topology match rate")):
                for region in ("anterior", "posterior"):
                    rows.append({"regime": reg, "metric": f"{label}, {region}", "mean": t[key][region], "SD": None})
    return rows


def _dice_points(cases: list, regimes: list, names: list) -> dict:
    """Per regime: ([(x, Dice) of every scored case and class], [(x, median Dice) per class]); x is the class
    index (1-based, scheme order) shifted by the regime's offset in [-0.25, 0.25]. Unscored classes (null) are left
    out."""
    import numpy as np

    offsets = np.linspace(-0.25, 0.25, len(regimes)) if len(regimes) > 1 else [0.0]
    out = {}
    for reg, dx in zip(regimes, offsets):
        points, medians = [], []
        for k, cls in enumerate(names, 1):
            values = [float(r["dice"][cls]) for r in cases if r["regime"] == reg and r["dice"].get(cls) is not None]
            points += [(k + dx, v) for v in values]
            if values:
                medians.append((k + dx, float(np.median(values))))
        out[reg] = (points, medians)
    return out


def _pm(mean, sd) -> str:
    if mean is None:
        return "—"
    return f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def histogram_pair(real, generated, max_bins: int = 15):
    """Common bins for two samples; returns (bin centres, fraction of ``real`` per bin, of ``generated``)."""
    import numpy as np

    a = np.asarray(real, float)
    b = np.asarray(generated, float)
    both = np.concatenate([a, b])
    if both.size == 0:
        return [], [], []
    lo, hi = float(both.min()), float(both.max())
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    n_bins = int(min(max_bins, max(3, np.ceil(np.sqrt(both.size)))))
    edges = np.linspace(lo, hi, n_bins + 1)
    fa = np.histogram(a, edges)[0] / max(a.size, 1)
    fb = np.histogram(b, edges)[0] / max(b.size, 1)
    return ((edges[:-1] + edges[1:]) / 2).tolist(), fa.tolist(), fb.tolist()


def _least_faithful(params: list) -> Optional[str]:
    best, best_key = None, None
    for r in params:
        for k in ("wasserstein_over_sd", "wasserstein"):
            v = r.get(k)
            if v is not None and v == v:  # not None, not NaN
                score = (k == "wasserstein_over_sd", v)
                if best is None or score > best:
                    best, best_key = score, r["parameter"]
                break
    return best_key


def _empty_path(value) -> bool:
    return value is None or str(value) in ("", ".")


def _spacing_values(value, field: str, counts=(1, 3)) -> list:
    """Voxel sizes (mm) from a number, a sequence or a text ("0.3", "0.3 0.3 0.5", "0.3,0.3,0.5"); VolGANError
    naming ``field`` unless there are ``counts`` positive finite values."""
    parts = str(value).replace(",", " ").split() if isinstance(value, str) else \
        [value] if isinstance(value, (int, float)) else list(value)
    try:
        values = [float(v) for v in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) not in counts or not all(math.isfinite(v) and v > 0 for v in values):
        what = "one value (isotropic) or three (x y z)" if tuple(counts) == (1, 3) else "one value"
        raise _error(f"{field} {value!r}: expected {what}, positive numbers of mm")
    return values


def _required_path(value, field: str, must_exist: bool = True) -> str:
    """``value`` as a string; an empty path raises VolGANError naming ``field``, a missing one (``must_exist``)
    InputFileError."""
    if _empty_path(value):
        raise _error(f"{field}: no path chosen (choose the {field})")
    if must_exist and not Path(value).exists():
        from VolGANCore import InputFileError

        raise InputFileError(value, "not found", f"choose an existing {field}")
    return str(value)


def _error(message: str):
    from VolGANCore import VolGANError

    return VolGANError(message)


def _read_report_json(reportDir, filename: str, kind: Optional[str], what: str) -> dict:
    from VolGANCore import InputFileError

    folder = Path(reportDir)
    path = folder / filename
    if not folder.is_dir():
        raise InputFileError(folder, "report folder not found", f"choose {what}")
    if not path.is_file():
        raise InputFileError(path, "not found", f"choose {what}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"is not valid JSON ({exc})", "the report is damaged; write it again") from None
    if not isinstance(report, dict) or (kind is not None and report.get("kind") != kind):
        raise InputFileError(path, f"is not a {kind or 'fidelity'} report", f"choose {what}")
    return report


def _add_series(scene, chart, label, x, y, x_name: str, plot_type: str = "line", colour=None, size: int = 10,
                marker: str = "circle"):
    """One more plot series (its own data table) on ``chart`` (``colour``: RGB 0–1, default a unique one)."""
    import slicer

    table = mrml.table_from_rows([{x_name: float(a), label: float(b)} for a, b in zip(x, y)], scene,
                                 name=f"{chart.GetName()} {label} data")
    ps = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", label)
    ps.SetAndObserveTableNodeID(table.GetID())
    ps.SetXColumnName(x_name)
    ps.SetYColumnName(label)
    ps.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter if plot_type == "scatter"
                   else slicer.vtkMRMLPlotSeriesNode.PlotTypeLine)
    ps.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleSquare if marker == "square"
                      else slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
    ps.SetMarkerSize(size)
    if colour is None:
        ps.SetUniqueColor()
    else:
        ps.SetColor(*colour)
    chart.AddAndObservePlotSeriesNodeID(ps.GetID())
    return ps


def _remove_chart(scene, chart) -> None:
    for i in range(chart.GetNumberOfPlotSeriesNodes() - 1, -1, -1):
        ps = chart.GetNthPlotSeriesNode(i)
        table = scene.GetNodeByID(ps.GetTableNodeID()) if ps is not None else None
        chart.RemoveNthPlotSeriesNodeID(i)
        if ps is not None:
            scene.RemoveNode(ps)
        if table is not None:
            scene.RemoveNode(table)
    scene.RemoveNode(chart)


class TrainingProcess:
    """A ``volgan train`` run as a background job (:class:`VolGANCore.jobs.BackgroundJob`) whose job folder is
    the run folder: ``job.json`` and ``process.log`` sit beside the trainer's ``run.json``, ``metrics.jsonl``
    and ``log.txt``.

    The panel polls :meth:`poll` from a QTimer, so Slicer stays responsive, and closing/reopening the module
    or restarting Slicer loses nothing: :meth:`attach` (a known run folder) or :meth:`latest` (the newest run
    started from any panel) watches it again. :meth:`stop` asks the trainer to finish its step, write a
    checkpoint and end ``stopped``; ``resume=True`` continues from that checkpoint.
    """

    def __init__(self, job):
        self.job = job

    @property
    def runFolder(self) -> Path:
        return self.job.folder

    @classmethod
    def start(cls, preset, dataFolder, runFolder, labelsFolder=None, resume=False, extraArgs=(), device="auto"):
        """Launch ``volgan train`` for ``preset`` into ``runFolder``; refused while a run is going on there."""
        from VolGANCore.jobs import BackgroundJob

        argv = ["train", "--preset", preset, "--data", str(dataFolder), "--out", str(runFolder),
                "--device", device]
        if labelsFolder:
            argv += ["--labels", str(labelsFolder)]
        if resume:
            argv.append("--resume")
        argv += [str(a) for a in extraArgs]
        return cls(BackgroundJob.start(argv, folder=runFolder, kind="train", outFolder=runFolder))

    @classmethod
    def attach(cls, runFolder) -> Optional["TrainingProcess"]:
        """Watch the run in ``runFolder`` again; None when no run was started there from a panel."""
        from VolGANCore.jobs import BackgroundJob, read_job

        if read_job(runFolder) is None:
            return None
        return cls(BackgroundJob.attach(runFolder))

    @classmethod
    def latest(cls, root=None) -> Optional["TrainingProcess"]:
        """The newest run started from a panel (on this machine, under ``VolGANCore.jobs.jobs_root()``)."""
        from VolGANCore.jobs import BackgroundJob

        job = BackgroundJob.latest("train", root=root)
        return cls(job) if job is not None else None

    @classmethod
    def running(cls, runFolder=None, root=None) -> Optional["TrainingProcess"]:
        """The run to watch again: the one in ``runFolder`` if it still runs; with no folder chosen (a new scene
        after restarting Slicer) the newest run started from a panel, if it still runs."""
        if not _empty_path(runFolder):
            proc = cls.attach(runFolder)
        else:
            proc = cls.latest(root)
        return proc if proc is not None and proc.isRunning() else None

    def isRunning(self) -> bool:
        return self.job.isRunning()

    def poll(self) -> dict:
        """run.json's fields (step, kimg, total_kimg, eta_s, best, checkpoints, ...) under the job's ``state``,
        ``running``, ``returncode``, ``message`` (on failure the error the trainer printed) and ``progress``."""
        from VolGANCore.jobs import TERMINAL_STATES

        job = self.job.poll()
        status = dict(read_run_status(self.runFolder) or {})
        status.update(state=job["state"], running=job["running"], returncode=job["returncode"],
                      progress=job["progress"], stop_requested=job["stop_requested"])
        if job["state"] in TERMINAL_STATES or job["message"]:
            status["message"] = job["message"]   # how the job ended (empty when it finished or stopped cleanly)
        return status

    def stop(self, timeout: float | None = 120.0) -> None:
        """Ask the trainer to stop gracefully (finish the step, checkpoint, exit); ``timeout`` seconds later end
        its processes if it has not. ``None`` returns at once (the panel: :meth:`poll` reports the end)."""
        self.job.stop(timeout)

    def stopIfOverdue(self, grace_s: float = 180.0) -> bool:
        """End the run's processes if a stop requested ``grace_s`` seconds ago has not finished (a step, a
        checkpoint and the last montage take far less); True if it did."""
        return self.job.stopIfOverdue(grace_s)

    def lastLogLines(self, n: int = 20, names=("process.log", "log.txt")) -> str:
        """The last ``n`` lines of the process output and the run's ``log.txt`` (or of the files ``names``)."""
        text = ""
        for name in names:
            p = self.runFolder / name
            if p.exists():
                text += p.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.strip().splitlines()[-n:])


def read_run_status(runFolder):
    from GANTrainerLib.run import read_status

    return read_status(runFolder)


# what the training panel can plot: a title and the metrics.jsonl keys (one series each, x = kimg)
RUN_PLOTS = {
    "losses": ("Training losses", ("loss/G", "loss/D", "reg/r1", "reg/gp", "augment/p")),
    "quick metrics": ("Quick metrics", ("metrics/fd_quick", "metrics/spread_ratio", "metrics/frame_index",
                                        "metrics/morph_w1")),
}


def updateRunPlot(sceneLogic: GANTrainerSceneLogic, runFolder, chartNode=None, plot: str = "losses"):
    """One of :data:`RUN_PLOTS` of a run as a plot chart node replacing ``chartNode``; None while nothing of it
    has been logged yet."""
    from GANTrainerLib.run import read_metrics

    if plot not in RUN_PLOTS:
        raise ValueError(f"plot {plot!r}: choose one of {', '.join(RUN_PLOTS)}")
    title, keys = RUN_PLOTS[plot]
    rows = read_metrics(runFolder)
    series = {}
    for key in keys:
        pts = [(r["kimg"], r[key]) for r in rows if key in r]
        if pts:
            series[key] = ([p[0] for p in pts], [p[1] for p in pts])
    scene = sceneLogic.scene
    if chartNode is not None:
        _remove_chart(scene, chartNode)
    if not series:
        return None
    return mrml.plot_chart(series, scene, name=f"{title} ({Path(runFolder).name})", x_label="kimg", y_label="value")
