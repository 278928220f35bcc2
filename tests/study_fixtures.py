"""A small lake for the study's tests: two toy models whose layers share a signal that turns with
depth (so CKA is highest at matched depth), with every table the study reads: prompts in four
categories, token activations (a sink at content position 0 in toy-a), pooled rows for all three
poolings, and features whose top tokens are lexicon words. toy-a's feature vectors cluster by
category; toy-b's are random (its clustering must sit at its null)."""
from __future__ import annotations

import numpy as np

from vindex import VindexWriter

CATEGORIES = ("factual", "coding", "reasoning", "translation")
WORDS = {"cities": ["Paris", "London", "Tokyo", "Cairo", "Lima", "Oslo"],
         "colours": ["red", "blue", "green", "yellow", "purple", "pink"],
         "animals": ["dog", "cat", "horse", "lion", "tiger", "bear"],
         "months": ["January", "March", "June", "July", "August", "October"]}


def prompt_rows(n: int) -> dict:
    return {"prompt_set": ["default"] * n, "prompt_id": list(range(n)),
            "category": [CATEGORIES[i % 4] for i in range(n)], "text": [f"prompt {i}?" for i in range(n)]}


def endings(n: int) -> list[str]:
    """Last tokens: two thirds '?', the rest '.'."""
    return ["Ġ?" if i % 3 else "." for i in range(n)]


def write_study_toy(root, name: str, n_layers: int, d: int, latent: np.ndarray, *, seed: int, sink: bool,
                    feature_clusters: bool, n_unlabelled: int = 12):
    """One toy vindex. `latent` (n, 2, r): two latent signals shared by every model; layer l at depth
    t carries cos(t pi/2) Z_0 + sin(t pi/2) Z_1 through a per-layer random projection, plus noise."""
    rng = np.random.default_rng(seed)
    n, _, r = latent.shape
    w = VindexWriter.create(root, name, {"id": f"test/{name}", "family": "toy", "n_layers": n_layers,
                                         "d_model": d})
    w.declare_vectors("pooled", d, "float32")
    w.declare_vectors("activations", d, "float32")
    w.declare_vectors("features", d, "float32")
    w.write_shard("prompts", prompt_rows(n), partition={"prompt_set": "default"})
    w.add_prompt_set("default", "0" * 64, n, complete=True)
    ends = endings(n)
    centres = {c: rng.standard_normal(d) for c in WORDS}   # one direction per category, shared by all layers
    for layer in range(n_layers + 1):
        t = layer / n_layers
        signal = np.cos(t * np.pi / 2) * latent[:, 0] + np.sin(t * np.pi / 2) * latent[:, 1]     # (n, r)
        proj = rng.standard_normal((r, d))
        base = signal @ proj
        pooled = {p: base + 0.3 * rng.standard_normal((n, d)) for p in ("mean", "last", "mean_nosink")}
        w.write_shard("pooled", {
            "prompt_set": ["default"] * (3 * n), "prompt_id": list(range(n)) * 3,
            "pooling": [p for p in pooled for _ in range(n)],
            "act": np.concatenate(list(pooled.values()))}, partition={"layer": layer})
        # three content tokens per prompt: "Hello", "Ġworld", and the ending
        k = 3
        norms = rng.random(n * k).astype(np.float32) + 1.0
        if sink and layer > 0:
            norms[0::k] *= 100.0
        w.write_shard("activations", {
            "prompt_set": ["default"] * (n * k), "prompt_id": np.repeat(np.arange(n), k),
            "token_index": np.tile(np.arange(k), n), "token_id": np.tile([5, 6, 7], n),
            "token": [tok for i in range(n) for tok in ("Hello", "Ġworld", ends[i])],
            "char_start": np.tile([0, 5, 11], n), "char_end": np.tile([5, 11, 12], n), "special": [False] * (n * k),
            "norm": norms, "act": rng.standard_normal((n * k, d))}, partition={"layer": layer})
        if layer == 0:
            continue
        tokens, vectors = [], []
        for c, words in WORDS.items():
            for word in words:
                tokens.append(f"Ġ{word}" if len(tokens) % 2 else word)
                vectors.append(centres[c] + 0.2 * rng.standard_normal(d) if feature_clusters else rng.standard_normal(d))
        for i in range(n_unlabelled):
            tokens.append(f"qz{i}")
            vectors.append(rng.standard_normal(d))
        m = len(tokens)
        w.write_shard("features", {"feature": list(range(m)), "top_token_id": list(range(m)), "top_token": tokens,
                                   "c_score": rng.random(m).astype(np.float32), "vector": np.array(vectors)},
                      partition={"layer": layer})
    w.update(extraction={"weights": {"vectors": "down"}})
    return root


def write_study_lake(root, n: int = 32, r: int = 4, seed: int = 0):
    """lake/toy-a (4 blocks, width 16, sink, clustered features) and lake/toy-b (6 blocks, width 24)."""
    latent = np.random.default_rng(seed).standard_normal((n, 2, r))
    a = write_study_toy(root / "toy-a", "toy-a", 4, 16, latent, seed=seed + 1, sink=True, feature_clusters=True)
    b = write_study_toy(root / "toy-b", "toy-b", 6, 24, latent, seed=seed + 2, sink=False, feature_clusters=False)
    return a, b
