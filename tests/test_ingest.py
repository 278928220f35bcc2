"""build(): activations of tiny random models of every supported family, checked against a
direct `output_hidden_states` call on one prompt at a time (no batching, no padding)."""
from __future__ import annotations

import functools

import numpy as np
import pyarrow.parquet as pq
import pytest

from ingest_fixtures import FAMILIES, PROMPTS, make_tiny_model, write_prompts
from vindex import Vindex, verify
from vindex.ingest import build
from vindex.ingest.sources import load_model, resolve_model


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """family -> folder of a saved tiny random model (built lazily, shared by this module)."""
    root = tmp_path_factory.mktemp("tiny-models")
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = make_tiny_model(root / family, family)
        return cache[family]
    return get


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("prompts") / "tiny.jsonl")


@functools.lru_cache(maxsize=4)
def _loaded(folder):
    return load_model(resolve_model(folder))


def direct_states(folder, text):
    """Hidden states of one prompt through the full model (the reference), float32 [L+1, T, d]."""
    import torch
    model, tok = _loaded(folder)
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], output_hidden_states=True)
    return np.stack([h[0].float().numpy() for h in out.hidden_states]), enc["input_ids"][0].numpy(), tok


def fp16_close(stored, ref):
    """Equal to float16 precision: float16 keeps 11 significant bits (relative step 2**-11)."""
    np.testing.assert_allclose(stored, ref, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_direct_hidden_states(family, tiny_models, prompt_file, tmp_path):
    folder = tiny_models(family)
    root = build(folder, tmp_path / "vx", prompts=prompt_file, batch_size=3, progress=False)
    assert verify(root) == []
    vx = Vindex.open(root)
    model_type, adds_bos, encoder = FAMILIES[family]
    assert vx.model["family"] == family and vx.model["model_type"] == model_type
    n_layers = vx.n_layers
    assert vx.layers("activations") == list(range(n_layers + 1)) == vx.layers("pooled")
    conv = vx.manifest["extraction"]["activations"]["hidden_states"]
    assert conv["last_layer_post_final_norm"] is (not encoder)   # decoders apply the final norm to layer L
    acts = vx.read("activations").to_pandas()
    pooled = vx.read("pooled").to_pandas()
    for pid, p in enumerate(PROMPTS):
        ref, ids, tok = direct_states(folder, p["text"])
        rows = acts[acts.prompt_id == pid]
        for layer in range(n_layers + 1):
            r = rows[rows.layer == layer].sort_values("token_index")
            assert list(r.token_index) == list(range(len(ids)))          # every real token, no padding
            assert list(r.token_id) == list(ids)
            got = np.stack(r.act.to_numpy()).astype(np.float32)
            fp16_close(got, ref[layer])
            np.testing.assert_allclose(r.norm.to_numpy(), np.linalg.norm(ref[layer], axis=1), rtol=1e-4)
            special = r.special.to_numpy()
            content = ref[layer][~special]
            pl = pooled[(pooled.prompt_id == pid) & (pooled.layer == layer)].set_index("pooling").act
            fp16_close(np.asarray(pl["mean"], np.float32), content.mean(0))
            fp16_close(np.asarray(pl["last"], np.float32), content[-1])
            nosink = content[1:] if len(content) > 1 else content
            fp16_close(np.asarray(pl["mean_nosink"], np.float32), nosink.mean(0))
        # special flags: BOS / CLS+SEP added by the tokenizer; offsets point into the text
        first = rows[rows.layer == 0].sort_values("token_index")
        sp = first.special.to_numpy()
        assert bool(sp[0]) == adds_bos
        assert bool(sp[-1]) == encoder
        assert first.char_start[sp].isna().all() and first.char_end[sp].isna().all()
        for s, e in zip(first.char_start[~sp], first.char_end[~sp]):
            assert 0 <= s <= e <= len(p["text"])


def test_pooled_rows_and_manifest(tiny_models, prompt_file, tmp_path):
    root = build(tiny_models("llama"), tmp_path / "vx", prompts=prompt_file, layers="0,2-3",
                 dtype="float32", poolings="mean,last", progress=False)
    vx = Vindex.open(root)
    assert vx.layers("activations") == [0, 2, 3]
    assert vx.manifest["tables"]["activations"]["vector_dtype"] == "float32"
    p = vx.read("pooled", layers=[2]).to_pandas()
    assert len(p) == len(PROMPTS) * 2 and set(p.pooling) == {"mean", "last"}
    assert list(p.prompt_id) == sorted(p.prompt_id)
    ex = vx.manifest["extraction"]["activations"]
    assert set(ex["poolings"]) == {"mean", "last"} and ex["dtype"] == "float32" and ex["layers"] == [0, 2, 3]
    ps = vx.manifest["prompt_sets"]["tiny"]
    assert ps["n_prompts"] == len(PROMPTS) and ps["complete"] and len(ps["sha256"]) == 64
    prompts = vx.read("prompts").to_pandas()
    assert list(prompts.text) == [p["text"] for p in PROMPTS]
    # depth = layer / n_layers, stored on every row
    a = vx.read("activations", layers=[2]).to_pandas()
    assert np.allclose(a.depth, 2 / vx.n_layers)


def test_float32_is_exact_and_shards_split(tiny_models, prompt_file, tmp_path):
    """Small shard_rows -> several parts per layer; float32 storage equals the direct call."""
    folder = tiny_models("qwen2")
    root = build(folder, tmp_path / "vx", prompts=prompt_file, layers=[1], dtype="float32",
                 batch_size=2, shard_rows=20, progress=False)
    vx = Vindex.open(root)
    assert len(vx.files("activations", layer=1)) > 1
    acts = vx.read("activations").to_pandas()
    for pid, p in enumerate(PROMPTS):
        ref, ids, _ = direct_states(folder, p["text"])
        r = acts[acts.prompt_id == pid].sort_values("token_index")
        np.testing.assert_allclose(np.stack(r.act.to_numpy()), ref[1], rtol=1e-4, atol=1e-5)


def test_two_prompt_sets_share_a_vindex(tiny_models, prompt_file, tmp_path):
    folder = tiny_models("gpt2")
    root = build(folder, tmp_path / "vx", prompts=prompt_file, batch_size=2, shard_rows=16, progress=False)
    build(folder, root, prompts="heldout", batch_size=8, layers="0-3", progress=False)
    assert verify(root) == []
    vx = Vindex.open(root)
    sets = vx.manifest["prompt_sets"]
    a, b = sets["tiny"], sets["heldout"]
    assert b["part_base"] >= a["part_base"] + a["n_parts"]
    acts = vx.read("activations", layers=[3]).to_pandas()
    assert set(acts.prompt_set) == {"tiny", "heldout"}
    assert acts[acts.prompt_set == "heldout"].prompt_id.nunique() == 64


def test_chat_template_marks_template_tokens_special(tiny_models, tmp_path):
    from transformers import AutoTokenizer
    folder = tiny_models("llama")
    chat = tmp_path / "chat"
    import shutil
    shutil.copytree(folder, chat)
    tok = AutoTokenizer.from_pretrained(chat)
    tok.chat_template = ("{% for m in messages %}<bos>user: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}")
    tok.save_pretrained(chat)
    text = "What is the capital city of Australia?"
    pf = write_prompts(tmp_path / "one.jsonl", [{"text": text}])
    root = build(chat, tmp_path / "vx", prompts=pf, layers="0", chat_template=True, progress=False)
    a = Vindex.open(root).read("activations").to_pandas().sort_values("token_index")
    content = a[~a.special]
    assert a.special.sum() > 2                       # <bos>, "user:", "assistant:" pieces
    assert content.char_start.min() == 0 and content.char_end.max() == len(text)
    assert "".join(text[int(s):int(e)] for s, e in zip(content.char_start, content.char_end)).replace(" ", "") \
        == text.replace(" ", "")


def test_shards_are_plain_parquet(tiny_models, prompt_file, tmp_path):
    """Readable without vindex: model/layer columns inside every file, vectors as fixed-size lists."""
    root = build(tiny_models("mistral"), tmp_path / "vx", prompts=prompt_file, layers="3", progress=False)
    t = pq.read_table(root / "data" / "activations" / "layer=3" / "part-00000.parquet")
    assert set(t.column("layer").to_pylist()) == {3}
    assert t.schema.field("act").type.list_size == 32
    assert t.column("norm").type == "float"
