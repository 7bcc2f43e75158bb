"""Benchmark protocol shared by every ``benchmarks/bench_*.py`` script.

A script defines ``cases(quick: bool) -> list[Case]``. Cases with the same ``group`` are measured side by
side on the same machine in the same run; the one marked ``reference=True`` is the peer the others are
compared with (ratio = reference median / case median, so > 1 means faster than the peer).
A case's ``fn`` may return a dict of extra figures (accuracy, peak memory, ...) that go into the table.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from typing import Any, Callable, Optional


@dataclasses.dataclass
class Case:
    group: str                                   # cases compared side by side, e.g. "Tb.Th 256^3"
    name: str                                    # what is measured, e.g. "MorphometryLib" or "porespy 3.2"
    fn: Callable[[], Optional[dict[str, Any]]]   # the timed call; may return extra figures
    setup: Optional[Callable[[], None]] = None   # untimed, run before every repeat
    repeats: int = 3                             # median of this many timed calls (after one warm-up)
    warmup: int = 1                              # untimed calls first (JIT, caches, lazy imports)
    reference: bool = False                      # the peer the group's ratios are taken against
    unit_count: Optional[float] = None           # items per call, to report a throughput (items/s)
    unit: str = "items"


@dataclasses.dataclass
class Result:
    group: str
    name: str
    median_s: float
    min_s: float
    repeats: int
    extra: dict[str, Any]
    throughput: Optional[float] = None
    unit: str = "items"
    ratio_vs_reference: Optional[float] = None
    reference_name: Optional[str] = None


def measure(case: Case) -> Result:
    extra: dict[str, Any] = {}
    for _ in range(case.warmup):
        if case.setup:
            case.setup()
        case.fn()
    times = []
    for _ in range(case.repeats):
        if case.setup:
            case.setup()
        gc.collect()
        t0 = time.perf_counter()
        out = case.fn()
        times.append(time.perf_counter() - t0)
        if out:
            extra.update(out)
    med = statistics.median(times)
    thr = case.unit_count / med if case.unit_count else None
    return Result(case.group, case.name, med, min(times), len(times), extra, thr, case.unit)


def attach_ratios(results: list[Result], cases: list[Case]) -> None:
    refs = {c.group: c.name for c in cases if c.reference}
    by_key = {(r.group, r.name): r for r in results}
    for r in results:
        ref_name = refs.get(r.group)
        if ref_name and ref_name != r.name and (r.group, ref_name) in by_key:
            ref = by_key[(r.group, ref_name)]
            # per item when both count items (the calls may process different numbers), else per call
            r.ratio_vs_reference = r.throughput / ref.throughput if r.throughput and ref.throughput \
                else ref.median_s / r.median_s
            r.reference_name = ref_name
