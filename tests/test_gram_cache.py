"""The Gram cache (`vindex.query.gram_cache`): a hit equals a cold computation, a changed shard
invalidates its layer, a damaged entry is detected and rebuilt (never used), and a vindex that
cannot be written still answers. Every CKA is also checked against a hand-written numpy CKA of the
shards read with pyarrow."""
from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vindex import Vindex, VindexWriter
from vindex.errors import GramCacheRebuilt
from vindex.lock import WriteLock
from vindex.query import cka, connect, gram_cache
from vindex.query.lake_cka import cka_all

N, LAYERS = 20, 3


def write_model(root, name, d, seed, layers=range(LAYERS + 1)):
    rng = np.random.default_rng(seed)
    latent = np.random.default_rng(0).standard_normal((N, 4))
    w = VindexWriter.open(root / name) if (root / name / "vindex.json").exists() else VindexWriter.create(
        root / name, name, {"id": f"test/{name}", "family": "toy", "n_layers": LAYERS, "d_model": d})
    w.declare_vectors("pooled", d, "float16")
    for layer in layers:
        act = latent @ rng.standard_normal((4, d)) + rng.standard_normal((N, d))
        w.write_shard("pooled", {"prompt_set": ["default"] * N, "prompt_id": np.arange(N),
                                 "pooling": ["mean"] * N, "act": act}, partition={"layer": layer})
    w.close()
    return root / name


@pytest.fixture
def lake(tmp_path, monkeypatch):
    monkeypatch.setenv("VINDEX_CACHE", str(tmp_path / "user-cache"))
    gram_cache.forget()
    write_model(tmp_path / "lake", "a", 12, 1)
    write_model(tmp_path / "lake", "b", 16, 2)
    yield tmp_path / "lake"
    gram_cache.forget()


def shard_matrix(root, layer):
    """(n, d) float64 of a layer's pooled rows, sorted by prompt_id: pyarrow, not vindex."""
    v = Vindex.open(root)
    t = pq.read_table(v.path(v.files("pooled", layer=layer)[0])).sort_by("prompt_id")
    return t["act"].combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(t.num_rows, -1)


