"""Ingest on a Ray cluster: activations as Ray Data over an actor pool, weight tables per layer range.

    from vindex.ingest.on_ray import build_on_ray, build_weights_on_ray
    build_on_ray("smollm2-135m", "lake/smollm2-135m", address="ray://head:10001", gpus_per_actor=1)
    build_weights_on_ray("smollm2-135m", "lake/smollm2-135m", layers_per_task=4)

`build(..., ray=ADDRESS)` and `vindex build --ray [ADDRESS]` dispatch here. What runs where:

driver  resolves the model, tokenizes the prompt set and plans the shard groups with the same
        `plan_groups` as `build()`, so the parts and their file names are the same as a
        single-machine build's; registers the prompt set and the tables in the manifest; then
        streams the groups that are not committed yet through Ray Data.
actors  `map_batches` on an actor pool, one model loaded per actor (`gpus_per_actor` GPUs each,
        or CPU only). Each row of the dataset is one shard group (its prompts' ids and texts);
        the actor re-tokenizes them, runs `capture_group` and `write_group` of
        `vindex.ingest.capture` (the same capture, pooling and shard writing code as `build()`) into a `StagingWriter`, which writes the
        Parquet shards straight into the vindex folder under their deterministic names but
        keeps the manifest entries to itself, and returns them.
driver  checks that every expected shard is there with its recorded size, then records all the
        entries and commits the manifest ONCE, atomically, under the vindex's write lock and
        merged with what other writers committed meanwhile (`commit_staged`).

Failure model: a lost actor (crash, preemption, node loss) is restarted by Ray Data and its group
rerun; the rerun writes the same file names (atomic temp + rename), so nothing is duplicated.
An application error stops the job before the commit: the manifest is as it was, the shards
already written are orphans that readers ignore, and rerunning the same command skips the
groups committed by earlier runs and rewrites the rest.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from vindex.ray_connection import cluster_resources, connect_ray, raise_vindex_cause
from vindex.defaults import DEFAULT_DTYPE
from vindex.errors import CorruptShard, InvalidValue
from vindex.files import safe_join
from vindex.writer import VindexWriter

from vindex.layers import parse_layers

from .activations import DEFAULT_POOLINGS, tokenize_prompts
from .capture import capture_group, write_group
from .plan import group_done, plan_job, prepare_vindex, print_summary, resolve_job
from .weights import open_weights_vindex, resolve_weights_source, write_weights
from .prompts import Prompt, PromptSet
from .sources import resolve_model


# -- a writer that stages its manifest changes -----------------------------------------------------

class StagingWriter(VindexWriter):
    """A VindexWriter for a worker: shards land in the vindex folder under their final names, but
    the manifest is never written. `staged()` returns what the worker would have committed
    (entries per table, declared vectors, extraction params), for the driver's single commit."""

    def __init__(self, root, manifest, **kwargs):
        super().__init__(root, manifest, **kwargs)
        self._staged: dict[str, dict[str, dict]] = {}

    def commit(self) -> None:  # the driver commits, once, for everyone
        pass

    def add_files(self, table: str, entries: list[dict], commit: bool = True) -> None:
        super().add_files(table, entries, commit=False)
        for e in entries:
            self._staged.setdefault(table, {})[e["path"]] = e

    def staged(self) -> dict:
        tables = {}
        for table, entries in self._staged.items():
            t = self.manifest["tables"].get(table, {})
            tables[table] = {"entries": list(entries.values()), "vector_width": t.get("vector_width"),
                             "vector_dtype": t.get("vector_dtype")}
        return {"tables": tables, "extraction": self.manifest.get("extraction", {})}


