"""vindex.json: load, validate and save the manifest.

The manifest is the commit point of a vindex: a shard exists for readers only once the manifest
lists it with its row count and sha256. It is always replaced atomically (temp file, fsync,
rename), so a reader sees the old or the new manifest, never a mix.
"""
from __future__ import annotations

import json
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path

import jsonschema

from .version import __version__
from .errors import ManifestError, UnsupportedSchemaVersion
from .files import atomic_write_bytes, read_json, safe_join
from .schema import manifest_json_schema

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


def save_manifest(root: str | Path, m: dict) -> None:
    m["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    validate_manifest(m, where=f"{Path(root) / MANIFEST} (about to be written)", root=root)
    atomic_write_bytes(Path(root) / MANIFEST, (json.dumps(m, indent=2, sort_keys=False) + "\n").encode())


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

    def table(self, table: str) -> dict:
        """The manifest's record of `table` ({} when the vindex has no such table)."""
        return (self.manifest.get("tables") or {}).get(table) or {}

    def entries(self, table: str) -> list[dict]:
        return list(self.table(table).get("files") or [])

    def partitions(self, table: str, key: str = "layer") -> list:
        return partition_values(self.entries(table), key)

    def layers(self, table: str = "activations") -> list[int]:
        return self.partitions(table, "layer")
