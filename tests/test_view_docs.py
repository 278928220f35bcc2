"""The examples of docs/view.md run as written (python blocks in order, `$ vindex ...` lines via click)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner
from view_lake import write_view_lake

from vindex.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "view.md"


def test_docs_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_view_lake(tmp_path / "lake")
    found = re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.S)
    assert [lang for lang, _ in found].count("python") >= 3 and [lang for lang, _ in found].count("console") >= 1
    namespace: dict = {}
    for lang, code in found:
        if lang == "python":
            exec(compile(code, str(DOC), "exec"), namespace)
        elif lang == "console":
            for line in code.splitlines():
                assert line.startswith("$ vindex "), line
                res = CliRunner().invoke(main, shlex.split(line[len("$ vindex "):]))
                assert res.exit_code == 0, f"{line}\n{res.output}"
    assert namespace["path"] == Path("view.html") and namespace["path"].stat().st_size < 500_000
    assert "alpha beta mean 5 x 7" in capsys.readouterr().out
    only = namespace["payload"]["cka"]
    assert {(e["estimator"], e["pooling"], e["permutations"]) for e in only} == {("debiased", "mean", 19)}
    assert (tmp_path / "debiased.html").is_file()
