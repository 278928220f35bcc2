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


def tiny_config(model_type: str, vocab: int):
    from transformers import AutoConfig
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=0)
    if model_type == "gpt2":
        return AutoConfig.for_model("gpt2", vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=128)
    if model_type == "bert":
        return AutoConfig.for_model("bert", vocab_size=vocab, hidden_size=32, num_hidden_layers=3,
                                    num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    if model_type in ("qwen3", "gemma", "gemma2", "gemma3_text"):
        common["head_dim"] = 8
    if model_type in ("gemma2", "gemma3_text"):
        common["sliding_window"] = 4   # shorter than the prompts: exercises the local layers
    if model_type == "gemma3_text":
        common["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention"]
    return AutoConfig.for_model(model_type, **common)


def make_tiny_model(folder: Path, family: str, seed: int = 0) -> Path:
    """Save a random tiny model of `family` (see FAMILIES) with its tokenizer into `folder`."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    model_type, add_bos, encoder = FAMILIES[family]
    tok = tiny_tokenizer(encoder, add_bos)
    cfg = tiny_config(model_type, len(tok))
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
