"""The write side: add Parquet shards to a vindex atomically.

Protocol:
  1. write the shard to a hidden temp name in its partition folder, fsync, rename into place;
  2. record path, rows, bytes and sha256 in the manifest, and replace vindex.json atomically.
A crash between 1 and 2 leaves an orphan shard that readers ignore (it is not in the manifest)
and a rerun overwrites, because shard names are deterministic: data/<table>/<key>=<value>/part-NNNNN.parquet.

Several writers (processes, or writer objects) may add to one vindex at once, e.g. `vindex build`
and `vindex weights`, or two builds of different prompt sets. Each commit takes the vindex's write
lock (`vindex.lock`), re-reads vindex.json and merges this writer's changes into it
(`manifest.merge_manifest`), so no writer's tables or prompt sets are lost, then refreshes the
folder's dataset card (README.md, `vindex.hub.card.write_card`). `transaction()` holds
the lock across a read-decide-write step (reserving part numbers). Readers never lock.
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InvalidValue, ManifestError, SchemaMismatch
from .files import atomic_path, safe_join, sha256_file
from .lock import WriteLock, WriterSession, stale_temp_files
from .manifest import MANIFEST, merge_manifest, new_manifest, parse_manifest, path_order, save_manifest
from .schema import arrow_schema, check_schema, partition_columns, vector_columns

_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.-]+$")

PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, write_page_index=True,
                       write_statistics=True, use_content_defined_chunking=True)


def parquet_options(schema: pa.Schema, vectors: list[str]) -> dict:
    """PARQUET_OPTIONS, but for float vectors: no dictionary, no statistics, no CDC.

    Dictionary encoding never pays off on activations (almost no repeated values) and trying it
    is most of the cost of writing a shard: measured here, float16 shards write 2x faster and
    come out ~4% smaller without it. (BYTE_STREAM_SPLIT would help more, but DuckDB 1.5 cannot
    read it on float16 columns.)
    """
    scalars = [f.name for f in schema if f.name not in vectors]
    if not any(f.name in vectors for f in schema):
        return dict(PARQUET_OPTIONS)
    # nor min/max statistics: they cannot prune anything on an embedding column, and computing them
    # was the largest single cost of writing an activation shard (profiled: 16% of writer time).
    # Content-defined chunking is off for vector tables: their shards are immutable and rewritten
    # whole (identical bytes dedup as whole files), and on a real activation shard CDC cost 40%
    # more CPU for a 6% larger file.
    return {**PARQUET_OPTIONS, "use_dictionary": scalars, "write_statistics": scalars,
            "use_content_defined_chunking": False}


def shard_path(table: str, partition: dict, part: int, *, padded: bool = False) -> str:
    """The deterministic relative path of a shard (so a retried write replaces, not duplicates).

    Integer partitions are written unpadded (`layer=3`): every reader that takes partition columns
    from folder names with its default options (DuckDB, polars, pyarrow.dataset) infers `3` as an
    integer, while `layer=03` made DuckDB read `layer` as VARCHAR '03'. Vindexes written before
    this used `padded` names (two digits, `layer=03`); `legacy_shard_path` gives that spelling,
    which every reader of a vindex still accepts.
    """
    keys = partition_columns(table)
    if set(partition) != set(keys):
        raise InvalidValue(f"table {table!r} is partitioned by {keys}, got partition {partition}")
    folders = []
    for k in keys:
        v = partition[k]
        if isinstance(v, (int, np.integer)):
            if v < 0:
                raise InvalidValue(f"partition value {k}={v} must be >= 0")
            folders.append(f"{k}={int(v):02d}" if padded else f"{k}={int(v)}")
        elif isinstance(v, str) and _SAFE_VALUE.match(v) and v not in (".", ".."):
            folders.append(f"{k}={v}")
        else:
            raise InvalidValue(f"partition value {k}={v!r} must be an int or a name of [A-Za-z0-9_.-]")
    if not isinstance(part, (int, np.integer)) or part < 0:
        raise InvalidValue(f"part must be a non-negative integer, got {part!r}")
    return "/".join(["data", table, *folders, f"part-{int(part):05d}.parquet"])


def legacy_shard_path(table: str, partition: dict, part: int) -> str | None:
    """The path an older vindex gave this shard (`layer=03`), or None where it is `shard_path`'s."""
    rel = shard_path(table, partition, part, padded=True)
    return None if rel == shard_path(table, partition, part) else rel


