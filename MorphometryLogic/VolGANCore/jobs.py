"""Background jobs: a ``volgan`` command in its own process, watched through its job folder.

The pattern of SlicerMONAIAuto3DSeg, made to survive a closed panel, a restarted Slicer and Windows:

- :meth:`BackgroundJob.start` writes ``job.json`` (the command's arguments, state ``starting``) and launches
  ``PythonSlicer -m VolGANCore.job <folder>`` (:mod:`VolGANCore.job`, the runner). Inside Slicer it goes through
  ``slicer.util.launchConsoleProcess`` (no console window on Windows); elsewhere through ``subprocess.Popen``.
- The runner writes its output to ``process.log`` and its pid, state, progress and result to ``job.json``:
  that file is the source of truth, so any process can :meth:`~BackgroundJob.attach` to the folder later.
- A graceful stop is a ``stop-requested`` file in the folder; the runner turns it into SIGINT inside its own
  process (no cross-process signals: ``PythonSlicer`` is a launcher that forwards none, and Windows has none).
  Training writes a checkpoint and ends ``stopped``; other commands end ``cancelled`` (exit 130) with their
  atomic writers leaving nothing half-written.
- Liveness comes from psutil: a pid counts only with the creation time recorded beside it (a reused pid is
  not the job). :meth:`~BackgroundJob.stop` ends the launcher's whole process tree when a graceful stop
  does not finish in time.

No Qt here; ``slicer`` is used only when this runs inside the Slicer application.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .atomic import atomic_write_json, atomic_write_text
from .errors import VolGANError

__all__ = ["BackgroundJob", "jobs_root", "read_job", "package_folders", "python_executable",
           "JOB_FILE", "LOG_FILE", "STOP_FILE", "TERMINAL_STATES"]

JOB_FILE = "job.json"
LOG_FILE = "process.log"
STOP_FILE = "stop-requested"
LAUNCHER_FILE = "launcher.json"     # pid + creation time of the launched process (PythonSlicer or python)
LINK_SUFFIX = ".jobfolder"          # a file in jobs_root() naming a job folder that lives elsewhere
TERMINAL_STATES = ("finished", "failed", "stopped", "cancelled")
# the packages a job needs; in the installed extension they sit in one folder, in a checkout in three
PACKAGES = ("VolGANCore", "MorphometryLib", "VolumetricGANLib", "GANTrainerLib")


def jobs_root() -> Path:
    """Where jobs without a folder of their own live (and where every job is indexed): ``$VOLGAN_HOME/jobs``,
    by default ``~/.volgan/jobs``."""
    home = os.environ.get("VOLGAN_HOME") or str(Path.home() / ".volgan")
    return Path(home).expanduser() / "jobs"


def read_job(folder: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The folder's ``job.json`` or None (never raises on a missing or unreadable file)."""
    try:
        data = json.loads((Path(folder) / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _slicer_app():
    """The ``slicer`` module when this runs inside the Slicer application (not slicer-core), else None."""
    slicer = sys.modules.get("slicer")
    return slicer if slicer is not None and hasattr(slicer, "app") else None


def python_executable() -> str:
    """``PythonSlicer`` from PATH; outside Slicer, this interpreter when there is none.

    Inside Slicer ``sys.executable`` is the application itself (SlicerApp-real), never a Python to run a
    script with, so a missing PythonSlicer is an error there.
    """
    exe = shutil.which("PythonSlicer")
    if exe:
        return exe
    if _slicer_app() is not None:
        raise VolGANError("PythonSlicer was not found on PATH, so a background job cannot start "
                          "(start Slicer from its installation folder, or reinstall Slicer)")
    return sys.executable


def package_folders() -> list[str]:
    """The folders holding this project's packages, as the running process finds them (in import order)."""
    out: list[str] = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        parent = str(Path(list(spec.submodule_search_locations)[0]).resolve().parent)
        if parent not in out:
            out.append(parent)
    return out


def _psutil():
    try:
        import psutil
    except ImportError:
        raise VolGANError("psutil is not installed: background jobs need it to watch their processes "
                          "(pip install psutil, or use the module's Install dependencies)") from None
    return psutil


def _process(pid, create_time):
    """The live ``psutil.Process`` with this pid and creation time, or None (ended, zombie or pid reused)."""
    if not pid or create_time is None:
        return None
    psutil = _psutil()
    try:
        proc = psutil.Process(int(pid))
        if abs(proc.create_time() - float(create_time)) > 0.01:
            return None                    # the pid now belongs to another process
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, ValueError, TypeError):
        return None


def _new_folder(root: Path, kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{kind}" if kind else stamp
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        folder = root / (name if k == 1 else f"{name}-{k}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise VolGANError(f"{root}: could not create a new job folder (too many jobs named {name})")


def _index(folder: Path, kind: str) -> None:
    """Make a job folder outside jobs_root() findable by :meth:`BackgroundJob.latest` (one link per folder)."""
    import hashlib

    root = jobs_root()
    target = str(folder.resolve())
    with contextlib.suppress(ValueError):
        Path(target).relative_to(root.resolve())
        return                               # already under the root
    digest = hashlib.sha1(target.encode("utf-8")).hexdigest()[:16]
    atomic_write_text(root / f"{kind or 'job'}-{digest}{LINK_SUFFIX}", target + "\n")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class BackgroundJob:
    """One ``volgan`` command running (or done) in its own process, watched through its job folder.

    ``folder`` holds ``job.json`` (state, pid, progress, result), ``process.log`` (everything the command
    printed) and, while a stop is pending, ``stop-requested``. :meth:`poll` never blocks, so a panel calls it
    from a QTimer.
    """

    def __init__(self, folder: str | os.PathLike, process: Optional[subprocess.Popen] = None) -> None:
        self.folder = Path(folder)
        self.process = process       # the launcher's Popen, only in the process that started the job

    # -- starting and finding jobs -------------------------------------------------------------------------
    @classmethod
    def start(cls, argv, folder=None, kind: str = "", outFolder=None, env: Optional[dict] = None) -> "BackgroundJob":
        """Run ``volgan <argv>`` in the background; ``folder`` None makes ``jobs_root()/<time>-<kind>``.

        A folder whose job is still running is refused. ``env`` adds environment variables for the job.
        """
        argv = [str(a) for a in argv]
        folder = _new_folder(jobs_root(), kind) if folder is None else Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / JOB_FILE).exists():
            previous = cls(folder)
            if previous.isRunning():
                pid = (read_job(folder) or {}).get("pid")
                raise VolGANError(f"{folder}: a background job{f' (pid {pid})' if pid else ''} is still running "
                                  "there; stop it first or choose another folder")
        for name in (STOP_FILE, LAUNCHER_FILE):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        atomic_write_json(folder / JOB_FILE, {
            "kind": kind, "argv": argv, "out_folder": str(outFolder) if outFolder is not None else None,
            "state": "starting", "created": time.time(), "pid": None, "create_time": None,
            "progress": None, "returncode": None, "message": ""})
        _index(folder, kind)
        process = _launch([python_executable(), "-m", "VolGANCore.job", str(folder.resolve())],
                          _job_environment(env), folder / LOG_FILE)
        launcher: dict[str, Any] = {"pid": process.pid, "create_time": None}
        with contextlib.suppress(Exception):
            launcher["create_time"] = _psutil().Process(process.pid).create_time()
        atomic_write_json(folder / LAUNCHER_FILE, launcher)
        return cls(folder, process)

    @classmethod
    def attach(cls, folder) -> "BackgroundJob":
        """Watch the job of an existing folder (after reopening a panel or restarting Slicer)."""
        folder = Path(folder)
        if read_job(folder) is None:
            from .errors import InputFileError

            raise InputFileError(folder / JOB_FILE, "not found or unreadable",
                                 "choose the folder of a job started from a module panel")
        return cls(folder)

    @classmethod
    def latest(cls, kind: str, outFolder=None, root=None) -> Optional["BackgroundJob"]:
        """The newest job of ``kind`` (and ``outFolder``, when given) known under ``root`` (``jobs_root()``)."""
        root = Path(root) if root is not None else jobs_root()
        if not root.is_dir():
            return None
        want = str(Path(outFolder).resolve()) if outFolder is not None else None
        best, best_time = None, None
        for entry in root.iterdir():
            if entry.is_dir():
                folder = entry
            elif entry.name.endswith(LINK_SUFFIX):
                try:
                    folder = Path(entry.read_text(encoding="utf-8").strip())
                except OSError:
                    continue
            else:
                continue
            record = read_job(folder)
            if record is None or record.get("kind") != kind:
                continue
            if want is not None and (not record.get("out_folder")
                                     or str(Path(record["out_folder"]).resolve()) != want):
                continue
            created = float(record.get("created") or 0)
            if best_time is None or created > best_time:
                best, best_time = folder, created
        return cls(best) if best is not None else None

    # -- watching ------------------------------------------------------------------------------------------
    def _processes(self, record: dict):
        """(launcher, worker): live psutil processes of the launcher and of the runner, or None each."""
        if self.process is not None:
            self.process.poll()              # reaps an ended launcher, so it is not a zombie
        launcher = _read_json(self.folder / LAUNCHER_FILE)
        return (_process(launcher.get("pid"), launcher.get("create_time")),
                _process(record.get("pid"), record.get("create_time")))

    def isRunning(self) -> bool:
        """True while the job has not recorded its end and its launcher or runner process is alive."""
        record = read_job(self.folder) or {}
        if record.get("state") in TERMINAL_STATES:
            return False
        launcher, worker = self._processes(record)
        return launcher is not None or worker is not None

    def poll(self) -> dict:
        """The job's status: ``state`` (starting, running, finished, failed, stopped, cancelled), ``progress``
        ({description, done, total, fraction, eta_s, message} or None), ``returncode``, ``message`` (on
        failure the error line the command printed), ``pid``, ``running``, ``kind``, ``argv``, ``folder``."""
        running = self.isRunning()   # first: a record read after it is final once it says not running
        record = read_job(self.folder) or {"state": "starting"}
        status = {key: record.get(key) for key in ("state", "progress", "returncode", "message", "pid", "kind",
                                                   "argv", "out_folder", "created", "started", "ended")}
        status["folder"] = str(self.folder)
        status["stop_requested"] = self.stopRequestedAt() is not None
        status["running"] = running
        if status["state"] not in TERMINAL_STATES and not status["running"]:
            # the runner ended without recording its end: it could not start, or it was killed
            status["state"] = "failed"
            if self.process is not None:
                status["returncode"] = self.process.returncode
                self._save_launcher_output()
            status["message"] = _last_line(self.lastLogLines(5)) or \
                "the job's process ended without recording a result (it was killed, or could not start)"
        return status

    def _save_launcher_output(self) -> None:
        """What a launcher printed to its pipe (Slicer's launchConsoleProcess) before the runner took over."""
        pipe = getattr(self.process, "stdout", None)
        if pipe is None or pipe.closed:
            return
        with contextlib.suppress(Exception):
            text = pipe.read()
            pipe.close()
            if text:
                with open(self.folder / LOG_FILE, "a", encoding="utf-8") as fh:
                    fh.write(text if isinstance(text, str) else text.decode("utf-8", "replace"))

    def lastLogLines(self, n: int = 20) -> str:
        """The last ``n`` lines of ``process.log``."""
        try:
            text = (self.folder / LOG_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-n:])

    # -- stopping ------------------------------------------------------------------------------------------
    def requestStop(self) -> None:
        """Ask the job to stop gracefully (training: finish the step, write a checkpoint); returns at once."""
        atomic_write_text(self.folder / STOP_FILE, f"{time.time()}\n")

    def stop(self, timeout: float | None = 60.0) -> None:
        """Request a graceful stop; ``timeout`` seconds later, end the job's whole process tree if it still runs.

        ``None`` only requests (a panel then watches :meth:`poll`). A job ended this way is recorded as
        ``stopped`` with a message saying that it did not write a checkpoint at the stop.
        """
        self.requestStop()
        if timeout is None:
            return
        deadline = time.monotonic() + float(timeout)
        while self.isRunning() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self.isRunning():
            self._wait_launcher(10.0)
            return
        self._force_stop(float(timeout))

    def stopIfOverdue(self, grace_s: float = 60.0) -> bool:
        """End the job's processes if a stop requested more than ``grace_s`` seconds ago has not finished (what
        :meth:`stop` does after its timeout, for a panel that only requested the stop); True if it did."""
        requested = self.stopRequestedAt()
        if requested is None or time.time() - requested < grace_s or not self.isRunning():
            return False
        self._force_stop(time.time() - requested)
        return True

    def stopRequestedAt(self) -> Optional[float]:
        """When the pending stop was requested (seconds since the epoch), or None."""
        try:
            return float((self.folder / STOP_FILE).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def _force_stop(self, waited_s: float) -> None:
        self._end_process_tree()
        record = read_job(self.folder) or {}
        if record.get("state") not in TERMINAL_STATES:
            record.update(state="stopped", ended=time.time(),
                          message=f"ended by force {waited_s:.0f} s after the stop request: no checkpoint was "
                                  "written at the stop (a resumed run starts from the last one written)")
            atomic_write_json(self.folder / JOB_FILE, record)

    def _wait_launcher(self, timeout: float) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)

    def _end_process_tree(self) -> None:
        psutil = _psutil()
        launcher, worker = self._processes(read_job(self.folder) or {})
        procs = []
        for root in (launcher, worker):
            if root is not None:
                with contextlib.suppress(psutil.Error):
                    procs += root.children(recursive=True)
        procs += [p for p in (worker, launcher) if p is not None]
        unique = list({p.pid: p for p in procs}.values())       # children first, the launcher last
        for p in unique:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _gone, alive = psutil.wait_procs(unique, timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        self._wait_launcher(5.0)


def _job_environment(extra: Optional[dict]) -> dict[str, str]:
    """The variables a job needs on top of the launching environment: PYTHONPATH with the project's folders."""
    slicer = _slicer_app()
    base = slicer.util.startupEnvironment() if slicer is not None else os.environ
    folders = package_folders()
    existing = [p for p in (base.get("PYTHONPATH") or "").split(os.pathsep) if p and p not in folders]
    # (PYTHONSAFEPATH: the working directory, where relative paths of the arguments start, is not an import path)
    env = {"PYTHONPATH": os.pathsep.join(folders + existing), "PYTHONSAFEPATH": "1"}
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env


def _launch(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start the runner in this working directory: through Slicer's launchConsoleProcess inside Slicer (no
    console window on Windows; its output pipe carries nothing once the runner has redirected its output),
    else a Popen detached from the terminal, writing to ``log_path`` until the runner takes over."""
    slicer = _slicer_app()
    if slicer is not None:
        return slicer.util.launchConsoleProcess(args, updateEnvironment=env)
    full_env = dict(os.environ)
    full_env.update(env)
    kwargs: dict[str, Any] = {}
    if os.name == "nt":
        kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        kwargs["start_new_session"] = True    # a Ctrl-C or hang-up of the launching terminal does not reach it
    with open(log_path, "ab") as log:  # (the runner's own early errors land in process.log)
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=full_env, **kwargs)
