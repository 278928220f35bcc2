"""Writing SQL text safely: literals, identifiers and DuckDB types for the schema files' types."""
from __future__ import annotations

import json
import math

_SCALAR_TYPES = {"string": "VARCHAR", "bool": "BOOLEAN", "int16": "SMALLINT", "int32": "INTEGER",
                 "int64": "BIGINT", "float32": "FLOAT", "float64": "DOUBLE"}


def ident(name: str) -> str:
    """A quoted SQL identifier ("my-model" stays one name)."""
    return '"' + str(name).replace('"', '""') + '"'


def literal(value) -> str:
    """A SQL literal for a Python scalar, list or dict (dicts become JSON text)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"'{value}'::DOUBLE"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        value = json.dumps(value, sort_keys=True)
    return "'" + str(value).replace("'", "''") + "'"


def duckdb_type(t, vector: str = "FLOAT[]") -> str:
    """The DuckDB type of a schemas/*.schema.json field type; `vector` stands for vector columns."""
    if isinstance(t, str):
        return vector if t == "vector" else _SCALAR_TYPES[t]
    if "list" in t:
        return duckdb_type(t["list"], vector) + "[]"
    if "struct" in t:
        return "STRUCT(" + ", ".join(f"{ident(f['name'])} {duckdb_type(f['type'], vector)}"
                                     for f in t["struct"]) + ")"
    raise ValueError(f"unknown schema type {t!r}")
