"""The examples of docs/larql.md run as written (Python blocks in order, `$ vindex ...` lines via click)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner
from larql_fixtures import write_larql_fixture

from vindex import Vindex, verify
from vindex.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "larql.md"


def blocks(text: str):
    """(language, code) of each fenced block, in order."""
    return re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S)


def test_docs_examples_run(hub_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fx = write_larql_fixture(tmp_path / "gemma3-4b.vindex", labels=True, ov_gate=True, moe=True)
    hub_server.put_folder("example-org/gemma-3-4b-it-vindex", fx.folder, repo_type="model")
    found = blocks(DOC.read_text())
    assert [lang for lang, _ in found].count("python") >= 3 and [lang for lang, _ in found].count("console") >= 2
    namespace: dict = {}
    runner = CliRunner()
    for lang, code in found:
        if lang == "python":
            exec(compile(code, str(DOC), "exec"), namespace)
        elif lang == "console":
            for line in code.splitlines():
                assert line.startswith("$ vindex "), line
                res = runner.invoke(main, shlex.split(line[len("$ vindex "):]))
                assert res.exit_code == 0, f"{line}\n{res.output}"
    for name in ("gemma3-4b", "gemma3-4b-hub", "gemma3-4b-rev"):
        assert verify(tmp_path / "lake" / name) == []
    assert Vindex.open(tmp_path / "lake" / "gemma3-4b").manifest["tables"]["features"]["vector_width"] == 8
    top = namespace["top"]
    assert len(top) == 3 and top[0][3] >= top[1][3] >= top[2][3]
