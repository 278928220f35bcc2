"""Concurrent writers on one vindex: the write lock, the merging commit, readers during writes.

Real processes throughout: `vindex build` and `vindex weights` (the CLI, as a user runs them)
started together into one folder, two prompt sets built at once, a writer kill -9'd while it
holds the lock, a reader looping while a writer commits. Each result is checked against the
same work done one after the other, by content.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ingest_fixtures import PROMPTS, make_tiny_model, write_prompts
from vindex import Vindex, VindexWriter, verify
from vindex.cli import main
from vindex.errors import InvalidValue, SchemaMismatch, VindexBusy
from vindex.files import temp_path_for
from vindex.lock import LOCK_FILE, TIMEOUT_ENV, WRITERS_FILE, WriteLock, lock_timeout, read_holder
from vindex.manifest import MANIFEST, load_manifest
from vindex.ingest.on_ray import StagingWriter, commit_staged

BUILD = ["--batch-size", "2", "--shard-rows", "24", "--quiet"]     # 8 prompts -> several shard groups
MODEL = {"id": "t/v", "family": "toy", "n_layers": 2, "d_model": 4}

# A child process: imports first, then waits for the go file so that the children start within
# milliseconds of each other. Every shard write sleeps argv[3] seconds, and the first one waits
# until the path argv[4] exists ("-": no wait), so that the runs overlap however slow a start is.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vindex.writer import VindexWriter
    from vindex.cli import main
    go, ready, pause, after = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    real = VindexWriter.write_shard
    def slow(self, *a, **k):
        deadline = time.monotonic() + 300
        while after != "-" and not Path(after).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(pause)
        return real(self, *a, **k)
    VindexWriter.write_shard = slow
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    main(sys.argv[5:])
""")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("writers")
    folder = make_tiny_model(root / "llama", "llama")
    a = write_prompts(root / "a.jsonl", PROMPTS)
    b = write_prompts(root / "b.jsonl", [{**p, "text": p["text"] + " Please answer."} for p in PROMPTS[::-1]])
    return folder, a, b


def run_together(tmp_path, *runs, timeout=600):
    """Start one CHILD per (seconds per shard, path to wait for, argv), release them at once, wait for
    all to succeed."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(len(runs))]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(go), str(r), str(pause), str(after), *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, (pause, after, argv) in zip(ready, runs)]
    deadline = time.monotonic() + timeout
    while not all(r.exists() for r in ready):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.02)
    go.touch()
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]


def digest(root: Path, tables=None) -> dict:
    """(table, path) -> (rows, sha256) of every shard the manifest lists."""
    m = json.loads((root / MANIFEST).read_text())
    return {(t, e["path"]): (e["rows"], e["sha256"]) for t, v in m["tables"].items()
            if tables is None or t in tables for e in v["files"]}


def cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


# -- whole commands at once ------------------------------------------------------------------------

def test_build_and_weights_at_once_both_survive(model, tmp_path):
    folder, a, _ = model
    out = tmp_path / "x"
    # weights opens the vindex at once (the build first loads its model) and writes its shards
    # only once the build has started writing its own: whichever commits last, a commit that
    # overwrote the manifest with its own copy would drop the other's tables
    run_together(tmp_path, (0.02, "-", ["build", str(folder), str(out), "--prompts", str(a), *BUILD]),
                 (0.2, out / "data" / "prompts", ["weights", str(folder), str(out), "--quiet"]))
    vx = Vindex.open(out)
    assert {"prompts", "activations", "pooled", "features", "ov_gate", "layer_stats"} <= set(vx.tables)
    assert vx.manifest["prompt_sets"]["a"]["complete"] is True
    assert set(vx.manifest["extraction"]) >= {"activations", "weights"}
    cli("verify", out)                                   # exit 0: no missing file, no orphan
    ref = tmp_path / "ref"                               # the same two commands, one after the other
    cli("build", folder, ref, "--prompts", a, *BUILD)
    cli("weights", folder, ref, "--quiet")
    assert digest(out) == digest(ref)
    assert sorted(p.relative_to(out) for p in (out / "data").rglob("*.parquet")) == \
        sorted(p.relative_to(ref) for p in (ref / "data").rglob("*.parquet"))


def test_two_prompt_sets_at_once_get_their_own_parts(model, tmp_path):
    folder, a, b = model
    out = tmp_path / "x"
    run_together(tmp_path, (0.03, "-", ["build", str(folder), str(out), "--prompts", str(a), *BUILD]),
                 (0.03, "-", ["build", str(folder), str(out), "--prompts", str(b), *BUILD]))
    assert verify(out) == []
    sets = Vindex.open(out).manifest["prompt_sets"]
    assert set(sets) == {"a", "b"} and all(s["complete"] for s in sets.values())
    ranges = sorted((s["part_base"], s["part_base"] + s["n_parts"]) for s in sets.values())
    assert ranges[0][1] <= ranges[1][0]                  # disjoint part ranges
    ref = tmp_path / "ref"
    cli("build", folder, ref, "--prompts", a, *BUILD)
    cli("build", folder, ref, "--prompts", b, *BUILD)
    assert by_prompt_set(out) == by_prompt_set(ref)      # same shards; only the part numbers may differ
    assert digest(out, ("prompts",)) == digest(ref, ("prompts",))


def by_prompt_set(root: Path) -> dict:
    """(prompt set, table, layer, part within the set) -> sha256: independent of which set went first."""
    m = json.loads((root / MANIFEST).read_text())
    out = {}
    for name, s in m["prompt_sets"].items():
        for t in ("activations", "pooled"):
            for e in m["tables"][t]["files"]:
                part = int(e["path"].rsplit("part-", 1)[1].split(".")[0]) - s["part_base"]
                if 0 <= part < s["n_parts"]:
                    out[name, t, e["partition"]["layer"], part] = e["sha256"]
        out[name] = {k: v for k, v in s.items() if k != "part_base"}
    return out


# -- the lock --------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vindex.writer import VindexWriter
    w = VindexWriter.open(sys.argv[1])
    with w.transaction():
        w.manifest["extraction"]["holder"] = {"step": 1}
        Path(sys.argv[2]).touch()
        time.sleep(600)
""")


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}


