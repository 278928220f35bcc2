"""`connect(*sources)`: one DuckDB connection over many vindexes, with a view per table.

    con = connect("lake/")                      # a lake root, vindex folders, or several of both
    con.sql("SELECT model, layer, count(*) FROM pooled GROUP BY ALL").show()
    con.sql("SELECT * FROM cka_matrix('a', 'b', permutations := 99)").show()

Views (all unioned across vindexes, with the vindex name in `model`):
  models, prompt_sets, files            -- the manifests, as tables
  prompts, activations, pooled, features, ov_gate, layer_stats
and, per model, a schema of the same views whose vector columns are typed FLOAT[d]
(`SELECT array_cosine_similarity(...) FROM "gemma3-270m".pooled`). In the unioned views vectors
are FLOAT[d] when every model has the same width, FLOAT[] (a list) otherwise.

How the views stay fast: each (vindex, table) branch reads the explicit file list of its manifest
with hive partitioning typed from the folder names (`layer=3`, or an older vindex's `layer=03`, ->
INTEGER), so a filter on `layer` prunes files before any is opened, and the model column is a
constant per branch, so a filter on `model` removes whole branches at plan time. `EXPLAIN ANALYZE`
shows "Total Files Read".

How they stay right: before a view is made, every local shard it lists is checked against its
manifest entry (size, sha256, and partition columns that agree with the folder names DuckDB takes
them from; `vindex.verified`, remembered per file so that a warm connect only stats the files);
Hub shards are checked as they are fetched (`sources.HubShards`). DuckDB globs every path of a file
list, so local paths go in with their glob characters escaped (`glob_literal`): a folder `exp[1]`
is never read from its neighbour `exp1`. The local check runs when the views are made (connect,
create_views): a shard replaced while a connection stays open is checked by the next connect.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from vindex.errors import CorruptShard, SchemaMismatch
from vindex.schema import TABLES, defaults_if_absent, partition_columns, table_spec, vector_columns
from vindex.summary import prompt_coverage
from vindex.verified import verify_shards

from .sources import HubShards, ResolvedVindex, resolve_sources
from .sqltext import duckdb_type, ident, literal

# What a shard written before a column existed means by it (schemas/ `default_if_absent`): activations
# and pooled written before sites existed hold resid_post, whose TransformerLens hook name follows from
# the layer (layer 0, the embedding output, is blocks.0.hook_resid_pre)
ABSENT_SQL = {
    "site": "'resid_post'",
    "hook": "CASE WHEN layer = 0 THEN 'blocks.0.hook_resid_pre' ELSE 'blocks.' || (layer - 1)::VARCHAR || "
            "'.hook_resid_post' END",
}
# views derived from the tables: what a reader asks of feature_stats and routing
DERIVED_VIEWS = {
    # per feature over a prompt set: the parts' sums added up (Welford is not needed: float64 sums)
    "feature_summary": """
SELECT model, prompt_set, layer, expert, feature, sum(n_tokens) AS n_tokens,
       sum("sum") / sum(n_tokens) AS mean, sum(sum_abs) / sum(n_tokens) AS mean_abs,
       max("max") AS max, min("min") AS min,
       sum(n_above) / sum(n_tokens) AS frequency, sum(n_topk) / sum(n_tokens) AS topk_frequency
FROM feature_stats GROUP BY model, prompt_set, layer, expert, feature""",
    # per expert and MoE layer over a prompt set: its share of the routed slots (n_routed / (n_tokens * k);
    # 1 / n_experts each under perfect balance) and its mean weight
    "expert_load": """
WITH r AS (SELECT model, prompt_set, layer, expert, weight, prompt_id, token_index, max(rank) OVER
           (PARTITION BY model, prompt_set, layer) AS k FROM routing)
SELECT model, prompt_set, layer, expert, count(*) AS n_routed,
       count(DISTINCT (prompt_id, token_index)) AS n_tokens,
       count(*) / any_value(t.n * r.k) AS load, avg(weight) AS mean_weight
FROM r JOIN (SELECT model AS m, prompt_set AS ps, layer AS l, count(DISTINCT (prompt_id, token_index)) AS n
             FROM routing GROUP BY ALL) AS t ON t.m = r.model AND t.ps = r.prompt_set AND t.l = r.layer
