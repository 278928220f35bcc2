"""Writers that build LarQL vindex folders from the documented format (../shared/LARQL_FORMAT.md).

They share no code with the importer (ingest/larql_format.py): records are packed with `struct`
field by field, as the format describes them, so a misreading in the importer cannot cancel out.
Each writer returns a `LarqlFixture` holding the source arrays, which tests compare every
imported value against.

    fx = write_larql_fixture(tmp_path / "src", dtype="f16", moe=True, labels=True, ov_gate=True)
    fx_model = larql_fixture_from_model(tmp_path / "real")   # a tiny random Llama's real weights
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = 0x444D4554
NP_DTYPE = {"f32": "<f4", "f16": "<f2"}


@dataclass
class LayerSource:
    """The source values of one LarQL layer (flat feature index; experts contiguous)."""
    num_features: int
    top_token_id: np.ndarray   # (n,) uint32
    c_score: np.ndarray        # (n,) float32
    token_ids: np.ndarray      # (n, k) uint32, 0 in padding
    logits: np.ndarray         # (n, k) float32, 0 in padding
    n_valid: np.ndarray        # (n,) real pairs at the front of each record
    has_meta: np.ndarray       # (n,) False = all-zero record
    gate: np.ndarray | None = None     # (n, hidden) in the file's dtype (float32 for bf16 sources)
    num_experts: int | None = None
    features_per_expert: int | None = None
    in_down_meta: bool = True  # False: down_meta.bin holds 0 records for this layer


@dataclass
class LarqlFixture:
    folder: Path
    index: dict
    dtype: str
    top_k: int
    layers: dict[int, LayerSource]
    token_text: list          # expected decoded, stripped text per token id
    labels: dict = field(default_factory=dict)      # (layer, flat feature) -> label
    clusters: dict = field(default_factory=dict)    # (layer, flat feature) -> cluster index
    relation: dict | None = None
    ov_rows: list[dict] = field(default_factory=list)
    weights: dict = field(default_factory=dict)     # the model's matrices (real-model fixture only)


# -- the file writers, straight from the format description -------------------------------------

def write_down_meta_bin(path: Path, layers: list[LayerSource | None], top_k: int, literal_magic: bool = False) -> None:
    """Header (magic, version 1, num_layers, top_k), then per layer: u32 count + 8 + 8*top_k byte records.

    `literal_magic`: the magic as the four bytes b"DMET" (what some LarQL writers emit), not the
    little-endian u32 0x444D4554 (b"TEMD" on disk).
    """
    out = bytearray((b"DMET" + struct.pack("<III", 1, len(layers), top_k)) if literal_magic
                    else struct.pack("<IIII", MAGIC, 1, len(layers), top_k))
    for src in layers:
        if src is None or not src.in_down_meta:
            out += struct.pack("<I", 0)
            continue
        out += struct.pack("<I", src.num_features)
        for f in range(src.num_features):
            out += struct.pack("<If", int(src.top_token_id[f]), float(src.c_score[f]))
            for j in range(top_k):
                out += struct.pack("<If", int(src.token_ids[f, j]), float(src.logits[f, j]))
    path.write_bytes(bytes(out))


def write_down_meta_jsonl(path: Path, layers: dict[int, LayerSource], token_text: list) -> None:
    """Legacy v1: one object per feature with metadata; features without it are left out."""
    with open(path, "w", encoding="utf-8") as f:
        for layer, src in layers.items():
            for i in np.flatnonzero(src.has_meta):
                k = [{"t": token_text[int(t)], "i": int(t), "s": float(s)}
                     for t, s in zip(src.token_ids[i, :src.n_valid[i]], src.logits[i, :src.n_valid[i]])]
                f.write(json.dumps({"l": layer, "f": int(i), "t": token_text[int(src.top_token_id[i])],
                                    "i": int(src.top_token_id[i]), "c": float(src.c_score[i]), "k": k}) + "\n")


def write_gate_vectors(path: Path, layers: list[LayerSource], dtype: str) -> list[tuple[int, int]]:
    """Row-major (num_features x hidden) blocks, concatenated; returns each layer's (offset, length)."""
    ranges, offset = [], 0
    with open(path, "wb") as f:
        for src in layers:
            if dtype == "bf16":  # the top 16 bits of each float32
                data = (src.gate.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
            else:
                data = src.gate.astype(NP_DTYPE[dtype]).tobytes()
            f.write(data)
            ranges.append((offset, len(data)))
            offset += len(data)
    return ranges


def make_vocab(size: int) -> tuple[list[str], list[str]]:
    """Byte-level BPE style tokens and the text LarQL shows for each (decoded, stripped).

    Id 0 is a special token (decoded with skip_special_tokens: the empty string).
    """
    tokens, text = ["<pad>"], [""]
    for i in range(1, size):
        if i % 7 == 3:
            tokens.append(f"w{i}"), text.append(f"w{i}")          # no leading space
        elif i % 11 == 5:
            tokens.append(f"Ã©{i}"), text.append(f"é{i}")          # UTF-8 bytes of é
        else:
            tokens.append(f"Ġw{i}"), text.append(f"w{i}")         # leading space, stripped
    return tokens, text


def write_tokenizer(path: Path, tokens: list[str]) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<pad>", special=True)])
    tok.save(str(path))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_index(folder: Path, *, model: str, dtype: str, hidden: int, intermediate: int, vocab: int,
                layers: list[LayerSource], ranges, top_k: int, checksums: list[str], extra: dict | None = None) -> dict:
    n = len(layers)
    entries = []
    for i, (src, (off, length)) in enumerate(zip(layers, ranges)):
        e = {"layer": i, "num_features": src.num_features, "offset": off, "length": length}
        if src.num_experts:
            e.update(num_experts=src.num_experts, num_features_per_expert=src.features_per_expert)
        entries.append(e)
    third = max(1, n // 3)
    index = {
        "version": 2, "model": model, "family": "llama", "dtype": dtype,
        "num_layers": n, "hidden_size": hidden, "intermediate_size": intermediate, "vocab_size": vocab,
        "embed_scale": 1.0, "down_top_k": top_k, "extract_level": "browse",
        "source": {"huggingface_repo": model, "huggingface_revision": None, "safetensors_sha256": None,
                   "extracted_at": "2026-01-02T03:04:05Z", "larql_version": "0.4.2"},
        "checksums": {name: sha256(folder / name) for name in checksums},
        "layer_bands": {"syntax": [0, third - 1], "knowledge": [third, 2 * third - 1], "output": [2 * third, n - 1]},
        "layers": entries,
        "model_config": {"model_type": "llama", "head_dim": 4, "num_q_heads": 4, "num_kv_heads": 2,
                         "rope_base": 10000.0, "sliding_window": None, "tie_word_embeddings": False},
    }
    index.update(extra or {})
    (folder / "index.json").write_text(json.dumps(index, indent=2))
    return index


# -- synthetic fixtures -------------------------------------------------------------------------

def random_layer(rng, n: int, top_k: int, vocab: int, hidden: int) -> LayerSource:
    """down_meta records covering every case: full, zero-padded, empty top-k, token id 0, all-zero."""
    top_id = np.zeros(n, np.uint32)
    c = np.zeros(n, np.float32)
    ids = np.zeros((n, top_k), np.uint32)
    logits = np.zeros((n, top_k), np.float32)
    n_valid = np.zeros(n, np.int64)
    has = np.ones(n, bool)
    for f in range(n):
        kind = f % 6
        if kind == 5:            # no metadata: an all-zero record
            has[f] = False
            continue
        v = top_k if kind in (0, 3) else (0 if kind == 4 else int(rng.integers(1, top_k)))
        chosen = rng.choice(np.arange(1, vocab), size=max(v, 1), replace=False)
        if kind == 3:            # a real pair with token id 0 (kept: its logit is not 0)
            chosen[-1] = 0
        vals = np.sort(rng.normal(3, 2, size=max(v, 1)).astype(np.float32))[::-1]
        ids[f, :v], logits[f, :v], n_valid[f] = chosen[:v], vals[:v], v
        top_id[f], c[f] = chosen[0], vals[0]
    gate = rng.standard_normal((n, hidden)).astype(np.float32)
    return LayerSource(n, top_id, c, ids, logits, n_valid, has, gate)


def write_larql_fixture(folder, *, dtype: str = "f32", moe: bool = False, labels: bool = False,
                        ov_gate: bool = False, legacy_jsonl: bool = False, n_layers: int = 3, hidden: int = 8,
                        n_features: int = 12, num_experts: int = 3, features_per_expert: int = 4,
                        top_k: int = 4, vocab: int = 40, missing_meta_layer: int | None = None,
                        seed: int = 0, checksums: bool = True, shared_features: int = 0,
                        literal_magic: bool = False) -> LarqlFixture:
    """A synthetic LarQL vindex. MoE fixtures keep layer 0 dense (as DeepSeek-style models do).

    `missing_meta_layer`: that layer's down_meta holds 0 records though index.json lists features.
    `shared_features`: MoE layers end with that many shared-expert rows, as LarQL's non-streaming
    build writes them (after the routed experts; num_features counts them, num_experts does not).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, text = make_vocab(vocab)
    write_tokenizer(folder / "tokenizer.json", tokens)
    layers = []
    for layer in range(n_layers):
        if moe and layer > 0:
            src = random_layer(rng, num_experts * features_per_expert + shared_features, top_k, vocab, hidden)
            src.num_experts, src.features_per_expert = num_experts, features_per_expert
        else:
            src = random_layer(rng, n_features, top_k, vocab, hidden)
        if layer == missing_meta_layer:
            src.in_down_meta = False
            src.has_meta[:] = False
        if dtype == "f16":
            src.gate = src.gate.astype(np.float16)
        elif dtype == "bf16":  # what survives truncation to bfloat16
            src.gate = ((src.gate.view(np.uint32) >> 16) << 16).view(np.float32)
        layers.append(src)
    ranges = write_gate_vectors(folder / "gate_vectors.bin", layers, dtype)
    if legacy_jsonl:
        write_down_meta_jsonl(folder / "down_meta.jsonl", dict(enumerate(layers)), text)
        down = "down_meta.jsonl"
    else:
        write_down_meta_bin(folder / "down_meta.bin", layers, top_k, literal_magic=literal_magic)
        down = "down_meta.bin"
    fx = LarqlFixture(folder, {}, dtype, top_k, dict(enumerate(layers)), text)
    if labels:
        write_labels(fx, rng)
    if ov_gate:
        write_ov_gate(fx, rng, n_heads=4)
    fx.index = write_index(folder, model="test-org/tiny-larql", dtype=dtype, hidden=hidden,
                           intermediate=n_features, vocab=vocab, layers=layers, ranges=ranges, top_k=top_k,
                           checksums=[down, "gate_vectors.bin"] if checksums else [],
                           extra={"model_config": {"model_type": "llama", "head_dim": 2, "num_q_heads": 4,
                                                   "num_kv_heads": 2, "rope_base": 10000.0,
                                                   "sliding_window": None, "tie_word_embeddings": False,
                                                   **({"moe": {"num_experts": num_experts, "top_k": 2,
                                                               **({"shared_expert": True} if shared_features
                                                                  else {})}}
                                                      if moe else {})}})
    return fx


def write_labels(fx: LarqlFixture, rng) -> None:
    """feature_labels.json in both key styles, feature_clusters.jsonl and relation_clusters.json."""
    k = 3
    fx.relation = {"k": k, "labels": ["capital-of", "language-of", "colour"], "counts": [5, 4, 3],
                   "top_tokens": [["Paris", "Rome"], ["French"], ["red", "blue"]]}
    (fx.folder / "relation_clusters.json").write_text(json.dumps(
        {**fx.relation, "centres": rng.standard_normal((k, 8)).tolist()}))
    raw = {}
    with open(fx.folder / "feature_clusters.jsonl", "w") as f:
        for layer, src in fx.layers.items():
            for feat in range(0, src.num_features, 2):
                c = int((feat // 2 + layer) % k)
                fx.clusters[(layer, feat)] = c
                f.write(json.dumps({"l": layer, "f": feat, "c": c}) + "\n")
            for feat in range(0, src.num_features, 3):
                label = f"label {layer}/{feat}"
                fx.labels[(layer, feat)] = label
                raw[f"L{layer}_F{feat}" if feat % 2 == 0 else f"{layer}:{feat}"] = label
    (fx.folder / "feature_labels.json").write_text(json.dumps(raw))


def write_ov_gate(fx: LarqlFixture, rng, n_heads: int, top_k: int = 3) -> None:
    """Per-layer ov-gate NDJSON: header, then top-k features per head in LarQL's row layout."""
    lines = [{"_header": True, "type": "ov_gate_coupling", "model": "test-org/tiny-larql", "top_k": top_k,
              "num_layers": len(fx.layers), "num_q_heads": n_heads, "layers": list(fx.layers)}]
    for layer, src in fx.layers.items():
        for h in range(n_heads):
            coupling = np.round(rng.uniform(0.1, 5.0, src.num_features), 3)
            total = round(float(coupling.sum()), 1)
            order = np.argsort(-coupling, kind="stable")[:top_k]
            for f in order:
                row = {"head": f"L{layer}_H{h}", "layer": layer, "head_idx": h, "feature": f"L{layer}_F{f}",
                       "feature_idx": int(f), "feature_layer": layer,
                       "target_token": fx.token_text[int(src.top_token_id[f])],
                       "coupling": float(coupling[f]), "total_coupling": total}
                lines.append(row)
                fx.ov_rows.append(row)
    with open(fx.folder / "ov_gate_coupling.ndjson", "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in lines)


# -- a fixture from a tiny random model's real weights ------------------------------------------

def tiny_llama(seed: int = 0, vocab: int = 48):
    """A randomly initialised 2-layer Llama (GQA: 4 query heads, 2 KV heads)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=4, max_position_embeddings=64,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def larql_fixture_from_model(folder, model=None, *, top_k: int = 5, ov_top_k: int = 6) -> LarqlFixture:
    """A LarQL vindex (f32) computed with numpy from a transformers model's weights.

    down_meta: logits = W_E . W_down[:, f] over the vocabulary (raw input embedding, LarQL's
    definition), top_k tokens by logit, c_score = the top logit. Gate vectors: rows of W_gate.
    OV-gate: coupling_f = ||W_gate[f, :] . W_O[:, h*hd:(h+1)*hd]||_2, top ov_top_k per head.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model or tiny_llama()
    cfg = model.config
    W_E = model.model.embed_tokens.weight.detach().numpy().astype(np.float32)     # (vocab, d)
    tokens, text = make_vocab(cfg.vocab_size)
    write_tokenizer(folder / "tokenizer.json", tokens)
    layers, weights = [], {"W_E": W_E}
    hd = cfg.head_dim
    ov_lines = [{"_header": True, "type": "ov_gate_coupling", "model": "test-org/tiny-llama", "top_k": ov_top_k,
                 "num_layers": cfg.num_hidden_layers, "num_q_heads": cfg.num_attention_heads,
                 "layers": list(range(cfg.num_hidden_layers))}]
    ov_rows = []
    for i, block in enumerate(model.model.layers):
        W_gate = block.mlp.gate_proj.weight.detach().numpy().astype(np.float32)   # (d_ffn, d)
        W_down = block.mlp.down_proj.weight.detach().numpy().astype(np.float32)   # (d, d_ffn)
        W_O = block.self_attn.o_proj.weight.detach().numpy().astype(np.float32)   # (d, n_heads*hd)
        weights[i] = {"W_gate": W_gate, "W_down": W_down, "W_O": W_O}
        logits = W_E @ W_down                                                       # (vocab, d_ffn)
        order = np.argsort(-logits, axis=0, kind="stable")[:top_k].T               # (d_ffn, k)
        top = np.take_along_axis(logits.T, order, axis=1).astype(np.float32)
        n = W_gate.shape[0]
        layers.append(LayerSource(n, order[:, 0].astype(np.uint32), top[:, 0].copy(), order.astype(np.uint32),
                                  top, np.full(n, top_k), np.ones(n, bool), W_gate))
        for h in range(cfg.num_attention_heads):
            coupling = np.linalg.norm(W_gate @ W_O[:, h * hd:(h + 1) * hd], axis=1)  # (d_ffn,)
            total = float(coupling.sum())
            for f in np.argsort(-coupling, kind="stable")[:ov_top_k]:
                row = {"head": f"L{i}_H{h}", "layer": i, "head_idx": h, "feature": f"L{i}_F{f}",
                       "feature_idx": int(f), "feature_layer": i, "target_token": text[int(order[f, 0])],
                       "coupling": round(float(coupling[f]), 3), "total_coupling": round(total, 1)}
                ov_lines.append(row)
                ov_rows.append(row)
    ranges = write_gate_vectors(folder / "gate_vectors.bin", layers, "f32")
    write_down_meta_bin(folder / "down_meta.bin", layers, top_k)
    with open(folder / "ov_gate.jsonl", "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in ov_lines)
    index = write_index(folder, model="test-org/tiny-llama", dtype="f32", hidden=cfg.hidden_size,
                        intermediate=cfg.intermediate_size, vocab=cfg.vocab_size, layers=layers, ranges=ranges,
                        top_k=top_k, checksums=["down_meta.bin", "gate_vectors.bin", "tokenizer.json"])
    return LarqlFixture(folder, index, "f32", top_k, dict(enumerate(layers)), text, ov_rows=ov_rows,
                        weights=weights)


# -- the check: every imported value against the fixture's source arrays ------------------------

def expected_label(fx: LarqlFixture, layer: int, f: int):
    if (layer, f) in fx.labels:
        return fx.labels[(layer, f)]
    if (layer, f) in fx.clusters and fx.relation is not None:
        return fx.relation["labels"][fx.clusters[(layer, f)]]
    return None


def assert_matches_fixture(root, fx: LarqlFixture, gate_vectors: bool, layer_offset: int = 1) -> None:
    """The vindex at `root` passes verify and holds exactly the fixture's values."""
    import vindex
    assert vindex.verify(root) == []
    vx = vindex.Vindex.open(root)
    n_layers = len(fx.layers)
    assert vx.n_layers == n_layers
    rows = vx.read("features").to_pylist()
    got = {(r["layer"], r["expert"], r["feature"]): r for r in rows}
    assert len(got) == len(rows) == sum(src.num_features for src in fx.layers.values())
    for layer, src in fx.layers.items():
        for f in range(src.num_features):
            if src.num_experts:
                routed = src.num_experts * src.features_per_expert
                key = ((layer + layer_offset, f // src.features_per_expert, f % src.features_per_expert)
                       if f < routed else (layer + layer_offset, src.num_experts, f - routed))  # shared expert
            else:
                key = (layer + layer_offset, None, f)
            r = got[key]
            assert r["model"] == vx.name
            if src.has_meta[f]:
                tid = int(src.top_token_id[f])
                assert (r["top_token_id"], r["top_token"]) == (tid, fx.token_text[tid]), key
                assert np.float32(r["c_score"]) == src.c_score[f], key
                k = int(src.n_valid[f])
                want = [{"token_id": int(i), "token": fx.token_text[int(i)], "logit": float(np.float32(s))}
                        for i, s in zip(src.token_ids[f, :k], src.logits[f, :k])]
                assert r["top_tokens"] == want, key
            else:
                assert (r["top_token_id"], r["top_token"], r["c_score"], r["top_tokens"]) == (None,) * 4, key
            assert r["label"] == expected_label(fx, layer, f), key
            assert r["cluster"] == fx.clusters.get((layer, f)), key
            if gate_vectors:
                v = np.asarray(r["vector"], dtype=src.gate.dtype)
                np.testing.assert_array_equal(v, src.gate[f])
                np.testing.assert_allclose(r["gate_norm"], np.linalg.norm(src.gate[f].astype(np.float64)),
                                           rtol=1e-5)
            else:
                assert r.get("vector") is None and r["gate_norm"] is None
    if gate_vectors:
        t = vx.manifest["tables"]["features"]
        assert t["vector_width"] == fx.index["hidden_size"]
        assert t["vector_dtype"] == ("float16" if fx.dtype == "f16" else "float32")
    if fx.ov_rows:
        check_ov_gate(vx, fx, layer_offset)
    else:
        assert "ov_gate" not in vx.tables


def check_ov_gate(vx, fx: LarqlFixture, layer_offset: int = 1) -> None:
    rows = vx.read("ov_gate").to_pylist()
    assert len(rows) == len(fx.ov_rows)
    got = {(r["layer"], r["head"], r["feature_layer"], r["expert"], r["feature"]): r for r in rows}
    by_head: dict = {}
    for x in fx.ov_rows:
        by_head.setdefault((x["layer"], x["head_idx"]), []).append(x)
    for (layer, head), xs in by_head.items():
        ranked = sorted(xs, key=lambda x: -x["coupling"])  # stable: file order breaks ties
        for rank, x in enumerate(ranked, 1):
            src = fx.layers[x["feature_layer"]]
            f = x["feature_idx"]
            if src.num_experts:
                routed = src.num_experts * src.features_per_expert
                e, f = (f // src.features_per_expert, f % src.features_per_expert) if f < routed \
                    else (src.num_experts, f - routed)
            else:
                e = None
            r = got[(layer + layer_offset, head, x["feature_layer"] + layer_offset, e, f)]
            assert r["variant"] == "o"
            assert np.float32(r["coupling"]) == np.float32(x["coupling"])
            assert np.float32(r["total_coupling"]) == np.float32(x["total_coupling"])
            assert r["rank"] == rank
