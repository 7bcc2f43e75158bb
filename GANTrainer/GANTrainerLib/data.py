"""Training data: the papers' preprocessing, a cached memory-mapped dataset, and an infinite DDP-aware loader.

Preprocessing (in this order, each optional; geometry is updated at every step so a cropped ROI keeps its
place in the scanner frame):

1. resample to ``target_spacing`` (linear for images, nearest neighbour for labels);
2. crop/pad to ``roi_shape`` (D, H, W) around the volume centre, the label map's centroid, or a given
   physical point (pad value: the volume's minimum);
3. intensity normalisation to [-1, 1]: ``minmax`` per volume (the CoW recipe), ``percentile`` window
   per volume, or a fixed ``window`` in physical units (the spongiosa recipe: [-350, 1100]).

Bone: :func:`extract_patches` cuts cubes that lie inside a mask.

:class:`CachedVolumeSet` runs the preprocessing once per folder and keeps the result as a ``.npy`` memory
map keyed by a hash of the files (name, size, mtime) and the preprocessing parameters, so restarts and DDP
ranks share it and RAM holds only what the loader touches.

:class:`BatchFeeder` turns sampler indices into device batches. There is no ``torch.utils.data.DataLoader``
(so no worker processes, ``persistent_workers`` or ``prefetch_factor``): items are slices of one memory map,
which a single thread reads faster than worker processes could pickle them. On CUDA that thread reads the next
batches into pinned memory and starts their copies on a side stream (``non_blocking``), so the training loop
neither waits for the disk nor synchronises with the host for its data; on CPU batches are read when asked for,
exactly as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from VolGANCore import VolGANError, Volume
from VolGANCore.atomic import atomic_path, atomic_write_json
from VolGANCore.geometry import crop_or_pad, downsample, resample
from VolGANCore.dataset import case_id, list_volumes
from VolGANCore.io import read_label_volume, read_volume
from VolGANCore.labels import get_scheme
from VolGANCore.names import LABEL_DOWNSAMPLES
from VolGANCore.progress import CancelToken, Progress, ProgressCallback

__all__ = [
    "Preprocess",
    "resample",
    "crop_or_pad",
    "normalise",
    "downsample",
    "extract_patches",
    "CachedVolumeSet",
    "InfiniteSampler",
    "BatchFeeder",
]

CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Preprocessing recipe; JSON-serialisable so it can be stored in checkpoints and cache keys."""

    target_spacing: Optional[tuple[float, float, float]] = None   # (x, y, z) mm; None keeps the spacing
    roi_shape: Optional[tuple[int, int, int]] = None              # (D, H, W) voxels; None keeps the shape
    roi_centre: Any = "centre"                                    # "centre", "label-centroid" or (x, y, z) LPS mm
    intensity: str = "minmax"                                     # "minmax" | "percentile" | "window" | "none"
    percentiles: tuple[float, float] = (0.5, 99.5)                # for intensity="percentile"
    window: tuple[float, float] = (-350.0, 1100.0)                # for intensity="window" (physical units)
    downsample: int = 1                                           # block-average by this factor after the ROI
    label_downsample: str = "first"                               # labels' block rule: one of LABEL_DOWNSAMPLES

    def __post_init__(self) -> None:
        if self.intensity not in ("minmax", "percentile", "window", "none"):
            raise VolGANError(f"intensity '{self.intensity}': choose minmax, percentile, window or none")
        if self.window[1] <= self.window[0]:
            raise VolGANError(f"window {self.window}: upper bound must exceed the lower bound")
        if int(self.downsample) < 1:
            raise VolGANError(f"downsample {self.downsample}: must be a positive integer")
        if self.label_downsample not in LABEL_DOWNSAMPLES:
            raise VolGANError(f"label_downsample '{self.label_downsample}': choose one of "
                              f"{', '.join(LABEL_DOWNSAMPLES)}")
        if isinstance(self.roi_centre, str) and self.roi_centre not in ("centre", "label-centroid"):
            raise VolGANError(f"roi_centre '{self.roi_centre}': use 'centre', 'label-centroid' or a point (x, y, z)")

    @classmethod
    def from_settings(cls, preprocess: dict) -> "Preprocess":
        """From a preset's or checkpoint's ``preprocess`` dict (JSON lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in preprocess.items()})

    def to_dict(self) -> dict:
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        if d["label_downsample"] == "first":  # recipes from before the option keep their cache keys
            del d["label_downsample"]
        return d

    def apply(self, volume: Volume, labels: Optional[Volume] = None) -> tuple[Volume, Optional[Volume]]:
        """Resample, crop/pad and normalise ``volume`` (and carry ``labels`` through the same geometry)."""
        if self.target_spacing is not None:
            volume = resample(volume, self.target_spacing)
            if labels is not None:
                labels = resample(labels, self.target_spacing, reference=volume, label=True)
        if self.roi_shape is not None:
            centre = self._centre_index(volume, labels)
            pad = float(volume.array.min())
            volume = crop_or_pad(volume, self.roi_shape, centre, pad_value=pad)
            if labels is not None:
                labels = crop_or_pad(labels, self.roi_shape, centre, pad_value=0)
        if self.downsample > 1:
            volume = downsample(volume, self.downsample)
            if labels is not None:
                labels = downsample(labels, self.downsample, label=True, label_mode=self.label_downsample)
        return normalise(volume, self.intensity, self.percentiles, self.window), labels

    def _centre_index(self, volume: Volume, labels: Optional[Volume]) -> np.ndarray:
        """Centre of the ROI in array index order (D, H, W), continuous."""
        if self.roi_centre == "centre":
            return (np.asarray(volume.shape) - 1) / 2.0
        if self.roi_centre == "label-centroid":
            if labels is None:
                raise VolGANError("roi_centre='label-centroid' needs a label folder")
            idx = np.argwhere(labels.array > 0)
            if idx.size == 0:
                raise VolGANError("roi_centre='label-centroid': the label map is empty")
            return idx.mean(axis=0)
        ijk = volume.physical_to_index(np.asarray(self.roi_centre, dtype=float))
        return np.asarray(ijk)[::-1]


def normalise(volume: Volume, mode: str = "minmax", percentiles=(0.5, 99.5), window=(-350.0, 1100.0)) -> Volume:
    """Map intensities linearly to [-1, 1] (clipped); the mapping is recorded in ``metadata``."""
    a = volume.array.astype(np.float32)
    if mode == "none":
        return volume.with_array(a)
    if mode == "minmax":
        lo, hi = float(a.min()), float(a.max())
    elif mode == "percentile":
        lo, hi = (float(v) for v in np.percentile(a, percentiles))
    elif mode == "window":
        lo, hi = float(window[0]), float(window[1])
    else:
        raise VolGANError(f"intensity '{mode}': choose minmax, percentile, window or none")
    if hi <= lo:
        raise VolGANError(f"intensity normalisation '{mode}': the volume is constant ({lo:g}); nothing to learn from it")
    out = np.clip((a - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0)
    meta = dict(volume.metadata, intensity_mode=mode, intensity_lo=f"{lo:.9g}", intensity_hi=f"{hi:.9g}")
    return volume.with_array(out.astype(np.float32), metadata=meta)


def extract_patches(volume: Volume, mask: Optional[Volume] = None, size: int = 32, stride: Optional[int] = None,
                    min_inside: float = 1.0) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """Cubes of ``size``³ on a grid with ``stride`` whose fraction of mask voxels is ≥ ``min_inside``.

    Returns ``(patches (N, size, size, size), origins)`` — each patch's LPS origin, so patches keep geometry.
    """
    stride = stride or size
    a = volume.array
    if any(s < size for s in a.shape):
        raise VolGANError(f"volume of shape {a.shape} is smaller than the {size}³ patch size")
    m = None if mask is None else (mask.array > 0)
    if m is not None and m.shape != a.shape:
        raise VolGANError(f"mask shape {m.shape} differs from the volume's {a.shape}")
    patches, origins = [], []
    for z in range(0, a.shape[0] - size + 1, stride):
        for y in range(0, a.shape[1] - size + 1, stride):
            for x in range(0, a.shape[2] - size + 1, stride):
                if m is not None and m[z:z + size, y:y + size, x:x + size].mean() < min_inside:
                    continue
                patches.append(a[z:z + size, y:y + size, x:x + size])
                origins.append(tuple(volume.index_to_physical((x, y, z))))
    if not patches:
        return np.zeros((0, size, size, size), a.dtype), []
    return np.stack(patches), origins


class CachedVolumeSet:
    """Preprocessed training volumes in one memory-mapped ``(N, D, H, W)`` float32 array.

    Built once by :meth:`build` (progress + cancel), reused while the files and the recipe are unchanged.
    ``set[i]`` is a ``(1, D, H, W)`` float32 array in [-1, 1]; ``meta`` records cases, geometry and recipe.
    Built with ``keep_labels`` (a label scheme), the label maps are kept beside the images (a ``(N, D, H, W)``
    uint8 memory map of label ids) and ``set[i]`` is ``(2, D, H, W)``: the intensity, then the label ids as
    float32 (exact for ids below 2^24), for a joint image+label generator to one-hot on the device.
    """

    def __init__(self, array: np.ndarray, meta: dict, cache_dir: Path, labels: Optional[np.ndarray] = None) -> None:
        self.array = array
        self.meta = meta
        self.cache_dir = cache_dir
        self.labels = labels

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, i: int) -> np.ndarray:
        img = np.asarray(self.array[i], dtype=np.float32)[None]
        if self.labels is None:
            return img
        return np.concatenate([img, np.asarray(self.labels[i], dtype=np.float32)[None]])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[1:])  # type: ignore[return-value]

    @staticmethod
    def key(files: Sequence[Path], recipe: dict) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"version": CACHE_VERSION, "recipe": recipe}, sort_keys=True).encode())
        for f in files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    @classmethod
    def build(
        cls,
        folder: str | os.PathLike,
        preprocess: Preprocess,
        cache_root: str | os.PathLike,
        labels_folder: str | os.PathLike | None = None,
        patch_size: Optional[int] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        keep_labels: Optional[str] = None,
    ) -> "CachedVolumeSet":
        """Preprocess every volume of ``folder`` (with ``patch_size``: cut patches inside the label mask).

        ``keep_labels`` (a label-scheme name, e.g. ``"topcow13"``) keeps each case's label map, checked
        against that scheme, for joint image+label training; it needs ``labels_folder`` and no patches.
        """
        if keep_labels is not None and (labels_folder is None or patch_size):
            raise VolGANError("keep_labels: joint image+label training needs a label folder and whole volumes "
                              "(no patches)")
        scheme = get_scheme(keep_labels) if keep_labels is not None else None
        files = list_volumes(folder)
        label_files = {case_id(p): p for p in list_volumes(labels_folder)} if labels_folder else {}
        recipe = {"preprocess": preprocess.to_dict(), "patch_size": patch_size, "labels": bool(labels_folder)}
        if scheme is not None:  # only then: caches of image-only recipes keep their keys
            recipe["keep_labels"] = scheme.name
        key = cls.key(files + sorted(label_files.values()), recipe)
        cache_dir = Path(cache_root) / key
        data_path, meta_path = cache_dir / "data.npy", cache_dir / "meta.json"
        labels_path = cache_dir / "labels.npy"
        if data_path.exists() and meta_path.exists() and (scheme is None or labels_path.exists()):
            return cls(np.load(data_path, mmap_mode="r"), json.loads(meta_path.read_text()), cache_dir,
                       np.load(labels_path, mmap_mode="r") if scheme is not None else None)
        kept: list[np.ndarray] = []
        items: list[np.ndarray] = []
        cases: list[dict] = []
        shape = None
        with Progress(len(files), "preprocess", progress, cancel) as p:
            for f in files:
                labels = None
                if labels_folder is not None:
                    if case_id(f) not in label_files:
                        raise VolGANError(f"{f}: no label map named {case_id(f)}.* in {labels_folder}")
                    labels = read_label_volume(label_files[case_id(f)])
                vol, labels = preprocess.apply(read_volume(f), labels)
                if patch_size:
                    patches, origins = extract_patches(vol, labels, size=patch_size)
                    items.extend(patches)
                    cases.extend({"case": case_id(f), "origin_lps_mm": list(o), "spacing_xyz_mm": list(vol.spacing)}
                                 for o in origins)
                else:
                    if shape is not None and vol.shape != shape:
                        raise VolGANError(f"{f}: shape {vol.shape} after preprocessing differs from {shape} "
                                          "(set an ROI shape or resample to one spacing)")
                    shape = vol.shape
                    items.append(vol.array)
                    if scheme is not None:
                        scheme.check(np.asarray(labels.array), what=str(label_files[case_id(f)]))
                        kept.append(np.asarray(labels.array).astype(np.uint8))
                    cases.append({"case": case_id(f), **vol.geometry_dict()})
                p.advance(message=f.name)
        if not items:
            raise VolGANError(f"{folder}: preprocessing produced no training samples (patches outside the mask?)")
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(data_path) as tmp:
            np.save(tmp, np.stack(items).astype(np.float32))
        if scheme is not None:
            with atomic_path(labels_path) as tmp:
                np.save(tmp, np.stack(kept))
        meta = {"folder": str(folder), "recipe": recipe, "count": len(items), "cases": cases}
        atomic_write_json(meta_path, meta)
        return cls(np.load(data_path, mmap_mode="r"), meta, cache_dir,
                   np.load(labels_path, mmap_mode="r") if scheme is not None else None)


class InfiniteSampler:
    """Endless shuffled indices, reproducible from ``seed``, split across DDP ranks without overlap.

    Each epoch is a new permutation from ``(seed, epoch)``; rank ``r`` of ``world`` takes every world-th
    index. :meth:`state_dict` / :meth:`load_state_dict` let a resumed run continue the same stream.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if size <= 0:
            raise VolGANError("the training set is empty")
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.epoch, self.pos = 0, 0

    def __iter__(self) -> Iterator[int]:
        while True:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
            mine = order[self.rank::self.world] if self.size >= self.world else order
            while self.pos < len(mine):
                i = int(mine[self.pos])
                self.pos += 1
                yield i
            self.epoch, self.pos = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.seed = int(state["epoch"]), int(state["pos"]), int(state["seed"])


