"""Activation sites: TransformerLens's hook names, mapped onto each family's Hugging Face modules.

    with SiteHooks(model, "llama", reads=[("attn_out", 3)]) as hooks:
        model(input_ids)
    hooks.captured[("attn_out", 3)]                     # [B, T, d_model]

    with SiteHooks(model, "llama", edits={("resid_post", 5): lambda h: h * 0}):
        model(input_ids)                                 # block 4's output zeroed downstream

Names and meaning follow TransformerLens (TL); each is read (or replaced) by a forward hook on
the module where the value exists in the Hugging Face implementation:

    site        TL hook name                  the value, in pre-norm block b
    resid_pre   blocks.{b}.hook_resid_pre     the block's input (the residual stream entering it)
    attn_out    blocks.{b}.hook_attn_out      what attention adds to the residual stream
                                              (after Gemma 2/3's post-attention norm, as in TL)
    resid_mid   blocks.{b}.hook_resid_mid     the residual stream between attention and the MLP
    mlp_out     blocks.{b}.hook_mlp_out       what the MLP adds (after Gemma 2/3's post-FFN norm)
    mlp_post    blocks.{b}.mlp.hook_post      the activations W_down reads: act(gate) * up, width d_ffn
    resid_post  blocks.{b}.hook_resid_post    the block's output

Layer numbering. vindex layer i is block i's output (layer 0 the embedding output), as
`output_hidden_states` numbers them, so TL block b is vindex layer b + 1 for every site:
(site, layer) = (s, b + 1) is TL's `blocks.{b}.hook_{s}`. resid_post also has layer 0, the
embedding output (TL's `blocks.0.hook_resid_pre`; TL has no resid_post for it).
A pre-norm identity the tests check: resid_post = resid_mid + mlp_out = resid_pre + attn_out + mlp_out.

One difference from `output_hidden_states`: transformers applies the final norm to the last hidden
state it returns; the hook on the last block reads the raw residual stream, as TL's hook_resid_post
does. The activation job's manifest records which convention its resid_post rows follow.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from vindex.errors import UnknownSite

SITES = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "mlp_post", "resid_post")
DEFAULT_SITES = ("resid_post",)
HOOK_NAMES = {
    "resid_pre": "blocks.{b}.hook_resid_pre",
    "attn_out": "blocks.{b}.hook_attn_out",
    "resid_mid": "blocks.{b}.hook_resid_mid",
    "mlp_out": "blocks.{b}.hook_mlp_out",
    "mlp_post": "blocks.{b}.mlp.hook_post",
    "resid_post": "blocks.{b}.hook_resid_post",
}


@dataclass(frozen=True)
class Point:
    """Where a site's value exists: a module (dotted path relative to the block; "" = the block
    itself) and whether the value is that module's first input or its (first) output."""
    module: str
    io: str  # "input" | "output"


_PRE_NORM = {
    "resid_pre": Point("", "input"),
    "attn_out": Point("self_attn", "output"),
    "resid_mid": Point("post_attention_layernorm", "input"),
    "mlp_out": Point("mlp", "output"),
    "mlp_post": Point("mlp.down_proj", "input"),
    "resid_post": Point("", "output"),
}
# Gemma 2/3 normalise attention's and the MLP's outputs before adding them (a "sandwich" block):
# attn_out and mlp_out are the normalised values that reach the residual stream, as in TL.
_SANDWICH = {
    **_PRE_NORM,
    "attn_out": Point("post_attention_layernorm", "output"),
    "resid_mid": Point("pre_feedforward_layernorm", "input"),
    "mlp_out": Point("post_feedforward_layernorm", "output"),
}
_GPT2 = {
    "resid_pre": Point("", "input"),
    "attn_out": Point("attn", "output"),
    "resid_mid": Point("ln_2", "input"),
    "mlp_out": Point("mlp", "output"),
    "mlp_post": Point("mlp.c_proj", "input"),
    "resid_post": Point("", "output"),
}
# BERT is post-norm: each sub-layer's sum is normalised, so attn_out/resid_mid/mlp_out have no
# pre-norm meaning; the block's input and output and the FFN's hidden activations do.
_BERT = {
    "resid_pre": Point("", "input"),
    "mlp_post": Point("intermediate", "output"),
    "resid_post": Point("", "output"),
}
# MoE blocks (transformers 5) keep their experts as fused 3-D tensors run inside one module: there is
# no per-expert W_down module whose input a hook could read, so mlp_post is not a site of theirs.
# mlp_out is the whole MoE block's output (routed experts + any shared expert), as in TL.
_MOE = {k: v for k, v in _PRE_NORM.items() if k != "mlp_post"}
_MOE_WHY = ("its experts are fused 3-D tensors inside one module (transformers 5), so no hook can read one "
            "expert's mlp_post; the routing table records which experts run")
