"""Every example in docs/sql.md runs, and its result table is what the docs show.

    python tests/test_query_docs.py --update     # rewrite the result tables after a deliberate change

The examples run in order on one connection to a small deterministic lake (toy_lakes.DOCS) with
two models whose layers share structure at matching depth, so the numbers mean something.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
import warnings
from pathlib import Path

import pytest

from toy_lakes import DOCS, write_toy_lake

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"


# -- reading and rendering the doc ---------------------------------------------------------------
BLOCK = re.compile(r"```(sql|python|console)\n(.*?)```\n((?:[ \t]*\n)*(?:\|[^\n]*\|\n)+)?", re.S)


def examples(text: str):
    """(kind, code, expected table or None, span of the table) for each code block in order."""
    for m in BLOCK.finditer(text):
        yield m.group(1), m.group(2), m.group(3), m.span(3)


def render(rel) -> str:
    """A result as a markdown table (what docs/sql.md shows under each query)."""
    cols = rel.columns
    rows = rel.fetchall()

    def cell(v):
        if v is None:
            return "NULL"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return repr(round(v, 6))
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(cell(x) for x in v) + "]"
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run_doc(lake: Path, update: bool = False) -> list[tuple[str, str, str]]:
    """Run every example; returns (code, expected, got) for each mismatch (or rewrites the doc)."""
    from vindex.query import connect

    text = DOC.read_text()
    con = connect(lake)
    mismatches, edits = [], []
    for kind, code, expected, span in examples(text):
        try:
            run_one(con, lake, kind, code, expected, span, update, mismatches, edits)
        except Exception as e:  # noqa: BLE001 (report which example broke)
            mismatches.append((code, "no error", f"{type(e).__name__}: {e}"))
    if update:
        for (a, b), new in sorted(edits, reverse=True):
            text = text[:a] + new + text[b:]
        DOC.write_text(text)
    return mismatches


def run_one(con, lake, kind, code, expected, span, update, mismatches, edits):
    """Run one example: SQL on the shared connection, Python with `lake` defined, CLI lines via click."""
    import duckdb
    from click.testing import CliRunner

    from vindex.cli import main
    if kind == "sql":
        statements = [s.query for s in duckdb.extract_statements(code)]
        for s in statements[:-1]:
            con.execute(s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rel = con.sql(statements[-1])
            got = render(rel) if rel is not None else None
        if expected is None:
            return
        if update:
            edits.append((span, "\n" + got if expected.startswith("\n") else got))
        elif expected.strip() != got.strip():
            mismatches.append((code, expected, got))
    elif kind == "python":
        exec(compile(code, str(DOC), "exec"), {"lake": str(lake)})  # noqa: S102 (our own docs)
    else:
        for line in code.splitlines():
            if line.startswith("$ vindex "):
                args = shlex.split(line[len("$ vindex "):])
                args = [str(lake) if a == "lake" else a for a in args]
                res = CliRunner().invoke(main, args, catch_exceptions=False)
                if res.exit_code != 0:
                    mismatches.append((line, "exit 0", f"exit {res.exit_code}: {res.output}"))


@pytest.fixture(scope="module")
def docs_lake(tmp_path_factory):
    return write_toy_lake(tmp_path_factory.mktemp("docs") / "lake", DOCS)


def test_every_example_in_docs_sql_runs_and_shows_its_result(docs_lake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # CLI examples may write files (heatmaps, parquet)
    assert DOC.is_file(), f"{DOC} is missing"
    n = sum(1 for _ in examples(DOC.read_text()))
    assert n >= 20, f"docs/sql.md has only {n} examples"
    problems = run_doc(docs_lake)
    assert not problems, "\n\n".join(f"{c}\nexpected:\n{e}\ngot:\n{g}" for c, e, g in problems)


def test_every_sql_function_and_view_is_documented():
    from vindex.query.functions import UDFS
    from vindex.query.macros import macros
    text = DOC.read_text()
    names = {re.search(r"MACRO (\w+)", m).group(1) for m in macros()}
    names |= {n for n, _, _ in UDFS if not n.startswith("vindex_")}
    names |= {"models", "prompt_sets", "files", "prompts", "activations", "pooled", "features", "ov_gate",
              "layer_stats"}
    missing = sorted(n for n in names if f"### {n}" not in text)
    assert not missing, f"docs/sql.md lacks a section for: {missing}"


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        lake = write_toy_lake(Path(tmp) / "lake", DOCS)
        os.chdir(tmp)
        bad = run_doc(lake, update="--update" in sys.argv)
        for c, e, g in bad:
            print(f"{c}\nexpected:\n{e}\ngot:\n{g}\n")
        print("docs/sql.md:", "updated" if "--update" in sys.argv else f"{len(bad)} mismatch(es)")