def reference_cka(X, Y):
    """Biased linear CKA by hand: ||Yc'Xc||_F^2 / (||Xc'Xc||_F ||Yc'Yc||_F) (Kornblith et al. 2019, eq. 5)."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))


def sql_matrix(lake, estimator="biased"):
    rows = connect(lake).sql(f"SELECT layer_a, layer_b, cka FROM cka_matrix('a', 'b', pooling := 'mean', "
                             f"estimator := '{estimator}')").fetchall()
    return np.array([r[2] for r in rows]).reshape(LAYERS + 1, LAYERS + 1)


def reference_matrix(lake):
    return np.array([[reference_cka(shard_matrix(lake / "a", i), shard_matrix(lake / "b", j))
                      for j in range(LAYERS + 1)] for i in range(LAYERS + 1)])


def entry_files(lake, name="a"):
    return sorted((lake / name / "grams").glob("*.parquet"))


def test_a_hit_equals_a_cold_computation(lake):
    cold = sql_matrix(lake)
    assert len(entry_files(lake, "a")) == 1 and len(entry_files(lake, "b")) == 1
    np.testing.assert_allclose(cold, reference_matrix(lake), rtol=0, atol=1e-12)
    hot = sql_matrix(lake)                      # Grams in memory
    gram_cache.forget()
    warm = sql_matrix(lake)                     # Grams read from grams/ files
    np.testing.assert_allclose(warm, cold, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hot, cold, rtol=0, atol=1e-12)
    # the debiased estimator is another entry, and a hit equals its cold computation too
    cold_d = sql_matrix(lake, "debiased")
    assert len(entry_files(lake, "a")) == 2
    gram_cache.forget()
    np.testing.assert_allclose(sql_matrix(lake, "debiased"), cold_d, rtol=0, atol=1e-12)
    # cka_all reads the same entries and gives the same numbers
    t = cka_all(lake, pooling="mean", estimator="biased", permutations=0, progress=False).to_pylist()
    np.testing.assert_allclose(np.array([r["cka"] for r in t]).reshape(cold.shape), cold, rtol=0, atol=1e-12)
    assert len(entry_files(lake, "a")) == 2


def test_the_entry_holds_what_the_spec_says(lake):
    sql_matrix(lake)
    v = Vindex.open(lake / "a")
    f = pq.ParquetFile(entry_files(lake)[0])
    t = f.read()
    spec = gram_cache.GramSpec("mean", None, cka.options())
    assert entry_files(lake)[0].name.startswith(spec.key + ".")
    assert t["layer"].to_pylist() == list(range(LAYERS + 1)) and set(t["status"].to_pylist()) == {"ok"}
    assert t["shards"].to_pylist() == [gram_cache.layer_digest(v.files("pooled", layer=i)) for i in range(LAYERS + 1)]
    g = np.array(t["g"][1].as_py())
    X = shard_matrix(lake / "a", 1)
    Xc = X - X.mean(0)
    K = Xc @ Xc.T
    want = K / np.linalg.norm(K)
    iu = np.triu_indices(N, 1)
    np.testing.assert_allclose(g[:N], np.diag(want), atol=1e-14)                 # diagonal, then
    np.testing.assert_allclose(g[N:], np.sqrt(2) * want[iu], atol=1e-14)         # sqrt(2) x upper triangle


def test_a_changed_shard_invalidates_its_layer(lake):
    before = sql_matrix(lake)
    old = entry_files(lake)
    write_model(lake, "a", 12, 7, layers=[2])          # new rows for layer 2 of model a
    after = sql_matrix(lake)
    np.testing.assert_allclose(after, reference_matrix(lake), rtol=0, atol=1e-12)
    assert np.abs(after[2] - before[2]).max() > 1e-3                  # layer 2 recomputed
    np.testing.assert_allclose(np.delete(after, 2, 0), np.delete(before, 2, 0), rtol=0, atol=1e-12)
    new = entry_files(lake)
    assert len(new) == 1 and new != old                                # the stale entry is gone
    digests = pq.read_table(new[0])["shards"].to_pylist()
    assert digests[2] == gram_cache.layer_digest(Vindex.open(lake / "a").files("pooled", layer=2))


def _expect_rebuilt(lake, want):
    with pytest.warns(GramCacheRebuilt, match="not used, computed again"):
        got = sql_matrix(lake)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    (entry,) = entry_files(lake)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GramCacheRebuilt)
        gram_cache.forget()
        np.testing.assert_allclose(sql_matrix(lake), want, rtol=0, atol=1e-12)   # the rebuilt entry is sound
    return entry


def test_a_corrupted_entry_is_detected_and_rebuilt_never_used(lake):
    want = sql_matrix(lake)
    # 1. bytes changed in place: the sha256 in its name no longer matches
    (entry,) = entry_files(lake)
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    gram_cache.forget()
    entry = _expect_rebuilt(lake, want)
    # 2. a sound file (its sha256 is its name's) whose Grams have the wrong size: the shape check
    t = pq.read_table(entry)
    g = t["g"].combine_chunks()
    short = pa.array([None if x is None else x[:-1] for x in g.to_pylist()], pa.list_(pa.float64()))
    bad = t.set_column(t.schema.get_field_index("g"), t.schema.field("g"), short)
    entry.unlink()
    sink = pa.BufferOutputStream()
    pq.write_table(bad, sink)
    body = sink.getvalue().to_pybytes()
    spec_key = entry.name.split(".")[0]
    (entry.parent / f"{spec_key}.{hashlib.sha256(body).hexdigest()}.parquet").write_bytes(body)
    gram_cache.forget()
    entry = _expect_rebuilt(lake, want)
    # 3. another spec's entry under this spec's name: the spec check
    sql_matrix(lake, "debiased")
    other = next(p for p in entry_files(lake) if p != entry)
    entry.unlink()
    body = other.read_bytes()
    (entry.parent / f"{spec_key}.{hashlib.sha256(body).hexdigest()}.parquet").write_bytes(body)
    gram_cache.forget()
    with pytest.warns(GramCacheRebuilt, match="holds Grams of"):
        np.testing.assert_allclose(sql_matrix(lake), want, rtol=0, atol=1e-12)


def test_a_vindex_that_cannot_be_written_still_works(lake, monkeypatch, tmp_path):
    want = reference_matrix(lake)
    # a folder that cannot be made (a file is in the way): the entry goes to $VINDEX_CACHE
    (lake / "a" / "grams").write_text("not a folder")
    np.testing.assert_allclose(sql_matrix(lake), want, rtol=0, atol=1e-12)
    v = connect_vindex(lake, "a")
    user = [p for p in gram_cache.entries(v) if str(p).startswith(str(tmp_path / "user-cache"))]
    assert len(user) == 1
    gram_cache.forget()
    np.testing.assert_allclose(sql_matrix(lake), want, rtol=0, atol=1e-12)          # read back from there
    # a vindex whose write lock another writer holds: no wait past LOCK_WAIT_S, the user cache again
    monkeypatch.setattr(gram_cache, "LOCK_WAIT_S", 0.0)
    with WriteLock(lake / "b", 0):
        gram_cache.forget()
        np.testing.assert_allclose(sql_matrix(lake, "debiased"), sql_matrix_fresh(lake, "debiased"), atol=1e-12)
    assert len(entry_files(lake, "b")) == 1                    # only the biased entry, from before
    vb = connect_vindex(lake, "b")
    assert len([p for p in gram_cache.entries(vb) if str(p).startswith(str(tmp_path / "user-cache"))]) == 1
    if os.geteuid() != 0:   # a read-only folder (root ignores permissions)
        (lake / "b" / "grams").chmod(0o555)
        gram_cache.forget()
        np.testing.assert_allclose(sql_matrix(lake, "debiased"), sql_matrix_fresh(lake, "debiased"), atol=1e-12)


def connect_vindex(lake, name):
    from vindex.query.sources import resolve_sources
    return {v.name: v for v in resolve_sources(lake)}[name]


def scanning_connection(lake):
    """A connection whose functions know no vindex: cka_matrix takes the scanning path (DuckDB scans
    the rows, `vindex_layer_gram` forms each Gram, `list_dot_product` each pair), never the cache."""
    import duckdb
    from vindex.query.functions import register_functions
    from vindex.query.sources import resolve_sources
    from vindex.query.views import create_views
    con = duckdb.connect()
    create_views(con, resolve_sources(lake))
    register_functions(con)
    return con


def sql_matrix_fresh(lake, estimator):
    """The same matrix without any cache: the scanning path's own Grams over the scanned rows."""
    rows = scanning_connection(lake).sql(f"SELECT cka FROM cka_matrix('a', 'b', pooling := 'mean', "
                                         f"estimator := '{estimator}')").fetchall()
    return np.array([r[0] for r in rows]).reshape(LAYERS + 1, LAYERS + 1)


