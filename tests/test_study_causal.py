"""The study's causal section (vindex.study.causal): the stratified pairs, the subject/last positions, the
bootstrap intervals against scipy.stats.bootstrap and a numpy resampling loop, the peak-depth verdicts on
planted profiles, and the whole stage on a tiny random Llama (profile = the vindex's own patching rows,
rerun reuses the run and the stage)."""
from __future__ import annotations

import itertools
import json
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from scipy.stats import bootstrap

from ingest_fixtures import PROMPTS, make_tiny_model, write_prompts
from vindex.errors import InvalidValue
from vindex.ingest.intervention_runs import last_logits, load_lm
from vindex.ingest.pairs import PairSet, encode_pairs, load_pairs
from vindex.study import causal as C
from vindex.study.run import study

N_LAYERS = 4


# -- which pairs ---------------------------------------------------------------------------------------
def test_stratified_pairs_allot_categories_in_proportion_and_are_seeded():
    ps = load_pairs("factual")
    sizes = {c: sum(p.category == c for p in ps.pairs) for c in {p.category for p in ps.pairs}}
    chosen = C.stratified_pairs(ps, 24, seed=0)
    got = {c: sum(p.category == c for p in chosen.pairs) for c in sizes}
    assert len(chosen) == 24 and len({p.pair_id for p in chosen.pairs}) == 24
    for c, n in sizes.items():   # proportional allocation: within one of 24 * share
        assert abs(got[c] - 24 * n / len(ps)) < 1, (c, got)
    assert [p.pair_id for p in chosen.pairs] == sorted(p.pair_id for p in chosen.pairs)
    assert chosen.pairs == C.stratified_pairs(ps, 24, seed=0).pairs
    assert chosen.pairs != C.stratified_pairs(ps, 24, seed=1).pairs
    assert chosen.name == "factual-24-seed0" and chosen.sha256 != ps.sha256
    small = C.stratified_pairs(ps, 5, seed=3)   # one per category when n allows
    assert sorted(p.category for p in small.pairs) == sorted(sizes)
    assert C.stratified_pairs(ps, 500, seed=0).pairs == ps.pairs
    with pytest.raises(InvalidValue, match="causal_pairs"):
        C.stratified_pairs(ps, 0, seed=0)


# -- the tiny model and pairs it knows -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("causal") / "tiny-llama", "llama", n_layers=N_LAYERS)
    return folder, load_lm(folder, device="cpu", progress=False)


def known_pairs(lm, path, n: int = 8):
    """Subject-swap pairs with answer/wrong chosen from the tiny model's own logits so that LD(clean) > 0 >
    LD(corrupt) (a random model knows no facts; this makes every pair one it 'knows')."""
    tok = lm.tokenizer
    ok = np.array([tok.decode([i]).strip().isalpha() and
                   tok(tok.decode([i]), add_special_tokens=False)["input_ids"] == [i] for i in range(len(tok))])
    # one letter or digit apart: "the cat sleeps on the" / "the bat sleeps on the", "travels 60 km" / "90 km"
    swaps = [(f"the {a}at sleeps on the", f"the {b}at sleeps on the") for a, b in itertools.permutations("cbhmrs", 2)]
    swaps += [(f"If a train travels {a}0 km", f"If a train travels {b}0 km") for a, b in itertools.permutations("2469", 2)]
    rows = []
    for c, k in swaps:
        if len(rows) == n:
            break
        ci, ki = tok(c)["input_ids"], tok(k)["input_ids"]
        if len(ci) != len(ki) or sum(x != y for x, y in zip(ci, ki)) != 1:   # one token apart
            continue
        lc, lk = (last_logits(lm.model, torch.tensor([x]))[0].numpy() for x in (ci, ki))
        # ans, wrong maximising min(LD(clean), -LD(corrupt)) over single tokens
        margin = np.minimum(lc[:, None] - lc[None, :], lk[None, :] - lk[:, None])
        margin[~ok, :], margin[:, ~ok] = -np.inf, -np.inf
        ans, wrong = np.unravel_index(np.argmax(margin), margin.shape)
        if margin[ans, wrong] > 0:
            rows.append({"clean": c, "corrupt": k, "answer": tok.decode([int(ans)]), "wrong": tok.decode([int(wrong)]),
                         "category": "xy"[len(rows) % 2]})
    assert len(rows) >= n, rows
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    return path


