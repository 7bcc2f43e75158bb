"""Static checks of the Slicer tier, for CI machines that have no Slicer application.

Each check returns a list of problems (empty = pass), so a test can assert on it and a developer can run
``python Testing/slicer_static_checks.py`` to see everything at once:

- every Python file of a module folder byte-compiles;
- every ``.ui`` is well-formed Qt Designer XML (``<ui>`` root, ``<class>`` naming the top widget, unique
  object names, every custom class declared in ``<customwidgets>``, connections between existing objects);
- every ``self.ui.<name>`` used by a module's Python code exists in that module's ``.ui`` (the shared
  widget mixin in VolGANSlicer is checked against every module's ``.ui``);
- every file in a module folder is listed in that folder's CMakeLists.txt, and every listed file exists;
- the top-level CMakeLists.txt sets the extension metadata and adds every module folder.
- the Extensions Index entry ``Resources/<project>.json`` agrees with that metadata (the Index's own checker runs
  in Testing/test_extensions_index.py).
- each module's ``Resources/<Module>-requirements.txt`` lists every third-party package its installed files can
  import (following imports into the other modules' packages, which share the install folder), with the minimum
  versions of pyproject.toml, and nothing else; and ``<Module>.py`` needs nothing at import time that Slicer lacks.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXTENSION_FIELDS = ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS")
SHARED_WIDGET_CODE = ("MorphometryLogic/VolGANSlicer/widgets.py",)
_IGNORED_PARTS = {"__pycache__", ".pytest_cache"}


def module_dirs(repo: Path = REPO) -> list[Path]:
    """Folders holding a Slicer scripted module: ``<Name>/<Name>.py`` next to a CMakeLists.txt."""
    return sorted(d for d in repo.iterdir()
                  if d.is_dir() and (d / f"{d.name}.py").is_file() and (d / "CMakeLists.txt").is_file())


def _module_files(module: Path) -> list[Path]:
    out = []
    for p in sorted(module.rglob("*")):
        rel = p.relative_to(module)
        if p.is_dir() or any(part in _IGNORED_PARTS or part.startswith(".") for part in rel.parts):
            continue
        if p.suffix == ".pyc":
            continue
        out.append(p)
    return out


# -- 1. byte-compilation --------------------------------------------------------------------------------
def check_compiles(repo: Path = REPO) -> list[str]:
    problems = []
    for module in module_dirs(repo):
        for p in _module_files(module):
            if p.suffix == ".py":
                try:
                    compile(p.read_text(encoding="utf-8"), str(p), "exec")
                except SyntaxError as exc:
                    problems.append(f"{p.relative_to(repo)}:{exc.lineno}: {exc.msg}")
    return problems


# -- 2. .ui files ---------------------------------------------------------------------------------------
def ui_object_names(ui_path: Path) -> set[str]:
    root = ET.parse(ui_path).getroot()
    return {el.get("name") for el in root.iter() if el.tag in ("widget", "layout", "action", "spacer")
            and el.get("name")}


def check_ui(ui_path: Path) -> list[str]:
    where = str(ui_path)
    try:
        root = ET.parse(ui_path).getroot()
    except ET.ParseError as exc:
        return [f"{where}: not well-formed XML ({exc})"]
    problems = []
    if root.tag != "ui" or not root.get("version"):
        problems.append(f"{where}: root element must be <ui version=...>, got <{root.tag}>")
    top = root.find("widget")
    cls = root.findtext("class")
    if top is None:
        return problems + [f"{where}: no top-level <widget>"]
    if cls != top.get("name"):
        problems.append(f"{where}: <class>{cls}</class> differs from the top widget's name '{top.get('name')}'")
    if top.get("class") != "qMRMLWidget":
        problems.append(f"{where}: the top widget must be a qMRMLWidget (got {top.get('class')})")
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    names: dict[str, int] = {}
    for el in root.iter():
        if el.tag in ("widget", "layout", "action", "spacer"):
            name = el.get("name")
            if el.tag != "spacer" and not el.get("class"):
                problems.append(f"{where}: <{el.tag} name='{name}'> has no class")
            if not name:
                problems.append(f"{where}: a <{el.tag} class='{el.get('class')}'> has no name")
                continue
            names[name] = names.get(name, 0) + 1
            klass = el.get("class") or ""
            if el.tag == "widget" and not klass.startswith("Q") and klass not in custom:
                problems.append(f"{where}: widget '{name}' uses class {klass} that is not declared in <customwidgets>")
    problems += [f"{where}: object name '{n}' is used {k} times" for n, k in names.items() if k > 1]
    for conn in root.iter("connection"):
        for role in ("sender", "receiver"):
            target = conn.findtext(role)
            if target not in names:
                problems.append(f"{where}: connection {role} '{target}' is not an object of this .ui")
    return problems


def check_all_ui(repo: Path = REPO) -> list[str]:
    problems = []
    for module in module_dirs(repo):
        uis = sorted((module / "Resources" / "UI").glob("*.ui"))
        if not (module / "Resources" / "UI" / f"{module.name}.ui").is_file():
            problems.append(f"{module.name}: Resources/UI/{module.name}.ui is missing")
        for ui in uis:
            problems += check_ui(ui)
    return problems


# -- 3. self.ui.<name> references ----------------------------------------------------------------------
def ui_names_used(py_path: Path) -> dict[str, int]:
    """``{name: first line}`` for every ``self.ui.<name>`` in a Python file."""
    tree = ast.parse(py_path.read_text(encoding="utf-8"), str(py_path))
    used: dict[str, int] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            used.setdefault(node.attr, node.lineno)
    return used


def check_ui_references(repo: Path = REPO) -> list[str]:
    problems = []
    modules = module_dirs(repo)
    for module in modules:
        ui = module / "Resources" / "UI" / f"{module.name}.ui"
        if not ui.is_file():
            continue
        names = ui_object_names(ui)
        code = [module / f"{module.name}.py"] + [repo / s for s in SHARED_WIDGET_CODE if (repo / s).is_file()]
        for py in code:
            for name, line in sorted(ui_names_used(py).items()):
                if name not in names:
                    problems.append(f"{py.relative_to(repo)}:{line}: self.ui.{name} is not an object in "
                                    f"{ui.relative_to(repo)}")
    return problems


# -- 4. CMakeLists listings ----------------------------------------------------------------------------
_SET = re.compile(r"set\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s+(.*?)\)", re.S | re.I)


def cmake_sets(text: str) -> dict[str, list[str]]:
    text = re.sub(r"#[^\n]*", "", text)
    values: dict[str, list[str]] = {}
    for name, body in _SET.findall(text):
        tokens = [t.strip('"') for t in body.split()]
        values[name] = tokens
    for name, tokens in values.items():
        expanded = []
        for t in tokens:
            for var, val in values.items():
                if len(val) == 1:
                    t = t.replace("${" + var + "}", val[0])
            expanded.append(t)
        values[name] = expanded
    return values


def check_cmake_listing(repo: Path = REPO) -> list[str]:
    problems = []
    for module in module_dirs(repo):
        cm = module / "CMakeLists.txt"
        sets = cmake_sets(cm.read_text(encoding="utf-8"))
        if sets.get("MODULE_NAME") != [module.name]:
            problems.append(f"{cm.relative_to(repo)}: set(MODULE_NAME {module.name}) is missing")
        listed = set(sets.get("MODULE_PYTHON_SCRIPTS", [])) | set(sets.get("MODULE_PYTHON_RESOURCES", []))
        for p in _module_files(module):
            rel = p.relative_to(module).as_posix()
            if rel == "CMakeLists.txt":
                continue
            if rel not in listed:
                problems.append(f"{p.relative_to(repo)} is not listed in {cm.relative_to(repo)} "
                                "(add it to MODULE_PYTHON_SCRIPTS or MODULE_PYTHON_RESOURCES)")
        for rel in sorted(listed):
            if not (module / rel).is_file():
                problems.append(f"{cm.relative_to(repo)} lists {rel}, which does not exist")
        if "slicerMacroBuildScriptedModule" not in cm.read_text(encoding="utf-8"):
            problems.append(f"{cm.relative_to(repo)}: no slicerMacroBuildScriptedModule call")
    return problems


def check_top_level_cmake(repo: Path = REPO) -> list[str]:
    cm = repo / "CMakeLists.txt"
    if not cm.is_file():
        return ["CMakeLists.txt is missing at the top level"]
    text = cm.read_text(encoding="utf-8")
    sets = cmake_sets(text)
    problems = [f"CMakeLists.txt: EXTENSION_{f} is not set" for f in EXTENSION_FIELDS
                if not sets.get(f"EXTENSION_{f}")]
    added = set(re.findall(r"add_subdirectory\s*\(\s*([^\s)]+)\s*\)", re.sub(r"#[^\n]*", "", text)))
    for module in module_dirs(repo):
        if module.name not in added:
            problems.append(f"CMakeLists.txt does not add_subdirectory({module.name})")
    for name in sorted(added - {m.name for m in module_dirs(repo)}):
        problems.append(f"CMakeLists.txt adds {name}, which is not a module folder")
    return problems


# -- 6. Extensions Index catalog entry ------------------------------------------------------------------
def check_catalog_entry(repo: Path = REPO) -> list[str]:
    """``Resources/<project>.json`` is the only catalog entry, named after ``project()``; its category is
    EXTENSION_CATEGORY, its build_dependencies are EXTENSION_DEPENDS, and EXTENSION_LICENSE_FILE names a file."""
    text = (repo / "CMakeLists.txt").read_text(encoding="utf-8")
    project = re.search(r"project\s*\(\s*([^\s)]+)", re.sub(r"#[^\n]*", "", text), re.I)
    if not project:
        return ["CMakeLists.txt: no project() declaration"]
    name = project.group(1)
    catalog = repo / "Resources" / f"{name}.json"
    problems = [f"Resources/{p.name} is not the catalog entry of project({name}); remove it"
                for p in sorted((repo / "Resources").glob("*.json")) if p != catalog]
    if not catalog.is_file():
        return problems + [f"Resources/{name}.json (the Extensions Index entry of project({name})) is missing"]
    entry = json.loads(catalog.read_text(encoding="utf-8"))
    sets = cmake_sets(text)
    category = " ".join(sets.get("EXTENSION_CATEGORY", []))
    if entry.get("category") != category:
        problems.append(f"Resources/{name}.json: category {entry.get('category')!r} differs from "
                        f"EXTENSION_CATEGORY {category!r} in CMakeLists.txt")
    depends = [d for d in sets.get("EXTENSION_DEPENDS", []) if d != "NA"]
    if entry.get("build_dependencies", []) != depends:
        problems.append(f"Resources/{name}.json: build_dependencies {entry.get('build_dependencies', [])} differ "
                        f"from EXTENSION_DEPENDS {depends} in CMakeLists.txt")
    licence = " ".join(sets.get("EXTENSION_LICENSE_FILE", []))
    if not licence:
        problems.append("CMakeLists.txt: EXTENSION_LICENSE_FILE is not set (the package would carry Slicer's licence)")
    elif not Path(licence.replace("${CMAKE_CURRENT_SOURCE_DIR}", str(repo))).is_file():
        problems.append(f"CMakeLists.txt: EXTENSION_LICENSE_FILE {licence} does not exist")
    return problems


# -- 7. run-time requirements ---------------------------------------------------------------------------
# Importable in every Slicer 5.8+ without a pip install (torch comes from the PyTorch extension, EXTENSION_DEPENDS).
SLICER_SHIPS = frozenset({"numpy", "scipy", "SimpleITK", "vtk", "vtkmodules", "qt", "ctk", "slicer", "SampleData"})
FROM_PYTORCH_EXTENSION = frozenset({"torch"})
# Import name -> pip distribution name where they differ.
DISTRIBUTIONS = {"skimage": "scikit-image", "PIL": "Pillow", "yaml": "PyYAML", "sklearn": "scikit-learn"}
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*(?:\[[^\]]*\])?\s*([^;#]*)")


def _dist_key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", DISTRIBUTIONS.get(name, name)).lower()


def installed_scripts(repo: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every script the modules' CMakeLists install (into one flat folder)."""
    out = {}
    for module in module_dirs(repo):
        for rel in cmake_sets((module / "CMakeLists.txt").read_text(encoding="utf-8")).get("MODULE_PYTHON_SCRIPTS", []):
            parts = rel.removesuffix(".py").split("/")
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = module / rel
    return out


