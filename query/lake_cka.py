"""Lake-scale CKA: every layer pair of every model pair of a lake, in one job, locally or on Ray.

    from vindex.query.lake_cka import cka_all
    table = cka_all("lake/", out="lake-cka.parquet")                    # this machine
    table = cka_all("hf://datasets/org/lake", ray=True, out="cka.parquet")   # a Ray cluster
    connect("lake/").sql("SELECT * FROM 'lake-cka.parquet' WHERE layer_a = 6 ORDER BY cka DESC")

The computation is the SQL layer's `cka_matrix`, organised for a whole lake:

1. each model's Grams from the Gram cache (`query.gram_cache`), and one task per (model, layer)
   whose shards have none stored (`gram_cache.layer_gram`): read that layer's `pooled` shards (local
   files or hf:// through HfFileSystem), keep `pooling` (and `prompt_set`) rows, sort them by
   (prompt_set, prompt_id) and fingerprint them (`cka.sort_rows`, as the SQL layer does), and
   compute the centred, unit-norm Gram g = HKH/||HKH||_F, packed (`cka.packed_unit_gram`, the SQL
   layer's Gram); the driver stores what was computed. Cost, cold: models x layers x n^2 d; warm:
   reading the stored Grams.
2. one task per model: stack its layers' Grams into one matrix (per row key), once for all its pairs.
3. one task per model pair: CKA(a, b) = <g_a, g_b> (Kornblith et al. 2019, eq. 4, as the cosine of
   centred Grams) for all layer pairs at once, G_A G_B^T, and with permutations > 0 the null of
   `query.cka.null_scores` over the same stored Grams. Cost: pairs x layers^2 x n^2, no d.

On Ray the Grams and stacks stay in the object store, each read by the tasks that need it (no
barrier: a pair starts as soon as its two models' stacks exist). Without Ray the same three
functions run in this process. The result has the columns of `cka_matrix(...)` and is written as
one Parquet file.
"""
from __future__ import annotations

import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vindex.errors import CKAPairSkipped, IncompleteData, InvalidValue, NotFound, PartialData
from vindex.summary import prompt_coverage

from . import cka, gram_cache
from .arguments import check
from .gram_cache import GramSpec, layer_gram
from .macros import DEFAULT_ESTIMATOR, DEFAULT_PERMUTATIONS, DEFAULT_POOLING, INCOMPLETE_ADVICE
from .sources import ResolvedVindex, resolve_sources

RESULT_SCHEMA = pa.schema([
    ("model_a", pa.string()), ("model_b", pa.string()), ("layer_a", pa.int32()), ("layer_b", pa.int32()),
    ("depth_a", pa.float64()), ("depth_b", pa.float64()), ("cka", pa.float64()), ("null_mean", pa.float64()),
    ("null_p95", pa.float64()), ("p_value", pa.float64()), ("n", pa.int32()), ("pooling", pa.string()),
    ("prompt_set", pa.string()), ("estimator", pa.string()), ("kernel", pa.string()), ("preprocess", pa.string()),
    ("permutations", pa.int32()), ("seed", pa.int32()),
])


# -- step 1: each model's unit centred Grams, from the Gram cache -----------------------------------
# (`gram_cache.model_grams`: one `layer_gram` task per (model, layer) whose shards have no stored Gram)


# -- step 2: one model's Grams stacked, once -------------------------------------------------------
def model_stack(*layers) -> dict:
    """A model's (meta, g) per layer -> its Grams stacked into one matrix per row key (layers that
    saw the same rows in the same order), built once and shared by all the model's pairs.

    Returns {"model", "metas": [meta per layer], "blocks": {key: (positions, G)}} with positions the
    indices into metas of that key's layers and G the (positions, n(n+1)/2) stack, NaN rows where a
    layer's Gram is undefined (a constant layer).
    """
    metas = [m for m, _ in layers]
    blocks = {}
    for key in dict.fromkeys(m["key"] for m in metas if m["key"] is not None):
        pos = [i for i, m in enumerate(metas) if m["key"] == key]
        width = next((g.size for i in pos if (g := layers[i][1]) is not None), None)
        if width is None:
            continue
        G = np.full((len(pos), width), np.nan)
        for r, i in enumerate(pos):
            if layers[i][1] is not None:
                G[r] = layers[i][1]
        blocks[key] = (pos, G)
    return {"model": metas[0]["model"] if metas else None, "metas": metas, "blocks": blocks}


