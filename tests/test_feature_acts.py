"""feature_acts (top-k |mlp_post| per token) and feature_summary against a dense mlp_post capture by a
hand-written hook, computed with numpy; dense storage ('all') holds every feature."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ingest_fixtures import make_tiny_model, write_prompts
from vindex.ingest import build
from vindex.query import connect

K = 5


def dense_mlp_post(folder, texts) -> dict:
    """{(prompt_id, layer): [T, d_ffn]}: W_down's input per block, by a pre-hook on down_proj."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    out = {}
    for pid, text in enumerate(texts):
        hs = [b.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, l=l: out.__setitem__((pid, l), a[0][0].numpy().copy()))
            for l, b in enumerate(model.model.layers, 1)]
        with torch.no_grad():
            model(input_ids=tok(text, return_tensors="pt")["input_ids"])
        for h in hs:
            h.remove()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fa")
    prompts = write_prompts(tmp / "p.jsonl")
    folder = make_tiny_model(tmp / "llama", "llama")
    root = build(folder, tmp / "v", prompts=prompts, sites="resid_post,mlp_post", feature_top_k=K,
                 feature_threshold=0.01, batch_size=2, shard_rows=40, progress=False)     # several parts: sums add up
    texts = [json.loads(line)["text"] for line in prompts.read_text().splitlines()]
    return tmp, folder, prompts, root, dense_mlp_post(folder, texts)


def test_feature_acts_are_the_dense_top_k(built):
    _, _, _, root, dense = built
    con = connect(root, functions=False)
    rows = con.sql("SELECT prompt_id, layer, token_index, rank, feature, activation, expert FROM feature_acts "
                   "ORDER BY prompt_id, layer, token_index, rank").fetchall()
    assert rows and all(r[6] is None for r in rows)
    got: dict = {}
    for pid, l, t, rank, f, a, _ in rows:
        got.setdefault((pid, l, t), []).append((rank, f, a))
    assert len(got) == sum(v.shape[0] for v in dense.values())
    for (pid, l, t), feats in got.items():
        x = dense[(pid, l)][t]
        order = np.argsort(-np.abs(x), kind="stable")[:K]
        assert [r for r, _, _ in feats] == list(range(1, K + 1))
        np.testing.assert_allclose([a for _, _, a in feats], x[order], rtol=1e-4, atol=1e-6)
        # the same features, up to ties in |x| (none in random float data)
        assert [f for _, f, _ in feats] == list(order)


def test_feature_summary_is_over_every_token(built):
    _, _, _, root, dense = built
    con = connect(root, functions=False)
    assert con.sql("SELECT count(DISTINCT part) FROM feature_stats").fetchone()[0] > 1
    for l in (1, 3):
        X = np.concatenate([v for (pid, ll), v in sorted(dense.items()) if ll == l])        # [N, d_ffn]
        topk = np.argsort(-np.abs(X), axis=1)[:, :K]
        got = con.sql(f"SELECT feature, n_tokens, mean, mean_abs, max, min, frequency, topk_frequency FROM "
                      f"feature_summary WHERE layer = {l} ORDER BY feature").fetchnumpy()
        assert (got["n_tokens"] == len(X)).all()
        np.testing.assert_allclose(got["mean"], X.mean(0), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got["mean_abs"], np.abs(X).mean(0), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got["max"], X.max(0), rtol=1e-5)
        np.testing.assert_allclose(got["min"], X.min(0), rtol=1e-5)
        np.testing.assert_allclose(got["frequency"], (np.abs(X) > 0.01).mean(0))
        np.testing.assert_allclose(got["topk_frequency"], np.bincount(topk.ravel(), minlength=X.shape[1]) / len(X))


def test_dense_storage_on_request(built):
    tmp, folder, prompts, _, dense = built
    root = build(folder, tmp / "dense", prompts=prompts, sites="mlp_post", feature_top_k="all", layers="2",
                 progress=False)
    con = connect(root, functions=False)
    assert con.sql("SELECT count(*) FROM activations").fetchone()[0] == 0      # mlp_post alone: no d_model rows
    got = con.sql("SELECT token_index, feature, activation FROM feature_acts WHERE prompt_id = 0 "
                  "ORDER BY token_index, feature").fetchnumpy()
    X = dense[(0, 2)]
    np.testing.assert_allclose(got["activation"].reshape(X.shape), X, rtol=1e-4, atol=1e-6)
    assert json.loads((root / "vindex.json").read_text())["extraction"]["activations"]["feature_top_k"] == "all"
