"""The Hugging Face Hub round trip: where vindexes live on the Hub, publishing them, listing them.

A vindex on the Hub is a dataset repo with the same layout as the folder (vindex.json, README.md,
data/...). A repo may also hold a lake: one vindex per top-level folder (`<name>/vindex.json`).
Locations are written `hf://datasets/<org>/<name>[@<revision>][/<folder>]`; a bare `org/name` or
`hf://org/name` means the dataset repo (vindexes are datasets), `hf://models/org/name` a model repo.

    publish("lake/smollm2", "my-org/smollm2-vindex")      # upload what changed, card included
    find_remote_vindexes("hf://datasets/my-org/smollm2-vindex")   # manifests, pinned to a commit
    ls(org="my-org")                                       # the local cache and the org's vindexes

Pulling (download with verification and resume) is in `vindex.pull`. Everything read from the Hub
is untrusted: manifests are validated (schema version, paths that stay inside the folder) before
anything uses them, and nothing downloaded is executed or unpickled.

The endpoint is `HF_ENDPOINT` read at call time (so tests can point it at a local server) and the
token comes from huggingface_hub's usual places (HF_TOKEN, `hf auth login`) unless passed.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from tqdm.auto import tqdm

from .errors import ManifestError, NotFound, VindexError
from .files import safe_join, sha256_file
from .manifest import MANIFEST, load_manifest, validate_manifest

HF_PREFIX = "hf://"
VINDEX_TAG = "vindex"
CARD = "README.md"
MAX_MANIFEST_BYTES = 64 << 20      # a manifest is JSON metadata; anything larger is refused unread
COMMIT_BATCH = 1000                # files per commit: the Hub rejects very large commits
_REMOTE_ROOT = "/__hub__"          # lexical root for path checks of a remote manifest


class HubError(VindexError):
    """The Hub (or the network) refused or failed a request; the message says which and why."""


# --- locations -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubLocation:
    """A repo on the Hub, optionally a revision and a folder inside it (a vindex in a lake repo)."""
    repo_id: str
    repo_type: str = "dataset"
    revision: str | None = None
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> "HubLocation":
        """`hf://[datasets/|models/]org/name[@rev][/folder]`, a Hub web URL, or a bare `org/name`."""
        from huggingface_hub.utils import parse_hf_uri

        text = str(text).strip()
        if not text.startswith((HF_PREFIX, "http://", "https://")):
            text = HF_PREFIX + text
        body = text[len(HF_PREFIX):] if text.startswith(HF_PREFIX) else None
        if body is not None and not body.startswith(("datasets/", "models/", "spaces/", "buckets/", "kernels/")):
            text = f"{HF_PREFIX}datasets/{body}"   # vindexes are dataset repos
        try:
            u = parse_hf_uri(text)
        except Exception as e:  # HfUriError and friends: make it one of ours, naming the input
            raise VindexError(f"{text!r} is not a Hub location ({e}); expected "
                              "hf://datasets/<org>/<name>[@<revision>][/<folder>]") from None
        if u.type not in ("dataset", "model"):
            raise VindexError(f"{text}: vindexes live in dataset (or model) repos, not {u.type}s")
        path = (u.path_in_repo or "").strip("/")
        if path:
            safe_join(_REMOTE_ROOT, path)  # no '..' or absolute folders
        return cls(u.id, u.type, u.revision, path)

    @property
    def url_prefix(self) -> str:
        return "datasets/" if self.repo_type == "dataset" else ""

    def uri(self, revision: str | None = None, path: str | None = None) -> str:
        rev = revision or self.revision
        p = self.path if path is None else path
        return f"{HF_PREFIX}{self.repo_type}s/{self.repo_id}{'@' + rev if rev else ''}{'/' + p if p else ''}"

    def with_path(self, path: str) -> "HubLocation":
        return HubLocation(self.repo_id, self.repo_type, self.revision, path.strip("/"))


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


def _hub_call(what: str, fn, *args, **kwargs):
    """Run a huggingface_hub call, turning its errors into NotFound / HubError that name `what`."""
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
    info = _hub_call(loc.uri(), hub_api(token).repo_info, loc.repo_id, repo_type=loc.repo_type,
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

    return _hub_call(what, get)


def parse_remote_manifest(data: bytes, where: str) -> dict:
    """JSON only, validated: known schema version, every file path inside the vindex folder."""
    try:
        m = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ManifestError(f"{where}: not valid JSON ({e})") from None
    return validate_manifest(m, where=where, root=_REMOTE_ROOT)


def find_remote_vindexes(location: str | HubLocation, token=None, commit: str | None = None) -> list[RemoteVindex]:
    """Every vindex at `location`: the repo (or folder) itself, or each top-level folder of a lake repo.

    The revision is resolved to a commit once, and every manifest is read at that commit, so the
    manifests and the files read afterwards through `RemoteVindex.fs_url` always agree.
    """
    loc = location if isinstance(location, HubLocation) else HubLocation.parse(location)
    commit = commit or resolve_commit(loc, token)
    api = hub_api(token)
    manifest_path = f"{loc.path}/{MANIFEST}" if loc.path else MANIFEST
    entries = _hub_call(loc.uri(), lambda: list(api.list_repo_tree(
        loc.repo_id, path_in_repo=loc.path or None, repo_type=loc.repo_type, revision=commit)))
    names = {PurePosixPath(e.path).name: e for e in entries}
    if MANIFEST in names and not hasattr(names[MANIFEST], "tree_id"):
        candidates = [(loc, manifest_path)]
    else:
        folders = [e.path for e in entries if hasattr(e, "tree_id") and not PurePosixPath(e.path).name.startswith(".")]
        found = _hub_call(loc.uri(), api.get_paths_info, loc.repo_id, [f"{f}/{MANIFEST}" for f in folders],
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


# --- publishing ------------------------------------------------------------------------------------
@dataclass
class PublishResult:
    repo_id: str
    revision: str
    commit: str
    url: str
    uploaded: list[str] = field(default_factory=list)   # paths in the repo
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0

    def __str__(self) -> str:
        from .info import human_bytes

        return (f"{self.url} @ {self.commit[:12]}: {len(self.uploaded)} file(s) uploaded "
                f"({human_bytes(self.bytes_uploaded)}), {len(self.unchanged)} unchanged, "
                f"{len(self.deleted)} stale file(s) deleted")


def local_vindexes(path: str | Path) -> list[tuple[str, Path]]:
    """(folder in the repo, local folder) of a vindex folder ('' -> itself) or of each vindex in a lake."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        return [("", root)]
    if root.is_dir():
        subs = [(p.name, p) for p in sorted(root.iterdir())
                if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()]
        if subs:
            return subs
    raise NotFound(f"{root}: neither a vindex (no {MANIFEST}) nor a lake of vindex folders")


