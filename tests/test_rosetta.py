"""Rosetta maps (vindex.query.rosetta, query/linear_maps.py, the `maps` table, vindex.maps): every number
against an independent implementation (scikit-learn's RidgeCV, cross_val_predict and r2_score, scipy's
orthogonal_procrustes, sklearn's CCA, numpy least squares), planted maps recovered, shuffled rows at
their null, bad input refused with named errors, and the stored maps read back and applied."""
from __future__ import annotations

import duckdb
import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from sklearn.cross_decomposition import CCA
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import cross_val_predict

import vindex
from toy_lakes import DOCS, write_toy_lake
from vindex.errors import InvalidValue, NotFound, VindexError
from vindex.maps import apply_map, map_direction, read_map
from vindex.query import connect, rosetta
from vindex.query import linear_maps as lm
from vindex.query.cka import cka


def planted(n, d_a, d_b, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d_a)) * rng.uniform(0.5, 3, d_a)
    W = rng.standard_normal((d_a, d_b))
    return X, X @ W + 2.0 + noise * rng.standard_normal((n, d_b)), W


def splits(n, folds, seed=0):
    tests = lm.fold_tests(n, folds, seed)
    return [(np.setdiff1d(np.arange(n), te), te) for te in tests]


# -- ridge against scikit-learn -----------------------------------------------------------------
@pytest.mark.parametrize("n, d_a, d_b", [(60, 8, 12), (30, 50, 40)])   # primal (d < n) and dual (d > n)
def test_ridge_matches_sklearn_ridgecv_fold_by_fold(n, d_a, d_b):
    X, Y, _ = planted(n, d_a, d_b, noise=3.0)
    f = lm.fit(X, Y, "ridge")
    assert f.bx.dual == (d_a > n)
    sk = RidgeCV(alphas=lm.ridge_lambdas(lm.basis(X))).fit(X, Y)      # exact leave-one-out, one alpha for all outputs
    W, b = f.matrix()
    assert f.lam == pytest.approx(sk.alpha_)
    assert np.allclose(W, sk.coef_.T, atol=1e-9) and np.allclose(b, sk.intercept_, atol=1e-9)
    # held-out: each fold's own RidgeCV (its own grid, scaled by the fold's rows), then variance-weighted R^2
    pred = np.empty_like(Y)
    for tr, te in splits(n, 5):
        pred[te] = RidgeCV(alphas=lm.ridge_lambdas(lm.basis(X[tr]))).fit(X[tr], Y[tr]).predict(X[te])
    r2, c = lm.held_out(X, Y, "ridge", lm.fold_tests(n, 5, 0), 0)
    assert r2 == pytest.approx(r2_score(Y, pred, multioutput="variance_weighted"), abs=1e-9)
    assert c == pytest.approx(cka(pred, Y), abs=1e-9)


def test_held_out_r2_is_sklearn_cross_val_predict_with_fixed_lambda():
    from sklearn.linear_model import Ridge
    X, Y, _ = planted(40, 6, 9, noise=1.0, seed=3)
    lam = float(lm.LAMBDAS[0] * (lm.basis(X).s ** 2).sum() / 40)
    lm_grid = lm.LAMBDAS
    try:
        lm.LAMBDAS = np.array([lam]) / ((lm.basis(X).s ** 2).sum() / 40)   # a one-value grid on the full rows
        pred = cross_val_predict(Ridge(alpha=lam), X, Y, cv=splits(40, 4, 7))
        ours = np.empty_like(Y)
        for tr, te in splits(40, 4, 7):
            b = lm.basis(X[tr])
            scale = (b.s ** 2).sum() / len(tr)
            lm.LAMBDAS = np.array([lam / scale])
            ours[te] = lm.fit(X[tr], Y[tr], "ridge").predict(X[te])
    finally:
        lm.LAMBDAS = lm_grid
    assert np.allclose(ours, pred, atol=1e-9)


