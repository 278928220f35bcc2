"""The study's analyses, each a function from a `vindex.query` connection to a pyarrow Table.

The numbers come from the SQL layer (`cka_matrix`, `cka_depth`, `mutual_knn_matrix`, `cka_gram`,
`cka_null`) and `vindex.query.cluster`; this module only chooses what to compare (which
prompts, which layer pairs, which features) and summarises. Every table it returns is written
as Parquet by the report, so each figure can be re-queried.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from vindex.query.analyses import cka_depth, cka_matrix, mutual_knn_matrix

from .labels import label_features, normalize_token
from .lexicon import Lexicon

# depth bands of the matched-depth table: [lo, hi) of model_a's normalized depth (the last one closed)
DEPTH_BANDS = ((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0))


def rows(con, sql: str, params=()) -> pa.Table:
    return con.execute(sql, list(params)).to_arrow_table()


def band_name(lo: float, hi: float) -> str:
    return f"{lo:.0%}-{hi:.0%}"


def band_of(depth: float, bands=DEPTH_BANDS) -> str:
    for lo, hi in bands:
        if lo <= depth < hi or (hi == bands[-1][1] and depth == hi):
            return band_name(lo, hi)
    raise ValueError(f"depth {depth} outside the bands {bands}")


# -- CKA across layers ---------------------------------------------------------------------------
def cka_matrices(con, pairs, poolings, estimators, prompt_set: str, allow_partial: bool = False) -> pa.Table:
    """Every layer pair's CKA for each (pair, pooling, estimator), without a null (the heatmaps)."""
    parts = [cka_matrix(con, a, b, pooling=p, estimator=e, prompt_set=prompt_set, permutations=0,
                        allow_partial=allow_partial)
             for a, b in pairs for p in poolings for e in estimators]
    return pa.concat_tables(parts) if parts else pa.table({})


def cka_diagonals(con, pairs, poolings, estimators, prompt_set: str, permutations: int, seed: int,
                  band: float, bar=None, allow_partial: bool = False) -> pa.Table:
    """`cka_depth` for each (pair, pooling, estimator): per layer of model_a, CKA with model_b's
    layer at the nearest normalized depth, its permutation null, and the off-diagonal band mean."""
    parts = []
    for a, b in pairs:
        for p in poolings:
            for e in estimators:
                if bar is not None:
                    bar.set_postfix_str(f"{a} x {b}, {p}, {e}")
                parts.append(cka_depth(con, a, b, pooling=p, estimator=e, prompt_set=prompt_set,
                                       permutations=permutations, seed=seed, band=band,
                                       allow_partial=allow_partial))
                if bar is not None:
                    bar.update()
    return pa.concat_tables(parts)


def matched_bands(diag: pa.Table, bands=DEPTH_BANDS) -> pa.Table:
    """The matched-depth table: per depth band of model_a, the diagonal CKA (mean, min, max over the
    band's layers), the largest null p95 and the largest p-value among them (every layer pair in
    the band is at least that significant), and the off-diagonal mean for contrast."""
    d = diag.to_pylist()
    groups: dict[tuple, list[dict]] = {}
    for r in d:
        key = (r["model_a"], r["model_b"], r["pooling"], r["estimator"], band_of(r["depth_a"], bands))
        groups.setdefault(key, []).append(r)
    out = []
    order = {band_name(lo, hi): i for i, (lo, hi) in enumerate(bands)}
    for (a, b, p, e, name), rs in sorted(groups.items(), key=lambda kv: (*kv[0][:4], order[kv[0][4]])):
        cka = [r["diagonal"] for r in rs if r["diagonal"] is not None]
        off = [r["off_mean"] for r in rs if r["off_mean"] is not None]
        nul = [r["null_p95"] for r in rs if r["null_p95"] is not None]
        pv = [r["p_value"] for r in rs if r["p_value"] is not None]
        out.append({"model_a": a, "model_b": b, "pooling": p, "estimator": e, "band": name,
                    "layers_a": f"{rs[0]['layer_a']}-{rs[-1]['layer_a']}",
                    "layers_b": f"{min(r['layer_b'] for r in rs)}-{max(r['layer_b'] for r in rs)}",
                    "n_layers": len(rs), "cka": _mean(cka), "cka_min": min(cka, default=None),
                    "cka_max": max(cka, default=None), "off_diagonal": _mean(off),
                    "null_p95": max(nul, default=None), "p_value": max(pv, default=None)})
    return pa.Table.from_pylist(out)


