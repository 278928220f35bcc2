"""Measures beyond CKA, the math: Procrustes distance and the angular shape metric, SVCCA, PWCCA, RSA
and CKNNA, each with the permutation null of `cka.py` (one side's rows shuffled).

Shapes: X is (n, d_x), Y is (n, d_y), rows aligned (the same prompts in the same order). Every measure
is computed in two steps, so that the SQL table functions build one summary per layer and pair
layers cheaply, and the scalar functions give the same numbers through the same code:

    s_X = layer_summary(X, opts)          one flat float64 array per layer (a header, then the body)
    value = pair_value(s_X, s_Y, n, opts)

Permuting the rows of Y permutes the rows of each summary (centring, the SVD and the RDM are all
row-equivariant), so the null reshuffles summaries, never data:

    null_p = pair_value(s_X, s_Y[p], ...)           p = cka.permutations(n, count, seed)

The measures (X_c: X with its column means removed):

procrustes    min over orthogonal Q of ||X~ - Y~ Q||_F with X~ = X_c / ||X_c||_F (Y~ zero-padded to the
              wider width) = sqrt(2 - 2 ||X~^T Y~||_*)   (Schönemann 1966; Ding et al. 2021;
              Williams et al. 2021, "Generalized shape metrics on neural representations").
              A distance in [0, sqrt 2]: 0 for the same shape.
shape_metric  the angular shape metric theta = arccos ||X~^T Y~||_*   (Williams et al. 2021, eq. 3 with
              alpha = 1: rotation-invariant, no whitening). In [0, pi/2]; a metric on shapes.
svcca         SVCCA (Raghu et al. 2017): keep the top r_X singular directions of X_c (the fewest that
              explain `variance` of its variance, or `dims`), the same for Y, then the canonical
              correlations rho_i = singular values of Q_X^T Q_Y (Q: orthonormal bases of the kept
              directions); SVCCA = mean_i rho_i over min(r_X, r_Y) correlations.
pwcca         PWCCA (Morcos, Raghu & Bengio 2018) on the same kept directions: with h_i the unit
              canonical variates of X, alpha_i = sum_j |<h_i, x_j>| over X's neurons x_j (columns of
              X_c), normalised to sum 1, PWCCA_X = sum_i alpha_i rho_i; reported symmetrically as
              (PWCCA_X + PWCCA_Y) / 2, as repsim does (Morcos et al.'s code weights by the narrower side).
rsa           RSA (Kriegeskorte, Mur & Bandettini 2008): RDM_ij = 1 - Pearson r(x_i, x_j) for rows
              i < j; RSA = Spearman rho(RDM_X, RDM_Y) = the Pearson correlation of their ranks.
cknna         CKNNA (Huh, Cheung, Wang & Isola 2024, "The Platonic Representation Hypothesis"), as in
              the authors' code: K = X^ X^^T with unit rows (cosine kernel), M_ij = 1 when j is among
              the k nearest rows of i in both X and Y (i != j), and
                  CKNNA = HSIC_1(M . K, M . L) / sqrt(HSIC_1(M_X . K, M_X . K) HSIC_1(M_Y . L, M_Y . L))
              with HSIC_1 the unbiased HSIC (Song et al. 2012) in the authors' form (see hsic_1).

CCA needs more rows than kept directions: with r_X + r_Y > n - 1 (centred data span n - 1
dimensions) at least r_X + r_Y - (n - 1) canonical correlations are 1 whatever the data. So when
d >= n the kept directions are capped at (n - 1) // 2 per side and the result says so (`dims_a`,
`dims_b` and `note`; a MeasureWarning from the scalar functions); an explicit `dims` above the
cap is an error. Even under the cap CCA overfits when r / n is large: read SVCCA and PWCCA against
their null, which is computed over the same kept directions.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from vindex.errors import DegenerateInput, InvalidValue, MeasureWarning

from .arguments import check
from .cka import as_rows, centred, null_summary, permutations
from .knn import knn_indices

MEASURES = ("procrustes", "shape_metric", "svcca", "pwcca", "rsa", "cknna")
# the distances: smaller means more alike, so their p-value counts null values at or below the observed one
DISTANCES = ("procrustes", "shape_metric")
HEADER = 3  # every summary starts [r, r_wanted, d]: kept directions, directions asked for, width


@dataclass(frozen=True)
class Options:
    """A measure and its options (each used only by the measures named)."""
    measure: str = "pwcca"
    k: int = 10                  # cknna: neighbours per row
    dims: int | None = None      # svcca, pwcca: directions kept per side (None: by `variance`)
    variance: float = 0.99       # svcca, pwcca: fraction of each side's variance the kept directions explain


def options(measure="pwcca", k=10, dims=None, variance=0.99, fn: str = "measure") -> Options:
    """Parse and check a measure's options; InvalidValue names the argument."""
    if not isinstance(measure, str) or measure.strip().lower() not in MEASURES:
        raise InvalidValue(f"{fn}: unknown measure {measure!r}; expected one of {list(MEASURES)}")
    return Options(measure.strip().lower(), check(fn, "k", k), None if dims is None else check(fn, "dims", dims),
                   check(fn, "variance", variance))


