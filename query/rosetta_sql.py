"""The SQL face of Rosetta maps (the math: linear_maps.py): the table function

    rosetta(model_a, model_b, pooling := ..., method := 'ridge', folds := 5, pairs := 'matched',
            permutations := 0, seed := 0, prompt_set := NULL, allow_partial := false, matrix := false)

Each side's layers are read once (rows sorted by their keys and fingerprinted as for cka_matrix, so
two layers over other prompts give cka_matrix's error), paired at the nearest normalized depth
(cka_depth's rule; pairs := 'all' for every pair), and each pair is fitted both ways: one row per
direction, model_a/layer_a the source and model_b/layer_b the target, the columns of the `maps`
table (`matrix := true` adds the fitted W and b, which `vindex.query.rosetta(..., store=True)` writes).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from vindex.errors import DegenerateInput, InvalidValue

from . import linear_maps
from .arguments import check, choice_check
from .cka import warn_undefined
from .macros import (DEFAULT_POOLING, MATCHED_DEPTH, POOLED_WHAT, POOLED_WHERE, ModelInfo, common_keys, data_checks,
                     model_checks, number_checks, pair_value, side_grams)
from .parallel import map_layers
from .sqltext import literal
from .vectors import double_lists, row_arrays, row_keys, row_matrices, scalars

FUNCTION = "rosetta"
PAIRS = ("matched", "all")
LAYER_TYPE = "STRUCT(g DOUBLE[], rows_key BIGINT, n INTEGER, n_distinct INTEGER)"
SCORES = [("r2", "DOUBLE"), ("r2_null_mean", "DOUBLE"), ("r2_null_p95", "DOUBLE"), ("r2_p_value", "DOUBLE"),
          ("cka", "DOUBLE"), ("cka_null_mean", "DOUBLE"), ("cka_null_p95", "DOUBLE"), ("cka_p_value", "DOUBLE"),
          ("ridge_lambda", "DOUBLE"), ("rank", "INTEGER"), ("scale", "DOUBLE"), ("dual", "BOOLEAN")]
FIT = [("source", "VARCHAR"), *SCORES, ("d_a", "INTEGER"), ("d_b", "INTEGER"), ("matrix", "DOUBLE[]"),
       ("bias", "DOUBLE[]")]
FIT_TYPE = "STRUCT(" + ", ".join(f'"{n}" {t}' for n, t in FIT) + ")[]"
_ARROW = {"DOUBLE": pa.float64(), "INTEGER": pa.int32(), "BOOLEAN": pa.bool_(), "VARCHAR": pa.string()}
NULL_NOTE = ("target rows shuffled (one permutation of all prompts), the k-fold fit repeated with "
             "lambda/rank chosen afresh")


# -- per layer: the rows, sorted ----------------------------------------------------------------
def udf_layer_rows(vectors, keys, label) -> pa.Array:
    """vindex_layer_rows(list(act), list(keys), label) -> LAYER_TYPE: one layer's rows sorted by their
    keys (`cka.sort_rows`), flattened (n x d values), with their fingerprint."""
    n_rows = len(vectors)
    xs, ks = row_matrices(vectors, FUNCTION), row_keys(keys)
    out = []
    for X, k in zip(xs, ks):
        if X is None:
            out.append(None)
            continue
        order, fingerprint, n_distinct = k
        out.append({"g": np.asarray(X[order], np.float64).ravel(), "rows_key": fingerprint, "n": len(X),
                    "n_distinct": n_distinct})
    fields = [double_lists([None if o is None else o["g"] for o in out])]
    fields += [pa.array([o[f] if o else None for o in out], t)
               for f, t in (("rows_key", pa.int64()), ("n", pa.int32()), ("n_distinct", pa.int32()))]
    return pa.StructArray.from_arrays(fields, names=["g", "rows_key", "n", "n_distinct"],
                                      mask=pa.array([o is None for o in out]) if n_rows else None)


# -- per pair: both directions ------------------------------------------------------------------
def direction_row(source: str, d: linear_maps.Direction, with_matrix: bool) -> dict:
    f = d.fitted
    W, b = f.matrix() if with_matrix else (None, None)
    return {"source": source, "r2": d.r2, "r2_null_mean": d.r2_null["null_mean"],
            "r2_null_p95": d.r2_null["null_p95"], "r2_p_value": d.r2_null["p_value"], "cka": d.cka,
            "cka_null_mean": d.cka_null["null_mean"], "cka_null_p95": d.cka_null["null_p95"],
            "cka_p_value": d.cka_null["p_value"], "ridge_lambda": f.lam, "rank": f.rank, "scale": f.scale,
            "dual": bool(f.bx.dual) if f.method == "ridge" else None, "d_a": int(f.bx.mean.size),
            "d_b": int(f.y_mean.size), "matrix": None if W is None else W.ravel(), "bias": b}


def udf_rosetta(ga, gb, n, method, folds, permutations, seed, with_matrix, label) -> pa.Array:
    """vindex_rosetta(rows_a, rows_b, n, method, folds, permutations, seed, matrix, label) -> FIT_TYPE:
    the pair fitted a -> b ('a') and b -> a ('b'); pairs run in parallel."""
    xs, ys = row_arrays(ga), row_arrays(gb)
    rows = len(xs)
    args = [scalars(c, rows) for c in (n, method, folds, permutations, seed, with_matrix, label)]
    out = [None] * rows

    def one(i):
        if xs[i] is None or ys[i] is None:
            return
        n_i, m, k, count, s, wm, lab = (c[i] for c in args)
        m = linear_maps.check_method(m)
        k, count, s = check(FUNCTION, "folds", k), check(FUNCTION, "permutations", count), check(FUNCTION, "seed", s)
        X, Y = xs[i].reshape(int(n_i), -1), ys[i].reshape(int(n_i), -1)
        what = f"{FUNCTION}: {lab}"
        try:
            out[i] = [direction_row(src, linear_maps.rosetta_direction(P, Q, m, k, count, s, what), bool(wm))
                      for src, P, Q in (("a", X, Y), ("b", Y, X))]
        except DegenerateInput as e:
            warn_undefined(what, e)

    map_layers(one, range(rows))
    struct = pa.struct([(name, pa.list_(pa.float64()) if t == "DOUBLE[]" else _ARROW[t]) for name, t in FIT])
    return pa.array(out, pa.list_(struct))


UDFS = [
    ("vindex_layer_rows", udf_layer_rows, LAYER_TYPE),
    ("vindex_rosetta", udf_rosetta, FIT_TYPE),
]


# -- the SQL ------------------------------------------------------------------------------------
def rosetta_sql(models: list[ModelInfo]) -> str:
    fn = FUNCTION
    guard = data_checks(fn, models)
    layer = "vindex_layer_rows({vectors}, {keys})"
    label = "'model ' || model_a || ' layer ' || a.layer || ' and model ' || model_b || ' layer ' || b.layer"
    value = pair_value(fn, f"vindex_rosetta(a.g, b.g, a.n, lower(method), folds, permutations, seed, matrix, "
                           f"{label})")
    out = ", ".join(f'f.fit."{name}" AS "{name}"' for name, _ in SCORES)
    return f"""