def depth_correspondence(matrices: pa.Table) -> pa.Table:
    """Spearman rho between each layer's depth and the depth of its best-matching layer (argmax CKA)
    in the other model, both directions: 1 means deeper layers of one match deeper layers of the other."""
    from scipy.stats import spearmanr

    groups: dict[tuple, list[dict]] = {}
    for r in matrices.to_pylist():
        groups.setdefault((r["model_a"], r["model_b"], r["pooling"], r["estimator"]), []).append(r)
    out = []
    for (a, b, p, e), rs in groups.items():
        for direction, src, dst in (("a->b", "a", "b"), ("b->a", "b", "a")):
            best: dict[int, tuple[float, float, float]] = {}
            for r in rs:
                if r["cka"] is None:
                    continue
                layer = r[f"layer_{src}"]
                if layer not in best or r["cka"] > best[layer][0]:
                    best[layer] = (r["cka"], r[f"depth_{src}"], r[f"depth_{dst}"])
            x = [v[1] for v in best.values()]
            y = [v[2] for v in best.values()]
            rho = float(spearmanr(x, y).statistic) if len(x) > 2 and len(set(y)) > 1 else None
            out.append({"model_a": a, "model_b": b, "pooling": p, "estimator": e, "direction": direction,
                        "n_layers": len(x), "spearman_rho": rho})
    return pa.Table.from_pylist(out)


def matched_pairs(diag: pa.Table, model_a: str, model_b: str) -> list[tuple[int, int]]:
    """(layer_a, layer_b) pairs at matched depth, as `cka_depth` chose them."""
    seen = []
    for r in diag.to_pylist():
        if r["model_a"] == model_a and r["model_b"] == model_b and (r["layer_a"], r["layer_b"]) not in seen:
            seen.append((r["layer_a"], r["layer_b"]))
    return seen


# -- mutual k-NN ---------------------------------------------------------------------------------
def knn_alignment(con, pairs, pooling: str, k: int, prompt_set: str, diag: pa.Table, bar=None,
                  allow_partial: bool = False) -> pa.Table:
    """Mutual k-NN alignment (Huh et al. 2024) at matched depth, with its chance level k/(n-1)."""
    out = []
    for a, b in pairs:
        m = mutual_knn_matrix(con, a, b, k=k, pooling=pooling, prompt_set=prompt_set,
                              allow_partial=allow_partial).to_pylist()
        by = {(r["layer_a"], r["layer_b"]): r for r in m}
        for la, lb in matched_pairs(diag, a, b):
            r = by[(la, lb)]
            out.append({"model_a": a, "model_b": b, "pooling": pooling, "layer_a": la, "layer_b": lb,
                        "depth_a": r["depth_a"], "depth_b": r["depth_b"], "band": band_of(r["depth_a"]),
                        "k": k, "n": r["n"], "mutual_knn": r["mutual_knn"], "chance": k / (r["n"] - 1)})
        if bar is not None:
            bar.update()
    return pa.Table.from_pylist(out)


# -- CKA over a subset of prompts ----------------------------------------------------------------
def _subset_grams(name: str, model: str, layers: str) -> str:
    """One model's unit Grams per (group, layer) over the selected prompts (SUBSET_CKA's two sides)."""
    return f"""{name} AS (SELECT s.grp, r.layer, any_value(r.depth)::DOUBLE AS depth, count(*) AS n,
              rows_key(list((r.prompt_set, r.prompt_id) ORDER BY r.prompt_set, r.prompt_id)) AS k,
              cka_gram(list(r.act ORDER BY r.prompt_set, r.prompt_id), estimator := $estimator) AS g
       FROM pooled AS r JOIN sel AS s ON s.prompt_set = r.prompt_set AND s.prompt_id = r.prompt_id
       WHERE r.model = {model} AND r.pooling = $pooling AND r.layer IN (SELECT {layers} FROM want)
       GROUP BY s.grp, r.layer)"""


