"""Background jobs (VolGANCore.jobs + the runner VolGANCore.job): start, poll, progress, graceful stop,
liveness by pid + creation time, and ending the whole process tree when a stop does not finish in time."""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest

from VolGANCore import VolGANError
from VolGANCore.jobs import BackgroundJob, jobs_root, read_job
from conftest import wait_for


@pytest.fixture(autouse=True)
def volgan_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLGAN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    return tmp_path / "home"


@pytest.mark.slow
def test_start_poll_progress_and_reattach(tmp_path, volgan_home, monkeypatch):
    out = tmp_path / "phantoms"
    monkeypatch.chdir(tmp_path)             # relative arguments mean what they mean to the caller
    job = BackgroundJob.start(["phantom", "bone", "--n", "3", "--size", "16", "--out", "phantoms"],
                              kind="phantom", outFolder=out)
    assert job.folder.parent == jobs_root() == volgan_home / "jobs" and job.folder.name.endswith("-phantom")
    status = wait_for(job, lambda s: not s["running"])
    assert status["state"] == "finished" and status["returncode"] == 0, job.lastLogLines()
    assert len(list(out.glob("images/*.nii.gz"))) == 3
    # the runner wrote progress into job.json instead of drawing a bar
    progress = status["progress"]
    assert progress["description"] == "bone phantoms" and progress["total"] == 3
    assert set(progress) == {"description", "done", "total", "fraction", "eta_s", "message"}
    assert "bone phantoms" not in job.lastLogLines(50)           # no tqdm bar in the log
    record = read_job(job.folder)
    assert record["pid"] != os.getpid() and record["create_time"] > 0
    # a fresh object (a reopened panel, a restarted Slicer) finds the same job
    again = BackgroundJob.latest("phantom")
    assert again.folder == job.folder and again.process is None
    assert again.poll()["state"] == "finished" and not again.isRunning()
    assert BackgroundJob.latest("phantom", outFolder=out).folder == job.folder
    assert BackgroundJob.latest("phantom", outFolder=tmp_path / "elsewhere") is None
    assert BackgroundJob.latest("train") is None
    # a job folder outside jobs_root() is indexed there, so latest() finds it too
    for _ in range(2):
        outside = BackgroundJob.start(["info"], folder=tmp_path / "run", kind="info-test")
        wait_for(outside, lambda s: not s["running"])
    assert BackgroundJob.latest("info-test").folder == tmp_path / "run"
    assert len(list(jobs_root().glob("info-test-*"))) == 1       # one link per folder, however often it runs


def test_failure_reports_the_error_line(tmp_path):
    job = BackgroundJob.start(["dataset", "validate", tmp_path / "missing"], kind="validate")
    status = wait_for(job, lambda s: not s["running"])
    assert status["state"] == "failed" and status["returncode"] == 2
    assert status["message"] == f"volgan dataset: error: {tmp_path / 'missing'}: folder not found (check the path)"
    usage = BackgroundJob.start(["no-such-command"], kind="bad")
    status = wait_for(usage, lambda s: not s["running"])
    assert status["state"] == "failed" and status["returncode"] == 2 and "invalid choice" in status["message"]


def test_graceful_stop_of_a_non_training_command(tmp_path):
    """The stop request becomes KeyboardInterrupt in the job: exit 130, and its atomic folder writer leaves
    neither the output folder nor a partial one behind."""
    out = tmp_path / "out" / "phantoms"
    job = BackgroundJob.start(["phantom", "bone", "--n", "400", "--size", "24", "--out", out], kind="phantom")
    wait_for(job, lambda s: (s["progress"] or {}).get("done", 0) >= 2)
    job.stop(timeout=60)
    status = job.poll()
    assert status["state"] == "cancelled" and status["returncode"] == 130 and not status["running"]
    assert status["progress"]["done"] < 400
    assert list((tmp_path / "out").iterdir()) == []               # no phantoms/, no .phantoms.partial-*
    assert job.lastLogLines(1) == "volgan phantom: interrupted"
    assert not psutil.pid_exists(status["pid"]) or psutil.Process(status["pid"]).status() == psutil.STATUS_ZOMBIE


def test_liveness_needs_the_recorded_creation_time(tmp_path):
    """A pid alone proves nothing (pids are reused): this test process is alive, but not with another start time."""
    me = psutil.Process()
    folder = tmp_path / "job"
    folder.mkdir()
    record = {"kind": "train", "argv": ["train"], "state": "running", "created": time.time(), "pid": me.pid,
              "create_time": me.create_time() - 1000.0}
    (folder / "job.json").write_text(json.dumps(record))
    stale = BackgroundJob.attach(folder)
    assert not stale.isRunning()
    status = stale.poll()
    assert status["state"] == "failed" and "ended without recording a result" in status["message"]
    record["create_time"] = me.create_time()
    (folder / "job.json").write_text(json.dumps(record))
    assert BackgroundJob.attach(folder).isRunning() and BackgroundJob.attach(folder).poll()["state"] == "running"
    with pytest.raises(VolGANError, match="still running there"):     # a running job's folder is not reused
        BackgroundJob.start(["info"], folder=folder, kind="train")
    with pytest.raises(VolGANError, match="job.json: not found"):
        BackgroundJob.attach(tmp_path / "nothing")