# -- procrustes against scipy -------------------------------------------------------------------
@pytest.mark.parametrize("d_a, d_b", [(5, 8), (8, 5), (6, 6)])
def test_procrustes_matches_scipy_on_zero_padded_sides(d_a, d_b):
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((80, d_a)), rng.standard_normal((80, d_b)) + 1.0
    f = lm.fit(X, Y, "procrustes")
    W, b = f.matrix()
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    d = max(d_a, d_b)
    Q, _ = orthogonal_procrustes(np.pad(Xc, ((0, 0), (0, d - d_a))), np.pad(Yc, ((0, 0), (0, d - d_b))))
    scale = np.linalg.svd(Xc.T @ Yc, compute_uv=False).sum() / (Xc ** 2).sum()
    assert f.scale == pytest.approx(scale)
    assert np.allclose(W, scale * Q[:d_a, :d_b], atol=1e-9)
    assert np.allclose(b, Y.mean(0) - X.mean(0) @ W)
    Qn = W / scale       # the corner of an orthogonal map: orthonormal rows or columns
    assert np.allclose(Qn @ Qn.T if d_a <= d_b else Qn.T @ Qn, np.eye(min(d_a, d_b)), atol=1e-9)


def test_procrustes_recovers_a_planted_rotation_and_scale():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((50, 6))
    R, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    d = lm.rosetta_direction(X, 3.0 * X @ R + 1.0, "procrustes", 5, permutations=19)
    assert d.r2 > 0.999999 and d.fitted.scale == pytest.approx(3.0)
    assert np.allclose(d.fitted.matrix()[0], 3.0 * R, atol=1e-9)
    assert d.r2_null["null_p95"] < 0.1 and d.r2_null["p_value"] == pytest.approx(1 / 20)


# -- cca against sklearn and numpy --------------------------------------------------------------
def test_cca_pairs_match_sklearn_and_the_prediction_is_least_squares_on_the_variates():
    rng = np.random.default_rng(4)
    n, k = 200, 3
    Z = rng.standard_normal((n, k))
    X = np.hstack([Z, rng.standard_normal((n, 1))]) @ rng.standard_normal((4, 4))   # k = 4: both sides whole
    Y = np.hstack([Z + 0.5 * rng.standard_normal((n, k)), rng.standard_normal((n, 1))]) @ rng.standard_normal((4, 4))
    bx, by = lm.basis(X), lm.basis(Y)
    P, rho, G = lm.cca_scores_map(bx, by, by.Xc, 4)
    sk = CCA(n_components=3, scale=False, max_iter=5000, tol=1e-12).fit(X, Y)
    xs, ys = sk.transform(X, Y)
    sk_rho = [abs(np.corrcoef(xs[:, j], ys[:, j])[0, 1]) for j in range(3)]
    assert np.allclose(rho[:3], sk_rho, atol=1e-6)
    # through c pairs: Y_c projected on the span of the c Y canonical variates, predicted from X's
    c = 2
    left = np.zeros((bx.s.size, c))
    left[:4] = (P[:, :c] * rho[:c]) / bx.s[:4, None]
    f = lm.Fitted("cca", bx, left, G[:c], Y.mean(0), rank=c)
    u = bx.U[:, :4] @ P[:, :c]                               # X canonical variates (unit norm)
    Qv = by.U[:, :4] @ np.linalg.svd(bx.U[:, :4].T @ by.U[:, :4])[2].T[:, :c]   # Y canonical variates
    coef = np.linalg.lstsq(Qv, by.Xc, rcond=None)[0]          # regress Y_c on its variates
    want = Y.mean(0) + (u * rho[:c]) @ coef                   # each variate predicted as rho * its X partner
    assert np.allclose(f.predict(X), want, atol=1e-9)


