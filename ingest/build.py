"""`build()`: run a model over a prompt set and write per-layer activations into a vindex.

    from vindex.ingest.build import build
    root = build("smollm2-135m")                               # -> lake/smollm2-135m
    root = build("path/to/hf-folder", "lake/mine", layers="0-8,12", dtype="float32")

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

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from vindex.errors import InvalidValue, ManifestError
from vindex.writer import VindexWriter
from .activations import (DEFAULT_POOLINGS, POOLINGS, HiddenStates, TokenText, check_poolings, pad_batch,
                          parse_layers, plan_groups, default_shard_rows, pooling_weights, tokenize_prompts)
from .prompts import PromptSet, load_prompts
from .sources import ModelSource, load_model, resolve_model

DTYPES = ("float16", "float32", "auto")
_FLOAT16_MAX = 65504.0
# wall / CPU seconds of the last build() in this process, split at the end of its setup (model
# load, tokenization, plan): bench/bench_ingest.py compares run_s with the bare forward pass
LAST_TIMINGS: dict = {}
SPECIAL_RULE = ("special = added by the tokenizer (BOS/EOS/CLS/SEP), any id in all_special_ids, or "
                "(with chat_template) outside the prompt text; char offsets are null for specials")


def build(source, out=None, *, name: str | None = None, prompts="default", layers=None,
          dtype: str = "float16", batch_size: int = 16, max_tokens: int = 256,
          poolings=DEFAULT_POOLINGS, resume: bool = True, progress: bool = True,
          trust_remote_code: bool = False, chat_template: bool = False, prompt_set_name: str | None = None,
          device: str | None = None, buffer_mb: int = 512, shard_rows: int | None = None,
          cache_dir=None, ray=None, actors: int | None = None, gpus_per_actor: float | None = None,
          weights: bool = False) -> Path:
    """Build (or resume) the activations of `source` over a prompt set; returns the vindex folder.

    source: a HF folder, .gguf file, Hub id or offline name (see `resolve_model`).
    out: the vindex folder (default lake/<name>); it may already hold other tables (weights).
    prompts: "default", "heldout", a file (JSONL/CSV/Parquet/txt) or a PromptSet.
    layers: "0-8,12", a list, or None for all (0 = embeddings, n_layers = last block).
    dtype: stored vector type: float16 (default), float32, or auto (float16 unless a probe batch
      of the longest prompts comes within 2x of float16's range); norms are always float32.
    batch_size / max_tokens: prompts per forward pass; tokens kept per prompt (truncated).
    poolings: any of mean, last, mean_nosink (rules recorded in the manifest).
    resume: continue a build cut off earlier (its arguments must match); False rebuilds this
      prompt set's activations from scratch.
    buffer_mb: memory for buffered states (two shard groups: one computing, one being written);
      sets `shard_rows` (token rows per shard) unless given.
    ray: run on a Ray cluster (True, or its address; see vindex.ingest.distributed), with `actors`
      model copies of `gpus_per_actor` GPUs each; same shards, one manifest commit at the end.
    weights: also write the weight tables (features, ov_gate, layer_stats) with
      `vindex.ingest.weights.build_weights`' defaults (use it directly for other options).
    """
    if ray is not None and ray is not False:
        from .distributed import build_distributed
        root = build_distributed(
            source, out, address=ray, actors=actors, gpus_per_actor=gpus_per_actor, name=name, prompts=prompts,
            layers=layers, dtype=dtype, batch_size=batch_size, max_tokens=max_tokens, poolings=poolings,
            resume=resume, progress=progress, trust_remote_code=trust_remote_code, chat_template=chat_template,
            prompt_set_name=prompt_set_name, device=device, buffer_mb=buffer_mb, shard_rows=shard_rows,
            cache_dir=cache_dir)
        if weights:
            from .distributed import build_weights_distributed
            build_weights_distributed(source, root, address=ray, name=name, resume=resume, progress=progress)
        return root
    t0, c0 = time.perf_counter(), time.process_time()
    job = resolve_job(source, out, name=name, prompts=prompts, prompt_set_name=prompt_set_name, layers=layers,
                      dtype=dtype, batch_size=batch_size, max_tokens=max_tokens, poolings=poolings,
                      trust_remote_code=trust_remote_code, cache_dir=cache_dir, progress=progress)
    src, ps, layers, name, root, poolings, n_layers = (job.src, job.ps, job.layers, job.name, job.root,
                                                         job.poolings, job.n_layers)

    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(src, device=device, progress=progress)
    tokenized, groups, shard_rows = plan_job(job, tok, chat_template=chat_template, buffer_mb=buffer_mb,
                                             shard_rows=shard_rows)
    runner = HiddenStates(model, device=device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    w, base, skip_done, dtype, extraction = prepare_vindex(
        job, groups, shard_rows, chat_template=chat_template, resume=resume,
        probe_dtype=lambda: _auto_dtype(runner, tokenized, groups[0][0], layers, pad_id))

    t1, c1 = time.perf_counter(), time.process_time()    # setup (load, tokenize, plan) ends here
    done = [skip_done and _group_done(w, layers, base + k) for k in range(len(groups))]
    n_done = sum(len(b) for k, g in enumerate(groups) if done[k] for b in g)
    bar = _progress(len(ps), n_done, f"{name}/{ps.name}", progress)
    text = TokenText(tok)
    # Pipeline: while the writer threads compress and write group k, the model runs group k+1.
    # A group is committed (one manifest write) only once all its shards are on disk.
    pending = None
    with ThreadPoolExecutor(max_workers=_writer_threads(), thread_name_prefix="vindex-write") as pool_ex:
        try:
            for k, group in enumerate(groups):
                if done[k]:
                    continue
                acts, pooled = _capture_group(runner, tokenized, group, layers, poolings, dtype, pad_id, n_layers,
                                              bar)
                if "hidden_states" not in extraction:
                    extraction["hidden_states"] = runner.convention()
                    w.update(extraction={"activations": extraction}, commit=False)
                if pending is not None:
                    _commit_group(w, pending)
                pending = _submit_group(w, ps.name, acts, pooled, layers, poolings, base + k, text, pool_ex)
            if pending is not None:
                _commit_group(w, pending)
        finally:
            bar.close()
    w.manifest["prompt_sets"][ps.name]["complete"] = True
    w.commit()
    LAST_TIMINGS.update(setup_s=t1 - t0, setup_cpu_s=c1 - c0, run_s=time.perf_counter() - t1,
                        run_cpu_s=time.process_time() - c1)
    if progress:
        _summary(w, ps, base, len(groups), time.perf_counter() - t0, len(ps) - n_done)
    if weights:
        from .weights import build_weights
        build_weights(src, root, name=name, resume=resume, progress=progress)
    return root


# -- the plan shared by build() and build_distributed() ---------------------------------------------

@dataclass(frozen=True)
class Job:
    """A build's resolved arguments: what both the local and the Ray path start from."""
    src: ModelSource
    ps: PromptSet
    layers: list[int]
    name: str
    root: Path
    dtype: str
    batch_size: int
    max_tokens: int
    poolings: tuple
    n_layers: int
    d: int


def resolve_job(source, out, *, name, prompts, prompt_set_name, layers, dtype, batch_size, max_tokens,
                poolings, trust_remote_code, cache_dir, progress) -> Job:
    """Check the arguments and resolve model, prompts, layers and folder (no model is loaded)."""
    if dtype not in DTYPES:
        raise InvalidValue(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if batch_size < 1 or max_tokens < 1:
        raise InvalidValue(f"batch_size ({batch_size}) and max_tokens ({max_tokens}) must be >= 1")
    poolings = check_poolings(poolings)
    ps = load_prompts(prompts, name=prompt_set_name) if not isinstance(prompts, PromptSet) else prompts
    src = resolve_model(source, trust_remote_code=trust_remote_code, cache_dir=cache_dir, progress=progress)
    mm = src.manifest_model()
    n_layers, d = int(mm["n_layers"]), int(mm["d_model"])
    name = name or src.name
    root = Path(out) if out is not None else Path("lake") / name
    return Job(src, ps, parse_layers(layers, n_layers), name, root, dtype, batch_size, max_tokens,
               poolings, n_layers, d)


def plan_job(job: Job, tok, *, chat_template: bool, buffer_mb: int, shard_rows: int | None):
    """Tokenize and pack into shard groups: (tokenized, groups, shard_rows); a pure function of the inputs."""
    itemsize = 2 if job.dtype == "float16" else 4   # auto plans for float32
    tokenized = tokenize_prompts(tok, job.ps.prompts, job.max_tokens, chat_template=chat_template)
    shard_rows = shard_rows or default_shard_rows(buffer_mb, len(job.layers), job.d, itemsize,
                                                  sum(map(len, tokenized)))
    return tokenized, plan_groups(tokenized, job.batch_size, shard_rows), shard_rows


def prepare_vindex(job: Job, groups, shard_rows: int, *, chat_template: bool, resume: bool, probe_dtype):
    """Open the vindex and record the build before any shard: params, parts, vector types, prompts.

    Returns (writer, base part, skip_done, the stored dtype, the extraction record).
    `probe_dtype()` decides dtype='auto' (float32 where states exceed float16) when no earlier
    build of this vindex already fixed it.
    """
    ps, mm = job.ps, job.src.manifest_model()
    params = {"prompt_sha256": ps.sha256, "model_id": job.src.model_id, "model_revision": job.src.revision,
              "layers": job.layers, "dtype": job.dtype, "batch_size": job.batch_size,
              "max_tokens": job.max_tokens, "poolings": list(job.poolings), "chat_template": chat_template,
              "shard_rows": shard_rows}
    w = _open_vindex(job.root, job.name, mm)
    base, skip_done = _reserve_parts(w, ps, params, len(groups), resume)
    for table in ("activations", "pooled"):   # a vector type declared by a build that wrote nothing binds nobody
        t = w.manifest["tables"].get(table)
        if t is not None and not t["files"]:
            t["vector_width"] = t["vector_dtype"] = None
    dtype = job.dtype
    if dtype == "auto":
        dtype = w.manifest["tables"].get("activations", {}).get("vector_dtype") or probe_dtype()
    w.declare_vectors("activations", job.d, dtype)
    w.declare_vectors("pooled", job.d, dtype)
    if not w.has_shard("prompts", {"prompt_set": ps.name}, 0):
        w.add_files("prompts", [w.write_shard("prompts", ps.rows(), {"prompt_set": ps.name}, 0, commit=False)],
                    commit=False)
    extraction = dict(w.manifest["extraction"].get("activations") or {})
    extraction.update({
        "layers": job.layers, "dtype": dtype, "dtype_requested": job.dtype, "compute_dtype": "float32",
        "max_tokens": job.max_tokens, "batch_size": job.batch_size, "padding": "right; padding never stored",
        "chat_template": chat_template,
        "poolings": {p: POOLINGS[p] for p in job.poolings}, "special_tokens": SPECIAL_RULE,
        "norm": "L2 norm of the float32 hidden state of the token", "prompt_set": ps.name,
        "prompt_set_sha256": ps.sha256})
    w.update(extraction={"activations": extraction})
    return w, base, skip_done, dtype, extraction


# -- manifest bookkeeping -------------------------------------------------------------------------

def _open_vindex(root: Path, name: str, mm: dict) -> VindexWriter:
    w = VindexWriter.create(root, name, model={k: v for k, v in mm.items() if v is not None}, exist_ok=True)
    have = w.manifest["model"].get("id")
    if have != mm["id"]:
        raise ManifestError(f"{root}: this vindex holds model {have!r}, not {mm['id']!r}; choose another out folder")
    w.update(model={k: v for k, v in mm.items() if v is not None}, commit=False)
    return w


def _reserve_parts(w: VindexWriter, ps: PromptSet, params: dict, n_parts: int, resume: bool):
    """Part numbers of this prompt set's shards: [base, base + n_parts). Returns (base, may_skip).

    Prompt sets share the activations/pooled folders (partitioned by layer only), so each set
    owns a contiguous range of part numbers, recorded in the manifest.
    """
    sets = w.manifest["prompt_sets"]
    prev = sets.get(ps.name)
    others_end = max((s.get("part_base", 0) + s.get("n_parts", 0) for n, s in sets.items() if n != ps.name),
                     default=0)
    if prev is not None and prev.get("build") == params and resume:
        base, may_skip = prev["part_base"], True
    else:
        if prev is not None and resume and prev.get("build") is not None:
            old = prev["build"]
            diff = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
            raise InvalidValue(
                f"{w.root}: prompt set {ps.name!r} was built with other arguments "
                f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); pass resume=False "
                "(--no-resume) to rebuild it, or another out folder / prompt set name")
        if prev is not None:
            _drop_parts(w, prev.get("part_base", 0), prev.get("n_parts", 0))
            base = prev.get("part_base", 0) if n_parts <= prev.get("n_parts", 0) else others_end
        else:
            base = others_end
        may_skip = False
    w.add_prompt_set(ps.name, ps.sha256, len(ps), commit=False, categories=ps.categories(), source=ps.source,
                     part_base=base, n_parts=n_parts, build=params, complete=False)
    return base, may_skip


def _drop_parts(w: VindexWriter, base: int, n: int) -> None:
    """Forget (and delete) a prompt set's old activation/pooled shards before a rebuild."""
    from vindex.files import safe_join
    wanted = {f"part-{p:05d}.parquet" for p in range(base, base + n)}
    for table in ("activations", "pooled"):
        t = w.manifest["tables"].get(table)
        if not t:
            continue
        keep = []
        for e in t["files"]:
            if e["path"].rsplit("/", 1)[-1] in wanted:
                safe_join(w.root, e["path"]).unlink(missing_ok=True)
            else:
                keep.append(e)
        t["files"] = keep
    w.commit()


def _group_done(w: VindexWriter, layers, part: int) -> bool:
    return all(w.has_shard(t, {"layer": l}, part) for t in ("activations", "pooled") for l in layers)


# -- capture and write ----------------------------------------------------------------------------

def _auto_dtype(runner, tokenized, batch, layers, pad_id) -> str:
    """float16 unless the longest prompts' states come within 2x of its range (65504), else float32.

    Some models carry massive activations (gemma3-270m reaches |x| ~ 7e4 in its middle layers),
    which float16 cannot hold; one probe batch of the longest prompts decides before anything is written.
    """
    ids, attn, _ = pad_batch([tokenized[i] for i in batch], pad_id)
    hs = runner.run(ids, attn)
    m = runner.torch.from_numpy(attn).to(hs[0].device)
    amax = max(float(hs[l][m].abs().amax()) for l in layers)
    return "float16" if amax < _FLOAT16_MAX / 2 else "float32"


def _writer_threads() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))