CREATE OR REPLACE MACRO {fn}(model_a, model_b, pooling := '{DEFAULT_POOLING}', method := 'ridge', folds := 5,
                             pairs := 'matched', permutations := 0, seed := 0, prompt_set := NULL,
                             allow_partial := false, matrix := false) AS TABLE
WITH
checks AS (SELECT {choice_check(fn, 'method', linear_maps.METHODS)} AND {choice_check(fn, 'pairs', PAIRS)}
                  AND {number_checks(fn, 'folds', 'permutations', 'seed')} AND {guard}
                  AND {model_checks(fn, 'pooled', ['model_a', 'model_b'], POOLED_WHERE, POOLED_WHAT)} AS ok),
{common_keys('pooled', POOLED_WHERE)},
{side_grams('ga', 'model_a', layer, models, guard=guard)},
{side_grams('gb', 'model_b', layer, models, guard=guard)},
{MATCHED_DEPTH},
chosen AS (SELECT a.layer AS layer_a, b.layer AS layer_b FROM (SELECT x.layer FROM ga AS x) AS a
           CROSS JOIN (SELECT x.layer FROM gb AS x) AS b
           WHERE lower(pairs) = 'all' OR EXISTS (SELECT 1 FROM matched AS m WHERE m.layer_a = a.layer
                                                 AND m.layer_b = b.layer)),
