"""The site hooks (vindex.ingest.sites) against independent arithmetic on tiny random models.

Each family's sites are checked by identities that hold whatever the weights are:
resid_post(l) = output_hidden_states[l] (before the final norm), resid_mid = resid_pre + attn_out,
resid_post = resid_mid + mlp_out, and mlp_out = W_down(mlp_post) computed by hand from the module.
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from ingest_fixtures import FAMILIES, tiny_config
from vindex.errors import UnknownSite
from vindex.ingest.sites import SITES, SiteHooks, blocks, check_sites, hook_name

N_LAYERS = 3


def tiny(family: str):
    model_type, _, encoder = FAMILIES[family]
    torch.manual_seed(0)
    cfg = tiny_config(model_type, 300, N_LAYERS)
    model = (AutoModel if encoder else AutoModelForCausalLM).from_config(cfg).eval()
    ids = torch.randint(3, 300, (2, 7))
    return model, ids


def run(model, ids, **kw):
    with torch.inference_mode():
        return model(input_ids=ids, output_hidden_states=True, **kw)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "bert"])
@torch.inference_mode()
def test_pre_norm_identities(family):
    model, ids = tiny(family)
    sites = check_sites("all", family)
    assert sites == SITES
    reads = [(s, l) for s in sites for l in range(1, N_LAYERS + 1)] + [("resid_post", 0)]
    with SiteHooks(model, family, reads=reads) as hooks:
        out = run(model, ids)
    got = hooks.captured
    hs = out.hidden_states
    for l in range(N_LAYERS):                  # the last hidden state has the final norm applied
        torch.testing.assert_close(got[("resid_post", l)], hs[l], rtol=0, atol=0)
    for l in range(1, N_LAYERS + 1):
        torch.testing.assert_close(got[("resid_pre", l)] + got[("attn_out", l)], got[("resid_mid", l)],
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[("resid_mid", l)] + got[("mlp_out", l)], got[("resid_post", l)],
                                   rtol=1e-5, atol=1e-5)
        if l > 1:
            torch.testing.assert_close(got[("resid_pre", l)], got[("resid_post", l - 1)], rtol=0, atol=0)
        block = blocks(model)[l - 1]
        down = block.mlp.c_proj if family == "gpt2" else block.mlp.down_proj
        written = down(got[("mlp_post", l)])
        if family in ("gemma2", "gemma3"):
            written = block.post_feedforward_layernorm(written)
        torch.testing.assert_close(written, got[("mlp_out", l)], rtol=1e-5, atol=1e-5)
    # the final norm of the last residual stream is what output_hidden_states returns
    final_norm = model.transformer.ln_f if family == "gpt2" else model.model.norm
    torch.testing.assert_close(final_norm(got[("resid_post", N_LAYERS)]), hs[-1], rtol=1e-5, atol=1e-5)


def test_bert_is_post_norm():
    model, ids = tiny("bert")
    assert check_sites("all", "bert") == ("resid_pre", "mlp_post", "resid_post")
    with pytest.raises(UnknownSite, match="bert family has no such site.*post-norm"):
        check_sites("attn_out", "bert")
    with SiteHooks(model, "bert", reads=[("resid_post", l) for l in range(N_LAYERS + 1)]) as hooks:
        out = run(model, ids)
    for l in range(N_LAYERS + 1):
        torch.testing.assert_close(hooks.captured[("resid_post", l)], out.hidden_states[l], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_edits(family):
    model, ids = tiny(family)
    clean = run(model, ids).logits
    # identity edit: nothing changes
    with SiteHooks(model, family, edits={("attn_out", 2): lambda h: h, ("mlp_post", 1): lambda h: h}):
        same = run(model, ids).logits
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    # replacing the last block's output with a stored copy of itself reproduces the clean logits
    with SiteHooks(model, family, reads=[("resid_post", N_LAYERS)]) as hooks:
        run(model, ids)
    stored = hooks.captured[("resid_post", N_LAYERS)].clone()
    with SiteHooks(model, family, edits={("resid_post", N_LAYERS): lambda h: stored}):
        torch.testing.assert_close(run(model, ids).logits, clean, rtol=0, atol=0)
    # zeroing the MLP of block 1 changes the logits, and a read of the edited site sees the edit
    with SiteHooks(model, family, edits={("mlp_out", 1): torch.zeros_like},
                   reads=[("mlp_out", 1)]) as hooks:
        ablated = run(model, ids).logits
    assert not torch.allclose(ablated, clean)
    assert float(hooks.captured[("mlp_out", 1)].abs().max()) == 0.0
    # hooks are gone after the block
    torch.testing.assert_close(run(model, ids).logits, clean, rtol=0, atol=0)


def test_names_and_errors():
    assert hook_name("resid_post", 1) == "blocks.0.hook_resid_post"
    assert hook_name("mlp_post", 4) == "blocks.3.mlp.hook_post"
    assert hook_name("resid_post", 0) == "blocks.0.hook_resid_pre"
    with pytest.raises(UnknownSite, match="only resid_post"):
        hook_name("attn_out", 0)
    with pytest.raises(UnknownSite, match=r"unknown \['attn'\].*resid_pre, attn_out"):
        check_sites("resid_post,attn", "llama")
    assert check_sites(["mlp_out", "resid_post"]) == ("mlp_out", "resid_post")
    model, _ = tiny("llama")
    with pytest.raises(UnknownSite, match="layers 1..3"):
        SiteHooks(model, "llama", reads=[("attn_out", 4)]).__enter__()
