"""Capture per-layer hidden states of a transformers model and pool them per prompt.

The pieces `build()` strings together (through plan.py and capture.py), each small enough to
test alone (the layer list itself comes from `vindex.layers.parse_layers`):

  tokenize_prompts(tok, prompts, max_tokens)  -> TokenizedPrompt per prompt (ids, special flags, offsets)
  plan_groups(tokenized, batch_size, rows)    -> shard groups of length-sorted batches (the resume unit)
  pad_batch(batch, pad_id)                    -> ids, attention mask, content mask (right-padded)
  HiddenStates(model).run(ids, attn)          -> hidden states (L+1, B, T, d) as `output_hidden_states` gives them
  pool(h, content, poolings)                  -> prompt vectors per pooling rule

Layer convention (transformers' `output_hidden_states`): state 0 is the embedding output (after
any embedding scale the model applies, e.g. Gemma's sqrt(d)), state i the output of block i.
Whether the last state has the final norm applied differs between implementations, so
`HiddenStates.final_norm_on_last` measures it on the first batch instead of assuming.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vindex.errors import InvalidValue

# Pooling rules, as recorded in the manifest. "content" tokens = real (non-padding) tokens that
# are not special (BOS/EOS/CLS/SEP/chat template).
POOLINGS = {
    "mean": "mean over content tokens (specials and padding excluded)",
    "last": "the last content token",
    "mean_nosink": "mean over content tokens except the first content position (the attention sink of "
                   "models without BOS: its hidden-state norm is 10-100x the others'); equals `mean` "
                   "for prompts with a single content token",
}
DEFAULT_POOLINGS = ("mean", "last", "mean_nosink")


# -- tokenization ---------------------------------------------------------------------------------

@dataclass
class TokenizedPrompt:
    prompt_id: int
    ids: np.ndarray       # int64 token ids, specials included (no padding)
    special: np.ndarray   # bool
    starts: np.ndarray    # int32 char offsets into the prompt text; -1 where null (specials)
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_prompts(tokenizer, prompts, max_tokens: int, chat_template: bool = False) -> list[TokenizedPrompt]:
    """Tokenize prompts with offsets and special flags; truncate to `max_tokens`.

    Specials are the tokens the tokenizer adds (BOS, EOS, CLS, SEP), any id in
    `all_special_ids`, and, with `chat_template`, every token outside the prompt's own text.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidValue(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; vindex needs "
                           "character offsets (offset mapping), which only fast tokenizers give")
    special_ids = set(tokenizer.all_special_ids)
    out = []
    for p in prompts:
        if chat_template:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": p.text}], tokenize=False,
                                                     add_generation_prompt=True)
            base = rendered.find(p.text)
            if base < 0:
                raise InvalidValue(f"prompt {p.prompt_id}: the chat template altered the prompt text")
            enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True,
                            truncation=True, max_length=max_tokens)
            ids = enc["input_ids"]
            offs = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2) - base
            inside = (offs[:, 0] >= 0) & (offs[:, 1] <= len(p.text)) & (offs[:, 1] > offs[:, 0])
            special = ~inside | np.isin(ids, list(special_ids))
        else:
            enc = tokenizer(p.text, return_offsets_mapping=True, return_special_tokens_mask=True,
                            truncation=True, max_length=max_tokens)
            ids = enc["input_ids"]
            offs = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
            special = np.asarray(enc["special_tokens_mask"], dtype=bool) | np.isin(ids, list(special_ids))
        if len(ids) == 0:
            raise InvalidValue(f"prompt {p.prompt_id}: tokenizes to no tokens")
        starts = np.where(special, -1, offs[:, 0]).astype(np.int32)
        ends = np.where(special, -1, offs[:, 1]).astype(np.int32)
        out.append(TokenizedPrompt(p.prompt_id, np.asarray(ids, dtype=np.int64), special, starts, ends))
    return out


