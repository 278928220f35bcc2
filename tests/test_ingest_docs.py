"""The examples of docs/ingest.md run as written (Python blocks in order, `$ vindex ...` lines
through click), with a tiny random Llama standing in for smollm2-135m."""
from __future__ import annotations

from pathlib import Path

from docs_examples import assert_cli_reference_matches_help, run_doc_examples
from ingest_fixtures import make_tiny_model, write_prompts
from vindex import Vindex, verify

DOC = Path(__file__).resolve().parents[1] / "docs" / "ingest.md"
STANDIN = "./smollm2-135m"   # a local folder: resolve_model takes it instead of the offline package


def test_docs_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tiny_model(tmp_path / "smollm2-135m", "llama", n_layers=12)
    write_prompts(tmp_path / "my_prompts.jsonl")
    namespace = run_doc_examples(DOC, at_least={"console": 2, "python": 4}, standins={"smollm2-135m": STANDIN})
    root = tmp_path / "lake" / "smollm2-135m"
    assert verify(root) == []
    vx = Vindex.open(root)
    assert set(vx.manifest["prompt_sets"]) == {"default", "heldout", "my_prompts"}
    assert namespace["ps"].name == "my_prompts" and namespace["src"].family == "llama"
    assert [r[1] for r in namespace["sinks"][:3]] == [0, 1, 2]


def test_docs_cli_reference_matches_help():
    assert_cli_reference_matches_help(DOC, "build")
