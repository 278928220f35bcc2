"""`vindex verify`: check every file of a vindex against its manifest.

Checks, per file: it is inside the vindex, listed once (in one table), present, of the recorded
size and sha256, readable Parquet, of its table's schema (vector width included; a shard of another
table is named as such), with the recorded row count and the partition values its path claims, and
no layer above the model's n_layers; with checksums, also that its vector columns hold no NaN or
Inf (read a batch at a time, so memory stays bounded whatever the shard's size). Problems are
collected, not raised, so one run reports them all. A lake root (a folder of vindex folders) is
checked one vindex at a time (`verify_each`).

The Gram cache (`grams/`, a derived cache the manifest does not list: `vindex.grams`) is checked
by its self-checking names: each entry's bytes against the sha256 in its name, its spec against its
key, its Grams' sizes ('grams' problems: such an entry is never used, the cache rebuilds it), and
the hidden temp files of a killed cache write ('temp'). Entries of older shards (stale) are not
problems (never used; `vindex info` lists them). With prune, what can never be used (damaged
entries, temp files, entries no row of which matches the shards now) is removed first, under the
vindex's write lock.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import grams
from .errors import SchemaMismatch, VindexError
from .files import safe_join, sha256_file
from .lake import lake_members
from .lock import WriteLock
from .manifest import MANIFEST, consistency_problems, load_manifest
from .schema import TABLES, arrow_schema, check_schema, defaults_if_absent, table_spec, vector_columns

_LAYER_COLUMNS = ("layer", "feature_layer")   # columns holding a vindex layer (0 .. n_layers)
SCAN_ROWS = 16_384                            # rows per batch of the NaN/Inf scan (bounds its memory)


@dataclass(frozen=True)
class Problem:
    path: str      # the file (or vindex.json) the problem is about
    kind: str      # manifest | unsafe-path | duplicate | missing | size | checksum | corrupt | schema |
    #                other-table | rows | partition | layers | nonfinite | orphan | twin | grams | temp
    message: str

    def __str__(self) -> str:
        return f"{self.path}: [{self.kind}] {self.message}"


def verify(path: str | Path, checksums: bool = True, prune: bool = False) -> list[Problem]:
    """All problems of the vindex at `path`, or of every vindex of the lake at `path` (an empty list
    means it is sound; each problem's path names its vindex folder). prune: first remove from each
    vindex's Gram cache what can never be used (`vindex.grams.prune`)."""
    return [p for problems in verify_each(path, checksums, prune).values() for p in problems]


def verify_each(path: str | Path, checksums: bool = True, prune: bool = False) -> dict[str, list[Problem]]:
    """{vindex folder: its problems}: one entry for a vindex folder, one per vindex of a lake root
    (in name order; a vindex with no problems maps to [])."""
    members = lake_members(path) or [Path(path)]
    return {str(p): _verify_vindex(p, checksums, prune) for p in members}


def _verify_vindex(path: str | Path, checksums: bool, prune: bool = False) -> list[Problem]:
    root = Path(path)
    try:
        m = load_manifest(root)
    except VindexError as e:
        kind = "unsafe-path" if type(e).__name__ == "UnsafePath" else "manifest"
        return [Problem(str(root / MANIFEST), kind, str(e))]
    # the manifest's own contradictions that the per-file checks below do not already report
    problems = [Problem(str(root / MANIFEST), kind, msg) for kind, msg in consistency_problems(m)
                if kind in ("vectors", "twin", "layers")]
    listed = set()
    seen: dict[str, str] = {}      # the listed file (resolved) -> the table listing it first
    n_layers = m["model"].get("n_layers")
    n_layers = n_layers if isinstance(n_layers, int) else None
    for table, t in m["tables"].items():
        schema = arrow_schema(table, t.get("vector_width"), t.get("vector_dtype") or "float16") \
            if t.get("vector_width") else arrow_schema(table)
        for e in t.get("files", []):
            listed.add(e["path"])
            key = _listed_key(root, e["path"])
            if key in seen:
                problems.append(Problem(key, "duplicate", f"listed twice in the manifest (table {seen[key]!r}, "
                                        f"then table {table!r}); a query would count its rows twice"))
                continue
            seen[key] = table
            problems += _verify_file(root, table, e, schema, checksums, n_layers)
    data = root / "data"
    if data.is_dir():
        for f in sorted(data.rglob("*.parquet")):
            rel = f.relative_to(root).as_posix()
            if rel not in listed:
                problems.append(Problem(str(f), "orphan", "not listed in the manifest (left by an "
                                        "interrupted write?); readers ignore it"))
    return problems + _gram_problems(root, m, checksums, prune)


def _gram_problems(root: Path, m: dict, checksums: bool, prune: bool) -> list[Problem]:
    """The Gram cache's damaged entries and temp files (after pruning them, with prune)."""
    if prune and (root / grams.FOLDER).is_dir():
        with WriteLock(root):
            grams.prune(root, m)
    out = [Problem(str(p), "temp", "a temp file of a Gram cache write that was killed; never read "
                   "(`vindex verify --prune` removes it)") for p in grams.temp_files(root)]
    out += [Problem(str(item["path"]), "grams", f"{item['problem']}; never used, the Gram cache computes it "
                    "again (`vindex verify --prune` removes it)")
            for item in grams.survey(root, m, rehash=checksums) if item["problem"] is not None]
    return out


def _listed_key(root: Path, relpath: str) -> str:
    """What a manifest path names, so that two spellings of one file (a/./b, a symlink) are one."""
    try:
        return str(safe_join(root, relpath))
    except VindexError:
        return relpath


def _other_table(actual: pa.Schema, table: str) -> str | None:
    """The table whose columns `actual` has, when it is not `table` (a shard listed under the wrong table)."""
    names = set(actual.names)
    for other in TABLES:
        spec = table_spec(other)
        full = {f["name"] for f in spec["fields"]}
        if other != table and names in (full, full - set(spec["vector_columns"])):
            return other
    return None


def _nonfinite(pf: pq.ParquetFile, table: str) -> list[tuple[str, int, int]]:
    """(column, rows holding NaN/Inf, first such row) per vector column, a batch of rows at a time."""
    out = []
    for col in vector_columns(table):
        if col not in pf.schema_arrow.names:
            continue
        bad, first, start = 0, None, 0
        for batch in pf.iter_batches(batch_size=SCAN_ROWS, columns=[col]):
            arr = batch.column(0)
            width = arr.type.list_size
            values = arr.values.slice(arr.offset * width, len(arr) * width).to_numpy(zero_copy_only=False)
            rows = ~np.isfinite(values.reshape(len(arr), width)).all(axis=1)
            if arr.null_count:
                rows &= arr.is_valid().to_numpy(zero_copy_only=False)
            if rows.any():
                bad += int(rows.sum())
                first = start + int(np.argmax(rows)) if first is None else first
            start += len(arr)
        if bad:
            out.append((col, bad, first))
    return out


def _verify_file(root: Path, table: str, e: dict, schema: pa.Schema, checksums: bool,
                 n_layers: int | None = None) -> list[Problem]:
    try:
        f = safe_join(root, e["path"])
    except VindexError as err:
        return [Problem(e["path"], "unsafe-path", str(err))]
    if not f.is_file():
        return [Problem(str(f), "missing", f"listed in the manifest (table {table!r}) but not on disk")]
    size = f.stat().st_size
    if size != e["bytes"]:
        return [Problem(str(f), "size", f"{size} bytes on disk, manifest records {e['bytes']} (truncated or overwritten)")]
    if checksums:
        digest = sha256_file(f)
        if digest != e["sha256"]:
            return [Problem(str(f), "checksum", f"sha256 {digest[:16]}... does not match the manifest's {e['sha256'][:16]}...")]
    try:
        pf = pq.ParquetFile(f)
        actual = pf.schema_arrow
    except (pa.ArrowException, OSError) as err:
        return [Problem(str(f), "corrupt", f"not a readable Parquet file: {err}")]
    try:
        check_schema(actual, schema, where=f"table {table!r}", absent_ok=defaults_if_absent(table))
    except SchemaMismatch as err:
        other = _other_table(actual, table)
        if other:
            return [Problem(str(f), "other-table", f"holds the columns of table {other!r} but is listed under "
                            f"table {table!r}; readers would take its rows for {table!r} rows")]
        return [Problem(str(f), "schema", str(err))]
    out = []
    rows = pf.metadata.num_rows
    if rows != e["rows"]:
        out.append(Problem(str(f), "rows", f"{rows} rows in the file, manifest records {e['rows']}"))
    for k, v in (e.get("partition") or {}).items():
        if k not in actual.names:
            out.append(Problem(str(f), "partition", f"the manifest gives partition {k!r}, which the table "
                               f"{table!r} has no column for"))
            continue
        try:
            col = pf.read(columns=[k]).column(k)
        except (pa.ArrowException, OSError) as err:
            return out + [Problem(str(f), "corrupt", f"cannot read column {k!r}: {err}")]
        if len(col) and not pc.all(pc.equal(col, pa.scalar(v, col.type))).as_py():
            out.append(Problem(str(f), "partition", f"column {k!r} holds values other than {v!r} (the path's partition)"))
    partitioned = set(e.get("partition") or {})
    for k in _LAYER_COLUMNS:   # layer columns the manifest does not hold as partitions (its own: consistency_problems)
        if n_layers is None or k in partitioned or k not in actual.names:
            continue
        try:
            top = pc.max(pf.read(columns=[k]).column(k)).as_py()
        except (pa.ArrowException, OSError) as err:
            return out + [Problem(str(f), "corrupt", f"cannot read column {k!r}: {err}")]
        if top is not None and top > n_layers:
            out.append(Problem(str(f), "layers", f"column {k!r} holds layer {top}, but model.n_layers is {n_layers} "
                               "(layers run 0 .. n_layers)"))
    if checksums:
        try:
            bad = _nonfinite(pf, table)
        except (pa.ArrowException, OSError) as err:
            return out + [Problem(str(f), "corrupt", f"cannot read the vector columns: {err}")]
        out += [Problem(str(f), "nonfinite", f"column {c!r}: {n} row(s) hold NaN or Inf (first: row {r}); "
                        "the writer never stores them, so the file was altered or written by another tool")
                for c, n, r in bad]
    return out
