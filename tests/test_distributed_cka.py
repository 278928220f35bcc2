"""Lake-scale CKA (`vindex.query.lake_cka.cka_all`): on Ray and in-process, against the SQL layer's
`cka_matrix` pair by pair, on a toy lake of models with different layer counts and widths."""
from __future__ import annotations

import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest

from toy_lakes import DISTRIBUTED, write_toy_lake
from toy_lakes import LAKE_SHAPES as SHAPES
from vindex import VindexWriter
from vindex.errors import InvalidValue, NotFound
from vindex.query import connect
from vindex.query.lake_cka import RESULT_SCHEMA, CKAPairSkipped, cka_all

FLOATS = ("depth_a", "depth_b", "cka", "null_mean", "null_p95", "p_value")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    # the default pooling, and plain mean for a test of another pooling
    return write_toy_lake(tmp_path_factory.mktemp("lake"), DISTRIBUTED, poolings=("mean_nosink", "mean"))


def _arrow(rel):
    t = rel.arrow()
    return t.read_all() if hasattr(t, "read_all") else t


def _pair(table, a, b):
    rows = [r for r in table.to_pylist() if r["model_a"] == a and r["model_b"] == b]
    return sorted(rows, key=lambda r: (r["layer_a"], r["layer_b"]))


def assert_same(rows_a, rows_b, tol=1e-12):
    assert len(rows_a) == len(rows_b) and rows_a
    for x, y in zip(rows_a, rows_b):
        for k in x:
            if k in FLOATS and x[k] is not None and y[k] is not None:
                assert abs(x[k] - y[k]) <= tol, (k, x, y)
            else:
                assert x[k] == y[k], (k, x, y)


def sql_matrix(con, a, b, **opts):
    args = "".join(f", {k} := {v!r}" for k, v in opts.items())
    return _pair(_arrow(con.sql(f"SELECT * FROM cka_matrix('{a}', '{b}'{args})")), a, b)


def test_ray_equals_local_equals_sql_for_every_pair(lake, ray_local, tmp_path):
    out = tmp_path / "cka.parquet"
    on_ray = cka_all(lake, permutations=19, seed=3, ray=True, out=out, progress=False)
    local = cka_all(lake, permutations=19, seed=3, progress=False)
    assert on_ray.schema == RESULT_SCHEMA and pq.read_table(out).equals(on_ray)
    n_pairs = len(SHAPES) * (len(SHAPES) - 1) // 2
    assert on_ray.num_rows == sum((SHAPES[i][0] + 1) * (SHAPES[j][0] + 1)
                                  for i in range(len(SHAPES)) for j in range(i + 1, len(SHAPES)))
    con = connect(lake)
    pairs = {(r["model_a"], r["model_b"]) for r in on_ray.to_pylist()}
    assert len(pairs) == n_pairs
    for a, b in sorted(pairs):
        assert_same(_pair(on_ray, a, b), _pair(local, a, b), tol=1e-12)
        assert_same(_pair(on_ray, a, b), sql_matrix(con, a, b, permutations=19, seed=3), tol=1e-9)
    # the written table is a Parquet file the SQL layer reads like any other
    best = con.sql(f"SELECT model_a, model_b, max(cka) AS best FROM read_parquet('{out}') GROUP BY ALL "
                   "ORDER BY ALL").fetchall()
    assert len(best) == n_pairs and all(-1e-9 <= r[2] <= 1 + 1e-9 for r in best)


@pytest.mark.parametrize("opts", [dict(estimator="debiased"), dict(kernel="rbf:0.5", preprocess="clip:95"),
                                  dict(preprocess="l2", pooling="mean")])
def test_options_match_sql(lake, opts):
    t = cka_all(lake, models=["m0", "m3"], progress=False, **opts)
    assert_same(_pair(t, "m0", "m3"), sql_matrix(connect(lake), "m0", "m3", **opts), tol=1e-9)


def test_explicit_pairs_keep_their_order(lake):
    t = cka_all(lake, pairs=[("m2", "m0")], progress=False)
    assert {(r["model_a"], r["model_b"]) for r in t.to_pylist()} == {("m2", "m0")}
    assert_same(_pair(t, "m2", "m0"), sql_matrix(connect(lake), "m2", "m0"), tol=1e-9)


def test_one_contract_with_sql_the_same_rows_key_and_gram(lake):
    # lake_cka's step 1 fingerprints and Grams a layer as the SQL layer does (cka.sort_rows, packed_unit_gram)
    from vindex.query import cka as C
    from vindex.query.lake_cka import layer_gram
    from vindex.query.sources import resolve_sources
    v = {x.name: x for x in resolve_sources(lake)}["m1"]
    files = [(v.url(e["path"]), e) for e in v.entries("pooled") if e["partition"]["layer"] == 2]
    meta, g = layer_gram("m1", 2, v.n_layers, files, v.filesystem, "mean", None, C.options())
    sql_key, sql_g = connect(lake).sql("""
        SELECT rows_key(list((prompt_set, prompt_id) ORDER BY prompt_set, prompt_id)),
               cka_gram(list(act ORDER BY prompt_set, prompt_id))
        FROM pooled WHERE model = 'm1' AND layer = 2 AND pooling = 'mean'""").fetchone()
    assert meta["key"] == sql_key and meta["n"] == 12
    np.testing.assert_allclose(g, sql_g, rtol=0, atol=1e-15)


