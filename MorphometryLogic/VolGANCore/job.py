"""The runner of a background job: ``python -m VolGANCore.job <job folder>`` (started by
:meth:`VolGANCore.jobs.BackgroundJob.start`).

It reads the ``volgan`` arguments from the folder's ``job.json``, sends its own output to ``process.log``
(file descriptors 1 and 2, so nothing goes to the launcher's pipe and a closed Slicer cannot break it),
records its pid, creation time and state, runs :func:`VolGANCore.cli.main` in this process, and records how
it ended: ``finished``; ``failed`` with the error line the command printed; ``cancelled`` (exit 130); or
``stopped`` (a stop was requested and the command ended cleanly, as training does after its checkpoint).

A ``stop-requested`` file in the folder is watched from a thread and turned into SIGINT in this process
(``_thread.interrupt_main``): the trainer's GracefulStop finishes the step and writes a checkpoint, other
commands get KeyboardInterrupt and exit 130. No signal crosses processes, so it works alike on Windows.
While the runner runs, :func:`VolGANCore.cli.progress_from_args` returns :func:`active_progress`, which writes
throttled progress into ``job.json`` instead of drawing a tqdm bar.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional, Sequence

from .atomic import atomic_write_json
from .jobs import JOB_FILE, LOG_FILE, STOP_FILE, read_job
from .progress import ProgressEvent, set_active_job_progress
from .progress import active_job_progress as active_progress

__all__ = ["main", "active_progress", "JobRecorder"]


class JobRecorder:
    """Keeps the job's record and rewrites ``job.json`` atomically; as a progress callback, at most once per
    ``min_interval_s``."""

    def __init__(self, folder: Path, record: dict[str, Any], min_interval_s: float = 1.0) -> None:
        self.folder = Path(folder)
        self.record = record
        self.min_interval_s = min_interval_s
        self._last_progress = -1e30

    def write(self, **fields: Any) -> None:
        self.record.update(fields)
        self.record["updated"] = time.time()
        atomic_write_json(self.folder / JOB_FILE, self.record)

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.min_interval_s:
            return
        self._last_progress = now
        self.write(progress={"description": event.description, "done": event.done, "total": event.total,
                             "fraction": event.fraction, "eta_s": event.eta_s, "message": event.message})


class _StopWatcher(threading.Thread):
    """Turns the stop-request file into one SIGINT in the main thread (never more than one, never after close)."""

    def __init__(self, path: Path, interval_s: float = 0.2) -> None:
        super().__init__(name="volgan-stop-watcher", daemon=True)
        self.path = path
        self.interval_s = interval_s
        self.sent = False
        self._closed = False
        self._lock = threading.Lock()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            if self.path.exists():
                with self._lock:
                    if not self._closed:
                        self.sent = True
                        try:
                            _thread.interrupt_main(signal.SIGINT)
                        except TypeError:        # Python 3.9 (Slicer 5.8): SIGINT is the only choice
                            _thread.interrupt_main()
                return
            self._done.wait(self.interval_s)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._done.set()


def _redirect_output(log_path: Path) -> None:
    """Point file descriptors 1 and 2 at the log (append), line-buffered, UTF-8."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    fd = os.open(str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if sys.stdout is None or sys.stderr is None:       # (a windowless interpreter has no streams)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8", errors="backslashreplace", line_buffering=True)


def _run_command(argv: Sequence[str]) -> int:
    """``volgan <argv>`` in this process; every way it can end becomes an exit code."""
    from .cli import main as cli_main

    try:
        return int(cli_main(list(argv)) or 0)
    except SystemExit as exc:                       # argparse: 2 for a usage error (its message is printed)
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"volgan {' '.join(argv[:1])}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1


def _final_state(rc: int, stop_sent: bool) -> str:
    if rc == 0:
        return "stopped" if stop_sent else "finished"
    return "cancelled" if rc == 130 else "failed"


def main(args: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if args is None else args)
    if len(args) != 1:
        print("usage: python -m VolGANCore.job JOB_FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    record = read_job(folder)
    if record is None or not isinstance(record.get("argv"), list):
        print(f"{folder / JOB_FILE}: not found or not a job record (start jobs with BackgroundJob.start)",
              file=sys.stderr)
        return 2
    log_path = folder / LOG_FILE
    _redirect_output(log_path)
    log_start = log_path.stat().st_size
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even when the launcher ignored SIGINT
    recorder = JobRecorder(folder, record)
    try:
        import psutil

        create_time = psutil.Process().create_time()
    except ImportError:
        create_time = None
    recorder.write(state="running", pid=os.getpid(), create_time=create_time, started=time.time())
    watcher = _StopWatcher(folder / STOP_FILE)
    rc = None
    set_active_job_progress(recorder)
    try:
        watcher.start()
        rc = _run_command(record["argv"])
        watcher.close()
    except KeyboardInterrupt:      # the one interrupt arrived between the command's end and close()
        watcher.close()
        if rc is None:
            rc = 130
    finally:
        set_active_job_progress(None)
    state = _final_state(rc, watcher.sent)
    message = ""
    if state == "failed":
        sys.stdout.flush()
        sys.stderr.flush()
        with open(log_path, "rb") as fh:
            fh.seek(log_start)
            tail = fh.read().decode("utf-8", "replace")
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        message = lines[-1] if lines else f"exit status {rc}"
    recorder.write(state=state, returncode=rc, message=message, ended=time.time())
    return rc


if __name__ == "__main__":  # pragma: no cover - run as `python -m VolGANCore.job`
    # import the module under its own name (not as __main__), like every other VolGANCore module
    from VolGANCore.job import main as _main

    sys.exit(_main())