def test_a_warm_matrix_and_its_null_equal_the_scanning_path_and_a_hand_written_null(lake):
    """The warm path (`vindex_cka_pairs`: one product of the stacked Grams, the null from the same
    Grams) gives the scanning path's numbers, and the null is CKA of the shards with b's rows shuffled
    by hand (cka.permutations draws the shuffles)."""
    con = connect(lake)
    q = ("SELECT layer_a, layer_b, cka, null_mean, null_p95, p_value, n FROM cka_matrix('a', 'b', pooling := 'mean', "
         "estimator := 'biased', permutations := 19, seed := 3{}) ORDER BY layer_a, layer_b")
    cold = np.array(con.sql(q.format("")).fetchall(), dtype=float)
    gram_cache.forget()
    warm = np.array(con.sql(q.format("")).fetchall(), dtype=float)
    partial = np.array(con.sql(q.format(", allow_partial := true")).fetchall(), dtype=float)   # computed afresh
    scan = np.array(scanning_connection(lake).sql(q.format("")).fetchall(), dtype=float)
    np.testing.assert_allclose(warm, cold, rtol=0, atol=1e-12)
    np.testing.assert_allclose(warm, scan, rtol=0, atol=1e-12)
    np.testing.assert_allclose(partial, scan, rtol=0, atol=1e-12)
    scan_partial = np.array(scanning_connection(lake).sql(q.format(", allow_partial := true")).fetchall(), dtype=float)
    np.testing.assert_allclose(partial, scan_partial, rtol=0, atol=1e-12)
    perms = cka.permutations(N, 19, 3)
    for la, lb, value, null_mean, null_p95, p_value, n in warm[::5]:
        X, Y = shard_matrix(lake / "a", int(la)), shard_matrix(lake / "b", int(lb))
        null = np.array([reference_cka(X, Y[p]) for p in perms])
        assert n == N
        np.testing.assert_allclose([value, null_mean, null_p95], [reference_cka(X, Y), null.mean(),
                                                                  np.percentile(null, 95)], rtol=0, atol=1e-12)
        assert p_value == (1 + (null >= value - 1e-12).sum()) / 20