def vector_array(values, width: int, dtype: str, column: str) -> pa.FixedSizeListArray:
    """A 2-D array (rows x width), a list of vectors, or an Arrow list column -> fixed-size list."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type) \
                or pa.types.is_large_list(values.type):
            if values.null_count:
                return _nullable_vectors(values, width, dtype, column)
            lengths = values.value_lengths() if not pa.types.is_fixed_size_list(values.type) else None
            if lengths is not None and len(values) and (pa.compute.min(lengths).as_py() != width
                                                       or pa.compute.max(lengths).as_py() != width):
                raise SchemaMismatch(f"column {column!r}: vectors must have width {width}, "
                                     f"got lengths {pa.compute.min(lengths)}..{pa.compute.max(lengths)}")
            flat = values.flatten().to_numpy(zero_copy_only=False)
            values = flat.reshape(len(values), -1) if len(values) else flat.reshape(0, width)
    arr = np.asarray(values)
    if arr.dtype == object:
        raise SchemaMismatch(f"column {column!r}: vectors have different lengths (expected width {width})")
    if arr.ndim != 2 or arr.shape[1] != width:
        raise SchemaMismatch(f"column {column!r}: expected vectors of width {width}, got an array of shape {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, with the row
        stored = np.ascontiguousarray(arr, dtype=np.float16 if dtype == "float16" else np.float32)
    if not np.isfinite(stored).all():   # one check on the stored values catches NaN, inf and overflow
        bad = int(np.argwhere(~np.isfinite(stored))[0, 0])
        if np.isfinite(np.asarray(arr[bad], dtype=np.float64)).all():
            raise InvalidValue(f"column {column!r}: row {bad} overflows {dtype} (|x| > "
                               f"{np.finfo(stored.dtype).max:.0f}); write with vector dtype float32")
        raise InvalidValue(f"column {column!r}: row {bad} holds NaN or inf; vindex stores finite vectors only")
    arr = stored
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), width)


def _nullable_vectors(values, width, dtype, column):
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    py = values.to_pylist()
    dense = np.zeros((len(py), width), dtype=np.float32)
    for i, v in enumerate(py):
        if v is not None:
            dense[i] = vector_array([v], width, dtype, column).flatten().to_numpy(zero_copy_only=False)
    arr = vector_array(dense, width, dtype, column)
    return pa.FixedSizeListArray.from_arrays(arr.values, width, mask=pa.array(~valid))


class VindexWriter:
    """Appends shards to one vindex folder and keeps its manifest current.

    lock_timeout: seconds a commit waits for another writer's commit (0 = fail at once with
    VindexBusy naming the holder, math.inf = wait forever; default: $VINDEX_LOCK_TIMEOUT or
    vindex.lock.DEFAULT_TIMEOUT_S). A commit holds the lock for well under a second.
    """

    def __init__(self, root: str | Path, manifest: dict, *, lock_timeout: float | None = None,
                 _disk: bytes | None = None, _session: WriterSession | None = None,
                 _lock: WriteLock | None = None):
        self.root = Path(root)
        self.manifest = manifest
        self.lock = _lock or WriteLock(self.root, lock_timeout)
        self._disk = _disk            # vindex.json as this writer last read or wrote it: the merge base
        self._session = _session      # this writer's membership of the live writers (see vindex.lock)

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, name: str, model: dict, extraction: dict | None = None,
               exist_ok: bool = False, lock_timeout: float | None = None) -> "VindexWriter":
        """Start a new vindex; with exist_ok, reopen an existing one of the same name (resume)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        lock = WriteLock(root, lock_timeout)
        with lock:                   # of two creators of one folder, the second finds the manifest
            if not (root / MANIFEST).exists():
                m = new_manifest(name, model, extraction)
                w = cls(root, m, lock_timeout=lock_timeout, _lock=lock, _session=_join_writers(root, m, lock_timeout))
                w.commit()
                return w
        if not exist_ok:
            raise ManifestError(f"{root / MANIFEST}: a vindex already exists here (pass exist_ok to add to it)")
        w = cls.open(root, lock_timeout=lock_timeout)
        if w.manifest["name"] != name:
            raise ManifestError(f"{root / MANIFEST}: holds vindex {w.manifest['name']!r}, not {name!r}")
        return w

    @classmethod
    def open(cls, root: str | Path, lock_timeout: float | None = None) -> "VindexWriter":
        """Open an existing vindex for writing. The first writer of a folder with no other live
        writer removes the hidden temp files that killed writers left behind."""
        root = Path(root)
        data = _read_manifest_bytes(root)
        if data is None:
            raise ManifestError(f"{root / MANIFEST}: no manifest; is {str(root)!r} a vindex folder?")
        manifest = parse_manifest(data, root)
        return cls(root, manifest, lock_timeout=lock_timeout, _disk=data,
                   _session=_join_writers(root, manifest, lock_timeout))

    def close(self) -> None:
        """Leave the live writers (also done when the writer is garbage collected or the process ends)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> "VindexWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- manifest -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest["name"]

    def commit(self) -> None:
        """Merge this writer's changes into vindex.json as it is on disk now, under the write lock."""
        with self.lock:
            self._refresh()
            self._disk = save_manifest(self.root, self.manifest)
            self._write_card()

    def _write_card(self) -> None:
        """Refresh the folder's dataset card (README.md) from the manifest just committed, so that
        `datasets.load_dataset(folder)` reads the vindex from its first commit (vindex.hub.card;
        atomic, skipped when unchanged; bench/bench_card.py measures its cost per commit)."""
        from .hub.card import write_card
        write_card(self.root, self.manifest)

    @contextmanager
    def transaction(self):
        """Hold the write lock across a read-decide-write step: on entry the manifest is refreshed
        with what other writers committed (this writer's changes kept), on a clean exit it is
        committed. Commits inside it do not wait.

            with w.transaction():                  # (ingest.plan reserves part numbers so)
                taken = w.manifest["prompt_sets"]   # every other writer's prompt sets, as committed
                w.add_prompt_set(name, sha, n, part_base=next_free(taken), commit=False)
        """
        with self.lock:
            self._refresh()
            yield self
            self.commit()

    def _refresh(self) -> None:
        """Bring in other writers' commits: manifest = (disk now) + (my changes since my last read)."""
        data = _read_manifest_bytes(self.root)
        if data is None or data == self._disk:
            return
        disk = parse_manifest(data, self.root)
        base = json.loads(self._disk) if self._disk is not None else None
        merged = merge_manifest(disk, base, self.manifest, where=str(self.root / MANIFEST))
        self.manifest.clear()            # in place: callers may hold the manifest dict itself
        self.manifest.update(merged)
        self._disk = data

    def update(self, *, model: dict | None = None, extraction: dict | None = None, commit=True) -> None:
        if model:
            self.manifest["model"].update(model)
        if extraction:
            self.manifest["extraction"].update(extraction)
        if commit:
            self.commit()

    def add_prompt_set(self, name: str, sha256: str, n_prompts: int, commit=True, **extra) -> None:
        self.manifest["prompt_sets"][name] = {"sha256": sha256, "n_prompts": int(n_prompts), **extra}
        if commit:
            self.commit()

    def declare_vectors(self, table: str, width: int, dtype: str = "float16") -> None:
        """Fix a table's vector width and dtype; later shards must match."""
        t = self._table(table)
        old = (t.get("vector_width"), t.get("vector_dtype"))
        if old[0] is not None and old != (width, dtype):
            raise SchemaMismatch(f"table {table!r} of {self.root} stores {old[1]} vectors of width {old[0]}, "
                                 f"not {dtype} of width {width}")
        t["vector_width"], t["vector_dtype"] = int(width), dtype

    def _table(self, table: str) -> dict:
        arrow_schema(table, vector_width=1)  # validates the table name
        return self.manifest["tables"].setdefault(table, {"files": []})

    # -- shards ---------------------------------------------------------------------------
    def shard_relpath(self, table: str, partition: dict | None = None, part: int = 0) -> str:
        """Where this vindex keeps (or will write) a shard: `shard_path`, or its old padded spelling
        when the manifest lists the shard there (resuming a build an older version started), so a
        rewrite replaces the listed file and never adds a second copy of its rows. A table may
        then hold both spellings; `vindex.query` types the layer from either."""
        rel = shard_path(table, partition or {}, part)
        old = legacy_shard_path(table, partition or {}, part)
        if old is not None and any(e["path"] == old for e in self.manifest["tables"].get(table, {}).get("files", [])):
            return old
        return rel

    def has_shard(self, table: str, partition: dict | None = None, part: int = 0) -> bool:
        """True when the manifest lists the shard and its file is on disk with the recorded size."""
        rel = self.shard_relpath(table, partition, part)
        for e in self.manifest["tables"].get(table, {}).get("files", []):
            if e["path"] == rel:
                p = safe_join(self.root, rel)
                return p.is_file() and p.stat().st_size == e["bytes"]
        return False

    def write_shard(self, table: str, rows, partition: dict | None = None, part: int = 0,
                    commit: bool = True) -> dict:
        """Write one shard and (with commit) record it; returns its manifest entry.

        `rows` is a pyarrow Table or a dict of columns. `model`, partition columns and `depth`
        are filled in when absent; vector columns may be 2-D numpy arrays.
        """
        partition = dict(partition or {})
        rel = self.shard_relpath(table, partition, part)
        data = self.conform(table, rows, partition, where=f"{self.root}/{rel}")
        final = safe_join(self.root, rel)
        if self._session is None:    # built directly, not by open/create: join so no one cleans our temp file
            self._session = WriterSession(self.root, self.lock.timeout)
        with atomic_path(final) as tmp:
            pq.write_table(data, tmp, **parquet_options(data.schema, vector_columns(table)))
        entry = {"path": rel, "rows": data.num_rows, "bytes": os.path.getsize(final),
                 "sha256": sha256_file(final), "partition": partition}
        if commit:
            self.add_files(table, [entry])
        return entry

    def add_files(self, table: str, entries: list[dict], commit: bool = True) -> None:
        """Record shard entries (replacing same-path ones) and commit the manifest."""
        files = self._table(table)["files"]
        index = {e["path"]: i for i, e in enumerate(files)}
        for e in entries:
            safe_join(self.root, e["path"])
            if e["path"] in index:
                files[index[e["path"]]] = e
            else:
                index[e["path"]] = len(files)
                files.append(e)
        files.sort(key=lambda e: path_order(e["path"]))
        if commit:
            self.commit()

    def conform(self, table: str, rows, partition: dict, where: str) -> pa.Table:
        """Cast `rows` to the table's schema, filling derivable columns; raise on anything else."""
        t = self._table(table)
        vcols = vector_columns(table)
        columns = dict(zip(rows.column_names, rows.columns)) if isinstance(rows, pa.Table) else dict(rows)
        n = _row_count(columns, where)
        if vcols and t.get("vector_width") is None:
            for c in vcols:
                if c in columns and columns[c] is not None:
                    self.declare_vectors(table, _width_of(columns[c], c, where))
                    break
        width = t.get("vector_width")
        schema = arrow_schema(table, vector_width=width, vector_dtype=t.get("vector_dtype") or "float16")
        fill = {"model": self.name, **partition}
        if "depth" in schema.names and "depth" not in columns and "layer" in columns | fill:
            layer = np.asarray(columns.get("layer", [fill.get("layer")] * n), dtype=np.float32)
            columns["depth"] = layer / float(self.manifest["model"]["n_layers"])
        arrays = []
        for field in schema:
            if field.name in columns and columns[field.name] is not None:
                v = columns[field.name]
            elif field.name in fill:
                v = pa.array([fill[field.name]] * n, type=field.type)
            elif field.nullable:
                v = pa.nulls(n, type=field.type)
            else:
                raise SchemaMismatch(f"{where}: column {field.name!r} is required")
            if field.name in vcols and not isinstance(v, pa.NullArray) and not (
                    isinstance(v, pa.Array) and v.null_count == len(v) and len(v)):
                v = vector_array(v, width, t["vector_dtype"], field.name)
            try:
                arr = pa.array(v, type=field.type) if not isinstance(v, (pa.Array, pa.ChunkedArray)) \
                    else v.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
                raise SchemaMismatch(f"{where}: column {field.name!r} cannot be stored as {field.type}: {e}") from None
            if not field.nullable and arr.null_count:
                raise SchemaMismatch(f"{where}: column {field.name!r} holds nulls but is not nullable")
            arrays.append(arr)
        extra = set(columns) - set(schema.names)
        if extra:
            raise SchemaMismatch(f"{where}: unknown column(s) {sorted(extra)} for table {table!r}")
        data = pa.Table.from_arrays(arrays, schema=schema)
        for k, v in partition.items():
            col = data.column(k)
            if len(col) and not pa.compute.all(pa.compute.equal(col, pa.scalar(v, col.type))).as_py():
                raise SchemaMismatch(f"{where}: column {k!r} disagrees with the shard's partition {k}={v}")
        check_schema(data.schema, schema, where)
        return data