SUBSET_CKA = """
WITH sel AS (SELECT prompt_set, prompt_id, grp FROM study_subset),
     want AS (SELECT layer_a, layer_b FROM study_pairs),
{side_a},
{side_b},
pairs AS (SELECT a.grp, a.layer AS layer_a, b.layer AS layer_b, a.depth AS depth_a, b.depth AS depth_b, a.n,
                 list_dot_product(a.g, b.g) AS cka,
                 cka_null(a.g, b.g, permutations := $permutations, seed := $seed) AS nul
          FROM ga AS a JOIN gb AS b ON a.grp = b.grp AND a.k = b.k
          JOIN want AS w ON w.layer_a = a.layer AND w.layer_b = b.layer)
SELECT grp, layer_a, layer_b, depth_a, depth_b, n, cka, nul.null_mean AS null_mean, nul.null_p95 AS null_p95,
       nul.p_value AS p_value
FROM pairs ORDER BY grp, layer_a
""".replace("{side_a}", _subset_grams("ga", "$model_a", "layer_a")).replace(
    "{side_b}", _subset_grams("gb", "$model_b", "layer_b"))


def subset_cka(con, model_a: str, model_b: str, layer_pairs, subset: pa.Table, *, pooling: str,
               estimator: str, permutations: int, seed: int) -> pa.Table:
    """CKA at the given layer pairs over groups of prompts (`subset`: prompt_set, prompt_id, grp),
    each group with its own permutation null. Groups whose rows differ between the models are left
    out (the SQL joins on `rows_key`, the fingerprint the CKA matrix functions compare)."""
    con.register("study_subset", subset)
    con.register("study_pairs", pa.table({"layer_a": [p[0] for p in layer_pairs],
                                          "layer_b": [p[1] for p in layer_pairs]}))
    try:
        t = con.execute(SUBSET_CKA, {
            "model_a": model_a, "model_b": model_b, "pooling": pooling, "estimator": estimator,
            "permutations": int(permutations), "seed": int(seed)}).to_arrow_table()
    finally:
        con.unregister("study_subset")
        con.unregister("study_pairs")
    n = t.num_rows
    meta = {"model_a": [model_a] * n, "model_b": [model_b] * n, "pooling": [pooling] * n,
            "estimator": [estimator] * n}
    t = t.append_column("band", pa.array([band_of(x) for x in t.column("depth_a").to_pylist()], pa.string()))
    for i, (name, values) in enumerate(meta.items()):
        t = t.add_column(i, name, pa.array(values, pa.string()))
    return t


def prompt_categories(con, model: str, prompt_set: str) -> pa.Table:
    """prompt_set, prompt_id, grp = the prompt's category."""
    return rows(con, "SELECT prompt_set, prompt_id, category AS grp FROM prompts "
                     "WHERE model = ? AND prompt_set = ? AND category IS NOT NULL ORDER BY prompt_id",
                [model, prompt_set])


def last_tokens(con, models, prompt_set: str) -> pa.Table:
    """Each prompt's last content token per model (as the tokenizer split it), and its normalised form."""
    t = rows(con, """
        SELECT model, prompt_set, prompt_id, arg_max(token, token_index) AS last_token
        FROM activations
        WHERE model IN (SELECT unnest(?::VARCHAR[])) AND prompt_set = ? AND NOT special
          AND layer = (SELECT min(a2.layer) FROM activations AS a2 WHERE a2.model = activations.model)
        GROUP BY ALL ORDER BY model, prompt_id""", [list(models), prompt_set])
    norm = [normalize_token(x) or x for x in t.column("last_token").to_pylist()]
    return t.append_column("last_token_norm", pa.array(norm, pa.string()))


