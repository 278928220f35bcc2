"""The on-disk format: schemas from schemas/, atomic shard writes, exact round trips."""
import json

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vindex
from vindex import SchemaMismatch, InvalidValue, Vindex, VindexWriter
from vindex.schema import TABLES, arrow_schema, table_spec


def test_every_table_has_a_schema_file_and_builds():
    for t in TABLES:
        spec = table_spec(t)
        assert spec["table"] == t
        schema = arrow_schema(t, vector_width=16)
        assert [f.name for f in schema] == [f["name"] for f in spec["fields"]]


def test_writer_output_matches_the_schema_files(toy_vindex):
    vx = Vindex.open(toy_vindex)
    for table in vx.tables:
        t = vx.manifest["tables"][table]
        expected = arrow_schema(table, t.get("vector_width"), t.get("vector_dtype") or "float16")
        for e in t["files"]:
            assert pq.read_schema(vx.path(e)).remove_metadata().equals(expected), e["path"]


def test_partition_values_are_real_columns_and_parquet_options(toy_vindex):
    vx = Vindex.open(toy_vindex)
    e = vx.files("pooled", layer=2)[0]
    assert e["path"] == "data/pooled/layer=2/part-00000.parquet"
    t = pq.read_table(vx.path(e))
    assert set(t.column("layer").to_pylist()) == {2}
    assert set(t.column("model").to_pylist()) == {"toy"}
    assert t.column("depth").to_pylist() == pytest.approx([2 / 3] * t.num_rows)
    md = pq.ParquetFile(vx.path(e)).metadata
    col = md.row_group(0).column(0)
    assert col.compression == "ZSTD"
    assert col.has_offset_index  # page index written
    act = md.row_group(0).column(md.num_columns - 1)
    assert act.path_in_schema.startswith("act") and not act.has_dictionary_page  # vectors: no dictionary


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_is_exact_in_pyarrow_duckdb_and_polars(tmp_path, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4)).astype(dtype)
    w = VindexWriter.create(tmp_path / "v", "m", {"id": "m", "n_layers": 2})
    w.declare_vectors("pooled", 4, dtype)
    w.write_shard("pooled", {"prompt_set": ["s"] * 5, "prompt_id": range(5), "pooling": ["mean"] * 5, "act": x},
                  partition={"layer": 1})
    vx = Vindex.open(tmp_path / "v")
    got = vx.read("pooled")
    np.testing.assert_array_equal(np.stack(got.column("act").to_numpy(zero_copy_only=False)), x)
    path = str(vx.path(vx.files("pooled")[0]))
    rows = duckdb.sql(f"SELECT prompt_id, act FROM read_parquet('{path}', hive_partitioning=false) "
                      "ORDER BY prompt_id").fetchall()
    np.testing.assert_array_equal(np.array([r[1] for r in rows], dtype=np.float32), x.astype(np.float32))
    df = pl.read_parquet(path)
    np.testing.assert_array_equal(df["act"].to_numpy().astype(dtype), x)
    assert df["prompt_id"].to_list() == list(range(5))


def test_manifest_records_rows_bytes_sha256(toy_vindex):
    m = json.loads((toy_vindex / "vindex.json").read_text())
    e = m["tables"]["activations"]["files"][0]
    assert e["rows"] == 12 and e["bytes"] == (toy_vindex / e["path"]).stat().st_size
    assert e["sha256"] == vindex.files.sha256_file(toy_vindex / e["path"])


def test_rewriting_a_shard_replaces_it_not_duplicates(toy_vindex):
    w = VindexWriter.open(toy_vindex)
    before = len(w.manifest["tables"]["pooled"]["files"])
    w.write_shard("pooled", {"prompt_set": ["default"], "prompt_id": [0], "pooling": ["mean"],
                             "act": np.ones((1, 8))}, partition={"layer": 0})
    vx = Vindex.open(toy_vindex)
    assert len(vx.files("pooled")) == before
    assert vx.read("pooled", layers=[0]).num_rows == 1
    assert vindex.verify(toy_vindex) == []


