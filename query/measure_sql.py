"""The SQL face of the measures beyond CKA (the math: measures.py): scalar functions over two row-aligned
lists of vectors, `measure_test` with the permutation null, and the table function `measure_depth`
over the layer pairs of two models at matched normalized depth.

    procrustes(list_a, list_b)        shape_metric(list_a, list_b)
    svcca(list_a, list_b, dims := NULL, variance := 0.99)      pwcca(... the same)
    rsa(list_a, list_b)               cknna(list_a, list_b, k := 10)
    measure_test(list_a, list_b, measure := 'pwcca', permutations := 99, seed := 0, ...)
    measure_depth(model_a, model_b, measure := 'pwcca', pooling := ..., permutations := ..., ...)

`measure_depth` builds one summary per layer (`measures.layer_summary`; rows sorted by their keys and
fingerprinted as for cka_matrix, so two layers over other prompts give cka_matrix's error), pairs
each layer of model_a with model_b's layer at the nearest normalized depth (cka_depth's rule), and
computes the value and its null from the two summaries.
"""
from __future__ import annotations

import pyarrow as pa

from vindex.errors import DegenerateInput, InvalidValue

from . import measures
from .arguments import check, choice_check, sql_check
from .cka import warn_undefined
from .macros import (DEFAULT_PERMUTATIONS, DEFAULT_POOLING, MATCHED_DEPTH, POOLED_WHAT, POOLED_WHERE, ModelInfo,
                     common_keys, data_checks, model_checks, number_checks, pair_value, side_grams)
from .parallel import map_layers
from .vectors import double_lists, row_arrays, row_keys, row_matrices, scalars

FUNCTION = "measure_depth"
MEASURE_OPTIONS = "k := 10, dims := NULL, variance := 0.99"
TEST_TYPE = ("STRUCT(value DOUBLE, null_mean DOUBLE, null_p05 DOUBLE, null_p95 DOUBLE, p_value DOUBLE, "
             "dims_a INTEGER, dims_b INTEGER, note VARCHAR)")
LAYER_TYPE = "STRUCT(g DOUBLE[], rows_key BIGINT, n INTEGER, n_distinct INTEGER)"


def _opts(fn, measure, k, dims, variance) -> measures.Options:
    return measures.options(measure, k, dims, variance, fn)


def _rows(out: list[dict | None]) -> pa.Array:
    return pa.array(out, pa.struct([(f, pa.float64()) for f in ("value", "null_mean", "null_p05", "null_p95",
                                                               "p_value")]
                                   + [("dims_a", pa.int32()), ("dims_b", pa.int32()), ("note", pa.string())]))


# -- scalar functions ---------------------------------------------------------------------------
def udf_measure(a, b, measure, k, dims, variance) -> pa.Array:
    """vindex_measure(list_a, list_b, measure, k, dims, variance) -> DOUBLE per row."""
    xs, ys = row_matrices(a, "measure: first list"), row_matrices(b, "measure: second list")
    n = len(xs)
    out = []
    for X, Y, m, kk, dd, var in zip(xs, ys, *(scalars(c, n) for c in (measure, k, dims, variance))):
        opts = _opts("measure", m, kk, dd, var)
        if X is None or Y is None:
            out.append(None)
            continue
        try:
            out.append(measures.measure(X, Y, opts.measure, opts.k, opts.dims, opts.variance))
        except DegenerateInput as e:
            warn_undefined(opts.measure, e)
            out.append(None)
    return pa.array(out, pa.float64())


def udf_measure_test(a, b, measure, permutations, seed, k, dims, variance) -> pa.Array:
    """vindex_measure_test(...) -> TEST_TYPE: the value, its permutation null and the kept directions."""
    xs, ys = row_matrices(a, "measure_test: first list"), row_matrices(b, "measure_test: second list")
    n = len(xs)
    out = []
    for X, Y, m, count, s, kk, dd, var in zip(xs, ys, *(scalars(c, n) for c in
                                                          (measure, permutations, seed, k, dims, variance))):
        opts = _opts("measure_test", m, kk, dd, var)
        count, s = check("measure_test", "permutations", count), check("measure_test", "seed", s)
        if X is None or Y is None:
            out.append(None)
            continue
        try:
            sa, sb, rows = measures.summaries(X, Y, opts)
        except DegenerateInput as e:
            warn_undefined("measure_test", e)
            out.append(None)
            continue
        res = measures.pair_test(sa, sb, rows, opts, count, s)
        out.append({**res.summary(), "dims_a": res.dims_a, "dims_b": res.dims_b, "note": res.note})
    return _rows(out)


# -- per layer and per pair, for measure_depth --------------------------------------------------
def udf_layer_summary(vectors, keys, label, measure, k, dims, variance) -> pa.Array:
    """vindex_layer_measure(list(act), list(keys), label, ...) -> LAYER_TYPE: one layer's rows sorted by
    their keys (`cka.sort_rows`), their fingerprint, and `measures.layer_summary` (layers in parallel)."""
    n_rows = len(vectors)
    labels = [f"{FUNCTION}: {x}" for x in scalars(label, n_rows)]
    xs, ks = row_matrices(vectors, FUNCTION), row_keys(keys)
    args = [scalars(c, n_rows) for c in (measure, k, dims, variance)]

    def one(i):
        X = xs[i]
        if X is None:
            return None
        order, fingerprint, n_distinct = ks[i]
        X = X[order]
        try:
            g = measures.layer_summary(X, _opts(FUNCTION, *(c[i] for c in args)), labels[i])
        except DegenerateInput as e:
            warn_undefined(labels[i], e)
            g = None
        except InvalidValue as e:
            raise InvalidValue(f"{labels[i]}: {e}") from None
        return {"g": g, "rows_key": fingerprint, "n": len(X), "n_distinct": n_distinct}

    out = map_layers(one, range(n_rows))
    fields = [double_lists([None if o is None else o["g"] for o in out])]
    fields += [pa.array([o[f] if o else None for o in out], t)
               for f, t in (("rows_key", pa.int64()), ("n", pa.int32()), ("n_distinct", pa.int32()))]
    return pa.StructArray.from_arrays(fields, names=["g", "rows_key", "n", "n_distinct"],
                                      mask=pa.array([o is None for o in out]))


