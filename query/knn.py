"""Mutual k-nearest-neighbour alignment (Huh, Cheung, Wang & Isola 2024, "The Platonic
Representation Hypothesis"): a second, non-CKA measure of whether two models organise the same
inputs the same way. For each row i, N_X(i) is its k nearest other rows by cosine similarity, and

    mKNN(X, Y) = 1/n sum_i |N_X(i) ∩ N_Y(i)| / k          (1 = same neighbourhoods, ~k/(n-1) = chance)
"""
from __future__ import annotations

import numpy as np

from vindex.errors import InvalidValue

from .cka import as_rows, centred


def knn_indices(X, k: int) -> np.ndarray:
    """(n, k) indices of each row's k nearest other rows by cosine similarity (ties: lower index)."""
    X = as_rows(X)
    n = X.shape[0]
    centred(X)  # a constant layer has no neighbourhoods: DegenerateInput (NULL in SQL)
    if not 1 <= k <= n - 2:
        # k = n-1 makes every neighbourhood "all the other rows": mutual k-NN would be 1 for any data
        raise InvalidValue(f"mutual_knn: k must be between 1 and n-2 = {n - 2} (with k = n-1 every row's "
                           f"neighbours are all the others), got {k}")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    Xn = X / np.where(norms > 0, norms, 1.0)
    S = Xn @ Xn.T
    np.fill_diagonal(S, -np.inf)  # a row is not its own neighbour
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


def knn_graph(X, k: int) -> np.ndarray:
    """(n, n) 0/1 matrix: A_ij = 1 when j is among i's k nearest neighbours."""
    idx = knn_indices(X, k)
    A = np.zeros((idx.shape[0],) * 2)
    np.put_along_axis(A, idx, 1.0, axis=1)
    return A


def unit_knn_graph(X, k: int) -> np.ndarray:
    """knn_graph / sqrt(n k), so that mKNN(X, Y) = <A_X, A_Y> (one dot product per layer pair)."""
    A = knn_graph(X, k)
    return A / np.sqrt(A.shape[0] * k)


def mutual_knn(X, Y, k: int = 10) -> float:
    X, Y = as_rows(X, "X"), as_rows(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise InvalidValue(f"mutual_knn needs row-aligned inputs: the lists have {X.shape[0]} and {Y.shape[0]} rows")
    a, b = knn_indices(X, k), knn_indices(Y, k)
    return float(np.mean([len(np.intersect1d(a[i], b[i])) for i in range(len(a))]) / k)
