"""Distributed ingest (`vindex.ingest.on_ray`) against the single-machine jobs, on a local Ray with
2 CPUs: the same shards byte for byte, one manifest commit, and a preempted actor's group rewritten
under the same names (no duplicates)."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from vindex import Vindex, VindexWriter, verify
from vindex.errors import CorruptShard, InvalidValue
from vindex.ingest.on_ray import StagingWriter, commit_staged
from vindex.manifest import MANIFEST

from ingest_fixtures import make_tiny_model

# the 64 heldout prompts of the tiny llama in 1 MB buffers -> 4 shard groups (the parallel unit); dtype
# 'auto' is decided by a probe batch (on a Ray worker for the distributed build)
BUILD = dict(prompts="heldout", buffer_mb=1, dtype="auto", progress=False)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", "llama")


@pytest.fixture(scope="module")
def single(tiny_model, tmp_path_factory):
    """The single-machine build every distributed result is compared with."""
    from vindex.ingest import build
    return build(tiny_model, tmp_path_factory.mktemp("single") / "tiny", **BUILD)


def shards(root, tables=("prompts", "activations", "pooled")) -> dict:
    vx = Vindex.open(root)
    return {t: {e["path"]: e["sha256"] for e in vx.files(t)} for t in tables}


def test_ray_build_writes_the_same_shards_and_commits_once(tiny_model, single, tmp_path, ray_local, monkeypatch):
    from vindex import writer as writer_module
    from vindex.ingest import on_ray as distributed
    from vindex.ingest import build

    out = tmp_path / "tiny"
    log = []
    real_save, real_run = writer_module.save_manifest, distributed._run_groups

    def counting_save(root, manifest):
        log.append("commit")
        return real_save(root, manifest)

    def watched_run(*args, **kwargs):
        before = (out / MANIFEST).read_bytes()
        log.append("ray:start")
        results = real_run(*args, **kwargs)
        assert (out / MANIFEST).read_bytes() == before, "a worker wrote the manifest"
        log.append("ray:end")
        return results

    monkeypatch.setattr(writer_module, "save_manifest", counting_save)
    monkeypatch.setattr(distributed, "_run_groups", watched_run)
    root = build(tiny_model, out, **BUILD, ray=True, actors=2, gpus_per_actor=0)
    assert log[log.index("ray:start"):] == ["ray:start", "ray:end", "commit"]
    assert shards(root) == shards(single)
    assert len({p[-13:] for p in shards(root)["pooled"]}) >= 2   # several groups: the work was spread
    a, b = Vindex.open(single).manifest, Vindex.open(root).manifest
    assert a["extraction"] == b["extraction"] and a["prompt_sets"] == b["prompt_sets"]
    assert verify(root) == []


def test_preempted_actor_rewrites_its_shards_without_duplicates(tiny_model, single, tmp_path, ray_local):
    """Resume + failure model: the last group is missing from the manifest (an earlier run died before
    committing it, leaving a garbage orphan); the actor computing it dies once after writing."""
    from vindex.ingest.on_ray import build_on_ray

    root = tmp_path / "tiny"
    shutil.copytree(single, root)
    w = VindexWriter.open(root)
    last = max(int(e["path"][-13:-8]) for e in w.manifest["tables"]["pooled"]["files"])
    for t in ("activations", "pooled"):
        w.manifest["tables"][t]["files"] = [e for e in w.manifest["tables"][t]["files"]
                                            if not e["path"].endswith(f"part-{last:05d}.parquet")]
    w.commit()
    (root / f"data/pooled/layer=1/part-{last:05d}.parquet").write_bytes(b"orphan from a killed run")
    markers = tmp_path / "markers"
    markers.mkdir()
    build_on_ray(tiny_model, root, **BUILD, actors=1, gpus_per_actor=0, _fail_once=str(markers))
    assert sorted(p.name for p in markers.iterdir()) == [f"failed-part-{last:05d}"]   # only that group ran
    assert shards(root) == shards(single)
    for t in ("activations", "pooled"):
        paths = [e["path"] for e in Vindex.open(root).files(t)]
        assert len(paths) == len(set(paths))
    assert verify(root) == []


def test_weights_fan_out_per_layer_range(tiny_model, tmp_path, ray_local):
    from vindex.cli import main
    from vindex.ingest import build_weights

    a = build_weights(tiny_model, tmp_path / "one", progress=False)
    b = tmp_path / "ray"
    r = CliRunner().invoke(main, ["weights", str(tiny_model), str(b), "--quiet", "--ray", "--layers-per-task", "1"])
    assert r.exit_code == 0, r.output
    tables = ("features", "ov_gate")
    assert shards(a, tables) == shards(b, tables) and all(shards(b, tables).values())
    # layer_stats holds SVD spectra: BLAS may sum in another order in a 1-thread worker, so the
    # same files, with the same values to float tolerance (not always the same bytes)
    assert shards(a, ["layer_stats"])["layer_stats"].keys() == shards(b, ["layer_stats"])["layer_stats"].keys()
    ta, tb = (Vindex.open(x).read("layer_stats").to_pylist() for x in (a, b))
    assert len(ta) == len(tb) > 0
    for ra, rb in zip(ta, tb):
        for k, va in ra.items():
            if isinstance(va, float):
                assert va == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (k, ra, rb)
            elif isinstance(va, list) and va and isinstance(va[0], float):
                assert va == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (k, ra, rb)
            else:
                assert va == rb[k], (k, ra, rb)
    ma, mb = Vindex.open(a).manifest, Vindex.open(b).manifest
    assert ma["extraction"] == mb["extraction"] and ma["model"] == mb["model"]
    assert ma["tables"]["features"]["vector_width"] == mb["tables"]["features"]["vector_width"]
    assert verify(b) == []


def test_more_gpus_than_the_cluster_has_is_a_clear_error(tiny_model, tmp_path, ray_local):
    from vindex.ingest.on_ray import build_on_ray
    with pytest.raises(InvalidValue, match="gpus_per_actor=1.*0 GPU"):
        build_on_ray(tiny_model, tmp_path / "x", prompts="heldout", progress=False, gpus_per_actor=1)


def test_staging_writer_never_writes_the_manifest_and_commit_checks_every_shard(tmp_path):
    w = VindexWriter.create(tmp_path / "v", "v", {"id": "t/v", "family": "toy", "n_layers": 2, "d_model": 4})
    w.declare_vectors("pooled", 4, "float32")
    w.commit()
    before = (tmp_path / "v" / MANIFEST).read_bytes()
    rows = {"prompt_set": ["s"] * 3, "prompt_id": [0, 1, 2], "pooling": ["mean"] * 3, "act": [[1.0, 2, 3, 4]] * 3}
    results = []
    for part in (0, 1, 0):          # part 0 twice: a retried task reports its shard again
        s = StagingWriter.open(tmp_path / "v")
        s.write_shard("pooled", rows, {"layer": 1}, part)
        s.commit()
        results.append(json.loads(json.dumps(s.staged())))
    assert (tmp_path / "v" / MANIFEST).read_bytes() == before
    expected = {"pooled": {f"data/pooled/layer=1/part-0000{p}.parquet" for p in (0, 1)}}
    with pytest.raises(CorruptShard, match="not reported"):
        commit_staged(VindexWriter.open(tmp_path / "v"),
                      results, {"pooled": expected["pooled"] | {"data/pooled/layer=2/part-00000.parquet"}})
    (tmp_path / "v/data/pooled/layer=1/part-00001.parquet").write_bytes(b"rewritten")
    with pytest.raises(CorruptShard, match="part-00001.*written twice"):
        commit_staged(VindexWriter.open(tmp_path / "v"), results, expected)
    assert (tmp_path / "v" / MANIFEST).read_bytes() == before
    s = StagingWriter.open(tmp_path / "v")
    s.write_shard("pooled", rows, {"layer": 1}, 1)
    w = VindexWriter.open(tmp_path / "v")
    assert commit_staged(w, results[:1] + [s.staged()], expected) == {"pooled": 2}
    w.commit()
    assert [e["path"] for e in Vindex.open(tmp_path / "v").files("pooled")] == sorted(expected["pooled"])


@pytest.mark.parametrize("argv, address", [(["--ray"], ""), (["--ray", "ray://head:10001"], "ray://head:10001")])
def test_cli_build_ray_options_reach_the_function(monkeypatch, tmp_path, argv, address):
    from vindex.cli import main
    from vindex.ingest import on_ray as distributed
    seen = {}

    def fake(source, out, **kwargs):
        seen.update(kwargs, source=source, out=out)
        return tmp_path

    monkeypatch.setattr(distributed, "build_on_ray", fake)
    r = CliRunner().invoke(main, ["build", "some-model", str(tmp_path / "v"), "--quiet", "--actors", "3",
                                  "--gpus-per-actor", "0.5", *argv])
    assert r.exit_code == 0, r.output
    assert seen["address"] == address and seen["actors"] == 3 and seen["gpus_per_actor"] == 0.5
    assert seen["source"] == "some-model" and seen["progress"] is False
