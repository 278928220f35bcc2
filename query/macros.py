"""The SQL face of the vindex functions: scalar macros (defaults, named parameters) over the UDFs of
functions.py, and table macros for the analyses over whole models.

The CKA matrix is computed the fast way: one centred, unit-norm Gram per (model, layer), from
`list(act ORDER BY prompt)`, then `list_dot_product` for every layer pair; the permutation null
permutes the stored Grams. Inside a macro, a bare name that is also a parameter means the
parameter, so every column is qualified with its table alias.

Each table macro starts from a one-row `checks` CTE that raises a clear error (unknown model,
no rows, bad option, a numeric argument out of its domain, an incomplete prompt set) and is used in
the final WHERE, so DuckDB cannot prune it away.

Partial data is refused unless `allow_partial := true`: a prompt set whose build was cut off (the
`prompt_sets` view's `complete`), baked into the macros from the manifests when they are registered
(like the models' depths), so the check is a constant at query time. With the flag the
analyses compare the prompts both models hold (the `common` CTE, pruned to nothing at plan time
without it) and `n` says how many rows were used. Prompt sets of one name but other contents
(sha256) are refused always: their rows would pair different prompts under one prompt_id.
"""
from __future__ import annotations

from dataclasses import dataclass

from vindex.defaults import DEFAULT_ESTIMATOR, DEFAULT_PERMUTATIONS, DEFAULT_POOLING

from .arguments import sql_check
from .sqltext import ident, literal

CKA_OPTIONS = "estimator := 'biased', kernel := 'linear', preprocess := 'none'"
# The model comparisons' defaults: one decision, named in vindex/defaults.py with its reasons (README.md
# "Defaults"); the scalar cka()/cka_gram() keep the textbook biased estimator over exactly what they
# are given. vindex.query.analyses, vindex.query.lake_cka, `vindex cka` and the viewer take these values.
COMPARE_OPTIONS = (f"pooling := '{DEFAULT_POOLING}', estimator := '{DEFAULT_ESTIMATOR}', kernel := 'linear', "
                   "preprocess := 'none'")

SCALAR_MACROS = [
    f"CREATE OR REPLACE MACRO cka(list_a, list_b, {CKA_OPTIONS}) AS "
    "vindex_cka(list_a, list_b, estimator, kernel, preprocess)",
    f"CREATE OR REPLACE MACRO cka_gram(vectors, {CKA_OPTIONS}) AS "
    "vindex_cka_gram(vectors, estimator, kernel, preprocess)",
    "CREATE OR REPLACE MACRO minibatch_cka(list_a, list_b, batch_size := 256, seed := 0, kernel := 'linear', "
    "preprocess := 'none') AS vindex_minibatch_cka(list_a, list_b, batch_size, seed, kernel, preprocess)",
    "CREATE OR REPLACE MACRO cka_minibatch_gram(vectors, batch_size := 256, seed := 0, kernel := 'linear', "
    "preprocess := 'none') AS vindex_minibatch_gram(vectors, batch_size, seed, kernel, preprocess)",
    "CREATE OR REPLACE MACRO cka_null(gram_a, gram_b, permutations := 99, seed := 0) AS "
    "vindex_cka_null(gram_a, gram_b, permutations, seed)",
    "CREATE OR REPLACE MACRO mutual_knn(list_a, list_b, k := 10) AS vindex_mutual_knn(list_a, list_b, k)",
    "CREATE OR REPLACE MACRO knn_graph(vectors, k := 10) AS vindex_knn_graph(vectors, k)",
    "CREATE OR REPLACE MACRO kmeans_labels(vectors, k := 8, seed := 0, max_iter := 300) AS "
    "vindex_kmeans_labels(vectors, k, seed, max_iter)",
]


def model_checks(fn: str, table: str, models: list[str], where: str, what: str, rows: bool = True) -> str:
    """CASE expression raising a clear error for an unknown model or (rows) one without matching rows."""
    whens = []
    for m in models:
        whens.append(f"WHEN NOT EXISTS (FROM models AS mm WHERE mm.model = {m}) THEN error('{fn}: unknown "
                     f"model ''' || {m} || '''; the lake holds: ' || coalesce((SELECT string_agg(mm.model, ', ' "
                     "ORDER BY mm.model) FROM models AS mm), 'no models'))")
    for m in models if rows else ():
        whens.append(f"WHEN NOT EXISTS (FROM {table} AS r WHERE r.model = {m} AND {where}) THEN error('{fn}: "
                     f"model ''' || {m} || ''' has no {table} rows with ' || {what})")
    return "CASE " + " ".join(whens) + " ELSE true END"