class TokenText:
    """Token id -> its decoded text, memoised (decode is slow per call, ids repeat a lot)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        s = self.cache.get(token_id)
        if s is None:
            s = self.cache[token_id] = self.tokenizer.decode([token_id])
        return s


# -- planning ---------------------------------------------------------------------------------------

def default_shard_rows(buffer_mb: int, n_layers: int, d: int, itemsize: int, total_rows: int,
                       min_groups: int = 4, min_rows: int = 256) -> int:
    """Token rows per shard group: bounded by memory, and small enough to overlap writes.

    Memory: two groups live at once (one computed, one being written), each holding
    rows x n_layers x d values. Overlap: a prompt set planned as ONE group writes every shard
    after the last forward pass; measured on smollm2-135m over 256 prompts that serial tail was
    ~20% of the build's wall time. So split into at least `min_groups` groups (but never below
    `min_rows` rows a shard, to keep tiny sets in one file per layer).
    """
    by_memory = max(1, buffer_mb * 2**20 // (2 * n_layers * d * itemsize))
    for_overlap = max(min_rows, -(-total_rows // min_groups))
    return int(min(by_memory, for_overlap))


def plan_groups(tokenized: list[TokenizedPrompt], batch_size: int, shard_rows: int) -> list[list[list[int]]]:
    """Length-sorted batches, packed into shard groups of at most `shard_rows` token rows.

    Returns groups -> batches -> indices into `tokenized`. Longest prompts first (so the peak
    memory shows up at once, and the ETA errs on the long side). The plan is a pure function of
    the tokenized prompts and the two sizes: a resumed build recomputes the same groups, so a
    group whose shards are all committed can be skipped.
    """
    if batch_size < 1:
        raise InvalidValue(f"batch_size must be >= 1, got {batch_size}")
    if shard_rows < 1:
        raise InvalidValue(f"shard_rows must be >= 1, got {shard_rows}")
    order = sorted(range(len(tokenized)), key=lambda i: (-len(tokenized[i]), tokenized[i].prompt_id))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    groups, current, rows = [], [], 0
    for b in batches:
        n = sum(len(tokenized[i]) for i in b)
        if current and rows + n > shard_rows:
            groups.append(current)
            current, rows = [], 0
        current.append(b)
        rows += n
    if current:
        groups.append(current)
    return groups


def pad_batch(tokenized: list[TokenizedPrompt], pad_id: int):
    """Right-padded ids and masks: (ids [B,T] int64, attention [B,T] bool, content [B,T] bool)."""
    T = max(len(t) for t in tokenized)
    B = len(tokenized)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    attn = np.zeros((B, T), dtype=bool)
    content = np.zeros((B, T), dtype=bool)
    for r, t in enumerate(tokenized):
        n = len(t)
        ids[r, :n] = t.ids
        attn[r, :n] = True
        # a prompt made only of specials (rare) pools over all its real tokens instead of none
        content[r, :n] = ~t.special if (~t.special).any() else True
    return ids, attn, content


# -- forward pass -----------------------------------------------------------------------------------

_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm")


class HiddenStates:
    """Runs the model's backbone (no LM head: the logits are not needed and cost up to 40% of a
    small model's forward pass) and returns all hidden states."""

    def __init__(self, model, device=None):
        import torch
        self.torch = torch
        self.model = model
        self.backbone = getattr(model, "base_model", model)
        self.device = device or next(model.parameters()).device
        self.final_norm = next((getattr(self.backbone, n) for n in _FINAL_NORMS
                                if isinstance(getattr(self.backbone, n, None), torch.nn.Module)), None)
        self.final_norm_on_last = None  # measured on the first batch
        self.n_layers = None

    def run(self, ids: np.ndarray, attn: np.ndarray):
        """(L+1) hidden states, each [B, T, d] float32 on the model's device."""
        torch = self.torch
        input_ids = torch.from_numpy(ids).to(self.device)
        mask = torch.from_numpy(attn.astype(np.int64)).to(self.device)
        captured = []
        hook = None
        if self.final_norm_on_last is None and self.final_norm is not None:
            hook = self.final_norm.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            with torch.inference_mode():
                out = self.backbone(input_ids=input_ids, attention_mask=mask, output_hidden_states=True,
                                    use_cache=False, return_dict=True)
        finally:
            if hook is not None:
                hook.remove()
        hs = out.hidden_states
        if self.final_norm_on_last is None:
            self.n_layers = len(hs) - 1
            if self.final_norm is None:
                self.final_norm_on_last = False
            elif captured:
                normed = captured[-1][0] if isinstance(captured[-1], tuple) else captured[-1]
                m = mask.bool()
                self.final_norm_on_last = bool(torch.allclose(normed[m].float(), hs[-1][m].float(),
                                                              rtol=1e-4, atol=1e-5))
        return hs

    def read(self, ids: np.ndarray, attn: np.ndarray):
        """({("resid_post", layer): [B, T, d]}, {}) for every layer: the `SiteStates.read` interface
        (no routers read on this path)."""
        return {("resid_post", l): h for l, h in enumerate(self.run(ids, attn))}, {}

    def convention(self) -> dict:
        """The hidden-state convention, for the manifest."""
        return {
            "source": "transformers output_hidden_states",
            "resid_post_last_layer": ("post final norm (output_hidden_states)" if self.final_norm_on_last
                                      else "raw residual stream"),
            "layer_0": "embedding output (after any embedding scaling the model applies)",
            "layer_i": "output of block i (residual stream), i = 1..n_layers",
            "final_norm": type(self.final_norm).__name__ if self.final_norm is not None else None,
            "last_layer_post_final_norm": self.final_norm_on_last,
            "note": ("layer n_layers has the model's final norm applied; earlier layers are raw residual "
                     "stream" if self.final_norm_on_last else
                     "no layer has a separate final norm applied (the raw residual stream, or per-block "
                     "post-norm as in BERT)"),
        }


