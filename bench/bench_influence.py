"""Benchmark: `cka_influence` (every prompt's leave-one-out CKA at one layer pair, through SQL) and
`stages` (a model's self-CKA cut into stages, with its surrogate null) against hand-written numpy
pipelines doing the same math on the same shards, in the same run.

The lake is bench_cka's: two synthetic vindexes shaped like Gemma 3 270M (19 layers, d 640) and
Qwen2.5 0.5B (25 layers, d 896), 256 prompts, float16 shards, one file per layer, with a prompts
table (4 categories). Prints medians of --repeats interleaved rounds and the ratios (target <= 1.3).

    python bench/bench_influence.py
    python bench/bench_influence.py --threads 1 --clock cpu      # on a busy machine
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cka  # noqa: E402  (the lake, the clocks, interleaved timing)
from bench_cka import build_model, round_ratio, timed_together  # noqa: E402

from vindex import Vindex, VindexWriter  # noqa: E402

CATEGORIES = ("factual", "coding", "reasoning", "translation")


def add_prompts(root: Path, n: int) -> None:
    with VindexWriter.open(root) as w:
        w.write_shard("prompts", {"prompt_set": ["bench"] * n, "prompt_id": np.arange(n),
                                  "category": [CATEGORIES[i * 4 // n] for i in range(n)],
                                  "text": [f"prompt {i}" for i in range(n)]}, partition={"prompt_set": "bench"})


def read_layer(root: Path, layer: int) -> np.ndarray:
    """One layer's pooled rows, sorted by prompt_id, read with pyarrow."""
    vx = Vindex.open(root)
    t = pq.read_table(vx.path(vx.files("pooled", layer=layer)[0]), columns=["prompt_id", "act"]).sort_by("prompt_id")
    col = t.column("act").combine_chunks()
    return np.asarray(col.flatten().to_numpy(), dtype=np.float64).reshape(len(t), col.type.list_size)


def numpy_influence(ra: Path, rb: Path, la: int, lb: int, estimator: str) -> np.ndarray:
    """The baseline: read the two layers, centre, Gram, then the leave-one-out HSIC terms (the
    formulas in vindex/query/influence.py, written out again here)."""
    X, Y = read_layer(ra, la), read_layer(rb, lb)
    A, B = X - X.mean(0), Y - Y.mean(0)
    A, B = A @ A.T, B @ B.T
    A, B = A / np.trace(A), B / np.trace(B)
    if estimator == "debiased":
        np.fill_diagonal(A, 0.0)
        np.fill_diagonal(B, 0.0)
    n = len(A)
    m = n - 1

    def loo(K, L):
        P = (K * L).sum(1)
        rK, rL, dK, dL = K.sum(1), L.sum(1), np.diag(K), np.diag(L)
        tr = P.sum() - 2 * P + dK * dL
        rr = rK @ rL - K @ rL - L @ rK + P - (rK - dK) * (rL - dL)
        ss = (rK.sum() - 2 * rK + dK) * (rL.sum() - 2 * rL + dL)
        if estimator == "biased":
            return tr - 2 / m * rr + ss / m ** 2
        return tr - 2 / (m - 2) * rr + ss / ((m - 1) * (m - 2))

    return loo(A, B) / np.sqrt(loo(A, A) * loo(B, B))


def numpy_stages(root: Path, estimator: str, permutations: int) -> list[int]:
    """The baseline: read every layer, its unit centred Gram, the self-CKA matrix by one GEMM, then
    the same stage fit (vindex.query.layer_stages.fit_stages)."""
    from vindex.query.cka import packed_unit_gram, options
    from vindex.query.layer_stages import fit_stages
    vx = Vindex.open(root)
    G = np.stack([packed_unit_gram(read_layer(root, layer), options(estimator)) for layer in vx.layers("pooled")])
    return fit_stages(G @ G.T, permutations=permutations).starts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="lake folder (default: a temp folder)")
    ap.add_argument("--d-a", type=int, default=640)
    ap.add_argument("--d-b", type=int, default=896)
    ap.add_argument("--blocks-a", type=int, default=18)
    ap.add_argument("--blocks-b", type=int, default=24)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--estimator", choices=["biased", "debiased"], default="debiased")
    ap.add_argument("--permutations", type=int, default=99, help="stages' surrogates")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="threads for BLAS and DuckDB alike")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args(argv)
    if args.clock == "cpu":
        bench_cka.CLOCK = time.process_time
    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)

    tmp = None if args.root else tempfile.TemporaryDirectory()
    root = args.root or Path(tmp.name)
    t0 = time.perf_counter()
    ra = build_model(root, "bench-a", args.blocks_a, args.d_a, args.prompts, 1)
    rb = build_model(root, "bench-b", args.blocks_b, args.d_b, args.prompts, 2)
    for r in (ra, rb):
        add_prompts(r, args.prompts)
    la, lb = args.blocks_a // 2, args.blocks_b // 2       # the matched-depth pair at 50%
    print(f"lake: {args.blocks_a + 1} x {args.blocks_b + 1} layers, {args.prompts} prompts, d {args.d_a} / "
          f"{args.d_b}, float16 (built in {time.perf_counter() - t0:.1f} s); layer pair {la} x {lb}, "
          f"{args.estimator}; clock {args.clock}")

    from vindex.query import connect
    con = connect(root)
    if args.threads:
        con.execute(f"SET threads = {args.threads}")
    sql = (f"SELECT prompt_id, cka_without FROM cka_influence('bench-a', 'bench-b', {la}, {lb}, "
           f"estimator := '{args.estimator}', pooling := 'mean') ORDER BY prompt_id")
    con.sql(sql).fetchall()                               # warm: file cache, UDF import
    (t_np, want), (t_sql, rows) = timed_together(
        [lambda: numpy_influence(ra, rb, la, lb, args.estimator), lambda: con.sql(sql).fetchall()], args.repeats)
    got = np.array([r[1] for r in rows])
    print(f"cka_influence, {args.prompts} prompts: max |SQL - numpy| = {np.abs(got - want).max():.2e}")
    print(f"  numpy pipeline    {t_np * 1e3:8.1f} ms")
    print(f"  SQL cka_influence {t_sql * 1e3:8.1f} ms   ratio SQL/numpy = {t_sql / t_np:.2f} "
          f"(median of per-round ratios {round_ratio(1, 0):.2f}; target <= 1.3)")

    ssql = (f"SELECT first_layer FROM stages('bench-b', estimator := '{args.estimator}', pooling := 'mean', "
            f"permutations := {args.permutations}) ORDER BY stage")
    con.sql(ssql).fetchall()
    (t_np, want), (t_sql, rows) = timed_together(
        [lambda: numpy_stages(rb, args.estimator, args.permutations), lambda: con.sql(ssql).fetchall()],
        args.repeats)
    assert [r[0] for r in rows] == want, (rows, want)
    print(f"stages, {args.blocks_b + 1} layers, {args.permutations} surrogates: {len(want)} stage(s) starting at {want}")
    print(f"  numpy pipeline    {t_np * 1e3:8.1f} ms")
    print(f"  SQL stages        {t_sql * 1e3:8.1f} ms   ratio SQL/numpy = {t_sql / t_np:.2f} "
          f"(median of per-round ratios {round_ratio(1, 0):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