def same_ending_subset(last: pa.Table, models) -> tuple[pa.Table, dict]:
    """The prompts whose last content token is the same for every model and is the most common such
    token (e.g. '?'), as a one-group subset; and the share of each ending, for the report."""
    by_prompt: dict[tuple, dict[str, str]] = {}
    for r in last.to_pylist():
        by_prompt.setdefault((r["prompt_set"], r["prompt_id"]), {})[r["model"]] = r["last_token_norm"]
    agree = {k: next(iter(v.values())) for k, v in by_prompt.items()
             if len(v) == len(set(models)) and len(set(v.values())) == 1}
    counts: dict[str, int] = {}
    for tok in agree.values():
        counts[tok] = counts.get(tok, 0) + 1
    shares = {tok: c / max(len(by_prompt), 1) for tok, c in sorted(counts.items(), key=lambda kv: -kv[1])}
    if not counts:
        return pa.table({"prompt_set": pa.array([], pa.string()), "prompt_id": pa.array([], pa.int32()),
                         "grp": pa.array([], pa.string())}), shares
    top = max(counts, key=lambda t: (counts[t], t))
    keep = sorted(k for k, tok in agree.items() if tok == top)
    subset = pa.table({"prompt_set": [k[0] for k in keep], "prompt_id": pa.array([k[1] for k in keep], pa.int32()),
                       "grp": [f"ends with {top!r}"] * len(keep)})
    return subset, shares


# -- attention sinks -----------------------------------------------------------------------------
SINK_PROFILE = """
WITH t AS (
  SELECT model, layer, depth, special, norm,
         row_number() OVER (PARTITION BY model, layer, prompt_set, prompt_id, special ORDER BY token_index) - 1
           AS pos
  FROM activations WHERE model IN (SELECT unnest(?::VARCHAR[])) AND prompt_set = ?)
SELECT model, layer, any_value(depth)::DOUBLE AS depth,
       CASE WHEN special THEN 'special' WHEN pos < 3 THEN 'content ' || pos ELSE 'content 3+' END AS position,
       count(*) AS tokens, avg(norm)::DOUBLE AS mean_norm, median(norm)::DOUBLE AS median_norm,
       max(norm)::DOUBLE AS max_norm
FROM t GROUP BY ALL ORDER BY model, layer, position
"""


def sink_profile(con, models, prompt_set: str) -> pa.Table:
    """Hidden-state norms by position: specials (BOS, ...), content positions 0, 1, 2 and 3+, per layer.
    A first content position whose norm is 10-100x the others' is an attention sink."""
    return rows(con, SINK_PROFILE, [list(models), prompt_set])


# -- concept clustering --------------------------------------------------------------------------
def labelled_features(con, model: str, lexicon: Lexicon) -> pa.Table:
    """model, layer, feature, top_token, category for every feature of `model` (category may be null)."""
    t = rows(con, "SELECT model, layer, feature, top_token FROM features WHERE model = ? ORDER BY layer, feature",
             [model])
    return label_features(t, lexicon)


