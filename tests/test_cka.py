"""CKA math (vindex.query.cka) against independent numpy references and two third-party
implementations (ckatorch 1.0.3, repsim 0.1.5), to 1e-6."""
import numpy as np
import pytest

from vindex import InvalidValue
from vindex.query import cka as C

torch = pytest.importorskip("torch")
ckatorch_core = pytest.importorskip("ckatorch.core")
repsim = pytest.importorskip("repsim")

TOL = 1e-6


def pair(n=51, dx=20, dy=30, seed=0):
    """float32 data with a shared signal (so CKA is neither 0 nor 1)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dx)).astype(np.float32)
    Y = (X @ rng.standard_normal((dx, dy)) + 1.5 * rng.standard_normal((n, dy))).astype(np.float32)
    return X, Y


# -- independent numpy references, written from the papers, not from vindex.query.cka --------------
def ref_linear_cka(X, Y):
    """Kornblith et al. 2019 eq. (5): ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F) on column-centred data."""
    X = np.asarray(X, np.float64) - np.mean(X, 0)
    Y = np.asarray(Y, np.float64) - np.mean(Y, 0)
    return np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y))


def ref_hsic0(K, L):
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def ref_hsic1(K, L):
    """Song et al. 2012, eq. (5), with an explicit loop-free but literal transcription."""
    n = len(K)
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ Kt @ Lt @ one)) / (n * (n - 3))


def ref_rbf(X, sigma):
    X = np.asarray(X, np.float64)
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma ** 2 * np.median(d2)))


def ref_unit_gram(X):
    """HKH / ||HKH||_F for the linear kernel: the centred Gram at unit Frobenius norm."""
    X = np.asarray(X, np.float64) - np.mean(X, 0)
    K = X @ X.T
    return K / np.linalg.norm(K)


def ref_cka(K, L, hsic):
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def torch_cka(X, Y, kernel="linear", unbiased=False, threshold=1.0):
    t = lambda A: torch.tensor(np.asarray(A), dtype=torch.float64)
    return float(ckatorch_core.cka_base(t(X), t(Y), kernel=kernel, unbiased=unbiased, threshold=threshold))


def repsim_debiased(X, Y):
    """repsim's Song HSIC, normalised here (its cka(estimator='song') divides by the biased self-HSIC)."""
    h = repsim.hsic([np.asarray(X, np.float64), np.asarray(Y, np.float64)], "linear", "song")
    return h[0, 1] / np.sqrt(h[0, 0] * h[1, 1])


# -- the estimators ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_biased_linear_matches_references(seed):
    X, Y = pair(seed=seed)
    got = C.cka(X, Y)
    K, L = X.astype(np.float64) @ X.T.astype(np.float64), Y.astype(np.float64) @ Y.T.astype(np.float64)
    assert abs(got - ref_linear_cka(X, Y)) < TOL
    assert abs(got - ref_cka(K, L, ref_hsic0)) < TOL
    assert abs(got - torch_cka(X, Y)) < TOL
    assert abs(got - repsim.cka([X.astype(np.float64), Y.astype(np.float64)], "linear", "gretton")[0, 1]) < TOL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_debiased_linear_matches_references(seed):
    X, Y = pair(seed=seed)
    got = C.cka(X, Y, "debiased")
    K, L = X.astype(np.float64) @ X.T.astype(np.float64), Y.astype(np.float64) @ Y.T.astype(np.float64)
    assert abs(got - ref_cka(K, L, ref_hsic1)) < TOL
    assert abs(got - torch_cka(X, Y, unbiased=True)) < TOL
    assert abs(got - repsim_debiased(X, Y)) < TOL
    # the module's own HSIC forms agree with the literal transcriptions
    assert abs(C.hsic_unbiased(K, L) - ref_hsic1(K, L)) < 1e-9 * abs(ref_hsic1(K, L))
    assert abs(C.hsic_biased(K, L) - ref_hsic0(K, L)) < 1e-9 * abs(ref_hsic0(K, L))
    n = len(K)
    assert abs((C.u_centre_gram(K) * C.u_centre_gram(L)).sum() / (n * (n - 3)) - ref_hsic1(K, L)) \
        < 1e-9 * abs(ref_hsic1(K, L))