# -- planted maps, shuffled rows ----------------------------------------------------------------
@pytest.mark.parametrize("method", ["ridge", "cca"])
def test_a_planted_linear_map_is_recovered_and_its_null_is_near_zero(method):
    X, Y, W = planted(80, 6, 9)
    d = lm.rosetta_direction(X, Y, method, 5, permutations=19)
    assert d.r2 > 0.999 and d.cka > 0.999
    assert d.r2_null["null_mean"] < 0.05 and d.r2_null["null_p95"] < 0.1
    assert d.r2_null["p_value"] == pytest.approx(1 / 20) and d.cka_null["p_value"] == pytest.approx(1 / 20)
    if method == "ridge":
        assert np.allclose(d.fitted.matrix()[0], W, atol=1e-2)


@pytest.mark.parametrize("method", lm.METHODS)
def test_shuffled_rows_give_r2_at_or_below_zero(method):
    X, Y, _ = planted(60, 5, 7)
    Y = Y[np.random.default_rng(9).permutation(60)]
    d = lm.rosetta_direction(X, Y, method, 5, permutations=9)
    assert d.r2 < 0.05
    assert d.r2_null["p_value"] > 0.05


# -- bad input ----------------------------------------------------------------------------------
def test_bad_input_is_refused_with_named_errors():
    X, Y, _ = planted(9, 3, 3)
    with pytest.raises(InvalidValue, match=r"9 prompts are fewer than folds x 2 = 10"):
        lm.rosetta_direction(X, Y, "ridge", 5)
    with pytest.raises(InvalidValue, match="unknown method 'lasso'"):
        lm.rosetta_direction(X, Y, "lasso", 2)
    with pytest.raises(InvalidValue, match="same prompts in the same order: 9 and 8 rows"):
        lm.rosetta_direction(X, Y[:8], "ridge", 2)
    with pytest.raises(InvalidValue, match="row 0 holds NaN"):
        lm.rosetta_direction(np.full((10, 3), np.nan), Y[:1].repeat(10, 0), "ridge", 2)


# -- SQL, the Python mirror, the maps table -----------------------------------------------------
@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("rosetta")
    write_toy_lake(root, DOCS)
    write_toy_lake(root, DOCS, models=(DOCS.models[1].__class__("toy-short", 3, 8, seed=5),), n_prompts=31)
    return root


def rows_of(con, model, layer):
    return np.array(con.sql(f"""SELECT act FROM "{model}".pooled WHERE layer = {layer} AND pooling = 'mean_nosink'
                                ORDER BY prompt_set, prompt_id""").fetchnumpy()["act"].tolist(), np.float64)


def test_sql_pairs_layers_at_matched_depth_and_fits_both_ways_as_numpy_does(lake):
    con = connect(lake)
    t = con.sql("SELECT * FROM rosetta('toy-a', 'toy-b', permutations := 9, method := 'ridge')").arrow()
    if hasattr(t, "read_all"):
        t = t.read_all()
    rows = t.to_pylist()
    # cka_depth's rule: each layer of toy-a (4 blocks) with toy-b's (6 blocks) at the nearest depth, ties low
    matched = [(la, min(range(7), key=lambda lb: (round(abs(la / 4 - lb / 6), 9), lb))) for la in range(5)]
    assert [(r["model_a"], r["layer_a"], r["layer_b"]) for r in rows[:5]] == [("toy-a", a, b) for a, b in matched]
    assert [(r["model_a"], r["layer_b"], r["layer_a"]) for r in rows[5:]] == [("toy-b", a, b) for a, b in matched]
    for r in rows:
        X, Y = rows_of(con, r["model_a"], r["layer_a"]), rows_of(con, r["model_b"], r["layer_b"])
        d = lm.rosetta_direction(X, Y, "ridge", 5, 9, 0)
        assert r["r2"] == pytest.approx(d.r2, abs=1e-9) and r["cka"] == pytest.approx(d.cka, abs=1e-9)
        assert r["r2_p_value"] == pytest.approx(d.r2_null["p_value"]) and r["ridge_lambda"] == pytest.approx(d.fitted.lam)
        assert r["n"] == 32 and r["dual"] is False and "shuffled" in r["null_method"]
    assert con.sql("SELECT count(*) FROM rosetta('toy-a', 'toy-b', pairs := 'all')").fetchone()[0] == 2 * 5 * 7


