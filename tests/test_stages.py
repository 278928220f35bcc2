"""stages: the dynamic programme against an exhaustive search over every contiguous partition, the
segment costs against a direct sum, planted stages found with strong support and an unstructured
(smooth-decay) matrix without it; the SQL function on a lake with planted stages against the
self-CKA matrix it is built from; bad input."""
import itertools

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

from vindex.cli import main
from vindex.errors import VindexError
from vindex.query import cka_matrix, connect, stages
from vindex.query.layer_stages import fit_stages, optimal_partitions, segment_costs, smooth_decay

from influence_lakes import write_staged


def sse_of(S, starts):
    """Within-stage sum of squares of the rows of S, written out."""
    ends = list(starts[1:]) + [len(S)]
    return sum(((S[a:b] - S[a:b].mean(axis=0)) ** 2).sum() for a, b in zip(starts, ends))


def exhaustive(S, k):
    """The best partition into k contiguous stages by trying every set of k-1 cut points."""
    L = len(S)
    best = min(itertools.combinations(range(1, L), k - 1), key=lambda cuts: (sse_of(S, (0, *cuts)), cuts))
    return sse_of(S, (0, *best)), [0, *best]


def random_similarity(L, seed):
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((L, 4)).cumsum(axis=0)
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    return F @ F.T


@pytest.mark.parametrize("L", [3, 5, 7, 9])
def test_dynamic_programme_equals_exhaustive_search(L):
    for seed in range(3):
        S = random_similarity(L, seed)
        for k, (cost, starts) in enumerate(optimal_partitions(S, L), start=1):
            want_cost, want_starts = exhaustive(S, k)
            assert abs(cost - want_cost) < 1e-10 and starts == want_starts, (L, seed, k)


def test_segment_costs_are_within_sums_of_squares():
    S = random_similarity(8, 4)
    cost = segment_costs(S)
    for i in range(8):
        for j in range(i, 8):
            assert abs(cost[i, j] - ((S[i:j + 1] - S[i:j + 1].mean(axis=0)) ** 2).sum()) < 1e-10


def planted(sizes, within=0.85, between=0.25, noise=0.03, seed=0):
    """A symmetric similarity matrix with stages of the given sizes, unit diagonal, plus noise."""
    L = sum(sizes)
    label = np.repeat(np.arange(len(sizes)), sizes)
    S = np.where(label[:, None] == label[None, :], within, between)
    E = np.random.default_rng(seed).normal(0, noise, (L, L))
    S = S + (E + E.T) / 2
    np.fill_diagonal(S, 1.0)
    return S


def test_planted_stages_are_found_with_strong_support():
    for sizes, seed in (((4, 6, 5, 3), 0), ((3, 3, 8), 1), ((5, 5, 5, 5, 5), 2)):
        fit = fit_stages(planted(sizes, seed=seed), max_stages=8, permutations=99, seed=seed)
        assert fit.n_stages == len(sizes), (sizes, fit.gap)
        assert fit.starts == list(np.cumsum((0, *sizes[:-1])))
        assert fit.p_value() == 0.01 and fit.r2[fit.n_stages - 1] > fit.null_p95()
        rows = fit.stage_rows()
        assert all(abs(r["within"] - 0.85) < 0.05 and abs(r["between"] - 0.25) < 0.05 for r in rows)


def test_a_smooth_decay_has_no_stage_support():
    """S_ij = exp(-|i - j| / 4) (plus noise): layers drift without stages. Either one stage is chosen or
    the count's support is weak."""
    L = 19
    lag = np.abs(np.subtract.outer(np.arange(L), np.arange(L)))
    for seed in range(4):
        E = np.random.default_rng(seed).normal(0, 0.02, (L, L))
        S = np.exp(-lag / 4) + (E + E.T) / 2
        np.fill_diagonal(S, 1.0)
        fit = fit_stages(S, permutations=99, seed=seed)
        assert fit.n_stages == 1 or fit.p_value() > 0.05, (seed, fit.n_stages, fit.p_value())
        assert fit.p_value(4) > 0.05          # four stages forced: no better than the surrogates
    assert np.allclose(smooth_decay(np.exp(-lag / 4)), np.exp(-lag / 4))   # a pure decay is its own S0


def test_given_count_and_input_checks():
    S = planted((3, 3, 3))
    fit = fit_stages(S, n_stages=2, permutations=19)
    assert fit.n_stages == 2 and fit.criterion == "given" and len(fit.starts) == 2
    with pytest.raises(VindexError, match="at least 3 layers"):
        fit_stages(np.eye(2))
    with pytest.raises(VindexError, match="n_stages must be between 1 and"):
        fit_stages(S, max_stages=4, n_stages=5)
    with pytest.raises(VindexError, match="permutations must be >= 1, or give n_stages"):
        fit_stages(S, permutations=0)


# -- SQL over a lake ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages_lake")
    write_staged(root, "staged", (3, 4, 3))
    write_staged(root, "tiny", (2,), seed=1)
    return root


def test_sql_finds_the_planted_stages(lake):
    t = stages(lake, "staged", estimator="biased").to_pylist()
    assert [(r["first_layer"], r["last_layer"]) for r in t] == [(0, 2), (3, 6), (7, 9)]
    assert {r["n_stages"] for r in t} == {3} and t[0]["p_value"] == 0.01 and t[0]["criterion"] == "gap"
    assert [r["depth_start"] for r in t] == [0.0, 3 / 9, 7 / 9] and t[-1]["depth_end"] == 1.0
    # within / between against the self-CKA matrix cka_matrix gives
    m = cka_matrix(lake, "staged", "staged", estimator="biased").to_pylist()
    S = np.zeros((10, 10))
    for r in m:
        S[r["layer_a"], r["layer_b"]] = r["cka"]
    for r in t:
        a, b = r["first_layer"], r["last_layer"] + 1
        block = S[a:b, a:b]
        assert abs(r["within"] - (block.sum() - np.trace(block)) / ((b - a) * (b - a - 1))) < 1e-12
        outside = np.r_[0:a, b:10]
        assert abs(r["between"] - S[a:b][:, outside].mean()) < 1e-12
    ref = fit_stages(S, permutations=99, seed=0)
    assert abs(t[0]["r2"] - ref.r2[2]) < 1e-12 and t[0]["p_value"] == ref.p_value()
    four = stages(lake, "staged", estimator="biased", n_stages=4).to_pylist()
    assert len(four) == 4 and four[0]["criterion"] == "given"


def test_cli(lake):
    res = CliRunner().invoke(main, ["stages", "-l", str(lake), "staged", "--estimator", "biased"])
    assert res.exit_code == 0, res.output
    assert "gap" in res.output and len([x for x in res.output.splitlines() if "gap" in x]) == 3


def test_bad_input(lake):
    with pytest.raises(VindexError, match=r"model tiny has 2 layer\(s\) \(0, 1\); stages need at least 3"):
        stages(lake, "tiny")
    with pytest.raises(VindexError, match=r"unknown model 'nope'; the lake holds: staged, tiny"):
        stages(lake, "nope")
    with pytest.raises(duckdb.Error, match="max_stages must be >= 1"):
        connect(lake).sql("SELECT * FROM stages('staged', max_stages := 0)").fetchall()
    res = CliRunner().invoke(main, ["stages", "-l", str(lake), "tiny"])
    assert res.exit_code == 1 and "stages need at least 3" in res.output