def test_subject_and_last_positions(tiny, tmp_path):
    _, lm = tiny
    tok = lm.tokenizer
    ps = load_pairs(known_pairs(lm, tmp_path / "p.jsonl", 4))
    for e in encode_pairs(tok, ps, C.POSITIONS):
        diff = np.flatnonzero(e.clean_ids != e.corrupt_ids)
        assert e.positions == ((diff[-1], diff[-1]), (len(e.clean_ids) - 1, len(e.corrupt_ids) - 1))
    # a pair differing at its last token: subject = last, patched once
    p = ps.pairs[0]
    last = PairSet("x", (type(p)(0, None, p.clean.split("at sleeps")[0], p.corrupt.split("at sleeps")[0], p.answer,
                                 p.wrong),), "x")
    e, = encode_pairs(tok, last, "subject,last")
    assert len(e.positions) == 1 and e.positions[0][0] == len(e.clean_ids) - 1
    bad = PairSet("y", (type(p)(7, None, "the cat sleeps on the", "the library of the capital city speed", p.answer,
                                p.wrong),), "y")
    with pytest.raises(InvalidValue, match="pair 7.*positions='last'"):
        encode_pairs(tok, bad, "subject,last")
    with pytest.raises(InvalidValue, match="subject,last"):
        encode_pairs(tok, ps, "subject,middle")


