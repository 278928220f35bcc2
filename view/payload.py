"""The viewer's payload: everything the page shows, computed by the SQL layer, as plain JSON.

    con = vindex.query.connect("lake/")
    payload = build_payload(con, permutations=99)

What goes in (and what never does): the manifests (provenance), CKA matrices for every model pair
(itself included) x estimator x pooling with the permutation null, each layer's FFN features
capped to `max_features` (strongest c_score first, `top_tokens` top tokens each), the strongest
OV-gate heads into each layer, and the layer_stats spectra. Raw activations never: a lake of large
models still gives a page of a few MB, whatever its d_model or prompt count.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from itertools import combinations_with_replacement

import duckdb
from tqdm.auto import tqdm

from vindex import __version__
from vindex.defaults import DEFAULT_ESTIMATOR, DEFAULT_PERMUTATIONS, DEFAULT_POOLING
from vindex.errors import NotFound, VindexError
from vindex.summary import provenance
from vindex.query.functions import connection_vindexes
from vindex.query.lake_cka import pair_tables
from vindex.query.sqltext import literal

from .page import finite_or_none

ESTIMATORS = ("biased", "debiased")
# The pooling the page opens on: the first of these the pair has. The library's default first
# (vindex/defaults.py, README "Defaults": `mean_nosink`, depth rho 0.94-0.96 with neither known
# confound), then `last` (rho 0.95, but at shallow depth largely last-token identity), then `mean`
# (it includes the attention sink, which wrecks depth correspondence: rho -0.15).
POOLING_ORDER = tuple(dict.fromkeys((DEFAULT_POOLING, "mean_nosink", "last", "mean")))
# one-line notes shown with a matrix of a pooling with a measured confound (docs/study.md)
POOLING_NOTES = {
    "last": "last-token CKA at shallow depth is largely token identity (which punctuation a prompt ends in); "
            "deep last-token CKA survives that control (docs/study.md)",
    "mean": "mean pooling includes the attention-sink token, which can erase depth correspondence "
            "(depth rho -0.15 in docs/study.md); prefer mean_nosink",
}
# what the page opens on: matched-depth edges, the permutation null shown and applied
DEFAULTS = {"poolings": list(POOLING_ORDER),
            "estimators": list(dict.fromkeys((DEFAULT_ESTIMATOR, *ESTIMATORS))), "edges": "matched",
            "threshold": 0.0, "hide_null": True, "view": "layers"}
MATRIX_ORDER = ("q", "k", "v", "o", "gate", "up", "down")
FORMAT = "vindex-view/1"


def build_payload(con, models: list[str] | None = None, estimators=ESTIMATORS, poolings: list[str] | None = None,
                  prompt_set: str | None = None, permutations: int = DEFAULT_PERMUTATIONS, preprocess: str | None = None,
                  max_features: int = 256, top_tokens: int = 5, max_heads: int = 8, title: str | None = None,
                  sources: list[str] | None = None, progress: bool = True) -> dict:
    """The page's data from a `vindex.query.connect` connection.

    models: which vindexes (default: all, in name order). poolings: which poolings to compare
    (default: every pooling both models of a pair have). prompt_set: the rows CKA aligns on
    (default: the common prompt set with the most prompts). permutations: size of the CKA
    permutation null (0 = none). preprocess: the SQL layer's CKA preprocessing (None: its default).
    max_features: features kept per layer (0 = all).
    """
    all_models = [r[0] for r in con.sql("SELECT model FROM models ORDER BY model").fetchall()]
    if models:
        unknown = [m for m in models if m not in all_models]
        if unknown:
            raise NotFound(f"model(s) {unknown} are not in the sources (they hold: {', '.join(all_models)})")
    names = list(models or all_models)
    if not names:
        raise NotFound("the sources hold no vindex")
    notes: list[str] = []  # what was left out and why, shown with the provenance
    scope = f"model IN ({', '.join(literal(m) for m in names)})"
    return {
        "format": FORMAT,
        "title": title or (names[0] if len(names) == 1 else f"{len(names)} models"),
        "generated": {"by": f"vindex-lake {__version__}", "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "sources": [str(s) for s in sources or []]},
        "models": model_records(con, names),
        "cka": cka_records(con, names, estimators, poolings, prompt_set, permutations, preprocess, progress, notes),
        "features": feature_records(con, scope, max_features, top_tokens),
        "feature_index": feature_index(con, scope, top_tokens),
        "heads": head_records(con, scope, max_heads),
        "spectra": spectrum_records(con, scope),
        "notes": notes,
        "defaults": DEFAULTS,
        "pooling_notes": POOLING_NOTES,
    }


# -- provenance ---------------------------------------------------------------------------------
def model_records(con, names: list[str]) -> list[dict]:
    """Each model's manifest, less its file lists (row counts per table stay), and its provenance in words
    (`vindex.summary.provenance`: source, quantization, variant, license, language, as `vindex info` and
    the dataset card say them)."""
    rows = dict(con.sql(f"SELECT model, manifest FROM models WHERE model IN ({', '.join(map(literal, names))})").fetchall())
    out = []
    for name in names:
        m = json.loads(rows[name])
        tables = {t: {"rows": sum(e["rows"] for e in v.get("files", [])), "files": len(v.get("files", []))}
                  for t, v in sorted((m.get("tables") or {}).items()) if v.get("files")}
        n_layers = int(m["model"]["n_layers"])
        out.append({"name": name, "model": m["model"], "provenance": provenance(m), "extraction": m.get("extraction") or {},
                    "prompt_sets": m.get("prompt_sets") or {}, "tables": tables,
                    "layers": list(range(n_layers + 1)), "created_by": m.get("created_by"),
                    "updated_at": m.get("updated_at")})
    return out


# -- CKA ----------------------------------------------------------------------------------------
def cka_jobs(con, names, estimators, poolings, prompt_set, notes: list | None = None) -> list[tuple]:
    """(model_a, model_b, estimator, pooling, prompt_set) for every pair that has common rows; a
    pair with pooled rows but none in common is noted (different prompt sets or poolings)."""
    have = {}  # model -> {prompt_set: {pooling: n_prompts}}
    for model, ps, pooling, n in con.sql(
            "SELECT model, prompt_set, pooling, count(DISTINCT prompt_id) FROM pooled "
            f"WHERE model IN ({', '.join(map(literal, names))}) GROUP BY ALL").fetchall():
        have.setdefault(model, {}).setdefault(ps, {})[pooling] = n
    jobs = []
    for a, b in combinations_with_replacement(names, 2):
        common = set(have.get(a, {})) & set(have.get(b, {}))
        if prompt_set is not None:
            common &= {prompt_set}
        ps = max(sorted(common), key=lambda s: max(have[a][s].values())) if common else None
        pools = sorted(set(have[a][ps]) & set(have[b][ps])) if common else []
        if poolings:
            pools = [p for p in pools if p in poolings]
        if not pools and a in have and b in have and notes is not None:
            notes.append(f"no CKA for {a} x {b}: no prompt set and pooling in common"
                         + (f" among prompt_set={prompt_set!r}" if prompt_set else "")
                         + (f" among poolings {list(poolings)}" if poolings else ""))
        jobs += [(a, b, est, pool, ps) for pool in pools for est in estimators]
    return jobs


def cka_records(con, names, estimators, poolings, prompt_set, permutations, preprocess, progress,
                notes: list | None = None) -> list[dict]:
    """`cka_matrix` for every job, from the Gram cache (`vindex.query.lake_cka.pair_tables`): each
    model's Grams are read or computed once per pooling and estimator, then each pair is one matrix
    product (and its permutation null) of stored Grams. A pair the SQL layer refuses (an incomplete
    prompt set, rows that do not align) is left out with its reason in `notes`, not fatal. On a
    connection not made by `connect` each job runs the SQL `cka_matrix` instead."""
    jobs = cka_jobs(con, names, estimators, poolings, prompt_set, notes)
    vindexes = connection_vindexes(con)
    if vindexes is None or not set(names) <= set(vindexes):
        return _sql_records(con, jobs, permutations, preprocess, progress, notes)
    out = []
    bar = tqdm(total=len(jobs), desc="CKA matrices", unit="matrix", disable=not progress or not jobs)
    results = pair_tables(vindexes, jobs, preprocess=preprocess or "none", permutations=int(permutations))
    for (a, b, est, pool, ps), (table, why) in zip(jobs, results):
        bar.update(1)
        if table is None or table.num_rows == 0:
            if notes is None:
                raise VindexError(f"CKA {a} x {b} ({est}, {pool}, prompt set {ps}): {'; '.join(why)}")
            notes.append(f"CKA {a} x {b} ({est}, {pool}, prompt set {ps}) left out: {'; '.join(why) or 'no layer pair'}")
            continue
        if notes is not None:
            notes += [f"CKA {a} x {b} ({est}, {pool}): {w}" for w in why]
        rows = list(zip(*(table.column(c).to_pylist() for c in table.column_names)))
        out.append(matrix_record(table.column_names, rows, a, b, est, pool, ps, permutations,
                                 "vindex.query.lake_cka.pair_tables (the Gram cache; cka_matrix's numbers)"))
    bar.close()
    return out


def _sql_records(con, jobs, permutations, preprocess, progress, notes) -> list[dict]:
    out = []
    for a, b, est, pool, ps in tqdm(jobs, desc="CKA matrices", unit="matrix", disable=not progress or not jobs):
        args = [literal(a), literal(b), f"pooling := {literal(pool)}", f"estimator := {literal(est)}",
                f"prompt_set := {literal(ps)}", f"permutations := {int(permutations)}"]
        if preprocess is not None:
            args.append(f"preprocess := {literal(preprocess)}")
        try:
            rel = con.sql(f"SELECT * FROM cka_matrix({', '.join(args)})")
            columns, rows = rel.columns, rel.fetchall()
        except duckdb.Error as e:
            if notes is None:
                raise
            notes.append(f"CKA {a} x {b} ({est}, {pool}, prompt set {ps}) left out: {str(e).splitlines()[0]}")
            continue
        out.append(matrix_record(columns, rows, a, b, est, pool, ps, permutations))
    return out


def matrix_record(columns, rows, a, b, estimator, pooling, prompt_set, permutations,
                  computed_by: str = "cka_matrix (vindex SQL)") -> dict:
    """One cka_matrix result (rows of layer_a, layer_b, depth_a, depth_b, cka, ...) as 2-D lists.
    The page shows CKA, the null's p95 and the p-value; null_mean stays in SQL (a quarter less page)."""
    cols = {k: [r[i] for r in rows] for i, k in enumerate(columns)}
    la, lb = sorted(set(cols["layer_a"])), sorted(set(cols["layer_b"]))
    ia, ib = {x: i for i, x in enumerate(la)}, {x: j for j, x in enumerate(lb)}
    depth_a = dict(zip(cols["layer_a"], cols["depth_a"]))
    depth_b = dict(zip(cols["layer_b"], cols["depth_b"]))

    def grid(name):
        if name not in cols or all(v is None for v in cols[name]):
            return None
        g = [[None] * len(lb) for _ in la]
        for x, y, v in zip(cols["layer_a"], cols["layer_b"], cols[name]):
            g[ia[x]][ib[y]] = finite_or_none(v)
        return g

    first = dict(zip(columns, rows[0])) if rows else {}
    return {"model_a": a, "model_b": b, "estimator": estimator, "pooling": pooling,
            "prompt_set": prompt_set, "kernel": first.get("kernel"), "preprocess": first.get("preprocess"),
            "permutations": permutations, "seed": first.get("seed"), "n_prompts": first.get("n"),
            "computed_by": computed_by,
            "layers_a": la, "layers_b": lb,
            "depth_a": [finite_or_none(depth_a[x]) for x in la], "depth_b": [finite_or_none(depth_b[y]) for y in lb],
            "cka": grid("cka"), "null_p95": grid("null_p95"), "p_value": grid("p_value")}


