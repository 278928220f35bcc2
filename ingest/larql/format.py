"""Readers for the files of a LarQL vindex (format v2), checked against index.json.

LarQL (a Rust tool) stores one model as raw little-endian binaries plus JSON; see
docs/larql.md. Where LarQL's written spec and its writer disagree,
these readers follow the writer. Every reader checks sizes before it trusts them, because a
download cut short or a file from another extraction otherwise turns into silent garbage: each
error names the file and says what does not add up. Large files are memory-mapped and handed out
one layer at a time; nothing here reads a whole gate_vectors.bin into memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vindex.errors import ChecksumError, LarqlFormatError
from vindex.files import parse_json, read_json, sha256_file

INDEX = "index.json"
DOWN_META_BIN = "down_meta.bin"
DOWN_META_JSONL = "down_meta.jsonl"
GATE_VECTORS = "gate_vectors.bin"
EMBEDDINGS = "embeddings.bin"
TOKENIZER = "tokenizer.json"
FEATURE_LABELS = "feature_labels.json"
FEATURE_LABELS_RICH = "feature_labels_rich.json"
RELATION_CLUSTERS = "relation_clusters.json"
FEATURE_CLUSTERS = "feature_clusters.jsonl"

# LarQL counts transformer blocks from 0; its layer l is stored at vindex layer `layer_of_block(l)`
# (vindex.layers: the one block <-> layer convention, as `vindex build --weights` uses it).

DOWN_META_MAGIC = 0x444D4554  # "DMET"; the bytes b"TEMD" on disk (little-endian u32)
# Some LarQL writers put the literal bytes b"DMET" first (read as a little-endian u32: 0x54454D44);
# LarQL's readers accept both, so this one does too. The rest of the file is little-endian either way.
DOWN_META_MAGIC_LITERAL = 0x54454D44
DOWN_META_VERSION = 1
_HEADER = np.dtype([("magic", "<u4"), ("version", "<u4"), ("num_layers", "<u4"), ("top_k", "<u4")])

# index.json `dtype` -> the element type on disk. bf16 has no numpy type: it is read as raw u16.
DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "bf16": np.dtype("<u2")}


# -- index.json ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LarqlLayer:
    """One entry of index.json `layers`: a layer's FFN features and their bytes in gate_vectors.bin."""
    layer: int
    num_features: int
    offset: int
    length: int
    num_experts: int | None = None
    num_features_per_expert: int | None = None

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)

    @property
    def routed_features(self) -> int:
        """Rows of the routed experts (num_experts x num_features_per_expert); 0 for a dense layer."""
        return self.num_experts * self.num_features_per_expert if self.is_moe else 0

    @property
    def shared_features(self) -> int:
        """Rows LarQL's non-streaming build appends after the routed experts: the shared expert's."""
        return self.num_features - self.routed_features if self.is_moe else 0

    def split(self, flat: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Flat feature index -> (expert, feature within the expert); experts are contiguous.

        Rows past the routed experts belong to the shared expert, which LarQL numbers
        `num_experts` (one past the last routed expert); its features count from 0.
        """
        flat = np.asarray(flat, dtype=np.int64)
        if not self.is_moe:
            return None, flat
        routed = self.routed_features
        expert = np.where(flat < routed, flat // self.num_features_per_expert, self.num_experts)
        feature = np.where(flat < routed, flat % self.num_features_per_expert, flat - routed)
        return expert, feature


@dataclass
class LarqlIndex:
    """index.json, with the fields an importer needs checked and typed."""
    path: Path
    raw: dict
    version: int
    model: str
    dtype: str
    num_layers: int
    hidden_size: int
    layers: list[LarqlLayer] = field(default_factory=list)

    @property
    def element_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    def layer(self, layer: int) -> LarqlLayer | None:
        return next((li for li in self.layers if li.layer == layer), None)

    def get(self, key: str, default=None):
        return self.raw.get(key, default)

    @property
    def checksums(self) -> dict[str, str]:
        return dict(self.raw.get("checksums") or {})

    @property
    def moe_intermediate_size(self) -> int | None:
        moe = (self.raw.get("model_config") or {}).get("moe")
        v = moe.get("moe_intermediate_size") if isinstance(moe, dict) else None
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    def is_summary(self, li: LarqlLayer) -> bool:
        """A summary-tier MoE layer (`--summary-features-per-expert K`): K rows per expert that are
        SVD directions of the expert's W_gate, fewer than its moe_intermediate_size real rows."""
        m = self.moe_intermediate_size
        return bool(li.is_moe and m and li.num_features_per_expert < m)


def _int_field(obj: dict, key: str, where: str, required: bool = True, minimum: int = 0) -> int | None:
    v = obj.get(key)
    if v is None:
        if required:
            raise LarqlFormatError(f"{where}: missing required field {key!r}")
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise LarqlFormatError(f"{where}: field {key!r} must be an integer >= {minimum}, got {v!r}")
    return v


def read_index(folder: str | Path) -> LarqlIndex:
    """Read and check <folder>/index.json (LarQL format version 1 or 2)."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise LarqlFormatError(f"{path}: not found; a LarQL vindex folder holds index.json")
    raw = read_json(path, LarqlFormatError)
    if not isinstance(raw, dict):
        raise LarqlFormatError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("version", 2)
    if version not in (1, 2):
        raise LarqlFormatError(f"{path}: LarQL index version {version!r} is not supported (this reader knows 1 and 2)")
    dtype = str(raw.get("dtype") or "f32").lower()
    dtype = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(dtype, dtype)
    if dtype not in DTYPES:
        raise LarqlFormatError(f"{path}: dtype {raw.get('dtype')!r} is not one of {sorted(DTYPES)}")
    index = LarqlIndex(path=path, raw=raw, version=version, model=str(raw.get("model") or "unknown"),
                       dtype=dtype, num_layers=_int_field(raw, "num_layers", str(path), minimum=1),
                       hidden_size=_int_field(raw, "hidden_size", str(path), minimum=1))
    layers = raw.get("layers") or []
    if not isinstance(layers, list):
        raise LarqlFormatError(f"{path}: `layers` must be a list, got {type(layers).__name__}")
    seen = set()
    moe = (raw.get("model_config") or {}).get("moe") or {}
    moe = moe if isinstance(moe, dict) else {}
    for i, entry in enumerate(layers):
        where = f"{path}: layers[{i}]"
        if not isinstance(entry, dict):
            raise LarqlFormatError(f"{where}: expected an object, got {entry!r}")
        li = LarqlLayer(layer=_int_field(entry, "layer", where), num_features=_int_field(entry, "num_features", where),
                        offset=_int_field(entry, "offset", where, required=False) or 0,
                        length=_int_field(entry, "length", where, required=False) or 0,
                        num_experts=_int_field(entry, "num_experts", where, required=False, minimum=1),
                        num_features_per_expert=_int_field(entry, "num_features_per_expert", where,
                                                           required=False, minimum=1))
        if li.layer >= index.num_layers:
            raise LarqlFormatError(f"{where}: layer {li.layer} is out of range (num_layers = {index.num_layers})")
        if li.layer in seen:
            raise LarqlFormatError(f"{where}: layer {li.layer} is listed twice")
        seen.add(li.layer)
        if (li.num_experts is None) != (li.num_features_per_expert is None):
            raise LarqlFormatError(f"{where}: an MoE layer needs both num_experts and num_features_per_expert")
        if li.is_moe and li.shared_features < 0:
            raise LarqlFormatError(f"{where}: num_experts ({li.num_experts}) x num_features_per_expert "
                                   f"({li.num_features_per_expert}) != num_features ({li.num_features}): fewer rows than "
                                   "the routed experts hold (only a shared expert's rows may follow them)")
        if li.shared_features and moe.get("shared_expert") is False:
            raise LarqlFormatError(f"{where}: num_features ({li.num_features}) exceeds num_experts "
                                   f"({li.num_experts}) x num_features_per_expert ({li.num_features_per_expert}) "
                                   "by the rows of a shared expert, but model_config.moe.shared_expert is false")
        index.layers.append(li)
    index.layers.sort(key=lambda li: li.layer)
    return index


def verify_checksums(folder: str | Path, index: LarqlIndex, names, progress: bool = False) -> list[str]:
    """sha256 of each file in `names` that index.json `checksums` lists; raise on a mismatch.

    Only the files an import reads are hashed: hashing the multi-GB inference weights that a
    full LarQL vindex also lists would cost minutes and prove nothing about the import.
    Returns the names verified.
    """
    done = []
    listed = index.checksums
    for name in names:
        expected = listed.get(name)
        path = Path(folder) / name
        if not expected or not path.is_file():
            continue
        actual = _sha256_with_progress(path, progress)
        if actual != str(expected).lower():
            raise ChecksumError(f"{path}: sha256 {actual[:16]}... does not match {index.path.name}'s "
                                f"checksums[{name!r}] {str(expected)[:16]}...; the file is corrupt, "
                                "truncated or from another extraction")
        done.append(name)
    return done


def _sha256_with_progress(path: Path, progress: bool) -> str:
    size = path.stat().st_size
    if not progress or size < (256 << 20):
        return sha256_file(path)
    import hashlib

    from tqdm.auto import tqdm
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}") as bar:
        while chunk := f.read(1 << 24):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


# -- down_meta ----------------------------------------------------------------------------------

@dataclass
class DownMetaLayer:
    """The down_meta of one layer, one row per FFN feature (flat index, experts contiguous).

    `has_meta` is False for features without metadata (an all-zero record in down_meta.bin, or a
    feature down_meta.jsonl does not mention); `pair_valid` is False for zero-padded top-k pairs.
    `top_token` / `tokens` hold token strings only when the file carries them (legacy jsonl).
    """
    layer: int
    top_token_id: np.ndarray     # (n,) int64
    c_score: np.ndarray          # (n,) float32
    token_ids: np.ndarray        # (n, k) int64
    logits: np.ndarray           # (n, k) float32
    has_meta: np.ndarray         # (n,) bool
    pair_valid: np.ndarray       # (n, k) bool
    top_token: np.ndarray | None = None   # (n,) object
    tokens: np.ndarray | None = None      # (n, k) object

    @property
    def num_features(self) -> int:
        return len(self.top_token_id)


def record_dtype(top_k: int) -> np.dtype:
    """One down_meta.bin record: 8 + 8 * top_k bytes."""
    return np.dtype([("top_token_id", "<u4"), ("c_score", "<f4"),
                     ("pairs", [("token_id", "<u4"), ("logit", "<f4")], (top_k,))])


class DownMetaBin:
    """down_meta.bin, its layer table built from the header and per-layer counts.

    Opening walks the file (reading only each layer's u32 count) and checks that every layer's
    records fit and that nothing is left over, so a truncated file or a different record size
    fails here, before anything is written. Records are then memory-mapped per layer.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        if size < _HEADER.itemsize:
            raise LarqlFormatError(f"{self.path}: {size} bytes is shorter than the 16-byte header (truncated)")
        header = np.fromfile(self.path, dtype=_HEADER, count=1)[0]
        if int(header["magic"]) not in (DOWN_META_MAGIC, DOWN_META_MAGIC_LITERAL):
            raise LarqlFormatError(f"{self.path}: magic 0x{int(header['magic']):08X} is not 0x{DOWN_META_MAGIC:08X} "
                                   "(b'TEMD'), nor the literal bytes b'DMET'; not a LarQL down_meta.bin")
        self.magic_bytes = "DMET" if int(header["magic"]) == DOWN_META_MAGIC_LITERAL else "TEMD"
        if int(header["version"]) != DOWN_META_VERSION:
            raise LarqlFormatError(f"{self.path}: down_meta version {int(header['version'])} is not supported "
                                   f"(this reader knows {DOWN_META_VERSION})")
        self.num_layers = int(header["num_layers"])
        self.top_k = int(header["top_k"])
        self.record = record_dtype(self.top_k)
        self.layers: list[tuple[int, int]] = []  # per layer: (byte offset of its records, count)
        pos = _HEADER.itemsize
        with open(self.path, "rb") as f:
            for layer in range(self.num_layers):
                if pos + 4 > size:
                    raise LarqlFormatError(
                        f"{self.path}: truncated: the header declares {self.num_layers} layers, but the file "
                        f"ends at byte {size} before layer {layer}'s feature count")
                f.seek(pos)
                count = int(np.frombuffer(f.read(4), dtype="<u4")[0])
                pos += 4
                need = count * self.record.itemsize
                if pos + need > size:
                    raise LarqlFormatError(
                        f"{self.path}: layer {layer} declares {count} records of {self.record.itemsize} bytes "
                        f"(8 + 8 x top_k {self.top_k}) at byte {pos}, but only {size - pos} bytes remain: "
                        "the file is truncated or its record size does not match the header")
                self.layers.append((pos, count))
                pos += need
        if pos != size:
            raise LarqlFormatError(
                f"{self.path}: {size - pos} bytes follow the last of {self.num_layers} layers: the record size "
                f"(8 + 8 x top_k {self.top_k} = {self.record.itemsize} bytes from the header) does not match "
                "the file (a per-record count byte?)")

    def num_features(self, layer: int) -> int:
        return self.layers[layer][1]

    def layer(self, layer: int) -> DownMetaLayer:
        offset, count = self.layers[layer]
        if count == 0:
            recs = np.zeros(0, dtype=self.record)
        else:
            recs = np.memmap(self.path, dtype=self.record, mode="r", offset=offset, shape=(count,))
        top_id = recs["top_token_id"].astype(np.int64)
        c = np.array(recs["c_score"], dtype=np.float32)
        ids = recs["pairs"]["token_id"].astype(np.int64).reshape(count, self.top_k)
        logits = np.array(recs["pairs"]["logit"], dtype=np.float32).reshape(count, self.top_k)
        # LarQL's reader: a pair is padding when token_id == 0 and logit == 0.0; a record without
        # metadata has top_token_id == 0, c_score == 0.0 and no real pair.
        pair_valid = (ids != 0) | (logits != 0.0)
        has_meta = (top_id != 0) | (c != 0.0) | pair_valid.any(axis=1)
        return DownMetaLayer(layer, top_id, c, ids, logits, has_meta, pair_valid)


def read_down_meta_jsonl(path: str | Path, num_features: dict[int, int] | None = None) -> dict[int, DownMetaLayer]:
    """Legacy down_meta.jsonl: {"l", "f", "t", "i", "c", "k": [{"t", "i", "s"}]} per line.

    `num_features` (layer -> count, from index.json) sizes each layer so features the file does
    not mention become rows without metadata; without it a layer ends at its highest feature.
    """
    path = Path(path)
    rows: dict[int, dict[int, dict]] = {}
    k = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            obj = parse_json(line, f"{path}: line {lineno}", LarqlFormatError)   # not UTF-8, not JSON, too deep
            try:
                layer, feat = int(obj["l"]), int(obj["f"])
            except (KeyError, TypeError, ValueError) as e:
                raise LarqlFormatError(f"{path}: line {lineno}: expected a JSON object with integer 'l' and 'f' "
                                       f"({type(e).__name__}: {e})") from None
            if layer < 0 or feat < 0:
                raise LarqlFormatError(f"{path}: line {lineno}: negative layer or feature ({layer}, {feat})")
            if feat in rows.setdefault(layer, {}):
                raise LarqlFormatError(f"{path}: line {lineno}: layer {layer} feature {feat} appears twice")
            rows[layer][feat] = obj
            k = max(k, len(obj.get("k") or []))
    layers = set(rows) | set(num_features or {})
    out = {}
    for layer in sorted(layers):
        feats = rows.get(layer, {})
        n = (num_features or {}).get(layer, max(feats, default=-1) + 1)
        if feats and max(feats) >= n:
            raise LarqlFormatError(f"{path}: layer {layer} feature {max(feats)} is out of range: index.json "
                                   f"gives the layer {n} features")
        m = DownMetaLayer(layer, np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros((n, k), np.int64),
                          np.zeros((n, k), np.float32), np.zeros(n, bool), np.zeros((n, k), bool),
                          np.full(n, None, dtype=object), np.full((n, k), None, dtype=object))
        for feat, obj in feats.items():
            try:
                m.top_token_id[feat] = int(obj.get("i", 0))
                m.c_score[feat] = float(obj.get("c", 0.0))
                m.top_token[feat] = obj.get("t")
                for j, pair in enumerate(obj.get("k") or []):
                    m.token_ids[feat, j] = int(pair.get("i", 0))
                    m.logits[feat, j] = float(pair.get("s", 0.0))
                    m.tokens[feat, j] = pair.get("t")
                    m.pair_valid[feat, j] = True
            except (TypeError, ValueError, AttributeError) as e:
                raise LarqlFormatError(f"{path}: layer {layer} feature {feat}: malformed record ({e})") from None
            m.has_meta[feat] = True
        out[layer] = m
    return out


# -- gate_vectors.bin ---------------------------------------------------------------------------

class GateVectors:
    """gate_vectors.bin, memory-mapped one layer at a time at index.json's byte ranges."""

    def __init__(self, path: str | Path, index: LarqlIndex):
        self.path = Path(path)
        self.index = index
        if not self.path.is_file():
            raise LarqlFormatError(f"{self.path}: not found (gate vectors were asked for)")
        if not index.layers:
            raise LarqlFormatError(f"{index.path}: has no `layers` table, so {self.path.name} cannot be located")
        size = self.path.stat().st_size
        item = index.element_dtype.itemsize
        for li in index.layers:
            expect = li.num_features * index.hidden_size * item
            if li.length != expect:
                raise LarqlFormatError(
                    f"{index.path}: layer {li.layer}: length {li.length} bytes != num_features {li.num_features} x "
                    f"hidden_size {index.hidden_size} x {item} bytes ({index.dtype}) = {expect}")
            if li.offset + li.length > size:
                raise LarqlFormatError(
                    f"{self.path}: layer {li.layer}'s gate range [{li.offset}, {li.offset + li.length}) runs past "
                    f"the end of the file ({size} bytes): the file is truncated or index.json is from another "
                    "extraction")

    def layer(self, layer: int) -> np.ndarray:
        """The (num_features, hidden_size) matrix of `layer` as a read-only memory map (raw dtype)."""
        li = self.index.layer(layer)
        if li is None:
            raise LarqlFormatError(f"{self.index.path}: no gate range for layer {layer}")
        if li.num_features == 0:
            return np.zeros((0, self.index.hidden_size), dtype=self.index.element_dtype)
        return np.memmap(self.path, dtype=self.index.element_dtype, mode="r", offset=li.offset,
                         shape=(li.num_features, self.index.hidden_size))

    def rows(self, layer: int, start: int, stop: int) -> np.ndarray:
        """Rows start..stop of `layer` as float16/float32 in memory (bf16 widened to float32)."""
        return in_memory(self.layer(layer)[start:stop], self.index.dtype)


def in_memory(block: np.ndarray, dtype: str) -> np.ndarray:
    """A memory-mapped block of `dtype` ("f32" | "f16" | "bf16") as float32/float16 in memory."""
    if dtype == "bf16":
        # bfloat16 is the top half of a float32: shift the 16 bits into place
        return (np.asarray(block, dtype=np.uint32) << 16).view(np.float32)
    return np.array(block)


def vector_dtype_for(index: LarqlIndex) -> str:
    """The vindex vector dtype that holds the source values exactly."""
    return "float16" if index.dtype == "f16" else "float32"


# -- embeddings.bin -----------------------------------------------------------------------------

class EmbeddingsBin:
    """embeddings.bin: the input embedding W_E, (vocab_size x hidden_size) raw little-endian floats,
    row-major, no header; memory-mapped and handed out in blocks of rows.

    The element type is told by the size, as LarQL's own loader tells it: vocab x hidden x 4 bytes
    is f32; x 2 bytes is 16-bit: index.json's dtype when that is f16 or bf16, else f16 (what
    LarQL's loader decodes it as). Any other size is a named error: a truncated download or an
    index.json of another extraction. The rows are W_E as stored: LarQL applies `embed_scale`
    when it uses them (its DESCRIBE queries with embed_scale * W_E[t]), not in the file.
    """

    def __init__(self, path: str | Path, index: LarqlIndex):
        self.path = Path(path)
        if not self.path.is_file():
            raise LarqlFormatError(f"{self.path}: not found (embeddings were asked for); LarQL writes it at "
                                   "extract level 'inference' or 'all', and client or browse slices may lack it")
        vocab = index.raw.get("vocab_size")
        if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
            raise LarqlFormatError(f"{index.path}: field 'vocab_size' must be an integer >= 1 to read "
                                   f"{self.path.name}, got {vocab!r}")
        self.vocab_size, self.hidden_size = vocab, index.hidden_size
        size = self.path.stat().st_size
        cells = vocab * index.hidden_size
        if size == cells * 4:
            self.dtype = "f32"
        elif size == cells * 2:
            self.dtype = index.dtype if index.dtype in ("f16", "bf16") else "f16"
        else:
            raise LarqlFormatError(
                f"{self.path}: {size} bytes is neither vocab_size {vocab} x hidden_size {index.hidden_size} x 4 "
                f"(f32) = {cells * 4} nor x 2 (f16) = {cells * 2}: the file is truncated or {index.path.name} "
                "is from another extraction")

    @property
    def vector_dtype(self) -> str:
        """The vindex vector dtype that holds the file's values exactly."""
        return "float16" if self.dtype == "f16" else "float32"

    def rows(self, start: int, stop: int) -> np.ndarray:
        """W_E[start:stop] as float16/float32 in memory (bf16 widened to float32)."""
        stop = min(stop, self.vocab_size)
        if stop <= start:
            return np.zeros((0, self.hidden_size), dtype=DTYPES[self.dtype])
        item = DTYPES[self.dtype]
        block = np.memmap(self.path, dtype=item, mode="r", offset=start * self.hidden_size * item.itemsize,
                          shape=(stop - start, self.hidden_size))
        return in_memory(block, self.dtype)
