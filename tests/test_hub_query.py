"""Query vindexes on the Hub in place: DuckDB reads through HfFileSystem, only what a query needs."""
from __future__ import annotations

import numpy as np
import pytest

from toy_lakes import write_toy_vindex
from vindex import Vindex
from vindex.hub import publish

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # inside huggingface_hub

REPO = "vindex-org/toy"
URI = f"hf://datasets/{REPO}"


@pytest.fixture
def remote(hub_server, tmp_path):
    root = write_toy_vindex(tmp_path / "toy", n_prompts=64, d=32)
    publish(root, REPO, progress=False)
    return root


def _parquet_gets(hub_server) -> list[str]:
    return [r["path"].split("/resolve/", 1)[1].split("/", 1)[1] for r in hub_server.log
            if r["method"] == "GET" and "/resolve/" in r["path"] and r["path"].endswith(".parquet")]


def test_query_remote_in_place_reads_only_what_it_needs(hub_server, remote):
    from vindex.query import connect

    con = connect(URI)
    hub_server.clear_log()
    rows = con.sql("SELECT prompt_id, act FROM pooled WHERE layer = 2 ORDER BY prompt_id").fetchall()
    want = Vindex.open(remote).read("pooled", layers=[2]).to_pydict()
    assert [r[0] for r in rows] == want["prompt_id"]
    np.testing.assert_allclose(np.array([r[1] for r in rows]), np.array(want["act"], dtype=np.float32))
    touched = set(_parquet_gets(hub_server))
    # layer 2's file, and at most the first file DuckDB binds the view's schema with: never the others
    assert "data/pooled/layer=2/part-00000.parquet" in touched
    assert touched <= {"data/pooled/layer=2/part-00000.parquet", "data/pooled/layer=0/part-00000.parquet"}
    repo_bytes = sum(f.size for f in hub_server.files(REPO).values())
    assert hub_server.bytes_sent() < repo_bytes / 2     # in place: no whole-repo download


def test_mix_local_and_remote_in_one_query(hub_server, remote, tmp_path):
    from vindex.query import connect

    local = write_toy_vindex(tmp_path / "other", name="other", n_prompts=64, d=32, seed=7)
    con = connect(local, URI)
    got = con.sql("SELECT model, count(*) FROM pooled WHERE layer = 1 GROUP BY model ORDER BY model").fetchall()
    assert got == [("other", 64), ("toy", 64)]
    # a join across the two: same prompts, both models, one query
    n = con.sql("""SELECT count(*) FROM pooled a JOIN pooled b USING (prompt_set, prompt_id, layer)
                   WHERE a.model = 'toy' AND b.model = 'other' AND layer = 3""").fetchone()[0]
    assert n == 64
    models = con.sql("SELECT model FROM models ORDER BY model").fetchall()
    assert models == [("other",), ("toy",)]


def test_remote_revision_is_pinned(hub_server, remote, tmp_path):
    """A connection reads the commit its manifests came from, even if the repo moves on."""
    from vindex.query import connect

    con = connect(URI)
    before = con.sql("SELECT count(*) FROM pooled").fetchone()[0]
    other = write_toy_vindex(tmp_path / "v2", n_prompts=8, d=32)
    publish(other, REPO, progress=False)
    assert con.sql("SELECT count(*) FROM pooled").fetchone()[0] == before
    assert connect(URI).sql("SELECT count(*) FROM pooled").fetchone()[0] == 8 * 4


def test_remote_traversal_manifest_is_rejected_by_connect(hub_server, remote):
    import json

    from vindex import UnsafePath
    from vindex.query import connect

    m = json.loads(hub_server.read_file(REPO, "vindex.json"))
    m["tables"]["pooled"]["files"][0]["path"] = "data/../../../etc/passwd.parquet"
    hub_server.put_files(REPO, {"vindex.json": json.dumps(m)})
    with pytest.raises(UnsafePath, match="escapes"):
        connect(URI)


def test_vindex_sql_over_a_remote_and_a_local_vindex(hub_server, remote, tmp_path):
    from click.testing import CliRunner

    from vindex.cli import main

    local = write_toy_vindex(tmp_path / "other", name="other", n_prompts=64, d=32, seed=7)
    res = CliRunner().invoke(main, ["sql", "-l", str(local), "-l", URI, "-f", "csv",
                                    "SELECT model, count(*) AS n FROM pooled WHERE layer = 0 GROUP BY model ORDER BY model"])
    assert res.exit_code == 0, res.output
    assert res.output.split() == ["model,n", "other,64", "toy,64"]
