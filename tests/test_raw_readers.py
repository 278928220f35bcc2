"""Raw readers get an integer `layer` with their default options, on a lake the real writer wrote.

Shards lie in hive folders (`data/pooled/layer=3/part-00000.parquet`) and hold `layer` as an int32
column too. DuckDB, polars and pyarrow.dataset take a column from each `key=value` folder; a
zero-padded folder (`layer=03`, what older vindexes hold) made DuckDB read `layer` as VARCHAR '03'.
Each reader's rows are checked against the files' own columns read by pyarrow.parquet, file by file.
Older vindexes (padded folders) still read, verify and resume through vindex.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from vindex import Vindex, VindexWriter, verify
from vindex.errors import CorruptShard, ManifestError
from vindex.hub.card import table_globs
from vindex.query import connect

from toy_lakes import Features, ToyLake, ToyModel, write_toy_lake

# 11 and 12 layers: folders layer=10.. sort after layer=1 as text, which no reader may mistake
LAKE = ToyLake(models=(ToyModel("a", 11, 8, seed=1), ToyModel("b", 12, 8, seed=2)), poolings=("mean", "last"),
               features=Features(tokens=tuple(f"w{i}" for i in range(5)), layers=(1, 10)))


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    return write_toy_lake(tmp_path_factory.mktemp("raw") / "lake", LAKE)


def _reference(lake: Path, table: str = "pooled") -> list[tuple]:
    """(model, layer, prompt_id, pooling) of every row, from each file's own columns."""
    rows = []
    for f in sorted(lake.glob(f"*/data/{table}/*/*.parquet")):
        t = pq.ParquetFile(f).read(columns=["model", "layer", "prompt_id", "pooling"])
        rows += zip(*(t.column(c).to_pylist() for c in t.column_names))
    return sorted(rows)


