"""Finding vindexes: turn whatever a user passes to `connect` into (manifest, base location) pairs.

Every source kind goes through `resolve_source`, so adding one (hf:// repos, object stores) is one
branch here plus, where DuckDB cannot read the location natively, a filesystem to register: the
views in views.py are built only from `ResolvedVindex` objects and never look at the disk.

Only files the manifest lists exist for a query: orphans left by an interrupted write are never
globbed, because views read explicit file lists, not folders.

Only verified bytes enter a query: local shards are checked against their manifest entries when
the views are made (`vindex.verified`, remembered per file so a warm connect only stats), and the
shards of a Hub vindex queried in place are read through `HubShards`, which fetches each one whole
into the verified cache and hands DuckDB that copy, so a row never comes from an unchecked byte.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from fsspec.implementations.local import LocalFileOpener, LocalFileSystem
from fsspec.spec import AbstractFileSystem

from vindex.errors import ChecksumError, ManifestError, NotFound, UnsafePath, VindexError
from vindex.files import safe_join
from vindex.hub.location import is_hub_uri
from vindex.lake import lake_members
from vindex.manifest import MANIFEST, ManifestView, load_manifest


@dataclass(frozen=True)
class ResolvedVindex(ManifestView):
    """One vindex found in a source: its manifest (accessors: `ManifestView`) and where its files live.

    `base` is a location string DuckDB can read files under (an absolute local path, or
    `hf://datasets/<repo>@<commit>[/<folder>]`); `filesystem` is the fsspec filesystem that
    `connect` registers with DuckDB when `base` is not a native location (None locally; a
    `HubShards` for a Hub vindex).
    """
    manifest: dict
    base: str
    source: str
    filesystem: object | None = field(default=None, compare=False, repr=False)
    # relpath -> url, resolved once per object (a connection's views, its Gram cache lookups): resolving
    # symlinks is a few stats per path, and a lake lists thousands of paths
    _urls: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def url(self, relpath: str) -> str:
        """Where DuckDB reads the manifest path `relpath` (refusing paths that escape the vindex)."""
        url = self._urls.get(relpath)
        if url is None:
            if self.filesystem is None and "://" not in self.base:
                url = str(safe_join(self.base, relpath))
            else:
                safe_join("/", relpath)  # same traversal rules, no disk access
                url = f"{self.base.rstrip('/')}/{relpath}"
            self._urls[relpath] = url
        return url


def resolve_source(src) -> list[ResolvedVindex]:
    """All vindexes a source holds: a vindex folder, a lake root (a folder of vindex folders),
    a `vindex.Vindex`, or (with the Hub support) an hf:// location."""
    if hasattr(src, "manifest") and hasattr(src, "root"):  # an open vindex.Vindex / VindexWriter
        return [ResolvedVindex(src.manifest, str(Path(src.root).resolve()), str(src.root))]
    if not isinstance(src, (str, os.PathLike)):
        raise VindexError(f"a source must be a path or an hf:// location, got {type(src).__name__} {src!r}")
    text = os.fspath(src)
    if is_hub_uri(text):
        return _resolve_hub(text)
    return _resolve_local(Path(text).expanduser())


def resolve_sources(*sources) -> list[ResolvedVindex]:
    """Resolve every source; a model name may appear once (it is the `model` column's value)."""
    if not sources:
        raise VindexError("connect() needs at least one source: a vindex folder, a lake root or an hf:// repo")
    out: dict[str, ResolvedVindex] = {}
    for src in sources:
        for rv in resolve_source(src):
            old = out.get(rv.name)
            if old is not None and old.base != rv.base:
                raise VindexError(f"two vindexes are both named {rv.name!r}: {old.base} and {rv.base}; "
                                  "model names must be unique within a lake (rename one)")
            out[rv.name] = rv
    return list(out.values())


