"""Registering the vindex SQL functions on a DuckDB connection: vectorized (Arrow) Python UDFs for
the math, and SQL macros (scalar and table) that give them defaults and named parameters.

DuckDB 1.5's Python API registers scalar UDFs only, so every table-valued function here
(`cka_matrix`, `cka_depth`, `kmeans`, ...) is a table macro over those scalars; see macros.py.
The matrix macros are written for the connection's models (a branch per model), so `connect`
registers them after creating the views.
UDF names start with `vindex_` where a macro is the documented face; docs/sql.md lists them all.
"""
from __future__ import annotations

import weakref

import numpy as np
import pyarrow as pa

from vindex.errors import IncompleteData

from . import cka, cluster, describe, gram_cache, influence, knn, layer_stages, measure_sql, rosetta_sql
from .arguments import check
from .lake_cka import RESULT_SCHEMA, model_stack, pair_cka
from .macros import ModelInfo, PromptSetInfo, macros
from .parallel import map_layers, single_threaded_blas
from .vectors import double_lists, row_arrays, row_key_fields, row_keys, row_labels, row_matrices, scalars

NULL_STRUCT = "STRUCT(null_mean DOUBLE, null_p95 DOUBLE, p_value DOUBLE)"


# -- CKA ----------------------------------------------------------------------------------------
def udf_cka(a, b, estimator, kernel, preprocess) -> pa.Array:
    """cka(list_a, list_b, estimator, kernel, preprocess) -> DOUBLE per row."""
    xs, ys = row_matrices(a, "cka: first list"), row_matrices(b, "cka: second list")
    n = len(xs)
    out = []
    for X, Y, est, ker, pre in zip(xs, ys, scalars(estimator, n), scalars(kernel, n), scalars(preprocess, n)):
        if X is None or Y is None:
            out.append(None)
            continue
        try:
            out.append(cka.cka(X, Y, est, ker, pre))
        except cka.DegenerateInput as e:
            cka.warn_undefined("cka", e)
            out.append(None)
    return pa.array(out, pa.float64())


def udf_cka_options(estimator, kernel, preprocess) -> pa.Array:
    """The canonical spelling of CKA options ('rbf' -> 'rbf:1'), raising on unknown ones."""
    n = len(estimator)
    out = []
    for est, ker, pre in zip(scalars(estimator, n), scalars(kernel, n), scalars(preprocess, n)):
        o = cka.options(est, ker, pre)
        out.append({"estimator": o.estimator, "kernel": o.kernel_name, "preprocess": o.preprocess_name})
    return pa.array(out, pa.struct([("estimator", pa.string()), ("kernel", pa.string()), ("preprocess", pa.string())]))


def udf_unit_gram(vectors, estimator, kernel, preprocess) -> pa.Array:
    """cka_gram(list) -> the packed unit centred Gram, DOUBLE[n(n+1)/2]; CKA of two = list_dot_product."""
    xs = row_matrices(vectors, "cka_gram")
    n = len(xs)
    out = []
    for X, est, ker, pre in zip(xs, scalars(estimator, n), scalars(kernel, n), scalars(preprocess, n)):
        out.append(_gram_or_none(lambda: cka.packed_unit_gram(X, cka.options(est, ker, pre)), X))
    return double_lists(out)


def udf_minibatch_gram(vectors, batch_size, seed, kernel, preprocess) -> pa.Array:
    """cka_minibatch_gram(list, batch_size, seed, ...) -> concatenated unit batch Grams."""
    xs = row_matrices(vectors, "cka_minibatch_gram")
    n = len(xs)
    out = []
    for X, b, s, ker, pre in zip(xs, scalars(batch_size, n), scalars(seed, n), scalars(kernel, n),
                                 scalars(preprocess, n)):
        b, s = check("cka_minibatch_gram", "batch_size", b), check("cka_minibatch_gram", "seed", s)
        out.append(_gram_or_none(lambda: cka.minibatch_unit_gram(X, b, s, cka.options("debiased", ker, pre)), X))
    return double_lists(out)


def _gram_or_none(make, X):
    if X is None:
        return None
    try:
        return make().ravel()
    except cka.DegenerateInput as e:
        cka.warn_undefined("cka_gram", e)
        return None


