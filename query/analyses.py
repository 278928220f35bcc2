"""The SQL table functions as Python functions with the same names and options.

Each runs the SQL macro (so SQL and Python can never disagree) on a connection you pass, or on a
fresh `connect(*sources)`, and returns a pyarrow Table:

    from vindex.query import cka_matrix
    t = cka_matrix("lake/", "gemma3-270m", "qwen2.5-0.5b", permutations=99)
    t.to_pandas()   # or polars.from_arrow(t)

Numeric arguments are checked first (`arguments.check`: InvalidValue naming the argument). An
incomplete prompt set raises IncompleteData unless allow_partial=True; with it the result is
computed over the prompts both models hold and a PartialData warning says how many that was.
"""
from __future__ import annotations

import os
import re
import warnings

import duckdb
import pyarrow as pa

from vindex.errors import IncompleteData, InvalidValue, PartialData, VindexError, error_from_message

from .arguments import check
from .macros import (DEFAULT_ESTIMATOR, DEFAULT_PERMUTATIONS, DEFAULT_POOLING, INCOMPLETE_ADVICE, PromptSetInfo,
                     incomplete_note)
from .views import connect


def connection(con_or_sources) -> duckdb.DuckDBPyConnection:
    """`con_or_sources` as a connection: a DuckDB connection from `connect` as is, else the source(s)."""
    if isinstance(con_or_sources, duckdb.DuckDBPyConnection):
        return con_or_sources
    if isinstance(con_or_sources, (str, os.PathLike)) or hasattr(con_or_sources, "manifest"):
        return connect(con_or_sources)
    return connect(*con_or_sources)


def _call(con, function: str, positional: list, named: dict) -> pa.Table:
    args = ["?"] * len(positional) + [f"{k} := ?" for k in named]
    sql = f"SELECT * FROM {function}({', '.join(args)})"
    try:
        return con.execute(sql, [*positional, *named.values()]).to_arrow_table()
    except duckdb.Error as e:   # a refusal inside the query, in its own vindex class
        error = error_from_message(str(e), (function,))
        raise (with_poolings(con, error) if error else e) from None


def with_poolings(con, error: VindexError) -> VindexError:
    """A "no pooled rows with pooling = x" refusal, with the poolings the model does hold (queried
    only on this error path, so a call that succeeds pays nothing for it)."""
    m = re.search(r"model '(.+?)' has no pooled rows with pooling = ", str(error))
    if not m:
        return error
    have = [r[0] for r in con.execute("SELECT DISTINCT pooling FROM pooled WHERE model = ? ORDER BY 1",
                                      [m.group(1)]).fetchall()]
    return type(error)(f"{error}; its poolings: {', '.join(have) or 'none'}")


def _compare(con_or_sources, function: str, model_a: str, model_b: str, named: dict, allow_partial: bool,
             rows: str = "prompts", positional: tuple = ()) -> pa.Table:
    """Run a two-model table function: IncompleteData for an incomplete prompt set without
    allow_partial (the macro's own check, in Python's error class); with it, a PartialData warning
    whenever fewer rows were compared than the models' prompt sets plan."""
    con = connection(con_or_sources)
    if not isinstance(allow_partial, bool):
        raise InvalidValue(f"{function}: allow_partial must be True or False, got {allow_partial!r}")
    prompt_set = named.get("prompt_set")
    sets = con.execute("SELECT model, prompt_set, n_prompts, n_present, complete, sha256 FROM prompt_sets "
                       "WHERE NOT complete AND (model = $1 OR model = $2) AND ($3 IS NULL OR prompt_set = $3) "
                       "ORDER BY model, prompt_set", [model_a, model_b, prompt_set]).fetchall()
    incomplete = "; ".join(incomplete_note(model, PromptSetInfo(*info)) for model, *info in sets)
    if incomplete and not allow_partial:
        raise IncompleteData(f"{function}: {incomplete} ({INCOMPLETE_ADVICE}); pass allow_partial=True "
                             "(--allow-partial) to compare the prompts both models hold")
    table = _call(con, function, [model_a, model_b, *positional], {**named, "allow_partial": allow_partial})
    if allow_partial and table.num_rows:
        _say_partial(con, function, model_a, model_b, prompt_set, table, incomplete, rows)
    return table


