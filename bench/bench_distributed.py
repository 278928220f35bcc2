"""All-pairs CKA of a synthetic lake: on Ray, in one process, and pair by pair through SQL; same run.

    python bench/bench_distributed.py                       # lakes of 2, 4 and 8 models, 3 repeats
    python bench/bench_distributed.py --models 4,8,16 --layers 24 --d 1024 --prompts 512

sql-pairs : the single-machine SQL path a user would script today: `cka_matrix(a, b)` for every
            model pair, each call computing both models' Grams again (work ~ pairs x layers x n^2 d)
local     : `cka_all(lake)` in this process: each (model, layer) Gram once, then the pair
            reduce (work ~ models x layers x n^2 d  +  pairs x layers^2 x n^2)
ray       : `cka_all(lake, ray=True)` on a local Ray with --cpus CPUs: the same two steps as
            Ray tasks (Grams in the object store), after one warm-up run that starts the workers

Every figure is the median of --repeats runs, the methods interleaved within each repeat. The
growth columns divide a lake's time by the previous (smaller) lake's: compare them with the
growth of models (Grams) and of pairs. The three methods' results are checked to agree (1e-9).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path


def write_lake(root: Path, n_models: int, layers: int, d: int, n: int, seed: int = 0) -> Path:
    """n_models vindexes of `pooled` rows only: a shared low-rank signal plus per-model noise and a
    random rotation, so layers of different models really are related (CKA well above its null)."""
    import numpy as np

    from vindex import VindexWriter
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, 32))
    for m in range(n_models):
        width = d if m % 2 == 0 else d // 2          # mixed widths, as real lakes have
        w = VindexWriter.create(root / f"model{m:02d}", f"model{m:02d}",
                                {"id": f"bench/model{m:02d}", "family": "synthetic", "n_layers": layers,
                                 "d_model": width})
        w.declare_vectors("pooled", width, "float16")
        entries = []
        for layer in range(layers + 1):
            mix = rng.standard_normal((32, width)) * (1 + layer / layers)
            act = signal @ mix + rng.standard_normal((n, width)) * (0.5 + layer / layers)
            entries.append(w.write_shard("pooled", {"prompt_set": ["bench"] * n, "prompt_id": np.arange(n),
                                                    "pooling": ["mean"] * n, "act": act},
                                         {"layer": layer}, 0, commit=False))
        w.add_files("pooled", entries)
    return root


def run_sql_pairs(lake: Path):
    import itertools

    from vindex.query import connect
    from vindex.query.analyses import cka_matrix
    con = connect(lake)
    models = sorted(r[0] for r in con.sql("SELECT model FROM models").fetchall())
    return {(a, b): cka_matrix(con, a, b) for a, b in itertools.combinations(models, 2)}


def run_cka_all(lake: Path, ray):
    from vindex.query.lake_cka import cka_all
    return cka_all(lake, ray=ray, progress=False)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def check_same(table, sql_pairs, ray_table) -> float:
    """Largest |difference| of cka between cka_all (local), cka_all (ray) and the SQL pairs."""
    worst = 0.0
    local = {(r["model_a"], r["model_b"], r["layer_a"], r["layer_b"]): r["cka"] for r in table.to_pylist()}
    if ray_table is not None:
        for r in ray_table.to_pylist():
            worst = max(worst, abs(r["cka"] - local[(r["model_a"], r["model_b"], r["layer_a"], r["layer_b"])]))
    for (a, b), t in sql_pairs.items():
        for r in t.to_pylist():
            worst = max(worst, abs(r["cka"] - local[(a, b, r["layer_a"], r["layer_b"])]))
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="2,4,8", help="lake sizes to run, comma-separated (>= 2 each)")
    ap.add_argument("--layers", type=int, default=12, help="n_layers per model (layers 0..L are stored)")
    ap.add_argument("--d", type=int, default=512, help="width of the even models (odd models: d/2)")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-sql", action="store_true", help="skip the pair-by-pair SQL baseline")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="threads of numpy's BLAS in this process (Ray workers use 1 each); on a machine "
                         "shared with other jobs, multithreaded OpenBLAS can spin and run many times slower")
    args = ap.parse_args(argv)
    if args.blas_threads:
        if "numpy" in sys.modules:
            ap.error("--blas-threads must be set before numpy is imported: run this file as a script")
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[k] = str(args.blas_threads)
    sizes = [int(x) for x in args.models.split(",")]
    if min(sizes) < 2:
        ap.error("--models: each lake needs >= 2 models")
    warnings.simplefilter("ignore")
    use_ray = not args.no_ray
    if use_ray:
        import ray
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        print(f"ray.init: {time.perf_counter() - t:.1f} s ({args.cpus} CPUs)", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    rows = []
    try:
        for m in sizes:
            lake = write_lake(tmp / f"lake{m}", m, args.layers, args.d, args.prompts)
            if use_ray:
                run_cka_all(lake, True)   # warm-up: worker processes start, imports happen
            times = {"sql-pairs": [], "local": [], "ray": []}
            worst = 0.0
            for _ in range(args.repeats):
                t_local, table = timed(run_cka_all, lake, None)
                times["local"].append(t_local)
                ray_table = sql = None
                if use_ray:
                    t_ray, ray_table = timed(run_cka_all, lake, True)
                    times["ray"].append(t_ray)
                if not args.no_sql:
                    t_sql, sql = timed(run_sql_pairs, lake)
                    times["sql-pairs"].append(t_sql)
                worst = max(worst, check_same(table, sql or {}, ray_table))
            med = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
            rows.append({"models": m, "pairs": m * (m - 1) // 2, "grams": m * (args.layers + 1),
                         "layer_pairs": table.num_rows, **med, "max_diff": worst})
            print(f"lake of {m} models done: " + ", ".join(f"{k} {v:.2f} s" for k, v in med.items()), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if use_ray:
            import ray
            ray.shutdown()

    print(f"\nall-pairs CKA, {args.layers + 1} layers per model, {args.prompts} prompts, d = {args.d}/{args.d // 2}, "
          f"median of {args.repeats}; ray = local Ray, {args.cpus} CPUs; BLAS threads here: "
          f"{args.blas_threads or 'default'}")
    head = (f"{'models':>6} {'pairs':>5} {'Grams':>5} {'sql-pairs s':>11} {'local s':>8} {'ray s':>7} "
            f"{'ray/local':>9} {'sql/local':>9} {'x models':>8} {'x pairs':>7} {'x local':>7} {'x ray':>6} "
            f"{'x sql':>6} {'max diff':>9}")
    print(head)
    prev = None
    for r in rows:
        g = (lambda k: r[k] / prev[k] if prev else float("nan"))
        print(f"{r['models']:>6} {r['pairs']:>5} {r['grams']:>5} {r['sql-pairs']:>11.2f} {r['local']:>8.2f} "
              f"{r['ray']:>7.2f} {r['ray'] / r['local']:>9.2f} {r['sql-pairs'] / r['local']:>9.2f} "
              f"{g('models'):>8.2f} {g('pairs'):>7.2f} {g('local'):>7.2f} {g('ray'):>6.2f} {g('sql-pairs'):>6.2f} "
              f"{r['max_diff']:>9.1e}")
        prev = r
    return rows


if __name__ == "__main__":
    main()
