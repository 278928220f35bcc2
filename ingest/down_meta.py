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
A block's top-m is read from its group maxima: tokens j, j + V/G, ..., j + (G-1) V/G form
group j; the m best tokens lie in the m groups with the best maxima, so one vectorised max
over G rows and a top-m over V/G columns replace a top-m over V (4x faster for 262k tokens).

bfloat16 screening (`compute="bfloat16"`, what "auto" picks for large vocabularies where the
CPU or GPU has bf16 matrix units): the float32 matmul is the cost, so the vocabulary is screened in bf16 and only
the candidates are scored in float32, with a bound that makes the result the float32 one.
Rounding u and w to bf16 (unit roundoff 2^-8), accumulating in float32 and rounding the
result to bf16 moves a score by at most

    |s~(v) - s(v)| <= (2 * 2^-8 + 2^-16 + n 2^-24) sum_i |u_vi w_i| + 2^-8 |s|
                   <= 0.012 ||u_v o r|| ||w / r||          (Cauchy-Schwarz; n <= 4096; any r > 0)

(Higham 2002, Accuracy and Stability of Numerical Algorithms, 3.1). r balances the dimensions,
r_i = sqrt(rms_f |w_fi| / rms_v |u_vi|) per layer: with the real unembedding Gemma's final norm
makes a few dimensions 100x the others, and plain ||u_v|| ||w|| overstates the error 13x there
(1.6x balanced). The screen scores up(v) = s~(v) + C ||u_v o r|| ||w / r|| with C = 2^-6 (one
extra bf16 column of the matmul, so its own rounding is inside the margin) bound s(v) from
above. The M = k + 150 best by up(v) are scored exactly in float32; if their k-th best float32
score beats the M-th best up(v), no other token can enter the top-k, so ids and logits are the
float32 ones. A feature that fails the check (here 0.4% of Gemma's with the real unembedding,
~0.01% with W_E) is scored in float32 over the whole vocabulary.
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

COMPUTES = ("auto", "float32", "bfloat16")
SCREEN_C = 2.0 ** -6          # the screen's margin per unit ||u_v o r|| ||w / r|| (module doc: 0.012 suffices)
SCREEN_EXTRA = 150            # candidates beyond k scored in float32
GROUP = 8                     # tokens per group for a block's top-m (module doc)
# "auto" screens in bf16 from this vocabulary size on: below it, scoring the candidates costs what the
# screen saves (2 cores here: 2.2x faster for Gemma 3's 262k tokens, 0.85x for SmolLM2's 49k)
AUTO_BF16_MIN_VOCAB = 100_000


