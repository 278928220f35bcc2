"""Concurrent writers on one vindex, and readers while they write.

  * `vindex build` and `vindex weights` of the tiny model into one folder at once, and two builds of
    different prompt sets at once (real CLI runs in child processes): the result must hold exactly
    what the same commands run one after the other make (by content), else data-lost.
  * 2-4 writer processes adding their own prompt sets, shard by shard, each shard its own commit,
    with random pauses (seeded): every writer's shards and prompt set must be in the manifest and
    verify, equal to the same writes done one after another.
  * a writer that meets a lock held by another process and may not wait: one `error:` line naming
    the holder.
  * readers (SQL over the views, Vindex.read, verify) looping while a writer commits: every answer
    is a state some commit made (each layer it shows holds exactly that layer's rows), or a named
    error; never different numbers, never a bare exception.
"""
from __future__ import annotations

import collections
import json
import time

import pytest

import fault_child
import fault_harness as fh
from fault_child import build_argv, new_toy_vindex, toy_writes, weights_argv

GROUP = "concurrent writers and readers"
N_RACES = fh.count("races")
READER_LAYERS = 24


def _by_content(root) -> collections.Counter:
    """What the manifest lists, independent of part numbers: (table, partition, rows, sha256) counted,
    and the prompt sets without their part ranges."""
    m = json.loads((root / "vindex.json").read_text())
    c = collections.Counter((t, json.dumps(e["partition"], sort_keys=True), e["rows"], e["sha256"])
                            for t, v in m["tables"].items() for e in v["files"])
    for name, s in m["prompt_sets"].items():
        c[("prompt set", name, json.dumps({k: v for k, v in s.items() if k != "part_base"}, sort_keys=True))] += 1
    return c


def _sound(v: fh.Verdict, root, label: str) -> None:
    from vindex import verify
    problems = verify(root)
    if problems:
        v.note(fh.DATA_LOST, f"{label}: verify finds {len(problems)} problem(s): " + "; ".join(map(str, problems[:3])))
    else:
        v.note(fh.HANDLED, f"{label}: verify finds nothing")


def _together(v: fh.Verdict, tmp_path, *argvs) -> bool:
    runs = fault_child.wait_forks(fault_child.start_forks(
        [(argv, 0, tmp_path, f"writer-{i}") for i, argv in enumerate(argvs)]), timeout=600)
    return all([v.cli(f"{argv[0]} #{i}", r) for i, (argv, r) in enumerate(zip(argvs, runs))])


def test_build_and_weights_at_once(verdict, tiny, references, tmp_path):
    ref = references("weights")
    out = tmp_path / "vx"
    verdict.injected("vindex build and vindex weights started together into one new folder")
    if _together(verdict, tmp_path, build_argv(tiny, out), weights_argv(tiny, out)):
        verdict.content("both tables' shards", fh.digest(out), fh.digest(ref.root))
        _sound(verdict, out, "the result")
    verdict.done()


def test_two_prompt_sets_at_once(verdict, tiny, references, tmp_path):
    ref = references("build_b")
    out = tmp_path / "vx"
    verdict.injected("two vindex build runs of different prompt sets started together into one new folder")
    if _together(verdict, tmp_path, build_argv(tiny, out), build_argv(tiny, out, tiny.prompts_b)):
        verdict.content("shards and prompt sets by content", _by_content(out), _by_content(ref.root))
        _sound(verdict, out, "the result")
    verdict.done()


@pytest.mark.parametrize("i", range(N_RACES))
def test_writer_processes_race(verdict, tmp_path, i):
    rnd = fh.rng("races", i)
    writers, layers = rnd.randint(2, 4), rnd.randint(2, 6)
    pauses = [rnd.choice((0.0, 0.001, 0.01, 0.03)) for _ in range(writers)]
    verdict.injected(f"{writers} writer processes, {layers} shards each, pauses {pauses}")
    ref = new_toy_vindex(tmp_path / "ref")
    for w in range(writers):
        toy_writes(str(ref), w, layers, 0.0)
    out = new_toy_vindex(tmp_path / "vx")
    procs = [fault_child.start_call(toy_writes, str(out), w, layers, pauses[w], folder=tmp_path, tag=f"w{w}")
             for w in range(writers)]
    runs = fault_child.wait_forks(procs, timeout=300)
    if all(verdict.cli(f"writer {w}", r) for w, r in enumerate(runs)):
        verdict.content("every writer's shards and prompt set", fh.digest(out), fh.digest(ref))
        verdict.content("prompt sets", json.loads((out / "vindex.json").read_text())["prompt_sets"],
                        json.loads((ref / "vindex.json").read_text())["prompt_sets"])
        _sound(verdict, out, "the result")
    verdict.done()


