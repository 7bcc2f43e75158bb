"""A reduced downstream segmentation experiment on built-in CoW phantoms (for ``make demo``; CPU, ~1–2 minutes).

Real set: ``n_real`` phantoms with their TopCoW labels. Synthetic set: either other phantoms (a different seed)
standing in for generated volumes, their labels withheld so that the teacher labels them, or a folder of generated
volumes (e.g. the demo's ``generated/tiny-cow/samples``); then the real phantoms are made on the generated grid,
and both are block-averaged down when larger than the small configuration's budget. The numbers of the small
configuration are a pipeline check, not a statement about the generator: its networks train for a minute.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from VolGANCore.dataset import case_id, list_volumes
from VolGANCore.errors import VolGANError
from VolGANCore.io import read_volume, write_volume
from VolGANCore.progress import CancelToken, ProgressCallback

__all__ = ["reduced_demo", "torch_threads", "DEMO_SHAPE", "DEMO_SPACING_MM"]

DEMO_SHAPE = (16, 64, 64)     # (D, H, W): the 32×128×128 ROI at half resolution
DEMO_SPACING_MM = 1.2         # twice the phantoms' default 0.6 mm


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads, restoring the previous number afterwards.

    On a small shared CPU one thread is the robust choice: two OpenMP threads run ~1.6× faster on an idle 2-core
    machine but up to 30× slower when another process holds one of the cores (threads wait at every barrier).
    """
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _downsample_folder(src: Path, dst: Path, budget: Sequence[int]) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Block-average the volumes of ``src`` by one integer factor per axis so that they fit ``budget``."""
    files = list_volumes(src)
    first = read_volume(files[0])
    f = [max(1, math.ceil(s / b)) for s, b in zip(first.shape, budget)]
    dst.mkdir(parents=True, exist_ok=True)
    shape = spacing = None
    for p in files:
        v = read_volume(p)
        if v.shape != first.shape:
            raise VolGANError(f"{p}: shape {v.shape} differs from {first.shape} of {files[0].name} "
                              "(the demo needs one shape)")
        a = v.array
        if any(k > 1 for k in f):
            d, h, w = (s // k * k for s, k in zip(a.shape, f))
            a = a[:d, :h, :w].reshape(d // f[0], f[0], h // f[1], f[1], w // f[2], f[2]).mean(axis=(1, 3, 5))
        sp = (v.spacing[0] * f[2], v.spacing[1] * f[1], v.spacing[2] * f[0])
        out = v.with_array(a.astype(np.float32), spacing=sp)
        write_volume(out, dst / f"{case_id(p)}.nii.gz")
        shape, spacing = out.shape, out.spacing
    return shape, spacing  # type: ignore[return-value]


def reduced_demo(
    out_dir: str | os.PathLike,
    synthetic_dir: str | os.PathLike | None = None,   # generated volumes; default: stand-in phantoms
    n_real: int = 6,                                  # real labelled phantoms
    n_synthetic: int = 6,                             # stand-in synthetic phantoms (ignored with synthetic_dir)
    folds: int = 2,
    epochs: int | None = None,                        # small config default (6 × 10 iterations)
    label_scheme: str = "topcow13",
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = True,
    threads: int | None = 1,                          # torch CPU threads during the run (None: leave as is)
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Run the small configuration end to end and return a summary dict (written also to ``summary.json``).

    ``out_dir`` gets ``real/`` (phantoms, images + labels), ``synthetic/`` (stand-ins or the down-sampled
    generated volumes) and ``experiment/`` (results.json, results.md, dice_boxplot.png, checkpoints, ...).
    """
    from VolGANCore.atomic import atomic_write_json
    from VolumetricGANLib.phantoms import write_cow_dataset

    from .experiment import _finite_json, run_segmentation_experiment

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape, spacing = DEMO_SHAPE, (DEMO_SPACING_MM,) * 3
    if synthetic_dir is not None:
        syn_images = out / "synthetic" / "images"
        if syn_images.exists() and overwrite:
            import shutil

            shutil.rmtree(out / "synthetic")
        shape, spacing = _downsample_folder(Path(synthetic_dir), syn_images, DEMO_SHAPE)
        source = f"generated volumes from {synthetic_dir}"
    else:
        syn = write_cow_dataset(out / "synthetic", n=n_synthetic, seed=seed + 1, shape=shape, spacing_mm=spacing,
                                overwrite=overwrite, progress=progress, cancel=cancel)
        syn_images = syn / "images"
        source = f"{n_synthetic} stand-in phantoms (seed {seed + 1}; their labels are not used: the teacher labels them)"
    real = write_cow_dataset(out / "real", n=n_real, seed=seed, shape=shape, spacing_mm=spacing,
                             overwrite=overwrite, progress=progress, cancel=cancel)
    with torch_threads(threads):
        res = run_segmentation_experiment(real / "images", real / "labels", syn_images, out / "experiment",
                                          label_scheme=label_scheme, folds=folds, config="small", epochs=epochs,
                                          device=device, seed=seed, overwrite=overwrite, progress=progress,
                                          cancel=cancel, log=log)
    summary = {
        "threads": threads,
        "seconds": round(time.perf_counter() - t0, 1),
        "experiment_seconds": res["runtime_s"],
        "real": f"{n_real} CoW phantoms {tuple(shape)} at {tuple(round(s, 3) for s in spacing)} mm",
        "synthetic": source,
        "folds": folds,
        "label_scheme": label_scheme,
        "mean_dice": {r: res["summary"][r]["mean_dice"] for r in res["settings"]["regimes"]},
        "mean_hd95_mm": {r: res["summary"][r]["mean_hd95_mm"] for r in res["settings"]["regimes"]},
        "tests": [{"a": t["a"], "b": t["b"], "n": t["n"], "p_value": t["p_value"]} for t in res["tests"]],
        "results": str(out / "experiment" / "results.json"),
        "report": str(out / "experiment" / "results.md"),
        "boxplot": str(out / "experiment" / "dice_boxplot.png"),
    }
    atomic_write_json(out / "summary.json", _finite_json(summary))
    return summary
