"""Tiny random transformers models (one per supported family) with tiny trained tokenizers.

Built from configs in a second or two each, saved with save_pretrained like a real checkpoint,
so `resolve_model(folder)` and `build()` exercise exactly the path a real model takes.
"""
from __future__ import annotations

from pathlib import Path

CORPUS = [
    "What is the capital city of Australia?", "Write a Python function that returns a factorial.",
    "If a train travels 60 kilometres in 45 minutes, what is its speed?",
    "Translate into French: the library opens at nine.", "def add(a, b):\n    return a - b",
    "Le chat dort sur le canapé.", "¿Puedes ayudarme?", "明日は友達と映画を見に行きます。",
    "the quick brown fox jumps over the lazy dog 0123456789 +-*/=()[]{}<>.,;:!?'\"",
]

PROMPTS = [
    {"category": "factual", "text": "What is the capital city of Australia?"},
    {"category": "coding", "text": "def add(a, b):\n    return a - b"},
    {"category": "reasoning", "text": "If a train travels 60 km in 45 minutes, how fast is it?"},
    {"category": "translation", "text": "Translate into French: the cat sleeps."},
    {"category": "factual", "text": "Hi"},
    {"category": "coding", "text": "Write a Python function that returns the factorial of n, with a docstring."},
    {"category": "reasoning", "text": "Why?"},
    {"category": "translation", "text": "Le chat dort sur le canapé depuis ce matin."},
]

# family -> (model_type, adds BOS, is encoder)
FAMILIES = {
    "llama": ("llama", True, False),
    "mistral": ("mistral", True, False),
    "qwen2": ("qwen2", False, False),
    "qwen3": ("qwen3", False, False),
    "gemma": ("gemma", True, False),
    "gemma2": ("gemma2", True, False),
    "gemma3": ("gemma3_text", True, False),
    "gpt2": ("gpt2", False, False),
    "bert": ("bert", True, True),
}


def tiny_tokenizer(encoder: bool, add_bos: bool):
    """A byte-level BPE (decoders) or lower-cased WordPiece (encoders) of ~300 tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if encoder:
        tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tk.normalizer = normalizers.BertNormalizer(lowercase=True)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tk.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
        cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
        tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
            ("[CLS]", cls), ("[SEP]", sep)])
        tk.decoder = decoders.WordPiece()
        return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<bos>", "<eos>"]
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[
            ("<bos>", tk.token_to_id("<bos>"))])
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=True)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_config(model_type: str, vocab: int, n_layers: int = 3):
    from transformers import AutoConfig
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=0)
    if model_type == "gpt2":
        return AutoConfig.for_model("gpt2", vocab_size=vocab, n_embd=32, n_layer=n_layers, n_head=4, n_positions=128,
                                    bos_token_id=1, eos_token_id=2)
    if model_type == "bert":
        return AutoConfig.for_model("bert", vocab_size=vocab, hidden_size=32, num_hidden_layers=n_layers,
                                    num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    if model_type in ("qwen3", "gemma", "gemma2", "gemma3_text"):
        common["head_dim"] = 8
    if model_type in ("gemma2", "gemma3_text"):
        common["sliding_window"] = 4   # shorter than the prompts: exercises the local layers
    if model_type == "gemma3_text":
        common["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    return AutoConfig.for_model(model_type, **common)


def make_tiny_model(folder: Path, family: str, seed: int = 0, n_layers: int = 3) -> Path:
    """Save a random tiny model of `family` (see FAMILIES) with its tokenizer into `folder`."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    model_type, add_bos, encoder = FAMILIES[family]
    tok = tiny_tokenizer(encoder, add_bos)
    cfg = tiny_config(model_type, len(tok), n_layers)
    torch.manual_seed(seed)
    model = (AutoModel if encoder else AutoModelForCausalLM).from_config(cfg)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_prompts(path: Path, prompts=PROMPTS) -> Path:
    import json
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")
    return path


def make_tiny_gguf(path: Path, n_layers: int = 2, d: int = 32, ff: int = 64, heads: int = 4, kv: int = 2,
                   license: str | None = None, languages: list[str] | None = None) -> Path:
    """A float32 Llama GGUF with random weights and the tiny BPE tokenizer (what llama.cpp writes);
    with `license` / `languages`, the header's general.license / general.languages too."""
    import json

    import gguf
    import numpy as np

    tok = tiny_tokenizer(encoder=False, add_bos=True)
    tj = json.loads(tok.backend_tokenizer.to_str())
    tokens = [None] * len(tok)
    for t, i in tj["model"]["vocab"].items():
        tokens[i] = t
    for a in tj["added_tokens"]:
        tokens[a["id"]] = a["content"]
    V, hd = len(tokens), d // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    if license:
        w.add_license(license)
    if languages:
        w.add_array("general.languages", languages)
    w.add_block_count(n_layers)
    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i < 3 else gguf.TokenType.NORMAL for i in range(V)])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    rng = np.random.default_rng(0)

    def add(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))
    add("token_embd.weight", V, d)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    for i in range(n_layers):
        add(f"blk.{i}.attn_q.weight", d, d)
        add(f"blk.{i}.attn_k.weight", kv * hd, d)
        add(f"blk.{i}.attn_v.weight", kv * hd, d)
        add(f"blk.{i}.attn_output.weight", d, d)
        add(f"blk.{i}.ffn_gate.weight", ff, d)
        add(f"blk.{i}.ffn_up.weight", ff, d)
        add(f"blk.{i}.ffn_down.weight", d, ff)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
