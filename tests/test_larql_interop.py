"""LarQL imports from the (local test) Hub, through the CLI, and in SQL next to a native vindex."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from toy_lakes import write_toy_vindex
from larql_fixtures import assert_matches_fixture, write_larql_fixture

from vindex import ChecksumError, NotFound, Vindex, VindexWriter
from vindex.cli import main
from vindex.hub.location import HubLocation
from vindex.ingest.larql import import_larql
from vindex.ingest.larql.source import LARQL_REPO_TYPES

WEIGHTS = ("attn_weights.bin", "embeddings.bin", "down_weights.bin", "up_weights.bin", "norms.bin")


def _publish(hub_server, fx, repo_id, repo_type="model", path_in_repo=""):
    """The fixture plus the inference weights a LarQL repo also carries (never to be downloaded)."""
    for name in WEIGHTS:
        (fx.folder / name).write_bytes(b"\0" * 4096)
    (fx.folder / "ov_gate_edges.jsonl").write_text(  # `circuit discover` edges: same header type, not imported
        json.dumps({"_header": True, "type": "ov_gate_coupling", "model": "m", "num_edges": 1}) + "\n"
        + json.dumps({"layer": 0, "head": 0, "feature": 1, "coupling": 1.0, "gate_top_token": ""}) + "\n")
    return hub_server.put_folder(repo_id, fx.folder, repo_type=repo_type, path_in_repo=path_in_repo)


def _downloaded(hub_server):
    return {r["path"].rsplit("/", 1)[-1] for r in hub_server.log if "/resolve/" in r["path"] and r["method"] == "GET"}


def test_import_from_hub_downloads_only_what_it_reads(hub_server, tmp_path):
    fx = write_larql_fixture(tmp_path / "src", dtype="f16", moe=True, labels=True, ov_gate=True)
    _publish(hub_server, fx, "vindex-org/tiny-larql-vindex")
    out = import_larql("hf://vindex-org/tiny-larql-vindex", tmp_path / "lake" / "tiny", progress=False)
    assert_matches_fixture(out, fx, gate_vectors=False)
    got = _downloaded(hub_server)
    assert got == {"index.json", "tokenizer.json", "down_meta.bin", "feature_labels.json", "feature_clusters.jsonl",
                   "relation_clusters.json", "ov_gate_coupling.ndjson", "ov_gate_edges.jsonl"}
    ex = Vindex.open(out).manifest["extraction"]
    assert ex["imported_from"]["repo_id"] == "vindex-org/tiny-larql-vindex"
    assert ex["imported_from"]["revision"] == hub_server.head("vindex-org/tiny-larql-vindex", repo_type="model")
    assert ex["ov_gate"]["files"] == ["ov_gate_coupling.ndjson"]

    assert not {r["path"].rsplit("/", 1)[-1] for r in hub_server.log} & set(WEIGHTS)
    hub_server.clear_log()
    out = import_larql("hf://vindex-org/tiny-larql-vindex", tmp_path / "with-vectors", gate_vectors=True,
                       progress=False)
    assert_matches_fixture(out, fx, gate_vectors=True)
    assert _downloaded(hub_server) == {"gate_vectors.bin"}  # the rest is in the local Hub cache
    touched = {r["path"].rsplit("/", 1)[-1] for r in hub_server.log}  # any method, both imports
    assert not touched & set(WEIGHTS)


def test_import_from_hub_dataset_revision_and_subfolder(hub_server, tmp_path):
    old = write_larql_fixture(tmp_path / "v1", seed=1, labels=True)
    first = _publish(hub_server, old, "vindex-org/larql-collection", "dataset", path_in_repo="gemma")
    new = write_larql_fixture(tmp_path / "v2", seed=2, labels=True, n_features=9)
    _publish(hub_server, new, "vindex-org/larql-collection", "dataset", path_in_repo="gemma")
    out = import_larql(f"hf://datasets/vindex-org/larql-collection@{first}/gemma", tmp_path / "old",
                       gate_vectors=True, progress=False)
    assert_matches_fixture(out, old, gate_vectors=True)
    out = import_larql("hf://datasets/vindex-org/larql-collection/gemma", tmp_path / "new", revision="main",
                       progress=False)
    assert_matches_fixture(out, new, gate_vectors=False)


def test_hub_errors_are_clear(hub_server, tmp_path):
    with pytest.raises(NotFound, match="no model repo 'vindex-org/missing'"):
        import_larql("hf://vindex-org/missing", tmp_path / "a", progress=False)
    hub_server.put_files("vindex-org/not-larql", {"README.md": "hi"}, repo_type="model")
    with pytest.raises(NotFound, match=r"no index\.json in the repo root; is it a LarQL vindex"):
        import_larql("hf://vindex-org/not-larql", tmp_path / "a", progress=False)
    fx = write_larql_fixture(tmp_path / "src")
    _publish(hub_server, fx, "vindex-org/tampered")
    raw = bytearray((fx.folder / "down_meta.bin").read_bytes())
    raw[-1] ^= 0x55
    hub_server.tamper("vindex-org/tampered", "down_meta.bin", bytes(raw), repo_type="model")
    with pytest.raises(ChecksumError, match=r"down_meta\.bin: sha256 .* does not match"):
        import_larql("hf://vindex-org/tampered", tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "vindex.json").exists()


def test_larql_uris_use_the_one_hf_grammar():
    def where(uri):  # (repo_type, repo_id, revision, subfolder) of each repo a LarQL import tries, in order
        return [(loc.repo_type, loc.repo_id, loc.revision, loc.path)
                for loc in HubLocation.candidates(uri, order=LARQL_REPO_TYPES)]

    assert where("hf://org/name")[0] == ("model", "org/name", None, "")   # a model repo first ...
    assert where("hf://org/name")[1:] == [("dataset", "org/name", None, "")]  # ... then a dataset repo
    assert where("hf://models/org/name@v1") == [("model", "org/name", "v1", "")]
    assert where("hf://datasets/org/name@refs%2Fpr%2F2/sub/dir") == [("dataset", "org/name", "refs/pr/2", "sub/dir")]
    for bad in ("hf://name", "hf://spaces/org/app", "hf://datasets/"):
        with pytest.raises(Exception, match="hf://|Space"):
            HubLocation.parse(bad, default_type="model")


def test_import_bare_uri_of_a_dataset_repo(hub_server, tmp_path):
    """hf://org/name names no repo type: no model repo of that name, so the dataset repo is imported."""
    fx = write_larql_fixture(tmp_path / "src", labels=True)
    head = _publish(hub_server, fx, "vindex-org/only-a-dataset", "dataset")
    out = import_larql("hf://vindex-org/only-a-dataset", tmp_path / "out", progress=False)
    assert_matches_fixture(out, fx, gate_vectors=False)
    got = Vindex.open(out).manifest["extraction"]["imported_from"]
    assert (got["repo_type"], got["repo_id"], got["revision"]) == ("dataset", "vindex-org/only-a-dataset", head)
    with pytest.raises(NotFound, match="no model repo 'vindex-org/only-a-dataset'"):  # explicit: that type only
        import_larql("hf://models/vindex-org/only-a-dataset", tmp_path / "m", progress=False)


