"""The catalog entry passes the Slicer Extensions Index's own checker, run offline.

The checker is ``../shared/slicer/extensions-index/scripts/check_description_files.py`` (Slicer/ExtensionsIndex,
commit in ``../shared/slicer/extensions-index/COMMIT``); it is loaded from there, never copied. The checks that need
no network run as the Index runs them: JSON schema, JSON file format, extension name, category, git repository
name, scm_url syntax, licence file, and the top-level CMakeLists content. Where a check downloads (the schema, the
icon and screenshot URLs), an offline stand-in for ``requests`` answers from local files: the Index's own schema
files by their ``$id``, and this working tree for raw.githubusercontent.com URLs of the catalog's repository at its
``scm_revision``. Not run: cloning, repository size, GitHub topics (they need the hosted repository).
"""

from __future__ import annotations

import json
import types
import urllib.parse
from pathlib import Path

import pytest

from conftest import REPO, shared_file

CATALOG = REPO / "Resources" / "VolumetricGAN.json"
EXTENSION_NAME = CATALOG.stem
OFFLINE_CHECKS = ("check_json_schema", "check_category", "check_extension_name", "check_scm_url_syntax")


def _load_checker(path: Path) -> types.ModuleType:
    """The checker module. Its ``print_categories`` uses an f-string that only Python >= 3.12 parses; on older
    Pythons each top-level function that fails to compile is blanked out of the source text (line numbers kept)
    before compiling the rest. The shared file itself is never modified, and no check this test uses may be
    among the blanked functions."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    blanked = []
    while True:
        try:
            code = compile("".join(lines), str(path), "exec")
            break
        except SyntaxError as exc:
            starts = [i for i in range(min(exc.lineno, len(lines))) if lines[i].startswith("def ")]
            if not starts:
                raise
            start = starts[-1]
            end = next((i for i in range(start + 1, len(lines))
                        if lines[i].strip() and not lines[i][0].isspace() and not lines[i].startswith("#")),
                       len(lines))
            blanked.append(lines[start][4:].split("(")[0])
            lines[start:end] = ["\n"] * (end - start)
    module = types.ModuleType("check_description_files")
    module.__file__ = str(path)
    exec(code, module.__dict__)
    module.BLANKED_FUNCTIONS = blanked
    return module


class _Response:
    def __init__(self, url: str, body: bytes, content_type: str):
        self.url, self.content, self.headers = url, body, {"Content-Type": content_type}

    def raise_for_status(self) -> None:
        pass

    def json(self):
        return json.loads(self.content)


_IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif"}


class OfflineRequests:
    """Stands in for ``requests`` inside the checker: answers from local files, never from the network."""

    class RequestException(Exception):
        pass

    def __init__(self, schema_folder: Path, entry: dict, tree: Path):
        self.schemas = {}
        for p in schema_folder.glob("*.json"):
            self.schemas[json.loads(p.read_text(encoding="utf-8"))["$id"].split("#")[0]] = p
        owner_repo = urllib.parse.urlsplit(entry["scm_url"]).path.strip("/").removesuffix(".git")
        self.raw_prefix = f"https://raw.githubusercontent.com/{owner_repo}/{entry['scm_revision']}/"
        self.tree = tree

    def get(self, url: str, timeout=None, headers=None) -> _Response:
        if url in self.schemas:
            return _Response(url, self.schemas[url].read_bytes(), "application/json")
        if url.startswith(self.raw_prefix):
            local = self.tree / url[len(self.raw_prefix):]
            if local.is_file():
                body = local.read_bytes()
                kind = next((t for magic, t in _IMAGE_MAGIC.items() if body.startswith(magic)), "text/plain")
                return _Response(url, body, kind)
        raise self.RequestException(f"offline: {url} is neither an Index schema nor a file of this working tree "
                                    f"under {self.raw_prefix}")


@pytest.fixture(scope="module")
def index_dir() -> Path:
    return shared_file("slicer", "extensions-index")


@pytest.fixture(scope="module")
def checker(index_dir):
    module = _load_checker(index_dir / "scripts" / "check_description_files.py")
    used = set(OFFLINE_CHECKS) | {"check_json_file_format", "check_git_repository_name", "check_license_file",
                                  "check_cmakelists_content", "validate_image_url"}
    assert not used & set(module.BLANKED_FUNCTIONS), module.BLANKED_FUNCTIONS
    return module


@pytest.fixture
def entry(checker) -> dict:
    return checker.parse_json(str(CATALOG))


@pytest.fixture
def offline(checker, index_dir, entry, monkeypatch) -> OfflineRequests:
    stand_in = OfflineRequests(index_dir / "schemas", entry, REPO)
    monkeypatch.setattr(checker, "requests", stand_in)
    return stand_in


def test_the_checker_is_the_index_one_and_loads(checker, index_dir):
    assert (index_dir / "COMMIT").read_text().strip()
    for name in OFFLINE_CHECKS:
        assert callable(getattr(checker, name))
    assert "Image Synthesis" in checker.ACCEPTED_EXTENSION_CATEGORIES


def test_catalog_entry_passes_the_offline_checks(checker, entry, offline):
    assert entry["$schema"].split("#")[0] in offline.schemas  # validated against the Index's v1.0.2 file
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    checker.check_json_schema(EXTENSION_NAME, entry)
    checker.check_json_file_format(EXTENSION_NAME, entry, str(CATALOG))
    checker.check_extension_name(EXTENSION_NAME, entry)
    checker.check_category(EXTENSION_NAME, entry)
    checker.check_git_repository_name(EXTENSION_NAME, entry)
    checker.check_scm_url_syntax(EXTENSION_NAME, entry)
    assert "Apache License" in checker.check_license_file(EXTENSION_NAME, entry, str(REPO))


def test_top_level_cmake_passes_the_index_check(checker, entry, offline):
    """project() equals the catalog file's name; the icon and screenshot URLs name images of this repository at
    the catalog's scm_revision (served from the working tree)."""
    report = checker.check_cmakelists_content(EXTENSION_NAME, entry, str(REPO))
    assert "project(VolumetricGAN)" in report


