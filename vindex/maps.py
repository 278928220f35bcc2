"""The `maps` table: Rosetta maps y = x W + b from one model's layer to another's, stored for reuse.

A map lives in its TARGET model's vindex (model_b): its rows are vectors of the target's width
d_b (one vector width per table and vindex, as the format wants), a vindex carries the maps into its
own space when it is published, and a job that steers model B (the transplant) reads them from B's
own folder. One shard per (source model, method), `data/maps/model_a=<A>/method=<m>/part-00000.parquet`,
holds the last fit of that source and method (a rerun replaces it); each map is d_a rows of W
(`input_index` i) and one bias row (`input_index` NULL), each row carrying the map's scores.

`vindex.query.rosetta(..., store=True)` fits and writes them (`write_maps`); `read_map`, `apply_map`
and `map_direction` use them with numpy and pyarrow only, so a job in `vindex.ingest` can too.

    m = read_map("lake/qwen", model_a="gemma", layer_a=9, method="ridge")
    apply_map(m, X_gemma)        # (n, d_a) rows of gemma's layer 9 -> (n, d_b) predicted qwen rows
    map_direction(m, v)          # a direction (difference of two points): v W, no bias
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InvalidValue, NotFound
from .reader import Vindex
from .writer import VindexWriter

TABLE = "maps"
# what each map carries besides W and b (the maps schema's per-map columns)
INFO = ("model_a", "method", "layer_a", "model_b", "layer_b", "depth_a", "depth_b", "d_a", "d_b", "ridge_lambda",
        "rank", "scale", "dual", "r2", "r2_null_mean", "r2_null_p95", "r2_p_value", "cka", "cka_null_mean",
        "cka_null_p95", "cka_p_value", "n", "folds", "permutations", "seed", "pooling", "prompt_set")


@dataclass
class StoredMap:
    """One map: y = x W + b, W (d_a, d_b), b (d_b), and its row of scores (`info`)."""
    W: np.ndarray
    b: np.ndarray
    info: dict = field(default_factory=dict)


def apply_map(m: StoredMap, vectors) -> np.ndarray:
    """Points of the source layer, (n, d_a) or (d_a,), as the target layer's: x W + b."""
    X = _source_vectors(m, vectors)
    return X @ m.W + m.b


def map_direction(m: StoredMap, direction) -> np.ndarray:
    """A direction of the source layer (a difference of two points, e.g. a mean difference of two
    prompt categories) in the target layer: v W. The bias cancels in a difference, so none is added;
    the norm is the map's (rescale it to the target's own scale before steering, if wanted)."""
    return _source_vectors(m, direction) @ m.W


def _source_vectors(m: StoredMap, vectors) -> np.ndarray:
    X = np.asarray(vectors, dtype=np.float64)
    if X.shape[-1:] != (m.W.shape[0],):
        raise InvalidValue(f"map {m.info.get('model_a')} layer {m.info.get('layer_a')} -> {m.info.get('model_b')} "
                           f"layer {m.info.get('layer_b')}: takes vectors of width {m.W.shape[0]}, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InvalidValue("apply_map: the vectors hold NaN or inf")
    return X


# -- writing ------------------------------------------------------------------------------------
def map_rows(info: dict, W: np.ndarray, b: np.ndarray) -> dict:
    """The table rows of one map: W's rows (input_index 0..d_a-1), then b (input_index NULL)."""
    d_a, d_b = W.shape
    rows = {k: [info.get(k)] * (d_a + 1) for k in INFO}
    rows["d_a"], rows["d_b"] = [d_a] * (d_a + 1), [d_b] * (d_a + 1)
    rows["input_index"] = list(range(d_a)) + [None]
    rows["matrix_row"] = np.vstack([W, b[None, :]])
    return rows


def write_maps(root: str | Path, maps: list[tuple[dict, np.ndarray, np.ndarray]]) -> list[dict]:
    """Write maps (info, W, b) into the vindex at `root`, the target of every one of them (its name
    is their model_b), one shard per (model_a, method), atomically with the one writer. Returns the
    shards' manifest entries."""
    w = VindexWriter.open(root)
    try:
        groups: dict[tuple[str, str], list] = {}
        for info, W, b in maps:
            if info.get("model_b") != w.name:
                raise InvalidValue(f"{root}: holds vindex {w.name!r}; a map into {info.get('model_b')!r} is stored "
                                   "in its target's vindex")
            groups.setdefault((info["model_a"], info["method"]), []).append(map_rows(info, W, b))
        if groups:
            w.declare_vectors(TABLE, int(maps[0][1].shape[1]), "float32")
        entries = []
        for (model_a, method), parts in sorted(groups.items()):
            rows = {k: sum((p[k] for p in parts), []) for k in parts[0] if k != "matrix_row"}
            rows["matrix_row"] = np.vstack([p["matrix_row"] for p in parts])
            entries.append(w.write_shard(TABLE, rows, partition={"model_a": model_a, "method": method}, commit=False))
        if entries:
            w.add_files(TABLE, entries)
        return entries
    finally:
        w.close()


# -- reading ------------------------------------------------------------------------------------
def read_map(root: str | Path, model_a: str, layer_a: int, method: str = "ridge",
             layer_b: int | None = None) -> StoredMap:
    """The stored map from model_a's layer_a into the vindex at `root` (its model is the target), by
    `method`; `layer_b` picks one where the maps were fitted for every pair (default: the only one)."""
    vx = Vindex.open(root)
    if TABLE not in vx.tables:
        raise NotFound(f"{root}: vindex {vx.name!r} stores no maps; fit them with "
                       "`vindex rosetta A B --store` (vindex.query.rosetta(..., store=True))")
    t = vx.read(TABLE)
    keep = pc.and_(pc.and_(pc.equal(t["model_a"], model_a), pc.equal(t["method"], method)),
                   pc.equal(t["layer_a"], int(layer_a)))
    if layer_b is not None:
        keep = pc.and_(keep, pc.equal(t["layer_b"], int(layer_b)))
    t = t.filter(keep)
    targets = sorted(set(t["layer_b"].to_pylist()))
    if not targets:
        raise NotFound(f"{root}: no {method} map from {model_a!r} layer {layer_a}"
                       + (f" to layer {layer_b}" if layer_b is not None else "") + f" into {vx.name!r}")
    if len(targets) > 1:
        raise InvalidValue(f"{root}: {len(targets)} {method} maps from {model_a!r} layer {layer_a} (to layers "
                           f"{targets}); pass layer_b")
    return _as_map(t)


def _as_map(t: pa.Table) -> StoredMap:
    index = t["input_index"].to_numpy(zero_copy_only=False)
    col = t["matrix_row"].combine_chunks()
    rows = col.flatten().to_numpy(zero_copy_only=False).reshape(len(t), col.type.list_size).astype(np.float64)
    bias = np.isnan(index.astype(np.float64))
    order = np.argsort(index[~bias].astype(np.int64))
    info = {k: t[k][0].as_py() for k in INFO}
    W = rows[~bias][order]
    if bias.sum() != 1 or W.shape[0] != info["d_a"]:
        raise InvalidValue(f"maps: the map from {info['model_a']} layer {info['layer_a']} has {W.shape[0]} rows of W "
                           f"and {int(bias.sum())} bias rows; expected {info['d_a']} and 1")
    return StoredMap(W, rows[bias][0], info)