def _capture_group(runner, tokenized, group, layers, poolings, dtype, pad_id, n_layers, bar):
    """Forward every batch of a group -> (acts, pooled): per layer, token rows and pooled vectors.

    acts = {"tokens": [TokenizedPrompt...], "acts": {layer: [arrays]}, "norms": {layer: [arrays]}},
    pooled = {layer: [[B, P, d] arrays]}, in batch order (`_submit_group` sorts by prompt_id).
    Also used by vindex.ingest.distributed's actors.
    """
    import torch
    store = torch.float16 if dtype == "float16" else torch.float32
    acts = {l: [] for l in layers}
    norms = {l: [] for l in layers}
    pooled = {l: [] for l in layers}
    toks_all = []
    for batch in group:
        toks = [tokenized[i] for i in batch]
        ids, attn, content = pad_batch(toks, pad_id)
        hs = runner.run(ids, attn)
        if len(hs) != n_layers + 1:
            raise InvalidValue(f"the model returned {len(hs)} hidden states, its config says {n_layers} layers + 1")
        dev = hs[0].device
        flat = torch.from_numpy(np.flatnonzero(attn)).to(dev)                 # real tokens, row-major
        weights = pooling_weights(torch.from_numpy(content).to(dev), poolings)  # [B, P, T]
        for l in layers:
            h = hs[l].float()                                                   # [B, T, d]
            sel = h.reshape(-1, h.shape[-1]).index_select(0, flat)              # [N, d]
            lo, hi = torch.aminmax(sel)
            amax = max(-float(lo), float(hi))
            if not np.isfinite(amax) or (store == torch.float16 and amax > _FLOAT16_MAX):
                what = "NaN/inf" if not np.isfinite(amax) else f"|x| up to {amax:.4g}, beyond float16"
                raise InvalidValue(f"layer {l}: hidden states hold {what}" +
                                   ("; rebuild with dtype='float32' or 'auto' (--dtype float32|auto)"
                                    if np.isfinite(amax) else ""))
            norms[l].append(torch.linalg.vector_norm(sel, dim=-1).cpu().numpy())
            acts[l].append(sel.to(store).cpu().numpy())
            pooled[l].append((weights @ h).to(store).cpu().numpy())           # [B, P, d]
        toks_all.extend(toks)
        bar.update(len(batch))
    return {"tokens": toks_all, "acts": acts, "norms": norms}, pooled


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _write_group(w, prompt_set, acts, pooled, layers, poolings, part, text) -> None:
    """Write a captured group's shards and commit them, in this thread (distributed actors use it)."""
    _commit_group(w, _submit_group(w, prompt_set, acts, pooled, layers, poolings, part, text))


