"""The weights job on tiny random models, checked against direct computations from the loaded model.

References read the weights through transformers (model.layers[i].mlp.down_proj.weight, fused MoE
experts, GPT-2's Conv1D), not through vindex's tensor-name maps, so the maps are checked too.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vindex import Vindex, verify
from vindex.errors import InvalidValue, ManifestError, VindexError
from vindex.ingest import down_meta, ov_gate, spectra
from vindex.ingest.checkpoint import ModelWeights, WeightsError
from vindex.ingest import build_weights
from vindex.layers import parse_layers

V, D, F, TOP_K = 96, 16, 24, 5


def _tokenizer(folder, vocab=V):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(folder / "tokenizer.json"))


def _configs():
    import transformers as T
    common = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=3, num_attention_heads=4)
    return {
        "llama": T.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=True),        # GQA 4:2
        "qwen3": T.Qwen3Config(**common, num_key_value_heads=1, head_dim=8, tie_word_embeddings=False),
        "gemma3": T.Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=8),
        "mixtral": T.MixtralConfig(**common, num_key_value_heads=2, num_local_experts=3, num_experts_per_tok=2),
        "qwen2_moe": T.Qwen2MoeConfig(**common, num_key_value_heads=2, num_experts=3, num_experts_per_tok=2,
                                      moe_intermediate_size=8, shared_expert_intermediate_size=12),
        "gpt2": T.GPT2Config(vocab_size=V, n_embd=D, n_layer=3, n_head=4, n_positions=32, bos_token_id=0,
                             eos_token_id=0),
        "bert": T.BertConfig(**common, max_position_embeddings=32),
    }


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """name -> (folder, loaded model) for each family; norm weights randomised so folding shows."""
    import transformers as T
    root = tmp_path_factory.mktemp("tiny-models")
    out = {}
    for name, cfg in _configs().items():
        torch.manual_seed(0)
        model = T.BertModel(cfg) if name == "bert" else T.AutoModelForCausalLM.from_config(cfg)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname.lower() or "ln_" in pname:
                    p.copy_(torch.randn_like(p) * 0.5 + (0.0 if name == "gemma3" else 1.0))
        model.eval()
        folder = root / name
        model.save_pretrained(folder)
        _tokenizer(folder)
        out[name] = (folder, model)
    return out


@pytest.fixture(scope="session")
def built(tiny_models, tmp_path_factory):
    """name -> opened vindex, built with the defaults (plus feature_layers='later' for llama)."""
    root = tmp_path_factory.mktemp("weights-vindexes")
    out = {}
    for name, (folder, _) in tiny_models.items():
        kw = {"feature_layers": "later"} if name == "llama" else {}
        out[name] = Vindex.open(build_weights(folder, root / name, top_k=TOP_K, progress=False, **kw))
    return out


# -- references from the loaded model ------------------------------------------------------------------

def _np(t):
    return t.detach().float().numpy()


def _blocks(name, model):
    return model.encoder.layer if name == "bert" else (model.transformer.h if name == "gpt2" else model.model.layers)


def ref_ffn(name, model, b):
    """[(expert, gate (F, d), up | None, down (d, F))] of block b, from the module tree."""
    blk = _blocks(name, model)[b]
    if name == "gpt2":
        return [(None, _np(blk.mlp.c_fc.weight).T, None, _np(blk.mlp.c_proj.weight).T)]
    if name == "bert":
        return [(None, _np(blk.intermediate.dense.weight), None, _np(blk.output.dense.weight))]
    mlp = blk.mlp
    if hasattr(mlp, "experts"):
        gu, dn = _np(mlp.experts.gate_up_proj), _np(mlp.experts.down_proj)
        f = gu.shape[1] // 2
        out = [(e, gu[e, :f], gu[e, f:], dn[e]) for e in range(gu.shape[0])]
        if getattr(mlp, "shared_expert", None) is not None:
            s = mlp.shared_expert
            out.append((-1, _np(s.gate_proj.weight), _np(s.up_proj.weight), _np(s.down_proj.weight)))
        return out
    return [(None, _np(mlp.gate_proj.weight), _np(mlp.up_proj.weight), _np(mlp.down_proj.weight))]


def ref_attn(name, model, b):
    """(W_V (n_kv*hd, d), W_O (d, n_heads*hd)) of block b."""
    blk = _blocks(name, model)[b]
    if name == "gpt2":
        w = _np(blk.attn.c_attn.weight).T
        return w[2 * D:], _np(blk.attn.c_proj.weight).T
    if name == "bert":
        return _np(blk.attention.self.value.weight), _np(blk.attention.output.dense.weight)
    return _np(blk.self_attn.v_proj.weight), _np(blk.self_attn.o_proj.weight)


def _embedding(name, model):
    return _np(model.get_input_embeddings().weight)


def _rows(vx, table, **where):
    t = vx.read(table).to_pylist()
    return [r for r in t if all(r[k] == v for k, v in where.items())]


# -- down_meta ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(_configs()))
def test_down_meta_matches_embedding_times_down(name, tiny_models, built):
    folder, model = tiny_models[name]
    vx = built[name]
    E = _embedding(name, model)
    rows = vx.read("features").to_pylist()
    n_layers = model.config.num_hidden_layers
    assert sorted({r["layer"] for r in rows}) == list(range(1, n_layers + 1))
    by_key = {(r["layer"], r["expert"], r["feature"]): r for r in rows}
    n_expected = 0
    for b in range(n_layers):
        for expert, gate, up, down in ref_ffn(name, model, b):
            logits = E @ down                                       # (V, F): LarQL's W_E . W_down
            for f in range(down.shape[1]):
                r = by_key[(b + 1, expert, f)]
                order = np.argsort(-logits[:, f])[:TOP_K]
                assert [t["token_id"] for t in r["top_tokens"]] == order.tolist()
                np.testing.assert_allclose([t["logit"] for t in r["top_tokens"]], logits[order, f], rtol=1e-5, atol=1e-5)
                assert [t["token"] for t in r["top_tokens"]] == [f"w{i}" for i in order]
                assert r["top_token_id"] == order[0] and r["top_token"] == f"w{order[0]}"
                assert r["c_score"] == pytest.approx(logits[order[0], f], rel=1e-5)
                # per-feature stats
                assert r["gate_norm"] == pytest.approx(np.linalg.norm(gate[f]), rel=1e-5)
                assert r["down_norm"] == pytest.approx(np.linalg.norm(down[:, f]), rel=1e-5)
                cos = gate[f] @ down[:, f] / (np.linalg.norm(gate[f]) * np.linalg.norm(down[:, f]))
                assert r["cos_gate_down"] == pytest.approx(cos, rel=1e-4, abs=1e-6)
                if up is None:
                    assert r["up_norm"] is None
                else:
                    assert r["up_norm"] == pytest.approx(np.linalg.norm(up[f]), rel=1e-5)
                # the stored vector is W_down's column f (the default, vindex.defaults; float16)
                np.testing.assert_allclose(r["vector"], down[:, f], rtol=2e-3, atol=1e-4)
                n_expected += 1
    assert len(rows) == n_expected
    assert vx.manifest["extraction"]["weights"]["unembedding"]["kind"] == "embedding"
    assert verify(vx.root) == []


def _logit_lens(name, model, direction):
    """The model's own output path applied to one residual-stream direction (biases removed)."""
    x = torch.from_numpy(direction)[None, None]
    with torch.no_grad():
        if name == "gpt2":
            ln = model.transformer.ln_f
            h = ln(x) - ln.bias
        else:
            h = model.model.norm(x)
        return model.lm_head(h)[0, 0].numpy()