def number_checks(fn: str, *names: str) -> str:
    """AND of `arguments.sql_check` for each numeric parameter: true, or an error naming it."""
    return " AND ".join(sql_check(fn, name) for name in names)


INCOMPLETE_ADVICE = "an interrupted build: rerun it to resume"

# Each layer of side ga paired with side gb's layer at the nearest normalized depth (ties: the lower
# layer), as cka_depth pairs them; measure_depth and rosetta share this one CTE.
MATCHED_DEPTH = """matched AS (SELECT a.layer AS layer_a, arg_min(b.layer, (round(abs(a.depth - b.depth), 9), b.layer)) AS layer_b
            FROM (SELECT x.layer, x.depth FROM ga AS x) AS a CROSS JOIN (SELECT x.layer, x.depth FROM gb AS x) AS b
            GROUP BY a.layer)"""


def incomplete_note(model: str, ps: PromptSetInfo) -> str:
    """How an incomplete prompt set is named, in SQL errors and Python's IncompleteData alike."""
    return f"model {model!r} prompt set {ps.name!r} is incomplete: {ps.n_present} of {ps.n_prompts} prompts"


def mismatch_note(a: str, pa_: PromptSetInfo, b: str, pb: PromptSetInfo) -> str:
    return (f"prompt set {pa_.name!r} holds other prompts in {a!r} (sha256 {pa_.sha256[:12]}) than in {b!r} "
            f"(sha256 {pb.sha256[:12]})")


def _notes_sql(terms: list[str]) -> str:
    """The terms' texts that apply, joined by '; ', or NULL: one expression over the macro's
    parameters and literals, which DuckDB folds to a constant when it plans the call."""
    return f"nullif(concat_ws('; ', {', '.join(terms)}), '')" if terms else "NULL::VARCHAR"


def _set_matches(name: str) -> str:
    return f"(prompt_set IS NULL OR prompt_set = {literal(name)})"


def incomplete_sql(models: list[ModelInfo]) -> str:
    """The incomplete prompt sets (from the manifests, as `prompt_sets.complete`) that a call over
    model_a, model_b and `prompt_set` (NULL: all) would read, as one text, or NULL."""
    return _notes_sql([f"CASE WHEN {literal(m.name)} IN (model_a, model_b) AND {_set_matches(ps.name)} "
                       f"THEN {literal(incomplete_note(m.name, ps))} END"
                       for m in models for ps in m.prompt_sets if not ps.complete])


def mismatch_sql(models: list[ModelInfo]) -> str:
    """The prompt sets model_a and model_b record under one name with other contents (sha256), or NULL."""
    terms = []
    for ma in models:
        for mb in models:
            for pa_ in ma.prompt_sets:
                for pb in mb.prompt_sets:
                    if ma.name != mb.name and pa_.name == pb.name and pa_.sha256 != pb.sha256:
                        terms.append(f"CASE WHEN model_a = {literal(ma.name)} AND model_b = {literal(mb.name)} AND "
                                     f"{_set_matches(pa_.name)} THEN {literal(mismatch_note(ma.name, pa_, mb.name, pb))} END")
    return _notes_sql(terms)


def data_checks(fn: str, models: list[ModelInfo]) -> str:
    """true, or an error: prompt sets of one name but different contents (always), incomplete prompt
    sets (unless allow_partial). Built from the lake's manifests when the macros are registered, so
    it costs nothing at query time and filters the sides' rows too (see side_grams)."""
    mismatch, incomplete = mismatch_sql(models), incomplete_sql(models)
    return (f"CASE WHEN allow_partial IS NULL THEN error('{fn}: allow_partial must be true or false, got NULL') "
            f"WHEN {mismatch} IS NOT NULL THEN error('{fn}: ' || {mismatch} || '; rows with one prompt_id would "
            "pair different prompts') "
            f"WHEN NOT allow_partial AND {incomplete} IS NOT NULL THEN error('{fn}: ' || {incomplete} || "
            f"' ({INCOMPLETE_ADVICE}); pass allow_partial := true to compare the prompts both models hold') "
            "ELSE true END")


def common_keys(table: str, where: str) -> str:
    """CTE `common`: the prompts both models hold (as one key text); with allow_partial only (else
    pruned at plan time)."""
    side = (f"SELECT {PROMPT_KEY} AS k FROM {{table}} AS r WHERE allow_partial AND r.model = {{model}} "
            "AND {where}")
    return (f"common AS NOT MATERIALIZED ({side.format(table=table, model='model_a', where=where)}\n"
            f"  INTERSECT {side.format(table=table, model='model_b', where=where)})")


