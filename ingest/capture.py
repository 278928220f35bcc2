"""Capture one shard group's hidden states and write its shards: the step every build repeats.

    acts, pooled = capture_group(runner, tokenized, group, layers, poolings, dtype, pad_id, n_layers, bar)
    write_group(writer, prompt_set, acts, pooled, layers, poolings, part, text)

`vindex.ingest.build` calls these on one machine (writing group k on threads while the model runs
group k+1); `vindex.ingest.on_ray`'s actors call the same two functions on each worker. A group
ends with one shard per layer per table and one manifest commit listing them all.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from vindex.errors import InvalidValue

from .activations import pad_batch, pooling_weights

FLOAT16_MAX = 65504.0


def auto_dtype(runner, tokenized, batch, layers, pad_id) -> str:
    """float16 unless the longest prompts' states come within 2x of its range (65504), else float32.

    Some models carry massive activations (gemma3-270m reaches |x| ~ 7e4 in its middle layers),
    which float16 cannot hold; one probe batch of the longest prompts decides before anything is written.
    """
    ids, attn, _ = pad_batch([tokenized[i] for i in batch], pad_id)
    hs = runner.run(ids, attn)
    m = runner.torch.from_numpy(attn).to(hs[0].device)
    amax = max(float(hs[l][m].abs().amax()) for l in layers)
    return "float16" if amax < FLOAT16_MAX / 2 else "float32"


def writer_threads() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))


def capture_group(runner, tokenized, group, layers, poolings, dtype, pad_id, n_layers, bar):
    """Forward every batch of a group -> (acts, pooled): per layer, token rows and pooled vectors.

    acts = {"tokens": [TokenizedPrompt...], "acts": {layer: [arrays]}, "norms": {layer: [arrays]}},
    pooled = {layer: [[B, P, d] arrays]}, in batch order (`submit_group` sorts by prompt_id).
    """
    import torch
    store = torch.float16 if dtype == "float16" else torch.float32
    acts = {l: [] for l in layers}
    norms = {l: [] for l in layers}
    pooled = {l: [] for l in layers}
    toks_all = []
    for batch in group:
        toks = [tokenized[i] for i in batch]
        ids, attn, content = pad_batch(toks, pad_id)
        hs = runner.run(ids, attn)
        if len(hs) != n_layers + 1:
            raise InvalidValue(f"the model returned {len(hs)} hidden states, its config says {n_layers} layers + 1")
        dev = hs[0].device
        flat = torch.from_numpy(np.flatnonzero(attn)).to(dev)                 # real tokens, row-major
        weights = pooling_weights(torch.from_numpy(content).to(dev), poolings)  # [B, P, T]
        for l in layers:
            h = hs[l].float()                                                   # [B, T, d]
            sel = h.reshape(-1, h.shape[-1]).index_select(0, flat)              # [N, d]
            lo, hi = torch.aminmax(sel)
            amax = max(-float(lo), float(hi))
            if not np.isfinite(amax) or (store == torch.float16 and amax > FLOAT16_MAX):
                what = "NaN/inf" if not np.isfinite(amax) else f"|x| up to {amax:.4g}, beyond float16"
                raise InvalidValue(f"layer {l}: hidden states hold {what}" +
                                   ("; rebuild with dtype='float32' or 'auto' (--dtype float32|auto)"
                                    if np.isfinite(amax) else ""))
            norms[l].append(torch.linalg.vector_norm(sel, dim=-1).cpu().numpy())
            acts[l].append(sel.to(store).cpu().numpy())
            pooled[l].append((weights @ h).to(store).cpu().numpy())           # [B, P, d]
        toks_all.extend(toks)
        bar.update(len(batch))
    return {"tokens": toks_all, "acts": acts, "norms": norms}, pooled


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def write_group(w, prompt_set, acts, pooled, layers, poolings, part, text) -> None:
    """Write a captured group's shards and commit them, in this thread (distributed actors use it)."""
    commit_group(w, submit_group(w, prompt_set, acts, pooled, layers, poolings, part, text))


def submit_group(w, prompt_set, captured, pooled, layers, poolings, part, text, pool_ex=None):
    """Write one shard per layer per table, uncommitted: on `pool_ex`'s threads when given (returns
    futures), else right here. Each layer's arrays are released once its shards are written."""
    toks = captured["tokens"]
    lengths = np.array([len(t) for t in toks])
    pids = np.repeat([t.prompt_id for t in toks], lengths)
    perm = np.argsort(pids, kind="stable")        # rows by prompt_id, tokens in order
    token_ids = np.concatenate([t.ids for t in toks])[perm]
    starts = np.concatenate([t.starts for t in toks])[perm]
    ends = np.concatenate([t.ends for t in toks])[perm]
    n = len(perm)
    common = {
        "prompt_set": pa.array([prompt_set] * n, pa.string()),
        "prompt_id": pa.array(pids[perm], pa.int32()),
        "token_index": pa.array(np.concatenate([np.arange(k) for k in lengths])[perm], pa.int32()),
        "token_id": pa.array(token_ids, pa.int32()),
        "token": pa.array([text(int(i)) for i in token_ids], pa.string()),
        "char_start": pa.array(starts, pa.int32(), mask=starts < 0),
        "char_end": pa.array(ends, pa.int32(), mask=ends < 0),
        "special": pa.array(np.concatenate([t.special for t in toks])[perm]),
    }
    prompt_ids = np.array([t.prompt_id for t in toks])
    pperm = np.argsort(prompt_ids, kind="stable")
    P = len(poolings)
    pcommon = {"prompt_set": pa.array([prompt_set] * (len(prompt_ids) * P), pa.string()),
               "prompt_id": pa.array(np.repeat(prompt_ids[pperm], P), pa.int32()),
               "pooling": pa.array(list(poolings) * len(prompt_ids), pa.string())}

    def write_layer(l):
        act = np.concatenate(captured["acts"].pop(l))[perm]
        norm = np.concatenate(captured["norms"].pop(l))[perm]
        a = w.write_shard("activations", {**common, "norm": norm, "act": act}, {"layer": l}, part, commit=False)
        del act
        vec = np.concatenate(pooled.pop(l))[pperm].reshape(len(prompt_ids) * P, -1)  # pooling fastest
        p = w.write_shard("pooled", {**pcommon, "act": vec}, {"layer": l}, part, commit=False)
        return a, p

    if pool_ex is None:
        return [_Done(write_layer(l)) for l in layers]
    return [pool_ex.submit(write_layer, l) for l in layers]


def commit_group(w, futures) -> None:
    """Wait for a group's shards, then list them all in one manifest commit."""
    entries = [f.result() for f in futures]
    w.add_files("activations", [a for a, _ in entries], commit=False)
    w.add_files("pooled", [p for _, p in entries], commit=False)
    w.commit()
