"""The examples of docs/view.md run as written (python blocks in order, `$ vindex ...` lines via click)."""
from __future__ import annotations

from pathlib import Path

from docs_examples import run_doc_examples
from toy_lakes import VIEW, write_toy_lake

DOC = Path(__file__).resolve().parents[1] / "docs" / "view.md"


def test_docs_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_toy_lake(tmp_path / "lake", VIEW)
    namespace = run_doc_examples(DOC, at_least={"python": 3, "console": 1})
    assert namespace["path"] == Path("view.html") and namespace["path"].stat().st_size < 500_000
    assert "alpha beta mean 5 x 7" in capsys.readouterr().out
    only = namespace["payload"]["cka"]
    assert {(e["estimator"], e["pooling"], e["permutations"]) for e in only} == {("debiased", "mean", 19)}
    assert (tmp_path / "debiased.html").is_file()
