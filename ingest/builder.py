"""Build a vindex: `build()` writes activations over a prompt set, `build_weights()` the weight tables.

Both run on this machine unless the caller passes `ray=` (then `vindex.ingest.on_ray` runs them).

    from vindex.ingest import build, build_weights
    root = build("smollm2-135m")                               # -> lake/smollm2-135m
    root = build("path/to/hf-folder", "lake/mine", layers="0-8,12", dtype="float32")
    build_weights("smollm2-135m", "lake/smollm2-135m", top_k=20)

Tables written: `prompts` (the prompt set), `activations` (one row per prompt x layer x real
token, padding never stored) and `pooled` (one row per prompt x layer x pooling rule).

How it stays bounded and resumable: the prompts are tokenized up front and packed into shard
groups of length-sorted batches (`plan_groups`), each at most `shard_rows` token rows, so only
one group's states (all selected layers) are held in memory. A group ends with one shard per
layer per table and ONE manifest commit listing them all; a killed build (even kill -9) leaves
whole groups committed, and a rerun with the same arguments recomputes the same plan, skips the
committed groups, and overwrites any orphan shard of the group that was cut off. Forward passes
are deterministic for a fixed batch, so the result equals an uninterrupted run.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vindex.defaults import DEFAULT_DTYPE, DEFAULT_VECTORS

from vindex.errors import DeviceUnavailable, InvalidValue

from .activations import DEFAULT_POOLINGS, HiddenStates, SiteStates, TokenText
from .capture import (DEFAULT_FEATURE_THRESHOLD, DEFAULT_FEATURE_TOP_K, auto_dtype, capture_group, commit_group,
                      submit_group, writer_threads)
from .families import MOE_FAMILIES
from .sites import DEFAULT_SITES, router
from .plan import group_done, plan_job, prepare_vindex, print_summary, progress_bar, resolve_job
from .sources import load_model
from .weights import TABLES, open_weights_vindex, resolve_weights_source, write_weights

# wall / CPU seconds of the last build() in this process, split at the end of its setup (model
# load, tokenization, plan): bench/bench_ingest.py compares run_s with the bare forward pass
LAST_TIMINGS: dict = {}


def build(source=None, out=None, *, model=None, tokenizer=None, name: str | None = None, prompts="default",
          layers=None, sites="resid_post", feature_top_k=DEFAULT_FEATURE_TOP_K,
          feature_threshold: float = DEFAULT_FEATURE_THRESHOLD, routing: bool | None = None,
          compute_dtype: str | None = None,
          dtype: str = DEFAULT_DTYPE, batch_size: int = 16, max_tokens: int = 256,
          poolings=DEFAULT_POOLINGS, resume: bool = True, progress: bool = True,
          trust_remote_code: bool = False, chat_template: bool = False, prompt_set_name: str | None = None,
          device: str | None = None, buffer_mb: int = 512, shard_rows: int | None = None,
          cache_dir=None, ray=None, actors: int | None = None, gpus_per_actor: float | None = None,
          weights: bool = False) -> Path:
    """Build (or resume) the activations of `source` over a prompt set; returns the vindex folder.

    source: a HF folder, .gguf file, Hub id or offline name (see `resolve_model`); or none, and
    model / tokenizer: a transformers model object already loaded, with its tokenizer (your own model;
      provenance recorded from the object, see `vindex.ingest.model_object`; name= where the config has
      no name_or_path). It runs on its own device and dtype; vindex never moves or casts it.
    out: the vindex folder (default lake/<name>); it may already hold other tables (weights).
    prompts: "default", "heldout", a file (JSONL/CSV/Parquet/txt), a PromptSet, a list of strings or
      dicts, a polars/pandas DataFrame or a datasets.Dataset (a 'text' or 'prompt' column).
    layers: "0-8,12", a list, or None for all (0 = embeddings, n_layers = last block).
    sites: TransformerLens site names ("resid_post,attn_out,mlp_out", a list, or "all"): resid_pre,
      attn_out, resid_mid, mlp_out, resid_post go to activations/pooled (with a `site` column);
      mlp_post to feature_acts (top `feature_top_k` features per token by |activation|, or 'all' =
      dense) and feature_stats (sums per feature; n_above counts |activation| > feature_threshold).
      resid_post alone (the default) reads output_hidden_states (last layer after the final norm);
      any other choice reads every site by forward hooks (resid_post raw, as in TransformerLens).
    routing: write the `routing` table (the router's top-k experts per token); None = for MoE
      models; True on a dense model is a NotMoE error.
    compute_dtype: float32 (default for a loaded source), bfloat16 or float16: the dtype the model
      runs in (stored vectors: `dtype`).
    dtype: stored vector type: float16 (default), float32, or auto (float16 unless a probe batch
      of the longest prompts comes within 2x of float16's range); norms are always float32.
    batch_size / max_tokens: prompts per forward pass; tokens kept per prompt (truncated).
    poolings: any of mean, last, mean_nosink (rules recorded in the manifest).
    resume: continue a build cut off earlier (its arguments must match); False rebuilds this
      prompt set's activations from scratch.
    buffer_mb: memory for buffered states (two shard groups: one computing, one being written);
      sets `shard_rows` (token rows per shard) unless given.
    ray: run on a Ray cluster (True, or its address; see vindex.ingest.on_ray), with `actors`
      model copies of `gpus_per_actor` GPUs each; same shards, one manifest commit at the end.
    weights: also write the weight tables (features, ov_gate, layer_stats) with
      `build_weights`' defaults (use it directly for other options).
    """
    if (source is None) == (model is None):
        raise InvalidValue("build: give a model source (folder, .gguf, Hub id, offline name) or model= (a loaded "
                           "transformers model, with tokenizer=), not " + ("both" if model is not None else "neither"))
    if model is not None:
        from .model_object import from_object
        source = from_object(model, tokenizer, name)
    if ray is not None and ray is not False:
        if model is not None or tuple(sites) != DEFAULT_SITES and sites != ",".join(DEFAULT_SITES) or routing \
                or compute_dtype not in (None, "float32"):
            raise InvalidValue("ray: the Ray path builds resid_post from a model source in float32; build sites, "
                               "routing, other compute dtypes or a model object on one machine (ray=None)")
        from .on_ray import build_on_ray
        root = build_on_ray(
            source, out, address=ray, actors=actors, gpus_per_actor=gpus_per_actor, name=name, prompts=prompts,
            layers=layers, dtype=dtype, batch_size=batch_size, max_tokens=max_tokens, poolings=poolings,
            resume=resume, progress=progress, trust_remote_code=trust_remote_code, chat_template=chat_template,
            prompt_set_name=prompt_set_name, device=device, buffer_mb=buffer_mb, shard_rows=shard_rows,
            cache_dir=cache_dir)
        if weights:
            build_weights(source, root, address=ray, name=name, resume=resume, progress=progress)
        return root
    t0, c0 = time.perf_counter(), time.process_time()
    import torch
    own = model is not None
    if own:
        own_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        if compute_dtype not in (None, own_dtype):
            raise InvalidValue(f"compute_dtype {compute_dtype!r}: the model object runs in {own_dtype}, and vindex "
                               f"never casts your model; cast it first (model.to(torch.{compute_dtype}))")
        compute_dtype = own_dtype
    job = resolve_job(source, out, name=name, prompts=prompts, prompt_set_name=prompt_set_name, layers=layers,
                      dtype=dtype, batch_size=batch_size, max_tokens=max_tokens, poolings=poolings,
                      trust_remote_code=trust_remote_code, cache_dir=cache_dir, progress=progress, sites=sites,
                      feature_top_k=feature_top_k, feature_threshold=feature_threshold, routing=routing,
                      compute_dtype=compute_dtype or "float32")
    src, ps, layers, name, root, poolings, n_layers = (job.src, job.ps, job.layers, job.name, job.root,
                                                         job.poolings, job.n_layers)

    if own:
        tok, device = src.tokenizer, next(model.parameters()).device
    else:
        device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tok = load_model(src, dtype=getattr(torch, job.compute_dtype), device=device, progress=progress)
    if src.family in MOE_FAMILIES:
        job = job.with_routers([l for l in range(1, n_layers + 1) if router(model, src.family, l) is not None])
    tokenized, groups, shard_rows = plan_job(job, tok, chat_template=chat_template, buffer_mb=buffer_mb,
                                             shard_rows=shard_rows)
    spec = job.spec
    if spec.sites == DEFAULT_SITES and not spec.routing_layers:
        runner = HiddenStates(model, device=device)     # the fast path: output_hidden_states
    else:
        reads = spec.vector_pairs(layers) + [("mlp_post", l) for l in spec.feature_layers(layers)]
        runner = SiteStates(model, src.family, reads, spec.routing_layers, device=device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    w, base, skip_done, dtype, extraction = prepare_vindex(
        job, groups, shard_rows, chat_template=chat_template, resume=resume,
        probe_dtype=lambda: auto_dtype(runner, tokenized, groups[0][0], layers, pad_id))

    t1, c1 = time.perf_counter(), time.process_time()    # setup (load, tokenize, plan) ends here
    done = [skip_done and group_done(w, layers, base + k, spec) for k in range(len(groups))]
    n_done = sum(len(b) for k, g in enumerate(groups) if done[k] for b in g)
    bar = progress_bar(len(ps), n_done, f"{name}/{ps.name}", progress)
    text = TokenText(tok)
    # Pipeline: while the writer threads compress and write group k, the model runs group k+1.
    # A group is committed (one manifest write) only once all its shards are on disk.
    pending = None
    with ThreadPoolExecutor(max_workers=writer_threads(), thread_name_prefix="vindex-write") as pool_ex:
        try:
            for k, group in enumerate(groups):
                if done[k]:
                    continue
                acts, pooled = capture_group(runner, tokenized, group, layers, poolings, dtype, pad_id, n_layers,
                                              bar, spec)
                if "hidden_states" not in extraction:
                    extraction["hidden_states"] = runner.convention()
                    w.update(extraction={"activations": extraction}, commit=False)
                if pending is not None:
                    commit_group(w, pending)
                pending = submit_group(w, ps.name, acts, pooled, layers, poolings, base + k, text, pool_ex)
            if pending is not None:
                commit_group(w, pending)
        finally:
            bar.close()
    w.manifest["prompt_sets"][ps.name]["complete"] = True
    w.commit()
    LAST_TIMINGS.update(setup_s=t1 - t0, setup_cpu_s=c1 - c0, run_s=time.perf_counter() - t1,
                        run_cpu_s=time.process_time() - c1)
    if progress:
        print_summary(w, ps, base, len(groups), time.perf_counter() - t0, len(ps) - n_done)
    if weights:
        if own:
            raise InvalidValue("weights=True: the weight tables read a checkpoint's safetensors; save the model "
                               "(save_pretrained) and run build_weights on the folder")
        build_weights(src, root, name=name, resume=resume, progress=progress)
    return root


def check_device(device: str) -> str:
    """`device`, or DeviceUnavailable when this machine has no such device (cuda without CUDA, mps without MPS)."""
    import torch
    kind = str(device).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                                f"{'a CPU-only build' if torch.version.cuda is None else 'no GPU visible'}); "
                                "use device='cpu' (--device cpu)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceUnavailable(f"device {device!r}: MPS is not available here; use device='cpu' (--device cpu)")
    if kind not in ("cpu", "cuda", "mps", "xpu"):
        raise DeviceUnavailable(f"device {device!r}: unknown device; use cpu, cuda[:N] or mps")
    return device


def build_weights(source, out: str | Path | None = None, *, name: str | None = None, top_k: int = 10,
                  unembedding: str = "embedding", ov_variants: Iterable[str] = ("o", "ov"),
                  feature_layers: str | int = "same", ov_top_k: int | None = None,
                  vectors: str | None = DEFAULT_VECTORS, vector_dtype: str = "float16",
                  tables: Iterable[str] = TABLES, layers=None, resume: bool = True,
                  progress: bool = True, ray=None, layers_per_task: int | None = None,
                  device: str | None = None) -> Path:
    """Write `features`, `ov_gate` and `layer_stats` for a model into the vindex at `out`.

    source: anything `resolve_model` takes (folder, GGUF, offline short name, Hub id) or a ModelSource.
    out: the vindex folder (default lake/<name>); an existing vindex of the same name is added to.
    top_k: tokens kept per feature (down_meta). ov_top_k: features kept per head (default top_k).
    unembedding: 'embedding' (raw W_E, LarQL) or 'lm_head' (real unembedding, final norm folded).
    ov_variants: 'o' (LarQL, W_gate W_O,h) and/or 'ov' (full OV circuit with W_V).
    feature_layers: couple heads into FFN gates of the 'same' block, of every 'later' block
        (itself included), or of the same and the next N-1 blocks (an int N >= 1).
    vectors: store each feature's W_gate row ('gate'), W_down column ('down') or nothing (None)
        in features.vector, as `vector_dtype`.
    layers: vindex layers to process (1..n_layers; 0 = the embedding's spectrum), as a list or a
        spec like "0-3,7"; default all.
    resume: skip shards already written with the same parameters; False rewrites them.
    ray: run on a Ray cluster (True, or its address), one task per `layers_per_task` layers; same
        shards, one manifest commit (see vindex.ingest.on_ray.build_weights_on_ray).
    device: where down_meta's matmuls run (default: cuda when available, else cpu; bf16 screened
        where it has bf16 matrix units, see vindex.ingest.down_meta); the other tables use numpy.
    Returns the vindex folder.
    """
    if ray is not None and ray is not False:
        from .on_ray import build_weights_on_ray
        return build_weights_on_ray(
            source, out, address=ray, layers_per_task=layers_per_task, name=name, layers=layers, resume=resume,
            progress=progress, top_k=top_k, unembedding=unembedding, ov_variants=ov_variants,
            feature_layers=feature_layers, ov_top_k=ov_top_k, vectors=vectors, vector_dtype=vector_dtype,
            tables=tables)
    import torch
    device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    src = resolve_weights_source(source)
    writer, weights = open_weights_vindex(src, out, name)
    write_weights(writer, weights, top_k=top_k, unembedding=unembedding, ov_variants=ov_variants,
                  feature_layers=feature_layers, ov_top_k=ov_top_k, vectors=vectors, vector_dtype=vector_dtype,
                  tables=tables, layers=layers, resume=resume, progress=progress, device=device)
    return writer.root
