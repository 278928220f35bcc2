"""The study's causal section: at what depth does patching the clean run into the corrupted one restore
the answer, does that depth match across models, and does it match the depth of peak cross-model CKA?

The motivating claim: patching clean into corrupt at the entity layer (~50-60% depth) restores the
answer, and that is where cross-model similarity peaks. The study tests it on a seeded, category-
stratified subset of the shipped `factual` pairs with one `vindex.ingest.patching.patch` run per model
(table `patching`, run_id `study-<n>-seed<seed>`): site resid_post, every layer, two positions per pair:

    subject   the last position where the clean and corrupted prompts differ (the last subject token)
    last      the last position, where the answer is read out

For pair i, layer l and position p, r_i(l, p) is the normalised restoration (Meng et al. 2022):
(LD(patched) - LD(corrupt)) / (LD(clean) - LD(corrupt)), LD = logit(answer) - logit(wrong). Only the
pairs the model knows are kept: LD(clean) > 0 > LD(corrupt) (it prefers each prompt's own answer),
which also keeps the denominator away from 0. The profile is the mean over kept pairs,
rbar(l, p) = (1/n) sum_i r_i(l, p).

The depth of peak restoration is where the answer arrives at the last position: the layer whose
block adds the most restoration there,

    l* = argmax_l [rbar(l, last) - rbar(l_prev, last)],     depth = l* / n_layers,

(at the subject position the same step shows as the drop: before it the subject's state carries the
answer, after it the last position does). Intervals are percentile bootstraps over pairs (Efron &
Tibshirani 1993, ch. 13): `resamples` resamples of the kept pairs with replacement, drawn by numpy
`default_rng([seed, crc32(model)])` (one stream per model, so two models' intervals are independent),
each recomputing the profile and l*; the 95% interval of a depth is the 2.5th and 97.5th percentiles of
its resampled values (method 'lower' / 'higher': always depths of real layers).

Verdicts, never more confident than the intervals: a depth (or a difference of depths) whose whole
interval lies within the target range is `matches`, one whose interval lies wholly outside it
`differs`, anything else `undecided`. Targets: the claimed entity band [0.5, 0.6] widened by half a
layer; |difference| <= TOLERANCE (0.1 of normalized depth) between two models' peaks, and between a
model's peak and its side of the peak matched-depth CKA above layer 0 (a point: `cka_depth`'s
permutation null says the CKA is above chance, not where its peak lies within error).
"""
from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa

ENTITY_BAND = (0.5, 0.6)       # the motivating claim's entity layers, normalized depth
TOLERANCE = 0.1                # |depth difference| that still counts as the same depth
SITE = "resid_post"
POSITIONS = "subject,last"     # vindex.ingest.pairs.parse_positions names
CONFIDENCE = 0.95
VERSION = 2                    # bump when the causal analysis changes meaning: invalidates its cached stages


# -- which pairs, which run ------------------------------------------------------------------------
def stratified_pairs(ps, n: int, seed: int):
    """`n` pairs of the pair set `ps`, allotted to categories in proportion to their size (largest
    remainders, at least one per category when n allows) and drawn within each by numpy
    default_rng(seed); in pair_id order, named <set>-<n>-seed<seed>. n >= len(ps) keeps them all."""
    from vindex.errors import InvalidValue
    from vindex.ingest.pairs import PairSet

    if n < 1:
        raise InvalidValue(f"causal_pairs must be >= 1, got {n}")
    if n >= len(ps):
        return PairSet(f"{ps.name}-all", ps.pairs, ps.source)
    groups: dict = {}
    for p in ps.pairs:
        groups.setdefault(p.category or "", []).append(p)
    cats = sorted(groups)
    share = np.array([len(groups[c]) for c in cats], dtype=np.float64) * n / len(ps)
    take = np.floor(share).astype(int)
    if n >= len(cats):
        take = np.maximum(take, 1)
    for i in np.argsort(-(share - np.floor(share)), kind="stable"):     # largest remainders first
        if take.sum() >= n:
            break
        take[i] += 1
    while take.sum() > n:                                                # the minimum of one overshot
        take[int(np.argmax(take))] -= 1
    rng = np.random.default_rng(seed)
    chosen = [p for c, k in zip(cats, take) for p in rng.choice(np.array(groups[c], dtype=object), size=int(k),
                                                               replace=False)]
    return PairSet(f"{ps.name}-{n}-seed{seed}", tuple(sorted(chosen, key=lambda p: p.pair_id)), ps.source)


