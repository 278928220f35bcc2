"""Your own model and data: build(model=<loaded model>, tokenizer=...) records the object's provenance
and refuses to guess; prompts as lists, dicts, DataFrames and datasets.Dataset give the same set as a
file; a wrong type or a table without a text column is a named error."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ingest_fixtures import PROMPTS, make_tiny_model, write_prompts
from vindex.errors import InvalidValue, MissingProvenance
from vindex.ingest import build
from vindex.ingest.prompts import load_prompts
from vindex.query import connect


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("m") / "llama", "llama")
    return folder, AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_a_loaded_model_equals_its_folder_and_records_provenance(tiny, tmp_path):
    folder, model, tok = tiny
    texts = [p["text"] for p in PROMPTS]
    a = build(model=model, tokenizer=tok, out=tmp_path / "obj", prompts=texts, name="mine", progress=False)
    b = build(folder, tmp_path / "dir", prompts=[{"text": t} for t in texts], name="mine", progress=False)
    ca, cb = connect(a, functions=False), connect(b, functions=False)
    q = "SELECT layer, prompt_id, token_index, act FROM activations ORDER BY ALL"
    assert ca.sql(q).fetchall() == cb.sql(q).fetchall()
    m = json.loads((a / "vindex.json").read_text())["model"]
    prov = m["provenance"]
    assert prov["class"].endswith("LlamaForCausalLM") and prov["dtype"] == "float32"
    assert prov["name_or_path"] == str(folder) and prov["tokenizer_class"] == type(tok).__name__
    assert m["source"] == "object" and m["n_layers"] == 3 and m["d_model"] == 32
    assert "weights came from" in prov["not_recorded"]
    # a bfloat16 object runs as bfloat16 (vindex never casts it) and says so
    half = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    c = build(model=half, tokenizer=tok, out=tmp_path / "bf16", prompts=texts[:2], name="half", progress=False)
    assert json.loads((c / "vindex.json").read_text())["extraction"]["activations"]["compute_dtype"] == "bfloat16"
    with pytest.raises(InvalidValue, match="never casts your model"):
        build(model=half, tokenizer=tok, out=tmp_path / "x", prompts=texts[:2], name="half",
              compute_dtype="float32", progress=False)


def test_compute_dtype_of_a_source(tiny, tmp_path):
    folder, _, _ = tiny
    root = build(folder, tmp_path / "v", prompts=["a b c", "d e"], compute_dtype="bfloat16", progress=False)
    ex = json.loads((root / "vindex.json").read_text())
    assert ex["extraction"]["activations"]["compute_dtype"] == "bfloat16"
    assert ex["prompt_sets"]["prompts"]["build"]["compute_dtype"] == "bfloat16"


def test_refuses_to_guess(tiny, tmp_path):
    folder, model, tok = tiny
    with pytest.raises(MissingProvenance, match="no tokenizer given"):
        build(model=model, out=tmp_path / "v", prompts=["hi"], progress=False)
    bare = AutoModelForCausalLM.from_config(model.config.__class__(**{**model.config.to_dict(), "_name_or_path": ""}))
    bare.config.name_or_path = ""
    with pytest.raises(MissingProvenance, match="pass name="):
        build(model=bare, tokenizer=tok, out=tmp_path / "v", prompts=["hi"], progress=False)
    with pytest.raises(InvalidValue, match="model source .*or model=.*not both"):
        build(folder, model=model, tokenizer=tok, prompts=["hi"], progress=False)


def test_prompt_containers_give_one_prompt_set(tmp_path):
    import datasets
    import pandas as pd
    import polars as pl
    file = load_prompts(write_prompts(tmp_path / "p.jsonl"), name="p")
    rows = [dict(p) for p in PROMPTS]
    for spec in (rows, pd.DataFrame(rows), pl.DataFrame(rows), datasets.Dataset.from_list(rows)):
        ps = load_prompts(spec, name="p")
        assert ps.sha256 == file.sha256, type(spec)
    assert load_prompts(["x", "y"]).name == "prompts"
    with pytest.raises(InvalidValue, match=r"no 'text' \(or 'prompt'\) column; its columns are \['question', 'category'\]"):
        load_prompts(pd.DataFrame({"question": ["a"], "category": ["b"]}))
    with pytest.raises(InvalidValue, match="item 1 is a int"):
        load_prompts(["a", 3])
    with pytest.raises(InvalidValue, match="prompts of type dict"):
        load_prompts({"text": "a"})
