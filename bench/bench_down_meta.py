"""Benchmark: down_meta extraction against the bare float32 matmul + top-k it needs (same run).

    python bench/bench_down_meta.py [--model smollm2-135m] [--repeats 3] [--rss-model gemma3-270m] [--blocks N]
    python bench/bench_down_meta.py --model gemma3-270m --blocks 4 --device cuda --no-numpy --no-rss
    python bench/bench_down_meta.py --model gemma3-270m --check-all      # auto (bf16 screen) ids == float32, every layer

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


def bare_torch(emb, downs, k, chunk=256, device="cpu"):
    import torch
    u = torch.from_numpy(emb).to(device)
    with torch.inference_mode():
        for down in downs:
            dt = torch.from_numpy(np.ascontiguousarray(down.T)).to(device)
            for a in range(0, dt.shape[0], chunk):
                torch.topk(dt[a:a + chunk] @ u.T, k, dim=1)
        if device != "cpu":
            torch.cuda.synchronize()


def check_all(model: str, k: int, device: str, blocks: int | None = None) -> None:
    """Every layer (or the first `blocks`), both unembeddings: the bf16 screen's ids against float32's."""
    from vindex.ingest.checkpoint import ModelWeights
    from vindex.ingest.down_meta import VocabularyScorer, output_directions, unembedding_matrix
    from vindex.ingest.sources import resolve_model
    src = resolve_model(model, progress=False)
    w = ModelWeights(src.path, src.config)
    for kind in ("embedding", "lm_head"):
        unemb = unembedding_matrix(w, kind)
        f32 = VocabularyScorer(unemb.matrix, compute="float32", device=device)
        auto = VocabularyScorer(unemb.matrix, compute="bfloat16", device=device)
        differ = n = 0
        max_dv = 0.0
        c32 = c16 = 0.0
        for b in range(blocks or w.n_layers):
            for block in w.ffn(b):
                directions = output_directions(w, block, b, unemb)
                t = _cpu_seconds()
                i32, v32 = f32.top_k(directions, k)
                t2 = _cpu_seconds()
                i16, v16 = auto.top_k(directions, k)
                c32, c16 = c32 + t2 - t, c16 + _cpu_seconds() - t2
                differ += int((i32 != i16).any(1).sum())
                n += len(i32)
                max_dv = max(max_dv, float(np.abs(v32 - v16).max()))
        print(f"{model} {kind}: bf16 screen vs float32 over {n} features: {differ} with other ids, max |logit "
              f"difference| {max_dv:.1e}, {auto.failed} failed checks scored in float32; cpu {c16:.1f} s vs "
              f"{c32:.1f} s ({c32 / max(c16, 1e-9):.2f}x)", flush=True)


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
        if kw.get("device", "cpu") != "cpu":
            import torch
            torch.cuda.synchronize()


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
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--device", default="cpu", help="torch device of the floor and the extraction (cpu, cuda)")
    ap.add_argument("--check-all", action="store_true",
                    help="only compare the bf16 screen's ids with float32 on every layer of --model, and exit")
    args = ap.parse_args(argv)
    if args.check_all:
        return check_all(args.model, args.top_k, args.device, args.blocks)

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

    from vindex.ingest.down_meta import VocabularyScorer
    print(f"extraction computes top-k as: {VocabularyScorer(emb[:1], device=args.device).describe()} for a tiny "
          f"vocabulary, {VocabularyScorer(emb, device=args.device).describe()['compute']} for this one "
          f"({args.device})", flush=True)
    dev = {"device": args.device}
    runs = [("bare torch", lambda: bare_torch(emb, downs, args.top_k, device=args.device)),
            ("extraction", lambda: extraction(src, args.top_k, blocks, **dev)),
            ("extraction (no vectors)", lambda: extraction(src, args.top_k, blocks, vectors=None, **dev))]
    if not args.no_numpy and args.device == "cpu":
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

    for model in dict.fromkeys([args.model, args.rss_model] if not args.no_rss else []):
        r = peak_rss(model, args.top_k)
        limit = r["embedding_f32"] + 1.5 * GiB
        print(f"peak RSS {model} (vocab {r['vocab']}, embedding {r['embedding_f32'] / GiB:.2f} GiB float32, "
              f"stored {r['stored_dtype']}): {r['peak_rss'] / GiB:.2f} GiB; limit embedding + 1.5 GiB = "
              f"{limit / GiB:.2f} GiB -> {'ok' if r['peak_rss'] <= limit else 'OVER'}", flush=True)


if __name__ == "__main__":
    main()