GROUP BY model, prompt_set, layer, expert""",
}

# DuckDB catalog names a model-name schema must not shadow
_RESERVED_SCHEMAS = {"main", "temp", "system", "information_schema", "pg_catalog", "memory"}
_MODEL_FIELDS = ("id", "revision", "family", "n_layers", "d_model", "d_ffn", "n_heads", "n_kv_heads",
                 "head_dim", "vocab_size")


def connect(*sources, database: str = ":memory:", functions: bool = True) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views over every vindex in `sources` (and the vindex SQL functions).

    sources: vindex folders, lake roots (folders of vindex folders), `vindex.Vindex` objects, or hf://
    locations where the Hub support is installed. `database` is DuckDB's (':memory:' or a file).
    """
    vindexes = resolve_sources(*sources)
    con = duckdb.connect(database)
    remote = [v.filesystem for v in vindexes if v.filesystem is not None]
    if remote:  # DuckDB takes one filesystem per protocol: one HubShards serves every hf:// vindex
        con.register_filesystem(HubShards.merged(remote))
    create_views(con, vindexes)
    if functions:
        from .functions import register_functions
        register_functions(con, vindexes)
    return con


def create_views(con: duckdb.DuckDBPyConnection, vindexes: list[ResolvedVindex]) -> None:
    """(Re)create the catalog views and one view per table over `vindexes` (their local shards
    verified first: `verify_local_shards`)."""
    for v in vindexes:
        v.check_consistent(v.source)
    verify_local_shards(vindexes)
    statements = [f"CREATE OR REPLACE VIEW models AS {models_sql(vindexes)}",
                  f"CREATE OR REPLACE VIEW prompt_sets AS {prompt_sets_sql(vindexes)}",
                  f"CREATE OR REPLACE VIEW files AS {files_sql(vindexes)}"]
    present = {(v.name, t): stored_columns(v, t) for v in vindexes for t in TABLES if v.entries(t)}
    statements += [f"CREATE OR REPLACE VIEW {table} AS {table_sql(table, vindexes, present)}" for table in TABLES]
    statements += [f"CREATE OR REPLACE VIEW {view} AS {sql}" for view, sql in DERIVED_VIEWS.items()]
    for v in vindexes:
        if v.name.lower() in _RESERVED_SCHEMAS:
            warnings.warn(f"model {v.name!r}: no per-model schema (the name is reserved in DuckDB); "
                          "use the unioned views with WHERE model = ...", stacklevel=3)
            continue
        statements.append(f"CREATE SCHEMA IF NOT EXISTS {ident(v.name)}")
        statements += [f"CREATE OR REPLACE VIEW {ident(v.name)}.{table} AS {table_sql(table, [v], present)}"
                       for table in TABLES]
    # one script: a 20-model lake makes about 300 views, and a call per statement costs a third more
    con.execute(";\n".join(statements))


# -- the data views -----------------------------------------------------------------------------
def verify_local_shards(vindexes: list[ResolvedVindex]) -> None:
    """Every shard of the local vindexes' tables must match its manifest entry before a view lists
    it (ChecksumError / CorruptShard / NotFound naming the file otherwise). The partition columns
    are checked against the folder names of the path DuckDB will read (symlinks resolved)."""
    verify_shards((url, e, Path(url).relative_to(v.base).as_posix() if Path(url).is_relative_to(v.base) else None)
                  for v in vindexes if v.filesystem is None
                  for table in TABLES for e in v.entries(table) for url in [v.url(e["path"])])


_GLOB_CHARS = re.compile(r"[\[\]*?]")


def glob_literal(path: str) -> str:
    """`path` written so that DuckDB's glob matches only itself. DuckDB globs each path of a file
    list (`*`, `?`, `[...]`), so each of those characters becomes a one-character class: `exp[1]`
    -> `exp[[]1[]]`, `run*` -> `run[*]`."""
    return _GLOB_CHARS.sub(lambda m: f"[{m.group(0)}]", path)


def shard_location(v: ResolvedVindex, relpath: str) -> str:
    """Where DuckDB reads the manifest path `relpath`: a local path glob-escaped; an hf:// URL as
    is (HubShards never globs a listed shard)."""
    url = v.url(relpath)
    return glob_literal(url) if v.filesystem is None else url


