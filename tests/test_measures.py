"""Measures beyond CKA (vindex.query.measures, the SQL of measure_sql): every value against an
independent implementation (repsim for SVCCA and PWCCA, scipy for Procrustes and RSA, a literal
torch transcription of Huh et al.'s code for CKNNA), the permutation null against recomputing on
shuffled data, and the bad input of the issue (n <= d, mismatched prompts, wrong widths, NaN)."""
from __future__ import annotations

import warnings

import duckdb
import numpy as np
import pytest
import repsim
import torch
from scipy.linalg import orthogonal_procrustes, subspace_angles
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from toy_lakes import DOCS, write_toy_lake
from vindex.defaults import DEFAULT_POOLING
from vindex.errors import InvalidValue, MeasureWarning, VindexError
from vindex.query import cka_depth, connect, measure_depth
from vindex.query import measures

TOL = 1e-9


def pair(n=60, dx=5, dy=7, shared=3, seed=0):
    """Row-aligned X (n, dx), Y (n, dy) sharing a `shared`-dimensional signal."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dx)) * np.linspace(3, 0.5, dx)
    Y = X[:, :shared] @ rng.standard_normal((shared, dy)) + rng.standard_normal((n, dy))
    return X, Y


# -- each measure against its reference ---------------------------------------------------------
def test_procrustes_and_shape_metric_match_scipy_orthogonal_procrustes():
    X, Y = pair()
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Xt = np.hstack([Xc / np.linalg.norm(Xc), np.zeros((len(X), 2))])   # zero-padded to Y's width
    Yt = Yc / np.linalg.norm(Yc)
    R, nuclear = orthogonal_procrustes(Yt, Xt)
    assert abs(measures.procrustes(X, Y) - np.linalg.norm(Xt - Yt @ R)) < TOL
    assert abs(measures.shape_metric(X, Y) - np.arccos(nuclear)) < TOL
    Q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((5, 5)))
    assert measures.procrustes(X, 3 * X @ Q + 1) < 1e-6           # same shape: rotation, scale, shift
    assert measures.shape_metric(X, Y) == pytest.approx(measures.shape_metric(Y, X), abs=TOL)  # a metric: symmetric


def canonical_correlations(X, Y):
    """cos of the principal angles between the centred column spaces (scipy): the canonical correlations."""
    return np.sort(np.cos(subspace_angles(X - X.mean(0), Y - Y.mean(0))))[::-1]


def test_svcca_matches_repsim_and_principal_angles():
    X, Y = pair()
    # repsim's 'pillai' summary is the mean canonical correlation (Raghu et al.'s SVCCA summary)
    assert abs(measures.svcca(X, Y, variance=1.0) - repsim.cca([X, Y], "pillai")[0, 1]) < TOL
    assert abs(measures.svcca(X, Y, variance=1.0) - canonical_correlations(X, Y).mean()) < TOL
    # with the truncation biting (repsim's svcca keeps every direction of full-rank data, so the kept
    # subspaces are checked with scipy): the fewest directions explaining 99% of each side's variance
    rng = np.random.default_rng(2)
    Xs = rng.standard_normal((80, 12)) * np.geomspace(10, 0.01, 12)
    Ys = Xs[:, :4] @ rng.standard_normal((4, 9)) + 0.05 * rng.standard_normal((80, 9)) * np.geomspace(5, 0.1, 9)
    U, s = {}, {}
    for name, A in (("x", Xs), ("y", Ys)):
        U[name], s[name], _ = np.linalg.svd(A - A.mean(0), full_matrices=False)
    r = {name: int(np.argmax(np.cumsum(s[name] ** 2) / np.sum(s[name] ** 2) >= 0.99)) + 1 for name in U}
    assert (r["x"], r["y"]) == (4, 3)                               # some directions were dropped
    want = np.cos(subspace_angles(U["x"][:, :r["x"]], U["y"][:, :r["y"]])).mean()
    assert abs(measures.svcca(Xs, Ys) - want) < TOL
    res = measures.measure_test(Xs, Ys, "svcca", 0)
    assert (res["dims_a"], res["dims_b"], res["note"]) == (4, 3, None)
    # dims: the top-r principal subspaces
    want = np.cos(subspace_angles(U["x"][:, :3], U["y"][:, :3])).mean()
    assert abs(measures.svcca(Xs, Ys, dims=3) - want) < TOL


def test_pwcca_matches_repsim():
    for seed in (0, 3):
        X, Y = pair(seed=seed)
        assert abs(measures.pwcca(X, Y, variance=1.0) - repsim.pwcca([X, Y])[0, 1]) < TOL
        assert abs(measures.pwcca(Y, X, variance=1.0) - repsim.pwcca([X, Y])[0, 1]) < TOL   # symmetric
    X, Y = pair()
    Q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((5, 5)))
    # weights follow the neurons: a rotation of X's neurons changes PWCCA (it does not change SVCCA)
    assert abs(measures.pwcca(X @ Q, Y, variance=1.0) - repsim.pwcca([X @ Q, Y])[0, 1]) < TOL
    assert abs(measures.svcca(X @ Q, Y, variance=1.0) - measures.svcca(X, Y, variance=1.0)) < TOL


def test_rsa_is_spearman_of_correlation_distance_rdms():
    X, Y = pair(n=30)
    want = spearmanr(pdist(X, "correlation"), pdist(Y, "correlation")).statistic
    assert abs(measures.rsa(X, Y) - want) < TOL
    ties = X.copy()
    ties[10:20] = ties[:10]                                           # repeated rows tie distances: average ranks
    rdm = np.round(pdist(ties, "correlation"), 12)                   # pdist's float noise, rounded as rsa rounds
    assert len(np.unique(rdm)) < len(rdm)
    assert abs(measures.rsa(ties, Y) - spearmanr(rdm, pdist(Y, "correlation")).statistic) < TOL


def cknna_reference(feats_A, feats_B, topk):
    """Huh et al. 2024's `cknna` (platonic-rep metrics.py, unbiased=True), transcribed line by line in torch."""
    A = torch.nn.functional.normalize(torch.tensor(feats_A), dim=-1)
    B = torch.nn.functional.normalize(torch.tensor(feats_B), dim=-1)
    n = A.shape[0]
    K, L = A @ A.T, B @ B.T

    def hsic_unbiased(K, L):
        m = K.shape[0]
        K_tilde, L_tilde = K.clone().fill_diagonal_(0), L.clone().fill_diagonal_(0)
        value = (torch.sum(K_tilde * L_tilde.T) + torch.sum(K_tilde) * torch.sum(L_tilde) / ((m - 1) * (m - 2))
                 - 2 * torch.sum(torch.mm(K_tilde, L_tilde)) / (m - 2))
        return value / (m * (m - 3))

    def similarity(K, L):
        K_hat, L_hat = K.clone().fill_diagonal_(float("-inf")), L.clone().fill_diagonal_(float("-inf"))
        _, ik = torch.topk(K_hat, topk, dim=1)
        _, il = torch.topk(L_hat, topk, dim=1)
        mask = torch.zeros(n, n, dtype=K.dtype).scatter_(1, ik, 1) * torch.zeros(n, n, dtype=K.dtype).scatter_(1, il, 1)
        return hsic_unbiased(mask * K, mask * L)

    return (similarity(K, L) / torch.sqrt(similarity(K, K) * similarity(L, L))).item()


