"""The examples of docs/study.md run as written (console and Python blocks in order), with tiny random
models standing in for the real ones; the CLI reference matches `vindex study --help`."""
from __future__ import annotations

from pathlib import Path

from docs_examples import assert_cli_reference_matches_help, run_doc_examples
from ingest_fixtures import make_tiny_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "study.md"
STANDINS = {"smollm2-135m": "llama", "gemma3-270m": "gemma3", "qwen2.5-0.5b": "qwen2"}


def test_docs_examples_run(tmp_path, monkeypatch):
    import vindex.study.run as run
    monkeypatch.chdir(tmp_path)
    for name, family in STANDINS.items():
        make_tiny_model(tmp_path / name, family, n_layers=4)
    monkeypatch.setattr(run, "DEFAULT_MODELS", tuple(f"./{m}" for m in run.DEFAULT_MODELS))
    namespace = run_doc_examples(DOC, at_least={"python": 3}, standins={name: f"./{name}" for name in STANDINS})
    assert (tmp_path / "study-report" / "report.md").is_file()
    assert (tmp_path / "study-3" / "data" / "matched_depth.parquet").is_file()
    assert sorted(p.name for p in (tmp_path / "lake").iterdir() if p.is_dir()) == sorted(STANDINS)
    assert (tmp_path / "lake" / "README.md").is_file()     # the lake card
    assert namespace["report"] == Path("study-report") / "report.md"
    assert len(namespace["matched"]) == 3 * 5    # poolings x depth bands


def test_docs_cli_reference_matches_help():
    assert_cli_reference_matches_help(DOC, "study")
