"""Misleading numerics (issue 14, defect 8): every CKA-family number either means something or is
refused with an error naming the argument. Values that are returned are checked against numpy
written here from the papers' formulas (not against vindex.query.cka).

- debiased CKA with n = 2 or 3 rows: "needs n >= 4" (the matrix said "constant layer" and NULL);
- biased CKA with n = 2 is 1 for any data: refused (n >= 3);
- rbf:inf / rbf:0 / negative / NaN bandwidths: InvalidValue naming `kernel` (rbf:inf gave all NULLs),
  and a bandwidth that saturates the kernel (K = I) is refused;
- band -1 / 0 / NaN / > 1: refused (-1 and NaN were accepted);
- every numeric argument of the SQL functions, the table macros and their Python mirrors: NaN, inf,
  NULL, a fraction where a count is meant, out of range -> an error naming function and argument
  (permutations := 2.5 ran 2 permutations and reported 3);
- mutual k-NN with k = n-1 is 1 for any data: refused.
"""
from __future__ import annotations

import math
import warnings

import duckdb
import numpy as np
import pytest

from toy_lakes import SIMPLE, ToyModel, write_toy_lake
from vindex import Vindex
from vindex.errors import InvalidValue
from vindex.query import (cka_depth, cka_matrix, cka_token_matrix, cluster_features, connect, kmeans,
                          minibatch_cka, mutual_knn, mutual_knn_matrix, permutation_test)
from vindex.query import cka as C
from vindex.query.lake_cka import cka_all

TOL = 1e-9


# -- independent references (numpy, the papers' formulas) ----------------------------------------
def ref_biased(X, Y):
    """Kornblith et al. 2019, eq. 5 (feature space): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))


def ref_hsic_unbiased(K, L):
    """Song et al. 2012, eq. 5, written with explicit sums over i != j."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))


def ref_debiased(X, Y):
    K, L = X @ X.T, Y @ Y.T
    return ref_hsic_unbiased(K, L) / math.sqrt(ref_hsic_unbiased(K, K) * ref_hsic_unbiased(L, L))


def ref_rbf_biased(X, Y, sigma):
    """RBF CKA: K_ij = exp(-d_ij^2 / (2 sigma^2 median(d^2))), HSIC = tr(KHLH) (Kornblith et al.)."""
    def gram(Z):
        d2 = ((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * sigma ** 2 * np.median(d2)))
    n = X.shape[0]
    H = np.eye(n) - 1 / n
    K, L = gram(X), gram(Y)

    def h(A, B):
        return np.trace(A @ H @ B @ H)
    return h(K, L) / math.sqrt(h(K, K) * h(L, L))


def ref_mutual_knn(X, Y, k):
    """Huh et al. 2024: mean over rows of |N_X(i) & N_Y(i)| / k, neighbours by cosine similarity."""
    def nbrs(Z):
        Zn = Z / np.linalg.norm(Z, axis=1, keepdims=True)
        S = Zn @ Zn.T
        np.fill_diagonal(S, -np.inf)
        return [set(np.argsort(-S[i], kind="stable")[:k]) for i in range(len(Z))]
    a, b = nbrs(X), nbrs(Y)
    return float(np.mean([len(a[i] & b[i]) / k for i in range(len(a))]))


# -- lakes ---------------------------------------------------------------------------------------
MODELS = (ToyModel("a", 2, 8, seed=1), ToyModel("b", 3, 6, seed=2))


def lake_of(root, n_prompts):
    return write_toy_lake(root, SIMPLE, models=MODELS, n_prompts=n_prompts, dtype="float32", latent_rank=2)


@pytest.fixture(scope="module")
def lakes(tmp_path_factory):
    base = tmp_path_factory.mktemp("numerics")
    return {n: lake_of(base / f"n{n}", n) for n in (2, 3, 4, 12)}


@pytest.fixture(scope="module")
def con12(lakes):
    return connect(lakes[12])


def pooled(lake, model, layer):
    t = Vindex.open(lake / model).read("pooled", layers=[layer]).sort_by("prompt_id")
    col = t.column("act").combine_chunks()
    return np.asarray(col.flatten().to_numpy(), np.float64).reshape(t.num_rows, -1)