def _say_partial(con, function, model_a, model_b, prompt_set, table, incomplete, rows) -> None:
    n = max(table.column("n").to_pylist())
    planned = dict(con.execute(
        "SELECT model, sum(n_prompts)::BIGINT FROM prompt_sets WHERE (model = $1 OR model = $2) "
        "AND ($3 IS NULL OR prompt_set = $3) GROUP BY model", [model_a, model_b, prompt_set]).fetchall())
    short = rows == "prompts" and any(n < p for p in planned.values())
    if incomplete or short:
        plans = ", ".join(f"{m} plans {p}" for m, p in sorted(planned.items()))
        warnings.warn(f"{function}: computed over {n} {rows} (the prompts both models hold"
                      + (f"; {plans}" if plans else "") + ")" + (f"; {incomplete}" if incomplete else ""),
                      PartialData, stacklevel=4)


def cka_matrix(con_or_sources, model_a: str, model_b: str, pooling: str = DEFAULT_POOLING,
               estimator: str = DEFAULT_ESTIMATOR,
               kernel: str = "linear", preprocess: str = "none", prompt_set: str | None = None,
               permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0, allow_partial: bool = False) -> pa.Table:
    """CKA of every layer of model_a with every layer of model_b over pooled activations (see docs/sql.md)."""
    return _compare(con_or_sources, "cka_matrix", model_a, model_b, dict(
        pooling=pooling, estimator=estimator, kernel=kernel, preprocess=preprocess, prompt_set=prompt_set,
        permutations=check("cka_matrix", "permutations", permutations), seed=check("cka_matrix", "seed", seed)),
        allow_partial)


def cka_depth(con_or_sources, model_a: str, model_b: str, pooling: str = DEFAULT_POOLING,
              estimator: str = DEFAULT_ESTIMATOR,
              kernel: str = "linear", preprocess: str = "none", prompt_set: str | None = None,
              permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0, band: float = 0.15,
              allow_partial: bool = False) -> pa.Table:
    """For each layer of model_a: CKA with the layer of model_b at the nearest normalized depth, and the
    mean CKA over the off-diagonal band |depth_a - depth_b| >= band."""
    return _compare(con_or_sources, "cka_depth", model_a, model_b, dict(
        pooling=pooling, estimator=estimator, kernel=kernel, preprocess=preprocess, prompt_set=prompt_set,
        permutations=check("cka_depth", "permutations", permutations), seed=check("cka_depth", "seed", seed),
        band=check("cka_depth", "band", band)), allow_partial)


def cka_token_matrix(con_or_sources, model_a: str, model_b: str, batch_size: int = 256, seed: int = 0,
                     kernel: str = "linear", preprocess: str = "none", prompt_set: str | None = None,
                     include_special: bool = False, min_token_index: int = 0,
                     allow_partial: bool = False) -> pa.Table:
    """Minibatch CKA over token rows for two models that share a tokenizer (checked first, on one layer's
    token ids: InvalidValue before any Gram is computed when they differ)."""
    fn = "cka_token_matrix"
    con = connection(con_or_sources)
    _check_same_tokens(con, model_a, model_b, prompt_set, bool(include_special), min_token_index)
    return _compare(con, fn, model_a, model_b, dict(
        batch_size=check(fn, "batch_size", batch_size), seed=check(fn, "seed", seed), kernel=kernel,
        preprocess=preprocess, prompt_set=prompt_set, include_special=bool(include_special),
        min_token_index=check(fn, "min_token_index", min_token_index)), allow_partial, rows="tokens")