# -- step 3: one model pair -> all its layer pairs --------------------------------------------------
def pair_cka(stack_a: dict, stack_b: dict, spec: dict) -> tuple[pa.Table, list[str]]:
    """CKA of every layer pair of two models from their stacks: (rows as a table, notes).

    CKA = <g_a, g_b>: one matrix product G_A G_B^T per row key the two models share; with
    permutations > 0 also the permutation null over the same Grams (`query.cka.null_scores`,
    rows of b shuffled). Layer pairs whose rows differ are left out with a note (the SQL macro
    raises instead); an undefined Gram gives NULL, as in SQL.
    """
    parts, notes = [], []
    shared = [k for k in stack_a["blocks"] if k in stack_b["blocks"]]
    for key in shared:
        (ia, GA), (ib, GB) = stack_a["blocks"][key], stack_b["blocks"][key]
        n = stack_a["metas"][ia[0]]["n"]
        obs = GA @ GB.T                                                     # (|ia|, |ib|) = <g_a, g_b>
        cols = {"cka": obs}
        if spec["permutations"] > 0:
            va, vb = ~np.isnan(GA[:, 0]), ~np.isnan(GB[:, 0])
            null = {k: np.full(obs.shape, np.nan) for k in ("null_mean", "null_p95", "p_value")}
            if va.any() and vb.any():
                gather = cka.permutation_gather(n, spec["permutations"], spec["seed"])
                scores = cka.null_scores(GA[va], GB[vb], gather)              # (|va|, |vb|, permutations)
                for k, v in cka.null_summary(obs[np.ix_(va, vb)], scores).items():
                    null[k][np.ix_(va, vb)] = v
            cols.update(null)
        parts.append(_rows(stack_a["metas"], stack_b["metas"], ia, ib, n, cols))
    ka, kb = set(stack_a["blocks"]), set(stack_b["blocks"])
    a, b = stack_a["model"], stack_b["model"]
    if ka and kb and not shared:
        notes.append(f"{a} and {b} hold different prompts (no layer pair has the same rows in the same order); "
                     "pair skipped")
    elif ka != kb and shared:
        notes.append(f"{a} x {b}: some layers hold other prompts than the rest; only layer pairs with "
                     "identical rows were compared")
    table = pa.concat_tables(parts) if parts else RESULT_SCHEMA.empty_table()
    k = table.num_rows
    for name, value in (("pooling", spec["pooling"]), ("prompt_set", spec["prompt_set"]),
                        ("estimator", spec["estimator"]), ("kernel", spec["kernel"]),
                        ("preprocess", spec["preprocess"]), ("permutations", spec["permutations"]),
                        ("seed", spec["seed"])):
        i = RESULT_SCHEMA.get_field_index(name)
        table = table.set_column(i, RESULT_SCHEMA.field(name), pa.array([value] * k, RESULT_SCHEMA.field(name).type))
    return table, notes


def _rows(metas_a, metas_b, ia, ib, n, values: dict) -> pa.Table:
    """The |ia| x |ib| layer pairs of one block as result rows (NaN -> NULL), options left NULL."""
    na, nb = len(ia), len(ib)
    ma, mb = [metas_a[i] for i in ia], [metas_b[j] for j in ib]
    cols = {
        "model_a": [ma[0]["model"]] * (na * nb), "model_b": [mb[0]["model"]] * (na * nb),
        "layer_a": np.repeat([m["layer"] for m in ma], nb), "layer_b": np.tile([m["layer"] for m in mb], na),
        "depth_a": np.repeat([m["depth"] for m in ma], nb), "depth_b": np.tile([m["depth"] for m in mb], na),
        "n": np.full(na * nb, n),
    }
    for k, v in values.items():
        v = np.asarray(v, dtype=np.float64).ravel()
        cols[k] = pa.array(v, pa.float64(), mask=np.isnan(v))
    arrays = [cols[f.name] if f.name in cols else pa.nulls(na * nb, f.type) for f in RESULT_SCHEMA]
    return pa.table([pa.array(x, f.type) if not isinstance(x, pa.Array) else x
                     for x, f in zip(arrays, RESULT_SCHEMA)], schema=RESULT_SCHEMA)


