"""The weights job: write a model's weight-derived tables (features, ov_gate, layer_stats).

    from vindex.ingest import build_weights          # the entry point (builder.py); it calls write_weights
    build_weights("smollm2-135m", "lake/smollm2-135m")

Everything streams layer by layer: the unembedding matrix stays in memory (float32), each
block's tensors are read (checkpoint.ModelWeights) when its turn comes and dropped after, and every
(table, layer) shard is written whole and recorded in the manifest within seconds (batched, see
_ShardBatch), so a rerun after an interruption skips the finished shards (resume). See
docs/weights.md for the definitions.

Layer numbering follows the vindex convention (layer i = output of block i): the FFN features
and attention heads of block b (0-based, as in the checkpoint's tensor names and LarQL's files)
are stored at layer b + 1. layer_stats has the embedding at layer 0 and, when the output matrix
is untied, `lm_head` at layer n_layers.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vindex.defaults import DEFAULT_VECTORS
from vindex.errors import InvalidValue, ManifestError
from vindex.layers import block_of_layer, layer_of_block, parse_layers
from vindex.writer import VindexWriter

from . import down_meta, ov_gate, spectra
from .checkpoint import ModelWeights
from .families import ARCHITECTURES

TABLES = ("features", "ov_gate", "layer_stats")
VECTORS = ("gate", "down", None)
COMMIT_EVERY_S = 10.0   # at most this much finished work is unrecorded if the job is killed
# extraction params that change stored values: a resumed run must use the same ones
_CONTENT_KEYS = ("top_k", "ov_top_k", "unembedding", "ov_variants", "feature_layers", "vectors", "vector_dtype")


def open_weights_vindex(src, out=None, name: str | None = None) -> tuple[VindexWriter, ModelWeights]:
    """The writer of the vindex at `out` (default lake/<name>, created or reopened) and the model's weights.

    Refuses a folder that holds a vindex of another name or of a model with another depth.
    """
    name = name or src.name
    out = Path(out) if out is not None else Path("lake") / name
    weights = ModelWeights(src.path, src.config)
    writer = VindexWriter.create(out, name, {**src.manifest_model(), **model_fields(weights)}, exist_ok=True)
    if int(writer.manifest["model"]["n_layers"]) != weights.n_layers:
        raise ManifestError(f"{out}: the vindex records n_layers={writer.manifest['model']['n_layers']}, but "
                            f"{src.path} has {weights.n_layers} blocks; is it the same model?")
    return writer, weights


def resolve_weights_source(source):
    """A ModelSource through `resolve_model`; local folders of MoE types it does not list are accepted too."""
    from vindex.errors import UnsupportedArchitecture

    from .sources import ModelSource, read_config, short_name, resolve_model

    if isinstance(source, ModelSource):
        return source
    try:
        return resolve_model(source)
    except UnsupportedArchitecture:
        folder = Path(str(source)).expanduser()
        if not folder.is_dir():
            raise
        cfg = read_config(folder)
        if cfg.get("model_type") not in ARCHITECTURES:
            raise
        return ModelSource(name=short_name(folder.name), path=folder.resolve(), model_id=str(folder.resolve()),
                           revision=None, model_type=cfg["model_type"],
                           family=ARCHITECTURES[cfg["model_type"]].family, kind="folder", source=str(source),
                           config=cfg)


def model_fields(weights: ModelWeights) -> dict:
    """Manifest `model` fields the weights job knows better than config.json (MoE, embed scale)."""
    s, a = weights.shape, weights.arch
    fields = {"n_layers": s.n_layers, "d_model": s.d_model, "n_heads": s.n_heads, "n_kv_heads": s.n_kv_heads,
              "head_dim": s.head_dim, "vocab_size": weights.vocab_rows,
              "tie_word_embeddings": weights.lm_head_name is None and not a.encoder,
              "embed_scale": float(np.sqrt(s.d_model)) if a.embed_scale else 1.0}
    if s.n_experts:
        fields["n_experts"] = int(s.n_experts)
    return fields


def _feature_blocks(mode, block: int, n_layers: int) -> list[int]:
    """0-based blocks whose FFN gates the heads of `block` are coupled into."""
    if mode == "same":
        return [block]
    if mode == "later":
        return list(range(block, n_layers))
    if isinstance(mode, int) and not isinstance(mode, bool) and mode >= 1:
        return list(range(block, min(block + mode, n_layers)))
    raise InvalidValue(f"feature_layers must be 'same', 'later' or an int >= 1, got {mode!r}")


def write_weights(writer: VindexWriter, weights: ModelWeights, *, top_k: int = 10, unembedding: str = "embedding",
                  ov_variants: Iterable[str] = ("o", "ov"), feature_layers: str | int = "same",
                  ov_top_k: int | None = None, vectors: str | None = DEFAULT_VECTORS, vector_dtype: str = "float16",
                  tables: Iterable[str] = TABLES, layers=None, resume: bool = True, progress: bool = True,
                  device: str | None = None) -> dict:
    """Write the weight tables into an open writer (the body of `build_weights`); returns a summary.

    device: where down_meta's matmuls run (None: the CPU)."""
    tables = tuple(tables)
    ov_variants = tuple(ov_variants)
    for t in tables:
        if t not in TABLES:
            raise InvalidValue(f"tables: unknown table {t!r}; the weights job writes {', '.join(TABLES)}")
    for v in ov_variants:
        if v not in ov_gate.VARIANTS:
            raise InvalidValue(f"ov_variants: unknown variant {v!r}; use {ov_gate.VARIANTS}")
    if vectors not in VECTORS:
        raise InvalidValue(f"vectors must be one of {VECTORS}, got {vectors!r}")
    if not isinstance(top_k, int) or top_k < 1:
        raise InvalidValue(f"top_k must be a positive integer, got {top_k!r}")
    ov_top_k = top_k if ov_top_k is None else ov_top_k
    if not isinstance(ov_top_k, int) or ov_top_k < 1:
        raise InvalidValue(f"ov_top_k must be a positive integer, got {ov_top_k!r}")
    n_layers = weights.n_layers
    _feature_blocks(feature_layers, 0, n_layers)           # validates the option early
    selected = parse_layers(layers, n_layers)
    if "features" in tables and top_k > weights.vocab_rows:
        raise InvalidValue(f"top_k={top_k} exceeds the vocabulary size {weights.vocab_rows}")

    unemb = down_meta.unembedding_matrix(weights, unembedding) if "features" in tables else None
    scorer = down_meta.VocabularyScorer(unemb.matrix, device=device) if unemb is not None else None
    params = {"top_k": top_k, "ov_top_k": ov_top_k,
              "unembedding": unemb.info if unemb else {"kind": unembedding},
              "ov_variants": list(ov_variants), "feature_layers": feature_layers, "vectors": vectors,
              "vector_dtype": vector_dtype, "tables": list(tables), "spectrum_top": spectra.N_TOP,
              "token_text": "tokenizer decode of one id, whitespace stripped (as LarQL)",
              "layer_convention": "block b (0-based) is stored at layer b+1; layer_stats layer 0 = embedding",
              "moe": "experts are (layer, expert, feature); a shared expert has expert = -1"}
    if scorer is not None:
        params["top_k_scoring"] = scorer.describe()
    _check_resume(writer, params, resume)
    writer.update(extraction={"weights": params})
    if vectors and "features" in tables:
        writer.declare_vectors("features", weights.shape.d_model, vector_dtype)
    vocab = down_meta.vocabulary_strings(weights.folder, weights.vocab_rows) if "features" in tables else None

    summary = {t: 0 for t in tables}
    started = time.perf_counter()
    shards = _ShardBatch(writer)
    from tqdm.auto import tqdm
    bar = tqdm(selected, desc=f"weights {writer.name}", unit="layer", disable=not progress)
    try:
        for layer in bar:
            if layer == 0:
                if "layer_stats" in tables and _todo(writer, "layer_stats", {}, 0, resume):
                    bar.set_postfix_str("layer_stats: embedding")
                    same = unemb is not None and unemb.info["kind"] == "embedding"   # W_E already in memory
                    emb = unemb.matrix if same else weights.embedding()
                    summary["layer_stats"] += shards.write("layer_stats", spectra.matrix_rows({"embed": emb}, 0), {}, 0)
                    del emb
                continue
            b = block_of_layer(layer)
            part = {"layer": layer}
            if "features" in tables and _todo(writer, "features", part, 0, resume):
                bar.set_postfix_str(f"features (down_meta) layer {layer}")
                parts = []
                for block in weights.ffn(b):
                    directions = down_meta.output_directions(weights, block, b, unemb)
                    ids, logits = scorer.top_k(directions, top_k)
                    parts.append(down_meta.feature_rows(block, ids, logits, vocab, vectors))
                summary["features"] += shards.write("features", down_meta.concat_rows(parts), part, 0)
            if "ov_gate" in tables and ov_variants and _todo(writer, "ov_gate", part, 0, resume):
                bar.set_postfix_str(f"ov_gate layer {layer}")
                rows = ov_gate_rows(weights, b, ov_variants, feature_layers, ov_top_k)
                summary["ov_gate"] += shards.write("ov_gate", rows, part, 0)
            if "layer_stats" in tables and _todo(writer, "layer_stats", {}, layer, resume):
                bar.set_postfix_str(f"layer_stats layer {layer}")
                rows = spectra.matrix_rows(layer_matrices(weights, b), layer)
                if layer == n_layers and weights.lm_head_name:
                    lm = spectra.matrix_rows({"lm_head": weights.files.read(weights.lm_head_name)}, layer)
                    rows = {k: rows[k] + lm[k] for k in rows}
                summary["layer_stats"] += shards.write("layer_stats", rows, {}, layer)
            shards.commit_if_due()
    finally:
        bar.close()
        shards.commit()
    summary["seconds"] = round(time.perf_counter() - started, 2)
    if progress:
        done = ", ".join(f"{t}: {summary[t]} rows" for t in tables)
        print(f"vindex: weights of {writer.name} -> {writer.root} ({done}; {summary['seconds']} s)", flush=True)
    return summary


