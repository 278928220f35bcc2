"""down_meta: what each FFN feature writes to the vocabulary, plus per-feature weight stats.

For feature f of a layer, LarQL defines

    logits_f = W_E . W_down[:, f]          (vocab,)   raw input embedding, no scale, no norm

and keeps the top-k tokens; c_score is the top-1 logit. With `unembedding="lm_head"` the
vocabulary is read through the model's real output path instead (the logit lens of one
feature, nostalgebraist 2020):

    logits_f = W_U . (g * P(s * W_down[:, f]))

where W_U is lm_head (or W_E when tied), g the final norm's scale (Gemma: 1 + w), P centres
the vector for LayerNorm models (GPT-2), and s is Gemma 2/3's post-feedforward norm scale.
The norms' division by the RMS is a positive scalar per token position: it rescales all logits
of a feature alike and does not change the top-k, so it is left out (as are LayerNorm biases
and Gemma 2's final-logit soft-capping, which is monotonic).

Streaming: logits are computed for `feature_chunk` features at a time against at most
`max_block_bytes` of vocabulary rows, keeping a running top-k, so vocab x all features is
never materialised. torch does the matmul and top-k (both multithreaded); measured on 2 cores
it runs a 256-feature x 49k-vocab block about 2x faster than numpy matmul + argpartition.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from vindex.errors import InvalidValue
from vindex.schema import arrow_schema

from .checkpoint import FFNBlock, ModelWeights

UNEMBEDDINGS = ("embedding", "lm_head")


@dataclass
class Unembedding:
    """The (vocab, d) matrix whose rows score a residual-stream direction, and how it was made."""
    matrix: np.ndarray           # float32, C-contiguous
    info: dict                   # recorded in the manifest's extraction params
    post_ffn_norm: bool = False  # scale W_down by the block's post-FFN norm first (Gemma 2/3)


def unembedding_matrix(weights: ModelWeights, kind: str = "embedding") -> Unembedding:
    """W_E raw (LarQL) or the real unembedding with the final norm folded in (see module doc)."""
    if kind not in UNEMBEDDINGS:
        raise InvalidValue(f"unembedding must be one of {UNEMBEDDINGS}, got {kind!r}")
    arch = weights.arch
    if kind == "embedding":
        return Unembedding(weights.files.read(weights.embedding_name),
                           {"kind": "embedding", "tensor": weights.embedding_name, "final_norm": None,
                            "note": "LarQL down_meta: raw input embedding, no embed scale, no norm"})
    if arch.encoder:
        raise InvalidValue(f"{weights.folder}: {weights.model_type} is an encoder with no unembedding in its "
                           "weights; use unembedding='embedding'")
    name = weights.lm_head_name or weights.embedding_name
    u = weights.files.read(name)
    g = weights.final_norm()
    if g is not None:
        u *= g[None, :]                                   # W_U diag(g)
        if arch.norm == "layer":                          # W_U diag(g) (I - 11'/d): centre each row
            u -= u.mean(axis=1, keepdims=True)
    info = {"kind": "lm_head", "tensor": name, "tied": weights.lm_head_name is None,
            "final_norm": None if g is None else arch.norm, "norm_offset": arch.norm_offset,
            "post_ffn_norm": arch.post_ffn_norm is not None,
            "note": "logit lens of W_down[:, f]: norm scales folded in, RMS division and biases left out"}
    return Unembedding(u, info, post_ffn_norm=arch.post_ffn_norm is not None)


def output_directions(weights: ModelWeights, block: FFNBlock, layer_index: int, unemb: Unembedding) -> np.ndarray:
    """W_down (d, F), scaled by the post-FFN norm when reading through the real unembedding."""
    if unemb.post_ffn_norm:
        s = weights.post_ffn_norm(layer_index)
        return block.down * s[:, None]
    return block.down


# -- the streamed top-k -----------------------------------------------------------------------------

def top_tokens(unembedding, down: np.ndarray, k: int = 10, *, feature_chunk: int = 256,
               max_block_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of `unembedding @ down` per column: ids (F, k) int32 and logits (F, k) float32.

    `unembedding` is a (V, d) float32 array or torch tensor. Each step scores `feature_chunk`
    features against a vocabulary block of at most `max_block_bytes` of logits, and merges its
    top-k into the running one; values come out sorted, best first.
    """
    import torch

    u = torch.as_tensor(unembedding)
    v_rows, d = u.shape
    if down.ndim != 2 or down.shape[0] != d:
        raise InvalidValue(f"W_down must be (d_model={d}, n_features), got shape {down.shape}")
    if not 1 <= k <= v_rows:
        raise InvalidValue(f"top_k must be between 1 and the vocabulary size {v_rows}, got {k}")
    n = down.shape[1]
    dt = torch.from_numpy(np.ascontiguousarray(down.T, dtype=np.float32))   # (F, d)
    vocab_chunk = max(k, min(v_rows, max_block_bytes // (4 * max(1, min(feature_chunk, n)))))
    ids = np.empty((n, k), np.int32)
    vals = np.empty((n, k), np.float32)
    with torch.inference_mode():
        for a in range(0, n, feature_chunk):
            rows = dt[a:a + feature_chunk]                                    # (c, d)
            best_v = best_i = None
            for s in range(0, v_rows, vocab_chunk):
                logits = rows @ u[s:s + vocab_chunk].T                         # (c, Vc)
                top_v, top_i = torch.topk(logits, min(k, logits.shape[1]), dim=1)
                top_i += s
                if best_v is None:
                    best_v, best_i = top_v, top_i
                else:                                                          # merge running top-k
                    cat_v, cat_i = torch.cat([best_v, top_v], 1), torch.cat([best_i, top_i], 1)
                    best_v, pos = torch.topk(cat_v, k, dim=1)
                    best_i = torch.gather(cat_i, 1, pos)
                del logits          # before the next block is allocated: one block alive at a time
            vals[a:a + feature_chunk] = best_v.numpy()
            ids[a:a + feature_chunk] = best_i.numpy()
    return ids, vals


# -- per-feature stats --------------------------------------------------------------------------------

def feature_stats(block: FFNBlock) -> dict[str, np.ndarray]:
    """||W_gate[f]||, ||W_up[f]||, ||W_down[:, f]|| and cos(W_gate[f], W_down[:, f]) per feature.

    The cosine is null (masked) where either vector is zero; up_norm is absent for non-gated FFNs.
    """
    gate_norm = np.linalg.norm(block.gate, axis=1)
    down_norm = np.linalg.norm(block.down, axis=0)
    dot = np.einsum("fd,df->f", block.gate, block.down)
    denom = gate_norm * down_norm
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, dot / denom, 0.0)
    out = {"gate_norm": gate_norm.astype(np.float32), "down_norm": down_norm.astype(np.float32),
           "cos_gate_down": np.ma.masked_array(cos.astype(np.float32), mask=denom <= 0)}
    if block.up is not None:
        out["up_norm"] = np.linalg.norm(block.up, axis=1).astype(np.float32)
    return out


# -- token text ------------------------------------------------------------------------------------------

def vocabulary_strings(folder: str | Path, n_rows: int) -> np.ndarray | None:
    """Decoded text of token ids 0..n_rows-1 (stripped, as LarQL does), or None without a tokenizer.

    Ids beyond the tokenizer's vocabulary (padded embedding rows) decode to None.
    """
    folder = Path(folder)
    ids = [[i] for i in range(n_rows)]
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        size = tok.get_vocab_size(with_added_tokens=True)
        texts = tok.decode_batch(ids[:size], skip_special_tokens=False)
    elif any((folder / f).is_file() for f in ("tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")):
        try:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError, TypeError):
            return None
        size = len(tok)
        texts = tok.batch_decode(ids[:size], skip_special_tokens=False)
    else:
        return None
    out = np.empty(n_rows, dtype=object)
    out[:len(texts)] = [t.strip() for t in texts[:n_rows]]
    del tok, texts
    _return_freed_memory()
    return out


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise).

    A 262k-token tokenizer takes ~0.3 GB while it decodes; without this the process keeps
    that memory for the whole job, on top of the embedding.
    """
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# -- feature rows ----------------------------------------------------------------------------------------

_TOP_TOKENS_TYPE = arrow_schema("features").field("top_tokens").type


def feature_rows(block: FFNBlock, ids: np.ndarray, logits: np.ndarray, vocab: np.ndarray | None,
                 vectors: str | None = None) -> dict:
    """Columns of the `features` table for one FFN block (model/layer/depth are filled by the writer)."""
    n, k = ids.shape
    flat_ids = ids.reshape(-1)
    tokens = vocab[flat_ids] if vocab is not None else np.full(flat_ids.shape, None, dtype=object)
    struct_type = _TOP_TOKENS_TYPE.value_type
    values = pa.StructArray.from_arrays(
        [pa.array(flat_ids, pa.int32()), pa.array(tokens, pa.string()), pa.array(logits.reshape(-1), pa.float32())],
        fields=list(struct_type))
    top = pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), values,
                                   type=_TOP_TOKENS_TYPE)
    stats = feature_stats(block)
    cos = stats["cos_gate_down"]
    cols = {
        "expert": pa.nulls(n, pa.int32()) if block.expert is None else pa.array(np.full(n, block.expert, np.int32)),
        "feature": pa.array(np.arange(n, dtype=np.int32)),
        "top_token_id": pa.array(ids[:, 0], pa.int32()),
        "top_token": pa.array(tokens[::k], pa.string()),
        "c_score": pa.array(logits[:, 0], pa.float32()),
        "top_tokens": top,
        "gate_norm": pa.array(stats["gate_norm"]),
        "up_norm": pa.array(stats["up_norm"]) if "up_norm" in stats else pa.nulls(n, pa.float32()),
        "down_norm": pa.array(stats["down_norm"]),
        "cos_gate_down": pa.array(cos.data, pa.float32(), mask=np.ma.getmaskarray(cos)),
    }
    if vectors == "gate":
        cols["vector"] = block.gate
    elif vectors == "down":
        cols["vector"] = np.ascontiguousarray(block.down.T)
    elif vectors is not None:
        raise InvalidValue(f"vectors must be 'gate', 'down' or None, got {vectors!r}")
    return cols


def concat_rows(parts: list[dict]) -> dict:
    """The columns of several blocks (the experts of one MoE layer) stacked into one shard's rows."""
    if len(parts) == 1:
        return parts[0]
    return {key: np.concatenate([p[key] for p in parts]) if key == "vector"
            else pa.concat_arrays([p[key] for p in parts]) for key in parts[0]}
