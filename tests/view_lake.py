"""A small lake for the viewer's tests, written through the real writer.

Two models whose pooled activations share a latent signal that rotates with normalized depth, so
layers at matched depth correspond (CKA is high on the diagonal, low off it), plus features,
ov_gate and layer_stats tables with tokens that a search can find (and one that tries to close the
page's <script> element).
"""
from __future__ import annotations

import numpy as np

from vindex import VindexWriter

VOCAB = ["\u0120Paris", "\u0120London", "\u0120Berlin", "def", "\u0120return", "\u0120one", "\u0120two",
         "\u2581Monday", "\u0120red", "\u0120blue", "</script><b>x", "\u0120import", "\u0120the", "\u0120cat"]
MODELS = (("alpha", 4, 16), ("beta", 6, 24))  # name, n_layers, d_model


def pooled_rows(latent: np.ndarray, depth: float, proj: np.ndarray, rng) -> np.ndarray:
    """Prompt vectors made of latent blocks weighted by a bump around `depth`: layers at matched
    depth share blocks (high CKA), distant layers share none (CKA near the null)."""
    blocks = latent.reshape(latent.shape[0], 6, -1)                  # (n, 6 blocks, 4)
    centres = np.linspace(0, 1, 6)
    weight = np.exp(-0.5 * ((depth - centres) / 0.15) ** 2)          # (6,)
    z = (blocks * weight[None, :, None]).reshape(latent.shape[0], -1)  # (n, 24)
    return z @ proj + 0.05 * rng.standard_normal((latent.shape[0], proj.shape[1]))


def write_model(root, name, n_layers, d, latent, n_features=40, seed=0, pooled=True):
    rng = np.random.default_rng(seed)
    n_prompts = latent.shape[0]
    w = VindexWriter.create(root / name, name, {"id": f"toy-org/{name}", "revision": f"rev-{name}", "family": "toy",
                                                "n_layers": n_layers, "d_model": d, "d_ffn": n_features,
                                                "n_heads": 4, "vocab_size": len(VOCAB)},
                            extraction={"dtype": "float32", "pooling": {"mean": "mean over content tokens"},
                                        "unembedding": "W_E", "seed": seed})
    w.declare_vectors("pooled", d, "float32")
    w.write_shard("prompts", {"prompt_set": ["default"] * n_prompts, "prompt_id": list(range(n_prompts)),
                              "category": ["factual", "coding", "reasoning"] * (n_prompts // 3),
                              "text": [f"prompt {i}" for i in range(n_prompts)]}, partition={"prompt_set": "default"})
    w.add_prompt_set("default", "ab" * 32, n_prompts)
    proj = rng.standard_normal((latent.shape[1], d))
    for layer in range(n_layers + 1 if pooled else 0):
        acts = {p: pooled_rows(latent, layer / n_layers, proj, rng) for p in ("mean", "last")}
        w.write_shard("pooled", {"prompt_set": ["default"] * (2 * n_prompts), "prompt_id": list(range(n_prompts)) * 2,
                                 "pooling": ["mean"] * n_prompts + ["last"] * n_prompts,
                                 "act": np.concatenate([acts["mean"], acts["last"]])}, partition={"layer": layer})
    stats = []
    for layer in range(1, n_layers + 1):
        tok = rng.integers(0, len(VOCAB), (n_features, 3))
        logits = np.sort(rng.random((n_features, 3)) * 10, axis=1)[:, ::-1]
        w.write_shard("features", {
            "feature": np.arange(n_features), "top_token_id": tok[:, 0], "top_token": [VOCAB[t] for t in tok[:, 0]],
            "c_score": logits[:, 0].astype(np.float32),
            "top_tokens": [[{"token_id": int(t), "token": VOCAB[t], "logit": float(v)} for t, v in zip(tk, lg)]
                           for tk, lg in zip(tok, logits)]}, partition={"layer": layer})
        heads, feats = np.repeat(np.arange(4), 3), rng.integers(0, n_features, 12)
        coupling = rng.random(12).astype(np.float32)
        w.write_shard("ov_gate", {"head": heads, "variant": ["o"] * 12, "feature_layer": [layer] * 12,
                                  "feature": feats, "coupling": coupling,
                                  "total_coupling": np.repeat(rng.random(4) * 50 + 1, 3).astype(np.float32),
                                  "rank": np.tile([1, 2, 3], 4)}, partition={"layer": layer})
        for matrix in ("q", "o", "gate", "down"):
            s = np.sort(rng.random(8))[::-1].astype(np.float32)
            stats.append({"layer": layer, "depth": layer / n_layers, "matrix": matrix, "rows": d, "cols": d,
                          "top_singular_values": s.tolist(), "effective_rank": float(rng.random() * d),
                          "spectral_entropy": float(rng.random() * 3), "energy_top1pct": float(rng.random()),
                          "energy_top10pct": float(rng.random())})
    w.write_shard("layer_stats", {k: [r[k] for r in stats] for k in stats[0]})
    return w


def write_view_lake(root, n_prompts=24, seed=0, models=MODELS, n_features=40, pooled=True):
    """A lake root holding the models of `models` (pooled=False: weight tables only); returns the root."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_prompts, 24))
    for k, (name, n_layers, d) in enumerate(models):
        write_model(root, name, n_layers, d, latent, n_features=n_features, seed=seed + k + 1, pooled=pooled)
    return root
