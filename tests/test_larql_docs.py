"""The examples of docs/larql.md run as written (Python blocks in order, `$ vindex ...` lines via click)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from docs_examples import run_doc_examples
from larql_fixtures import write_larql_fixture

from vindex import Vindex, verify

DOC = Path(__file__).resolve().parents[1] / "docs" / "larql.md"


def test_docs_examples_run(hub_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fx = write_larql_fixture(tmp_path / "gemma3-4b.vindex", labels=True, ov_gate=True, moe=True)
    # embeddings.bin for the --embeddings example: vocab (40) x hidden (8) raw f32 rows
    W_E = np.random.default_rng(0).standard_normal((40, 8)).astype("<f4")
    (fx.folder / "embeddings.bin").write_bytes(W_E.tobytes())
    hub_server.put_folder("example-org/gemma-3-4b-it-vindex", fx.folder, repo_type="model")
    namespace = run_doc_examples(DOC, at_least={"python": 3, "console": 2})
    for name in ("gemma3-4b", "gemma3-4b-hub", "gemma3-4b-rev"):
        assert verify(tmp_path / "lake" / name) == []
    assert Vindex.open(tmp_path / "lake" / "gemma3-4b").manifest["tables"]["features"]["vector_width"] == 8
    emb = Vindex.open(tmp_path / "lake" / "gemma3-4b-emb").read("embeddings")
    np.testing.assert_array_equal(np.array(emb.column("vector").to_pylist(), np.float32), W_E)
    top = namespace["top"]
    assert len(top) == 3 and top[0][3] >= top[1][3] >= top[2][3]
