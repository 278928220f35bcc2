"""cka_influence: the leave-one-out CKA of every prompt, from the Grams, against a brute-force
jackknife (CKA recomputed n times with numpy, and with repsim's unbiased HSIC); the SQL function
against the same over the rows read back with pyarrow; the category summary and its null; bad input."""
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from vindex import Vindex
from vindex.cli import main
from vindex.errors import InvalidValue, VindexError
from vindex.query import cka_influence, cka_influence_summary, connect
from vindex.query import cka as C
from vindex.query.influence import group_influence, loo_cka

from influence_lakes import CATEGORIES, N, write_model

TOL = 1e-10


def brute_force(X, Y, estimator):
    """CKA with each row left out, recomputed from scratch: the Gram formula (tr of centred Grams,
    or the unbiased HSIC of Song et al. written out in cka.hsic_unbiased)."""
    out = []
    for i in range(len(X)):
        Xi, Yi = np.delete(X, i, 0), np.delete(Y, i, 0)
        K, L = Xi @ Xi.T, Yi @ Yi.T
        h = C.hsic_biased if estimator == "biased" else C.hsic_unbiased
        out.append(h(K, L) / np.sqrt(h(K, K) * h(L, L)))
    return np.array(out)


@pytest.mark.parametrize("estimator", ["biased", "debiased"])
@pytest.mark.parametrize("n, dx, dy, shift", [(12, 5, 7, 0.0), (40, 3, 4, 30.0), (9, 20, 30, 0.0), (64, 48, 80, 1e3)])
def test_fast_jackknife_equals_brute_force(estimator, n, dx, dy, shift):
    rng = np.random.default_rng(n + dx)
    Z = rng.standard_normal((n, 3))
    X = Z @ rng.standard_normal((3, dx)) + rng.standard_normal((n, dx)) + shift
    Y = Z @ rng.standard_normal((3, dy)) + 0.5 * rng.standard_normal((n, dy)) - shift
    res = loo_cka(X, Y, estimator)
    assert abs(res.cka - C.cka(X, Y, estimator)) < TOL
    ref = brute_force(X - X.mean(0), Y - Y.mean(0), estimator)
    assert np.abs(res.cka_without - ref).max() < TOL
    # the jackknife standard error, written out (Efron & Stein 1981)
    assert abs(res.se - np.sqrt((n - 1) / n * ((ref - ref.mean()) ** 2).sum())) < TOL
    assert np.allclose(res.influence, res.cka - ref, atol=TOL)


def test_jackknife_matches_repsim():
    """The leave-one-out CKAs against repsim's CKA (Gretton's biased HSIC) and its unbiased HSIC
    (Song et al.), recomputed on each subset."""
    repsim = pytest.importorskip("repsim")
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((15, 6)), rng.standard_normal((15, 4))
    X[:, 0] += 2 * Y[:, 0]
    biased, debiased = loo_cka(X, Y, "biased"), loo_cka(X, Y, "debiased")
    for i in (0, 7, 14):
        Xi, Yi = np.delete(X, i, 0), np.delete(Y, i, 0)
        assert abs(biased.cka_without[i] - repsim.cka([Xi, Yi], "linear", "gretton")[0, 1]) < TOL
        h = repsim.hsic([Xi, Yi], "linear", "song")
        assert abs(debiased.cka_without[i] - h[0, 1] / np.sqrt(h[0, 0] * h[1, 1])) < TOL


def test_an_outlier_prompt_pulls_cka_down():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((30, 2))
    X, Y = Z @ rng.standard_normal((2, 8)), Z @ rng.standard_normal((2, 9))
    X[4] += 25 * rng.standard_normal(8)   # a prompt model A places far away, model B does not
    res = loo_cka(X, Y)
    assert int(np.argmin(res.influence)) == 4 and res.influence[4] < -0.1


def test_too_few_rows_and_mismatched_rows():
    with pytest.raises(InvalidValue, match="needs n >= 5 rows"):
        loo_cka(np.eye(4, 3), np.eye(4, 2), "debiased")
    with pytest.raises(InvalidValue, match="row-aligned"):
        loo_cka(np.eye(5, 3), np.eye(6, 2))


# -- the category summary and its null ------------------------------------------------------------
def test_group_means_and_label_permutation_null():
    rng = np.random.default_rng(1)
    labels = np.array([CATEGORIES[i % 4] for i in range(80)], dtype=object)
    x = rng.standard_normal(80) * 0.01
    x[labels == "coding"] -= 0.02                    # planted: coding prompts pull CKA down
    rows = {r["category"]: r for r in group_influence(labels, x, permutations=999, seed=0)}
    for c in CATEGORIES:
        assert rows[c]["n_prompts"] == 20
        assert abs(rows[c]["mean_influence"] - x[labels == c].mean()) < 1e-15
        assert abs(rows[c]["null_mean"] - x.mean()) < 0.002   # E[mean of a random 20] = the overall mean
    assert rows["coding"]["p_low"] == 1 / 1000
    assert all(rows[c]["p_low"] > 0.05 for c in ("factual", "reasoning"))
    # the null against scipy's two-sample permutation test of the same mean (another shuffle stream)
    from scipy.stats import permutation_test
    inside, rest = x[labels == "factual"], x[labels != "factual"]
    p = permutation_test((inside, rest), lambda a, b, axis: a.mean(axis=axis), alternative="less",
                         n_resamples=9999, random_state=0).pvalue
    assert abs(rows["factual"]["p_low"] - p) < 0.05


# -- SQL over a lake ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("influence_lake")
    write_model(root, "m-a", 3, 10, seed=1, outlier=5)
    write_model(root, "m-b", 4, 14, seed=2)
    return root


