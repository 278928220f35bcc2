"""Hostile and failing Hub servers: every case ends in a named error, fast, with nothing unverified in
the destination, and the same pull succeeds once the server recovers.

The local test server (tests/hub_server.py) plays the hostile Hub: it hangs (accepts, never answers),
stalls mid-body, serves other bytes of the same size, too few or too many bytes, lists traversal
names, redirects to other hosts, loops, sends a huge or non-JSON manifest and answers 500. The
timeout is 1 s here (VINDEX_HUB_TIMEOUT), so a hang costs (retries + 1) seconds.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hub_server import HubServer
from toy_lakes import write_toy_vindex
from vindex import verify
from vindex.errors import (ChecksumError, HubError, InvalidValue, ManifestError, UnsafePath,
                           VindexError)
from vindex.hub import ls, publish
from vindex.hub.download import STAGING, pull

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")  # inside huggingface_hub

REPO = "vindex-org/toy"
URI = f"hf://datasets/{REPO}"
BIG = "data/activations/layer=2/part-00000.parquet"
HANG_TIMEOUT = 1.0        # seconds: VINDEX_HUB_TIMEOUT while the server misbehaves


@pytest.fixture(autouse=True)
def _fast_failures(monkeypatch):
    """A 1 s timeout, one retry, no waiting between attempts."""
    import vindex.hub.download
    import vindex.hub.remote

    monkeypatch.setenv("VINDEX_HUB_TIMEOUT", str(HANG_TIMEOUT))
    for mod in (vindex.hub.download, vindex.hub.remote):
        monkeypatch.setattr(mod, "RETRY_WAIT", 0.0)
        monkeypatch.setattr(mod, "RETRIES", 1)


@pytest.fixture(scope="module")
def other_session():
    """A second server: another host (origin) that the Hub redirects to."""
    with HubServer() as server:
        yield server


@pytest.fixture
def other(other_session):
    other_session.reset()
    yield other_session
    other_session.release()


@pytest.fixture
def published(hub_server, tmp_path, monkeypatch):
    monkeypatch.setenv("VINDEX_HUB_TIMEOUT", "30")     # publishing is not under test here
    root = write_toy_vindex(tmp_path / "toy")
    publish(root, REPO, progress=False)
    monkeypatch.setenv("VINDEX_HUB_TIMEOUT", str(HANG_TIMEOUT))
    yield root
    hub_server.release()


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.parquet")
            if STAGING not in p.parts}


def _manifest_with(root: Path, path: str) -> bytes:
    m = json.loads((root / "vindex.json").read_text())
    m["tables"]["pooled"]["files"][0]["path"] = path
    return json.dumps(m).encode()


def _logged(server, keep, n: int) -> list[dict]:
    """The log entries `keep` selects, once there are `n` (a hung request is logged when it ends:
    release it first)."""
    server.release()
    deadline = time.monotonic() + 5
    while len([r for r in server.log if keep(r)]) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)                                      # and no more arrive
    return [r for r in server.log if keep(r)]


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


# Each case: (make the server hostile, the error it must end in, a regex of its message). `s` is the
# Hub, `o` another host, `root` the published vindex.
CASES = {
    "hang: every request": (lambda s, o, root: s.hang(), HubError,
                            r"did not answer: timed out waiting for data after 1 s \(2 attempt"),
    "hang: the manifest": (lambda s, o, root: s.hang("/vindex.json"), HubError, r"vindex\.json: .*timed out"),
    "stall mid-body": (lambda s, o, root: s.stall(REPO, BIG, after=100), HubError,
                       r"pull incomplete: .*layer=2.*timed out waiting for data"),
    "connection cut mid-body": (lambda s, o, root: s.interrupt(REPO, BIG, after=100), HubError,
                                r"pull incomplete: .*layer=2.*RemoteProtocolError"),
    "wrong sha, same size": (lambda s, o, root: s.tamper(REPO, BIG, _flip((root / BIG).read_bytes())),
                             ChecksumError, r"layer=2.*sha256 .* does not match"),
    "truncated body": (lambda s, o, root: s.tamper(REPO, BIG, (root / BIG).read_bytes()[:-50]),
                       ChecksumError, r"layer=2.*truncated"),
    "extra bytes": (lambda s, o, root: s.tamper(REPO, BIG, (root / BIG).read_bytes() + b"\0" * 9),
                    ChecksumError, r"layer=2.*more than"),
    "500 on every API call": (lambda s, o, root: s.answer("^/api/", '{"error": "boom"}', status=500), HubError,
                              r"answered 500"),
    "500 on a file": (lambda s, o, root: s.fail(REPO, BIG), HubError, r"layer=2.*answered 500"),
    "repo info not JSON": (lambda s, o, root: s.answer(f"^/api/datasets/{REPO}$", "<html>busy</html>",
                                                      content_type="text/html"), HubError, r"JSON|Expecting value"),
    "repo info of the wrong shape": (lambda s, o, root: s.answer(f"^/api/datasets/{REPO}$", "[1, 2]"), HubError,
                                     r"cannot read"),
    "listing: traversal name": (lambda s, o, root: s.answer(
        "/tree/", json.dumps([{"type": "directory", "path": "../evil", "oid": "0" * 40}])),
        UnsafePath, r"listing names '\.\./evil'"),
    "listing: absolute name": (lambda s, o, root: s.answer(
        "/tree/", json.dumps([{"type": "file", "path": "/etc/vindex.json", "oid": "0" * 40, "size": 1}])),
        UnsafePath, r"listing names '/etc/vindex\.json'"),
    "manifest: traversal path": (lambda s, o, root: s.tamper(REPO, "vindex.json", _manifest_with(root, "../../x.parquet")),
                                 UnsafePath, r"\.\./\.\./x\.parquet"),
    "manifest: absolute path": (lambda s, o, root: s.tamper(REPO, "vindex.json", _manifest_with(root, "/tmp/x.parquet")),
                                UnsafePath, r"/tmp/x\.parquet"),
    "manifest: not JSON": (lambda s, o, root: s.tamper(REPO, "vindex.json", b"\x80\x04\x95 pickle"), ManifestError,
                           r"not valid JSON"),
    "manifest: huge": (lambda s, o, root: s.tamper(REPO, "vindex.json", b" " * (65 << 20)), ManifestError,
                       r"larger than"),
    "redirect: other host, other bytes": (lambda s, o, root: (
        o.answer("/elsewhere", _flip((root / BIG).read_bytes()), content_type="application/octet-stream"),
        s.redirect(REPO, BIG, f"{o.endpoint}/elsewhere")), ChecksumError, r"layer=2.*sha256"),
    "redirect: other host hangs": (lambda s, o, root: (o.hang(), s.redirect(REPO, BIG, f"{o.endpoint}/x")),
                                   HubError, r"layer=2.*127\.0\.0\.1:\d+ did not answer: timed out"),
    "redirect: loop": (lambda s, o, root: s.redirect(REPO, BIG, f"{s.endpoint}/datasets/{REPO}/resolve/main/{BIG}"),
                       HubError, r"layer=2.*(TooManyRedirects|redirect)"),
    "redirect: another scheme": (lambda s, o, root: s.redirect(REPO, BIG, "file:///etc/passwd"), HubError,
                                 r"layer=2.*(UnsupportedProtocol|protocol)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_hub_gives_a_named_error_and_a_later_pull_succeeds(hub_server, other, published, tmp_path,
                                                                   monkeypatch, case):
    make_hostile, error, message = CASES[case]
    root = published
    out = tmp_path / "pulled"
    make_hostile(hub_server, other, root)
    t0 = time.monotonic()
    with pytest.raises(VindexError) as ei:
        pull(URI, out=out, progress=False)
    took = time.monotonic() - t0
    assert type(ei.value) is error, f"{case}: {type(ei.value).__name__}: {ei.value}"
    assert re.search(message, str(ei.value)), f"{case}: {ei.value}"
    assert took < 20, f"{case}: took {took:.1f} s"
    # nothing unverified is visible: every file in the destination is listed and verified
    if (out / "vindex.json").exists():
        assert verify(out) == []
        assert BIG not in _files(out) or _files(out)[BIG] == (root / BIG).read_bytes()
        assert not (out / STAGING).exists() or all(p.name.endswith(".part") for p in (out / STAGING).rglob("*")
                                                   if p.is_file())
    else:
        assert not _files(out)
    if case.startswith("redirect: other host"):
        assert not [r for r in other.log if r["auth"]], "the token was sent to another host"
    # the server recovers: the same pull resumes and succeeds, byte-identical
    hub_server.clear_faults()
    other.clear_faults()
    monkeypatch.setenv("VINDEX_HUB_TIMEOUT", "30")
    pull(URI, out=out, progress=False)
    assert _files(out) == _files(root) and verify(out) == [] and not (out / STAGING).exists()


def test_stalled_file_resumes_where_it_stopped(hub_server, published, tmp_path):
    root = published
    out = tmp_path / "pulled"
    hub_server.stall(REPO, BIG, after=300, times=1)      # one stall, then the server answers again
    res = pull(URI, tables=["activations"], layers=[2], out=out, progress=False)
    assert res.downloaded == [BIG] and (out / BIG).read_bytes() == (root / BIG).read_bytes()
    gets = _logged(hub_server, lambda r: r["method"] == "GET" and r["path"].endswith(BIG), 2)
    assert sorted(r["range"] or "" for r in gets) == ["", "bytes=300-"]   # the retry continued at byte 300
    assert [r["sent"] for r in gets if r["range"] is None] == [300]


def test_redirect_to_another_host_with_the_right_bytes_is_followed_without_the_token(hub_server, other,
                                                                                      published, tmp_path):
    root = published                                     # what the Hub does for LFS files (a CDN)
    other.answer("/cdn/blob", (root / BIG).read_bytes(), content_type="application/octet-stream")
    hub_server.redirect(REPO, BIG, f"{other.endpoint}/cdn/blob")
    res = pull(URI, tables=["activations"], layers=[2], out=tmp_path / "pulled", progress=False)
    assert res.downloaded == [BIG] and (tmp_path / "pulled" / BIG).read_bytes() == (root / BIG).read_bytes()
    cdn = [r for r in other.log if r["path"] == "/cdn/blob"]
    assert cdn and not any(r["auth"] for r in cdn)
    assert all(r["auth"] for r in hub_server.log if r["path"].endswith(BIG))


def test_calls_without_a_timeout_of_their_own_get_one(hub_server, published):
    """huggingface_hub's listings pass timeout=None (no limit at all); the session hook gives them ours,
    and huggingface_hub's own retry of the listing then gets the answer."""
    from vindex.hub.remote import hub_api

    api = hub_api()
    hub_server.hang("/tree/", times=1)
    t0 = time.monotonic()
    entries = list(api.list_repo_tree(REPO, repo_type="dataset"))
    assert "vindex.json" in {e.path for e in entries}
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf", "nan"])
def test_a_bad_timeout_setting_is_named(hub_server, published, tmp_path, monkeypatch, value):
    monkeypatch.setenv("VINDEX_HUB_TIMEOUT", value)
    with pytest.raises(InvalidValue, match="VINDEX_HUB_TIMEOUT"):
        pull(URI, out=tmp_path / "p", progress=False)


