"""The SQL CKA functions over stored activations: cka_matrix, cka_depth, cka(), the permutation
null, token-level minibatch CKA and mutual k-NN, checked against ckatorch / repsim / numpy on the
arrays read back with the core reader; plus every error path."""
import warnings

import duckdb
import numpy as np
import pytest

from vindex import Vindex, VindexWriter
from vindex.query import cka_depth, cka_matrix, connect, knn
from vindex.query import cka as C

torch = pytest.importorskip("torch")
ckatorch_core = pytest.importorskip("ckatorch.core")
repsim = pytest.importorskip("repsim")

N_PROMPTS = 25  # odd: RBF medians over n^2 entries agree between numpy and torch
TOL = 1e-6


def write_model(root, name, n_layers, d, seed, n_prompts=N_PROMPTS, prompt_set="main", drop_prompt=None,
                constant_layer=None, token_ids=None):
    """float32 pooled + activations over a latent shared by all models; each layer in two shards
    whose rows are shuffled, so CKA has to sort rows by prompt to be right."""
    rng = np.random.default_rng(seed)
    latent = np.random.default_rng(123).standard_normal((n_prompts, 5))
    w = VindexWriter.create(root / name, name, {"id": f"t/{name}", "n_layers": n_layers, "d_model": d})
    w.declare_vectors("pooled", d, "float32")
    w.declare_vectors("activations", d, "float32")
    ids = np.array([i for i in range(n_prompts) if i != drop_prompt])
    for layer in range(n_layers + 1):
        act = latent @ rng.standard_normal((5, d)) * (1 + layer) + rng.standard_normal((n_prompts, d))
        if layer == constant_layer:
            act = np.ones_like(act) * 0.5
        order = rng.permutation(ids)
        for part, chunk in enumerate(np.array_split(order, 2)):
            w.write_shard("pooled", {"prompt_set": [prompt_set] * len(chunk), "prompt_id": chunk,
                                     "pooling": ["mean_nosink"] * len(chunk), "act": act[chunk].astype(np.float32)},
                          partition={"layer": layer}, part=part)
        # tokens: 3 per prompt, a special token first
        pid = np.repeat(ids, 3)
        tix = np.tile([0, 1, 2], len(ids))
        tok = token_ids if token_ids is not None else rng.integers(0, 50, len(pid))
        tact = np.repeat(act[ids], 3, axis=0) + rng.standard_normal((len(pid), d))
        w.write_shard("activations", {
            "prompt_set": [prompt_set] * len(pid), "prompt_id": pid, "token_index": tix, "token_id": tok,
            "token": ["t"] * len(pid), "special": tix == 0, "norm": np.ones(len(pid), np.float32),
            "act": tact.astype(np.float32)}, partition={"layer": layer})
    return root / name


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("cka_lake")
    shared_tokens = np.random.default_rng(9).integers(0, 50, N_PROMPTS * 3)
    write_model(root, "m-a", 3, 10, seed=1, token_ids=shared_tokens)
    write_model(root, "m-b", 5, 14, seed=2, token_ids=shared_tokens)
    write_model(root, "m-other-tok", 2, 6, seed=3)
    return root


@pytest.fixture(scope="module")
def con(lake):
    return connect(lake)


def layer_matrix(root, layer, table="pooled"):
    """(n, d) float64 rows of one layer, sorted by prompt, read with the core reader (not SQL)."""
    t = Vindex.open(root).read(table, layers=[layer]).sort_by([("prompt_set", "ascending"), ("prompt_id", "ascending")]
                                                              + ([("token_index", "ascending")] if table == "activations" else []))
    col = t.column("act").combine_chunks()
    return np.asarray(col.flatten().to_numpy(), np.float64).reshape(len(t), col.type.list_size), t


def torch_cka(X, Y, kernel="linear", unbiased=False, threshold=1.0):
    t = lambda A: torch.tensor(A, dtype=torch.float64)
    return float(ckatorch_core.cka_base(t(X), t(Y), kernel=kernel, unbiased=unbiased, threshold=threshold))


@pytest.mark.parametrize("estimator,kernel,preprocess", [
    ("biased", "linear", "none"), ("debiased", "linear", "none"), ("biased", "rbf", "none"),
    ("debiased", "rbf:0.5", "none"), ("biased", "linear", "l2"), ("debiased", "linear", "clip:90")])
