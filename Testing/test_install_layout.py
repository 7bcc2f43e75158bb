"""The extension as Slicer installs it: one flat folder of every file the modules' CMakeLists list, and no pip
install of the project. Training started through the GANTrainer scene logic runs there behind a
PythonSlicer-like launcher, outlives the process that started it, stops gracefully with a checkpoint, is found
again by a fresh process, resumes and finishes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from install_layout import (LayoutError, build_install_layout, install_listing, isolated_command, isolated_env,
                            third_party_site, write_fake_pythonslicer)
from slicer_static_checks import REPO, module_dirs


def test_layout_holds_every_listed_file_once(tmp_path):
    listing = install_listing(REPO)
    layout = build_install_layout(REPO, tmp_path / "qt-scripted-modules")
    files = {p.relative_to(layout).as_posix() for p in layout.rglob("*") if p.is_file()}
    assert files == set(listing)
    for module in module_dirs(REPO):        # each module's entry file and its own requirements file
        assert f"{module.name}.py" in files and f"Resources/{module.name}-requirements.txt" in files
    assert {"VolGANCore/jobs.py", "VolGANCore/job.py", "GANTrainerLib/cli.py", "GANTrainerSceneLogic.py"} <= files
    assert (layout / "VolGANCore" / "cli.py").read_bytes() == (REPO / "MorphometryLogic/VolGANCore/cli.py").read_bytes()


def _copy_modules(dest: Path) -> Path:
    for module in module_dirs(REPO):
        shutil.copytree(module, dest / module.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _add_resource(cmake: Path, rel: str) -> None:
    text = cmake.read_text(encoding="utf-8")
    assert "set(MODULE_PYTHON_RESOURCES\n" in text
    cmake.write_text(text.replace("set(MODULE_PYTHON_RESOURCES\n", f"set(MODULE_PYTHON_RESOURCES\n  {rel}\n"),
                     encoding="utf-8")


def test_layout_refuses_a_missing_or_colliding_file(tmp_path):
    repo = _copy_modules(tmp_path / "repo")
    install_listing(repo)                                  # the unbroken copy lays out
    (repo / "GANTrainer" / "GANTrainerLib" / "losses.py").unlink()
    with pytest.raises(LayoutError, match="GANTrainer/CMakeLists.txt lists GANTrainerLib/losses.py, which does not"):
        build_install_layout(repo, tmp_path / "out")
    repo = _copy_modules(tmp_path / "repo2")
    for module in ("MorphometryLogic", "GANTrainer"):      # the old shared requirements.txt: both install it
        (repo / module / "Resources" / "requirements.txt").write_text("numpy\n")
        _add_resource(repo / module / "CMakeLists.txt", "Resources/requirements.txt")
    with pytest.raises(LayoutError, match="Resources/requirements.txt is installed by both GANTrainer and "
                                          "MorphometryLogic"):
        build_install_layout(repo, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()                # nothing laid out from a broken listing


DRIVER = r'''
import json, sys, time
from pathlib import Path

mode, layout, data, run = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])

import importlib.metadata as md
try:
    md.distribution("slicer-volumetric-gan")
    sys.exit("the project's pip metadata is visible")
except md.PackageNotFoundError:
    pass
import GANTrainerSceneLogic, VolGANCore
assert Path(VolGANCore.__file__).parents[1] == layout, VolGANCore.__file__
assert Path(GANTrainerSceneLogic.__file__).parent == layout, GANTrainerSceneLogic.__file__
from GANTrainerSceneLogic import TrainingProcess
from VolGANCore.jobs import BackgroundJob, read_job


def wait(proc, condition, what, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        status = proc.poll()
        if condition(status):
            return status
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}: {proc.poll()}\n{proc.lastLogLines()}")


out = {}
if mode == "start":          # the panel starts a run, then Slicer is closed
    proc = TrainingProcess.start("tiny-spongiosa", data, run, device="cpu", extraArgs=["--max-steps", "500"])
    out["launcher_pid"] = proc.job.process.pid
else:                        # a restarted Slicer: no run folder known
    import psutil

    proc = TrainingProcess.running()
    assert proc is not None and proc.runFolder == run, proc
    status = wait(proc, lambda s: (s["progress"] or {}).get("description") == "train"
                  and s["progress"]["done"] >= 1, "the first training step")
    worker = psutil.Process(read_job(run)["pid"])
    out["worker_pid"] = worker.pid
    out["worker_cmdline"] = worker.cmdline()
    out["worker_pythonpath"] = worker.environ().get("PYTHONPATH", "")
    proc.stop(timeout=120)
    fresh = BackgroundJob.attach(run)                      # a fresh watcher of the same folder
    out["stopped"] = {k: v for k, v in TrainingProcess(fresh).poll().items()
                      if k in ("state", "returncode", "step", "running", "message")}
    resumed = TrainingProcess.start("tiny-spongiosa", data, run, device="cpu", resume=True,
                                    extraArgs=["--max-steps", "2"])
    final = wait(resumed, lambda s: not s["running"], "the resumed run to end")
    out["final"] = {k: final.get(k) for k in ("state", "returncode", "step", "running", "last_checkpoint")}
print(json.dumps(out))
'''


@pytest.mark.slow
def test_training_in_the_installed_layout_stops_reattaches_and_resumes(tmp_path):
    from VolumetricGANLib.phantoms import write_bone_dataset

    layout = build_install_layout(REPO, tmp_path / "qt-scripted-modules")
    site = third_party_site(tmp_path / "site")               # the interpreter's own libraries, as Slicer ships them
    launcher = write_fake_pythonslicer(tmp_path / "bin", python_args=("-S",), extra_pythonpath=[site])
    data = write_bone_dataset(tmp_path / "bone", n=4, seed=0) / "images"
    run = tmp_path / "run"
    env = isolated_env([layout, site])
    env["PATH"] = f"{launcher.parent}{os.pathsep}{env['PATH']}"
    env["VOLGAN_HOME"] = str(tmp_path / "home")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")

    def drive(mode):
        done = subprocess.run(isolated_command(str(driver), mode, str(layout), str(data), str(run)), env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        log = (run / "process.log").read_text() if (run / "process.log").exists() else ""
        assert done.returncode == 0, f"{done.stderr}\n--- process.log\n{log}"
        return json.loads(done.stdout.strip().splitlines()[-1])

    started = drive("start")                                  # returns while the run goes on
    later = drive("attach")
    launches = [tuple(map(int, line.split())) for line in (tmp_path / "bin" / "launches.txt").read_text().split("\n")
                if line]
    assert len(launches) == 2 and launches[0][0] == started["launcher_pid"]
    assert later["worker_pid"] == launches[0][1] != launches[0][0]        # the job ran as the launcher's child
    assert "-S" in later["worker_cmdline"] and later["worker_cmdline"][-3:-1] == ["-m", "VolGANCore.job"]
    paths = [Path(p) for p in later["worker_pythonpath"].split(os.pathsep) if p]
    assert paths[0] == layout and all(p in (layout, site) for p in paths), paths   # no checkout, no site-packages
    stopped = later["stopped"]
    assert stopped["state"] == "stopped" and stopped["returncode"] == 0 and not stopped["running"], stopped
    assert 1 <= stopped["step"] < 500
    assert (run / "checkpoints" / f"ckpt-{stopped['step']:07d}.vgan").is_file()   # written at the stop
    final = later["final"]
    assert final["state"] == "finished" and final["returncode"] == 0, final
    assert final["step"] == stopped["step"] + 2
    assert final["last_checkpoint"] == f"checkpoints/ckpt-{final['step']:07d}.vgan"
    assert (run / final["last_checkpoint"]).is_file()
    assert f"resumed from step {stopped['step']} " in (run / "log.txt").read_text()
