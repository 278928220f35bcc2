"""Verified shards: a shard is read only once its bytes match the manifest, and that is checked once.

    verify_shard(path, entry)              # NotFound / CorruptShard / ChecksumError, or it is sound
    verify_shards([(path, entry), ...])    # the same for many (the memo is written once)
    cached_copy(entry, fetch, where)       # a remote shard, fetched into the verified local cache

What "sound" means: the file is a regular file of the manifest's size whose sha256 is the
manifest's, and its own partition columns hold the partition its path (`layer=2`, or `layer=02`
in an older vindex) and its manifest entry name. The last check matters because DuckDB takes a
partition column from the folder name (hive partitioning): a shard copied into another layer's
folder would otherwise be read as that layer.

Verify once, remember: hashing is the cost (one pass over the file), so the result is remembered
per file identity: path, size, mtime_ns, inode, device and ctime_ns, as `os.fstat` reports them for
the open file that was hashed. Any write to the file changes its ctime (which no user call can set
back) and a replaced file has another inode, so a remembered result never covers other bytes; a
file that rots in place without any write is caught by `vindex verify`, which always rehashes.
File timestamps tick coarsely (a few ms on Linux, up to 2 s elsewhere), so two writes close
together can leave the same ctime: as git does for its index, a file changed less than
RACY_SECONDS before it was hashed is not remembered (hashed again next time) until it is older.
The memo lives in the user's cache, `$VINDEX_CACHE/verified/` (default ~/.cache/vindex/verified/),
one small JSON file per vindex folder, written atomically: a reader never writes into a lake (so
read-only and shared lakes work, and writers and their temp-file cleanup never meet it), only the
user whose queries trust the memo can write it, and a copied lake never carries one along.

Remote shards (a Hub repo queried in place) are fetched whole into a content-addressed cache,
`$VINDEX_CACHE/shards/<sha256[:2]>/<sha256>.parquet`, and verified before any reader opens them;
bytes that do not match are never kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ChecksumError, CorruptShard, NotFound, VindexError
from .files import atomic_path, atomic_write_bytes, cache_home, parse_json

MEMO_VERSION = 1
RACY_SECONDS = 2.0       # a file changed this recently is not remembered (timestamp granularity)
_MAX_VALUES = 4          # distinct partition values remembered per column (more than one is a mismatch anyway)
_PRUNE_AT = 512          # memo files in the cache before those of vanished folders are removed
_LOCK = threading.RLock()
_MEMOS: dict[str, "_Memo"] = {}
_FETCHING: dict[str, threading.Lock] = {}
_enabled = True


def digest_file(f) -> str:
    """sha256 (hex) of an open binary file, from its current position to the end."""
    return hashlib.file_digest(f, "sha256").hexdigest()


@contextmanager
def unverified():
    """Turn verification off in this process while the block runs. Only for benchmarks, which
    measure what verification costs against the same query without it; never for results."""
    global _enabled
    old, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = old


def forget(memo_files: bool = False) -> None:
    """Forget what this process verified (with memo_files, also what the memo files remember): the
    next check of every shard hashes it again. For benchmarks (a cold start) and tests."""
    import shutil

    with _LOCK:
        _MEMOS.clear()
        if memo_files:
            shutil.rmtree(cache_home() / "verified", ignore_errors=True)


# -- the check ------------------------------------------------------------------------------------
def verify_shard(path: str | os.PathLike, entry: dict, relpath: str | None = None, where: str | None = None,
                 flush: bool = True) -> None:
    """Raise unless the file at `path` is what manifest `entry` describes (size, sha256, and its
    partition columns agree with `relpath`'s key=value folders and the entry's partition).

    relpath: the path the shard has in its vindex (default entry["path"]; a cached copy of a remote
    shard passes the remote one). where: how messages name the file (default `path`).
    """
    path = Path(path)
    relpath = relpath or entry["path"]
    where = where or str(path)
    if not _enabled:
        return
    hint = "; run `vindex verify`"
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise NotFound(f"{where}: listed in the manifest but missing on disk") from None
    except IsADirectoryError:
        raise CorruptShard(f"{where}: a folder, where the manifest lists a shard{hint}") from None
    except OSError as e:
        raise CorruptShard(f"{where}: cannot be opened ({e.strerror or e}){hint}") from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CorruptShard(f"{where}: not a regular file, where the manifest lists a shard{hint}")
        if st.st_size != entry["bytes"]:
            raise CorruptShard(f"{where}: {st.st_size} bytes on disk, the manifest records {entry['bytes']} "
                               f"(truncated or overwritten){hint}")
        root, name = _memo_key(path, relpath)
        memo = _memo(root)
        ident = _ident(st)
        facts = memo.get(name, ident)
        fresh = facts is None
        if fresh:
            facts = {"sha256": digest_file(f), "values": {}}
        if facts["sha256"] != entry["sha256"]:
            raise ChecksumError(f"{where}: sha256 {facts['sha256'][:16]}... does not match the manifest's "
                                f"{entry['sha256'][:16]}... (the file changed after it was written){hint}")
        expected = _expected_partitions(entry, relpath)
        missing = [k for k in expected if k not in facts["values"]]
        if missing:
            f.seek(0)
            facts["values"].update(_partition_values(f, missing, where))
            fresh = True
        _check_partitions(facts["values"], expected, where, hint)
        if fresh and _ident(os.fstat(f.fileno())) == ident and _settled(st):   # unchanged while read
            memo.put(name, ident, facts)
    if flush:
        memo.flush()


def verify_shards(items) -> None:
    """`verify_shard` for each (path, entry) or (path, entry, relpath) of `items`, hashed on a few
    threads (hashlib releases the GIL); the first bad shard in the order given is raised, and the
    memo of each folder is written once at the end (also after a failure: what was verified is kept)."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = []
    for item in items:
        path, entry, *rest = item
        jobs.append((Path(path), entry, (rest[0] if rest else None) or entry["path"]))
    roots = {_memo_key(path, relpath)[0] for path, _, relpath in jobs}
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(jobs)))) as pool:
            for _ in pool.map(lambda job: verify_shard(*job, flush=False), jobs):
                pass
    finally:
        for root in roots:
            _memo(root).flush()


