"""LarQL's embeddings.bin as the `embeddings` table (import_larql(..., embeddings=True)).

One row per token id: `token_id`, `token` (the exact text of the one id, as the tokenizer decodes
it: special tokens and whitespace kept, so ' Paris' and 'Paris' are two rows) and `vector`
(W_E[token_id, :] as stored in the file, without the model's embed scale).

The file is vocab x d floats (256k x 2560 x 4 bytes = 2.6 GB for Gemma 3 4B), so it is memory-mapped
and written in parts of at most `VECTOR_PART_BYTES` of vectors: peak memory is a few parts, whatever
the vocabulary (bench/larql_import.py measures the import's RSS).

What it is for: LarQL's DESCRIBE ranks a layer's FFN features by gate . (embed_scale W_E[t]); with
the gate rows in `features.vector` (--gate-vectors) the SQL macro `describe` does the same
(query/describe.py, source 'gate').
"""
from __future__ import annotations

import numpy as np

from vindex.errors import VindexError
from vindex.writer import VindexWriter

from . import format as lf

VECTOR_PART_BYTES = 64 << 20   # rows of W_E per shard part: bounds memory whatever the vocabulary
MAX_PART_ROWS = 1 << 18


def exact_text(tokenizer, ids: np.ndarray) -> list:
    """The text of each id as the tokenizer decodes it alone (special tokens and whitespace kept),
    None for ids it has no token for; `tokenizer` is a `tokenizers.Tokenizer` or None."""
    if tokenizer is None:
        return [None] * len(ids)
    known = [int(i) for i in ids if tokenizer.id_to_token(int(i)) is not None]
    text = dict(zip(known, tokenizer.decode_batch([[i] for i in known], skip_special_tokens=False)))
    return [text.get(int(i)) for i in ids]


def write_embeddings(writer: VindexWriter, emb: lf.EmbeddingsBin, tokenizer, progress: bool = False) -> list[dict]:
    """Write W_E in parts of bounded size (uncommitted shards, recorded in the manifest at the end);
    returns their manifest entries."""
    writer.declare_vectors("embeddings", emb.hidden_size, emb.vector_dtype)
    step = max(1, min(MAX_PART_ROWS, VECTOR_PART_BYTES // (emb.hidden_size * 4)))
    starts = range(0, emb.vocab_size, step)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="embeddings", unit="part")
    entries = []
    for part, start in enumerate(starts):
        stop = min(emb.vocab_size, start + step)
        ids = np.arange(start, stop, dtype=np.int64)
        cols = {"token_id": ids.astype(np.int32), "token": exact_text(tokenizer, ids), "vector": emb.rows(start, stop)}
        try:
            entries.append(writer.write_shard("embeddings", cols, part=part, commit=False))
        except VindexError as e:   # e.g. a non-finite row, which the writer names by its row
            raise type(e)(f"{emb.path}: token ids {start}..{stop - 1}: {e}") from None
    writer.add_files("embeddings", entries)
    return entries


def embeddings_meta(emb: lf.EmbeddingsBin, index: lf.LarqlIndex, tokenizer) -> dict:
    """The manifest's extraction.embeddings: what the table holds and how to use it."""
    return {"file": lf.EMBEDDINGS, "dtype": emb.dtype, "rows": emb.vocab_size, "table": "embeddings",
            "embed_scale": index.get("embed_scale"),
            "meaning": "row t of the input embedding W_E, as stored (no embed scale); LarQL's DESCRIBE and the "
                       "describe macro's gate route query with embed_scale * W_E[t]",
            "token_text": ("tokenizer decode of the one id, special tokens and whitespace kept (features.top_token "
                           "is stripped, as LarQL shows it)") if tokenizer is not None else None}
