"""`vindex info`: what a vindex holds, at a glance."""
from __future__ import annotations

from pathlib import Path

from rich.filesize import decimal

from .manifest import partition_values
from .reader import Vindex


def info(path: str | Path) -> dict:
    """Model, layers, tables (files, rows, bytes, layers, vector width) and prompt sets."""
    vx = Vindex.open(path)
    tables = {}
    for name, t in vx.manifest["tables"].items():
        files = t.get("files", [])
        layers = partition_values(files)
        tables[name] = {"files": len(files), "rows": sum(e["rows"] for e in files),
                        "bytes": sum(e["bytes"] for e in files), "layers": layers,
                        "vector_width": t.get("vector_width"), "vector_dtype": t.get("vector_dtype")}
    return {"name": vx.name, "path": str(vx.root), "model": vx.model,
            "extraction": vx.manifest.get("extraction", {}), "prompt_sets": vx.prompt_sets,
            "tables": tables, "created_by": vx.manifest.get("created_by"),
            "updated_at": vx.manifest.get("updated_at")}


def human_bytes(n: float) -> str:
    """A byte count for people, in decimal units like the Hub and the progress bars: '1.5 MB'."""
    return decimal(int(n))