def small_vindex(root: Path) -> Path:
    w = VindexWriter.create(root, "v", MODEL)
    w.write_shard("layer_stats", stats_rows(0), {}, 0)
    w.close()
    return root


def stats_rows(layer: int, n: int = 3) -> dict:
    """n layer_stats rows of `layer` (a table with no vectors: the cheapest real shard)."""
    f = np.arange(n, dtype=np.float32) + layer
    return {"layer": [layer] * n, "matrix": [f"m{i}" for i in range(n)], "rows": [4] * n, "cols": [4] * n,
            "top_singular_values": [[1.0, 0.5]] * n, "effective_rank": f, "spectral_entropy": f,
            "energy_top1pct": f, "energy_top10pct": f}


def start_holder(root: Path, tmp_path: Path) -> subprocess.Popen:
    ready = tmp_path / "holding"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(ready), "holder-marker-7"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def test_a_second_writer_that_cannot_wait_is_told_who_holds_the_lock(tmp_path):
    root = small_vindex(tmp_path / "v")
    proc = start_holder(root, tmp_path)
    try:
        w = VindexWriter.open(root, lock_timeout=0.5)
        w.write_shard("layer_stats", stats_rows(1), {}, 1, commit=False)
        t0 = time.monotonic()
        with pytest.raises(VindexBusy) as e:
            w.commit()
        assert 0.4 < time.monotonic() - t0 < 5
        msg = str(e.value)
        assert f"pid {proc.pid}" in msg and socket.gethostname() in msg and "holder-marker-7" in msg
        assert str(root) in msg and "since 20" in msg and "waited" in msg
        with pytest.raises(VindexBusy, match="did not wait"):
            VindexWriter.open(root, lock_timeout=0).commit()
        assert read_holder(root)["pid"] == proc.pid
        assert [e["path"] for e in load_manifest(root)["tables"]["layer_stats"]["files"]] == \
            ["data/layer_stats/part-00000.parquet"]      # readers never wait, and saw nothing half-done
    finally:
        proc.kill()
        proc.wait()