def udf_rows_key(keys) -> pa.Array:
    """rows_key(list of keys) -> BIGINT: `cka.rows_fingerprint` of the keys in list order, the
    fingerprint the matrix macros compare (theirs is of the keys sorted)."""
    return pa.array([None if f is None else cka.rows_fingerprint(f) for f in row_key_fields(keys)], pa.int64())


# -- per-layer Grams for the matrix macros: rows arrive unordered with their keys ----------------
LAYER_GRAM = "STRUCT(g DOUBLE[], rows_key BIGINT, n INTEGER, n_distinct INTEGER)"


def _keyed(make_gram, what: str):
    """A UDF (vectors, keys, label, *args) -> LAYER_GRAM: sort the rows by their keys here (an
    ordered list() aggregate costs DuckDB more than numpy's argsort), fingerprint the keys so the two
    sides of a pair can be checked for the same rows, and build the Gram with make_gram(X, *args).
    `label` ('model m layer 3') names the layer in errors and warnings. Layers run in parallel."""
    def udf(vectors, keys, label, *args) -> pa.Array:
        n_rows = len(vectors)
        labels = [f"{what}: {x}" for x in scalars(label, n_rows)]
        xs = row_matrices(vectors, labels[0] if n_rows == 1 else what)
        ks = row_keys(keys)
        consts = [scalars(a, n_rows) for a in args]

        def one(i):
            X = xs[i]
            if X is None:
                return None
            order, fingerprint, n_distinct = ks[i]
            if len(order) > 1 and not (order[1:] > order[:-1]).all():  # shards are usually already sorted
                X = X[order]
            try:
                g = make_gram(X, *[c[i] for c in consts]).ravel()
            except cka.DegenerateInput as e:
                cka.warn_undefined(labels[i], e)
                g = None
            except cka.InvalidValue as e:
                raise cka.InvalidValue(f"{labels[i]}: {e}") from None
            return {"g": g, "rows_key": fingerprint, "n": len(X), "n_distinct": n_distinct}

        out = map_layers(one, range(n_rows))
        grams = double_lists([None if o is None else o["g"] for o in out])
        fields = [grams] + [pa.array([o[f] if o else None for o in out], t) for f, t in
                            (("rows_key", pa.int64()), ("n", pa.int32()), ("n_distinct", pa.int32()))]
        return pa.StructArray.from_arrays(fields, names=["g", "rows_key", "n", "n_distinct"],
                                          mask=pa.array([o is None for o in out]))
    return udf


udf_layer_gram = _keyed(lambda X, est, ker, pre: cka.packed_unit_gram(X, cka.options(est, ker, pre)), "cka_matrix")
udf_layer_minibatch_gram = _keyed(
    lambda X, b, s, ker, pre: cka.minibatch_unit_gram(X, check("cka_token_matrix", "batch_size", b),
                                                    check("cka_token_matrix", "seed", s),
                                                    cka.options("debiased", ker, pre)),
    "cka_token_matrix")
udf_layer_knn_graph = _keyed(lambda X, k: knn.unit_knn_graph(X, check("mutual_knn_matrix", "k", k)),
                             "mutual_knn_matrix")


CKA_PAIRS = ("STRUCT(layer_a INTEGER, layer_b INTEGER, depth_a DOUBLE, depth_b DOUBLE, cka DOUBLE, "
             "null_mean DOUBLE, null_p95 DOUBLE, p_value DOUBLE, n INTEGER)[]")


