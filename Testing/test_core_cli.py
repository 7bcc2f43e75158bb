"""The `volgan` CLI frame: version, info, subcommand discovery, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from VolGANCore import Volume, __version__, write_volume
from VolGANCore import cli

VOLGAN = [sys.executable, "-m", "VolGANCore.cli"]


def run(*args, cwd=None):
    return subprocess.run(VOLGAN + list(args), capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_version_and_info():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"volgan {__version__}"
    info = run("info", "--json")
    rep = json.loads(info.stdout)
    assert rep["volgan"] == __version__
    assert rep["packages"]["torch"] and rep["packages"]["SimpleITK"]
    assert "cpu" in rep["compute"]["devices"]
    assert "bfloat16" in rep["compute"]["cpu"]["amp"]
    text = run("info").stdout
    assert "device cpu" in text and "AMP dtypes" in text


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("volgan")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == f"volgan {__version__}"


def test_bad_input_is_one_line_exit_2_and_debug_shows_traceback(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    out = run("dataset", "validate", str(tmp_path / "empty"))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert out.stderr.startswith("volgan dataset: error: ") and "folder not found" in out.stderr
    assert "Traceback" not in out.stderr
    dbg = run("--debug", "dataset", "validate", str(tmp_path / "empty"))
    assert dbg.returncode != 0 and "Traceback" in dbg.stderr


def test_dataset_validate_reports_and_writes_json(tmp_path):
    img = tmp_path / "images"
    for k, shape in enumerate([(4, 5, 6), (4, 5, 6), (4, 5, 7)]):
        write_volume(Volume(np.zeros(shape, np.float32), spacing=(0.3, 0.3, 0.6)), img / f"c{k}.nii.gz")
    out = run("--quiet", "dataset", "validate", str(img), "--json", str(tmp_path / "r.json"))
    assert out.returncode == 1, out.stderr
    assert "3 volume(s)" in out.stdout and "c2.nii.gz: shape" in out.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["ok"] is False and len(rep["entries"]) == 3


def test_plugin_commands_are_discovered(monkeypatch, capsys):
    def register(sub):
        p = sub.add_parser("hello")
        p.set_defaults(func=lambda args: print("hello from plugin") or 0)

    monkeypatch.setattr(cli, "_plugin_registrars", lambda: [("hello", register)])
    assert cli.main(["hello"]) == 0
    assert "hello from plugin" in capsys.readouterr().out


def test_installed_entry_points_all_load():
    """Every `volgan.commands` entry point in the installed metadata imports and registers cleanly."""
    names = [name for name, _ in cli._plugin_registrars()]
    assert {"morphometry", "phantom", "volumetricgan"} <= set(names)
    parser = cli.build_parser()
    assert parser.parse_args(["info"]).command == "info"


def test_pyproject_lists_every_python_package_for_the_wheel():
    """A non-editable install must ship every sub-package (evaluation, segmentation, networks, phantoms)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for top, folder in cfg["package-dir"].items():
        for init in (root / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(root / folder)
            found.add(".".join((top,) + rel.parts))
    assert found == listed, f"pyproject packages: missing {sorted(found - listed)}, stale {sorted(listed - found)}"


def test_project_commands_match_the_pyproject_entry_points():
    """The frame's own list and the pip entry points name the same registrars (one cannot drift from the other)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    eps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"][cli.ENTRY_POINT_GROUP]
    assert eps == cli.PROJECT_COMMANDS


def _plugin_dist(folder: Path, entry_points: dict[str, str], module_code: str) -> Path:
    """A third-party package with `volgan.commands` entry points, installed as metadata in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "volgan_test_plugin.py").write_text(module_code)
    dist = folder / "volgan_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: volgan-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[volgan.commands]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return folder


@pytest.mark.slow
def test_subcommands_need_no_installed_metadata(tmp_path):
    """As in an installed Slicer extension: only the module folders on the path, no pip metadata of the project."""
    from install_layout import isolated_command, isolated_env, third_party_site

    root = Path(__file__).resolve().parents[1]
    site = third_party_site(tmp_path / "site")
    folders = [root / m for m in ("MorphometryLogic", "VolumetricGAN", "GANTrainer")]
    plugin = _plugin_dist(tmp_path / "plugin", {"hello": "volgan_test_plugin:register"},
                          "def register(sub):\n    sub.add_parser('hello').set_defaults(func=lambda a: print('hi'))\n")
    env = isolated_env(folders + [site, plugin])
    probe = ("import importlib.metadata as m, sys\n"
             "try:\n    m.distribution('slicer-volumetric-gan'); sys.exit('the project metadata is visible')\n"
             "except m.PackageNotFoundError:\n    pass\n"
             "from VolGANCore import cli\n"
             "print(sorted(n for n, _ in cli._plugin_registrars()))\n")
    out = subprocess.run(isolated_command("-c", probe), env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == str(sorted(list(cli.PROJECT_COMMANDS) + ["hello"]))
    help_ = subprocess.run(isolated_command("-m", "VolGANCore.cli", "train", "--help"), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert help_.returncode == 0, help_.stderr
    assert help_.stdout.startswith("usage: volgan train") and "--preset" in help_.stdout
    hello = subprocess.run(isolated_command("-m", "VolGANCore.cli", "hello"), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert hello.returncode == 0 and hello.stdout.strip() == "hi", hello.stderr
    # a folder holding only VolGANCore (no GANTrainerLib on the path): its registrar is skipped, not an error
    core_only = subprocess.run(isolated_command("-m", "VolGANCore.cli", "--help"), env=isolated_env([folders[0], site]),
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert core_only.returncode == 0, core_only.stderr
    listed = [line.split()[0] for line in core_only.stdout.split("options:")[0].splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == ["info", "dataset", "morphometry"]


def test_entry_points_never_duplicate_the_project_commands(tmp_path, monkeypatch):
    """Installed with pip, the project's entry points are the built-in ones: each registrar runs once; a
    third-party entry point named like a project command is ignored, one with a new name is added."""
    plugin = _plugin_dist(tmp_path / "plugin", {"train": "volgan_test_plugin:hijack",
                                                "extra": "volgan_test_plugin:register"},
                          "def hijack(sub):\n    raise AssertionError('the project command was replaced')\n"
                          "def register(sub):\n    sub.add_parser('extra')\n")
    monkeypatch.syspath_prepend(str(plugin))
    names = [name for name, _ in cli._plugin_registrars()]
    assert sorted(names) == sorted(list(cli.PROJECT_COMMANDS) + ["extra"])
    from GANTrainerLib.cli import register

    assert dict(cli._plugin_registrars())["train"] is register
    parser = cli.build_parser()        # would raise "conflicting subparser" if a registrar ran twice
    assert parser.parse_args(["extra"]).command == "extra"