class _ShardBatch:
    """Writes shards at once but records them in the manifest at most every COMMIT_EVERY_S seconds.

    Each manifest commit rewrites and revalidates the whole manifest, which costs more than a
    small model's layer; batching keeps that off the critical path. Resume stays per layer: an
    interrupted run loses at most the last few seconds of uncommitted (but complete) shards,
    which the rerun rewrites under the same names.
    """

    def __init__(self, writer: VindexWriter):
        self.writer = writer
        self.pending: dict[str, list[dict]] = {}
        self.last = time.perf_counter()

    def write(self, table: str, rows, partition: dict, part: int) -> int:
        entry = self.writer.write_shard(table, rows, partition, part=part, commit=False)
        self.pending.setdefault(table, []).append(entry)
        return entry["rows"]

    def commit_if_due(self) -> None:
        if time.perf_counter() - self.last >= COMMIT_EVERY_S:
            self.commit()

    def commit(self) -> None:
        if self.pending:
            for table, entries in self.pending.items():
                self.writer.add_files(table, entries, commit=False)
            self.writer.commit()
            self.pending = {}
        self.last = time.perf_counter()


def _todo(writer: VindexWriter, table: str, partition: dict, part: int, resume: bool) -> bool:
    return not (resume and writer.has_shard(table, partition, part))