def test_a_writer_killed_while_holding_the_lock_frees_it_at_once(tmp_path):
    root = small_vindex(tmp_path / "v")
    proc = start_holder(root, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    t0 = time.monotonic()
    w = VindexWriter.open(root, lock_timeout=0)          # no wait allowed: the OS released the flock
    w.write_shard("layer_stats", stats_rows(1), {}, 1)
    assert time.monotonic() - t0 < 10                    # (lock_timeout=0 already proves it did not wait)
    m = load_manifest(root)
    assert "holder" not in m["extraction"]               # the killed writer's change was never committed
    assert len(m["tables"]["layer_stats"]["files"]) == 2
    assert verify(root) == []


def test_lock_timeout_values(monkeypatch, tmp_path):
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert lock_timeout() == 120 and lock_timeout(0) == 0 and lock_timeout(float("inf")) == float("inf")
    monkeypatch.setenv(TIMEOUT_ENV, "7.5")
    assert lock_timeout() == 7.5 and lock_timeout(3) == 3
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(InvalidValue, match=f"{TIMEOUT_ENV}.*'soon'"):
        lock_timeout()
    for bad in (-1, float("nan"), "10", True):
        with pytest.raises(InvalidValue, match="lock_timeout"):
            lock_timeout(bad)
    monkeypatch.setenv(TIMEOUT_ENV, "0")
    root = small_vindex(tmp_path / "v")
    with WriteLock(root, timeout=10):                    # held by this process, through another descriptor
        with pytest.raises(VindexBusy, match="did not wait"):
            VindexWriter.open(root).commit()
    assert read_holder(root) is None                     # a free lock names no holder


# -- readers during writes -------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from test_writers import stats_rows
    from vindex.writer import VindexWriter
    w = VindexWriter.open(sys.argv[1])
    for i in range(1, int(sys.argv[2]) + 1):
        w.write_shard("layer_stats", stats_rows(i % 3), {}, i)
""")


def test_readers_during_writes_always_see_a_valid_manifest(tmp_path):
    root = small_vindex(tmp_path / "v")
    n = 60
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(n)], stderr=subprocess.PIPE, text=True,
                            env=ENV)
    seen, reads = [], 0
    while proc.poll() is None or reads == 0:
        vx = Vindex.open(root)                           # validates vindex.json; never waits for the lock
        files = vx.files("layer_stats")
        seen.append(len(files))
        for e in files[-1:]:                             # a listed shard is always whole on disk
            assert (root / e["path"]).stat().st_size == e["bytes"]
        reads += 1
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert seen == sorted(seen) and seen[-1] <= n + 1    # commits only ever add
    assert len(set(seen)) > 3, seen                      # the reads did overlap the commits
    assert len(Vindex.open(root).files("layer_stats")) == n + 1
    assert verify(root) == []


# -- the merging commit (two writer objects in this process) ---------------------------------------

def test_two_writers_of_other_tables_and_prompt_sets_both_survive(tmp_path):
    root = small_vindex(tmp_path / "v")
    w1, w2 = VindexWriter.open(root), VindexWriter.open(root)
    w1.add_prompt_set("one", "0" * 64, 3, commit=False, part_base=0, n_parts=1)
    w1.update(extraction={"weights": {"top_k": 5}}, commit=False)
    w1.write_shard("pooled", {"prompt_set": ["one"] * 2, "prompt_id": [0, 1], "pooling": ["mean"] * 2,
                              "act": np.ones((2, 4))}, {"layer": 1}, 0)
    w2.add_prompt_set("two", "1" * 64, 2, commit=False, part_base=1, n_parts=1)
    w2.update(extraction={"activations": {"layers": [1]}}, model={"revision": "abc"}, commit=False)
    w2.write_shard("layer_stats", stats_rows(2), {}, 2)     # w2 never saw w1's commit
    m = load_manifest(root)
    assert set(m["prompt_sets"]) == {"one", "two"}
    assert set(m["extraction"]) == {"weights", "activations"} and m["model"]["revision"] == "abc"
    assert len(m["tables"]["pooled"]["files"]) == 1 and m["tables"]["pooled"]["vector_width"] == 4
    assert [e["partition"] for e in m["tables"]["layer_stats"]["files"]] == [{}, {}]
    assert w2.manifest["prompt_sets"].keys() == {"one", "two"}   # the committer now sees both
    assert verify(root) == []
    w1.manifest["prompt_sets"].pop("one")                   # a removal merges as a removal
    w1.commit()
    assert set(load_manifest(root)["prompt_sets"]) == {"two"}


def test_conflicting_vector_declarations_are_refused_not_mixed(tmp_path):
    root = small_vindex(tmp_path / "v")
    w1, w2 = VindexWriter.open(root), VindexWriter.open(root)
    rows = {"prompt_set": ["s"], "prompt_id": [0], "pooling": ["mean"], "act": np.ones((1, 4))}
    w1.write_shard("pooled", rows, {"layer": 1}, 0)
    before = (root / MANIFEST).read_bytes()
    w2.declare_vectors("pooled", 4, "float32")
    with pytest.raises(SchemaMismatch, match="pooled.*float16.*float32"):
        w2.write_shard("pooled", rows, {"layer": 1}, 1)
    assert (root / MANIFEST).read_bytes() == before
    assert verify(root) == [] or all(p.kind == "orphan" for p in verify(root))


def test_ray_driver_commit_merges_with_another_writer(tmp_path):
    root = small_vindex(tmp_path / "v")
    driver = VindexWriter.open(root)
    s = StagingWriter.open(root)
    s.write_shard("pooled", {"prompt_set": ["s"], "prompt_id": [0], "pooling": ["mean"], "act": np.ones((1, 4))},
                  {"layer": 1}, 0)
    s.close()
    other = VindexWriter.open(root)                          # commits while the Ray job runs
    other.write_shard("layer_stats", stats_rows(1), {}, 1)
    counts = commit_staged(driver, [json.loads(json.dumps(s.staged()))],
                           finish=lambda: driver.update(extraction={"ray": {"ok": True}}, commit=False))
    assert counts == {"pooled": 1}
    m = load_manifest(root)
    assert len(m["tables"]["layer_stats"]["files"]) == 2 and len(m["tables"]["pooled"]["files"]) == 1
    assert m["extraction"]["ray"] == {"ok": True}
    assert verify(root) == []


# -- hidden temp files of killed writers -----------------------------------------------------------

KILLED_MID_SHARD = textwrap.dedent("""
    import os, signal, sys
    import pyarrow.parquet as pq
    from vindex.writer import VindexWriter
    real = pq.write_table
    def dying(table, where, **k):
        real(table, where, **k)
        os.kill(os.getpid(), signal.SIGKILL)      # the temp shard is written, never renamed
    pq.write_table = dying
    import vindex.writer
    vindex.writer.pq.write_table = dying
    from test_writers import stats_rows
    w = VindexWriter.open(sys.argv[1])
    w.write_shard("layer_stats", stats_rows(1), {}, 1)
""")


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*.tmp"))


def test_temp_files_of_killed_writers_are_removed_by_the_next_lone_writer(tmp_path):
    root = small_vindex(tmp_path / "v")
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_SHARD, str(root)], capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = temp_files(root)
    assert [p.parent.name for p in left] == ["layer_stats"] and left[0].name.startswith(".part-00001.parquet.")
    assert verify(root) == []                              # invisible to readers meanwhile
    live = VindexWriter.open(root)                         # the next writer, alone: removes it
    assert temp_files(root) == []
    mine = temp_path_for(root / "data" / "layer_stats" / "part-00009.parquet")   # live's shard in progress
    time.sleep(0.05)
    other = VindexWriter.open(root)                        # not alone: never touches a live writer's file
    assert temp_files(root) == [mine]
    other.write_shard("layer_stats", stats_rows(1), {}, 1)
    other.close()
    live.close()                                           # live "dies" without renaming its temp file
    time.sleep(0.05)                                       # its mtime is now before the next writer starts
    with VindexWriter.open(root) as w:
        assert temp_files(root) == []
        w.write_shard("layer_stats", stats_rows(2), {}, 2)
    assert (root / LOCK_FILE).is_file() and (root / WRITERS_FILE).is_file()
    assert verify(root) == []


def test_a_filesystem_without_flock_is_a_named_error_not_an_unlocked_write(tmp_path, monkeypatch):
    import errno
    import fcntl

    from vindex.errors import ManifestError
    root = small_vindex(tmp_path / "v")
    before = (root / MANIFEST).read_bytes()

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(ManifestError, match=r"\.vindex\.writers: cannot lock \(No locks available\).*flock"):
        VindexWriter.open(root)
    w = VindexWriter(root, load_manifest(root))
    w.update(extraction={"x": {"y": 1}}, commit=False)
    with pytest.raises(ManifestError, match=r"\.vindex\.lock: cannot lock .*NFSv4"):
        w.commit()
    assert (root / MANIFEST).read_bytes() == before