@pytest.mark.parametrize("estimator", ["biased", "debiased"])
@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_rbf_matches_references(estimator, sigma):
    X, Y = pair(n=51)  # odd n: n^2 is odd, so torch's lower median equals numpy's median
    hsic = ref_hsic0 if estimator == "biased" else ref_hsic1
    got = C.cka(X, Y, estimator, f"rbf:{sigma}")
    assert abs(got - ref_cka(ref_rbf(X, sigma), ref_rbf(Y, sigma), hsic)) < TOL
    assert abs(got - torch_cka(X, Y, "rbf", estimator == "debiased", sigma)) < TOL


@pytest.mark.parametrize("estimator", ["biased", "debiased"])
def test_feature_space_path_for_many_rows(estimator):
    # n > 2 (dx + dy): cka() takes the n x d route, which must give the Gram route's number
    X, Y = pair(n=400, dx=12, dy=9, seed=4)
    opts = C.options(estimator)
    gram_route = float(np.dot(C.packed_unit_gram(X, opts), C.packed_unit_gram(Y, opts)))
    assert abs(C.cka(X, Y, estimator) - gram_route) < 1e-10
    assert abs(C.cka(X, Y, estimator) - torch_cka(X, Y, unbiased=estimator == "debiased")) < TOL


def test_packed_grams_give_the_same_dot_products():
    X, Y = pair()
    gx, gy = ref_unit_gram(X), ref_unit_gram(Y)
    assert abs(np.dot(C.pack_symmetric(gx), C.pack_symmetric(gy)) - (gx * gy).sum()) < 1e-12
    assert C.packed_size(len(C.pack_symmetric(gx))) == len(gx)
    with pytest.raises(InvalidValue, match="n\\(n\\+1\\)/2"):
        C.packed_size(10 ** 4 + 1)


def test_minibatch_matches_ckatorch_with_the_same_batches():
    X, Y = pair(n=300, dx=16, dy=12, seed=5)
    b, seed = 50, 7
    order = np.random.default_rng(seed).permutation(300)
    t = lambda A: torch.tensor(np.asarray(A, np.float64)[order].reshape(6, b, -1))
    want = float(ckatorch_core.cka_batch(t(X), t(Y)))
    assert abs(C.minibatch_cka(X, Y, b, seed) - want) < TOL
    # a reference from the definition: sum of per-batch HSIC_1
    Xs, Ys = np.asarray(X, np.float64)[order], np.asarray(Y, np.float64)[order]
    h = np.zeros(3)
    for i in range(6):
        K, L = Xs[i * b:(i + 1) * b] @ Xs[i * b:(i + 1) * b].T, Ys[i * b:(i + 1) * b] @ Ys[i * b:(i + 1) * b].T
        h += [ref_hsic1(K, L), ref_hsic1(K, K), ref_hsic1(L, L)]
    assert abs(C.minibatch_cka(X, Y, b, seed) - h[0] / np.sqrt(h[1] * h[2])) < TOL


# -- properties ----------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["biased", "debiased"])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(estimator, kernel):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 16))
    Q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    assert abs(C.cka(X, X @ Q, estimator, kernel) - 1) < 1e-9
    assert abs(C.cka(X, 7.5 * X @ Q, estimator, kernel) - 1) < 1e-9
    assert abs(C.cka(X, X, estimator, kernel) - 1) < 1e-12


def test_null_of_independent_data():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((256, 512)), rng.standard_normal((256, 1024))
    assert C.cka(X, Y) > 0.5                     # the biased estimator is far from 0 when d > n
    assert abs(C.cka(X, Y, "debiased")) < 0.02   # the debiased one is not


def test_permutation_null_is_cka_of_shuffled_rows():
    X, Y = pair(n=30, seed=8)
    count, seed = 19, 3
    res = C.permutation_test(X, Y, count, seed)
    null = np.array([ref_linear_cka(X, np.asarray(Y)[p]) for p in C.permutations(30, count, seed)])
    assert abs(res["cka"] - ref_linear_cka(X, Y)) < TOL
    assert abs(res["null_mean"] - null.mean()) < TOL
    assert abs(res["null_p95"] - np.percentile(null, 95)) < TOL
    assert res["p_value"] == (1 + (null >= res["cka"]).sum()) / (1 + count)
    # the gather for the other side (inverse permutations) gives the same null
    gx, gy = C.packed_unit_gram(X), C.packed_unit_gram(Y)
    a = C.null_scores(gx[None], gy[None], C.permutation_gather(30, count, seed))[0, 0]
    b = C.null_scores(gy[None], gx[None], C.permutation_gather(30, count, seed, inverse=True))[0, 0]
    assert np.allclose(a, b, atol=1e-12) and np.allclose(a, null, atol=TOL)


