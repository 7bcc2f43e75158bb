"""A training run's folder: checkpoints (last K + best), a pollable ``run.json`` status, metrics, montages.

Layout of ``RUN/``::

    run.json                 status for other processes (the Slicer panel polls it): state, step, kimg,
                             latest losses, ETA, checkpoints, last message — rewritten atomically
    metrics.jsonl            one JSON line per logged step (scalars) — also what the panel plots
    checkpoints/ckpt-000123.vgan (+ .md model card)   kept: the last ``keep_last`` and the best
    samples/samples-000123.png   montages of generated volumes
    tensorboard/             TensorBoard event files (when the tensorboard package is installed)
    log.txt                  the human-readable log

:class:`GracefulStop` turns SIGINT/SIGTERM into a flag the training loop checks once per step, so the
loop writes a final checkpoint and ``run.json`` says ``stopped`` instead of dying mid-write. (SIGKILL cannot
be caught: a killed run resumes from its last periodic checkpoint.)
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from VolGANCore import VolGANError
from VolGANCore.atomic import atomic_path, atomic_write_json
from VolumetricGANLib.checkpoint import card_path

__all__ = ["TrainingRun", "GracefulStop", "latest_checkpoint", "read_status", "save_montage", "label_projection",
           "read_metrics"]

STATUS_NAME = "run.json"


class TrainingRun:
    """Bookkeeping of one run folder (created if needed). Only rank 0 of a DDP job should own one."""

    def __init__(self, folder: str | os.PathLike, keep_last: int = 3, best_mode: str = "min",
                 tensorboard: bool = True) -> None:
        if best_mode not in ("min", "max"):
            raise ValueError("best_mode must be 'min' or 'max'")
        self.folder = Path(folder)
        (self.folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.folder / "samples").mkdir(exist_ok=True)
        self.keep_last = int(keep_last)
        if self.keep_last < 1:  # the newest checkpoint is what a killed run resumes from: always keep it
            raise VolGANError(f"keep_last: at least 1 checkpoint must be kept, got {keep_last}")
        self.best_mode = best_mode
        self._status: dict[str, Any] = read_status(self.folder) or {}
        self._status.setdefault("checkpoints", [])
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.folder / "tensorboard"))
            except ImportError:  # tensorboard not installed: metrics.jsonl still has everything
                self._writer = None

    # -- status --------------------------------------------------------------------------------------------
    @property
    def status(self) -> dict[str, Any]:
        return self._status

    def update_status(self, **fields: Any) -> None:
        self._status.update(fields)
        self._status["updated"] = time.time()
        self._status["pid"] = os.getpid()
        atomic_write_json(self.folder / STATUS_NAME, self._status)

    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with open(self.folder / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        self._status["message"] = message

    # -- metrics -------------------------------------------------------------------------------------------
    def log_scalars(self, step: int, kimg: float, scalars: dict[str, float], status_key: str = "latest") -> None:
        """One metrics.jsonl row and TensorBoard scalars; run.json keeps the row under ``status_key``."""
        row = {"step": int(step), "kimg": float(kimg), **{k: float(v) for k, v in scalars.items()}}
        with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._writer is not None:
            for k, v in scalars.items():
                self._writer.add_scalar(k, float(v), int(step))
        self._status[status_key] = row

    def log_image(self, tag: str, step: int, png_path: Path) -> None:
        if self._writer is None:
            return
        import matplotlib.image as mpimg

        img = mpimg.imread(str(png_path))[..., :3]
        self._writer.add_image(tag, img, int(step), dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- checkpoints ---------------------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.folder / "checkpoints" / f"ckpt-{int(step):07d}.vgan"

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the run folder (posix), or as given when it lies outside it."""
        try:
            return Path(path).resolve().relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            return str(path)

    def register_checkpoint(self, path: Path, step: int, metric: Optional[float] = None,
                            metric_name: Optional[str] = None) -> list[Path]:
        """Record a written checkpoint; delete those that are neither among the last K nor the best.

        ``metric`` (named ``metric_name``, e.g. ``"fd_quick"``) ranks checkpoints by ``best_mode``; run.json's
        ``best`` is the entry with the best metric, name included. Paths in run.json are relative to the run
        folder, so a run folder can be moved (or written aside and renamed into place) without its status going
        stale. Entries whose file is gone are forgotten first: after a rewind (newer checkpoints deleted to resume
        from an older one) they would otherwise count among the last K, and each new checkpoint, the one a killed
        run resumes from, would be deleted as soon as it was written; the new one is always kept. Returns the
        deleted paths.
        """
        rel = self.relative(path)
        entries = [e for e in self._status["checkpoints"] if e["path"] != rel and (self.folder / e["path"]).exists()]
        entries.append({"path": rel, "step": int(step), "metric": None if metric is None else float(metric),
                        "metric_name": metric_name if metric is not None else None})
        entries.sort(key=lambda e: e["step"])
        scored = [e for e in entries if e["metric"] is not None]
        best = None
        if scored:
            pick = min if self.best_mode == "min" else max
            best = pick(scored, key=lambda e: e["metric"])
        keep = {rel} | {e["path"] for e in entries[-self.keep_last:]} | ({best["path"]} if best else set())
        removed = []
        for e in entries:
            if e["path"] not in keep:
                full = self.folder / e["path"]  # (an absolute path from an older run.json stays as it is)
                for p in (full, card_path(full)):
                    if p.exists():
                        p.unlink()
                removed.append(full)
        self._status["checkpoints"] = [e for e in entries if e["path"] in keep]
        self._status["best"] = best
        self.update_status()
        return removed

    def clear_metrics(self) -> None:
        """Forget every checkpoint's metric (they came from an incomparable measurement): no best until the next."""
        for e in self._status["checkpoints"]:
            e["metric"] = e["metric_name"] = None
        self._status["best"] = None
        self.update_status()

    def latest_checkpoint(self) -> Optional[Path]:
        """The newest checkpoint on disk (by step), whether or not run.json knew it (a killed run)."""
        return latest_checkpoint(self.folder)