pairs_fit AS (SELECT a.layer AS layer_a, b.layer AS layer_b, a.depth AS depth_a, b.depth AS depth_b, a.n AS n,
                     {value} AS fits
              FROM chosen AS c JOIN ga AS a ON a.layer = c.layer_a JOIN gb AS b ON b.layer = c.layer_b),
fitted AS (SELECT p.*, unnest(p.fits) AS fit FROM pairs_fit AS p)
SELECT CASE WHEN f.fit.source = 'a' THEN model_a ELSE model_b END AS model_a,
       CASE WHEN f.fit.source = 'a' THEN f.layer_a ELSE f.layer_b END AS layer_a,
       CASE WHEN f.fit.source = 'a' THEN model_b ELSE model_a END AS model_b,
       CASE WHEN f.fit.source = 'a' THEN f.layer_b ELSE f.layer_a END AS layer_b,
       CASE WHEN f.fit.source = 'a' THEN f.depth_a ELSE f.depth_b END AS depth_a,
       CASE WHEN f.fit.source = 'a' THEN f.depth_b ELSE f.depth_a END AS depth_b,
       lower(method) AS method, {out}, f.n AS n, folds::INTEGER AS folds, permutations::INTEGER AS permutations,
       seed::INTEGER AS seed, pooling AS pooling, prompt_set::VARCHAR AS prompt_set,
       CASE WHEN permutations > 0 THEN {literal(NULL_NOTE)} END AS null_method,
       f.fit.d_a AS d_a, f.fit.d_b AS d_b, f.fit.matrix AS matrix, f.fit.bias AS bias
FROM checks AS c CROSS JOIN fitted AS f
WHERE c.ok
ORDER BY f.fit.source, 2, 4
"""


def macros(models: list[ModelInfo]) -> list[str]:
    return [rosetta_sql(models)]



# -- storing ------------------------------------------------------------------------------------
def store_maps(con, table: pa.Table) -> list[dict]:
    """Write the maps of a `rosetta(..., matrix := true)` result into each target model's vindex
    (`vindex.maps.write_maps`: the `maps` table, one shard per source model and method). The target
    must be a local vindex folder (the `models` view's location)."""
    from pathlib import Path

    from vindex.maps import INFO, write_maps

    locations = dict(con.execute("SELECT model, location FROM models").fetchall())
    by_target: dict[str, list] = {}
    for row in table.to_pylist():
        info = {k: row.get(k) for k in INFO}
        W = np.asarray(row["matrix"], np.float64).reshape(row["d_a"], row["d_b"])
        by_target.setdefault(row["model_b"], []).append((info, W, np.asarray(row["bias"], np.float64)))
    entries = []
    for target, maps in sorted(by_target.items()):
        where = locations.get(target)
        if where is None or "://" in str(where) or not Path(where).is_dir():
            raise InvalidValue(f"{FUNCTION}: maps into {target!r} are stored in its vindex, which is not a local "
                               f"folder here ({where}); pull it first (vindex pull)")
        entries += write_maps(where, maps)
    return entries


__all__ = ["UDFS", "macros", "store_maps", "FUNCTION", "NULL_NOTE"]