@pytest.mark.parametrize("name", ["qwen3", "gemma3", "gpt2", "llama"])
def test_lm_head_unembedding_is_the_models_logit_lens(name, tiny_models, tmp_path):
    """Folded norms give the same top-k as running the model's norm + lm_head, up to the RMS scale."""
    folder, model = tiny_models[name]
    vx = Vindex.open(build_weights(folder, tmp_path / "vx", top_k=TOP_K, unembedding="lm_head",
                                   tables=("features",), progress=False))
    info = vx.manifest["extraction"]["weights"]["unembedding"]
    assert info["kind"] == "lm_head" and info["tied"] == (name != "qwen3")
    rows = {(r["layer"], r["feature"]): r for r in vx.read("features").to_pylist()}
    for b in range(model.config.num_hidden_layers):
        (_, _, _, down), = ref_ffn(name, model, b)
        for f in range(down.shape[1]):
            direction = down[:, f]
            if name == "gemma3":   # Gemma 3 normalises the FFN output before the residual add
                direction = model.model.layers[b].post_feedforward_layernorm(torch.from_numpy(direction)).detach().numpy()
            lens = _logit_lens(name, model, direction)
            order = np.argsort(-lens)[:TOP_K]
            r = rows[(b + 1, f)]
            assert [t["token_id"] for t in r["top_tokens"]] == order.tolist()
            ratio = np.array([t["logit"] for t in r["top_tokens"]]) / lens[order]
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)       # a positive per-feature scale
            assert ratio[0] > 0