def run_id(n: int, seed: int) -> str:
    return f"study-{n}-seed{seed}"


def patching_done(manifest: dict, rid: str, pairs, layers: list[int]) -> bool:
    """The vindex holds a complete study patching run of these pairs, site, positions and layers."""
    rec = (manifest.get("extraction") or {}).get(f"patching.{rid}") or {}
    p = rec.get("params") or {}
    return bool(rec.get("complete")) and p.get("pairs_sha256") == pairs.sha256 and p.get("sites") == [SITE] \
        and p.get("positions") == POSITIONS and p.get("layers") == sorted(layers)


def ensure_patching(source, root, vx, pairs, rid: str, layers, *, progress: bool = True) -> str:
    """Run (or resume) the study's patching run of `source` into the vindex at `root`; returns a status:
    'ok', or why there is no run (an encoder, or a vindex folder whose model is not known here)."""
    from vindex.errors import InvalidValue
    from vindex.ingest.patching import patch
    from vindex.ingest.sources import OFFLINE_MODELS, resolve_model
    from vindex.layers import parse_layers

    want = parse_layers(layers, vx.n_layers)
    if patching_done(vx.manifest, rid, pairs, want):
        return "ok"
    if source is None:     # an existing vindex folder: patch its model if it is one of the offline ones
        mid = (vx.manifest.get("model") or {}).get("id")
        source = next((name for name, m in OFFLINE_MODELS.items() if m.model_id == mid), None)
        if source is None:
            return (f"no patching run: {root} was given as a vindex folder and its model {mid!r} is not an "
                    f"offline one; run `vindex patch MODEL --out {root} --pairs ... --sites {SITE} "
                    f"--positions {POSITIONS} --run-id {rid}` first")
    src = resolve_model(source, progress=progress)
    if src.is_encoder:
        return f"no patching run: {src.name} is an encoder (no next token to restore)"
    try:
        patch(src, pairs, root, name=vx.name, sites=SITE, layers=want, positions=POSITIONS, run_id=rid,
              progress=progress)
    except InvalidValue as e:   # pairs this tokenizer cannot patch (answers of several tokens, unequal lengths)
        return f"no patching run: {e}"
    return "ok"


# -- the profiles --------------------------------------------------------------------------------
def restoration_matrices(t: pa.Table) -> dict:
    """From one model's patching rows (pair_id, layer, depth, position, restoration, logit_diff_clean,
    logit_diff_corrupt): layers [L], depths [L], pair ids [N], known [N] and restoration R[pos] [N, L]
    for pos 'subject' (each pair's smaller position) and 'last' (its larger; the same when they coincide)."""
    rows = t.to_pylist()
    layers = sorted({r["layer"] for r in rows})
    depth = {r["layer"]: r["depth"] for r in rows}
    pids = sorted({r["pair_id"] for r in rows})
    li, pi = {l: i for i, l in enumerate(layers)}, {p: i for i, p in enumerate(pids)}
    pos = {}
    for r in rows:
        pos.setdefault(r["pair_id"], set()).add(r["position"])
    R = {k: np.full((len(pids), len(layers)), np.nan) for k in ("subject", "last")}
    clean, corrupt = np.zeros(len(pids)), np.zeros(len(pids))
    for r in rows:
        i, ps = pi[r["pair_id"]], pos[r["pair_id"]]
        value = np.nan if r["restoration"] is None else r["restoration"]
        if r["position"] == min(ps):
            R["subject"][i, li[r["layer"]]] = value
        if r["position"] == max(ps):
            R["last"][i, li[r["layer"]]] = value
        clean[i], corrupt[i] = r["logit_diff_clean"], r["logit_diff_corrupt"]
    known = (clean > 0) & (corrupt < 0)
    return {"layers": np.array(layers), "depth": np.array([depth[l] for l in layers], dtype=np.float64),
            "pair_id": np.array(pids), "known": known, "R": R}


def resample_means(R: np.ndarray, resamples: int, rng) -> np.ndarray:
    """Means over pairs of `resamples` bootstrap resamples [B, L] of R [N, L] (rows drawn with replacement:
    one draw rng.integers(0, N, (B, N)), the draw scipy.stats.bootstrap makes)."""
    idx = rng.integers(0, R.shape[0], (resamples, R.shape[0]))
    return R[idx].mean(axis=1)


