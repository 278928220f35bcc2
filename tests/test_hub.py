"""Publish to and pull from a local Hub: partial pulls byte-identical, resume, tampering, traversal."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from toy_lakes import write_toy_vindex
from vindex import ChecksumError, ManifestError, NotFound, UnsafePath, Vindex, VindexError, verify
from vindex.errors import UnsupportedSchemaVersion
from vindex.errors import HubError
from vindex.hub import ls, publish
from vindex.hub.remote import cache_root
from vindex.hub.download import STAGING, pull

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # inside huggingface_hub

REPO = "vindex-org/toy"
URI = f"hf://datasets/{REPO}"


@pytest.fixture
def published(hub_server, tmp_path):
    root = write_toy_vindex(tmp_path / "toy")
    res = publish(root, REPO, progress=False)
    return root, res


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.parquet")}


def test_publish_uploads_everything_then_only_changes(hub_server, published):
    root, res = published
    local = _files(root)
    remote = hub_server.files(REPO)
    assert set(local) | {"vindex.json", "README.md"} <= set(remote)
    assert all(hub_server.read_file(REPO, p) == b for p, b in local.items())
    assert hub_server.read_file(REPO, "vindex.json") == (root / "vindex.json").read_bytes()
    assert len(res.uploaded) == len(local) + 2 and not res.unchanged
    hub_server.clear_log()
    again = publish(root, REPO, progress=False)
    assert again.uploaded == [] and again.commit == res.commit
    assert not [r for r in hub_server.log if r["path"].startswith("/_lfs/") or "/commit/" in r["path"]]


def test_pull_one_table_two_layers_byte_identical(hub_server, published, tmp_path):
    root, _ = published
    out = tmp_path / "pulled"
    res = pull(URI, tables=["pooled"], layers=[1, 2], out=out, progress=False)
    got = _files(out)
    want = {p: b for p, b in _files(root).items() if p.startswith(("data/pooled/layer=1/", "data/pooled/layer=2/"))}
    assert got == want and len(want) == 2
    vx = Vindex.open(out)
    assert vx.tables == ["pooled"] and vx.layers("pooled") == [1, 2]
    assert vx.manifest["pulled_from"]["repo_id"] == REPO and vx.manifest["pulled_from"]["partial"]
    assert verify(out) == []
    assert sorted(res.allow_patterns) == sorted(want)


@pytest.fixture(autouse=True)
def _no_retry_wait(monkeypatch):
    import vindex.hub.download

    monkeypatch.setattr(vindex.hub.download, "RETRY_WAIT", 0.0)


def _resolve_gets(hub_server) -> list[dict]:
    return [r for r in hub_server.log if r["method"] == "GET" and "/resolve/" in r["path"]
            and r["path"].endswith(".parquet")]


def _repo_path(r: dict) -> str:
    return r["path"].split("/resolve/", 1)[1].split("/", 1)[1]


def test_interrupted_pull_resumes(hub_server, published, tmp_path):
    root, _ = published
    out = tmp_path / "pulled"
    big = "data/activations/layer=2/part-00000.parquet"
    hub_server.interrupt(REPO, big, after=300, times=1)   # the connection drops after 300 bytes,
    hub_server.fail(REPO, big)                            # then every retry fails: the pull gives up
    with pytest.raises(HubError, match="run.*again|resume") as ei:
        pull(URI, out=out, progress=False)
    assert big in str(ei.value)
    assert (out / STAGING / (big + ".part")).stat().st_size == 300
    vx = Vindex.open(out)                                 # what arrived is a valid (partial) vindex
    assert big not in [e["path"] for e in vx.files("activations")] and verify(out) == []
    assert vx.manifest["pulled_from"]["partial"]
    hub_server.clear_faults()
    hub_server.clear_log()
    res = pull(URI, out=out, progress=False)
    gets = _resolve_gets(hub_server)
    assert [_repo_path(r) for r in gets] == [big]          # nothing verified is fetched again
    assert gets[0]["range"] == "bytes=300-"                # and the partial file continues
    assert res.downloaded == [big] and len(res.reused) == len(_files(root)) - 1
    assert _files(out) == _files(root) and not (out / STAGING).exists()
    assert verify(out) == [] and not Vindex.open(out).manifest["pulled_from"]["partial"]


def test_transient_failures_are_retried_and_resumed_in_one_pull(hub_server, published, tmp_path):
    root, _ = published
    big = "data/activations/layer=2/part-00000.parquet"
    hub_server.interrupt(REPO, big, after=300, times=2)   # dropped twice: each retry continues the last
    hub_server.fail(REPO, big, times=2)                   # then two 500 answers before the rest comes
    res = pull(URI, tables=["activations"], layers=[2], out=tmp_path / "pulled", progress=True)
    assert res.downloaded == [big] and not res.refetched
    assert [r["range"] for r in _resolve_gets(hub_server)] == [None, "bytes=300-", "bytes=600-", "bytes=600-",
                                                               "bytes=600-"]
    assert (tmp_path / "pulled" / big).read_bytes() == (root / big).read_bytes()


def test_damaged_local_file_is_fetched_again(hub_server, published, tmp_path):
    root, _ = published
    out = tmp_path / "pulled"
    pull(URI, tables=["pooled"], out=out, progress=False)
    victim = out / "data/pooled/layer=0/part-00000.parquet"
    victim.write_bytes(b"x" * victim.stat().st_size)
    hub_server.clear_log()
    res = pull(URI, tables=["pooled"], out=out, progress=False)
    assert [_repo_path(r) for r in _resolve_gets(hub_server)] == ["data/pooled/layer=0/part-00000.parquet"]
    assert _files(out) == {p: b for p, b in _files(root).items() if p.startswith("data/pooled/")}
    assert len(res.reused) == 3


def test_tampered_file_is_fetched_again(hub_server, published, tmp_path):
    path = "data/pooled/layer=1/part-00000.parquet"
    good = hub_server.read_file(REPO, path)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    hub_server.tamper(REPO, path, bytes(bad), times=1)     # one bad answer (a flaky mirror)
    out = tmp_path / "pulled"
    res = pull(URI, tables=["pooled"], out=out, progress=False)
    assert res.refetched == [path]
    assert (out / path).read_bytes() == good and verify(out) == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_tampered_file_is_rejected(hub_server, published, tmp_path, damage):
    path = "data/pooled/layer=1/part-00000.parquet"
    good = hub_server.read_file(REPO, path)
    bad = {"flip": bytes([good[0] ^ 1]) + good[1:], "truncate": good[:-40], "extend": good + b"\0" * 10}[damage]
    hub_server.tamper(REPO, path, bad)                     # every answer is bad
    out = tmp_path / "pulled"
    with pytest.raises(ChecksumError, match="layer=1.*(sha256|truncated|more than)") as ei:
        pull(URI, tables=["pooled"], out=out, progress=False)
    assert "rejected" in str(ei.value)
    assert not (out / path).exists()                       # never kept, never used
    assert not [p for p in (out / STAGING).rglob("*layer=1*") if p.is_file()]
    vx = Vindex.open(out)                                  # the rest is there and verified
    assert vx.layers("pooled") == [0, 2, 3] and verify(out) == []


def _put_manifest(hub_server, tmp_path, edit) -> None:
    root = write_toy_vindex(tmp_path / "evil")
    m = json.loads((root / "vindex.json").read_text())
    edit(m)
    hub_server.put_files("vindex-org/evil", {"vindex.json": json.dumps(m),
                                             "data/x.parquet": b"PAR1"}, repo_type="dataset")


def test_path_traversal_manifest_is_rejected(hub_server, tmp_path):
    def edit(m):
        m["tables"]["pooled"]["files"][0]["path"] = "data/../../escaped.parquet"
    _put_manifest(hub_server, tmp_path, edit)
    out = tmp_path / "a" / "b" / "pulled"
    with pytest.raises(UnsafePath, match=r"data/\.\./\.\./escaped\.parquet.*escapes"):
        pull("hf://datasets/vindex-org/evil", out=out, progress=False)
    assert not list(tmp_path.rglob("escaped.parquet")) and not out.exists()
    assert not _resolve_gets(hub_server)                   # rejected before any download


def test_unknown_schema_version_is_rejected(hub_server, tmp_path):
    _put_manifest(hub_server, tmp_path, lambda m: m.update(schema_version=99))
    with pytest.raises(UnsupportedSchemaVersion, match="schema_version 99"):
        pull("hf://datasets/vindex-org/evil", out=tmp_path / "pulled", progress=False)


def test_not_json_manifest_is_rejected(hub_server, tmp_path):
    hub_server.put_files("vindex-org/junk", {"vindex.json": b"\x80\x04\x95pickle?"})
    with pytest.raises(ManifestError, match="not valid JSON"):
        pull("vindex-org/junk", out=tmp_path / "pulled", progress=False)


def test_selection_errors_name_what_exists(hub_server, published, tmp_path):
    with pytest.raises(NotFound, match=r"no table\(s\) \['features'\].*activations, pooled, prompts"):
        pull(URI, tables=["features"], out=tmp_path / "p", progress=False)
    with pytest.raises(NotFound, match=r"no layer\(s\) \[7\]"):
        pull(URI, layers=[7], out=tmp_path / "p", progress=False)
    with pytest.raises(NotFound, match="no such repo"):
        pull("hf://datasets/vindex-org/missing", out=tmp_path / "p", progress=False)
    with pytest.raises(NotFound, match="revision"):
        pull(URI + "@nope", out=tmp_path / "p", progress=False)


def test_pulls_accumulate_in_the_cache_and_ls_lists_them(hub_server, published):
    first = pull(URI, tables=["pooled"], layers=[0], progress=False)
    assert str(first.path).startswith(str(cache_root()))
    pull(URI, tables=["pooled"], layers=[3], progress=False)
    assert Vindex.open(first.path).layers("pooled") == [0, 3]
    rows = ls()
    assert [(r["where"], r["name"], r["layers"], r["pulled_from"]) for r in rows] == \
        [("local", "toy", [0, 3], URI)]
    remote = [r for r in ls(org="vindex-org", local=False)]
    assert [(r["where"], r["name"], r["location"]) for r in remote] == [("hub", "toy", URI)]


def test_republish_after_a_change_uploads_only_that_file(hub_server, published):
    root, first = published
    vx = Vindex.open(root)
    from vindex import VindexWriter
    import numpy as np
    w = VindexWriter.create(root, "toy", vx.model, exist_ok=True)
    w.write_shard("pooled", {"prompt_set": ["default"] * 6, "prompt_id": list(range(6)), "pooling": ["mean"] * 6,
                             "act": np.ones((6, 8))}, partition={"layer": 2})
    res = publish(root, REPO, progress=False)
    assert sorted(res.uploaded) == ["README.md", "data/pooled/layer=2/part-00000.parquet", "vindex.json"] or \
        sorted(res.uploaded) == ["data/pooled/layer=2/part-00000.parquet", "vindex.json"]
    assert hub_server.read_file(REPO, "data/pooled/layer=2/part-00000.parquet") == \
        (root / "data/pooled/layer=2/part-00000.parquet").read_bytes()


def test_lake_repo_publish_and_pull_some_models(hub_server, tmp_path):
    lake = tmp_path / "lake"
    write_toy_vindex(lake / "alpha", name="alpha", seed=1)
    write_toy_vindex(lake / "beta", name="beta", n_layers=2, d=4, seed=2)
    publish(lake, "vindex-org/lake", progress=False)
    assert {"alpha/vindex.json", "beta/vindex.json", "README.md"} <= set(hub_server.files("vindex-org/lake"))
    res = pull("hf://datasets/vindex-org/lake", models=["beta"], tables=["pooled"], out=tmp_path / "out",
               progress=False)
    assert [p.name for p in res.vindexes] == ["beta"]
    assert sorted(_files(tmp_path / "out")) == [f"beta/data/pooled/layer={i}/part-00000.parquet" for i in range(3)]
    one = pull("hf://datasets/vindex-org/lake/alpha", tables=["prompts"], out=tmp_path / "alpha", progress=False)
    assert Vindex.open(one.path).name == "alpha"
    with pytest.raises(NotFound, match="gamma.*alpha, beta"):
        pull("hf://datasets/vindex-org/lake", models=["gamma"], out=tmp_path / "x", progress=False)


def test_pull_never_overwrites_a_local_vindex(hub_server, published, tmp_path):
    mine = write_toy_vindex(tmp_path / "mine", seed=5)
    before = _files(mine)
    with pytest.raises(VindexError, match="not pulled from.*built locally"):
        pull(URI, out=mine, progress=False)
    assert _files(mine) == before and verify(mine) == []


def test_publish_to_a_branch_and_pull_it(hub_server, published, tmp_path):
    root, _ = published
    v2 = write_toy_vindex(tmp_path / "v2", n_prompts=4, seed=9)
    publish(v2, REPO, revision="v2", progress=False)
    assert hub_server.read_file(REPO, "vindex.json", revision="v2") == (v2 / "vindex.json").read_bytes()
    assert hub_server.read_file(REPO, "vindex.json") == (root / "vindex.json").read_bytes()   # main untouched
    res = pull(URI + "@v2", tables=["pooled"], layers=[0], progress=False)
    assert res.path.name == "v2" and _files(res.path) == {
        p: b for p, b in _files(v2).items() if p.startswith("data/pooled/layer=0/")}
    assert Vindex.open(res.path).manifest["pulled_from"]["revision"] == "v2"


def test_ls_collection_and_unreachable_hub(hub_server, published, monkeypatch):
    hub_server.add_collection("vindex-org/lake-0123", [("dataset", REPO), ("model", "vindex-org/m")])
    rows = ls(collection="vindex-org/lake-0123", local=False)
    assert [(r["name"], r["location"], r["layers"]) for r in rows] == [("toy", URI, [0, 1, 2, 3])]
    pull(URI, tables=["prompts"], progress=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")          # nothing listens there
    with pytest.warns(UserWarning, match="remote listing skipped"):
        rows = ls(org="vindex-org")
    assert [(r["where"], r["name"]) for r in rows] == [("local", "toy")]


def test_private_repo_needs_the_token(hub_server, tmp_path):
    root = write_toy_vindex(tmp_path / "toy")
    publish(root, "vindex-org/secret", private=True, progress=False)
    with pytest.raises(NotFound, match="private.*HF_TOKEN"):
        pull("vindex-org/secret", out=tmp_path / "anon", token=False, progress=False)
    res = pull("vindex-org/secret", tables=["prompts"], out=tmp_path / "me", progress=False)
    assert Vindex.open(res.path).tables == ["prompts"]