# a row's prompt as one value (an uncorrelated IN is a plain hash semi-join; a correlated EXISTS on
# two columns costs DuckDB a delim join to plan and run)
PROMPT_KEY = "r.prompt_set || chr(31) || r.prompt_id::VARCHAR"
# a side's rows, restricted to `common` with allow_partial
IN_COMMON = f"(NOT allow_partial OR {PROMPT_KEY} IN (SELECT c.k FROM common AS c))"

# rows of one side, for a pooled-activation analysis: the WHERE and a description for errors. The model
# comparisons read the residual stream (site resid_post; a build with --sites adds other sites' rows)
POOLED_WHERE = "r.site = 'resid_post' AND r.pooling = pooling AND (prompt_set IS NULL OR r.prompt_set = prompt_set)"
POOLED_WHAT = "'pooling = ' || pooling || coalesce(' and prompt_set = ' || prompt_set, '')"


@dataclass(frozen=True)
class PromptSetInfo:
    """A row of the `prompt_sets` view, as the macros bake it in."""
    name: str
    n_prompts: int
    n_present: int
    complete: bool
    sha256: str


@dataclass(frozen=True)
class ModelInfo:
    """What the macros need to know of a model: its name, depth scale, per-model schema and prompt sets."""
    name: str
    n_layers: int
    schema: bool = True  # False for names DuckDB reserves (main, temp, ...): no per-model views
    prompt_sets: tuple[PromptSetInfo, ...] = ()
    grams: bool = False  # its Grams come from the Gram cache (query.gram_cache) where a macro can use it


def side_grams(alias: str, model: str, gram: str, models: list[ModelInfo], table: str = "pooled",
               where: str = POOLED_WHERE, key: str = "r.prompt_set, r.prompt_id", guard: str = "true") -> str:
    """CTE body: one row per layer of `model` with its Gram (`gram` formatted with {vectors} and
    {keys}), row count, distinct keys and the fingerprint of its sorted row keys (`cka.sort_rows`:
    `rows_key` over the keys in sorted order gives the same number).

    The rows go to the UDF unordered, with their keys, and are sorted there (cheaper than
    list(... ORDER BY ...)). There is one branch per model of the lake, reading that model's own
    view, whose vectors are FLOAT[d] (a fixed-size list aggregates and converts faster than the
    FLOAT[] of a mixed-width union); the branches of other models fold to nothing at plan time.
    `guard` (`data_checks`) filters the rows too, so that an incomplete prompt set is reported
    before a Gram of too few rows could be: a UDF error would hide it. (Filtering by the whole
    `checks` CTE instead makes DuckDB materialize it, and then it no longer prunes an unused
    permutation null.)
    """
    branches = []
    for m in models or [None]:
        if m is None:  # no catalog known (a bare connection): the unioned view
            src, name, depth = table, model, f"(SELECT any_value(mm.n_layers) FROM models AS mm WHERE mm.model = {model})"
            only = f"r.model = {model}"
        else:
            src = f"{ident(m.name)}.{table}" if m.schema else f"(FROM {table} AS t WHERE t.model = {literal(m.name)})"
            name, depth, only = literal(m.name), repr(float(m.n_layers)), f"{literal(m.name)} = {model}"
        call = gram.format(vectors="list(r.act)", keys=f"list(({key})), 'model ' || {name} || ' layer ' || r.layer")
        branches.append(f"SELECT r.layer AS layer, r.layer / {depth} AS depth, {call} AS x\n"
                        f"        FROM {src} AS r WHERE {only} AND {where} AND {IN_COMMON} AND {guard} "
                        "GROUP BY r.layer")
    union = "\n        UNION ALL ".join(branches)
    return f"""{alias} AS (
  SELECT s.layer, s.depth, s.x.n AS n, s.x.n_distinct AS n_distinct, s.x.rows_key AS rows_key, s.x.g AS g
  FROM ({union}) AS s)"""


PARTIAL_HINT = ("CKA needs the same rows on both sides, in the same order: choose one prompt_set, or pass "
                "allow_partial := true to compare the prompts both models hold")