def test_encoder_has_no_lm_head_unembedding(tiny_models, tmp_path):
    with pytest.raises(InvalidValue, match="encoder"):
        build_weights(tiny_models["bert"][0], tmp_path / "vx", unembedding="lm_head", progress=False)


def test_streamed_top_k_equals_one_shot():
    rng = np.random.default_rng(1)
    u = rng.standard_normal((1000, 12)).astype(np.float32)
    down = rng.standard_normal((12, 70)).astype(np.float32)
    full = u @ down
    want = np.argsort(-full, axis=0)[:7].T
    for chunk, block in [(256, 1 << 30), (16, 4 * 16 * 50), (1, 4 * 13), (70, 4 * 70 * 7)]:
        ids, vals = down_meta.top_tokens(u, down, 7, feature_chunk=chunk, max_block_bytes=block)
        assert (ids == want).all(), (chunk, block)
        np.testing.assert_allclose(vals, np.take_along_axis(full.T, want, 1), rtol=1e-5)
    with pytest.raises(InvalidValue, match="top_k"):
        down_meta.top_tokens(u, down, 0)
    with pytest.raises(InvalidValue, match="W_down"):
        down_meta.top_tokens(u, down.T, 3)


# -- OV-gate --------------------------------------------------------------------------------------------

def _heads(model):
    c = model.config
    n_heads = getattr(c, "num_attention_heads", None) or c.n_head
    n_kv = getattr(c, "num_key_value_heads", None) or n_heads
    hd = getattr(c, "head_dim", None) or D // n_heads
    return n_heads, n_kv, hd


@pytest.mark.parametrize("name", list(_configs()))
def test_ov_gate_matches_direct_products(name, tiny_models, built):
    _, model = tiny_models[name]
    vx = built[name]
    n_heads, n_kv, hd = _heads(model)
    rows = vx.read("ov_gate").to_pylist()
    n_layers = model.config.num_hidden_layers
    checked = 0
    for b in range(n_layers):
        W_V, W_O = ref_attn(name, model, b)
        feature_blocks = range(b, n_layers) if name == "llama" else [b]     # llama was built with 'later'
        for fb in feature_blocks:
            ffn = ref_ffn(name, model, fb)
            gate = np.concatenate([g for _, g, _, _ in ffn])
            ids = [(e, f) for e, g, _, _ in ffn for f in range(g.shape[0])]
            for h in range(n_heads):
                W_Oh = W_O[:, h * hd:(h + 1) * hd]                                  # (d, hd)
                g = h // (n_heads // n_kv)                                          # GQA: the KV head of h
                W_Vg = W_V[g * hd:(g + 1) * hd]                                     # (hd, d)
                refs = {"o": np.linalg.norm(gate @ W_Oh, axis=1),
                        "ov": np.linalg.norm(gate @ W_Oh @ W_Vg, axis=1)}           # full (F, d) product
                for variant, c in refs.items():
                    got = sorted((r for r in rows if r["layer"] == b + 1 and r["head"] == h
                                  and r["variant"] == variant and r["feature_layer"] == fb + 1),
                                 key=lambda r: r["rank"])
                    order = np.argsort(-c)[:TOP_K]
                    assert [r["rank"] for r in got] == list(range(1, len(order) + 1))
                    assert [(r["expert"], r["feature"]) for r in got] == [ids[i] for i in order]
                    np.testing.assert_allclose([r["coupling"] for r in got], c[order], rtol=1e-4)
                    assert got[0]["total_coupling"] == pytest.approx(c.sum(), rel=1e-4)
                    checked += 1
    assert checked == len(rows) // TOP_K


