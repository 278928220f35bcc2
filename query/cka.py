"""CKA, the math: Gram matrices, centring, HSIC (biased and unbiased), CKA, and its permutation null.

Shapes: X is (n, d): n rows (prompts or tokens) aligned across the two sides, d features.
Everything is float64: float16/float32 dot products lose the digits CKA differences live in.

The fast path (what the SQL functions use) never forms a Gram per pair: for each side,
`packed_unit_gram` returns the centred Gram scaled to unit Frobenius norm (packed), and then

    CKA(X, Y) = <g_X, g_Y>                     (one dot product per layer pair)

because CKA is the cosine of the two centred Grams (Kornblith et al. 2019, eq. 4):

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),   HSIC(K, L) ∝ <HKH, HLH>_F

The CKA contract, the same on every path (the SQL functions and macros, `lake_cka` locally or on
Ray, the study's subset CKA): a side's rows are sorted by their keys (`sort_rows`, or an ORDER BY
in SQL), fingerprinted by `rows_fingerprint` (SQL: `rows_key`) and turned into one
`packed_unit_gram`; two Grams are compared only when their fingerprints agree.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from vindex.errors import CKAWarning, DegenerateInput, InvalidValue

from .arguments import check

ESTIMATORS = ("biased", "debiased")
KERNELS = ("linear", "rbf")
PREPROCESS = ("none", "l2", "clip")


# -- options ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """Parsed CKA options; `estimator`, `kernel_name` and `preprocess_name` are what results record."""
    estimator: str = "biased"
    kernel: str = "linear"
    sigma: float = 1.0          # RBF bandwidth as a fraction of the median distance
    preprocess: str = "none"
    percentile: float = 99.0    # clip each dimension to [P(100-p), P(p)]

    @property
    def kernel_name(self) -> str:
        return "linear" if self.kernel == "linear" else f"rbf:{self.sigma:g}"

    @property
    def preprocess_name(self) -> str:
        return f"clip:{self.percentile:g}" if self.preprocess == "clip" else self.preprocess


def _split(text, what: str, allowed) -> tuple[str, float | None]:
    if not isinstance(text, str):
        raise InvalidValue(f"{what} must be a string, one of {list(allowed)}; got {text!r}")
    name, _, arg = text.strip().lower().partition(":")
    if name not in allowed:
        raise InvalidValue(f"unknown {what} {text!r}; expected one of {list(allowed)}")
    if not arg:
        return name, None
    try:
        return name, float(arg)
    except ValueError:
        raise InvalidValue(f"{what} {text!r}: the part after ':' must be a number") from None


def options(estimator="biased", kernel="linear", preprocess="none") -> Options:
    """Parse 'biased'|'debiased', 'linear'|'rbf'|'rbf:0.5', 'none'|'l2'|'clip'|'clip:99.5'."""
    est, _ = _split({"unbiased": "debiased"}.get(str(estimator).lower(), estimator), "estimator", ESTIMATORS)
    ker, sigma = _split(kernel, "kernel", KERNELS)
    if ker == "linear" and sigma is not None:
        raise InvalidValue(f"kernel {kernel!r}: the linear kernel takes no bandwidth")
    if sigma is not None and not (np.isfinite(sigma) and sigma > 0):
        # inf would make every kernel value 1 (no CKA at all), 0 or NaN every value 0/0
        raise InvalidValue(f"kernel {kernel!r}: the RBF bandwidth fraction must be > 0 and finite")
    pre, pct = _split(preprocess, "preprocess", PREPROCESS)
    if pre != "clip" and pct is not None:
        raise InvalidValue(f"preprocess {preprocess!r}: only 'clip' takes a percentile")
    if pct is not None and not 50 < pct <= 100:
        raise InvalidValue(f"preprocess {preprocess!r}: the clip percentile must be in (50, 100]")
    return Options(est, ker, 1.0 if sigma is None else sigma, pre, 99.0 if pct is None else pct)


# -- inputs -------------------------------------------------------------------------------------
def as_rows(X, what: str = "X", check_finite: bool = True) -> np.ndarray:
    """X as a finite float64 (n, d) array, or a clear error. (check_finite=False leaves the NaN/inf
    test to a caller that finds them more cheaply, e.g. in the Gram's diagonal.)"""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise InvalidValue(f"{what}: expected a list of vectors (n, d), got shape {X.shape}")
    if X.shape[0] < 2:
        raise InvalidValue(f"{what}: CKA needs at least 2 rows, got {X.shape[0]}")
    if check_finite and not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        raise InvalidValue(f"{what}: row {bad[0]} holds NaN or inf (at dimension {bad[1]})")
    return X


def check_pair(X: np.ndarray, Y: np.ndarray, opts: Options) -> None:
    if X.shape[0] != Y.shape[0]:
        raise InvalidValue(f"CKA needs row-aligned inputs: the lists have {X.shape[0]} and {Y.shape[0]} rows")
    check_rows(X.shape[0], opts)


# the fewest rows each estimator means anything on
MIN_ROWS = {"biased": 3, "debiased": 4}


def check_rows(n: int, opts: Options) -> None:
    """InvalidValue unless n rows are enough for the estimator:

    biased:   n >= 3. With n = 2 every centred Gram is c [[1, -1], [-1, 1]] (H K H for any K), so
              CKA = 1 for any data: a confident number that says nothing.
    debiased: n >= 4. The unbiased HSIC divides by n(n-3) and U-centring by (n-1)(n-2).
    """
    need = MIN_ROWS[opts.estimator]
    if n < need:
        why = ("it divides by n-3" if opts.estimator == "debiased" else
               "with 2 rows every centred Gram is the same matrix, so CKA would be 1 for any data")
        raise InvalidValue(f"the {opts.estimator} estimator needs n >= {need} rows ({why}), got {n}")


def preprocess_rows(X: np.ndarray, opts: Options) -> np.ndarray:
    """Tame massive activations and rogue dimensions before comparing.

    l2:   x_i <- x_i / ||x_i||
    clip: x_ij <- clip(x_ij, P_{100-p}(x_:j), P_p(x_:j)) per dimension j, then l2
          (the outlier removal of the Platonic-representation code, Huh et al. 2024, done per
          dimension so that one rogue dimension cannot set the threshold for all)
    """
    if opts.preprocess == "none":
        return X
    if opts.preprocess == "clip":
        lo, hi = np.percentile(X, [100 - opts.percentile, opts.percentile], axis=0)
        X = np.clip(X, lo, hi)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


# -- Gram matrices ------------------------------------------------------------------------------
def gram_linear(X: np.ndarray) -> np.ndarray:
    """K = X X^T, (n, n): BLAS, not einsum (3x faster here)."""
    return X @ X.T


def gram_rbf(X: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2 median_kl ||x_k - x_l||^2)).

    The bandwidth is `sigma` times the median distance, the median taken over all n^2 entries
    (diagonal included) as in Kornblith et al. 2019's reference code.
    """
    G = X @ X.T
    sq = np.diag(G)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * G, 0.0)
    med = np.median(d2)
    if not med > 0:
        raise DegenerateInput("the RBF kernel's median distance is 0: (more than half the) rows are identical")
    K = np.exp(-d2 / (2 * sigma ** 2 * med))
    # A bandwidth so narrow or so wide that the kernel saturates leaves no information: every
    # off-diagonal value < 1e-12 makes K = I to 12 digits (CKA = 1 for any data); every one > 1 - 1e-6
    # leaves fewer than 6 digits of K's variation above float64 rounding once centred.
    off = K[~np.eye(K.shape[0], dtype=bool)]
    narrow, wide = off.max() < 1e-12, off.min() > 1 - 1e-6
    if narrow or wide:
        raise InvalidValue(f"kernel 'rbf:{sigma:g}': at this bandwidth every kernel value between two different "
                           f"rows is {'~0' if narrow else '~1'}, so the Gram carries no information about the "
                           "data; use a fraction of the median distance nearer 1")
    return K


# -- centring -----------------------------------------------------------------------------------
def centre_gram(K: np.ndarray) -> np.ndarray:
    """H K H with H = I - 11^T/n: subtract row and column means, add back the grand mean."""
    row = K.mean(axis=0)
    return K - row[:, None] - row[None, :] + row.mean()


def u_centre_gram(K: np.ndarray) -> np.ndarray:
    """U-centring (Székely & Rizzo 2014): with K's diagonal set to 0 and S_i its row sums,

        U_ij = K_ij - S_i/(n-2) - S_j/(n-2) + sum(S)/((n-1)(n-2))   (i != j),   U_ii = 0,

    so that <U(K), U(L)> / (n(n-3)) is the unbiased HSIC of Song et al. 2012 (see hsic_unbiased).
    """
    n = K.shape[0]
    K = K.copy()
    np.fill_diagonal(K, 0.0)
    S = K.sum(axis=0)
    U = K - S[:, None] / (n - 2) - S[None, :] / (n - 2) + S.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(U, 0.0)
    return U


# -- HSIC (the references the fast path is tested against) -------------------------------------
def hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC_0 = tr(K H L H) / (n-1)^2   (Gretton et al. 2005)."""
    n = K.shape[0]
    H = np.eye(n) - 1.0 / n
    return float(np.trace(K @ H @ L @ H) / (n - 1) ** 2)


def hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC_1 (Song et al. 2012, eq. 5), with K~, L~ the Grams with zeroed diagonals:

        [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))
    """
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    KL = K @ L
    return float((np.trace(KL) + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * KL.sum())
                 / (n * (n - 3)))


# -- CKA ----------------------------------------------------------------------------------------
def centred(X: np.ndarray) -> np.ndarray:
    """X - column means; a constant layer (nothing left, up to rounding) raises DegenerateInput."""
    Xc = X - X.mean(axis=0)
    if not np.linalg.norm(Xc) > 1e-12 * max(np.linalg.norm(X), 1e-300):
        raise DegenerateInput(f"all {X.shape[0]} rows are the same vector (a constant layer): CKA is undefined")
    return Xc


def _centred_gram(X, opts: Options | None = None) -> tuple[np.ndarray, float]:
    """The (n, n) centred Gram of X and the scale of its kernel values (for the 0/0 test).

    biased:   HKH                           (Kornblith et al. 2019)
    debiased: U(K)                          (unbiased HSIC, Song et al. 2012; can give CKA < 0)
    """
    opts = opts or Options()
    if opts.kernel == "linear" and opts.preprocess == "none":
        # the hot path of cka_matrix: two passes over X (float32 as stored is fine) and one GEMM
        X = np.asarray(X)
        if X.dtype not in (np.float32, np.float64) or X.ndim != 2 or X.shape[0] < 2:
            X = as_rows(X, check_finite=False)  # converts to float64, or raises the shape error
        check_rows(X.shape[0], opts)
        mean = X.mean(axis=0, dtype=np.float64)
        # centring in float64 (X - mean promotes float32 to float64 in the same pass) is exact for the
        # linear kernel and keeps the GEMM well conditioned
        K = gram_linear(X - mean)
        trace = float(np.trace(K))  # = ||X - mean||^2; NaN/inf anywhere in X reach it
        if not np.isfinite(trace):
            as_rows(X)  # raises, naming the row
        if not trace > 1e-24 * (trace + X.shape[0] * float(mean @ mean)):  # ||X||^2 = trace + n ||mean||^2
            raise DegenerateInput(f"all {X.shape[0]} rows are the same vector (a constant layer): CKA is undefined")
        # X - mean has zero column means, so K is already HKH: the biased path is one GEMM
        G = u_centre_gram(K) if opts.estimator == "debiased" else K
        return G, float(np.diag(K).max())
    X = preprocess_rows(as_rows(X), opts)
    check_rows(X.shape[0], opts)
    if opts.kernel == "linear":
        K = gram_linear(centred(X))
        G = u_centre_gram(K) if opts.estimator == "debiased" else K
    else:
        K = gram_rbf(X, opts.sigma)
        G = u_centre_gram(K) if opts.estimator == "debiased" else centre_gram(K)
    return G, float(np.diag(K).max())  # K is PSD: its largest entry is on the diagonal


def _unit(v: np.ndarray, scale: float) -> np.ndarray:
    norm = np.linalg.norm(v)
    if not norm > 1e-12 * max(scale, 1e-300):
        raise DegenerateInput("the centred Gram is 0 (a constant layer): CKA is undefined")
    v /= norm
    return v


def packed_unit_gram(X, opts: Options | None = None) -> np.ndarray:
    """THE Gram of a side: its (n, n) centred Gram scaled to unit Frobenius norm, packed
    (pack_symmetric), so CKA(X, Y) = p_X . p_Y. Raises DegenerateInput for a constant layer (the
    Gram is 0 after centring)."""
    # Packed, not (n, n): SQL stores one Gram per layer as DOUBLE[] and pairs them with DuckDB's
    # list_dot_product, and n(n+1)/2 numbers are half the bytes to store, move and multiply per pair.
    G, scale = _centred_gram(X, opts)
    return _unit(pack_symmetric(G), scale)


# -- which rows: the fingerprint two sides must share -------------------------------------------
def rows_fingerprint(fields) -> int:
    """A signed 64-bit fingerprint (BLAKE2b, 8 bytes) of row keys in the given order: which rows, in
    which order. `fields`: the key columns (e.g. [prompt_set, prompt_id]), each a 1-d array.
    Integer keys are hashed as int64 (an int32 and an int64 prompt_id agree), strings as text."""
    digest = hashlib.blake2b(digest_size=8)
    for f in fields:
        f = np.asarray(f)
        if f.dtype.kind in "iub":
            data = np.ascontiguousarray(f, dtype=np.int64).tobytes()
        elif f.dtype.kind == "f":
            data = np.ascontiguousarray(f, dtype=np.float64).tobytes()
        else:
            data = "\x1f".join(map(str, f)).encode()
        digest.update(data)
        digest.update(b"\x1e")
    return int.from_bytes(digest.digest(), "little", signed=True)


def sort_rows(fields) -> tuple[np.ndarray, int, int]:
    """For unordered rows with key columns `fields` (first field the primary key): the order that
    sorts them, the `rows_fingerprint` of the sorted keys and how many keys are distinct."""
    fields = [np.asarray(f) for f in fields]
    codes = [np.unique(f, return_inverse=True)[1].ravel() for f in fields]  # strings -> sortable ints
    order = np.lexsort(codes[::-1]) if codes else np.zeros(0, np.int64)
    n = len(order)
    if n:
        same = np.ones(n - 1, bool)
        for c in codes:
            sc = c[order]
            same &= sc[1:] == sc[:-1]
        n_distinct = int(n - same.sum())
    else:
        n_distinct = 0
    return order, rows_fingerprint([f[order] for f in fields]), n_distinct


def cka(X, Y, estimator="biased", kernel="linear", preprocess="none") -> float:
    """CKA between row-aligned X (n, d_x) and Y (n, d_y). Invariant to orthogonal transforms and
    isotropic scaling of either side; 1 for identical representations."""
    opts = options(estimator, kernel, preprocess)
    X, Y = as_rows(X, "X"), as_rows(Y, "Y")
    check_pair(X, Y, opts)
    if opts.kernel == "linear" and X.shape[0] > 2 * (X.shape[1] + Y.shape[1]):
        return feature_space_cka(preprocess_rows(X, opts), preprocess_rows(Y, opts), opts.estimator)
    return float(np.dot(packed_unit_gram(X, opts), packed_unit_gram(Y, opts)))


def feature_space_cka(X: np.ndarray, Y: np.ndarray, estimator: str = "biased") -> float:
    """Linear CKA without n x n Grams, for n >> d (token rows): cost n d_x d_y, not n^2 d.

    biased:   ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)   (Kornblith et al. 2019, eq. 5)
    debiased: the same with each <.,.> replaced by the unbiased HSIC written in features
              (Kornblith et al.'s `_debiased_dot_product_similarity_helper`):
              ||Y^T X||^2 - n/(n-2) <r_X, r_Y> + ||X||^2 ||Y||^2 / ((n-1)(n-2)),  r = squared row norms
    """
    Xc, Yc = centred(X), centred(Y)

    def dot(A, B):
        return np.linalg.norm(A.T @ B) ** 2

    if estimator == "biased":
        xx, yy = np.linalg.norm(Xc.T @ Xc), np.linalg.norm(Yc.T @ Yc)
        if not (xx > 0 and yy > 0):
            raise DegenerateInput("a side has zero variance (a constant layer): CKA is undefined")
        return float(dot(Xc, Yc) / (xx * yy))
    n = X.shape[0]
    rx, ry = (Xc ** 2).sum(axis=1), (Yc ** 2).sum(axis=1)

    def unbiased(ab, ra, rb):
        return ab - n / (n - 2) * ra.dot(rb) + ra.sum() * rb.sum() / ((n - 1) * (n - 2))

    xx, yy = unbiased(dot(Xc, Xc), rx, rx), unbiased(dot(Yc, Yc), ry, ry)
    if not (xx > 0 and yy > 0):
        raise DegenerateInput("a side has zero variance (a constant layer): CKA is undefined")
    return float(unbiased(dot(Xc, Yc), rx, ry) / np.sqrt(xx * yy))


# -- minibatch CKA ------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def packed_order(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each packed entry: the diagonal, then the upper triangle row by row."""
    iu, ju = np.triu_indices(n, 1)
    d = np.arange(n)
    rows, cols = np.concatenate([d, iu]), np.concatenate([d, ju])
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


@lru_cache(maxsize=16)
def _packed_flat_index(n: int) -> np.ndarray:
    rows, cols = packed_order(n)
    flat = rows * n + cols
    flat.flags.writeable = False
    return flat


def pack_symmetric(G: np.ndarray) -> np.ndarray:
    """[diag(G), sqrt(2) G_ij for i < j]: n(n+1)/2 numbers with <pack(A), pack(B)> = <A, B>_F for
    symmetric A, B. Half the bytes of the full Gram to move and multiply for every layer pair."""
    n = G.shape[0]
    p = np.take(np.ascontiguousarray(G).reshape(-1), _packed_flat_index(n))
    p[n:] *= np.sqrt(2.0)
    return p


def packed_size(m: int) -> int:
    """n for a packed vector of m = n(n+1)/2 numbers."""
    n = int(round((np.sqrt(8 * m + 1) - 1) / 2))
    if n * (n + 1) // 2 != m:
        raise InvalidValue(f"a packed Gram holds n(n+1)/2 numbers; {m} is not of that form")
    return n


def minibatch_unit_gram(X, batch_size: int, seed: int = 0, opts: Options | None = None) -> np.ndarray:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021) as one unit vector per side:

        CKA_mb = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) sum_b HSIC_1(L_b, L_b))

    over random batches b of the n rows (a permutation drawn from `seed`, so two sides with the same
    n and seed get the same batches; rows left over after the last full batch are dropped). Each
    batch contributes pack(U(K_b))/sqrt(b(b-3)) and the concatenation is normalised, so
    CKA_mb = <g_X, g_Y>.
    Random batches matter: topic-sorted rows would give each batch its own mean.
    """
    opts = opts or Options(estimator="debiased")
    batch_size, seed = check("minibatch_cka", "batch_size", batch_size), check("minibatch_cka", "seed", seed)
    X = preprocess_rows(as_rows(X), opts)
    if opts.kernel == "linear":
        X = centred(X)  # HSIC_1 ignores a shift of X; removing the mean once keeps each batch's GEMM exact
    n = X.shape[0]
    b = min(batch_size, n)
    if b < 4:
        raise InvalidValue(f"minibatch CKA needs batches of >= 4 rows (unbiased HSIC), got batch_size={batch_size}, n={n}")
    order = np.random.default_rng(seed).permutation(n)
    parts = []
    for start in range(0, n - b + 1, b):
        Xb = X[order[start:start + b]]
        K = gram_linear(Xb) if opts.kernel == "linear" else gram_rbf(Xb, opts.sigma)
        parts.append(pack_symmetric(u_centre_gram(K) / np.sqrt(b * (b - 3))))
    g = np.concatenate(parts)
    norm = np.linalg.norm(g)
    if not norm > 0:
        raise DegenerateInput("every batch has zero variance (a constant layer): CKA is undefined")
    return g / norm


def minibatch_cka(X, Y, batch_size: int = 256, seed: int = 0, kernel="linear", preprocess="none") -> float:
    opts = options("debiased", kernel, preprocess)
    X, Y = as_rows(X, "X"), as_rows(Y, "Y")
    check_pair(X, Y, opts)
    return float(np.dot(minibatch_unit_gram(X, batch_size, seed, opts), minibatch_unit_gram(Y, batch_size, seed, opts)))


# -- the permutation null -----------------------------------------------------------------------
def permutations(n: int, count: int, seed: int = 0) -> np.ndarray:
    """(count, n) row permutations, the same for every pair that shares n and seed."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(count)]) if count else np.empty((0, n), np.int64)