def test_a_job_that_records_its_end_while_being_polled_is_not_called_failed(tmp_path, monkeypatch):
    """The runner writes its final record and exits between two looks of poll(): the record read before the
    liveness check says "running", the process is gone after it. poll() must report the recorded end, not a job
    that "ended without recording a result" (seen once under load in the installed-layout training test)."""
    folder = tmp_path / "job"
    folder.mkdir()
    record = {"kind": "train", "argv": ["train"], "state": "running", "created": time.time(), "pid": None,
              "create_time": None, "returncode": None, "message": ""}
    (folder / "job.json").write_text(json.dumps(record))
    job = BackgroundJob.attach(folder)

    def runner_ends_now(self, rec):
        (folder / "job.json").write_text(json.dumps({**record, "state": "finished", "returncode": 0}))
        return None, None

    monkeypatch.setattr(BackgroundJob, "_processes", runner_ends_now)
    status = job.poll()
    assert (status["state"], status["returncode"], status["running"]) == ("finished", 0, False), status


HANG_PLUGIN = '''
import subprocess, sys, time

def register(sub):
    p = sub.add_parser("hang")
    p.add_argument("pidfile")
    p.set_defaults(func=_hang)

def _hang(args):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(args.pidfile, "w") as fh:
        fh.write(str(child.pid))
    print("hanging, ignoring stop requests", flush=True)
    while True:
        try:
            time.sleep(0.05)
        except KeyboardInterrupt:
            print("interrupt ignored", flush=True)
'''


@pytest.mark.parametrize("how", ["stop-timeout", "overdue-request"])
def test_stop_timeout_ends_the_whole_tree(how, tmp_path, monkeypatch):
    """Behind a PythonSlicer-like launcher (the interpreter is its child, no signal forwarding) a job that
    ignores the stop request is ended with its launcher and its own children; the job says so. A panel only
    requests the stop and later calls stopIfOverdue, which does the same once the grace time has passed."""
    from install_layout import put_fake_pythonslicer_on_path

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "volgan_hang_plugin.py").write_text(HANG_PLUGIN)
    dist = plugin / "volgan_hang_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: volgan-hang-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[volgan.commands]\nhang = volgan_hang_plugin:register\n")
    monkeypatch.setenv("PYTHONPATH", str(plugin))
    put_fake_pythonslicer_on_path(monkeypatch, tmp_path / "bin", python_args=())

    job = BackgroundJob.start(["hang", tmp_path / "grandchild.pid"], kind="hang")
    status = wait_for(job, lambda s: (tmp_path / "grandchild.pid").exists() and s["state"] == "running")
    launcher_pid, runner_pid = map(int, (tmp_path / "bin" / "launches.txt").read_text().split())
    assert job.process.pid == launcher_pid and status["pid"] == runner_pid != launcher_pid
    grandchild = psutil.Process(int((tmp_path / "grandchild.pid").read_text()))
    t0 = time.time()
    if how == "stop-timeout":
        job.stop(timeout=2)
    else:
        job.requestStop()
        assert not job.stopIfOverdue(grace_s=2) and job.isRunning()     # too early: nothing happens
        while not job.stopIfOverdue(grace_s=2):
            time.sleep(0.1)
    assert 2 <= time.time() - t0 < 30
    assert "interrupt ignored" in job.lastLogLines()                 # the request did reach the job
    for pid in (launcher_pid, runner_pid, grandchild.pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    status = job.poll()
    assert status["state"] == "stopped" and not status["running"]
    assert "no checkpoint was written at the stop" in status["message"]


def test_inside_slicer_a_missing_pythonslicer_is_an_error(monkeypatch, tmp_path):
    """In the Slicer application sys.executable is SlicerApp-real: never launch that."""
    import types

    from VolGANCore import jobs

    monkeypatch.setitem(__import__("sys").modules, "slicer", types.SimpleNamespace(app=object()))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VolGANError, match="PythonSlicer was not found"):
        jobs.python_executable()
    with pytest.raises(VolGANError, match="PythonSlicer was not found"):
        BackgroundJob.start(["info"], kind="info")


@pytest.mark.parametrize("version", ["5.8.1", "5.12.3"])
@pytest.mark.slow
def test_inside_slicer_jobs_go_through_launch_console_process(version, tmp_path, monkeypatch):
    """With Slicer's own slicer.util (5.8 has no `blocking` argument): PythonSlicer from PATH, launched by
    launchConsoleProcess with PYTHONPATH naming the project's folders; the job runs and reports."""
    from install_layout import put_fake_pythonslicer_on_path
    from slicer_layer import slicer_layer

    from VolGANCore import jobs

    launcher = put_fake_pythonslicer_on_path(monkeypatch, tmp_path / "bin", python_args=())
    calls = []
    with slicer_layer(version) as layer:
        real = layer.slicer.util.launchConsoleProcess

        def spy(args, **kwargs):
            calls.append((args, kwargs))
            return real(args, **kwargs)

        monkeypatch.setattr(layer.slicer.util, "launchConsoleProcess", spy)

        class StartupEnvironment:            # slicer.app.startupEnvironment(): a QProcessEnvironment
            def keys(self):
                return list(os.environ)

            def value(self, key):
                return os.environ[key]

        layer.app.__dict__["startupEnvironment"] = StartupEnvironment
        job = BackgroundJob.start(["info"], kind="info")
    status = wait_for(job, lambda s: not s["running"])
    assert status["state"] == "finished" and status["returncode"] == 0, job.lastLogLines()
    assert "device cpu" in job.lastLogLines()
    (args, kwargs), = calls
    assert args[0] == str(launcher) and args[1:4] == ["-m", "VolGANCore.job", str(job.folder.resolve())]
    assert kwargs["updateEnvironment"]["PYTHONPATH"].split(os.pathsep)[:1] == jobs.package_folders()[:1]
