"""Rosetta maps, the math: a linear map from one model's layer to another's, fitted on prompt rows,
scored on held-out prompts, and compared with the same fit on shuffled rows (its null).
(`vindex.query.rosetta` is the table function over these; this module is named for what it holds.)

Shapes: X (n, d_a) and Y (n, d_b) are row-aligned (prompt i is row i on both sides); float64.
A map is affine, y = x W + b, W (d_a, d_b), b (d_b); every method fits it on centred rows
(b = mean(Y) - mean(X) W, the intercept unpenalised).

Methods (each one a least-squares fit in the basis of the centred training rows, so a width d > n
costs the n x n Gram, never a d x d system):

ridge       W = argmin ||Y_c - X_c W||^2 + lambda ||W||^2 = V diag(s / (s^2 + lambda)) U^T Y_c
            with X_c = U S V^T (Hoerl & Kennard 1970). U, s come from the smaller Gram: X_c^T X_c
            (d <= n, the primal form) or X_c X_c^T (d > n: the dual/kernel form, as in kernel ridge,
            Saunders et al. 1998; rosetta's `dual` column says which). lambda is chosen on the
            training rows by exact leave-one-out CV over LAMBDAS times the mean squared row norm:
            e_loo_i = e_i / (1 - h_ii), H = 11^T/n + U diag(s^2 / (s^2 + lambda)) U^T
            (Allen 1974; scikit-learn's RidgeCV computes the same and is the test's reference).
procrustes  W = scale Q, Q = argmin_{Q^T Q = I} ||Y_c - X_c Q|| = U' V'^T from X_c^T Y_c = U' S' V'^T
            (Schoenemann 1966), scale = tr(S') / ||X_c||^2 (Gower 1975). The narrower side is
            zero-padded: Q (d_a, d_b) is the corner of the square orthogonal map, so Q Q^T = I
            (d_a <= d_b) or Q^T Q = I. Only the rank(X_c^T Y_c) <= n - 1 singular pairs the rows
            determine are kept (the minimum-norm solution); with n > d that is the whole orthogonal
            map of scipy.linalg.orthogonal_procrustes on the zero-padded sides.
cca         each side reduced to its top k = min(d_a, d_b, floor(n_train / 2)) principal components
            (SVCCA, Raghu et al. 2017; k_a + k_b <= n keeps the canonical correlations from being 1
            by construction), canonical pairs P rho Q^T = SVD(Z_x^T Z_y) of the whitened scores
            (Hotelling 1936), and Y predicted through the first `rank` pairs:
            Y_hat = Z_x P_c diag(rho_c) Q_c^T Z_y^T Y_c (each Y canonical variate regressed on its
            X partner). `rank` is chosen by inner k-fold CV on the training rows.

Held-out scores (k-fold over prompts, folds drawn from `seed`): every prompt is predicted by the map
fitted without its fold, and
    r2  = 1 - sum ||y_i - y_hat_i||^2 / sum ||y_i - mean(y)||^2    (variance-weighted R^2, as
          sklearn's r2_score(multioutput='variance_weighted') of cross_val_predict)
    cka = biased linear CKA(Y_hat, Y)                               (Kornblith et al. 2019)
The null: the target's rows shuffled (one permutation of all n rows, `cka.permutations`), then the
whole k-fold fit again (lambda and rank chosen afresh); null_mean, null_p95 and the p-value
(1 + #{null >= observed}) / (1 + permutations) (Phipson & Smyth 2010).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vindex.errors import DegenerateInput, InvalidValue

from . import cka

METHODS = ("ridge", "procrustes", "cca")
# ridge's grid: lambda = alpha * mean squared row norm of the centred training rows (scale-free)
LAMBDAS = 10.0 ** np.arange(-3, 4)
_RANK_TOL = 1e-10    # eigenvalues below this fraction of the largest are no direction of the data


# -- arguments ----------------------------------------------------------------------------------
def check_method(method) -> str:
    if not isinstance(method, str) or method.strip().lower() not in METHODS:
        raise InvalidValue(f"rosetta: unknown method {method!r}; expected one of {list(METHODS)}")
    return method.strip().lower()


def check_rows(n: int, folds: int, what: str = "rosetta") -> None:
    """k-fold scores need two rows per fold at least: one fold's held-out rows must have a variance,
    and each training set more rows than folds. InvalidValue naming both numbers otherwise."""
    if folds < 2:
        raise InvalidValue(f"{what}: folds must be >= 2, got {folds}")
    if n < 2 * folds:
        raise InvalidValue(f"{what}: {n} prompts are fewer than folds x 2 = {2 * folds}; held-out scores need "
                           "at least two prompts per fold: lower folds or compare more prompts")


def fold_tests(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """The held-out rows of each fold: a permutation of 0..n-1 drawn from `seed`, cut into `folds`
    near-equal parts (sorted), like sklearn's KFold(folds, shuffle=True)."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


