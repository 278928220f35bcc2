"""LarQL's label files: feature_labels.json, feature_clusters.jsonl and relation_clusters.json.

LarQL labels FFN features two ways: by name (feature_labels.json, keyed "L<layer>_F<feature>" in
its code and "<layer>:<feature>" in older documents, or a list of rich records; the probe's
feature_labels_rich.json adds a confidence) and by cluster (feature_clusters.jsonl gives
each feature a cluster index, relation_clusters.json names the clusters). Layers and features are
LarQL's: 0-based blocks, flat feature indices (experts contiguous).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vindex.files import parse_json, read_json

from .format import FEATURE_CLUSTERS, FEATURE_LABELS, FEATURE_LABELS_RICH, RELATION_CLUSTERS, LarqlFormatError

KEY_LF = re.compile(r"^L(\d+)_F(\d+)$")
_KEY_COLON = re.compile(r"^(\d+):(\d+)$")


def _load_json(path: Path):
    return read_json(path, LarqlFormatError)


@dataclass
class LabelFile:
    """What feature_labels.json (or feature_labels_rich.json) held, keyed (layer, flat feature).

    `skipped` lists why entries were left out (a key that is not a feature key, a label that is
    not a string); LarQL skips them silently, the importer warns.
    """
    labels: dict = field(default_factory=dict)
    confidence: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _feature_key(key) -> tuple[int, int] | None:
    m = KEY_LF.match(key) or _KEY_COLON.match(key) if isinstance(key, str) else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def read_feature_labels(path: str | Path) -> LabelFile:
    """feature_labels.json in any form LarQL writes, entries that do not parse skipped (and listed).

    - the flat map {"L<l>_F<f>" or "<l>:<f>": label} (the engine's format);
    - the rich list [{"layer", "feature", "relation", "source", "confidence", "examples"}];
    - feature_labels_rich.json, the probe's details: {"L<l>_F<f>": {"primary", "confidence", ...}}.
    A file that is not JSON at all is one skipped entry, so a bad label file never stops an import.
    """
    path = Path(path)
    out = LabelFile()
    try:
        raw = _load_json(path)
    except LarqlFormatError as e:
        out.skipped.append(str(e))
        return out
    if isinstance(raw, list):
        items = []
        for i, rec in enumerate(raw):
            if not isinstance(rec, dict) or not isinstance(rec.get("layer"), int) or \
                    not isinstance(rec.get("feature"), int) or rec["layer"] < 0 or rec["feature"] < 0:
                out.skipped.append(f"entry {i}: not a {{layer, feature, relation}} record")
                continue
            items.append(((rec["layer"], rec["feature"]), f"entry {i}", rec))
    elif isinstance(raw, dict):
        items = []
        for key, value in raw.items():
            where = _feature_key(key)
            if where is None:
                out.skipped.append(f"key {key!r} is neither 'L<layer>_F<feature>' nor '<layer>:<feature>'")
                continue
            items.append((where, f"key {key!r}", value if isinstance(value, dict) else {"relation": value}))
    else:
        out.skipped.append(f"expected an object or a list, got {type(raw).__name__}")
        return out
    for where, name, rec in items:
        label = rec.get("relation", rec.get("primary"))
        if label is not None and not isinstance(label, str):
            out.skipped.append(f"{name}: label {label!r} is not a string")
            continue
        out.labels[where] = label
        if _number(rec.get("confidence")) is not None:
            out.confidence[where] = _number(rec["confidence"])
        if isinstance(rec.get("source"), str):
            out.source[where] = rec["source"]
    return out


def read_relation_clusters(path: str | Path) -> dict:
    """relation_clusters.json -> {k, labels, counts, top_tokens} (the centres are not imported)."""
    path = Path(path)
    raw = _load_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("labels"), list):
        raise LarqlFormatError(f"{path}: expected an object with a `labels` list")
    labels = raw["labels"]
    k = raw.get("k", len(labels))
    if k != len(labels):
        raise LarqlFormatError(f"{path}: k = {k} but {len(labels)} labels")
    out = {"k": int(k), "labels": [None if v is None else str(v) for v in labels]}
    for key in ("counts", "top_tokens"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], list) or len(raw[key]) != k:
                raise LarqlFormatError(f"{path}: `{key}` must be a list of k = {k} entries")
            out[key] = raw[key]
    return out


def read_feature_clusters(path: str | Path) -> dict[tuple[int, int], int]:
    """feature_clusters.jsonl -> {(layer, flat feature): cluster index}."""
    path = Path(path)
    out = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = parse_json(line, f"{path}: line {lineno}", LarqlFormatError)   # not UTF-8, not JSON, too deep
            try:
                out[(int(obj["l"]), int(obj["f"]))] = int(obj["c"])
            except (KeyError, TypeError, ValueError) as e:
                raise LarqlFormatError(f"{path}: line {lineno}: expected {{\"l\", \"f\", \"c\"}} integers "
                                       f"({type(e).__name__}: {e})") from None
    return out


@dataclass
class FeatureLabels:
    """Labels and clusters from feature_labels.json (+ _rich), feature_clusters.jsonl, relation_clusters.json.

    The per-feature maps are keyed {larql layer: {flat feature: value}}. Labels from a label file
    are probe-confirmed in LarQL (it tags them "(probe)"); `source` keeps that tag (or a rich
    record's own `source`), `confidence` the probe's confidence where a file gives one.
    """
    labels: dict = field(default_factory=dict)
    clusters: dict = field(default_factory=dict)
    relation: dict | None = None   # relation_clusters.json without the centres
    files: list[str] = field(default_factory=list)
    confidence: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)   # file name -> reasons entries were left out

    @classmethod
    def load(cls, folder: Path) -> "FeatureLabels":
        fl = cls()
        for name in (FEATURE_LABELS, FEATURE_LABELS_RICH):
            if not (folder / name).is_file():
                continue
            got = read_feature_labels(folder / name)
            fl.files.append(name)
            if got.skipped:
                fl.skipped[name] = got.skipped
            for key, label in got.labels.items():   # feature_labels.json's own label wins
                layer, f = key
                if name == FEATURE_LABELS or f not in fl.labels.get(layer, {}):
                    fl.labels.setdefault(layer, {})[f] = label
                fl.source.setdefault(layer, {}).setdefault(f, got.source.get(key, "probe"))
            for (layer, f), c in got.confidence.items():
                fl.confidence.setdefault(layer, {}).setdefault(f, c)
        if (folder / FEATURE_CLUSTERS).is_file():
            fl.clusters = _by_layer(read_feature_clusters(folder / FEATURE_CLUSTERS))
            fl.files.append(FEATURE_CLUSTERS)
        if (folder / RELATION_CLUSTERS).is_file():
            fl.relation = read_relation_clusters(folder / RELATION_CLUSTERS)
            fl.files.append(RELATION_CLUSTERS)
            bad = [c for feats in fl.clusters.values() for c in feats.values() if not 0 <= c < fl.relation["k"]]
            if bad:
                raise LarqlFormatError(f"{folder / FEATURE_CLUSTERS}: cluster {bad[0]} is out of range: "
                                          f"{RELATION_CLUSTERS} has k = {fl.relation['k']}")
        return fl

    def count(self, which: str) -> int:
        return sum(len(v) for v in getattr(self, which).values())

    def check(self, num_features) -> None:
        """Every labelled feature must exist (else the labels belong to another extraction)."""
        for name, by_layer in (("/".join(f for f in self.files if f.startswith("feature_labels")), self.labels),
                               (FEATURE_CLUSTERS, self.clusters)):
            for layer, feats in by_layer.items():
                n = num_features(layer)
                if feats and max(feats) >= n:
                    raise LarqlFormatError(f"{name}: layer {layer} feature {max(feats)} does not exist "
                                              f"(the layer has {n} features)")

    def for_layer(self, layer: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(label, cluster) per flat feature of `layer` (cluster -1 = none).

        A feature's own label wins; otherwise its cluster's name from relation_clusters.json.
        """
        label = np.full(n, None, dtype=object)
        cluster = np.full(n, -1, dtype=np.int64)
        for f, c in self.clusters.get(layer, {}).items():
            cluster[f] = c
            if self.relation is not None:
                label[f] = self.relation["labels"][c]
        for f, v in self.labels.get(layer, {}).items():
            label[f] = v
        return label, cluster


def _by_layer(flat: dict) -> dict:
    out: dict = {}
    for (layer, f), v in flat.items():
        out.setdefault(layer, {})[f] = v
    return out
