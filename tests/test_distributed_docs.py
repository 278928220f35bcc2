"""The examples of docs/distributed.md run as written, on the local test Ray (Python blocks in order,
`$ vindex ...` lines through click), in a folder holding `tiny-model` and a toy `lake`."""
from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

from click.testing import CliRunner
from distributed_fixtures import write_toy_lake
from ingest_fixtures import make_tiny_model

from vindex import verify
from vindex.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"


def test_docs_examples_run(tmp_path, monkeypatch, ray_local):
    monkeypatch.chdir(tmp_path)
    make_tiny_model(tmp_path / "tiny-model", "llama")
    write_toy_lake(tmp_path / "lake")
    found = re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), flags=re.S)
    assert [lang for lang, _ in found].count("console") >= 2 and [lang for lang, _ in found].count("python") >= 1
    namespace: dict = {}
    runner = CliRunner()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # tiny saw other prompts than m0..m3: those pairs are skipped
        for lang, code in found:
            if lang == "python":
                exec(compile(code, str(DOC), "exec"), namespace)
            elif lang == "console":
                for line in code.splitlines():
                    assert line.startswith("$ vindex "), line
                    res = runner.invoke(main, shlex.split(line[len("$ vindex "):]))
                    assert res.exit_code == 0, f"{line}\n{res.output}"
    assert verify(tmp_path / "lake" / "tiny") == []
    assert (tmp_path / "lake-cka.parquet").is_file()
    best = namespace["best"]
    assert {(r[0], r[1]) for r in best} == {(a, b) for a in ("m0", "m1", "m2", "m3") for b in ("m1", "m2", "m3")
                                          if a < b}
