"""The Gram cache's files: a derived cache beside a vindex's `data/`, computed by `vindex.query.gram_cache`.

    <vindex>/grams/<spec key>.<sha256 of the file's bytes>.parquet

One entry per spec (table, site, pooling, prompt set, kernel, preprocessing, estimator: its `record`,
stored in the file's metadata; the spec key is the sha256 of that record), one row per layer with the
sha256 of the shards the layer's Gram was computed from (`layer_digest`), so a row is current only
while the manifest lists those very shards.

Why not in the manifest: the cache is derived. Writing it never commits a manifest (a query may
fill it while a build runs), and readers of `data/` never meet it. Its names check themselves
instead: the sha256 of a file's bytes is in its name, and its spec key must be the sha256 of the
record it holds. `vindex verify` checks every entry by its name (and reports the hidden temp files
of a killed write), `vindex verify --prune` removes what cannot be used (damaged entries, temp
files, entries no row of which matches the shards now), `vindex info` lists the entries with their
current and stale layers, and publish/pull carry the entries by their names (a pulled file is kept
only if its bytes are its name's sha256).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ChecksumError, CorruptShard, InvalidValue, VindexError
from .files import sha256_file
from .verified import verify_shard

FOLDER = "grams"
FORMAT = "vindex-grams/1"
META_KEY = b"vindex.grams"
ENTRY_SCHEMA = pa.schema([
    ("layer", pa.int32()), ("shards", pa.string()), ("n", pa.int32()), ("n_distinct", pa.int32()),
    ("rows_key", pa.int64()), ("status", pa.string()), ("note", pa.string()), ("g", pa.list_(pa.float64())),
])
# status of a layer's row: ok (g is its Gram); empty (no rows match the spec); duplicate (a prompt
# twice); undefined (a constant layer: CKA is NULL); invalid (the Gram cannot be formed: too few
# rows, a saturated kernel; SQL raises it)
STATUSES = ("ok", "empty", "duplicate", "undefined", "invalid")
_NAME = re.compile(r"^([0-9a-f]{32})\.([0-9a-f]{64})\.parquet$")


def spec_key(record: dict) -> str:
    """The key of a spec: sha256 of its record (JSON, sorted keys), 32 hex digits."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def entry_name(key: str, sha256: str) -> str:
    return f"{key}.{sha256}.parquet"


def parse_name(name: str) -> tuple[str, str] | None:
    """(spec key, sha256) of an entry's file name, or None for a name no entry has."""
    m = _NAME.match(name)
    return (m.group(1), m.group(2)) if m else None


def layer_digest(entries: list[dict]) -> str:
    """The content a layer's Gram is computed from: sha256 over its shards' sha256s (as the manifest lists them)."""
    return hashlib.sha256("\n".join(sorted(e["sha256"] for e in entries)).encode()).hexdigest()


def layer_digests(entries: list[dict]) -> dict[int, str]:
    """layer -> `layer_digest` of a table's manifest entries."""
    by_layer: dict[int, list] = {}
    for e in entries:
        by_layer.setdefault((e.get("partition") or {}).get("layer"), []).append(e)
    return {layer: layer_digest(es) for layer, es in by_layer.items()}