def test_a_writer_that_may_not_wait_is_told_who_holds_the_lock(verdict, tiny, tmp_path, monkeypatch):
    from vindex.lock import TIMEOUT_ENV, WriteLock
    out = new_toy_vindex(tmp_path / "vx")
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    verdict.injected("this process holds the write lock; vindex build into the folder may wait 0.5 s")
    with WriteLock(out, timeout=10):
        run = fault_child.fork(build_argv(tiny, out), 0, tmp_path, "second")
    if run.code == 0:
        verdict.note(fh.SILENT_WRONG, "the second writer wrote while the lock was held")
    else:
        verdict.cli("second writer", run)
        if "pid" not in run.output:
            verdict.note(fh.BARE, f"the error does not name the holder: {run.output[-300:]}")
    verdict.done()


# -- readers during writes ---------------------------------------------------------------------------

def _by_layer(table) -> dict:
    layers = table.column("layer").to_numpy()
    return {layer: fh.canonical(table.filter(layers == layer)) for layer in sorted(set(layers.tolist()))}


def _reference_layers(tmp_path, read) -> dict:
    ref = new_toy_vindex(tmp_path / "ref")
    toy_writes(str(ref), 0, READER_LAYERS, 0.0)
    return _by_layer(read(ref))


def _check_snapshot(v: fh.Verdict, table, expected: dict, label: str) -> str:
    for layer, got in _by_layer(table).items():
        if layer not in expected or got != expected[layer]:
            return v.note(fh.SILENT_WRONG, f"{label}: layer {layer} does not hold what its commit wrote: "
                          + fh.first_difference(got, expected.get(layer)))
    return fh.HANDLED


def _sql_pooled(root):
    from vindex.query import connect
    r = connect(root).sql("SELECT * EXCLUDE (model) FROM pooled").arrow()
    return r.read_all() if hasattr(r, "read_all") else r


def _read_pooled(root):
    from vindex import Vindex
    return Vindex.open(root).read("pooled")


READERS = {"SQL over the pooled view": _sql_pooled, "Vindex.read": _read_pooled, "verify": None}


def _first_commit(root, proc, timeout=120) -> None:
    """Wait until the writer has committed its first pooled shard (reads before that find no table)."""
    deadline = time.monotonic() + timeout
    while proc.is_alive() and time.monotonic() < deadline:
        try:
            if json.loads((root / "vindex.json").read_text())["tables"].get("pooled", {}).get("files"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.005)


@pytest.mark.parametrize("reader", list(READERS))
def test_readers_while_a_writer_commits(verdict, tmp_path, reader):
    from vindex import verify
    expected = _reference_layers(tmp_path, READERS[reader]) if READERS[reader] else {}
    out = new_toy_vindex(tmp_path / "vx")
    verdict.injected(f"{reader} in a loop while a writer process commits {READER_LAYERS} shards one by one")
    proc = fault_child.start_call(toy_writes, str(out), 0, READER_LAYERS, 0.02, folder=tmp_path, tag="writer")
    _first_commit(out, proc[0])
    reads, seen, bad, named = 0, set(), 0, collections.Counter()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and bad <= 3:
        running = proc[0].is_alive()
        try:
            if reader == "verify":
                problems = [p for p in verify(out) if p.kind != "orphan"]   # a shard not yet committed is one
                if problems:
                    bad += 1
                    verdict.note(fh.SILENT_WRONG, f"verify during a write: {problems[0]}")
            else:
                t = READERS[reader](out)
                seen |= set(t.column("layer").to_pylist())
                if _check_snapshot(verdict, t, expected, f"read {reads}") != fh.HANDLED:
                    bad += 1
        except Exception as e:  # noqa: BLE001
            if fh.named_error(e):
                named[type(e).__name__] += 1
            else:
                bad += 1
                verdict.error(f"read {reads}", e)
        reads += 1
        if not running:
            break
    [run] = fault_child.wait_forks([proc], timeout=300)
    verdict.cli("the writer", run)
    verdict.note(fh.HANDLED, f"{reads} reads during the writes ({len(seen)} layers seen)"
                 + (f"; named errors: {dict(named)}" if named else ""))
    verdict.done()
