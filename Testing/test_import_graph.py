"""The project's packages import without cycles (read statically from the source, nothing is imported).

Every ``import`` and ``from … import`` counts, also those inside functions (a lazy import hides a cycle from
the interpreter, not from the reader). ``from package import name`` points at the submodule ``name`` where
there is one, else at the package's ``__init__``. Imports under ``if TYPE_CHECKING:`` are not executed and do
not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "VolGANCore": ROOT / "MorphometryLogic" / "VolGANCore",
    "VolGANSlicer": ROOT / "MorphometryLogic" / "VolGANSlicer",
    "MorphometryLib": ROOT / "MorphometryLogic" / "MorphometryLib",
    "VolumetricGANLib": ROOT / "VolumetricGAN" / "VolumetricGANLib",
    "GANTrainerLib": ROOT / "GANTrainer" / "GANTrainerLib",
}


def _modules(packages: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's ``__init__``)."""
    mods = {}
    for name, folder in packages.items():
        for f in sorted(folder.rglob("*.py")):
            parts = [name, *f.relative_to(folder).with_suffix("").parts]
            is_pkg = parts[-1] == "__init__"
            mods[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return mods


def _known(name: str, mods) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def import_graph(packages: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    mods = _modules(packages)
    graph = {}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skip = _type_checking_nodes(tree)
        targets = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(_known(a.name, mods) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                for a in node.names:
                    sub = f"{source}.{a.name}"
                    targets.add(sub if sub in mods else _known(source, mods))
        graph[mod] = {t for t in targets if t is not None and t != mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_project_packages_have_no_import_cycle():
    graph = import_graph(PACKAGES)
    assert len(graph) > 60, sorted(graph)       # every package was found and read
    assert "MorphometryLib.surface" in graph["MorphometryLib.anisotropy"]
    assert "VolumetricGANLib.import_aydin2024" in graph["VolumetricGANLib.importers"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_finds_a_lazy_cycle_and_ignores_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import b\n\ndef f():\n    return b.g()\n")
    (pkg / "b.py").write_text("def g():\n    from .a import f  # lazy, still a cycle\n    return f\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import D\n")
    (pkg / "d.py").write_text("from pkg.c import TYPE_CHECKING\n")
    graph = import_graph({"pkg": pkg})
    assert graph["pkg.c"] == set() and graph["pkg.d"] == {"pkg.c"}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.b"}
