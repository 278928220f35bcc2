"""Fixtures of the distributed tests: a tiny random llama with a byte-level tokenizer (builds in
seconds, offline) and a toy lake of models with different depths and widths."""
from __future__ import annotations

from conftest import write_toy_vindex

LAKE_SHAPES = [(3, 8), (4, 12), (2, 16), (5, 6)]   # (n_layers, d) per model m0..m3


def write_tiny_model(folder, seed=0, hidden=16, layers=2):
    """A random-weight llama with a byte-level tokenizer (every byte one token, offsets work)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<s>": 0, "</s>": 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            pad_token="</s>").save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=512, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def write_toy_lake(root, n_prompts=12):
    """Models m0..m3 (shapes LAKE_SHAPES) over the same prompts, in one lake folder."""
    for i, (L, d) in enumerate(LAKE_SHAPES):
        write_toy_vindex(root / f"m{i}", name=f"m{i}", n_layers=L, d=d, n_prompts=n_prompts, seed=i)
    return root
