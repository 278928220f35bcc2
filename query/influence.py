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

import numpy as np
import pyarrow as pa

from vindex.errors import DegenerateInput, InvalidValue

from . import cka
from .arguments import check
from .macros import (DEFAULT_ESTIMATOR, DEFAULT_POOLING, POOLED_WHAT, POOLED_WHERE, PROMPT_KEY, ModelInfo,
                     data_checks, number_checks, pair_value)
from .parallel import single_threaded_blas
from .vectors import row_labels, row_matrices, scalars

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
    n = X.shape[0]
    need = cka.MIN_ROWS[opts.estimator] + 1
    if n < need:
        raise InvalidValue(f"leave-one-out CKA with the {opts.estimator} estimator needs n >= {need} rows "
                           f"(n-1 >= {need - 1} once a row is dropped), got {n}")
    A, B = cka.gram_linear(cka.centred(X)), cka.gram_linear(cka.centred(Y))
    # scale to unit trace: CKA ignores it, and the terms then stay O(1) whatever the activations' norms
    A /= np.trace(A)
    B /= np.trace(B)
    if opts.estimator == "debiased":
        np.fill_diagonal(A, 0.0)
        np.fill_diagonal(B, 0.0)
    hs = {}
    for name, (L, R) in {"ab": (A, B), "aa": (A, A), "bb": (B, B)}.items():
        full, loo = _terms(L, R, n)
        hs[name] = (_hsic(full, n, opts.estimator), _hsic(loo, n - 1, opts.estimator))
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
INFLUENCE_TYPE = "STRUCT(cka DOUBLE, se DOUBLE, cka_without DOUBLE[])"
GROUPS_TYPE = ("STRUCT(category VARCHAR, n_prompts INTEGER, mean_influence DOUBLE, sum_influence DOUBLE, "
               "null_mean DOUBLE, null_p05 DOUBLE, null_p95 DOUBLE, p_low DOUBLE, p_high DOUBLE)[]")


def udf_influence(a, b, estimator) -> pa.Array:
    """vindex_cka_influence(list_a, list_b, estimator) -> {cka, se, cka_without[]} (rows in list order)."""
    xs, ys = row_matrices(a, f"{FUNCTION}: first list"), row_matrices(b, f"{FUNCTION}: second list")
    out = []
    for X, Y, est in zip(xs, ys, scalars(estimator, len(xs))):
        if X is None or Y is None:
            out.append(None)
            continue
        try:
            with single_threaded_blas():   # one GEMM per side inside DuckDB's threads (see parallel.py)
                res = loo_cka(X, Y, est)
        except DegenerateInput as e:
            cka.warn_undefined(FUNCTION, e)
            out.append(None)
            continue
        out.append({"cka": res.cka, "se": res.se,
                    "cka_without": [None if not np.isfinite(v) else float(v) for v in res.cka_without]})
    return pa.array(out, pa.struct([("cka", pa.float64()), ("se", pa.float64()),
                                    ("cka_without", pa.list_(pa.float64()))]))


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


UDFS = [("vindex_cka_influence", udf_influence, INFLUENCE_TYPE),
        ("vindex_influence_groups", udf_groups, GROUPS_TYPE)]


# -- the SQL ------------------------------------------------------------------------------------
def _unknown_model(fn: str, model: str) -> str:
    return (f"WHEN NOT EXISTS (FROM models AS mm WHERE mm.model = {model}) THEN error('{fn}: unknown model ''' || "
            f"{model} || '''; the lake holds: ' || coalesce((SELECT string_agg(mm.model, ', ' ORDER BY mm.model) "
            "FROM models AS mm), 'no models'))")


def _no_layer(fn: str, model: str, layer: str) -> str:
    """The layer asked for is none of the model's pooled layers (`fl`: the files view, read once)."""
    have = f"(SELECT fl.layers FROM fl WHERE fl.model = {model})"
    return (f"WHEN {layer} IS NULL OR NOT coalesce(list_contains({have}, {layer}), false) THEN error('{fn}: {layer} ' "
            f"|| coalesce(CAST({layer} AS VARCHAR), 'NULL') || ' is not a layer of ' || {model} || '; its pooled "
            f"layers are ' || coalesce((SELECT fl.lo || '-' || fl.hi FROM fl WHERE fl.model = {model}), 'none'))")


def _no_rows(fn: str, model: str, flag: str) -> str:
    """No pooled rows with this pooling (and prompt set), in the words of macros.model_checks, so that
    the Python mirror adds the poolings the model holds."""
    return (f"WHEN NOT EXISTS (FROM raw AS r WHERE r.{flag}) THEN error('{fn}: model ''' || {model} || ''' has no "
            f"pooled rows with ' || {POOLED_WHAT})")


