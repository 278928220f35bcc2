"""A small Hugging Face Hub-compatible HTTP server for offline tests (127.0.0.1, in memory).

Why: the Hub round trip (publish, pull, query in place, import from hf://) must be tested without
the network. huggingface_hub and HfFileSystem talk plain HTTP to `HF_ENDPOINT`, so a server that
answers the handful of endpoints they call is enough to run the real client code end to end.

Implemented endpoints (`{t}` is `models` or `datasets`; `{p}` is `` for models, `datasets/` for
datasets; `{rev}` is a branch, `refs/pr/N` or a commit sha, URL-quoted):

    POST /api/repos/create                      create_repo (409 when it exists)
    POST /api/repos/delete                      delete_repo
    GET  /api/whoami-v2                         whoami (the test user, member of org `vindex-org`)
    GET  /api/{t}                               list_models / list_datasets (?author=, ?search=,
                                                ?filter=<tag>: tags from the README's front matter)
    GET  /api/{t}/{repo}[/revision/{rev}]       repo_info / model_info / dataset_info (siblings, sha)
    GET  /api/{t}/{repo}/tree/{rev}[/{path}]    list_repo_tree (?recursive=, ?expand=), one page
    POST /api/{t}/{repo}/paths-info/{rev}       get_paths_info (form: paths, expand)
    GET  /api/{t}/{repo}/refs                   list_repo_refs
    GET  /api/{t}/{repo}/commits/{rev}          list_repo_commits
    POST /api/{t}/{repo}/branch/{branch}        create_branch (startingPoint)
    GET  /api/collections/{slug}                get_collection (items added with add_collection)
    POST /api/{t}/{repo}/preupload/{rev}        upload modes: "lfs" for binary or >= 10 MB, else "regular"
    POST /{p}{repo}.git/info/lfs/objects/batch  LFS batch API, "basic" transfer (no upload action if known)
    PUT  /_lfs/upload/{sha256}                  LFS object upload (sha256 and size checked)
    POST /_lfs/verify/{sha256}                  LFS verify
    POST /api/{t}/{repo}/commit/{rev}           ndjson commit: header, file (base64), lfsFile,
                                                deletedFile, deletedFolder; parentCommit; ?create_pr=1
    HEAD|GET /{p}{repo}/resolve/{rev}/{path}    download: ETag (git oid, or sha256 for LFS files),
                                                X-Linked-Etag/X-Linked-Size, X-Repo-Commit,
                                                Accept-Ranges, single `Range: bytes=a-b` -> 206
    POST /api/validate-yaml                     README front matter: a mapping; `configs` checked

Not implemented: Xet (the fixture sets HF_HUB_DISABLE_XET so uploads use LFS; downloads never
see an X-Xet-Hash header), multipart LFS, pagination (every listing is one page), gated repos.
Auth: writes need `Authorization: Bearer <token>`; reads of a private repo too.

Test hooks: every request is logged (`server.log`: method, path, range, bytes sent, whether it
carried a token); faults can be injected per file (`tamper`: serve other bytes, e.g. of the same
size, shorter or longer; `interrupt`: drop the connection after n bytes; `stall`: send the headers
and n bytes, then nothing more; `redirect`: answer 302 to another URL, e.g. another server; `fail`:
answer 500) and per route, on any request whose path matches a regex (`hang`: read the request,
never answer; `answer`: a canned status and body, e.g. 500s, non-JSON, or a listing with traversal
names). Hung requests wait until `release()` (or `clear_faults`, `reset`). Files can be put
directly (`put_files`) without going through the client.

Use it through the pytest fixture `hub_server` (registered in tests/conftest.py):

    def test_x(hub_server):
        hub_server.create_repo("vindex-org/toy", repo_type="dataset")
        hub_server.put_files("vindex-org/toy", {"vindex.json": b"{}"}, repo_type="dataset")
        # huggingface_hub now talks to hub_server.endpoint with hub_server.token
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

TOKEN = "hf_vindex_test_token"
USER = "vindex-tester"
ORGS = ("vindex-org",)
LFS_THRESHOLD = 10 * 1024 * 1024
_BINARY_SUFFIXES = (".parquet", ".bin", ".safetensors", ".gguf", ".npy", ".arrow", ".pt", ".zip", ".gz")


def git_oid(data: bytes) -> str:
    """The git blob id of `data` (what the Hub reports as `oid` / ETag of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FileRec:
    size: int
    sha256: str
    lfs: bool
    commit: str           # last commit that touched the file

    @property
    def oid(self) -> str:  # the git oid: of the pointer file for LFS files, as on the Hub
        return git_oid(lfs_pointer(self.sha256, self.size)) if self.lfs else None


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    date: str
    files: dict[str, FileRec]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    created_at: str = field(default_factory=_now)
    branches: dict[str, str] = field(default_factory=dict)   # name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    n_prs: int = 0


@dataclass
class Fault:
    kind: str            # tamper | interrupt | stall | redirect | fail (per file); hang | answer (per route)
    times: int | None    # None: forever
    data: bytes | None = None
    after: int = 0
    location: str = ""           # redirect: the Location
    match: str = ""              # per route: a regex searched in the request path ('' matches all)
    status: int = 200            # answer
    content_type: str = "application/json"


HANG_MAX = 120.0      # seconds a hung request waits for release() at most (a test that forgot to release)


class HubState:
    """Repos, blobs, the request log and injected faults; shared by the handler threads."""

    def __init__(self):
        self.lock = threading.RLock()
        self.reset()

    def reset(self):
        with self.lock:
            self.repos: dict[tuple[str, str], Repo] = {}
            self.blobs: dict[str, bytes] = {}
            self.faults: dict[tuple[str, str, str], list[Fault]] = {}   # applied in order
            self.route_faults: list[Fault] = []                          # first match applies
            self.release_hangs()
            self.collections: dict[str, list[tuple[str, str]]] = {}      # slug -> [(type, repo id)]
            self.log: list[dict] = []

    # --- repos and commits -------------------------------------------------------------------
    def create_repo(self, repo_id: str, repo_type: str = "dataset", private: bool = False,
                    exist_ok: bool = True) -> Repo:
        with self.lock:
            key = (repo_type, repo_id)
            if key in self.repos:
                if not exist_ok:
                    raise FileExistsError(repo_id)
                return self.repos[key]
            repo = Repo(repo_type, repo_id, private)
            first = self._new_commit(repo, None, "initial commit", {})
            repo.branches["main"] = first.oid
            self.repos[key] = repo
            return repo

    def _new_commit(self, repo: Repo, parent: str | None, title: str, files: dict) -> Commit:
        oid = hashlib.sha1(f"{repo.repo_id}:{parent}:{uuid.uuid4()}".encode()).hexdigest()
        c = Commit(oid, parent, title, _now(), files)
        repo.commits[oid] = c
        return c

    def commit(self, repo: Repo, branch: str, title: str, add: dict[str, bytes] | None = None,
               lfs_add: dict[str, tuple[str, int]] | None = None, delete: list[str] = (),
               delete_folders: list[str] = (), parent: str | None = None) -> Commit:
        """Apply additions (raw bytes, or already-uploaded LFS oids) and deletions on `branch`."""
        with self.lock:
            head = repo.branches.get(branch) or parent or repo.branches["main"]
            files = dict(repo.commits[head].files)
            for p in delete:
                files.pop(p, None)
            for d in delete_folders:
                d = d.rstrip("/") + "/"
                for p in [p for p in files if p.startswith(d)]:
                    del files[p]
            c = self._new_commit(repo, head, title, files)
            for p, data in (add or {}).items():
                sha = hashlib.sha256(data).hexdigest()
                self.blobs[sha] = data
                lfs = len(data) >= LFS_THRESHOLD or b"\0" in data[:512] or p.endswith(_BINARY_SUFFIXES)
                files[p] = FileRec(len(data), sha, lfs, c.oid)
            for p, (sha, size) in (lfs_add or {}).items():
                files[p] = FileRec(size, sha, True, c.oid)
            repo.branches[branch] = c.oid
            return c

    def resolve(self, repo: Repo, rev: str) -> Commit | None:
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        if len(rev) >= 7:
            hits = [c for oid, c in repo.commits.items() if oid.startswith(rev)]
            if len(hits) == 1:
                return hits[0]
        return None

    def release_hangs(self) -> None:
        """Let every hung request go (it closes its connection without an answer)."""
        with self.lock:
            old = getattr(self, "released", None)
            self.released = threading.Event()
        if old is not None:
            old.set()

    def route_fault(self, path: str) -> Fault | None:
        """The first per-route fault whose `match` (a regex) is found in `path` (used up after its
        `times`), or None."""
        with self.lock:
            for f in self.route_faults:
                if re.search(f.match, path):
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self.route_faults.remove(f)
                    return f
            return None

    def add_fault(self, repo_type: str, repo_id: str, path: str, fault: Fault) -> None:
        with self.lock:
            self.faults.setdefault((repo_type, repo_id, path), []).append(fault)

    def fault_for(self, repo: Repo, path: str) -> Fault | None:
        """The first queued fault of `path` (used up after its `times` requests), or None."""
        with self.lock:
            queue = self.faults.get((repo.repo_type, repo.repo_id, path))
            if not queue:
                return None
            f = queue[0]
            if f.times is not None:
                f.times -= 1
                if f.times <= 0:
                    queue.pop(0)
            return f


class HubServer:
    """The running server plus helpers for tests (what the `hub_server` fixture returns).

    Attributes: `endpoint` (http://127.0.0.1:PORT), `token`, `orgs` (namespaces the test user
    may create repos in; add to it), `log` (list of request dicts:
    method, path, query, range, status, sent, auth). Helpers: create_repo, put_files, put_folder,
    files, read_file, head, tamper, interrupt, stall, redirect, fail, hang, answer, release,
    clear_faults, add_collection, requests_for, bytes_sent, clear_log, reset.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str = TOKEN):
        self.state = HubState()
        self.token = token
        self.orgs = set(ORGS)   # namespaces the test user may create repos in (besides its own)
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- helpers for tests ---------------------------------------------------------------------
    def reset(self) -> None:
        self.state.reset()
        self.orgs = set(ORGS)

    @property
    def log(self) -> list[dict]:
        return self.state.log

    def create_repo(self, repo_id: str, repo_type: str = "dataset", private: bool = False) -> str:
        self.state.create_repo(repo_id, repo_type, private)
        return f"{self.endpoint}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"

    def put_files(self, repo_id: str, files: dict, repo_type: str = "dataset", revision: str = "main",
                  message: str = "put files", delete: list[str] = ()) -> str:
        """Commit `files` ({path_in_repo: bytes | str | Path}) directly; returns the commit sha.

        Creates the repo when needed. A Path is read; a str is encoded as UTF-8.
        """
        repo = self.state.create_repo(repo_id, repo_type)
        add = {}
        for p, v in files.items():
            add[p] = Path(v).read_bytes() if isinstance(v, Path) else v.encode() if isinstance(v, str) else bytes(v)
        return self.state.commit(repo, revision, message, add=add, delete=list(delete)).oid

    def put_folder(self, repo_id: str, folder, repo_type: str = "dataset", path_in_repo: str = "",
                   revision: str = "main") -> str:
        """Commit every file under `folder` (hidden files skipped) as one commit."""
        folder = Path(folder)
        prefix = path_in_repo.strip("/") + "/" if path_in_repo.strip("/") else ""
        files = {prefix + f.relative_to(folder).as_posix(): f for f in sorted(folder.rglob("*"))
                 if f.is_file() and not any(part.startswith(".") for part in f.relative_to(folder).parts)}
        return self.put_files(repo_id, files, repo_type, revision, message=f"put {folder.name}")

    def _repo(self, repo_id: str, repo_type: str) -> Repo:
        return self.state.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> dict[str, FileRec]:
        repo = self._repo(repo_id, repo_type)
        return dict(self.state.resolve(repo, revision).files)

    def read_file(self, repo_id: str, path: str, repo_type: str = "dataset", revision: str = "main") -> bytes:
        return self.state.blobs[self.files(repo_id, repo_type, revision)[path].sha256]

    def head(self, repo_id: str, repo_type: str = "dataset", branch: str = "main") -> str:
        return self._repo(repo_id, repo_type).branches[branch]

    def tamper(self, repo_id: str, path: str, data: bytes, repo_type: str = "dataset",
               times: int | None = None) -> None:
        """Serve `data` instead of the stored bytes of `path` (headers unchanged), `times` GETs.

        Faults of one path queue up: `interrupt(..., times=1)` then `fail(...)` drops the first
        download half way and refuses every retry.
        """
        self.state.add_fault(repo_type, repo_id, path, Fault("tamper", times, data=data))

    def interrupt(self, repo_id: str, path: str, after: int, repo_type: str = "dataset",
                  times: int | None = None) -> None:
        """Drop the connection after `after` body bytes of each GET of `path`, `times` times."""
        self.state.add_fault(repo_type, repo_id, path, Fault("interrupt", times, after=after))

    def fail(self, repo_id: str, path: str, repo_type: str = "dataset", times: int | None = None) -> None:
        """Answer 500 to GETs of `path`, `times` times."""
        self.state.add_fault(repo_type, repo_id, path, Fault("fail", times))

    def stall(self, repo_id: str, path: str, after: int = 0, repo_type: str = "dataset",
              times: int | None = None) -> None:
        """Send the headers (full Content-Length) and `after` body bytes of a GET of `path`, then
        nothing more until `release()`: a server that stops answering mid-body."""
        self.state.add_fault(repo_type, repo_id, path, Fault("stall", times, after=after))

    def redirect(self, repo_id: str, path: str, location: str, repo_type: str = "dataset",
                 times: int | None = None) -> None:
        """Answer GETs of `path` with `302 Location: location` (another host, a loop, another scheme)."""
        self.state.add_fault(repo_type, repo_id, path, Fault("redirect", times, location=location))

    def hang(self, match: str = "", times: int | None = None) -> None:
        """Requests whose path matches `match` (a regex, searched; every request by default) are read
        and never answered, until `release()`: a server that accepts connections and stops answering."""
        with self.state.lock:
            self.state.route_faults.append(Fault("hang", times, match=match))

    def answer(self, match: str, body: bytes | str = b"", status: int = 200, times: int | None = None,
               content_type: str = "application/json") -> None:
        """Answer requests whose path matches `match` (a regex, searched) with `status` and `body`
        instead of the real route: 500s, a body that is not JSON, a listing with traversal names."""
        data = body.encode() if isinstance(body, str) else bytes(body)
        with self.state.lock:
            self.state.route_faults.append(Fault("answer", times, data=data, match=match, status=status,
                                                 content_type=content_type))

    def release(self) -> None:
        """Let every hung or stalled request go (its connection closes without the rest of an answer)."""
        self.state.release_hangs()

    def add_collection(self, slug: str, items: list[tuple[str, str]]) -> None:
        """A collection `slug` (e.g. 'vindex-org/lake-0123') of [(repo_type, repo_id)] items."""
        self.state.collections[slug] = list(items)

    def clear_faults(self) -> None:
        """Remove every fault and let hung requests go: the server has recovered."""
        with self.state.lock:
            self.state.faults.clear()
            self.state.route_faults.clear()
        self.state.release_hangs()

    def requests_for(self, path_suffix: str = "", method: str | None = None) -> list[dict]:
        return [r for r in self.log if r["path"].endswith(path_suffix) and (method is None or r["method"] == method)]

    def bytes_sent(self, path_contains: str = "/resolve/") -> int:
        """Body bytes the server sent for requests whose path contains `path_contains`."""
        return sum(r["sent"] for r in self.log if path_contains in r["path"])

    def clear_log(self) -> None:
        self.state.log.clear()


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


_REPO_TYPES = {"models": "model", "datasets": "dataset"}


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: tests read server.log instead
        pass

    # --- plumbing -------------------------------------------------------------------------------
    def _dispatch(self, method: str):
        self._sent = 0
        self._status = 0
        url = urlsplit(self.path)
        self._query = parse_qs(url.query)
        self._raw_path = url.path
        try:
            fault = self.hub.state.route_fault(unquote(url.path))
            if fault is not None and fault.kind == "hang":
                self._hang()
                return
            body = self._read_body() if method in ("POST", "PUT") else b""
            if fault is not None and fault.kind == "answer":
                self._send(fault.status, fault.data, content_type=fault.content_type)
                return
            self._route(method, url.path, body)
        except _HubError as e:
            self._json({"error": e.message}, e.status, code=e.code)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with self.hub.state.lock:
                self.hub.state.log.append({"method": method, "path": unquote(url.path), "query": url.query,
                                           "range": self.headers.get("Range"), "status": self._status,
                                           "sent": self._sent, "auth": "Authorization" in self.headers})

    def _hang(self) -> None:
        """Say nothing more until the test releases hung requests, then close the connection."""
        self.hub.state.released.wait(HANG_MAX)
        self.close_connection = True

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json",
              head_only: bool = False):
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head_only and body and self.command != "HEAD":  # a HEAD answer never has a body
            self.wfile.write(body)
            self._sent += len(body)

    def _json(self, obj, status: int = 200, code: str | None = None, headers: dict | None = None):
        h = dict(headers or {})
        if code:
            h["X-Error-Code"] = code
            h["X-Error-Message"] = obj.get("error", "") if isinstance(obj, dict) else ""
        self._send(status, json.dumps(obj).encode(), h)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _require_auth(self):
        if not self._authorized():
            raise _HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        repo = self.hub.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            raise _HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        if write:
            self._require_auth()
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit:
        c = self.hub.state.resolve(repo, rev)
        if c is None:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return c

    # --- routing --------------------------------------------------------------------------------
    def _route(self, method: str, path: str, body: bytes):
        seg = [s for s in path.split("/") if s != ""]
        if seg[:1] == ["api"]:
            return self._api(method, seg[1:], body)
        if seg[:1] == ["_lfs"] and len(seg) == 3:
            return self._lfs_object(method, seg[1], seg[2], body)
        # /{p}{ns}/{name}.git/info/lfs/objects/batch
        if len(seg) >= 6 and seg[-4:] == ["info", "lfs", "objects", "batch"]:
            repo_type, rest = ("dataset", seg[1:]) if seg[0] == "datasets" else ("model", seg)
            repo_id = "/".join(unquote(s) for s in rest[:-4])
            return self._lfs_batch(repo_type, repo_id.removesuffix(".git"), body)
        # /{p}{ns}/{name}/resolve/{rev}/{path...}
        if "resolve" in seg and method in ("GET", "HEAD"):
            i = seg.index("resolve")
            repo_type, rest = ("dataset", seg[1:i]) if seg[0] == "datasets" else ("model", seg[:i])
            if len(rest) != 2 or len(seg) < i + 3:
                raise _HubError(404, "bad resolve url", "EntryNotFound")
            return self._resolve(method, repo_type, "/".join(unquote(s) for s in rest), unquote(seg[i + 1]),
                                 "/".join(unquote(s) for s in seg[i + 2:]))
        raise _HubError(404, f"no route for {method} {path}")

    def _api(self, method: str, seg: list[str], body: bytes):
        state = self.hub.state
        if seg == ["whoami-v2"] and method == "GET":
            self._require_auth()
            return self._json({"type": "user", "name": USER, "fullname": "vindex tests",
                               "orgs": [{"type": "org", "name": o} for o in sorted(self.hub.orgs)],
                               "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if seg == ["validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if seg == ["repos", "create"] and method == "POST":
            self._require_auth()
            d = json.loads(body)
            repo_type = d.get("type") or "model"
            if repo_type not in ("model", "dataset"):
                raise _HubError(400, f"repo type {repo_type!r} is not supported by the test server")
            name, org = d["name"], d.get("organization") or USER
            if org != USER and org not in self.hub.orgs:
                raise _HubError(403, f"You don't have the rights to create a repo under {org!r}")
            repo_id = f"{org}/{name}"
            private = d.get("private") or d.get("visibility") == "private"
            prefix = "datasets/" if repo_type == "dataset" else ""
            reply = {"url": f"{self.hub.endpoint}/{prefix}{repo_id}", "name": repo_id, "id": repo_id}
            with state.lock:
                if (repo_type, repo_id) in state.repos:  # the Hub sends the url along with the 409
                    return self._json({**reply, "error": "You already created this repo"}, 409)
                state.create_repo(repo_id, repo_type, bool(private))
            return self._json(reply)
        if seg == ["repos", "delete"] and method == "POST":
            self._require_auth()
            d = json.loads(body)
            repo_id = f"{d.get('organization') or USER}/{d['name']}"
            if state.repos.pop((d.get("type") or "model", repo_id), None) is None:
                raise _HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
            return self._json({})
        if seg[:1] == ["collections"] and len(seg) >= 3 and method == "GET":
            slug = "/".join(unquote(x) for x in seg[1:])
            items = state.collections.get(slug)
            if items is None:
                raise _HubError(404, f"Collection not found: {slug}")
            return self._json({"slug": slug, "title": slug, "owner": {"name": slug.split("/")[0]},
                               "lastUpdated": _now(), "position": 0, "private": False, "theme": "blue",
                               "upvotes": 0, "description": None,
                               "items": [{"_id": f"item{i}", "id": rid, "type": t, "position": i}
                                         for i, (t, rid) in enumerate(items)]})
        if not seg or seg[0] not in _REPO_TYPES:
            raise _HubError(404, f"no api route /api/{'/'.join(seg)}")
        repo_type = _REPO_TYPES[seg[0]]
        if len(seg) == 1 and method == "GET":
            return self._list_repos(repo_type)
        if len(seg) < 3:
            raise _HubError(404, "bad repo path", "RepoNotFound")
        repo_id = f"{unquote(seg[1])}/{unquote(seg[2])}"
        rest = seg[3:]
        if not rest and method == "GET":
            return self._repo_info(repo_type, repo_id, "main")
        op = rest[0]
        if op == "revision" and len(rest) == 2 and method == "GET":
            return self._repo_info(repo_type, repo_id, unquote(rest[1]))
        if op == "tree" and len(rest) >= 2 and method == "GET":
            return self._tree(repo_type, repo_id, unquote(rest[1]), "/".join(unquote(s) for s in rest[2:]))
        if op == "paths-info" and len(rest) == 2 and method == "POST":
            return self._paths_info(repo_type, repo_id, unquote(rest[1]), body)
        if op == "refs" and method == "GET":
            repo = self._repo(repo_type, repo_id)
            return self._json({"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                                            for b, c in repo.branches.items() if not b.startswith("refs/")],
                               "tags": [], "converts": []})
        if op == "commits" and len(rest) == 2 and method == "GET":
            repo = self._repo(repo_type, repo_id)
            c, out = self._commit(repo, unquote(rest[1])), []
            while c is not None:
                out.append({"id": c.oid, "title": c.title, "message": "", "date": c.date,
                            "authors": [{"user": USER}]})
                c = repo.commits.get(c.parent) if c.parent else None
            return self._json(out)
        if op == "branch" and len(rest) == 2 and method == "POST":
            repo = self._repo(repo_type, repo_id, write=True)
            branch = unquote(rest[1])
            if branch in repo.branches:
                raise _HubError(409, f"Reference already exists: {branch}")
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.branches[branch] = self._commit(repo, start).oid
            return self._json({})
        if op == "preupload" and len(rest) == 2 and method == "POST":
            return self._preupload(repo_type, repo_id, unquote(rest[1]), body)
        if op == "commit" and len(rest) == 2 and method == "POST":
            return self._commit_op(repo_type, repo_id, unquote(rest[1]), body)
        raise _HubError(404, f"no api route /api/{'/'.join(seg)}")

    # --- repo info and listings -----------------------------------------------------------------
    def _info_dict(self, repo: Repo, c: Commit) -> dict:
        siblings = []
        for p, f in sorted(c.files.items()):
            s = {"rfilename": p, "size": f.size, "blobId": f.oid or git_oid(self.hub.state.blobs[f.sha256])}
            if f.lfs:
                s["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": len(lfs_pointer(f.sha256, f.size))}
            siblings.append(s)
        card = {}
        if "README.md" in c.files:
            card = _front_matter(self.hub.state.blobs[c.files["README.md"].sha256].decode("utf-8", "replace"))[0] or {}
        return {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": c.oid, "private": repo.private, "gated": False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [], "createdAt": repo.created_at,
                "lastModified": c.date, "cardData": card if isinstance(card, dict) else {},
                "siblings": siblings, "usedStorage": sum(f.size for f in c.files.values())}

    def _repo_info(self, repo_type, repo_id, rev):
        repo = self._repo(repo_type, repo_id)
        c = self._commit(repo, rev)
        return self._json(self._info_dict(repo, c))

    def _list_repos(self, repo_type):
        author = (self._query.get("author") or [None])[0]
        search = (self._query.get("search") or [None])[0]
        tags = set(self._query.get("filter") or [])   # the card's `tags:` (the Hub also matches other facets)
        out = []
        for (t, rid), repo in sorted(self.hub.state.repos.items()):
            if t != repo_type or (author and rid.split("/")[0] != author) or (search and search not in rid):
                continue
            if repo.private and not self._authorized():
                continue
            info = self._info_dict(repo, repo.commits[repo.branches["main"]])
            card_tags = info["cardData"].get("tags") or []
            info["tags"] = list(card_tags) if isinstance(card_tags, list) else [card_tags]
            if not tags <= set(info["tags"]):
                continue
            if not self._query.get("full"):
                info.pop("siblings")
            out.append(info)
        return self._json(out)

    def _entry(self, path: str, f: FileRec | None, expand: bool, repo: Repo) -> dict:
        if f is None:  # a folder
            return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}
        d = {"type": "file", "path": path, "size": f.size,
             "oid": f.oid or git_oid(self.hub.state.blobs[f.sha256])}
        if f.lfs:
            d["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f.sha256, f.size))}
        if expand:
            c = repo.commits[f.commit]
            d["lastCommit"] = {"id": c.oid, "title": c.title, "date": c.date}
        return d

    def _tree(self, repo_type, repo_id, rev, path):
        repo = self._repo(repo_type, repo_id)
        c = self._commit(repo, rev)
        recursive = (self._query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        expand = (self._query.get("expand") or ["false"])[0].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and prefix.rstrip("/") in c.files:
            raise _HubError(404, f"{path} is a file, not a folder", "EntryNotFound")
        files, dirs = [], set()
        for p, f in sorted(c.files.items()):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix):].split("/")
            for i in range(1, len(parts)):
                if recursive or i == 1:
                    dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                files.append(self._entry(p, f, expand, repo))
        if prefix and not files and not dirs:
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound")
        return self._json([self._entry(d, None, expand, repo) for d in sorted(dirs)] + files)

    def _paths_info(self, repo_type, repo_id, rev, body):
        repo = self._repo(repo_type, repo_id)
        c = self._commit(repo, rev)
        form = parse_qs(body.decode())
        expand = (form.get("expand") or ["false"])[0].lower() in ("1", "true")
        out = []
        for p in form.get("paths", []):
            p = p.strip("/")
            if p in c.files:
                out.append(self._entry(p, c.files[p], expand, repo))
            elif any(q.startswith(p + "/") for q in c.files) or p == "":
                out.append(self._entry(p, None, expand, repo))
        return self._json(out)

    # --- uploads --------------------------------------------------------------------------------
    def _preupload(self, repo_type, repo_id, rev, body):
        repo = self._repo(repo_type, repo_id, write=True)
        c = self.hub.state.resolve(repo, rev) or self._commit(repo, "main")
        out = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f.get("sample") or "")
            lfs = f["size"] >= LFS_THRESHOLD or b"\0" in sample or f["path"].endswith(_BINARY_SUFFIXES)
            old = c.files.get(f["path"])
            oid = None
            if old is not None:
                oid = old.sha256 if old.lfs else git_oid(self.hub.state.blobs[old.sha256])
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": oid})
        return self._json({"files": out, "commitOid": c.oid})

    def _lfs_batch(self, repo_type, repo_id, body):
        self._repo(repo_type, repo_id, write=True)
        d = json.loads(body)
        objects = []
        for o in d.get("objects", []):
            obj = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.hub.state.blobs:
                sig = _sign(o["oid"])
                obj["actions"] = {
                    "upload": {"href": f"{self.hub.endpoint}/_lfs/upload/{o['oid']}?sig={sig}", "header": {}},
                    "verify": {"href": f"{self.hub.endpoint}/_lfs/verify/{o['oid']}?sig={sig}", "header": {}}}
            objects.append(obj)
        return self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_object(self, method, action, oid, body):
        # like S3's presigned URLs: the signature the batch answer put in the href is the credential
        if (self._query.get("sig") or [None])[0] != _sign(oid):
            raise _HubError(403, f"bad or missing signature for LFS object {oid}")
        if action == "upload" and method == "PUT":
            if hashlib.sha256(body).hexdigest() != oid:
                raise _HubError(400, f"uploaded content does not match oid {oid}")
            with self.hub.state.lock:
                self.hub.state.blobs[oid] = body
            return self._send(200)
        if action == "verify" and method == "POST":
            d = json.loads(body)
            blob = self.hub.state.blobs.get(oid)
            if blob is None or len(blob) != d.get("size"):
                raise _HubError(404, f"LFS object {oid} not found or of the wrong size")
            return self._json({})
        raise _HubError(404, "bad lfs route")

    def _commit_op(self, repo_type, repo_id, rev, body):
        repo = self._repo(repo_type, repo_id, write=True)
        state = self.hub.state
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        add, lfs_add, delete, delete_folders = {}, {}, [], []
        for x in lines:
            k, v = x["key"], x["value"]
            if k == "file":
                add[v["path"]] = base64.b64decode(v["content"]) if v.get("encoding") == "base64" else v["content"].encode()
            elif k == "lfsFile":
                blob = state.blobs.get(v["oid"])
                if blob is None:
                    raise _HubError(400, f"LFS object {v['oid']} for {v['path']} was never uploaded")
                lfs_add[v["path"]] = (v["oid"], len(blob))
            elif k == "deletedFile":
                delete.append(v["path"])
            elif k == "deletedFolder":
                delete_folders.append(v["path"])
        for p in list(add) + list(lfs_add):
            if p.startswith("/") or ".." in p.split("/"):
                raise _HubError(400, f"invalid path in repo: {p!r}")
        with state.lock:
            create_pr = (self._query.get("create_pr") or ["0"])[0] in ("1", "true")
            if create_pr:
                repo.n_prs += 1
                branch = f"refs/pr/{repo.n_prs}"
                repo.branches[branch] = self._commit(repo, rev).oid
            else:
                branch = rev
                if rev not in repo.branches:
                    if self.hub.state.resolve(repo, rev) is not None:
                        raise _HubError(400, f"cannot commit to a commit sha ({rev}); name a branch")
                    raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            parent = header.get("parentCommit")
            if parent and not create_pr and not repo.branches[branch].startswith(parent):
                raise _HubError(412, f"A commit has happened since {parent}. Please refresh and try again.")
            for p in delete:
                if p not in repo.commits[repo.branches[branch]].files:
                    raise _HubError(404, f"A file with this name doesn't exist: {p}", "EntryNotFound")
            c = state.commit(repo, branch, header.get("summary") or "commit", add=add, lfs_add=lfs_add,
                             delete=delete, delete_folders=delete_folders)
        prefix = "datasets/" if repo_type == "dataset" else ""
        pr = f"{self.hub.endpoint}/{prefix}{repo_id}/discussions/{repo.n_prs}" if create_pr else None
        return self._json({"success": True, "commitOid": c.oid, "pullRequestUrl": pr,
                           "commitUrl": f"{self.hub.endpoint}/{prefix}{repo_id}/commit/{c.oid}"})

    # --- downloads ------------------------------------------------------------------------------
    def _resolve(self, method, repo_type, repo_id, rev, path):
        repo = self._repo(repo_type, repo_id)
        c = self._commit(repo, rev)
        f = c.files.get(path)
        if f is None:
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound")
        data = self.hub.state.blobs[f.sha256]
        etag = f.sha256 if f.lfs else git_oid(data)
        fault = self.hub.state.fault_for(repo, path) if method == "GET" else None
        if fault is not None and fault.kind == "fail":
            raise _HubError(500, f"injected failure for {path}")
        if fault is not None and fault.kind == "redirect":
            return self._send(302, b"", {"Location": fault.location})
        if fault is not None and fault.kind == "tamper":
            data = fault.data
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": c.oid, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(f.size)})
        rng = self.headers.get("Range")
        status, start, end = 200, 0, len(data)
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                raise _HubError(416, f"unsupported Range {rng!r}")
            if m.group(1) == "":  # suffix range: the last n bytes
                start = max(len(data) - int(m.group(2)), 0)
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)) + 1, len(data)) if m.group(2) else len(data)
            if start >= len(data) and len(data) > 0:
                self._status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = data[start:end]
        if fault is not None and fault.kind in ("interrupt", "stall") and method == "GET":
            self._status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            part = body[:fault.after]
            self.wfile.write(part)
            self._sent += len(part)
            self.wfile.flush()
            if fault.kind == "stall":
                self._hang()
            self.close_connection = True
            return
        self._send(status, body, headers, content_type="application/octet-stream", head_only=method == "HEAD")

    # --- README metadata --------------------------------------------------------------------------
    def _validate_yaml(self, d: dict):
        meta, err = _front_matter(d.get("content") or "")
        errors = [err] if err else []
        if meta is not None and not err:
            errors += _check_card_metadata(meta)
        if errors:
            return self._json({"errors": [{"message": e} for e in errors], "warnings": []}, 400)
        warnings = [] if meta else [{"message": "empty or missing yaml metadata in repo card"}]
        return self._json({"errors": [], "warnings": warnings})


_SECRET = uuid.uuid4().bytes


def _sign(oid: str) -> str:
    return hashlib.sha256(_SECRET + oid.encode()).hexdigest()[:32]


def _front_matter(text: str) -> tuple[dict | None, str | None]:
    """The YAML block between the leading `---` lines of a README, and a parse error if any."""
    import yaml

    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return None, None
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        return None, f"YAML parse error: {e}"
    if meta is None:
        return {}, None
    if not isinstance(meta, dict):
        return None, "the YAML metadata must be a mapping"
    return meta, None


def _check_card_metadata(meta: dict) -> list[str]:
    """The checks the Hub applies to `configs:` (dataset viewer) and a few common fields."""
    errors = []
    configs = meta.get("configs")
    if configs is not None:
        if not isinstance(configs, list):
            return ['"configs" must be a list']
        names, defaults = set(), 0
        for i, c in enumerate(configs):
            if not isinstance(c, dict) or not isinstance(c.get("config_name"), str):
                errors.append(f'"configs[{i}].config_name" must be a string')
                continue
            if c["config_name"] in names:
                errors.append(f'"configs[{i}].config_name" {c["config_name"]!r} is duplicated')
            names.add(c["config_name"])
            defaults += bool(c.get("default"))
            df = c.get("data_files")
            ok = isinstance(df, str) or (isinstance(df, list) and all(
                isinstance(x, str) or (isinstance(x, dict) and isinstance(x.get("split"), str)
                                       and isinstance(x.get("path"), (str, list))) for x in df))
            if df is not None and not ok:
                errors.append(f'"configs[{i}].data_files" must be a string, a list of strings or of {{split, path}}')
        if defaults > 1:
            errors.append('only one config can have "default: true"')
    for key in ("tags", "license" if isinstance(meta.get("license"), list) else "", "task_categories"):
        if key and key in meta and not isinstance(meta[key], (list, str)):
            errors.append(f'"{key}" must be a list or a string')
    return errors


# --- pytest fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def hub_server_session():
    """One server for the whole test session (cleared per test by `hub_server`)."""
    with HubServer() as server:
        yield server


@pytest.fixture
def hub_server(hub_server_session, monkeypatch, tmp_path_factory):
    """A fresh, empty local Hub; huggingface_hub (and vindex) talk to it for this test.

    Sets HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET and a private HF_HOME/VINDEX_CACHE, patches
    huggingface_hub.constants (read at import time) and clears HfFileSystem's instance cache.
    """
    import huggingface_hub
    from huggingface_hub import constants

    server = hub_server_session
    server.reset()
    home = tmp_path_factory.mktemp("hf_home")
    for k, v in {"HF_ENDPOINT": server.endpoint, "HF_TOKEN": server.token, "HF_HUB_DISABLE_XET": "1",
                 "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
                 "HF_HUB_DISABLE_TELEMETRY": "1", "VINDEX_CACHE": str(home / "vindex")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for k, v in {"ENDPOINT": server.endpoint, "HF_HUB_DISABLE_XET": True, "HF_HUB_OFFLINE": False,
                 "HUGGINGFACE_CO_URL_TEMPLATE": server.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
                 "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
                 "HF_HUB_DISABLE_TELEMETRY": True}.items():
        monkeypatch.setattr(constants, k, v, raising=False)
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"}, raising=False)
    huggingface_hub.HfFileSystem.clear_instance_cache()
    yield server
    huggingface_hub.HfFileSystem.clear_instance_cache()


__all__ = ["HubServer", "hub_server", "hub_server_session", "git_oid", "TOKEN", "USER", "ORGS"]
