"""The examples of docs/weights.md run as written (console and Python blocks in order), with a tiny
random 30-layer Llama standing in for smollm2-135m; the CLI reference matches `vindex weights --help`."""
from __future__ import annotations

from pathlib import Path

from docs_examples import assert_cli_reference_matches_help, run_doc_examples
from ingest_fixtures import make_tiny_model
from vindex import Vindex, verify

DOC = Path(__file__).resolve().parents[1] / "docs" / "weights.md"
STANDIN = "./smollm2-135m"


def test_docs_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tiny_model(tmp_path / "smollm2-135m", "llama", n_layers=30)
    namespace = run_doc_examples(DOC, at_least={"python": 3}, standins={"smollm2-135m": STANDIN})
    for name in ("smollm2-135m", "smollm2-135m-lens"):
        assert verify(tmp_path / "lake" / name) == []
    lens = Vindex.open(tmp_path / "lake" / "smollm2-135m-lens")
    assert lens.manifest["extraction"]["weights"]["unembedding"]["kind"] == "lm_head"
    assert len(namespace["top"]) == 6 and [r[1] for r in namespace["strongest"]] == list(range(4))
    assert {r[0] for r in namespace["spectra"]} >= {"q", "k", "v", "o", "gate", "up", "down"}


def test_docs_cli_reference_matches_help():
    assert_cli_reference_matches_help(DOC, "weights")
