"""The read side: open a vindex folder, see its tables and partitions, read shards.

Only files the manifest lists exist for a reader; orphans from an interrupted write are ignored.
Reads check each file against its manifest entry first (size, sha256 and partition columns, hashed
once per file version: `vindex.verified`) and its schema against its table's (the footer).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CorruptShard, NotFound
from .files import safe_join
from .manifest import ManifestView, load_manifest
from .schema import arrow_schema, check_schema
from .verified import verify_shard


class Vindex(ManifestView):
    """One model's vindex on local disk (accessors: `ManifestView`)."""

    def __init__(self, root: str | Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest

    @classmethod
    def open(cls, root: str | Path) -> "Vindex":
        return cls(root, load_manifest(root))

    def __repr__(self) -> str:
        return f"Vindex({self.name!r}, {str(self.root)!r}, tables={self.tables})"

    def _repr_html_(self) -> str:
        """A notebook's view: the model, its folder, and per table the files, rows and layers (from the
        manifest alone: nothing is read)."""
        from html import escape
        model = self.manifest.get("model") or {}
        rows = []
        for name in self.tables:
            files = self.manifest["tables"][name].get("files") or []
            layers = sorted({(e.get("partition") or {}).get("layer") for e in files} - {None})
            span = f"{layers[0]}-{layers[-1]}" if layers else "-"
            rows.append(f"<tr><td>{escape(name)}</td><td>{len(files)}</td>"
                        f"<td>{sum(e.get('rows', 0) for e in files)}</td><td>{span}</td></tr>")
        return (f"<div><b>Vindex {escape(str(self.name))}</b> &middot; {escape(str(model.get('id')))} "
                f"({model.get('n_layers')} layers, d_model {model.get('d_model')}) &middot; "
                f"<code>{escape(str(self.root))}</code>"
                "<table><tr><th>table</th><th>files</th><th>rows</th><th>layers</th></tr>"
                + "".join(rows) + "</table></div>")

    def _table(self, table: str) -> dict:
        t = self.manifest["tables"].get(table)
        if not t or not t.get("files"):
            raise NotFound(f"{self.root}: vindex {self.name!r} has no table {table!r} "
                           f"(it has: {', '.join(self.tables) or 'none'})")
        return t

    def schema(self, table: str) -> pa.Schema:
        t = self._table(table)
        return arrow_schema(table, t.get("vector_width"), t.get("vector_dtype") or "float16")

    def files(self, table: str, **partition) -> list[dict]:
        """Manifest entries of `table`, filtered by partition values (e.g. layer=3)."""
        return [e for e in self.entries(table)
                if all(e.get("partition", {}).get(k) == v for k, v in partition.items())]

    def entries(self, table: str) -> list[dict]:
        """Manifest entries of `table`; NotFound (naming the tables there are) when it has none."""
        return list(self._table(table)["files"])

    def path(self, entry_or_relpath) -> Path:
        rel = entry_or_relpath["path"] if isinstance(entry_or_relpath, dict) else entry_or_relpath
        return safe_join(self.root, rel)

    def read(self, table: str, layers: list[int] | None = None, columns: list[str] | None = None) -> pa.Table:
        """Read a table (optionally some layers and columns) into Arrow."""
        self.check_consistent(str(self.root))
        entries = self._table(table)["files"]
        if layers is not None:
            have = set(self.layers(table))
            missing = sorted(set(layers) - have)
            if missing:
                raise NotFound(f"{self.root}: table {table!r} has no layer(s) {missing} (has {sorted(have)})")
            entries = [e for e in entries if e.get("partition", {}).get("layer") in set(layers)]
        schema = self.schema(table)
        parts = [read_shard(self.path(e), e, schema, columns, table=table) for e in entries]
        if not parts:
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        return pa.concat_tables(parts)


def read_shard(path: Path, entry: dict, schema: pa.Schema | None = None, columns=None,
               table: str | None = None) -> pa.Table:
    """Read one shard, turning pyarrow's errors into ones that name the file. With `schema`, the
    file's own schema must be it (SchemaMismatch otherwise, e.g. a shard of another table): a
    missing column is never filled with nulls."""
    if not path.is_file():
        raise NotFound(f"{path}: listed in the manifest but missing on disk")
    verify_shard(path, entry)   # size, sha256 (once per file version), partition columns
    try:
        if schema is not None:
            check_schema(pq.read_schema(path), schema, where=f"{path}" + (f" (table {table!r})" if table else ""))
        return pq.read_table(path, columns=columns, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
        raise CorruptShard(f"{path}: not a readable Parquet file ({e})") from None
