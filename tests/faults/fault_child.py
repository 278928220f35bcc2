"""kill -9 at a chosen point of a real `vindex` command, in a real child process.

The child counts I/O events as they happen: a Parquet write (before and after), an `os.replace`
(before and after: a shard or the manifest moved into place), an `os.fsync`, a manifest commit
(before and after), taking the write lock, an HTTP request (before it is sent and after its answer)
and each chunk of a download. With KILL_AT = k > 0 it sends itself SIGKILL at the k-th event; with
k = 0 it runs to the end. Either way each event is appended to TRACE as it happens, so an
uninterrupted run tells how many points there are (the test draws k from 1..that) and a killed run's
last line says where it died.

Two ways to start one:
  * `spawn(...)`: `python fault_child.py TRACE KILL_AT LOG -- <vindex arguments>` (no torch: the Hub
    commands);
  * `fork(...)`: forked from a fork server that has imported torch, transformers and vindex.ingest
    once (multiprocessing's "forkserver"), so a build or weights child starts in milliseconds
    instead of re-importing torch each time. It is still its own process, killed by a real SIGKILL.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRELOAD = ["fault_child", "torch", "transformers", "vindex.cli", "vindex.ingest", "vindex.ingest.builder",
           "vindex.ingest.weights", "transformers.models.llama.modeling_llama"]


# -- the child side -------------------------------------------------------------------------------

def install(trace: str, kill_at: int) -> None:
    """Patch the event points: count, log, and SIGKILL this process at event `kill_at`."""
    import pyarrow.parquet as pq
    try:
        import httpx2 as httpx        # the HTTP client huggingface_hub uses here
    except ImportError:
        import httpx

    from vindex.lock import WriteLock
    from vindex.writer import VindexWriter

    lock = threading.Lock()
    n = [0]
    log = open(trace, "a", buffering=1)

    def event(name: str) -> None:
        with lock:
            n[0] += 1
            log.write(f"{n[0]} {name}\n")
            log.flush()
            if kill_at and n[0] >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, attr, label, after=True):
        real = getattr(owner, attr)

        @functools.wraps(real)
        def wrapped(*a, **k):
            name = label(a, k) if callable(label) else label
            event(f"before {name}")
            out = real(*a, **k)
            if after:
                event(f"after {name}")
            return out
        setattr(owner, attr, wrapped)

    def base(x) -> str:
        return Path(str(x)).name if isinstance(x, (str, os.PathLike)) else type(x).__name__

    wrap(os, "replace", lambda a, k: f"os.replace -> {'/'.join(Path(str(a[1])).parts[-2:])}")
    wrap(os, "fsync", "os.fsync", after=False)
    wrap(pq, "write_table", lambda a, k: f"parquet write {base(a[1] if len(a) > 1 else k.get('where'))}")
    wrap(VindexWriter, "commit", "manifest commit")
    wrap(WriteLock, "acquire", "lock acquire")
    def request(a, k):
        r = a[1] if len(a) > 1 else k["request"]
        return f"http {r.method} {r.url.path[-60:]}"
    wrap(httpx.Client, "send", request)
    real_iter = httpx.Response.iter_bytes

    def iter_bytes(self, *a, **k):
        for chunk in real_iter(self, *a, **k):
            event(f"chunk of {self.request.url.path[-40:]}")
            yield chunk
    httpx.Response.iter_bytes = iter_bytes


def run(trace: str, kill_at: int, log: str, argv: list[str], env: dict | None = None) -> None:
    """The child's body: output to `log`, the event points installed, then `vindex <argv>`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    install(trace, kill_at)
    from vindex.cli import main
    main(argv, prog_name="vindex")


TOY_ROWS, TOY_WIDTH = 4, 4       # the toy writers' shards: rows and vector width


def toy_writes(root: str, writer: int, layers: int, pause: float, log: str | None = None) -> None:
    """Writer `writer` adds its own prompt set s<writer> to the vindex at `root`: one pooled shard per
    layer (part number = writer), each committed on its own, `pause` seconds apart. The same values
    every time (seeded by writer and layer), so a sequential run gives the reference."""
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
    import numpy as np

    from vindex.writer import VindexWriter
    w = VindexWriter.open(root)
    name = f"s{writer}"
    for layer in range(layers):
        rng = np.random.default_rng([writer, layer])
        w.write_shard("pooled", {"prompt_set": [name] * TOY_ROWS, "prompt_id": np.arange(TOY_ROWS),
                                 "pooling": ["mean"] * TOY_ROWS,
                                 "act": rng.standard_normal((TOY_ROWS, TOY_WIDTH)).astype(np.float32)},
                      partition={"layer": layer}, part=writer)
        time.sleep(pause)
    w.add_prompt_set(name, "0" * 64, TOY_ROWS, complete=True)
    w.close()


