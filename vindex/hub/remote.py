"""Remote vindexes: Hub calls, manifests read from the Hub, the local pull cache, `ls`.

A vindex on the Hub is a dataset repo with the same layout as the folder (vindex.json, README.md,
data/...). A repo may also hold a lake: one vindex per top-level folder (`<name>/vindex.json`).
Locations are written `hf://datasets/<org>/<name>[@<revision>][/<folder>]` and read by
`HubLocation.parse` (location.py; the grammar is documented in docs/hub.md).

    publish("lake/smollm2", "my-org/smollm2-vindex")      # upload what changed, card included
    find_remote_vindexes("hf://datasets/my-org/smollm2-vindex")   # manifests, pinned to a commit
    ls(org="my-org")                                       # the local cache and the org's vindexes

Publishing (`vindex.hub.publish`) is in upload.py, pulling (`vindex.hub.pull`: download with verification
and resume) in download.py; the hf:// grammar in location.py. Everything read from the Hub
is untrusted: manifests are validated (schema version, paths that stay inside the folder) before
anything uses them, and nothing downloaded is executed or unpickled.

The endpoint is `HF_ENDPOINT` read at call time (so tests can point it at a local server) and the
token comes from huggingface_hub's usual places (HF_TOKEN, `hf auth login`) unless passed.

No Hub call waits forever: `hub_timeout()` (VINDEX_HUB_TIMEOUT, default 30 s) bounds connecting and
each wait for data, on vindex's own requests and, through `hub_session()`, on every request of
huggingface_hub's shared client that carries no timeout of its own. `hub_call` retries a call that
timed out, dropped or got 408/429/5xx (RETRIES times, backoff from RETRY_WAIT), then raises a
HubError that says what timed out, against which host, after how long.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from ..errors import HubError, InvalidValue, ManifestError, NotFound, UnsafePath, VindexError
from ..files import cache_home, parse_json, safe_join
from ..manifest import MANIFEST, load_manifest, partition_values, validate_manifest
from .location import REMOTE_ROOT, HF_PREFIX, HubLocation

VINDEX_TAG = "vindex"
CARD = "README.md"
MAX_MANIFEST_BYTES = 64 << 20      # a manifest is JSON metadata; anything larger is refused unread
TIMEOUT_ENV = "VINDEX_HUB_TIMEOUT"
DEFAULT_TIMEOUT = 30.0             # seconds to connect, and to wait for each piece of an answer
RETRIES = 2                        # further attempts of a call that timed out, dropped, or got 408/429/5xx
RETRY_WAIT = 0.5                   # seconds before the first retry; doubles each time
RETRY_STATUS = (408, 429, 500, 502, 503, 504)

log = logging.getLogger(__name__)


def endpoint() -> str:
    """The Hub endpoint: HF_ENDPOINT at call time, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_timeout() -> float:
    """Seconds a Hub request may take to connect, and to wait for each piece of its answer:
    VINDEX_HUB_TIMEOUT at call time, else DEFAULT_TIMEOUT (30)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        t = float(raw)
    except ValueError:
        t = math.nan
    if not (math.isfinite(t) and t > 0):
        raise InvalidValue(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0 (default {DEFAULT_TIMEOUT:g})")
    return t


def _fill_timeout(request) -> None:
    """httpx request hook: a request sent with no timeout at all gets hub_timeout() (huggingface_hub's
    listings pass timeout=None explicitly, which overrides any client default)."""
    t = request.extensions.get("timeout") or {}
    if all(t.get(k) is None for k in ("connect", "read", "write", "pool")):
        s = hub_timeout()
        request.extensions["timeout"] = {"connect": s, "read": s, "write": s, "pool": s}


def hub_session():
    """huggingface_hub's shared HTTP client (HfApi, HfFileSystem and our own requests all use it),
    with `_fill_timeout` among its request hooks: no request through it can wait forever."""
    from huggingface_hub.utils import get_session

    hub_timeout()   # a bad VINDEX_HUB_TIMEOUT is reported here, not from inside a request
    s = get_session()
    hooks = s.event_hooks
    if _fill_timeout not in hooks.get("request", []):
        s.event_hooks = {**hooks, "request": [*hooks.get("request", []), _fill_timeout]}
    return s


def hub_api(token: str | bool | None = None):
    from huggingface_hub import HfApi

    hub_session()
    return HfApi(endpoint=endpoint(), token=token)


def hub_filesystem(token: str | bool | None = None):
    """An HfFileSystem on the current endpoint (fsspec caches instances with equal arguments).
    Its listings go through `hub_session()`; its file reads carry huggingface_hub's own
    HF_HUB_DOWNLOAD_TIMEOUT (and are retried by its http_backoff)."""
    from huggingface_hub import HfFileSystem

    hub_session()
    return HfFileSystem(endpoint=endpoint(), token=token)


def _http_module(e: Exception):
    """The HTTP library huggingface_hub's client is built on (httpx2 now, httpx before) when `e`
    comes from it, else None."""
    name = type(e).__module__.split(".")[0]
    return sys.modules.get(name) if name in ("httpx", "httpx2") else None


def is_transient(e: BaseException) -> bool:
    """Worth another attempt: a timeout, a connection refused or dropped, or a 408/429/5xx answer."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is not None:
        return status in RETRY_STATUS
    hx = _http_module(e)
    if hx is not None:
        return isinstance(e, (hx.TimeoutException, hx.NetworkError, hx.RemoteProtocolError))
    return isinstance(e, (ConnectionError, TimeoutError))