def peak_index(profiles: np.ndarray) -> np.ndarray:
    """l*: for profiles [..., L], the index of the layer with the largest gain over the layer before it."""
    return np.argmax(np.diff(profiles, axis=-1), axis=-1) + 1


def interval(x: np.ndarray, discrete: bool = False) -> tuple[float, float]:
    """The percentile bootstrap's 95% interval of resampled values x [B]."""
    a = (1 - CONFIDENCE) / 2
    if discrete:
        return float(np.quantile(x, a, method="lower")), float(np.quantile(x, 1 - a, method="higher"))
    lo, hi = np.percentile(x, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def model_profile(model: str, t: pa.Table, *, resamples: int, seed: int) -> tuple[list[dict], dict]:
    """(profile rows: mean restoration per position and layer with its interval; the peak row with the
    resampled peak depths) of one model's study patching rows."""
    m = restoration_matrices(t)
    n_run, known = len(m["pair_id"]), m["known"]
    peak = {"model": model, "n_pairs": n_run, "n_known": int(known.sum()), "n_layers_patched": len(m["layers"]),
            "resamples": resamples, "seed": seed}
    if known.sum() < 2 or len(m["layers"]) < 2:
        peak["status"] = (f"{int(known.sum())} of {n_run} pairs known (LD clean > 0 > LD corrupt) and "
                          f"{len(m['layers'])} layers patched: too few for a profile")
        return [], peak
    rng = np.random.default_rng([seed, zlib.crc32(model.encode())])
    rows, boot = [], {}
    for pos in ("subject", "last"):
        R = m["R"][pos][known]
        mean = R.mean(axis=0)
        boot[pos] = resample_means(R, resamples, rng)
        for j, layer in enumerate(m["layers"]):
            lo, hi = interval(boot[pos][:, j])
            rows.append({"model": model, "position": pos, "layer": int(layer), "depth": float(m["depth"][j]),
                         "n_pairs": int(known.sum()), "restoration": float(mean[j]), "ci_low": lo, "ci_high": hi})
    last = m["R"]["last"][known].mean(axis=0)
    j = int(peak_index(last))
    depths = m["depth"][peak_index(boot["last"])]
    band = (m["depth"] >= ENTITY_BAND[0]) & (m["depth"] <= ENTITY_BAND[1])
    peak.update(status="ok", peak_layer=int(m["layers"][j]), peak_depth=float(m["depth"][j]),
                peak_gain=float(last[j] - last[j - 1]), peak_ci_low=interval(depths, True)[0],
                peak_ci_high=interval(depths, True)[1], peak_share=float(np.mean(depths == m["depth"][j])),
                layer_step=float(np.min(np.diff(m["depth"]))), peak_depths=depths.tolist())
    for pos in ("subject", "last"):   # the mean restoration over the entity band's layers, with its interval
        if band.any():
            peak[f"band_{pos}"] = float(m["R"][pos][known][:, band].mean())
            peak[f"band_{pos}_ci_low"], peak[f"band_{pos}_ci_high"] = interval(boot[pos][:, band].mean(axis=1))
    return rows, peak


# -- the verdicts ----------------------------------------------------------------------------------
def verdict(lo: float, hi: float, target_lo: float, target_hi: float) -> str:
    """'matches' when [lo, hi] lies within [target_lo, target_hi], 'differs' when wholly outside it,
    else 'undecided'."""
    if target_lo <= lo and hi <= target_hi:
        return "matches"
    if hi < target_lo or lo > target_hi:
        return "differs"
    return "undecided"


def comparisons(peaks: list[dict], cka_peaks: dict) -> list[dict]:
    """The verdict rows: each model's peak depth against the entity band; each two models' peaks
    (difference of independent resamples); each model's peak against its side of each pair's CKA peak.
    cka_peaks: (model_a, model_b) -> (depth_a, depth_b, layer_a, layer_b, cka) of the peak matched-depth CKA."""
    ok = {p["model"]: p for p in peaks if p.get("status") == "ok"}
    out = []
    for m, p in ok.items():
        half = p["layer_step"] / 2
        lo_t, hi_t = ENTITY_BAND[0] - half, ENTITY_BAND[1] + half
        out.append({"test": "peak restoration in the entity band", "model": m, "other": None,
                    "estimate": p["peak_depth"], "ci_low": p["peak_ci_low"], "ci_high": p["peak_ci_high"],
                    "target": f"{lo_t:.3f}-{hi_t:.3f}",
                    "verdict": verdict(p["peak_ci_low"], p["peak_ci_high"], lo_t, hi_t)})
    names = list(ok)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = np.array(ok[a]["peak_depths"]) - np.array(ok[b]["peak_depths"])
            lo, hi = interval(d, True)
            out.append({"test": "peak restoration: same depth in both models", "model": a, "other": b,
                        "estimate": ok[a]["peak_depth"] - ok[b]["peak_depth"], "ci_low": lo, "ci_high": hi,
                        "target": f"+-{TOLERANCE}", "verdict": verdict(lo, hi, -TOLERANCE, TOLERANCE)})
    for (a, b), (da, db, la, lb, cka) in cka_peaks.items():
        if a == b:
            continue    # a model against itself: CKA is 1 at every depth, no peak to compare
        for m, other, d in ((a, b, da), (b, a, db)):
            if m not in ok:
                continue
            x = np.array(ok[m]["peak_depths"]) - d
            lo, hi = interval(x, True)
            out.append({"test": "peak restoration at the peak cross-model CKA", "model": m, "other": other,
                        "estimate": ok[m]["peak_depth"] - d, "ci_low": lo, "ci_high": hi,
                        "target": f"+-{TOLERANCE} (CKA peak at depth {d:.2f}: layers {la}/{lb}, CKA {cka:.2f})",
                        "verdict": verdict(lo, hi, -TOLERANCE, TOLERANCE)})
    return out


def claim_verdict(rows: list[dict], n_models: int) -> str:
    """'holds here' when every test matches (with two or more models patched), 'does not hold here' when
    any differs, else 'undecided at this sample size'."""
    if not rows:
        return "not tested (no model with a patching profile)"
    if any(r["verdict"] == "differs" for r in rows):
        return "does not hold here"
    tests = {r["test"] for r in rows}
    if n_models >= 2 and len(tests) == 3 and all(r["verdict"] == "matches" for r in rows):
        return "holds here"
    if n_models < 2:
        return "undecided (one model: the cross-model parts need two)"
    return "undecided at this sample size"


def cka_peaks(diag: pa.Table, pairs, pooling: str, estimator: str) -> dict:
    """(model_a, model_b) -> (depth_a, depth_b, layer_a, layer_b, cka) of the peak matched-depth CKA over
    the computed layers (layer 0, the embedding output, is left out: its CKA says how alike the two
    tokenizers split the prompts, and a restoration peak, a gain over the layer before, is never there)."""
    import pyarrow.compute as pc

    from .analyses import peak_pair
    diag = diag.filter(pc.and_(pc.greater(diag["layer_a"], 0), pc.greater(diag["layer_b"], 0)))
    out = {}
    for a, b in pairs:
        r = peak_pair(diag, a, b, pooling, estimator)
        if r is not None:
            out[(a, b)] = (r["depth_a"], r["depth_b"], r["layer_a"], r["layer_b"], r["diagonal"])
    return out


PATCHING_ROWS = """
SELECT pair_id, layer, depth::DOUBLE AS depth, position, restoration::DOUBLE AS restoration,
       logit_diff_clean::DOUBLE AS logit_diff_clean, logit_diff_corrupt::DOUBLE AS logit_diff_corrupt
FROM patching WHERE model = ? AND run_id = ? AND site = ? ORDER BY pair_id, layer, position
"""


def causal_tables(roots: dict, statuses: dict, rid: str, diag: pa.Table, pairs, *, pooling: str,
                  estimator: str, resamples: int, seed: int) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(causal_profile, causal_peaks, causal_tests) for the models in `roots` (name -> vindex folder)
    whose patching status is 'ok'; the others get a peaks row with their status."""
    from vindex.query import connect

    profile, peaks = [], []
    for name, root in roots.items():
        if statuses.get(name) != "ok":
            peaks.append({"model": name, "status": statuses.get(name)})
            continue
        con = connect(root)
        t = con.execute(PATCHING_ROWS, [name, rid, SITE]).to_arrow_table()
        con.close()
        rows, peak = model_profile(name, t, resamples=resamples, seed=seed)
        profile += rows
        peaks.append(peak)
    tests = comparisons(peaks, cka_peaks(diag, pairs, pooling, estimator))
    n_ok = sum(p.get("status") == "ok" for p in peaks)
    tests.append({"test": "the motivating claim", "model": None, "other": None, "verdict": claim_verdict(tests, n_ok)})
    return pa.Table.from_pylist(profile), pa.Table.from_pylist(peaks), pa.Table.from_pylist(tests)
