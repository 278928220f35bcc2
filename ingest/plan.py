"""The build plan: what the single-machine and the Ray activation builds both start from.

    job = resolve_job(source, out, ...)              # model, prompts, layers, folder (no model loaded)
    tokenized, groups, shard_rows = plan_job(job, tokenizer, ...)
    writer, base, skip_done, dtype, extraction = prepare_vindex(job, groups, shard_rows, ...)

The plan is a pure function of the arguments, so a rerun (resume) recomputes the same shard groups
and part numbers; `prepare_vindex` records the build in the manifest before any shard is written.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from vindex.errors import InvalidValue, ManifestError, NotMoE, ResumeMismatch
from vindex.files import safe_join
from vindex.summary import human_bytes
from vindex.layers import parse_layers
from vindex.writer import VindexWriter

from .activations import POOLINGS, check_poolings, default_shard_rows, plan_groups, tokenize_prompts
from .capture import CaptureSpec
from .families import MOE_FAMILIES
from .prompts import PromptSet, load_prompts
from .sites import DEFAULT_SITES, HOOK_NAMES, check_sites
from .sources import ModelSource, resolve_model

DTYPES = ("float16", "float32", "auto")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# the tables a build of a prompt set writes, each with its shards in the prompt set's part range
BUILD_TABLES = ("activations", "pooled", "feature_acts", "feature_stats", "routing")
SPECIAL_RULE = ("special = added by the tokenizer (BOS/EOS/CLS/SEP), any id in all_special_ids, or "
                "(with chat_template) outside the prompt text; char offsets are null for specials")


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
    spec: CaptureSpec = field(default_factory=CaptureSpec)
    routing: bool | None = None     # None: on for MoE families
    compute_dtype: str = "float32"

    def with_routers(self, routing_layers) -> Job:
        """This job with the MoE layers whose routers the model has (known once it is loaded)."""
        import dataclasses
        layers = tuple(l for l in self.layers if l in set(routing_layers)) if self.routing is not False else ()
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, routing_layers=layers))


def resolve_job(source, out, *, name, prompts, prompt_set_name, layers, dtype, batch_size, max_tokens,
                poolings, trust_remote_code, cache_dir, progress, sites=DEFAULT_SITES, feature_top_k=None,
                feature_threshold=None, routing=None, compute_dtype="float32") -> Job:
    """Check the arguments and resolve model, prompts, layers and folder (no model is loaded).

    `source` may be a resolved source already (a ModelSource, or `model_object.LoadedModel`)."""
    if dtype not in DTYPES:
        raise InvalidValue(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise InvalidValue(f"compute_dtype {compute_dtype!r}: choose one of {', '.join(COMPUTE_DTYPES)}")
    if batch_size < 1 or max_tokens < 1:
        raise InvalidValue(f"batch_size ({batch_size}) and max_tokens ({max_tokens}) must be >= 1")
    poolings = check_poolings(poolings)
    ps = load_prompts(prompts, name=prompt_set_name)
    src = source if hasattr(source, "manifest_model") else resolve_model(
        source, trust_remote_code=trust_remote_code, cache_dir=cache_dir, progress=progress)
    mm = src.manifest_model()
    n_layers, d = int(mm["n_layers"]), int(mm["d_model"])
    name = name or src.name
    root = Path(out) if out is not None else Path("lake") / name
    sites = check_sites(sites, src.family)
    if routing and src.family not in MOE_FAMILIES:
        raise NotMoE(f"routing: {src.model_id} is a dense {src.family} model (no experts, no router); the MoE "
                     f"families are {', '.join(sorted(MOE_FAMILIES))}")
    top_k = check_feature_top_k(feature_top_k, mm.get("d_ffn"), "mlp_post" in sites)
    spec = CaptureSpec(sites=sites, feature_top_k=top_k,
                       feature_threshold=CaptureSpec.feature_threshold if feature_threshold is None
                       else float(feature_threshold))
    return Job(src, ps, parse_layers(layers, n_layers), name, root, dtype, batch_size, max_tokens,
               poolings, n_layers, d, spec, routing, compute_dtype)


def check_feature_top_k(k, d_ffn: int | None, used: bool) -> int | None:
    """feature_top_k as an int (None = 'all': every feature, dense); InvalidValue when it is not a
    positive integer or exceeds d_ffn."""
    if k is None:
        return CaptureSpec.feature_top_k
    if isinstance(k, str) and k.strip().lower() in ("all", "dense"):
        return None
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise InvalidValue(f"feature_top_k {k!r}: give a positive integer, or 'all' for dense mlp_post") from None
    if k < 1:
        raise InvalidValue(f"feature_top_k {k}: must be >= 1 (or 'all' for dense mlp_post)")
    if used and d_ffn and k > d_ffn:
        raise InvalidValue(f"feature_top_k {k} exceeds the model's d_ffn ({d_ffn} mlp_post features); "
                           f"give at most {d_ffn}, or 'all' for dense storage")
    return k


def plan_job(job: Job, tok, *, chat_template: bool, buffer_mb: int, shard_rows: int | None):
    """Tokenize and pack into shard groups: (tokenized, groups, shard_rows); a pure function of the inputs."""
    itemsize = 2 if job.dtype == "float16" else 4   # auto plans for float32
    tokenized = tokenize_prompts(tok, job.ps.prompts, job.max_tokens, chat_template=chat_template)
    # vectors of width d held per token row: one per (site, layer), plus feature_acts' k (feature,
    # activation) pairs (8 bytes each) per mlp_post layer
    spec = job.spec
    k = spec.feature_top_k or (job.src.manifest_model().get("d_ffn") or job.d)
    per_row = len(spec.vector_pairs(job.layers)) + -(-len(spec.feature_layers(job.layers)) * k * 8 // (job.d * itemsize))
    shard_rows = shard_rows or default_shard_rows(buffer_mb, max(1, per_row), job.d, itemsize,
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
              "shard_rows": shard_rows, **capture_params(job)}
    w = _open_vindex(job.root, job.name, mm)
    dtype = job.dtype
    if dtype == "auto":   # decided before taking the lock: a probe is a forward pass
        _rebuilds(w, ps, params, resume)              # a refused resume is refused before the probe
        dtype = _fixed_dtype(w.manifest, _dropped(w.manifest, ps, params, resume)) or probe_dtype()
    # under the write lock, on the manifest as other writers left it: concurrent builds of other
    # prompt sets get disjoint part ranges, and this build's records merge with theirs
    with w.transaction():
        base, skip_done = _reserve_parts(w, ps, params, len(groups), resume)
        for table in ("activations", "pooled"):   # a vector type declared by a build that wrote nothing binds nobody
            t = w.manifest["tables"].get(table)
            if t is not None and not t["files"]:
                t["vector_width"] = t["vector_dtype"] = None
        if job.dtype == "auto":
            dtype = _fixed_dtype(w.manifest) or dtype
        if job.spec.vector_pairs(job.layers):
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
            "prompt_set_sha256": ps.sha256, "compute_dtype": job.compute_dtype, **capture_record(job)})
        w.update(extraction={"activations": extraction}, commit=False)
    return w, base, skip_done, dtype, extraction


# -- manifest bookkeeping -------------------------------------------------------------------------

def _fixed_dtype(m: dict, dropped: frozenset = frozenset()) -> str | None:
    """The vector dtype earlier builds fixed for activations: None while the table holds no file
    (other than `dropped` part files, which this build is about to delete)."""
    t = m["tables"].get("activations") or {}
    kept = [e for e in t.get("files") or [] if e["path"].rsplit("/", 1)[-1] not in dropped]
    return t.get("vector_dtype") if kept else None


def _part_names(base: int, n: int) -> frozenset:
    return frozenset(f"part-{p:05d}.parquet" for p in range(base, base + n))


def capture_params(job: Job) -> dict:
    """The capture's build parameters, only where they differ from a plain build (so a resumed build
    of a vindex written before sites existed matches its recorded parameters)."""
    spec, out = job.spec, {}
    if spec.sites != DEFAULT_SITES:
        out["sites"] = list(spec.sites)
    if "mlp_post" in spec.sites:
        out.update(feature_top_k=spec.feature_top_k or "all", feature_threshold=spec.feature_threshold)
    if spec.routing_layers:
        out["routing_layers"] = list(spec.routing_layers)
    if job.compute_dtype != "float32":
        out["compute_dtype"] = job.compute_dtype
    return out


def capture_record(job: Job) -> dict:
    """What the manifest says of the capture: sites with their TransformerLens hook names, feature_acts
    and routing, in words a reader of the tables needs."""
    spec = job.spec
    rec = {"sites": {s: HOOK_NAMES[s] for s in spec.sites},
           "layer_numbering": "vindex layer i = block i's output (layer 0: the embedding output); TransformerLens "
                              "block b = vindex layer b + 1 (blocks.{b}.hook_<site>)"}
    if "mlp_post" in spec.sites:
        rec.update(feature_top_k=spec.feature_top_k or "all", feature_threshold=spec.feature_threshold,
                   feature_acts=(f"top {spec.feature_top_k} features per token and layer by |mlp_post|"
                                 if spec.feature_top_k else "every feature of mlp_post (dense)"),
                   feature_stats=("per part: sums over every token of mlp_post (n_above: |activation| > "
                                  f"{spec.feature_threshold}); the feature_summary view adds the parts"))
    if spec.routing_layers:
        rec["routing"] = ("the router's top-k experts per token of each MoE layer, rank 1 = the largest weight; "
                          "weight = what the model scales the expert's output by; logit = the router's logit")
        rec["routing_layers"] = list(spec.routing_layers)
    return rec


def _rebuilds(w: VindexWriter, ps: PromptSet, params: dict, resume: bool) -> bool:
    """Whether this build replaces an earlier build of its prompt set (refused when it would resume
    one made with other arguments)."""
    prev = w.manifest["prompt_sets"].get(ps.name)
    if prev is None or (prev.get("build") == params and resume):
        return False
    if resume and prev.get("build") is not None:
        old = prev["build"]
        diff = {k: (old.get(k), params.get(k)) for k in dict.fromkeys([*params, *old]) if old.get(k) != params.get(k)}
        if "sites" in diff:   # a plain build records no sites: it means resid_post
            diff["sites"] = tuple(v or list(DEFAULT_SITES) for v in diff["sites"])
        raise ResumeMismatch(
            f"{w.root}: prompt set {ps.name!r} was built with other arguments "
            f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); pass resume=False "
            "(--no-resume) to rebuild it, or another out folder / prompt set name")
    return True


def _dropped(m: dict, ps: PromptSet, params: dict, resume: bool) -> frozenset:
    """File names of the parts a rebuild of this prompt set deletes first."""
    prev = m["prompt_sets"].get(ps.name)
    if prev is None or (prev.get("build") == params and resume):
        return frozenset()
    return _part_names(prev.get("part_base", 0), prev.get("n_parts", 0))


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
    owns a contiguous range of part numbers, recorded in the manifest. Call it inside
    `w.transaction()`, so that a concurrent build of another prompt set sees this reservation.
    """
    sets = w.manifest["prompt_sets"]
    prev = sets.get(ps.name)
    others_end = max((s.get("part_base", 0) + s.get("n_parts", 0) for n, s in sets.items() if n != ps.name),
                     default=0)
    if prev is not None and not _rebuilds(w, ps, params, resume):
        base, may_skip = prev["part_base"], True
    else:
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
    """Forget, then delete, a prompt set's old activation/pooled shards before a rebuild (in that
    order: a manifest never lists a deleted file)."""
    wanted = _part_names(base, n)
    doomed = []
    for table in BUILD_TABLES:
        t = w.manifest["tables"].get(table)
        if not t:
            continue
        doomed += [e["path"] for e in t["files"] if e["path"].rsplit("/", 1)[-1] in wanted]
        t["files"] = [e for e in t["files"] if e["path"].rsplit("/", 1)[-1] not in wanted]
    w.commit()
    for rel in doomed:
        safe_join(w.root, rel).unlink(missing_ok=True)


def group_done(w: VindexWriter, layers, part: int, spec: CaptureSpec | None = None) -> bool:
    return all(w.has_shard(t, {"layer": l}, part) for t, l in (spec or CaptureSpec()).shards(layers))



# -- reporting ------------------------------------------------------------------------------------

def progress_bar(total, initial, desc, enabled):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="prompt", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def print_summary(w, ps, base, n_parts, seconds, computed):
    parts = {f"part-{p:05d}.parquet" for p in range(base, base + n_parts)}
    lines = [f"built {w.root} ({ps.name}: {len(ps)} prompts, {computed} computed now) in {seconds:.1f} s"
             + (f", {computed / seconds:.1f} prompts/s" if computed and seconds > 0 else "")]
    for table in BUILD_TABLES:
        if table not in w.manifest["tables"]:
            continue
        files = [e for e in w.manifest["tables"].get(table, {}).get("files", [])
                 if e["path"].rsplit("/", 1)[-1] in parts]
        lines.append(f"  {table:<12} {len(files):>5} files {sum(e['rows'] for e in files):>10} rows "
                     f"{human_bytes(sum(e['bytes'] for e in files)):>10}")
    print("\n".join(lines), file=sys.stderr)
