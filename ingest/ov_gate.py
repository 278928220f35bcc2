"""OV-gate: how strongly each attention head writes into each FFN feature's gate.

For head h of a layer with head_dim hd, W_O,h = W_O[:, h*hd:(h+1)*hd] (d, hd) is the slice of
the output projection that carries the head's output into the residual stream. LarQL defines

    variant 'o':   coupling_f = || W_gate[f, :] . W_O,h ||_2                 (norm over hd)

The more principled full OV circuit (Elhage et al. 2021, "A Mathematical Framework for
Transformer Circuits") composes the value projection too. With grouped-query attention query
head h reads KV head g = h // (n_heads / n_kv_heads), so W_V,g = W_V[g*hd:(g+1)*hd, :] (hd, d):

    variant 'ov':  coupling_f = || W_gate[f, :] . W_O,h . W_V,g ||_2          (norm over d)

computed without forming the (F, d) product per head: with A = W_gate . W_O,h (F, hd) and the
(hd, hd) Gram G = W_V,g W_V,g', coupling_f^2 = A[f] G A[f]'.

Per head we keep the top-k features, total_coupling = sum_f coupling_f over all features of the
feature layer (all experts, for MoE), and rank (1 = strongest). Norms and biases are not folded
in (as in LarQL); for non-gated FFNs (GPT-2, BERT) W_in plays the gate's role.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from vindex.errors import InvalidValue

VARIANTS = ("o", "ov")
_ROW_CHUNK = 8192


def _check(gate: np.ndarray, o: np.ndarray, n_heads: int) -> int:
    d = gate.shape[1]
    if o.shape[0] != d:
        raise InvalidValue(f"W_O must have d_model={d} rows like W_gate has columns, got shape {o.shape}")
    if o.shape[1] % n_heads:
        raise InvalidValue(f"W_O has {o.shape[1]} columns, not a multiple of n_heads={n_heads}")
    return o.shape[1] // n_heads


def coupling_o(gate: np.ndarray, o: np.ndarray, n_heads: int) -> np.ndarray:
    """(F, n_heads): ||W_gate[f] . W_O,h|| for every feature and head (LarQL's OV-gate)."""
    hd = _check(gate, o, n_heads)
    out = np.empty((gate.shape[0], n_heads), np.float32)
    for a in range(0, gate.shape[0], _ROW_CHUNK):
        m = gate[a:a + _ROW_CHUNK] @ o                                  # (c, n_heads*hd)
        out[a:a + _ROW_CHUNK] = np.linalg.norm(m.reshape(m.shape[0], n_heads, hd), axis=2)
    return out


def coupling_ov(gate: np.ndarray, o: np.ndarray, v: np.ndarray, n_heads: int, n_kv_heads: int) -> np.ndarray:
    """(F, n_heads): ||W_gate[f] . W_O,h . W_V,g(h)|| (full OV circuit, GQA-aware)."""
    hd = _check(gate, o, n_heads)
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise InvalidValue(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
    if v.shape != (n_kv_heads * hd, gate.shape[1]):
        raise InvalidValue(f"W_V must be (n_kv_heads*head_dim, d_model) = {(n_kv_heads * hd, gate.shape[1])}, "
                           f"got {v.shape}")
    group = n_heads // n_kv_heads
    vv = v.astype(np.float64).reshape(n_kv_heads, hd, -1)
    grams = vv @ vv.transpose(0, 2, 1)                                  # (n_kv, hd, hd): W_V,g W_V,g'
    out = np.empty((gate.shape[0], n_heads), np.float32)
    for a in range(0, gate.shape[0], _ROW_CHUNK):
        m = (gate[a:a + _ROW_CHUNK] @ o).reshape(-1, n_heads, hd).astype(np.float64)   # A per head
        for h in range(n_heads):
            A = m[:, h]
            sq = np.einsum("fi,ij,fj->f", A, grams[h // group], A)
            out[a:a + _ROW_CHUNK, h] = np.sqrt(np.maximum(sq, 0.0))
    return out


def top_couplings(couplings: np.ndarray, k: int, *, variant: str, feature_layer: int,
                  experts: np.ndarray | None = None, features: np.ndarray | None = None) -> dict:
    """Rows of `ov_gate` (layer and model are filled by the writer): the top-k features per head.

    `couplings` is (F, n_heads) over all features of `feature_layer`; `experts`/`features` give
    each row's MoE expert (or None for dense) and its index within the expert.
    """
    if variant not in VARIANTS:
        raise InvalidValue(f"OV-gate variant must be one of {VARIANTS}, got {variant!r}")
    n, n_heads = couplings.shape
    if k < 1:
        raise InvalidValue(f"top_k must be >= 1, got {k}")
    k = min(k, n)
    features = np.arange(n, dtype=np.int32) if features is None else features
    top = np.argsort(-couplings, axis=0, kind="stable")[:k]             # (k, n_heads), strongest first
    heads = np.repeat(np.arange(n_heads, dtype=np.int32), k)
    rows = top.T.reshape(-1)
    totals = couplings.astype(np.float64).sum(axis=0)
    return {
        "head": heads,
        "variant": pa.array([variant] * (n_heads * k), pa.string()),
        "feature_layer": np.full(n_heads * k, feature_layer, np.int32),
        "feature": features[rows].astype(np.int32),
        "expert": pa.nulls(n_heads * k, pa.int32()) if experts is None
        else pa.array(experts[rows], pa.int32()),
        "coupling": couplings[rows, heads].astype(np.float32),
        "total_coupling": totals[heads].astype(np.float32),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n_heads),
    }


def concat_rows(parts: list[dict]) -> dict:
    if len(parts) == 1:
        return parts[0]
    return {key: pa.concat_arrays([p[key] if isinstance(p[key], pa.Array) else pa.array(p[key]) for p in parts])
            for key in parts[0]}