# -- per layer ----------------------------------------------------------------------------------
def layer_summary(X, opts: Options, what: str = "X") -> np.ndarray:
    """The flat summary of one side: [r, r_wanted, d] then the measure's body (see each builder)."""
    X = as_rows(X, what)
    n, d = X.shape
    if n < 4:
        raise InvalidValue(f"{what}: {opts.measure} needs at least 4 rows, got {n}")
    if opts.measure == "rsa":
        return _pack(0, 0, d, rdm_ranks(X))
    if opts.measure == "cknna":
        if not 2 <= opts.k <= n - 2:
            raise InvalidValue(f"cknna: k must be between 2 and n-2 = {n - 2} (the unbiased HSIC of the "
                               f"neighbour kernels needs k >= 2; with k = n-1 every row's neighbours are all the "
                               f"others), got {opts.k}")
        return _pack(0, 0, d, cosine_kernel(X).ravel())
    U, s, Vt = principal_axes(X)
    if opts.measure in DISTANCES:
        # T = U S / ||S||: X~ = T V^T, so ||X~^T Y~||_* = ||T_X^T T_Y||_* (V orthonormal)
        return _pack(len(s), len(s), d, (U * (s / np.linalg.norm(s))).ravel())
    r, wanted = kept_directions(s, n, opts)
    body = [U[:, :r].ravel()]
    if opts.measure == "pwcca":
        body.append((s[:r, None] * Vt[:r]).ravel())   # P = Q^T X_c = S_r V_r^T, (r, d): the neurons' coordinates
    return _pack(r, wanted, d, *body)


def _pack(r, wanted, d, *body) -> np.ndarray:
    return np.concatenate([[float(r), float(wanted), float(d)], *body])