def udf_cka_pairs(vindexes: dict):
    """The UDF vindex_cka_pairs(model_a, model_b, pooling, prompt_set, estimator, kernel, preprocess,
    permutations, seed, allow_partial, fn) -> CKA_PAIRS: every layer pair of the two models, as
    `cka_matrix`'s rows, read through Python rather than DuckDB's scans.

    Each model's Grams come from the Gram cache (`gram_cache.model_grams`: stored, or computed from
    the shards and stored); with allow_partial from the prompts both models hold (`gram_cache.model_keys`,
    as the scanning path's `common`), computed each time (they depend on the pair). Then one GEMM:
    each model's Grams stacked (`lake_cka.model_stack`), CKA(a, b) = <g_a, g_b> for all layer pairs at
    once, G_A G_B^T (Kornblith et al. 2019, eq. 4), and the permutation null over the same Grams
    (`lake_cka.pair_cka`, `cka.null_scores`): no Gram crosses into DuckDB. `vindexes`: the
    connection's, by name (a model not among them gives NULL). It refuses what the scanning path
    refuses, in its words: a model without rows of the spec, a layer pair whose rows differ, a prompt
    listed twice, a Gram that cannot be formed (InvalidValue); an undefined Gram (a constant layer)
    gives NULL with a CKAWarning. `fn` names the macro in all of them."""
    def udf(model_a, model_b, pooling, prompt_set, estimator, kernel, preprocess, permutations, seed, allow_partial,
            fn) -> pa.Array:
        n_rows = len(model_a)
        tables = []
        for a, b, pool, ps, est, ker, pre, perms, s, partial, f in zip(*(scalars(c, n_rows) for c in (
                model_a, model_b, pooling, prompt_set, estimator, kernel, preprocess, permutations, seed, allow_partial,
                fn))):
            if a not in vindexes or b not in vindexes or pool is None:
                tables.append(None)
                continue
            opts = cka.options(est, ker, pre)
            spec = {"pooling": pool, "prompt_set": ps, "estimator": opts.estimator, "kernel": opts.kernel_name,
                    "preprocess": opts.preprocess_name, "permutations": check(f, "permutations", perms),
                    "seed": check(f, "seed", s)}
            gspec = gram_cache.GramSpec(pool, ps, opts)
            if partial:
                keys = {m: gram_cache.model_keys(vindexes[m], gspec) for m in (a, b)}
                for m in (a, b):
                    if not keys[m]:
                        _no_rows(f, m, pool, ps)
                keep = keys[a] & keys[b]
                stacks = [model_stack(*_layers(vindexes[m], gspec, f, keep)) for m in (a, b)]
            else:
                stacks = [model_stack(*_layers(vindexes[m], gspec, f)) for m in (a, b)]
            _check_same_rows(f, a, b, stacks[0]["metas"], stacks[1]["metas"])
            with single_threaded_blas():   # inside DuckDB's threads (see query.parallel)
                tables.append(pair_cka(*stacks, spec)[0].select(_PAIR_FIELDS))
        rows = pa.concat_tables([t for t in tables if t is not None]) if any(t is not None for t in tables) else None
        struct = rows.to_struct_array().combine_chunks() if rows is not None else pa.array([], _PAIR_TYPE)
        offsets = np.concatenate([[0], np.cumsum([0 if t is None else t.num_rows for t in tables])]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), struct, mask=pa.array([t is None for t in tables]))
    return udf


_PAIR_FIELDS = ["layer_a", "layer_b", "depth_a", "depth_b", "cka", "null_mean", "null_p95", "p_value", "n"]
_PAIR_TYPE = pa.struct([RESULT_SCHEMA.field(name) for name in _PAIR_FIELDS])


def _layers(v, spec, fn: str, keep: frozenset | None = None) -> list:
    """A model's (meta, g) per layer with rows for `spec`: from the Gram cache, or (keep: only those
    prompts) computed here. A model with no such rows is refused (the scanning path's `model_checks`),
    an invalid Gram raises, an undefined one warns (as the scanning path's UDF does)."""
    if keep is None:
        layers = gram_cache.model_grams(v, spec, run=_in_turn)
        if all(meta["status"] == "empty" for meta, _ in layers):
            _no_rows(fn, v.name, spec.pooling, spec.prompt_set)
    else:
        layers = _in_turn([(*job, keep) for job in gram_cache.layer_jobs(v, spec).values()])
    layers = [(meta, g) for meta, g in layers if meta["status"] != "empty"]
    for meta, _ in layers:
        label = f"{fn}: model {v.name} layer {meta['layer']}"
        if meta["status"] == "invalid":
            raise cka.InvalidValue(f"{label}: {meta['note']}")
        if meta["status"] == "undefined":
            cka.warn_undefined(label, cka.DegenerateInput(meta["note"]))
    return layers


