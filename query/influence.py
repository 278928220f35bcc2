"""Per-prompt influence on CKA: the leave-one-out (jackknife) change of CKA when one prompt is
dropped, for every prompt at once from the two Grams, and the SQL function over it.

    cka_all   = CKA(X, Y)                       over all n prompts
    cka_-i    = CKA(X without row i, Y without row i)
    influence = cka_all - cka_-i                < 0: prompt i pulls CKA down

Not n refits. With A, B the two symmetric n x n Grams (linear kernel; for the debiased estimator
with zeroed diagonals, K~ of Song et al. 2012), every HSIC is built from three terms of the Grams
(m rows, r = A 1 the row sums, s = 1'A1):

    biased   (Kornblith et al. 2019):  tr(A H B H)      = tr(AB) - (2/m) r_A.r_B + s_A s_B / m^2
    debiased (Song et al. 2012, eq. 5): HSIC_1 m(m-3)   = tr(AB) - (2/(m-2)) r_A.r_B + s_A s_B / ((m-1)(m-2))

(the constant (m-1)^-2 or (m(m-3))^-1 cancels in CKA = h_AB / sqrt(h_AA h_BB)). Dropping row and
column i (A', B', m = n-1) changes each term by a rank-one correction, with P_i = sum_j A_ij B_ij
(the row sums of A o B), u = A r_B and v = B r_A, all computed once in O(n^2):

    tr(A'B')        = tr(AB) - 2 P_i + A_ii B_ii
    r'_A.r'_B       = sum_{j != i} (r_A,j - A_ji)(r_B,j - B_ji)
                    = r_A.r_B - u_i - v_i + P_i - (r_A,i - A_ii)(r_B,i - B_ii)
    s'_A            = s_A - 2 r_A,i + A_ii

so all n leave-one-out CKAs cost O(n^2) together (O(n) per prompt after the O(n^2) setup), plus
the two Grams (O(n^2 d)). Centring needs no update: A is the Gram of column-centred X, and
HKH (and U-centring) ignore a shift of X, so the n-1 rows need no re-centring of X.

The jackknife standard error of CKA (Efron & Stein 1981) comes with it:
    se = sqrt((n-1)/n sum_i (cka_-i - mean_i cka_-i)^2).

A prompt's influence has no null of its own; what a group of prompts shares is tested against a
label-permutation null (`group_influence`): the mean influence of a category against the means of
random prompt sets of the same size (categories shuffled over the prompts).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vindex.errors import DegenerateInput, InvalidValue

from . import cka, gram_cache
from .arguments import check
from .macros import DEFAULT_ESTIMATOR, DEFAULT_POOLING, ModelInfo, data_checks, number_checks
from .parallel import single_threaded_blas
from .sqltext import literal
from .vectors import row_labels, scalars

FUNCTION = "cka_influence"
SUMMARY = "cka_influence_summary"
DEFAULT_SUMMARY_PERMUTATIONS = 999


@dataclass(frozen=True)
class Influence:
    cka: float                 # CKA over all n rows
    cka_without: np.ndarray    # (n,) CKA with row i left out
    se: float                  # jackknife standard error of CKA

    @property
    def influence(self) -> np.ndarray:
        """cka - cka_without: < 0 where a row pulls CKA down."""
        return self.cka - self.cka_without


def _terms(A: np.ndarray, B: np.ndarray, m: float):
    """The full-data (tr(AB), r_A.r_B, s_A s_B) and their leave-one-out versions, all rows at once."""
    P = np.einsum("ij,ij->i", A, B)                 # P_i = sum_j A_ij B_ij   (O(n^2))
    rA, rB = A.sum(axis=1), B.sum(axis=1)
    dA, dB = np.diag(A), np.diag(B)
    tr, rr, sA, sB = P.sum(), rA @ rB, rA.sum(), rB.sum()
    tr_i = tr - 2 * P + dA * dB
    rr_i = rr - A @ rB - B @ rA + P - (rA - dA) * (rB - dB)
    ss_i = (sA - 2 * rA + dA) * (sB - 2 * rB + dB)
    return (tr, rr, sA * sB), (tr_i, rr_i, ss_i)


def _hsic(terms, m, estimator: str):
    tr, rr, ss = terms
    if estimator == "biased":
        return tr - 2 / m * rr + ss / m ** 2
    return tr - 2 / (m - 2) * rr + ss / ((m - 1) * (m - 2))


def loo_cka(X, Y, estimator: str = "biased") -> Influence:
    """CKA of row-aligned X (n, d_x) and Y (n, d_y), linear kernel, and every leave-one-out CKA."""
    opts = cka.options(estimator)
    X, Y = cka.as_rows(X, "X"), cka.as_rows(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise InvalidValue(f"CKA needs row-aligned inputs: the lists have {X.shape[0]} and {Y.shape[0]} rows")
    _check_rows(X.shape[0], opts.estimator)
    return loo_from_grams(cka.gram_linear(cka.centred(X)), cka.gram_linear(cka.centred(Y)), opts.estimator)


def _check_rows(n: int, estimator: str) -> None:
    need = cka.MIN_ROWS[estimator] + 1
    if n < need:
        raise InvalidValue(f"leave-one-out CKA with the {estimator} estimator needs n >= {need} rows "
                           f"(n-1 >= {need - 1} once a row is dropped), got {n}")


def loo_from_grams(A: np.ndarray, B: np.ndarray, estimator: str = "biased") -> Influence:
    """`loo_cka` from the two sides' (n, n) Grams of column-centred rows, or any Gram that differs from
    one by a_i + a_j off the diagonal: the stored U-centred Gram U(K) of the debiased estimator is one
    (U-centring adds exactly such terms, and the unbiased HSIC of any subset of rows ignores them;
    Szekely & Rizzo 2014), as is the stored HKH of the biased one, and the rows and columns of either for
    a subset of the prompts. Any positive scale (the cache's unit norm) cancels."""
    A, B = np.array(A, dtype=np.float64), np.array(B, dtype=np.float64)
    n = A.shape[0]
    # scale to unit trace: CKA ignores it, and the terms then stay O(1) whatever the activations' norms
    # (the debiased Grams from the cache have a zero diagonal: their Frobenius norm instead)
    for G in (A, B):
        scale = np.trace(G) if estimator == "biased" else np.linalg.norm(G)
        if scale > 0:
            G /= scale
    if estimator == "debiased":
        np.fill_diagonal(A, 0.0)
        np.fill_diagonal(B, 0.0)
    hs = {}
    for name, (L, R) in {"ab": (A, B), "aa": (A, A), "bb": (B, B)}.items():
        full, loo = _terms(L, R, n)
        hs[name] = (_hsic(full, n, estimator), _hsic(loo, n - 1, estimator))
    (ab, ab_i), (aa, aa_i), (bb, bb_i) = hs["ab"], hs["aa"], hs["bb"]
    if not (aa > 0 and bb > 0):
        raise DegenerateInput("a side has zero variance (a constant layer): CKA is undefined")
    with np.errstate(divide="ignore", invalid="ignore"):
        without = ab_i / np.sqrt(aa_i * bb_i)       # NaN where a side is constant without row i
    se = float(np.sqrt((n - 1) / n * np.nansum((without - np.nanmean(without)) ** 2)))
    return Influence(float(ab / np.sqrt(aa * bb)), without, se)


def group_influence(labels, influence, permutations: int = DEFAULT_SUMMARY_PERMUTATIONS, seed: int = 0) -> list[dict]:
    """Per label (e.g. a prompt category): how many rows, the mean and sum of their influence, and a
    label-permutation null of the mean (labels shuffled over the rows; the group sizes stay):
    null_mean, null_p05 and null_p95 of the shuffled means, p_low = (1 + #{null <= mean}) / (1 + N)
    (the group pulls CKA down more than a random set of as many prompts) and p_high the other tail.
    Rows whose influence is NaN (undefined) are left out."""
    labels = np.asarray(labels, dtype=object)
    x = np.asarray(influence, dtype=np.float64)
    keep = np.isfinite(x) & np.array([v is not None for v in labels], bool)
    labels, x = labels[keep], x[keep]
    names = sorted(set(labels.tolist()), key=str)
    codes = np.array([names.index(v) for v in labels], np.int64)
    count = np.bincount(codes, minlength=len(names))
    observed = np.bincount(codes, weights=x, minlength=len(names)) / np.maximum(count, 1)
    if permutations:
        rng = np.random.default_rng(seed)
        shuffled = np.stack([codes[rng.permutation(len(codes))] for _ in range(permutations)])   # (N, n)
        sums = np.stack([np.bincount(s, weights=x, minlength=len(names)) for s in shuffled])     # (N, groups)
        null = sums / np.maximum(count, 1)
    out = []
    for g, name in enumerate(names):
        row = {"category": name, "n_prompts": int(count[g]), "mean_influence": float(observed[g]),
               "sum_influence": float(observed[g] * count[g])}
        if permutations:
            col = null[:, g]
            row.update(null_mean=float(col.mean()), null_p05=float(np.percentile(col, 5)),
                       null_p95=float(np.percentile(col, 95)),
                       p_low=float((1 + (col <= observed[g] + 1e-15).sum()) / (1 + permutations)),
                       p_high=float((1 + (col >= observed[g] - 1e-15).sum()) / (1 + permutations)))
        else:
            row.update(null_mean=None, null_p05=None, null_p95=None, p_low=None, p_high=None)
        out.append(row)
    return out


# -- the UDFs -----------------------------------------------------------------------------------
INFLUENCE_TYPE = ("STRUCT(cka DOUBLE, se DOUBLE, n INTEGER, depth_a DOUBLE, depth_b DOUBLE, estimator VARCHAR, "
                  "prompt_set VARCHAR[], prompt_id INTEGER[], cka_without DOUBLE[])")
GROUPS_TYPE = ("STRUCT(category VARCHAR, n_prompts INTEGER, mean_influence DOUBLE, sum_influence DOUBLE, "
               "null_mean DOUBLE, null_p05 DOUBLE, null_p95 DOUBLE, p_low DOUBLE, p_high DOUBLE)[]")
RESID_POST = "resid_post"   # the site the comparisons read (shards from before the site column: resid_post)


def udf_cached_influence(vindexes: dict):
    """The UDF vindex_cka_influence(model_a, model_b, layer_a, layer_b, pooling, prompt_set, estimator,
    allow_partial, fn) -> INFLUENCE_TYPE, from the two layers' Grams in the Gram cache (`gram_cache.model_grams`:
    stored, or computed from the shards and stored; a model's first use forms every layer's Gram, later
    ones read them from memory or disk) and the layers' row keys (two small columns of their shards): no
    activation crosses into DuckDB. With allow_partial, the rows and columns of the prompts
    both layers hold (`loo_from_grams` takes a Gram restricted to them). `vindexes`: the connection's,
    by name. It raises the refusals of the other table functions, in their words, naming `fn`."""
    def udf(model_a, model_b, layer_a, layer_b, pooling, prompt_set, estimator, allow_partial, fn) -> pa.Array:
        n_rows = len(model_a)
        out = []
        for args in zip(*(scalars(c, n_rows) for c in (model_a, model_b, layer_a, layer_b, pooling, prompt_set,
                                                         estimator, allow_partial, fn))):
            out.append(_influence_row(vindexes, *args))
        return pa.array(out, pa.struct([("cka", pa.float64()), ("se", pa.float64()), ("n", pa.int32()),
                                        ("depth_a", pa.float64()), ("depth_b", pa.float64()),
                                        ("estimator", pa.string()), ("prompt_set", pa.list_(pa.string())), ("prompt_id", pa.list_(pa.int32())),
                                        ("cka_without", pa.list_(pa.float64()))]))
    return udf


def _influence_row(vindexes, a, b, layer_a, layer_b, pooling, prompt_set, estimator, allow_partial, fn) -> dict | None:
    for m in (a, b):
        if m not in vindexes:
            raise InvalidValue(f"{fn}: unknown model {m!r}; the lake holds: {', '.join(sorted(vindexes)) or 'no models'}")
    if pooling is None or allow_partial is None:
        return None
    opts = cka.options(estimator)
    spec = gram_cache.GramSpec(pooling, prompt_set, opts)
    sides = [_side(fn, vindexes[m], name, layer, spec) for m, name, layer in ((a, "layer_a", layer_a),
                                                                                (b, "layer_b", layer_b))]
    (meta_a, g_a, keys_a), (meta_b, g_b, keys_b) = sides
    for meta in (meta_a, meta_b):
        if meta["n_distinct"] != meta["n"]:
            raise InvalidValue(f"{fn}: a layer lists the same row twice ({meta['n']} rows, {meta['n_distinct']} "
                               "distinct); filter by prompt_set or pooling")
    if g_a is None or g_b is None:      # a constant layer: CKA is undefined (warned)
        bad = meta_a if g_a is None else meta_b
        cka.warn_undefined(f"{fn}: model {bad['model']} layer {bad['layer']}", DegenerateInput(bad["note"]))
        return None
    A, B = _unpack(g_a), _unpack(g_b)
    if allow_partial:
        both = sorted(set(keys_a) & set(keys_b))
        ia, ib = ({k: i for i, k in enumerate(keys)} for keys in (keys_a, keys_b))
        sel_a, sel_b = np.array([ia[k] for k in both], np.int64), np.array([ib[k] for k in both], np.int64)
        A, B, keys = A[np.ix_(sel_a, sel_a)], B[np.ix_(sel_b, sel_b)], both
    elif meta_a["key"] != meta_b["key"]:
        raise InvalidValue(
            f"{fn}: layer {meta_a['layer']} of {a} and layer {meta_b['layer']} of {b} hold different prompts "
            f"({meta_a['n']} vs {meta_b['n']} rows); CKA needs the same rows on both sides, in the same order: "
            "choose one prompt_set, or pass allow_partial := true to compare the prompts both models hold")
    else:
        keys = keys_a
    _check_rows(len(keys), opts.estimator)
    try:
        with single_threaded_blas():   # inside DuckDB's threads (see parallel.py)
            res = loo_from_grams(A, B, opts.estimator)
    except DegenerateInput as e:
        cka.warn_undefined(fn, e)
        return None
    return {"cka": res.cka, "se": res.se, "n": len(keys), "depth_a": meta_a["depth"], "depth_b": meta_b["depth"],
            "estimator": opts.estimator, "prompt_set": [k[0] for k in keys], "prompt_id": [int(k[1]) for k in keys],
            "cka_without": [None if not np.isfinite(v) else float(v) for v in res.cka_without]}


def _side(fn: str, v, name: str, layer, spec) -> tuple[dict, np.ndarray | None, list[tuple]]:
    """One layer's (meta, packed Gram, sorted row keys), or the other functions' refusal for a layer the
    model does not pool or rows it does not hold."""
    files = [(v.url(e["path"]), e) for e in v.entries("pooled") if e["partition"].get("layer") == layer]
    if layer is None or not files:
        have = sorted({e["partition"].get("layer") for e in v.entries("pooled")} - {None}) if "pooled" in v.tables else []
        raise InvalidValue(f"{fn}: {name} {'NULL' if layer is None else layer} is not a layer of {v.name}; its pooled "
                           f"layers are {f'{have[0]}-{have[-1]}' if have else 'none'}")
    layers = {meta["layer"]: (meta, g) for meta, g in gram_cache.model_grams(v, spec)}
    meta, g = layers[layer]
    if meta["status"] == "empty":
        raise InvalidValue(f"{fn}: model {v.name!r} has no pooled rows with pooling = {spec.pooling}"
                           + (f" and prompt_set = {spec.prompt_set}" if spec.prompt_set is not None else ""))
    if meta["status"] == "invalid":
        raise InvalidValue(f"{fn}: model {v.name} layer {layer}: {meta['note']}")
    keys = _row_keys(files, v.filesystem, spec)
    if cka.rows_fingerprint([np.array([k[0] for k in keys], object), np.array([k[1] for k in keys])]) != meta["key"]:
        raise InvalidValue(f"{fn}: model {v.name} layer {layer}: the stored Gram's rows are not the shards' rows; "
                           "the shards changed during the query: run it again")
    return meta, g, keys


def _row_keys(files, filesystem, spec) -> list[tuple[str, int]]:
    """The layer's (prompt_set, prompt_id) under `spec` (pooling, prompt set, site resid_post), sorted as
    the Gram's rows (`cka.sort_rows`): the key columns of its shards only."""
    columns = ["prompt_set", "prompt_id", "pooling"]
    parts = []
    for url, entry in files:
        if filesystem is None:
            from vindex.reader import read_shard
            path = Path(url)
            t = read_shard(path, entry, columns=columns + (["site"] if "site" in pq.read_schema(path).names else []))
        else:
            with filesystem.open(url, "rb") as f:
                t = pq.read_table(f, columns=[c for c in columns + ["site"] if c in pq.read_schema(f).names])
        mask = pc.equal(t["pooling"], spec.pooling)
        if spec.prompt_set is not None:
            mask = pc.and_(mask, pc.equal(t["prompt_set"], spec.prompt_set))
        if "site" in t.column_names:
            mask = pc.and_(mask, pc.equal(pc.fill_null(t["site"], RESID_POST), RESID_POST))
        parts.append(t.filter(mask).select(["prompt_set", "prompt_id"]))
    t = pa.concat_tables(parts)
    sets, ids = t["prompt_set"].to_numpy(zero_copy_only=False), t["prompt_id"].to_numpy(zero_copy_only=False)
    order, _, _ = cka.sort_rows([sets, ids])
    return list(zip(sets[order].tolist(), ids[order].tolist()))


def _unpack(p: np.ndarray) -> np.ndarray:
    """The symmetric (n, n) Gram of a packed one (`cka.pack_symmetric`: the diagonal, then sqrt(2) G_ij, i < j)."""
    n = cka.packed_size(len(p))
    rows, cols = cka.packed_order(n)
    v = np.array(p, dtype=np.float64)
    v[n:] /= np.sqrt(2.0)
    G = np.empty((n, n))
    G[rows, cols] = v
    G[cols, rows] = v
    return G


def udf_groups(labels, values, permutations, seed) -> pa.Array:
    """vindex_influence_groups(list(category), list(influence), permutations, seed) -> one struct per category."""
    ls = row_labels(labels, f"{SUMMARY}: categories")
    vs = [None if v is None else np.asarray(v, dtype=np.float64) for v in
          (values.to_pylist() if hasattr(values, "to_pylist") else values)]
    n = len(ls)
    out = []
    for lab, val, count, s in zip(ls, vs, scalars(permutations, n), scalars(seed, n)):
        count, s = check(SUMMARY, "permutations", count), check(SUMMARY, "seed", s)
        out.append(None if lab is None or val is None else group_influence(lab, val, count, s))
    return pa.array(out, pa.list_(pa.struct([
        ("category", pa.string()), ("n_prompts", pa.int32()), ("mean_influence", pa.float64()),
        ("sum_influence", pa.float64()), ("null_mean", pa.float64()), ("null_p05", pa.float64()),
        ("null_p95", pa.float64()), ("p_low", pa.float64()), ("p_high", pa.float64())])))


UDFS = [("vindex_influence_groups", udf_groups, GROUPS_TYPE)]


def cached_udfs(vindexes: dict) -> list[tuple]:
    """(name, function, return type, side effects) of the UDFs that read the connection's vindexes. Side
    effects: its arguments are all constants, and DuckDB must not call it while it plans."""
    return [("vindex_cka_influence", udf_cached_influence(vindexes), INFLUENCE_TYPE, True)]


# -- the SQL ------------------------------------------------------------------------------------
def influence_body(models: list[ModelInfo], fn: str = FUNCTION) -> str:
    """One UDF call does the work (`udf_cached_influence`: the Grams from the cache, the keys from the
    shards' key columns, every refusal), so that the query binds no activation view: planning a query
    over the views cost more than the whole computation. `data_checks` (prompt sets of one name but
    other contents, incomplete sets) is a constant built from the manifests."""
    return f"""WITH
res AS (SELECT vindex_cka_influence(model_a, model_b, layer_a, layer_b, pooling, prompt_set, estimator, allow_partial,
                                    {literal(fn)}) AS s
        WHERE {data_checks(fn, models)}),
rows AS (SELECT unnest(res.s.prompt_set) AS prompt_set, unnest(res.s.prompt_id) AS prompt_id,
                unnest(res.s.cka_without) AS cka_without, res.s.cka AS cka, res.s.se AS se, res.s.n AS n,
                res.s.depth_a AS depth_a, res.s.depth_b AS depth_b, res.s.estimator AS estimator
         FROM res)
SELECT model_a AS model_a, model_b AS model_b, layer_a::INTEGER AS layer_a, layer_b::INTEGER AS layer_b,
       r.depth_a, r.depth_b, r.prompt_set, r.prompt_id, p.category, r.cka, r.cka_without,
       r.cka - r.cka_without AS influence,
       (row_number() OVER (ORDER BY r.cka - r.cka_without NULLS LAST, r.prompt_set, r.prompt_id))::INTEGER AS rank,
       r.se AS jackknife_se, r.n::INTEGER AS n, pooling AS pooling, r.estimator
FROM rows AS r
LEFT JOIN prompts AS p ON p.model = model_a AND p.prompt_set = r.prompt_set AND p.prompt_id = r.prompt_id"""


def influence_sql(models: list[ModelInfo]) -> str:
    return f"""
CREATE OR REPLACE MACRO {FUNCTION}(model_a, model_b, layer_a, layer_b, pooling := '{DEFAULT_POOLING}',
                                   estimator := '{DEFAULT_ESTIMATOR}', prompt_set := NULL, allow_partial := false) AS TABLE
{influence_body(models)}
ORDER BY rank
"""


def summary_sql(models: list[ModelInfo]) -> str:
    return f"""
CREATE OR REPLACE MACRO {SUMMARY}(model_a, model_b, layer_a, layer_b, pooling := '{DEFAULT_POOLING}',
                                  estimator := '{DEFAULT_ESTIMATOR}', prompt_set := NULL,
                                  permutations := {DEFAULT_SUMMARY_PERMUTATIONS}, seed := 0,
                                  allow_partial := false) AS TABLE
WITH
nums AS (SELECT {number_checks(SUMMARY, 'permutations', 'seed')} AS ok),
i AS ({influence_body(models, SUMMARY)}),
g AS (SELECT any_value(i.model_a) AS model_a, any_value(i.model_b) AS model_b, any_value(i.layer_a) AS layer_a,
             any_value(i.layer_b) AS layer_b, any_value(i.cka) AS cka, any_value(i.n) AS n,
             any_value(i.estimator) AS estimator,
             vindex_influence_groups(list(coalesce(i.category, '(none)') ORDER BY i.prompt_set, i.prompt_id),
                                     list(i.influence ORDER BY i.prompt_set, i.prompt_id), permutations, seed) AS s
      FROM i WHERE i.influence IS NOT NULL),
u AS (SELECT g.*, unnest(g.s) AS c FROM g)
SELECT u.model_a, u.model_b, u.layer_a, u.layer_b, u.c.category AS category, u.c.n_prompts AS n_prompts,
       u.c.mean_influence AS mean_influence, u.c.sum_influence AS sum_influence, u.c.null_mean AS null_mean,
       u.c.null_p05 AS null_p05, u.c.null_p95 AS null_p95, u.c.p_low AS p_low, u.c.p_high AS p_high, u.cka, u.n,
       pooling AS pooling, u.estimator, permutations::INTEGER AS permutations, seed::INTEGER AS seed
FROM nums AS k CROSS JOIN u
WHERE k.ok
ORDER BY u.c.mean_influence
"""


def macros(models: list[ModelInfo]) -> list[str]:
    return [influence_sql(models), summary_sql(models)]


__all__ = ["loo_cka", "group_influence", "Influence", "macros", "UDFS"]
