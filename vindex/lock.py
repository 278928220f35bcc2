"""The write lock of a vindex folder: one manifest commit at a time, released by the OS if a writer dies.

Two files in the vindex folder, both hidden (readers, globs and DuckDB scans never see them):

    .vindex.lock     `WriteLock`: an exclusive flock held for the short critical section of a
                     commit (re-read vindex.json, merge this writer's changes, replace it). While
                     held it records its holder (pid, host, command, since) for the message of a
                     writer that waited too long.
    .vindex.writers  `WriterSession`: a shared flock every live writer holds for its whole life.
                     A writer that finds itself alone (it gets the flock exclusively) removes the
                     hidden temp files that killed writers left behind, then shares it.

Readers never take either lock: they read vindex.json, which is only ever replaced atomically.
flock locks belong to the open file, so the kernel releases them when a process exits, even by
kill -9; a lock is never left behind. They need a filesystem with working flock (local disks,
NFSv4); on one without it, taking the lock raises ManifestError quoting the OS error rather than
locking nothing.

The timeout: `lock_timeout` seconds (0 = fail at once, math.inf = wait forever); by default
DEFAULT_TIMEOUT_S, or VINDEX_LOCK_TIMEOUT from the environment (a number of seconds or "inf").
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shlex
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import InvalidValue, ManifestError, VindexBusy, VindexError
from .files import parse_json

# fcntl.flock by hand, not the filelock package (here only through huggingface-hub and torch):
# filelock 4.3 falls back to a soft lock file where flock fails with ENOSYS, which a kill -9'd
# holder never releases, and has no shared mode for the writers' session lock below.
LOCK_FILE = ".vindex.lock"
WRITERS_FILE = ".vindex.writers"
DEFAULT_TIMEOUT_S = 120.0   # a commit holds the lock for well under a second; 2 minutes means a stuck holder
TIMEOUT_ENV = "VINDEX_LOCK_TIMEOUT"
_POLL_S = (0.01, 0.25)      # first and longest sleep between tries while waiting
_SAY_AFTER_S = 2.0          # a wait longer than this is reported once on stderr
_SECRET_WORDS = ("token", "key", "secret", "password")


def lock_timeout(value: float | None = None) -> float:
    """Seconds to wait for a lock: `value`, else $VINDEX_LOCK_TIMEOUT, else DEFAULT_TIMEOUT_S."""
    where = "lock_timeout"
    if value is None:
        text = os.environ.get(TIMEOUT_ENV)
        if text is None or not text.strip():
            return DEFAULT_TIMEOUT_S
        where = f"${TIMEOUT_ENV}"
        try:
            value = float(text)
        except ValueError:
            raise InvalidValue(f"{where}: {text!r} is not a number of seconds (or 'inf')") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise InvalidValue(f"{where}: {value!r} must be a number of seconds >= 0 (0 = fail at once, inf = wait forever)")
    return float(value)


def _open_lock_file(path: Path) -> int:
    # 0o666 less the umask, as for any file of a lake meant to be shared; never truncated on open,
    # so a waiter can still read who holds it
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise ManifestError(f"{path}: cannot open the vindex's lock file ({e.strerror or e}); "
                            "writing needs a writable vindex folder") from None


def _try_flock(fd: int, mode: int, path: Path) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise ManifestError(f"{path}: cannot lock ({e.strerror or e}); writing needs a filesystem where "
                            "flock works (a local disk, NFSv4), so that no two writers commit at once") from None


def _wait_flock(fd: int, mode: int, path: Path, timeout: float, on_timeout, describe) -> None:
    """flock(fd, mode), polling until `timeout` seconds have passed (then on_timeout() raises)."""
    start = time.monotonic()
    sleep, said = _POLL_S[0], False
    while not _try_flock(fd, mode, path):
        waited = time.monotonic() - start
        if waited >= timeout:
            on_timeout(waited)
        if not said and waited >= _SAY_AFTER_S:
            print(f"vindex: waiting for {describe()} (up to {timeout:g} s)", file=sys.stderr, flush=True)
            said = True
        time.sleep(min(sleep, max(0.0, timeout - waited)))
        sleep = min(sleep * 2, _POLL_S[1])


def holder_info() -> dict:
    """Who this process is, as written into the lock file while it holds the lock."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _command_line() -> str:
    """sys.argv as a shell line, with the values of token/key/secret/password options hidden."""
    out, hide = [], False
    for arg in sys.argv:
        low = arg.lower()
        if hide:
            out.append("***")
            hide = False
            continue
        if low.startswith("-") and any(w in low for w in _SECRET_WORDS):
            if "=" in arg:
                arg = arg.split("=", 1)[0] + "=***"
            else:
                hide = True
        out.append(arg)
    line = shlex.join(out)
    return line if len(line) <= 300 else line[:297] + "..."