_WHY_MISSING = {"bert": "BERT's blocks are post-norm (each sub-layer's sum is normalised), so the site has no "
                        "pre-norm meaning",
                "qwen2_moe": _MOE_WHY, "mixtral": _MOE_WHY, "deepseek_v3": _MOE_WHY}

FAMILY_SITES: dict[str, dict[str, Point]] = {
    "llama": _PRE_NORM, "mistral": _PRE_NORM, "qwen2": _PRE_NORM, "qwen3": _PRE_NORM, "gemma": _PRE_NORM,
    "gemma2": _SANDWICH, "gemma3": _SANDWICH,
    "gpt2": _GPT2,
    "bert": _BERT,
    "qwen2_moe": _MOE, "mixtral": _MOE, "deepseek_v3": _MOE,
}
# where each MoE family's router sits in a block: a module returning (logits [N, E], weights [N, k],
# experts [N, k]) for the N = B*T tokens (transformers 5's TopKRouter classes)
ROUTERS = {"qwen2_moe": "mlp.gate", "mixtral": "mlp.gate", "deepseek_v3": "mlp.gate"}
_BLOCK_LISTS = ("model.layers", "layers", "transformer.h", "h", "encoder.layer", "bert.encoder.layer",
                "model.language_model.layers", "language_model.model.layers")


def check_sites(sites: str | Iterable[str], family: str | None = None) -> tuple[str, ...]:
    """Parse `sites` ("resid_post,attn_out", "all", or a list) into known site names, in SITES order.

    Raises UnknownSite naming the sites for an unknown name, and naming the family and why for a site
    the family does not have ("all" means every site the family has).
    """
    if isinstance(sites, str):
        sites = [s.strip() for s in sites.split(",") if s.strip()]
    sites = list(sites)
    have = FAMILY_SITES.get(family, dict.fromkeys(SITES)) if family else dict.fromkeys(SITES)
    if sites == ["all"]:
        return tuple(s for s in SITES if s in have)
    unknown = [s for s in sites if s not in SITES]
    if unknown or not sites:
        raise UnknownSite(f"sites {sites}: unknown {unknown}; the sites are {', '.join(SITES)} (or all); "
                          "names follow TransformerLens, e.g. attn_out = blocks.{b}.hook_attn_out")
    missing = [s for s in sites if s not in have]
    if missing:
        why = _WHY_MISSING.get(family, "its blocks have no such point")
        raise UnknownSite(f"sites {missing}: the {family} family has no such site ({why}); it has "
                          f"{', '.join(s for s in SITES if s in have)}")
    return tuple(s for s in SITES if s in sites)


def hook_name(site: str, layer: int) -> str:
    """TransformerLens's hook name for (site, vindex layer): block b = layer - 1 (layer 0: the embedding
    output, TL's blocks.0.hook_resid_pre)."""
    if layer == 0:
        if site != "resid_post":
            raise UnknownSite(f"layer 0 is the embedding output: only resid_post has it, not {site!r}")
        return HOOK_NAMES["resid_pre"].format(b=0)
    return HOOK_NAMES[site].format(b=layer - 1)


def blocks(model) -> list:
    """The model's transformer blocks, in order (the first ModuleList found at a known path)."""
    import torch
    for path in _BLOCK_LISTS:
        m = _submodule(model, path)
        if isinstance(m, torch.nn.ModuleList):
            return list(m)
    raise UnknownSite(f"{type(model).__name__}: no list of transformer blocks at any of {', '.join(_BLOCK_LISTS)}")


