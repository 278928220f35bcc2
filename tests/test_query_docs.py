"""Every example in docs/sql.md runs on the lake `vindex study --prompts heldout --no-causal` builds
(tests/study_lake.py: smollm2-135m and gemma3-270m over the 64 held-out prompts), and its result
table is what the docs show.

    VINDEX_STUDY_LAKE=/tmp/build python tests/test_query_docs.py --update   # rewrite the shown results

The examples run in order, in a folder holding the study's `lake/` (as a user who ran the study
has it), on one connection that is opened again after each ```python or ```console block (those
may add tables to the lake: a build of more sites, ov_gate). Floats are shown rounded to 4
decimals, so a shown result survives a rebuild of the lake on another machine of the same kind.
Blocks fenced with a tag (```sql larql-toy) are not run here: tests/test_describe_docs.py runs them.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
LAKE = "lake"            # the examples' name for the lake, relative to the working folder
DIGITS = 4               # floats in shown results


# -- reading and rendering the doc ---------------------------------------------------------------
BLOCK = re.compile(r"```(sql|python|console)\n(.*?)```\n((?:[ \t]*\n)*(?:\|[^\n]*\|\n)+)?", re.S)


def examples(text: str):
    """(kind, code, expected table or None, span of the table) for each code block in order."""
    for m in BLOCK.finditer(text):
        yield m.group(1), m.group(2), m.group(3), m.span(3)


def cell(v) -> str:
    """One value as docs/sql.md shows it: floats rounded to DIGITS, control bytes escaped, | escaped."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(round(v, DIGITS) + 0.0)       # + 0.0: -0.0 shows as 0.0
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(cell(x) for x in v) + "]"
    text = str(v)
    if not text.isprintable():                    # token texts may hold newlines or control bytes
        text = text.encode("unicode_escape").decode("ascii")
    return text.replace("|", "\\|")


def render(rel) -> str:
    """A result as a markdown table (what docs/sql.md shows under each query)."""
    cols, rows = rel.columns, rel.fetchall()
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run_doc(update: bool = False) -> list[tuple[str, str, str]]:
    """Run every example in the working folder; returns (code, expected, got) for each mismatch
    (or rewrites the doc's result tables)."""
    from vindex.query import connect

    text = DOC.read_text()
    con = connect(LAKE)
    mismatches, edits = [], []
    for kind, code, expected, span in examples(text):
        try:
            run_one(con, kind, code, expected, span, update, mismatches, edits)
        except Exception as e:  # noqa: BLE001 (report which example broke)
            mismatches.append((code, "no error", f"{type(e).__name__}: {e}"))
        if kind != "sql":            # it may have written to the lake: the views are built from the manifests
            con = connect(LAKE)
    if update:
        for (a, b), new in sorted(edits, reverse=True):
            text = text[:a] + new + text[b:]
        DOC.write_text(text)
    return mismatches


def run_one(con, kind, code, expected, span, update, mismatches, edits):
    """Run one example: SQL on the shared connection, Python as its own script, CLI lines via click."""
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
        exec(compile(code, str(DOC), "exec"), {"__name__": "docs_sql"})  # noqa: S102 (our own docs)
    else:
        for line in code.splitlines():
            if line.startswith("$ vindex "):
                res = CliRunner().invoke(main, shlex.split(line[len("$ vindex "):]), catch_exceptions=False)
                if res.exit_code != 0:
                    mismatches.append((line, "exit 0", f"exit {res.exit_code}: {res.output}"))


@pytest.mark.integration
def test_every_example_in_docs_sql_runs_on_the_study_lake_and_shows_its_result(study_lake):
    assert DOC.is_file(), f"{DOC} is missing"
    n = sum(1 for _ in examples(DOC.read_text()))
    assert n >= 40, f"docs/sql.md has only {n} examples"
    problems = run_doc()
    assert not problems, "\n\n".join(f"{c}\nexpected:\n{e}\ngot:\n{g}" for c, e, g in problems)


def unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC_1 of Song et al. 2012 (eq. 5): 1/(n(n-3)) [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2))
    - 2/(n-2) 1'K~L~1], K~ and L~ the Grams with their diagonals set to 0."""
    n = len(K)
    K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    return (np.trace(K @ L) + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (K.sum(0) @ L.sum(0))) / (n * (n - 3))


@pytest.mark.integration
def test_the_pages_matched_depth_cka_is_numpys_over_the_shards(study_lake):
    """The page's headline numbers (cka_depth on the real pair: debiased linear CKA of mean_nosink rows)
    recomputed from the Parquet shards with pyarrow and the formula, not through DuckDB or vindex.query."""
    import pyarrow.dataset as ds

    from vindex.query import connect

    def rows(model, layer):
        t = ds.dataset(study_lake / LAKE / model / "data" / "pooled", format="parquet", partitioning=None).to_table(
            filter=(ds.field("pooling") == "mean_nosink") & (ds.field("layer") == layer)
                   & (ds.field("site") == "resid_post"),
            columns=["prompt_id", "act"]).sort_by("prompt_id")
        act = t.column("act").combine_chunks()
        return act.flatten().to_numpy().astype(np.float64).reshape(len(act), -1)

    shown = connect(LAKE).sql("SELECT layer_a, layer_b, diagonal FROM cka_depth('smollm2-135m', 'gemma3-270m') "
                              "WHERE layer_a IN (0, 15, 30)").fetchall()
    assert [r[:2] for r in shown] == [(0, 0), (15, 9), (30, 18)]
    for la, lb, value in shown:
        X, Y = rows("smollm2-135m", la), rows("gemma3-270m", lb)
        assert X.shape[0] == Y.shape[0] == 64
        K, L = X @ X.T, Y @ Y.T
        ref = unbiased_hsic(K, L) / np.sqrt(unbiased_hsic(K, K) * unbiased_hsic(L, L))
        assert abs(value - ref) < 1e-6, (la, lb, value, ref)


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

    sys.path.insert(0, str(Path(__file__).parent))
    from study_lake import build_study_lake, copy_study_lake, reused_build
    with tempfile.TemporaryDirectory() as tmp:
        master = reused_build() or build_study_lake(Path(tmp) / "build", progress=True)
        work = copy_study_lake(master, Path(tmp) / "work")
        os.chdir(work)
        bad = run_doc(update="--update" in sys.argv)
        for c, e, g in bad:
            print(f"{c}\nexpected:\n{e}\ngot:\n{g}\n")
        print("docs/sql.md:", "updated" if "--update" in sys.argv else f"{len(bad)} mismatch(es)")