def bf16_matmul_supported(device=None) -> bool:
    """Whether bf16 matmuls run on matrix units here: a CUDA GPU with bf16, or a CPU whose oneDNN
    has bf16 kernels (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower than float32."""
    import torch
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class VocabularyScorer:
    """Top-k of `unembedding @ w` over the vocabulary, for many directions w; built once per job.

    `unembedding` is a (V, d) float32 array or tensor; `compute` is "float32", "bfloat16" (the
    screen of the module doc: the same ids and logits, fewer float32 flops) or "auto" (bfloat16
    where `bf16_matmul_supported(device)`); `device` e.g. "cuda" (default: the CPU).
    """

    def __init__(self, unembedding, *, compute: str = "auto", device=None):
        import torch
        if compute not in COMPUTES:
            raise InvalidValue(f"compute must be one of {COMPUTES}, got {compute!r}")
        self.device = torch.device(device or "cpu")
        self.u = torch.as_tensor(unembedding, dtype=torch.float32).to(self.device)     # (V, d)
        if compute == "auto":
            big = self.u.shape[0] >= AUTO_BF16_MIN_VOCAB or self.device.type == "cuda"
            compute = "bfloat16" if big and bf16_matmul_supported(self.device) else "float32"
        self.compute = compute
        self.screen = None
        if compute == "bfloat16":
            v, d = self.u.shape
            pad = -(d + 1) % 32                            # bf16 kernels like K in multiples of 32
            self.screen = torch.cat([self.u, self.u.new_zeros(v, 1 + pad)], 1).to(torch.bfloat16)
            self.u_rms = self.u.square().mean(0).sqrt()                              # (d,) per dimension
        self.screened = self.failed = 0                    # features screened / scored in full after a failed check
        self._scratch: dict[str, object] = {}              # reused buffers: a fresh 100 MB block costs its page faults

    def top_k(self, down: np.ndarray, k: int = 10, *, feature_chunk: int = 256,
              max_block_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows of `unembedding @ down` per column: ids (F, k) int32, logits (F, k) float32, best first."""
        import torch
        v_rows, d = self.u.shape
        if down.ndim != 2 or down.shape[0] != d:
            raise InvalidValue(f"W_down must be (d_model={d}, n_features), got shape {down.shape}")
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= v_rows:
            raise InvalidValue(f"top_k must be between 1 and the vocabulary size {v_rows}, got {k}")
        n = down.shape[1]
        dt = torch.from_numpy(np.ascontiguousarray(down.T, dtype=np.float32)).to(self.device)   # (F, d)
        ids = np.empty((n, k), np.int32)
        vals = np.empty((n, k), np.float32)
        with torch.inference_mode(), _exact_bf16_accumulation(self.device):
            if self.screen is not None:
                self._balance(dt)
            for a in range(0, n, feature_chunk):
                rows = dt[a:a + feature_chunk]                                    # (c, d)
                if self.screen is None:
                    best_v, best_i = self._exact(rows, k, max_block_bytes)
                else:
                    best_v, best_i = self._screened(rows, k, max_block_bytes)
                vals[a:a + feature_chunk] = best_v.cpu().numpy()
                ids[a:a + feature_chunk] = best_i.cpu().numpy()
        return ids, vals

    def describe(self) -> dict:
        """How the top-k are computed, for the manifest (the ids and logits are float32's either way)."""
        if self.compute == "float32":
            return {"compute": "float32", "device": str(self.device)}
        return {"compute": "bfloat16 screen, float32 scores of the candidates", "device": str(self.device),
                "candidates": f"top_k + {SCREEN_EXTRA}", "margin": SCREEN_C,
                "note": "same ids and logits as float32: a feature whose bound check fails is scored in float32"}

    def _exact(self, rows, k: int, max_block_bytes: int):
        """float32 logits over the vocabulary in blocks, the running top-k."""
        import torch
        block = _block_rows(self.u.shape[0], rows.shape[0], 4, max_block_bytes, k)

        def logits(s):
            u = self.u[s:s + block]
            return torch.matmul(rows, u.T, out=self.scratch("f32", (rows.shape[0], u.shape[0]), torch.float32))
        return _running_top(logits, self.u.shape[0], block, k)

    def _balance(self, directions) -> None:
        """r for these directions (module doc); the screen's extra column becomes C ||u_v o r||."""
        import torch
        w_rms = directions.square().mean(0).sqrt()
        floor = 1e-30 + 1e-6 * float(max(w_rms.max(), self.u_rms.max()))            # no 0/0 for an empty dimension
        self.r = ((w_rms + floor) / (self.u_rms + floor)).sqrt()
        d = self.u.shape[1]
        for a in range(0, self.u.shape[0], 1 << 15):
            self.screen[a:a + (1 << 15), d] = SCREEN_C * torch.linalg.vector_norm(self.u[a:a + (1 << 15)] * self.r, dim=1)

    def _screened(self, rows, k: int, max_block_bytes: int):
        """The bf16 screen, the float32 score of its candidates, and the check (module doc)."""
        import torch
        v_rows, d = self.u.shape
        m = min(v_rows, k + SCREEN_EXTRA)
        aug = self.scratch("aug", (rows.shape[0], self.screen.shape[1]), torch.bfloat16)    # [w, ||w||, 0...]
        aug[:, :d] = rows
        aug[:, d] = torch.linalg.vector_norm(rows / self.r, dim=1)
        aug[:, d + 1:] = 0
        block = _block_rows(v_rows, rows.shape[0], 2, max_block_bytes, m)

        def upper(s):
            u = self.screen[s:s + block]
            return torch.matmul(aug, u.T, out=self.scratch("bf16", (rows.shape[0], u.shape[0]), torch.bfloat16))
        up_v, cand = _running_top(upper, v_rows, block, m)                       # (c, m), best first
        exact = torch.empty(cand.shape, dtype=torch.float32, device=self.device)
        for b in range(0, rows.shape[0], 128):                                     # float32 scores of the candidates
            c = cand[b:b + 128]
            picked = torch.index_select(self.u, 0, c.reshape(-1), out=self.scratch("rows", (c.numel(), d), torch.float32))
            exact[b:b + 128] = torch.bmm(picked.view(*c.shape, d), rows[b:b + 128, :, None])[:, :, 0]
        best_v, pos = torch.topk(exact, k, dim=1)
        best_i = torch.gather(cand, 1, pos)
        if m < v_rows:
            bad = (best_v[:, -1] <= up_v[:, -1].float()).nonzero()[:, 0]     # another token might beat the k-th
            if len(bad):
                best_v[bad], best_i[bad] = self._exact(rows[bad], k, 4 * max_block_bytes)
            self.failed += len(bad)
        self.screened += rows.shape[0]
        if self.screened >= 1024 and self.failed > self.screened // 4:
            self.screen = None            # the screen does not separate this model's scores: float32 from here on
        return best_v, best_i


    def scratch(self, key: str, shape: tuple[int, ...], dtype):
        """A contiguous (shape) view of a buffer kept for `key`, grown when needed."""
        import math

        import torch
        n = math.prod(shape)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self._scratch[key] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)


def top_tokens(unembedding, down: np.ndarray, k: int = 10, *, feature_chunk: int = 256,
               max_block_bytes: int = 256 << 20, compute: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of `unembedding @ down` per column: ids (F, k) int32 and logits (F, k) float32.

    One call of `VocabularyScorer(unembedding, compute=compute).top_k(...)`; a job scoring many
    layers builds the scorer once.
    """
    return VocabularyScorer(unembedding, compute=compute).top_k(down, k, feature_chunk=feature_chunk,
                                                                 max_block_bytes=max_block_bytes)


def _block_rows(v_rows: int, chunk: int, itemsize: int, max_block_bytes: int, k: int) -> int:
    """Vocabulary rows per block: at most max_block_bytes of logits, at least k, a multiple of GROUP when it can be."""
    rows = min(v_rows, max(k, max_block_bytes // (itemsize * max(1, chunk))))
    return rows if rows == v_rows or rows < GROUP * k else rows // GROUP * GROUP


def _running_top(scores, v_rows: int, block: int, k: int):
    """Top-k (values, ids) of the rows of the (c, V) matrix whose column blocks `scores(start)` gives."""
    import torch
    best_v = best_i = None
    for s in range(0, v_rows, block):
        logits = scores(s)                                                    # (c, Vb)
        top_v, top_i = _block_top(logits, min(k, logits.shape[1]))
        top_i += s
        del logits          # before the next block is allocated: one block alive at a time
        if best_v is None:
            best_v, best_i = top_v, top_i
        else:                                                                 # merge running top-k
            cat_v, cat_i = torch.cat([best_v, top_v], 1), torch.cat([best_i, top_i], 1)
            best_v, pos = torch.topk(cat_v, k, dim=1)
            best_i = torch.gather(cat_i, 1, pos)
    return best_v, best_i


def _block_top(logits, m: int):
    """torch.topk(logits, m, dim=1), through group maxima when the block is wide (module doc)."""
    import torch
    c, vb = logits.shape
    if vb % GROUP or vb // GROUP < 4 * m:
        return torch.topk(logits, m, dim=1)
    width = vb // GROUP
    group_max = logits.view(c, GROUP, width).amax(dim=1)                      # (c, V/G): max of j + i V/G
    _, g = torch.topk(group_max, m, dim=1)
    cand = (g[:, :, None] + torch.arange(GROUP, device=logits.device) * width).reshape(c, -1)   # (c, m G)
    top_v, pos = torch.topk(torch.gather(logits, 1, cand), m, dim=1)
    return top_v, torch.gather(cand, 1, pos)


class _exact_bf16_accumulation:
    """On CUDA, bf16 matmuls may reduce partial sums in bf16; the screen's bound needs float32 sums."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            import torch
            self.was = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False

    def __exit__(self, *exc):
        if self.cuda:
            import torch
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = self.was


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
