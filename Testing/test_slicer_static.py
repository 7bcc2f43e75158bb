"""Static checks of the Slicer tier (CI has no Slicer application), and proof that they catch mistakes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import slicer_static_checks as checks

REPO = checks.REPO


@pytest.mark.parametrize("check", checks.ALL_CHECKS, ids=lambda c: c.__name__)
def test_repository_passes(check):
    assert check(REPO) == []


def test_three_modules_are_found():
    assert [m.name for m in checks.module_dirs(REPO)] == ["GANTrainer", "MorphometryLogic", "VolumetricGAN"]


@pytest.fixture
def repo_copy(tmp_path):
    """A copy of the Slicer tier (CMakeLists, module folders) to break on purpose."""
    dst = tmp_path / "repo"
    dst.mkdir()
    shutil.copy(REPO / "CMakeLists.txt", dst / "CMakeLists.txt")
    shutil.copy(REPO / "LICENSE", dst / "LICENSE")
    (dst / "Resources").mkdir()
    for entry in (REPO / "Resources").glob("*.json"):
        shutil.copy(entry, dst / "Resources" / entry.name)
    for module in checks.module_dirs(REPO):
        shutil.copytree(module, dst / module.name, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_misspelled_widget_name_is_caught(repo_copy):
    py = repo_copy / "GANTrainer" / "GANTrainer.py"
    before = set(checks.check_ui_references(repo_copy))
    py.write_text(py.read_text().replace("self.ui.validateButton.connect", "self.ui.validateButon.connect"))
    new = set(checks.check_ui_references(repo_copy)) - before
    assert len(new) == 1
    assert "self.ui.validateButon is not an object in GANTrainer/Resources/UI/GANTrainer.ui" in new.pop()


def test_widget_renamed_in_ui_only_is_caught(repo_copy):
    ui = repo_copy / "VolumetricGAN" / "Resources" / "UI" / "VolumetricGAN.ui"
    ui.write_text(ui.read_text().replace('name="createPhantomButton"', 'name="makePhantomButton"'))
    assert any("self.ui.createPhantomButton" in p for p in checks.check_ui_references(repo_copy))


def test_unlisted_file_and_missing_listed_file_are_caught(repo_copy):
    (repo_copy / "MorphometryLogic" / "MorphometryLib" / "extra.py").write_text("x = 1\n")
    cm = repo_copy / "VolumetricGAN" / "CMakeLists.txt"
    cm.write_text(cm.read_text().replace("VolumetricGANLib/__init__.py", "VolumetricGANLib/__init__.py\n  VolumetricGANLib/gone.py"))
    problems = checks.check_cmake_listing(repo_copy)
    assert any("MorphometryLogic/MorphometryLib/extra.py is not listed" in p for p in problems)
    assert any("lists VolumetricGANLib/gone.py, which does not exist" in p for p in problems)


def test_module_not_added_at_top_level_is_caught(repo_copy):
    top = repo_copy / "CMakeLists.txt"
    top.write_text(top.read_text().replace("add_subdirectory(GANTrainer)", ""))
    assert "CMakeLists.txt does not add_subdirectory(GANTrainer)" in checks.check_top_level_cmake(repo_copy)
    top.write_text(top.read_text().replace('set(EXTENSION_DEPENDS "PyTorch")', ""))
    assert "CMakeLists.txt: EXTENSION_DEPENDS is not set" in checks.check_top_level_cmake(repo_copy)


def test_syntax_error_and_broken_ui_are_caught(repo_copy):
    py = repo_copy / "MorphometryLogic" / "MorphometryLogic.py"
    py.write_text(py.read_text() + "\ndef broken(:\n")
    assert any("MorphometryLogic/MorphometryLogic.py" in p for p in checks.check_compiles(repo_copy))
    ui = repo_copy / "GANTrainer" / "Resources" / "UI" / "GANTrainer.ui"
    text = ui.read_text()
    ui.write_text(text.replace("</ui>", ""))
    assert any("not well-formed XML" in p for p in checks.check_all_ui(repo_copy))
    ui.write_text(text.replace('name="statusLabel"', 'name="progressBar"'))
    assert any("object name 'progressBar' is used 2 times" in p for p in checks.check_all_ui(repo_copy))
    ui.write_text(text.replace('class="ctkPathLineEdit" name="labelsFolderPathLineEdit"',
                               'class="ctkFancyEdit" name="labelsFolderPathLineEdit"'))
    assert any("ctkFancyEdit that is not declared" in p for p in checks.check_all_ui(repo_copy))


def test_extension_catalog_entry():
    entry = json.loads((REPO / "Resources" / "VolumetricGAN.json").read_text())
    sets = checks.cmake_sets((REPO / "CMakeLists.txt").read_text())
    assert " ".join(sets["EXTENSION_CATEGORY"]) == entry["category"] == "Image Synthesis"
    assert sets["EXTENSION_DEPENDS"] == entry["build_dependencies"] == ["PyTorch"]
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()


def test_catalog_mismatches_are_caught(repo_copy):
    assert checks.check_catalog_entry(repo_copy) == []
    catalog = repo_copy / "Resources" / "VolumetricGAN.json"
    entry = json.loads(catalog.read_text())
    catalog.write_text(json.dumps({**entry, "category": "Segmentation", "build_dependencies": []}))
    problems = checks.check_catalog_entry(repo_copy)
    assert any("category 'Segmentation' differs from EXTENSION_CATEGORY 'Image Synthesis'" in p for p in problems)
    assert any("build_dependencies [] differ from EXTENSION_DEPENDS ['PyTorch']" in p for p in problems)
    (repo_copy / "LICENSE").unlink()
    assert any("EXTENSION_LICENSE_FILE ${CMAKE_CURRENT_SOURCE_DIR}/LICENSE does not exist" in p
               for p in checks.check_catalog_entry(repo_copy))
    top = repo_copy / "CMakeLists.txt"
    top.write_text(top.read_text().replace("project(VolumetricGAN)", "project(SlicerVolumetricGAN)"))
    problems = checks.check_catalog_entry(repo_copy)
    assert ("Resources/SlicerVolumetricGAN.json (the Extensions Index entry of project(SlicerVolumetricGAN)) "
            "is missing") in problems
    assert ("Resources/VolumetricGAN.json is not the catalog entry of project(SlicerVolumetricGAN); "
            "remove it") in problems


def test_every_module_has_icon_and_requirements():
    for module in checks.module_dirs(REPO):
        icon = module / "Resources" / "Icons" / f"{module.name}.png"
        assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (module / "Resources" / f"{module.name}-requirements.txt").read_text().strip()


def test_a_missing_or_needless_requirement_is_caught(repo_copy):
    req = repo_copy / "GANTrainer" / "Resources" / "GANTrainer-requirements.txt"
    req.write_text(req.read_text().replace("monai>=1.3", "").replace("edt>=2.3", "") + "requests>=2.0\n")
    problems = checks.check_requirements(repo_copy)
    assert any(p.startswith("GANTrainer/Resources/GANTrainer-requirements.txt lacks monai (GANTrainer/GANTrainerLib/")
               for p in problems)
    # edt is needed through another module's package (MorphometryLib), which shares the install folder
    assert any("lacks edt (MorphometryLogic/MorphometryLib/thickness.py:" in p for p in problems)
    assert any("lists requests, which no file of GANTrainer" in p for p in problems)
    assert len(problems) == 3


def test_requirement_versions_follow_pyproject_and_each_other(repo_copy):
    req = repo_copy / "VolumetricGAN" / "Resources" / "VolumetricGAN-requirements.txt"
    req.write_text(req.read_text().replace("matplotlib>=3.7", "matplotlib>=3.1"))
    assert checks.check_requirements(repo_copy) == [
        "VolumetricGAN/Resources/VolumetricGAN-requirements.txt: matplotlib>=3.1 differs from "
        "GANTrainer/Resources/GANTrainer-requirements.txt's matplotlib>=3.7"]
    shutil.copy(REPO / "pyproject.toml", repo_copy / "pyproject.toml")
    req.write_text(req.read_text().replace("matplotlib>=3.1", "matplotlib>=3.7"))
    assert checks.check_requirements(repo_copy) == []
    req = repo_copy / "GANTrainer" / "Resources" / "GANTrainer-requirements.txt"
    req.write_text(req.read_text().replace("monai>=1.3", "monai>=1.0"))
    assert checks.check_requirements(repo_copy) == [
        "GANTrainer/Resources/GANTrainer-requirements.txt: monai>=1.0 differs from pyproject.toml's monai>=1.3"]


def test_optional_imports_need_no_requirement_line(repo_copy):
    lib = repo_copy / "GANTrainer" / "GANTrainerLib" / "presets.py"
    lib.write_text(lib.read_text() + "\ntry:\n    import rich\nexcept ImportError:\n    rich = None\n")
    assert checks.check_requirements(repo_copy) == []
    # an ImportError handler that raises (a readable message) still needs the package
    lib.write_text(lib.read_text() + "\n\ndef pretty():\n    try:\n        import rich.console\n"
                   "    except ImportError:\n        raise RuntimeError('pip install rich') from None\n")
    assert any("lacks rich (GANTrainer/GANTrainerLib/presets.py:" in p for p in checks.check_requirements(repo_copy))


def test_gantrainer_declares_matplotlib_and_monai():
    listed = checks.read_requirement_lines(REPO / "GANTrainer" / "Resources" / "GANTrainer-requirements.txt")
    assert {"matplotlib", "monai", "scikit-image", "edt"} <= set(listed)


def test_a_module_level_import_slicer_lacks_is_caught(repo_copy):
    assert checks.check_import_time_needs(repo_copy) == []
    py = repo_copy / "GANTrainer" / "GANTrainer.py"
    py.write_text(py.read_text().replace("\nimport ", "\nimport matplotlib\nimport ", 1))
    assert [p.split(": ", 1)[1].split(" when")[0] for p in checks.check_import_time_needs(repo_copy)] == [
        "GANTrainer.py imports matplotlib"]
    # torch at module level in the shared Slicer helpers reaches all three modules
    widgets = repo_copy / "MorphometryLogic" / "VolGANSlicer" / "widgets.py"
    widgets.write_text(widgets.read_text().replace("\nfrom ", "\nimport torch\nfrom ", 1))
    torch_problems = [p for p in checks.check_import_time_needs(repo_copy) if "imports torch" in p]
    assert {p.split(": ", 1)[1].split(".py")[0] for p in torch_problems} == {"GANTrainer", "MorphometryLogic",
                                                                             "VolumetricGAN"}
    assert all(p.startswith("MorphometryLogic/VolGANSlicer/widgets.py:") for p in torch_problems)


def test_installed_python_parses_as_python_3_9():
    """Slicer 5.8 embeds Python 3.9: every file the modules install must at least parse as 3.9 syntax."""
    import ast

    from install_layout import install_listing

    scripts = [src for rel, (src, _m) in install_listing(REPO).items() if rel.endswith(".py")]
    assert len(scripts) > 80
    for src in scripts:
        ast.parse(src.read_text(encoding="utf-8"), filename=str(src), feature_version=(3, 9))
    with pytest.raises(SyntaxError):  # the check does see 3.10-only syntax
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 9))
