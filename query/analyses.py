"""The SQL table functions as Python functions with the same names and options.

Each runs the SQL macro (so SQL and Python can never disagree) on a connection you pass, or on a
fresh `connect(*sources)`, and returns a pyarrow Table:

    from vindex.query import cka_matrix
    t = cka_matrix("lake/", "gemma3-270m", "qwen2.5-0.5b", permutations=99)
    t.to_pandas()   # or polars.from_arrow(t)
"""
from __future__ import annotations

import os

import duckdb
import pyarrow as pa

from .views import connect


def connection(con_or_sources) -> duckdb.DuckDBPyConnection:
    """`con_or_sources` as a connection: a DuckDB connection from `connect` as is, else the source(s)."""
    if isinstance(con_or_sources, duckdb.DuckDBPyConnection):
        return con_or_sources
    if isinstance(con_or_sources, (str, os.PathLike)) or hasattr(con_or_sources, "manifest"):
        return connect(con_or_sources)
    return connect(*con_or_sources)


def _call(con_or_sources, function: str, positional: list, named: dict) -> pa.Table:
    args = ["?"] * len(positional) + [f"{k} := ?" for k in named]
    sql = f"SELECT * FROM {function}({', '.join(args)})"
    return connection(con_or_sources).execute(sql, [*positional, *named.values()]).to_arrow_table()


def cka_matrix(con_or_sources, model_a: str, model_b: str, pooling: str = "mean", estimator: str = "biased",
               kernel: str = "linear", preprocess: str = "none", prompt_set: str | None = None,
               permutations: int = 0, seed: int = 0) -> pa.Table:
    """CKA of every layer of model_a with every layer of model_b over pooled activations (see docs/sql.md)."""
    return _call(con_or_sources, "cka_matrix", [model_a, model_b], dict(
        pooling=pooling, estimator=estimator, kernel=kernel, preprocess=preprocess, prompt_set=prompt_set,
        permutations=int(permutations), seed=int(seed)))


def cka_depth(con_or_sources, model_a: str, model_b: str, pooling: str = "mean", estimator: str = "biased",
              kernel: str = "linear", preprocess: str = "none", prompt_set: str | None = None,
              permutations: int = 0, seed: int = 0, band: float = 0.15) -> pa.Table:
    """For each layer of model_a: CKA with the layer of model_b at the nearest normalized depth, and the
    mean CKA over the off-diagonal band |depth_a - depth_b| >= band."""
    return _call(con_or_sources, "cka_depth", [model_a, model_b], dict(
        pooling=pooling, estimator=estimator, kernel=kernel, preprocess=preprocess, prompt_set=prompt_set,
        permutations=int(permutations), seed=int(seed), band=float(band)))


def cka_token_matrix(con_or_sources, model_a: str, model_b: str, batch_size: int = 256, seed: int = 0,
                     kernel: str = "linear", preprocess: str = "none", prompt_set: str | None = None,
                     include_special: bool = False, min_token_index: int = 0) -> pa.Table:
    """Minibatch CKA over token rows for two models that share a tokenizer."""
    return _call(con_or_sources, "cka_token_matrix", [model_a, model_b], dict(
        batch_size=int(batch_size), seed=int(seed), kernel=kernel, preprocess=preprocess, prompt_set=prompt_set,
        include_special=bool(include_special), min_token_index=int(min_token_index)))


def mutual_knn_matrix(con_or_sources, model_a: str, model_b: str, k: int = 10, pooling: str = "mean",
                      prompt_set: str | None = None) -> pa.Table:
    """Mutual k-NN alignment (Huh et al. 2024) of every layer pair over pooled activations."""
    return _call(con_or_sources, "mutual_knn_matrix", [model_a, model_b],
                 dict(k=int(k), pooling=pooling, prompt_set=prompt_set))


def kmeans(con_or_sources, model: str, layer: int | None = None, k: int = 8, seed: int = 0,
           max_iter: int = 300) -> pa.Table:
    """k-means (k-means++ init) over features.vector of a model's layer(s); one row per feature."""
    return _call(con_or_sources, "kmeans", [model],
                 dict(layer=None if layer is None else int(layer), k=int(k), seed=int(seed), max_iter=int(max_iter)))