def udf_measure_pair(ga, gb, n, measure, permutations, seed, k) -> pa.Array:
    """vindex_measure_pair(g_a, g_b, n, measure, permutations, seed, k) -> TEST_TYPE from two layer summaries."""
    xs, ys = row_arrays(ga), row_arrays(gb)
    rows = len(xs)
    out = [None] * rows
    args = [scalars(c, rows) for c in (n, measure, permutations, seed, k)]

    def one(i):
        if xs[i] is None or ys[i] is None:
            return
        n_i, m, count, s, kk = (c[i] for c in args)
        opts = _opts(FUNCTION, m, kk, None, 0.99)
        res = measures.pair_test(xs[i], ys[i], int(n_i), opts, check(FUNCTION, "permutations", count),
                                 check(FUNCTION, "seed", s))
        out[i] = {**res.summary(), "dims_a": res.dims_a, "dims_b": res.dims_b, "note": res.note}

    map_layers(one, range(rows))
    return _rows(out)


UDFS = [
    ("vindex_measure", udf_measure, "DOUBLE"),
    ("vindex_measure_test", udf_measure_test, TEST_TYPE),
    ("vindex_layer_measure", udf_layer_summary, LAYER_TYPE),
    ("vindex_measure_pair", udf_measure_pair, TEST_TYPE),
]


# -- the SQL ------------------------------------------------------------------------------------
def _scalar(name: str, params: str, args: str) -> str:
    return f"CREATE OR REPLACE MACRO {name}(list_a, list_b{params}) AS vindex_measure(list_a, list_b, {args})"


SCALAR_MACROS = [
    _scalar("procrustes", "", "'procrustes', 10, NULL, 0.99"),
    _scalar("shape_metric", "", "'shape_metric', 10, NULL, 0.99"),
    _scalar("svcca", ", dims := NULL, variance := 0.99", "'svcca', 10, dims, variance"),
    _scalar("pwcca", ", dims := NULL, variance := 0.99", "'pwcca', 10, dims, variance"),
    _scalar("rsa", "", "'rsa', 10, NULL, 0.99"),
    _scalar("cknna", ", k := 10", "'cknna', k, NULL, 0.99"),
    f"CREATE OR REPLACE MACRO measure_test(list_a, list_b, measure := 'pwcca', permutations := 99, seed := 0, "
    f"{MEASURE_OPTIONS}) AS vindex_measure_test(list_a, list_b, measure, permutations, seed, k, dims, variance)",
]


def measure_depth_sql(models: list[ModelInfo]) -> str:
    fn = FUNCTION
    guard = data_checks(fn, models)
    layer = f"vindex_layer_measure({{vectors}}, {{keys}}, measure, k, dims, variance)"
    value = pair_value(fn, "vindex_measure_pair(a.g, b.g, a.n, measure, permutations, seed, k)")
    return f"""
CREATE OR REPLACE MACRO {fn}(model_a, model_b, measure := 'pwcca', pooling := '{DEFAULT_POOLING}', prompt_set := NULL,
                             permutations := {DEFAULT_PERMUTATIONS}, seed := 0, {MEASURE_OPTIONS},
                             allow_partial := false) AS TABLE
WITH
checks AS (SELECT {choice_check(fn, 'measure', measures.MEASURES)} AND {number_checks(fn, 'permutations', 'seed', 'k', 'variance')}
                  AND (dims IS NULL OR {sql_check(fn, 'dims')}) AND {guard}
                  AND {model_checks(fn, 'pooled', ['model_a', 'model_b'], POOLED_WHERE, POOLED_WHAT)} AS ok),
{common_keys('pooled', POOLED_WHERE)},
{side_grams('ga', 'model_a', layer, models, guard=guard)},
{side_grams('gb', 'model_b', layer, models, guard=guard)},
{MATCHED_DEPTH},
pairs AS (SELECT a.layer AS layer_a, b.layer AS layer_b, a.depth AS depth_a, b.depth AS depth_b, a.n AS n,
                 {value} AS res
          FROM matched AS m JOIN ga AS a ON a.layer = m.layer_a JOIN gb AS b ON b.layer = m.layer_b)
SELECT model_a AS model_a, model_b AS model_b, p.layer_a, p.layer_b, p.depth_a, p.depth_b,
       lower(measure) AS measure, p.res.value AS value, p.res.null_mean AS null_mean, p.res.null_p05 AS null_p05,
       p.res.null_p95 AS null_p95, p.res.p_value AS p_value, p.res.dims_a AS dims_a, p.res.dims_b AS dims_b, p.n,
       pooling AS pooling, prompt_set::VARCHAR AS prompt_set, permutations::INTEGER AS permutations,
       seed::INTEGER AS seed, CASE WHEN lower(measure) = 'cknna' THEN k::INTEGER END AS k, p.res.note AS note
FROM checks AS c CROSS JOIN pairs AS p
WHERE c.ok
ORDER BY p.layer_a
"""


def macros(models: list[ModelInfo]) -> list[str]:
    return SCALAR_MACROS + [measure_depth_sql(models)]


__all__ = ["UDFS", "macros", "SCALAR_MACROS", "FUNCTION"]