def commit_staged(writer: VindexWriter, results: list[dict], expected: dict[str, set[str]] | None = None,
                  finish=None) -> dict:
    """Record the entries of many `StagingWriter.staged()` results in `writer` and commit them once.

    The commit is the driver's single one, in `writer.transaction()`: under the vindex's write
    lock, merged with whatever other writers committed meanwhile (another build's prompt set,
    the weight tables), with `finish()` (the caller's last manifest edits) run inside it.
    A shard reported twice (a retried task) counts once. Every entry's file must be on disk with
    its recorded size (a cheap check that no later attempt rewrote it differently), and
    `expected` ({table: {paths}}) must all be present. Returns {table: number of shards}.
    """
    merged: dict[str, dict[str, dict]] = {}
    for res in results:
        for table, info in res["tables"].items():
            for e in info["entries"]:
                merged.setdefault(table, {})[e["path"]] = e
    for table, entries in merged.items():
        for rel, e in entries.items():
            p = safe_join(writer.root, rel)
            if not p.is_file() or p.stat().st_size != e["bytes"]:
                have = p.stat().st_size if p.is_file() else "no file"
                raise CorruptShard(f"{p}: a worker reported {e['bytes']} bytes, the disk holds {have}; was it "
                                   "written twice with different contents? Rerun the job (nothing was committed)")
    for table, paths in (expected or {}).items():
        missing = sorted(set(paths) - set(merged.get(table, {})))
        if missing:
            raise CorruptShard(f"{writer.root}: {len(missing)} {table} shard(s) were not reported by any worker "
                               f"(first: {missing[0]}); nothing was committed, rerun the job")
    with writer.transaction():
        for res in results:
            for table, info in res["tables"].items():
                if info.get("vector_width"):
                    writer.declare_vectors(table, int(info["vector_width"]), info["vector_dtype"])
        for table, entries in merged.items():
            writer.add_files(table, sorted(entries.values(), key=lambda e: e["path"]), commit=False)
        if finish is not None:
            finish()
    return {t: len(v) for t, v in merged.items()}


# -- activations ------------------------------------------------------------------------------------

class _NoBar:
    def update(self, n=1):
        pass


class ActivationWorker:
    """A Ray Data actor: loads the model once, then captures and writes one shard group per row."""

    def __init__(self, root: str, src, config: dict):
        import torch

        from .activations import HiddenStates, TokenText
        from .sources import load_model
        self.root, self.cfg = root, config
        if not Path(src.path).is_dir():   # a node that does not share the driver's model cache
            src = resolve_model(src.source, trust_remote_code=src.trust_remote_code,
                                cache_dir=config.get("cache_dir"), progress=False)
        device = config.get("device") or ("cuda" if config.get("gpus") and torch.cuda.is_available() else "cpu")
        model, self.tok = load_model(src, device=device)
        self.runner = HiddenStates(model, device=device)
        self.text = TokenText(self.tok)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.tok.eos_token_id or 0)

    def __call__(self, batch: dict) -> dict:
        c = self.cfg
        parts, staged = [], []
        for part, group_json in zip(batch["part"], batch["group"]):
            g = json.loads(group_json)
            prompts = [Prompt(int(i), None, t) for i, t in zip(g["prompt_id"], g["text"])]
            tokenized = tokenize_prompts(self.tok, prompts, c["max_tokens"], chat_template=c["chat_template"])
            w = StagingWriter.open(self.root)
            acts, pooled = capture_group(self.runner, tokenized, g["batches"], c["layers"], c["poolings"],
                                          c["dtype"], self.pad_id, c["n_layers"], _NoBar())
            write_group(w, c["prompt_set"], acts, pooled, c["layers"], c["poolings"], int(part), self.text)
            _maybe_fail_once(c.get("fail_once"), int(part))
            staged.append(json.dumps({**w.staged(), "convention": self.runner.convention()}))
            parts.append(int(part))
        return {"part": np.asarray(parts, dtype=np.int64), "staged": np.asarray(staged, dtype=object)}


def _maybe_fail_once(folder: str | None, part: int) -> None:
    """Fault injection for the failure-model tests: the first attempt of each group dies (as a
    preempted node would) after writing its shards and before reporting them."""
    if not folder:
        return
    marker = Path(folder) / f"failed-part-{part:05d}"
    if not marker.exists():
        marker.touch()
        os._exit(1)


