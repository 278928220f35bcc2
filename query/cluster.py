"""k-means (k-means++ seeding, Lloyd iterations) and NMI / AMI: scikit-learn's, behind the checks
and the result shape the SQL functions (`kmeans`, `kmeans_labels`, `nmi`, `ami`) need.

scikit-learn is imported inside the functions: `import vindex.query` stays light (it loads in
about a second, and only k-means and the label scores need it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vindex.errors import InvalidValue


@dataclass
class KMeansResult:
    labels: np.ndarray      # (n,) cluster of each row
    centers: np.ndarray     # (k, d)
    distances: np.ndarray   # (n,) Euclidean distance of each row to its centre
    inertia: float          # sum of squared distances
    iterations: int


def kmeans_plusplus(X, k: int, seed: int = 0) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; each new centre is the best of
    2 + log(k) candidates drawn with probability ∝ D(x)^2): scikit-learn's, (k, d) centres."""
    from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus
    centers, _ = sk_kmeans_plusplus(np.asarray(X, dtype=np.float64), int(k), random_state=int(seed))
    return centers


def kmeans(X, k: int, seed: int = 0, max_iter: int = 300, tol: float = 1e-4, init=None) -> KMeansResult:
    """Lloyd's k-means (scikit-learn's KMeans, one run) from k-means++ seeded by `seed`, or from
    the `init` centres. It stops when the labels stop changing or the squared centre shift is
    <= tol x the mean per-dimension variance; the same seed gives the same clusters."""
    from sklearn.cluster import KMeans

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
    if init is not None:
        init = np.asarray(init, dtype=np.float64)
        if init.shape != (k, X.shape[1]):
            raise InvalidValue(f"kmeans: init must have shape ({k}, {X.shape[1]}), got {init.shape}")
    fit = KMeans(int(k), init="k-means++" if init is None else init, n_init=1, max_iter=int(max_iter), tol=tol,
                 random_state=int(seed), algorithm="lloyd").fit(X)
    labels = fit.labels_.astype(np.int32)
    centers = fit.cluster_centers_
    sq = ((X - centers[labels]) ** 2).sum(axis=1)   # direct, not ||x||^2 - 2x.c + ||c||^2: exact to rounding
    return KMeansResult(labels, centers, np.sqrt(sq), float(sq.sum()), int(fit.n_iter_))


# -- information-theoretic agreement ------------------------------------------------------------
def _codes(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Both labelings as integer codes (any scalar labels: strings, ints, booleans, floats), after
    checking they label the same items. Codes keep scikit-learn's label checks cheap and never let
    it read float labels as continuous values."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise InvalidValue(f"nmi/ami: the label lists differ in length ({len(a)} vs {len(b)})")
    return (np.unique(a, return_inverse=True)[1].ravel().astype(np.int64),
            np.unique(b, return_inverse=True)[1].ravel().astype(np.int64))


def nmi(labels, clusters) -> float:
    """Normalised mutual information, MI / mean(H(labels), H(clusters)) (scikit-learn's
    `normalized_mutual_info_score`, arithmetic mean); 1 when both put everything in one cluster."""
    from sklearn.metrics import normalized_mutual_info_score
    return float(normalized_mutual_info_score(*_codes(labels, clusters)))


def ami(labels, clusters) -> float:
    """Adjusted mutual information (Vinh, Epps & Bailey 2009): (MI - E[MI]) / (mean(H) - E[MI]),
    0 for chance (scikit-learn's `adjusted_mutual_info_score`)."""
    from sklearn.metrics import adjusted_mutual_info_score
    return float(adjusted_mutual_info_score(*_codes(labels, clusters)))
