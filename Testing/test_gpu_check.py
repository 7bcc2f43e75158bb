"""benchmarks/gpu_check.py: the dry run passes on the CPU (so the GPU check cannot rot), and its bookkeeping holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    try:   # its dataclasses resolve their annotations through sys.modules
        yield load_benchmark("gpu_check", register=True)
    finally:
        sys.modules.pop("gpu_check", None)


@pytest.mark.slow
def test_dry_run_passes_every_step_and_skips_only_the_cuda_ones(gc, tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--budget-s", "1500"],
                          capture_output=True, text=True, timeout=1800)
    summary = json.loads((out / "summary.json").read_text())
    by_name = {r["step"]: r for r in summary["steps"]}
    steps = gc.all_steps()
    assert list(by_name) == [s.name for s in steps], "every step is reported, in order"
    bad = {n: (r["status"], r["reason"]) for n, r in by_name.items() if r["status"] not in ("pass", "skipped")}
    assert not bad and proc.returncode == 0, (bad, proc.stdout[-3000:], proc.stderr[-3000:])
    for s in steps:
        r = by_name[s.name]
        if s.cuda_only:
            assert r["status"] == "skipped" and r["reason"].startswith("CUDA only"), r
        else:
            assert r["status"] == "pass", r
    md = (out / "summary.md").read_text()
    assert "## Correctness" in md and "## Throughput" in md and "| torchrun | pass |" in md
    assert by_name["torchrun"]["figures"]["backend"] == "gloo"           # a real process group under torchrun
    assert by_name["inf skip bf16"]["status"] == "pass"
    assert by_name["train step joint"]["figures"]["variants in the pool"] == 4   # labelled reals, 4 variants
    assert any("ratio vs anchor" in k for k in by_name["train CoW"]["figures"])
    for preset in ("spongiosa-pgan", "cow-stylegan", "cow-stylegan-labels"):  # step 4 trained and exported all
        assert (out / "models" / f"{preset}.vgan").is_file()
        assert (out / "models" / f"{preset}.card.md").is_file()
    assert (out / "gpu_check.log").stat().st_size > 0


def _check(gc, tmp_path, budget=60.0):
    return gc.Check(tmp_path / "c", budget, dry=True, device="cpu", only=None)


def test_a_step_past_its_box_is_reported_timed_out_and_the_next_one_still_runs(gc, tmp_path):
    check = _check(gc, tmp_path)

    def spin(check, ctx):
        while True:
            ctx.check_time()
            time.sleep(0.01)

    check.run_step(gc.Step("spin", "correctness", spin, box_s=0.1))
    check.run_step(gc.Step("after", "correctness", lambda c, x: {"n": 1}, box_s=1.0))
    statuses = [(r["step"], r["status"]) for r in check.results]
    assert statuses == [("spin", "timed out"), ("after", "pass")]
    assert check.results[0]["reason"] == "ran past its 0 s box"
    saved = json.loads((tmp_path / "c" / "summary.json").read_text())  # rewritten after every step
    assert [r["status"] for r in saved["steps"]] == ["timed out", "pass"]


def test_failures_crashes_and_skips_get_one_line_reasons(gc, tmp_path):
    check = _check(gc, tmp_path)

    def failing(check, ctx):
        gc.expect(False, "outputs differ by 3e-2")

    def crashing(check, ctx):
        raise RuntimeError("CUDA error: an illegal memory access\nmore lines")

    def skipping(check, ctx):
        raise gc.Skip("this GPU has no bf16")

    for name, fn in (("failing", failing), ("crashing", crashing), ("skipping", skipping)):
        check.run_step(gc.Step(name, "correctness", fn, box_s=5.0))
    check.run_step(gc.Step("gpu", "correctness", lambda c, x: None, box_s=5.0, cuda_only=True))
    got = {r["step"]: (r["status"], r["reason"]) for r in check.results}
    assert got == {"failing": ("fail", "outputs differ by 3e-2"),
                   "crashing": ("fail", "RuntimeError: CUDA error: an illegal memory access"),
                   "skipping": ("skipped", "this GPU has no bf16"),
                   "gpu": ("skipped", "CUDA only: dry run on the CPU")}
    assert "Traceback" in (tmp_path / "c" / "gpu_check.log").read_text()   # the crash's traceback is logged


def test_steps_that_no_longer_fit_the_budget_are_skipped_with_the_reason(gc, tmp_path):
    check = _check(gc, tmp_path, budget=5.0)
    ran = []
    check.run_step(gc.Step("big", "throughput", lambda c, x: ran.append(1), box_s=60.0))
    assert not ran and check.results[0]["status"] == "skipped"
    assert check.results[0]["reason"].startswith("budget: ")


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    for args, text in ((["--only", "warp drive"], "unknown"), (["--budget-s", "0"], "must be > 0")):
        proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "x"), *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and text in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_device_script_runs_the_check_and_packs_what_comes_back(tmp_path):
    """benchmarks/gpu_check_device.sh (the one command for a lent machine) with this venv's python as python3."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "python3"          # a wrapper, not a link: a linked venv python would not find its venv
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)

    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", OUT=str(tmp_path / "back"),
               GPU_CHECK_WHEELS=str(bindir))   # no wheels to install here
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check_device.sh"), "60", "--dry-run", "--only",
                           "batch feeder"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    back = sorted(p.name for p in (tmp_path / "back").iterdir())
    assert back == ["gpu_check.log", "summary.json", "summary.md"]
    summary = json.loads((tmp_path / "back" / "summary.json").read_text())
    assert {r["step"]: r["status"] for r in summary["steps"]}["batch feeder"] == "pass"
    assert "gpu_check_device: set-up" in (tmp_path / "back" / "gpu_check.log").read_text()
