"""Finding vindexes: turn whatever a user passes to `connect` into (manifest, base location) pairs.

Every source kind goes through `resolve_source`, so adding one (hf:// repos, object stores) is one
branch here plus, where DuckDB cannot read the location natively, a filesystem to register: the
views in views.py are built only from `ResolvedVindex` objects and never look at the disk.

Only files the manifest lists exist for a query: orphans left by an interrupted write are never
globbed, because views read explicit file lists, not folders.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from vindex.errors import ManifestError, NotFound, UnsafePath, VindexError
from vindex.files import safe_join
from vindex.hub.location import is_hub_uri
from vindex.manifest import MANIFEST, ManifestView, load_manifest


@dataclass(frozen=True)
class ResolvedVindex(ManifestView):
    """One vindex found in a source: its manifest (accessors: `ManifestView`) and where its files live.

    `base` is a location string DuckDB can read files under (an absolute local path today,
    `hf://datasets/<repo>` once the Hub source lands); `filesystem` is an fsspec filesystem
    that `connect` registers with DuckDB when `base` is not a native location (None locally).
    """
    manifest: dict
    base: str
    source: str
    filesystem: object | None = field(default=None, compare=False, repr=False)

    def url(self, relpath: str) -> str:
        """Where DuckDB reads the manifest path `relpath` (refusing paths that escape the vindex)."""
        if self.filesystem is None and "://" not in self.base:
            return str(safe_join(self.base, relpath))
        safe_join("/", relpath)  # same traversal rules, no disk access
        return f"{self.base.rstrip('/')}/{relpath}"


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
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
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

    The manifests come through vindex.hub (validated like a pulled one) and the files stay on the
    Hub: DuckDB reads them through HfFileSystem, only the row groups a query needs, at the commit
    the manifests were read at.
    """
    from vindex.hub.remote import find_remote_vindexes, hub_filesystem

    fs = hub_filesystem()
    return [ResolvedVindex(rv.manifest, rv.fs_url(), location, fs) for rv in find_remote_vindexes(location)]
