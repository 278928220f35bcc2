"""Arrow <-> numpy for the SQL functions: a DuckDB `list(act ORDER BY ...)` arrives in a vectorized
UDF as an Arrow ListArray of vectors (fixed-size lists for FLOAT[d], lists for FLOAT[]).

One UDF call holds several rows (groups), and rows of one batch can have different widths (two
models), so every row is cut out through the list offsets; `.flatten()` of the row's slice honours
slicing offsets (a bare `.values` of a sliced array does not).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from vindex.errors import InvalidValue

from .cka import sort_rows


def _chunks(column) -> list[pa.Array]:
    return list(column.chunks) if isinstance(column, pa.ChunkedArray) else [column]


def list_rows(column, expected: str | None = None):
    """Each row of a list column as an Arrow slice of its values (None for a NULL row). `expected`
    names the argument in the error raised when the column is not a list (None: not checked)."""
    for chunk in _chunks(column):
        if pa.types.is_null(chunk.type):  # an untyped NULL argument
            yield from [None] * len(chunk)
            continue
        if expected and not (pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type)):
            raise InvalidValue(f"{expected}, got {chunk.type}")
        offsets = chunk.offsets.to_numpy()
        values = chunk.values
        for i in range(len(chunk)):
            yield values.slice(offsets[i], offsets[i + 1] - offsets[i]) if chunk[i].is_valid else None


def row_matrices(column, what: str = "vectors") -> list[np.ndarray | None]:
    """One (n, d) float32/float64 matrix per row of a list-of-vectors column; None for a NULL row."""
    expected = f"{what}: expected a list of vectors such as list(act ORDER BY prompt_id)"
    return [None if rows is None else vectors_matrix(rows, what) for rows in list_rows(column, expected)]


def vectors_matrix(vectors: pa.Array, what: str = "vectors") -> np.ndarray:
    """An Arrow array of vectors (fixed-size lists or lists of floats) as an (n, d) float32 or float64
    matrix (float32 vectors are not copied: the math converts to float64 as it centres)."""
    n = len(vectors)
    t = vectors.type
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise InvalidValue(f"{what}: expected a list of vectors (e.g. FLOAT[d]), got a list of {t}")
    if not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)
            or pa.types.is_decimal(t.value_type)):  # decimals: SQL literals such as [[1.5, 2.0]]
        raise InvalidValue(f"{what}: vectors must hold numbers, got {t.value_type}")
    if vectors.null_count:
        raise InvalidValue(f"{what}: row {vectors.is_null().to_numpy(zero_copy_only=False).argmax()} "
                           "is a NULL vector")
    if pa.types.is_fixed_size_list(t):
        d = t.list_size
    else:
        lengths = vectors.value_lengths().to_numpy(zero_copy_only=False) if n else np.zeros(0, int)
        d = int(lengths[0]) if n else 0
        if n and (lengths != d).any():
            j = int(np.argmax(lengths != d))
            raise InvalidValue(f"{what}: vectors of different widths in one list: row 0 has {d} values, "
                               f"row {j} has {int(lengths[j])} (wrong width or a mix of models)")
    flat = vectors.flatten()
    if flat.null_count:
        raise InvalidValue(f"{what}: a vector holds NULL elements")
    values = flat.to_numpy(zero_copy_only=False)  # float32 stays float32, without a copy
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)         # float16, integers, decimals
    return values.reshape(n, d)


def row_arrays(column) -> list[np.ndarray | None]:
    """One flat numpy array per row of a list column (a Gram stored as DOUBLE[]); None for NULL."""
    return [None if piece is None else piece.to_numpy(zero_copy_only=False) for piece in list_rows(column)]


def row_key_fields(column) -> list[list[np.ndarray] | None]:
    """For each row of a list of keys (e.g. list((prompt_set, prompt_id)), structs or scalars): its
    key columns as numpy arrays, in list order; None for a NULL row."""
    out = []
    for part in list_rows(column, "rows_key: expected a list of keys such as list((prompt_set, prompt_id))"):
        if part is None:
            out.append(None)
            continue
        fields = [part.field(j) for j in range(part.type.num_fields)] if pa.types.is_struct(part.type) else [part]
        out.append([f.to_numpy(zero_copy_only=False) for f in fields])
    return out


def row_keys(column) -> list[tuple[np.ndarray, int, int] | None]:
    """For each row of a list of keys, unordered: `cka.sort_rows` of its key columns (the order that
    sorts the rows, the fingerprint of the sorted keys, how many are distinct)."""
    return [None if fields is None else sort_rows(fields) for fields in row_key_fields(column)]


def row_labels(column, what: str = "labels") -> list[np.ndarray | None]:
    """One numpy array of labels (any scalar type) per row of a list column; None for a NULL row."""
    out = []
    for chunk in _chunks(column):
        if pa.types.is_null(chunk.type):
            out.extend([None] * len(chunk))
            continue
        for value in chunk.to_pylist():
            if value is None:
                out.append(None)
            elif any(v is None for v in value):
                raise InvalidValue(f"{what}: a label is NULL (filter NULLs before list())")
            else:
                out.append(np.asarray(value, dtype=object if value and isinstance(value[0], str) else None))
    return out


def scalars(column, n: int) -> list:
    """A constant-or-column argument as a Python list of length n."""
    values = column.to_pylist() if isinstance(column, (pa.Array, pa.ChunkedArray)) else [column] * n
    return values if len(values) == n else values[:1] * n


def double_lists(arrays: list[np.ndarray | None]) -> pa.Array:
    """Flat float64 arrays as a DOUBLE[] column (None -> NULL), without a Python-level copy."""
    lengths = np.array([0 if a is None else a.size for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.concatenate([a.ravel() for a in arrays if a is not None]) if lengths.sum() else np.zeros(0)
    mask = pa.array([a is None for a in arrays]) if any(a is None for a in arrays) else None
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat, pa.float64()), mask=mask) \
        if offsets[-1] >= 2 ** 31 else pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()),
                                                                 pa.array(flat, pa.float64()), mask=mask)
