"""Ingest throughput against the bare forward pass, same prompts, same batches, same run.

    python bench/bench_ingest.py smollm2-135m --repeats 3
    python bench/bench_ingest.py gemma3-270m --prompts heldout

baseline : the model's backbone over the same length-sorted batches `build()` uses, no hidden
           states kept, nothing written (the floor any ingest can reach)
ingest   : `build()` into a fresh folder, after its setup (model load, tokenization, plan; timed by
           build itself, LAST_TIMINGS), i.e. forward + capture + pooling + Parquet + manifest
ratio    : baseline / ingest (target >= 0.85), medians over --repeats interleaved runs, on wall
           time and on CPU time (all threads of this process: robust when other jobs share the cores)
peak RSS : of a separate `build()` process and of a process that only loads the model, so the
           difference is what ingest itself holds (target < 1 GiB for the default prompt set)
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bare_forward(model, tokenized, groups, pad_id) -> tuple[float, float]:
    """(wall s, CPU s) of the backbone over the batches, nothing kept."""
    import torch
    from vindex.ingest.activations import pad_batch
    backbone = getattr(model, "base_model", model)
    t, c = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for group in groups:
            for batch in group:
                ids, attn, _ = pad_batch([tokenized[i] for i in batch], pad_id)
                backbone(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(attn.astype("int64")),
                         use_cache=False)
    return time.perf_counter() - t, time.process_time() - c


def child_peak_rss_mb(code: str) -> float:
    """Run `code` in a fresh interpreter; its own peak RSS in MiB (ru_maxrss of that process)."""
    tail = "\nimport resource; print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", code + tail], check=True, capture_output=True, text=True).stdout
    return int(out.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", default="smollm2-135m")
    ap.add_argument("--prompts", default="default")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    args = ap.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)

    from vindex.ingest.activations import plan_groups, tokenize_prompts
    from vindex.ingest.builder import LAST_TIMINGS, build
    from vindex.ingest.prompts import load_prompts
    from vindex.ingest.sources import load_model, resolve_model

    src = resolve_model(args.source)
    ps = load_prompts(args.prompts)
    t = time.perf_counter()
    model, tok = load_model(src, progress=False)
    tokenized = tokenize_prompts(tok, ps.prompts, 256)
    setup = time.perf_counter() - t
    mm = src.manifest_model()
    shard_rows = 512 * 2**20 // (2 * (mm["n_layers"] + 1) * mm["d_model"] * (2 if args.dtype == "float16" else 4))
    groups = plan_groups(tokenized, args.batch_size, shard_rows)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    n_tokens = sum(len(x) for x in tokenized)

    bare_forward(model, tokenized, groups[:1], pad_id)  # warm-up (allocator, kernels)
    bare, ingest, bare_cpu, ingest_cpu, out_bytes = [], [], [], [], 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        for r in range(args.repeats):
            wall, cpu = bare_forward(model, tokenized, groups, pad_id)
            bare.append(wall)
            bare_cpu.append(cpu)
            out = tmp / f"run{r}"
            build(src.name, out, prompts=args.prompts, batch_size=args.batch_size, dtype=args.dtype,
                  progress=False)
            ingest.append(LAST_TIMINGS["run_s"])
            ingest_cpu.append(LAST_TIMINGS["run_cpu_s"])
            out_bytes = sum(f.stat().st_size for f in out.rglob("*.parquet"))
            shutil.rmtree(out)
            print(f"repeat {r}: bare {bare[-1]:.2f} s ({bare_cpu[-1]:.2f} CPU s), ingest {ingest[-1]:.2f} s "
                  f"({ingest_cpu[-1]:.2f} CPU s)", file=sys.stderr)
        b, i = statistics.median(bare), statistics.median(ingest)
        bc, ic = statistics.median(bare_cpu), statistics.median(ingest_cpu)
        result = {"model": src.name, "prompts": len(ps), "tokens": n_tokens, "batch_size": args.batch_size,
                  "threads": torch.get_num_threads(), "groups": len(groups),
                  "bare_forward_s": round(b, 3), "ingest_s": round(i, 3), "ratio_wall": round(b / i, 3),
                  "bare_forward_cpu_s": round(bc, 3), "ingest_cpu_s": round(ic, 3), "ratio_cpu": round(bc / ic, 3),
                  "setup_s": round(setup, 3), "prompts_per_s": round(len(ps) / i, 1),
                  "output_mib": round(out_bytes / 2**20, 1)}
        if not args.no_rss:
            load = (f"from vindex.ingest.sources import resolve_model, load_model; "
                    f"m, t = load_model(resolve_model({src.name!r}), progress=False)")
            model_rss = child_peak_rss_mb(load)
            out = tmp / "rss"
            build_rss = child_peak_rss_mb(
                f"from vindex.ingest import build; build({src.name!r}, {str(out)!r}, "
                f"prompts={args.prompts!r}, batch_size={args.batch_size}, dtype={args.dtype!r}, progress=False)")
            result.update(model_only_peak_rss_mib=round(model_rss), build_peak_rss_mib=round(build_rss),
                          ingest_extra_rss_mib=round(build_rss - model_rss))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
