"""End to end: two tiny random models built by the real ingest job, compared through SQL, checked
against ckatorch on the stored shards read back with the core reader."""
import numpy as np
import pytest

from vindex import Vindex
from vindex.query import cka_matrix, cka_token_matrix, connect

torch = pytest.importorskip("torch")
ckatorch_core = pytest.importorskip("ckatorch.core")


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    from ingest_fixtures import make_tiny_model, write_prompts
    from vindex.ingest import build
    root = tmp_path_factory.mktemp("ingested")
    prompts = write_prompts(root / "prompts.jsonl")
    for seed, name in ((0, "tiny-a"), (1, "tiny-b")):  # same tokenizer, different weights
        model = make_tiny_model(root / f"model-{seed}", "llama", seed=seed, n_layers=3)
        build(model, root / "lake" / name, name=name, prompts=prompts, dtype="float32", batch_size=4,
              progress=False)
    return root / "lake"


def rows(root, table, layer, pooling=None):
    t = Vindex.open(root).read(table, layers=[layer])
    if pooling:
        t = t.filter(np.asarray(t.column("pooling").to_pylist()) == pooling)
    keys = [("prompt_set", "ascending"), ("prompt_id", "ascending")]
    t = t.sort_by(keys + ([("token_index", "ascending")] if table == "activations" else []))
    col = t.column("act").combine_chunks()
    return np.asarray(col.flatten().to_numpy(), np.float64).reshape(len(t), col.type.list_size), t


def test_cka_matrix_on_ingested_models(lake):
    con = connect(lake)
    for pooling in ("mean", "last"):
        t = cka_matrix(con, "tiny-a", "tiny-b", pooling=pooling, estimator="debiased").to_pylist()
        assert len(t) == 4 * 4
        for r in t:
            X, _ = rows(lake / "tiny-a", "pooled", r["layer_a"], pooling)
            Y, _ = rows(lake / "tiny-b", "pooled", r["layer_b"], pooling)
            want = float(ckatorch_core.cka_base(torch.tensor(X), torch.tensor(Y), unbiased=True))
            assert abs(r["cka"] - want) < 1e-6


def test_token_cka_on_ingested_models(lake):
    con = connect(lake)
    t = cka_token_matrix(con, "tiny-a", "tiny-b", batch_size=16, seed=2).to_pylist()
    assert len(t) == 16
    for r in t[::5]:
        X, ta = rows(lake / "tiny-a", "activations", r["layer_a"])
        Y, _ = rows(lake / "tiny-b", "activations", r["layer_b"])
        keep = ~np.asarray(ta.column("special").to_pylist())
        X, Y = X[keep], Y[keep]
        assert r["n"] == len(X)
        order = np.random.default_rng(2).permutation(len(X))
        m = len(X) // 16 * 16
        batch = lambda A: torch.tensor(A[order][:m].reshape(-1, 16, A.shape[1]))
        assert abs(r["cka"] - float(ckatorch_core.cka_batch(batch(X), batch(Y)))) < 1e-6