def _join_writers(root: Path, manifest: dict, lock_timeout) -> WriterSession:
    """Join the live writers of `root`; when none is alive, first delete the hidden temp files
    (`.<name>.<random>.tmp`) that killed writers left: unlisted, and older than this moment."""
    def cleanup(since: float) -> None:
        listed = {e["path"] for t in manifest["tables"].values() for e in t.get("files", [])}
        for p in stale_temp_files(root, since, listed):
            p.unlink(missing_ok=True)
    return WriterSession(root, lock_timeout, cleanup=cleanup)


def _read_manifest_bytes(root: Path) -> bytes | None:
    try:
        return (root / MANIFEST).read_bytes()
    except FileNotFoundError:
        return None


def _row_count(columns: dict, where: str) -> int:
    lengths = {k: len(v) for k, v in columns.items() if v is not None}
    if not lengths:
        raise SchemaMismatch(f"{where}: no columns given")
    if len(set(lengths.values())) != 1:
        raise SchemaMismatch(f"{where}: columns have different lengths {lengths}")
    return next(iter(lengths.values()))


def _width_of(values, column: str, where: str) -> int:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_fixed_size_list(values.type):
            return values.type.list_size
        first = next((v for v in values.to_pylist() if v is not None), None)
        if first is None:
            raise SchemaMismatch(f"{where}: column {column!r} has no vectors to take a width from")
        return len(first)
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise SchemaMismatch(f"{where}: column {column!r} must be 2-D (rows x width), got shape {arr.shape}")
    return int(arr.shape[1])
