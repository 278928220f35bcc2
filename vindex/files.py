"""File-level primitives every part of vindex shares: safe paths, checksums, atomic writes.

A reader must never see half a file, and a manifest from elsewhere (the Hub, a LarQL folder)
must never make us read or write outside the vindex folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from .errors import UnsafePath, VindexError

_UMASK = os.umask(0)
os.umask(_UMASK)


def safe_join(root: str | os.PathLike, relpath: str) -> Path:
    """Resolve `relpath` (a POSIX path from a manifest) under `root`, refusing any escape."""
    p = PurePosixPath(relpath)
    if not relpath or p.is_absolute() or relpath.startswith(("\\", "/")) or ":" in p.parts[0] \
            or any(part in ("..", "") for part in p.parts) or "\\" in relpath:
        raise UnsafePath(f"path {relpath!r} escapes the vindex folder {str(root)!r} "
                         "(absolute paths, '..' and backslashes are not allowed)")
    # os.path.realpath is what Path.resolve runs, without the Path objects (a lake lists thousands of paths)
    root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root, *p.parts))
    if full != root and not full.startswith(root.rstrip(os.sep) + os.sep):
        raise UnsafePath(f"path {relpath!r} resolves outside the vindex folder {root!r} (symlink?)")
    return Path(full)


def cache_home(area: str = "") -> Path:
    """vindex's per-user cache, $VINDEX_CACHE (default ~/.cache/vindex), or its `area` sub-folder:
    models (dequantized checkpoints), hub (pulled vindexes), verified (the read memo), shards."""
    base = os.environ.get("VINDEX_CACHE")
    home = Path(base).expanduser() if base else Path.home() / ".cache" / "vindex"
    return home / area if area else home


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename durable: the directory entry must reach the disk, not just the data."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A unique sibling name for `path`; hidden, so globs and DuckDB scans never pick it up."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a lake is meant to be shared like any file
    return Path(tmp)


def commit_file(tmp: Path, final: Path) -> None:
    """fsync `tmp`, then atomically rename it over `final`."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Write a file atomically: yields a hidden temp sibling to write to; on success it is fsynced and
    renamed over `path`, on any error (or interrupt) it is removed and `path` is left as it was.

        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        commit_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def parse_json(data: bytes | str, where: str, error: type[VindexError] = VindexError):
    """Parse JSON from an untrusted file, turning every way it can be bad into `error` naming `where`:
    not UTF-8, not JSON, or nested so deep that the parser would overflow the stack."""
    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, ValueError) as e:   # JSONDecodeError is a ValueError
        raise error(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply to be read") from None


def read_json(path: str | os.PathLike, error: type[VindexError] = VindexError):
    """`parse_json` of a file's bytes (the caller checks that the file exists, with its own hint)."""
    return parse_json(Path(path).read_bytes(), str(path), error)