def test_the_warm_path_refuses_what_the_scanning_path_refuses(lake):
    """Layers of other rows (a prompt missing from one layer of b) are refused by the warm path too,
    in the scanning path's words, naming the layers."""
    import duckdb
    connect(lake).sql("SELECT * FROM cka_matrix('a', 'b', pooling := 'mean')").fetchall()   # Grams cached
    w = VindexWriter.open(lake / "b")
    act = np.random.default_rng(9).standard_normal((N - 1, 16))
    w.write_shard("pooled", {"prompt_set": ["default"] * (N - 1), "prompt_id": np.arange(N - 1),
                             "pooling": ["mean"] * (N - 1), "act": act}, partition={"layer": 1})
    w.close()
    for con in (connect(lake), scanning_connection(lake)):
        for extra in ("", ", allow_partial := true"):   # the prompts both hold: 19, but a's other layers hold 20
            with pytest.raises(duckdb.Error, match=r"layer \d of a and layer \d of b hold different prompts"):
                con.sql(f"SELECT * FROM cka_matrix('a', 'b', pooling := 'mean'{extra})").fetchall()
    with pytest.raises(duckdb.Error, match=r"cka_matrix: model 'a' has no pooled rows with pooling = last"):
        connect(lake).sql("SELECT * FROM cka_matrix('a', 'b', pooling := 'last')").fetchall()


# -- verify, prune, info: the cache's files by their self-checking names -----------------------------
def test_verify_checks_entries_by_their_names_and_prune_removes_what_cannot_be_used(lake):
    from vindex import info, verify
    sql_matrix(lake)                                                  # one biased entry per model
    sql_matrix(lake, "debiased")                                      # and a debiased one
    assert verify(lake) == []
    biased = gram_cache.GramSpec("mean", None, cka.options("biased")).key
    entry = next(p for p in entry_files(lake) if p.name.startswith(biased))
    # a killed write's temp file, a damaged entry (bytes not its name's sha256), an entry of old shards
    tmp = lake / "a" / "grams" / f".{entry.name}.x1y2.tmp"
    tmp.write_bytes(b"half an entry")
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    write_model(lake, "a", 12, 8, layers=range(LAYERS + 1))          # every layer rewritten: the debiased entry is stale
    kinds = sorted((p.kind, os.path.basename(p.path)) for p in verify(lake / "a"))
    assert kinds == [("grams", entry.name), ("temp", tmp.name)]
    d = info(lake / "a")
    (stale,) = [g for g in d["grams"] if g["problem"] is None]
    assert stale["spec"]["estimator"] == "debiased" and stale["current"] == [] and stale["stale"] == [0, 1, 2, 3]
    assert [g["file"] for g in d["grams"] if g["problem"]] == [entry.name]
    # --prune: all three are gone, b's entries (current) stay
    assert verify(lake, prune=True) == []
    assert entry_files(lake, "a") == [] and not tmp.exists() and len(entry_files(lake, "b")) == 2
    np.testing.assert_allclose(sql_matrix(lake), reference_matrix(lake), rtol=0, atol=1e-12)


