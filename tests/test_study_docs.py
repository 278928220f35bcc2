"""The examples of docs/study.md run as written (console and Python blocks in order), with tiny random
models standing in for the real ones; the CLI reference matches `vindex study --help`."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from ingest_fixtures import make_tiny_model
from vindex.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "study.md"
STANDINS = {"smollm2-135m": "llama", "gemma3-270m": "gemma3", "qwen2.5-0.5b": "qwen2"}


def test_docs_examples_run(tmp_path, monkeypatch):
    import vindex.study.run as run
    monkeypatch.chdir(tmp_path)
    for name, family in STANDINS.items():
        make_tiny_model(tmp_path / name, family, n_layers=4)
    monkeypatch.setattr(run, "DEFAULT_MODELS", tuple(f"./{m}" for m in run.DEFAULT_MODELS))
    blocks = re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.S)
    assert [lang for lang, _ in blocks].count("python") >= 3
    namespace: dict = {}
    for lang, code in blocks:
        if lang == "python":
            for name in STANDINS:
                code = code.replace(f'"{name}"', f'"./{name}"')
            exec(compile(code, str(DOC), "exec"), namespace)
        elif lang == "console":
            for line in code.splitlines():
                assert line.startswith("$ vindex "), line
                args = [f"./{a}" if a in STANDINS else a for a in shlex.split(line[len("$ vindex "):])]
                res = CliRunner().invoke(main, args)
                assert res.exit_code == 0, f"{line}\n{res.output}"
    assert (tmp_path / "study-report" / "report.md").is_file()
    assert (tmp_path / "study-3" / "data" / "matched_depth.parquet").is_file()
    assert sorted(p.name for p in (tmp_path / "lake").iterdir()) == sorted(STANDINS)
    assert namespace["report"] == Path("study-report") / "report.md"
    assert len(namespace["matched"]) == 3 * 5    # poolings x depth bands


def test_docs_cli_reference_matches_help():
    res = CliRunner().invoke(main, ["study", "--help"], terminal_width=100, prog_name="vindex")
    ref = re.search(r"## CLI reference\n\n```text\n(.*?)```", DOC.read_text(), flags=re.S).group(1)
    assert " ".join(res.output.split()).startswith(" ".join(ref.split())), \
        "docs/study.md's CLI reference drifted from `vindex study --help`"