# -- the job ----------------------------------------------------------------------------------------
def cka_all(*sources, models=None, pairs=None, pooling: str = DEFAULT_POOLING, estimator: str = DEFAULT_ESTIMATOR,
            kernel: str = "linear", preprocess: str = "none", prompt_set: str | None = None,
            permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0, out=None, ray=None, runtime_env: dict | None = None,
            progress: bool = True, allow_partial: bool = False) -> pa.Table:
    """CKA of every layer pair of every model pair in `sources` (vindex folders, lake roots, hf://).

    models: restrict to these model names. pairs: explicit (model_a, model_b) pairs (default: every
    unordered pair, names sorted). The options are `cka_matrix`'s. ray: None/False runs here; True,
    '' or an address runs on a Ray cluster (see `vindex.ray_connection.connect_ray`; runtime_env is passed
    to ray.init when this call starts Ray). out: where to write the result as Parquet.
    Pairs that cannot be compared (different prompts, no pooled rows, a prompt set of one name but
    other contents) are skipped with a warning. A prompt set whose build is incomplete raises
    IncompleteData unless allow_partial=True (then a PartialData warning; layer pairs are compared
    where both models hold the same prompts, and `n` says how many).
    Returns the table (columns of `cka_matrix`, sorted by model_a, model_b, layer_a, layer_b).
    """
    opts = cka.options(estimator, kernel, preprocess)
    permutations, seed = check("cka_all", "permutations", permutations), check("cka_all", "seed", seed)
    spec = {"pooling": pooling, "prompt_set": prompt_set, "estimator": opts.estimator, "kernel": opts.kernel_name,
            "preprocess": opts.preprocess_name, "permutations": permutations, "seed": seed}
    lake = resolve_sources(*sources)
    by_name = {v.name: v for v in lake}
    pairs = _pairs(by_name, models, pairs)
    needed = sorted({m for p in pairs for m in p})
    _check_complete([by_name[m] for m in needed], prompt_set, allow_partial)
    notes: list[str] = []
    pairs, skipped = _same_prompt_sets(by_name, pairs, prompt_set)
    notes += skipped
    layers = {}
    for m in needed:
        ls = by_name[m].layers("pooled")
        if not ls:
            notes.append(f"{m}: no pooled table; its pairs are skipped")
        layers[m] = ls
    pairs = [p for p in pairs if layers[p[0]] and layers[p[1]]]
    vindexes = {m: by_name[m] for m in needed if layers[m]}
    gspec = GramSpec(pooling, prompt_set, opts)
    t0 = time.perf_counter()
    if ray is None or ray is False:
        results, more = _run_local(vindexes, pairs, spec, gspec, progress)
    else:
        results, more = _run_ray(vindexes, pairs, spec, gspec, ray, runtime_env, progress)
    for note in notes + more:
        warnings.warn(f"cka_all: {note}", CKAPairSkipped, stacklevel=2)
    table = _table(results)
    if out is not None:
        write_result(table, out)
    if progress:
        n_grams = sum(len(v.layers("pooled")) for v in vindexes.values())
        print(f"cka_all: {len(pairs)} model pair(s), {n_grams} Grams, {table.num_rows} layer pairs in "
              f"{time.perf_counter() - t0:.1f} s" + (f" -> {out}" if out is not None else ""), file=sys.stderr)
    return table


