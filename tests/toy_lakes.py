"""Toy lakes for the tests: vindexes of made-up models, written through the real `VindexWriter`
(real Parquet shards and manifest). One writer, `write_toy_lake`, parametrised by a `ToyLake`
(models, prompts, tables, signal, tokens, features, seed); the presets below are the lakes the
tests use, and `write_toy_vindex` is one model of the SIMPLE preset at a given folder.

The signal (latent_rank > 0): the pooled rows of layer l at normalised depth t = l / n_layers are
    S_t = sum_b w_b(t) Z_b,   Z_b ~ N(0, 1)^(n_prompts x latent_rank), shared by every model of the lake,
through a fresh random projection per layer, plus noise. By default the signal turns a quarter
between two blocks, w = (cos(t pi/2), sin(t pi/2)); with `bumps` = B > 0 there are B blocks at depths
c_b = b / (B - 1), w_b(t) = exp(-(t - c_b)^2 / (2 bump_width^2)), a sharper diagonal. Either way layers
at matched depth correspond (linear CKA is highest on the depth diagonal) and distant layers share
nothing (CKA near its permutation null). Without a signal, rows are noise.

Token rows repeat their prompt's first-pooling row plus noise; `ToyModel.sink` multiplies the
first token (a BOS when `bos`, else the first content token: an attention sink). Feature vectors
gather round one centre per planted group (`Features.groups`) for `clustered` models.

Random draws come in a fixed order (lake: latent, token ids; per model, from its own seed: per
layer the projection, one noise draw per pooling, token noise; then per feature layer: centres,
vectors, scores or top-k tokens, ov_gate, spectra), so a preset always writes the same values:
docs/sql.md shows DOCS's numbers. The weight tables (features, ov_gate, layer_stats) have a stream
of their own, so they do not change with the width or the prompts, except in DOCS, whose numbers
were drawn on from the activations' stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vindex import VindexWriter
from vindex.defaults import DEFAULT_POOLING

N_TOKEN_IDS = 100      # random token ids are drawn from 0..99 and spelt "t{id}"
N_HEADS = 4            # attention heads of the ov_gate table
TOP_K_HEADS = 3        # features per head in ov_gate
MATRICES = ("q", "o", "gate", "down")   # the weight matrices of layer_stats, in weight order


@dataclass(frozen=True)
class ToyModel:
    name: str
    n_layers: int
    d: int
    seed: int = 0
    sink: float = 1.0          # factor on the first token's activation (> 1: an attention sink)
    clustered: bool = True     # feature vectors gather by group (False: every vector is noise)


@dataclass(frozen=True)
class Features:
    """The features table, one row per feature on each feature layer."""
    tokens: tuple[str, ...]                # feature i's top token; with top_k, the vocabulary they are drawn from
    groups: tuple[str | None, ...] = ()    # feature i's planted group (None or missing: no centre)
    n: int | None = None                   # features per layer (default: one per token)
    top_k: int = 0                         # > 0: top_tokens lists of k random tokens with sorted logits
    layers: tuple[int, ...] | None = None  # None: blocks 1..n_layers
    vectors: bool = True                   # store a vector per feature
    spread: float = 3.0                    # scale of the group centres against unit noise
    shared_centres: bool = False           # one centre per group for every layer (else new ones per layer)
    label: bool = False                    # write each feature's group as `label`

    def count(self) -> int:
        return self.n if self.n is not None else len(self.tokens)


@dataclass(frozen=True)
class ToyLake:
    models: tuple[ToyModel, ...]
    seed: int = 0                          # the lake's shared draws: latent signal, token ids
    org: str = "test"                      # model id "{org}/{name}"
    model_info: dict = field(default_factory=dict)    # more model fields; strings may use {name}
    extraction: dict = field(default_factory=dict)
    dtype: str = "float16"                 # of every vector table
    n_prompts: int = 6
    prompt_set: str = "default"
    categories: tuple[str, ...] = ("factual", "coding")   # prompt i's category: categories[i % len]
    text: str = "prompt {i}"
    poolings: tuple[str, ...] = (DEFAULT_POOLING,)  # the comparisons' default (one draw: the values of the
                                                   # lakes written when it was "mean" are unchanged); (): none
    latent_rank: int = 0                   # rank of the shared signal (0: pooled rows are noise)
    bumps: int = 0                         # latent blocks along the depth (0: two, turning a quarter)
    bump_width: float = 0.15
    noise: float = 1.0                     # pooled noise scale
    tokens: int | tuple[str, ...] = 2      # tokens per prompt (random ids), or their spellings; 0: no activations
    endings: tuple[str, ...] = ()          # the last token of prompt i: endings[i % len]
    bos: bool = False                      # token 0 is a special BOS
    token_noise: float = 0.5
    features: Features | None = None
    ov_gate: bool = False
    layer_stats: bool = False
    own_weight_stream: bool = True         # False: weight tables continue the activations' random stream


def write_toy_lake(root, lake: ToyLake | None = None, **changes) -> Path:
    """Write `lake` (SIMPLE by default; `changes` replace its fields) under `root`, one folder per model."""
    lake = replace(lake or SIMPLE, **changes)
    if lake.tokens and not lake.poolings:
        raise ValueError("toy activations repeat a pooled row: give at least one pooling, or tokens=0")
    root = Path(root)
    shared = _shared_draws(lake)
    for model in lake.models:
        _write_model(root / model.name, model, lake, shared)
    return root


def write_toy_vindex(root, name="toy", n_layers=3, d=8, n_prompts=6, seed=0, dtype="float16") -> Path:
    """One SIMPLE model (prompts, pooled and activations over noise) written at `root` itself."""
    lake = replace(SIMPLE, models=(ToyModel(name, n_layers, d, seed),), n_prompts=n_prompts, seed=seed, dtype=dtype)
    _write_model(Path(root), lake.models[0], lake, _shared_draws(lake))
    return Path(root)


def _shared_draws(lake: ToyLake) -> dict:
    rng = np.random.default_rng(lake.seed)
    blocks = lake.bumps or 2
    latent = rng.standard_normal((blocks, lake.n_prompts, lake.latent_rank)) if lake.latent_rank else None
    k = lake.tokens if isinstance(lake.tokens, int) else 0
    ids = rng.integers(0, N_TOKEN_IDS, (lake.n_prompts, k)) if k else None
    return {"latent": latent, "token_ids": ids}


def _write_model(root: Path, model: ToyModel, lake: ToyLake, shared: dict) -> None:
    rng = np.random.default_rng(model.seed)
    feats = lake.features
    info = {"id": f"{lake.org}/{model.name}", "family": "toy", "n_layers": model.n_layers, "d_model": model.d}
    if feats:
        info["d_ffn"] = feats.count()
    if lake.ov_gate:
        info["n_heads"] = N_HEADS
    info.update({k: v.format(name=model.name) if isinstance(v, str) else v for k, v in lake.model_info.items()})
    w = VindexWriter.create(root, model.name, info, extraction=lake.extraction)
    if lake.poolings:
        w.declare_vectors("pooled", model.d, lake.dtype)
    if lake.tokens:
        w.declare_vectors("activations", model.d, lake.dtype)
    if feats and feats.vectors:
        w.declare_vectors("features", model.d, lake.dtype)
    _write_prompts(w, lake)
    for layer in range(model.n_layers + 1):
        pooled = _write_pooled(w, layer, model, lake, shared, rng) if lake.poolings else None
        if lake.tokens:
            _write_activations(w, layer, pooled, model, lake, shared, rng)
    if feats:
        if lake.own_weight_stream:
            rng = np.random.default_rng([model.seed, 1])
        stats = []
        layers = feats.layers if feats.layers is not None else range(1, model.n_layers + 1)
        centres = None
        for layer in layers:
            if model.clustered and (centres is None or not feats.shared_centres):
                centres = _centres(feats, model.d, rng)
            _write_features(w, layer, model, feats, centres if model.clustered else None, rng)
            if lake.ov_gate:
                _write_ov_gate(w, layer, feats.count(), rng)
            if lake.layer_stats:
                stats += _spectra(layer, model, rng)
        if stats:
            w.write_shard("layer_stats", {k: [r[k] for r in stats] for k in stats[0]})


def _write_prompts(w: VindexWriter, lake: ToyLake) -> None:
    n = lake.n_prompts
    w.write_shard("prompts", {"prompt_set": [lake.prompt_set] * n, "prompt_id": np.arange(n),
                              "category": [lake.categories[i % len(lake.categories)] for i in range(n)],
                              "text": [lake.text.format(i=i) for i in range(n)]},
                  partition={"prompt_set": lake.prompt_set})
    w.add_prompt_set(lake.prompt_set, "0" * 64, n, complete=True)


def _write_pooled(w, layer, model, lake, shared, rng) -> np.ndarray:
    """Writes the pooled rows of `layer` (one block per pooling); returns the first pooling's rows."""
    n = lake.n_prompts
    signal = 0.0
    if lake.latent_rank:
        latent = sum(w * z for w, z in zip(_depth_weights(lake, layer / model.n_layers), shared["latent"]))
        signal = latent @ rng.standard_normal((lake.latent_rank, model.d))
    acts = [signal + lake.noise * rng.standard_normal((n, model.d)) for _ in lake.poolings]
    w.write_shard("pooled", {"prompt_set": [lake.prompt_set] * (n * len(acts)),
                             "prompt_id": np.tile(np.arange(n), len(acts)),
                             "pooling": [p for p in lake.poolings for _ in range(n)],
                             "act": np.concatenate(acts)}, partition={"layer": layer})
    return acts[0]