# -- features, heads, spectra -------------------------------------------------------------------
def feature_records(con, scope: str, max_features: int, top_tokens: int) -> dict:
    """{model: {layer: {n_features, rows: [[feature, expert, top_token, c_score, [[token, logit]..]]]}}}."""
    cap = f"QUALIFY rn <= {int(max_features)}" if max_features else ""
    rel = con.sql(f"""
        SELECT model, layer, expert, feature, top_token, c_score, top_tokens[1:{int(top_tokens)}] AS top_tokens,
               count(*) OVER (PARTITION BY model, layer) AS n_features,
               row_number() OVER (PARTITION BY model, layer ORDER BY c_score DESC NULLS LAST, expert, feature) AS rn
        FROM features WHERE {scope} {cap} ORDER BY model, layer, rn""")
    out: dict = {}
    for model, layer, expert, feature, top, c, toks, n, _ in rel.fetchall():
        rec = out.setdefault(model, {}).setdefault(str(layer), {"n_features": n, "rows": []})
        rec["rows"].append([feature, expert, top, finite_or_none(c, 5),
                            [[t["token"], finite_or_none(t["logit"], 4)] for t in toks or []]])
    return out


def feature_index(con, scope: str, top_tokens: int) -> dict:
    """Every feature of every layer and model, for the page's search: token ids into one shared
    token table, no logits (those are in `features`, for the top `max_features` of a layer).

    {"tokens": [text, ...], "models": {model: {layer: {"feature": [..], "expert": [..] | None,
     "c": [c_score, ..], "top": [top_token id, ..], "tops": [[token id, ..], ..]}}}}, each layer's
    features strongest c_score first. About 50 bytes a feature with 5 top tokens: columns, not
    records, and each token's text written once; measured sizes in docs/view.md.
    """
    rel = con.sql(f"""
        SELECT model, layer, expert, feature, top_token, c_score,
               list_transform(top_tokens[1:{int(top_tokens)}], t -> t.token) AS toks
        FROM features WHERE {scope}
        ORDER BY model, layer, c_score DESC NULLS LAST, expert, feature""")
    ids: dict[str, int] = {}

    def tid(text):
        return None if text is None else ids.setdefault(text, len(ids))
    out: dict = {}
    for model, layer, expert, feature, top, c, toks in rel.fetchall():
        rec = out.setdefault(model, {}).setdefault(str(layer), {"feature": [], "expert": [], "c": [], "top": [], "tops": []})
        rec["feature"].append(feature)
        rec["expert"].append(expert)
        rec["c"].append(finite_or_none(c, 4))
        rec["top"].append(tid(top))
        rec["tops"].append([tid(t) for t in toks or []])
    for layers in out.values():
        for rec in layers.values():
            if all(e is None for e in rec["expert"]):
                rec["expert"] = None
    return {"tokens": list(ids), "models": out}


