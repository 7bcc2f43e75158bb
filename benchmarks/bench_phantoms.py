"""Phantom generation speed: CoW TOF-MRA volumes (32×128×128) and trabecular-bone patches (32³).

    .venv/bin/python benchmarks/run.py phantoms            # 100 CoW volumes, 1000 bone patches
    .venv/bin/python benchmarks/run.py phantoms --quick    # 10 and 100

Each case generates the whole set in memory (no disk writes) and reports seconds per volume; the issue's
target is "a few minutes" for either full set on a 2-core CPU machine.
"""

from __future__ import annotations

import time

import numpy as np

from harness import Case
from VolumetricGANLib.phantoms import make_bone_phantom, make_cow_phantom


def _cow(n: int):
    def fn():
        t0 = time.perf_counter()
        frac = [make_cow_phantom(0, index=i)[2]["vessel_fraction"] for i in range(n)]
        return {"s_per_volume": round((time.perf_counter() - t0) / n, 3), "mean_vessel_fraction": round(float(np.mean(frac)), 4)}
    return fn


def _bone(n: int):
    def fn():
        t0 = time.perf_counter()
        err = [make_bone_phantom(0, index=i)[2]["field"]["relative_error"] for i in range(n)]
        return {"s_per_patch": round((time.perf_counter() - t0) / n, 4), "max_rel_error_tbth_da": round(float(np.max(err)), 3)}
    return fn


def cases(quick: bool) -> list[Case]:
    n_cow, n_bone = (10, 100) if quick else (100, 1000)
    return [
        Case("CoW TOF-MRA 32x128x128", f"{n_cow} volumes", _cow(n_cow), repeats=1, warmup=0, unit_count=n_cow,
             unit="volumes"),
        Case("bone patches 32^3", f"{n_bone} patches", _bone(n_bone), repeats=1, warmup=0, unit_count=n_bone,
             unit="patches"),
    ]
