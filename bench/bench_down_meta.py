"""Benchmark: down_meta extraction against the bare float32 matmul + top-k it needs (same run).

    python bench/bench_down_meta.py [--model smollm2-135m] [--repeats 3] [--rss-model gemma3-270m] [--blocks N]

Baseline: for every layer, W_down (d, F) in 256-feature chunks against the float32 embedding
(V, d) with torch matmul + torch.topk (the fastest bare form here; numpy matmul + argpartition is
printed too). Extraction: `build_weights(..., tables=("features",))` into a fresh folder, which
also reads the weights from safetensors, computes the per-feature stats, decodes tokens and
writes and checksums the Parquet shards. Reported: median seconds of each, the median of the
per-repeat ratios (each repeat runs baseline and extraction back to back, so a machine shared
with other jobs hits both alike; target <= 1.3), and the peak RSS of a fresh process running the extraction alone, for the model and
for a large-vocabulary model (target: under the embedding's float32 size + 1.5 GiB).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

GiB = 1 << 30


def _cpu_seconds() -> float:
    """CPU time of this process, all threads: steadier than wall time on a machine shared with other jobs."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bare_torch(emb, downs, k, chunk=256):
    import torch
    u = torch.from_numpy(emb)
    with torch.inference_mode():
        for down in downs:
            dt = torch.from_numpy(np.ascontiguousarray(down.T))
            for a in range(0, dt.shape[0], chunk):
                torch.topk(dt[a:a + chunk] @ u.T, k, dim=1)


def bare_numpy(emb, downs, k, chunk=256):
    for down in downs:
        for a in range(0, down.shape[1], chunk):
            logits = emb @ down[:, a:a + chunk]
            np.argpartition(logits, -k, axis=0)[-k:]


def extraction(model, k, blocks, **kw):
    from vindex.ingest import build_weights
    with tempfile.TemporaryDirectory() as tmp:
        build_weights(model, f"{tmp}/vx", top_k=k, tables=("features",), layers=list(range(1, blocks + 1)),
                      progress=False, **kw)


def peak_rss(model: str, k: int) -> dict:
    """Peak RSS of a fresh process that runs only the extraction (and the model's embedding size)."""
    code = f"""
import json, resource, tempfile
from vindex.ingest import build_weights
from vindex.ingest.sources import resolve_model
from vindex.ingest.checkpoint import ModelWeights
src = resolve_model({model!r}, progress=False)
w = ModelWeights(src.path, src.config)
info = w.files.info(w.embedding_name)
with tempfile.TemporaryDirectory() as tmp:
    build_weights(src, tmp + "/vx", top_k={k}, tables=("features",), progress=False)
print(json.dumps({{"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "embedding_f32": info.shape[0] * info.shape[1] * 4, "vocab": info.shape[0],
                  "d_model": info.shape[1], "stored_dtype": info.dtype}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rss-model", default="gemma3-270m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--blocks", type=int, help="only the first N blocks (default: all)")
    ap.add_argument("--no-numpy", action="store_true", help="skip the (slow) numpy baseline")
    args = ap.parse_args(argv)

    from vindex.ingest.sources import resolve_model
    from vindex.ingest.checkpoint import ModelWeights
    from vindex.ingest.down_meta import unembedding_matrix

    src = resolve_model(args.model)
    w = ModelWeights(src.path, src.config)
    emb = unembedding_matrix(w, "embedding").matrix
    blocks = args.blocks or w.n_layers
    downs = [b.down for i in range(blocks) for b in w.ffn(i)]
    print(f"{args.model}: {blocks} of {w.n_layers} blocks, vocab {emb.shape[0]}, d {emb.shape[1]}, "
          f"{sum(d.shape[1] for d in downs)} features; top-{args.top_k}; median of {args.repeats}", flush=True)

    runs = [("bare torch", lambda: bare_torch(emb, downs, args.top_k)),
            ("extraction", lambda: extraction(src, args.top_k, blocks)),
            ("extraction (no vectors)", lambda: extraction(src, args.top_k, blocks, vectors=None))]
    if not args.no_numpy:
        runs.append(("bare numpy", lambda: bare_numpy(emb, downs, args.top_k)))
    times = {label: [] for label, _ in runs}
    cpu = {label: [] for label, _ in runs}
    for _ in range(args.repeats):      # interleaved, so load changes hit all alike
        for label, fn in runs:
            t, c = time.perf_counter(), _cpu_seconds()
            fn()
            times[label].append(time.perf_counter() - t)
            cpu[label].append(_cpu_seconds() - c)
        print("  repeat: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    for label in times:
        print(f"  {label:26s} {statistics.median(times[label]):7.2f} s wall, "
              f"{statistics.median(cpu[label]):7.2f} s cpu (medians)")
    for label in ("extraction", "extraction (no vectors)"):
        ratios = [e / b for e, b in zip(times[label], times["bare torch"])]
        cpu_ratios = [e / b for e, b in zip(cpu[label], cpu["bare torch"])]
        print(f"ratio {label} / bare torch: {statistics.median(ratios):.2f} wall (per repeat "
              f"{', '.join(f'{r:.2f}' for r in ratios)}), {statistics.median(cpu_ratios):.2f} cpu; target <= 1.3",
              flush=True)

    for model in dict.fromkeys([args.model, args.rss_model]):
        r = peak_rss(model, args.top_k)
        limit = r["embedding_f32"] + 1.5 * GiB
        print(f"peak RSS {model} (vocab {r['vocab']}, embedding {r['embedding_f32'] / GiB:.2f} GiB float32, "
              f"stored {r['stored_dtype']}): {r['peak_rss'] / GiB:.2f} GiB; limit embedding + 1.5 GiB = "
              f"{limit / GiB:.2f} GiB -> {'ok' if r['peak_rss'] <= limit else 'OVER'}", flush=True)


if __name__ == "__main__":
    main()
