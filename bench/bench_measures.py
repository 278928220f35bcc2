"""Each measure beyond CKA (vindex.query.measures) over a real-size layer pair, against a hand-written
numpy floor computing the same number in the same run; medians of --rounds, contenders interleaved.

    python bench/bench_measures.py                  # 256 prompts, widths 640 and 896 (Gemma 3 270M, Qwen2.5 0.5B)
    python bench/bench_measures.py --n 512 --rounds 7 --permutations 99 --threads 1

The floor is the shortest numpy we could write for each number (no checks, no summaries, no null);
the ratio is vindex / floor. With --permutations N it also times measure_test (value + N-shuffle null).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from vindex.query import measures


def centred_unit(X):
    Xc = X - X.mean(0)
    return Xc / np.linalg.norm(Xc)


def floor_procrustes(X, Y):
    nuclear = np.linalg.svd(centred_unit(X).T @ centred_unit(Y), compute_uv=False).sum()
    return np.sqrt(max(2 - 2 * nuclear, 0))


def floor_shape(X, Y):
    return np.arccos(min(np.linalg.svd(centred_unit(X).T @ centred_unit(Y), compute_uv=False).sum(), 1))


def _basis(X, variance=0.99):
    U, s, Vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    r = min(int(np.searchsorted(np.cumsum(s ** 2) / np.sum(s ** 2), variance) + 1), (len(X) - 1) // 2)
    return U[:, :r], s[:r, None] * Vt[:r]


def floor_svcca(X, Y):
    (Qa, _), (Qb, _) = _basis(X), _basis(Y)
    return np.linalg.svd(Qa.T @ Qb, compute_uv=False).mean()


def floor_pwcca(X, Y):
    (Qa, Pa), (Qb, Pb) = _basis(X), _basis(Y)
    A, rho, Bt = np.linalg.svd(Qa.T @ Qb, full_matrices=False)
    wa, wb = np.abs(A.T @ Pa).sum(1), np.abs(Bt @ Pb).sum(1)
    return (wa @ rho / wa.sum() + wb @ rho / wb.sum()) / 2


def floor_rsa(X, Y):
    iu = np.triu_indices(len(X), 1)
    ra = np.argsort(np.argsort(1 - np.corrcoef(X)[iu]))   # no ties in float data
    rb = np.argsort(np.argsort(1 - np.corrcoef(Y)[iu]))
    return np.corrcoef(ra, rb)[0, 1]


def floor_cknna(X, Y, k=10):
    def kernel(A):
        A = A / np.linalg.norm(A, axis=1, keepdims=True)
        return A @ A.T

    def mask(K):
        S = K.copy()
        np.fill_diagonal(S, -np.inf)
        M = np.zeros_like(K)
        np.put_along_axis(M, np.argpartition(-S, k, axis=1)[:, :k], 1.0, axis=1)
        return M

    def hsic(K, L):
        n = len(K)
        K, L = K.copy(), L.copy()
        np.fill_diagonal(K, 0)
        np.fill_diagonal(L, 0)
        return ((K * L.T).sum() + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2 * K.sum(0) @ L.sum(1) / (n - 2)) / (n * (n - 3))

    K, L = kernel(X), kernel(Y)
    Mk, Ml = mask(K), mask(L)
    return hsic(Mk * Ml * K, Mk * Ml * L) / np.sqrt(hsic(Mk * K, Mk * K) * hsic(Ml * L, Ml * L))


FLOORS = {"procrustes": floor_procrustes, "shape_metric": floor_shape, "svcca": floor_svcca, "pwcca": floor_pwcca,
          "rsa": floor_rsa, "cknna": floor_cknna}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--d-a", type=int, default=640)
    ap.add_argument("--d-b", type=int, default=896)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--permutations", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads (1 on a busy machine: multi-threaded BLAS spins there on these small matrices)")
    args = ap.parse_args()
    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((args.n, 32))
    X = (latent @ rng.standard_normal((32, args.d_a)) + rng.standard_normal((args.n, args.d_a))).astype(np.float32)
    Y = (latent @ rng.standard_normal((32, args.d_b)) + rng.standard_normal((args.n, args.d_b))).astype(np.float32)
    print(f"n = {args.n} rows, widths {args.d_a} and {args.d_b}, float32 as stored; median of {args.rounds} rounds")
    print(f"{'measure':<13} {'vindex s':>9} {'floor s':>9} {'ratio':>6}   value (vindex / floor)")
    import warnings
    warnings.simplefilter("ignore")   # SVCCA/PWCCA's capped truncation (n <= d) warns; the floor caps the same way
    for name, floor in FLOORS.items():
        ours, base = [], []
        for _ in range(args.rounds):     # interleaved: both see the same machine state
            ours.append(timed(lambda: measures.measure(X, Y, name)))
            base.append(timed(lambda: floor(X.astype(np.float64), Y.astype(np.float64))))
        a, b = statistics.median(ours), statistics.median(base)
        v, w = measures.measure(X, Y, name), floor(X.astype(np.float64), Y.astype(np.float64))
        print(f"{name:<13} {a:9.4f} {b:9.4f} {a / b:6.2f}   {v:.6f} / {w:.6f}")
    if args.permutations:
        print(f"\nmeasure_test with a {args.permutations}-permutation null (median of {args.rounds}):")
        for name in FLOORS:
            t = statistics.median(timed(lambda: measures.measure_test(X, Y, name, args.permutations))
                                  for _ in range(args.rounds))
            print(f"{name:<13} {t:9.3f} s")


if __name__ == "__main__":
    main()