# -- partitions -----------------------------------------------------------------------------------
def _expected_partitions(entry: dict, relpath: str) -> dict[str, list[tuple[str, object]]]:
    """column -> [(who says so, value)]: each key=value folder of the path (DuckDB reads these as
    columns) and the manifest entry's partition."""
    out: dict[str, list[tuple[str, object]]] = {}
    for part in PurePosixPath(relpath).parts[:-1]:
        if "=" in part:
            k, _, v = part.partition("=")
            out.setdefault(k, []).append((f"its path says {part}", v))
    for k, v in (entry.get("partition") or {}).items():
        out.setdefault(k, []).append((f"the manifest records {k}={v!r}", v))
    return out


def _partition_values(f, columns: list[str], where: str) -> dict[str, list | None]:
    """The distinct values (at most _MAX_VALUES) of each column the file has; None where it has not."""
    try:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        have = [c for c in columns if c in names]
        table = pf.read(columns=have) if have else None
    except (pa.ArrowException, OSError) as e:
        raise CorruptShard(f"{where}: not a readable Parquet file ({e}); run `vindex verify`") from None
    out: dict[str, list | None] = {c: None for c in columns}
    for c in have:
        out[c] = pc.unique(table.column(c)).slice(0, _MAX_VALUES).to_pylist()
    return out


def _same(file_value, said) -> bool:
    """A partition value as the file holds it vs as a folder name (text) or the manifest gives it."""
    if isinstance(file_value, bool) or file_value is None:
        return False
    if isinstance(file_value, int) and isinstance(said, str):
        # the folder names the writer makes: `layer=3`, or `layer=03` in a vindex written before
        # folders were unpadded (vindex.writer.shard_path); DuckDB reads either as the integer
        return file_value >= 0 and said in (str(file_value), f"{file_value:02d}")
    return type(file_value) is type(said) and file_value == said


def _check_partitions(values: dict, expected: dict, where: str, hint: str) -> None:
    for k, claims in expected.items():
        held = values.get(k)
        if held is None:
            raise CorruptShard(f"{where}: has no column {k!r}, yet {claims[0][0]} (partition values are "
                               f"columns of every shard){hint}")
        for who, said in claims:
            bad = [v for v in held if not _same(v, said)]
            if bad:
                raise CorruptShard(f"{where}: its column {k!r} holds {bad[0]!r}, but {who} (a shard moved or "
                                   f"copied from another partition?){hint}")


# -- the memo -------------------------------------------------------------------------------------
def _ident(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns]


def _settled(st: os.stat_result) -> bool:
    """Changed long enough ago that another write would show in its ctime."""
    return time.time_ns() - st.st_ctime_ns >= RACY_SECONDS * 1e9


def _memo_key(path: Path, relpath: str) -> tuple[str, str]:
    """(folder whose memo holds the file, name in it): the vindex folder and the manifest path when
    `path` ends with `relpath`, else the file's own folder and name (a cached remote shard)."""
    text, tail = str(path), "/" + relpath.lstrip("/")
    if text.endswith(tail) and len(text) > len(tail):
        return text[:-len(tail)], relpath
    return str(path.parent), path.name


def _memo(root: str) -> "_Memo":
    with _LOCK:
        m = _MEMOS.get(root)
        if m is None:
            m = _MEMOS[root] = _Memo(root)
        return m


