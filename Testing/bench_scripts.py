"""The scripts of ``benchmarks/`` as modules, for tests of their functions (``benchmarks/`` is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, register: bool = False) -> ModuleType:
    """``benchmarks/<name>.py`` imported as module ``name``. ``register`` puts it in ``sys.modules`` before it runs
    (a script whose dataclasses resolve their annotations there); the caller removes it when done."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
