"""The Gram cache: every model's packed unit Grams (`cka.packed_unit_gram`), computed once from its
shards and kept, so that a warm CKA matrix is one matrix product of stored Grams.

    spec = GramSpec("mean", prompt_set=None, opts=cka.options("debiased"))
    layers = model_grams(v, spec)          # [(meta, g)] per layer of v's pooled table
    # CKA(a, b) = <g_a, g_b> (Kornblith et al. 2019, eq. 4: the cosine of the centred Grams)

What an entry holds: for one vindex and one `GramSpec` (table, site, pooling, prompt set, kernel,
preprocessing, estimator), one row per layer: the layer, the sha256 of the shards it was computed
from (`layer_digest`: the manifest's sha256 of each of the layer's shards), the rows' count, distinct
keys and fingerprint (`cka.sort_rows`, the SQL layer's rows_key), a status and the packed Gram g
(float64, n(n+1)/2 numbers).

Where it lives: `<vindex>/grams/<spec key>.<sha256 of the file>.parquet`, beside the manifest's
`data/` (never in it: raw readers of data/ never meet it); where the vindex cannot be written (a
read-only folder, a Hub vindex queried in place) in `$VINDEX_CACHE/grams/<folder key>/` instead.

Invalidated by content, never by time: a row is used only when its layer's shards are the ones the
manifest lists now (its digest matches); a layer whose shards changed is computed again and the
entry rewritten, the old file removed. A Parquet file whose bytes are not the sha256 its name
records, whose spec is not the one asked for, or whose Grams are not of the size n(n+1)/2 is
reported (`GramCacheRebuilt`), never used, and rebuilt. The sha256 is checked once per file
version, as for shards (`vindex.verified`: a warm check is a stat).

How it is written: a hidden temp file renamed into place (no fsync: the name's sha256 catches a torn
file) under the vindex's write lock (`vindex.lock.WriteLock`), briefly, like a manifest commit, removing the older
entry of the same spec and any temp file a killed write left; a busy or unwritable vindex falls
back to the user cache, and failing that the Grams are only kept in memory. The files' format and
checks are core's (`vindex.grams`: what verify, info, publish and pull use too).
In this process the Grams of the last entries used stay in memory too (`MEMORY_BYTES`), keyed by
the same content, so a lake of N models computes or reads each model's Grams once for all its pairs.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vindex.errors import (ChecksumError, CorruptShard, GramCacheRebuilt, InvalidValue, ManifestError, NotFound,
                           VindexBusy)
from vindex.files import cache_home, temp_path_for
from vindex.grams import (ENTRY_SCHEMA, FOLDER, FORMAT, META_KEY, entry_name, layer_digest, layer_digests,
                          read_entry, spec_key, temp_files)
from vindex.lock import WriteLock
from vindex.verified import verify_shard

from . import cka
from .parallel import map_layers

DEFAULT_SITE = "resid_post"    # shards written before the `site` column hold resid_post only
MEMORY_BYTES = 1 << 30         # Grams kept in this process, most recently used first
LOCK_WAIT_S = 5.0              # how long a cache write waits for the vindex's write lock


@dataclass(frozen=True)
class GramSpec:
    """Which Gram of a layer: the rows (table, site, pooling, prompt set) and the CKA options."""
    pooling: str
    prompt_set: str | None = None
    opts: cka.Options = field(default_factory=cka.Options)
    site: str = DEFAULT_SITE
    table: str = "pooled"

    def record(self) -> dict:
        o = self.opts
        return {"format": FORMAT, "table": self.table, "site": self.site, "pooling": self.pooling,
                "prompt_set": self.prompt_set, "estimator": o.estimator, "kernel": o.kernel, "sigma": o.sigma,
                "preprocess": o.preprocess, "percentile": o.percentile}

    @property
    def key(self) -> str:
        return spec_key(self.record())


# -- one layer: read its shards, sort its rows, form its Gram -------------------------------------
def layer_gram(model: str, layer: int, n_layers: int, files: list[tuple[str, dict]], filesystem, pooling: str,
               prompt_set: str | None, opts: cka.Options, site: str = DEFAULT_SITE,
               keep: frozenset | None = None) -> tuple[dict, np.ndarray | None]:
    """Read one layer's pooled shards and return (meta, g), g the packed unit Gram or None.

    meta: model, layer, depth (layer / n_layers, as the SQL layer), n, n_distinct, key (`cka.sort_rows`'
    fingerprint of the sorted (prompt_set, prompt_id) rows, the SQL layer's rows_key: two layers are
    comparable only when their keys agree), status (STATUSES) and note (why g is None, if it is).
    keep: only the rows whose `row_keys` are in it (allow_partial: the prompts both models hold).
    """
    parts = [_read_pooled(url, entry, filesystem) for url, entry in files]
    t = pa.concat_tables(parts, promote_options="default") if parts else None
    t = _spec_rows(t, pooling, prompt_set, site)
    if t is not None and keep is not None:
        t = t.filter(pc.is_in(row_keys(t), pa.array(sorted(keep), pa.string())))
    meta = {"model": model, "layer": int(layer), "depth": layer / n_layers, "n": 0, "n_distinct": 0, "key": None,
            "status": "ok", "note": None}
    if t is None or t.num_rows == 0:
        meta.update(status="empty", note=f"no pooled rows with pooling = {pooling!r}" + (
            f" and prompt_set = {prompt_set!r}" if prompt_set is not None else "") + (
            f" and site = {site!r}" if site != DEFAULT_SITE else ""))
        return meta, None
    order, key, n_distinct = cka.sort_rows([t["prompt_set"].to_numpy(), t["prompt_id"].to_numpy()])
    meta.update(n=t.num_rows, key=key, n_distinct=n_distinct)
    if n_distinct != t.num_rows:
        meta.update(status="duplicate", note=f"a prompt appears twice ({t.num_rows} rows); filter by prompt_set "
                                             "or pooling")
        return meta, None
    act = t["act"].combine_chunks()
    X = act.flatten().to_numpy(zero_copy_only=False).reshape(t.num_rows, -1)
    if len(order) > 1 and not (order[1:] > order[:-1]).all():   # shards are usually sorted already
        X = X[order]
    try:
        return meta, cka.packed_unit_gram(X, opts)
    except cka.DegenerateInput as e:   # a constant layer: CKA is NULL
        meta.update(status="undefined", note=str(e))
    except InvalidValue as e:          # n too small for the estimator, a saturated kernel
        meta.update(status="invalid", note=str(e))
    return meta, None


def _spec_rows(t: pa.Table | None, pooling: str, prompt_set: str | None, site: str) -> pa.Table | None:
    """The rows of the spec: pooling, prompt set (None: all) and site."""
    if t is None:
        return None
    mask = pc.equal(t["pooling"], pooling)
    if prompt_set is not None:
        mask = pc.and_(mask, pc.equal(t["prompt_set"], prompt_set))
    if "site" in t.column_names:   # NULL where a shard predates sites: resid_post, as the views read it
        mask = pc.and_(mask, pc.equal(pc.fill_null(t["site"], DEFAULT_SITE), site))
    elif site != DEFAULT_SITE:
        mask = pc.and_(mask, pa.scalar(False))
    return t.filter(mask)


def row_keys(t: pa.Table) -> pa.Array:
    """Each row's prompt as one text, prompt_set + chr(31) + prompt_id (the SQL layer's PROMPT_KEY)."""
    return pc.binary_join_element_wise(t["prompt_set"], pc.cast(t["prompt_id"], pa.string()), "\x1f")


def model_keys(v, spec: GramSpec) -> frozenset:
    """The prompts (`row_keys`) any layer of `v` holds rows of under `spec` (allow_partial's common rows
    are those both models hold, as the SQL layer's `common`)."""
    out = set()
    for files in shard_files(v, spec).values():
        for url, entry in files:
            t = _spec_rows(_read_pooled(url, entry, v.filesystem), spec.pooling, spec.prompt_set, spec.site)
            out.update(row_keys(t).to_pylist())
    return frozenset(out)


def _read_pooled(url: str, entry: dict, filesystem) -> pa.Table:
    """One shard, verified against its manifest entry (locally `vindex.reader.read_shard`; a Hub
    vindex's `HubShards` verifies each shard as it fetches it)."""
    if filesystem is None:
        from vindex.reader import read_shard
        return read_shard(Path(url), entry)
    try:
        with filesystem.open(url, "rb") as f:
            return pq.read_table(f)
    except FileNotFoundError:
        raise NotFound(f"{url}: listed in the manifest but missing") from None


# -- a model: cached rows, computed where missing --------------------------------------------------
def shard_files(v, spec: GramSpec) -> dict[int, list[tuple[str, dict]]]:
    """layer -> [(url, manifest entry)] of the shards of `spec`'s table: resolved once per use
    (`ResolvedVindex.url` resolves symlinks), shared by the lookup and the jobs."""
    files: dict[int, list] = {}
    for e in v.entries(spec.table):
        files.setdefault(e["partition"].get("layer"), []).append((v.url(e["path"]), e))
    return dict(sorted(files.items()))


def layer_jobs(v, spec: GramSpec, files: dict | None = None) -> dict[int, tuple]:
    """layer -> the arguments of its `layer_gram` call."""
    files = shard_files(v, spec) if files is None else files
    return {layer: (v.name, layer, v.n_layers, fs, v.filesystem, spec.pooling, spec.prompt_set, spec.opts, spec.site)
            for layer, fs in files.items()}


def model_grams(v, spec: GramSpec, run=None) -> list[tuple[dict, np.ndarray | None]]:
    """(meta, g) for every layer of `v`'s pooled table under `spec` (see `layer_gram`): from memory
    or the cache where the layer's shards are unchanged, else computed (`run(jobs)` maps
    `layer_gram` over argument tuples; default: this process, layers on threads) and stored."""
    files = shard_files(v, spec)
    found = lookup(v, spec, files)
    missing = [layer for layer in files if layer not in found]
    if missing:
        jobs = layer_jobs(v, spec, files)
        computed = (run or _run_here)([jobs[layer] for layer in missing])
        found.update((meta["layer"], (meta, g)) for meta, g in computed)
        store(v, spec, [found[layer] for layer in files])
    return [found[layer] for layer in files]


def _run_here(jobs: list[tuple]) -> list:
    return map_layers(lambda job: layer_gram(*job), jobs)


def lookup(v, spec: GramSpec, files: dict | None = None) -> dict[int, tuple[dict, np.ndarray | None]]:
    """layer -> (meta, g) for each layer of `v` whose stored row was computed from the shards the
    manifest lists now (in memory, else the vindex's grams/ folder, else the user cache). The shards
    of a local vindex must still be there and sound (`vindex.verified`: a stat each when warm), as
    for any query: a Gram never stands in for a shard that is gone."""
    if v.filesystem is None and "://" not in v.base:
        _verify_local([item for items in (shard_files(v, spec) if files is None else files).values()
                       for item in items])
    digests = _digests(v, spec)
    rows = _MEMORY.get(_memory_key(spec, digests))
    if rows is None:
        rows = {}
        for folder, rel in _folders(v):
            stored = _read_entry(folder, rel, spec)
            rows = {layer: r for layer, r in stored.items() if digests.get(layer) == r["shards"]}
            if rows:
                break
        if len(rows) == len(digests):
            _MEMORY.put(_memory_key(spec, digests), rows)
    return {layer: _meta_gram(v, layer, r) for layer, r in rows.items()}


def _verify_local(items: list[tuple[str, dict]]) -> None:
    """`verify_shard` of each (path, entry) in turn, the memo written once: warm, each is an open and a
    stat (a thread pool, as `verify_shards` starts, costs more than the stats themselves)."""
    for i, (path, e) in enumerate(items):
        verify_shard(path, e, flush=i == len(items) - 1)


def store(v, spec: GramSpec, layers: list[tuple[dict, np.ndarray | None]]) -> Path | None:
    """Keep a model's layers: in memory, and as one entry file in the vindex's grams/ folder (or the
    user cache where the vindex cannot be written). Returns the file written, or None."""
    digests = _digests(v, spec)
    rows = {meta["layer"]: _row(meta, g, digests[meta["layer"]]) for meta, g in layers}
    _MEMORY.put(_memory_key(spec, digests), rows)
    table = _entry_table(rows, spec)
    for folder, rel in _folders(v):
        try:
            return _write_entry(v, folder, rel, spec, table)
        except (OSError, ManifestError, VindexBusy):
            continue      # read-only, no lock possible, or busy: the next place, else memory only
    return None


def _row(meta: dict, g, digest: str) -> dict:
    if g is not None:
        g.flags.writeable = False    # shared by every user of the entry
    return {"layer": int(meta["layer"]), "shards": digest, "n": int(meta["n"]), "n_distinct": int(meta["n_distinct"]),
            "rows_key": meta["key"], "status": meta["status"], "note": meta["note"], "g": g}


def _meta_gram(v, layer: int, r: dict) -> tuple[dict, np.ndarray | None]:
    meta = {"model": v.name, "layer": layer, "depth": layer / v.n_layers, "n": r["n"], "n_distinct": r["n_distinct"],
            "key": r["rows_key"], "status": r["status"], "note": r["note"]}
    return meta, r["g"]


def _digests(v, spec: GramSpec) -> dict[int, str]:
    return layer_digests(v.entries(spec.table))


def _memory_key(spec: GramSpec, digests: dict) -> tuple:
    return spec.key, tuple(sorted(digests.items()))


# -- entry files ------------------------------------------------------------------------------------
def _folders(v) -> list[tuple[Path, str]]:
    """(folder, its path relative to the vindex or cache root for the verified memo), in the order
    they are tried: the vindex's own grams/ (local vindexes), then the user cache."""
    out = []
    if v.filesystem is None and "://" not in v.base:
        out.append((Path(v.base) / FOLDER, FOLDER))
    user = cache_home(FOLDER) / hashlib.sha256(v.base.encode()).hexdigest()[:16]
    out.append((user, ""))
    return out


def _read_entry(folder: Path, rel: str, spec: GramSpec) -> dict[int, dict]:
    """The rows of the entry for `spec` in `folder` ({} when there is none); an entry that fails its
    check is reported and removed, never used."""
    try:
        names = sorted(p.name for p in folder.glob(f"{spec.key}.*.parquet"))
    except OSError:
        return {}
    for name in names:
        path = folder / name
        try:
            return _checked_rows(path, f"{rel}/{name}" if rel else name, spec)
        except (ChecksumError, CorruptShard, InvalidValue) as e:
            warnings.warn(f"Gram cache: {path}: {e}; not used, computed again from the shards", GramCacheRebuilt,
                          stacklevel=4)
            try:
                path.unlink()
            except OSError:
                pass
        except NotFound:
            continue      # removed meanwhile by another process
    return {}


def _checked_rows(path: Path, rel: str, spec: GramSpec) -> dict[int, dict]:
    """The rows of an entry that passes every check (`vindex.grams.read_entry`: its sha256 is in its
    name, checked once per file version; its spec; each Gram's size), by layer."""
    return read_entry(path, rel, spec.record())[1]


def _entry_table(rows: dict[int, dict], spec: GramSpec) -> pa.Table:
    ordered = [rows[k] for k in sorted(rows)]
    gs = [r["g"] for r in ordered]
    lengths = np.array([0 if g is None else g.size for g in gs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate([g for g in gs if g is not None]) if lengths.sum() else np.zeros(0)
    g = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float64()),
                                 mask=pa.array([x is None for x in gs]))
    cols = {name: [r[name] for r in ordered] for name in ENTRY_SCHEMA.names if name != "g"}
    arrays = [pa.array(cols[f.name], f.type) if f.name != "g" else g for f in ENTRY_SCHEMA]
    meta = {META_KEY: json.dumps(spec.record(), sort_keys=True).encode()}
    return pa.Table.from_arrays(arrays, schema=ENTRY_SCHEMA.with_metadata(meta))


def _write_entry(v, folder: Path, rel: str, spec: GramSpec, table: pa.Table) -> Path:
    """Write the entry atomically (under the vindex's write lock when in the vindex), named by its
    sha256; then remove the older entries of the same spec."""
    # float64 Grams hardly compress (zstd: -5%) and read 3x slower compressed: stored plain, with page
    # checksums; written to memory first, so the file is born under its final name (its sha256)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="none", write_page_checksum=True, use_dictionary=False,
                   write_statistics=False)
    data = sink.getvalue().to_pybytes()
    final = folder / entry_name(spec.key, hashlib.sha256(data).hexdigest())

    def write() -> Path:
        _write_unsynced(final, data)
        for old in folder.glob(f"{spec.key}.*.parquet"):
            if old != final:
                old.unlink(missing_ok=True)
        return final

    if rel:   # inside the vindex: a short critical section under its write lock, like a manifest commit
        with WriteLock(Path(v.base), LOCK_WAIT_S):
            path = write()
            # every write into grams/ holds this lock: a hidden file left now is a killed write's temp file
            for tmp in temp_files(v.base):
                tmp.unlink(missing_ok=True)
            return path
    return write()


