"""The fault suite's fixtures and its scoreboard (see fault_harness.py and docs/reliability.md).

    verdict     one case: probe through it, end with verdict.done()
    tiny        a tiny random Llama (tests/ingest_fixtures.py) and two prompt sets
    references  uninterrupted `vindex build` / `vindex weights` runs of it, and how many kill points each has
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

import fault_harness as fh


@pytest.fixture(scope="session")
def _cache_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("vindex-cache")


@pytest.fixture(scope="module", autouse=True)
def _private_cache(_cache_folder):
    """While a fault module runs, the verified-shard memo and other caches go to a temp folder, not the
    user's ~/.cache/vindex (restored afterwards: the rest of the test session keeps its own)."""
    old = os.environ.get("VINDEX_CACHE")
    os.environ["VINDEX_CACHE"] = str(_cache_folder)
    yield
    if old is None:
        os.environ.pop("VINDEX_CACHE", None)
    else:
        os.environ["VINDEX_CACHE"] = old


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_fault_{report.when}", report)


@pytest.fixture
def verdict(request):
    """One case of the suite: the test probes through it and calls `done()`. A test that ends in an
    exception of its own before `done()` is recorded as a bare traceback (it was not handled)."""
    v = fh.Verdict(getattr(request.module, "GROUP", request.module.__name__), request.node.nodeid)
    yield v
    call = getattr(request.node, "_fault_call", None)
    if not v.recorded and call is not None and call.failed:
        v.note(fh.BARE, f"the case ended in an exception: {str(call.longrepr).strip().splitlines()[-1][:300]}")
        fh.BOARD.record(fh.Case(v.group, v.nodeid, v.outcome, v.notes, v.fault))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not fh.BOARD.cases:
        return
    terminalreporter.section("vindex fault scoreboard")
    for line in fh.BOARD.lines(verbose=os.environ.get(fh.VERBOSE_ENV, "") not in ("", "0")):
        terminalreporter.write_line(line)
    report = os.environ.get(fh.REPORT_ENV)
    if report:
        Path(report).write_text(json.dumps(fh.BOARD.as_json(), indent=2))


def pytest_sessionfinish(session, exitstatus):
    """Any case that was not handled fails the session (its own test failed already)."""
    if fh.BOARD.bad() and session.exitstatus == 0:
        session.exitstatus = 1


# -- a tiny model and its uninterrupted runs --------------------------------------------------------

@dataclass
class Tiny:
    model: Path
    prompts_a: Path
    prompts_b: Path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    from ingest_fixtures import PROMPTS, make_tiny_model, write_prompts
    root = tmp_path_factory.mktemp("fault-model")
    model = make_tiny_model(root / "llama", "llama")
    a = write_prompts(root / "a.jsonl", PROMPTS)
    b = write_prompts(root / "b.jsonl", [{**p, "text": p["text"] + " Please answer."} for p in PROMPTS[::-1]])
    return Tiny(model, a, b)


@dataclass
class Reference:
    root: Path          # the vindex an uninterrupted run wrote
    events: list        # the kill points (events) the uninterrupted run went through, in order

    @property
    def points(self) -> int:
        return len(self.events)


@pytest.fixture(scope="session")
def references(tiny, tmp_path_factory):
    """Uninterrupted runs in forked children, made once on first use: 'build' (prompt set a),
    'weights' (onto a copy of that build), 'build_b' (prompt set b onto that), 'both' (build a,
    weights, build b: what the concurrent cases must equal)."""
    import shutil

    import fault_child
    from fault_child import build_argv, weights_argv
    root = tmp_path_factory.mktemp("fault-references")
    made: dict[str, Reference] = {}

    def get(name: str) -> Reference:
        if name in made:
            return made[name]
        out = root / name
        if name == "build":
            r = fault_child.fork(build_argv(tiny, out), 0, root / "logs", name)
        elif name == "weights":
            shutil.copytree(get("build").root, out)
            r = fault_child.fork(weights_argv(tiny, out), 0, root / "logs", name)
        elif name == "build_b":
            shutil.copytree(get("build").root, out)
            r = fault_child.fork(build_argv(tiny, out, tiny.prompts_b), 0, root / "logs", name)
        elif name == "both":
            shutil.copytree(get("weights").root, out)
            r = fault_child.fork(build_argv(tiny, out, tiny.prompts_b), 0, root / "logs", name)
        else:
            raise KeyError(name)
        assert r.code == 0, f"the uninterrupted {name} failed:\n{r.output[-3000:]}"
        made[name] = Reference(out, r.events)
        return made[name]
    return get
