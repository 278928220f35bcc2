"""Lakes for the influence and stages tests (tests/test_influence.py, test_stages.py, test_study_breaks.py):
models written through the real VindexWriter with a planted structure."""
from __future__ import annotations

import numpy as np

from vindex import VindexWriter

CATEGORIES = ("factual", "coding", "reasoning", "translation")


N = 24


def write_model(root, name, n_layers, d, seed, ids=None, outlier=None, prompt_set="main", scale=20.0):
    """float32 pooled rows over a latent shared by every model, each layer in two shards of shuffled
    rows (the function must sort by prompt); `outlier`: a prompt this model places far off."""
    rng = np.random.default_rng(seed)
    latent = np.random.default_rng(99).standard_normal((N, 4))
    ids = np.arange(N) if ids is None else np.asarray(ids)
    w = VindexWriter.create(root / name, name, {"id": f"t/{name}", "n_layers": n_layers, "d_model": d})
    w.declare_vectors("pooled", d, "float32")
    w.write_shard("prompts", {"prompt_set": [prompt_set] * N, "prompt_id": np.arange(N),
                              "category": [CATEGORIES[i % 4] for i in range(N)],
                              "text": [f"prompt {i}" for i in range(N)]}, partition={"prompt_set": prompt_set})
    w.add_prompt_set(prompt_set, "0" * 64, N, complete=True)
    for layer in range(n_layers + 1):
        act = latent @ rng.standard_normal((4, d)) + 0.5 * rng.standard_normal((N, d))
        for o in () if outlier is None else np.atleast_1d(outlier):
            act[o] += scale * rng.standard_normal(d)
        order = rng.permutation(ids)
        for part, chunk in enumerate(np.array_split(order, 2)):
            w.write_shard("pooled", {"prompt_set": [prompt_set] * len(chunk), "prompt_id": chunk,
                                     "pooling": ["mean_nosink"] * len(chunk), "act": act[chunk].astype(np.float32)},
                          partition={"layer": layer}, part=part)
    return root / name


N_STAGED = 40


def write_staged(root, name, sizes, d=12, seed=0, n=N_STAGED):
    """A model whose layers come in stages: every layer of stage s is a fresh random projection of the
    stage's own latent prompt factors, plus noise (so layers of one stage agree, of two stages do not)."""
    rng = np.random.default_rng(seed)
    n_layers = sum(sizes) - 1
    latents = rng.standard_normal((len(sizes), n, 3))
    w = VindexWriter.create(root / name, name, {"id": f"t/{name}", "n_layers": n_layers, "d_model": d})
    w.declare_vectors("pooled", d, "float32")
    w.add_prompt_set("main", "0" * 64, n, complete=True)
    for layer, stage in enumerate(np.repeat(np.arange(len(sizes)), sizes)):
        act = latents[stage] @ rng.standard_normal((3, d)) + 0.3 * rng.standard_normal((n, d))
        w.write_shard("pooled", {"prompt_set": ["main"] * n, "prompt_id": np.arange(n),
                                 "pooling": ["mean_nosink"] * n, "act": act.astype(np.float32)},
                      partition={"layer": layer})
    return root / name