def _write_unsynced(final: Path, data: bytes) -> None:
    """A hidden temp file renamed to `final`, without the fsyncs of `vindex.files.atomic_path`: an
    entry's name is the sha256 of its bytes, checked on its first read, so one a crash tore is found
    and rebuilt, never used (a manifest or a shard is fsynced; a cache entry need not be, and the
    fsyncs were a quarter of a cold matrix's time on a busy disk)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- the memory -------------------------------------------------------------------------------------
class _Memory:
    """Most recently used entries' rows, up to `MEMORY_BYTES` of Grams (content-keyed: always valid)."""

    def __init__(self):
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            rows = self.items.get(key)
            if rows is not None:
                self.items.move_to_end(key)
            return rows

    def put(self, key, rows: dict) -> None:
        with self.lock:
            self.items[key] = rows
            self.items.move_to_end(key)
            total = sum(_nbytes(r) for r in self.items.values())
            while total > MEMORY_BYTES and len(self.items) > 1:
                _, dropped = self.items.popitem(last=False)
                total -= _nbytes(dropped)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


def _nbytes(rows: dict) -> int:
    return sum(r["g"].nbytes for r in rows.values() if r["g"] is not None)


_MEMORY = _Memory()


def forget() -> None:
    """Forget the Grams held in this process (the files stay): the next use reads or computes them.
    For benchmarks (a cold start) and tests."""
    _MEMORY.clear()


def entries(v) -> list[Path]:
    """The Gram cache entry files of vindex `v` (in its folder and the user cache)."""
    out = []
    for folder, _ in _folders(v):
        try:
            out += sorted(folder.glob("*.parquet"))
        except OSError:
            continue
    return out


__all__ = ["GramSpec", "model_grams", "lookup", "store", "layer_gram", "layer_digest", "shard_files", "model_keys",
           "row_keys", "entries", "forget"]
