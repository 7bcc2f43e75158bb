"""Shared fixtures. Module folders go on sys.path as Slicer puts them (for the *SceneLogic modules)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

for _module in ("MorphometryLogic", "VolumetricGAN", "GANTrainer"):
    _p = str(REPO / _module)
    if _p not in sys.path:
        sys.path.insert(0, _p)


def shared_file(*parts: str) -> Path:
    """A file under ../shared; skips the test (saying why) only when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared test data folder ../shared is not beside this checkout")
    return path


@pytest.fixture(autouse=True)
def _volgan_home(tmp_path_factory, monkeypatch):
    """Background jobs index themselves under $VOLGAN_HOME/jobs: a fresh one per test, never the user's."""
    monkeypatch.setenv("VOLGAN_HOME", str(tmp_path_factory.mktemp("volgan-home")))


def wait_for(job, condition, timeout: float = 300, interval: float = 0.2) -> dict:
    """Poll a background job (``poll()``/``lastLogLines()``) until ``condition(status)``; fails with its log."""
    import time

    t0 = time.time()
    while time.time() - t0 < timeout:
        status = job.poll()
        if condition(status):
            return status
        time.sleep(interval)
    raise AssertionError(f"timed out; last status {job.poll()}\n{job.lastLogLines()}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def headless():
    """A real MRML scene (slicer-core) wired with application and module logics."""
    from VolGANCore import mrml

    h = mrml.create_headless_scene()
    yield h
    h.close()
