"""Feature ablation (vindex.ingest.ablation) against hand-written hooks on tiny random models."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from click.testing import CliRunner

from ingest_fixtures import make_tiny_model
from vindex import verify
from vindex.cli import main
from vindex.errors import InvalidValue
from vindex.ingest.ablation import ablate, ablated_logits, feature_means
from vindex.ingest.intervention_runs import last_logits, load_lm

PROMPTS = [{"text": "the cat sleeps.", "answer": "a", "category": "x"},
           {"text": "Le chat dort sur le canapé.", "answer": "b"},
           {"text": "If a train travels 60 km", "answer": "a"},
           {"text": "the bat sleeps?", "answer": "c"}]
FEATURES = [(1, 3), (1, 40), (3, 0), (3, 63)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("ablate")
    folder = make_tiny_model(base / "llama", "llama", n_layers=3)
    prompts = base / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return folder, load_lm(folder, device="cpu", progress=False), prompts


def rows(root):
    return ds.dataset(root / "data/ablations", format="parquet", partitioning="hive").to_table().to_pandas() \
        .sort_values("prompt_id").reset_index(drop=True)


def hand_ablated(model, ids, features, values=None):
    """Plain forward pre-hooks on each layer's down_proj (its input is the MLP's hidden activation)."""
    handles = []
    for layer in sorted({l for l, _ in features}):
        cols = [f for l, f in features if l == layer]

        def pre(mod, args, cols=cols, layer=layer):
            h = args[0].clone()
            for j, f in enumerate(cols):
                h[..., f] = 0.0 if values is None else float(values[layer][j])
            return (h,)
        handles.append(model.model.layers[layer - 1].mlp.down_proj.register_forward_pre_hook(pre))
    try:
        with torch.inference_mode():
            return model(input_ids=ids).logits[:, -1]
    finally:
        for h in handles:
            h.remove()


def test_ablating_nothing_changes_nothing(tiny):
    _, lm, _ = tiny
    ids = torch.as_tensor(lm.tokenizer(PROMPTS[0]["text"])["input_ids"])[None]
    torch.testing.assert_close(ablated_logits(lm.model, lm.family, ids, {}), last_logits(lm.model, ids), rtol=0, atol=0)
    # and the same features set to the values they already have (their own activation) change nothing either
    from vindex.ingest.sites import SiteHooks
    with SiteHooks(lm.model, lm.family, reads=[("mlp_post", 1)]) as hooks:
        last_logits(lm.model, ids)
    own = hooks.captured[("mlp_post", 1)][..., [3]]
    assert own.abs().max() > 0

    def keep(v):
        return v.index_copy(-1, torch.tensor([3]), own)
    with SiteHooks(lm.model, lm.family, edits={("mlp_post", 1): keep}):
        kept = last_logits(lm.model, ids)
    torch.testing.assert_close(kept, last_logits(lm.model, ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_equals_hand_written_hooks(tiny, tmp_path, mode):
    folder, lm, prompts = tiny
    root = ablate(folder, FEATURES, tmp_path / "v", prompts=prompts, targets="a", mode=mode, progress=False,
                  device="cpu")
    t = rows(root)
    tok = lm.tokenizer
    ids = [np.asarray(tok(p["text"])["input_ids"]) for p in PROMPTS]
    values = None
    if mode == "mean":   # by hand: every token of every prompt, one prompt at a time
        acts = {1: [], 3: []}
        for x in ids:
            store = {}
            hs = [lm.model.model.layers[l - 1].mlp.down_proj.register_forward_pre_hook(
                lambda m, a, l=l: store.__setitem__(l, a[0][0].detach().clone())) for l in (1, 3)]
            with torch.inference_mode():
                lm.model(input_ids=torch.as_tensor(x[None]))
            for h in hs:
                h.remove()
            for l in (1, 3):
                acts[l].append(store[l].numpy())
        values = {l: np.concatenate(acts[l])[:, [f for ll, f in FEATURES if ll == l]].mean(0) for l in (1, 3)}
        got = feature_means(lm.model, lm.family, ids, {1: [3, 40], 3: [0, 63]}, 2, "cpu")
        for l in (1, 3):
            np.testing.assert_allclose(got[l].numpy(), values[l], rtol=1e-5, atol=1e-6)
    for i, x in enumerate(ids):
        a = tok(PROMPTS[i]["answer"], add_special_tokens=False)["input_ids"][0]
        x = torch.as_tensor(x[None])
        with torch.inference_mode():
            before = lm.model(input_ids=x).logits[0, -1]
        after = hand_ablated(lm.model, x, FEATURES, values)[0]
        assert t.logit_before[i] == pytest.approx(float(before[a]), abs=1e-5)
        assert t.logit_after[i] == pytest.approx(float(after[a]), abs=1e-5)
        assert t.prob_after[i] == pytest.approx(float(torch.softmax(after, -1)[a]), abs=1e-6)
        assert t.rank_after[i] == int((after > after[a]).sum())
        assert t.logit_before[i] != t.logit_after[i]
    assert list(t.role) == ["target", "control", "target", "control"]
    assert set(t["mode"]) == {mode} and set(t.n_features) == {4}
    assert verify(root) == []


def test_bad_input(tiny, tmp_path):
    folder, _, prompts = tiny
    with pytest.raises(InvalidValue, match="selection is empty"):
        ablate(folder, [], tmp_path / "v", prompts=prompts, progress=False)
    with pytest.raises(InvalidValue, match=r"out of range; FFN features live at layers 1..3 with indices 0..63"):
        ablate(folder, "1:64", tmp_path / "v", prompts=prompts, progress=False)
    with pytest.raises(InvalidValue, match="cannot read 'x'"):
        ablate(folder, "x", tmp_path / "v", prompts=prompts, progress=False)
    with pytest.raises(InvalidValue, match="mode 'half'"):
        ablate(folder, "1:1", tmp_path / "v", prompts=prompts, mode="half", progress=False)
    with pytest.raises(InvalidValue, match="no prompt .* has such an answer"):
        ablate(folder, "1:1", tmp_path / "v", prompts=prompts, targets="z", progress=False)


def test_cli_features_from_sql(tiny, tmp_path):
    """--features as SQL over the lake's features table; a query that selects nothing is one error line."""
    from vindex.ingest import build_weights
    folder, _, prompts = tiny
    lake = tmp_path / "lake"
    build_weights(folder, lake / "llama", progress=False)
    runner = CliRunner()
    res = runner.invoke(main, ["ablate", str(folder), "-l", str(lake), "--out", str(lake / "llama"),
                               "--prompts", str(prompts), "--quiet", "--features",
                               "SELECT layer, feature FROM features WHERE top_token = 'no such token'"])
    assert res.exit_code == 1 and "selects nothing" in res.output
    query = "SELECT layer, feature FROM features WHERE layer = 2 ORDER BY c_score DESC LIMIT 3"
    res = runner.invoke(main, ["ablate", str(folder), "-l", str(lake), "--out", str(lake / "llama"),
                               "--prompts", str(prompts), "--quiet", "--features", query])
    assert res.exit_code == 0, res.output
    from vindex.query import connect
    con = connect(lake)
    want = [(l, f) for l, f in con.sql(query).fetchall()]
    m = json.loads((lake / "llama/vindex.json").read_text())
    (key, record), = [(k, v) for k, v in m["extraction"].items() if k.startswith("ablations.")]
    assert [tuple(x) for x in record["params"]["features"]] == sorted(want)
    assert con.sql("SELECT count(*) FROM ablations").fetchone()[0] == len(PROMPTS)
