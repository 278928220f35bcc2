"""Every example of docs/rosetta.md runs, and its result is what the page shows: SQL results as the
tables under them (test_query_docs's rendering), a refusal as the message the page quotes, Python
blocks exec'd in order with `lake` defined.

    python tests/test_rosetta_docs.py --update     # rewrite the result tables after a deliberate change
"""
from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import duckdb
import pytest

from toy_lakes import DOCS, write_toy_lake

DOC = Path(__file__).resolve().parents[1] / "docs" / "rosetta.md"
# a fenced block and the markdown table after it (docs/sql.md's layout, read as tests/test_query_docs.py does)
BLOCK = re.compile(r"```(sql|python)\n(.*?)```\n((?:[ \t]*\n)*(?:\|[^\n]*\|\n)+)?", re.S)


def examples(text: str):
    for m in BLOCK.finditer(text):
        yield m.group(1), m.group(2), m.group(3), m.span(3)


def render(rel) -> str:
    """A result as the page's markdown table: NULL, true/false, floats to 6 digits."""
    def cell(v):
        return ("NULL" if v is None else ("true" if v else "false") if isinstance(v, bool)
                else repr(round(v, 6)) if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(rel.columns) + " |", "|" + "|".join("---" for _ in rel.columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rel.fetchall()]) + "\n"


def run_doc(lake: Path, update: bool = False) -> list[str]:
    from vindex.query import connect
    text = DOC.read_text()
    con = connect(lake)
    namespace = {"lake": str(lake)}
    problems, edits = [], []
    for kind, code, expected, span in examples(text):
        if kind == "python":
            exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 (our own docs)
            con = connect(lake)   # a stored map is a new table: a fresh connection sees it
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = render(con.sql(code))
        except duckdb.Error as e:
            quoted = re.search(r"fails with `(.*?)\.\.\.`", text[text.index(code) + len(code):])
            if not quoted or quoted.group(1) not in str(e):
                problems.append(f"{code}\nraised: {e}")
            continue
        if update and expected is not None:
            edits.append((span, "\n" + got if expected.startswith("\n") else got))
        elif update:
            end = text.index(code) + len(code) + len("```\n")
            edits.append(((end, end), "\n" + got))
        elif expected is None or expected.strip() != got.strip():
            problems.append(f"{code}\nexpected:\n{expected}\ngot:\n{got}")
    if update:
        for (a, b), new in sorted(edits, reverse=True):
            text = text[:a] + new + text[b:]
        DOC.write_text(text)
    return problems


def test_every_example_in_docs_rosetta_runs_and_shows_its_result(tmp_path):
    lake = write_toy_lake(tmp_path / "lake", DOCS)
    blocks = list(examples(DOC.read_text()))
    assert sum(k == "sql" for k, *_ in blocks) >= 5 and sum(k == "python" for k, *_ in blocks) >= 2
    problems = run_doc(lake)
    assert not problems, "\n\n".join(problems)


def test_readme_links_the_page():
    assert "docs/rosetta.md" in (DOC.parents[1] / "README.md").read_text()


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        bad = run_doc(write_toy_lake(Path(tmp) / "lake", DOCS), update="--update" in sys.argv)
        print("\n\n".join(bad) or "docs/rosetta.md: ok")