def test_schema_check_catches_bad_entries(checker, entry, offline):
    for bad, why in [({**entry, "categroy": "Segmentation"}, "Additional properties"),
                     ({k: v for k, v in entry.items() if k != "category"}, "'category' is a required property"),
                     ({**entry, "tier": "1"}, "is not of type 'integer'"),
                     ({**entry, "scm_type": "svn"}, "is not one of")]:
        with pytest.raises(checker.ExtensionCheckError, match=why):
            checker.check_json_schema(EXTENSION_NAME, bad)
    with pytest.raises(checker.ExtensionCheckError, match="Failed to download schema"):
        checker.check_json_schema(EXTENSION_NAME, {**entry, "$schema": "https://example.org/no-such-schema.json#"})


def test_name_check_catches_a_slicer_prefix(checker, entry):
    with pytest.raises(checker.ExtensionCheckError, match="consider changing it to 'VolumetricGAN'"):
        checker.check_extension_name("SlicerVolumetricGAN", entry)


def test_category_check_catches_an_unknown_category(checker, entry):
    with pytest.raises(checker.ExtensionCheckError, match="Category \\*\\*`Deep Learning`\\*\\* is unknown"):
        checker.check_category(EXTENSION_NAME, {**entry, "category": "Deep Learning"})


def test_scm_url_check_catches_bad_urls(checker, entry):
    with pytest.raises(checker.ExtensionCheckError, match="do not match scheme://host/path"):
        checker.check_scm_url_syntax(EXTENSION_NAME, {**entry, "scm_url": "github.com/SlicerVolumetricGAN/x"})
    with pytest.raises(checker.ExtensionCheckError, match="scheme is 'ssh'"):
        checker.check_scm_url_syntax(EXTENSION_NAME, {**entry, "scm_url": "ssh://git@github.com/a/SlicerB.git"})
    with pytest.raises(checker.ExtensionCheckError, match="should\\* start with 'Slicer'"):
        checker.check_git_repository_name(EXTENSION_NAME, {**entry, "scm_url": "https://github.com/a/VolGAN.git"})


def test_cmake_check_catches_a_renamed_project_and_a_missing_icon(checker, entry, offline, tmp_path):
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    (tmp_path / "CMakeLists.txt").write_text(top.replace("project(VolumetricGAN)", "project(SlicerVolumetricGAN)"))
    with pytest.raises(checker.ExtensionCheckError, match="'SlicerVolumetricGAN' does not match"):
        checker.check_cmakelists_content(EXTENSION_NAME, entry, str(tmp_path))
    (tmp_path / "CMakeLists.txt").write_text(top.replace("Icons/VolumetricGAN.png", "Icons/Missing.png"))
    with pytest.raises(checker.ExtensionCheckError, match="Icons/Missing.png"):
        checker.check_cmakelists_content(EXTENSION_NAME, entry, str(tmp_path))


def test_licence_check_catches_a_missing_licence(checker, entry, tmp_path):
    with pytest.raises(checker.ExtensionCheckError, match="No license file found"):
        checker.check_license_file(EXTENSION_NAME, entry, str(tmp_path))