def test_cka_matrix_matches_third_party_on_stored_activations(lake, con, estimator, kernel, preprocess):
    t = cka_matrix(con, "m-a", "m-b", estimator=estimator, kernel=kernel, preprocess=preprocess)
    assert t.num_rows == 4 * 6
    rows = t.to_pylist()
    assert {(r["estimator"], r["kernel"], r["preprocess"], r["pooling"], r["n"]) for r in rows} == {
        (estimator, C.options(estimator, kernel, preprocess).kernel_name,
         C.options(estimator, kernel, preprocess).preprocess_name, "mean_nosink", N_PROMPTS)}
    opts = C.options(estimator, kernel, preprocess)
    for r in rows:
        X, _ = layer_matrix(lake / "m-a", r["layer_a"])
        Y, _ = layer_matrix(lake / "m-b", r["layer_b"])
        Xp, Yp = C.preprocess_rows(X, opts), C.preprocess_rows(Y, opts)
        want = torch_cka(Xp, Yp, opts.kernel, estimator == "debiased", opts.sigma)
        assert abs(r["cka"] - want) < TOL, r
        if (kernel, preprocess) == ("linear", "none"):
            if estimator == "biased":
                alt = repsim.cka([X, Y], "linear", "gretton")[0, 1]
            else:
                h = repsim.hsic([X, Y], "linear", "song")
                alt = h[0, 1] / np.sqrt(h[0, 0] * h[1, 1])
            assert abs(r["cka"] - alt) < TOL
        assert r["depth_a"] == r["layer_a"] / 3 and r["depth_b"] == r["layer_b"] / 5


def test_cka_scalar_in_any_query_matches_the_matrix(con):
    matrix = {(r[0], r[1]): r[2] for r in con.sql(
        "SELECT layer_a, layer_b, cka FROM cka_matrix('m-a', 'm-b', estimator := 'debiased')").fetchall()}
    rows = con.sql("""
        SELECT a.layer, b.layer,
               cka(list(a.act ORDER BY a.prompt_id), list(b.act ORDER BY a.prompt_id), 'debiased') AS c
        FROM pooled a JOIN pooled b USING (prompt_set, prompt_id, pooling)
        WHERE a.model = 'm-a' AND b.model = 'm-b' AND a.layer >= 2 AND b.layer IN (1, 4)
        GROUP BY ALL ORDER BY ALL""").fetchall()
    assert len(rows) == 4
    for la, lb, c in rows:
        assert abs(c - matrix[(la, lb)]) < 1e-12
    # named options and the packed Gram route agree too
    g = con.sql("""
        WITH g AS (SELECT model, layer, cka_gram(list(act ORDER BY prompt_id), estimator := 'debiased') AS g
                   FROM pooled WHERE (model = 'm-a' AND layer = 2) OR (model = 'm-b' AND layer = 4) GROUP BY ALL)
        SELECT list_dot_product(a.g, b.g) FROM g a, g b WHERE a.model = 'm-a' AND b.model = 'm-b'""").fetchone()[0]
    assert abs(g - matrix[(2, 4)]) < 1e-12


def test_rows_key_in_sql_is_the_fingerprint_the_matrix_compares(lake, con):
    # the shards hold shuffled rows: the matrix UDF sorts them; SQL's rows_key reads them in list order
    got = con.sql("""
        SELECT rows_key(list((prompt_set, prompt_id) ORDER BY prompt_set, prompt_id)),
               rows_key(list((prompt_set, prompt_id) ORDER BY prompt_id DESC)),
               vindex_layer_gram(list(act), list((prompt_set, prompt_id)), 'm-a 1', 'biased', 'linear',
                                 'none').rows_key
        FROM pooled WHERE model = 'm-a' AND layer = 1 AND pooling = 'mean_nosink'""").fetchone()
    _, t = layer_matrix(lake / "m-a", 1)
    want = C.rows_fingerprint([t.column("prompt_set").to_numpy(), t.column("prompt_id").to_numpy()])
    assert got[0] == got[2] == want and got[1] != want
    keys = con.sql("""
        SELECT model, layer, rows_key(list((prompt_set, prompt_id) ORDER BY prompt_set, prompt_id)) AS k
        FROM pooled WHERE model IN ('m-a', 'm-b') AND pooling = 'mean_nosink' GROUP BY ALL""").fetchall()
    assert len(keys) == 4 + 6 and {r[2] for r in keys} == {want}  # every layer of both: the same prompts


