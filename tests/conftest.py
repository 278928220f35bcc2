"""Shared fixtures: small vindexes written through the real writer."""
from __future__ import annotations

import numpy as np
import pytest

from vindex import VindexWriter

from hub_server import hub_server, hub_server_session  # noqa: F401  (local Hub for hf:// tests)


def write_toy_vindex(root, name="toy", n_layers=3, d=8, n_prompts=6, seed=0, dtype="float16"):
    """A vindex with prompts, pooled and activations tables over random vectors."""
    rng = np.random.default_rng(seed)
    w = VindexWriter.create(root, name, {"id": f"test/{name}", "family": "toy", "n_layers": n_layers,
                                         "d_model": d})
    w.declare_vectors("pooled", d, dtype)
    w.declare_vectors("activations", d, dtype)
    w.write_shard("prompts", {"prompt_set": ["default"] * n_prompts, "prompt_id": list(range(n_prompts)),
                              "category": ["factual", "coding"] * (n_prompts // 2),
                              "text": [f"prompt {i}" for i in range(n_prompts)]},
                  partition={"prompt_set": "default"})
    w.add_prompt_set("default", "0" * 64, n_prompts)
    for layer in range(n_layers + 1):
        w.write_shard("pooled", {"prompt_set": ["default"] * n_prompts, "prompt_id": list(range(n_prompts)),
                                 "pooling": ["mean"] * n_prompts, "act": rng.standard_normal((n_prompts, d))},
                      partition={"layer": layer})
        n_tok = n_prompts * 2
        w.write_shard("activations", {
            "prompt_set": ["default"] * n_tok, "prompt_id": np.repeat(np.arange(n_prompts), 2),
            "token_index": np.tile([0, 1], n_prompts), "token_id": rng.integers(0, 100, n_tok),
            "token": ["a", "b"] * n_prompts, "char_start": np.tile([0, 1], n_prompts),
            "char_end": np.tile([1, 2], n_prompts), "special": [False] * n_tok,
            "norm": rng.random(n_tok).astype(np.float32), "act": rng.standard_normal((n_tok, d))},
            partition={"layer": layer})
    return root


@pytest.fixture
def toy_vindex(tmp_path):
    return write_toy_vindex(tmp_path / "toy")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, no dashboard) for every distributed test: Ray starts in 10-20 s on 2
    cores, so it starts once. Skipped, with the reason, when the `distributed` extra is absent."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'vindex-lake[distributed]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'vindex-lake[distributed]'")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()