def pooled(root, layer):
    """The layer's rows read back with pyarrow, sorted by prompt_id: (n, d) float64."""
    vx = Vindex.open(root)
    t = pa.concat_tables([pq.read_table(vx.path(f), columns=["prompt_id", "act"])
                          for f in vx.files("pooled", layer=layer)]).sort_by("prompt_id")
    return np.stack(t.column("act").to_pylist()).astype(np.float64), t.column("prompt_id").to_pylist()


@pytest.mark.parametrize("estimator", ["biased", "debiased"])
def test_sql_equals_brute_force_on_the_stored_rows(lake, estimator):
    con = connect(lake)
    rows = con.sql(f"SELECT * FROM cka_influence('m-a', 'm-b', 2, 3, estimator := '{estimator}') "
                   "ORDER BY prompt_id").fetchall()
    cols = [c[0] for c in con.sql("SELECT * FROM cka_influence('m-a', 'm-b', 2, 3) LIMIT 0").description]
    got = {c: [r[cols.index(c)] for r in rows] for c in cols}
    X, ids = pooled(lake / "m-a", 2)
    Y, _ = pooled(lake / "m-b", 3)
    ref = brute_force(X - X.mean(0), Y - Y.mean(0), estimator)
    assert got["prompt_id"] == ids == list(range(N))
    assert np.abs(np.array(got["cka_without"]) - ref).max() < TOL
    assert abs(got["cka"][0] - C.cka(X, Y, estimator)) < TOL
    assert np.allclose(got["influence"], got["cka"][0] - ref, atol=TOL)
    assert got["category"] == [CATEGORIES[i % 4] for i in range(N)]
    assert set(got["n"]) == {N} and set(got["estimator"]) == {estimator}
    assert got["depth_a"][0] == 2 / 3 and got["depth_b"][0] == 3 / 4
    # rank 1 is the prompt that pulls CKA down most: the planted outlier of m-a
    assert got["prompt_id"][got["rank"].index(1)] == 5
    assert sorted(got["rank"]) == list(range(1, N + 1))


def test_python_and_summary_mirror_the_sql(lake):
    con = connect(lake)
    t = cka_influence(con, "m-a", "m-b", 2, 3)
    assert t.column("rank").to_pylist()[0] == 1 and t.column("prompt_id").to_pylist()[0] == 5
    s = cka_influence_summary(lake, "m-a", "m-b", 2, 3, permutations=199, seed=3)
    by = {r["category"]: r for r in s.to_pylist()}
    infl = dict(zip(t.column("prompt_id").to_pylist(), t.column("influence").to_pylist()))
    for c in CATEGORIES:
        mine = [infl[i] for i in range(N) if CATEGORIES[i % 4] == c]
        assert abs(by[c]["mean_influence"] - np.mean(mine)) < 1e-12 and by[c]["n_prompts"] == 6
    ref = group_influence([CATEGORIES[i % 4] for i in range(N)], [infl[i] for i in range(N)], 199, 3)
    assert [r["p_low"] for r in sorted(ref, key=lambda r: r["category"])] == \
        [by[c]["p_low"] for c in sorted(CATEGORIES)]
    assert set(s.column("permutations").to_pylist()) == {199}


def test_cli(lake):
    res = CliRunner().invoke(main, ["influence", "-l", str(lake), "m-a", "m-b", "2", "3", "--top", "3", "-f", "csv"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith('"rank","prompt_id"') and len(lines) == 4
    assert lines[1].startswith("1,5,")         # the first prompt row is the planted outlier
    res = CliRunner().invoke(main, ["influence", "-l", str(lake), "m-a", "m-b", "2", "3", "--by-category",
                                    "--permutations", "99"])
    assert res.exit_code == 0 and "coding" in res.output, res.output


# -- bad input ------------------------------------------------------------------------------------
def test_unknown_model_and_layer_list_what_there_is(lake):
    with pytest.raises(VindexError, match=r"unknown model 'nope'; the lake holds: m-a, m-b"):
        cka_influence(lake, "nope", "m-b", 1, 1)
    with pytest.raises(VindexError, match=r"layer_b 9 is not a layer of m-b; its pooled layers are 0-4"):
        cka_influence(lake, "m-a", "m-b", 1, 9)
    con = connect(lake)
    with pytest.raises(duckdb.Error, match=r"layer_a 7 is not a layer of m-a; its pooled layers are 0-3"):
        con.sql("SELECT * FROM cka_influence('m-a', 'm-b', 7, 1)").fetchall()
    res = CliRunner().invoke(main, ["influence", "-l", str(lake), "m-a", "m-b", "7", "1"])
    assert res.exit_code == 1 and "its pooled layers are 0-3" in res.output


def test_mismatched_prompt_sets_give_the_cka_error(tmp_path):
    write_model(tmp_path, "m-a", 2, 6, seed=1)
    write_model(tmp_path, "m-short", 2, 6, seed=2, ids=[i for i in range(N) if i != 3])
    # the words of cka_matrix's refusal (macros.pair_value)
    with pytest.raises(duckdb.Error, match=r"layer 1 of m-a and layer 1 of m-short hold different prompts \(24 vs 23 "
                                           "rows\); CKA needs the same rows on both sides"):
        connect(tmp_path).sql("SELECT * FROM cka_influence('m-a', 'm-short', 1, 1)").fetchall()
    t = cka_influence(tmp_path, "m-a", "m-short", 1, 1, allow_partial=True)
    assert t.num_rows == N - 1 and 3 not in t.column("prompt_id").to_pylist()