def new_toy_vindex(root: Path) -> Path:
    """An empty vindex that toy_writes adds to (pooled vectors of width TOY_WIDTH)."""
    from vindex.writer import VindexWriter
    w = VindexWriter.create(root, "t", {"id": "t/t", "family": "toy", "n_layers": 32, "d_model": TOY_WIDTH})
    w.declare_vectors("pooled", TOY_WIDTH, "float32")
    w.commit()
    w.close()
    return root


# -- the parent side ------------------------------------------------------------------------------

BUILD_ARGS = ["--batch-size", "2", "--shard-rows", "24", "--quiet"]   # 8 prompts -> several shard groups


def build_argv(tiny, out: Path, prompts: Path | None = None) -> list[str]:
    """`vindex build` of the tiny model (conftest's `tiny`) into `out`, prompt set a unless `prompts`."""
    return ["build", str(tiny.model), str(out), "--prompts", str(prompts or tiny.prompts_a), *BUILD_ARGS]


def weights_argv(tiny, out: Path) -> list[str]:
    return ["weights", str(tiny.model), str(out), "--quiet"]


@dataclass
class ChildRun:
    code: int              # the exit status; -9 when killed
    events: list[str]      # the trace, one event per line ("12 before os.replace -> data/x.parquet")
    output: str            # what the child printed

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL

    @property
    def commit_finished(self) -> bool:
        """Whether a manifest commit had finished before the child died."""
        return any("after manifest commit" in e for e in self.events)

    def last_event(self) -> str:
        return self.events[-1] if self.events else "(no event: killed before the first)"


def _files(folder: Path, tag: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    trace, log = folder / f"{tag}.trace", folder / f"{tag}.log"
    for p in (trace, log):
        p.unlink(missing_ok=True)
    return trace, log


def _result(code: int, trace: Path, log: Path) -> ChildRun:
    events = trace.read_text().splitlines() if trace.exists() else []
    return ChildRun(code, events, log.read_text(errors="replace") if log.exists() else "")


def spawn(argv: list[str], kill_at: int, folder: Path, tag: str, timeout: float = 300) -> ChildRun:
    """A fresh interpreter running `vindex <argv>` (with the current environment)."""
    trace, log = _files(folder, tag)
    p = subprocess.run([sys.executable, str(Path(__file__)), str(trace), str(kill_at), str(log), "--", *argv],
                       timeout=timeout, env=os.environ.copy())
    return _result(p.returncode, trace, log)


_context = None


def _forkserver():
    global _context
    if _context is None:
        import multiprocessing
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def fork(argv: list[str], kill_at: int, folder: Path, tag: str, timeout: float = 300) -> ChildRun:
    """`vindex <argv>` in a child forked from the warm fork server (with the current environment)."""
    procs = start_forks([(argv, kill_at, folder, tag)])
    return wait_forks(procs, timeout)[0]


def start_forks(runs) -> list:
    """Start several forked children at once: [(argv, kill_at, folder, tag), ...]."""
    ctx = _forkserver()
    out = []
    for argv, kill_at, folder, tag in runs:
        trace, log = _files(folder, tag)
        p = ctx.Process(target=run, args=(str(trace), kill_at, str(log), list(argv), dict(os.environ)))
        p.start()
        out.append((p, trace, log))
    return out


def start_call(target, *args, folder: Path, tag: str):
    """Start `target(*args, log=<file>)` (a function of this module) in a forked child."""
    trace, log = _files(folder, tag)
    p = _forkserver().Process(target=target, args=args, kwargs={"log": str(log)})
    p.start()
    return p, trace, log


def wait_forks(procs, timeout: float = 300) -> list[ChildRun]:
    deadline = time.monotonic() + timeout
    out = []
    for p, trace, log in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            p.kill()
            p.join()
            raise TimeoutError(f"the child `vindex` did not end within {timeout} s; its output:\n"
                               + (log.read_text(errors="replace")[-2000:] if log.exists() else ""))
        out.append(_result(p.exitcode, trace, log))
    return out


if __name__ == "__main__":
    trace_, kill_at_, log_, sep, *argv_ = sys.argv[1:]
    assert sep == "--", sys.argv
    run(trace_, int(kill_at_), log_, argv_)
