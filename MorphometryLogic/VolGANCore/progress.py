"""Progress reporting and cancellation, one protocol for every long-running function.

A long function takes ``progress: ProgressCallback | None`` and ``cancel: CancelToken | None`` and drives
them through :class:`Progress`::

    def make_phantoms(n, progress=None, cancel=None):
        with Progress(n, "phantoms", progress, cancel) as p:
            for i in range(n):
                ...
                p.advance()          # reports, and raises Cancelled if cancel.cancel() was called

The callback receives a :class:`ProgressEvent`. The CLI passes :class:`TqdmProgress` (a tqdm bar) when stderr is a
terminal and :class:`LineProgress` (a plain line every 10 % or 30 s) when it is a file or pipe (logs, CI); a
Slicer widget passes a function that updates its progress bar and calls ``slicer.app.processEvents()``,
and a Cancel button that calls ``token.cancel()``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Optional

from .errors import Cancelled

__all__ = ["ProgressEvent", "ProgressCallback", "CancelToken", "Progress", "TqdmProgress", "LineProgress",
           "RecordingProgress", "terminal_progress", "active_job_progress", "set_active_job_progress"]


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """One progress report: ``done`` of ``total`` steps of the task ``description``."""

    description: str
    done: float
    total: float | None
    message: str = ""
    elapsed_s: float = 0.0
    finished: bool = False

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))

    @property
    def eta_s(self) -> float | None:
        f = self.fraction
        if not f or f <= 0 or self.elapsed_s <= 0:
            return None
        return self.elapsed_s * (1.0 - f) / f


ProgressCallback = Callable[[ProgressEvent], None]


class CancelToken:
    """Thread-safe cancellation flag shared between a UI (or signal handler) and a worker."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


class Progress:
    """Counts steps of one task, forwards events to a callback, and checks a cancel token at each step."""

    def __init__(
        self,
        total: float | None,
        description: str = "",
        callback: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        min_interval_s: float = 0.0,
    ) -> None:
        self.total = total
        self.description = description
        self.callback = callback
        self.cancel = cancel
        self.done = 0.0
        self.min_interval_s = min_interval_s
        self._t0 = time.perf_counter()
        self._last_emit = -1e30

    def __enter__(self) -> "Progress":
        self._emit("", force=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._emit("", force=True, finished=True)

    def advance(self, n: float = 1, message: str = "") -> None:
        """Add ``n`` finished steps, report, and raise :class:`Cancelled` if cancellation was requested."""
        self.done += n
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        self._emit(message)

    def set(self, done: float, message: str = "") -> None:
        self.done = done
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        self._emit(message)

    def _emit(self, message: str, force: bool = False, finished: bool = False) -> None:
        if self.callback is None:
            return
        now = time.perf_counter()
        if not force and now - self._last_emit < self.min_interval_s:
            return
        self._last_emit = now
        self.callback(ProgressEvent(self.description, self.done, self.total, message, now - self._t0, finished))


class TqdmProgress:
    """A :data:`ProgressCallback` that draws one tqdm bar per task description (for the CLI)."""

    def __init__(self, disable: bool = False, **tqdm_kwargs) -> None:
        self.disable = disable
        self.kwargs = tqdm_kwargs
        self._bars: dict[str, object] = {}

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm.auto import tqdm

        bar = self._bars.get(event.description)
        if bar is None:
            bar = tqdm(total=event.total, desc=event.description, disable=self.disable, **self.kwargs)
            self._bars[event.description] = bar
        bar.n = event.done
        if event.message:
            bar.set_postfix_str(event.message, refresh=False)
        bar.refresh()
        if event.finished:
            bar.close()
            del self._bars[event.description]


class LineProgress:
    """A :data:`ProgressCallback` for logs: one plain line per task at its start, then whenever it has moved
    ``every_percent`` points or ``every_s`` seconds have passed since the last line (unknown totals: by time only),
    and at its end. Never a line per step and never a carriage return, so files, pipes and CI logs stay readable."""

    def __init__(self, stream=None, every_percent: float = 10.0, every_s: float = 30.0) -> None:
        self.stream = stream
        self.every_percent = float(every_percent)
        self.every_s = float(every_s)
        self._last: dict[str, tuple[float, float]] = {}   # description -> (percent, elapsed) of its last line

    def __call__(self, event: ProgressEvent) -> None:
        pct = None if event.fraction is None else 100.0 * event.fraction
        last = self._last.get(event.description)
        if last is not None and not event.finished:
            moved = pct is not None and pct - last[0] >= self.every_percent
            if not moved and event.elapsed_s - last[1] < self.every_s:
                return
        self._last[event.description] = (pct if pct is not None else 0.0, event.elapsed_s)
        if event.finished:
            self._last.pop(event.description, None)
        self._write(self.format(event, pct))

    @staticmethod
    def format(event: ProgressEvent, pct: float | None) -> str:
        count = f"{event.done:g}/{event.total:g}" if event.total else f"{event.done:g}"
        parts = [f"{event.description}: " + (f"{pct:3.0f}% ({count})" if pct is not None else count),
                 f"{_clock(event.elapsed_s)} elapsed"]
        if event.finished:
            parts.append("done")
        elif event.eta_s is not None:
            parts.append(f"about {_clock(event.eta_s)} left")
        text = ", ".join(parts)
        return text + (f" — {event.message}" if event.message else "")

    def _write(self, line: str) -> None:
        import sys

        stream = self.stream if self.stream is not None else sys.stderr
        stream.write(line + "\n")
        stream.flush()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def terminal_progress(quiet: bool = False, stream=None) -> ProgressCallback | None:
    """The command line's progress display: a tqdm bar on a terminal, :class:`LineProgress` otherwise, nothing when
    ``quiet``."""
    import sys

    if quiet:
        return None
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return TqdmProgress(file=stream)
    return LineProgress(stream)


class RecordingProgress:
    """A :data:`ProgressCallback` that keeps every event (for tests and logs)."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)


# The progress callback of the background job running in this process (VolGANCore.job sets it around the command;
# VolGANCore.cli.progress_from_args reads it). It lives here, below both, so that neither imports the other for it.
_ACTIVE_JOB_PROGRESS: Optional[ProgressCallback] = None


def active_job_progress() -> Optional[ProgressCallback]:
    """The running background job's progress callback, or None outside a background job."""
    return _ACTIVE_JOB_PROGRESS


def set_active_job_progress(callback: Optional[ProgressCallback]) -> None:
    """Set (or clear, with None) the progress callback that :func:`active_job_progress` returns."""
    global _ACTIVE_JOB_PROGRESS
    _ACTIVE_JOB_PROGRESS = callback