def pair_value(fn: str, expr: str, what: str = "prompts", hint: str = PARTIAL_HINT) -> str:
    """The per-pair value, or an error when the two layers do not hold the same rows in the same order
    (`hint`: what to do about it)."""
    return (f"CASE WHEN a.n_distinct <> a.n OR b.n_distinct <> b.n THEN error('{fn}: a layer lists the same "
            f"row twice (' || a.n || ' rows, ' || a.n_distinct || ' distinct); filter by prompt_set or pooling') "
            f"WHEN a.rows_key <> b.rows_key THEN error('{fn}: layer ' || a.layer || ' of ' || model_a || "
            f"' and layer ' || b.layer || ' of ' || model_b || ' hold different {what} (' || a.n || ' vs ' || b.n "
            f"|| ' rows); {hint}') "
            f"ELSE {expr} END")


def cka_matrix_body(models: list[ModelInfo], fn: str = "cka_matrix", more_checks: tuple[str, ...] = ()) -> str:
    """The query of `cka_matrix`, its errors naming `fn` (cka_depth inlines it rather than calling
    cka_matrix, so that its errors name cka_depth); `more_checks`: more numeric parameters to check.

    Over a `connect` connection (every model reads the Gram cache) the whole matrix is one UDF call,
    `vindex_cka_pairs`: the stored Grams' product, allow_partial's common prompts included, checked
    as the scanning path checks them. The query then names no shard at all, so it plans in a few ms
    whatever the lake's size (the scanning text, a branch per model, took 0.5 s CPU to plan on a
    20-model lake). On a bare connection, the scanning path (`scan_matrix_body`)."""
    if not models or not all(m.grams for m in models):
        return scan_matrix_body(models, fn, more_checks)
    return f"""WITH
opts AS (SELECT vindex_cka_options(estimator, kernel, preprocess) AS o),
checks AS (SELECT {number_checks(fn, *more_checks, 'permutations', 'seed')} AND {data_checks(fn, models)}
                  AND {model_checks(fn, 'pooled', ['model_a', 'model_b'], POOLED_WHERE, POOLED_WHAT, rows=False)} AS ok),
pairs AS (
  SELECT u.p.layer_a AS layer_a, u.p.layer_b AS layer_b, u.p.depth_a AS depth_a, u.p.depth_b AS depth_b,
         u.p.cka AS cka,
         CASE WHEN permutations > 0 THEN struct_pack(null_mean := u.p.null_mean, null_p95 := u.p.null_p95,
                                                    p_value := u.p.p_value) END AS nul,
         u.p.n AS n
  FROM (SELECT unnest(vindex_cka_pairs(model_a, model_b, pooling, prompt_set, estimator, kernel, preprocess,
                                       permutations, seed, allow_partial, {literal(fn)})) AS p
        WHERE {number_checks(fn, *more_checks, 'permutations', 'seed')} AND {data_checks(fn, models)}) AS u)
{_MATRIX_SELECT}"""


_MATRIX_SELECT = """SELECT model_a AS model_a, model_b AS model_b, p.layer_a, p.layer_b, p.depth_a, p.depth_b, p.cka,
       p.nul.null_mean AS null_mean, p.nul.null_p95 AS null_p95, p.nul.p_value AS p_value, p.n,
       pooling AS pooling, prompt_set::VARCHAR AS prompt_set, o.o.estimator AS estimator, o.o.kernel AS kernel,
       o.o.preprocess AS preprocess, permutations::INTEGER AS permutations, seed::INTEGER AS seed
FROM checks AS c CROSS JOIN opts AS o CROSS JOIN pairs AS p
WHERE c.ok
ORDER BY p.layer_a, p.layer_b"""


def scan_matrix_body(models: list[ModelInfo], fn: str = "cka_matrix", more_checks: tuple[str, ...] = ()) -> str:
    """`cka_matrix`'s query from DuckDB's scans: a Gram per (model, layer) by `vindex_layer_gram` over
    the rows, then `list_dot_product` and `vindex_cka_null` per layer pair."""
    return f"""WITH
opts AS (SELECT vindex_cka_options(estimator, kernel, preprocess) AS o),
checks AS (SELECT {number_checks(fn, *more_checks, 'permutations', 'seed')} AND {data_checks(fn, models)}
                  AND {model_checks(fn, 'pooled', ['model_a', 'model_b'], POOLED_WHERE, POOLED_WHAT)} AS ok),
{common_keys('pooled', POOLED_WHERE)},
{side_grams('ga', 'model_a', "vindex_layer_gram({vectors}, {keys}, estimator, kernel, preprocess)", models,
            guard=data_checks(fn, models))},
{side_grams('gb', 'model_b', "vindex_layer_gram({vectors}, {keys}, estimator, kernel, preprocess)", models,
            guard=data_checks(fn, models))},
pairs AS (
  SELECT a.layer AS layer_a, b.layer AS layer_b, a.depth AS depth_a, b.depth AS depth_b,
         {pair_value(fn, 'list_dot_product(a.g, b.g)')} AS cka,
         CASE WHEN permutations > 0 THEN vindex_cka_null(a.g, b.g, permutations, seed) END AS nul,
         a.n AS n
  FROM ga AS a CROSS JOIN gb AS b)
{_MATRIX_SELECT}"""


