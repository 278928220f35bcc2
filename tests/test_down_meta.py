"""The streamed vocabulary top-k of down_meta: the float32 path and the bf16 screen give the top-k of
a float64 numpy reference, the screen's check falls back to float32 where it must, and the
group-maxima top-m equals a plain top-m. The real models are in test_down_meta_real.py."""
from __future__ import annotations

import numpy as np
import pytest

from vindex.errors import InvalidValue
from vindex.ingest import down_meta
from vindex.ingest.down_meta import VocabularyScorer


def _reference(u, down, k):
    """float64 numpy: ids best first (ties by lower id) and their logits."""
    full = u.astype(np.float64) @ down.astype(np.float64)          # (V, F)
    ids = np.argsort(-full, axis=0, kind="stable")[:k].T
    return ids, np.take_along_axis(full.T, ids, 1)


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
@pytest.mark.parametrize("v,d,f,k,chunk,block", [
    (5000, 48, 70, 10, 256, 1 << 30),        # one vocabulary block, group maxima used
    (5000, 48, 70, 10, 32, 4 * 32 * 1000),   # several blocks and feature chunks, merged
    (1000, 12, 9, 7, 4, 1 << 30),            # narrow: plain top-k
    (300, 16, 5, 300, 256, 1 << 30),         # k = the whole vocabulary
])
def test_top_k_is_the_float64_top_k(compute, v, d, f, k, chunk, block):
    rng = np.random.default_rng(v + k)
    u = (rng.standard_normal((v, d)) * rng.uniform(0.2, 3.0, (v, 1))).astype(np.float32)   # uneven token norms
    down = rng.standard_normal((d, f)).astype(np.float32)
    want_ids, want_vals = _reference(u, down, k)
    scorer = VocabularyScorer(u, compute=compute)
    ids, vals = scorer.top_k(down, k, feature_chunk=chunk, max_block_bytes=block)
    assert ids.dtype == np.int32 and vals.dtype == np.float32 and ids.shape == (f, k)
    assert (ids == want_ids).all()
    np.testing.assert_allclose(vals, want_vals, rtol=2e-6, atol=1e-6)
    if compute == "bfloat16":
        assert scorer.screened == f


def test_failed_screen_checks_are_scored_in_float32():
    """Near-ties the bf16 screen cannot separate: every token a tiny multiple of one direction,
    so the check fails and the whole vocabulary is scored in float32 for those features."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal(32).astype(np.float32)
    u = (base[None, :] * (1 + 1e-5 * rng.standard_normal((4000, 1)))).astype(np.float32)
    down = np.stack([base, -base, rng.standard_normal(32).astype(np.float32)], 1)
    scorer = VocabularyScorer(u, compute="bfloat16")
    ids, vals = scorer.top_k(down, 5)
    assert scorer.failed >= 2
    full = u.astype(np.float64) @ down.astype(np.float64)
    for f in range(3):      # ties at float32 resolution here, so compare the scores, not the order of tied ids
        np.testing.assert_allclose(vals[f], np.sort(full[:, f])[::-1][:5], rtol=1e-6)
        np.testing.assert_allclose(full[ids[f], f], vals[f], rtol=1e-6)


def test_block_top_equals_plain_top():
    import torch
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, down_meta.GROUP * 512, generator=g)
    logits[0, :] = 1.0                                                # all tied
    logits[1, ::down_meta.GROUP] = 50.0                               # the best all in one group position
    for m in (1, 10, 100):
        v, i = down_meta._block_top(logits, m)
        want_v, _ = torch.topk(logits, m, dim=1)
        assert torch.equal(v, want_v)
        assert torch.equal(torch.gather(logits, 1, i), v)             # the ids hold those values
        assert all(len(set(row)) == m for row in i.tolist())          # no token twice


def test_auto_and_bad_arguments():
    u = np.ones((100, 4), np.float32)
    assert VocabularyScorer(u, compute="auto").compute == "float32"   # small vocabulary: the screen does not pay
    if down_meta.bf16_matmul_supported():
        big = np.zeros((down_meta.AUTO_BF16_MIN_VOCAB, 4), np.float32)
        assert VocabularyScorer(big, compute="auto").compute == "bfloat16"
    with pytest.raises(InvalidValue, match="compute"):
        VocabularyScorer(u, compute="float16")
    with pytest.raises(InvalidValue, match="top_k"):
        VocabularyScorer(u).top_k(np.ones((4, 3), np.float32), 101)
    with pytest.raises(InvalidValue, match="W_down"):
        VocabularyScorer(u).top_k(np.ones((5, 3), np.float32), 3)


def test_weights_on_a_device_that_is_not_there(tmp_path):
    """build_weights(device=...) is checked before any work: a named error, nothing written."""
    import torch
    from click.testing import CliRunner

    from ingest_fixtures import make_tiny_model
    from vindex.cli import main
    from vindex.errors import DeviceUnavailable
    from vindex.ingest import build_weights
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    folder = make_tiny_model(tmp_path / "tiny", "llama")
    with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
        build_weights(folder, tmp_path / "vx", device="cuda", progress=False)
    assert not (tmp_path / "vx").exists()
    r = CliRunner().invoke(main, ["weights", str(folder), str(tmp_path / "vx"), "--device", "cuda", "--quiet"])
    assert r.exit_code == 1 and "CUDA is not available" in r.output and "Traceback" not in r.output


def test_weights_record_how_the_top_k_were_computed(tmp_path):
    from ingest_fixtures import make_tiny_model
    from vindex import Vindex
    from vindex.ingest import build_weights
    folder = make_tiny_model(tmp_path / "tiny", "llama")
    root = build_weights(folder, tmp_path / "vx", tables=("features",), device="cpu", progress=False)
    scoring = Vindex.open(root).manifest["extraction"]["weights"]["top_k_scoring"]
    assert scoring == {"compute": "float32", "device": "cpu"}                 # a tiny vocabulary: no screen
