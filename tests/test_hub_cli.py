"""`vindex publish / pull / ls` are thin shells over the library, with the same option names."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from toy_lakes import write_toy_vindex
from vindex.cli import main
from vindex.cli.hub import parse_layers
from vindex.errors import InvalidValue

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # inside huggingface_hub


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_parse_layers():
    assert parse_layers(("0-2,7", "5")) == [0, 1, 2, 5, 7]
    assert parse_layers(()) is None
    with pytest.raises(InvalidValue, match="--layers: 'x'"):
        parse_layers(("x",))


def test_publish_pull_ls(hub_server, tmp_path):
    root = write_toy_vindex(tmp_path / "toy")
    r = run("publish", root, "--repo", "vindex-org/toy", "--quiet")
    assert r.exit_code == 0, r.output
    assert "published" in r.output and "uploaded" in r.output
    r = run("pull", "hf://datasets/vindex-org/toy", "--tables", "pooled", "--layers", "1-2", "--quiet")
    assert r.exit_code == 0, r.output
    assert "2 file(s) downloaded" in r.output
    r = run("ls", "--org", "vindex-org", "--json")
    rows = json.loads(r.output)
    assert {(x["where"], x["name"]) for x in rows} == {("local", "toy"), ("hub", "toy")}
    assert [x["layers"] for x in rows if x["where"] == "local"] == [[1, 2]]
    r = run("ls")
    assert "toy" in r.output and "(partial)" in r.output


def test_pull_errors_are_one_line(hub_server, tmp_path):
    root = write_toy_vindex(tmp_path / "toy")
    run("publish", root, "--repo", "vindex-org/toy", "--quiet")
    path = "data/pooled/layer=0/part-00000.parquet"
    hub_server.tamper("vindex-org/toy", path, b"not the file")
    r = CliRunner().invoke(main, ["pull", "vindex-org/toy", "--tables", "pooled", "--out", str(tmp_path / "o"),
                                  "--quiet"])
    assert r.exit_code == 1
    assert "error:" in r.output and path in r.output and "rejected" in r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["publish", str(tmp_path / "empty"), "--repo", "vindex-org/x"])
    assert r.exit_code == 1 and "neither a vindex" in r.output
    r = CliRunner().invoke(main, ["publish", str(tmp_path), "--repo", "vindex-org/x", "--quiet"])
    assert r.exit_code == 1 and "several vindexes are named ['toy']" in r.output  # toy/ and o/