# -- the basis of a side's centred rows ---------------------------------------------------------
@dataclass
class Basis:
    """X_c = U diag(s) V^T over the r directions the rows span (s > 0), from the smaller Gram."""
    mean: np.ndarray        # (d,)
    U: np.ndarray           # (n, r) left singular vectors (orthonormal columns, orthogonal to 1)
    s: np.ndarray           # (r,) singular values, descending
    dual: bool              # True: from the n x n Gram (d > n); V is then X_c^T U / s, formed only on request
    Xc: np.ndarray          # (n, d) the centred rows
    V_primal: np.ndarray | None = None   # (d, r) the primal form's eigenvectors

    def project(self, X: np.ndarray) -> np.ndarray:
        """(X - mean) V: new rows' coordinates on the right singular vectors, (m, r)."""
        Xn = X - self.mean
        if self.dual:
            return (Xn @ self.Xc.T) @ self.U / self.s
        return Xn @ self.V

    @property
    def V(self) -> np.ndarray:
        """(d, r) right singular vectors."""
        return self.V_primal if self.V_primal is not None else self.Xc.T @ self.U / self.s


def basis(X: np.ndarray) -> Basis:
    mean = X.mean(axis=0)
    Xc = X - mean
    n, d = Xc.shape
    dual = d > n
    w, E = np.linalg.eigh(Xc @ Xc.T if dual else Xc.T @ Xc)
    keep = w > _RANK_TOL * max(w[-1], 0.0)
    if not keep.any():
        raise DegenerateInput(f"all {n} rows are the same vector (a constant layer): no map is defined")
    w, E = w[keep][::-1], E[:, keep][:, ::-1]
    s = np.sqrt(w)
    if dual:
        return Basis(mean, E, s, True, Xc)
    return Basis(mean, Xc @ E / s, s, False, Xc, E)


# -- ridge --------------------------------------------------------------------------------------
def ridge_lambdas(b: Basis) -> np.ndarray:
    """The grid, scaled by the mean squared row norm ||X_c||^2 / n = sum(s^2) / n."""
    return LAMBDAS * float((b.s ** 2).sum() / b.U.shape[0])


def ridge_loo_lambda(b: Basis, Yc: np.ndarray) -> float:
    """The lambda of the grid with the least leave-one-out squared error summed over every output
    (sklearn's RidgeCV with alpha_per_target=False; the first on ties), in O(m n r^2):
    residual e = Y_c - U F R with F = diag(s^2/(s^2+lambda)), R = U^T Y_c, so
    ||e_i||^2 = ||y_i||^2 - 2 (U F)_i . (Y_c R^T)_i + (U F)_i (R R^T) (U F)_i^T."""
    lams = ridge_lambdas(b)
    s2 = b.s ** 2
    R = b.U.T @ Yc                                     # (r, d_b)
    RR, T = R @ R.T, Yc @ R.T                          # (r, r), (n, r)
    yy = np.einsum("ij,ij->i", Yc, Yc)                 # (n,)
    n = b.U.shape[0]
    F = s2[None, :] / (s2[None, :] + lams[:, None])    # (m, r)
    UF = b.U[None, :, :] * F[:, None, :]               # (m, n, r)
    quad = np.einsum("mnr,mnr->mn", (UF.reshape(-1, UF.shape[2]) @ RR).reshape(UF.shape), UF)
    lin = np.einsum("mnr,nr->mn", UF, T)
    h = 1.0 / n + np.einsum("mnr,nr->mn", UF, b.U)
    loo = ((yy[None, :] - 2 * lin + quad) / (1 - h) ** 2).sum(axis=1)
    return float(lams[int(np.argmin(loo))])


def ridge_coef(b: Basis, Yc: np.ndarray, lam: float) -> np.ndarray:
    """(r, d_b): coordinates of the map on V, diag(s / (s^2 + lambda)) U^T Y_c."""
    return (b.s / (b.s ** 2 + lam))[:, None] * (b.U.T @ Yc)


