"""The examples of docs/ingest.md run as written (Python blocks in order, `$ vindex ...` lines
through click), with a tiny random Llama standing in for smollm2-135m."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from ingest_fixtures import make_tiny_model, write_prompts
from vindex import Vindex, verify
from vindex.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "ingest.md"
STANDIN = "./smollm2-135m"   # a local folder: resolve_model takes it instead of the offline package


def test_docs_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tiny_model(tmp_path / "smollm2-135m", "llama", n_layers=12)
    write_prompts(tmp_path / "my_prompts.jsonl")
    blocks = re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.S)
    langs = [lang for lang, _ in blocks]
    assert langs.count("console") >= 2 and langs.count("python") >= 4
    namespace: dict = {}
    runner = CliRunner()
    for lang, code in blocks:
        if lang == "python":
            exec(compile(code.replace('"smollm2-135m"', f'"{STANDIN}"'), str(DOC), "exec"), namespace)
        elif lang == "console":
            for line in code.splitlines():
                assert line.startswith("$ vindex "), line
                args = [STANDIN if a == "smollm2-135m" else a for a in shlex.split(line[len("$ vindex "):])]
                res = runner.invoke(main, args)
                assert res.exit_code == 0, f"{line}\n{res.output}"
    root = tmp_path / "lake" / "smollm2-135m"
    assert verify(root) == []
    vx = Vindex.open(root)
    assert set(vx.manifest["prompt_sets"]) == {"default", "heldout", "my_prompts"}
    assert namespace["ps"].name == "my_prompts" and namespace["src"].family == "llama"
    assert [r[1] for r in namespace["sinks"][:3]] == [0, 1, 2]


def test_docs_cli_reference_matches_help():
    res = CliRunner().invoke(main, ["build", "--help"], terminal_width=100, prog_name="vindex")
    doc = DOC.read_text()
    ref = re.search(r"## CLI reference\n\n```text\n(.*?)```", doc, flags=re.S).group(1)
    words = " ".join(ref.split())                  # line wrapping depends on the terminal width
    assert " ".join(res.output.split()).startswith(words), \
        "docs/ingest.md's CLI reference drifted from `vindex build --help`"
