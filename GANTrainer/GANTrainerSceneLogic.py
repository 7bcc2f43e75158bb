"""MRML-level logic of the GANTrainer module: no Qt, so it runs in Slicer and headless (slicer-core).

The module's ``GANTrainerLogic`` (in GANTrainer.py) inherits these methods, so they are callable from the
Slicer Python console: ``slicer.util.getModuleLogic("GANTrainer").validateDataset("/data/cow")``.
"""

from __future__ import annotations

from pathlib import Path

from VolGANCore import mrml
from VolGANCore.dataset import DatasetReport, validate_dataset


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
        G, cfg = load_generator(ckpt)
        volumes, _latents = generate((G, cfg), n=1, seed=seed)
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


class TrainingProcess:
    """A ``volgan train`` run in a background process (the MONAIAuto3DSeg pattern), watched through its run folder.

    The process writes ``run.json`` / ``metrics.jsonl`` / ``log.txt`` into the run folder; the panel polls
    :meth:`poll` from a QTimer, so Slicer stays responsive and closing/reopening the module (or Slicer) loses
    nothing: :meth:`attach` re-reads a running or finished run folder. :meth:`stop` sends SIGTERM, which the
    trainer turns into "finish the step, write a checkpoint, mark stopped".
    """

    def __init__(self, runFolder, process=None):
        self.runFolder = Path(runFolder)
        self.process = process

    @staticmethod
    def pythonExecutable() -> str:
        import shutil
        import sys

        return shutil.which("PythonSlicer") or sys.executable

    @classmethod
    def start(cls, preset, dataFolder, runFolder, labelsFolder=None, resume=False, extraArgs=(), device="auto"):
        """Launch ``volgan train`` for ``preset``; returns the TrainingProcess (stdout/stderr go to process.log)."""
        import subprocess

        from VolGANCore import VolGANError

        runFolder = Path(runFolder)
        runFolder.mkdir(parents=True, exist_ok=True)
        status = read_run_status(runFolder)
        if status and status.get("state") == "running" and _pid_alive(status.get("pid")):
            raise VolGANError(f"{runFolder}: a training process (pid {status['pid']}) is already running there")
        cmd = [cls.pythonExecutable(), "-m", "VolGANCore.cli", "--quiet", "train", "--preset", preset,
               "--data", str(dataFolder), "--out", str(runFolder), "--device", device]
        if labelsFolder:
            cmd += ["--labels", str(labelsFolder)]
        if resume:
            cmd.append("--resume")
        cmd += [str(a) for a in extraArgs]
        log = open(runFolder / "process.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return cls(runFolder, proc)

    @classmethod
    def attach(cls, runFolder):
        """Watch an existing run folder (e.g. after reopening the module); no process handle needed."""
        return cls(runFolder)

    def isRunning(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        status = read_run_status(self.runFolder) or {}
        return status.get("state") == "running" and _pid_alive(status.get("pid"))

    def poll(self) -> dict:
        """Current status: run.json fields plus ``running`` and, once the process ended, ``returncode``."""
        status = dict(read_run_status(self.runFolder) or {"state": "starting"})
        status["running"] = self.isRunning()
        if self.process is not None and self.process.poll() is not None:
            status["returncode"] = self.process.returncode
            if self.process.returncode not in (0, None) and status.get("state") in ("starting", "running"):
                status["state"] = "failed"
                status["message"] = self.lastLogLines(1)
        return status

    def stop(self, timeout: float | None = 120.0) -> None:
        """Ask the trainer to stop gracefully (SIGTERM → checkpoint → exit).

        Waits up to ``timeout`` seconds (``None``: return at once and let :meth:`poll` report the end — what the
        panel does, so the UI never blocks).
        """
        import os
        import signal

        pid = self.process.pid if self.process is not None else (read_run_status(self.runFolder) or {}).get("pid")
        if pid and _pid_alive(pid):
            os.kill(int(pid), signal.SIGTERM)
        if self.process is not None and timeout is not None:
            try:
                self.process.wait(timeout)
            except Exception:
                self.process.kill()

    def lastLogLines(self, n: int = 20) -> str:
        text = ""
        for name in ("process.log", "log.txt"):
            p = self.runFolder / name
            if p.exists():
                text += p.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.strip().splitlines()[-n:])


def read_run_status(runFolder):
    from GANTrainerLib.run import read_status

    return read_status(runFolder)


def _pid_alive(pid) -> bool:
    import os

    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def updateLossPlot(sceneLogic: GANTrainerSceneLogic, runFolder, chartNode=None,
                   keys=("loss/G", "loss/D", "reg/r1", "reg/gp", "augment/p")):
    """Loss curves of a run as a plot chart node (one series per logged key, x = kimg); returns the chart."""
    from GANTrainerLib.run import read_metrics

    rows = read_metrics(runFolder)
    series = {}
    for key in keys:
        pts = [(r["kimg"], r[key]) for r in rows if key in r]
        if pts:
            series[key] = ([p[0] for p in pts], [p[1] for p in pts])
    scene = sceneLogic.scene
    if chartNode is not None:
        for i in range(chartNode.GetNumberOfPlotSeriesNodes() - 1, -1, -1):
            ps = chartNode.GetNthPlotSeriesNode(i)
            table = scene.GetNodeByID(ps.GetTableNodeID()) if ps is not None else None
            chartNode.RemoveNthPlotSeriesNodeID(i)
            if ps is not None:
                scene.RemoveNode(ps)
            if table is not None:
                scene.RemoveNode(table)
        scene.RemoveNode(chartNode)
    if not series:
        return None
    return mrml.plot_chart(series, scene, name=f"Training losses ({Path(runFolder).name})", x_label="kimg",
                           y_label="value")
