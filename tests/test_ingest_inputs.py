"""Inputs of `vindex build`: prompt sets and files, layer specs, pooling rules, the CLI and its
errors (one clear line, exit 1)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ingest_fixtures import make_tiny_model, write_prompts
from vindex import Vindex
from vindex.cli import main
from vindex.errors import InvalidValue, NotFound
from vindex.ingest.activations import plan_groups, pool, pooling_weights
from vindex.layers import parse_layers
from vindex.ingest import build
from vindex.ingest.prompts import load_prompts


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("inputs") / "gpt2", "gpt2")


# -- prompt sets --------------------------------------------------------------------------------

def test_shipped_prompt_sets():
    d, h = load_prompts("default"), load_prompts("heldout")
    assert len(d) == 256 and len(h) == 64
    assert d.categories() == {"factual": 64, "coding": 64, "reasoning": 64, "translation": 64}
    assert h.categories() == {"factual": 16, "coding": 16, "reasoning": 16, "translation": 16}
    assert [p.prompt_id for p in d.prompts] == list(range(256))
    texts = [p.text for p in d.prompts]
    assert len(set(texts)) == 256 and not set(texts) & {p.text for p in h.prompts}
    assert len(d.sha256) == 64 and d.sha256 != h.sha256
    # several languages among the translation prompts (non-ASCII scripts included)
    assert sum(any(ord(c) > 0x2E80 for c in p.text) for p in d.prompts if p.category == "translation") >= 5


def test_prompt_files_hash_by_content(tmp_path):
    rows = [{"category": "factual", "text": "What is the capital of Peru?"},
            {"category": "coding", "text": "def f(x):\n    return x"}]
    jsonl = write_prompts(tmp_path / "a.jsonl", rows)
    import csv
    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, ["category", "text"])
        wr.writeheader()
        wr.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    sets = [load_prompts(tmp_path / f"a.{ext}") for ext in ("jsonl", "csv", "parquet")]
    assert len({s.sha256 for s in sets}) == 1 and all(s.name == "a" for s in sets)
    assert load_prompts(jsonl, name="mine").name == "mine"
    (tmp_path / "t.txt").write_text("first prompt\n\nsecond prompt\n")
    t = load_prompts(tmp_path / "t.txt")
    assert [p.text for p in t.prompts] == ["first prompt", "second prompt"] and t.prompts[0].category is None


@pytest.mark.parametrize("content, match", [
    ('{"category": "x"}\n', "no 'text'"),
    ('{"text": "a", "prompt_id": 1}\n{"text": "b", "prompt_id": 1}\n', "repeated"),
    ('{"text": ""}\n', "empty"),
    ('{"text": "a"}\nnot json\n', "line 2"),
    ("", "empty"),
])
def test_bad_prompt_files(tmp_path, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(InvalidValue, match=match):
        load_prompts(p)


def test_missing_prompt_file_names_it(tmp_path):
    with pytest.raises(NotFound, match="nope.jsonl"):
        load_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(InvalidValue, match=".docx"):
        (tmp_path / "p.docx").write_text("x")
        load_prompts(tmp_path / "p.docx")


# -- layers, pooling, plan ------------------------------------------------------------------------

def test_parse_layers():
    assert parse_layers(None, 4) == [0, 1, 2, 3, 4]
    assert parse_layers("all", 4) == [0, 1, 2, 3, 4]
    assert parse_layers("0-2, 4", 4) == [0, 1, 2, 4]
    assert parse_layers("3,1,1", 4) == [1, 3]
    assert parse_layers([4, 0], 4) == [0, 4]
    for bad, match in [("0-x", "cannot read"), ("3-1", "backwards"), ("5", r"out of range.*0-4"),
                       ("-1", "cannot read"), (["a"], "expected")]:
        with pytest.raises(InvalidValue, match=match):
            parse_layers(bad, 4)


def test_pooling_matches_numpy():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((3, 5, 4)).astype(np.float32)
    content = np.array([[0, 1, 1, 1, 0],     # BOS, 3 content tokens, padding
                        [1, 0, 0, 0, 0],     # one content token: mean_nosink keeps it
                        [1, 1, 1, 1, 1]], dtype=bool)
    out = pool(torch.from_numpy(h), torch.from_numpy(content))
    for b in range(3):
        idx = np.flatnonzero(content[b])
        np.testing.assert_allclose(out["mean"][b], h[b, idx].mean(0), rtol=1e-6)
        np.testing.assert_allclose(out["last"][b], h[b, idx[-1]], rtol=1e-6)
        rest = idx[1:] if len(idx) > 1 else idx
        np.testing.assert_allclose(out["mean_nosink"][b], h[b, rest].mean(0), rtol=1e-6)
    w = pooling_weights(torch.from_numpy(content), ("mean", "last"))
    assert w.shape == (3, 2, 5) and torch.allclose(w.sum(-1), torch.ones(3, 2))


def test_plan_sorts_by_length_and_bounds_shards():
    from vindex.ingest.activations import TokenizedPrompt
    lengths = [3, 9, 5, 1, 7, 2]
    toks = [TokenizedPrompt(i, np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n, np.int32),
                            np.zeros(n, np.int32)) for i, n in enumerate(lengths)]
    groups = plan_groups(toks, batch_size=2, shard_rows=12)
    batches = [b for g in groups for b in g]
    assert [lengths[i] for b in batches for i in b] == sorted(lengths, reverse=True)
    for g in groups:
        assert sum(lengths[i] for b in g for i in b) <= 12 or len(g) == 1
    assert groups == plan_groups(toks, batch_size=2, shard_rows=12)     # deterministic


# -- build arguments and CLI ----------------------------------------------------------------------

def test_bad_build_arguments(gpt2_folder, tmp_path):
    for kwargs, match in [({"dtype": "bfloat16"}, "dtype"), ({"layers": "0-99"}, "out of range"),
                          ({"poolings": "mean,max"}, "max"), ({"batch_size": 0}, "batch_size")]:
        with pytest.raises(InvalidValue, match=match):
            build(gpt2_folder, tmp_path / "vx", prompts="heldout", progress=False, **kwargs)
    assert not (tmp_path / "vx").exists()           # rejected before anything was written
    with pytest.raises(NotFound, match="missing.jsonl"):
        build(gpt2_folder, tmp_path / "vx", prompts=tmp_path / "missing.jsonl", progress=False)


def test_cli_build(gpt2_folder, tmp_path):
    prompts = write_prompts(tmp_path / "few.jsonl")
    out = tmp_path / "lake" / "tiny"
    r = CliRunner().invoke(main, ["build", str(gpt2_folder), str(out), "--prompts", str(prompts),
                                  "--layers", "0,2-3", "--dtype", "float32", "--batch-size", "3"])
    assert r.exit_code == 0, r.output
    assert str(out) in r.output and "activations" in r.output      # path + the end summary
    vx = Vindex.open(out)
    assert vx.layers("pooled") == [0, 2, 3] and vx.name == "gpt2"


def test_cli_default_out_is_lake_name(gpt2_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prompts = write_prompts(tmp_path / "few.jsonl")
    r = CliRunner().invoke(main, ["build", str(gpt2_folder), "--prompts", str(prompts), "--layers", "1",
                                  "--name", "tiny-gpt2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "lake" / "tiny-gpt2" / "vindex.json").is_file()


@pytest.mark.parametrize("args, match", [
    (["--layers", "abc"], "--layers: 'abc'"),
    (["--prompts", "nope.jsonl"], "nope.jsonl"),
    (["--poolings", "median"], "median"),
])
def test_cli_errors_are_one_line(gpt2_folder, tmp_path, args, match):
    r = CliRunner().invoke(main, ["build", str(gpt2_folder), str(tmp_path / "vx"), "--quiet", *args])
    assert r.exit_code == 1
    assert r.output.startswith("error: ") and match in r.output and "Traceback" not in r.output


def test_cli_unknown_architecture(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    r = CliRunner().invoke(main, ["build", str(folder), str(tmp_path / "vx"), "--quiet"])
    assert r.exit_code == 1 and "mamba" in r.output and "llama" in r.output


def test_float16_overflow_is_caught_and_auto_picks_float32(gpt2_folder, tmp_path):
    """Massive activations (gemma3-270m reaches 7e4) cannot be stored as float16."""
    import shutil

    from transformers import AutoModelForCausalLM
    big = tmp_path / "big"
    shutil.copytree(gpt2_folder, big)
    model = AutoModelForCausalLM.from_pretrained(big)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(1e6)
    model.save_pretrained(big)
    with pytest.raises(InvalidValue, match=r"layer 0: .*beyond float16.*auto"):
        build(big, tmp_path / "f16", prompts="heldout", layers="0", dtype="float16", progress=False)
    root = build(big, tmp_path / "auto", prompts="heldout", layers="0", dtype="auto", progress=False)
    vx = Vindex.open(root)
    assert vx.manifest["tables"]["activations"]["vector_dtype"] == "float32"
    ex = vx.manifest["extraction"]["activations"]
    assert (ex["dtype"], ex["dtype_requested"]) == ("float32", "auto")
    small = build(gpt2_folder, tmp_path / "small", prompts="heldout", layers="0", dtype="auto", progress=False)
    assert Vindex.open(small).manifest["tables"]["activations"]["vector_dtype"] == "float16"


def test_a_failed_first_build_does_not_pin_the_dtype(gpt2_folder, tmp_path, monkeypatch):
    from vindex.ingest import builder as build_mod

    def boom(*a, **k):
        raise RuntimeError("stopped before any shard")
    monkeypatch.setattr(build_mod, "capture_group", boom)
    with pytest.raises(RuntimeError):
        build(gpt2_folder, tmp_path / "vx", prompts="heldout", layers="0", progress=False)
    monkeypatch.undo()
    build(gpt2_folder, tmp_path / "vx", prompts="heldout", layers="0", dtype="float32", resume=False, progress=False)
    assert Vindex.open(tmp_path / "vx").manifest["tables"]["activations"]["vector_dtype"] == "float32"
