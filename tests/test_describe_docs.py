"""The DESCRIBE and WALK section of docs/sql.md: its study-lake examples are checked by
tests/test_query_docs.py (they run in order with the rest of the page); this file runs the one
part that cannot run on the study lake, and checks a shown result against an independent scan.

- The gate route (LarQL's own DESCRIBE) needs W_gate rows and input embeddings, which only a LarQL
  import brings. Its blocks are fenced ```python larql-toy / ```sql larql-toy (test_query_docs
  skips them) and run here, in order, on a lake of one tiny random model (tests/ingest_fixtures.py:
  llama, 3 layers, d_ffn 64, the 8 shipped test prompts) built with the weight tables, plus a LarQL
  vindex of its weights (tests/larql_fixtures.py: down_meta, gate vectors by numpy; its own
  tokenizer.json and W_E as embeddings.bin) imported with gate vectors and embeddings.
- `describe(' Paris')` on the study lake (tests/study_lake.py) equals a pyarrow scan of the
  `features` shards for the stripped token among each feature's top tokens.

    python tests/test_describe_docs.py --update     # rewrite the toy result tables after a deliberate change
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
TAG = "larql-toy"
BLOCK = re.compile(r"```(python|sql) " + TAG + r"\n(.*?)```\n(\n(?:\|[^\n]*\|\n)+)?", re.S)


def make_sources(tmp: Path) -> None:
    """The model folders, prompts.jsonl and tiny-llama.vindex (LarQL's layout) that the docs' python block reads."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    from ingest_fixtures import make_tiny_model, write_prompts
    from larql_fixtures import larql_fixture_from_model, sha256
    make_tiny_model(tmp / "tiny-llama", "llama")
    write_prompts(tmp / "prompts.jsonl")
    model = AutoModelForCausalLM.from_pretrained(tmp / "tiny-llama").eval()
    fx = larql_fixture_from_model(tmp / "tiny-llama.vindex", model, top_k=10)   # top_k: as `vindex weights`
    shutil.copy(tmp / "tiny-llama" / "tokenizer.json", fx.folder / "tokenizer.json")   # the model's own tokens
    W_E = model.model.embed_tokens.weight.detach().numpy()
    (fx.folder / "embeddings.bin").write_bytes(np.ascontiguousarray(W_E, dtype="<f4").tobytes())
    index = json.loads((fx.folder / "index.json").read_text())
    index["checksums"].update({name: sha256(fx.folder / name) for name in ("tokenizer.json", "embeddings.bin")})
    (fx.folder / "index.json").write_text(json.dumps(index, indent=2))


def cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return repr(round(v, 6) + 0.0)          # + 0.0: -0.0 prints as 0.0
    text = str(v)
    if not text.isprintable():                  # a random model's labels include control bytes
        text = text.encode("unicode_escape").decode("ascii")
    return text.replace("|", "\\|")


def render(rel) -> str:
    cols, rows = rel.columns, rel.fetchall()
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]) + "\n"


def run(tmp: Path, update: bool = False) -> list:
    """Run the tagged blocks in order in `tmp`; returns (query, shown, got) per differing result."""
    from vindex.query import connect
    os.chdir(tmp)
    make_sources(tmp)
    text = DOC.read_text()
    blocks = list(BLOCK.finditer(text))
    kinds = [m.group(1) for m in blocks]
    assert kinds.count("python") >= 1 and kinds.count("sql") >= 1, f"docs/sql.md: {kinds} {TAG} blocks"
    namespace: dict = {}
    con, mismatches, edits = None, [], []
    for m in blocks:
        if m.group(1) == "python":
            exec(compile(m.group(2), str(DOC), "exec"), namespace)   # noqa: S102 (our own docs)
            con = None
            continue
        con = con or connect(tmp / "lake")
        got = "\n" + render(con.sql(m.group(2)))
        if got != (m.group(3) or ""):
            mismatches.append((m.group(2), m.group(3), got))
            edits.append((m.span(3) if m.group(3) else (m.end(), m.end()), got))
    if update:
        for (a, b), new in sorted(edits, reverse=True):
            text = text[:a] + new + text[b:]
        DOC.write_text(text)
    return mismatches


def test_describe_examples_run_and_show_their_results(tmp_path, monkeypatch):
    from vindex import verify
    from vindex.query import connect
    monkeypatch.chdir(tmp_path)
    mismatches = run(tmp_path)
    assert not mismatches, "\n\n".join(f"{q}\nshown:\n{e}\ngot:\n{g}" for q, e, g in mismatches)
    for name in ("tiny-llama", "tiny-llama-larql"):
        assert verify(tmp_path / "lake" / name) == []
    # the page's claim: vindex's own down_meta of tiny-llama (torch) and LarQL's (numpy, larql_fixtures)
    # name the same features for the token, with the same logits
    con = connect(tmp_path / "lake")
    rows = {m: con.sql(f"""SELECT layer, feature, score FROM "describe"('{m}', ' the', k := 3)
                           WHERE source = 'down_meta' ORDER BY ALL""").fetchall()
            for m in ("tiny-llama", "tiny-llama-larql")}
    assert rows["tiny-llama"] and [r[:2] for r in rows["tiny-llama"]] == [r[:2] for r in rows["tiny-llama-larql"]]
    for a, b in zip(rows["tiny-llama"], rows["tiny-llama-larql"]):
        assert abs(a[2] - b[2]) <= 1e-5 * max(1.0, abs(b[2]))


@pytest.mark.integration
def test_describe_paris_on_the_study_lake_is_a_scan_of_the_features_shards(study_lake):
    """The page's `describe('smollm2-135m', ' Paris')`: every feature whose down_meta top tokens hold
    'Paris' (down_meta's texts are stripped), per layer by logit, read from the Parquet shards."""
    import pyarrow.dataset as ds

    from vindex.query import connect
    con = connect("lake")
    for model in ("smollm2-135m", "gemma3-270m"):
        t = ds.dataset(study_lake / "lake" / model / "data" / "features", format="parquet",
                       partitioning=None).to_table(columns=["layer", "feature", "top_tokens"]).to_pylist()
        hits = sorted((r["layer"], -tok["logit"], r["feature"]) for r in t for tok in r["top_tokens"]
                      if (tok["token"] or "").strip() == "Paris")
        want = [(layer, feature, -neg) for layer, neg, feature in hits]
        got = con.sql(f"""SELECT layer, feature, score FROM "describe"('{model}', ' Paris', k := 1000)
                          WHERE source = 'down_meta' ORDER BY layer, rank""").fetchall()
        assert [g[:2] for g in got] == [w[:2] for w in want], model
        assert all(abs(g[2] - w[2]) < 1e-6 for g, w in zip(got, want))
        assert (model == "smollm2-135m") == bool(got)     # what the page says: one model names it


if __name__ == "__main__":
    import tempfile
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as d:
        left = run(Path(d), update="--update" in sys.argv)
        print(f"{len(left)} result table(s) {'rewritten' if '--update' in sys.argv else 'differ'}")