def _optional_import(node: ast.Try) -> bool:
    """A ``try`` whose ImportError handler carries on without the package (a handler that raises does not)."""
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if ({k.id for k in kinds if isinstance(k, ast.Name)} & {"ImportError", "ModuleNotFoundError"}
                and not any(isinstance(n, ast.Raise) for n in ast.walk(handler))):
            return True
    return False


def _imports(path: Path, dotted: str, module_level_only: bool) -> tuple[tuple[list[str], int], ...]:
    """Each import of a file as (the dotted names it may load, line). Optional imports (in a ``try`` whose
    ImportError handler does without) and ``if TYPE_CHECKING:`` blocks are left out; so are function bodies when
    module_level_only."""
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    return _imports_of_source(path.read_text(encoding="utf-8"), str(path), package, module_level_only)


@functools.lru_cache(maxsize=1024)
def _imports_of_source(source: str, filename: str, package: str, module_level_only: bool):
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try) and _optional_import(node):
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child)
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found.append((([".".join(parts[:i]) for i in range(1, len(parts) + 1)]), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            parts = base.split(".") if base else []
            names = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
            found.append((names + [f"{base}.{a.name}" if base else a.name for a in node.names], node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    try:
        visit(ast.parse(source, filename))
    except SyntaxError:  # check_compiles reports it
        pass
    return tuple(found)


def third_party_imports(repo: Path, start: list[str], module_level_only: bool = False) -> dict[str, str]:
    """Third-party top-level package -> first place (``file:line``) that imports it, over ``start`` (dotted names
    of installed scripts) and every installed script they import, transitively. File-grained: a file counts whole
    once anything imports from it, so this may over-approximate what a given call path runs, never under."""
    scripts = installed_scripts(repo)
    local_tops = {name.split(".")[0] for name in scripts}
    seen, todo, out = set(), list(start), {}
    while todo:
        dotted = todo.pop()
        if dotted in seen:
            continue
        seen.add(dotted)
        path = scripts[dotted]
        for names, line in _imports(path, dotted, module_level_only):
            for name in names:
                top = name.split(".")[0]
                if name in scripts:
                    todo.append(name)
                elif top not in local_tops and top not in sys.stdlib_module_names:
                    out.setdefault(top, f"{path.relative_to(repo).as_posix()}:{line}")
    return out


def read_requirement_lines(path: Path) -> dict[str, str]:
    """Normalised distribution name -> version specifier, for each line of a requirements file."""
    out = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        m = _REQUIREMENT.match(raw.split("#", 1)[0])
        if m:
            out[_dist_key(m.group(1))] = m.group(2).strip()
    return out


def pyproject_dependencies(repo: Path) -> dict[str, str]:
    """Normalised distribution name -> version specifier of pyproject's [project] dependencies ({} if absent)."""
    path = repo / "pyproject.toml"
    if not path.is_file():
        return {}
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", path.read_text(encoding="utf-8"), re.S | re.M)
    lines = re.findall(r'"([^"]+)"', block.group(1)) if block else []
    return {_dist_key(m.group(1)): m.group(2).strip() for m in map(_REQUIREMENT.match, lines) if m}


def check_requirements(repo: Path = REPO) -> list[str]:
    problems = []
    pinned = pyproject_dependencies(repo)
    scripts = installed_scripts(repo)
    first_spec: dict[str, tuple[str, str]] = {}
    for module in module_dirs(repo):
        req = module / "Resources" / f"{module.name}-requirements.txt"
        where = req.relative_to(repo).as_posix()
        listed = read_requirement_lines(req) if req.is_file() else {}
        for dist, spec in listed.items():
            other_where, other_spec = first_spec.setdefault(dist, (where, spec))
            if other_spec != spec:
                problems.append(f"{where}: {dist}{spec} differs from {other_where}'s {dist}{other_spec}")
        own = [name for name, path in scripts.items() if path.is_relative_to(module)]
        needed = third_party_imports(repo, own)
        for top, place in sorted(needed.items()):
            if top not in SLICER_SHIPS | FROM_PYTORCH_EXTENSION and _dist_key(top) not in listed:
                problems.append(f"{where} lacks {DISTRIBUTIONS.get(top, top)} ({place} imports {top}); add a line")
        needed_keys = {_dist_key(top) for top in needed}
        for dist, spec in sorted(listed.items()):
            if dist not in needed_keys:
                problems.append(f"{where} lists {dist}, which no file of {module.name} (or the modules it imports) "
                                "imports; remove the line")
            elif dist in pinned and spec != pinned[dist]:
                problems.append(f"{where}: {dist}{spec} differs from pyproject.toml's {dist}{pinned[dist]}")
    return problems


def check_import_time_needs(repo: Path = REPO) -> list[str]:
    """What ``<Module>.py`` imports when Slicer loads it (module level, transitively) must ship with Slicer."""
    problems = []
    for module in module_dirs(repo):
        for top, place in sorted(third_party_imports(repo, [module.name], module_level_only=True).items()):
            if top not in SLICER_SHIPS:
                problems.append(f"{place}: {module.name}.py imports {top} when Slicer loads the module, and Slicer "
                                f"may lack it; import it inside the function that uses it")
    return problems


ALL_CHECKS = (check_compiles, check_all_ui, check_ui_references, check_cmake_listing, check_top_level_cmake,
              check_catalog_entry, check_requirements, check_import_time_needs)


def run_all(repo: Path = REPO) -> list[str]:
    problems = []
    for check in ALL_CHECKS:
        problems += check(repo)
    return problems


if __name__ == "__main__":
    found = run_all()
    print("\n".join(found) or "all Slicer static checks pass")
    sys.exit(1 if found else 0)