def test_ov_gate_functions_reject_bad_shapes():
    gate = np.ones((5, 8), np.float32)
    with pytest.raises(InvalidValue, match="W_O"):
        ov_gate.coupling_o(gate, np.ones((7, 8), np.float32), 2)
    with pytest.raises(InvalidValue, match="multiple of n_heads"):
        ov_gate.coupling_o(gate, np.ones((8, 9), np.float32), 2)
    with pytest.raises(InvalidValue, match="n_kv_heads"):
        ov_gate.coupling_ov(gate, np.ones((8, 8), np.float32), np.ones((8, 8), np.float32), 4, 3)
    with pytest.raises(InvalidValue, match="W_V"):
        ov_gate.coupling_ov(gate, np.ones((8, 8), np.float32), np.ones((3, 8), np.float32), 4, 2)
    with pytest.raises(InvalidValue, match="variant"):
        ov_gate.top_couplings(np.ones((5, 2)), 2, variant="qk", feature_layer=1)


# -- spectra --------------------------------------------------------------------------------------------

def _ref_summary(m):
    s = np.linalg.svd(m.astype(np.float64), compute_uv=False)
    p = s / s.sum()
    q = s ** 2 / (s ** 2).sum()
    n = len(s)
    return {"top": s[:spectra.N_TOP], "effective_rank": math.exp(-(p * np.log(p)).sum()),
            "spectral_entropy": -(q * np.log(q)).sum() / math.log(n),
            "energy_top1pct": q[:math.ceil(0.01 * n)].sum(), "energy_top10pct": q[:math.ceil(0.1 * n)].sum()}


@pytest.mark.parametrize("name", ["llama", "mixtral", "gpt2", "qwen2_moe"])
def test_layer_stats_match_numpy_svd(name, tiny_models, built):
    _, model = tiny_models[name]
    rows = {(r["layer"], r["matrix"]): r for r in built[name].read("layer_stats").to_pylist()}
    n_layers = model.config.num_hidden_layers
    for b in range(n_layers):
        W_V, W_O = ref_attn(name, model, b)
        mats = {"v": W_V, "o": W_O}
        for expert, gate, up, down in ref_ffn(name, model, b):
            prefix = "" if expert is None else ("shared." if expert == -1 else f"expert{expert}.")
            mats.update({prefix + "gate": gate, prefix + "down": down})
            if up is not None:
                mats[prefix + "up"] = up
        for matrix, m in mats.items():
            r = rows[(b + 1, matrix)]
            ref = _ref_summary(m)
            assert (r["rows"], r["cols"]) == m.shape
            np.testing.assert_allclose(r["top_singular_values"], ref["top"], rtol=1e-4, atol=1e-6 * ref["top"][0])
            for key in ("effective_rank", "spectral_entropy", "energy_top1pct", "energy_top10pct"):
                assert r[key] == pytest.approx(ref[key], rel=1e-4), (matrix, key)
            assert r["depth"] == pytest.approx((b + 1) / n_layers)
    assert {"q", "k"} <= {m for (layer, m) in rows if layer == 1}
    emb = rows[(0, "embed")]
    np.testing.assert_allclose(emb["top_singular_values"], _ref_summary(_embedding(name, model))["top"], rtol=1e-4)
    if name in ("mixtral", "qwen2_moe"):
        assert (1, "router") in rows