_PHASE = {"ConnectTimeout": ("connecting", "connect"), "ReadTimeout": ("waiting for data", "read"),
          "WriteTimeout": ("sending", "write"), "PoolTimeout": ("waiting for a free connection", "pool")}


def failure_message(what: str, e: BaseException, attempts: int, elapsed: float,
                    timeout: float | None = None) -> str:
    """One line: what failed, against which host, how (timed out while ..., refused, answered 500),
    after how many attempts and how long."""
    host, limit = endpoint(), None
    phase, key = _PHASE.get(type(e).__name__, ("waiting", "read"))
    try:
        request = e.request            # httpx errors know the request (maybe a redirect's target)
        host = f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"
        limit = (request.extensions.get("timeout") or {}).get(key)   # the limit it really had
    except Exception:  # noqa: BLE001, S110 - not an httpx error, or one raised before a request existed
        pass
    tries = f"{attempts} attempt(s) in {elapsed:.1f} s"
    status = getattr(getattr(e, "response", None), "status_code", None)
    detail = (str(e).splitlines() or [""])[0] or type(e).__name__
    hx = _http_module(e)
    if hx is not None and isinstance(e, hx.TimeoutException) or isinstance(e, TimeoutError):
        limit = limit or timeout or hub_timeout()
        hint = (f"set {TIMEOUT_ENV} (seconds) to wait longer" if limit == (timeout or hub_timeout()) else
                "this limit is huggingface_hub's own: HF_HUB_DOWNLOAD_TIMEOUT (file reads) or HF_HUB_ETAG_TIMEOUT")
        return f"{what}: {host} did not answer: timed out {phase} after {limit:g} s ({tries}); {hint}"
    if status is not None:
        said = (getattr(e, "server_message", None) or "").strip().splitlines()
        reason = getattr(e.response, "reason_phrase", "") or ""
        return f"{what}: {host} answered {status} {reason}{': ' + said[0] if said else ''} ({tries})"
    return f"{what}: cannot reach {host} ({type(e).__name__}: {detail}; {tries})"


def with_retries(what: str, fn, *args, retries: int | None = None, **kwargs):
    """`fn(*args, **kwargs)`, tried again (RETRIES times by default, waiting RETRY_WAIT, doubling) while
    it fails in a way `is_transient`; the last such failure becomes a HubError (`failure_message`).
    Any other error goes through unchanged. retries=0 for a call that must not run twice (a commit)
    or that huggingface_hub already retries (paginated listings)."""
    retries = RETRIES if retries is None else retries
    start = time.monotonic()
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except VindexError:
            raise
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == retries:
                raise HubError(failure_message(what, e, attempt + 1, time.monotonic() - start)) from None
            wait = RETRY_WAIT * 2 ** attempt
            log.info("%s: %s; retry %d/%d in %.1f s", what, type(e).__name__, attempt + 1, retries, wait)
            time.sleep(wait)