def head_records(con, scope: str, max_heads: int) -> dict:
    """{model: {feature_layer: [{layer, head, variant, total_coupling, top: [[feature, coupling, top_token]..]}]}}:
    the heads whose OV-gate coupling into a layer's FFN is largest (total over all its features),
    each with its three strongest features and their down_meta top token (when features has it)."""
    rel = con.sql(f"""
        WITH og AS (
            SELECT o.*, f.top_token FROM ov_gate AS o
            LEFT JOIN features AS f ON f.model = o.model AND f.layer = o.feature_layer AND f.feature = o.feature
                 AND f.expert IS NOT DISTINCT FROM o.expert
            WHERE o.{scope} AND o.rank <= 3),
        per_head AS (
            SELECT model, feature_layer, layer, head, variant, max(total_coupling) AS total,
                   list(feature ORDER BY rank) AS feats, list(coupling ORDER BY rank) AS couplings,
                   list(coalesce(top_token, '') ORDER BY rank) AS tokens
            FROM og GROUP BY ALL)
        SELECT * FROM per_head
        QUALIFY row_number() OVER (PARTITION BY model, feature_layer, variant ORDER BY total DESC, layer, head) <= {int(max_heads)}
        ORDER BY model, feature_layer, variant, total DESC""")
    out: dict = {}
    for model, fl, layer, head, variant, total, feats, couplings, tokens in rel.fetchall():
        out.setdefault(model, {}).setdefault(str(fl), []).append(
            {"layer": layer, "head": head, "variant": variant, "total_coupling": finite_or_none(total, 5),
             "top": [[f, finite_or_none(c, 4), t or None] for f, c, t in zip(feats, couplings, tokens)]})
    return out


