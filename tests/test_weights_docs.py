"""The examples of docs/weights.md run as written (console and Python blocks in order), with a tiny
random 30-layer Llama standing in for smollm2-135m; the CLI reference matches `vindex weights --help`."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from ingest_fixtures import make_tiny_model
from vindex import Vindex, verify
from vindex.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "weights.md"
STANDIN = "./smollm2-135m"


def test_docs_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tiny_model(tmp_path / "smollm2-135m", "llama", n_layers=30)
    blocks = re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.S)
    assert [lang for lang, _ in blocks].count("python") >= 3
    namespace: dict = {}
    for lang, code in blocks:
        if lang == "python":
            exec(compile(code.replace('"smollm2-135m"', f'"{STANDIN}"'), str(DOC), "exec"), namespace)
        elif lang == "console":
            for line in code.splitlines():
                assert line.startswith("$ vindex "), line
                args = [STANDIN if a == "smollm2-135m" else a for a in shlex.split(line[len("$ vindex "):])]
                res = CliRunner().invoke(main, args)
                assert res.exit_code == 0, f"{line}\n{res.output}"
    for name in ("smollm2-135m", "smollm2-135m-lens"):
        assert verify(tmp_path / "lake" / name) == []
    lens = Vindex.open(tmp_path / "lake" / "smollm2-135m-lens")
    assert lens.manifest["extraction"]["weights"]["unembedding"]["kind"] == "lm_head"
    assert len(namespace["top"]) == 6 and [r[1] for r in namespace["strongest"]] == list(range(4))
    assert {r[0] for r in namespace["spectra"]} >= {"q", "k", "v", "o", "gate", "up", "down"}


def test_docs_cli_reference_matches_help():
    res = CliRunner().invoke(main, ["weights", "--help"], terminal_width=100, prog_name="vindex")
    ref = re.search(r"## CLI reference\n\n```text\n(.*?)```", DOC.read_text(), flags=re.S).group(1)
    assert " ".join(res.output.split()).startswith(" ".join(ref.split())), \
        "docs/weights.md's CLI reference drifted from `vindex weights --help`"