def test_sql_bad_input(lake):
    con = connect(lake)
    with pytest.raises(duckdb.Error, match=r"32 prompts are fewer than folds x 2 = 40"):
        con.sql("SELECT * FROM rosetta('toy-a', 'toy-b', folds := 20)").fetchall()
    with pytest.raises(duckdb.Error, match=r"rosetta: folds must be >= 2"):
        con.sql("SELECT * FROM rosetta('toy-a', 'toy-b', folds := 1)").fetchall()
    with pytest.raises(duckdb.Error, match=r"rosetta: unknown method 'lasso'; expected one of ridge, procrustes, cca"):
        con.sql("SELECT * FROM rosetta('toy-a', 'toy-b', method := 'lasso')").fetchall()
    with pytest.raises(duckdb.Error, match=r"rosetta: unknown pairs 'some'"):
        con.sql("SELECT * FROM rosetta('toy-a', 'toy-b', pairs := 'some')").fetchall()
    with pytest.raises(duckdb.Error, match=r"rosetta: unknown model 'nope'"):
        con.sql("SELECT * FROM rosetta('toy-a', 'nope')").fetchall()


def test_mismatched_prompt_sets_give_the_cka_error(lake):
    # the words of cka_matrix's refusal (macros.pair_value, which rosetta shares), naming rosetta
    con = connect(lake)
    with pytest.raises(duckdb.Error, match=r"rosetta: layer \d of toy-a and layer \d of toy-short hold different prompts "
                                           r"\(32 vs 31 rows\); CKA needs the same rows on both sides"):
        con.sql("SELECT * FROM rosetta('toy-a', 'toy-short')").fetchall()
    with pytest.raises(VindexError, match=r"hold different prompts \(32 vs 31 rows\)"):
        rosetta(con, "toy-a", "toy-short")


def test_dual_form_is_stated_when_the_width_exceeds_the_rows(tmp_path):
    root = write_toy_lake(tmp_path, DOCS, n_prompts=12)      # d 16 and 24 > 12 prompts
    t = rosetta(connect(root), "toy-a", "toy-b", folds=3)
    assert set(t.column("dual").to_pylist()) == {True}


def test_store_writes_the_maps_table_that_reads_back_and_applies(tmp_path):
    root = write_toy_lake(tmp_path, DOCS)
    t = rosetta(root, "toy-a", "toy-b", method="procrustes", store=True)
    assert "matrix" not in t.column_names
    rosetta(root, "toy-a", "toy-b", method="procrustes", store=True)          # a rerun replaces its shard
    con = connect(root)
    assert con.sql("SELECT model, model_a, method, count(*) FROM maps GROUP BY ALL ORDER BY 1").fetchall() == [
        ("toy-a", "toy-b", "procrustes", 5 * (24 + 1)), ("toy-b", "toy-a", "procrustes", 5 * (16 + 1))]
    assert vindex.verify(root / "toy-b") == [] and vindex.verify(root / "toy-a") == []
    X, Y = rows_of(con, "toy-a", 2), rows_of(con, "toy-b", 3)
    m = read_map(root / "toy-b", "toy-a", 2, method="procrustes")
    f = lm.fit(X, Y, "procrustes")
    W, b = f.matrix()
    assert np.allclose(m.W, W, rtol=1e-6, atol=1e-6) and np.allclose(m.b, b, rtol=1e-6, atol=1e-5)
    assert np.allclose(apply_map(m, X), f.predict(X), atol=1e-4)
    v = X[0] - X[1]
    assert np.allclose(map_direction(m, v), f.predict(X[:1]) - f.predict(X[1:2]), atol=1e-4)
    assert m.info["r2"] == pytest.approx(t.column("r2")[2].as_py())   # row 2: toy-a layer 2 -> toy-b layer 3
    with pytest.raises(InvalidValue, match="takes vectors of width 16"):
        apply_map(m, Y)
    with pytest.raises(NotFound, match="no ridge map"):
        read_map(root / "toy-b", "toy-a", 2)
