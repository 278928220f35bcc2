"""The examples of docs/hub.md run as written against the local Hub (python blocks in order,
`$ vindex ...` lines through click, the SQL block through DuckDB with HfFileSystem)."""
from __future__ import annotations

from pathlib import Path

import pytest

from toy_lakes import write_toy_vindex
from docs_examples import run_doc_examples
from vindex import Vindex, verify
from vindex.hub.remote import cache_root

DOC = Path(__file__).resolve().parents[1] / "docs" / "hub.md"
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # inside huggingface_hub


def test_docs_examples_run(hub_server, tmp_path, monkeypatch):
    import duckdb
    import huggingface_hub

    def run_sql(code):
        con = duckdb.connect()
        con.register_filesystem(huggingface_hub.HfFileSystem())
        assert con.sql(code).fetchall() == [(layer, 6) for layer in range(4)]

    monkeypatch.chdir(tmp_path)
    hub_server.orgs.add("my-org")
    write_toy_vindex(tmp_path / "lake" / "smollm2-135m", name="smollm2-135m")
    write_toy_vindex(tmp_path / "lake" / "gemma3-270m", name="gemma3-270m", seed=3)
    run_doc_examples(DOC, at_least={"python": 4, "console": 3, "sql": 1}, other={"sql": run_sql})
    assert verify(tmp_path / "pulled" / "smollm2") == []
    cached = cache_root() / "datasets" / "my-org" / "smollm2-135m-vindex" / "main"
    assert Vindex.open(cached).layers("pooled") == [1, 2, 3] and verify(cached) == []