def build_on_ray(source, out=None, *, address=None, actors: int | None = None,
                      gpus_per_actor: float | None = None, cpus_per_actor: float = 1,
                      runtime_env: dict | None = None, name: str | None = None, prompts="default", layers=None,
                      dtype: str = DEFAULT_DTYPE, batch_size: int = 16, max_tokens: int = 256,
                      poolings=DEFAULT_POOLINGS, resume: bool = True, progress: bool = True,
                      trust_remote_code: bool = False, chat_template: bool = False,
                      prompt_set_name: str | None = None, device: str | None = None, buffer_mb: int = 512,
                      shard_rows: int | None = None, cache_dir=None, _fail_once: str | None = None) -> Path:
    """`build()` on a Ray cluster: same arguments, same shards, same manifest; returns the vindex folder.

    address: the Ray cluster (see `vindex.ray_connection.connect_ray`; None = RAY_ADDRESS or local).
    actors: actor-pool size (default: as many as the cluster's GPUs / CPUs allow, at most one per
      shard group). gpus_per_actor: GPUs each actor (model copy) holds; default 1 when the cluster
      has GPUs, else 0 (CPU only). cpus_per_actor: CPUs reserved per actor.
    runtime_env: passed to ray.init when this call starts Ray (e.g. {"pip": [...]}).
    The parallel unit is the shard group (`shard_rows` token rows, from `buffer_mb`); a small prompt
    set is one group and so one actor: pass a smaller `shard_rows` to spread it.
    The vindex folder must be on storage every node can write (NFS, a mounted bucket).
    """
    t0 = time.perf_counter()
    job = resolve_job(source, out, name=name, prompts=prompts, prompt_set_name=prompt_set_name, layers=layers,
                        dtype=dtype, batch_size=batch_size, max_tokens=max_tokens, poolings=poolings,
                        trust_remote_code=trust_remote_code, cache_dir=cache_dir, progress=progress)
    src = dataclasses.replace(job.src, path=Path(job.src.path).resolve())   # workers do not share our cwd
    job = dataclasses.replace(job, src=src)
    ps, layers, name, root, poolings = job.ps, job.layers, job.name, job.root, job.poolings

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(src.path, trust_remote_code=src.trust_remote_code)
    # the same plan and manifest bookkeeping as build(): identical shard groups, parts and params
    _, groups, shard_rows = plan_job(job, tok, chat_template=chat_template, buffer_mb=buffer_mb,
                                       shard_rows=shard_rows)
    ray = connect_ray(address, runtime_env=runtime_env, quiet=not progress)
    pool = actor_pool(len(groups), actors, gpus_per_actor, cpus_per_actor)   # errors before any write
    config = {"max_tokens": max_tokens, "chat_template": chat_template, "layers": layers,
              "poolings": list(poolings), "dtype": dtype, "n_layers": job.n_layers, "prompt_set": ps.name,
              "device": device, "cache_dir": None if cache_dir is None else str(cache_dir),
              "fail_once": _fail_once, "gpus": pool["num_gpus"]}
    w, base, skip_done, dtype, extraction = prepare_vindex(
        job, groups, shard_rows, chat_template=chat_template, resume=resume,
        probe_dtype=lambda: _probe_dtype(ray, src, config, _group_row([groups[0][0]], ps), pool))
    config["dtype"] = dtype

    todo = [k for k in range(len(groups)) if not (skip_done and group_done(w, layers, base + k))]
    todo_set = set(todo)
    n_done = sum(len(b) for k, g in enumerate(groups) if k not in todo_set for b in g)
    if todo:
        rows = [{"part": base + k, "group": json.dumps(_group_row(groups[k], ps))} for k in todo]
        pool = {**pool, "actors": min(pool["actors"], len(todo))}   # an actor more than groups would idle
        results = _run_groups(ray, rows, str(root.resolve()), src, config, pool, progress=progress,
                              total=len(ps), done=n_done, desc=f"{name}/{ps.name} on ray")
        expected = {t: {w.shard_relpath(t, {"layer": l}, base + k) for k in todo for l in layers}
                    for t in ("activations", "pooled")}

        def finish():
            extraction["hidden_states"] = results[0]["convention"]
            w.update(extraction={"activations": extraction}, commit=False)
            w.manifest["prompt_sets"][ps.name]["complete"] = True
        commit_staged(w, results, expected, finish=finish)   # the one commit of every shard computed now
    else:
        w.manifest["prompt_sets"][ps.name]["complete"] = True
        w.commit()
    if progress:
        print_summary(w, ps, base, len(groups), time.perf_counter() - t0, len(ps) - n_done)
    return root


