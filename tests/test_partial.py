"""Partial data (issue 14, defect 7): a build cut off halfway is said to be incomplete, and no
analysis silently runs on part of the prompts.

- `vindex info` / `vindex.info` and the `prompt_sets` view say "incomplete: 4 of 8 prompts" (the
  planned count was shown as if it were there);
- cka_matrix / cka_depth / mutual_knn_matrix / cka_token_matrix (SQL and Python), cka_all and the
  study refuse an incomplete prompt set unless allow_partial; with it they compare the prompts both
  models hold, `n` is that count and Python warns (PartialData) how many were used;
- two complete vindexes holding different prompt sets: the common prompts are compared only with
  allow_partial, and the warning says how many rows;
- one prompt set name with different contents (sha256) is refused always.

The incomplete vindexes are real builds of a tiny model, cut off by an exception in a shard group
(as tests/test_ingest_resume.py does), so the manifest is what an interrupted `vindex build` leaves.
"""
from __future__ import annotations

import json
import shutil
import warnings

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

import vindex
from ingest_fixtures import make_tiny_model, write_prompts
from vindex import Vindex, VindexWriter
from vindex.cli import main
from vindex.errors import CKAPairSkipped, IncompleteData, PartialData
from vindex.ingest import build
from vindex.ingest import builder as build_mod
from vindex.query import cka_depth, cka_matrix, cka_token_matrix, connect, mutual_knn_matrix
from vindex.query.lake_cka import cka_all
from vindex.study import study
from vindex.study.run import check_complete

ARGS = dict(batch_size=2, shard_rows=24, progress=False)   # 8 prompts -> 4 shard groups of 2
TOL = 1e-9


def cut_build(source, out, name, prompts, fail_at):
    """A build that dies in shard group `fail_at` (the pipeline has committed the groups before the
    one in flight), leaving the manifest an interrupted build leaves."""
    real = build_mod.capture_group
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("cut off")
        return real(*a, **k)
    build_mod.capture_group = failing
    try:
        with pytest.raises(RuntimeError, match="cut off"):
            build(source, out, name=name, prompts=prompts, **ARGS)
    finally:
        build_mod.capture_group = real
    return out


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial")
    a = make_tiny_model(root / "model-a", "llama", seed=0)
    b = make_tiny_model(root / "model-b", "llama", seed=1)
    prompts = write_prompts(root / "p.jsonl")
    lake = root / "lake"
    build(a, lake / "full-a", name="full-a", prompts=prompts, **ARGS)
    build(b, lake / "full-b", name="full-b", prompts=prompts, **ARGS)
    cut_build(a, lake / "cut-a", "cut-a", prompts, fail_at=3)     # groups 1 committed: 2 of 8 prompts
    cut_build(b, lake / "cut-b", "cut-b", prompts, fail_at=4)     # groups 1-2 committed: 4 of 8 prompts
    return {"lake": lake, "a": a, "b": b, "prompts": prompts}


def prompt_ids(vx_root) -> set:
    """The prompts a vindex holds, read with pyarrow from every pooled shard (the reference count)."""
    t = Vindex.open(vx_root).read("pooled", columns=["prompt_id"])
    return set(t.column("prompt_id").to_pylist())


def pooled(vx_root, layer, ids) -> np.ndarray:
    t = Vindex.open(vx_root).read("pooled", layers=[layer]).to_pylist()
    rows = {r["prompt_id"]: r["act"] for r in t if r["pooling"] == "mean_nosink" and r["prompt_id"] in ids}
    return np.array([rows[i] for i in sorted(ids)], np.float64)