def _resolve_local(path: Path) -> list[ResolvedVindex]:
    if not path.exists():
        raise NotFound(f"{path}: no such folder (expected a vindex folder or a lake root)")
    if not path.is_dir():
        raise NotFound(f"{path}: not a folder (expected a vindex folder or a lake root)")
    if _has_manifest(path):
        return [ResolvedVindex(load_manifest(path), str(path.resolve()), str(path))]
    found = []
    for child in lake_members(path):
        if _has_manifest(child, lake=path):
            try:
                found.append(ResolvedVindex(load_manifest(child), str(child.resolve()), str(child)))
            except ManifestError as e:
                raise ManifestError(f"lake {path}: {e}") from None
    if not found:
        raise NotFound(f"{path}: neither a vindex (no {MANIFEST}) nor a lake root (no sub-folder holds a "
                       f"{MANIFEST})")
    return found


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def _has_manifest(folder: Path, lake: Path | None = None) -> bool:
    """Whether `folder` holds a vindex.json. One that is there but is not a regular file inside the
    folder (a directory, a FIFO, a dangling symlink or one leading out of the folder) is an error
    naming it, never a folder silently left out of the lake (nor a FIFO read that never returns)."""
    p = folder / MANIFEST
    where = f"lake {lake}: {p}" if lake is not None else str(p)
    try:
        st = p.lstat()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ManifestError(f"{where}: cannot be read ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        try:
            safe_join(folder, MANIFEST)
        except UnsafePath:
            raise UnsafePath(f"{where}: a symlink to {os.readlink(p)!r}, outside the vindex folder; a manifest "
                             "must lie in its vindex (copy it in, or remove the link)") from None
        try:
            st = p.stat()
        except OSError as e:
            raise ManifestError(f"{where}: a symlink to {os.readlink(p)!r}, which cannot be read "
                                f"({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise ManifestError(f"{where}: is {kind}, not a regular file; a vindex's manifest is a JSON file "
                            "(remove or rename it, or the folder is no vindex)")
    return True


def _resolve_hub(location: str) -> list[ResolvedVindex]:
    """hf://datasets/<owner>/<repo>[@<rev>][/<folder>]: the repo's vindex, or each vindex of a lake repo.

    The manifests come through vindex.hub (validated like a pulled one); the shards are read through
    `HubShards` at the commit the manifests were read at: each shard a query needs is fetched whole
    and checked against its manifest entry (size, sha256, partition columns) before DuckDB opens it.
    """
    from vindex.hub.remote import endpoint, find_remote_vindexes

    out = []
    for rv in find_remote_vindexes(location):
        base = rv.fs_url()
        files = {HubShards._strip_protocol(f"{base}/{e['path']}"): e
                 for t in (rv.manifest.get("tables") or {}).values() for e in (t or {}).get("files", [])}
        out.append(ResolvedVindex(rv.manifest, base, location, HubShards(files=files, endpoint=endpoint())))
    return out


class HubShards(AbstractFileSystem):
    """The hf:// filesystem of a query over Hub vindexes (DuckDB's and `lake_cka`'s way to their shards).

    A path a manifest lists is served from its verified local copy (`vindex.verified.cached_copy`:
    fetched whole once, kept only when size, sha256 and partition columns match, re-checked by a
    stat at every open); its size and time come from the manifest, never from the server, and it
    is never globbed. Any other hf:// path (a query's own `FROM 'hf://...'`) goes to HfFileSystem
    unchanged. One instance may serve several vindexes (`merged`), since DuckDB takes one
    filesystem per protocol.
    """
    protocol = "hf"
    cachable = False
    _FIXED_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)   # a listed shard's content is its sha256

    def __init__(self, files: dict | None = None, endpoint: str | None = None, token=None, **kwargs):
        super().__init__(**kwargs)
        self.files = dict(files or {})          # path without hf:// -> manifest entry
        self.endpoint, self.token = endpoint, token
        self._hf = None

    @classmethod
    def merged(cls, filesystems) -> "HubShards":
        fss = list(filesystems)
        files = {k: e for fs in fss for k, e in fs.files.items()}
        return cls(files=files, endpoint=fss[0].endpoint, token=fss[0].token)

    @classmethod
    def _strip_protocol(cls, path) -> str:
        path = str(path)
        return path[len("hf://"):] if path.startswith("hf://") else path

    @property
    def hf(self):
        """The HfFileSystem the bytes come from (made on first use, also after unpickling on a worker)."""
        if self._hf is None:
            from huggingface_hub import HfFileSystem

            from vindex.hub.remote import hub_session

            hub_session()
            self._hf = HfFileSystem(endpoint=self.endpoint, token=self.token)
        return self._hf

    def shard(self, path) -> Path:
        """The verified local copy of a listed shard (fetched on first use)."""
        from vindex.verified import cached_copy

        key = self._strip_protocol(path)
        entry = self.files[key]
        return cached_copy(entry, lambda f, limit: self._fetch(key, f, limit), where=f"hf://{key}")

    def _fetch(self, key: str, f, limit: int) -> None:
        from vindex.hub.remote import hub_call

        url = f"hf://{key}"

        def get():
            f.seek(0)
            f.truncate()
            got = 0
            with self.hf.open(url, "rb", block_size=0) as r:
                while chunk := r.read(1 << 20):
                    got += len(chunk)
                    if got > limit:
                        raise ChecksumError(f"{url}: more than the {limit} bytes its manifest records arrived "
                                            "(the server sent another file; nothing was kept)")
                    f.write(chunk)

        hub_call(url, get)

    def _listed(self, path) -> str | None:
        key = self._strip_protocol(path)
        return key if key in self.files else None

    def glob(self, path, **kwargs):
        key = self._listed(path)
        return [key] if key else self.hf.glob(path, **kwargs)

    def info(self, path, **kwargs):
        key = self._listed(path)
        if key is None:
            return self.hf.info(path, **kwargs)
        return {"name": key, "size": self.files[key]["bytes"], "type": "file"}

    def size(self, path):
        return self.info(path)["size"]

    def isfile(self, path):
        return self._listed(path) is not None or self.hf.isfile(path)

    def isdir(self, path):
        return self._listed(path) is None and self.hf.isdir(path)

    def exists(self, path, **kwargs):
        return self._listed(path) is not None or self.hf.exists(path, **kwargs)

    def modified(self, path):
        return self._FIXED_TIME if self._listed(path) else self.hf.modified(path)

    def ls(self, path, detail=True, **kwargs):
        return self.hf.ls(path, detail=detail, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        key = self._listed(path)
        if key is None:
            return self.hf.open(f"hf://{self._strip_protocol(path)}", mode, **kwargs)
        if mode != "rb":
            raise VindexError(f"hf://{key}: a shard of a remote vindex is read-only")
        return LocalFileOpener(str(self.shard(key)), "rb", fs=LocalFileSystem())
