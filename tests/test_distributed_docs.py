"""The examples of docs/distributed.md run as written, on the local test Ray (Python blocks in order,
`$ vindex ...` lines through click), in a folder holding `tiny-model` and a toy `lake`."""
from __future__ import annotations

import warnings
from pathlib import Path

from docs_examples import run_doc_examples
from ingest_fixtures import make_tiny_model
from toy_lakes import DISTRIBUTED, write_toy_lake

from vindex import verify

DOC = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"


def test_docs_examples_run(tmp_path, monkeypatch, ray_local):
    monkeypatch.chdir(tmp_path)
    make_tiny_model(tmp_path / "tiny-model", "llama")
    write_toy_lake(tmp_path / "lake", DISTRIBUTED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # tiny saw other prompts than m0..m3: those pairs are skipped
        namespace = run_doc_examples(DOC, at_least={"console": 2, "python": 1})
    assert verify(tmp_path / "lake" / "tiny") == []
    assert (tmp_path / "lake-cka.parquet").is_file()
    best = namespace["best"]
    assert {(r[0], r[1]) for r in best} == {(a, b) for a in ("m0", "m1", "m2", "m3") for b in ("m1", "m2", "m3")
                                          if a < b}
