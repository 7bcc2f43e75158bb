#!/usr/bin/env python
"""Run the benchmark scripts and print a Markdown table (median of repeats, ratios against named peers).

    python benchmarks/run.py                 # every benchmarks/bench_*.py
    python benchmarks/run.py phantoms        # only bench_phantoms.py (or scripts whose name contains it)
    python benchmarks/run.py --quick         # smaller sizes, for a smoke run

Results are also written to benchmarks/results/<script>.json with the machine description.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Result, attach_ratios, measure  # noqa: E402


def machine() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def fmt_row(r: Result) -> str:
    ratio = f"{r.ratio_vs_reference:.2f}× vs {r.reference_name}" if r.ratio_vs_reference else ""
    thr = f"{r.throughput:.3g} {r.unit}/s" if r.throughput else ""
    extra = "; ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.extra.items())
    return f"| {r.group} | {r.name} | {r.median_s:.3f} | {thr} | {ratio} | {extra} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("filter", nargs="*", help="run only scripts whose file name contains one of these")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = ap.parse_args(argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.filter:  # a name picks bench_<name>.py exactly; otherwise every script whose name contains it
        exact = [s for s in scripts if s.stem[len("bench_"):] in args.filter]
        scripts = exact or [s for s in scripts if any(f in s.name for f in args.filter)]
    if not scripts:
        print("no benchmark scripts matched", file=sys.stderr)
        return 2
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    print(f"machine: {json.dumps(machine())}")
    print("| group | case | median s | throughput | ratio | figures |")
    print("|---|---|---|---|---|---|")
    for script in scripts:
        mod = load(script)
        cases = mod.cases(args.quick)
        results = []
        for case in cases:
            results.append(measure(case))
        attach_ratios(results, cases)
        for r in results:
            print(fmt_row(r), flush=True)
        (out_dir / f"{script.stem}.json").write_text(json.dumps(
            {"machine": machine(), "quick": args.quick, "results": [r.__dict__ for r in results]}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