def hub_call(what: str, fn, *args, retries: int | None = None, **kwargs):
    """Run a huggingface_hub call with a timeout and bounded retries (`with_retries`), turning its
    errors into NotFound / HubError that name `what` (so the CLI prints one clear line instead of an
    HTTP traceback)."""
    from huggingface_hub import errors as hf_errors

    hub_session()
    try:
        return with_retries(what, fn, *args, retries=retries, **kwargs)
    except VindexError:
        raise
    except hf_errors.RepositoryNotFoundError:
        raise NotFound(f"{what}: no such repo on {endpoint()} (or it is private and no valid token "
                       "was given: set HF_TOKEN or run `hf auth login`)") from None
    except hf_errors.RevisionNotFoundError:
        raise NotFound(f"{what}: no such revision in the repo") from None
    except hf_errors.EntryNotFoundError:
        raise NotFound(f"{what}: no such file in the repo") from None
    except hf_errors.HfHubHTTPError as e:
        raise HubError(f"{what}: the Hub answered {e}".splitlines()[0]) from None
    except ValueError as e:  # huggingface_hub's own checks (README metadata the Hub refuses), or an
        # answer that is not JSON (json.JSONDecodeError is a ValueError)
        raise HubError(f"{what}: {type(e).__name__}: {e}".splitlines()[0]) from None
    except (KeyError, TypeError, AttributeError) as e:  # JSON of the wrong shape from a hostile server
        raise HubError(f"{what}: {endpoint()} sent an answer huggingface_hub cannot read "
                       f"({type(e).__name__}: {e})".splitlines()[0]) from None
    except Exception as e:  # connection errors that are not transient (a bad URL scheme, too many redirects)
        if _http_module(e) is not None or isinstance(e, OSError):
            raise HubError(failure_message(what, e, 1, 0.0)) from None
        raise


# --- remote vindexes ---------------------------------------------------------------------------------
@dataclass
class RemoteVindex:
    """One vindex in a Hub repo, its (validated) manifest, pinned to the commit it was read at."""
    location: HubLocation   # repo, requested revision and the vindex's folder in the repo
    commit: str
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]

    def repo_path(self, relpath: str) -> str:
        """The path in the repo of a path relative to the vindex folder."""
        return f"{self.location.path}/{relpath}" if self.location.path else relpath

    def fs_url(self, relpath: str = "") -> str:
        """An hf:// URL HfFileSystem (and DuckDB through it) reads, pinned to the commit."""
        p = self.repo_path(relpath) if relpath else self.location.path
        return f"{HF_PREFIX}{self.location.url_prefix}{self.location.repo_id}@{self.commit}" + (f"/{p}" if p else "")

    def uri(self) -> str:
        return self.location.uri()


def resolve_commit(loc: HubLocation, token=None) -> str:
    """The commit sha `loc.revision` (default branch when None) points at now."""
    info = hub_call(loc.uri(), hub_api(token).repo_info, loc.repo_id, repo_type=loc.repo_type,
                    revision=loc.revision, timeout=hub_timeout())   # timeout=None would mean none
    if not info.sha:
        raise HubError(f"{loc.uri()}: the Hub did not say which commit the revision points at")
    return info.sha


