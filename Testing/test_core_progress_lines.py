"""Progress on the command line: a bar on a terminal, a few plain lines in logs (never one per step, never \\r)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from VolGANCore.progress import LineProgress, Progress, ProgressEvent, TqdmProgress, terminal_progress


def test_line_progress_writes_about_one_line_per_ten_percent_of_a_thousand_steps():
    out = io.StringIO()
    with Progress(1000, "steer", LineProgress(out)) as p:
        for _ in range(1000):
            p.advance(message="loss 0.1")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 11 <= len(lines) <= 13, lines           # start, every 10 %, end
    assert lines[0].startswith("steer:   0% (0/1000)") and lines[-1].startswith("steer: 100% (1000/1000)")
    assert lines[-1].split(" — ")[0].endswith("done")


def test_line_progress_also_writes_when_time_passes_without_ten_percent():
    out = io.StringIO()
    lp = LineProgress(out, every_percent=10, every_s=30)
    for t, done in ((0, 0), (10, 1), (31, 2), (40, 3), (62, 4)):   # 1 % steps, slowly
        lp(ProgressEvent("train", done, 100, "", float(t)))
    lines = out.getvalue().splitlines()
    assert [ln.split(" (")[1].split(")")[0] for ln in lines] == ["0/100", "2/100", "4/100"]
    assert "about" in lines[1] and "left" in lines[1]


def test_unknown_totals_report_by_time_only():
    out = io.StringIO()
    lp = LineProgress(out, every_s=30)
    for t in range(0, 100, 5):
        lp(ProgressEvent("scan", t, None, "", float(t)))
    assert len(out.getvalue().splitlines()) == 4        # 0, 30, 60, 90 s


def test_terminal_progress_picks_a_bar_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(terminal_progress(stream=Tty()), TqdmProgress)
    assert isinstance(terminal_progress(stream=io.StringIO()), LineProgress)
    assert terminal_progress(quiet=True) is None


@pytest.mark.slow
def test_a_command_writing_to_a_pipe_logs_plain_lines(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "VolGANCore.cli", "phantom", "bone", "--n", "40", "--out",
                           str(tmp_path / "bone")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr
    progress = [ln for ln in proc.stderr.splitlines() if "%" in ln]
    assert 2 <= len(progress) <= 14, proc.stderr        # not one line per volume
    assert progress[-1].split(" — ")[0].endswith("done")
