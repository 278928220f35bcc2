"""LarQL's ov-gate NDJSON output -> the `ov_gate` table (variant 'o').

`larql ov-gate --ndjson` writes a header line ({"_header": true, "type": "ov_gate_coupling",
"num_q_heads", "layers", ...}) and then one row per (head, feature) coupling, the top-k features
of each head: coupling_f = ||W_gate[f, :] . W_O[:, h*head_dim:(h+1)*head_dim]||_2 (same layer),
rounded to 3 decimals; total_coupling = sum over all features, rounded to 1.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from vindex.files import parse_json
from vindex.layers import BLOCK_TO_LAYER, layer_of_block
from vindex.writer import VindexWriter

from .format import LarqlFormatError, LarqlIndex
from .labels import KEY_LF

OV_GATE_TYPE = "ov_gate_coupling"
_HEAD = re.compile(r"^L(\d+)_H(\d+)$")
_OV_CLAIM = re.compile(r"ov[_-]?gate", re.IGNORECASE)   # a file named so must be a readable ov-gate file
_MAX_HEADER = 1 << 20                                     # bytes of line 1 read to sniff a header


def ov_gate_header(path: str | Path) -> dict | None:
    """The header of a per-layer ov-gate NDJSON file, or None when `path` is not one.

    LarQL's `circuit discover` writes edge files (ov_gate_edges.jsonl) with the same header type
    but no per-layer `layers` or `num_q_heads` and no total coupling; those are not imported.
    A file that claims to be an ov-gate file (its name says ov_gate / ov-gate, or its first line
    names the ov_gate_coupling type) but whose header cannot be read raises LarqlFormatError
    naming it: a corrupt file is never skipped as if it were some other file.
    """
    path = Path(path)
    claimed = bool(_OV_CLAIM.search(path.name))
    try:
        with open(path, "rb") as f:
            first = f.readline(_MAX_HEADER)
    except OSError as e:
        if claimed:
            raise LarqlFormatError(f"{path}: cannot read this ov-gate file ({e.strerror or e})") from None
        return None
    claimed = claimed or OV_GATE_TYPE.encode() in first
    try:
        header = parse_json(first, f"{path}: line 1", LarqlFormatError) if first.strip() else None
    except LarqlFormatError as e:
        if claimed:
            raise LarqlFormatError(f"{e}; an ov-gate NDJSON file starts with a "
                                   f'{{"_header": true, "type": "{OV_GATE_TYPE}", ...}} line') from None
        return None
    if not (isinstance(header, dict) and header.get("_header") and header.get("type") == OV_GATE_TYPE):
        if claimed:
            raise LarqlFormatError(f"{path}: looks like an ov-gate NDJSON file (by its name or line 1), but "
                                   f'line 1 is not a {{"_header": true, "type": "{OV_GATE_TYPE}", ...}} header; '
                                   "fix the file, or move it out of the LarQL folder")
        return None
    if "num_q_heads" not in header and "layers" not in header:
        return None
    return header


@dataclass
class OvGateRows:
    """The rows of one ov-gate NDJSON file, as columns (LarQL layer numbering)."""
    path: Path
    header: dict
    layer: np.ndarray
    head: np.ndarray
    feature_layer: np.ndarray
    feature: np.ndarray
    coupling: np.ndarray
    total_coupling: np.ndarray
    target_token: np.ndarray | None = None   # (n,) object: the row's `target_token`, None where absent


def read_ov_gate(path: str | Path) -> OvGateRows:
    """A per-layer ov-gate NDJSON file (header line, then one row per head -> feature coupling)."""
    path = Path(path)
    header = ov_gate_header(path)
    if header is None:
        raise LarqlFormatError(f"{path}: the first line is not an ov_gate_coupling header")
    cols = {k: [] for k in ("layer", "head", "feature_layer", "feature", "coupling", "total_coupling")}
    targets = []
    with open(path, "rb") as f:
        next(f)
        for lineno, line in enumerate(f, 2):
            if not line.strip():
                continue
            obj = parse_json(line, f"{path}: line {lineno}", LarqlFormatError)   # not UTF-8, not JSON, too deep
            try:
                layer = int(obj["layer"])
                head = int(obj["head_idx"]) if "head_idx" in obj else int(_HEAD.match(obj["head"]).group(2))
                if "feature_idx" in obj:
                    feature = int(obj["feature_idx"])
                else:
                    feature = int(KEY_LF.match(obj["feature"]).group(2))
                row = (layer, head, int(obj.get("feature_layer", layer)), feature,
                       float(obj["coupling"]), float(obj["total_coupling"]))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise LarqlFormatError(f"{path}: line {lineno}: not an ov-gate row with layer, head_idx, feature_idx, "
                                       f"coupling and total_coupling ({type(e).__name__}: {e})") from None
            if min(row[:4]) < 0:
                raise LarqlFormatError(f"{path}: line {lineno}: negative index in {row[:4]}")
            if not (math.isfinite(row[4]) and math.isfinite(row[5])):
                raise LarqlFormatError(f"{path}: line {lineno}: coupling {row[4]} / total_coupling {row[5]} "
                                       "is not a finite number")
            for key, v in zip(cols, row):
                cols[key].append(v)
            t = obj.get("target_token")
            targets.append(t.strip() or None if isinstance(t, str) else None)   # "" = no top token
    return OvGateRows(path, header, **{k: np.asarray(v, dtype=np.float32 if "coupling" in k else np.int64)
                                       for k, v in cols.items()},
                      target_token=np.array(targets + [None], dtype=object)[:-1])


def write_ov_gate(writer: VindexWriter, index: LarqlIndex, files: list[OvGateRows],
                  target_text=None) -> dict | None:
    """ov-gate NDJSON rows -> `ov_gate` (variant 'o'), one shard per layer, rank 1 = strongest.

    `target_text(larql_layer, flat_features)` gives the features' top-token text: each row's
    `target_token` is checked against it (LarQL writes the coupled feature's top token there) and
    the manifest records the agreement and the rows that differ.
    """
    if not files:
        return None
    cols = {k: np.concatenate([getattr(f, k) for f in files])
            for k in ("layer", "head", "feature_layer", "feature", "coupling", "total_coupling")}
    origin = np.concatenate([np.full(len(f.layer), i) for i, f in enumerate(files)])
    for key in ("layer", "feature_layer"):
        if len(cols[key]) and cols[key].max() >= index.num_layers:
            i = int(np.argmax(cols[key]))
            raise LarqlFormatError(f"{files[origin[i]].path}: {key} {cols[key][i]} is out of range "
                                      f"(num_layers = {index.num_layers})")
    keys = np.stack([cols["layer"], cols["head"], cols["feature_layer"], cols["feature"]], axis=1)
    uniq, first, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = uniq[np.argmax(counts > 1)]
        where = sorted({files[o].path.name for o in origin[(keys == dup).all(axis=1)]})
        raise LarqlFormatError(f"ov-gate files {where}: layer {dup[0]} head {dup[1]} -> layer {dup[2]} "
                                  f"feature {dup[3]} appears more than once")
    for layer in np.unique(cols["layer"]):
        sel = np.flatnonzero(cols["layer"] == layer)
        # order within each head: strongest coupling first, file order breaking ties
        sel = sel[np.lexsort((sel, -cols["coupling"][sel], cols["head"][sel]))]
        heads = cols["head"][sel]
        group_start = np.r_[0, np.flatnonzero(np.diff(heads)) + 1]
        rank = np.arange(len(sel)) - np.repeat(group_start, np.diff(np.r_[group_start, len(sel)])) + 1
        expert = np.full(len(sel), -1, np.int64)
        feature = cols["feature"][sel].copy()
        for fl_ in np.unique(cols["feature_layer"][sel]):
            li = index.layer(int(fl_))
            at = cols["feature_layer"][sel] == fl_
            if li is not None and li.is_moe:
                expert[at], feature[at] = li.split(feature[at])
        writer.write_shard("ov_gate", {
            "head": heads.astype(np.int32), "variant": ["o"] * len(sel),
            "feature_layer": (cols["feature_layer"][sel] + BLOCK_TO_LAYER).astype(np.int32),
            "feature": feature.astype(np.int32), "expert": pa.array(expert, pa.int32(), mask=expert < 0),
            "coupling": cols["coupling"][sel], "total_coupling": cols["total_coupling"][sel],
            "rank": rank.astype(np.int32)}, partition={"layer": layer_of_block(layer)})
    h = files[0].header
    meta = {"files": [f.path.name for f in files], "variant": "o", "top_k": h.get("top_k"),
            "formula": "coupling_f = ||W_gate[f, :] . W_O[:, h*head_dim:(h+1)*head_dim]||_2, same layer",
            "rounding": "LarQL rounds coupling to 3 decimals and total_coupling to 1"}
    targets = np.concatenate([f.target_token if f.target_token is not None else np.full(len(f.layer), None)
                              for f in files])
    given = np.flatnonzero(targets != None)  # noqa: E711 (elementwise)
    if len(given) and target_text is not None:
        expected = np.full(len(targets), None, dtype=object)
        for fl_ in np.unique(cols["feature_layer"][given]):
            at = given[cols["feature_layer"][given] == fl_]
            expected[at] = target_text(int(fl_), cols["feature"][at])
        differ = [int(i) for i in given if expected[i] != targets[i]]
        meta["target_token"] = {
            "rows": int(len(given)), "agree": int(len(given) - len(differ)),
            "meaning": "the coupled feature's top token: features.top_token at (feature_layer, expert, feature)",
            "differ": [{"layer": int(cols["layer"][i] + BLOCK_TO_LAYER), "head": int(cols["head"][i]),
                        "feature_layer": int(cols["feature_layer"][i] + BLOCK_TO_LAYER),
                        "feature_flat": int(cols["feature"][i]), "target_token": targets[i],
                        "top_token": expected[i]} for i in differ[:100]]}
    return meta
