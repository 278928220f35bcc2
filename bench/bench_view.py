"""Benchmark: the viewer's CKA (`vindex view`'s payload) vs `vindex cka --all` on a 20-model toy lake.

The floor is `cka_all` (`vindex cka --all`) computing the same matrices: every unordered pair, for
each estimator the page shows, with the same permutation null. The viewer also computes each
model's self-pair (A = B) and builds the rest of the page; both start from an empty Gram cache
(its entries deleted and the memory cleared before each run), so both compute each model's Grams
once. Prints medians of --repeats interleaved rounds and the ratio (issue #18: <= 1.2).

    python bench/bench_view.py                       # builds the lake in a temp folder
    python bench/bench_view.py --models 20 --permutations 99 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cka import build_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="lake folder (default: a temp folder)")
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--permutations", type=int, default=0)
    ap.add_argument("--estimators", default="biased,debiased")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time; cpu: CPU time of the process (all threads), which a machine "
                         "shared with other jobs inflates far less than wall time")
    args = ap.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    from vindex.query import connect, gram_cache
    from vindex.query.lake_cka import cka_all
    from vindex.view.payload import build_payload

    tmp = None if args.root else tempfile.TemporaryDirectory()
    root = args.root or Path(tmp.name)
    t0 = time.perf_counter()
    shapes = [(6 + i % 7, 64 + 32 * (i % 4)) for i in range(args.models)]   # 6-12 blocks, d 64-160
    names = [f"m{i:02d}" for i in range(args.models)]
    for i, (name, (blocks, d)) in enumerate(zip(names, shapes)):
        if not (root / name / "vindex.json").exists():
            build_model(root, name, blocks, d, args.prompts, i)
    estimators = args.estimators.split(",")
    print(f"lake: {args.models} models, {sum(b + 1 for b, _ in shapes)} layers, {args.prompts} prompts, "
          f"estimators {estimators}, permutations {args.permutations} (built in {time.perf_counter() - t0:.1f} s); "
          f"clock: {args.clock}")

    def cold():
        gram_cache.forget()
        for name in names:
            for p in (root / name / gram_cache.FOLDER).glob("*.parquet"):
                p.unlink()

    def view():
        return build_payload(connect(root), estimators=estimators, poolings=["mean"], permutations=args.permutations,
                             progress=False)

    def all_pairs():
        return [cka_all(root, pooling="mean", estimator=e, permutations=args.permutations, progress=False)
                for e in estimators]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        view(), all_pairs()   # warm the file system cache, imports, the shards' verified memo
        times = {"view": [], "cka --all": [], "connect": []}
        for _ in range(args.repeats):
            for name, fn in (("view", view), ("cka --all", all_pairs)):
                cold()
                t = clock()
                out = fn()
                times[name].append(clock() - t)
                if name == "view":
                    payload = out
        for _ in range(args.repeats):   # what of the view is `connect` (views, macros, shard checks), not CKA
            t = clock()
            connect(root).close()
            times["connect"].append(clock() - t)
    t_view, t_all, t_con = (statistics.median(times[k]) for k in ("view", "cka --all", "connect"))
    per_round = statistics.median(a / b for a, b in zip(times["view"], times["cka --all"]))
    n_mats = len(payload["cka"])
    print(f"cka --all (floor, {len(estimators)} run(s))  {t_all:7.2f} s")
    print(f"view payload ({n_mats} matrices)  {t_view:7.2f} s   ratio view / cka --all = {t_view / t_all:.2f} "
          f"(median of per-round ratios {per_round:.2f}; target <= 1.2)")
    print(f"  of which connect() {t_con:7.2f} s (views, macros, shard checks; cka --all needs none): view less "
          f"connect / cka --all = {(t_view - t_con) / t_all:.2f}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