def concept_clustering(con, model: str, lexicon: Lexicon, *, permutations: int, seed: int,
                       scopes=(("all layers", 0.0, 1.0), ("0-33%", 0.0, 1 / 3), ("33-67%", 1 / 3, 2 / 3),
                               ("67-100%", 2 / 3, 1.0)), min_features: int = 20) -> list[dict]:
    """k-means over the feature vectors of the lexicon-labelled features against their categories.

    Vectors are L2-normalised (k-means then groups directions, not norms), k = number of categories
    present, and NMI/AMI get a permutation null from shuffling the labels over the same clusters:
    p = (1 + #{null >= observed}) / (1 + permutations).
    """
    from vindex.query.cluster import ami, kmeans, nmi

    t = rows(con, "SELECT layer, depth, feature, top_token, vector FROM features "
                  "WHERE model = ? AND vector IS NOT NULL ORDER BY layer, feature", [model])
    if t.num_rows == 0:
        return [{"model": model, "scope": "all layers", "status": "no feature vectors stored"}]
    t = label_features(t, lexicon)
    cats = np.array(t.column("category").to_pylist(), dtype=object)
    depth = np.array(t.column("depth").to_pylist(), dtype=np.float64)
    keep = np.array([c is not None for c in cats])
    vec_col = t.column("vector").filter(pa.array(keep)).combine_chunks()
    X = np.asarray(vec_col.flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(int(keep.sum()), -1)
    y, dep = cats[keep], depth[keep]
    out = []
    rng = np.random.default_rng(seed)
    for scope, lo, hi in scopes:
        m = (dep >= lo) & ((dep < hi) | (hi == 1.0))
        ys, Xs = y[m], X[m]
        k = len(set(ys))
        row = {"model": model, "scope": scope, "n_features": int(((depth >= lo) & ((depth < hi) | (hi == 1.0))).sum()),
               "n_labelled": int(m.sum()), "n_categories": k}
        if m.sum() < min_features or k < 2:
            out.append({**row, "status": f"too few labelled features (need {min_features} in 2+ categories)"})
            continue
        norms = np.linalg.norm(Xs, axis=1, keepdims=True)
        Z = Xs / np.where(norms > 0, norms, 1.0)
        clusters = kmeans(Z, k, seed=seed).labels
        obs = (nmi(ys, clusters), ami(ys, clusters))
        null = np.array([(nmi(p, clusters), ami(p, clusters)) for p in (rng.permutation(ys) for _ in range(permutations))])
        row.update(status="ok", k=k, nmi=obs[0], ami=obs[1])
        if permutations:
            row.update(nmi_null_p95=float(np.percentile(null[:, 0], 95)),
                       nmi_p=float((1 + (null[:, 0] >= obs[0] - 1e-12).sum()) / (1 + permutations)),
                       ami_null_p95=float(np.percentile(null[:, 1], 95)),
                       ami_p=float((1 + (null[:, 1] >= obs[1] - 1e-12).sum()) / (1 + permutations)))
        out.append(row)
    return out


def _mean(xs):
    return float(np.mean(xs)) if xs else None


# -- measures beyond CKA -------------------------------------------------------------------------
def measure_profiles(con, pairs, pooling: str, prompt_set: str, permutations: int, seed: int, k: int,
                     allow_partial: bool = False) -> pa.Table:
    """`measure_depth` of every measure beyond CKA (vindex.query.measures) for each pair: each layer of
    model_a against model_b's layer at matched depth, with its permutation null."""
    from vindex.query.analyses import measure_depth
    from vindex.query.measures import MEASURES

    parts = [measure_depth(con, a, b, measure=m, pooling=pooling, prompt_set=prompt_set, permutations=permutations,
                           seed=seed, k=k, allow_partial=allow_partial) for a, b in pairs for m in MEASURES]
    return pa.concat_tables(parts) if parts else pa.table({})


def measure_agreement(profiles: pa.Table, diag: pa.Table, estimator: str, permutations: int = 999,
                      seed: int = 0) -> pa.Table:
    """Do the measures agree on which layers correspond? For each pair and each two measures (CKA's
    matched-depth diagonal of `estimator` included), Spearman rho between their matched-depth profiles
    over model_a's layers, distances negated so that rho > 0 means agreement, with a permutation
    p-value (one profile's layer order shuffled; p = (1 + #{|rho_null| >= |rho|}) / (1 + N), two-sided)."""
    from scipy.stats import rankdata

    from vindex.query.measures import DISTANCES

    series: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in profiles.to_pylist():
        if r["value"] is not None:
            sign = -1.0 if r["measure"] in DISTANCES else 1.0
            series.setdefault((r["model_a"], r["model_b"], r["pooling"]), {}).setdefault(
                r["measure"], {})[r["layer_a"]] = sign * r["value"]
    for r in diag.to_pylist():
        key = (r["model_a"], r["model_b"], r["pooling"])
        if r["estimator"] == estimator and r["diagonal"] is not None and key in series:
            series[key].setdefault("cka", {})[r["layer_a"]] = r["diagonal"]
    rng = np.random.default_rng(seed)
    out = []
    for (a, b, pooling), by in series.items():
        names = sorted(by, key=lambda m: (m != "cka", m))
        for i, m1 in enumerate(names):
            for m2 in names[i + 1:]:
                layers = sorted(set(by[m1]) & set(by[m2]))
                row = {"model_a": a, "model_b": b, "pooling": pooling, "measure_1": m1, "measure_2": m2,
                       "n_layers": len(layers), "spearman_rho": None, "p_value": None, "permutations": permutations}
                x = rankdata([by[m1][l] for l in layers])
                y = rankdata([by[m2][l] for l in layers])
                if len(layers) > 2 and x.std() > 0 and y.std() > 0:
                    rho = float(np.corrcoef(x, y)[0, 1])        # Spearman rho = Pearson r of the ranks
                    null = np.array([np.corrcoef(x, rng.permutation(y))[0, 1] for _ in range(permutations)])
                    row.update(spearman_rho=rho,
                               p_value=float((1 + (np.abs(null) >= abs(rho) - 1e-12).sum()) / (1 + permutations)))
                out.append(row)
    return pa.Table.from_pylist(out)


# -- where convergence breaks: per-prompt influence at the peak ----------------------------------
# language names a prompt may mention (the default prompts' translation prompts name their languages)
LANGUAGES = ("English", "French", "German", "Spanish", "Italian", "Portuguese", "Dutch", "Russian", "Chinese",
             "Japanese", "Korean", "Arabic", "Hindi", "Polish", "Swedish", "Turkish", "Greek", "Latin")


def prompt_traits(text: str) -> dict:
    """What the report tests a prompt for: its length in characters, the languages it names, whether it
    holds non-ASCII letters."""
    import re
    named = [lang for lang in LANGUAGES if re.search(rf"\b{lang}\b", text)]
    return {"length": len(text), "languages": ", ".join(named), "names_language": bool(named),
            "non_ascii": any(ord(ch) > 127 for ch in text)}


def peak_pair(diag: pa.Table, model_a: str, model_b: str, pooling: str, estimator: str) -> dict | None:
    """The matched-depth layer pair (cka_depth row) with the highest CKA."""
    rows = [r for r in diag.to_pylist() if (r["model_a"], r["model_b"], r["pooling"], r["estimator"]) ==
            (model_a, model_b, pooling, estimator) and r["diagonal"] is not None]
    return max(rows, key=lambda r: r["diagonal"], default=None)


def convergence_breaks(con, pairs, diag: pa.Table, *, pooling: str, estimator: str, prompt_set: str,
                       top_k: int = 10, permutations: int = 999, seed: int = 0,
                       allow_partial: bool = False) -> tuple[pa.Table, pa.Table, pa.Table]:
    """At each pair's peak matched-depth layer pair: every prompt's leave-one-out influence on CKA
    (`cka_influence`), the category summary with its label-permutation null (`cka_influence_summary`),
    and tests of whether the top_k prompts that pull CKA down most share a trait against the rest:
    Fisher's exact test (one-sided, enrichment) per category, per 'names a language' and 'non-ASCII
    text', and the Mann-Whitney U test (two-sided) of length; p_adjusted = Bonferroni over the traits
    tested for the pair (`trait_tests`). Returns (prompts, categories, traits)."""
    from vindex.query.analyses import cka_influence, cka_influence_summary

    prompts_out, cats_out, traits_out = [], [], []
    for a, b in pairs:
        peak = peak_pair(diag, a, b, pooling, estimator)
        if peak is None:
            continue
        la, lb = peak["layer_a"], peak["layer_b"]
        t = cka_influence(con, a, b, la, lb, pooling=pooling, estimator=estimator, prompt_set=prompt_set,
                          allow_partial=allow_partial)
        texts = dict(((r[0], r[1]), r[2]) for r in con.execute(
            "SELECT prompt_set, prompt_id, text FROM prompts WHERE model = ?", [a]).fetchall())
        rows = [r for r in t.to_pylist() if r["influence"] is not None]
        k = min(top_k, len(rows) // 2)
        for r in rows:
            r.update(prompt_traits(texts.get((r["prompt_set"], r["prompt_id"]), "")), top=r["rank"] <= k,
                     text=texts.get((r["prompt_set"], r["prompt_id"])))
        prompts_out += rows
        s = cka_influence_summary(con, a, b, la, lb, pooling=pooling, estimator=estimator, prompt_set=prompt_set,
                                  permutations=permutations, seed=seed, allow_partial=allow_partial)
        cats_out += s.to_pylist()
        tests = trait_tests(rows)
        for row in tests:
            row.update(model_a=a, model_b=b, layer_a=la, layer_b=lb, depth_a=peak["depth_a"], depth_b=peak["depth_b"],
                       cka=rows[0]["cka"] if rows else None, top_k=k, n=len(rows),
                       p_adjusted=min(1.0, row["p_value"] * len(tests)))
            row["shared"] = row["p_adjusted"] <= 0.05
        traits_out += tests
    return pa.Table.from_pylist(prompts_out), pa.Table.from_pylist(cats_out), pa.Table.from_pylist(traits_out)


def trait_tests(rows: list[dict]) -> list[dict]:
    """Do the rows marked `top` share a trait against the rest? Fisher's exact test (one-sided:
    enrichment in the top) per category, 'names a language' and 'non-ASCII text' (a trait every row or
    none has is not tested), and the Mann-Whitney U test (two-sided) of `length`. p_adjusted is added by
    the caller (Bonferroni over the tests made)."""
    from scipy.stats import fisher_exact, mannwhitneyu

    top, rest = [r for r in rows if r["top"]], [r for r in rows if not r["top"]]
    tests = []
    for name, has in [*[(f"category = {c}", (lambda r, c=c: r["category"] == c))
                        for c in sorted({r["category"] for r in rows if r["category"] is not None})],
                      ("names a language", lambda r: r["names_language"]),
                      ("non-ASCII text", lambda r: r["non_ascii"])]:
        x, y = sum(map(has, top)), sum(map(has, rest))
        if x + y in (0, len(rows)):
            continue
        p = float(fisher_exact([[x, len(top) - x], [y, len(rest) - y]], alternative="greater").pvalue)
        tests.append({"trait": name, "test": "Fisher exact (enrichment in the top)", "top_share": x / len(top),
                      "rest_share": y / len(rest), "p_value": p})
    lengths_top, lengths_rest = [r["length"] for r in top], [r["length"] for r in rest]
    if len(set(lengths_top + lengths_rest)) > 1:
        p = float(mannwhitneyu(lengths_top, lengths_rest, alternative="two-sided").pvalue)
        tests.append({"trait": "length (characters)", "test": "Mann-Whitney U (two-sided)",
                      "top_share": float(np.median(lengths_top)), "rest_share": float(np.median(lengths_rest)),
                      "p_value": p})
    return tests


# -- stages --------------------------------------------------------------------------------------
# the motivating study's four bands (broadcast, domain routing, entity, prediction), normalized depth
FOUR_BANDS = (("broadcast", 0.15), ("domain routing", 0.30), ("entity", 0.55), ("prediction", 0.85))


def model_stages(con, models, *, pooling: str, estimator: str, prompt_set: str, permutations: int,
                 seed: int = 0) -> pa.Table:
    """`stages` of each model with the count chosen (criterion 'gap') and with four stages given, each
    stage row marked with the four bands whose depth it holds (a stage of layers f..l holds depths
    [(f - 1/2) / n, (l + 1/2) / n]); `matches_four` says whether the chosen count is 4, supported
    (p <= 0.05), with one band in each stage in order."""
    from vindex.errors import VindexError
    from vindex.query.analyses import stages

    out = []
    for m in dict.fromkeys(models):
        n_layers = con.execute("SELECT n_layers FROM models WHERE model = ?", [m]).fetchone()[0]
        for given in (None, 4):
            try:
                t = stages(con, m, pooling=pooling, estimator=estimator, prompt_set=prompt_set,
                           permutations=max(permutations, 1), seed=seed, n_stages=given)
            except VindexError as e:   # too few layers, a constant layer: say why in the report
                out.append({"model": m, "fit": "chosen" if given is None else "four given", "status": str(e)})
                continue
            rows = t.to_pylist()
            for r in rows:
                lo, hi = (r["first_layer"] - 0.5) / n_layers, (r["last_layer"] + 0.5) / n_layers
                r["bands"] = ", ".join(name for name, d in FOUR_BANDS if lo <= d < hi)
                r.update(model=m, fit="chosen" if given is None else "four given", status="ok")
            in_order = len(rows) == 4 and all(r["bands"] == FOUR_BANDS[i][0] for i, r in enumerate(rows))
            supported = bool(rows) and rows[0]["p_value"] is not None and rows[0]["p_value"] <= 0.05
            for r in rows:
                r["matches_four"] = given is None and rows[0]["n_stages"] == 4 and supported and in_order
                r["bands_in_order"] = in_order
            out += rows
    return pa.Table.from_pylist(out)
