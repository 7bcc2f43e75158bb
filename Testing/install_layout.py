"""The extension as Slicer installs it, and interpreters that see only that (for the install-layout tests).

- :func:`build_install_layout` copies every file the modules' CMakeLists list into one folder, as
  ``slicerMacroBuildScriptedModule`` without ``WITH_SUBDIR`` does (Slicer's CMake/SlicerMacroBuildScriptedModule.cmake
  hands SCRIPTS and RESOURCES with their relative paths to ctkMacroCompilePythonScript, whose destination is the
  one ``qt-scripted-modules`` folder, ``.py`` appended to a script named without it). A listed file that is
  missing, or two modules installing the same relative path, is an error naming both.
- :func:`third_party_site` is a folder of links to everything in this venv's site-packages except this
  project's own installation (its dist-info, the editable finder and the .pth files), so that ``python -S``
  with it on PYTHONPATH sees the third-party packages and not the checkout.
- :func:`isolated_command` / :func:`write_fake_pythonslicer`: such an interpreter, directly or behind a stand-in
  for Slicer's ``PythonSlicer`` launcher that, like the real one, starts the interpreter as a child process,
  waits for it and forwards no signal.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import stat
import sys
from pathlib import Path

from slicer_static_checks import REPO, cmake_sets, module_dirs

__all__ = ["LayoutError", "install_listing", "build_install_layout", "third_party_site", "isolated_env",
           "isolated_command", "write_fake_pythonslicer", "project_distribution"]


class LayoutError(Exception):
    """The modules' CMakeLists do not describe an installable layout."""


def install_listing(repo: Path = REPO) -> dict[str, tuple[Path, str]]:
    """Every installed relative path -> (source file, module), as the modules' CMakeLists list them.

    Raises :class:`LayoutError` listing every missing file and every path two modules install.
    """
    out: dict[str, tuple[Path, str]] = {}
    problems = []
    for module in module_dirs(repo):
        sets = cmake_sets((module / "CMakeLists.txt").read_text(encoding="utf-8"))
        scripts = [s if s.endswith(".py") else f"{s}.py" for s in sets.get("MODULE_PYTHON_SCRIPTS", [])]
        for rel in scripts + sets.get("MODULE_PYTHON_RESOURCES", []):
            src = module / rel
            if not src.is_file():
                problems.append(f"{module.name}/CMakeLists.txt lists {rel}, which does not exist")
                continue
            if rel in out and out[rel][1] != module.name:
                problems.append(f"{rel} is installed by both {out[rel][1]} and {module.name} "
                                "(one qt-scripted-modules folder holds every module: give the file a unique name)")
                continue
            out[rel] = (src, module.name)
    if problems:
        raise LayoutError("\n".join(problems))
    return out


def build_install_layout(repo: Path, dest: Path) -> Path:
    """Lay the extension out in ``dest`` (created) as Slicer installs it; returns ``dest``."""
    listing = install_listing(Path(repo))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel, (src, _module) in listing.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


def project_distribution(repo: Path = REPO) -> str:
    """The project's distribution name (pyproject.toml), normalised as in dist-info folder names."""
    text = (repo / "pyproject.toml").read_text(encoding="utf-8")
    name = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M).group(1)
    return re.sub(r"[-_.]+", "_", name).lower()


def _site_packages() -> Path:
    for p in site.getsitepackages():
        if Path(p).is_dir() and "site-packages" in p:
            return Path(p)
    raise RuntimeError("no site-packages folder found for this interpreter")


def third_party_site(dest: Path, repo: Path = REPO) -> Path:
    """``dest`` filled with links to every site-packages entry except the project's own installation."""
    own = project_distribution(repo)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in _site_packages().iterdir():
        name = entry.name
        normalised = re.sub(r"[-_.]+", "_", name).lower()
        if (name.endswith(".pth") or name.startswith("__editable__") or name.endswith(".egg-link")
                or normalised.startswith(own + "_") and normalised.endswith(("dist_info", "egg_info"))):
            continue
        (dest / name).symlink_to(entry, target_is_directory=entry.is_dir())
    return dest


def isolated_env(pythonpath: list, base: dict | None = None) -> dict[str, str]:
    """``base`` (default os.environ) with PYTHONPATH set to exactly ``pythonpath``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    env.pop("PYTHONHOME", None)
    return env


def isolated_command(*args: str) -> list[str]:
    """This interpreter without its site-packages (``-S``): it sees stdlib + PYTHONPATH only."""
    return [sys.executable, "-S", *args]


def write_fake_pythonslicer(bin_dir: Path, python_args=("-S",), extra_pythonpath=()) -> Path:
    """A ``PythonSlicer`` in ``bin_dir`` that behaves like Slicer's launcher.

    It starts the real interpreter (``sys.executable`` + ``python_args`` + its own arguments) as a child,
    appends ``extra_pythonpath`` (Slicer's own Python libraries) to PYTHONPATH for it, waits, forwards no
    signal, and exits with the child's status. Its pid and the child's are appended to
    ``bin_dir/launches.txt`` so a test can check what it started.
    """
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / ("PythonSlicer.py" if os.name == "nt" else "PythonSlicer")
    exe.write_text(f"""#!{sys.executable}
# Stand-in for Slicer's PythonSlicer launcher (a CTK launcher: the interpreter runs as its child).
import os, subprocess, sys
env = dict(os.environ)
extra = {[str(p) for p in extra_pythonpath]!r}
env["PYTHONPATH"] = os.pathsep.join([p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p] + extra)
child = subprocess.Popen([{sys.executable!r}, *{list(python_args)!r}, *sys.argv[1:]], env=env)
with open({str(bin_dir / "launches.txt")!r}, "a") as fh:
    fh.write(f"{{os.getpid()}} {{child.pid}}\\n")
sys.exit(child.wait())
""", encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe
def put_fake_pythonslicer_on_path(monkeypatch, bin_dir: Path, python_args=("-S",)) -> Path:
    """:func:`write_fake_pythonslicer` into ``bin_dir``, first on PATH (through ``monkeypatch``) so that background
    jobs find it as Slicer's PythonSlicer; returns the launcher."""
    launcher = write_fake_pythonslicer(bin_dir, python_args=python_args)
    monkeypatch.setenv("PATH", f"{launcher.parent}{os.pathsep}{os.environ['PATH']}")
    return launcher


