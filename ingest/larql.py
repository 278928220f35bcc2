"""Import a LarQL vindex (local folder or hf:// repo) into a Parquet vindex.

    from vindex.ingest.larql import import_larql
    import_larql("path/to/gemma3-4b.vindex", "lake/gemma3-4b")
    import_larql("hf://chrishayuk/gemma-3-4b-it-vindex@main", "lake/gemma3-4b", gate_vectors=True)

What becomes what (docs/larql.md has the whole mapping):
  down_meta.bin / down_meta.jsonl  -> `features` (one row per FFN feature; MoE -> expert, feature)
  gate_vectors.bin (on request)    -> features.vector (the W_gate row) and features.gate_norm
  feature_labels.json, relation_clusters.json, feature_clusters.jsonl -> features.label, .cluster
  ov-gate NDJSON files             -> `ov_gate` (variant 'o')
  index.json                       -> the manifest: model config, layer bands, provenance

Layers: LarQL counts transformer blocks from 0; a vindex's `layer` i is the output of block i
(1..L, 0 being the embeddings), so LarQL layer l is stored as layer l + 1. The manifest records
the offset, and label keys / ov-gate rows are translated the same way.

Only the files listed above are read (or downloaded); the inference weights a LarQL vindex may
also hold (attn_weights.bin, embeddings.bin, ...) are never touched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa

from vindex import __version__
from vindex.errors import InvalidValue, ManifestError, NotFound, VindexError
from vindex.manifest import MANIFEST, load_manifest
from vindex.writer import VindexWriter

from . import larql_format as lf

LAYER_OFFSET = 1  # vindex layer = LarQL layer + 1 (layer i = output of block i; LarQL blocks count from 0)
VECTOR_PART_BYTES = 64 << 20  # gate vectors per shard part: bounds memory whatever the layer's size
MAX_PART_ROWS = 1 << 18
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_OV_NAME = re.compile(r"(ov[_-]?gate.*\.(jsonl|ndjson)|\.ndjson)$", re.IGNORECASE)
_LABEL_FILES = (lf.FEATURE_LABELS, lf.RELATION_CLUSTERS, lf.FEATURE_CLUSTERS)


def import_larql(src, out, *, name: str | None = None, gate_vectors: bool = False,
                 revision: str | None = None, progress: bool = True) -> Path:
    """Write the LarQL vindex at `src` (a folder or hf://[datasets/]org/name[@rev]) as a vindex at `out`.

    Everything is checked before the first shard is written: index.json, the down_meta layout,
    the gate ranges, label and ov-gate files, and the sha256 of every file read that index.json
    lists a checksum for. Re-importing the same source into the same `out` replaces the tables.
    Returns the vindex folder.
    """
    source = resolve_source(src, revision=revision, gate_vectors=gate_vectors, progress=progress)
    folder = source.folder
    index = lf.read_index(folder)
    down_name = lf.DOWN_META_BIN if (folder / lf.DOWN_META_BIN).is_file() else lf.DOWN_META_JSONL
    if not (folder / down_name).is_file():
        raise NotFound(f"{folder}: neither {lf.DOWN_META_BIN} nor {lf.DOWN_META_JSONL}; nothing to import "
                       "(LarQL writes down_meta at every extract level)")
    read = [lf.INDEX, down_name, lf.TOKENIZER, *_LABEL_FILES, *[p.name for p in source.ov_files]]
    verified = lf.verify_checksums(folder, index, read + ([lf.GATE_VECTORS] if gate_vectors else []), progress)
    down = DownMeta(folder / down_name, index)
    gates = lf.GateVectors(folder / lf.GATE_VECTORS, index) if gate_vectors else None
    tokens = TokenText.load(folder / lf.TOKENIZER)
    labels = FeatureLabels.load(folder)
    ov = [lf.read_ov_gate(p) for p in source.ov_files]
    layers = down.layer_numbers()
    labels.check(down.num_features)

    writer = _open_writer(Path(out), name, index, source)
    old = {e["path"] for t in ("features", "ov_gate") for e in writer.manifest["tables"].pop(t, {}).get("files", [])}
    if gates is not None:
        writer.declare_vectors("features", index.hidden_size, lf.vector_dtype_for(index))
    written: set[str] = set()
    bar = _progress(layers, progress, "features")
    for layer in bar:
        entries = write_feature_layer(writer, index, down, layer, tokens, labels, gates)
        written.update(e["path"] for e in entries)
    ov_meta = write_ov_gate(writer, index, ov)
    written.update(e["path"] for e in writer.manifest["tables"].get("ov_gate", {}).get("files", []))
    writer.update(extraction=_extraction(index, source, down, gates is not None, verified, labels, ov_meta))
    _remove_stale(writer.root, old - written)
    return writer.root


# -- the source: a local folder or a Hub repo ---------------------------------------------------

@dataclass
class LarqlSource:
    """A LarQL vindex on local disk, and where it came from."""
    uri: str
    folder: Path
    provenance: dict = field(default_factory=dict)
    ov_files: list[Path] = field(default_factory=list)


def is_ov_gate_name(filename: str) -> bool:
    return bool(_OV_NAME.search(filename))


def resolve_source(src, *, revision: str | None = None, gate_vectors: bool = False,
                   progress: bool = True) -> LarqlSource:
    """A local folder as is; an hf:// repo downloaded (only the files an import reads)."""
    uri = str(src)
    if uri.startswith("hf://"):
        return fetch_from_hub(uri, revision=revision, gate_vectors=gate_vectors, progress=progress)
    if revision is not None:
        raise InvalidValue(f"revision={revision!r} only applies to hf:// sources, not the folder {uri!r}")
    folder = Path(src)
    if not folder.is_dir():
        raise NotFound(f"{folder}: no such folder (a LarQL vindex is a folder holding index.json)")
    ov = sorted(p for p in folder.iterdir() if p.suffix in (".jsonl", ".ndjson") and p.is_file()
                and p.name not in (lf.DOWN_META_JSONL, lf.FEATURE_CLUSTERS) and lf.ov_gate_header(p))
    return LarqlSource(uri, folder, {"uri": str(folder.resolve())}, ov)


def parse_hf_uri(uri: str) -> tuple[str, str, str | None, str]:
    """hf://[datasets/|models/]org/name[@rev][/subfolder] -> (repo_type, repo_id, revision, subfolder)."""
    parts = uri[len("hf://"):].strip("/").split("/")
    repo_type = "model"
    if parts and parts[0] in ("datasets", "models", "spaces"):
        kind = parts.pop(0)
        if kind == "spaces":
            raise InvalidValue(f"{uri}: a Space is not a LarQL vindex; use a model or dataset repo")
        repo_type = "dataset" if kind == "datasets" else "model"
    if len(parts) < 2 or not all(parts[:2]):
        raise InvalidValue(f"{uri}: expected hf://[datasets/]org/name[@revision]")
    name, rev = parts[1], None
    if "@" in name:
        name, rev = name.split("@", 1)
        rev = unquote(rev)  # refs%2Fpr%2F1, as HfFileSystem writes it
    return repo_type, f"{parts[0]}/{name}", rev, "/".join(parts[2:])


def fetch_from_hub(uri: str, *, revision: str | None = None, gate_vectors: bool = False,
                   progress: bool = True) -> LarqlSource:
    """Download the files an import needs from a Hub repo (never the inference weights)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    repo_type, repo_id, rev, sub = parse_hf_uri(uri)
    if revision is not None and rev is not None and revision != rev:
        raise InvalidValue(f"{uri}: names revision {rev!r} but revision={revision!r} was also given")
    rev = revision or rev
    try:
        info = HfApi().repo_info(repo_id, repo_type=repo_type, revision=rev)
    except RepositoryNotFoundError:
        raise NotFound(f"{uri}: no {repo_type} repo {repo_id!r} on the Hub (or it is private: log in)") from None
    except RevisionNotFoundError:
        raise NotFound(f"{uri}: {repo_id!r} has no revision {rev!r}") from None
    except Exception as e:  # network failures come in many types (httpx, OSError, HfHubHTTPError)
        raise VindexError(f"{uri}: cannot reach the Hub ({type(e).__name__}: {e})") from None
    prefix = f"{sub}/" if sub else ""
    present = {s.rfilename[len(prefix):] for s in info.siblings or [] if s.rfilename.startswith(prefix)}
    present = {f for f in present if "/" not in f}
    if lf.INDEX not in present:
        raise NotFound(f"{uri}: no {lf.INDEX} in {prefix or 'the repo root'}; is it a LarQL vindex?")
    if gate_vectors and lf.GATE_VECTORS not in present:
        raise NotFound(f"{uri}: gate vectors were asked for, but the repo has no {lf.GATE_VECTORS}")
    wanted = {lf.INDEX, lf.TOKENIZER, lf.DOWN_META_BIN, lf.DOWN_META_JSONL, *_LABEL_FILES}
    if gate_vectors:
        wanted.add(lf.GATE_VECTORS)
    chosen = sorted(f for f in present if f in wanted or is_ov_gate_name(f))
    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        root = snapshot_download(repo_id, repo_type=repo_type, revision=info.sha,
                                 allow_patterns=[prefix + f for f in chosen])
    except Exception as e:
        raise VindexError(f"{uri}: download failed ({type(e).__name__}: {e})") from None
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    folder = Path(root) / sub if sub else Path(root)
    ov = [folder / f for f in chosen if is_ov_gate_name(f) and lf.ov_gate_header(folder / f)]
    return LarqlSource(uri, folder, {"uri": uri, "repo_id": repo_id, "repo_type": repo_type,
                                     "revision": info.sha, "subfolder": sub or None, "files": chosen}, ov)


# -- down_meta, tokens, labels ------------------------------------------------------------------

class DownMeta:
    """down_meta.bin or legacy down_meta.jsonl, reconciled with index.json's per-layer counts."""

    def __init__(self, path: Path, index: lf.LarqlIndex):
        self.path, self.index = path, index
        counts = {li.layer: li.num_features for li in index.layers}
        if path.name == lf.DOWN_META_BIN:
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
        m = self.bin.layer(layer) if self.bin is not None else self.jsonl.get(layer)
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
        missing = [int(i) for i in uniq if int(i) not in self.cache and 0 <= i < self.size]
        if missing:
            texts = self.tokenizer.decode_batch([[i] for i in missing], skip_special_tokens=True)
            self.cache.update((i, t.strip()) for i, t in zip(missing, texts))
        values = np.array([self.cache.get(int(i)) for i in uniq] + [None], dtype=object)[:-1]
        return values[inverse.reshape(ids.shape)] if len(ids) else np.empty(ids.shape, dtype=object)


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
        if (folder / lf.FEATURE_LABELS).is_file():
            fl.labels = _by_layer(lf.read_feature_labels(folder / lf.FEATURE_LABELS))
            fl.files.append(lf.FEATURE_LABELS)
        if (folder / lf.FEATURE_CLUSTERS).is_file():
            fl.clusters = _by_layer(lf.read_feature_clusters(folder / lf.FEATURE_CLUSTERS))
            fl.files.append(lf.FEATURE_CLUSTERS)
        if (folder / lf.RELATION_CLUSTERS).is_file():
            fl.relation = lf.read_relation_clusters(folder / lf.RELATION_CLUSTERS)
            fl.files.append(lf.RELATION_CLUSTERS)
            bad = [c for feats in fl.clusters.values() for c in feats.values() if not 0 <= c < fl.relation["k"]]
            if bad:
                raise lf.LarqlFormatError(f"{folder / lf.FEATURE_CLUSTERS}: cluster {bad[0]} is out of range: "
                                          f"{lf.RELATION_CLUSTERS} has k = {fl.relation['k']}")
        return fl

    def count(self, which: str) -> int:
        return sum(len(v) for v in getattr(self, which).values())

    def check(self, num_features) -> None:
        """Every labelled feature must exist (else the labels belong to another extraction)."""
        for name, by_layer in ((lf.FEATURE_LABELS, self.labels), (lf.FEATURE_CLUSTERS, self.clusters)):
            for layer, feats in by_layer.items():
                n = num_features(layer)
                if feats and max(feats) >= n:
                    raise lf.LarqlFormatError(f"{name}: layer {layer} feature {max(feats)} does not exist "
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
            entries.append(writer.write_shard("features", cols, partition={"layer": layer + LAYER_OFFSET},
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


def write_ov_gate(writer: VindexWriter, index: lf.LarqlIndex, files: list[lf.OvGateRows]) -> dict | None:
    """ov-gate NDJSON rows -> `ov_gate` (variant 'o'), one shard per layer, rank 1 = strongest."""
    if not files:
        return None
    cols = {k: np.concatenate([getattr(f, k) for f in files])
            for k in ("layer", "head", "feature_layer", "feature", "coupling", "total_coupling")}
    origin = np.concatenate([np.full(len(f.layer), i) for i, f in enumerate(files)])
    for key in ("layer", "feature_layer"):
        if len(cols[key]) and cols[key].max() >= index.num_layers:
            i = int(np.argmax(cols[key]))
            raise lf.LarqlFormatError(f"{files[origin[i]].path}: {key} {cols[key][i]} is out of range "
                                      f"(num_layers = {index.num_layers})")
    keys = np.stack([cols["layer"], cols["head"], cols["feature_layer"], cols["feature"]], axis=1)
    uniq, first, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = uniq[np.argmax(counts > 1)]
        where = sorted({files[o].path.name for o in origin[(keys == dup).all(axis=1)]})
        raise lf.LarqlFormatError(f"ov-gate files {where}: layer {dup[0]} head {dup[1]} -> layer {dup[2]} "
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
            "feature_layer": (cols["feature_layer"][sel] + LAYER_OFFSET).astype(np.int32),
            "feature": feature.astype(np.int32), "expert": pa.array(expert, pa.int32(), mask=expert < 0),
            "coupling": cols["coupling"][sel], "total_coupling": cols["total_coupling"][sel],
            "rank": rank.astype(np.int32)}, partition={"layer": int(layer) + LAYER_OFFSET})
    h = files[0].header
    return {"files": [f.path.name for f in files], "variant": "o", "top_k": h.get("top_k"),
            "formula": "coupling_f = ||W_gate[f, :] . W_O[:, h*head_dim:(h+1)*head_dim]||_2, same layer",
            "rounding": "LarQL rounds coupling to 3 decimals and total_coupling to 1"}


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
        model["layer_bands"] = {k: [int(x) + LAYER_OFFSET for x in v] for k, v in bands.items()
                                if isinstance(v, list) and all(isinstance(x, int) for x in v)}
    return {k: v for k, v in model.items() if v is not None}


def _extraction(index, source, down, gate_vectors, verified, labels, ov_meta) -> dict:
    raw = index.raw
    larql = {k: raw.get(k) for k in ("version", "extract_level", "dtype", "down_top_k", "embed_scale",
                                     "layer_bands", "family") if raw.get(k) is not None}
    larql.update({k: v for k, v in (raw.get("source") or {}).items() if v is not None})
    larql["checksums_verified"] = verified
    ex = {"source": "larql", "tool": f"vindex-lake {__version__} import-larql", "imported_from": source.provenance,
          "larql": larql, "layer_offset": LAYER_OFFSET,
          "layer_convention": "layer = LarQL layer + 1: layer i is the output of block i (LarQL counts blocks from 0)",
          "top_k": down.top_k,
          "unembedding": {"kind": "embedding", "tensor": None, "final_norm": None,
                          "note": "LarQL down_meta: logits = W_E . W_down[:, f] with the raw input embedding W_E "
                                  "(no embed scale, no final norm, no lm_head); c_score = top-1 logit"},
          "down_meta": {"file": down.path.name, "top_k": down.top_k},
          "gate_vectors": ({"file": lf.GATE_VECTORS, "dtype": index.dtype, "column": "features.vector",
                            "meaning": "row f of W_gate (W_in for GPT-2 style FFNs)"} if gate_vectors else None),
          "labels": {"files": labels.files, "n_labels": labels.count("labels"), "n_clustered": labels.count("clusters")}}
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


__all__ = ["import_larql", "resolve_source", "parse_hf_uri", "fetch_from_hub", "LarqlSource", "LAYER_OFFSET"]