def latest_checkpoint(folder: str | os.PathLike) -> Optional[Path]:
    """The newest ``checkpoints/ckpt-*.vgan`` of a run folder (names sort by step), or None."""
    files = sorted((Path(folder) / "checkpoints").glob("ckpt-*.vgan"))
    return files[-1] if files else None


def read_status(folder: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The run's ``run.json`` or None; never raises on a half-written file (writes are atomic anyway)."""
    path = Path(folder) / STATUS_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_metrics(folder: str | os.PathLike) -> list[dict[str, float]]:
    """All rows of ``metrics.jsonl`` (skipping a last line that is still being written)."""
    path = Path(folder) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class GracefulStop:
    """Context manager: SIGINT/SIGTERM set :attr:`requested` instead of killing the process.

    A second SIGINT while a stop is pending restores the default behaviour (so Ctrl-C twice still kills).
    Only installs handlers in the main thread (signal handlers cannot be set elsewhere).
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = tuple(signals)
        self.requested: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> "GracefulStop":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


def label_projection(labels: np.ndarray, axis: int = 0) -> np.ndarray:
    """A label map ``(D, H, W)`` projected along ``axis``: each ray gets the label id it holds most often
    (background only where the ray holds no label), so a label shows wherever it is, even off the brightest
    voxel."""
    labels = np.asarray(labels)
    ids = [int(i) for i in np.unique(labels) if i != 0]
    if not ids:
        return np.zeros(np.delete(labels.shape, axis), dtype=labels.dtype)
    counts = np.stack([(labels == i).sum(axis=axis) for i in ids])
    return np.where(counts.max(axis=0) > 0, np.asarray(ids)[counts.argmax(axis=0)], 0).astype(labels.dtype)


def _label_rgba(projection: np.ndarray, scheme) -> np.ndarray:
    """Label ids → RGBA (the scheme's colours; background transparent)."""
    rgba = np.zeros(projection.shape + (4,), dtype=np.float32)
    for i in np.unique(projection):
        if i:
            rgba[projection == i] = (*scheme.colour_of(int(i)), 1.0)
    return rgba


def save_montage(volumes: np.ndarray, path: str | os.PathLike, title: str = "", mip: bool = True,
                 vmin: float = -1.0, vmax: float = 1.0, labels: np.ndarray | None = None,
                 label_scheme: str | None = None, row_titles: list[str] | None = None) -> Path:
    """A PNG with one row per volume: axial, coronal and sagittal mid-slices (+ axial MIP).

    ``volumes`` is ``(N, D, H, W)`` or ``(N, 1, D, H, W)`` in network units; written atomically. With ``labels``
    (``(N, D, H, W)`` ids of ``label_scheme``) a last column shows the axial MIP with each ray coloured by its
    label (:func:`label_projection`), so one can see whether the labels sit on the bright vessels.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    v = np.asarray(volumes, dtype=np.float32)
    if v.ndim == 5:
        v = v[:, 0]
    if v.ndim != 4:
        raise ValueError(f"save_montage expects (N, D, H, W) volumes, got {v.shape}")
    scheme = None
    if labels is not None:
        from VolGANCore.labels import get_scheme

        labels = np.asarray(labels)
        if labels.shape != v.shape:
            raise ValueError(f"save_montage: labels {labels.shape} do not match the volumes {v.shape}")
        scheme = get_scheme(label_scheme or "topcow13")
        scheme.check(labels, "save_montage labels")
    cols = (4 if mip else 3) + (labels is not None)
    n = v.shape[0]
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
    for i in range(n):
        d, h, w = v[i].shape
        views = [v[i][d // 2], v[i][:, h // 2], v[i][:, :, w // 2]]
        names = ["axial", "coronal", "sagittal"]
        if mip or labels is not None:
            views.append(v[i].max(axis=0))
            names.append("axial MIP" if mip else "axial MIP + labels")
        if labels is not None and mip:
            views.append(views[-1])
            names.append("+ labels (projection)")
        for j, (img, name) in enumerate(zip(views, names)):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", aspect="equal")
            if labels is not None and j == cols - 1:
                ax.imshow(_label_rgba(label_projection(labels[i]), scheme), origin="lower", aspect="equal",
                          alpha=0.8, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if j == 0 and row_titles:
                ax.set_ylabel(row_titles[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path