def stored_columns(v: ResolvedVindex, table: str) -> set[str]:
    """The columns of the table's first shard, read from its Parquet footer. Shards written before a
    nullable column joined the schema (schemas/ grow additively) lack it; the view fills it with NULL
    instead of failing. The footer also tells the stored vector width, which must be the manifest's
    vector_width (every shard of a table is written with the declared width, so the first one tells):
    SchemaMismatch naming the file otherwise."""
    first = v.entries(table)[0]["path"]
    url = v.url(first)
    local = url
    if v.filesystem is not None and hasattr(v.filesystem, "shard"):
        local = v.filesystem.shard(url)     # fetched and verified here, so a bad shard is a named error
    try:
        schema = pq.read_schema(local)
    except (pa.ArrowException, OSError) as e:
        raise CorruptShard(f"{url}: cannot read the shard's schema ({e}); run `vindex verify`") from None
    width = v.table(table).get("vector_width")
    names = set(schema.names)
    absent = defaults_if_absent(table)
    if absent and len(v.entries(table)) > 1 and not set(absent) <= names:
        # a vindex written before a column existed and extended since: its shards differ (new ones
        # are listed last, by part); the branch then reads by name and fills the old shards' gaps
        try:
            last = set(pq.read_schema(v.url(v.entries(table)[-1]["path"]) if v.filesystem is None
                                      else v.filesystem.shard(v.url(v.entries(table)[-1]["path"]))).names)
        except (pa.ArrowException, OSError) as e:
            raise CorruptShard(f"{v.url(v.entries(table)[-1]['path'])}: cannot read the shard's schema ({e}); "
                               "run `vindex verify`") from None
        if last != names:
            names |= last | {MIXED}
    for name in vector_columns(table):
        kind = schema.field(name).type if name in schema.names else None
        if width and kind is not None and pa.types.is_fixed_size_list(kind) and kind.list_size != width:
            raise SchemaMismatch(f"{url}: column {name!r} stores vectors of width {kind.list_size}, but the "
                                 f"manifest declares vector_width {width} for table {table!r}; run `vindex verify`")
    return names


MIXED = "\0mixed"   # in stored_columns: the shards differ in the columns they hold (read by name)


def table_sql(table: str, vindexes: list[ResolvedVindex], present: dict | None = None) -> str:
    """UNION ALL of one branch per vindex that has files for `table` (typed empty when none has).
    `present` maps (model, table) to the columns its shards hold (all schema columns when absent)."""
    have = [v for v in vindexes if v.entries(table)]
    widths = {v.table(table).get("vector_width") for v in have if vector_columns(table)}
    union_vector = f"FLOAT[{widths.pop()}]" if len(widths) == 1 and None not in widths else "FLOAT[]"
    if not have:
        return empty_table_sql(table)
    return "\nUNION ALL\n".join(branch_sql(table, v, union_vector if len(have) > 1 else None,
                                            (present or {}).get((v.name, table))) for v in have)


def output_columns(table: str) -> list[dict]:
    """The view's columns: `model` first, then the schema's fields, then `depth` where derivable."""
    fields = [f for f in table_spec(table)["fields"] if f["name"] != "model"]
    cols = [{"name": "model", "type": "string"}] + fields
    names = {f["name"] for f in fields}
    if "layer" in names and "depth" not in names:
        cols.append({"name": "depth", "type": "float32", "derived": True})
    return cols


def branch_sql(table: str, v: ResolvedVindex, vector_sql_type: str | None, stored: set[str] | None = None) -> str:
    """One vindex's rows of `table`: model as a constant, vectors cast to FLOAT[width], nullable
    columns its shards predate as typed NULLs."""
    t = v.table(table)
    width = t.get("vector_width")
    vectors = set(vector_columns(table))
    select = []
    for col in output_columns(table):
        name = col["name"]
        if name == "model":
            select.append(f"{literal(v.name)}::VARCHAR AS model")
        elif col.get("derived"):
            select.append(f"(layer / {float(v.n_layers)!r})::FLOAT AS depth")
        elif name in vectors:
            target = vector_sql_type or (f"FLOAT[{width}]" if width else "FLOAT[]")
            select.append(f"{ident(name)}::{target} AS {ident(name)}" if width and (stored is None or name in stored)
                          else f"NULL::{target} AS {ident(name)}")
        elif name in ABSENT_SQL and "default_if_absent" in col and stored is not None and name not in stored:
            select.append(f"{ABSENT_SQL[name]} AS {ident(name)}")
        elif name in ABSENT_SQL and "default_if_absent" in col:
            select.append(f"coalesce({ident(name)}, {ABSENT_SQL[name]}) AS {ident(name)}")
        elif stored is not None and name not in stored and col.get("nullable") and name not in partition_columns(table):
            select.append(f"NULL::{duckdb_type(col['type'])} AS {ident(name)}")
        else:
            select.append(ident(name))
    return f"SELECT {', '.join(select)} FROM {read_parquet_sql(table, v, by_name=stored is not None and MIXED in stored)}"