def test_temp_files_never_visible_and_no_orphans(toy_vindex):
    from vindex.lock import LOCK_FILE, WRITERS_FILE    # the writers' lock files are meant to stay
    assert not [p for p in toy_vindex.rglob("*") if p.name.startswith(".") and p.name not in (LOCK_FILE, WRITERS_FILE)]


def test_files_get_ordinary_permissions(toy_vindex):
    import os
    umask = os.umask(0)
    os.umask(umask)
    for p in [toy_vindex / "vindex.json", *toy_vindex.rglob("*.parquet")]:
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


def test_writer_rejects_wrong_width_nan_and_unknown_columns(toy_vindex):
    w = VindexWriter.open(toy_vindex)
    base = {"prompt_set": ["default"], "prompt_id": [0], "pooling": ["mean"]}
    with pytest.raises(SchemaMismatch, match="width 8"):
        w.write_shard("pooled", {**base, "act": np.ones((1, 7))}, partition={"layer": 0})
    with pytest.raises(InvalidValue, match="NaN"):
        w.write_shard("pooled", {**base, "act": np.full((1, 8), np.nan)}, partition={"layer": 0})
    with pytest.raises(InvalidValue, match="float16"):
        w.write_shard("pooled", {**base, "act": np.full((1, 8), 1e6)}, partition={"layer": 0})
    with pytest.raises(SchemaMismatch, match="unknown column"):
        w.write_shard("pooled", {**base, "act": np.ones((1, 8)), "bogus": [1]}, partition={"layer": 0})
    with pytest.raises(SchemaMismatch, match="partition"):
        w.write_shard("pooled", {**base, "layer": [5], "act": np.ones((1, 8))}, partition={"layer": 0})
    with pytest.raises(InvalidValue, match="partition"):
        w.write_shard("pooled", {**base, "act": np.ones((1, 8))}, partition={"layer": "../x"})
    assert vindex.verify(toy_vindex) == []  # nothing was lost or half-written


def test_features_nested_columns_and_optional_vector(tmp_path):
    w = VindexWriter.create(tmp_path / "f", "m", {"id": "m", "n_layers": 1})
    w.write_shard("features", {
        "layer": [1, 1], "feature": [0, 1], "top_token_id": [5, 6], "top_token": ["a", "b"],
        "c_score": [1.5, 2.5],
        "top_tokens": [[{"token_id": 5, "token": "a", "logit": 1.5}], [{"token_id": 6, "token": "b", "logit": 2.5}]]},
        partition={"layer": 1})
    t = Vindex.open(tmp_path / "f").read("features")
    assert t.column("top_tokens").to_pylist()[1][0] == {"token_id": 6, "token": "b", "logit": 2.5}
    assert t.column("expert").null_count == 2
    assert vindex.verify(tmp_path / "f") == []


def test_reader_lists_tables_and_partitions(toy_vindex):
    vx = Vindex.open(toy_vindex)
    assert vx.tables == ["activations", "pooled", "prompts"]
    assert vx.layers("pooled") == [0, 1, 2, 3]
    assert vx.read("pooled", layers=[1, 3]).num_rows == 12
    with pytest.raises(vindex.NotFound, match="layer"):
        vx.read("pooled", layers=[9])
    with pytest.raises(vindex.NotFound, match="ov_gate"):
        vx.read("ov_gate")


def test_create_refuses_to_clobber_and_resumes_by_name(toy_vindex):
    with pytest.raises(vindex.ManifestError, match="already exists"):
        VindexWriter.create(toy_vindex, "toy", {"id": "x", "n_layers": 3})
    with pytest.raises(vindex.ManifestError, match="holds vindex"):
        VindexWriter.create(toy_vindex, "other", {"id": "x", "n_layers": 3}, exist_ok=True)
    assert VindexWriter.create(toy_vindex, "toy", {"id": "x", "n_layers": 3}, exist_ok=True).has_shard(
        "pooled", {"layer": 1})