def _depth_weights(lake: ToyLake, t: float) -> np.ndarray:
    """w_b(t), the weight of each latent block at normalised depth t."""
    if not lake.bumps:
        return np.array([np.cos(t * np.pi / 2), np.sin(t * np.pi / 2)])
    return np.exp(-0.5 * ((t - np.linspace(0, 1, lake.bumps)) / lake.bump_width) ** 2)


def _token_grid(lake: ToyLake, shared: dict) -> tuple[np.ndarray, list[str]]:
    """(ids, spellings) of every token, prompt-major."""
    n = lake.n_prompts
    if isinstance(lake.tokens, int):
        ids = shared["token_ids"].copy()
        words = [[f"t{i}" for i in row] for row in ids]
    else:
        words = [list(lake.tokens) for _ in range(n)]
    if lake.endings:
        for i, row in enumerate(words):
            row[-1] = lake.endings[i % len(lake.endings)]
    if not isinstance(lake.tokens, int):
        vocab = {s: i for i, s in enumerate(dict.fromkeys(s for row in words for s in row))}
        ids = np.array([[vocab[s] for s in row] for row in words])
    return ids.ravel(), [s for row in words for s in row]


def _write_activations(w, layer, pooled, model, lake, shared, rng) -> None:
    n = lake.n_prompts
    k = lake.tokens if isinstance(lake.tokens, int) else len(lake.tokens)
    pid, tix = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
    act = np.repeat(pooled, k, axis=0) + lake.token_noise * rng.standard_normal((n * k, model.d))
    act[tix == 0] *= model.sink
    ids, words = _token_grid(lake, shared)
    special = (tix == 0) & lake.bos
    lens = np.where(special, 0, [len(t) for t in words])      # specials have no characters in the text
    ends = np.cumsum(lens.reshape(n, k), axis=1).ravel()
    w.write_shard("activations", {
        "prompt_set": [lake.prompt_set] * (n * k), "prompt_id": pid, "token_index": tix, "token_id": ids,
        "token": words, "char_start": np.where(special, -1, ends - lens), "char_end": np.where(special, -1, ends),
        "special": special, "norm": np.linalg.norm(act, axis=1).astype(np.float32), "act": act},
        partition={"layer": layer})