def _side(alias: str, layer: str, flag: str) -> str:
    """One layer's rows, sorted by prompt, with the count, distinct keys and the rows_key cka_matrix
    compares; with allow_partial only the prompts both layers hold (`common`)."""
    order = "ORDER BY r.prompt_set, r.prompt_id"
    return f"""{alias} AS (
  SELECT {layer} AS layer, count(*) AS n, count(DISTINCT {PROMPT_KEY}) AS n_distinct,
         rows_key(list((r.prompt_set, r.prompt_id) {order})) AS rows_key,
         list(r.act {order}) AS x, list(r.prompt_set {order}) AS sets, list(r.prompt_id {order}) AS ids
  FROM raw AS r WHERE r.{flag} AND (NOT allow_partial OR {PROMPT_KEY} IN (SELECT c.k FROM common AS c)))"""


def influence_body(models: list[ModelInfo], fn: str = FUNCTION) -> str:
    """Each view is bound once (binding a view over many shards is most of a one-pair call's cost):
    `raw` holds both layers' rows, `fl` the two models' pooled layers from the files view."""
    guard = data_checks(fn, models)
    return f"""WITH
fl AS (SELECT f.model AS model, min(f.layer) AS lo, max(f.layer) AS hi, list(DISTINCT f.layer) AS layers
       FROM files AS f WHERE f.table_name = 'pooled' AND (f.model = model_a OR f.model = model_b) GROUP BY f.model),
raw AS (SELECT r.model = model_a AND r.layer = layer_a AS in_a, r.model = model_b AND r.layer = layer_b AS in_b,
               r.prompt_set, r.prompt_id, r.act
        FROM pooled AS r
        WHERE ((r.model = model_a AND r.layer = layer_a) OR (r.model = model_b AND r.layer = layer_b))
          AND {POOLED_WHERE} AND {guard}),
checks AS (SELECT {guard} AND CASE {_unknown_model(fn, 'model_a')} {_unknown_model(fn, 'model_b')}
                  {_no_layer(fn, 'model_a', 'layer_a')} {_no_layer(fn, 'model_b', 'layer_b')}
                  {_no_rows(fn, 'model_a', 'in_a')} {_no_rows(fn, 'model_b', 'in_b')} ELSE true END AS ok),
opts AS (SELECT vindex_cka_options(estimator, 'linear', 'none') AS o),
common AS (SELECT {PROMPT_KEY} AS k FROM raw AS r WHERE allow_partial GROUP BY ALL
           HAVING bool_or(r.in_a) AND bool_or(r.in_b)),
{_side('a', 'layer_a', 'in_a')},
{_side('b', 'layer_b', 'in_b')},
res AS (SELECT a.sets, a.ids, a.n, {pair_value(fn, 'vindex_cka_influence(a.x, b.x, estimator)')} AS s
        FROM checks AS c CROSS JOIN a CROSS JOIN b WHERE c.ok),
rows AS (SELECT unnest(res.sets) AS prompt_set, unnest(res.ids) AS prompt_id,
                unnest(res.s.cka_without) AS cka_without, res.s.cka AS cka, res.s.se AS se, res.n AS n
         FROM res),
depths AS (SELECT (SELECT any_value(layer_a / mm.n_layers) FROM models AS mm WHERE mm.model = model_a) AS depth_a,
                  (SELECT any_value(layer_b / mm.n_layers) FROM models AS mm WHERE mm.model = model_b) AS depth_b)
SELECT model_a AS model_a, model_b AS model_b, layer_a::INTEGER AS layer_a, layer_b::INTEGER AS layer_b,
       d.depth_a, d.depth_b, r.prompt_set, r.prompt_id, p.category, r.cka, r.cka_without,
       r.cka - r.cka_without AS influence,
       (row_number() OVER (ORDER BY r.cka - r.cka_without NULLS LAST, r.prompt_set, r.prompt_id))::INTEGER AS rank,
       r.se AS jackknife_se, r.n::INTEGER AS n, pooling AS pooling, o.o.estimator AS estimator
FROM checks AS c CROSS JOIN opts AS o CROSS JOIN depths AS d CROSS JOIN rows AS r
LEFT JOIN prompts AS p ON p.model = model_a AND p.prompt_set = r.prompt_set AND p.prompt_id = r.prompt_id
WHERE c.ok"""


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