def _no_rows(fn: str, model: str, pooling: str, prompt_set: str | None):
    """The refusal of a model without such rows (the callers that hold a connection, the Python
    functions and `vindex sql`, add the poolings it holds: `analyses.with_poolings`)."""
    raise cka.InvalidValue(f"{fn}: model '{model}' has no pooled rows with pooling = {pooling}"
                           + (f" and prompt_set = {prompt_set}" if prompt_set is not None else ""))


def _in_turn(jobs: list[tuple]) -> list:
    """`gram_cache.layer_gram` of each job in turn, BLAS on one thread. Inside this UDF a thread pool
    of ours runs pathologically slowly when DuckDB has more than one thread (measured here, a cold
    19 x 25 layer pair: 4.6 s with layers on threads, 0.76 s in turn; 0.92 s with DuckDB on one thread)."""
    with single_threaded_blas():
        return [gram_cache.layer_gram(*job) for job in jobs]


def _check_same_rows(fn: str, a: str, b: str, metas_a: list, metas_b: list) -> None:
    """The scanning path's per-pair refusals (`macros.pair_value`), in the same words."""
    for ma in metas_a:
        for mb in metas_b:
            if ma["n_distinct"] != ma["n"] or mb["n_distinct"] != mb["n"]:
                m = ma if ma["n_distinct"] != ma["n"] else mb
                raise cka.InvalidValue(f"{fn}: a layer lists the same row twice ({m['n']} rows, {m['n_distinct']} "
                                       "distinct); filter by prompt_set or pooling")
            if ma["key"] != mb["key"]:   # IncompleteData, as error_from_message classes the scanning path's
                raise IncompleteData(
                    f"{fn}: layer {ma['layer']} of {a} and layer {mb['layer']} of {b} hold different prompts "
                    f"({ma['n']} vs {mb['n']} rows); CKA needs the same rows on both sides, in the same order: "
                    "choose one prompt_set, or pass allow_partial := true to compare the prompts both models hold")


def udf_minibatch_cka(a, b, batch_size, seed, kernel, preprocess) -> pa.Array:
    xs, ys = row_matrices(a, "minibatch_cka: first list"), row_matrices(b, "minibatch_cka: second list")
    n = len(xs)
    out = []
    for X, Y, bs, s, ker, pre in zip(xs, ys, scalars(batch_size, n), scalars(seed, n), scalars(kernel, n),
                                     scalars(preprocess, n)):
        if X is None or Y is None:
            out.append(None)
            continue
        bs, s = check("minibatch_cka", "batch_size", bs), check("minibatch_cka", "seed", s)
        try:
            out.append(cka.minibatch_cka(X, Y, bs, s, ker, pre))
        except cka.DegenerateInput as e:
            cka.warn_undefined("minibatch_cka", e)
            out.append(None)
    return pa.array(out, pa.float64())


def udf_cka_null(ga, gb, permutations, seed) -> pa.Array:
    """cka_null(g_a, g_b, permutations, seed) -> STRUCT(null_mean, null_p95, p_value) per row, from
    packed Grams (cka_gram).

    Rows of one call share Grams (a cross join repeats each layer's Gram), so the Grams are
    de-duplicated and each permutation is applied once per distinct Gram, on whichever side has
    fewer distinct Grams: <g_a, P g_b P^T> = <P^T g_a P, g_b>.
    """
    xs, ys = row_arrays(ga), row_arrays(gb)
    n_rows = len(xs)
    counts, seeds = scalars(permutations, n_rows), scalars(seed, n_rows)
    result = [None] * n_rows
    groups: dict[tuple, list[int]] = {}
    for r, (x, y) in enumerate(zip(xs, ys)):
        if x is None or y is None:
            continue
        count, s = check("cka_null", "permutations", counts[r]), check("cka_null", "seed", seeds[r])
        if not count:
            continue
        if x.size != y.size:
            raise cka.InvalidValue(f"cka_null: Grams of different sizes ({x.size} and {y.size} values)")
        groups.setdefault((x.size, count, s), []).append(r)
    for (size, count, s), rows in groups.items():
        n = cka.packed_size(size)
        ia, ua = _dedupe([xs[r] for r in rows])
        ib, ub = _dedupe([ys[r] for r in rows])
        PA, PB = np.stack(ua), np.stack(ub)
        with single_threaded_blas():
            if len(ub) <= len(ua):
                null = cka.null_scores(PA, PB, cka.permutation_gather(n, count, s))
            else:
                null = cka.null_scores(PB, PA, cka.permutation_gather(n, count, s, inverse=True)).transpose(1, 0, 2)
        for j, r in enumerate(rows):
            obs = float(np.dot(xs[r], ys[r]))
            summary = cka.null_summary(obs, null[ia[j], ib[j]])
            result[r] = {k: float(v) for k, v in summary.items()}
    return pa.array(result, pa.struct([("null_mean", pa.float64()), ("null_p95", pa.float64()),
                                       ("p_value", pa.float64())]))