def pair_tables(vindexes, jobs, kernel: str = "linear", preprocess: str = "none", permutations: int = 0,
                seed: int = 0) -> list[tuple[pa.Table | None, list[str]]]:
    """`cka_matrix` of many pairs from the Gram cache, each model's Grams read or computed once per
    (pooling, prompt set, estimator): what a page of every pair (`vindex view`) needs.

    vindexes: {name: ResolvedVindex}. jobs: (model_a, model_b, estimator, pooling, prompt_set) each.
    Returns per job (table with `cka_matrix`'s columns sorted by layer_a, layer_b, or None; notes):
    a pair `cka_matrix` refuses (an incomplete prompt set, prompt sets of one name but other
    contents) gives None and the reason; layer pairs with other rows are left out with a note.
    """
    permutations, seed = check("pair_tables", "permutations", permutations), check("pair_tables", "seed", seed)
    stacks, refusals, out = {}, {}, []
    for a, b, estimator, pooling, prompt_set in jobs:
        opts = cka.options(estimator, kernel, preprocess)
        for m in (a, b):
            if (m, prompt_set) not in refusals:
                refusals[m, prompt_set] = _refusals([vindexes[m]], prompt_set)
        refused = refusals[a, prompt_set] + (refusals[b, prompt_set] if b != a else [])
        if not refused:
            refused = _same_prompt_sets(vindexes, [(a, b)], prompt_set)[1]
        if refused:
            out.append((None, refused))
            continue
        gspec = GramSpec(pooling, prompt_set, opts)
        for m in (a, b):
            if (m, gspec) not in stacks:
                stacks[m, gspec] = model_stack(*gram_cache.model_grams(vindexes[m], gspec))
        spec = {"pooling": pooling, "prompt_set": prompt_set, "estimator": opts.estimator, "kernel": opts.kernel_name,
                "preprocess": opts.preprocess_name, "permutations": permutations, "seed": seed}
        table, notes = pair_cka(stacks[a, gspec], stacks[b, gspec], spec)
        out.append((table if len(stacks[a, gspec]["blocks"]) < 2 else _table([table]), notes))  # one block: sorted
    return out


def _refusals(vindexes: list[ResolvedVindex], prompt_set: str | None) -> list[str]:
    """Why a comparison over `prompt_set` (None: all) must be refused: its incomplete prompt sets."""
    return [f"model {v.name!r} prompt set {name!r} is {c['status']} ({INCOMPLETE_ADVICE})" for v in vindexes
            for name, c in sorted(prompt_coverage(v).items())
            if not c["complete"] and (prompt_set is None or name == prompt_set)]


def _pairs(by_name: dict, models, pairs) -> list[tuple[str, str]]:
    names = sorted(by_name)
    if models is not None:
        models = [models] if isinstance(models, str) else list(models)
        unknown = [m for m in models if m not in by_name]
        if unknown:
            raise NotFound(f"cka_all: unknown model(s) {unknown}; the lake holds: {', '.join(names)}")
        names = sorted(set(models))
    if pairs is None:
        out = list(itertools.combinations(names, 2))
        if not out:
            raise InvalidValue(f"cka_all: needs at least two models, the selection holds {names}")
        return out
    out = []
    for p in pairs:
        if len(p) != 2:
            raise InvalidValue(f"cka_all: a pair is (model_a, model_b), got {p!r}")
        a, b = p
        for m in (a, b):
            if m not in by_name:
                raise NotFound(f"cka_all: unknown model {m!r}; the lake holds: {', '.join(sorted(by_name))}")
        out.append((a, b))
    return out


def _check_complete(vindexes: list[ResolvedVindex], prompt_set: str | None, allow_partial: bool) -> None:
    """IncompleteData for a prompt set in use whose build is incomplete (PartialData with allow_partial)."""
    if not isinstance(allow_partial, bool):
        raise InvalidValue(f"cka_all: allow_partial must be True or False, got {allow_partial!r}")
    notes = [f"model {v.name!r} prompt set {name!r} is {c['status']}" for v in vindexes
             for name, c in sorted(prompt_coverage(v).items())
             if not c["complete"] and (prompt_set is None or name == prompt_set)]   # (pair_tables: _refusals)
    if notes and not allow_partial:
        raise IncompleteData(f"cka_all: {'; '.join(notes)} ({INCOMPLETE_ADVICE}); pass allow_partial=True "
                             "(--allow-partial) to compare the prompts there are")
    if notes:
        warnings.warn(f"cka_all: {'; '.join(notes)}; layer pairs are compared where both models hold the same "
                      "prompts (n says how many)", PartialData, stacklevel=3)


