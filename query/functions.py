"""Registering the vindex SQL functions (UDFs and macros) on a DuckDB connection."""
from __future__ import annotations


def register_functions(con) -> None:
    """Create the vindex SQL functions on `con` (idempotent)."""