def test_spectrum_summary_edge_cases():
    zero = spectra.spectrum_summary(np.zeros(4))
    assert zero["effective_rank"] == 0 and zero["energy_top10pct"] == 0
    flat = spectra.spectrum_summary(np.ones(100))
    assert flat["effective_rank"] == pytest.approx(100) and flat["spectral_entropy"] == pytest.approx(1)
    assert flat["energy_top1pct"] == pytest.approx(0.01) and flat["energy_top10pct"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="2-D"):
        spectra.singular_values(np.ones(3))


def test_untied_lm_head_gets_its_own_spectrum(built):
    names = {(r["layer"], r["matrix"]) for r in built["qwen3"].read("layer_stats").to_pylist()}
    assert (3, "lm_head") in names and (0, "embed") in names
    assert not any(m == "lm_head" for _, m in
                   {(r["layer"], r["matrix"]) for r in built["llama"].read("layer_stats").to_pylist()})


# -- reading checkpoints ------------------------------------------------------------------------------------

def test_bfloat16_and_float16_checkpoints_read_as_float32(tiny_models, tmp_path):
    import transformers as T
    _, model = tiny_models["llama"]
    for dtype in (torch.bfloat16, torch.float16):
        folder = tmp_path / str(dtype)
        model.to(dtype).save_pretrained(folder)
        model.to(torch.float32)
        w = ModelWeights(folder)
        (blk,) = w.ffn(1)
        ref = model.model.layers[1].mlp.down_proj.weight.to(dtype).float().detach().numpy()
        assert blk.down.dtype == np.float32 and (blk.down == ref).all()
        e = w.embedding(slice(5, 9))
        assert (e == model.model.embed_tokens.weight[5:9].to(dtype).float().detach().numpy()).all()


