"""kill -9 at random points of `vindex build`, `weights`, `publish` and `pull`, then the same command
again: it must resume to exactly what an uninterrupted run makes.

Each case draws a kill point k uniformly from the events an uninterrupted run goes through (Parquet
writes, renames into place, fsyncs, manifest commits, the lock, HTTP requests, download chunks: see
fault_child.py) and kills a real child process with SIGKILL at the k-th. Then:

  * what was committed must still be sound: every file the manifest (or the Hub repo's manifest)
    lists is there with its checksum, else data-lost;
  * the rerun must end in exit 0 or one `error:` line, never a traceback;
  * the rerun's content (every listed shard's rows and sha256; for pull and publish the bytes) must
    equal the uninterrupted run's, else data-lost.
"""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

import fault_child
import fault_harness as fh
from fault_child import build_argv, weights_argv

GROUP = "kill -9 and resume"
N = {op: fh.count(f"kill_{op}") for op in ("build", "weights", "publish", "pull")}
REPO = "vindex-org/kill"
URI = f"hf://datasets/{REPO}"
_points: dict[str, int] = {}          # kill points of an uninterrupted publish / pull (the same every test)

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # inside huggingface_hub


def _kill_point(op: str, i: int, points: int) -> int:
    return fh.rng("kill", op, i).randint(1, points)


def _killed(v: fh.Verdict, run: fault_child.ChildRun, k: int) -> None:
    v.injected(f"SIGKILL at event {k}: {run.last_event()}")
    if not run.killed:
        v.cli("the killed run (never reached its kill point)", run)


def _resume_content(v: fh.Verdict, out, reference, label="resume") -> None:
    from vindex import verify
    from vindex.lock import is_temp_file
    v.content(f"{label}: shards (rows, sha256)", fh.digest(out), fh.digest(reference))
    problems = verify(out)
    if problems:
        v.note(fh.DATA_LOST, f"{label}: verify finds {len(problems)} problem(s): "
               + "; ".join(map(str, problems[:3])))
    temps = [p.relative_to(out).as_posix() for p in out.rglob(".*") if p.is_file() and is_temp_file(p.name)]
    v.note(fh.HANDLED, f"{label}: " + (f"LEFTOVER hidden temp files of the killed run: {temps[:3]}" if temps
                                       else "no hidden temp files left"))


@pytest.mark.parametrize("i", range(N["build"]))
def test_kill_build_then_resume(verdict, tiny, references, tmp_path, i):
    ref = references("build")
    _kill_then_resume(verdict, build_argv(tiny, tmp_path / "vx"), tmp_path / "vx", ref,
                      _kill_point("build", i, ref.points), tmp_path)


def _kill_then_resume(verdict, argv, out, ref, k: int, tmp_path) -> None:
    """Kill the job at event k, check what it committed, rerun it and compare with the reference."""
    run = fault_child.fork(argv, k, tmp_path, "killed")
    _killed(verdict, run, k)
    fh.committed_files_sound(verdict, out, "the kill", run.commit_finished)
    if verdict.cli("resume", fault_child.fork(argv, 0, tmp_path, "resume")):
        _resume_content(verdict, out, ref.root)
    verdict.done()


@pytest.mark.parametrize("i", range(N["weights"]))
def test_kill_weights_then_resume(verdict, tiny, references, tmp_path, i):
    ref = references("weights")
    out = tmp_path / "vx"
    shutil.copytree(references("build").root, out)
    _kill_then_resume(verdict, weights_argv(tiny, out), out, ref, _kill_point("weights", i, ref.points), tmp_path)


# -- the Hub ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The vindex that is published and pulled: toy shards over 6 layers (a few dozen files)."""
    from toy_lakes import write_toy_vindex
    return write_toy_vindex(tmp_path_factory.mktemp("kill-hub") / "toy", n_layers=5)


def _expected_repo(root) -> dict:
    """path -> sha256 of what a complete publish puts in the repo (README.md aside)."""
    m = json.loads((root / "vindex.json").read_text())
    out = {e["path"]: e["sha256"] for t in m["tables"].values() for e in t["files"]}
    out["vindex.json"] = hashlib.sha256((root / "vindex.json").read_bytes()).hexdigest()
    return out


def _repo_files(server, repo) -> dict:
    try:
        return {p: f.sha256 for p, f in server.files(repo).items() if p != "README.md"}
    except KeyError:                      # the repo was never created
        return {}


def _repo_is_consistent(v: fh.Verdict, server) -> None:
    """The repo's manifest (if it has one) lists only files the repo has, with their sha256."""
    have = _repo_files(server, REPO)
    if "vindex.json" not in have:
        v.note(fh.HANDLED, f"after the kill the repo has no manifest yet ({len(have)} data files)")
        return
    m = json.loads(server.read_file(REPO, "vindex.json"))
    listed = {e["path"]: e["sha256"] for t in m["tables"].values() for e in t["files"]}
    broken = [p for p, sha in listed.items() if have.get(p) != sha]
    if broken:
        v.note(fh.DATA_LOST, f"the repo's manifest lists {len(broken)} file(s) it does not have: {broken[:3]}")
    else:
        v.note(fh.HANDLED, "after the kill the repo's manifest lists only files it has")


def _points_of(op: str, tmp_path, argv: list[str], reset) -> int:
    if op not in _points:
        r = fault_child.spawn(argv, 0, tmp_path, f"uninterrupted-{op}")
        assert r.code == 0, r.output[-3000:]
        _points[op] = len(r.events)
        reset()
    return _points[op]


@pytest.mark.parametrize("i", range(N["publish"]))
def test_kill_publish_then_resume(verdict, hub_server, source, tmp_path, i):
    from vindex.cli import main
    from click.testing import CliRunner
    argv = ["publish", str(source), "--repo", REPO, "--quiet"]
    points = _points_of("publish", tmp_path, argv, hub_server.reset)
    k = _kill_point("publish", i, points)
    run = fault_child.spawn(argv, k, tmp_path, "killed")
    _killed(verdict, run, k)
    _repo_is_consistent(verdict, hub_server)
    if verdict.cli("publish again", CliRunner().invoke(main, argv)):
        verdict.content("publish again: the repo", _repo_files(hub_server, REPO), _expected_repo(source))
    verdict.done()


@pytest.mark.parametrize("i", range(N["pull"]))
def test_kill_pull_then_resume(verdict, hub_server, source, tmp_path, i):
    from click.testing import CliRunner

    from vindex.cli import main
    from vindex.hub import publish
    publish(source, REPO, progress=False)
    out = tmp_path / "pulled"
    argv = ["pull", URI, "--out", str(out), "--quiet"]
    points = _points_of("pull", tmp_path, [*argv, "--workers", "1"], lambda: shutil.rmtree(out))
    k = _kill_point("pull", i, points)
    workers = fh.rng("kill", "pull-workers", i).choice(["1", "4"])
    run = fault_child.spawn([*argv, "--workers", workers], k, tmp_path, "killed")
    _killed(verdict, run, k)
    verdict.injected(f"(--workers {workers})")
    fh.committed_files_sound(verdict, out, "the kill", run.commit_finished)
    if verdict.cli("pull again", CliRunner().invoke(main, argv)):
        _resume_content(verdict, out, source, "pull again")
        verdict.content("pull again: bytes", fh.file_digest(out, "*.parquet"), fh.file_digest(source, "*.parquet"))
    verdict.done()