class _Memo:
    """What was verified under one folder: name -> [size, mtime_ns, ino, dev, ctime_ns, facts]."""

    def __init__(self, root: str):
        self.root = root
        self.file = cache_home() / "verified" / f"{hashlib.sha256(root.encode()).hexdigest()[:32]}.json"
        self.files: dict | None = None
        self.stamp = None          # the memo file's identity when read
        self.dirty: dict = {}

    def _load(self) -> None:
        """(Re)read the memo file when it changed (another process verified something)."""
        try:
            st = self.file.stat()
        except OSError:
            if self.files is None:
                self.files = {}
            return
        stamp = _ident(st)
        if self.files is not None and stamp == self.stamp:
            return
        data = {}
        try:
            raw = parse_json(self.file.read_bytes(), str(self.file))
            if isinstance(raw, dict) and raw.get("version") == MEMO_VERSION and raw.get("root") == self.root \
                    and isinstance(raw.get("files"), dict):
                data = raw["files"]
        except (OSError, VindexError):
            pass            # unreadable or not ours: it only costs a rehash
        self.files, self.stamp = {**data, **self.dirty}, stamp

    def get(self, name: str, ident: list[int]) -> dict | None:
        with _LOCK:
            rec = (self.files or {}).get(name)
            if rec is None or not _valid(rec, ident):
                self._load()
                rec = self.files.get(name)
            if rec is None or not _valid(rec, ident):
                return None
            facts = rec[5]
            return {"sha256": facts["sha256"], "values": dict(facts["values"])}

    def put(self, name: str, ident: list[int], facts: dict) -> None:
        with _LOCK:
            if self.files is None:
                self._load()
            self.files[name] = self.dirty[name] = [*ident, facts]

    def flush(self) -> None:
        """Merge what this process verified into the memo file (best effort: a cache that cannot be
        written costs a rehash in the next process, nothing else)."""
        with _LOCK:
            if not self.dirty:
                return
            self.stamp = None
            self._load()
            self.files.update(self.dirty)
            body = {"version": MEMO_VERSION, "root": self.root, "files": self.files}
            try:
                new = not self.file.exists()
                atomic_write_bytes(self.file, json.dumps(body, separators=(",", ":")).encode())
                self.stamp = _ident(self.file.stat())
                if new:
                    _prune(self.file.parent)
            except OSError:
                pass
            self.dirty = {}


def _valid(rec, ident: list[int]) -> bool:
    try:
        return (isinstance(rec, list) and len(rec) == 6 and rec[:5] == ident and isinstance(rec[5], dict)
                and isinstance(rec[5].get("sha256"), str) and isinstance(rec[5].get("values"), dict))
    except Exception:  # noqa: BLE001 - a memo of another shape is not ours: ignore it
        return False


def _prune(folder: Path) -> None:
    """Once the cache holds many memo files, remove those whose vindex folder is gone."""
    files = list(folder.glob("*.json"))
    if len(files) < _PRUNE_AT:
        return
    for p in files:
        try:
            root = parse_json(p.read_bytes(), str(p)).get("root")
            if not isinstance(root, str) or not Path(root).is_dir():
                p.unlink(missing_ok=True)
        except (OSError, VindexError, AttributeError):
            p.unlink(missing_ok=True)


# -- remote shards: the content-addressed verified cache ---------------------------------------------
def shard_cache() -> Path:
    return cache_home() / "shards"


def cached_copy(entry: dict, fetch, where: str, relpath: str | None = None) -> Path:
    """A local, verified copy of the remote shard `entry` (`where` names it in messages).

    `fetch(f, limit)` writes the remote bytes to the binary file `f` and must stop (with any
    error) once more than `limit` bytes arrive. The copy is kept only when its size, sha256 and
    partition columns match; otherwise ChecksumError/CorruptShard and nothing is kept. A cached copy
    is re-checked (through the memo: a stat) every time it is handed out.
    """
    sha = entry["sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ChecksumError(f"{where}: the manifest's sha256 {sha!r} is not a sha256")
    dest = shard_cache() / sha[:2] / f"{sha}.parquet"
    with _LOCK:
        lock = _FETCHING.setdefault(sha, threading.Lock())
    with lock:
        if dest.exists():
            if dest.stat().st_size == entry["bytes"]:
                try:
                    verify_shard(dest, entry, relpath, where=f"{where} (cached at {dest})")
                    return dest
                except ChecksumError:
                    pass            # the cached copy was damaged: fetch it again
            dest.unlink(missing_ok=True)
        remote_hint = "the server sent bytes that are not the file its manifest describes; nothing was kept"
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as f:
                fetch(f, entry["bytes"])
            with open(tmp, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != entry["bytes"]:
                    raise ChecksumError(f"{where}: {size} bytes arrived, the manifest records {entry['bytes']} "
                                        f"({remote_hint})")
                digest = digest_file(f)
            if digest != sha:
                raise ChecksumError(f"{where}: sha256 {digest[:16]}... does not match the manifest's "
                                    f"{sha[:16]}... ({remote_hint})")
        # remember the hash (the rename gave the file a new ctime); the partition check still runs
        root, name = _memo_key(dest, relpath or entry["path"])
        _memo(root).put(name, _ident(dest.stat()), {"sha256": digest, "values": {}})   # ours, just hashed
        verify_shard(dest, entry, relpath, where=f"{where} (cached at {dest})")
        return dest
