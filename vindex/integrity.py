"""`vindex verify`: check every file of a vindex against its manifest.

Checks, per file: it is inside the vindex, present, of the recorded size and sha256, readable
Parquet, of the table's schema (vector width included), with the recorded row count and the
partition values its path claims. Problems are collected, not raised, so one run reports them all.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import SchemaMismatch, VindexError
from .files import safe_join, sha256_file
from .manifest import MANIFEST, load_manifest
from .schema import arrow_schema, check_schema


@dataclass(frozen=True)
class Problem:
    path: str      # the file (or vindex.json) the problem is about
    kind: str      # manifest | unsafe-path | missing | size | checksum | corrupt | schema | rows | partition | orphan
    message: str

    def __str__(self) -> str:
        return f"{self.path}: [{self.kind}] {self.message}"


def verify(path: str | Path, checksums: bool = True) -> list[Problem]:
    """All problems of the vindex at `path` (an empty list means it is sound)."""
    root = Path(path)
    try:
        m = load_manifest(root)
    except VindexError as e:
        kind = "unsafe-path" if type(e).__name__ == "UnsafePath" else "manifest"
        return [Problem(str(root / MANIFEST), kind, str(e))]
    problems: list[Problem] = []
    listed = set()
    for table, t in m["tables"].items():
        schema = arrow_schema(table, t.get("vector_width"), t.get("vector_dtype") or "float16") \
            if t.get("vector_width") else arrow_schema(table)
        for e in t.get("files", []):
            listed.add(e["path"])
            problems += _verify_file(root, table, e, schema, checksums)
    data = root / "data"
    if data.is_dir():
        for f in sorted(data.rglob("*.parquet")):
            rel = f.relative_to(root).as_posix()
            if rel not in listed:
                problems.append(Problem(str(f), "orphan", "not listed in the manifest (left by an "
                                        "interrupted write?); readers ignore it"))
    return problems


def _verify_file(root: Path, table: str, e: dict, schema: pa.Schema, checksums: bool) -> list[Problem]:
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
        check_schema(actual, schema, where=f"table {table!r}")
    except SchemaMismatch as err:
        return [Problem(str(f), "schema", str(err))]
    out = []
    rows = pf.metadata.num_rows
    if rows != e["rows"]:
        out.append(Problem(str(f), "rows", f"{rows} rows in the file, manifest records {e['rows']}"))
    for k, v in (e.get("partition") or {}).items():
        try:
            col = pf.read(columns=[k]).column(k)
        except (pa.ArrowException, OSError) as err:
            return out + [Problem(str(f), "corrupt", f"cannot read column {k!r}: {err}")]
        if len(col) and not pc.all(pc.equal(col, pa.scalar(v, col.type))).as_py():
            out.append(Problem(str(f), "partition", f"column {k!r} holds values other than {v!r} (the path's partition)"))
    return out