def test_reads_in_small_blocks_equal_the_whole_tensor(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    from vindex.ingest import checkpoint as tensors
    t = {"bf16": torch.randn(1000, 7).to(torch.bfloat16), "f32": torch.randn(33, 5), "scalar": torch.tensor(3.5),
         "f16": torch.randn(10, 3).half()}
    save_file(t, tmp_path / "x.safetensors")
    monkeypatch.setattr(tensors, "_BLOCK_BYTES", 100)            # many blocks per tensor
    f = tensors.SafetensorsFolder(tmp_path)
    for name, ref in t.items():
        assert (f.read(name) == ref.float().numpy()).all(), name
    assert (f.read("bf16", slice(10, 500)) == t["bf16"][10:500].float().numpy()).all()
    assert f.read("f32", slice(40, 50)).shape == (0, 5)
    with pytest.raises(WeightsError, match="no tensor 'nope'"):
        f.read("nope")


def test_library_errors_become_weights_errors_naming_file_and_tensor(tmp_path):
    from safetensors.torch import save_file
    from vindex.ingest import checkpoint as tensors
    save_file({"w": torch.randn(64, 8), "q": torch.ones(4, dtype=torch.int8)}, tmp_path / "x.safetensors")
    f = tensors.SafetensorsFolder(tmp_path)
    with pytest.raises(WeightsError, match=r"x\.safetensors: tensor 'q' has dtype I8.*dequantize"):
        f.read("q")
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(data[:-100])        # cut short after the header was read
    with pytest.raises(WeightsError, match=r"x\.safetensors: tensor 'w'.*truncated"):
        f.read("w")


def test_blocks_are_stored_at_layer_block_plus_one(built):
    t = built["llama"].read("features", layers=[1], columns=["layer", "expert"]).to_pylist()
    assert {r["layer"] for r in t} == {1} and len(t) == F
    assert all(r["expert"] is None for r in t)
    assert built["llama"].layers("ov_gate") == [1, 2, 3]
    experts = {r["expert"] for r in built["qwen2_moe"].read("features", layers=[2]).to_pylist()}
    assert experts == {0, 1, 2, -1}


def test_manifest_records_model_and_extraction(built):
    m = built["gemma3"].manifest
    assert m["model"]["n_layers"] == 3 and m["model"]["d_model"] == D and m["model"]["n_kv_heads"] == 1
    assert m["model"]["embed_scale"] == pytest.approx(math.sqrt(D))
    ex = m["extraction"]["weights"]
    assert ex["top_k"] == TOP_K and ex["ov_variants"] == ["o", "ov"] and ex["vectors"] == "down"
    assert built["mixtral"].manifest["model"]["n_experts"] == 3


def test_fused_moe_layout_reads_like_per_expert_tensors(tiny_models, built, tmp_path):
    """transformers 5 keeps experts fused (gate_up_proj (E, 2F, d), down_proj (E, d, F)); both layouts read alike."""
    import shutil
    from safetensors.numpy import load_file, save_file
    folder, _ = tiny_models["mixtral"]
    fused = tmp_path / "fused"
    shutil.copytree(folder, fused)
    t = load_file(folder / "model.safetensors")
    for b in range(3):
        pre = f"model.layers.{b}.block_sparse_moe."
        experts = [[t.pop(f"{pre}experts.{e}.{w}.weight") for w in ("w1", "w3", "w2")] for e in range(3)]
        t[f"model.layers.{b}.mlp.experts.gate_up_proj"] = np.stack([np.concatenate([g, u]) for g, u, _ in experts])
        t[f"model.layers.{b}.mlp.experts.down_proj"] = np.stack([d for _, _, d in experts])
    save_file(t, fused / "model.safetensors")
    vx = Vindex.open(build_weights(fused, tmp_path / "vx", top_k=TOP_K, tables=("features", "ov_gate"),
                                   progress=False))
    for table in ("features", "ov_gate"):
        assert vx.read(table).drop(["model"]).equals(built["mixtral"].read(table).drop(["model"]))


def test_build_weights_flag_writes_the_weight_tables_next_to_activations(tmp_path):
    from click.testing import CliRunner
    from ingest_fixtures import make_tiny_model, write_prompts
    from vindex.cli import main
    model = make_tiny_model(tmp_path / "m", "gpt2")
    prompts = write_prompts(tmp_path / "p.jsonl")
    res = CliRunner().invoke(main, ["build", str(model), str(tmp_path / "vx"), "--prompts", str(prompts),
                                    "--weights", "--quiet"])
    assert res.exit_code == 0, res.output
    vx = Vindex.open(tmp_path / "vx")
    assert {"activations", "pooled", "features", "ov_gate", "layer_stats"} <= set(vx.tables)
    assert verify(vx.root) == []


# -- resume ---------------------------------------------------------------------------------------------

def test_resume_skips_finished_shards_and_refuses_other_parameters(tiny_models, tmp_path):
    folder, _ = tiny_models["llama"]
    out = tmp_path / "vx"
    build_weights(folder, out, top_k=3, layers="0-1", progress=False)
    vx = Vindex.open(out)
    assert vx.layers("features") == [1]
    first = {e["path"]: (vx.path(e).stat().st_mtime_ns, e["sha256"]) for e in vx.files("features")}
    build_weights(folder, out, top_k=3, progress=False)            # the rest, keeping layer 1
    vx = Vindex.open(out)
    assert vx.layers("features") == [1, 2, 3]
    for e in vx.files("features"):
        if e["path"] in first:
            assert (vx.path(e).stat().st_mtime_ns, e["sha256"]) == first[e["path"]]
    with pytest.raises(ManifestError, match="top_k: 3 now 4"):
        build_weights(folder, out, top_k=4, progress=False)
    build_weights(folder, out, top_k=4, resume=False, progress=False)
    rows = Vindex.open(out).read("features", layers=[1]).to_pylist()
    assert len(rows[0]["top_tokens"]) == 4
    assert verify(out) == []


def test_an_interrupted_run_keeps_finished_shards_and_resumes_to_the_same_result(tiny_models, tmp_path, monkeypatch):
    from vindex.ingest import weights as job
    folder, _ = tiny_models["mixtral"]
    ref = Vindex.open(build_weights(folder, tmp_path / "ref", top_k=3, progress=False))
    real = job.ov_gate_rows

    def killed_in_block_2(weights, b, *args, **kw):
        if b == 2:
            raise RuntimeError("killed")
        return real(weights, b, *args, **kw)

    monkeypatch.setattr(job, "ov_gate_rows", killed_in_block_2)
    with pytest.raises(RuntimeError, match="killed"):
        build_weights(folder, tmp_path / "vx", top_k=3, progress=False)
    vx = Vindex.open(tmp_path / "vx")
    assert vx.layers("features") == [1, 2, 3] and vx.layers("ov_gate") == [1, 2]
    monkeypatch.setattr(job, "ov_gate_rows", real)
    vx = Vindex.open(build_weights(folder, tmp_path / "vx", top_k=3, progress=False))
    for table in ("features", "ov_gate", "layer_stats"):
        assert {e["path"]: e["sha256"] for e in vx.files(table)} == {e["path"]: e["sha256"] for e in ref.files(table)}


def test_resume_rewrites_a_shard_that_went_missing(tiny_models, tmp_path):
    folder, _ = tiny_models["gpt2"]
    out = build_weights(folder, tmp_path / "vx", top_k=3, tables=("ov_gate",), progress=False)
    vx = Vindex.open(out)
    victim = vx.path(vx.files("ov_gate", layer=2)[0])
    victim.unlink()
    build_weights(folder, out, top_k=3, tables=("ov_gate",), progress=False)
    assert victim.is_file() and verify(out) == []


# -- bad inputs -----------------------------------------------------------------------------------------

def test_bad_arguments_are_named(tiny_models, tmp_path):
    folder, _ = tiny_models["llama"]
    cases = [({"top_k": 0}, "top_k"), ({"top_k": V + 1}, "vocabulary size"), ({"unembedding": "wu"}, "unembedding"),
             ({"ov_variants": ("o", "qk")}, "ov_variants"), ({"feature_layers": "all"}, "feature_layers"),
             ({"feature_layers": 0}, "feature_layers"), ({"tables": ("features", "pooled")}, "tables"),
             ({"layers": "1-9"}, "layers"), ({"layers": "x"}, "layers"), ({"vectors": "up"}, "vectors"),
             ({"ov_top_k": -1}, "ov_top_k")]
    for kw, match in cases:
        with pytest.raises(InvalidValue, match=match):
            build_weights(folder, tmp_path / "vx", progress=False, **kw)
    assert parse_layers("0-2, 3", 3) == [0, 1, 2, 3] and parse_layers([3, 1], 3) == [1, 3]


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidValue, match=r"'t5'.*llama"):
        build_weights(folder, tmp_path / "vx", progress=False)
    with pytest.raises(InvalidValue, match=r"'t5'.*mixtral"):
        ModelWeights(folder)