class BatchFeeder:
    """``(batch, 1, D, H, W)`` float32 tensors on ``device`` in sampler order, with a resumable position.

    ``prefetch = 0`` (CPU): each batch is read from the dataset when :meth:`next` is called. ``prefetch = k``
    (CUDA): a background thread keeps up to ``k`` batches ready: read from the memory map, pinned, copied to the
    device on a side stream; :meth:`next` makes the current stream wait for that copy (an event, no host sync).
    :meth:`state_dict` is the sampler position after the last batch *handed out*, not after the prefetched ones,
    so a checkpoint resumes exactly. Use as a context manager (or call :meth:`close`) to stop the thread.
    """

    def __init__(self, dataset, sampler: InfiniteSampler, batch: int, device: Any = "cpu", channels_last: bool = False,
                 prefetch: int = 0) -> None:
        import torch

        self.dataset, self.sampler, self.batch = dataset, sampler, int(batch)
        self.device = torch.device(device)
        self.channels_last = bool(channels_last)
        self.prefetch = max(0, int(prefetch))
        self._it = iter(sampler)
        self._state = sampler.state_dict()
        self._queue = None
        self._thread = None
        self._stop = None

    # -- reading ---------------------------------------------------------------------------------------------
    def _read(self):
        import torch

        idx = [next(self._it) for _ in range(self.batch)]
        x = torch.from_numpy(np.stack([self.dataset[i] for i in idx]))
        return x, self.sampler.state_dict()

    def _to_device(self, x):
        import torch

        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def _produce(self) -> None:
        import torch

        try:
            stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
            while not self._stop.is_set():
                x, state = self._read()
                event = None
                if stream is not None:
                    x = x.pin_memory()
                    with torch.cuda.stream(stream):
                        x = x.to(self.device, non_blocking=True)
                        if self.channels_last:
                            x = x.contiguous(memory_format=torch.channels_last_3d)
                        event = torch.cuda.Event()
                        event.record(stream)
                self._put((x, state, event))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item) -> None:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _start(self) -> None:
        import queue
        import threading

        self._queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="volgan-batch-prefetch", daemon=True)
        self._thread.start()

    # -- public ----------------------------------------------------------------------------------------------
    def next(self):
        """The next batch on the device (the current CUDA stream may use it at once)."""
        import torch

        if self.prefetch == 0:
            x, self._state = self._read()
            return self._to_device(x)
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        x, state, event = item
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            x.record_stream(current)  # the side stream allocated it: keep the memory until this stream is done
        self._state = state
        return x

    def state_dict(self) -> dict:
        """Sampler position after the last batch returned by :meth:`next`."""
        return dict(self._state)

    def close(self) -> None:
        if self._thread is None:
            return
        import queue

        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)
        self._thread = None

    def __enter__(self) -> "BatchFeeder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