def _shifted_vindex(root, name, ids, d=8, n_layers=2):
    rng = np.random.default_rng(9)
    w = VindexWriter.create(root, name, {"id": f"test/{name}", "family": "toy", "n_layers": n_layers, "d_model": d})
    w.declare_vectors("pooled", d, "float16")
    for layer in range(n_layers + 1):
        w.write_shard("pooled", {"prompt_set": ["default"] * len(ids), "prompt_id": ids,
                                 "pooling": ["mean_nosink"] * len(ids), "act": rng.standard_normal((len(ids), d))},
                      partition={"layer": layer})
    return root


def test_pairs_with_other_prompts_are_skipped_with_a_warning(lake, tmp_path):
    other = _shifted_vindex(tmp_path / "other", "other", list(range(100, 112)))
    with pytest.warns(CKAPairSkipped, match="other.*different prompts"):
        t = cka_all(lake, other, models=["m0", "m1", "other"], progress=False)
    assert {(r["model_a"], r["model_b"]) for r in t.to_pylist()} == {("m0", "m1")}


def test_constant_layer_gives_null_with_a_warning(lake, tmp_path):
    root = tmp_path / "flat"
    w = VindexWriter.create(root, "flat", {"id": "test/flat", "family": "toy", "n_layers": 1, "d_model": 4})
    for layer, act in ((0, np.ones((12, 4))), (1, np.random.default_rng(0).standard_normal((12, 4)))):
        w.write_shard("pooled", {"prompt_set": ["default"] * 12, "prompt_id": list(range(12)),
                                 "pooling": ["mean_nosink"] * 12, "act": act}, partition={"layer": layer})
    with pytest.warns(CKAPairSkipped, match="flat layer 0"):
        t = cka_all(lake, root, pairs=[("flat", "m0")], progress=False)
    rows = _pair(t, "flat", "m0")
    assert all(r["cka"] is None for r in rows if r["layer_a"] == 0)
    assert all(r["cka"] is not None for r in rows if r["layer_a"] == 1)


def test_errors_name_what_is_wrong(lake, tmp_path):
    with pytest.raises(NotFound, match="unknown model.*nope.*m0"):
        cka_all(lake, models=["m0", "nope"], progress=False)
    with pytest.raises(InvalidValue, match="at least two models"):
        cka_all(lake, models=["m0"], progress=False)
    with pytest.raises(InvalidValue, match="estimator"):
        cka_all(lake, estimator="fancy", progress=False)
    with pytest.raises(InvalidValue, match="permutations"):
        cka_all(lake, permutations=-1, progress=False)
    with pytest.raises(InvalidValue, match="is a folder"):
        cka_all(lake, models=["m0", "m1"], out=tmp_path, progress=False)


def test_missing_extra_says_what_to_install(monkeypatch):
    import sys

    from vindex.ray_connection import RayUnavailable, connect_ray
    monkeypatch.setitem(sys.modules, "ray", None)   # import ray -> ImportError
    with pytest.raises(RayUnavailable, match=r"vindex-lake\[distributed\]"):
        connect_ray()


def test_hf_lake_on_ray_equals_local(lake, hub_server, ray_local):
    from vindex.hub import publish
    publish(lake, "vindex-org/toy-lake", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CKAPairSkipped)
        remote = cka_all("hf://datasets/vindex-org/toy-lake", models=["m0", "m1", "m2"], ray=True, progress=False)
    local = cka_all(lake, models=["m0", "m1", "m2"], progress=False)
    assert remote.equals(local)


def test_cli_cka_all_and_ray(lake, tmp_path, ray_local):
    from click.testing import CliRunner

    from vindex.cli import main
    out = tmp_path / "all.parquet"
    r = CliRunner().invoke(main, ["cka", "-l", str(lake), "--all", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "m0" in r.output and "max_cka" in r.output
    assert pq.read_table(out).equals(cka_all(lake, progress=False))
    r = CliRunner().invoke(main, ["cka", "-l", str(lake), "m1", "m3", "--ray", "-f", "json"])
    assert r.exit_code == 0, r.output
    import json
    rows = json.loads(r.stdout)
    assert_same(sorted(rows, key=lambda x: (x["layer_a"], x["layer_b"])), sql_matrix(connect(lake), "m1", "m3"),
                tol=1e-9)
    r = CliRunner().invoke(main, ["cka", "-l", str(lake), "--ray"])
    assert r.exit_code != 0 and "MODEL_A and MODEL_B, or --all" in r.output


def test_a_worker_error_surfaces_as_the_vindex_error(lake, tmp_path, ray_local):
    import shutil
    copy = tmp_path / "lake"
    shutil.copytree(lake, copy)
    (copy / "m1/data/pooled/layer=2/part-00000.parquet").unlink()
    with pytest.raises(NotFound, match="m1/data/pooled/layer=2/part-00000.parquet: listed in the manifest"):
        cka_all(copy, models=["m0", "m1"], ray=True, progress=False)
