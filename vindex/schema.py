"""Arrow schemas of the vindex tables, built from the language-neutral files in schemas/.

schemas/*.schema.json is the single source of truth; this module only translates it. Vector
columns are fixed-size float lists whose width and element type live in the manifest (they differ
per model), so `arrow_schema` takes them as arguments.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import pyarrow as pa

from .errors import InvalidValue, SchemaMismatch

TABLES = ("prompts", "activations", "pooled", "features", "ov_gate", "layer_stats", "feature_acts", "feature_stats",
          "routing", "patching", "ablations", "steering", "maps", "embeddings")
VECTOR_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
_SCALARS = {
    "string": pa.string(), "bool": pa.bool_(), "int16": pa.int16(), "int32": pa.int32(),
    "int64": pa.int64(), "float32": pa.float32(), "float64": pa.float64(),
}


@lru_cache(maxsize=None)
def table_spec(table: str) -> dict:
    """The parsed schemas/<table>.schema.json."""
    if table not in TABLES:
        raise InvalidValue(f"unknown table {table!r}; vindex tables are: {', '.join(TABLES)}")
    text = resources.files("vindex.schemas").joinpath(f"{table}.schema.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=None)
def manifest_json_schema() -> dict:
    return json.loads(resources.files("vindex.schemas").joinpath("vindex.schema.json").read_text())


def _arrow_type(t, vector_type: pa.DataType | None) -> pa.DataType:
    if isinstance(t, str):
        if t == "vector":
            if vector_type is None:
                raise InvalidValue("a vector column needs vector_width and vector_dtype")
            return vector_type
        return _SCALARS[t]
    if "list" in t:
        return pa.list_(_arrow_type(t["list"], vector_type))
    if "struct" in t:
        return pa.struct([_arrow_field(f, vector_type) for f in t["struct"]])
    raise ValueError(f"unknown schema type {t!r}")


def _arrow_field(f: dict, vector_type) -> pa.Field:
    return pa.field(f["name"], _arrow_type(f["type"], vector_type), nullable=f.get("nullable", False))


def vector_type(width: int, dtype: str = "float16") -> pa.DataType:
    if dtype not in VECTOR_DTYPES:
        raise InvalidValue(f"vector dtype must be one of {sorted(VECTOR_DTYPES)}, got {dtype!r}")
    if not isinstance(width, int) or width < 1:
        raise InvalidValue(f"vector width must be a positive integer, got {width!r}")
    return pa.list_(VECTOR_DTYPES[dtype], width)


def arrow_schema(table: str, vector_width: int | None = None, vector_dtype: str = "float16") -> pa.Schema:
    """The Arrow schema of `table`; vector columns get `vector_width` x `vector_dtype`."""
    spec = table_spec(table)
    vt = vector_type(vector_width, vector_dtype) if vector_width is not None else None
    if spec["vector_columns"] and vt is None:
        # tables whose vector column is optional (features.vector) may omit it
        required = [c for c in spec["vector_columns"]
                    if not next(f for f in spec["fields"] if f["name"] == c).get("nullable")]
        if required:
            raise InvalidValue(f"table {table!r} has vector column(s) {required}: pass vector_width")
        fields = [f for f in spec["fields"] if f["name"] not in spec["vector_columns"]]
        return pa.schema([_arrow_field(f, None) for f in fields])
    return pa.schema([_arrow_field(f, vt) for f in spec["fields"]])


def partition_columns(table: str) -> list[str]:
    return list(table_spec(table)["partition_by"])


def vector_columns(table: str) -> list[str]:
    return list(table_spec(table)["vector_columns"])


def defaults_if_absent(table: str) -> dict[str, str]:
    """Columns that shards written before they joined the schema may lack, with what such a shard
    means by them (`default_if_absent` in schemas/: activations and pooled written before sites
    existed hold resid_post only). Readers fill them in; `check_schema` accepts their absence."""
    return {f["name"]: f["default_if_absent"] for f in table_spec(table)["fields"] if "default_if_absent" in f}


def check_schema(actual: pa.Schema, expected: pa.Schema, where: str, absent_ok=()) -> None:
    """Raise SchemaMismatch naming the first column that differs (name, type or width).
    `absent_ok`: columns an older shard may lack (`defaults_if_absent`)."""
    exp = {f.name: f.type for f in expected}
    act = {f.name: f.type for f in actual}
    missing = [n for n in exp if n not in act and n not in absent_ok]
    extra = [n for n in act if n not in exp]
    if missing:
        raise SchemaMismatch(f"{where}: missing column(s) {missing}")
    if extra:
        raise SchemaMismatch(f"{where}: unexpected column(s) {extra}")
    for name, t in exp.items():
        if name in act and not act[name].equals(t):
            a, e = act[name], t
            if pa.types.is_fixed_size_list(a) and pa.types.is_fixed_size_list(e) and a.list_size != e.list_size:
                raise SchemaMismatch(f"{where}: column {name!r} has vector width {a.list_size}, "
                                     f"the manifest says {e.list_size}")
            raise SchemaMismatch(f"{where}: column {name!r} has type {a}, expected {e}")