def test_preprocessing_matches_a_reference():
    X, Y = pair(seed=9)
    X = X.copy()
    X[:, 3] += 200  # a rogue dimension
    l2 = lambda A: A / np.linalg.norm(A, axis=1, keepdims=True)

    def clip(A, p):
        A = np.asarray(A, np.float64)
        lo, hi = np.percentile(A, 100 - p, axis=0), np.percentile(A, p, axis=0)
        return l2(np.minimum(np.maximum(A, lo), hi))

    assert abs(C.cka(X, Y, preprocess="l2") - torch_cka(l2(X.astype(np.float64)), l2(Y.astype(np.float64)))) < TOL
    assert abs(C.cka(X, Y, preprocess="clip:95") - torch_cka(clip(X, 95), clip(Y, 95))) < TOL
    assert abs(C.cka(X, Y, preprocess="clip") - torch_cka(clip(X, 99), clip(Y, 99))) < TOL
    assert C.options(preprocess="clip").preprocess_name == "clip:99"
    assert C.options(kernel="rbf").kernel_name == "rbf:1"


# -- errors --------------------------------------------------------------------------------------
def test_clear_errors():
    X, Y = pair()
    with pytest.raises(InvalidValue, match="51 and 50 rows"):
        C.cka(X, Y[:50])
    with pytest.raises(InvalidValue, match="n >= 4"):
        C.cka(X[:3], Y[:3], "debiased")
    with pytest.raises(C.DegenerateInput, match="constant layer"):
        C.cka(np.ones((10, 4)) * 3.7, Y[:10])
    with pytest.raises(C.DegenerateInput):
        C.cka(np.ones((10, 4)), Y[:10], kernel="rbf")
    # many rows take the feature-space route: a constant side is caught there too
    const = np.full((200, 3), 0.1)
    with pytest.raises(C.DegenerateInput, match="constant layer"):
        C.cka(const, np.random.default_rng(0).standard_normal((200, 2)), "debiased")
    bad = X.copy()
    bad[5, 2] = np.nan
    with pytest.raises(InvalidValue, match="row 5 holds NaN"):
        C.cka(bad, Y)
    with pytest.raises(InvalidValue, match="unknown estimator"):
        C.cka(X, Y, "kornblith")
    with pytest.raises(InvalidValue, match="unknown kernel"):
        C.cka(X, Y, kernel="poly")
    with pytest.raises(InvalidValue, match="percentile"):
        C.cka(X, Y, preprocess="clip:20")
    with pytest.raises(InvalidValue, match="batches of >= 4"):
        C.minibatch_cka(X, Y, batch_size=3)
    assert C.options("unbiased").estimator == "debiased"


# -- which rows: the fingerprint every CKA path compares -----------------------------------------
def test_rows_fingerprint_is_of_which_rows_in_which_order():
    sets, ids = np.array(["b", "a", "a"], dtype=object), np.array([0, 2, 1], np.int64)
    f = C.rows_fingerprint([sets, ids])
    assert isinstance(f, int) and -2 ** 63 <= f < 2 ** 63
    assert f == C.rows_fingerprint([sets.copy(), ids.astype(np.int32)])     # int32 and int64 ids agree
    assert f != C.rows_fingerprint([sets[::-1], ids[::-1]])                 # another order
    assert f != C.rows_fingerprint([sets, ids + 1])                         # other rows
    assert f != C.rows_fingerprint([np.array(["b", "a", "c"], dtype=object), ids])
    # sort_rows: the order sorting by (set, id), the fingerprint of the sorted keys, distinct keys
    order, key, n_distinct = C.sort_rows([sets, ids])
    assert order.tolist() == [2, 1, 0] and n_distinct == 3
    assert key == C.rows_fingerprint([np.array(["a", "a", "b"], dtype=object), np.array([1, 2, 0])])
    assert C.sort_rows([sets, np.array([0, 1, 1])])[2] == 2                 # ("a", 1) twice
