"""Singular-value summaries of weight matrices (the `layer_stats` table).

For a matrix with singular values s_1 >= ... >= s_n (n = min(rows, cols)):

    effective_rank   = exp(H(p)),  p_i = s_i / sum(s),   H(p) = -sum p_i log p_i
                       (Roy & Vetterli 2007, "The effective rank: a measure of effective dimensionality")
    spectral_entropy = H(q) / log(n),  q_i = s_i^2 / sum(s^2)
                       (entropy of the energy distribution, normalised to [0, 1]; 1 = flat spectrum)
    energy_top1pct   = sum of q_i over the top ceil(1% of n) values; energy_top10pct likewise

A zero matrix gets 0 for all of them. Singular values come from LAPACK (torch.linalg.svdvals)
in float32, accurate to about 1e-7 of s_1, which is plenty for these summaries. They run on one
thread: the SVD's bidiagonalisation is BLAS-2 work that gains little from threads and loses a
lot when cores are shared (measured here on a busy 2-core machine, a 1536 x 576 matrix: 0.23 s
on one thread, 2.6 s on two).
"""
from __future__ import annotations

import math

import numpy as np

N_TOP = 16


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """Singular values of a 2-D matrix, descending, as float64."""
    import torch

    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim != 2 or 0 in m.shape:
        raise ValueError(f"singular values need a non-empty 2-D matrix, got shape {m.shape}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            return torch.linalg.svdvals(torch.from_numpy(np.ascontiguousarray(m))).double().numpy()
    finally:
        torch.set_num_threads(threads)


def spectrum_summary(s: np.ndarray, n_top: int = N_TOP) -> dict:
    """The `layer_stats` summary columns of one spectrum (see the module doc for the formulas)."""
    s = np.sort(np.maximum(np.asarray(s, dtype=np.float64), 0.0))[::-1]
    n = len(s)
    energy = s ** 2
    total, total_e = s.sum(), energy.sum()
    if total <= 0:
        return {"top_singular_values": s[:n_top].astype(np.float32).tolist(), "effective_rank": 0.0,
                "spectral_entropy": 0.0, "energy_top1pct": 0.0, "energy_top10pct": 0.0}
    p = s[s > 0] / total
    q = energy[energy > 0] / total_e
    return {
        "top_singular_values": s[:n_top].astype(np.float32).tolist(),
        "effective_rank": float(math.exp(-(p * np.log(p)).sum())),
        "spectral_entropy": float(-(q * np.log(q)).sum() / math.log(n)) if n > 1 else 0.0,
        "energy_top1pct": float(energy[:math.ceil(0.01 * n)].sum() / total_e),
        "energy_top10pct": float(energy[:math.ceil(0.10 * n)].sum() / total_e),
    }


def matrix_rows(matrices: dict[str, np.ndarray], layer: int, n_top: int = N_TOP) -> dict:
    """Rows of `layer_stats` for named matrices of one layer (model and depth are filled by the writer)."""
    rows = {k: [] for k in ("layer", "matrix", "rows", "cols", "top_singular_values", "effective_rank",
                            "spectral_entropy", "energy_top1pct", "energy_top10pct")}
    for name, m in matrices.items():
        summary = spectrum_summary(singular_values(m), n_top)
        rows["layer"].append(layer)
        rows["matrix"].append(name)
        rows["rows"].append(m.shape[0])
        rows["cols"].append(m.shape[1])
        for key, value in summary.items():
            rows[key].append(value)
    return rows
