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
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from ..errors import HubError, ManifestError, NotFound, VindexError
from ..files import parse_json, safe_join
from ..manifest import MANIFEST, load_manifest, partition_values, validate_manifest
from .location import REMOTE_ROOT, HF_PREFIX, HubLocation

VINDEX_TAG = "vindex"
CARD = "README.md"
MAX_MANIFEST_BYTES = 64 << 20      # a manifest is JSON metadata; anything larger is refused unread


def endpoint() -> str:
    """The Hub endpoint: HF_ENDPOINT at call time, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_api(token: str | bool | None = None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token)


def hub_filesystem(token: str | bool | None = None):
    """An HfFileSystem on the current endpoint (fsspec caches instances with equal arguments)."""
    from huggingface_hub import HfFileSystem

    return HfFileSystem(endpoint=endpoint(), token=token)


def hub_call(what: str, fn, *args, **kwargs):
    """Run a huggingface_hub call, turning its errors into NotFound / HubError that name `what`
    (so the CLI prints one clear line instead of an HTTP traceback)."""
    from huggingface_hub import errors as hf_errors

    try:
        return fn(*args, **kwargs)
    except hf_errors.RepositoryNotFoundError:
        raise NotFound(f"{what}: no such repo on {endpoint()} (or it is private and no valid token "
                       "was given: set HF_TOKEN or run `hf auth login`)") from None
    except hf_errors.RevisionNotFoundError:
        raise NotFound(f"{what}: no such revision in the repo") from None
    except hf_errors.EntryNotFoundError:
        raise NotFound(f"{what}: no such file in the repo") from None
    except hf_errors.HfHubHTTPError as e:
        raise HubError(f"{what}: the Hub answered {e}".splitlines()[0]) from None
    except ValueError as e:  # huggingface_hub's own checks, e.g. README metadata the Hub refuses
        raise HubError(f"{what}: {e}") from None
    except OSError as e:  # connection refused, DNS, timeouts (httpx errors are OSError subclasses or not)
        raise HubError(f"{what}: cannot reach {endpoint()} ({e})") from None
    except Exception as e:  # httpx transport errors do not subclass OSError
        if type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2"):
            raise HubError(f"{what}: cannot reach {endpoint()} ({type(e).__name__}: {e})") from None
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
                     revision=loc.revision)
    if not info.sha:
        raise HubError(f"{loc.uri()}: the Hub did not say which commit the revision points at")
    return info.sha


def read_remote_bytes(loc: HubLocation, commit: str, path_in_repo: str, token=None,
                      limit: int = MAX_MANIFEST_BYTES) -> bytes:
    """Download one small file into memory, refusing more than `limit` bytes."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(loc.repo_id, path_in_repo, repo_type=loc.repo_type, revision=commit, endpoint=endpoint())
    what = loc.uri(revision=commit, path=path_in_repo)

    def get():
        out = bytearray()
        with get_session().stream("GET", url, headers=build_hf_headers(token=token), follow_redirects=True) as r:
            hf_raise_for_status(r)
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
    entries = hub_call(loc.uri(), lambda: list(api.list_repo_tree(
        loc.repo_id, path_in_repo=loc.path or None, repo_type=loc.repo_type, revision=commit)))
    names = {PurePosixPath(e.path).name: e for e in entries}
    if MANIFEST in names and not hasattr(names[MANIFEST], "tree_id"):
        candidates = [(loc, manifest_path)]
    else:
        folders = [e.path for e in entries if hasattr(e, "tree_id") and not PurePosixPath(e.path).name.startswith(".")]
        found = hub_call(loc.uri(), api.get_paths_info, loc.repo_id, [f"{f}/{MANIFEST}" for f in folders],
                          repo_type=loc.repo_type, revision=commit) if folders else []
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


# --- listing ----------------------------------------------------------------------------------------
def cache_root() -> Path:
    """Where pulled vindexes live: $VINDEX_CACHE/hub, else ~/.cache/vindex/hub."""
    base = os.environ.get("VINDEX_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "vindex") / "hub"


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
    reached gives a warning, not an error: the local listing still comes back.
    """
    rows = _ls_local() if local else []
    if org or collection:
        try:
            rows += _ls_remote(org, collection, token)
        except (HubError, NotFound) as e:
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
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint(), timeout=timeout)
    except Exception as e:  # noqa: BLE001 - any answer at all means reachable; no answer is the error
        raise HubError(f"cannot reach {endpoint()} ({type(e).__name__}: {e})") from None


def _ls_remote(org: str | None, collection: str | None, token) -> list[dict]:
    _probe()
    api = hub_api(token)
    repos = []
    if org:
        # the card of every published vindex carries the `vindex` tag: one listing request per org
        repos += hub_call(f"{endpoint()} datasets of {org}",
                           lambda: [d.id for d in api.list_datasets(author=org, filter=VINDEX_TAG)])
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
