"""The examples of docs/hub.md run as written against the local Hub (python blocks in order,
`$ vindex ...` lines through click, the SQL block through DuckDB with HfFileSystem)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_toy_vindex
from vindex import Vindex, verify
from vindex.cli import main
from vindex.hub import cache_root

DOC = Path(__file__).resolve().parents[1] / "docs" / "hub.md"
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # inside huggingface_hub


def test_docs_examples_run(hub_server, tmp_path, monkeypatch):
    import duckdb
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    hub_server.orgs.add("my-org")
    write_toy_vindex(tmp_path / "lake" / "smollm2-135m", name="smollm2-135m")
    write_toy_vindex(tmp_path / "lake" / "gemma3-270m", name="gemma3-270m", seed=3)
    found = re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.S)
    langs = [lang for lang, _ in found]
    assert langs.count("python") >= 4 and langs.count("console") >= 3 and "sql" in langs
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
        elif lang == "sql":
            con = duckdb.connect()
            con.register_filesystem(huggingface_hub.HfFileSystem())
            assert con.sql(code).fetchall() == [(layer, 6) for layer in range(4)]
    assert verify(tmp_path / "pulled" / "smollm2") == []
    cached = cache_root() / "datasets" / "my-org" / "smollm2-135m-vindex" / "main"
    assert Vindex.open(cached).layers("pooled") == [1, 2, 3] and verify(cached) == []