def read_holder(root: str | os.PathLike) -> dict | None:
    """The holder recorded in `root`'s lock file (None when none is recorded or it is unreadable)."""
    try:
        data = (Path(root) / LOCK_FILE).read_bytes()
        info = parse_json(data, LOCK_FILE) if data.strip() else None
    except (OSError, VindexError):
        return None
    return info if isinstance(info, dict) else None


def describe_holder(info: dict | None) -> str:
    if not info:
        return "another process (it recorded no holder)"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('since', '?')} "
            f"(command: {info.get('command') or '?'})")


class WriteLock:
    """The exclusive commit lock of the vindex at `root`; re-entrant, for one writer's threads.

        with WriteLock(root, timeout=10):
            ...   # re-read, merge and replace vindex.json
    """

    def __init__(self, root: str | os.PathLike, timeout: float | None = None):
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.timeout = lock_timeout(timeout)
        self.acquired_at: float | None = None   # time.time() of the outermost acquire
        self._fd: int | None = None
        self._depth = 0
        self._thread_lock = threading.RLock()

    @property
    def held(self) -> bool:
        return self._depth > 0

    def acquire(self) -> "WriteLock":
        self._thread_lock.acquire()
        if self._depth:
            self._depth += 1
            return self
        try:
            fd = _open_lock_file(self.path)
            try:
                _wait_flock(fd, fcntl.LOCK_EX, self.path, self.timeout, self._busy,
                            lambda: f"the write lock of {self.root}, held by {describe_holder(read_holder(self.root))}")
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode(), 0)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self._thread_lock.release()
            raise
        self._fd, self._depth, self.acquired_at = fd, 1, time.time()
        return self

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if not self._depth:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)   # a free lock names no holder
            except OSError:
                pass
            finally:
                os.close(fd)          # closing the last descriptor releases the flock
        self._thread_lock.release()

    def _busy(self, waited: float) -> None:
        holder = describe_holder(read_holder(self.root))
        how = "did not wait (lock_timeout=0)" if self.timeout == 0 else f"waited {waited:.0f} s"
        raise VindexBusy(f"{self.root}: another writer holds the write lock {self.path}: {holder}; {how}. "
                         f"Let it finish, or wait longer with lock_timeout= (${TIMEOUT_ENV}=SECONDS); "
                         "a lock whose process has died is released by the OS at once")

    def __enter__(self) -> "WriteLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class WriterSession:
    """Membership of the live writers of `root`: a shared flock on .vindex.writers for the life of
    this object (closed by `close()` or when it is garbage collected).

    `cleanup(since)` runs only when no other writer is alive (the flock was taken exclusively),
    with `since` = time.time() of that moment; no writer can join until it returns.
    """

    def __init__(self, root: str | os.PathLike, timeout: float | None = None, cleanup=None):
        self.root = Path(root)
        self.path = self.root / WRITERS_FILE
        self._fd: int | None = _open_lock_file(self.path)
        try:
            if cleanup is not None and _try_flock(self._fd, fcntl.LOCK_EX, self.path):
                try:
                    cleanup(time.time())
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_SH)   # a conversion; nobody wrote in between
            else:   # waits only while a lone writer cleans up, so the default timeout is ample
                _wait_flock(self._fd, fcntl.LOCK_SH, self.path, lock_timeout(timeout), self._busy,
                            lambda: f"a writer of {self.root} to finish cleaning up")
        except BaseException:
            self.close()
            raise

    def _busy(self, waited: float) -> None:
        raise VindexBusy(f"{self.root}: a writer holds {self.path} exclusively (cleaning up temp files) "
                         f"for {waited:.0f} s; is it stuck? (${TIMEOUT_ENV}=SECONDS waits longer)")

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        self.close()


def is_temp_file(name: str) -> bool:
    """A hidden temp file of `vindex.files.temp_path_for`: .<name>.<random>.tmp."""
    return name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3


def stale_temp_files(root: str | os.PathLike, before: float, listed: set[str] = frozenset()) -> list[Path]:
    """Hidden temp files under `root` (its top level and data/) last modified before `before`
    (time.time()) and not listed in the manifest (`listed`, relative POSIX paths)."""
    root = Path(root)
    found = [p for p in root.iterdir() if p.is_file() and is_temp_file(p.name)] if root.is_dir() else []
    data = root / "data"
    if data.is_dir():
        found += [p for p in data.rglob(".*.tmp") if is_temp_file(p.name) and p.is_file()]
    out = []
    for p in found:
        try:
            if p.stat().st_mtime < before and p.relative_to(root).as_posix() not in listed:
                out.append(p)
        except OSError:      # gone meanwhile
            continue
    return sorted(out)