def ref_biased(X, Y):
    """Kornblith et al. 2019, eq. 5: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))


# -- saying it ---------------------------------------------------------------------------------------
def test_info_says_incomplete_with_the_prompts_really_there(lake):
    for name, present in (("full-a", 8), ("cut-a", 2), ("cut-b", 4)):
        assert len(prompt_ids(lake["lake"] / name)) == present          # what the shards hold
        ps = vindex.info(lake["lake"] / name)["prompt_sets"]["p"]
        assert ps["n_prompts"] == 8 and ps["n_present"] == present
        assert ps["complete"] is (present == 8)
        assert ps["status"] == ("complete" if present == 8 else f"incomplete: {present} of 8 prompts")
    out = CliRunner().invoke(main, ["info", str(lake["lake"] / "cut-b")])
    assert out.exit_code == 0
    assert "prompts p: incomplete: 4 of 8 prompts (an interrupted build: rerun it to resume)" in out.output
    assert "prompts p: 8 prompts" in CliRunner().invoke(main, ["info", str(lake["lake"] / "full-b")]).output
    as_json = json.loads(CliRunner().invoke(main, ["info", "--json", str(lake["lake"] / "cut-a")]).output)
    assert as_json["prompt_sets"]["p"]["status"] == "incomplete: 2 of 8 prompts"


def test_prompt_sets_view_has_n_present_and_complete(lake):
    rows = connect(lake["lake"]).sql("SELECT model, n_prompts, n_present, complete FROM prompt_sets "
                                     "ORDER BY model").fetchall()
    assert rows == [("cut-a", 8, 2, False), ("cut-b", 8, 4, False), ("full-a", 8, 8, True), ("full-b", 8, 8, True)]


# -- refusing it -------------------------------------------------------------------------------------
SQL_CALLS = ["cka_matrix('full-a', 'cut-b')", "cka_depth('full-a', 'cut-b', permutations := 9)",
             "mutual_knn_matrix('full-a', 'cut-b', k := 2)", "cka_token_matrix('cut-b', 'full-a')",
             "cka_matrix('full-a', 'cut-b', prompt_set := 'p')"]


@pytest.mark.parametrize("call", SQL_CALLS)
def test_sql_analyses_refuse_an_incomplete_prompt_set(lake, call):
    fn = call.split("(")[0]
    with pytest.raises(duckdb.Error, match=rf"{fn}: model 'cut-b' prompt set 'p' is incomplete: 4 of 8 prompts "
                                           r"\(an interrupted build: rerun it to resume\); pass allow_partial := true"):
        connect(lake["lake"]).sql(f"SELECT * FROM {call}").fetchall()


@pytest.mark.parametrize("fn,call", [
    ("cka_matrix", lambda con: cka_matrix(con, "cut-a", "full-b")),
    ("cka_depth", lambda con: cka_depth(con, "cut-a", "full-b")),
    ("mutual_knn_matrix", lambda con: mutual_knn_matrix(con, "cut-a", "full-b", k=1)),
    ("cka_token_matrix", lambda con: cka_token_matrix(con, "cut-a", "full-b")),
])
def test_python_mirrors_refuse_with_incomplete_data(lake, fn, call):
    with pytest.raises(IncompleteData, match=rf"{fn}: model 'cut-a' prompt set 'p' is incomplete: 2 of 8 prompts "
                                             r".*allow_partial=True \(--allow-partial\)"):
        call(connect(lake["lake"]))


def test_cka_all_refuses_and_with_allow_partial_says_what_it_skipped(lake):
    with pytest.raises(IncompleteData, match="cka_all: model 'cut-b' prompt set 'p' is incomplete: 4 of 8 prompts"):
        cka_all(lake["lake"], models=["full-a", "cut-b"], progress=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        t = cka_all(lake["lake"], models=["full-a", "cut-b"], allow_partial=True, progress=False)
    kinds = {(w.category, str(w.message).split(";")[0]) for w in seen}
    assert (PartialData, "cka_all: model 'cut-b' prompt set 'p' is incomplete: 4 of 8 prompts") in kinds
    assert any(w.category is CKAPairSkipped and "different prompts" in str(w.message) for w in seen)
    assert t.num_rows == 0     # lake-scale CKA pairs only identical rows: never a silent subset
    # complete models are not held back by an incomplete one they are not paired with
    assert cka_all(lake["lake"], models=["full-a", "full-b"], progress=False).num_rows == 16


def test_the_study_refuses_an_incomplete_vindex(lake, tmp_path):
    vxs = [Vindex.open(lake["lake"] / "full-a"), Vindex.open(lake["lake"] / "cut-b")]
    with pytest.raises(IncompleteData, match=r"cut-b: prompt set 'p' is incomplete: 4 of 8 prompts .*--allow-partial"):
        check_complete(vxs, "p", allow_partial=False)
    with pytest.warns(PartialData, match="cut-b: prompt set 'p' is incomplete: 4 of 8 prompts"):
        check_complete(vxs, "p", allow_partial=True)
    with pytest.raises(IncompleteData, match="study: .*cut-b: prompt set 'p' is incomplete"):
        study([str(lake["lake"] / "full-a"), str(lake["lake"] / "cut-b")], tmp_path / "report",
              prompts=str(lake["prompts"]), weights=False, progress=False)
    res = CliRunner().invoke(main, ["study", str(lake["lake"] / "full-a"), str(lake["lake"] / "cut-b"),
                                    "--prompts", str(lake["prompts"]), "--no-weights", "-o", str(tmp_path / "r2"),
                                    "--quiet"])
    assert res.exit_code == 1 and "incomplete: 4 of 8 prompts" in res.output and "Traceback" not in res.output


def test_cli_cka_refuses_and_accepts_with_allow_partial(lake):
    args = ["cka", "-l", str(lake["lake"]), "full-a", "cut-b", "-f", "csv"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "incomplete: 4 of 8 prompts" in res.output and "--allow-partial" in res.output
    with pytest.warns(PartialData, match="computed over 4 prompts"):
        res = CliRunner().invoke(main, [*args, "--allow-partial"])
    assert res.exit_code == 0, res.output
    assert {line.split(",")[10] for line in res.output.strip().splitlines()[1:]} == {"4"}   # n


# -- allowing it: the common prompts, and how many ---------------------------------------------------
def test_allow_partial_compares_the_prompts_both_hold_and_says_how_many(lake):
    con = connect(lake["lake"])
    common = prompt_ids(lake["lake"] / "full-a") & prompt_ids(lake["lake"] / "cut-b")
    assert len(common) == 4
    rows = con.sql("SELECT layer_a, layer_b, cka, n FROM cka_matrix('full-a', 'cut-b', estimator := 'biased', "
                   "allow_partial := true)").fetchall()
    assert len(rows) == 16 and {r[3] for r in rows} == {4}
    for la, lb, value, _ in rows:
        ref = ref_biased(pooled(lake["lake"] / "full-a", la, common), pooled(lake["lake"] / "cut-b", lb, common))
        assert value == pytest.approx(ref, abs=TOL)
    with pytest.warns(PartialData, match=r"cka_matrix: computed over 4 prompts \(the prompts both models hold; "
                                         r"cut-b plans 8, full-a plans 8\); model 'cut-b' prompt set 'p' is "
                                         r"incomplete: 4 of 8 prompts"):
        t = cka_matrix(con, "full-a", "cut-b", estimator="biased", allow_partial=True)
    assert sorted(t.column("cka").to_pylist()) == sorted(r[2] for r in rows)
    with pytest.warns(PartialData, match="cka_depth: computed over 4 prompts"):
        cka_depth(con, "full-a", "cut-b", allow_partial=True, permutations=5)


def test_two_cut_builds_share_too_few_prompts_for_biased_cka(lake):
    # cut-a holds 2 prompts: with allow_partial the common rows are 2, and 2 rows are refused (defect 8)
    with pytest.raises(duckdb.Error, match="needs n >= 3 rows"):
        connect(lake["lake"]).sql("SELECT * FROM cka_matrix('cut-a', 'cut-b', estimator := 'biased', "
                                  "allow_partial := true)").fetchall()


def test_a_resumed_build_is_complete_again(lake, tmp_path):
    resumed = tmp_path / "cut-b"
    shutil.copytree(lake["lake"] / "cut-b", resumed)
    build(lake["b"], resumed, name="cut-b", prompts=lake["prompts"], **ARGS)
    assert vindex.info(resumed)["prompt_sets"]["p"]["status"] == "complete"
    con = connect(lake["lake"] / "full-a", resumed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = cka_matrix(con, "full-a", "cut-b")
    assert set(t.column("n").to_pylist()) == {8}


# -- two complete vindexes with different prompt sets ------------------------------------------------
def write_sets(root, name, sets: dict, seed: int, d: int = 6, n_layers: int = 2):
    """A vindex holding `sets` {prompt_set: (n_prompts, sha256)}, complete, pooled rows of noise."""
    rng = np.random.default_rng(seed)
    w = VindexWriter.create(root / name, name, {"id": f"t/{name}", "n_layers": n_layers, "d_model": d})
    w.declare_vectors("pooled", d, "float32")
    keys = [(s, i) for s, (n, _) in sets.items() for i in range(n)]
    for s, (n, sha) in sets.items():
        w.add_prompt_set(s, sha, n, complete=True)
    for layer in range(n_layers + 1):
        w.write_shard("pooled", {"prompt_set": [k[0] for k in keys], "prompt_id": [k[1] for k in keys],
                                 "pooling": ["mean_nosink"] * len(keys), "act": rng.standard_normal((len(keys), d))},
                      partition={"layer": layer})
    return root / name


SHA_A, SHA_B = "a" * 64, "b" * 64


@pytest.fixture(scope="module")
def sets_lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    write_sets(root, "two", {"default": (6, SHA_A), "extra": (4, SHA_B)}, seed=1)
    write_sets(root, "one", {"default": (6, SHA_A)}, seed=2)
    write_sets(root, "other", {"default": (6, SHA_B)}, seed=3)     # same name, other prompts
    return root


def sets_pooled(root, name, layer, prompt_set):
    t = Vindex.open(root / name).read("pooled", layers=[layer]).to_pylist()
    rows = sorted((r["prompt_id"], r["act"]) for r in t if r["prompt_set"] == prompt_set)
    return np.array([a for _, a in rows], np.float64)


def test_complete_vindexes_with_different_prompt_sets_compare_the_common_ones_only_when_allowed(sets_lake):
    con = connect(sets_lake / "two", sets_lake / "one")
    with pytest.raises(duckdb.Error, match=r"hold different prompts \(10 vs 6 rows\); .* choose one prompt_set, or "
                                           r"pass allow_partial := true"):
        con.sql("SELECT * FROM cka_matrix('two', 'one')").fetchall()
    rows = con.sql("SELECT layer_a, layer_b, cka, n FROM cka_matrix('two', 'one', estimator := 'biased', "
                   "allow_partial := true)").fetchall()
    assert {r[3] for r in rows} == {6}
    for la, lb, value, _ in rows:
        ref = ref_biased(sets_pooled(sets_lake, "two", la, "default"), sets_pooled(sets_lake, "one", lb, "default"))
        assert value == pytest.approx(ref, abs=TOL)
    with pytest.warns(PartialData, match=r"cka_matrix: computed over 6 prompts \(the prompts both models hold; "
                                         r"one plans 6, two plans 10\)$"):
        cka_matrix(con, "two", "one", allow_partial=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")    # naming the shared set is no partial comparison: no warning
        t = cka_matrix(con, "two", "one", prompt_set="default", estimator="biased", allow_partial=True)
    assert sorted(t.column("cka").to_pylist()) == sorted(r[2] for r in rows)


def test_one_prompt_set_name_with_other_contents_is_refused_always(sets_lake):
    con = connect(sets_lake / "one", sets_lake / "other")
    for flag in ("false", "true"):
        with pytest.raises(duckdb.Error, match=r"cka_matrix: prompt set 'default' holds other prompts in 'one' "
                                               r"\(sha256 aaaaaaaaaaaa\) than in 'other' \(sha256 bbbbbbbbbbbb\); "
                                               "rows with one prompt_id would pair different prompts"):
            con.sql(f"SELECT * FROM cka_matrix('one', 'other', allow_partial := {flag})").fetchall()
    with pytest.warns(CKAPairSkipped, match=r"one and other hold other prompts under the prompt set name\(s\) "
                                            r"\['default'\]"):
        assert cka_all(sets_lake / "one", sets_lake / "other", progress=False).num_rows == 0
