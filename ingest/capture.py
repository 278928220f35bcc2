"""Capture one shard group's hidden states and write its shards: the step every build repeats.

    captured, pooled = capture_group(runner, tokenized, group, layers, poolings, dtype, pad_id, n_layers, bar,
                                     spec=CaptureSpec(sites=("resid_post", "attn_out", "mlp_post")))
    write_group(writer, prompt_set, captured, pooled, layers, poolings, part, text)

The runner is `activations.HiddenStates` (resid_post alone: `output_hidden_states`) or
`activations.SiteStates` (forward hooks on every site asked for, and the MoE routers). Per layer a
group writes activations and pooled (one run of rows per site), feature_acts and feature_stats (the
mlp_post site) and routing (MoE layers).

`vindex.ingest.build` calls these on one machine (writing group k on threads while the model runs
group k+1); `vindex.ingest.on_ray`'s actors call the same two functions on each worker. A group
ends with one shard per layer per table and one manifest commit listing them all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vindex.errors import InvalidValue

from .activations import HiddenStates, pad_batch, pooling_weights
from .sites import DEFAULT_SITES, hook_name

FLOAT16_MAX = 65504.0
DEFAULT_FEATURE_TOP_K = 32
DEFAULT_FEATURE_THRESHOLD = 1.0


@dataclass(frozen=True)
class CaptureSpec:
    """What a build captures besides the layers: the sites (TransformerLens names, `sites.SITES`),
    the features kept per token of mlp_post (`feature_top_k`, None = every feature: dense), the
    |activation| threshold of feature_stats.n_above, and the MoE layers whose routers are read."""
    sites: tuple = DEFAULT_SITES
    feature_top_k: int | None = DEFAULT_FEATURE_TOP_K
    feature_threshold: float = DEFAULT_FEATURE_THRESHOLD
    routing_layers: tuple = ()

    def vector_pairs(self, layers) -> list[tuple[str, int]]:
        """(site, layer) of the activations/pooled rows: every site but mlp_post (which goes to
        feature_acts), at every layer that has it (layer 0, the embedding output, is resid_post only)."""
        return [(s, l) for l in layers for s in self.sites if s != "mlp_post" and (l > 0 or s == "resid_post")]

    def feature_layers(self, layers) -> list[int]:
        return [l for l in layers if l > 0] if "mlp_post" in self.sites else []

    def shards(self, layers) -> list[tuple[str, int]]:
        """(table, layer) of every shard one group writes."""
        vec = sorted({l for _, l in self.vector_pairs(layers)})
        out = [(t, l) for l in vec for t in ("activations", "pooled")]
        out += [(t, l) for l in self.feature_layers(layers) for t in ("feature_acts", "feature_stats")]
        return out + [("routing", l) for l in layers if l in self.routing_layers]


def auto_dtype(runner, tokenized, batch, layers, pad_id) -> str:
    """float16 unless the longest prompts' states come within 2x of its range (65504), else float32.

    Some models carry massive activations (gemma3-270m reaches |x| ~ 7e4 in its middle layers),
    which float16 cannot hold; one probe batch of the longest prompts decides before anything is written.
    """
    ids, attn, _ = pad_batch([tokenized[i] for i in batch], pad_id)
    states, _ = runner.read(ids, attn)
    m = runner.torch.from_numpy(attn)
    amax = max((float(h[m.to(h.device)].float().abs().amax()) for (s, l), h in states.items()
                if l in layers and s != "mlp_post"), default=0.0)   # mlp_post alone: no vectors stored
    return "float16" if amax < FLOAT16_MAX / 2 else "float32"


def writer_threads() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))


def capture_group(runner, tokenized, group, layers, poolings, dtype, pad_id, n_layers, bar,
                  spec: CaptureSpec | None = None):
    """Forward every batch of a group -> (captured, pooled), in batch order (`submit_group` sorts by prompt_id).

    captured = {"tokens": [TokenizedPrompt...], "acts"/"norms": {(site, layer): [arrays]},
                "features": {layer: [(feature [N, k], activation [N, k])]}, "stats": {layer: sums over the
                group}, "routes": {layer: [(expert [N, k], weight [N, k], logit [N, k])]}},
    pooled = {(site, layer): [[B, P, d] arrays]}.
    """
    import torch
    spec = spec or CaptureSpec()
    store = torch.float16 if dtype == "float16" else torch.float32
    pairs = spec.vector_pairs(layers)
    flayers = spec.feature_layers(layers)
    rlayers = [l for l in layers if l in spec.routing_layers]
    acts = {p: [] for p in pairs}
    norms = {p: [] for p in pairs}
    pooled = {p: [] for p in pairs}
    features = {l: [] for l in flayers}
    stats: dict[int, dict] = {}
    routes = {l: [] for l in rlayers}
    toks_all = []
    for batch in group:
        toks = [tokenized[i] for i in batch]
        ids, attn, content = pad_batch(toks, pad_id)
        states, routers = runner.read(ids, attn)
        if isinstance(runner, HiddenStates) and len(states) != n_layers + 1:
            raise InvalidValue(f"the model returned {len(states)} hidden states, its config says {n_layers} layers + 1")
        dev = next(iter(states.values())).device
        flat = torch.from_numpy(np.flatnonzero(attn)).to(dev)                 # real tokens, row-major
        weights = pooling_weights(torch.from_numpy(content).to(dev), poolings)  # [B, P, T]
        for site, l in pairs:
            h = states[(site, l)].float()                                       # [B, T, d]
            sel = h.reshape(-1, h.shape[-1]).index_select(0, flat)              # [N, d]
            lo, hi = torch.aminmax(sel)
            amax = max(-float(lo), float(hi))
            if not np.isfinite(amax) or (store == torch.float16 and amax > FLOAT16_MAX):
                what = "NaN/inf" if not np.isfinite(amax) else f"|x| up to {amax:.4g}, beyond float16"
                raise InvalidValue(f"{site} layer {l}: hidden states hold {what}" +
                                   ("; rebuild with dtype='float32' or 'auto' (--dtype float32|auto)"
                                    if np.isfinite(amax) else ""))
            norms[(site, l)].append(torch.linalg.vector_norm(sel, dim=-1).cpu().numpy())
            acts[(site, l)].append(sel.to(store).cpu().numpy())
            pooled[(site, l)].append((weights @ h).to(store).cpu().numpy())   # [B, P, d]
        for l in flayers:
            h = states[("mlp_post", l)].float()                                 # [B, T, d_ffn]
            sel = h.reshape(-1, h.shape[-1]).index_select(0, flat)              # [N, d_ffn]
            feat, val = top_features(sel, spec.feature_top_k)                  # [N, k] each
            features[l].append((feat.to(torch.int32).cpu().numpy(), val.cpu().numpy()))
            add_feature_sums(stats.setdefault(l, {}), sel, feat, spec.feature_threshold)
        for l in rlayers:
            logits, w, e = (x.reshape(-1, x.shape[-1]).index_select(0, flat) for x in routers[l])
            w, order = w.float().sort(dim=-1, descending=True, stable=True)    # rank 1 = the largest weight
            e = e.gather(1, order)
            routes[l].append((e.to(torch.int32).cpu().numpy(), w.cpu().numpy(),
                              logits.float().gather(1, e.long()).cpu().numpy()))
        toks_all.extend(toks)
        bar.update(len(batch))
    return {"tokens": toks_all, "acts": acts, "norms": norms, "features": features,
            "stats": {l: {k: v.cpu().numpy() for k, v in s.items()} for l, s in stats.items()},
            "routes": routes}, pooled


def top_features(sel, k: int | None):
    """Per row of sel [N, F], the k features of largest |activation|, largest first: (feature [N, k],
    activation [N, k], signed). k None: every feature, in feature order (dense)."""
    import torch
    if k is None:
        n, f = sel.shape
        return torch.arange(f, device=sel.device).expand(n, f), sel
    idx = sel.abs().topk(k, dim=-1, sorted=True).indices
    return idx, sel.gather(1, idx)


def add_feature_sums(acc: dict, sel, feat, threshold: float) -> None:
    """Accumulate one batch's per-feature sums into acc (float64 sums, float32 extremes):
    n_tokens, sum, sum_abs, max, min, n_above (|a| > threshold), n_topk (rows of feat holding it)."""
    import torch
    f = sel.shape[1]
    batch = {"n_tokens": torch.tensor(sel.shape[0], dtype=torch.int64),
             "sum": sel.double().sum(0), "sum_abs": sel.double().abs().sum(0),
             "n_above": (sel.abs() > threshold).sum(0), "n_topk": torch.bincount(feat.reshape(-1), minlength=f)}
    for k, v in batch.items():
        acc[k] = acc[k] + v if k in acc else v
    mx, mn = sel.max(0).values, sel.min(0).values
    acc["max"] = torch.maximum(acc["max"], mx) if "max" in acc else mx
    acc["min"] = torch.minimum(acc["min"], mn) if "min" in acc else mn


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def write_group(w, prompt_set, acts, pooled, layers, poolings, part, text) -> None:
    """Write a captured group's shards and commit them, in this thread (distributed actors use it)."""
    commit_group(w, submit_group(w, prompt_set, acts, pooled, layers, poolings, part, text))


