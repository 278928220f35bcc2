"""`vindex study` on a toy lake: the report's structure, its numbers against direct computations,
stage reuse, the self-comparison diagonal, the CLI and the errors."""
from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from vindex import Vindex
from vindex.errors import InvalidValue
from vindex.query import connect
from vindex.query.cka import cka as cka_reference
from vindex.study import analyses as A
from vindex.study.report import DATA_TABLES
from vindex.study.run import study

from toy_lakes import STUDY, write_toy_lake

SECTIONS = ["## Summary", "## Models", "## CKA across layers", "## Matched depth", "## Depth correspondence",
            "## Mutual k-NN alignment", "## Do the measures agree?", "## Where convergence breaks", "## Stages",
            "## Causal: where patching restores the answer", "## Per-category CKA", "## Concept clustering", "## Confounds",
            "### Attention sinks", "### Last-token identity", "### Estimator gap", "## Data"]


@pytest.fixture(scope="module")
def toy_lake(tmp_path_factory):
    root = write_toy_lake(tmp_path_factory.mktemp("study-lake"), STUDY)
    return [root / m.name for m in STUDY.models]


@pytest.fixture(scope="module")
def toy_report(toy_lake, tmp_path_factory):
    out = tmp_path_factory.mktemp("study-out") / "report"
    return study(list(toy_lake), out, permutations=19, progress=False)


def data(report, name) -> pa.Table:
    return pq.read_table(report.parent / "data" / f"{name}.parquet")


def test_report_has_every_section_figure_and_table(toy_report):
    text = toy_report.read_text()
    pos = [text.index(s) for s in SECTIONS]
    assert pos == sorted(pos), "sections out of order"
    figures = sorted(p.name for p in (toy_report.parent / "figures").iterdir())
    assert "sink_norms.png" in figures
    for pooling in ("last", "mean_nosink", "mean"):
        for est in ("biased", "debiased"):
            assert f"cka_toy-a__toy-b__{pooling}__{est}.png" in figures
    for fig in figures:   # every figure the report links exists, and every heatmap is linked
        assert f"figures/{fig}" in text
    for name in DATA_TABLES:
        assert (toy_report.parent / "data" / f"{name}.parquet").is_file(), name
    # the numbers are queryable with DuckDB, no vindex code needed
    n = duckdb.sql(f"SELECT count(*) FROM '{toy_report.parent}/data/matched_depth.parquet' "
                   "WHERE estimator = 'debiased'").fetchone()[0]
    assert n == 3 * 5    # poolings x depth bands


def test_matched_depth_table_summarises_cka_depth(toy_report):
    diag = data(toy_report, "cka_depth").to_pylist()
    bands = data(toy_report, "matched_depth").to_pylist()
    assert len(bands) == 3 * 2 * 5
    for b in bands:
        rows = [r for r in diag if r["pooling"] == b["pooling"] and r["estimator"] == b["estimator"]
                and A.band_of(r["depth_a"]) == b["band"]]
        assert b["n_layers"] == len(rows) > 0
        assert b["cka"] == pytest.approx(np.mean([r["diagonal"] for r in rows]))
        assert b["null_p95"] == pytest.approx(max(r["null_p95"] for r in rows))
        assert b["p_value"] == pytest.approx(max(r["p_value"] for r in rows))
        # the toy models share their signal at matched depth: far above the null
        assert b["cka"] > 0.6 > b["null_p95"] and b["p_value"] == pytest.approx(1 / 20)


def test_category_and_control_cka_match_a_direct_computation(toy_lake, toy_report):
    a, b = (Vindex.open(p) for p in toy_lake)
    cat = data(toy_report, "category_cka").to_pylist()
    assert {r["grp"] for r in cat} == {"factual", "coding", "reasoning", "translation"}
    prompts = a.read("prompts").to_pylist()
    r = next(r for r in cat if r["grp"] == "coding" and r["estimator"] == "debiased" and r["layer_a"] == 2)
    ids = sorted(p["prompt_id"] for p in prompts if p["category"] == "coding")

    def pooled(vx, layer):
        t = vx.read("pooled", layers=[layer]).to_pylist()
        by = {x["prompt_id"]: x["act"] for x in t if x["pooling"] == "last"}
        return np.array([by[i] for i in ids], dtype=np.float64)

    assert r["n"] == len(ids) == 8
    assert r["cka"] == pytest.approx(cka_reference(pooled(a, 2), pooled(b, r["layer_b"]), "debiased"), abs=1e-9)
    # last-token identity control: the prompts that end in '?' for both models (2 of 3 in the toy)
    ctrl = data(toy_report, "last_token_cka").to_pylist()
    assert {r["grp"] for r in ctrl} == {"ends with '?'"}
    assert all(r["n"] == sum(1 for i in range(32) if i % 3) for r in ctrl)


def test_clustering_finds_planted_categories_and_not_random_ones(toy_report):
    rows = {(r["model"], r["scope"]): r for r in data(toy_report, "clustering").to_pylist()}
    a, b = rows[("toy-a", "all layers")], rows[("toy-b", "all layers")]
    assert a["status"] == "ok" and a["n_labelled"] == 4 * 24 and a["n_categories"] == 4
    assert a["nmi"] > 0.9 and a["ami"] > 0.9 and a["ami_p"] == pytest.approx(1 / 20)
    assert a["ami"] > a["ami_null_p95"]
    assert b["status"] == "ok" and abs(b["ami"]) < 0.1
    labels = data(toy_report, "feature_labels").to_pylist()
    assert {r["category"] for r in labels} == {"cities", "colours", "animals", "months"}
    assert all(not r["top_token"].startswith("qz") for r in labels)


