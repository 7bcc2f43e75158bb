"""`make demo`: run what the extension can do end to end on built-in data, writing to ``demo_output/``.

Each step is a function ``step(out: Path, log: list[str]) -> dict`` that writes its files under ``out`` and
returns figures for ``demo.json``; ``summary.md`` collects what every step reported. The output folder is
built atomically: an interrupted demo leaves the previous ``demo_output/`` untouched.

    python -m GANTrainerLib.demo --out demo_output
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from VolGANCore.atomic import atomic_directory, atomic_write_json, atomic_write_text

Step = Callable[[Path, list], dict]


def step_environment(out: Path, log: list[str]) -> dict:
    from VolGANCore.env import environment_report, format_environment

    rep = environment_report()
    atomic_write_json(out / "environment.json", rep)
    log.extend(["```", *format_environment(rep), "```"])
    return {"devices": rep["compute"].get("devices", [])}


STEPS: list[tuple[str, Step]] = [
    ("Environment", step_environment),
]


def run(out: Path, steps: list[tuple[str, Step]] | None = None) -> dict:
    steps = steps if steps is not None else STEPS
    results: dict = {}
    lines = ["# SlicerVolumetricGAN demo", "", f"Run on {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    with atomic_directory(out, overwrite=True) as tmp:
        for title, step in steps:
            t0 = time.perf_counter()
            print(f"[demo] {title} ...", flush=True)
            log: list[str] = []
            figures = step(tmp, log)
            seconds = time.perf_counter() - t0
            results[title] = {"seconds": round(seconds, 2), **(figures or {})}
            lines += [f"## {title} ({seconds:.1f} s)", "", *log, ""]
            print(f"[demo] {title} done in {seconds:.1f} s", flush=True)
        atomic_write_text(tmp / "summary.md", "\n".join(lines) + "\n")
        atomic_write_json(tmp / "demo.json", results)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_output", help="output folder (replaced atomically)")
    args = ap.parse_args(argv)
    results = run(Path(args.out))
    print(json.dumps(results, indent=2))
    print(f"[demo] outputs in {args.out}/ (start with {args.out}/summary.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