@lru_cache(maxsize=8)
def permutation_gather(n: int, count: int, seed: int = 0, inverse: bool = False) -> np.ndarray:
    """(count, m) index into a packed Gram giving the packed Gram of the row-permuted data.

    Permuting the rows by p permutes both axes of the centred Gram (centring commutes with
    permutation): G[p][:, p]. Packed, entry (i, j) of the result is entry (p_i, p_j) of G; diagonal
    stays diagonal, so the sqrt(2) weights still match. `inverse` uses p^-1 (to permute the other side:
    <G_X, G_Y[p][:, p]> = <G_X[q][:, q], G_Y> with q = p^-1). Cached: every layer pair shares it.
    """
    perms = permutations(n, count, seed)
    if inverse:
        perms = np.argsort(perms, axis=1)
    rows, cols = packed_order(n)
    where = np.empty((n, n), np.int32)
    where[rows, cols] = where[cols, rows] = np.arange(len(rows), dtype=np.int32)
    gather = where.ravel()[perms[:, rows] * n + perms[:, cols]]
    gather.flags.writeable = False
    return gather


def null_scores(PX: np.ndarray, PY: np.ndarray, gather: np.ndarray) -> np.ndarray:
    """CKA under shuffled prompt rows of Y, from stored packed unit Grams, no Gram recomputed:
    CKA(X, Y[p]) = <G_X, G_Y[p][:, p]> = PX . PY[gather_p].
    PX: (a, m), PY: (b, m), gather: (count, m) from permutation_gather -> (a, b, count)."""
    out = np.empty((PX.shape[0], PY.shape[0], gather.shape[0]))
    for b in range(PY.shape[0]):  # one GEMM per Y Gram: (a, m) x (m, count)
        out[:, b, :] = PX @ PY[b][gather].T
    return out