def _centres(feats: Features, d: int, rng) -> np.ndarray:
    n_groups = len({g for g in feats.groups if g is not None})
    return rng.standard_normal((n_groups, d)) * feats.spread


def _write_features(w, layer, model, feats: Features, centres, rng) -> None:
    m = feats.count()
    cols = {"feature": np.arange(m)}
    if feats.vectors:
        index = {g: i for i, g in enumerate(dict.fromkeys(g for g in feats.groups if g is not None))}
        groups = list(feats.groups) + [None] * (m - len(feats.groups))
        at = np.zeros((m, model.d))
        if centres is not None:
            at = np.array([centres[index[g]] if g is not None else np.zeros(model.d) for g in groups])
        cols["vector"] = at + rng.standard_normal((m, model.d))
    if feats.top_k:
        ids = rng.integers(0, len(feats.tokens), (m, feats.top_k))
        logits = np.sort(rng.random((m, feats.top_k)) * 10, axis=1)[:, ::-1]
        cols.update(top_token_id=ids[:, 0], top_token=[feats.tokens[t] for t in ids[:, 0]],
                    c_score=logits[:, 0].astype(np.float32),
                    top_tokens=[[{"token_id": int(t), "token": feats.tokens[t], "logit": float(v)}
                                 for t, v in zip(tk, lg)] for tk, lg in zip(ids, logits)])
    else:
        cols.update(top_token_id=np.arange(m), top_token=list(feats.tokens[:m]),
                    c_score=rng.random(m).astype(np.float32) * 10)
    if feats.label:
        cols["label"] = list(feats.groups[:m])
    w.write_shard("features", cols, partition={"layer": layer})


def _write_ov_gate(w, layer, n_features, rng) -> None:
    rows = N_HEADS * TOP_K_HEADS
    w.write_shard("ov_gate", {
        "head": np.repeat(np.arange(N_HEADS), TOP_K_HEADS), "variant": ["o"] * rows, "feature_layer": [layer] * rows,
        "feature": rng.integers(0, n_features, rows), "coupling": rng.random(rows).astype(np.float32),
        "total_coupling": np.repeat(rng.random(N_HEADS) * 50 + 1, TOP_K_HEADS).astype(np.float32),
        "rank": np.tile(np.arange(1, TOP_K_HEADS + 1), N_HEADS)}, partition={"layer": layer})


