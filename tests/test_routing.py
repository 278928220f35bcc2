"""The routing table of tiny random MoE models (Qwen2-MoE with a shared expert, Mixtral, DeepSeek-V3
with shared experts and dense first blocks) equals the top-k of the router's logits, computed here by
hand from the MoE block's input and the router weight; expert_load adds it up."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ingest_fixtures import PROMPTS, tiny_tokenizer
from vindex.errors import UnknownSite
from vindex.ingest import build
from vindex.query import connect

COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
MOE = {
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                      shared_expert_intermediate_size=32, decoder_sparse_step=1, norm_topk_prob=False),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    # topk_group = n_group: no group limit, so the choice is the top-k of sigmoid(logits) (bias 0)
    "deepseek_v3": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
                        first_k_dense_replace=1, n_group=2, topk_group=2, q_lora_rank=None, kv_lora_rank=16,
                        qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, head_dim=4, routed_scaling_factor=1.0,
                        num_key_value_heads=4),   # MLA: as many key/value heads as query heads
}


def tiny_moe(model_type):
    tok = tiny_tokenizer(encoder=False, add_bos=True)
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), **{**COMMON, **MOE[model_type]})
    model = AutoModelForCausalLM.from_config(cfg).eval()
    for b in model.model.layers:               # random router weights (some init them to zero)
        if hasattr(b.mlp, "gate") and hasattr(b.mlp.gate, "top_k"):
            torch.nn.init.normal_(b.mlp.gate.weight, std=0.5)
    return model, tok


@pytest.mark.parametrize("model_type", list(MOE))
def test_routing_is_the_routers_top_k(model_type, tmp_path):
    model, tok = tiny_moe(model_type)
    root = build(model=model, tokenizer=tok, name=model_type.replace("_", "-"), out=tmp_path / "v",
                 prompts=[p["text"] for p in PROMPTS], sites="resid_post,mlp_out", dtype="float32", progress=False)
    con = connect(root, functions=False)
    k = model.config.num_experts_per_tok
    moe_layers = [l for l, b in enumerate(model.model.layers, 1) if hasattr(getattr(b.mlp, "gate", None), "top_k")]
    assert [r[0] for r in con.sql("SELECT DISTINCT layer FROM routing ORDER BY 1").fetchall()] == moe_layers
    # by hand: the MoE block's input (post_attention_layernorm's output) times the router weight
    for pid in (0, 5):
        ids = tok(PROMPTS[pid]["text"], return_tensors="pt")["input_ids"]
        inputs = {}
        hs = [model.model.layers[l - 1].post_attention_layernorm.register_forward_hook(
            lambda m, a, o, l=l: inputs.__setitem__(l, o[0].float())) for l in moe_layers]
        with torch.no_grad():
            model(input_ids=ids)
        for h in hs:
            h.remove()
        for l in moe_layers:
            logits = (inputs[l] @ model.model.layers[l - 1].mlp.gate.weight.detach().float().T).numpy()   # [T, E]
            got = con.sql(f"SELECT token_index, rank, expert, weight, logit FROM routing WHERE prompt_id = {pid} "
                          f"AND layer = {l} ORDER BY token_index, rank").fetchnumpy()
            assert len(got["expert"]) == logits.shape[0] * k
            want = np.argsort(-logits, axis=1, kind="stable")[:, :k]
            assert (np.sort(got["expert"].reshape(-1, k), 1) == np.sort(want, 1)).all()
            np.testing.assert_allclose(got["logit"], np.take_along_axis(logits, got["expert"].reshape(-1, k), 1).ravel(),
                                       rtol=1e-4, atol=1e-5)
            w = got["weight"].reshape(-1, k)
            assert (np.diff(w, axis=1) <= 1e-7).all()                   # rank 1 = the largest weight
            if model_type == "qwen2_moe":                               # softmax over all experts, not renormalised
                p = np.exp(logits - logits.max(1, keepdims=True))
                p /= p.sum(1, keepdims=True)
                np.testing.assert_allclose(w, -np.sort(-p, 1)[:, :k], rtol=1e-4, atol=1e-6)
    # expert_load: each MoE layer's routed slots add up to k per token
    load = con.sql("SELECT layer, sum(load), sum(n_routed), any_value(n_tokens) FROM expert_load GROUP BY layer").fetchall()
    n_tokens = con.sql(f"SELECT count(*) FROM activations WHERE layer = {moe_layers[0]} AND site = 'resid_post'").fetchone()[0]
    for layer, total, routed, _ in load:
        assert total == pytest.approx(1.0) and routed == n_tokens * k
    with pytest.raises(UnknownSite, match="fused"):
        build(model=model, tokenizer=tok, name="x", out=tmp_path / "x", prompts=["a b"], sites="mlp_post", progress=False)


def test_routing_off_on_request(tmp_path):
    model, tok = tiny_moe("mixtral")
    root = build(model=model, tokenizer=tok, name="mixtral", out=tmp_path / "v", prompts=["one two", "three"],
                 routing=False, progress=False)
    assert "routing" not in connect(root, functions=False).sql("SELECT tables FROM models").fetchone()[0]