def null_summary(observed, null: np.ndarray) -> dict:
    """null_mean, null_p95 and p_value = (1 + #{null >= observed}) / (1 + N) (never 0: Phipson & Smyth 2010)."""
    observed = np.asarray(observed, dtype=np.float64)
    count = null.shape[-1]
    return {"null_mean": null.mean(axis=-1), "null_p95": np.percentile(null, 95, axis=-1),
            "p_value": (1 + (null >= observed[..., None] - 1e-12).sum(axis=-1)) / (1 + count)}


def permutation_test(X, Y, permutations_count: int = 99, seed: int = 0, estimator="biased", kernel="linear",
                     preprocess="none") -> dict:
    """CKA of X and Y with its permutation null: cka, null_mean, null_p95, p_value."""
    permutations_count = check("permutation_test", "permutations", permutations_count)
    seed = check("permutation_test", "seed", seed)
    opts = options(estimator, kernel, preprocess)
    X, Y = as_rows(X, "X"), as_rows(Y, "Y")
    check_pair(X, Y, opts)
    gx, gy = packed_unit_gram(X, opts), packed_unit_gram(Y, opts)
    obs = float(np.dot(gx, gy))
    null = null_scores(gx[None], gy[None], permutation_gather(X.shape[0], permutations_count, seed))[0, 0]
    return {"cka": obs, **{k: float(v) for k, v in null_summary(obs, null).items()}}


def warn_undefined(where: str, err: Exception) -> None:
    warnings.warn(f"{where}: {err}; returning NULL", CKAWarning, stacklevel=3)
