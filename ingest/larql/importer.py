"""Import a LarQL vindex (local folder or hf:// repo) into a Parquet vindex.

    from vindex.ingest.larql import import_larql
    import_larql("path/to/gemma3-4b.vindex", "lake/gemma3-4b")
    import_larql("hf://example-org/gemma-3-4b-it-vindex@main", "lake/gemma3-4b", gate_vectors=True)
    import_larql("gemma3-4b.vindex", "lake/gemma3-4b", gate_vectors=True, embeddings=True)   # + W_E

What becomes what (docs/larql.md has the whole mapping):
  down_meta.bin / down_meta.jsonl  -> `features` (one row per FFN feature; MoE -> expert, feature)
  gate_vectors.bin (on request)    -> features.vector (the W_gate row) and features.gate_norm
  embeddings.bin (on request)      -> `embeddings` (token_id, token, vector = the row of W_E): embeddings.py
  feature_labels.json, relation_clusters.json, feature_clusters.jsonl -> features.label, .cluster
  ov-gate NDJSON files             -> `ov_gate` (variant 'o')
  index.json                       -> the manifest: model config, layer bands, provenance

Layers: LarQL counts transformer blocks from 0; a vindex's `layer` i is the output of block i
(1..L, 0 being the embeddings), so LarQL layer l is stored as layer l + 1. The manifest records
the offset, and label keys / ov-gate rows are translated the same way.

Only the files listed above are read (or downloaded); the inference weights a LarQL vindex may
also hold (attn_weights.bin, up_weights.bin, ...) are never touched, nor embeddings.bin unless asked for.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

from vindex import __version__
from vindex.errors import InvalidValue, LarqlImportWarning, ManifestError, NotFound, VindexError
from vindex.layers import BLOCK_TO_LAYER, layer_of_block
from vindex.manifest import MANIFEST, load_manifest
from vindex.writer import VindexWriter

from . import format as lf
from .embeddings import embeddings_meta, write_embeddings
from .labels import FeatureLabels
from .ov_gate import read_ov_gate, write_ov_gate
from .source import LABEL_FILES, LarqlSource, fetch_from_hub, resolve_source

VECTOR_PART_BYTES = 64 << 20  # gate vectors per shard part: bounds memory whatever the layer's size
MAX_PART_ROWS = 1 << 18
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def import_larql(src, out, *, name: str | None = None, gate_vectors: bool = False, embeddings: bool = False,
                 revision: str | None = None, progress: bool = True) -> Path:
    """Write the LarQL vindex at `src` (a folder or hf://[datasets/]org/name[@rev]) as a vindex at `out`.

    gate_vectors: also import gate_vectors.bin (features.vector, the rows of W_gate).
    embeddings: also import embeddings.bin as the `embeddings` table (the rows of W_E); with the
    gate vectors, the SQL macro `describe` then also ranks features by gate . embedding.

    Everything is checked before the first shard is written: index.json, the down_meta layout,
    the gate ranges, label and ov-gate files, and the sha256 of every file read that index.json
    lists a checksum for. Re-importing the same source into the same `out` replaces the tables.
    Returns the vindex folder.
    """
    source = resolve_source(src, revision=revision, gate_vectors=gate_vectors, embeddings=embeddings,
                            progress=progress)
    folder = source.folder
    index = lf.read_index(folder)
    missing: list[str] = []
    down_name = next((n for n in (lf.DOWN_META_BIN, lf.DOWN_META_JSONL)
                      if (folder / n).is_file() and (folder / n).stat().st_size > 0), None)
    if down_name is None:
        # LarQL's client / attn / embed / router slices carry no down_meta (or a 0-byte file):
        # import what is there (the features index.json lists, gates, labels) and say so
        empty = [n for n in (lf.DOWN_META_BIN, lf.DOWN_META_JSONL) if (folder / n).is_file()]
        missing.append(f"down_meta ({'0-byte ' + empty[0] if empty else 'no down_meta.bin or down_meta.jsonl'}): "
                       "top_token, top_token_id, c_score and top_tokens are null")
        if not any(li.num_features for li in index.layers):
            raise NotFound(f"{folder}: no readable down_meta and no FFN features in {lf.INDEX} `layers`; "
                           "nothing to import")
    read = [lf.INDEX, *([down_name] if down_name else []), lf.TOKENIZER, *LABEL_FILES,
            *[p.name for p in source.ov_files]]
    verified = lf.verify_checksums(folder, index, read + ([lf.GATE_VECTORS] if gate_vectors else [])
                                   + ([lf.EMBEDDINGS] if embeddings else []), progress)
    down = DownMeta(folder / down_name if down_name else None, index)
    gates = lf.GateVectors(folder / lf.GATE_VECTORS, index) if gate_vectors else None
    emb = lf.EmbeddingsBin(folder / lf.EMBEDDINGS, index) if embeddings else None
    tokens = TokenText.load(folder / lf.TOKENIZER)
    if tokens is None:
        missing.append(f"{lf.TOKENIZER}: token strings are null (the ids are kept)")
    labels = FeatureLabels.load(folder)
    for name, reasons in labels.skipped.items():
        missing.append(f"{name}: {len(reasons)} entr{'y' if len(reasons) == 1 else 'ies'} skipped "
                       f"({'; '.join(reasons[:3])}{'; ...' if len(reasons) > 3 else ''})")
    ov = [read_ov_gate(p) for p in source.ov_files]
    layers = down.layer_numbers()
    labels.check(down.num_features)
    for line in missing:
        warnings.warn(LarqlImportWarning(f"{source.uri}: {line}"), stacklevel=2)

    writer = _open_writer(Path(out), name, index, source)
    old = {e["path"] for t in ("features", "ov_gate", "embeddings")
           for e in writer.manifest["tables"].pop(t, {}).get("files", [])}
    if gates is not None:
        writer.declare_vectors("features", index.hidden_size, lf.vector_dtype_for(index))
    written: set[str] = set()
    bar = _progress(layers, progress, "features")
    for layer in bar:
        entries = write_feature_layer(writer, index, down, layer, tokens, labels, gates)
        written.update(e["path"] for e in entries)
    ov_meta = write_ov_gate(writer, index, ov, target_text=_top_token_text(down, tokens))
    written.update(e["path"] for e in writer.manifest["tables"].get("ov_gate", {}).get("files", []))
    extraction = _extraction(index, source, down, gates is not None, verified, labels, ov_meta, missing)
    extraction["embeddings"] = None   # update() merges: a re-import without embeddings clears the old entry
    if emb is not None:
        tokenizer = tokens.tokenizer if tokens is not None else None
        written.update(e["path"] for e in write_embeddings(writer, emb, tokenizer, progress))
        extraction["embeddings"] = embeddings_meta(emb, index, tokenizer)
    writer.update(extraction=extraction)
    _remove_stale(writer.root, old - written)
    return writer.root


# -- down_meta and tokens -----------------------------------------------------------------------

class DownMeta:
    """down_meta.bin or legacy down_meta.jsonl, reconciled with index.json's per-layer counts."""

    def __init__(self, path: Path | None, index: lf.LarqlIndex):
        self.path, self.index = path, index
        counts = {li.layer: li.num_features for li in index.layers}
        self.bin = self.jsonl = None
        self.summary_records: dict[int, int] = {}   # summary-tier layer -> down_meta records not paired
        if path is None:   # no readable down_meta: index.json's layers, every feature without metadata
            top_k = index.get("down_top_k")
            self.top_k = top_k if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 0 else 0
            have = {}
        elif path.name == lf.DOWN_META_BIN:
            self.bin, self.jsonl = lf.DownMetaBin(path), None
            if self.bin.num_layers != index.num_layers:
                raise lf.LarqlFormatError(f"{path}: header says {self.bin.num_layers} layers, "
                                          f"{index.path} says num_layers = {index.num_layers}")
            self.top_k = self.bin.top_k
            have = {layer: self.bin.num_features(layer) for layer in range(self.bin.num_layers)}
        else:
            self.bin, self.jsonl = None, lf.read_down_meta_jsonl(path, counts or None)
            if self.jsonl and max(self.jsonl) >= index.num_layers:
                raise lf.LarqlFormatError(f"{path}: layer {max(self.jsonl)} is out of range "
                                          f"(num_layers = {index.num_layers} in {index.path})")
            self.top_k = max((m.token_ids.shape[1] for m in self.jsonl.values()), default=0)
            have = {layer: m.num_features for layer, m in self.jsonl.items()}
        for li in index.layers:
            # a summary-tier layer's rows are SVD directions, not features: its down_meta records
            # (whatever their count) describe down columns, so they are never paired with them
            if index.is_summary(li):
                self.summary_records[li.layer] = have.pop(li.layer, 0)
        for layer, n in counts.items():
            if have.get(layer, 0) not in (0, n):
                raise lf.LarqlFormatError(f"{path}: layer {layer} holds {have[layer]} features, "
                                          f"{index.path} says num_features = {n}")
        # a layer without records in down_meta still has features when index.json lists them
        self.counts = {layer: max(have.get(layer, 0), counts.get(layer, 0)) for layer in set(have) | set(counts)}

    def layer_numbers(self) -> list[int]:
        return sorted(layer for layer, n in self.counts.items() if n)

    def num_features(self, layer: int) -> int:
        return self.counts.get(layer, 0)

    def layer(self, layer: int) -> lf.DownMetaLayer:
        n = self.counts[layer]
        m = None
        if layer not in self.summary_records:
            m = self.bin.layer(layer) if self.bin is not None else (self.jsonl or {}).get(layer)
        if m is None or m.num_features == 0:  # no metadata at all for this layer: n rows of nulls
            k = self.top_k
            m = lf.DownMetaLayer(layer, np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros((n, k), np.int64),
                                 np.zeros((n, k), np.float32), np.zeros(n, bool), np.zeros((n, k), bool))
        return m


class TokenText:
    """Token id -> text, as LarQL shows it: decode([id]) with special tokens skipped, then strip.

    Each id is decoded once (cached); ids the tokenizer does not know give null.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.cache: dict[int, str] = {}

    @classmethod
    def load(cls, path: Path) -> "TokenText | None":
        if not path.is_file():
            return None
        from tokenizers import Tokenizer
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise lf.LarqlFormatError(f"{path}: not a tokenizers tokenizer.json ({e})") from None

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        uniq, inverse = np.unique(ids, return_inverse=True)
        # an id is known when the tokenizer has a token for it: added tokens may sit at or above
        # get_vocab_size(), and ids past every token decode to "" (not text) and stay null
        missing = [int(i) for i in uniq if int(i) not in self.cache and 0 <= i < 2 ** 32
                   and self.tokenizer.id_to_token(int(i)) is not None]
        if missing:
            texts = self.tokenizer.decode_batch([[i] for i in missing], skip_special_tokens=True)
            self.cache.update((i, t.strip()) for i, t in zip(missing, texts))
        values = np.array([self.cache.get(int(i)) for i in uniq] + [None], dtype=object)[:-1]
        return values[inverse.reshape(ids.shape)] if len(ids) else np.empty(ids.shape, dtype=object)


# -- writing ------------------------------------------------------------------------------------

def write_feature_layer(writer: VindexWriter, index: lf.LarqlIndex, down: DownMeta, layer: int,
                        tokens: TokenText | None, labels: FeatureLabels, gates: lf.GateVectors | None) -> list[dict]:
    """Write one LarQL layer's features (in parts when gate vectors make it large); commit them."""
    m = down.layer(layer)
    n = m.num_features
    li = index.layer(layer) or lf.LarqlLayer(layer, n, 0, 0)
    label, cluster = labels.for_layer(layer, n)
    step = MAX_PART_ROWS
    if gates is not None:
        step = max(1, min(step, VECTOR_PART_BYTES // (index.hidden_size * 4)))
    entries = []
    for part, start in enumerate(range(0, n, step)):
        stop = min(n, start + step)
        cols = feature_columns(m, li, start, stop, tokens)
        cols["label"] = label[start:stop].tolist()
        cols["cluster"] = pa.array(cluster[start:stop], pa.int32(), mask=cluster[start:stop] < 0)
        if gates is not None:
            vectors = gates.rows(layer, start, stop)
            # gate_norm = ||W_gate[f, :]||_2, accumulated in float32 from the stored values
            cols["gate_norm"] = np.linalg.norm(vectors.astype(np.float32), axis=1)
            cols["vector"] = vectors
        try:
            entries.append(writer.write_shard("features", cols, partition={"layer": layer_of_block(layer)},
                                              part=part, commit=False))
        except VindexError as e:
            source = gates.path if gates is not None and "vector" in str(e) else down.path
            raise type(e)(f"{source}: LarQL layer {layer}, features {start}..{stop - 1}: {e}") from None
    writer.add_files("features", entries)
    return entries


def feature_columns(m: lf.DownMetaLayer, li: lf.LarqlLayer, start: int, stop: int,
                    tokens: TokenText | None) -> dict:
    """The features columns of flat features start..stop of one layer's down_meta."""
    flat = np.arange(start, stop)
    expert, feature = li.split(flat)
    has = m.has_meta[start:stop]
    top_id = m.top_token_id[start:stop]
    ids, logits = m.token_ids[start:stop], m.logits[start:stop]
    valid = m.pair_valid[start:stop] & has[:, None]
    if max(int(top_id.max(initial=0)), int(ids.max(initial=0))) > np.iinfo(np.int32).max:
        raise lf.LarqlFormatError(f"layer {m.layer}: a token id does not fit int32")

    def text(ids_, given):
        out = tokens(ids_) if tokens is not None else np.full(ids_.shape, None, dtype=object)
        if given is not None:  # legacy jsonl carries its own strings
            g = np.array([None if s is None else str(s).strip() for s in given.reshape(-1)] + [None],
                         dtype=object)[:-1].reshape(given.shape)
            out = np.where(g != None, g, out)  # noqa: E711 (elementwise)
        return out

    top_token = text(top_id, None if m.top_token is None else m.top_token[start:stop])
    pair_text = text(ids[valid], None if m.tokens is None else m.tokens[start:stop][valid])
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    struct = pa.StructArray.from_arrays(
        [pa.array(ids[valid], pa.int32()), pa.array(pair_text.tolist(), pa.string()),
         pa.array(logits[valid], pa.float32())],
        fields=[pa.field("token_id", pa.int32(), False), pa.field("token", pa.string()),
                pa.field("logit", pa.float32(), False)])
    return {
        "expert": None if expert is None else expert.astype(np.int32),
        "feature": feature.astype(np.int32),
        "top_token_id": pa.array(top_id, pa.int32(), mask=~has),
        "top_token": pa.array(np.where(has, top_token, None).tolist(), pa.string()),
        "c_score": pa.array(m.c_score[start:stop], pa.float32(), mask=~has),
        "top_tokens": pa.ListArray.from_arrays(pa.array(offsets), struct, mask=pa.array(~has)),
    }


def _open_writer(out: Path, name: str | None, index: lf.LarqlIndex, source: LarqlSource) -> VindexWriter:
    if name is None:
        name = out.resolve().name if _NAME.match(out.resolve().name) else \
            re.sub(r"[^A-Za-z0-9._-]", "-", index.model.split("/")[-1]).lstrip("._-") or "larql"
    if not _NAME.match(name):
        raise InvalidValue(f"name {name!r}: a vindex name is letters, digits and ._- (starting with a letter or digit)")
    if (out / MANIFEST).exists():
        prev = load_manifest(out).get("extraction", {})
        if prev.get("source") != "larql" or prev.get("imported_from", {}).get("uri") != source.provenance.get("uri"):
            raise ManifestError(f"{out}: already holds a vindex that is not an import of {source.uri}; "
                                "choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise ManifestError(f"{out}: exists and is not empty (and not a vindex); choose another --out")
    return VindexWriter.create(out, name, _model(index), {"source": "larql"}, exist_ok=True)


def _model(index: lf.LarqlIndex) -> dict:
    """The manifest's model block from index.json (and its model_config)."""
    raw, mc = index.raw, index.raw.get("model_config") or {}
    src = raw.get("source") or {}

    def pos_int(v):
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else None

    model = {"id": index.model, "revision": src.get("huggingface_revision"),
             "family": raw.get("family") or mc.get("model_type"), "source": "larql",
             "n_layers": index.num_layers, "d_model": index.hidden_size,
             "d_ffn": pos_int(raw.get("intermediate_size")), "n_heads": pos_int(mc.get("num_q_heads")),
             "n_kv_heads": pos_int(mc.get("num_kv_heads")), "head_dim": pos_int(mc.get("head_dim")),
             "vocab_size": pos_int(raw.get("vocab_size")), "model_type": mc.get("model_type"),
             "rope_base": mc.get("rope_base"), "sliding_window": mc.get("sliding_window"),
             "tie_word_embeddings": mc.get("tie_word_embeddings"), "embed_scale": raw.get("embed_scale"),
             "moe": mc.get("moe")}
    bands = raw.get("layer_bands")
    if isinstance(bands, dict):
        model["layer_bands"] = {k: [layer_of_block(x) for x in v] for k, v in bands.items()
                                if isinstance(v, list) and all(isinstance(x, int) for x in v)}
    return {k: v for k, v in model.items() if v is not None}


def _top_token_text(down: DownMeta, tokens: TokenText | None):
    """(LarQL layer, flat features) -> the features' top-token text (None without metadata)."""
    def text(layer: int, flat: np.ndarray) -> np.ndarray:
        out = np.full(len(flat), None, dtype=object)
        if layer not in down.counts:
            return out
        m = down.layer(layer)
        ok = (flat >= 0) & (flat < m.num_features)
        ok[ok] &= m.has_meta[flat[ok]]
        if m.top_token is not None:
            out[ok] = [None if t is None else str(t).strip() for t in m.top_token[flat[ok]]]
        if tokens is not None:
            decoded = tokens(m.top_token_id[flat[ok]])
            out[ok] = np.where(out[ok] != None, out[ok], decoded)  # noqa: E711 (elementwise)
        return out
    return text


def _moe_meta(index: lf.LarqlIndex, down: DownMeta) -> dict | None:
    """What the MoE layers hold beyond routed experts: a shared expert's rows, summary-tier rows."""
    shared = {li.layer: li.shared_features for li in index.layers if li.shared_features}
    summary = [li for li in index.layers if index.is_summary(li)]
    if not shared and not summary:
        return None
    out = {}
    if shared:
        out["shared_expert"] = {
            "expert": next(li.num_experts for li in index.layers if li.shared_features),
            "features": {str(layer_of_block(k)): v for k, v in shared.items()},
            "note": "LarQL's non-streaming build appends the shared expert's rows after the routed experts; "
                    "they are stored as expert = num_experts (LarQL's own id for it), feature counted from 0"}
    if summary:
        out["summary_tier"] = {
            "layers": [layer_of_block(li.layer) for li in summary],
            "features_per_expert": sorted({li.num_features_per_expert for li in summary}),
            "moe_intermediate_size": index.moe_intermediate_size,
            "meaning": "each row of these layers is an SVD direction of one expert's W_gate "
                       "(`--summary-features-per-expert K`), not a row of W_gate: features.vector holds that "
                       "direction, and no down column belongs to it, so top_token, c_score and top_tokens are "
                       "null there",
            "down_meta_records_not_paired": {str(layer_of_block(k)): v for k, v in down.summary_records.items()}}
    return out


def _label_meta(labels: FeatureLabels, index: lf.LarqlIndex) -> dict:
    """Label files, counts and each label's provenance (LarQL shows file labels tagged "(probe)")."""
    by_source: dict[str, int] = {}
    for feats in labels.source.values():
        for src in feats.values():
            by_source[src] = by_source.get(src, 0) + 1
    n_cluster_only = sum(1 for layer, feats in labels.clusters.items() for f in feats
                         if labels.relation is not None and f not in labels.labels.get(layer, {}))
    if n_cluster_only:
        by_source["cluster"] = n_cluster_only
    out = {"files": labels.files, "n_labels": labels.count("labels"), "n_clustered": labels.count("clusters"),
           "sources": by_source,
           "source_note": "features.label comes from a label file (LarQL tags these \"(probe)\": confirmed by "
                          "probing) or, where a feature has none, from its relation cluster's name"}
    if labels.confidence:
        out["confidence"] = {
            "note": "the probe's confidence per labelled feature (feature_labels_rich.json or rich records), "
                    "keyed by vindex layer, then 'feature' (dense) or 'expert:feature' (MoE)",
            "by_layer": _confidence_by_layer(labels, index)}
    if labels.skipped:
        out["skipped"] = labels.skipped
    return out


def _confidence_by_layer(labels: FeatureLabels, index: lf.LarqlIndex) -> dict:
    out = {}
    for layer, feats in sorted(labels.confidence.items()):
        li = index.layer(layer)
        flat = np.array(sorted(feats), dtype=np.int64)
        expert, feature = li.split(flat) if li is not None else (None, flat)
        keys = [str(f) if expert is None else f"{e}:{f}" for e, f in
                zip(expert if expert is not None else [None] * len(flat), feature)]
        out[str(layer_of_block(layer))] = {k: feats[int(f)] for k, f in zip(keys, flat)}
    return out


def _extraction(index, source, down, gate_vectors, verified, labels, ov_meta, missing=()) -> dict:
    raw = index.raw
    larql = {k: raw.get(k) for k in ("version", "extract_level", "dtype", "down_top_k", "embed_scale",
                                     "layer_bands", "family", "quant", "fp4", "ffn_layout")
             if raw.get(k) is not None}
    larql.update({k: v for k, v in (raw.get("source") or {}).items() if v is not None})
    larql["checksums_verified"] = verified
    ex = {"source": "larql", "tool": f"vindex-lake {__version__} import-larql", "imported_from": source.provenance,
          "larql": larql, "layer_offset": BLOCK_TO_LAYER,
          "layer_convention": "layer = LarQL layer + 1: layer i is the output of block i (LarQL counts blocks from 0)",
          "top_k": down.top_k,
          "unembedding": {"kind": "embedding", "tensor": None, "final_norm": None,
                          "note": "LarQL down_meta: logits = W_E . W_down[:, f] with the raw input embedding W_E "
                                  "(no embed scale, no final norm, no lm_head); c_score = top-1 logit"},
          "down_meta": ({"file": down.path.name, "top_k": down.top_k,
                         **({"magic": "b'DMET' (literal)"} if getattr(down.bin, "magic_bytes", "") == "DMET" else {})}
                        if down.path is not None else None),
          "gate_vectors": ({"file": lf.GATE_VECTORS, "dtype": index.dtype, "column": "features.vector",
                            "meaning": "row f of W_gate (W_in for GPT-2 style FFNs)"
                            + ("; in summary-tier layers an SVD direction (extraction.moe.summary_tier)"
                               if any(index.is_summary(li) for li in index.layers) else "")} if gate_vectors else None),
          "labels": _label_meta(labels, index)}
    if missing:
        ex["missing"] = list(missing)
    moe = _moe_meta(index, down)
    if moe is not None:
        ex["moe"] = moe
    if labels.relation is not None:
        ex["clusters"] = labels.relation
    if ov_meta is not None:
        ex["ov_gate"] = ov_meta
    return ex


def _remove_stale(root: Path, paths: set[str]) -> None:
    """Delete shards a previous import of the same source wrote and this one did not."""
    from vindex.files import safe_join
    for rel in paths:
        safe_join(root, rel).unlink(missing_ok=True)


def _progress(items, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, unit="layer")


__all__ = ["import_larql", "resolve_source", "fetch_from_hub", "LarqlSource"]
