"""Resume: a build cut off by an exception or by kill -9 continues from its committed shard
groups, and the result equals an uninterrupted build (same shards, same bytes)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ingest_fixtures import make_tiny_model, write_prompts
from vindex import Vindex, verify
from vindex.errors import InvalidValue
from vindex.ingest import activations, builder as build_mod
from vindex.ingest import build

ARGS = dict(batch_size=2, shard_rows=24, progress=False)   # 8 prompts -> several shard groups


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    folder = make_tiny_model(root / "llama", "llama")
    prompts = write_prompts(root / "p.jsonl")
    reference = build(folder, root / "reference", prompts=prompts, **ARGS)
    return folder, prompts, reference


def shard_digest(root: Path) -> dict:
    """path -> (rows, sha256) of every activations/pooled/prompts shard in the manifest."""
    m = json.loads((root / "vindex.json").read_text())
    return {e["path"]: (e["rows"], e["sha256"]) for t in ("activations", "pooled", "prompts")
            for e in m["tables"][t]["files"]}


def count_forward_passes(monkeypatch) -> list:
    calls = []
    real = activations.HiddenStates.run

    def run(self, ids, attn):
        calls.append(len(ids))
        return real(self, ids, attn)
    monkeypatch.setattr(activations.HiddenStates, "run", run)
    return calls


def test_plan_has_several_groups(setup):
    folder, prompts, reference = setup
    sets = Vindex.open(reference).manifest["prompt_sets"]
    assert sets["p"]["n_parts"] >= 3


def test_resume_after_exception_equals_uninterrupted(setup, tmp_path, monkeypatch):
    folder, prompts, reference = setup
    real = build_mod.capture_group
    n = {"calls": 0}

    def failing(*a, **k):
        n["calls"] += 1
        if n["calls"] == 3:
            raise RuntimeError("injected failure in group 3")
        return real(*a, **k)
    monkeypatch.setattr(build_mod, "capture_group", failing)
    with pytest.raises(RuntimeError, match="injected"):
        build(folder, tmp_path / "vx", prompts=prompts, **ARGS)
    monkeypatch.setattr(build_mod, "capture_group", real)
    partial = Vindex.open(tmp_path / "vx")
    assert partial.manifest["prompt_sets"]["p"]["complete"] is False
    # group 1 committed; group 2 was written by the writer threads but never committed (the
    # failure came first), so its shards lie on disk as orphans the rerun overwrites
    assert len(partial.files("activations", layer=0)) == 1
    assert (tmp_path / "vx" / "data" / "activations" / "layer=0" / "part-00001.parquet").is_file()

    calls = count_forward_passes(monkeypatch)
    build(folder, tmp_path / "vx", prompts=prompts, **ARGS)
    assert 0 < sum(calls) < 8        # only the missing groups ran
    assert shard_digest(tmp_path / "vx") == shard_digest(reference)
    assert verify(tmp_path / "vx") == []
    assert Vindex.open(tmp_path / "vx").manifest["prompt_sets"]["p"]["complete"] is True


KILLER = textwrap.dedent("""
    import os, signal, sys
    from vindex.writer import VindexWriter
    real = VindexWriter.write_shard
    n = {"shards": 0}
    limit = int(sys.argv[4])
    def write_shard(self, *a, **k):
        n["shards"] += 1
        if n["shards"] > limit:
            os.kill(os.getpid(), signal.SIGKILL)     # kill -9 in the middle of a group
        return real(self, *a, **k)
    VindexWriter.write_shard = write_shard
    from vindex.ingest import build
    build(sys.argv[1], sys.argv[2], prompts=sys.argv[3], batch_size=2, shard_rows=24, progress=False)
""")


def test_resume_after_kill_9_equals_uninterrupted(setup, tmp_path):
    folder, prompts, reference = setup
    n_layers = Vindex.open(reference).n_layers
    per_group = 2 * (n_layers + 1)                    # activations + pooled shard per layer
    limit = 1 + per_group + per_group // 2            # prompts shard, group 1, half of group 2
    out = tmp_path / "vx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(folder), str(out), str(prompts), str(limit)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = Vindex.open(out)
    assert len(partial.files("activations", layer=0)) >= 1
    assert partial.manifest["prompt_sets"]["p"]["complete"] is False
    on_disk = list((out / "data" / "activations").rglob("part-*.parquet"))
    listed = sum(len(partial.files("activations", layer=l)) for l in partial.layers("activations"))
    assert len(on_disk) >= listed                    # group 2's orphans may lie there, unlisted
    build(folder, out, prompts=prompts, **ARGS)
    assert shard_digest(out) == shard_digest(reference)
    assert verify(out) == []


def test_resume_with_other_arguments_is_refused(setup, tmp_path):
    folder, prompts, reference = setup
    out = tmp_path / "vx"
    build(folder, out, prompts=prompts, layers="0-1", **ARGS)
    with pytest.raises(InvalidValue, match="layers"):
        build(folder, out, prompts=prompts, layers="0-2", **ARGS)
    # --no-resume rebuilds: the old shards of this prompt set are replaced
    build(folder, out, prompts=prompts, layers="2", resume=False, **ARGS)
    vx = Vindex.open(out)
    assert vx.layers("activations") == [2]
    assert verify(out) == []


def test_completed_build_reruns_as_a_no_op(setup, tmp_path, monkeypatch):
    folder, prompts, reference = setup
    import shutil
    shutil.copytree(reference, tmp_path / "vx")
    calls = count_forward_passes(monkeypatch)
    build(folder, tmp_path / "vx", prompts=prompts, **ARGS)
    assert calls == []
    assert shard_digest(tmp_path / "vx") == shard_digest(reference)