def _spectra(layer, model, rng) -> list[dict]:
    d = model.d
    return [{"layer": layer, "depth": layer / model.n_layers, "matrix": matrix, "rows": d, "cols": d,
             "top_singular_values": np.sort(rng.random(8))[::-1].astype(np.float32).tolist(),
             "effective_rank": float(rng.random() * d), "spectral_entropy": float(rng.random() * 3),
             "energy_top1pct": float(rng.random()), "energy_top10pct": float(rng.random())} for matrix in MATRICES]


# -- presets -------------------------------------------------------------------------------------
CATEGORIES = ("factual", "coding", "reasoning", "translation")
# lexicon words (vindex.study's categories) the STUDY features' top tokens are made of
WORDS = {"cities": ("Paris", "London", "Tokyo", "Cairo", "Lima", "Oslo"),
         "colours": ("red", "blue", "green", "yellow", "purple", "pink"),
         "animals": ("dog", "cat", "horse", "lion", "tiger", "bear"),
         "months": ("January", "March", "June", "July", "August", "October")}
# VIEW's vocabulary: words a search finds, and one that tries to close the page's <script>
VOCAB = ("\u0120Paris", "\u0120London", "\u0120Berlin", "def", "\u0120return", "\u0120one", "\u0120two",
         "\u2581Monday", "\u0120red", "\u0120blue", "</script><b>x", "\u0120import", "\u0120the", "\u0120cat")
LAKE_SHAPES = ((3, 8), (4, 12), (2, 16), (5, 6))   # (n_layers, d) of DISTRIBUTED's m0..m3


def _lexicon_features(n_unlabelled: int = 12) -> Features:
    """24 lexicon words in 4 groups (every other one with the 'Ġ' word-start marker), then unlabelled tokens."""
    words = [(w, g) for g, ws in WORDS.items() for w in ws]
    tokens = tuple(f"\u0120{w}" if i % 2 else w for i, (w, _) in enumerate(words)) + tuple(
        f"qz{i}" for i in range(n_unlabelled))
    return Features(tokens=tokens, groups=tuple(g for _, g in words), spread=5.0, shared_centres=True)


# prompts, pooled and activations over noise: the format and query tests' vindex
SIMPLE = ToyLake(models=(ToyModel("toy", 3, 8),))
# four models of different depths and widths over the same 12 prompts (lake-scale CKA)
DISTRIBUTED = replace(SIMPLE, n_prompts=12,
                      models=tuple(ToyModel(f"m{i}", n, d, seed=i) for i, (n, d) in enumerate(LAKE_SHAPES)))
# docs/sql.md's lake: toy-a (4 blocks, d 16) and toy-b (6 blocks, d 24) over 32 prompts with the depth
# signal, a massive BOS token, a shared tokenizer, and features in three labelled groups on layers 1-2
DOCS = ToyLake(
    models=(ToyModel("toy-a", 4, 16, seed=1, sink=20.0), ToyModel("toy-b", 6, 24, seed=2, sink=20.0)),
    org="docs", dtype="float32", n_prompts=32, prompt_set="demo", categories=CATEGORIES, text="prompt number {i}",
    latent_rank=6, noise=0.7, tokens=4, bos=True, own_weight_stream=False,
    features=Features(tokens=tuple(f"tok{i}" for i in range(30)), groups=("number", "name", "verb") * 10,
                      layers=(1, 2), label=True))
# the study's lake: every table it reads; toy-a has an attention sink and clustered features, toy-b
# random features (its clustering sits at its null); two thirds of the prompts end in '?'
STUDY = ToyLake(
    models=(ToyModel("toy-a", 4, 16, seed=1, sink=100.0), ToyModel("toy-b", 6, 24, seed=2, clustered=False)),
    dtype="float32", n_prompts=32, categories=CATEGORIES, text="prompt {i}?",
    poolings=("mean", "last", "mean_nosink"), latent_rank=4, noise=0.3,
    tokens=("Hello", "\u0120world", "."), endings=(".", "\u0120?", "\u0120?"),
    features=_lexicon_features(), extraction={"weights": {"vectors": "down"}})
# the viewer's lake: provenance, a sharp depth signal, and weight tables (features with top-k tokens,
# ov_gate, layer_stats); with poolings=() weight tables only
VIEW = ToyLake(
    models=(ToyModel("alpha", 4, 16, seed=1), ToyModel("beta", 6, 24, seed=2)),
    org="toy-org", model_info={"revision": "rev-{name}", "vocab_size": len(VOCAB)},
    extraction={"dtype": "float32", "pooling": {"mean": "mean over content tokens"}, "unembedding": "W_E"},
    dtype="float32", n_prompts=24, categories=CATEGORIES[:3], poolings=("mean", "last"),
    latent_rank=4, bumps=6, noise=0.05, tokens=0, features=Features(tokens=VOCAB, n=40, top_k=3, vectors=False),
    ov_gate=True, layer_stats=True)