def read_remote_bytes(loc: HubLocation, commit: str, path_in_repo: str, token=None,
                      limit: int | None = None) -> bytes:
    """Download one small file into memory, refusing more than `limit` bytes (MAX_MANIFEST_BYTES).

    Redirects are followed as the Hub's own are (to a CDN for LFS files; the token is not sent to
    another host), at most the client's 20, each request bounded by `hub_timeout()`."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    limit = MAX_MANIFEST_BYTES if limit is None else limit
    url = hf_hub_url(loc.repo_id, path_in_repo, repo_type=loc.repo_type, revision=commit, endpoint=endpoint())
    what = loc.uri(revision=commit, path=path_in_repo)

    def get():
        out = bytearray()
        with hub_session().stream("GET", url, headers=build_hf_headers(token=token), follow_redirects=True,
                                  timeout=hub_timeout()) as r:
            hf_raise_for_status(r)
            announced = r.headers.get("Content-Length", "")
            if announced.isdigit() and int(announced) > limit:
                raise ManifestError(f"{what}: {announced} bytes, larger than {limit}; refused unread "
                                    "(a manifest is small JSON)")
            for chunk in r.iter_bytes():
                out += chunk
                if len(out) > limit:
                    raise ManifestError(f"{what}: larger than {limit} bytes; refused (a manifest is small JSON)")
        return bytes(out)

    return hub_call(what, get)


def parse_remote_manifest(data: bytes, where: str) -> dict:
    """JSON only, validated: known schema version, every file path inside the vindex folder."""
    return validate_manifest(parse_json(data, where, ManifestError), where=where, root=REMOTE_ROOT)


def find_remote_vindexes(location: str | HubLocation, token=None, commit: str | None = None) -> list[RemoteVindex]:
    """Every vindex at `location`: the repo (or folder) itself, or each top-level folder of a lake repo.

    The revision is resolved to a commit once, and every manifest is read at that commit, so the
    manifests and the files read afterwards through `RemoteVindex.fs_url` always agree.
    """
    loc = location if isinstance(location, HubLocation) else HubLocation.parse(location)
    commit = commit or resolve_commit(loc, token)
    api = hub_api(token)
    manifest_path = f"{loc.path}/{MANIFEST}" if loc.path else MANIFEST
    entries = hub_call(loc.uri(), lambda: list(api.list_repo_tree(   # huggingface_hub retries listings
        loc.repo_id, path_in_repo=loc.path or None, repo_type=loc.repo_type, revision=commit)), retries=0)
    _check_listed(loc, [e.path for e in entries])
    names = {PurePosixPath(e.path).name: e for e in entries}
    if MANIFEST in names and not hasattr(names[MANIFEST], "tree_id"):
        candidates = [(loc, manifest_path)]
    else:
        folders = [e.path for e in entries if hasattr(e, "tree_id") and not PurePosixPath(e.path).name.startswith(".")]
        found = hub_call(loc.uri(), api.get_paths_info, loc.repo_id, [f"{f}/{MANIFEST}" for f in folders],
                          repo_type=loc.repo_type, revision=commit) if folders else []
        asked = {f"{f}/{MANIFEST}" for f in folders}
        stray = sorted(f.path for f in found if f.path not in asked)
        if stray:
            raise UnsafePath(f"{loc.uri()}: the Hub's paths-info answer names {stray[:3]}, which were not "
                             "asked for; refused")
        candidates = [(loc.with_path(str(PurePosixPath(p).parent)), p)
                      for p in sorted(f.path for f in found if not hasattr(f, "tree_id"))]
    if not candidates:
        raise NotFound(f"{loc.uri()}: no {MANIFEST} at the top of the repo{' folder' if loc.path else ''} "
                       "or in any top-level folder; is it a vindex (or a lake of vindexes)?")
    out = []
    for sub, path in candidates:
        where = sub.uri(revision=commit, path=path)
        m = parse_remote_manifest(read_remote_bytes(loc, commit, path, token), where)
        out.append(RemoteVindex(sub, commit, m))
    return out


def _check_listed(loc: HubLocation, paths: list[str]) -> None:
    """A listing of `loc.path` may only name its own children: `<folder>/<name>`, with no '..', '.',
    empty or absolute parts. Anything else (a hostile server) is refused before it is used as a path."""
    prefix = f"{loc.path}/" if loc.path else ""
    for p in paths:
        name = p[len(prefix):] if isinstance(p, str) and p.startswith(prefix) else None
        if not name or "/" in name or "\\" in name or name in (".", "..") or p.startswith("/"):
            raise UnsafePath(f"{loc.uri()}: the Hub's listing names {p!r}, which is not an entry of "
                             f"{loc.path or 'the repo root'}; refused")


# --- listing ----------------------------------------------------------------------------------------
def cache_root() -> Path:
    """Where pulled vindexes live: $VINDEX_CACHE/hub, else ~/.cache/vindex/hub."""
    return cache_home("hub")


def cache_dir_for(loc: HubLocation) -> Path:
    """The cache folder of a pulled repo revision: <cache>/<type>s/<org>/<name>/<revision>[/<folder>]."""
    org, name = loc.repo_id.split("/", 1)
    d = cache_root() / f"{loc.repo_type}s" / org / name / quote(loc.revision or "main", safe="")
    return safe_join(d, loc.path) if loc.path else d


def ls(org: str | None = None, collection: str | None = None, local: bool = True,
       token: str | bool | None = None) -> list[dict]:
    """Vindexes in the local cache and, when `org` or `collection` is given, on the Hub.

    Each row: where (local | hub), name, model, location (folder or hf:// URI), and what is known
    without downloading: layers, tables, bytes, pulled_from / last_modified. A Hub that cannot be
    reached (or does not answer in time) gives a warning, not an error: the local listing still
    comes back. With local=False there is nothing else to show, so it is a HubError.
    """
    rows = _ls_local() if local else []
    if org or collection:
        try:
            rows += _ls_remote(org, collection, token)
        except (HubError, NotFound) as e:
            if not local:
                raise
            warnings.warn(f"remote listing skipped: {e}", stacklevel=2)
    return rows


def _ls_local() -> list[dict]:
    rows = []
    root = cache_root()
    if not root.is_dir():
        return rows
    for m_path in sorted(root.glob(f"*/*/*/*/{MANIFEST}")) + sorted(root.glob(f"*/*/*/*/*/{MANIFEST}")):
        folder = m_path.parent
        try:
            m = load_manifest(folder)
        except VindexError as e:
            rows.append({"where": "local", "name": folder.name, "location": str(folder), "error": str(e)})
            continue
        files = [e for t in m["tables"].values() for e in t.get("files", [])]
        src = m.get("pulled_from") or {}
        rows.append({"where": "local", "name": m["name"], "model": m["model"].get("id"),
                     "location": str(folder), "tables": sorted(t for t, v in m["tables"].items() if v.get("files")),
                     "layers": partition_values(files),
                     "files": len(files), "bytes": sum(e["bytes"] for e in files),
                     "pulled_from": src.get("uri"), "partial": src.get("partial")})
    return rows


def _probe(timeout: float = 5.0) -> None:
    """Fail fast when the Hub is unreachable (huggingface_hub's listing retries for ~25 s)."""
    timeout = min(timeout, hub_timeout())
    start = time.monotonic()
    try:
        hub_session().head(endpoint(), timeout=timeout)
    except Exception as e:  # noqa: BLE001 - any answer at all means reachable; no answer is the error
        raise HubError(failure_message(f"listing {endpoint()}", e, 1, time.monotonic() - start, timeout)) from None


def _ls_remote(org: str | None, collection: str | None, token) -> list[dict]:
    _probe()
    api = hub_api(token)
    repos = []
    if org:
        # the card of every published vindex carries the `vindex` tag: one listing request per org
        repos += hub_call(f"{endpoint()} datasets of {org}",   # huggingface_hub retries listings
                          lambda: [d.id for d in api.list_datasets(author=org, filter=VINDEX_TAG)], retries=0)
    if collection:
        coll = hub_call(f"collection {collection}", api.get_collection, collection)
        repos += [i.item_id for i in coll.items if i.item_type == "dataset"]
    rows = []
    for repo_id in dict.fromkeys(repos):
        loc = HubLocation(repo_id)
        try:
            found = find_remote_vindexes(loc, token)
        except (NotFound, ManifestError):
            continue  # not a vindex repo (or a broken one): not listed
        for rv in found:
            files = [e for t in rv.manifest["tables"].values() for e in t.get("files", [])]
            rows.append({"where": "hub", "name": rv.name, "model": rv.manifest["model"].get("id"),
                         "location": rv.uri(), "commit": rv.commit,
                         "tables": sorted(t for t, v in rv.manifest["tables"].items() if v.get("files")),
                         "layers": partition_values(files),
                         "files": len(files), "bytes": sum(e["bytes"] for e in files)})
    return rows
