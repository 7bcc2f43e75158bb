"""Border artefacts: does a generated volume change towards its faces in a way the real volumes do not?

Convolutional generators with zero padding can paint frames along the faces of every sample (most visibly a
progressive generator, whose 4³ and 8³ levels are nearly all border). Each voxel is assigned to a *shell* by its
distance to the nearest face (0 = on a face). :func:`border_profile` pools a set's intensities per shell (mean,
SD, voxel count); :func:`frame_index` compares two profiles after taking each shell relative to the set's whole
volume, so a global brightness offset does not count, only structure tied to the border does.

Used by the training quick metrics (``metrics/frame_index``) and by ``volgan evaluate`` (the report's
``border`` section, with the real-vs-real value between two halves of the real set for scale).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["border_profile", "frame_index", "border_report"]


def _shells(shape: Sequence[int]) -> np.ndarray:
    """Each voxel's distance in voxels to the nearest face of a volume of ``shape`` (0 on the border)."""
    d = None
    for axis, n in enumerate(shape):
        i = np.arange(n)
        a = np.minimum(i, n - 1 - i).reshape([-1 if k == axis else 1 for k in range(len(shape))])
        d = a if d is None else np.minimum(d, a)
    return np.broadcast_to(d, tuple(shape))


def border_profile(volumes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per shell (distance to the nearest face, 0 = border voxels): mean, SD and voxel count of ``(n, ...)``
    volumes, pooled over samples and the shell's voxels."""
    n = len(volumes)
    shells = _shells(np.shape(volumes)[1:]).ravel()
    count = np.bincount(shells).astype(np.float64)
    total = np.zeros_like(count)
    squares = np.zeros_like(count)
    for volume in volumes:  # one at a time: a float64 copy of a whole CoW set would not fit comfortably
        x = np.asarray(volume, np.float64).ravel()
        total += np.bincount(shells, x, len(count))
        squares += np.bincount(shells, x * x, len(count))
    mean = total / (count * n)
    sd = np.sqrt(np.maximum(squares / (count * n) - mean ** 2, 0.0))
    return mean, sd, count


def frame_index(real_profile, fake_profile) -> float:
    """How much more the generated volumes change with distance to the border than the real ones do.

    Takes two :func:`border_profile` results. Each shell's mean and SD are taken relative to the whole
    volume's; the differences between generated and real are combined as a voxel-weighted RMS over shells and
    divided by the real voxel SD. About 0 when the border looks like the inside (as in the data); border frames
    (zero padding at the coarse levels of a progressive generator) raise it.
    """
    (rm, rs, count), (fm, fs, _) = real_profile, fake_profile
    w = count / count.sum()

    def relative(mean, sd):
        overall = float((w * mean).sum())
        overall_sd = math.sqrt(float((w * (sd ** 2 + (mean - overall) ** 2)).sum()))
        return mean - overall, sd - overall_sd, overall_sd

    rm_rel, rs_rel, real_sd = relative(rm, rs)
    fm_rel, fs_rel, _ = relative(fm, fs)
    if not real_sd > 0:
        return float("nan")
    return math.sqrt(float((w * ((fm_rel - rm_rel) ** 2 + (fs_rel - rs_rel) ** 2)).sum())) / real_sd


def border_report(real: np.ndarray, fake: np.ndarray, half_a: Sequence[int], half_b: Sequence[int]) -> dict:
    """The evaluation report's ``border`` section: the frame index of generated vs real and of the two real
    halves (for scale), and both profiles (per shell: distance in voxels, voxel count, mean and SD)."""
    pr, pf = border_profile(real), border_profile(fake)
    halves = frame_index(border_profile(real[list(half_a)]), border_profile(real[list(half_b)]))

    def finite(v: float):
        return float(v) if math.isfinite(v) else None

    return {
        "frame_index": {"real_vs_generated": finite(frame_index(pr, pf)), "real_vs_real": finite(halves)},
        "profile": {"distance_voxels": list(range(len(pr[0]))), "voxels": [int(c) for c in pr[2]],
                    "real": {"mean": pr[0].tolist(), "sd": pr[1].tolist()},
                    "generated": {"mean": pf[0].tolist(), "sd": pf[1].tolist()}},
    }
