"""k-means (k-means++ init, Lloyd iterations) and NMI / AMI, in numpy: the same numbers as
scikit-learn (tested against it), without depending on it at run time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from vindex.errors import InvalidValue


@dataclass
class KMeansResult:
    labels: np.ndarray      # (n,) cluster of each row
    centers: np.ndarray     # (k, d)
    distances: np.ndarray   # (n,) Euclidean distance of each row to its centre
    inertia: float          # sum of squared distances
    iterations: int


def _sq_distances(X: np.ndarray, C: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    """||x_i - c_j||^2 = ||x_i||^2 - 2 x_i.c_j + ||c_j||^2, (n, k), clipped at 0."""
    return np.maximum(x_sq[:, None] - 2 * X @ C.T + (C ** 2).sum(axis=1)[None, :], 0.0)


def kmeans_plusplus(X: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; greedy trials as in scikit-learn):
    each new centre is the best of 2 + log(k) candidates drawn with probability ∝ D(x)^2."""
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    trials = 2 + int(np.log(k))
    x_sq = (X ** 2).sum(axis=1)
    centers = np.empty((k, X.shape[1]))
    centers[0] = X[rng.integers(n)]
    closest = _sq_distances(X, centers[:1], x_sq)[:, 0]
    for c in range(1, k):
        total = closest.sum()
        if not total > 0:  # fewer distinct points than k: take any
            centers[c] = X[rng.integers(n)]
            continue
        cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
        cand = np.minimum(cand, n - 1)
        d = np.minimum(closest[None, :], _sq_distances(X, X[cand], x_sq).T)  # (trials, n)
        best = int(np.argmin(d.sum(axis=1)))
        centers[c], closest = X[cand[best]], d[best]
    return centers


def kmeans(X, k: int, seed: int = 0, max_iter: int = 300, tol: float = 1e-4, init=None) -> KMeansResult:
    """Lloyd's k-means from k-means++ (or `init` centres), stopping like scikit-learn: when the
    labels stop changing or the squared centre shift is <= tol * mean per-dimension variance."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise InvalidValue(f"kmeans: expected a non-empty list of vectors, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InvalidValue("kmeans: the vectors hold NaN or inf")
    n = X.shape[0]
    if not 1 <= k <= n:
        raise InvalidValue(f"kmeans: k must be between 1 and the number of vectors ({n}), got {k}")
    if max_iter < 1:
        raise InvalidValue(f"kmeans: max_iter must be >= 1, got {max_iter}")
    mean = X.mean(axis=0)
    Xc = X - mean  # centring first keeps the distance arithmetic accurate (scikit-learn does too)
    centers = kmeans_plusplus(Xc, k, seed) if init is None else np.asarray(init, np.float64) - mean
    if centers.shape != (k, X.shape[1]):
        raise InvalidValue(f"kmeans: init must have shape ({k}, {X.shape[1]}), got {centers.shape}")
    tol_abs = float(np.mean(np.var(X, axis=0)) * tol)
    x_sq = (Xc ** 2).sum(axis=1)
    labels_old = np.full(n, -1)
    strict = False
    it = 0
    for it in range(1, max_iter + 1):
        d2 = _sq_distances(Xc, centers, x_sq)
        labels = np.argmin(d2, axis=1)
        new = _update_centers(Xc, labels, d2, k)
        shift = float(((new - centers) ** 2).sum())
        centers = new
        if np.array_equal(labels, labels_old):
            strict = True
            break
        if shift <= tol_abs:
            break
        labels_old = labels
    d2 = _sq_distances(Xc, centers, x_sq)
    if not strict:  # the centres moved last: relabel so labels and centres agree
        labels = np.argmin(d2, axis=1)
    own = d2[np.arange(n), labels]
    return KMeansResult(labels.astype(np.int32), centers + mean, np.sqrt(own), float(own.sum()), it)


def _update_centers(X, labels, d2, k) -> np.ndarray:
    """Cluster means; an empty cluster takes the point farthest from its centre (as scikit-learn)."""
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, X.shape[1]))
    np.add.at(sums, labels, X)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        far = np.argsort(-d2[np.arange(len(labels)), labels], kind="stable")[:len(empty)]
        for c, i in zip(empty, far):
            sums[labels[i]] -= X[i]
            counts[labels[i]] -= 1
            sums[c], counts[c] = X[i], 1
    return sums / np.maximum(counts, 1)[:, None]


# -- information-theoretic agreement ------------------------------------------------------------
def _contingency(a, b) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise InvalidValue(f"nmi/ami: the label lists differ in length ({len(a)} vs {len(b)})")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    C = np.zeros((ia.max() + 1 if len(ia) else 0, ib.max() + 1 if len(ib) else 0))
    np.add.at(C, (ia.ravel(), ib.ravel()), 1)
    return C


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _mutual_information(C: np.ndarray) -> float:
    """MI = sum_ij n_ij/N log(N n_ij / (a_i b_j)), natural log."""
    N = C.sum()
    a, b = C.sum(axis=1), C.sum(axis=0)
    i, j = np.nonzero(C)
    nij = C[i, j]
    return float(max((nij / N * (np.log(N * nij) - np.log(a[i] * b[j]))).sum(), 0.0))


def expected_mutual_information(C: np.ndarray) -> float:
    """E[MI] under the permutation model (Vinh, Epps & Bailey 2009, eq. 24a):

    sum_ij sum_{n=max(1,a_i+b_j-N)}^{min(a_i,b_j)} n/N log(N n/(a_i b_j))
        * a_i! b_j! (N-a_i)! (N-b_j)! / (N! n! (a_i-n)! (b_j-n)! (N-a_i-b_j+n)!)
    """
    N = C.sum()
    a, b = C.sum(axis=1), C.sum(axis=0)
    total = 0.0
    lg = gammaln
    for ai in a:
        for bj in b:
            lo, hi = max(1, ai + bj - N), min(ai, bj)
            if hi < lo:
                continue
            nij = np.arange(lo, hi + 1)
            term = nij / N * (np.log(N * nij) - np.log(ai * bj))
            log_p = (lg(ai + 1) + lg(bj + 1) + lg(N - ai + 1) + lg(N - bj + 1) - lg(N + 1) - lg(nij + 1)
                     - lg(ai - nij + 1) - lg(bj - nij + 1) - lg(N - ai - bj + nij + 1))
            total += float((term * np.exp(log_p)).sum())
    return total


def _trivial(C: np.ndarray) -> bool:
    """Both labelings put everything in one cluster (or are empty): agreement is 1 by convention."""
    return C.shape[0] == C.shape[1] == 1 or C.shape[0] == C.shape[1] == 0


def nmi(labels, clusters) -> float:
    """Normalised mutual information, MI / mean(H(labels), H(clusters)) (scikit-learn's default)."""
    C = _contingency(labels, clusters)
    if _trivial(C):
        return 1.0
    mi = _mutual_information(C)
    if mi == 0:
        return 0.0
    return float(mi / ((_entropy(C.sum(axis=1)) + _entropy(C.sum(axis=0))) / 2))


def ami(labels, clusters) -> float:
    """Adjusted mutual information (Vinh et al. 2009): (MI - E[MI]) / (mean(H) - E[MI]); 0 for chance."""
    C = _contingency(labels, clusters)
    if _trivial(C):
        return 1.0
    mi = _mutual_information(C)
    emi = expected_mutual_information(C)
    denominator = (_entropy(C.sum(axis=1)) + _entropy(C.sum(axis=0))) / 2 - emi
    eps = np.finfo(np.float64).eps
    denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
    return float((mi - emi) / denominator)
