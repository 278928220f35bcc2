"""A patching sweep against the bare forward passes it needs: same batches, same run, nothing written.

    python bench/bench_patch.py smollm2-135m --pairs 2 --sites resid_post --repeats 3
    python bench/bench_patch.py smollm2-135m --pairs 78 --device cuda        # the whole shipped set on a GPU

baseline : the plain model (logits_to_keep=1, no hooks) over exactly the batches `patch()` runs: one
           batch per group of equal-length clean prompts, then the patched rows of the sweep batched by
           corrupted-prompt length (`sweep_batches`), nothing read, edited or written
patch    : `patch()` into a fresh folder, after its setup (model load, tokenizing; LAST_TIMINGS), i.e. the
           clean read pass, the patched forwards with their SiteHooks edits, the logit differences, the
           Parquet shards and manifest commits
ratio    : baseline / patch (target >= 0.8), medians over --repeats interleaved runs, wall and CPU time
sweep    : pairs x site-layers x positions = patched runs (plus one unpatched run per pair)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def bare_forwards(lm, enc, sweep, batch_size) -> tuple[float, float]:
    """(wall s, CPU s) of the plain model over the batches a sweep of `enc` runs."""
    import numpy as np
    import torch
    from vindex.ingest.intervention_runs import last_logits
    from vindex.ingest.patching import sweep_batches, sweep_rows
    rows = sweep_rows(enc, sweep)
    clean, patched = sweep_batches(enc, rows, batch_size)
    t, c = time.perf_counter(), time.process_time()
    for batch in clean:
        last_logits(lm.model, torch.as_tensor(np.stack([enc[i].clean_ids for i in batch]), device=lm.device))
    for batch in patched:
        last_logits(lm.model, torch.as_tensor(np.stack([enc[rows[r].pair].corrupt_ids for r in batch]),
                                              device=lm.device))
    if lm.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=2, help="the first N pairs of the shipped factual set")
    ap.add_argument("--sites", default="resid_post,attn_out,mlp_out")
    ap.add_argument("--layers", default=None)
    ap.add_argument("--positions", default="all")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)

    from vindex.ingest import patching
    from vindex.ingest.intervention_runs import load_lm
    from vindex.ingest.pairs import encode_pairs, load_pairs

    ps = load_pairs("factual")
    with tempfile.TemporaryDirectory(prefix="bench-patch-") as tmp:
        pairs = Path(tmp) / "pairs.jsonl"
        pairs.write_text("".join(json.dumps(vars(p)) + "\n" for p in ps.pairs[:args.pairs]))
        lm = load_lm(args.source, device=args.device, progress=False)
        n_layers = int(lm.src.manifest_model()["n_layers"])
        sweep = patching.site_layers(args.sites, args.layers, n_layers, lm.family)
        enc = encode_pairs(lm.tokenizer, load_pairs(pairs), args.positions)
        n_runs = sum(len(e.positions) for e in enc) * len(sweep)
        tokens = sum(len(e.corrupt_ids) * (1 + len(e.positions) * len(sweep)) + len(e.clean_ids) for e in enc)
        bare, job = [], []
        for k in range(args.repeats):
            bare.append(bare_forwards(lm, enc, sweep, args.batch_size))
            patching.patch(args.source, pairs, Path(tmp) / f"v{k}", sites=args.sites, layers=args.layers,
                           positions=args.positions, batch_size=args.batch_size, progress=False, device=lm.device)
            # the job's own setup (model load, tokenizing) is excluded, as build() does for bench_ingest
            job.append((patching.LAST_TIMINGS["run_s"], patching.LAST_TIMINGS["run_cpu_s"]))
    wall_b, cpu_b = statistics.median(b[0] for b in bare), statistics.median(b[1] for b in bare)
    wall_j, cpu_j = statistics.median(j[0] for j in job), statistics.median(j[1] for j in job)
    print(f"{args.source} on {lm.device}: {len(enc)} pairs x {len(sweep)} site-layers ({args.sites}) x "
          f"positions {args.positions} = {n_runs} patched runs ({tokens} tokens forwarded), batch {args.batch_size}")
    print(f"  baseline (bare forwards, same batches)  wall {wall_b:8.2f} s   cpu {cpu_b:8.2f} s")
    print(f"  patch() sweep (hooks, Parquet, commits)  wall {wall_j:8.2f} s   cpu {cpu_j:8.2f} s   "
          f"{n_runs / wall_j:.1f} patched runs/s")
    print(f"  ratio baseline / patch                   wall {wall_b / wall_j:8.2f}     cpu {cpu_b / cpu_j:8.2f}"
          f"     (target >= 0.8; medians of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