def _group_row(group: list[list[int]], ps: PromptSet) -> dict:
    """One dataset row: a shard group's prompts (ids, texts) and its batches as local indices."""
    members = [i for batch in group for i in batch]
    local = {i: j for j, i in enumerate(members)}
    return {"prompt_id": [ps.prompts[i].prompt_id for i in members], "text": [ps.prompts[i].text for i in members],
            "batches": [[local[i] for i in batch] for batch in group]}


def actor_pool(n_groups: int, actors: int | None, gpus_per_actor: float | None, cpus_per_actor: float) -> dict:
    """The pool size and per-actor resources on the connected cluster (clear errors when it cannot fit)."""
    res = cluster_resources()
    if gpus_per_actor is None:
        gpus_per_actor = 1 if res["GPU"] >= 1 else 0
    if gpus_per_actor < 0 or cpus_per_actor <= 0:
        raise InvalidValue(f"gpus_per_actor ({gpus_per_actor}) must be >= 0 and cpus_per_actor ({cpus_per_actor}) > 0")
    if gpus_per_actor > res["GPU"]:
        raise InvalidValue(f"gpus_per_actor={gpus_per_actor}, but the Ray cluster has {res['GPU']:g} GPU(s); "
                           "pass gpus_per_actor=0 (--gpus-per-actor 0) to run on CPUs")
    if actors is None:
        fit = res["GPU"] // gpus_per_actor if gpus_per_actor else res["CPU"] // cpus_per_actor
        actors = int(max(1, min(n_groups, fit)))
    if actors < 1:
        raise InvalidValue(f"actors must be >= 1, got {actors}")
    return {"actors": int(actors), "num_gpus": gpus_per_actor, "num_cpus": cpus_per_actor}


def _probe_dtype(ray, src, config: dict, row: dict, pool: dict) -> str:
    """dtype='auto' decided as build() decides it (`capture.auto_dtype` on the longest batch), on a
    worker with the actors' resources: the driver never loads the model."""
    task = ray.remote(_probe_dtype_task).options(num_gpus=pool["num_gpus"], num_cpus=pool["num_cpus"])
    try:
        return ray.get(task.remote(src, config, row))
    except Exception as e:
        raise_vindex_cause(e)
        raise


def _probe_dtype_task(src, config: dict, row: dict) -> str:
    from .capture import auto_dtype
    worker = ActivationWorker(None, src, config)
    prompts = [Prompt(int(i), None, t) for i, t in zip(row["prompt_id"], row["text"])]
    tokenized = tokenize_prompts(worker.tok, prompts, config["max_tokens"], chat_template=config["chat_template"])
    return auto_dtype(worker.runner, tokenized, row["batches"][0], config["layers"], worker.pad_id)