def test_cknna_matches_the_authors_code():
    for k in (2, 5, 10):
        X, Y = pair(n=40, dx=8, dy=6, seed=k)
        assert abs(measures.cknna(X, Y, k=k) - cknna_reference(X, Y, k)) < TOL
    X, _ = pair(n=40)
    assert abs(measures.cknna(X, X, k=5) - 1) < TOL


# -- the null -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", measures.MEASURES)
def test_the_null_is_the_measure_on_shuffled_rows(name):
    """pair_value on a summary with permuted rows = the measure recomputed on Y with its rows shuffled."""
    X, Y = pair(n=40, dx=6, dy=5)
    opts = measures.options(name, k=5)
    res = measures.measure_test(X, Y, name, 20, seed=3, k=5)
    rng = np.random.default_rng(3)
    perms = np.stack([rng.permutation(40) for _ in range(20)])
    null = np.array([measures.measure(X, Y[p], name, k=5) for p in perms])
    sa, sb, n = measures.summaries(X, Y, opts)
    assert np.allclose(measures.pair_test(sa, sb, n, opts, 20, 3).null, null, atol=1e-9)
    alike = null <= res["value"] + 1e-12 if name in measures.DISTANCES else null >= res["value"] - 1e-12
    assert res["p_value"] == pytest.approx((1 + alike.sum()) / 21)
    assert res["null_mean"] == pytest.approx(null.mean()) and res["null_p95"] == pytest.approx(np.percentile(null, 95))
    assert res["p_value"] == pytest.approx(1 / 21)                   # a shared signal beats every shuffle