def test_imported_and_native_vindex_in_one_query(tmp_path):
    """An imported LarQL vindex joins a natively built one in the same SQL statement."""
    from vindex.query import connect
    fx = write_larql_fixture(tmp_path / "src", dtype="f16", labels=True, ov_gate=True)
    import_larql(fx.folder, tmp_path / "lake" / "larql-tiny", gate_vectors=True, progress=False)
    native = write_toy_vindex(tmp_path / "lake" / "toy", "toy", n_layers=3, d=8)
    w = VindexWriter.open(native)
    for layer in (1, 2, 3):
        w.write_shard("features", {"feature": np.arange(4), "top_token_id": [3, 5, 8, 9],
                                   "top_token": ["w3", "w5", "w8", "w9"], "c_score": np.ones(4, np.float32)},
                      partition={"layer": layer})
    con = connect(tmp_path / "lake", functions=False)  # plain SQL: no vindex functions needed
    counts = con.sql("SELECT model, count(*), count(top_token) FROM features GROUP BY model ORDER BY model").fetchall()
    larql = Vindex.open(tmp_path / "lake" / "larql-tiny").read("features")
    assert counts == [("larql-tiny", larql.num_rows, larql.column("top_token").drop_null().__len__()),
                      ("toy", 12, 12)]
    # the same top token in both models, by layer: one query over both vindexes
    shared = con.sql("""
        SELECT a.layer, a.feature AS larql_feature, b.feature AS toy_feature, a.top_token
        FROM features a JOIN features b ON a.layer = b.layer AND a.top_token = b.top_token
        WHERE a.model = 'larql-tiny' AND b.model = 'toy' ORDER BY ALL""").fetchall()
    want = sorted((r["layer"], r["feature"], ["w3", "w5", "w8", "w9"].index(r["top_token"]), r["top_token"])
                  for r in larql.to_pylist() if r["top_token"] in ("w3", "w5", "w8", "w9"))
    assert shared == want
    # vectors and ov_gate are queryable too
    norm = con.sql('SELECT max(abs(sqrt(list_dot_product(vector, vector)) - gate_norm)) '
                   'FROM "larql-tiny".features').fetchone()[0]
    assert norm < 1e-3
    assert con.sql("SELECT count(*) FROM ov_gate WHERE model = 'larql-tiny' AND rank = 1").fetchone()[0] == 3 * 4


def test_cli_import_then_verify(tmp_path):
    fx = write_larql_fixture(tmp_path / "src", moe=True, labels=True)
    runner = CliRunner()
    res = runner.invoke(main, ["import-larql", str(fx.folder), "--out", str(tmp_path / "out"), "--gate-vectors",
                               "--quiet"])
    assert res.exit_code == 0, res.output
    assert "features 36 rows" in res.output
    assert runner.invoke(main, ["verify", str(tmp_path / "out")]).exit_code == 0
    assert_matches_fixture(tmp_path / "out", fx, gate_vectors=True)
    (fx.folder / "down_meta.bin").write_bytes((fx.folder / "down_meta.bin").read_bytes()[:-3])
    res = runner.invoke(main, ["import-larql", str(fx.folder), "--out", str(tmp_path / "out2")])
    assert res.exit_code == 1
    assert "error:" in res.output and "down_meta.bin: sha256" in res.output
