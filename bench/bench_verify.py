"""Benchmark: what checking shards against the manifest costs a `cka_matrix` (issue 14, defect 1).

The same lake as bench_cka.py (two synthetic vindexes shaped like Gemma 3 270M and Qwen2.5 0.5B,
256 prompts, float16 pooled shards, one per layer). Each round runs, interleaved so that machine
load hits all alike, `cka_matrix(root, ...)` from a fresh connection (connect + views + SQL):

    floor  verification switched off (`vindex.verified.unverified()`): the query as it was before
    cold   nothing remembered (memo files and the in-process memo cleared): every shard hashed
    warm   the memo from an earlier connect: every shard only stat-ed

and, on one connection made once, the query alone (connect verifies; the query itself never
does). Prints medians of --repeats rounds and the ratios to the floor (median of per-round
ratios too); the target is warm / floor <= 1.10.

    python bench/bench_verify.py
    python bench/bench_verify.py --repeats 15 --threads 1 --clock cpu
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_cka import build_model

import vindex.verified as V
from vindex.query import cka_matrix, connect


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="DuckDB and BLAS threads (default: their own)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time; cpu: CPU time of this process (all threads), which a machine "
                         "shared with other jobs inflates far less")
    args = ap.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VINDEX_CACHE"] = str(Path(tmp) / "cache")     # a memo of this run's own
        root = Path(tmp) / "lake"
        build_model(root, "bench-a", 18, 640, args.prompts, 1)
        build_model(root, "bench-b", 24, 896, args.prompts, 2)
        files = sorted(root.rglob("*.parquet"))
        mb = sum(f.stat().st_size for f in files) / 1e6
        time.sleep(V.RACY_SECONDS + 0.2)    # shards written just now are not remembered (timestamp ticks)
        print(f"lake: {len(files)} shards, {mb:.1f} MB; {args.repeats} interleaved rounds; "
              f"threads {args.threads or 'default'}; clock {args.clock}")

        def run():
            con = connect(root)
            if args.threads:
                con.execute(f"SET threads = {args.threads}")
            return cka_matrix(con, "bench-a", "bench-b").column("cka").to_pylist()

        def floor():
            with V.unverified():
                return run()

        def cold():
            V.forget(memo_files=True)
            return run()

        warm = run
        want = floor()
        assert cold() == want and warm() == want
        con = connect(root)
        query_only = lambda: cka_matrix(con, "bench-a", "bench-b").column("cka").to_pylist()  # noqa: E731
        fns = {"floor (unverified)": floor, "cold (hash all)": cold, "warm (memo)": warm,
               "query alone, one connection": query_only}
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, fn in fns.items():
                t0 = clock()
                fn()
                times[k].append(clock() - t0)
        base = times["floor (unverified)"]
        for k, ts in times.items():
            med = statistics.median(ts)
            ratio = med / statistics.median(base)
            per_round = statistics.median(a / b for a, b in zip(ts, base))
            print(f"  {k:30s} {med * 1e3:8.1f} ms   / floor {ratio:5.2f} (per-round {per_round:.2f})")
        t_hash = []
        for _ in range(3):
            V.forget(memo_files=True)
            t0 = clock()
            V.verify_shards((f, _entry(root, f)) for f in files)
            t_hash.append(clock() - t0)
        print(f"  verify_shards cold alone      {statistics.median(t_hash) * 1e3:8.1f} ms   "
              f"({mb / statistics.median(t_hash):.0f} MB/s)")
        time.sleep(V.RACY_SECONDS + 0.2)
        t_warm = []
        for _ in range(args.repeats):
            t0 = clock()
            V.verify_shards((f, _entry(root, f)) for f in files)
            t_warm.append(clock() - t0)
        print(f"  verify_shards warm alone      {statistics.median(t_warm) * 1e3:8.2f} ms   "
              f"({statistics.median(t_warm) / statistics.median(base):.1%} of the floor)")
        warm_ratio = statistics.median(a / b for a, b in zip(times["warm (memo)"], base))
        print(f"warm / floor = {warm_ratio:.2f} (target <= 1.10)")
    return 0


_ENTRIES: dict = {}


def _entry(root: Path, f: Path) -> dict:
    """The manifest entry of shard `f` (read once per vindex)."""
    vx = f.relative_to(root).parts[0]
    if vx not in _ENTRIES:
        m = json.loads((root / vx / "vindex.json").read_text())
        _ENTRIES[vx] = {e["path"]: e for t in m["tables"].values() for e in t["files"]}
    return _ENTRIES[vx][f.relative_to(root / vx).as_posix()]


if __name__ == "__main__":
    sys.exit(main())
