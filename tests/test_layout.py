"""Dependencies flow one way: core <- ingest, query <- application layer (cli, study, view)."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative import inside the vindex package
                mod = "vindex." + mod if mod else "vindex"
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_core_imports_neither_ingest_nor_query():
    for f in sorted((ROOT / "vindex").glob("*.py")):
        bad = {m for m in _imports(f) if m.startswith(("vindex.ingest", "vindex.query", "torch", "transformers"))}
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}; core must not depend on ingest/query/torch"


def test_query_never_imports_torch():
    for f in sorted((ROOT / "query").rglob("*.py")):
        bad = {m for m in _imports(f) if m.split(".")[0] in ("torch", "transformers") or m.startswith("vindex.ingest")}
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}"
    code = "import sys, vindex, vindex.query; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


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
