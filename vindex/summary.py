"""`vindex info`: what a vindex holds, at a glance, and whether its prompt sets are complete."""
from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.filesize import decimal

from .files import safe_join
from .manifest import partition_values
from .reader import Vindex
from .verified import verify_shard

# the tables whose rows are keyed by prompt, in the order their keys are counted from
_PROMPT_TABLES = ("pooled", "activations")


def info(path: str | Path) -> dict:
    """Model, layers, tables (files, rows, bytes, layers, vector width) and prompt sets, each with
    `n_present` (prompts with rows), `complete` and `status` ('complete' or 'incomplete: 48 of 96
    prompts'; see `prompt_coverage`)."""
    vx = Vindex.open(path)
    tables = {}
    for name, t in vx.manifest["tables"].items():
        files = t.get("files", [])
        layers = partition_values(files)
        tables[name] = {"files": len(files), "rows": sum(e["rows"] for e in files),
                        "bytes": sum(e["bytes"] for e in files), "layers": layers,
                        "vector_width": t.get("vector_width"), "vector_dtype": t.get("vector_dtype")}
    coverage = prompt_coverage(vx)
    prompt_sets = {name: {**ps, **coverage[name]} for name, ps in vx.prompt_sets.items()}
    return {"name": vx.name, "path": str(vx.root), "model": vx.model,
            "extraction": vx.manifest.get("extraction", {}), "prompt_sets": prompt_sets,
            "tables": tables, "created_by": vx.manifest.get("created_by"),
            "updated_at": vx.manifest.get("updated_at")}


def prompt_coverage(view) -> dict[str, dict]:
    """For each prompt set of a vindex (a `Vindex` or a query's `ResolvedVindex`): how many of its
    planned prompts (`n_prompts`, recorded before a build writes anything) have rows.

    A set whose manifest record says `complete: false` (a build that was cut off, or is still
    running) is counted: the distinct prompt ids of its rows in the lowest layer of `pooled` (else
    `activations`), reading those two key columns only, never the vectors. A set without the flag
    (toy or imported vindexes) or with `complete: true` holds what it planned.

    Returns {name: {"n_present": int, "complete": bool, "status": "complete" |
    "incomplete: 48 of 96 prompts"}}.
    """
    out = {}
    for name, ps in view.prompt_sets.items():
        planned = int(ps.get("n_prompts", 0))
        present = planned if ps.get("complete", True) else _count_prompts(view, name)
        complete = present >= planned
        out[name] = {"n_present": present, "complete": complete,
                     "status": "complete" if complete else f"incomplete: {present} of {planned} prompts"}
    return out


def _count_prompts(view, prompt_set: str) -> int:
    for table in _PROMPT_TABLES:
        entries = view.entries(table) if table in view.tables else []
        layers = partition_values(entries)
        if not layers:
            continue
        ids = set()
        for e in entries:
            if e["partition"].get("layer") != layers[0]:
                continue
            t = _read_keys(view, e)
            t = t.filter(pc.equal(t["prompt_set"], prompt_set))
            ids.update(t["prompt_id"].to_pylist())
        return len(ids)
    return 0


def _read_keys(view, entry: dict):
    """The shard's prompt keys, once its bytes match the manifest (`verified`; a remote shard through
    the view's filesystem, which verifies what it fetches)."""
    columns = ["prompt_set", "prompt_id"]
    fs = getattr(view, "filesystem", None)
    if fs is not None:
        with fs.open(view.url(entry["path"]), "rb") as f:
            return pq.read_table(f, columns=columns)
    path = safe_join(view.root, entry["path"]) if isinstance(view, Vindex) else Path(view.url(entry["path"]))
    verify_shard(path, entry)
    return pq.read_table(path, columns=columns)


def human_bytes(n: float) -> str:
    """A byte count for people, in decimal units like the Hub and the progress bars: '1.5 MB'."""
    return decimal(int(n))