def spectrum_records(con, scope: str) -> dict:
    """{model: {layer: [{matrix, rows, cols, effective_rank, ..., top_singular_values}]}}."""
    rel = con.sql(f"""
        SELECT model, layer, matrix, rows, cols, effective_rank, spectral_entropy, energy_top1pct,
               energy_top10pct, top_singular_values[1:32] AS sv
        FROM layer_stats WHERE {scope} ORDER BY model, layer""")
    out: dict = {}
    for model, layer, matrix, r, c, er, ent, e1, e10, sv in rel.fetchall():
        out.setdefault(model, {}).setdefault(str(layer), []).append(
            {"matrix": matrix, "rows": r, "cols": c, "effective_rank": finite_or_none(er, 5),
             "spectral_entropy": finite_or_none(ent, 5), "energy_top1pct": finite_or_none(e1, 5),
             "energy_top10pct": finite_or_none(e10, 5), "top_singular_values": [finite_or_none(x, 4) for x in sv or []]})
    for layers in out.values():
        for rows in layers.values():
            rows.sort(key=lambda r: (MATRIX_ORDER.index(r["matrix"]) if r["matrix"] in MATRIX_ORDER else 99, r["matrix"]))
    return out


def check_payload(payload: dict) -> None:
    """Refuse a payload that holds nothing to show (a clear error instead of an empty page)."""
    if not payload["models"]:
        raise VindexError("nothing to view: no models")
    if not (payload["cka"] or payload["features"] or payload["spectra"] or payload["heads"]):
        names = ", ".join(m["name"] for m in payload["models"])
        raise VindexError(f"nothing to view for {names}: the lake has no pooled, features, ov_gate or layer_stats "
                          "rows (build them with `vindex ingest` first)")


__all__ = ["build_payload", "check_payload", "ESTIMATORS", "FORMAT", "POOLING_ORDER", "DEFAULTS"]