def submit_group(w, prompt_set, captured, pooled, layers, poolings, part, text, pool_ex=None):
    """Write every shard of the group (per layer: activations, pooled, feature_acts, feature_stats,
    routing, as captured), uncommitted: on `pool_ex`'s threads when given (returns futures), else
    right here. Each layer's arrays are released once its shards are written.

    Rows are sorted by (site, prompt_id, token_index): a layer's shard holds each site's rows as one run.
    """
    toks = captured["tokens"]
    lengths = np.array([len(t) for t in toks])
    pids = np.repeat([t.prompt_id for t in toks], lengths)
    perm = np.argsort(pids, kind="stable")        # rows by prompt_id, tokens in order
    token_ids = np.concatenate([t.ids for t in toks])[perm]
    starts = np.concatenate([t.starts for t in toks])[perm]
    ends = np.concatenate([t.ends for t in toks])[perm]
    token_index = np.concatenate([np.arange(k) for k in lengths])[perm]
    n = len(perm)
    common = {
        "prompt_set": pa.array([prompt_set] * n, pa.string()),
        "prompt_id": pa.array(pids[perm], pa.int32()),
        "token_index": pa.array(token_index, pa.int32()),
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
    by_layer: dict[int, list[str]] = {}
    for site, l in captured["acts"]:
        by_layer.setdefault(l, []).append(site)
    features, routes = captured.get("features") or {}, captured.get("routes") or {}

    def token_rows(k: int) -> dict:
        """prompt_set/prompt_id/token_index of k rows per token, in the sorted token order."""
        return {"prompt_set": pa.array([prompt_set] * (n * k), pa.string()),
                "prompt_id": pa.array(np.repeat(pids[perm], k), pa.int32()),
                "token_index": pa.array(np.repeat(token_index, k), pa.int32())}

    def token_text(k: int) -> dict:
        rows = pa.array(np.repeat(np.arange(n), k))
        return {"token_id": common["token_id"].take(rows), "token": common["token"].take(rows)}

    def write_layer(l):
        out = []
        sites = by_layer.get(l, [])
        if sites:
            tiled = {k: pa.concat_arrays([v] * len(sites)) for k, v in common.items()}
            label = {"site": pa.array(np.repeat(sites, n), pa.string()),
                     "hook": pa.array(np.repeat([hook_name(s, l) for s in sites], n), pa.string())}
            act = np.concatenate([np.concatenate(captured["acts"].pop((s, l)))[perm] for s in sites])
            norm = np.concatenate([np.concatenate(captured["norms"].pop((s, l)))[perm] for s in sites])
            out.append(("activations", w.write_shard("activations", {**tiled, **label, "norm": norm, "act": act},
                                                     {"layer": l}, part, commit=False)))
            del act
            m = len(prompt_ids) * P
            vec = np.concatenate([np.concatenate(pooled.pop((s, l)))[pperm].reshape(m, -1) for s in sites])
            ptiled = {k: pa.concat_arrays([v] * len(sites)) for k, v in pcommon.items()}
            plabel = {"site": pa.array(np.repeat(sites, m), pa.string()),
                      "hook": pa.array(np.repeat([hook_name(s, l) for s in sites], m), pa.string())}
            out.append(("pooled", w.write_shard("pooled", {**ptiled, **plabel, "act": vec}, {"layer": l}, part,
                                                commit=False)))
        if l in features:
            parts = features.pop(l)
            feat = np.concatenate([f for f, _ in parts])[perm]             # [n, k]
            val = np.concatenate([v for _, v in parts])[perm]
            k = feat.shape[1]
            out.append(("feature_acts", w.write_shard("feature_acts", {
                **token_rows(k), **token_text(k), "feature": feat.reshape(-1), "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
                "activation": val.reshape(-1).astype(np.float32)}, {"layer": l}, part, commit=False)))
            s = captured["stats"].pop(l)
            f = len(s["sum"])
            out.append(("feature_stats", w.write_shard("feature_stats", {
                "prompt_set": [prompt_set] * f, "feature": np.arange(f, dtype=np.int32),
                "part": np.full(f, part, dtype=np.int32), "n_tokens": np.full(f, int(s["n_tokens"]), dtype=np.int64),
                "sum": s["sum"], "sum_abs": s["sum_abs"], "max": s["max"], "min": s["min"],
                "n_above": s["n_above"].astype(np.int64), "n_topk": s["n_topk"].astype(np.int64)},
                {"layer": l}, part, commit=False)))
        if l in routes:
            parts = routes.pop(l)
            e, wt, lg = (np.concatenate([x[i] for x in parts])[perm] for i in range(3))    # [n, k]
            k = e.shape[1]
            out.append(("routing", w.write_shard("routing", {
                **token_rows(k), "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n), "expert": e.reshape(-1),
                "weight": wt.reshape(-1).astype(np.float32), "logit": lg.reshape(-1).astype(np.float32)},
                {"layer": l}, part, commit=False)))
        return out

    if pool_ex is None:
        return [_Done(write_layer(l)) for l in layers]
    return [pool_ex.submit(write_layer, l) for l in layers]


def commit_group(w, futures) -> None:
    """Wait for a group's shards, then list them all in one manifest commit."""
    by_table: dict[str, list] = {}
    for f in futures:
        for table, entry in f.result():
            by_table.setdefault(table, []).append(entry)
    for table, entries in by_table.items():
        w.add_files(table, entries, commit=False)
    w.commit()