def test_publish_to_a_hanging_hub(hub_server, tmp_path, monkeypatch):
    root = write_toy_vindex(tmp_path / "toy")
    hub_server.hang()
    with pytest.raises(HubError, match="timed out"):
        publish(root, REPO, progress=False)
    hub_server.clear_faults()
    hub_server.hang("/commit/")                          # a commit is sent once: it is not idempotent
    with pytest.raises(HubError, match="timed out"):
        publish(root, REPO, progress=False)
    hub_server.clear_faults()
    assert len(_logged(hub_server, lambda r: r["method"] == "POST" and "/commit/" in r["path"], 1)) == 1
    monkeypatch.setenv("VINDEX_HUB_TIMEOUT", "30")
    res = publish(root, REPO, progress=False)            # publishing again finishes the job
    assert res.commit == hub_server.head(REPO)
    assert set(_files(root)) <= set(hub_server.files(REPO))


def test_ls_and_query_against_a_hanging_hub(hub_server, published):
    from vindex.query import connect

    hub_server.hang()
    with pytest.raises(HubError, match="timed out"):
        ls(org="vindex-org", local=False)                # only the Hub was asked: an error
    with pytest.warns(UserWarning, match="remote listing skipped.*timed out"):
        ls(org="vindex-org")                             # with the local cache: a warning and the cache
    with pytest.raises(HubError, match="timed out"):
        connect(URI)


def test_larql_import_from_a_hanging_hub(hub_server):
    from vindex.ingest.larql.source import resolve_source

    hub_server.hang()
    t0 = time.monotonic()
    with pytest.raises(HubError, match=r"hf://vindex-org/larql.*timed out"):
        resolve_source("hf://vindex-org/larql", progress=False)
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("args", [["pull", URI, "--quiet"], ["ls", "--org", "vindex-org", "--no-local"]])
def test_cli_against_a_hanging_hub_says_one_line(hub_server, published, tmp_path, args):
    from vindex.cli import main

    hub_server.hang()
    if args[0] == "pull":
        args = [*args, "--out", str(tmp_path / "pulled")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "timed out" in lines[0], r.output
    assert "Traceback" not in r.output and not isinstance(r.exception, (AssertionError, TypeError))