def test_confounds_sink_profile_and_endings(toy_report):
    prof = data(toy_report, "sink_profile").to_pylist()
    at = {(r["model"], r["layer"], r["position"]): r["mean_norm"] for r in prof}
    assert at[("toy-a", 2, "content 0")] > 50 * at[("toy-a", 2, "content 1")]
    assert at[("toy-b", 2, "content 0")] < 3 * at[("toy-b", 2, "content 1")]
    ends = data(toy_report, "ending_tokens").to_pylist()
    assert {r["last_token_norm"] for r in ends} == {"?", "."}
    text = toy_report.read_text()
    assert "'?' 66%" in text and "'.' 34%" in text


def test_depth_correspondence_is_one_for_the_toy_and_signed():
    def matrix(order):
        rows = []
        for i in range(5):
            for j in range(5):
                rows.append({"model_a": "a", "model_b": "b", "pooling": "last", "estimator": "biased",
                             "layer_a": i, "layer_b": j, "depth_a": i / 4, "depth_b": j / 4,
                             "cka": 1.0 - abs(order(i) - j) / 5})
        return pa.Table.from_pylist(rows)

    up = A.depth_correspondence(matrix(lambda i: i)).to_pylist()
    down = A.depth_correspondence(matrix(lambda i: 4 - i)).to_pylist()
    assert [r["spearman_rho"] for r in up] == pytest.approx([1.0, 1.0])
    assert [r["spearman_rho"] for r in down] == pytest.approx([-1.0, -1.0])


def test_same_ending_subset_needs_every_model_to_agree():
    last = pa.Table.from_pylist([
        {"model": m, "prompt_set": "s", "prompt_id": i, "last_token": t, "last_token_norm": t.lstrip("Ġ")}
        for m, toks in (("a", ["?", "?", ".", "?"]), ("b", ["Ġ?", ".", ".", "?"])) for i, t in enumerate(toks)])
    subset, shares = A.same_ending_subset(last, ["a", "b"])
    assert subset.column("prompt_id").to_pylist() == [0, 3]
    assert shares == {"?": 0.5, ".": 0.25}


def test_rerun_reuses_every_stage(toy_lake, toy_report, capsys):
    before = {n: data(toy_report, n) for n in ("cka_depth", "clustering", "category_cka")}
    stamps = {p.name: p.stat().st_mtime_ns for p in (toy_report.parent / "data").glob("*.parquet")}
    study(list(toy_lake), toy_report.parent, permutations=19, progress=True)
    err = capsys.readouterr().err
    assert err.count("reused") == 17 and " rows in " not in err
    for name, t in before.items():
        assert data(toy_report, name).equals(t)
    index = json.loads((toy_report.parent / "data" / "stages.json").read_text())
    assert set(index) >= {"cka_matrix", "cka_depth", "clustering"}
    assert stamps  # (the report files are rewritten; the cached stages are read back)


def test_a_model_against_itself_has_debiased_cka_one_on_the_diagonal(toy_lake, tmp_path):
    report = study([toy_lake[1]], tmp_path / "self", permutations=9, poolings=("last",), progress=False)
    diag = data(report, "cka_depth").to_pylist()
    assert {(r["model_a"], r["model_b"]) for r in diag} == {("toy-b", "toy-b")}
    deb = [r for r in diag if r["estimator"] == "debiased"]
    assert [r["layer_a"] for r in deb if r["pooling"] == "last"] == [r["layer_b"] for r in deb if r["pooling"] == "last"]
    assert all(r["diagonal"] == pytest.approx(1.0, abs=1e-9) for r in deb)


def test_subset_cka_joins_prompts_and_skips_nothing(toy_lake):
    con = connect(*toy_lake)
    subset = pa.table({"prompt_set": ["default"] * 6, "prompt_id": pa.array([0, 1, 2, 3, 4, 5], pa.int32()),
                       "grp": ["g"] * 6})
    t = A.subset_cka(con, "toy-a", "toy-b", [(0, 0), (4, 6)], subset, pooling="mean", estimator="biased",
                     permutations=0, seed=0)
    assert t.column("layer_a").to_pylist() == [0, 4] and t.column("n").to_pylist() == [6, 6]


def test_cli_study(toy_lake, tmp_path):
    from vindex.cli import main
    out = tmp_path / "cli-report"
    r = CliRunner().invoke(main, ["study", *map(str, toy_lake), "--out", str(out), "--permutations", "9",
                                  "--pooling", "last", "--quiet"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(out / "report.md")
    assert "permutation null (9 shuffles" in (out / "report.md").read_text()
    # the report's command reruns it: the models and every option given that is not a default
    assert (f"Reproduce: `vindex study {' '.join(map(str, toy_lake))} --out {out} --pooling last --permutations 9`"
            in (out / "report.md").read_text())
    r = CliRunner().invoke(main, ["study", str(toy_lake[0]), "--out", str(out), "--permutations", "-1"])
    assert r.exit_code == 1 and "permutations must be >= 0" in r.output


def test_errors_name_the_argument(toy_lake, tmp_path):
    with pytest.raises(InvalidValue, match="at least one model"):
        study([], tmp_path)
    with pytest.raises(InvalidValue, match="poolings must be among"):
        study([toy_lake[0]], tmp_path, poolings=("max",))
    with pytest.raises(InvalidValue, match="same vindex name"):
        study([toy_lake[0], toy_lake[0]], tmp_path, progress=False)
