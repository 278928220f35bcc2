"""Ingest throughput against the bare forward pass, same prompts, same batches, same run.

    python bench/bench_ingest.py smollm2-135m --repeats 3
    python bench/bench_ingest.py gemma3-270m --prompts heldout
    python bench/bench_ingest.py gemma3-270m --device cuda --compute-dtype bfloat16 --no-rss

floor    : the best forward over the same prompts, whatever our batch plan: the backbone over
           length-sorted batches of --floor-batch (default 32), no hidden states, nothing written,
           in --compute-dtype on --device (issue #18: measured against this, not our own plan)
plan     : the same backbone over the batches `build()` plans (for reference)
ingest   : `build()` into a fresh folder, after its setup (model load, tokenization, plan; timed by
           build itself, LAST_TIMINGS), i.e. forward + capture + pooling + Parquet + manifest
ratio    : floor / ingest (target >= 0.9), medians over --repeats interleaved runs, on wall
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
    device = next(model.parameters()).device
    t, c = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for group in groups:
            for batch in group:
                ids, attn, _ = pad_batch([tokenized[i] for i in batch], pad_id)
                backbone(input_ids=torch.from_numpy(ids).to(device),
                         attention_mask=torch.from_numpy(attn.astype("int64")).to(device), use_cache=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c


def sorted_batches(tokenized, batch_size: int) -> list[list[list[int]]]:
    """One group of length-sorted batches (longest first): the best plain plan for a forward pass."""
    order = sorted(range(len(tokenized)), key=lambda i: -len(tokenized[i]))
    return [[order[a:a + batch_size] for a in range(0, len(order), batch_size)]]


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
    ap.add_argument("--dtype", default="auto", choices=["auto", "float16", "float32"],
                    help="activation storage, as build()'s (auto: float16 unless the states overflow it)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    ap.add_argument("--floor-batch", type=int, default=32, help="batch size of the best-forward floor")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="dtype the model runs in, for the floor and for build()")
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
    model, tok = load_model(src, dtype=getattr(torch, args.compute_dtype), device=args.device, progress=False)
    tokenized = tokenize_prompts(tok, ps.prompts, 256)
    setup = time.perf_counter() - t
    mm = src.manifest_model()
    shard_rows = 512 * 2**20 // (2 * (mm["n_layers"] + 1) * mm["d_model"] * (4 if args.dtype == "float32" else 2))
    groups = plan_groups(tokenized, args.batch_size, shard_rows)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    n_tokens = sum(len(x) for x in tokenized)

    floor_plan = sorted_batches(tokenized, args.floor_batch)
    bare_forward(model, tokenized, [floor_plan[0][:1]], pad_id)  # warm-up (allocator, kernels)
    bare, plan, ingest, bare_cpu, plan_cpu, ingest_cpu, out_bytes = [], [], [], [], [], [], 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        for r in range(args.repeats):
            wall, cpu = bare_forward(model, tokenized, floor_plan, pad_id)
            bare.append(wall)
            bare_cpu.append(cpu)
            wall, cpu = bare_forward(model, tokenized, groups, pad_id)
            plan.append(wall)
            plan_cpu.append(cpu)
            out = tmp / f"run{r}"
            build(src.path if src.kind == "folder" else src.name, out, name=src.name, prompts=args.prompts,
                  batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                  compute_dtype=args.compute_dtype, progress=False)
            ingest.append(LAST_TIMINGS["run_s"])
            ingest_cpu.append(LAST_TIMINGS["run_cpu_s"])
            out_bytes = sum(f.stat().st_size for f in out.rglob("*.parquet"))
            shutil.rmtree(out)
            print(f"repeat {r}: floor (batch {args.floor_batch}) {bare[-1]:.2f} s ({bare_cpu[-1]:.2f} CPU s), "
                  f"our plan's forward {plan[-1]:.2f} s, ingest {ingest[-1]:.2f} s ({ingest_cpu[-1]:.2f} CPU s)",
                  file=sys.stderr)
        b, p, i = statistics.median(bare), statistics.median(plan), statistics.median(ingest)
        bc, ic = statistics.median(bare_cpu), statistics.median(ingest_cpu)
        result = {"model": src.name, "prompts": len(ps), "tokens": n_tokens, "batch_size": args.batch_size,
                  "floor_batch": args.floor_batch, "device": args.device, "compute_dtype": args.compute_dtype,
                  "threads": torch.get_num_threads(), "groups": len(groups),
                  "floor_forward_s": round(b, 3), "plan_forward_s": round(p, 3), "ingest_s": round(i, 3),
                  "ratio_wall": round(b / i, 3), "ratio_wall_per_repeat": [round(x / y, 3) for x, y in zip(bare, ingest)],
                  "floor_forward_cpu_s": round(bc, 3), "ingest_cpu_s": round(ic, 3), "ratio_cpu": round(bc / ic, 3),
                  "target": ">= 0.9", "setup_s": round(setup, 3), "prompts_per_s": round(len(ps) / i, 1),
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