def sql_error(con, sql, match):
    with pytest.raises(duckdb.Error, match=match):
        con.sql(sql).fetchall()


# -- n: the fewest rows an estimator means anything on -------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
def test_debiased_matrix_with_n_below_4_says_n_ge_4_not_constant_layer(lakes, n):
    con = connect(lakes[n])
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no "constant layer" CKAWarning either
        sql_error(con, "SELECT * FROM cka_matrix('a', 'b', estimator := 'debiased')",
                  r"model [ab] layer \d: the debiased estimator needs n >= 4 rows \(it divides by n-3\), got " + str(n))
        with pytest.raises(InvalidValue, match="needs n >= 4"):    # the Python mirror: a vindex error
            cka_matrix(con, "a", "b", estimator="debiased")
    with pytest.raises(InvalidValue, match="needs n >= 4"):
        C.cka(pooled(lakes[n], "a", 1), pooled(lakes[n], "b", 1), "debiased")
    with pytest.warns(Warning, match="needs n >= 4"):    # cka_all goes on without the pair, and says why
        assert cka_all(lakes[n], estimator="debiased", progress=False).num_rows == 0


def test_debiased_matrix_with_n_4_is_the_unbiased_hsic_reference(lakes):
    con = connect(lakes[4])
    rows = con.sql("SELECT layer_a, layer_b, cka, n FROM cka_matrix('a', 'b', estimator := 'debiased')").fetchall()
    assert len(rows) == 3 * 4 and {r[3] for r in rows} == {4}
    for la, lb, value, _ in rows:
        assert value == pytest.approx(ref_debiased(pooled(lakes[4], "a", la), pooled(lakes[4], "b", lb)), abs=TOL)


def test_biased_cka_with_two_rows_is_refused_everywhere(lakes):
    X, Y = pooled(lakes[2], "a", 1), pooled(lakes[2], "b", 2)
    # the reason: with 2 rows every centred Gram is the same matrix, so CKA is 1 whatever the data
    assert ref_biased(X, Y) == pytest.approx(1.0, abs=1e-12)
    assert ref_biased(X, np.random.default_rng(0).standard_normal((2, 5))) == pytest.approx(1.0, abs=1e-12)
    msg = r"the biased estimator needs n >= 3 rows \(with 2 rows every centred Gram is the same matrix"
    with pytest.raises(InvalidValue, match=msg):
        C.cka(X, Y)
    with pytest.raises(InvalidValue, match=msg):
        C.cka(X, Y, kernel="rbf")
    with pytest.raises(InvalidValue, match=msg):
        permutation_test(X, Y, permutations_count=9)
    con = connect(lakes[2])
    sql_error(con, "SELECT * FROM cka_matrix('a', 'b', estimator := 'biased')", msg)
    sql_error(con, "SELECT * FROM cka_depth('a', 'b', estimator := 'biased')", msg)
    sql_error(con, "SELECT cka(list(a.act ORDER BY prompt_id), list(b.act ORDER BY prompt_id)) "
                   "FROM pooled a JOIN pooled b USING (prompt_set, prompt_id, pooling) "
                   "WHERE a.model = 'a' AND b.model = 'b' AND a.layer = 1 AND b.layer = 1", msg)
    sql_error(con, "SELECT cka_gram(list(act)) FROM pooled WHERE model = 'a' AND layer = 1", msg)
    with pytest.warns(Warning, match="n >= 3"):     # cka_all goes on without the pair, and says why
        assert cka_all(lakes[2], estimator="biased", progress=False).num_rows == 0


def test_biased_cka_with_three_rows_is_the_reference(lakes):
    con = connect(lakes[3])
    for la, lb, value in con.sql("SELECT layer_a, layer_b, cka FROM cka_matrix('a', 'b', estimator := 'biased')").fetchall():
        X, Y = pooled(lakes[3], "a", la), pooled(lakes[3], "b", lb)
        assert value == pytest.approx(ref_biased(X, Y), abs=TOL)
        assert value < 1 - 1e-6 or la == 0      # no forced 1.0