# -- pooling ----------------------------------------------------------------------------------------

def pooling_weights(content, poolings=DEFAULT_POOLINGS):
    """Pooling as weights W [B, P, T] over positions, so that pooled = W @ h (one bmm per layer).

    content [B, T] bool: the tokens to pool (`pad_batch` makes it every real token for a prompt
    made only of specials, so no row is empty). With c = content and n = c.sum(1):
      mean        W = c / n
      last        W = one-hot at the last content position
      mean_nosink W = c' / n', c' = c without the first content position (c' = c when n = 1)
    """
    import torch
    c = content.float()                                               # [B, T]
    n = c.sum(1, keepdim=True).clamp(min=1)                           # [B, 1]
    pos = torch.arange(c.shape[1], device=c.device)[None, :]
    rows = []
    for p in poolings:
        if p == "mean":
            rows.append(c / n)
        elif p == "last":
            last = torch.where(content, pos, -1).max(1).values.clamp(min=0)      # [B]
            rows.append(torch.nn.functional.one_hot(last, c.shape[1]).float())
        elif p == "mean_nosink":
            first = torch.where(content, pos, c.shape[1]).min(1).values          # [B]
            c2 = c.clone()
            several = c.sum(1) > 1
            c2[several, first[several]] = 0
            rows.append(c2 / c2.sum(1, keepdim=True).clamp(min=1))
        else:
            raise InvalidValue(f"unknown pooling {p!r}; available: {', '.join(POOLINGS)}")
    return torch.stack(rows, 1)                                       # [B, P, T]


def pool(h, content, poolings=DEFAULT_POOLINGS) -> dict:
    """Pool one layer's states h [B, T, d] over content [B, T]: {pooling: [B, d]}."""
    pooled = pooling_weights(content, poolings).to(h.dtype) @ h     # [B, P, d]
    return {p: pooled[:, i] for i, p in enumerate(poolings)}


def check_poolings(poolings) -> tuple[str, ...]:
    if isinstance(poolings, str):
        poolings = [p.strip() for p in poolings.split(",") if p.strip()]
    poolings = tuple(dict.fromkeys(poolings))
    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown or not poolings:
        raise InvalidValue(f"poolings {list(poolings)}: unknown {unknown}; available: {', '.join(POOLINGS)}")
    return poolings


class SiteStates:
    """Runs the model's backbone with forward hooks (`sites.SiteHooks`) reading every (site, layer) of
    `reads`, and (`routing_layers`) the MoE routers (`sites.RouterHooks`), instead of asking for
    `output_hidden_states`. Used when a build asks for any site besides resid_post; resid_post alone
    stays on `HiddenStates` (the same values but the last layer's final norm; measured equally fast).

    Convention: every resid_post row is the raw residual stream, the last layer's too (TransformerLens's
    hook_resid_post), while `output_hidden_states` returns the last layer after the final norm.
    """

    def __init__(self, model, family: str, reads, routing_layers=(), device=None):
        import torch

        from .sites import RouterHooks, SiteHooks
        self.torch = torch
        self.model = model
        self.backbone = getattr(model, "base_model", model)
        self.device = device or next(model.parameters()).device
        self.family = family
        self.sites = SiteHooks(model, family, reads=reads)
        self.routers = RouterHooks(model, family, routing_layers) if routing_layers else None
        self.final_norm_on_last = False

    def read(self, ids: np.ndarray, attn: np.ndarray):
        """({(site, layer): [B, T, width]}, {layer: (router logits [B*T, E], weights [B*T, k], experts [B*T, k])})."""
        torch = self.torch
        input_ids = torch.from_numpy(ids).to(self.device)
        mask = torch.from_numpy(attn.astype(np.int64)).to(self.device)
        self.sites.captured = {}
        with self.sites:
            if self.routers is not None:
                self.routers.captured = {}
                self.routers.__enter__()
            try:
                with torch.inference_mode():
                    self.backbone(input_ids=input_ids, attention_mask=mask, use_cache=False, return_dict=True)
            finally:
                if self.routers is not None:
                    self.routers.__exit__(None, None, None)
        return self.sites.captured, (self.routers.captured if self.routers is not None else {})

    def convention(self) -> dict:
        return {
            "source": "forward hooks on the Hugging Face modules (vindex.ingest.sites, TransformerLens names)",
            "layer_0": "embedding output (resid_post only; TransformerLens blocks.0.hook_resid_pre)",
            "layer_i": "block i's sites, i = 1..n_layers (TransformerLens block i-1)",
            "resid_post_last_layer": "raw residual stream (no final norm, as TransformerLens's hook_resid_post)",
            "last_layer_post_final_norm": False,
            "note": "every resid_post row is the raw residual stream, the last layer's too",
        }