def cka_matrix_sql(models: list[ModelInfo]) -> str:
    return f"""
CREATE OR REPLACE MACRO cka_matrix(model_a, model_b, {COMPARE_OPTIONS}, prompt_set := NULL,
                                   permutations := {DEFAULT_PERMUTATIONS}, seed := 0, allow_partial := false) AS TABLE
{cka_matrix_body(models)}
"""


def cka_depth_sql(models: list[ModelInfo]) -> str:
    return f"""
CREATE OR REPLACE MACRO cka_depth(model_a, model_b, {COMPARE_OPTIONS}, prompt_set := NULL,
                                  permutations := {DEFAULT_PERMUTATIONS}, seed := 0, band := 0.15,
                                  allow_partial := false) AS TABLE
WITH
m AS ({cka_matrix_body(models, 'cka_depth', ('band',))}),
diag AS (SELECT *, row_number() OVER (PARTITION BY x.layer_a ORDER BY round(abs(x.depth_a - x.depth_b), 9), x.layer_b) AS r
         FROM m AS x),
off AS (SELECT x.layer_a, avg(x.cka) AS off_mean, max(x.cka) AS off_max, count(*) AS n_off
        FROM m AS x WHERE abs(x.depth_a - x.depth_b) >= band GROUP BY x.layer_a)
SELECT d.model_a, d.model_b, d.layer_a, d.depth_a, d.layer_b, d.depth_b, d.cka AS diagonal, o.off_mean, o.off_max,
       o.n_off, d.cka - o.off_mean AS margin, d.null_mean, d.null_p95, d.p_value, d.n, d.pooling, d.prompt_set,
       d.estimator, d.kernel, d.preprocess, d.permutations, d.seed, band::DOUBLE AS band
FROM diag AS d LEFT JOIN off AS o ON o.layer_a = d.layer_a
WHERE d.r = 1
ORDER BY d.layer_a
"""


TOKEN_WHERE = ("r.site = 'resid_post' AND (include_special OR NOT r.special) AND r.token_index >= min_token_index "
               "AND (prompt_set IS NULL OR r.prompt_set = prompt_set)")
TOKEN_WHAT = "'include_special = ' || include_special || ', min_token_index = ' || min_token_index || " \
             "coalesce(' and prompt_set = ' || prompt_set, '')"
TOKEN_KEY = "r.prompt_set, r.prompt_id, r.token_index, r.token_id"


def cka_token_matrix_sql(models: list[ModelInfo]) -> str:
    return f"""
CREATE OR REPLACE MACRO cka_token_matrix(model_a, model_b, batch_size := 256, seed := 0, kernel := 'linear',
                                         preprocess := 'none', prompt_set := NULL, include_special := false,
                                         min_token_index := 0, allow_partial := false) AS TABLE
WITH
opts AS (SELECT vindex_cka_options('debiased', kernel, preprocess) AS o),
checks AS (SELECT {number_checks('cka_token_matrix', 'batch_size', 'seed', 'min_token_index')}
                  AND {data_checks('cka_token_matrix', models)}
                  AND {model_checks('cka_token_matrix', 'activations', ['model_a', 'model_b'], TOKEN_WHERE,
                                    TOKEN_WHAT)} AS ok),
{common_keys('activations', TOKEN_WHERE)},
{side_grams('ga', 'model_a', "vindex_layer_minibatch_gram({vectors}, {keys}, batch_size, seed, kernel, preprocess)",
            models, 'activations', TOKEN_WHERE, TOKEN_KEY, data_checks('cka_token_matrix', models))},
{side_grams('gb', 'model_b', "vindex_layer_minibatch_gram({vectors}, {keys}, batch_size, seed, kernel, preprocess)",
            models, 'activations', TOKEN_WHERE, TOKEN_KEY, data_checks('cka_token_matrix', models))}
SELECT model_a AS model_a, model_b AS model_b, a.layer AS layer_a, b.layer AS layer_b, a.depth AS depth_a,
       b.depth AS depth_b,
       {pair_value('cka_token_matrix', 'list_dot_product(a.g, b.g)', 'tokens',
                   'token-level CKA needs the same token ids at the same positions of the same prompts: models '
                   'with different tokenizers cannot be compared token by token (use cka_matrix on pooled rows); '
                   'one tokenizer with prompts missing on one side: pass allow_partial := true')} AS cka,
       a.n AS n, batch_size::INTEGER AS batch_size, seed::INTEGER AS seed, 'minibatch' AS estimator,
       o.o.kernel AS kernel, o.o.preprocess AS preprocess, prompt_set::VARCHAR AS prompt_set,
       include_special::BOOLEAN AS include_special, min_token_index::INTEGER AS min_token_index
FROM checks AS c CROSS JOIN opts AS o CROSS JOIN ga AS a CROSS JOIN gb AS b
WHERE c.ok
ORDER BY a.layer, b.layer
"""