def read_parquet_sql(table: str, v: ResolvedVindex, by_name: bool = False) -> str:
    """read_parquet over the manifest's files, partition columns typed from the folder names (which
    `verify_local_shards` / `HubShards` checked against the files' own columns)."""
    urls = [shard_location(v, e["path"]) for e in v.entries(table)]
    keys = partition_columns(table)
    if not keys:
        return f"read_parquet({literal(urls)}, hive_partitioning = false)"
    if "=" in v.base:
        # DuckDB would read every key=value folder of the base path as a column too: stay exact,
        # at the price of file pruning (row-group statistics still skip data)
        warnings.warn(f"{v.base}: the path contains '=', so {table} is read without hive partition "
                      "pruning (a layer filter opens every file)", stacklevel=4)
        return f"read_parquet({literal(urls)}, hive_partitioning = false)"
    types = {f["name"]: duckdb_type(f["type"]) for f in table_spec(table)["fields"]}
    hive_types = ", ".join(f"{literal(k)}: {types[k]}" for k in keys)
    return (f"read_parquet({literal(urls)}, hive_partitioning = true, hive_types = {{{hive_types}}}, "
            f"hive_types_autocast = false{', union_by_name = true' if by_name else ''})")


def empty_table_sql(table: str) -> str:
    cols = ", ".join(f"NULL::{duckdb_type(c['type'])} AS {ident(c['name'])}" for c in output_columns(table))
    return f"SELECT {cols} WHERE false"


# -- the catalog views --------------------------------------------------------------------------
def _values_sql(rows: list[tuple], columns: list[tuple[str, str]]) -> str:
    """A typed VALUES table (typed empty when there are no rows)."""
    if not rows:
        return "SELECT " + ", ".join(f"NULL::{t} AS {ident(n)}" for n, t in columns) + " WHERE false"
    body = ",\n  ".join("(" + ", ".join(literal(x) for x in r) + ")" for r in rows)
    # qualified: inside a table macro with a parameter of a column's name (cka_matrix's prompt_set),
    # DuckDB binds a bare name of the expanded view to both and fails
    select = ", ".join(f"t.{ident(n)}::{typ} AS {ident(n)}" for n, typ in columns)
    return f"SELECT {select} FROM (VALUES\n  {body}) AS t({', '.join(ident(n) for n, _ in columns)})"


def models_sql(vindexes: list[ResolvedVindex]) -> str:
    columns = [("model", "VARCHAR"), ("model_id", "VARCHAR"), ("revision", "VARCHAR"), ("family", "VARCHAR"),
               ("n_layers", "INTEGER"), ("d_model", "INTEGER"), ("d_ffn", "INTEGER"), ("n_heads", "INTEGER"),
               ("n_kv_heads", "INTEGER"), ("head_dim", "INTEGER"), ("vocab_size", "INTEGER"),
               ("tables", "VARCHAR[]"), ("location", "VARCHAR"), ("manifest", "VARCHAR")]
    rows = []
    for v in vindexes:
        m = v.model
        tables = sorted(t for t in (v.manifest.get("tables") or {}) if v.entries(t))
        rows.append((v.name, *[m.get(k) for k in _MODEL_FIELDS], tables, v.base,
                     json.dumps(v.manifest, sort_keys=True)))
    return _values_sql(rows, columns)


def prompt_sets_sql(vindexes: list[ResolvedVindex]) -> str:
    """One row per prompt set: n_prompts planned, n_present with rows, complete (`prompt_coverage`)."""
    columns = [("model", "VARCHAR"), ("prompt_set", "VARCHAR"), ("n_prompts", "INTEGER"), ("sha256", "VARCHAR"),
               ("n_present", "INTEGER"), ("complete", "BOOLEAN")]
    rows = []
    for v in vindexes:
        coverage = prompt_coverage(v)
        rows += [(v.name, name, ps.get("n_prompts"), ps.get("sha256"), coverage[name]["n_present"],
                  coverage[name]["complete"]) for name, ps in sorted((v.manifest.get("prompt_sets") or {}).items())]
    return _values_sql(rows, columns)


def files_sql(vindexes: list[ResolvedVindex]) -> str:
    columns = [("model", "VARCHAR"), ("table_name", "VARCHAR"), ("layer", "INTEGER"), ("path", "VARCHAR"),
               ("url", "VARCHAR"), ("rows", "BIGINT"), ("bytes", "BIGINT"), ("sha256", "VARCHAR")]
    rows = [(v.name, table, (e.get("partition") or {}).get("layer"), e["path"], v.url(e["path"]),
             e["rows"], e["bytes"], e["sha256"])
            for v in vindexes for table in TABLES for e in v.entries(table)]
    return _values_sql(rows, columns)