# -- the RBF bandwidth -----------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["rbf:inf", "rbf:1e400", "rbf:0", "rbf:-1", "rbf:nan", "rbf:-inf"])
def test_bad_rbf_bandwidths_are_refused_naming_the_kernel(con12, lakes, kernel):
    X, Y = pooled(lakes[12], "a", 1), pooled(lakes[12], "b", 1)
    msg = f"kernel '{kernel}': the RBF bandwidth fraction must be > 0 and finite"
    with pytest.raises(InvalidValue, match=msg):
        C.cka(X, Y, kernel=kernel)
    with pytest.raises(InvalidValue, match=msg):
        cka_all(lakes[12], kernel=kernel, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # never a NULL with a "constant layer" warning
        sql_error(con12, f"SELECT * FROM cka_matrix('a', 'b', kernel := '{kernel}')", msg)
        sql_error(con12, f"SELECT cka([[1, 2], [3, 5], [4, 4]], [[1, 0], [0, 1], [2, 2]], kernel := '{kernel}')", msg)


def test_a_saturated_rbf_kernel_is_refused_and_a_sane_one_is_the_reference(con12, lakes):
    X, Y = pooled(lakes[12], "a", 1), pooled(lakes[12], "b", 2)
    with pytest.raises(InvalidValue, match="kernel 'rbf:0.001': at this bandwidth every kernel value .* is ~0"):
        C.cka(X, Y, kernel="rbf:0.001")
    with pytest.raises(InvalidValue, match=r"is ~1"):
        C.cka(X, Y, kernel="rbf:1e5")
    for sigma in (0.5, 1.0, 2.0):
        got = con12.sql(f"SELECT cka FROM cka_matrix('a', 'b', kernel := 'rbf:{sigma}', estimator := 'biased') "
                        "WHERE layer_a = 1 AND layer_b = 2").fetchone()[0]
        assert got == pytest.approx(ref_rbf_biased(X, Y, sigma), abs=TOL)


# -- band ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("band", ["-1", "0", "1.5", "'nan'::DOUBLE", "'inf'::DOUBLE", "NULL", "'x'"])
def test_bad_bands_are_refused(con12, band):
    shown = {"'nan'::DOUBLE": "nan", "'inf'::DOUBLE": "inf", "NULL": "NULL", "'x'": "x"}.get(band, band)
    sql_error(con12, f"SELECT * FROM cka_depth('a', 'b', band := {band})",
              rf"cka_depth: band must be a number in \(0, 1\] .*, got {shown}")


@pytest.mark.parametrize("band", [-1, 0, 1.5, float("nan"), float("inf"), None, True, "0.2"])
def test_bad_bands_are_refused_in_python(con12, band):
    with pytest.raises(InvalidValue, match=r"cka_depth: band must be a number in \(0, 1\]"):
        cka_depth(con12, "a", "b", band=band)


def test_a_good_band_gives_the_reference_diagonal_and_off_diagonal_mean(con12, lakes):
    depth = {r["layer_a"]: r for r in cka_depth(con12, "a", "b", estimator="biased", band=1.0).to_pylist()}
    # band 1: only the pairs a whole depth apart are off-diagonal (layer 0 of a with layer 3 of b)
    off = depth[0]
    assert off["n_off"] == 1 and off["band"] == 1.0
    assert off["off_mean"] == pytest.approx(ref_biased(pooled(lakes[12], "a", 0), pooled(lakes[12], "b", 3)), abs=TOL)
    assert depth[1]["off_mean"] is None
    for la, r in depth.items():
        assert r["diagonal"] == pytest.approx(
            ref_biased(pooled(lakes[12], "a", la), pooled(lakes[12], "b", r["layer_b"])), abs=TOL)


# -- every numeric argument, SQL and Python ----------------------------------------------------------
L2 = "(SELECT list(act ORDER BY prompt_id) FROM pooled WHERE model = 'a' AND layer = 1)"
L3 = "(SELECT list(act ORDER BY prompt_id) FROM pooled WHERE model = 'b' AND layer = 1)"
G2 = "(SELECT cka_gram(list(act ORDER BY prompt_id)) FROM pooled WHERE model = 'a' AND layer = 1)"
SQL_ARGUMENTS = [
    # (function, call with {v} for the value, argument, its domain as the message says it)
    ("cka_matrix", "SELECT * FROM cka_matrix('a', 'b', permutations := {v})", "permutations", ">= 0, a whole number"),
    ("cka_matrix", "SELECT * FROM cka_matrix('a', 'b', seed := {v})", "seed", ">= 0, a whole number"),
    ("cka_depth", "SELECT * FROM cka_depth('a', 'b', permutations := {v})", "permutations", ">= 0, a whole number"),
    ("cka_depth", "SELECT * FROM cka_depth('a', 'b', seed := {v})", "seed", ">= 0, a whole number"),
    ("cka_token_matrix", "SELECT * FROM cka_token_matrix('a', 'a', batch_size := {v})", "batch_size",
     ">= 4, a whole number"),
    ("cka_token_matrix", "SELECT * FROM cka_token_matrix('a', 'a', seed := {v})", "seed", ">= 0, a whole number"),
    ("cka_token_matrix", "SELECT * FROM cka_token_matrix('a', 'a', min_token_index := {v})", "min_token_index",
     ">= 0, a whole number"),
    ("mutual_knn_matrix", "SELECT * FROM mutual_knn_matrix('a', 'b', k := {v})", "k", ">= 1, a whole number"),
    ("kmeans", "SELECT * FROM kmeans('a', k := {v})", "k", ">= 1, a whole number"),
    ("kmeans", "SELECT * FROM kmeans('a', seed := {v})", "seed", ">= 0, a whole number"),
    ("kmeans", "SELECT * FROM kmeans('a', max_iter := {v})", "max_iter", ">= 1, a whole number"),
    ("minibatch_cka", f"SELECT minibatch_cka({L2}, {L3}, batch_size := {{v}})", "batch_size", ">= 4, a whole number"),
    ("minibatch_cka", f"SELECT minibatch_cka({L2}, {L3}, seed := {{v}})", "seed", ">= 0, a whole number"),
    ("cka_minibatch_gram", f"SELECT cka_minibatch_gram({L2}, batch_size := {{v}})", "batch_size",
     ">= 4, a whole number"),
    ("cka_minibatch_gram", f"SELECT cka_minibatch_gram({L2}, seed := {{v}})", "seed", ">= 0, a whole number"),
    ("cka_null", f"SELECT cka_null({G2}, {G2}, permutations := {{v}})", "permutations", ">= 0, a whole number"),
    ("cka_null", f"SELECT cka_null({G2}, {G2}, seed := {{v}})", "seed", ">= 0, a whole number"),
    ("mutual_knn", f"SELECT mutual_knn({L2}, {L3}, k := {{v}})", "k", ">= 1, a whole number"),
    ("knn_graph", f"SELECT knn_graph({L2}, k := {{v}})", "k", ">= 1, a whole number"),
    ("kmeans_labels", f"SELECT kmeans_labels({L2}, k := {{v}})", "k", ">= 1, a whole number"),
    ("kmeans_labels", f"SELECT kmeans_labels({L2}, seed := {{v}})", "seed", ">= 0, a whole number"),
    ("kmeans_labels", f"SELECT kmeans_labels({L2}, max_iter := {{v}})", "max_iter", ">= 1, a whole number"),
]
BAD_SQL_VALUES = ["-1", "2.5", "'nan'::DOUBLE", "'inf'::DOUBLE", "NULL", "1e12"]


@pytest.fixture(scope="module")
def feature_lake(tmp_path_factory):
    from toy_lakes import DOCS
    return write_toy_lake(tmp_path_factory.mktemp("features"), DOCS, models=(
        ToyModel("a", 4, 16, seed=1), ToyModel("b", 6, 24, seed=2)))


@pytest.mark.parametrize("fn,sql,arg,domain", SQL_ARGUMENTS, ids=[f"{f}-{a}" for f, _, a, _ in SQL_ARGUMENTS])
def test_every_numeric_sql_argument_is_checked(feature_lake, fn, sql, arg, domain):
    con = connect(feature_lake)
    for v in BAD_SQL_VALUES:        # 1e12: above INTEGER, which results store counts and seeds as
        sql_error(con, sql.format(v=v), f"{fn}: {arg} must be {domain}")


def test_fractional_permutations_were_silently_truncated_and_now_are_refused(con12):
    sql_error(con12, "SELECT * FROM cka_matrix('a', 'b', permutations := 2.5)",
              r"cka_matrix: permutations must be >= 0, a whole number, got 2.5")
    # a whole number runs exactly that many: p = (1 + #{null >= cka}) / (1 + N) is a multiple of 1/(1+N)
    for (p,) in con12.sql("SELECT p_value FROM cka_matrix('a', 'b', permutations := 3)").fetchall():
        assert p * 4 == pytest.approx(round(p * 4)) and 0.25 <= p <= 1


PY_CALLS = [
    ("cka_matrix", lambda con, v: cka_matrix(con, "a", "b", permutations=v), "permutations"),
    ("cka_matrix", lambda con, v: cka_matrix(con, "a", "b", seed=v), "seed"),
    ("cka_depth", lambda con, v: cka_depth(con, "a", "b", seed=v), "seed"),
    ("cka_token_matrix", lambda con, v: cka_token_matrix(con, "a", "a", batch_size=v), "batch_size"),
    ("cka_token_matrix", lambda con, v: cka_token_matrix(con, "a", "a", min_token_index=v), "min_token_index"),
    ("mutual_knn_matrix", lambda con, v: mutual_knn_matrix(con, "a", "b", k=v), "k"),
    ("kmeans", lambda con, v: kmeans(con, "a", k=v), "k"),
    ("kmeans", lambda con, v: kmeans(con, "a", max_iter=v), "max_iter"),
    ("kmeans", lambda con, v: kmeans(con, "a", layer=v), "layer"),
    ("kmeans", lambda con, v: cluster_features(con, "a", seed=v), "seed"),
    ("cka_all", lambda con, v: cka_all(LAKE_FOR_CKA_ALL[0], permutations=v, progress=False), "permutations"),
    ("cka_all", lambda con, v: cka_all(LAKE_FOR_CKA_ALL[0], seed=v, progress=False), "seed"),
    ("minibatch_cka", lambda con, v: minibatch_cka(np.eye(6), np.eye(6), batch_size=v), "batch_size"),
    ("minibatch_cka", lambda con, v: minibatch_cka(np.eye(6), np.eye(6), seed=v), "seed"),
    ("permutation_test", lambda con, v: permutation_test(np.eye(6), np.eye(6), permutations_count=v), "permutations"),
    ("permutation_test", lambda con, v: permutation_test(np.eye(6), np.eye(6), seed=v), "seed"),
]
LAKE_FOR_CKA_ALL: list = []


@pytest.mark.parametrize("fn,call,arg", PY_CALLS, ids=[f"{f}-{a}" for f, _, a in PY_CALLS])
@pytest.mark.parametrize("value", [-1, 2.5, float("nan"), float("inf"), None, True, "3"])
def test_every_numeric_python_argument_is_checked(feature_lake, fn, call, arg, value):
    if arg == "layer" and value is None:
        pytest.skip("layer=None means every layer")
    LAKE_FOR_CKA_ALL[:] = [feature_lake]
    con = connect(feature_lake)
    with pytest.raises(InvalidValue, match=f"{fn}: {arg} must be"):
        call(con, value)


def test_whole_floats_and_numpy_integers_are_accepted(con12):
    a = cka_matrix(con12, "a", "b", permutations=np.int64(5), seed=2.0)
    b = cka_matrix(con12, "a", "b", permutations=5, seed=2)
    assert a.equals(b) and set(a.column("permutations").to_pylist()) == {5}


# -- mutual k-NN: k = n-1 is 1 for any data ----------------------------------------------------------
def test_mutual_knn_with_k_n_minus_1_is_refused_and_k_n_minus_2_is_the_reference(con12, lakes):
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
    assert ref_mutual_knn(X, Y, 4) == 1.0          # why: every neighbourhood is all the other rows
    with pytest.raises(InvalidValue, match=r"k must be between 1 and n-2 = 3 .*got 4"):
        mutual_knn(X, Y, 4)
    sql_error(con12, "SELECT * FROM mutual_knn_matrix('a', 'b', k := 11)", "k must be between 1 and n-2 = 10")
    got = con12.sql("SELECT mutual_knn FROM mutual_knn_matrix('a', 'b', k := 10) "
                    "WHERE layer_a = 1 AND layer_b = 1").fetchone()[0]
    assert got == pytest.approx(ref_mutual_knn(pooled(lakes[12], "a", 1), pooled(lakes[12], "b", 1), 10), abs=TOL)