def _check_same_tokens(con, model_a: str, model_b: str, prompt_set, include_special: bool,
                       min_token_index) -> None:
    """InvalidValue when the two models hold other token ids at the same (prompt, position), read from
    the first activations layer of each (the token_id column only): the macro would find it after
    building every layer's Gram."""
    layers = dict(con.execute("SELECT model, min(layer) FROM files WHERE table_name = 'activations' "
                              "AND model IN ($1, $2) GROUP BY model", [model_a, model_b]).fetchall())
    if len(layers) < 2 or model_a == model_b:
        return   # an unknown model or one without activations: the macro's own check words it
    rows = ("SELECT prompt_set, prompt_id, token_index, token_id FROM activations WHERE model = ? AND layer = ? "
            "AND (? IS NULL OR prompt_set = ?) AND (? OR NOT special) AND token_index >= ?")
    side = [prompt_set, prompt_set, include_special, int(min_token_index)]
    differ = con.execute(f"""
        WITH a AS ({rows}), b AS ({rows}),
        both_hold AS (SELECT prompt_set, prompt_id FROM a INTERSECT SELECT prompt_set, prompt_id FROM b)
        SELECT count(*) FILTER (WHERE a.token_id IS DISTINCT FROM b.token_id), count(*),
               arg_min(prompt_id, a.token_id IS NOT DISTINCT FROM b.token_id)
        FROM (FROM a SEMI JOIN both_hold USING (prompt_set, prompt_id)) AS a
        FULL JOIN (FROM b SEMI JOIN both_hold USING (prompt_set, prompt_id)) AS b
        USING (prompt_set, prompt_id, token_index)""",
                         [model_a, layers[model_a], *side, model_b, layers[model_b], *side]).fetchone()
    if differ[0]:
        raise InvalidValue(f"cka_token_matrix: {model_a!r} and {model_b!r} do not share a tokenizer: {differ[0]} of "
                           f"{differ[1]} token positions hold other token ids (first in prompt {differ[2]!r}); "
                           "token-level CKA pairs the same token in both models: compare pooled rows with "
                           "cka_matrix instead")


def mutual_knn_matrix(con_or_sources, model_a: str, model_b: str, k: int = 10, pooling: str = DEFAULT_POOLING,
                      prompt_set: str | None = None, allow_partial: bool = False) -> pa.Table:
    """Mutual k-NN alignment (Huh et al. 2024) of every layer pair over pooled activations."""
    return _compare(con_or_sources, "mutual_knn_matrix", model_a, model_b,
                    dict(k=check("mutual_knn_matrix", "k", k), pooling=pooling, prompt_set=prompt_set), allow_partial)


def kmeans(con_or_sources, model: str, layer: int | None = None, k: int = 8, seed: int = 0,
           max_iter: int = 300) -> pa.Table:
    """k-means (k-means++ init) over features.vector of a model's layer(s); one row per feature."""
    return _call(connection(con_or_sources), "kmeans", [model],
                 dict(layer=None if layer is None else check("kmeans", "layer", layer), k=check("kmeans", "k", k),
                      seed=check("kmeans", "seed", seed), max_iter=check("kmeans", "max_iter", max_iter)))


def cka_influence(con_or_sources, model_a: str, model_b: str, layer_a: int, layer_b: int,
                  pooling: str = DEFAULT_POOLING, estimator: str = DEFAULT_ESTIMATOR, prompt_set: str | None = None,
                  allow_partial: bool = False) -> pa.Table:
    """Per prompt: the leave-one-out (jackknife) change of CKA between layer_a of model_a and layer_b of
    model_b, from the Grams in O(n^2) (vindex.query.influence); influence < 0: the prompt pulls CKA down."""
    fn = "cka_influence"
    return _compare(con_or_sources, fn, model_a, model_b, dict(pooling=pooling, estimator=estimator,
                                                               prompt_set=prompt_set), allow_partial,
                    positional=(check(fn, "layer", layer_a), check(fn, "layer", layer_b)))