# -- the bootstrap ----------------------------------------------------------------------------------------
def planted(step_layer: int, n_layers: int = 30, n_pairs: int = 24, noise: float = 0.05, seed: int = 0,
            unknown: int = 0) -> pa.Table:
    """Patching rows of a model whose answer reaches the last position at `step_layer` (restoration 0 -> 1
    there, 1 -> 0 at the subject position), with Gaussian noise per pair and layer."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pairs):
        clean, corrupt = (-1.0, 1.0) if i < unknown else (5.0, -4.0)
        for layer in range(n_layers + 1):
            step = float(layer >= step_layer)
            for pos, r in ((2, 1 - step), (6, step)):
                rows.append({"pair_id": 100 + i, "layer": layer, "depth": layer / n_layers, "position": pos,
                             "restoration": r + noise * rng.normal(), "logit_diff_clean": clean,
                             "logit_diff_corrupt": corrupt})
    return pa.Table.from_pylist(rows)


def matrix(t: pa.Table, pos: int) -> np.ndarray:
    r = [x for x in t.to_pylist() if x["position"] == pos and x["logit_diff_clean"] > 0]
    layers = sorted({x["layer"] for x in r})
    pids = sorted({x["pair_id"] for x in r})
    M = np.zeros((len(pids), len(layers)))
    for x in r:
        M[pids.index(x["pair_id"]), layers.index(x["layer"])] = x["restoration"]
    return M


def test_profile_intervals_match_scipy_bootstrap_and_a_numpy_loop():
    t = planted(16, noise=0.3, unknown=3)
    rows, peak = C.model_profile("m", t, resamples=400, seed=5)
    assert peak["status"] == "ok" and peak["n_pairs"] == 24 and peak["n_known"] == 21
    S, L = matrix(t, 2), matrix(t, 6)
    depth = np.arange(31) / 30
    got = {(r["position"], r["layer"]): r for r in rows}
    # subject: scipy's percentile bootstrap with the same generator draws the same resamples
    for layer in (0, 15, 16, 30):
        ref = bootstrap((S[:, layer],), np.mean, n_resamples=400, method="percentile",
                        rng=np.random.default_rng([5, zlib.crc32(b"m")])).confidence_interval
        r = got[("subject", layer)]
        assert r["restoration"] == pytest.approx(S[:, layer].mean())
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-12)
    # last: a hand loop over the same stream (the subject's draw comes first)
    rng = np.random.default_rng([5, zlib.crc32(b"m")])
    rng.integers(0, 21, (400, 21))
    idx = rng.integers(0, 21, (400, 21))
    means = np.array([[L[idx[b], j].mean() for j in range(31)] for b in range(400)])
    for layer in (3, 16, 29):
        lo, hi = np.percentile(means[:, layer], [2.5, 97.5])
        assert (got[("last", layer)]["ci_low"], got[("last", layer)]["ci_high"]) == pytest.approx((lo, hi))
    peaks = np.array([depth[1 + max(range(30), key=lambda j: means[b, j + 1] - means[b, j])] for b in range(400)])
    assert peak["peak_depths"] == pytest.approx(peaks.tolist())
    assert peak["peak_ci_low"] == np.sort(peaks)[int(np.floor(0.025 * 399))]
    assert peak["peak_ci_high"] == np.sort(peaks)[int(np.ceil(0.975 * 399))]
    assert peak["peak_layer"] == 16 and peak["peak_depth"] == pytest.approx(16 / 30)
    band = (depth >= 0.5) & (depth <= 0.6)
    assert peak["band_last"] == pytest.approx(L[:, band].mean())
    lo, hi = np.percentile(means[:, band].mean(axis=1), [2.5, 97.5])
    assert (peak["band_last_ci_low"], peak["band_last_ci_high"]) == pytest.approx((lo, hi))


def test_too_few_known_pairs_say_so():
    rows, peak = C.model_profile("m", planted(10, n_pairs=3, unknown=2), resamples=10, seed=0)
    assert rows == [] and "1 of 3 pairs known" in peak["status"]


# -- the verdicts on planted profiles -------------------------------------------------------------------
def test_peak_depth_verdicts_on_planted_profiles():
    def peak(name, step, noise=0.05, n_layers=30):
        return C.model_profile(name, planted(step, n_layers=n_layers, noise=noise, seed=len(name)),
                               resamples=300, seed=0)[1]
    a, b, far = peak("a", 16), peak("bb", 10, n_layers=18), peak("far", 24)   # depths 0.533, 0.556, 0.8
    for p, d in ((a, 16 / 30), (b, 10 / 18), (far, 0.8)):
        assert p["peak_depth"] == pytest.approx(d) and p["peak_ci_low"] == p["peak_ci_high"] == pytest.approx(d)
    cka = {("a", "bb"): (0.55, 0.55, 16, 10, 0.7)}
    tests = C.comparisons([a, b], cka)
    assert [t["verdict"] for t in tests] == ["matches"] * 5
    assert C.claim_verdict(tests, 2) == "holds here"
    # a model whose answer arrives at 80%: outside the band, not at the other's depth, not at the CKA peak
    tests = C.comparisons([a, far], {("a", "far"): (0.55, 0.55, 16, 16, 0.7)})
    by = {(t["test"], t["model"]): t["verdict"] for t in tests}
    assert by[("peak restoration in the entity band", "far")] == "differs"
    assert by[("peak restoration: same depth in both models", "a")] == "differs"
    assert by[("peak restoration at the peak cross-model CKA", "far")] == "differs"
    assert by[("peak restoration at the peak cross-model CKA", "a")] == "matches"
    assert C.claim_verdict(tests, 2) == "does not hold here"
    # pure noise: the peak could be anywhere, so nothing is decided
    flat = C.model_profile("flat", planted(99, noise=0.5), resamples=300, seed=0)[1]
    assert flat["peak_ci_high"] - flat["peak_ci_low"] > 0.3
    tests = C.comparisons([a, flat], {})
    assert {t["verdict"] for t in tests if "flat" in (t["model"], t["other"])} == {"undecided"}
    assert C.claim_verdict(tests, 2) == "undecided at this sample size"
    assert C.claim_verdict(C.comparisons([a], {}), 1).startswith("undecided (one model")
    assert C.verdict(0.5, 0.6, 0.49, 0.61) == "matches" and C.verdict(0.7, 0.8, 0.49, 0.61) == "differs"


def test_cka_peaks_take_the_highest_matched_depth_row_above_the_embedding():
    diag = pa.Table.from_pylist([
        {"model_a": "a", "model_b": "b", "pooling": "p", "estimator": "e", "layer_a": la, "layer_b": lb,
         "depth_a": la / 10, "depth_b": lb / 8, "diagonal": c}
        for la, lb, c in ((0, 0, 0.95), (2, 2, 0.3), (5, 4, 0.9), (8, 6, 0.5))] + [
        {"model_a": "a", "model_b": "b", "pooling": "q", "estimator": "e", "layer_a": 1, "layer_b": 1,
         "depth_a": 0.1, "depth_b": 0.125, "diagonal": 0.99}])
    assert C.cka_peaks(diag, [("a", "b")], "p", "e") == {("a", "b"): (0.5, 0.5, 5, 4, 0.9)}


# -- the stage in the study -------------------------------------------------------------------------------
def test_study_causal_stage_on_a_tiny_model(tiny, tmp_path, capsys):
    folder, lm = tiny
    pairs = known_pairs(lm, tmp_path / "pairs.jsonl", 8)
    prompts = write_prompts(tmp_path / "prompts.jsonl", [{**p, "text": p["text"] + end} for end in ("", " Please.", " Thanks!")
                                                         for p in PROMPTS])   # 6 per category
    kw = dict(lake=tmp_path / "lake", prompts=prompts, permutations=9, knn_k=3, pairs=pairs, causal_pairs=6,
              resamples=200, seed=1)
    report = study([folder], tmp_path / "out", **kw)
    text = report.read_text()
    assert "## Causal: where patching restores the answer" in text
    assert "figures/causal_restoration.png" in text and (report.parent / "figures" / "causal_restoration.png").is_file()
    name = folder.name
    patching = ds.dataset(tmp_path / "lake" / name / "data" / "patching", format="parquet",
                          partitioning="hive").to_table()
    assert set(patching.column("run_id").to_pylist()) == {"study-6-seed1"}
    assert patching.num_rows == 6 * (N_LAYERS + 1) * 2           # pairs x layers 0..4 x (subject, last)
    prof = pq.read_table(report.parent / "data" / "causal_profile.parquet").to_pylist()
    peaks = pq.read_table(report.parent / "data" / "causal_peaks.parquet").to_pylist()
    assert peaks[0]["status"] == "ok" and peaks[0]["n_known"] == 6 and peaks[0]["resamples"] == 200
    # the profile is the mean of the vindex's own patching rows, and the bounds hold it
    rows = patching.to_pylist()
    positions = {}
    for x in rows:
        positions.setdefault(x["pair_id"], set()).add(x["position"])
    for r in prof:
        pick = min if r["position"] == "subject" else max
        vals = [x["restoration"] for x in rows if x["layer"] == r["layer"] and x["position"] == pick(positions[x["pair_id"]])]
        assert len(vals) == 6
        assert r["restoration"] == pytest.approx(np.mean(vals), rel=1e-6)
        assert r["ci_low"] <= r["restoration"] + 1e-9 and r["restoration"] <= r["ci_high"] + 1e-9
    by = {(r["position"], r["layer"]): r["restoration"] for r in prof}
    assert by[("subject", 0)] == pytest.approx(1.0, abs=1e-5)    # the embedding of the subject is all that differs
    assert by[("last", N_LAYERS)] == pytest.approx(1.0, abs=1e-4)  # the final state at the last position
    tests = pq.read_table(report.parent / "data" / "causal_tests.parquet").to_pylist()
    band, claim = tests                                            # one model: no cross-model tests
    assert band["test"] == "peak restoration in the entity band" and claim["test"] == "the motivating claim"
    assert band["estimate"] == peaks[0]["peak_depth"]
    assert claim["verdict"] == ("does not hold here" if band["verdict"] == "differs" else
                                "undecided (one model: the cross-model parts need two)")
    assert f"**The motivating claim {tests[-1]['verdict']}.**" in text
    # a rerun neither patches nor recomputes
    capsys.readouterr()
    study([folder], tmp_path / "out", **kw)
    err = capsys.readouterr().err
    assert "patching ok" in err and "causal: restoration by depth (causal_profile): reused" in err
    assert "patching factual" not in err and "part 1/" not in err
    # --no-causal: no section, no patching
    plain = study([folder], tmp_path / "plain", **{**kw, "causal": False}, progress=False)
    assert "## Causal" not in plain.read_text()
    assert not (plain.parent / "data" / "causal_peaks.parquet").exists()
