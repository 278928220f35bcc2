"""The viewer's payload against the lake, read independently with pyarrow and numpy."""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from vindex import Vindex
from vindex.defaults import DEFAULT_ESTIMATOR, DEFAULT_POOLING
from vindex.cli import main
from vindex.query import connect
from vindex.view import build_payload, render_page

from toy_lakes import VIEW, ToyModel, write_toy_lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return write_toy_lake(tmp_path_factory.mktemp("view-lake"), VIEW)


@pytest.fixture(scope="module")
def tables_payload(lake):
    """Everything but CKA (no SQL functions needed)."""
    con = connect(lake, functions=False)
    try:
        return build_payload(con, estimators=(), max_features=10, top_tokens=2, max_heads=3, progress=False)
    finally:
        con.close()


def test_provenance_is_the_manifests(lake, tables_payload):
    assert [m["name"] for m in tables_payload["models"]] == ["alpha", "beta"]
    for rec in tables_payload["models"]:
        vx = Vindex.open(lake / rec["name"])
        assert rec["model"] == vx.model and rec["extraction"] == vx.manifest["extraction"]
        assert rec["prompt_sets"] == vx.prompt_sets
        assert rec["layers"] == list(range(vx.n_layers + 1))
        for table, t in rec["tables"].items():
            assert t["rows"] == sum(e["rows"] for e in vx.files(table))
    assert "path" not in json.dumps(tables_payload["models"])  # file lists stay out of the page


def test_features_are_the_strongest_per_layer_capped(lake, tables_payload):
    for name in ("alpha", "beta"):
        t = Vindex.open(lake / name).read("features").to_pylist()
        by_layer = defaultdict(list)
        for r in t:
            by_layer[r["layer"]].append(r)
        got = tables_payload["features"][name]
        assert sorted(map(int, got)) == sorted(by_layer)
        for layer, rows in by_layer.items():
            want = sorted(rows, key=lambda r: (-r["c_score"], r["feature"]))[:10]
            rec = got[str(layer)]
            assert rec["n_features"] == len(rows) == 40
            assert [f[0] for f in rec["rows"]] == [r["feature"] for r in want]
            for f, r in zip(rec["rows"], want):
                assert f[2] == r["top_token"] and f[3] == pytest.approx(r["c_score"], rel=1e-4)
                assert [t[0] for t in f[4]] == [x["token"] for x in r["top_tokens"][:2]]


def test_heads_are_ranked_by_total_coupling_into_the_layer(lake, tables_payload):
    for name in ("alpha", "beta"):
        rows = Vindex.open(lake / name).read("ov_gate").to_pylist()
        per_head = defaultdict(list)
        for r in rows:
            per_head[(r["feature_layer"], r["layer"], r["head"])].append(r)
        for fl in {k[0] for k in per_head}:
            heads = [(max(x["total_coupling"] for x in v), k[1], k[2], sorted(v, key=lambda x: x["rank"]))
                     for k, v in per_head.items() if k[0] == fl]
            heads.sort(key=lambda h: (-h[0], h[1], h[2]))
            got = tables_payload["heads"][name][str(fl)]
            assert [(h["layer"], h["head"]) for h in got] == [(h[1], h[2]) for h in heads[:3]]
            for g, h in zip(got, heads):
                assert g["total_coupling"] == pytest.approx(h[0], rel=1e-4)
                assert [f[0] for f in g["top"]] == [x["feature"] for x in h[3][:3]]


def test_spectra_match_layer_stats(lake, tables_payload):
    rows = Vindex.open(lake / "beta").read("layer_stats").to_pylist()
    got = tables_payload["spectra"]["beta"]
    assert sum(len(v) for v in got.values()) == len(rows)
    for r in rows:
        g = next(x for x in got[str(r["layer"])] if x["matrix"] == r["matrix"])
        assert g["effective_rank"] == pytest.approx(r["effective_rank"], rel=1e-4)
        assert g["top_singular_values"] == pytest.approx(r["top_singular_values"], rel=1e-3)
    assert [x["matrix"] for x in got["1"]] == ["q", "o", "gate", "down"]  # weight order, not alphabetical


def test_unknown_model_is_a_clear_error(lake):
    con = connect(lake, functions=False)
    with pytest.raises(Exception, match="gamma.*alpha, beta"):
        build_payload(con, models=["gamma"], progress=False)


def test_page_size_does_not_grow_with_width_or_prompts(tmp_path):
    """No raw activations: a lake of wide models with many prompts gives (almost) the same page."""
    def page_bytes(root, d, n_prompts):
        models = (ToyModel("alpha", 4, d, seed=1), ToyModel("beta", 6, d + 8, seed=2))
        write_toy_lake(root, VIEW, n_prompts=n_prompts, models=models, features=replace(VIEW.features, n=600))
        con = connect(root, functions=False)
        html = render_page(build_payload(con, estimators=(), max_features=256, progress=False))
        con.close()
        return len(html.encode())

    small = page_bytes(tmp_path / "small", 16, 24)
    wide = page_bytes(tmp_path / "wide", 1024, 96)
    assert abs(wide - small) < 2_000, (small, wide)   # digits of d_model and prompt counts only
    assert wide < 1_500_000, wide                     # 10 layers x 256 features, the cap holds


def test_cli_reports_a_missing_source(tmp_path):
    r = CliRunner().invoke(main, ["view", str(tmp_path / "nope"), "--out", str(tmp_path / "v.html")])
    assert r.exit_code == 1 and "error:" in r.output and "nope" in r.output
    assert not (tmp_path / "v.html").exists()


