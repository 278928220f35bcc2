"""vindex.json: load, validate and save the manifest.

The manifest is the commit point of a vindex: a shard exists for readers only once the manifest
lists it with its row count and sha256. It is always replaced atomically (temp file, fsync,
rename), so a reader sees the old or the new manifest, never a mix.
"""
from __future__ import annotations

import json
import posixpath
import re
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import jsonschema

from .version import __version__
from .errors import ManifestError, SchemaMismatch, UnsupportedSchemaVersion
from .files import atomic_write_bytes, parse_json, read_json, safe_join
from .schema import manifest_json_schema, table_spec, vector_columns

MANIFEST = "vindex.json"
SCHEMA_VERSION = 1


def new_manifest(name: str, model: dict, extraction: dict | None = None) -> dict:
    """A manifest with no tables yet; `model` needs at least `id` and `n_layers`."""
    m = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "model": dict(model),
        "extraction": dict(extraction or {}),
        "prompt_sets": {},
        "tables": {},
        "created_by": f"vindex-lake {__version__}",
    }
    validate_manifest(m, where=f"new manifest for {name!r}")
    return m


def validate_manifest(m: dict, where: str, root: str | Path | None = None) -> dict:
    """Check `m` against schemas/vindex.schema.json and that no file path escapes `root`."""
    if not isinstance(m, dict):
        raise ManifestError(f"{where}: the manifest must be a JSON object, got {type(m).__name__}")
    version = m.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UnsupportedSchemaVersion(
            f"{where}: schema_version {version!r} is not supported (this vindex-lake "
            f"{__version__} reads version {SCHEMA_VERSION}); upgrade vindex-lake or rebuild the vindex")
    # paths first: a traversal attempt deserves its own error, not a pattern mismatch
    for table, t in (m.get("tables") or {}).items():
        for entry in (t or {}).get("files", []) if isinstance(t, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                safe_join(root or ".", entry["path"])
    error = jsonschema.exceptions.best_match(_validator().iter_errors(m))
    if error is not None:
        loc = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ManifestError(f"{where}: invalid manifest at {loc}: {error.message}")
    return m


@lru_cache(maxsize=1)
def _validator():
    """One compiled validator: jsonschema.validate() re-checks the schema itself on every call,
    which made manifest commits the slowest part of a many-shard build."""
    schema = manifest_json_schema()
    return jsonschema.validators.validator_for(schema)(schema)


def load_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest; is {str(root)!r} a vindex folder?")
    return validate_manifest(read_json(path, ManifestError), where=str(path), root=root)


def parse_manifest(data: bytes, root: str | Path) -> dict:
    """A validated manifest from the bytes of `root`'s vindex.json (as `load_manifest` reads it)."""
    path = Path(root) / MANIFEST
    return validate_manifest(parse_json(data, str(path), ManifestError), where=str(path), root=root)


def save_manifest(root: str | Path, m: dict) -> bytes:
    """Validate `m` and replace `root`'s vindex.json with it atomically; returns the bytes written.

    Writers go through `VindexWriter.commit`, which holds the vindex's write lock and merges
    with what other writers committed meanwhile; this is the bare replace."""
    m["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    validate_manifest(m, where=f"{Path(root) / MANIFEST} (about to be written)", root=root)
    data = (json.dumps(m, indent=2, sort_keys=False) + "\n").encode()
    atomic_write_bytes(Path(root) / MANIFEST, data)
    return data


# -- merging concurrent writers ---------------------------------------------------------------------
# A writer holds the manifest it last read or wrote (`base`) and its own edited copy (`mine`). At
# commit, under the write lock, it re-reads the manifest on disk and applies only what it changed
# since `base`: file entries added, replaced or removed per table, prompt-set records, extraction /
# model / top-level keys, and vector declarations. Everything else on disk, i.e. what other writers
# committed meanwhile, is kept. On the same key the later commit wins, except vector declarations,
# where two different ones for a table that holds files is an error rather than a mixed table.

_SECTIONS = ("model", "extraction", "prompt_sets")


def merge_manifest(disk: dict, base: dict | None, mine: dict, where: str = MANIFEST) -> dict:
    """`disk` (modified and returned) with the changes `mine` made to `base` applied; see above."""
    base = base or {}
    for key in set(mine) | set(base):
        if key in ("tables", "updated_at", *_SECTIONS):
            continue
        _apply_key(disk, key, base, mine)
    for section in _SECTIONS:
        b, m = base.get(section) or {}, mine.get(section) or {}
        d = disk.setdefault(section, {})
        for key in set(m) | set(b):
            _apply_key(d, key, b, m)
    tables = disk.setdefault("tables", {})
    base_tables = base.get("tables") or {}
    for table, mt in (mine.get("tables") or {}).items():
        _merge_table(tables, table, base_tables.get(table) or {}, mt, where)
    return disk


def _apply_key(target: dict, key, base: dict, mine: dict) -> None:
    if key in mine:
        if key not in base or base[key] != mine[key]:
            target[key] = mine[key]
    elif key in base:            # removed by this writer
        target.pop(key, None)


_VECTOR_KEYS = ("vector_width", "vector_dtype")


def _merge_table(tables: dict, table: str, bt: dict, mt: dict, where: str) -> None:
    dt = tables.get(table)
    if dt is None:
        dt = tables[table] = {"files": []}
    base_files = {e["path"]: e for e in bt.get("files") or []}
    my_files = {e["path"]: e for e in mt.get("files") or []}
    added = {p: e for p, e in my_files.items() if base_files.get(p) != e}
    removed = base_files.keys() - my_files.keys()
    others = {e["path"]: e for e in dt.get("files") or [] if e["path"] not in removed}
    mine_decl, base_decl = tuple(mt.get(k) for k in _VECTOR_KEYS), tuple(bt.get(k) for k in _VECTOR_KEYS)
    disk_decl = tuple(dt.get(k) for k in _VECTOR_KEYS)
    decl = disk_decl
    if mine_decl != base_decl:
        if mine_decl[0] is None:                    # a reset binds nobody once others stored vectors
            decl = disk_decl if others else mine_decl
        elif others and disk_decl[0] is not None and disk_decl != mine_decl:
            raise SchemaMismatch(f"{where}: table {table!r} meanwhile holds another writer's {disk_decl[1]} vectors "
                                 f"of width {disk_decl[0]}; this writer declared {mine_decl[1]} of width "
                                 f"{mine_decl[0]}. Nothing was committed; rerun it to add to the table as it is now")
        else:
            decl = mine_decl
    if added and mine_decl[0] is not None and decl != mine_decl:
        raise SchemaMismatch(f"{where}: table {table!r} was declared {decl[1]} vectors of width {decl[0]} by another "
                             f"writer meanwhile; this writer's shards hold {mine_decl[1]} of width {mine_decl[0]}. "
                             "Nothing was committed; rerun it to add to the table as it is now")
    for key in set(mt) | set(bt):
        if key not in ("files", *_VECTOR_KEYS):
            _apply_key(dt, key, bt, mt)
    for k, v in zip(_VECTOR_KEYS, decl):
        if v is None and k not in dt and k not in mt:
            continue
        dt[k] = v
    others.update(added)
    dt["files"] = sorted(others.values(), key=lambda e: path_order(e["path"]))


def consistency_problems(m: dict) -> list[tuple[str, str]]:
    """What a schema-valid manifest can still get wrong about its shards, as (kind, message) pairs:
    a file listed twice (its rows would count twice), a file outside its table's folder
    (`data/<table>/`: another table's shard), a stored layer above model.n_layers (depth = layer /
    n_layers would be wrong), required vector columns with no declared vector_width, and one shard
    listed under an older vindex's padded folder and the new one (`layer=03`, `layer=3`): a twin."""
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    twins: dict[tuple, str] = {}
    n_layers = (m.get("model") or {}).get("n_layers")
    for table, t in (m.get("tables") or {}).items():
        files = t.get("files") or []
        for e in files:
            key = PurePosixPath(e["path"]).as_posix()
            if key in seen:
                out.append(("duplicate", f"{e['path']} is listed twice (table {seen[key]!r}, then {table!r}); "
                                         "its rows would count twice"))
            seen.setdefault(key, table)
            # the same shard under an old padded folder and the new one (layer=03, layer=3): two files
            plain = posixpath.normpath(key)
            twin = (table, _unpadded(plain, e.get("partition") or {}))
            if twin in twins and twins[twin] != plain:
                out.append(("twin", f"{e['path']} and {twins[twin]} are one shard of table {table!r} "
                                    "listed twice, under an older vindex's padded folder and the new one; "
                                    "its rows would count twice"))
            twins.setdefault(twin, plain)
            if not key.startswith(f"data/{table}/"):
                out.append(("other-table", f"{e['path']} is listed under table {table!r} but lies outside "
                                           f"data/{table}/"))
        layers = partition_values(files)
        if isinstance(n_layers, int) and layers and max(layers) > n_layers:
            out.append(("layers", f"table {table!r} stores layer {max(layers)}, but model.n_layers is {n_layers} "
                                  "(layers run 0 .. n_layers); n_layers is wrong or the shard is another model's"))
        required = [f["name"] for f in table_spec(table)["fields"]
                    if f["name"] in vector_columns(table) and not f.get("nullable")]
        if files and required and not t.get("vector_width"):
            out.append(("vectors", f"table {table!r} holds vector shards ({', '.join(required)}) but declares "
                                   "no vector_width"))
    return out


def path_order(path: str) -> tuple:
    """Sort key of a shard path: its numbers by value, so `layer=2` comes before `layer=10` as
    `layer=02` did before `layer=10` (and a padded name sorts with its unpadded twin)."""
    return tuple(int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", path))), path


def _unpadded(path: str, partition: dict) -> str:
    """`path` with its integer partition folders as the writer names them now (`layer=03` -> `layer=3`)."""
    for k, v in partition.items():
        if isinstance(v, int) and not isinstance(v, bool):
            path = path.replace(f"/{k}={v:02d}/", f"/{k}={v}/")
    return path


def partition_values(entries, key: str = "layer") -> list:
    """Sorted distinct values of partition `key` over manifest file entries (entries without it skipped)."""
    return sorted({e["partition"][key] for e in entries if key in (e.get("partition") or {})})


class ManifestView:
    """Read-only accessors over a manifest, shared by a local `Vindex` and a query's `ResolvedVindex`.

    Subclasses set `self.manifest`; `entries(table)` is [] for a table the vindex lacks (`Vindex`
    raises NotFound instead, naming the tables it has).
    """
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def n_layers(self) -> int:
        return int(self.model["n_layers"])

    @property
    def tables(self) -> list[str]:
        """Tables that hold at least one file."""
        return sorted(t for t, v in (self.manifest.get("tables") or {}).items() if v.get("files"))

    @property
    def prompt_sets(self) -> dict:
        return self.manifest.get("prompt_sets", {})

    def check_consistent(self, where: str) -> None:
        """ManifestError listing `consistency_problems` (a query or read must not run on them)."""
        problems = consistency_problems(self.manifest)
        if problems:
            raise ManifestError(f"{where}: the manifest contradicts its shards: "
                                + "; ".join(msg for _, msg in problems) + "; run `vindex verify`")

    def table(self, table: str) -> dict:
        """The manifest's record of `table` ({} when the vindex has no such table)."""
        return (self.manifest.get("tables") or {}).get(table) or {}

    def entries(self, table: str) -> list[dict]:
        return list(self.table(table).get("files") or [])

    def partitions(self, table: str, key: str = "layer") -> list:
        return partition_values(self.entries(table), key)

    def layers(self, table: str = "activations") -> list[int]:
        return self.partitions(table, "layer")
