"""`--sites all` ingest against the bare forward pass with the same hooks and nothing written.

    python bench/bench_sites.py smollm2-135m --prompts heldout --repeats 3

floor    : the backbone over the same length-sorted batches `build()` uses, with the same forward hooks
           on every (site, layer) (SiteHooks, the MoE routers too) reading their values, nothing kept
           past the batch, nothing written (what any capture of these sites costs at least)
plain    : the same without hooks (the bare forward pass), for the hooks' own cost
ingest   : `build(sites='all')` into a fresh folder after its setup (LAST_TIMINGS): forward + hooks +
           capture + pooling + top-k + Parquet + manifest
resid    : `build()` with the default resid_post (the output_hidden_states fast path), for comparison
ratio    : floor / ingest (medians over --repeats interleaved runs, wall and CPU time)
bytes    : stored bytes per token per site (activations and pooled rows of each site, from the Parquet
           column chunks; feature_acts + feature_stats for mlp_post)
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def forward(model, family, tokenized, groups, pad_id, reads) -> tuple[float, float]:
    import torch
    from vindex.ingest.activations import pad_batch
    from vindex.ingest.sites import SiteHooks
    backbone = getattr(model, "base_model", model)
    t, c = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for group in groups:
            for batch in group:
                ids, attn, _ = pad_batch([tokenized[i] for i in batch], pad_id)
                with SiteHooks(model, family, reads=reads):
                    backbone(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(attn.astype("int64")),
                             use_cache=False)
    return time.perf_counter() - t, time.process_time() - c


def bytes_per_site(root: Path, n_tokens: int) -> dict:
    """Stored bytes per token of each site: its share of each activations/pooled file by rows (a
    layer's file holds one run of rows per site), and the mlp_post tables whole."""
    import pyarrow.parquet as pq
    out: dict[str, float] = {}
    for table in ("activations", "pooled"):
        for f in (root / "data" / table).rglob("*.parquet"):
            sites = pq.read_table(f, columns=["site"]).column("site").to_pylist()
            size = f.stat().st_size
            for s in set(sites):
                out[s] = out.get(s, 0) + size * sites.count(s) / len(sites)
    for table in ("feature_acts", "feature_stats"):
        out["mlp_post"] = out.get("mlp_post", 0) + sum(f.stat().st_size for f in (root / "data" / table).rglob("*.parquet"))
    return {s: b / n_tokens for s, b in sorted(out.items())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", default="smollm2-135m")
    ap.add_argument("--prompts", default="heldout")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from vindex.ingest import build
    from vindex.ingest.builder import LAST_TIMINGS
    from vindex.ingest.capture import CaptureSpec
    from vindex.ingest.plan import plan_job, resolve_job
    from vindex.ingest.sites import check_sites
    from vindex.ingest.sources import load_model

    job = resolve_job(args.source, None, name=None, prompts=args.prompts, prompt_set_name=None, layers=None,
                      dtype="float32", batch_size=args.batch_size, max_tokens=256, poolings="mean,last,mean_nosink",
                      trust_remote_code=False, cache_dir=None, progress=False, sites="all")
    model, tok = load_model(job.src, progress=False)
    tokenized, groups, _ = plan_job(job, tok, chat_template=False, buffer_mb=512, shard_rows=None)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    sites = check_sites("all", job.src.family)
    spec = CaptureSpec(sites=sites)
    reads = spec.vector_pairs(job.layers) + [("mlp_post", l) for l in spec.feature_layers(job.layers)]
    n_tokens = sum(map(len, tokenized))
    runs = {k: [] for k in ("plain", "floor", "ingest", "resid")}
    tmp = Path(tempfile.mkdtemp())
    root = None
    for r in range(args.repeats):
        runs["plain"].append(forward(model, job.src.family, tokenized, groups, pad, []))
        runs["floor"].append(forward(model, job.src.family, tokenized, groups, pad, reads))
        for key, sites_arg in (("ingest", "all"), ("resid", "resid_post")):
            out = tmp / f"{key}{r}"
            build(args.source, out, prompts=args.prompts, batch_size=args.batch_size, sites=sites_arg,
                  progress=False)
            runs[key].append((LAST_TIMINGS["run_s"], LAST_TIMINGS["run_cpu_s"]))
            if key == "ingest":
                root = out
            else:
                shutil.rmtree(out)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    print(f"{args.source}: {len(tokenized)} prompts, {n_tokens} tokens, {len(job.layers)} layers, sites {', '.join(sites)}")
    for k, (w, c) in med.items():
        print(f"  {k:<7} wall {w:7.2f} s   cpu {c:7.2f} s")
    print(f"  ratio floor/ingest: wall {med['floor'][0] / med['ingest'][0]:.2f}, cpu {med['floor'][1] / med['ingest'][1]:.2f}"
          f"   (hooks alone: plain/floor wall {med['plain'][0] / med['floor'][0]:.2f})")
    print("  stored bytes per token, per site (all layers):")
    for s, b in bytes_per_site(root, n_tokens).items():
        print(f"    {s:<11} {b:10.0f}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