def test_a_cache_write_removes_a_killed_writes_temp_file(lake):
    sql_matrix(lake)
    tmp = lake / "a" / "grams" / ".killed.parquet.abc.tmp"
    tmp.write_bytes(b"x")
    write_model(lake, "a", 12, 4, layers=[1])                        # layer 1 changed: the entry is rewritten
    sql_matrix(lake)
    assert not tmp.exists() and len(entry_files(lake)) == 1


def test_the_cli_verify_prune_and_info(lake):
    from click.testing import CliRunner
    from vindex.cli import main
    sql_matrix(lake)
    tmp = lake / "b" / "grams" / ".x.tmp"
    tmp.write_bytes(b"x")
    r = CliRunner().invoke(main, ["verify", str(lake)])
    assert r.exit_code == 1 and "[temp]" in r.output
    r = CliRunner().invoke(main, ["verify", "--prune", str(lake)])
    assert r.exit_code == 0 and not tmp.exists()
    r = CliRunner().invoke(main, ["info", str(lake / "a")])
    assert r.exit_code == 0 and "grams   pooled/resid_post pooling=mean estimator=biased" in r.output
    assert "4 current, 0 stale layer(s)" in r.output


# -- publish and pull carry the entries by their names ------------------------------------------------
def test_publish_and_pull_carry_the_gram_cache(lake, hub_server, tmp_path, monkeypatch):
    from vindex import verify
    from vindex.hub import publish
    from vindex.hub.download import pull
    want = sql_matrix(lake)
    sql_matrix(lake, "debiased")
    write_model(lake, "b", 16, 6, layers=range(LAYERS + 1))        # b's entries are now all stale
    want_b = sql_matrix(lake)                                       # b's biased entry rewritten; debiased stale
    res = publish(lake, "vindex-org/lake", progress=False)
    remote = hub_server.files("vindex-org/lake")
    grams_a = {f"a/grams/{p.name}" for p in entry_files(lake, "a")}
    grams_b = {f"b/grams/{p.name}" for p in entry_files(lake, "b")}
    assert len(grams_a) == 2 and len(grams_b) == 2
    published_b = {p for p in remote if p.startswith("b/grams/")}
    assert grams_a <= set(remote) and len(published_b) == 1 and published_b < grams_b   # the stale one stays home
    assert all(hub_server.read_file("vindex-org/lake", p) == (lake / p).read_bytes() for p in grams_a | published_b)
    assert publish(lake, "vindex-org/lake", progress=False).uploaded == []
    # pulled: the entries arrive checked, and a warm query uses them (nothing is computed)
    out = tmp_path / "pulled"
    pull("hf://datasets/vindex-org/lake", out=out, progress=False)
    assert {f"a/grams/{p.name}" for p in entry_files(out, "a")} == grams_a
    assert verify(out) == []
    gram_cache.forget()
    monkeypatch.setattr(gram_cache, "_run_here", lambda jobs: pytest.fail(f"computed {len(jobs)} Grams"))
    np.testing.assert_allclose(sql_matrix(out), want_b, rtol=0, atol=1e-12)
    assert np.abs(want_b - want).max() > 1e-3
    # a remote entry whose bytes are not its name's sha256 is never kept
    path = sorted(grams_a)[0]
    good = hub_server.read_file("vindex-org/lake", path)
    hub_server.tamper("vindex-org/lake", path, good[:-8] + b"\0" * 8)
    out2 = tmp_path / "pulled2"
    with pytest.raises(Exception, match="sha256"):
        pull("hf://datasets/vindex-org/lake", models=["a"], out=out2, progress=False)
    assert not (out2 / "a" / path.split("/", 1)[1]).exists() and not (out2 / path.split("/", 1)[1]).exists()
    assert res.commit
