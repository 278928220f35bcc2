"""The generated dataset card: configs the Hub viewer can use, and query examples that run."""
from __future__ import annotations

import fnmatch
import re

import pytest
import yaml

from toy_lakes import write_toy_vindex
from vindex.hub.card import dataset_card, table_globs
from vindex.hub import publish
from vindex.manifest import load_manifest

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # inside huggingface_hub


def _front_matter(card: str) -> dict:
    return yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, re.S).group(1))


def _all_paths(manifests) -> dict[str, str]:
    return {(f"{p}/" if p else "") + e["path"]: (m["name"], t) for p, m in manifests
            for t, v in m["tables"].items() for e in v["files"]}


@pytest.mark.parametrize("lake", [False, True])
def test_configs_match_exactly_each_tables_files(tmp_path, lake):
    if lake:
        manifests = [(n, load_manifest(write_toy_vindex(tmp_path / n, name=n, seed=i)))
                     for i, n in enumerate(["alpha", "beta"])]
    else:
        manifests = [("", load_manifest(write_toy_vindex(tmp_path / "toy")))]
    meta = _front_matter(dataset_card(manifests, "vindex-org/x"))
    assert "vindex" in meta["tags"]
    configs = meta["configs"]
    paths = _all_paths(manifests)
    want = {(f"{n}-{t}" if lake else t) for n, t in paths.values()}
    assert {c["config_name"] for c in configs} == want
    assert sum(bool(c.get("default")) for c in configs) == 1
    for c in configs:
        (split,) = c["data_files"]
        globs = split["path"] if isinstance(split["path"], list) else [split["path"]]
        matched = {p for p in paths for g in globs if fnmatch.fnmatchcase(p, g)}
        name, table = c["config_name"].rsplit("-", 1) if lake else (manifests[0][1]["name"], c["config_name"])
        assert matched == {p for p, (n, t) in paths.items() if (n, t) == (name, table)}, c


def test_table_globs():
    entries = [{"path": "data/pooled/layer=03/part-00000.parquet"}, {"path": "data/pooled/layer=11/part-00001.parquet"}]
    assert table_globs(entries) == ["data/pooled/layer=*/*.parquet"]
    assert table_globs([{"path": "data/layer_stats/part-00000.parquet"}], "gemma") == ["gemma/data/layer_stats/*.parquet"]


def test_published_card_examples_run(hub_server, tmp_path, capsys):
    import duckdb
    import huggingface_hub

    root = write_toy_vindex(tmp_path / "toy")
    publish(root, "vindex-org/toy", progress=False)
    card = hub_server.read_file("vindex-org/toy", "README.md").decode()
    assert card == dataset_card([("", load_manifest(root))], "vindex-org/toy")
    for word in ("test/toy", "n_layers | 3", "pooled | 4 | 24", "float16[8]", "default | 6"):
        assert word in card
    blocks = dict(re.findall(r"```(\w+)\n(.*?)```", card, re.S))
    exec(compile(blocks["python"], "README.md", "exec"), {})   # vindex, in place
    assert "toy" in capsys.readouterr().out
    con = duckdb.connect()                                      # plain DuckDB (hf:// through fsspec here,
    con.register_filesystem(huggingface_hub.HfFileSystem())     # DuckDB's httpfs on the real Hub)
    assert con.sql(blocks["sql"]).fetchall() == [(layer, 6) for layer in range(4)]