def _same_prompt_sets(by_name: dict, pairs, prompt_set: str | None) -> tuple[list, list[str]]:
    """The pairs whose prompt sets of one name have the same contents (sha256), and a note per other pair."""
    keep, notes = [], []
    for a, b in pairs:
        sa, sb = by_name[a].prompt_sets, by_name[b].prompt_sets
        differ = sorted(n for n in set(sa) & set(sb) if (prompt_set is None or n == prompt_set)
                        and sa[n].get("sha256") != sb[n].get("sha256"))
        if differ:
            notes.append(f"{a} and {b} hold other prompts under the prompt set name(s) {differ} (sha256 differs); "
                         "pair skipped")
        else:
            keep.append((a, b))
    return keep, notes


def _run_local(vindexes, pairs, spec, gspec, progress):
    from tqdm.auto import tqdm
    grams = {m: gram_cache.model_grams(v, gspec)
             for m, v in tqdm(vindexes.items(), desc="Grams", unit="model", disable=not progress, file=sys.stderr)}
    notes = _gram_notes(meta for layers in grams.values() for meta, _ in layers)
    stacks = {m: model_stack(*layers) for m, layers in grams.items()}
    results = []
    for a, b in tqdm(pairs, desc="pairs", unit="pair", disable=not progress, file=sys.stderr):
        table, more = pair_cka(stacks[a], stacks[b], spec)
        results.append(table)
        notes += more
    return results, notes


def _run_ray(vindexes, pairs, spec, gspec, address, runtime_env, progress):
    """Stored Grams from the cache, a task per missing (model, layer) Gram -> one stack task per model
    -> one task per pair; no barrier between the steps. The driver stores the new Grams at the end."""
    from vindex.ray_connection import connect_ray, raise_vindex_cause
    ray = connect_ray(address, runtime_env=runtime_env, quiet=not progress)
    gram_task = ray.remote(max_retries=3)(layer_gram)
    stack_task = ray.remote(max_retries=3)(model_stack)
    pair_task = ray.remote(max_retries=3)(pair_cka)
    grams, computed = {}, {}
    for m, v in vindexes.items():
        found = gram_cache.lookup(v, gspec)
        grams[m] = [found[layer] if layer in found else gram_task.remote(*job)
                    for layer, job in gram_cache.layer_jobs(v, gspec).items()]
        if len(found) < len(grams[m]):
            computed[m] = grams[m]
    stacks = {m: stack_task.remote(*refs) for m, refs in grams.items()}   # top-level refs: resolved by Ray
    pending = [pair_task.remote(stacks[a], stacks[b], spec) for a, b in pairs]
    from tqdm.auto import tqdm
    results, notes = [], []
    with tqdm(total=len(pending), desc="pairs on ray", unit="pair", disable=not progress, file=sys.stderr) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                table, more = ray.get(ready[0])
            except Exception as e:
                raise_vindex_cause(e)
                raise
            results.append(table)
            notes += more
            bar.update(1)
    for m, items in computed.items():
        gram_cache.store(vindexes[m], gspec, [x if isinstance(x, tuple) else ray.get(x) for x in items])
    metas = [meta for stack in ray.get(list(stacks.values())) for meta in stack["metas"]]
    return results, _gram_notes(metas) + notes


def _gram_notes(metas) -> list[str]:
    return [f"{m['model']} layer {m['layer']}: {m['note']}" for m in metas if m.get("note")]


def _table(results: list[pa.Table]) -> pa.Table:
    t = pa.concat_tables(results) if results else RESULT_SCHEMA.empty_table()
    return t.sort_by([("model_a", "ascending"), ("model_b", "ascending"), ("layer_a", "ascending"),
                      ("layer_b", "ascending")])


def write_result(table: pa.Table, out) -> Path:
    """Write the result atomically as one Parquet file (zstd), readable by DuckDB, polars, pandas."""
    from vindex.files import atomic_path
    out = Path(out)
    if out.is_dir():
        raise InvalidValue(f"out {out}: is a folder; give a file name such as {out / 'cka.parquet'}")
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return out