def test_truncated_or_incomplete_checkpoints_fail_clearly(tiny_models, tmp_path):
    import shutil
    folder, _ = tiny_models["llama"]
    bad = tmp_path / "truncated"
    shutil.copytree(folder, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        ModelWeights(bad)
    (bad / "model.safetensors").write_bytes(b"\x00\x01")
    with pytest.raises(WeightsError, match="not a safetensors file"):
        ModelWeights(bad)
    # a tensor missing from an otherwise good file
    from safetensors.numpy import load_file, save_file
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    tensors = load_file(partial / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, partial / "model.safetensors")
    with pytest.raises(WeightsError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        build_weights(partial, tmp_path / "vx2", progress=False)
    with pytest.raises(InvalidValue, match="block index 3"):
        ModelWeights(folder).ffn(3)


def test_other_model_in_the_same_folder_is_refused(tiny_models, tmp_path):
    out = build_weights(tiny_models["llama"][0], tmp_path / "vx", name="m", top_k=2, tables=("layer_stats",),
                        progress=False)
    with pytest.raises(VindexError, match="n_layers"):
        import transformers as T
        cfg = _configs()["llama"]
        cfg.num_hidden_layers = 2
        other = tmp_path / "two-layer"
        T.AutoModelForCausalLM.from_config(cfg).save_pretrained(other)
        build_weights(other, out, name="m", progress=False)