def mutual_knn_matrix_sql(models: list[ModelInfo]) -> str:
    return f"""
CREATE OR REPLACE MACRO mutual_knn_matrix(model_a, model_b, k := 10, pooling := '{DEFAULT_POOLING}', prompt_set := NULL,
                                          allow_partial := false) AS TABLE
WITH
checks AS (SELECT {number_checks('mutual_knn_matrix', 'k')} AND {data_checks('mutual_knn_matrix', models)}
                  AND {model_checks('mutual_knn_matrix', 'pooled', ['model_a', 'model_b'], POOLED_WHERE,
                                    POOLED_WHAT)} AS ok),
{common_keys('pooled', POOLED_WHERE)},
{side_grams('ga', 'model_a', "vindex_layer_knn_graph({vectors}, {keys}, k)", models,
            guard=data_checks('mutual_knn_matrix', models))},
{side_grams('gb', 'model_b', "vindex_layer_knn_graph({vectors}, {keys}, k)", models,
            guard=data_checks('mutual_knn_matrix', models))}
SELECT model_a AS model_a, model_b AS model_b, a.layer AS layer_a, b.layer AS layer_b, a.depth AS depth_a,
       b.depth AS depth_b, {pair_value('mutual_knn_matrix', 'list_dot_product(a.g, b.g)')} AS mutual_knn,
       a.n AS n, k::INTEGER AS k, pooling AS pooling, prompt_set::VARCHAR AS prompt_set
FROM checks AS c CROSS JOIN ga AS a CROSS JOIN gb AS b
WHERE c.ok
ORDER BY a.layer, b.layer
"""

FEATURES_WHERE = "(layer IS NULL OR r.layer = layer) AND r.vector IS NOT NULL"
FEATURES_WHAT = "'a feature vector' || coalesce(' in layer ' || layer, '')"

KMEANS = f"""
CREATE OR REPLACE MACRO kmeans(model_name, layer := NULL, k := 8, seed := 0, max_iter := 300) AS TABLE
WITH
checks AS (SELECT {number_checks('kmeans', 'k', 'seed', 'max_iter')}
                  AND {model_checks('kmeans', 'features', ['model_name'], FEATURES_WHERE, FEATURES_WHAT)} AS ok),
g AS (
  SELECT r.layer AS layer,
         list(r.expert ORDER BY r.expert NULLS FIRST, r.feature) AS experts,
         list(r.feature ORDER BY r.expert NULLS FIRST, r.feature) AS features,
         vindex_kmeans(list(r.vector ORDER BY r.expert NULLS FIRST, r.feature), k, seed, max_iter) AS res
  FROM features AS r WHERE r.model = model_name AND {FEATURES_WHERE}
  GROUP BY r.layer)
SELECT model_name AS model, g.layer AS layer, unnest(g.experts) AS expert, unnest(g.features) AS feature,
       unnest(g.res.cluster) AS cluster, unnest(g.res.distance) AS distance, g.res.inertia AS inertia,
       k::INTEGER AS k, seed::INTEGER AS seed
FROM checks AS c CROSS JOIN g
WHERE c.ok
ORDER BY 2, 3 NULLS FIRST, 4
"""



def macros(models: list[ModelInfo] = ()) -> list[str]:
    """Every CREATE MACRO statement; the matrix macros get a branch per model of `models`."""
    models = list(models)
    return SCALAR_MACROS + [cka_matrix_sql(models), cka_depth_sql(models), cka_token_matrix_sql(models),
                            mutual_knn_matrix_sql(models), KMEANS]
