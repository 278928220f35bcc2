"""Site values read by hooks written here, independently of vindex.ingest.sites: the reference the
site tests (tiny and real models) compare stored rows with."""
from __future__ import annotations

import functools

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@functools.lru_cache(maxsize=1)
def _loaded(folder):
    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()


def hand_sites(folder, text: str) -> dict:
    """{(site, layer): [T, d]} of one unpadded prompt, read by hooks written here, on the modules."""
    tok, model = _loaded(str(folder))
    sandwich = model.config.model_type in ("gemma2", "gemma3_text")
    out, handles = {}, []

    def keep(key, first_of):
        return lambda m, args, kwargs, o: out.__setitem__(key, (first_of(args, kwargs, o))[0].detach())

    for b, block in enumerate(model.model.layers):
        l = b + 1
        handles.append(block.register_forward_hook(
            lambda m, a, k, o, l=l: out.__setitem__(("resid_post", l), (o[0] if isinstance(o, tuple) else o)[0]),
            with_kwargs=True))
        handles.append(block.register_forward_pre_hook(
            lambda m, a, k, l=l: out.__setitem__(("resid_pre", l), (a[0] if a else k["hidden_states"])[0]),
            with_kwargs=True))
        attn = block.post_attention_layernorm if sandwich else block.self_attn
        handles.append(attn.register_forward_hook(
            lambda m, a, o, l=l: out.__setitem__(("attn_out", l), (o[0] if isinstance(o, tuple) else o)[0])))
        mid = block.pre_feedforward_layernorm if sandwich else block.post_attention_layernorm
        handles.append(mid.register_forward_pre_hook(
            lambda m, a, l=l: out.__setitem__(("resid_mid", l), a[0][0])))
        mlp = block.post_feedforward_layernorm if sandwich else block.mlp
        handles.append(mlp.register_forward_hook(
            lambda m, a, o, l=l: out.__setitem__(("mlp_out", l), o[0])))
        handles.append(block.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, l=l: out.__setitem__(("mlp_post", l), a[0][0])))
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    for h in handles:
        h.remove()
    out[("resid_post", 0)] = hs[0][0]
    return {k: v.float().numpy() for k, v in out.items()}