def principal_axes(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD of X_c = U S V^T keeping the directions with nonzero variance (s_i > s_0 max(n, d) eps)."""
    U, s, Vt = np.linalg.svd(centred(X), full_matrices=False)
    rank = int((s > s[0] * max(X.shape) * np.finfo(float).eps).sum())
    return U[:, :rank], s[:rank], Vt[:rank]


def kept_directions(s: np.ndarray, n: int, opts: Options) -> tuple[int, int]:
    """(r, r_wanted): the SVD directions SVCCA/PWCCA keep, and how many were asked for before the cap.

    r_wanted = `dims` (at most the rank), or the fewest directions whose s_i^2 sum to `variance` of the
    total (Raghu et al. 2017 keep 99%). Capped at (n - 1) // 2 so that r_X + r_Y <= n - 1 (see module
    docstring): an explicit `dims` above the cap is an error, a variance-chosen r is capped and said.
    """
    cap = (n - 1) // 2
    if opts.dims is not None:
        if opts.dims > cap:
            raise InvalidValue(f"{opts.measure}: dims = {opts.dims} needs n > 2 dims = {2 * opts.dims} rows, got n = "
                               f"{n}: with r_a + r_b > n - 1, canonical correlations are 1 whatever the data; "
                               f"use dims <= {cap}")
        wanted = min(opts.dims, len(s))
    else:
        share = np.cumsum(s ** 2) / np.sum(s ** 2)
        wanted = int(np.searchsorted(share, opts.variance - 1e-12) + 1)
    return min(wanted, cap), wanted


def unpack(summary: np.ndarray, n: int) -> tuple[int, int, int, np.ndarray]:
    r, wanted, d = (int(v) for v in summary[:HEADER])
    return r, wanted, d, summary[HEADER:]


def rdm_ranks(X: np.ndarray) -> np.ndarray:
    """The RDM's strict upper triangle (1 - Pearson r between rows, row pairs i < j in packed order),
    as ranks (ties averaged), centred and scaled to unit norm: Spearman rho = their dot product."""
    from scipy.stats import rankdata

    Z = X - X.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(Z, axis=1)
    if not (norms > 1e-12 * max(float(np.abs(X).max()), 1e-300)).all():
        row = int(np.argmin(norms))
        raise DegenerateInput(f"rsa: row {row} is constant across features: its correlation distance is undefined")
    Z /= norms[:, None]
    iu, ju = np.triu_indices(X.shape[0], 1)
    # rounded to 12 decimals: distances equal but for float rounding (repeated rows) rank as ties
    rdm = np.round(1.0 - (Z @ Z.T)[iu, ju], 12)
    ranks = rankdata(rdm)
    ranks -= ranks.mean()
    norm = np.linalg.norm(ranks)
    if not norm > 0:
        raise DegenerateInput("rsa: every distance in the RDM is the same: its ranks carry nothing")
    return ranks / norm


def cosine_kernel(X: np.ndarray) -> np.ndarray:
    """K = X^ X^^T with X^ the rows scaled to unit length (the kernel of Huh et al.'s code)."""
    centred(X)  # a constant layer: DegenerateInput
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    Xn = X / np.where(norms > 0, norms, 1.0)
    return Xn @ Xn.T


# -- per pair -----------------------------------------------------------------------------------
def pair_value(sa: np.ndarray, sb: np.ndarray, n: int, opts: Options, perm: np.ndarray | None = None) -> float:
    """The measure of two summaries over n rows; `perm`: rows of the second side permuted (the null)."""
    ra, _, da, a = unpack(sa, n)
    rb, _, db, b = unpack(sb, n)
    m = opts.measure
    if m == "rsa":
        return float(a @ (b if perm is None else b[strict_gather(n, perm)]))
    if m == "cknna":
        K, L = a.reshape(n, n), b.reshape(n, n)
        if perm is not None:
            L = L[np.ix_(perm, perm)]
        return cknna_kernels(K, L, opts.k)
    Qa, Qb = a[:n * ra].reshape(n, ra), b[:n * rb].reshape(n, rb)
    if perm is not None:
        Qb = Qb[perm]
    C = Qa.T @ Qb
    if m in DISTANCES:
        nuclear = float(np.linalg.svd(C, compute_uv=False).sum())  # ||X~^T Y~||_*, <= 1 (Cauchy-Schwarz)
        return float(np.sqrt(max(2.0 - 2.0 * nuclear, 0.0))) if m == "procrustes" else float(np.arccos(min(nuclear, 1.0)))
    if m == "svcca":
        return float(np.clip(np.linalg.svd(C, compute_uv=False), 0, 1).mean())
    A, rho, Bt = np.linalg.svd(C, full_matrices=False)   # C = A diag(rho) B^T; variates h = Q_a A, g = Q_b B
    rho = np.clip(rho, 0, 1)
    Pa, Pb = a[n * ra:].reshape(ra, da), b[n * rb:].reshape(rb, db)
    return float((_weighted(A.T @ Pa, rho) + _weighted(Bt @ Pb, rho)) / 2)


def _weighted(H_on_neurons: np.ndarray, rho: np.ndarray) -> float:
    """sum_i alpha_i rho_i with alpha_i = sum_j |<h_i, x_j>| / sum_ij |<h_i, x_j>| (Morcos et al. 2018)."""
    alpha = np.abs(H_on_neurons).sum(axis=1)
    return float(alpha @ rho / alpha.sum())


def hsic_1(K: np.ndarray, L: np.ndarray) -> float:
    """The unbiased HSIC (Song et al. 2012) as Huh et al.'s code writes it (K, L need not be symmetric):

        [sum(K~ . L~^T) + sum(K~) sum(L~) / ((n-1)(n-2)) - 2 sum(K~ L~) / (n-2)] / (n(n-3))

    with K~, L~ the matrices with zeroed diagonals; sum(K~ L~) = (1^T K~) . (L~ 1)."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    return float(((K * L.T).sum() + K.sum() * L.sum() / ((n - 1) * (n - 2))
                  - 2 * K.sum(axis=0) @ L.sum(axis=1) / (n - 2)) / (n * (n - 3)))


def neighbour_mask(K: np.ndarray, k: int) -> np.ndarray:
    """(n, n) 0/1: M_ij = 1 when j is among the k largest K_ij of row i, j != i (ties: lower index)."""
    S = K.copy()
    np.fill_diagonal(S, -np.inf)
    idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
    M = np.zeros_like(K)
    np.put_along_axis(M, idx, 1.0, axis=1)
    return M


def cknna_kernels(K: np.ndarray, L: np.ndarray, k: int) -> float:
    """CKNNA of two kernels (see the module docstring)."""
    Mk, Ml = neighbour_mask(K, k), neighbour_mask(L, k)
    M = Mk * Ml
    kk, ll = hsic_1(Mk * K, Mk * K), hsic_1(Ml * L, Ml * L)
    if not (kk > 0 and ll > 0):
        raise DegenerateInput("cknna: a side's neighbour kernel has no positive HSIC with itself: CKNNA is undefined")
    return hsic_1(M * K, M * L) / np.sqrt(kk * ll)


def cknna_test(K: np.ndarray, L: np.ndarray, k: int, perms: np.ndarray) -> tuple[float, np.ndarray]:
    """CKNNA and its null without a neighbour search per permutation: shuffling L's rows by p turns its
    kernel into L[p][:, p] and its neighbour mask into M_L[p][:, p]; the denominator does not change."""
    Mk, Ml = neighbour_mask(K, k), neighbour_mask(L, k)
    kk, ll = hsic_1(Mk * K, Mk * K), hsic_1(Ml * L, Ml * L)
    if not (kk > 0 and ll > 0):
        raise DegenerateInput("cknna: a side's neighbour kernel has no positive HSIC with itself: CKNNA is undefined")
    scale = np.sqrt(kk * ll)
    MK = Mk * K

    def align(p):
        M = Ml if p is None else Ml[np.ix_(p, p)]
        Lp = L if p is None else L[np.ix_(p, p)]
        return hsic_1(MK * M, M * Mk * Lp) / scale

    return align(None), np.array([align(p) for p in perms])


@lru_cache(maxsize=4)
def _strict_position(n: int) -> np.ndarray:
    """(n, n): the packed index of entry (i, j), i != j, in the strict upper triangle (triu_indices order)."""
    iu, ju = np.triu_indices(n, 1)
    where = np.zeros((n, n), np.int64)
    where[iu, ju] = where[ju, iu] = np.arange(len(iu))
    where.flags.writeable = False
    return where


def strict_gather(n: int, perm: np.ndarray) -> np.ndarray:
    """Index into a packed strict upper triangle giving that of the matrix with rows and columns permuted."""
    iu, ju = np.triu_indices(n, 1)
    return _strict_position(n)[perm[iu], perm[ju]]


def truncation(sa: np.ndarray, sb: np.ndarray, n: int, opts: Options) -> tuple[int | None, int | None, str | None]:
    """(dims_a, dims_b, note): the directions SVCCA/PWCCA kept (None for other measures) and a note when
    the cap (n - 1) // 2 cut them below what `variance` or `dims` asked for."""
    if opts.measure not in ("svcca", "pwcca"):
        return None, None, None
    (ra, wa, *_), (rb, wb, *_) = unpack(sa, n), unpack(sb, n)
    cut = [f"{side} {w} -> {r}" for side, r, w in (("a", ra, wa), ("b", rb, wb)) if r < w]
    note = (f"{opts.measure}: kept directions capped at (n-1)//2 = {(n - 1) // 2} for n = {n} rows "
            f"({', '.join(cut)}), so that r_a + r_b <= n - 1; read the value against its null") if cut else None
    return ra, rb, note


# -- the whole measure, with its null -----------------------------------------------------------
@dataclass
class Result:
    value: float
    null: np.ndarray              # (permutations,) values with one side's rows shuffled
    dims_a: int | None = None
    dims_b: int | None = None
    note: str | None = None

    def summary(self) -> dict:
        """value, null_mean, null_p05, null_p95 and p_value = (1 + #{null as alike or more}) / (1 + N)
        (Phipson & Smyth 2010); None without a null."""
        out = {"value": float(self.value), "null_mean": None, "null_p05": None, "null_p95": None, "p_value": None}
        if len(self.null):
            flip = -1.0 if self.measure in DISTANCES else 1.0
            s = null_summary(flip * self.value, flip * self.null)
            out.update(null_mean=float(self.null.mean()), null_p05=float(np.percentile(self.null, 5)),
                       null_p95=float(np.percentile(self.null, 95)), p_value=float(s["p_value"]))
        return out

    measure: str = "pwcca"


def pair_test(sa: np.ndarray, sb: np.ndarray, n: int, opts: Options, count: int = 0, seed: int = 0) -> Result:
    """The measure of two summaries and its permutation null (`count` shuffles of the second side's rows,
    the permutations of `cka.permutations(n, count, seed)`, as the CKA null uses)."""
    perms = permutations(n, count, seed)
    if opts.measure == "cknna":
        value, null = cknna_test(unpack(sa, n)[3].reshape(n, n), unpack(sb, n)[3].reshape(n, n), opts.k, perms)
    else:
        value = pair_value(sa, sb, n, opts)
        null = np.array([pair_value(sa, sb, n, opts, p) for p in perms])
    dims_a, dims_b, note = truncation(sa, sb, n, opts)
    return Result(value, null, dims_a, dims_b, note, opts.measure)


def measure_test(X, Y, measure="pwcca", permutations_count: int = 99, seed: int = 0, k=10, dims=None,
                 variance=0.99) -> dict:
    """The measure of row-aligned X (n, d_x) and Y (n, d_y) with its permutation null: value, null_mean,
    null_p05, null_p95, p_value, dims_a, dims_b, note. A capped SVCCA/PWCCA truncation warns (MeasureWarning)."""
    opts = options(measure, k, dims, variance, "measure_test")
    count, seed = check("measure_test", "permutations", permutations_count), check("measure_test", "seed", seed)
    sa, sb, n = summaries(X, Y, opts)
    res = pair_test(sa, sb, n, opts, count, seed)
    if res.note:
        warnings.warn(res.note, MeasureWarning, stacklevel=2)
    return {**res.summary(), "dims_a": res.dims_a, "dims_b": res.dims_b, "note": res.note}


def summaries(X, Y, opts: Options) -> tuple[np.ndarray, np.ndarray, int]:
    X, Y = as_rows(X, "X"), as_rows(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise InvalidValue(f"{opts.measure} needs row-aligned inputs: the lists have {X.shape[0]} and {Y.shape[0]} rows")
    return layer_summary(X, opts, "X"), layer_summary(Y, opts, "Y"), X.shape[0]


def measure(X, Y, measure="pwcca", k=10, dims=None, variance=0.99) -> float:
    """One measure of row-aligned X and Y (the scalar SQL functions)."""
    opts = options(measure, k, dims, variance, measure if isinstance(measure, str) else "measure")
    sa, sb, n = summaries(X, Y, opts)
    _, _, note = truncation(sa, sb, n, opts)
    if note:
        warnings.warn(note, MeasureWarning, stacklevel=2)
    return pair_value(sa, sb, n, opts)


def procrustes(X, Y) -> float:
    return measure(X, Y, "procrustes")


def shape_metric(X, Y) -> float:
    return measure(X, Y, "shape_metric")


def svcca(X, Y, dims=None, variance=0.99) -> float:
    return measure(X, Y, "svcca", dims=dims, variance=variance)


def pwcca(X, Y, dims=None, variance=0.99) -> float:
    return measure(X, Y, "pwcca", dims=dims, variance=variance)


def rsa(X, Y) -> float:
    return measure(X, Y, "rsa")


def cknna(X, Y, k=10) -> float:
    return measure(X, Y, "cknna", k=k)