# -- procrustes ---------------------------------------------------------------------------------
def procrustes_parts(bx: Basis, by: Basis) -> tuple[np.ndarray, np.ndarray, float]:
    """X_c^T Y_c = V_x (S_x U_x^T U_y S_y) V_y^T: the SVD of the small middle, P S' Q^T, gives
    Q = V_x P Q^T V_y^T. Returns (P, Q) of the kept pairs and the scale tr(S') / ||X_c||^2."""
    middle = (bx.s[:, None] * (bx.U.T @ by.U)) * by.s[None, :]
    P, sv, Qt = np.linalg.svd(middle, full_matrices=False)
    keep = sv > _RANK_TOL * max(sv[0], 0.0) if sv.size else sv.astype(bool)
    if not keep.any():
        raise DegenerateInput("the two sides' centred rows are orthogonal (X_c^T Y_c = 0): no Procrustes map")
    scale = float(sv[keep].sum() / (bx.s ** 2).sum())
    return P[:, keep], Qt[keep].T, scale


# -- cca ----------------------------------------------------------------------------------------
def cca_width(n_train: int, d_a: int, d_b: int) -> int:
    return max(1, min(d_a, d_b, n_train // 2))


def cca_parts(bx: Basis, by: Basis, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Canonical pairs of the top-k whitened scores Z = U[:, :k]: Z_x^T Z_y = P diag(rho) Q^T.
    Returns P (k, k'), rho, Q (k, k'), k (as used: at most each side's rank)."""
    k = min(k, bx.s.size, by.s.size)
    P, rho, Qt = np.linalg.svd(bx.U[:, :k].T @ by.U[:, :k], full_matrices=False)
    return P, rho, Qt.T, k


def cca_scores_map(bx: Basis, by: Basis, Yc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, rho, G): a new row's j-th X canonical variate is project(x)[:, :k] / s_x[:k] @ A[:, j],
    and its predicted Y through c pairs is sum_{j<c} variate_j rho_j G[j] (G = Q^T Z_y^T Y_c)."""
    P, rho, Q, k = cca_parts(bx, by, k)
    G = Q.T @ (by.U[:, :k].T @ Yc)
    return P, rho, G


def cca_inner_rank(X: np.ndarray, Y: np.ndarray, folds: int, seed: int) -> int:
    """The number of canonical pairs with the least inner k-fold squared error (over 1..k)."""
    n = X.shape[0]
    tests = fold_tests(n, min(folds, n // 2), seed + 1)
    k_max = cca_width(n - max(len(t) for t in tests), X.shape[1], Y.shape[1])
    sse = np.zeros(k_max)
    for te in tests:
        tr = np.setdiff1d(np.arange(n), te)
        bx, by = basis(X[tr]), basis(Y[tr])
        P, rho, G = cca_scores_map(bx, by, by.Xc, k_max)
        k = P.shape[0]
        t = bx.project(X[te])[:, :k] / bx.s[:k] @ P * rho         # (m, c) shrunk variates
        E0 = Y[te] - by.mean
        # SSE(c) = ||E0||^2 - 2 sum_{j<c} t_j^T E0 g_j + sum_{i,j<c} (t_i . t_j)(g_i . g_j)
        lin = np.einsum("mj,mj->j", t, E0 @ G.T)
        cross = (t.T @ t) * (G @ G.T)
        quad = np.array([cross[:c, :c].sum() for c in range(1, len(lin) + 1)])
        part = (E0 ** 2).sum() - 2 * np.cumsum(lin) + quad
        sse[:len(part)] += part
        sse[len(part):] += part[-1] if len(part) else 0.0
    return int(np.argmin(sse)) + 1


# -- one fit: the map, or its predictions -------------------------------------------------------
@dataclass
class Fitted:
    """A fitted map, kept in the form its method predicts with; `matrix()` gives W and b."""
    method: str
    bx: Basis
    coef_left: np.ndarray | None  # (r_x, m) x-side coordinates -> ... (None: the identity)
    coef_right: np.ndarray    # ... -> (d_b) outputs: y_hat = mean_y + project(x) @ left @ right
    y_mean: np.ndarray
    lam: float | None = None
    rank: int | None = None
    scale: float | None = None

    def predict(self, X: np.ndarray) -> np.ndarray:
        z = self.bx.project(X)
        return self.y_mean + (z if self.coef_left is None else z @ self.coef_left) @ self.coef_right

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (d_a, d_b), b (d_b)) with y_hat = x W + b."""
        V = self.bx.V
        W = (V if self.coef_left is None else V @ self.coef_left) @ self.coef_right
        return W, self.y_mean - self.bx.mean @ W


def fit(X: np.ndarray, Y: np.ndarray, method: str, folds: int = 5, seed: int = 0,
        bx: Basis | None = None) -> Fitted:
    """The map from X's rows to Y's (bx: X's basis, when the caller has it already)."""
    bx = bx or basis(X)
    y_mean = Y.mean(axis=0)
    Yc = Y - y_mean
    if method == "ridge":
        lam = ridge_loo_lambda(bx, Yc)
        return Fitted(method, bx, None, ridge_coef(bx, Yc, lam), y_mean, lam=lam,
                      rank=int(bx.s.size))
    by = basis(Y)
    if method == "procrustes":
        P, Q, scale = procrustes_parts(bx, by)
        # Q = V_x P Q^T V_y^T and V_y^T = diag(1/s_y) U_y^T Y_c
        right = Q.T @ ((by.U.T @ Yc) / by.s[:, None])
        return Fitted(method, bx, scale * P, right, y_mean, rank=int(P.shape[1]), scale=scale)
    k = cca_width(X.shape[0], X.shape[1], Y.shape[1])
    c = min(cca_inner_rank(X, Y, folds, seed), k)
    P, rho, G = cca_scores_map(bx, by, Yc, k)
    c = min(c, P.shape[1])
    k = P.shape[0]
    left = np.zeros((bx.s.size, c))
    left[:k] = (P[:, :c] * rho[:c]) / bx.s[:k, None]
    return Fitted(method, bx, left, G[:c], y_mean, rank=c)


# -- held-out scores and the null ---------------------------------------------------------------
def held_out(X: np.ndarray, Y: np.ndarray, method: str, tests: list[np.ndarray], seed: int,
             bases: list[Basis] | None = None) -> tuple[float, float]:
    """(r2, cka) of the out-of-fold predictions (each fold's rows predicted by the map fitted on
    the others); `bases`: X's training-row basis per fold (the null reuses them: X is never shuffled)."""
    n = X.shape[0]
    pred = np.empty_like(Y)
    for f, te in enumerate(tests):
        tr = np.setdiff1d(np.arange(n), te)
        model = fit(X[tr], Y[tr], method, len(tests), seed, bx=None if bases is None else bases[f])
        pred[te] = model.predict(X[te])
    sst = float(((Y - Y.mean(axis=0)) ** 2).sum())
    r2 = 1.0 - float(((Y - pred) ** 2).sum()) / sst
    try:
        c = float(np.dot(cka.packed_unit_gram(pred), cka.packed_unit_gram(Y)))
    except DegenerateInput:
        c = float("nan")
    return r2, c


@dataclass
class Direction:
    """The scores of one direction (X -> Y) of a layer pair, with the null and the full-data map."""
    r2: float
    cka: float
    r2_null: dict
    cka_null: dict
    fitted: Fitted
    n: int


def rosetta_direction(X, Y, method: str = "ridge", folds: int = 5, permutations: int = 0, seed: int = 0,
                      what: str = "rosetta") -> Direction:
    """Held-out R^2 and CKA of Y predicted from X, their permutation null, and the map fitted on all rows."""
    method = check_method(method)
    X, Y = cka.as_rows(X, f"{what}: source rows"), cka.as_rows(Y, f"{what}: target rows")
    if X.shape[0] != Y.shape[0]:
        raise InvalidValue(f"{what}: the sides must hold the same prompts in the same order: "
                           f"{X.shape[0]} and {Y.shape[0]} rows")
    n = X.shape[0]
    check_rows(n, folds, what)
    if not ((Y - Y.mean(axis=0)) ** 2).sum() > 0:
        raise DegenerateInput(f"{what}: the target rows are all the same vector (a constant layer): R^2 is undefined")
    tests = fold_tests(n, folds, seed)
    bases = [basis(X[np.setdiff1d(np.arange(n), te)]) for te in tests]
    r2, c = held_out(X, Y, method, tests, seed, bases)
    null_r2, null_cka = [], []
    for p in cka.permutations(n, permutations, seed):
        a, b = held_out(X, Y[p], method, tests, seed, bases)
        null_r2.append(a)
        null_cka.append(b)
    return Direction(r2, c, _summary(r2, null_r2), _summary(c, null_cka), fit(X, Y, method, folds, seed), n)


def _summary(observed: float, null: list[float]) -> dict:
    if not null:
        return {"null_mean": None, "null_p95": None, "p_value": None}
    return {k: float(v) for k, v in cka.null_summary(observed, np.asarray(null)).items()}
