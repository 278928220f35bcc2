"""The house: dependencies flow one way and there is no import circle anywhere.

    core  vindex/ (format, manifest, writer, reader, verify, errors, layers, hub/)
      <- ingest/ (runs models)        <- query/ (reads shards; never torch)
      <- study/, view/                 <- cli/ (the top floor)

The graph is read from every module's source (imports inside functions count too), so a lazy
import cannot hide a back-edge. The checks are plain functions over that graph; the last tests
add a back-edge and a circle to a copy of the tree and show that the checks catch them.
"""
import ast
import shutil
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> installed package (pyproject's package-dir)
PACKAGES = {"vindex": "vindex", "ingest": "vindex.ingest", "query": "vindex.query", "study": "vindex.study",
            "view": "vindex.view", "cli": "vindex.cli", "schemas": "vindex.schemas"}
FLOORS = {"vindex": 0, "vindex.ingest": 1, "vindex.query": 1, "vindex.study": 2, "vindex.view": 2, "vindex.cli": 3}
# what each area may import, besides itself: everything below it, nothing beside or above
ALLOWED = {
    "vindex": {"vindex", "vindex.schemas"},
    "vindex.ingest": {"vindex", "vindex.schemas", "vindex.ingest"},
    "vindex.query": {"vindex", "vindex.schemas", "vindex.query"},
    "vindex.study": {"vindex", "vindex.schemas", "vindex.ingest", "vindex.query", "vindex.study"},
    "vindex.view": {"vindex", "vindex.schemas", "vindex.query", "vindex.view"},
    "vindex.cli": {"vindex", "vindex.schemas", "vindex.ingest", "vindex.query", "vindex.study", "vindex.view",
                   "vindex.cli"},
}
NO_TORCH = ("vindex", "vindex.query", "vindex.view")   # areas that never import torch or transformers


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for folder, package in PACKAGES.items():
        for f in sorted((root / folder).rglob("*.py")):
            parts = list(f.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = f
    return out


def area(module: str) -> str:
    """The area (floor) a module belongs to: vindex.ingest.larql.format -> vindex.ingest."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and ".".join(parts[:2]) in FLOORS else "vindex"


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules `module` imports (relative imports resolved; `from a import b` -> a.b when a.b is a module)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known}
            # `from . import sqltext` needs the submodule, not the package's __init__ (already loading)
            out |= subs if len(subs) == len(node.names) else subs | {mod}
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package modules it imports (third-party names kept for the torch check)."""
    mods = modules(root)
    known = set(mods)
    return {m: imports(m, f, known) for m, f in mods.items()}


def back_edges(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break the one-way flow, as 'a -> b (why)'."""
    bad = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            top = d.split(".")[0]
            if top in ("torch", "transformers") and area(m) in NO_TORCH:
                bad.append(f"{m} -> {d} ({area(m)} never imports torch)")
            if top == "vindex" and d != "vindex" and area(d) not in ALLOWED[area(m)]:
                bad.append(f"{m} -> {d} ({area(m)} may not import {area(d)})")
    return bad


def circles(graph: dict[str, set[str]]) -> list[str]:
    """One import circle, if any, as 'a -> b -> a' (graphlib finds it)."""
    internal = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    try:
        TopologicalSorter(internal).prepare()
    except CycleError as e:
        return [" -> ".join(e.args[1])]
    return []


def test_every_module_is_in_the_graph():
    graph = import_graph()
    assert "vindex.cli" in graph and "vindex.cli.query" in graph and "vindex.ingest.larql.importer" in graph
    assert "vindex.hub.location" in graph and len(graph) > 60


def test_dependencies_flow_one_way():
    assert back_edges(import_graph()) == []


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_query_and_core_load_without_torch():
    code = "import sys, vindex, vindex.query, vindex.hub; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _copy_tree(tmp_path: Path) -> Path:
    for folder in PACKAGES:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.json",
                                                                                        "*.jsonl", "*.txt", "*.js"))
    return tmp_path


@pytest.mark.parametrize("file, line, expected", [
    ("vindex/manifest.py", "from vindex.query import connect", "vindex.manifest -> vindex.query"),
    ("ingest/plan.py", "from vindex.query.cka import cka", "vindex.ingest.plan -> vindex.query.cka"),
    ("query/cka.py", "    import torch", "vindex.query.cka -> torch"),
    ("query/views.py", "from ..ingest import builder", "vindex.query.views -> vindex.ingest.builder"),
    ("vindex/writer.py", "from .hub import card", "vindex.writer -> vindex.hub.card"),   # inside core: allowed
    ("study/report.py", "from vindex.cli import main", "vindex.study.report -> vindex.cli"),
])
def test_the_checks_catch_an_added_back_edge(tmp_path, file, line, expected):
    root = _copy_tree(tmp_path)
    with open(root / file, "a") as f:
        f.write(f"\n\ndef _added():\n{line if line.startswith(' ') else '    ' + line}\n")
    found = back_edges(import_graph(root))
    if file == "vindex/writer.py":
        assert found == [], "an import inside core is not a back-edge"
    else:
        assert any(b.startswith(expected) for b in found), found


def test_the_checks_catch_an_added_circle(tmp_path):
    root = _copy_tree(tmp_path)
    with open(root / "vindex" / "files.py", "a") as f:
        f.write("\n\ndef _added():\n    from .manifest import MANIFEST\n")
    found = circles(import_graph(root))
    assert found and "vindex.files" in found[0] and "vindex.manifest" in found[0]


def test_cli_help_is_fast_and_imports_no_torch():
    code = ("import sys; from click.testing import CliRunner; from vindex.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules and 'duckdb' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_cli_command_has_help():
    from click.testing import CliRunner
    from vindex.cli import main
    for name in main.commands:
        r = CliRunner().invoke(main, [name, "--help"])
        assert r.exit_code == 0 and "Usage:" in r.output, name


def test_no_package_export_shadows_a_submodule():
    """`import vindex.hub.pull as m` must give the module: a package may not export a name that is
    also one of its submodules (vindex.hub exports the function `pull`, so the module is download.py)."""
    import importlib
    import pkgutil
    for package in ("vindex", "vindex.hub", "vindex.ingest", "vindex.ingest.larql", "vindex.query", "vindex.study",
                    "vindex.view", "vindex.cli"):
        pkg = importlib.import_module(package)
        for sub in pkgutil.iter_modules(pkg.__path__):
            value = getattr(pkg, sub.name, None)
            if value is not None:
                assert getattr(value, "__name__", None) == f"{package}.{sub.name}", \
                    f"{package}.{sub.name} is a module, but {package} exports {value!r} under that name"


def test_no_test_module_imports_another():
    """Shared test helpers live in helper modules (toy_lakes, ...) or conftest.py, never in a test
    module that other test modules import (that ties one test file's setup to another's)."""
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module] if node.module else [a.name for a in node.names]   # `from . import x`
            else:
                continue
            found += [f"tests/{path.name}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[0].startswith("test_")]
    assert found == [], found
