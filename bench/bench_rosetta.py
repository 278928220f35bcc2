"""Benchmark: `rosetta` over every matched layer pair of two models through SQL vs the same fits
called from numpy on shards read with pyarrow (the floor: no DuckDB, no Arrow lists), in one run.

Two synthetic vindexes shaped like the study's models (SmolLM2-135M: 30 blocks -> 31 layers, d 576;
Gemma 3 270M-like: 28 blocks, d 640 by default), 256 prompts sharing a low-rank signal, float16 shards.
Prints medians of --repeats interleaved rounds and the ratio SQL / numpy (target <= 1.3).

    python bench/bench_rosetta.py                       # ridge, no permutations
    python bench/bench_rosetta.py --method procrustes --permutations 4 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vindex import Vindex

sys.path.insert(0, str(Path(__file__).parent))
from bench_cka import build_model  # noqa: E402  (the same synthetic vindexes)


def load_layers(root: Path) -> list[np.ndarray]:
    """Every layer's (n, d) pooled matrix, sorted by prompt, read with pyarrow from the manifest's shards."""
    vx = Vindex.open(root)
    out = []
    for layer in vx.layers("pooled"):
        t = pq.read_table(vx.path(vx.files("pooled", layer=layer)[0]), columns=["prompt_id", "act"]).sort_by("prompt_id")
        col = t.column("act").combine_chunks()
        out.append(np.asarray(col.flatten().to_numpy(), np.float64).reshape(len(t), col.type.list_size))
    return out


def matched(n_a: int, n_b: int) -> list[tuple[int, int]]:
    """cka_depth's rule: each layer of A with B's layer at the nearest normalized depth, ties low."""
    return [(la, min(range(n_b + 1), key=lambda lb: (round(abs(la / n_a - lb / n_b), 9), lb))) for la in range(n_a + 1)]


def numpy_pipeline(root_a, root_b, blocks_a, blocks_b, method, folds, permutations):
    from vindex.query.linear_maps import rosetta_direction
    from vindex.query.parallel import map_layers
    xs, ys = load_layers(root_a), load_layers(root_b)

    def one(pair):
        la, lb = pair
        return [rosetta_direction(xs[la], ys[lb], method, folds, permutations).r2,
                rosetta_direction(ys[lb], xs[la], method, folds, permutations).r2]
    return map_layers(one, matched(blocks_a, blocks_b))   # the same threads and BLAS setting as the UDF


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-a", type=int, default=576)
    ap.add_argument("--d-b", type=int, default=640)
    ap.add_argument("--blocks-a", type=int, default=30)
    ap.add_argument("--blocks-b", type=int, default=28)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--method", default="ridge", choices=["ridge", "procrustes", "cca"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--permutations", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed; cpu: CPU seconds of all this process's threads (far less inflated by "
                         "other jobs on a shared machine)")
    args = ap.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    from vindex.query import connect
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        a = build_model(root, "bench-a", args.blocks_a, args.d_a, args.prompts, seed=1)
        b = build_model(root, "bench-b", args.blocks_b, args.d_b, args.prompts, seed=2)
        con = connect(root)
        con.execute("SET enable_progress_bar = false")
        sql = (f"SELECT model_a, layer_a, layer_b, r2 FROM rosetta('bench-a', 'bench-b', pooling := 'mean', "
               f"method := '{args.method}', folds := {args.folds}, permutations := {args.permutations})")
        times = {"sql": [], "numpy": []}
        for _ in range(args.repeats):   # interleaved rounds: load drift hits both alike
            t0 = clock()
            got = con.sql(sql).fetchall()
            times["sql"].append(clock() - t0)
            t0 = clock()
            ref = numpy_pipeline(a, b, args.blocks_a, args.blocks_b, args.method, args.folds, args.permutations)
            times["numpy"].append(clock() - t0)
        pairs = len(matched(args.blocks_a, args.blocks_b))
        want = sorted([r[0] for r in ref] + [r[1] for r in ref])
        assert np.allclose(sorted(r[3] for r in got), want, atol=1e-9), "SQL and numpy disagree"
        sql_t, np_t = statistics.median(times["sql"]), statistics.median(times["numpy"])
        ratio = statistics.median(s / n for s, n in zip(times["sql"], times["numpy"]))
        print(f"rosetta {args.method}: {pairs} matched pairs x 2 directions, {args.prompts} prompts, "
              f"d {args.d_a} vs {args.d_b}, {args.folds} folds, {args.permutations} permutations")
        print(f"  clock: {args.clock}")
        print(f"  SQL   median {sql_t:.2f} s   (rounds: {', '.join(f'{t:.2f}' for t in times['sql'])})")
        print(f"  numpy median {np_t:.2f} s   (rounds: {', '.join(f'{t:.2f}' for t in times['numpy'])})")
        print(f"  ratio SQL / numpy (median of per-round ratios): {ratio:.2f}  (target <= 1.3)")
        print(f"  held-out r2 over the pairs: {min(want):.3f} .. {max(want):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
