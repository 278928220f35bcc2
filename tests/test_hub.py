"""Publish to and pull from a local Hub: partial pulls byte-identical, resume, tampering, traversal."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_toy_vindex
from vindex import ChecksumError, NotFound, UnsafePath, Vindex, verify
from vindex.errors import UnsupportedSchemaVersion
from vindex.hub import ls, publish
from vindex.pull import STAGING, pull

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
    want = {p: b for p, b in _files(root).items() if p.startswith(("data/pooled/layer=01/", "data/pooled/layer=02/"))}
    assert got == want and len(want) == 2
    vx = Vindex.open(out)
    assert vx.tables == ["pooled"] and vx.layers("pooled") == [1, 2]
    assert vx.manifest["pulled_from"]["repo_id"] == REPO and vx.manifest["pulled_from"]["partial"]
    assert verify(out) == []
    assert sorted(res.allow_patterns) == sorted(want)
