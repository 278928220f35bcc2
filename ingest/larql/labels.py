"""LarQL's label files: feature_labels.json, feature_clusters.jsonl and relation_clusters.json.

LarQL labels FFN features two ways: by name (feature_labels.json, keyed "L<layer>_F<feature>" in
its code and "<layer>:<feature>" in older documents) and by cluster (feature_clusters.jsonl gives
each feature a cluster index, relation_clusters.json names the clusters). Layers and features are
LarQL's: 0-based blocks, flat feature indices (experts contiguous).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vindex.files import parse_json, read_json

from .format import FEATURE_CLUSTERS, FEATURE_LABELS, RELATION_CLUSTERS, LarqlFormatError

KEY_LF = re.compile(r"^L(\d+)_F(\d+)$")
_KEY_COLON = re.compile(r"^(\d+):(\d+)$")


def _load_json(path: Path):
    return read_json(path, LarqlFormatError)


def read_feature_labels(path: str | Path) -> dict[tuple[int, int], str]:
    """feature_labels.json -> {(layer, flat feature): label}; keys "L<l>_F<f>" or "<l>:<f>"."""
    path = Path(path)
    raw = _load_json(path)
    if not isinstance(raw, dict):
        raise LarqlFormatError(f"{path}: expected an object of feature key -> label")
    out = {}
    for key, label in raw.items():
        m = KEY_LF.match(key) or _KEY_COLON.match(key)
        if not m:
            raise LarqlFormatError(f"{path}: key {key!r} is neither 'L<layer>_F<feature>' nor '<layer>:<feature>'")
        if label is not None and not isinstance(label, str):
            raise LarqlFormatError(f"{path}: label of {key!r} must be a string, got {label!r}")
        out[(int(m.group(1)), int(m.group(2)))] = label
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
    """Labels and clusters from feature_labels.json, feature_clusters.jsonl, relation_clusters.json.

    Both per-feature maps are keyed {larql layer: {flat feature: value}}.
    """
    labels: dict = field(default_factory=dict)
    clusters: dict = field(default_factory=dict)
    relation: dict | None = None   # relation_clusters.json without the centres
    files: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path) -> "FeatureLabels":
        fl = cls()
        if (folder / FEATURE_LABELS).is_file():
            fl.labels = _by_layer(read_feature_labels(folder / FEATURE_LABELS))
            fl.files.append(FEATURE_LABELS)
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
        for name, by_layer in ((FEATURE_LABELS, self.labels), (FEATURE_CLUSTERS, self.clusters)):
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