def locate(model, family: str, site: str, layer: int):
    """(module, io) holding (site, vindex layer) in `model`: layer 0 of resid_post is block 0's input."""
    check_sites([site], family)
    bl = blocks(model)
    if site == "resid_post" and layer == 0:
        site, block = "resid_pre", 0
    else:
        block = layer - 1
    if not 0 <= block < len(bl):
        first = 0 if site == "resid_post" else 1
        raise UnknownSite(f"{site} layer {layer}: the model has layers {first}..{len(bl)} for this site")
    point = FAMILY_SITES[family][site]
    module = _submodule(bl[block], point.module) if point.module else bl[block]
    if module is None:
        raise UnknownSite(f"{site} layer {layer}: block {block} ({type(bl[block]).__name__}) has no "
                          f"module {point.module!r}")
    return module, point.io


class SiteHooks:
    """Forward hooks that read and/or replace site values during the forward passes run inside it.

    reads: (site, layer) pairs; after a forward pass `captured[(site, layer)]` holds the value
      ([B, T, width], the model's dtype, detached). A read of an edited site sees the edited value.
    edits: (site, layer) -> fn(value) -> new value of the same shape (patching, ablation, steering).
    """

    def __init__(self, model, family: str, reads: Iterable[tuple[str, int]] = (),
                 edits: Mapping[tuple[str, int], Callable] | None = None):
        self.model, self.family = model, family
        self.reads = list(dict.fromkeys(reads))
        self.edits = dict(edits or {})
        self.captured: dict[tuple[str, int], object] = {}
        self._handles: list = []

    def __enter__(self) -> SiteHooks:
        try:
            for key, fn in self.edits.items():        # edits first: a read of the same site sees the edit
                self._hook(key, fn)
            for key in self.reads:
                self._hook(key, None)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, key, edit) -> None:
        module, io = locate(self.model, self.family, *key)
        captured = self.captured

        def apply(value):
            if edit is not None:
                value = edit(value)
            else:
                captured[key] = value.detach()
            return value

        if io == "output":
            def on_output(mod, args, output):
                if isinstance(output, tuple):
                    new = apply(output[0])
                    return (new, *output[1:]) if edit is not None else None
                new = apply(output)
                return new if edit is not None else None
            self._handles.append(module.register_forward_hook(on_output))
        else:
            def on_input(mod, args, kwargs):
                if args:
                    new = apply(args[0])
                    return ((new, *args[1:]), kwargs) if edit is not None else None
                new = apply(kwargs["hidden_states"])
                return (args, {**kwargs, "hidden_states": new}) if edit is not None else None
            self._handles.append(module.register_forward_pre_hook(on_input, with_kwargs=True))


def router(model, family: str, layer: int):
    """The router module of vindex layer `layer` (block layer - 1), or None for a dense block of an MoE
    model (DeepSeek-V3's first blocks, Qwen2-MoE's mlp_only_layers)."""
    m = _submodule(blocks(model)[layer - 1], ROUTERS[family])
    return m if m is not None and hasattr(m, "top_k") else None


class RouterHooks:
    """Forward hooks on the routers of `layers` (MoE blocks only): after a forward pass
    `captured[layer] = (logits [N, E], weights [N, k], experts [N, k])` as the router returned them,
    for the N = B*T tokens in row-major order."""

    def __init__(self, model, family: str, layers: Iterable[int]):
        from vindex.errors import NotMoE
        if family not in ROUTERS:
            raise NotMoE(f"routing: the {family} family has no experts (MoE families: {', '.join(ROUTERS)})")
        self.model, self.family = model, family
        self.modules = {l: m for l in layers if l >= 1 for m in [router(model, family, l)] if m is not None}
        self.captured: dict[int, tuple] = {}
        self._handles: list = []

    def __enter__(self) -> RouterHooks:
        for layer, m in self.modules.items():
            def on_output(mod, args, output, layer=layer):
                self.captured[layer] = tuple(o.detach() for o in output[:3])
            self._handles.append(m.register_forward_hook(on_output))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _submodule(root, path: str):
    m = root
    for part in path.split("."):
        m = getattr(m, part, None)
        if m is None:
            return None
    return m