def git_blob_oid(data: bytes) -> str:
    """The git blob id the Hub reports for a regular (non-LFS) file: sha1('blob <n>\\0' + data)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def publish(path: str | Path, repo: str, revision: str | None = None, private: bool = False,
            token: str | bool | None = None, message: str | None = None, progress: bool = True) -> PublishResult:
    """Upload a vindex (or a lake of vindexes) to a Hub dataset repo; only changed files travel.

    path: a vindex folder, or a lake folder (each vindex goes to `<name>/` in the repo).
    repo: `org/name` or `hf://datasets/org/name[@revision][/folder]`; created when missing.
    revision: the branch to commit to (created from the default branch when missing).

    The local vindex is verified first (sha256 of every file against its manifest), and refused if
    anything is off. A file is unchanged when the remote has the same sha256 (LFS) or git blob id.
    Data files go first, in batches; vindex.json and the generated README.md go in the last commit
    with the deletion of stale shards, so a reader of the repo never sees a manifest that lists
    files not yet uploaded.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    from .card import dataset_card
    from .verify import verify

    loc = HubLocation.parse(repo)
    if loc.repo_type != "dataset":
        raise VindexError(f"{repo}: vindexes are published as dataset repos (hf://datasets/...)")
    if loc.path:
        raise VindexError(f"{repo}: publish to the repo itself, not a folder in it (the card at the repo's "
                          "root must describe every vindex); to put several vindexes in one repo, publish "
                          "their lake folder")
    revision = revision or loc.revision or "main"
    vindexes = local_vindexes(path)
    # 1. the local side must be sound: schemas, sizes and checksums
    manifests, local_files = [], {}
    for sub, folder in vindexes:
        problems = [p for p in verify(folder, checksums=False) if p.kind != "orphan"]
        if problems:
            raise VindexError(f"{folder}: refusing to publish a vindex that does not verify:\n  "
                              + "\n  ".join(map(str, problems[:10])))
        m = load_manifest(folder)
        prefix = sub
        manifests.append((prefix, m))
        for t in m["tables"].values():
            for e in t.get("files", []):
                local_files[_join(prefix, e["path"])] = (safe_join(folder, e["path"]), e)
    names = [m["name"] for _, m in manifests]
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise VindexError(f"{path}: several vindexes are named {dup}; names must be unique in a repo "
                          "(they are the `model` column)")
    _check_checksums(local_files, progress)
    # 2. the remote side: create what is missing, list what is there
    api = hub_api(token)
    where = loc.uri(revision=revision)
    _hub_call(where, api.create_repo, loc.repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision != "main":
        _hub_call(where, api.create_branch, loc.repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    remote = _hub_call(where, lambda: {f.path: f for f in api.list_repo_tree(
        loc.repo_id, repo_type="dataset", revision=revision, recursive=True) if not hasattr(f, "tree_id")})
    info = _hub_call(where, api.repo_info, loc.repo_id, repo_type="dataset", revision=revision)
    if private and not info.private:
        warnings.warn(f"{where}: the repo already exists and is public; --private only applies to new repos",
                      stacklevel=2)
    # 3. what changed
    result = PublishResult(loc.repo_id, revision, "", f"{endpoint()}/datasets/{loc.repo_id}")
    data_ops = []
    for rpath, (local, e) in sorted(local_files.items()):
        r = remote.get(rpath)
        same = r is not None and r.size == e["bytes"] and (
            (r.lfs is not None and r.lfs.sha256 == e["sha256"])
            or (r.lfs is None and r.blob_id == git_blob_oid(local.read_bytes())))
        if same:
            result.unchanged.append(rpath)
        else:
            data_ops.append(CommitOperationAdd(path_in_repo=rpath, path_or_fileobj=str(local)))
            result.uploaded.append(rpath)
            result.bytes_uploaded += e["bytes"]
    meta = {}
    for (prefix, m), (_, folder) in zip(manifests, vindexes):
        meta[_join(prefix, MANIFEST)] = (folder / MANIFEST).read_bytes()
    meta[CARD] = dataset_card(manifests, loc.repo_id).encode()
    final_ops = []
    for rpath, data in meta.items():
        r = remote.get(rpath)
        if r is not None and r.size == len(data) and (
                (r.lfs is None and r.blob_id == git_blob_oid(data))
                or (r.lfs is not None and r.lfs.sha256 == hashlib.sha256(data).hexdigest())):
            result.unchanged.append(rpath)
        else:
            final_ops.append(CommitOperationAdd(path_in_repo=rpath, path_or_fileobj=data))
            result.uploaded.append(rpath)
            result.bytes_uploaded += len(data)
    # stale shards: under a published vindex's data/ but no longer in its manifest
    for prefix, _m in manifests:
        data_dir = _join(prefix, "data") + "/"
        for rpath in remote:
            if rpath.startswith(data_dir) and rpath not in local_files:
                final_ops.append(CommitOperationDelete(path_in_repo=rpath))
                result.deleted.append(rpath)
    # 4. commit: data in batches, then the manifest(s), card and deletions
    with _hf_progress(progress):
        result.commit = _commit_all(api, loc, revision, where, data_ops, final_ops, info.sha, progress,
                                    message or f"vindex publish: {', '.join(m['name'] for _, m in manifests)}")
    return result


def _commit_all(api, loc: HubLocation, revision: str, where: str, data_ops: list, final_ops: list,
                commit: str, progress: bool, msg: str) -> str:
    """Data files in batches of COMMIT_BATCH, then the final commit (manifests, card, deletions)."""
    batches = [data_ops[i:i + COMMIT_BATCH] for i in range(0, len(data_ops), COMMIT_BATCH)]
    bar = tqdm(total=len(batches) + bool(final_ops), desc="commits", unit="commit",
               disable=not progress or len(batches) + bool(final_ops) <= 1)
    for i, ops in enumerate(batches):
        part = f" (data {i + 1}/{len(batches)})" if len(batches) > 1 else " (data)"
        commit = _hub_call(where, api.create_commit, loc.repo_id, operations=ops, commit_message=msg + part,
                           repo_type="dataset", revision=revision).oid
        bar.update()
    if final_ops:
        commit = _hub_call(where, api.create_commit, loc.repo_id, operations=final_ops, commit_message=msg,
                           repo_type="dataset", revision=revision).oid
        bar.update()
    bar.close()
    return commit


@contextmanager
def _hf_progress(enabled: bool):
    """huggingface_hub's own bars (per-file uploads) follow our `progress` flag."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _check_checksums(files: dict[str, tuple[Path, dict]], progress: bool) -> None:
    """sha256 of every local file against its manifest entry, with a progress bar over bytes."""
    from .errors import ChecksumError

    total = sum(e["bytes"] for _, e in files.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="verifying", disable=not progress) as bar:
        for local, e in files.values():
            digest = sha256_file(local)
            if digest != e["sha256"]:
                raise ChecksumError(f"{local}: sha256 {digest[:16]}... does not match the manifest's "
                                    f"{e['sha256'][:16]}...; refusing to publish (run `vindex verify`)")
            bar.update(e["bytes"])


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
                     "layers": sorted({e["partition"]["layer"] for e in files if "layer" in e.get("partition", {})}),
                     "files": len(files), "bytes": sum(e["bytes"] for e in files),
                     "pulled_from": src.get("uri"), "partial": src.get("partial")})
    return rows


def _ls_remote(org: str | None, collection: str | None, token) -> list[dict]:
    api = hub_api(token)
    repos = []
    if org:
        # the card of every published vindex carries the `vindex` tag: one listing request per org
        repos += _hub_call(f"{endpoint()} datasets of {org}",
                           lambda: [d.id for d in api.list_datasets(author=org, filter=VINDEX_TAG)])
    if collection:
        coll = _hub_call(f"collection {collection}", api.get_collection, collection)
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
                         "layers": sorted({e["partition"]["layer"] for e in files if "layer" in e.get("partition", {})}),
                         "files": len(files), "bytes": sum(e["bytes"] for e in files)})
    return rows
