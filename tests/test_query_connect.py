"""vindex.query.connect: views from manifests, typed vectors, partition pruning, clear errors."""
import json
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from toy_lakes import write_toy_vindex
from vindex import NotFound, Vindex, VindexError
from vindex.files import sha256_file
from vindex.query import connect
from vindex.query.functions import register_functions
from vindex.query.sources import resolve_sources
from vindex.query.views import create_views


@pytest.fixture
def lake(tmp_path):
    write_toy_vindex(tmp_path / "lake" / "a", "a", n_layers=4, d=8, seed=1)
    write_toy_vindex(tmp_path / "lake" / "b", "b", n_layers=5, d=12, seed=2)
    return tmp_path / "lake"


def scans(con, sql) -> list[tuple[int, str]]:
    """(files read, file names) of every Parquet scan in EXPLAIN ANALYZE's JSON plan."""
    plan = json.loads(con.sql("EXPLAIN (ANALYZE, FORMAT json) " + sql).fetchall()[0][1])
    out, todo = [], list(plan if isinstance(plan, list) else [plan])
    while todo:
        node = todo.pop()
        info = node.get("extra_info") or {}
        if "Total Files Read" in info:
            out.append((int(info["Total Files Read"]), str(info.get("Filename(s)", ""))))
        todo.extend(node.get("children", []))
    return out


def files_read(con, sql) -> int:
    """Sum of 'Total Files Read' over the scans of EXPLAIN ANALYZE."""
    return sum(n for n, _ in scans(con, sql))


def test_views_union_models_with_depth(lake):
    con = connect(lake)
    assert con.sql("SELECT list(model ORDER BY model) FROM models").fetchone()[0] == ["a", "b"]
    rows = con.sql("SELECT model, count(DISTINCT layer), count(*) FROM pooled GROUP BY model ORDER BY model").fetchall()
    assert rows == [("a", 5, 30), ("b", 6, 36)]
    # layer is an INTEGER (not the '03' VARCHAR of a hive folder name) and depth = layer / n_layers
    assert dict((r[0], r[1]) for r in con.sql("DESCRIBE pooled").fetchall())["layer"] == "INTEGER"
    bad = con.sql("SELECT count(*) FROM pooled p JOIN models m USING (model) "
                  "WHERE abs(p.depth - p.layer / m.n_layers) > 1e-6").fetchone()[0]
    assert bad == 0
    # views with no data anywhere are typed and empty
    assert con.sql("SELECT count(*) FROM features").fetchone()[0] == 0
    assert con.sql("SELECT count(*) FROM prompts WHERE model = 'b'").fetchone()[0] == 6


def test_vectors_match_the_shards_exactly(lake):
    con = connect(lake)
    vx = Vindex.open(lake / "a")
    want = vx.read("pooled", layers=[2]).sort_by("prompt_id")
    got = con.sql("SELECT act FROM a.pooled WHERE layer = 2 ORDER BY prompt_id").to_arrow_table()
    np.testing.assert_array_equal(
        np.asarray(got.column("act").combine_chunks().flatten(), dtype=np.float32),
        np.asarray(want.column("act").combine_chunks().flatten(), dtype=np.float32))


def test_vector_types_per_model_and_union(lake, tmp_path):
    con = connect(lake)
    types = lambda v: dict((r[0], r[1]) for r in con.sql(f"DESCRIBE {v}").fetchall())
    assert types("a.pooled")["act"] == "FLOAT[8]"
    assert types('"b".activations')["act"] == "FLOAT[12]"
    assert types("pooled")["act"] == "FLOAT[]"  # widths differ: a list
    assert con.sql("SELECT array_inner_product(act, act) > 0 FROM a.pooled LIMIT 1").fetchone()[0]
    write_toy_vindex(tmp_path / "same" / "c", "c", d=8)
    write_toy_vindex(tmp_path / "same" / "e", "e", d=8)
    con2 = connect(tmp_path / "same")
    assert dict((r[0], r[1]) for r in con2.sql("DESCRIBE pooled").fetchall())["act"] == "FLOAT[8]"