def _submit_group(w, prompt_set, captured, pooled, layers, poolings, part, text, pool_ex=None):
    """Write one shard per layer per table, uncommitted: on `pool_ex`'s threads when given (returns
    futures), else right here. Each layer's arrays are released once its shards are written."""
    toks = captured["tokens"]
    lengths = np.array([len(t) for t in toks])
    pids = np.repeat([t.prompt_id for t in toks], lengths)
    perm = np.argsort(pids, kind="stable")        # rows by prompt_id, tokens in order
    token_ids = np.concatenate([t.ids for t in toks])[perm]
    starts = np.concatenate([t.starts for t in toks])[perm]
    ends = np.concatenate([t.ends for t in toks])[perm]
    n = len(perm)
    common = {
        "prompt_set": pa.array([prompt_set] * n, pa.string()),
        "prompt_id": pa.array(pids[perm], pa.int32()),
        "token_index": pa.array(np.concatenate([np.arange(k) for k in lengths])[perm], pa.int32()),
        "token_id": pa.array(token_ids, pa.int32()),
        "token": pa.array([text(int(i)) for i in token_ids], pa.string()),
        "char_start": pa.array(starts, pa.int32(), mask=starts < 0),
        "char_end": pa.array(ends, pa.int32(), mask=ends < 0),
        "special": pa.array(np.concatenate([t.special for t in toks])[perm]),
    }
    prompt_ids = np.array([t.prompt_id for t in toks])
    pperm = np.argsort(prompt_ids, kind="stable")
    P = len(poolings)
    pcommon = {"prompt_set": pa.array([prompt_set] * (len(prompt_ids) * P), pa.string()),
               "prompt_id": pa.array(np.repeat(prompt_ids[pperm], P), pa.int32()),
               "pooling": pa.array(list(poolings) * len(prompt_ids), pa.string())}

    def write_layer(l):
        act = np.concatenate(captured["acts"].pop(l))[perm]
        norm = np.concatenate(captured["norms"].pop(l))[perm]
        a = w.write_shard("activations", {**common, "norm": norm, "act": act}, {"layer": l}, part, commit=False)
        del act
        vec = np.concatenate(pooled.pop(l))[pperm].reshape(len(prompt_ids) * P, -1)  # pooling fastest
        p = w.write_shard("pooled", {**pcommon, "act": vec}, {"layer": l}, part, commit=False)
        return a, p

    if pool_ex is None:
        return [_Done(write_layer(l)) for l in layers]
    return [pool_ex.submit(write_layer, l) for l in layers]


def _commit_group(w, futures) -> None:
    """Wait for a group's shards, then list them all in one manifest commit."""
    entries = [f.result() for f in futures]
    w.add_files("activations", [a for a, _ in entries], commit=False)
    w.add_files("pooled", [p for _, p in entries], commit=False)
    w.commit()


# -- reporting ------------------------------------------------------------------------------------

def _progress(total, initial, desc, enabled):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="prompt", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def _summary(w, ps, base, n_parts, seconds, computed):
    from vindex.info import human_bytes
    parts = {f"part-{p:05d}.parquet" for p in range(base, base + n_parts)}
    lines = [f"built {w.root} ({ps.name}: {len(ps)} prompts, {computed} computed now) in {seconds:.1f} s"
             + (f", {computed / seconds:.1f} prompts/s" if computed and seconds > 0 else "")]
    for table in ("activations", "pooled"):
        files = [e for e in w.manifest["tables"].get(table, {}).get("files", [])
                 if e["path"].rsplit("/", 1)[-1] in parts]
        lines.append(f"  {table:<12} {len(files):>5} files {sum(e['rows'] for e in files):>10} rows "
                     f"{human_bytes(sum(e['bytes'] for e in files)):>10}")
    print("\n".join(lines), file=sys.stderr)