def reference_cka(X: np.ndarray, Y: np.ndarray, estimator: str) -> float:
    """Linear CKA from scratch: biased (Kornblith et al. 2019) or debiased (U-centred Grams,
    Song et al. 2012 unbiased HSIC), independent of vindex.query."""
    K, L = X @ X.T, Y @ Y.T
    n = len(K)
    if estimator == "biased":
        H = np.eye(n) - 1.0 / n
        Kc, Lc = H @ K @ H, H @ L @ H
        return float((Kc * Lc).sum() / np.sqrt((Kc * Kc).sum() * (Lc * Lc).sum()))

    def hsic(A, B):
        A, B = A.copy(), B.copy()
        np.fill_diagonal(A, 0)
        np.fill_diagonal(B, 0)
        one = np.ones(n)
        return ((A * B).sum() + one @ A @ one * (one @ B @ one) / ((n - 1) * (n - 2))
                - 2 * one @ A @ B @ one / (n - 2)) / (n * (n - 3))
    return float(hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L)))


def pooled(lake, name, pooling):
    t = Vindex.open(lake / name).read("pooled").to_pylist()
    out = defaultdict(dict)
    for r in t:
        if r["pooling"] == pooling:
            out[r["layer"]][r["prompt_id"]] = r["act"]
    return {layer: np.array([v[k] for k in sorted(v)], dtype=np.float64) for layer, v in out.items()}


@pytest.fixture(scope="module")
def full_payload(lake):
    con = connect(lake)
    try:
        return build_payload(con, permutations=19, progress=False)
    finally:
        con.close()


def test_cka_matrices_match_an_independent_reference(lake, full_payload):
    entries = full_payload["cka"]
    combos = {(e["model_a"], e["model_b"], e["estimator"], e["pooling"]) for e in entries}
    assert combos == {(a, b, est, pool) for a, b in (("alpha", "alpha"), ("alpha", "beta"), ("beta", "beta"))
                      for est in ("biased", "debiased") for pool in ("last", "mean")}
    for e in entries:
        A, B = pooled(lake, e["model_a"], e["pooling"]), pooled(lake, e["model_b"], e["pooling"])
        assert e["layers_a"] == sorted(A) and e["layers_b"] == sorted(B)
        assert e["n_prompts"] in (None, 24) and e["permutations"] == 19
        want = np.array([[reference_cka(A[x], B[y], e["estimator"]) for y in e["layers_b"]] for x in e["layers_a"]])
        np.testing.assert_allclose(np.array(e["cka"], dtype=float), want, atol=1e-4)
        null95, p = np.array(e["null_p95"], dtype=float), np.array(e["p_value"], dtype=float)
        assert null95.shape == want.shape and np.all((p > 0) & (p <= 1))
        n_layers = {"alpha": 4, "beta": 6}
        assert e["depth_a"] == pytest.approx([x / n_layers[e["model_a"]] for x in e["layers_a"]], abs=1e-5)


def test_cli_writes_the_page(lake, tmp_path):
    out = tmp_path / "sub" / "view.html"
    r = CliRunner().invoke(main, ["view", str(lake), "--out", str(out), "--permutations", "0",
                                  "--estimator", "biased", "--pooling", "mean"])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and out.is_file()
    html = out.read_text(encoding="utf-8")
    assert '"estimator":"biased"' in html and '"estimator":"debiased"' not in html


def test_cli_serve_answers_on_localhost(lake, tmp_path):
    """`vindex view --serve --port 0` prints its URL once listening and serves the written page."""
    import subprocess
    import sys
    import urllib.request
    proc = subprocess.Popen([sys.executable, "-c", "from vindex.cli import main; main()", "view", str(lake), "--out", str(tmp_path / "v.html"),
                             "--permutations", "0", "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving") and "http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.read().decode("utf-8") == (tmp_path / "v.html").read_text(encoding="utf-8")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_pooling_no_model_has_is_noted_not_silently_empty(lake):
    con = connect(lake)
    try:
        p = build_payload(con, poolings=["max"], permutations=0, progress=False)
    finally:
        con.close()
    assert p["cka"] == []
    assert any("alpha x beta" in n and "max" in n for n in p["notes"]), p["notes"]


def test_feature_index_holds_every_feature_of_every_layer_and_model(lake, tables_payload):
    """The search index: every features row (not only the capped top 10), its tokens by id."""
    idx = tables_payload["feature_index"]
    for name in ("alpha", "beta"):
        rows = Vindex.open(lake / name).read("features").to_pylist()
        got = idx["models"][name]
        assert sum(len(r["feature"]) for r in got.values()) == len(rows)
        for r in rows:
            rec = got[str(r["layer"])]
            k = rec["feature"].index(r["feature"])
            assert rec["c"][k] == pytest.approx(r["c_score"], rel=1e-3)
            assert idx["tokens"][rec["top"][k]] == r["top_token"]
            assert [idx["tokens"][t] for t in rec["tops"][k]] == [x["token"] for x in r["top_tokens"][:2]]
        for rec in got.values():   # strongest first, as the detailed rows
            assert rec["c"] == sorted(rec["c"], reverse=True)
    assert len(idx["tokens"]) == len(set(idx["tokens"]))   # each token's text once
    # the page opens on the library's defaults (vindex.defaults), not a copy of them
    assert tables_payload["defaults"]["poolings"][0] == DEFAULT_POOLING == "mean_nosink"
    assert tables_payload["defaults"]["estimators"][0] == DEFAULT_ESTIMATOR == "debiased"
    assert tables_payload["defaults"]["edges"] == "matched"