def _dedupe(arrays: list[np.ndarray]) -> tuple[list[int], list[np.ndarray]]:
    """Index of each array in the list of distinct ones (content equality, sampled key first)."""
    index, uniques, buckets = [], [], {}
    for a in arrays:
        key = (a.size, a[:: max(1, a.size // 64)].tobytes())
        for u in buckets.setdefault(key, []):
            if np.array_equal(uniques[u], a):
                index.append(u)
                break
        else:
            buckets[key].append(len(uniques))
            index.append(len(uniques))
            uniques.append(a)
    return index, uniques


# -- mutual k-NN, clustering --------------------------------------------------------------------
def udf_mutual_knn(a, b, k) -> pa.Array:
    xs, ys = row_matrices(a, "mutual_knn: first list"), row_matrices(b, "mutual_knn: second list")
    out = []
    for X, Y, kk in zip(xs, ys, scalars(k, len(xs))):
        kk = check("mutual_knn", "k", kk)
        try:
            out.append(None if X is None or Y is None else knn.mutual_knn(X, Y, kk))
        except cka.DegenerateInput as e:
            cka.warn_undefined("mutual_knn", e)
            out.append(None)
    return pa.array(out, pa.float64())


def udf_knn_graph(vectors, k) -> pa.Array:
    xs = row_matrices(vectors, "knn_graph")
    return double_lists([_gram_or_none(lambda: knn.unit_knn_graph(X, check("knn_graph", "k", kk)), X)
                         for X, kk in zip(xs, scalars(k, len(xs)))])


def udf_kmeans_labels(vectors, k, seed, max_iter) -> pa.Array:
    xs = row_matrices(vectors, "kmeans_labels")
    n = len(xs)
    out = [None if X is None else cluster.kmeans(X, *_kmeans_args("kmeans_labels", kk, s, it)).labels.tolist()
           for X, kk, s, it in zip(xs, scalars(k, n), scalars(seed, n), scalars(max_iter, n))]
    return pa.array(out, pa.list_(pa.int32()))


def udf_kmeans_distances(vectors, k, seed, max_iter) -> pa.Array:
    xs = row_matrices(vectors, "kmeans")
    n = len(xs)
    out = []
    for X, kk, s, it in zip(xs, scalars(k, n), scalars(seed, n), scalars(max_iter, n)):
        if X is None:
            out.append(None)
            continue
        res = cluster.kmeans(X, *_kmeans_args("kmeans", kk, s, it))
        out.append({"cluster": res.labels.tolist(), "distance": res.distances.tolist(),
                    "inertia": float(res.inertia), "iterations": int(res.iterations)})
    return pa.array(out, pa.struct([("cluster", pa.list_(pa.int32())), ("distance", pa.list_(pa.float64())),
                                    ("inertia", pa.float64()), ("iterations", pa.int32())]))


def _kmeans_args(fn: str, k, seed, max_iter) -> tuple[int, int, int]:
    return check(fn, "k", k), check(fn, "seed", seed), check(fn, "max_iter", max_iter)


def _label_score(fn, name):
    def udf(labels, clusters) -> pa.Array:
        ls, cs = row_labels(labels, f"{name}: labels"), row_labels(clusters, f"{name}: clusters")
        return pa.array([None if a is None or b is None else fn(a, b) for a, b in zip(ls, cs)], pa.float64())
    return udf


# -- registration -------------------------------------------------------------------------------
UDFS = [
    # name, function, return type
    ("vindex_cka", udf_cka, "DOUBLE"),
    ("vindex_cka_options", udf_cka_options, "STRUCT(estimator VARCHAR, kernel VARCHAR, preprocess VARCHAR)"),
    ("vindex_cka_gram", udf_unit_gram, "DOUBLE[]"),
    ("vindex_minibatch_gram", udf_minibatch_gram, "DOUBLE[]"),
    ("vindex_minibatch_cka", udf_minibatch_cka, "DOUBLE"),
    ("vindex_cka_null", udf_cka_null, NULL_STRUCT),
    ("rows_key", udf_rows_key, "BIGINT"),
    ("vindex_layer_gram", udf_layer_gram, LAYER_GRAM),
    ("vindex_layer_minibatch_gram", udf_layer_minibatch_gram, LAYER_GRAM),
    ("vindex_layer_knn_graph", udf_layer_knn_graph, LAYER_GRAM),
    ("vindex_mutual_knn", udf_mutual_knn, "DOUBLE"),
    ("vindex_knn_graph", udf_knn_graph, "DOUBLE[]"),
    ("vindex_kmeans_labels", udf_kmeans_labels, "INTEGER[]"),
    ("vindex_kmeans", udf_kmeans_distances,
     "STRUCT(cluster INTEGER[], distance DOUBLE[], inertia DOUBLE, iterations INTEGER)"),
    ("nmi", _label_score(cluster.nmi, "nmi"), "DOUBLE"),
    ("ami", _label_score(cluster.ami, "ami"), "DOUBLE"),
    *influence.UDFS,
    *layer_stages.UDFS,
    *rosetta_sql.UDFS,
    *measure_sql.UDFS,
]


def register_functions(con, vindexes=()) -> None:
    """Create the vindex SQL functions on `con` (again on a connection that has them: replaced).
    `vindexes` (`sources.ResolvedVindex`, as `connect` found them): models whose CKA matrices read
    the Gram cache."""
    import duckdb

    grams = {v.name: v for v in vindexes}
    if vindexes:
        _CONNECTION_VINDEXES[con] = grams
    # vindex_cka_pairs has all-constant arguments: 'side effects' keeps DuckDB from folding (calling)
    # it while it plans a branch it then prunes
    for name, fn, ret, effects in [(*u, False) for u in UDFS] + [
            ("vindex_cka_pairs", udf_cka_pairs(grams), CKA_PAIRS, True)] + influence.cached_udfs(grams):
        try:
            con.remove_function(name)
        except duckdb.Error:
            pass
        # 'special': the UDFs see NULL rows and may return NULL (an undefined CKA), and say so
        con.create_function(name, fn, None, duckdb.sqltype(ret), type="arrow", null_handling="special",
                            side_effects=effects)
    models = lake_models(con, grams)
    con.execute(";\n".join(macros(models) + influence.macros(models) + layer_stages.macros(models)
                            + rosetta_sql.macros(models) + measure_sql.macros(models) + describe.macros()))


_CONNECTION_VINDEXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def connection_vindexes(con) -> dict | None:
    """{name: ResolvedVindex} of a connection `connect` made (None for another connection): what a
    caller needs to read the Gram cache in Python (`lake_cka.pair_tables`) for the same models."""
    return _CONNECTION_VINDEXES.get(con)


def lake_models(con, grams=()) -> list[ModelInfo]:
    """The models of a connection made by `connect` (none on a bare DuckDB connection), each with its
    prompt sets (the `prompt_sets` view); those named in `grams` read the Gram cache."""
    import duckdb
    try:
        rows = con.execute("SELECT model, n_layers FROM models ORDER BY model").fetchall()
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM information_schema.schemata").fetchall()}
        sets = con.execute("SELECT model, prompt_set, n_prompts, n_present, complete, sha256 FROM prompt_sets "
                           "ORDER BY model, prompt_set").fetchall()
    except duckdb.Error:
        return []
    by_model: dict[str, list] = {}
    for model, *info in sets:
        by_model.setdefault(model, []).append(PromptSetInfo(*info))
    return [ModelInfo(name, int(n), name in schemas, tuple(by_model.get(name, ())), name in grams) for name, n in rows]