def cka_influence_summary(con_or_sources, model_a: str, model_b: str, layer_a: int, layer_b: int,
                          pooling: str = DEFAULT_POOLING, estimator: str = DEFAULT_ESTIMATOR,
                          prompt_set: str | None = None, permutations: int = 999, seed: int = 0,
                          allow_partial: bool = False) -> pa.Table:
    """cka_influence summarised per prompt category, with a label-permutation null of each mean."""
    fn = "cka_influence_summary"
    return _compare(con_or_sources, fn, model_a, model_b, dict(
        pooling=pooling, estimator=estimator, prompt_set=prompt_set,
        permutations=check(fn, "permutations", permutations), seed=check(fn, "seed", seed)), allow_partial,
        positional=(check(fn, "layer", layer_a), check(fn, "layer", layer_b)))


def stages(con_or_sources, model: str, pooling: str = DEFAULT_POOLING, estimator: str = DEFAULT_ESTIMATOR,
           prompt_set: str | None = None, max_stages: int = 8, n_stages: int | None = None, permutations: int = 99,
           seed: int = 0) -> pa.Table:
    """A model's layers cut into contiguous stages from its own layer-by-layer CKA (vindex.query.layer_stages):
    one row per stage, the count chosen by the gap statistic against smooth-decay surrogates (or n_stages)."""
    fn = "stages"
    return _call(connection(con_or_sources), fn, [model], dict(
        pooling=pooling, estimator=estimator, prompt_set=prompt_set, max_stages=check(fn, "max_stages", max_stages),
        n_stages=None if n_stages is None else check(fn, "n_stages", n_stages),
        permutations=check(fn, "permutations", permutations), seed=check(fn, "seed", seed)))


def measure_depth(con_or_sources, model_a: str, model_b: str, measure: str = "pwcca", pooling: str = DEFAULT_POOLING,
                  prompt_set: str | None = None, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0, k: int = 10,
                  dims: int | None = None, variance: float = 0.99, allow_partial: bool = False) -> pa.Table:
    """A measure beyond CKA (procrustes, shape_metric, svcca, pwcca, rsa, cknna: vindex.query.measures) for
    each layer of model_a and model_b's layer at the nearest normalized depth, with its permutation null."""
    fn = "measure_depth"
    return _compare(con_or_sources, fn, model_a, model_b, dict(
        measure=measure, pooling=pooling, prompt_set=prompt_set,
        permutations=check(fn, "permutations", permutations), seed=check(fn, "seed", seed), k=check(fn, "k", k),
        dims=None if dims is None else check(fn, "dims", dims), variance=check(fn, "variance", variance)),
        allow_partial)


def rosetta(con_or_sources, model_a: str, model_b: str, pooling: str = DEFAULT_POOLING, method: str = "ridge",
            folds: int = 5, pairs: str = "matched", permutations: int = 0, seed: int = 0,
            prompt_set: str | None = None, allow_partial: bool = False, store: bool = False) -> pa.Table:
    """Rosetta maps between two models' layers at matched depth (pairs='all': every pair), fitted both
    ways: held-out R^2 and CKA, their shuffled-rows null, and the map's hyperparameters (docs/rosetta.md).
    store=True also writes each map (W and b) into its target model's vindex as the `maps` table
    (`vindex.maps`: read_map, apply_map, map_direction)."""
    fn = "rosetta"
    con = connection(con_or_sources)
    table = _compare(con, fn, model_a, model_b, dict(
        pooling=pooling, method=method, folds=check(fn, "folds", folds), pairs=pairs,
        permutations=check(fn, "permutations", permutations), seed=check(fn, "seed", seed), prompt_set=prompt_set,
        matrix=bool(store)), allow_partial)
    if store:
        from .rosetta_sql import store_maps
        store_maps(con, table)
    return table.drop_columns(["matrix", "bias"])