def test_permutation_null_from_stored_grams(lake, con):
    t = cka_matrix(con, "m-a", "m-b", estimator="biased", permutations=19, seed=5).to_pylist()
    perms = C.permutations(N_PROMPTS, 19, 5)
    for r in t[::5]:
        X, _ = layer_matrix(lake / "m-a", r["layer_a"])
        Y, _ = layer_matrix(lake / "m-b", r["layer_b"])
        null = np.array([torch_cka(X, Y[p]) for p in perms])
        assert abs(r["null_mean"] - null.mean()) < TOL
        assert abs(r["null_p95"] - np.percentile(null, 95)) < TOL
        assert r["p_value"] == pytest.approx((1 + (null >= r["cka"] - 1e-12).sum()) / 20)
        assert r["permutations"] == 19 and r["seed"] == 5
    assert all(r["null_mean"] is None for r in cka_matrix(con, "m-a", "m-b", permutations=0).to_pylist())


def test_cka_depth_is_the_matched_diagonal_and_the_band(con):
    m = cka_matrix(con, "m-a", "m-b").to_pylist()
    d = cka_depth(con, "m-a", "m-b", band=0.3).to_pylist()
    assert [r["layer_a"] for r in d] == [0, 1, 2, 3]
    for r in d:
        row = [x for x in m if x["layer_a"] == r["layer_a"]]
        best = min(row, key=lambda x: (round(abs(x["depth_a"] - x["depth_b"]), 9), x["layer_b"]))
        off = [x["cka"] for x in row if abs(x["depth_a"] - x["depth_b"]) >= 0.3]
        assert r["layer_b"] == best["layer_b"] and r["diagonal"] == best["cka"]
        assert abs(r["off_mean"] - np.mean(off)) < 1e-12 and r["n_off"] == len(off)
        assert abs(r["margin"] - (r["diagonal"] - r["off_mean"])) < 1e-12 and r["band"] == 0.3


def test_token_level_minibatch_cka(lake, con):
    t = con.sql("SELECT layer_a, layer_b, cka, n FROM cka_token_matrix('m-a', 'm-b', batch_size := 12, seed := 4)"
                ).fetchall()
    assert len(t) == 24 and {r[3] for r in t} == {N_PROMPTS * 2}  # special tokens left out
    for la, lb, c, _ in t[::7]:
        X, ta = layer_matrix(lake / "m-a", la, "activations")
        Y, _ = layer_matrix(lake / "m-b", lb, "activations")
        keep = ~np.asarray(ta.column("special").to_pylist())
        X, Y = X[keep], Y[keep]
        order = np.random.default_rng(4).permutation(len(X))
        tt = lambda A: torch.tensor(A[order][:48].reshape(4, 12, -1))  # the 2 rows left over are dropped
        assert abs(c - float(ckatorch_core.cka_batch(tt(X), tt(Y)))) < TOL
    with pytest.raises(duckdb.Error, match="different tokenizers cannot be compared token by token"):
        con.sql("SELECT * FROM cka_token_matrix('m-a', 'm-other-tok', batch_size := 8)").fetchall()


def test_mutual_knn_matrix(lake, con):
    rows = con.sql("SELECT layer_a, layer_b, mutual_knn FROM mutual_knn_matrix('m-a', 'm-b', k := 4)").fetchall()
    assert len(rows) == 24
    for la, lb, v in rows[::5]:
        X, _ = layer_matrix(lake / "m-a", la)
        Y, _ = layer_matrix(lake / "m-b", lb)

        def ref_knn(A):  # Huh et al.'s code: cosine similarity, self excluded, top-k
            A = A / np.linalg.norm(A, axis=1, keepdims=True)
            S = A @ A.T
            np.fill_diagonal(S, -1e8)
            return np.argsort(-S, axis=1, kind="stable")[:, :4]
        a, b = ref_knn(X), ref_knn(Y)
        want = np.mean([len(set(a[i]) & set(b[i])) / 4 for i in range(len(a))])
        assert abs(v - want) < 1e-12
        assert abs(knn.mutual_knn(X, Y, 4) - want) < 1e-12
    one = con.sql("SELECT mutual_knn(list(a.act ORDER BY prompt_id), list(a.act ORDER BY prompt_id), 3) "
                  "FROM pooled a WHERE model = 'm-a' AND layer = 1").fetchone()[0]
    assert one == 1.0


# -- errors ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_lake")
    write_model(root, "full", 2, 6, seed=1)
    write_model(root, "missing", 2, 6, seed=2, drop_prompt=7)
    write_model(root, "flat", 2, 7, seed=3, constant_layer=1)
    write_model(root, "other-set", 2, 6, seed=4, prompt_set="other")
    return root