def test_one_layer_of_one_model_opens_one_file(lake):
    con = connect(lake)
    assert files_read(con, "SELECT count(*) FROM pooled") == 11
    assert files_read(con, "SELECT count(*) FROM pooled WHERE model = 'a' AND layer = 2") == 1
    assert files_read(con, "SELECT count(*) FROM activations WHERE model = 'b' AND layer IN (1, 3)") == 2
    assert files_read(con, "SELECT count(*) FROM a.pooled WHERE layer = 4") == 1
    assert con.sql("SELECT count(*) FROM pooled WHERE model = 'a' AND layer = 2").fetchone()[0] == 6


def test_cka_matrix_reads_only_its_two_models(lake, tmp_path):
    write_toy_vindex(lake / "c", "c", n_layers=4, d=8, seed=3)
    con = connect(lake)
    read = scans(con, "SELECT * FROM cka_matrix('a', 'c')")
    # the Grams come from the Gram cache (read or computed from a's and c's shards alone, in Python):
    # DuckDB scans no file at all, nor with allow_partial (the common prompts are found in Python too)
    assert read == [] and scans(con, "SELECT * FROM cka_matrix('a', 'c', allow_partial := true)") == []
    assert not (lake / "b" / "grams").exists() and (lake / "a" / "grams").is_dir() and (lake / "c" / "grams").is_dir()
    # the scanning path (a connection whose functions know no vindex): each model's 5 layer files once
    # for the Grams, at most one more each for the existence checks
    bare = duckdb.connect()
    create_views(bare, resolve_sources(lake))
    register_functions(bare)
    read = scans(bare, "SELECT * FROM cka_matrix('a', 'c')")
    assert all("/b/" not in names for _, names in read)
    assert 10 <= sum(n for n, _ in read) <= 12


def test_only_manifest_files_exist(lake):
    # an orphan shard from an interrupted write sits next to real ones: it must not be read
    vx = Vindex.open(lake / "a")
    orphan = vx.path(vx.files("pooled", layer=2)[0]).with_name("part-00007.parquet")
    pq.write_table(vx.read("pooled", layers=[2]), orphan)
    con = connect(lake)
    assert con.sql("SELECT count(*) FROM pooled WHERE model = 'a' AND layer = 2").fetchone()[0] == 6
    assert con.sql("SELECT count(*) FROM files WHERE model = 'a' AND table_name = 'pooled'").fetchone()[0] == 5


def test_lake_path_with_equals_sign_stays_exact(tmp_path):
    root = tmp_path / "runs" / "seed=3"
    write_toy_vindex(root / "a", "a", n_layers=2)
    with pytest.warns(UserWarning, match="hive"):
        con = connect(root)
    assert con.sql("SELECT count(*), sum(layer) FROM pooled WHERE layer = 1").fetchone() == (6, 6)
    assert "seed" not in [r[0] for r in con.sql("DESCRIBE pooled").fetchall()]


def test_sources_errors(lake, tmp_path):
    with pytest.raises(NotFound, match="no such folder"):
        connect(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="neither a vindex"):
        connect(tmp_path / "empty")
    write_toy_vindex(tmp_path / "other" / "a", "a")
    with pytest.raises(VindexError, match="both named 'a'"):
        connect(lake, tmp_path / "other" / "a")
    # the same vindex twice (lake root and folder) is one model
    con = connect(lake, lake / "a", Vindex.open(lake / "b"))
    assert con.sql("SELECT count(*) FROM models").fetchone()[0] == 2


def test_import_does_not_load_torch():
    code = ("import sys, vindex.query, vindex.query.functions, vindex.query.cka, vindex.query.cluster; "
            "import vindex.cli.query; "
            "bad = [m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shards_older_than_a_nullable_column_read_as_null(lake):
    # model a's activations as written before `char_start` joined the schema (schemas grow additively)
    import json
    m = json.loads((lake / "a" / "vindex.json").read_text())
    for e in m["tables"]["activations"]["files"]:
        path = lake / "a" / e["path"]
        pq.write_table(pq.read_table(path).drop_columns(["char_start"]), path)
        e["bytes"] = path.stat().st_size
        e["sha256"] = sha256_file(path)   # rewritten on purpose: the manifest follows
    (lake / "a" / "vindex.json").write_text(json.dumps(m))
    con = connect(lake)
    assert con.sql("SELECT count(*), count(char_start) FROM activations WHERE model = 'a'").fetchone() == (60, 0)
    assert con.sql("SELECT count(char_start) FROM activations WHERE model = 'b'").fetchone()[0] == 72