# -- bad input ----------------------------------------------------------------------------------
def test_svcca_truncation_when_n_is_not_above_d_is_stated():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((30, 50)), rng.standard_normal((30, 40))
    with pytest.warns(MeasureWarning, match=r"capped at \(n-1\)//2 = 14 for n = 30 rows"):
        res = measures.measure_test(X, Y, "svcca", 10)
    assert (res["dims_a"], res["dims_b"]) == (14, 14) and "r_a + r_b <= n - 1" in res["note"]
    with pytest.warns(MeasureWarning):
        measures.pwcca(X, Y)
    with pytest.raises(InvalidValue, match="dims = 20 needs n > 2 dims = 40 rows, got n = 30"):
        measures.svcca(X, Y, dims=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert measures.measure_test(X, Y, "svcca", 0, dims=5)["dims_a"] == 5   # under the cap: nothing to say


def test_bad_arrays_are_refused_naming_the_problem():
    X, Y = pair()
    with pytest.raises(InvalidValue, match="row-aligned inputs: the lists have 60 and 59 rows"):
        measures.rsa(X, Y[:-1])
    bad = X.copy()
    bad[7, 2] = np.nan
    with pytest.raises(InvalidValue, match="row 7 holds NaN or inf"):
        measures.svcca(bad, Y)
    with pytest.raises(InvalidValue, match="unknown measure 'cca'"):
        measures.measure(X, Y, "cca")
    with pytest.raises(InvalidValue, match="k must be between 2 and n-2"):
        measures.cknna(X, Y, k=1)
    with pytest.raises(InvalidValue, match="variance must be a number in"):
        measures.svcca(X, Y, variance=0)


# -- SQL ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def con(tmp_path_factory):
    root = tmp_path_factory.mktemp("measures")
    write_toy_lake(root, DOCS)
    # a third model holding one prompt fewer under the same prompt set: other rows, same set name
    write_toy_lake(root, DOCS, models=(DOCS.models[1].__class__("toy-short", 3, 8, seed=5),), n_prompts=31)
    return connect(root)


def layer(con, model, layer_):
    rows = con.execute("SELECT act FROM pooled WHERE model = ? AND layer = ? AND pooling = ? "
                       "ORDER BY prompt_set, prompt_id", [model, layer_, DEFAULT_POOLING]).fetchall()
    return np.array([r[0] for r in rows], dtype=np.float64)


@pytest.mark.parametrize("name", measures.MEASURES)
def test_measure_depth_is_the_measure_at_matched_depth(con, name):
    t = measure_depth(con, "toy-a", "toy-b", measure=name, permutations=9, k=5).to_pylist()
    depth = con.sql("SELECT layer_a, layer_b FROM cka_depth('toy-a', 'toy-b') ORDER BY layer_a").fetchall()
    assert [(r["layer_a"], r["layer_b"]) for r in t] == depth      # cka_depth's matched pairs
    for r in t:
        X, Y = layer(con, "toy-a", r["layer_a"]), layer(con, "toy-b", r["layer_b"])
        want = measures.measure_test(X, Y, name, 9, 0, k=5)
        for key in ("value", "null_mean", "null_p95", "p_value"):
            assert r[key] == pytest.approx(want[key], abs=1e-9), (name, r["layer_a"], key)
        assert (r["dims_a"], r["dims_b"], r["note"]) == (want["dims_a"], want["dims_b"], want["note"])
        assert r["measure"] == name and r["n"] == 32 and r["permutations"] == 9


def test_scalar_functions_match_the_library(con):
    X, Y = layer(con, "toy-a", 4), layer(con, "toy-b", 6)
    got = con.sql("""
        SELECT procrustes(la, lb), shape_metric(la, lb), svcca(la, lb), pwcca(la, lb, dims := 5), rsa(la, lb),
               cknna(la, lb, k := 5), measure_test(la, lb, measure := 'rsa', permutations := 19)
        FROM (SELECT list(a.act ORDER BY prompt_id) AS la, list(b.act ORDER BY prompt_id) AS lb
              FROM pooled a JOIN pooled b USING (prompt_set, prompt_id, pooling)
              WHERE a.model = 'toy-a' AND a.layer = 4 AND b.model = 'toy-b' AND b.layer = 6)""").fetchone()
    want = [measures.procrustes(X, Y), measures.shape_metric(X, Y), measures.svcca(X, Y), measures.pwcca(X, Y, dims=5),
            measures.rsa(X, Y), measures.cknna(X, Y, k=5)]
    assert np.allclose(got[:6], want, atol=1e-9)
    test = measures.measure_test(X, Y, "rsa", 19)
    assert got[6]["value"] == pytest.approx(test["value"]) and got[6]["p_value"] == pytest.approx(test["p_value"])


def test_mismatched_prompts_give_the_cka_error(con):
    with pytest.raises(duckdb.Error) as cka_error:
        con.sql("SELECT * FROM cka_depth('toy-a', 'toy-short')").fetchall()
    with pytest.raises(duckdb.Error) as measure_error:
        con.sql("SELECT * FROM measure_depth('toy-a', 'toy-short', measure := 'rsa')").fetchall()
    said = str(cka_error.value).split("hold different prompts")[1].split("\n")[0]   # DuckDB may append the UDF's stack
    assert said.startswith(" (32 vs 31 rows)")
    assert "measure_depth: layer" in str(measure_error.value)        # the same words, naming measure_depth
    assert str(measure_error.value).split("hold different prompts")[1].split("\n")[0] == said
    with pytest.raises(VindexError) as python_cka:
        cka_depth(con, "toy-a", "toy-short")
    with pytest.raises(VindexError) as python_measure:                # the Python mirrors: one class, too
        measure_depth(con, "toy-a", "toy-short", measure="svcca")
    assert type(python_measure.value) is type(python_cka.value)
    assert "hold different prompts (32 vs 31 rows)" in str(python_measure.value)


def test_sql_bad_input(con):
    cases = [
        ("SELECT * FROM measure_depth('toy-a', 'toy-b', measure := 'cka')", "measure_depth: unknown measure 'cka'"),
        ("SELECT * FROM measure_depth('toy-a', 'toy-b', dims := 0)", "measure_depth: dims must be >= 1"),
        ("SELECT * FROM measure_depth('toy-a', 'toy-b', measure := 'svcca', dims := 16)",
         "dims = 16 needs n > 2 dims = 32 rows"),
        ("SELECT * FROM measure_depth('toy-a', 'nope')", "unknown model 'nope'"),
        # two models' vectors in one list: wrong widths
        ("SELECT rsa(list(act), list(act)) FROM pooled WHERE layer = 1 AND model IN ('toy-a', 'toy-b')",
         "vectors of different widths in one list"),
        ("SELECT svcca([[1.0, 2.0], [3.0, 'nan'::DOUBLE], [1.0, 0.0], [2.0, 2.0]], "
         "[[1.0, 2.0], [3.0, 1.0], [1.0, 0.0], [0.0, 1.0]])", "row 1 holds NaN or inf"),
    ]
    for sql, says in cases:
        with pytest.raises(duckdb.Error, match=says.replace("(", r"\(").replace(")", r"\)")):
            con.sql(sql).fetchall()


# -- the study's agreement table ------------------------------------------------------------------
def test_measure_agreement_is_spearman_across_measures():
    import pyarrow as pa

    from vindex.study.analyses import measure_agreement
    rng = np.random.default_rng(0)
    layers = list(range(8))
    profile = {"svcca": rng.random(8), "procrustes": rng.random(8)}
    rows = [{"model_a": "a", "model_b": "b", "pooling": "mean", "measure": m, "layer_a": l, "value": float(v[l])}
            for m, v in profile.items() for l in layers]
    diag = [{"model_a": "a", "model_b": "b", "pooling": "mean", "estimator": "debiased", "layer_a": l,
             "diagonal": float(profile["svcca"][l] + 0.1 * rng.random())} for l in layers]
    t = {(r["measure_1"], r["measure_2"]): r for r in
         measure_agreement(pa.Table.from_pylist(rows), pa.Table.from_pylist(diag), "debiased", 199).to_pylist()}
    assert set(t) == {("cka", "procrustes"), ("cka", "svcca"), ("procrustes", "svcca")}
    # a distance is negated: agreement means the same ranking of layers
    want = spearmanr(-profile["procrustes"], profile["svcca"]).statistic
    assert t[("procrustes", "svcca")]["spearman_rho"] == pytest.approx(want)
    assert t[("cka", "svcca")]["spearman_rho"] == pytest.approx(
        spearmanr([d["diagonal"] for d in diag], profile["svcca"]).statistic)
    assert 1 / 200 <= t[("procrustes", "svcca")]["p_value"] <= 1
