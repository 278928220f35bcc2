"""Every example in docs/sql.md runs, and its result table is what the docs show.

    python tests/test_query_docs.py --update     # rewrite the result tables after a deliberate change

The examples run in order on one connection to a small deterministic lake (built here) with two
models whose layers share structure at matching depth, so the numbers mean something.
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

from vindex import VindexWriter

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
N_PROMPTS = 32
CATEGORIES = ["factual", "coding", "reasoning", "translation"]


def build_docs_lake(root: Path) -> Path:
    """Models toy-a (4 blocks, d 16) and toy-b (6 blocks, d 24) over 32 prompts: layer l of a model
    carries a latent signal that rotates with normalized depth, plus noise, so CKA is highest at
    matched depth. toy-b shares toy-a's tokenizer (same token ids), and both have FFN feature vectors."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, N_PROMPTS, 6))
    token_ids = rng.integers(0, 100, (N_PROMPTS, 4))
    for name, n_layers, d, seed in (("toy-a", 4, 16, 1), ("toy-b", 6, 24, 2)):
        r = np.random.default_rng(seed)
        w = VindexWriter.create(root / name, name, {"id": f"docs/{name}", "family": "toy", "n_layers": n_layers,
                                                     "d_model": d}, exist_ok=True)
        for t in ("pooled", "activations", "features"):
            w.declare_vectors(t, d, "float32")
        w.write_shard("prompts", {"prompt_set": ["demo"] * N_PROMPTS, "prompt_id": np.arange(N_PROMPTS),
                                  "category": [CATEGORIES[i % 4] for i in range(N_PROMPTS)],
                                  "text": [f"prompt number {i}" for i in range(N_PROMPTS)]},
                      partition={"prompt_set": "demo"})
        w.add_prompt_set("demo", "0" * 64, N_PROMPTS)
        for layer in range(n_layers + 1):
            angle = np.pi / 2 * layer / n_layers
            latent = np.cos(angle) * base[0] + np.sin(angle) * base[1]
            act = latent @ r.standard_normal((6, d)) + 0.7 * r.standard_normal((N_PROMPTS, d))
            w.write_shard("pooled", {"prompt_set": ["demo"] * N_PROMPTS, "prompt_id": np.arange(N_PROMPTS),
                                     "pooling": ["mean"] * N_PROMPTS, "act": act.astype(np.float32)},
                          partition={"layer": layer})
            pid, tix = np.repeat(np.arange(N_PROMPTS), 4), np.tile(np.arange(4), N_PROMPTS)
            tact = np.repeat(act, 4, axis=0) + 0.5 * r.standard_normal((len(pid), d))
            tact[tix == 0] *= 20  # a massive first (BOS) token, as real models have
            w.write_shard("activations", {
                "prompt_set": ["demo"] * len(pid), "prompt_id": pid, "token_index": tix,
                "token_id": token_ids.ravel(), "token": [f"t{i}" for i in token_ids.ravel()],
                "char_start": np.where(tix == 0, -1, tix * 3), "char_end": np.where(tix == 0, -1, tix * 3 + 2),
                "special": tix == 0, "norm": np.linalg.norm(tact, axis=1).astype(np.float32),
                "act": tact.astype(np.float32)}, partition={"layer": layer})
        for layer in (1, 2):
            centres = r.standard_normal((3, d)) * 3
            which = np.arange(30) % 3
            w.write_shard("features", {
                "feature": np.arange(30), "vector": (centres[which] + r.standard_normal((30, d))).astype(np.float32),
                "top_token": [f"tok{i}" for i in range(30)], "c_score": r.random(30).astype(np.float32) * 10,
                "label": [["number", "name", "verb"][c] for c in which]}, partition={"layer": layer})
    return root


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
    return build_docs_lake(tmp_path_factory.mktemp("docs") / "lake")


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
        lake = build_docs_lake(Path(tmp) / "lake")
        os.chdir(tmp)
        bad = run_doc(lake, update="--update" in sys.argv)
        for c, e, g in bad:
            print(f"{c}\nexpected:\n{e}\ngot:\n{g}\n")
        print("docs/sql.md:", "updated" if "--update" in sys.argv else f"{len(bad)} mismatch(es)")