def _is_int(type_name: str) -> bool:
    return type_name.upper() in {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT"}


def test_new_vindexes_have_unpadded_layer_folders_listed_in_layer_order(lake):
    vx = Vindex.open(lake / "b")
    paths = [e["path"] for e in vx.entries("pooled")]
    assert paths == [f"data/pooled/layer={layer}/part-00000.parquet" for layer in range(13)]
    assert (lake / "b/data/pooled/layer=12/part-00000.parquet").is_file()
    assert not list(lake.glob("*/data/*/layer=0?"))


def test_raw_duckdb_reads_layer_as_an_integer(lake):
    glob = f"{lake}/*/data/pooled/*/*.parquet"
    con = duckdb.connect()
    assert _is_int(con.sql(f"SELECT DISTINCT typeof(layer) FROM read_parquet('{glob}')").fetchall()[0][0])
    got = con.sql(f"SELECT model, layer, prompt_id, pooling FROM read_parquet('{glob}')").fetchall()
    assert sorted(got) == _reference(lake)
    assert con.sql(f"SELECT count(*) FROM read_parquet('{glob}') WHERE layer = 10").fetchone()[0] == 2 * 6 * 2


@pytest.mark.parametrize("read", ["scan_parquet", "read_parquet"])
def test_polars_reads_layer_as_an_integer(lake, read):
    df = getattr(pl, read)(f"{lake}/*/data/pooled/*/*.parquet")
    df = df.collect() if isinstance(df, pl.LazyFrame) else df
    assert df.schema["layer"].is_integer()
    assert sorted(df.select("model", "layer", "prompt_id", "pooling").iter_rows()) == _reference(lake)


@pytest.mark.parametrize("partitioning", ["hive", None])
def test_pyarrow_dataset_reads_layer_as_an_integer(lake, partitioning):
    d = ds.dataset(lake / "b/data/pooled", format="parquet", partitioning=partitioning)
    assert pa.types.is_integer(d.schema.field("layer").type)
    t = d.to_table(columns=["model", "layer", "prompt_id", "pooling"])
    ref = [r for r in _reference(lake) if r[0] == "b"]
    assert sorted(zip(*(t.column(c).to_pylist() for c in t.column_names))) == ref
    assert d.to_table(filter=ds.field("layer") == 11).num_rows == 6 * 2


def test_datasets_reads_layer_as_an_integer(lake, tmp_path):
    datasets = pytest.importorskip("datasets")
    got = datasets.load_dataset("parquet", data_files=f"{lake}/*/data/pooled/*/*.parquet", split="train",
                                cache_dir=str(tmp_path / "cache"))
    assert got.features["layer"].dtype.startswith("int")
    assert sorted(zip(got["model"], got["layer"], got["prompt_id"], got["pooling"])) == _reference(lake)


def test_card_globs_match_new_and_old_folders(lake):
    files = Vindex.open(lake / "a").entries("features")
    old = [{**e, "path": e["path"].replace("layer=1/", "layer=01/")} for e in files]
    for entries in (files, old, files + old):
        assert table_globs(entries) == ["data/features/layer=*/*.parquet"]


# -- older vindexes: padded folders ---------------------------------------------------------------
def _pad(root: Path) -> Path:
    """Turn a vindex into the layout older versions wrote: `layer=03` folders, manifest to match."""
    for d in sorted(root.glob("data/*/layer=*")):
        d.rename(d.with_name(f"layer={int(d.name.split('=')[1]):02d}"))
    m = json.loads((root / "vindex.json").read_text())
    for t in m["tables"].values():
        for e in t["files"]:
            if "layer" in (e.get("partition") or {}):
                e["path"] = e["path"].replace(f"/layer={e['partition']['layer']}/",
                                              f"/layer={e['partition']['layer']:02d}/")
    (root / "vindex.json").write_text(json.dumps(m, indent=2))
    return root


@pytest.fixture
def old(lake, tmp_path) -> Path:
    return _pad(Path(shutil.copytree(lake / "a", tmp_path / "a")))


def _layers(con, model="a") -> list[tuple]:
    return con.sql(f"SELECT typeof(layer), layer, count(*) FROM pooled WHERE model = '{model}' "
                   "GROUP BY ALL ORDER BY layer").fetchall()


def test_an_old_padded_vindex_still_reads_and_verifies(lake, old):
    assert (old / "data/pooled/layer=03/part-00000.parquet").is_file()
    assert verify(old) == []
    vx = Vindex.open(old)
    assert vx.layers("pooled") == list(range(12))
    assert vx.read("pooled", layers=[3]).column("layer").to_pylist() == [3] * 12
    assert _layers(connect(old)) == _layers(connect(lake / "a"))
    assert _layers(connect(old))[3] == ("INTEGER", 3, 12)
    assert connect(old).sql("SELECT count(*) FROM features WHERE layer = 1").fetchone()[0] == 5
    # what raw DuckDB made of it, and why the folders changed
    raw = duckdb.sql(f"SELECT DISTINCT typeof(layer) FROM read_parquet('{old}/data/pooled/*/*.parquet')").fetchall()
    assert raw == [("VARCHAR",)]


def test_resuming_an_old_build_keeps_its_shards_and_adds_unpadded_ones(lake, old):
    w = VindexWriter.open(old)
    assert w.has_shard("pooled", {"layer": 3}, 0) and not w.has_shard("pooled", {"layer": 3}, 1)
    assert w.shard_relpath("pooled", {"layer": 3}, 0) == "data/pooled/layer=03/part-00000.parquet"
    assert w.shard_relpath("pooled", {"layer": 3}, 1) == "data/pooled/layer=3/part-00001.parquet"
    rows = pq.read_table(old / "data/pooled/layer=03/part-00000.parquet")
    again = w.write_shard("pooled", rows, {"layer": 3}, 0)            # a rewrite replaces the listed file
    assert again["path"] == "data/pooled/layer=03/part-00000.parquet"
    later = pc.add(rows.column("prompt_id"), pa.scalar(100, rows.schema.field("prompt_id").type))
    new = w.write_shard("pooled", rows.set_column(rows.schema.get_field_index("prompt_id"), "prompt_id", later),
                        {"layer": 3}, 1)
    assert new["path"] == "data/pooled/layer=3/part-00001.parquet"
    assert not (old / "data/pooled/layer=3/part-00000.parquet").exists()
    assert [e["path"] for e in Vindex.open(old).files("pooled", layer=3)] == \
        ["data/pooled/layer=03/part-00000.parquet", "data/pooled/layer=3/part-00001.parquet"]
    assert verify(old) == []
    con = connect(old)
    assert con.sql("SELECT typeof(layer), count(*), count(DISTINCT prompt_id) FROM pooled WHERE layer = 3 "
                   "GROUP BY ALL").fetchall() == [("INTEGER", 24, 12)]
    assert _layers(con)[:3] == _layers(connect(lake / "a"))[:3]


def test_one_shard_listed_under_both_spellings_is_refused(old):
    m = json.loads((old / "vindex.json").read_text())
    files = m["tables"]["pooled"]["files"]
    twin = dict(next(e for e in files if e["path"] == "data/pooled/layer=02/part-00000.parquet"))
    shutil.copytree(old / "data/pooled/layer=02", old / "data/pooled/layer=2")
    files.append({**twin, "path": "data/pooled/layer=2/part-00000.parquet"})
    (old / "vindex.json").write_text(json.dumps(m))
    problems = [p for p in verify(old) if p.kind == "twin"]
    assert len(problems) == 1 and "layer=2/part-00000.parquet and data/pooled/layer=02/part-00000.parquet are " \
        "one shard" in problems[0].message and "count twice" in problems[0].message
    with pytest.raises(ManifestError, match="are one shard .* listed twice"):
        connect(old)


def test_a_folder_spelling_the_writer_never_made_is_refused(old):
    m = json.loads((old / "vindex.json").read_text())
    (old / "data/pooled/layer=02").rename(old / "data/pooled/layer=002")
    for e in m["tables"]["pooled"]["files"]:
        e["path"] = e["path"].replace("layer=02/", "layer=002/")
    (old / "vindex.json").write_text(json.dumps(m))
    with pytest.raises(CorruptShard, match=r"layer=002/part-00000\.parquet: its column 'layer' holds 2, but its "
                                           r"path says layer=002"):
        connect(old)