def _check_resume(writer: VindexWriter, params: dict, resume: bool) -> None:
    old = writer.manifest.get("extraction", {}).get("weights")
    if not old or not resume:
        return
    def key(p):
        return {k: (p.get(k, {}).get("kind") if k == "unembedding" else p.get(k)) for k in _CONTENT_KEYS}
    a, b = key(old), key(params)
    if a != b:
        diff = {k: (a[k], b[k]) for k in _CONTENT_KEYS if a[k] != b[k]}
        raise ManifestError(f"{writer.root}: its weight tables were written with other parameters "
                            f"({', '.join(f'{k}: {x!r} now {y!r}' for k, (x, y) in diff.items())}); "
                            "use the same options to resume, resume=False (--no-resume) to rewrite, or another folder")


def ov_gate_rows(weights: ModelWeights, block: int, variants, feature_layers, k: int) -> dict:
    """All OV-gate rows of one block's heads: per variant and feature layer, the top-k per head."""
    s = weights.shape
    attn = weights.attention(block)
    parts = []
    for fb in _feature_blocks(feature_layers, block, weights.n_layers):
        blocks = weights.ffn(fb, gates_only=True)
        gate = np.concatenate([x.gate for x in blocks]) if len(blocks) > 1 else blocks[0].gate
        experts = None if blocks[0].expert is None else \
            np.concatenate([np.full(x.n_features, x.expert, np.int32) for x in blocks])
        features = np.concatenate([np.arange(x.n_features, dtype=np.int32) for x in blocks])
        for variant in variants:
            if variant == "o":
                c = ov_gate.coupling_o(gate, attn.o, s.n_heads)
            else:
                c = ov_gate.coupling_ov(gate, attn.o, attn.v, s.n_heads, s.n_kv_heads)
            parts.append(ov_gate.top_couplings(c, k, variant=variant, feature_layer=layer_of_block(fb), experts=experts,
                                               features=features))
    return ov_gate.concat_rows(parts)


def layer_matrices(weights: ModelWeights, block: int) -> dict[str, np.ndarray]:
    """The named matrices of one block for layer_stats: q, k, v, o, gate, up, down (+ experts, router)."""
    attn = weights.attention(block)
    out = {"q": attn.q, "k": attn.k, "v": attn.v, "o": attn.o}
    for x in weights.ffn(block):
        prefix = "" if x.expert is None else ("shared." if x.expert == -1 else f"expert{x.expert}.")
        out[prefix + "gate"] = x.gate
        if x.up is not None:
            out[prefix + "up"] = x.up
        out[prefix + "down"] = x.down
    router = weights.router(block)
    if router is not None:
        out["router"] = router
    return out

