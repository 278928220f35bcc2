"""`build(sites=...)`: every stored (site, layer) row equals an independent hand-written hook on the
Hugging Face modules (tiny random models), old vindexes without a site column read as resid_post,
and the bad inputs of issue 15 are named errors."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ingest_fixtures import make_tiny_model, write_prompts
from site_hooks import hand_sites
from vindex.errors import DeviceUnavailable, InvalidValue, NotMoE, ResumeMismatch, UnknownSite
from vindex.files import sha256_file
from vindex.ingest import build
from vindex.query import connect

SITES = "resid_pre,attn_out,resid_mid,mlp_out,resid_post"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("p") / "p.jsonl")


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_every_site_equals_a_hand_written_hook(family, tmp_path, prompts):
    folder = make_tiny_model(tmp_path / family, family)
    root = build(folder, tmp_path / "v", prompts=prompts, sites=SITES, dtype="float32", progress=False)
    con = connect(root, functions=False)
    text = json.loads(prompts.read_text().splitlines()[2])["text"]
    want = hand_sites(folder, text)
    rows = con.sql("SELECT site, hook, layer, token_index, act FROM activations WHERE prompt_id = 2 "
                   "ORDER BY site, layer, token_index").fetchall()
    got: dict = {}
    for site, hook, layer, t, act in rows:
        got.setdefault((site, layer), []).append(act)
        assert hook == (f"blocks.{layer - 1}.hook_{site}" if layer else "blocks.0.hook_resid_pre")
    assert set(got) == {k for k in want if k[0] != "mlp_post"}
    for key, rows_ in got.items():
        np.testing.assert_allclose(np.array(rows_), want[key], rtol=1e-4, atol=1e-4, err_msg=str(key))
    # pooled rows carry the site too; mean pooling of a site = the mean of its content-token rows
    pooled = con.sql("SELECT site, layer, act FROM pooled WHERE prompt_id = 2 AND pooling = 'mean'").fetchall()
    assert {(s, l) for s, l, _ in pooled} == set(got)
    m = json.loads((root / "vindex.json").read_text())["extraction"]["activations"]
    assert m["hidden_states"]["resid_post_last_layer"].startswith("raw")
    assert set(m["sites"]) == set(SITES.split(","))


def test_default_build_keeps_output_hidden_states_and_old_vindexes_read_as_resid_post(tmp_path, prompts):
    folder = make_tiny_model(tmp_path / "llama", "llama")
    root = build(folder, tmp_path / "v", prompts=prompts, layers="0,3", progress=False)
    m = json.loads((root / "vindex.json").read_text())
    assert m["extraction"]["activations"]["hidden_states"]["source"] == "transformers output_hidden_states"
    assert "sites" not in m["prompt_sets"]["p"]["build"]       # a plain build's parameters are as before
    # the old layout: shards without site/hook columns (rewritten, manifest entries updated)
    for table in ("activations", "pooled"):
        for e in m["tables"][table]["files"]:
            path = root / e["path"]
            t = pq.read_table(path).drop_columns(["site", "hook"])
            pq.write_table(t, path)
            e.update(bytes=path.stat().st_size, sha256=sha256_file(path))
    (root / "vindex.json").write_text(json.dumps(m))
    con = connect(root, functions=False)
    assert con.sql("SELECT DISTINCT site, hook FROM activations ORDER BY hook").fetchall() == [
        ("resid_post", "blocks.0.hook_resid_pre"), ("resid_post", "blocks.2.hook_resid_post")]
    assert con.sql("SELECT DISTINCT site FROM pooled").fetchall() == [("resid_post",)]
    from vindex import verify
    assert verify(root) == []       # an old shard lacking site/hook is sound


def test_bad_input_is_named(tmp_path, prompts):
    folder = make_tiny_model(tmp_path / "llama", "llama")
    with pytest.raises(UnknownSite, match="unknown \\['resid_psot'\\].*resid_pre"):
        build(folder, tmp_path / "v", prompts=prompts, sites="resid_psot", progress=False)
    with pytest.raises(NotMoE, match="dense llama"):
        build(folder, tmp_path / "v", prompts=prompts, routing=True, progress=False)
    with pytest.raises(InvalidValue, match="feature_top_k 65 exceeds the model's d_ffn \\(64"):
        build(folder, tmp_path / "v", prompts=prompts, sites="mlp_post", feature_top_k=65, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
            build(folder, tmp_path / "v", prompts=prompts, device="cuda", progress=False)
    bert = make_tiny_model(tmp_path / "bert", "bert")
    with pytest.raises(UnknownSite, match="bert family has no such site.*post-norm"):
        build(bert, tmp_path / "b", prompts=prompts, sites="attn_out", progress=False)
    # resuming with other sites says what changed and offers --no-resume
    build(folder, tmp_path / "v", prompts=prompts, layers="1", progress=False)
    with pytest.raises(ResumeMismatch, match=r"sites: \['resid_post'\] -> \['attn_out'\].*--no-resume"):
        build(folder, tmp_path / "v", prompts=prompts, layers="1", sites="attn_out", progress=False)
    root = build(folder, tmp_path / "v", prompts=prompts, layers="1", sites="attn_out", resume=False, progress=False)
    assert connect(root, functions=False).sql("SELECT DISTINCT site FROM activations").fetchall() == [("attn_out",)]