def test_matrix_errors_are_clear(bad_lake):
    con = connect(bad_lake)
    cases = [
        ("SELECT * FROM cka_matrix('full', 'nope')", "unknown model 'nope'; the lake holds: flat, full, missing, other-set"),
        ("SELECT * FROM cka_matrix('full', 'flat', pooling := 'last')", "no pooled rows with pooling = last"),
        ("SELECT * FROM cka_matrix('full', 'flat', prompt_set := 'x')", "and prompt_set = x"),
        ("SELECT * FROM cka_matrix('full', 'missing')", "hold different prompts \\(25 vs 24 rows\\)"),
        ("SELECT * FROM cka_matrix('full', 'other-set')", "hold different prompts"),
        ("SELECT * FROM cka_matrix('full', 'flat', estimator := 'fancy')", "unknown estimator 'fancy'"),
        ("SELECT * FROM cka_matrix('full', 'flat', kernel := 'rbf:-1')", "must be > 0"),
        ("SELECT * FROM cka_matrix('full', 'full', permutations := -5)", "permutations must be >= 0"),
    ]
    for sql, msg in cases:
        with pytest.raises(duckdb.Error, match=msg):
            con.sql(sql).fetchall()


def test_constant_layer_gives_null_with_a_warning(bad_lake):
    con = connect(bad_lake)
    with pytest.warns(C.CKAWarning, match="constant layer"):
        rows = con.sql("SELECT layer_b, cka, p_value FROM cka_matrix('full', 'flat', permutations := 9) "
                       "WHERE layer_a = 0 ORDER BY layer_b").fetchall()
    assert rows[1][1] is None and rows[1][2] is None
    assert rows[0][1] is not None and rows[2][1] is not None


def test_scalar_errors_are_clear(bad_lake):
    con = connect(bad_lake)
    sub = "(SELECT list(act ORDER BY prompt_id) FROM pooled WHERE model = '{m}' AND layer = {l})"
    cases = [
        (f"SELECT cka({sub.format(m='full', l=1)}, {sub.format(m='missing', l=1)})", "25 and 24 rows"),
        ("SELECT cka([[1, 2], [3, 4], [5, 7]]::FLOAT[][], [[1, 2], [3, 4], [5, 6]]::FLOAT[][], 'debiased')",
         "needs n >= 4"),
        ("SELECT cka([[1, 2], [3, 4, 5], [5, 7]]::FLOAT[][], [[1], [3], [5]]::FLOAT[][])", "different widths"),
        ("SELECT cka([[1.0, 2.0], [3.0, 'nan'::DOUBLE], [5.0, 7.0]], [[1.0], [3.0], [5.0]])", "row 1 holds NaN"),
        ("SELECT cka([[1.0, 2.0], NULL, [5.0, 7.0]], [[1.0], [3.0], [5.0]])", "NULL vector"),
        ("SELECT cka(['a', 'b'], ['c', 'd'])", "expected a list of vectors"),
    ]
    for sql, msg in cases:
        with pytest.raises(duckdb.Error, match=msg):
            con.sql(sql).fetchall()
    # a union of models of different widths in one list: a clear width error
    with pytest.raises(duckdb.Error, match="different widths"):
        con.sql("SELECT cka(list(act), list(act)) FROM pooled WHERE layer = 0 AND model IN ('full', 'flat')").fetchall()
    with pytest.warns(C.CKAWarning):
        assert con.sql(f"SELECT cka({sub.format(m='full', l=1)}, {sub.format(m='flat', l=1)})").fetchone()[0] is None
    assert con.sql("SELECT cka(NULL, [[1.0]])").fetchone()[0] is None


def test_duplicate_rows_are_refused(tmp_path):
    root = tmp_path / "dup"
    write_model(root, "a", 1, 4, seed=1)
    w = VindexWriter.open(root / "a")
    # a third shard repeating prompt 0 of layer 1
    w.write_shard("pooled", {"prompt_set": ["main"], "prompt_id": [0], "pooling": ["mean_nosink"],
                             "act": np.ones((1, 4), np.float32)}, partition={"layer": 1}, part=2)
    with pytest.raises(duckdb.Error, match="lists the same row twice"):
        connect(root).sql("SELECT * FROM cka_matrix('a', 'a')").fetchall()


def test_constant_layer_in_minibatch_and_knn_is_null(bad_lake):
    con = connect(bad_lake)
    with pytest.warns(C.CKAWarning, match="constant layer"):
        rows = con.sql("SELECT layer_b, mutual_knn FROM mutual_knn_matrix('full', 'flat', k := 3) "
                       "WHERE layer_a = 0 ORDER BY layer_b").fetchall()
    assert rows[1][1] is None and rows[0][1] is not None
    with pytest.raises(C.DegenerateInput):
        C.minibatch_cka(np.full((40, 3), 2.0), np.random.default_rng(0).standard_normal((40, 3)), 8)
