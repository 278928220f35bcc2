"""The one model-family registry: which model types vindex ingests, and where their tensors live.

    family_of("qwen2", "config.json")        -> "qwen2"    (activations: transformers runs the model)
    architecture_of("qwen3_moe")             -> Architecture(...)   (weights: safetensors tensor names)

Two questions, one table each, both keyed by config.json's `model_type`:
SUPPORTED_MODEL_TYPES lists the types the activation job runs (the ingest tests cover each);
ARCHITECTURES maps the types the weights job reads (a superset: MoE checkpoints too) to their
tensor names. Adding a family means adding it here, nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass

from vindex.errors import UnsupportedArchitecture, UnsupportedWeights

# model_type (config.json) -> vindex family. These are the architectures the ingest tests cover.
SUPPORTED_MODEL_TYPES = {
    "llama": "llama",          # Llama 2/3, SmolLM/SmolLM2
    "mistral": "mistral",
    "qwen2": "qwen2",          # Qwen2, Qwen2.5
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",   # the text-only Gemma 3 (270M, 1B; what GGUF files load as)
    "gpt2": "gpt2",
    "bert": "bert",            # BERT, MiniLM, sentence-transformers encoders
    # mixture-of-experts decoders (transformers 5: experts fused into 3-D tensors, a top-k router
    # at mlp.gate); their builds also write the `routing` table
    "qwen2_moe": "qwen2_moe",  # Qwen1.5-MoE, Qwen2-MoE: softmax top-k + a gated shared expert
    "mixtral": "mixtral",      # Mixtral: softmax over the top-k
    "deepseek_v3": "deepseek_v3",  # DeepSeek-V3 / Kimi-K2 style: sigmoid group-limited top-k, shared experts,
                                   # the first blocks dense (first_k_dense_replace)
}
ENCODER_FAMILIES = {"bert"}
MOE_FAMILIES = {"qwen2_moe", "mixtral", "deepseek_v3"}


def family_of(model_type: str | None, where: str) -> str:
    """The vindex family of a config's model_type, or UnsupportedArchitecture naming the supported ones."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        hint = " (use the text-only gemma3_text checkpoint)" if model_type == "gemma3" else ""
        raise UnsupportedArchitecture(
            f"{where}: model_type {model_type!r} is not supported{hint}; supported families "
            f"(model_type): {supported_families_text()}")
    return SUPPORTED_MODEL_TYPES[model_type]


def supported_families_text() -> str:
    return ", ".join(f"{f} ({t})" for t, f in SUPPORTED_MODEL_TYPES.items())


# -- tensor-name maps (the weights job) ------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    """Where each role's tensor lives, relative to a base prefix that is discovered per file.

    Layer names use `{i}` for the 0-based block index; MoE expert names use `{e}` as well.
    """
    family: str
    embed: str
    layer: str                          # prefix of block i, relative to the base
    attn: tuple[str, str, str, str] | None   # q, k, v, o (None: fused, see qkv)
    ffn: tuple[str, str | None, str]    # gate (or W_in), up (None: non-gated), down
    final_norm: str | None
    bases: tuple[str, ...]              # candidate base prefixes, tried in order
    qkv: tuple[str, str] | None = None  # GPT-2: fused q|k|v (c_attn) and o (c_proj)
    conv1d: bool = False                # GPT-2: weights stored (in, out)
    norm: str = "rms"                   # rms | layer (LayerNorm centres before scaling)
    norm_offset: float = 0.0            # Gemma's RMSNorm multiplies by (1 + w)
    embed_scale: bool = False           # Gemma multiplies input embeddings by sqrt(d_model)
    post_ffn_norm: str | None = None    # Gemma 2/3 normalise the FFN output before the residual add
    experts: tuple[str, str, str] | None = None      # per-expert gate, up, down
    experts_fused: tuple[str, str] | None = None     # transformers-5 layout: gate_up (E,2F,d), down (E,d,F)
    shared_expert: tuple[str, str, str] | None = None
    router: str | None = None
    lm_heads: tuple[str, ...] = ("lm_head.weight",)
    encoder: bool = False


_LLAMA_ATTN = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
               "self_attn.o_proj.weight")
_LLAMA_FFN = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
_DECODER_BASES = ("model.", "", "model.language_model.", "language_model.model.")
_LM_HEADS = ("lm_head.weight", "language_model.lm_head.weight", "model.lm_head.weight")


def _decoder(family, **kw) -> Architecture:
    return Architecture(family=family, embed="embed_tokens.weight", layer="layers.{i}.", attn=_LLAMA_ATTN,
                        ffn=_LLAMA_FFN, final_norm="norm.weight", bases=_DECODER_BASES, lm_heads=_LM_HEADS,
                        **kw)


_GEMMA = dict(norm_offset=1.0, embed_scale=True)
_QWEN_MOE = dict(experts=("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight",
                          "mlp.experts.{e}.down_proj.weight"),
                 experts_fused=("mlp.experts.gate_up_proj", "mlp.experts.down_proj"), router="mlp.gate.weight")

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _decoder("llama"),
    "mistral": _decoder("mistral"),
    "qwen2": _decoder("qwen2"),
    "qwen3": _decoder("qwen3"),
    "gemma": _decoder("gemma", **_GEMMA),
    "gemma2": _decoder("gemma2", post_ffn_norm="post_feedforward_layernorm.weight", **_GEMMA),
    "gemma3_text": _decoder("gemma3", post_ffn_norm="post_feedforward_layernorm.weight", **_GEMMA),
    "gemma3": _decoder("gemma3", post_ffn_norm="post_feedforward_layernorm.weight", **_GEMMA),
    "mixtral": _decoder("mixtral", experts=("block_sparse_moe.experts.{e}.w1.weight",
                                            "block_sparse_moe.experts.{e}.w3.weight",
                                            "block_sparse_moe.experts.{e}.w2.weight"),
                        experts_fused=("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
                        router="block_sparse_moe.gate.weight"),
    "qwen2_moe": _decoder("qwen2_moe", shared_expert=("mlp.shared_expert.gate_proj.weight",
                                                      "mlp.shared_expert.up_proj.weight",
                                                      "mlp.shared_expert.down_proj.weight"), **_QWEN_MOE),
    "qwen3_moe": _decoder("qwen3_moe", **_QWEN_MOE),
    "gpt2": Architecture(family="gpt2", embed="wte.weight", layer="h.{i}.", attn=None,
                         qkv=("attn.c_attn.weight", "attn.c_proj.weight"),
                         ffn=("mlp.c_fc.weight", None, "mlp.c_proj.weight"), final_norm="ln_f.weight",
                         bases=("transformer.", ""), conv1d=True, norm="layer"),
    "bert": Architecture(family="bert", embed="embeddings.word_embeddings.weight", layer="encoder.layer.{i}.",
                         attn=("attention.self.query.weight", "attention.self.key.weight",
                               "attention.self.value.weight", "attention.output.dense.weight"),
                         ffn=("intermediate.dense.weight", None, "output.dense.weight"), final_norm=None,
                         bases=("bert.", "", "model."), norm="layer", encoder=True, lm_heads=()),
}


def architecture_of(model_type: str | None, where: str = "config.json") -> Architecture:
    """The tensor-name map of a config's model_type, or UnsupportedWeights listing the known ones."""
    if model_type not in ARCHITECTURES:
        raise UnsupportedWeights(f"{where}: model_type {model_type!r} has no weight map; the weights job "
                                 f"supports: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[model_type]