def _run_groups(ray, rows, root, src, config, pool, *, progress, total, done, desc) -> list[dict]:
    """Stream the shard groups through an actor pool; the staged results, as they complete."""
    from ray.data import DataContext
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False   # ours below counts prompts, not Ray blocks
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))   # a block per group: spread over actors
    ds = ds.map_batches(ActivationWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=pool["actors"]),
                        num_gpus=pool["num_gpus"], num_cpus=pool["num_cpus"],
                        fn_constructor_args=(root, src, config))
    sizes = {r["part"]: len(json.loads(r["group"])["prompt_id"]) for r in rows}
    from tqdm.auto import tqdm
    bar = tqdm(total=total, initial=done, desc=desc, unit="prompt", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    results = []
    try:
        for row in ds.iter_rows():
            results.append(json.loads(row["staged"]))
            bar.update(sizes[int(row["part"])])
    except Exception as e:
        raise_vindex_cause(e)
        raise
    finally:
        bar.close()
    return results


# -- weight tables --------------------------------------------------------------------------------

def build_weights_on_ray(source, out=None, *, address=None, layers_per_task: int | None = None,
                              cpus_per_task: float = 1, memory_per_task: int | None = None,
                              runtime_env: dict | None = None, name: str | None = None, layers=None,
                              resume: bool = True, progress: bool = True, **options) -> Path:
    """`build_weights()` fanned out over Ray tasks, one per range of `layers_per_task` layers.

    Each task opens the checkpoint itself (safetensors are memory-mapped: a task reads only its
    blocks, plus the unembedding for `features`), runs `write_weights` on its layers into a
    StagingWriter and returns the entries; the driver commits them all at once. `options` are
    `write_weights`'s (top_k, unembedding, ov_variants, feature_layers, ov_top_k, vectors,
    vector_dtype, tables). memory_per_task: bytes Ray should reserve per task (the unembedding
    in float32 plus one block), so big models do not oversubscribe a node.
    """
    t0 = time.perf_counter()
    src = resolve_weights_source(source)
    src = dataclasses.replace(src, path=Path(src.path).resolve())   # workers do not share our cwd
    writer, weights = open_weights_vindex(src, out, name)             # build_weights' own opening
    out, name = writer.root, writer.name
    selected = parse_layers(layers, weights.n_layers)
    ray = connect_ray(address, runtime_env=runtime_env, quiet=not progress)
    if layers_per_task is None:
        layers_per_task = max(1, math.ceil(len(selected) / max(1, int(cluster_resources()["CPU"] // cpus_per_task))))
    if layers_per_task < 1:
        raise InvalidValue(f"layers_per_task must be >= 1, got {layers_per_task}")
    chunks = [selected[i:i + layers_per_task] for i in range(0, len(selected), layers_per_task)]
    remote_args = {"num_cpus": cpus_per_task, "max_retries": 3}
    if memory_per_task:
        remote_args["memory"] = int(memory_per_task)
    task = ray.remote(_weights_task).options(**remote_args)
    pending = [task.remote(str(out.resolve()), src, chunk, resume, options) for chunk in chunks]
    from tqdm.auto import tqdm
    results = []
    with tqdm(total=len(selected), desc=f"weights {name} on ray", unit="layer", disable=not progress,
              file=sys.stderr) as bar:
        sizes = {ref: len(c) for ref, c in zip(pending, chunks)}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                results.append(ray.get(ready[0]))
            except Exception as e:
                raise_vindex_cause(e)
                raise
            bar.update(sizes[ready[0]])
    counts = commit_staged(writer, results, finish=lambda: writer.update(
        extraction={"weights": results[0]["extraction"]["weights"]}, commit=False))
    if progress:
        print(f"vindex: weights of {name} -> {out} on ray ({len(chunks)} tasks, shards: {counts}; "
              f"{time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    return out


def _weights_task(root: str, src, layers: list[int], resume: bool, options: dict) -> dict:
    """One layer range of the weights job, written through a StagingWriter (runs on a worker)."""
    from .checkpoint import ModelWeights
    if not Path(src.path).is_dir():   # a node that does not share the driver's model cache
        src = resolve_weights_source(src.source)
    w = StagingWriter.open(root)
    write_weights(w, ModelWeights(src.path, src.config), layers=layers, resume=resume, progress=False, **options)
    return w.staged()