def read_entry(path: Path, rel: str, record: dict | None = None, rehash: bool = False) -> tuple[dict, dict[int, dict]]:
    """(record, rows by layer) of the entry at `path`, each check passed: its name is an entry's, its
    bytes are the sha256 in its name (`vindex.verified`, once per file version; `rehash`: always), it is
    a readable entry whose key is its record's (and whose record is `record`, when given), and each
    Gram holds n(n+1)/2 numbers. ChecksumError, CorruptShard or InvalidValue naming what is wrong."""
    parsed = parse_name(path.name)
    if parsed is None:
        raise CorruptShard("its name is not <spec key>.<sha256 of its bytes>.parquet")
    key, sha = parsed
    if rehash:
        digest = sha256_file(path)
        if digest != sha:
            raise ChecksumError(f"sha256 {digest[:16]}... is not the {sha[:16]}... its name records")
    else:
        # flush=False: the memo is written by the next shard check of the same folder (one write, not one per entry)
        verify_shard(path, {"path": rel, "bytes": path.stat().st_size, "sha256": sha}, rel, where=str(path),
                     flush=False)
    try:
        f = pq.ParquetFile(path)
        said = json.loads((f.schema_arrow.metadata or {}).get(META_KEY, b"null"))
        t = f.read()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise CorruptShard(f"not a readable Gram cache entry ({e})") from None
    if not isinstance(said, dict) or spec_key(said) != key:
        raise InvalidValue(f"holds Grams of {said!r}, whose key is not {key} (its name's)")
    if record is not None and said != record:
        raise InvalidValue(f"holds Grams of {said!r}, not of {record!r}")
    if not t.schema.equals(ENTRY_SCHEMA):
        raise InvalidValue(f"columns {t.schema.names} are not a Gram cache entry's {ENTRY_SCHEMA.names}")
    g = t["g"].combine_chunks()
    offsets = g.offsets.to_numpy()
    values = g.values.to_numpy(zero_copy_only=False)
    valid = g.is_valid().to_numpy(zero_copy_only=False)
    rows = {}
    for i, r in enumerate(t.drop_columns(["g"]).to_pylist()):
        if r["status"] not in STATUSES or r["layer"] in rows:
            raise InvalidValue(f"row {i}: status {r['status']!r} or layer {r['layer']} is not a Gram cache row's")
        size = offsets[i + 1] - offsets[i]
        if (r["status"] == "ok") != bool(valid[i]) or (valid[i] and size != r["n"] * (r["n"] + 1) // 2):
            raise InvalidValue(f"layer {r['layer']}: a Gram of {size} numbers for n = {r['n']} rows "
                               f"(expected n(n+1)/2 = {r['n'] * (r['n'] + 1) // 2})")
        r["g"] = values[offsets[i]:offsets[i + 1]] if valid[i] else None
        rows[r["layer"]] = r
    return said, rows


# -- what a vindex's grams/ folder holds ------------------------------------------------------------
def temp_files(root: str | Path) -> list[Path]:
    """Hidden files in `root`/grams/: temp files of an entry write that was killed (never read)."""
    folder = Path(root) / FOLDER
    return sorted(p for p in folder.glob(".*") if p.is_file()) if folder.is_dir() else []


def survey(root: str | Path, manifest: dict, rehash: bool = False) -> list[dict]:
    """Every entry file in `root`/grams/ with what it holds, for verify, prune, info and publish:
    {"path", "bytes", "record" (None if damaged), "layers" (rows), "current" (layers whose shards the
    manifest lists now), "stale" (the other rows), "problem" (why it cannot be used, else None)}."""
    folder = Path(root) / FOLDER
    out = []
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        item = {"path": path, "bytes": path.stat().st_size, "record": None, "layers": [], "current": [],
                "stale": [], "problem": None}
        try:
            record, rows = read_entry(path, f"{FOLDER}/{path.name}", rehash=rehash)
        except (VindexError, OSError) as e:
            item["problem"] = str(e)
            out.append(item)
            continue
        table = ((manifest.get("tables") or {}).get(record.get("table")) or {}).get("files", [])
        now = layer_digests(table)
        item.update(record=record, layers=sorted(rows),
                    current=sorted(layer for layer, r in rows.items() if now.get(layer) == r["shards"]),
                    stale=sorted(layer for layer, r in rows.items() if now.get(layer) != r["shards"]))
        out.append(item)
    return out


def prune(root: str | Path, manifest: dict) -> list[Path]:
    """Remove from `root`/grams/ what can never be used: temp files of a killed write, damaged entries,
    and entries no row of which matches the shards the manifest lists now. Returns what was removed.
    The caller holds the vindex's write lock (entries are written under it)."""
    gone = temp_files(root) + [item["path"] for item in survey(root, manifest)
                               if item["problem"] is not None or not item["current"]]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


__all__ = ["FOLDER", "ENTRY_SCHEMA", "STATUSES", "spec_key", "entry_name", "parse_name", "layer_digest",
           "layer_digests", "read_entry", "temp_files", "survey", "prune"]
