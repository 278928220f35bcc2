"""Publishing a vindex (or a lake folder) to a Hub dataset repo: only what changed travels.

    publish("lake/smollm2", "my-org/smollm2-vindex")

The local vindex is verified first; files whose sha256 (LFS) or git blob id the Hub already has
are skipped; data files go in batches and the manifest and generated card (vindex.hub.card) go last,
so the repo never lists a file it does not have yet. The Gram cache (`grams/`, derived, not in the
manifest) travels by its self-checking names: each sound entry with a layer of the current shards. Public as `vindex.hub.publish`.
"""
from __future__ import annotations

import hashlib
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .. import grams
from ..errors import ChecksumError, HubError, NotFound, VindexError
from ..files import safe_join, sha256_file
from .remote import CARD, HubLocation, hub_call, endpoint, hub_api, hub_timeout
from ..lake import lake_members
from ..manifest import MANIFEST, load_manifest

COMMIT_BATCH = 1000                # files per commit: the Hub rejects very large commits


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
        from ..summary import human_bytes

        return (f"{self.url} @ {self.commit[:12]}: {len(self.uploaded)} file(s) uploaded "
                f"({human_bytes(self.bytes_uploaded)}), {len(self.unchanged)} unchanged, "
                f"{len(self.deleted)} stale file(s) deleted")


def local_vindexes(path: str | Path) -> list[tuple[str, Path]]:
    """(folder in the repo, local folder) of a vindex folder ('' -> itself) or of each vindex in a lake."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        return [("", root)]
    subs = [(p.name, p) for p in lake_members(root) if (p / MANIFEST).is_file()]
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
    from ..integrity import verify

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
    manifests, local_files, local_grams = [], {}, {}
    for sub, folder in vindexes:
        # orphans are never read; a damaged Gram cache entry or temp file is never used, nor uploaded
        problems = [p for p in verify(folder, checksums=False) if p.kind not in ("orphan", "grams", "temp")]
        if problems:
            raise VindexError(f"{folder}: refusing to publish a vindex that does not verify:\n  "
                              + "\n  ".join(map(str, problems[:10])))
        m = load_manifest(folder)
        prefix = sub
        manifests.append((prefix, m))
        for t in m["tables"].values():
            for e in t.get("files", []):
                local_files[_join(prefix, e["path"])] = (safe_join(folder, e["path"]), e)
        local_grams.update(_gram_files(prefix, folder, m))
    names = [m["name"] for _, m in manifests]
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise VindexError(f"{path}: several vindexes are named {dup}; names must be unique in a repo "
                          "(they are the `model` column)")
    _check_checksums(local_files, progress)
    # 2. the remote side: create what is missing, list what is there
    api = hub_api(token)
    where = loc.uri(revision=revision)
    hub_call(where, api.create_repo, loc.repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision != "main":
        hub_call(where, api.create_branch, loc.repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    remote = hub_call(where, lambda: {f.path: f for f in api.list_repo_tree(   # huggingface_hub retries listings
        loc.repo_id, repo_type="dataset", revision=revision, recursive=True) if not hasattr(f, "tree_id")}, retries=0)
    info = hub_call(where, api.repo_info, loc.repo_id, repo_type="dataset", revision=revision,
                    timeout=hub_timeout())   # timeout=None would mean none
    if private and not info.private:
        warnings.warn(f"{where}: the repo already exists and is public; --private only applies to new repos",
                      stacklevel=2)
    # 3. what changed (Gram cache entries travel as data files: their names carry their sha256)
    result = PublishResult(loc.repo_id, revision, "", f"{endpoint()}/datasets/{loc.repo_id}")
    data_ops = []
    for rpath, (local, e) in sorted({**local_files, **local_grams}.items()):
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
    # and Gram cache entries the local vindex no longer has (stale, pruned, or of another spec version)
    for prefix, _m in manifests:
        data_dir, grams_dir = _join(prefix, "data") + "/", _join(prefix, grams.FOLDER) + "/"
        for rpath in remote:
            if (rpath.startswith(data_dir) and rpath not in local_files) or (
                    rpath.startswith(grams_dir) and rpath not in local_grams):
                final_ops.append(CommitOperationDelete(path_in_repo=rpath))
                result.deleted.append(rpath)
    # 4. commit: data in batches, then the manifest(s), card and deletions
    with _hf_progress(progress):
        result.commit = _commit_all(api, loc, revision, where, data_ops, final_ops, info.sha, progress,
                                    message or f"vindex publish: {', '.join(m['name'] for _, m in manifests)}")
    return result


def _commit_all(api, loc: HubLocation, revision: str, where: str, data_ops: list, final_ops: list,
                commit: str, progress: bool, msg: str) -> str:
    """Data files in batches of COMMIT_BATCH, then the final commit (manifests, card, deletions).

    A commit is sent once (retries=0): one that timed out may have landed, and sending it again could
    commit twice. Publishing again is the retry: it compares with the repo and sends what is missing."""
    batches = [data_ops[i:i + COMMIT_BATCH] for i in range(0, len(data_ops), COMMIT_BATCH)]
    bar = tqdm(total=len(batches) + bool(final_ops), desc="commits", unit="commit",
               disable=not progress or len(batches) + bool(final_ops) <= 1)
    for i, ops in enumerate(batches):
        part = f" (data {i + 1}/{len(batches)})" if len(batches) > 1 else " (data)"
        commit = _commit(where, api, loc, ops, msg + part, revision)
        bar.update()
    if final_ops:
        commit = _commit(where, api, loc, final_ops, msg, revision)
        bar.update()
    bar.close()
    return commit


def _commit(where: str, api, loc: HubLocation, ops: list, msg: str, revision: str) -> str:
    try:
        return hub_call(where, api.create_commit, loc.repo_id, operations=ops, commit_message=msg,
                        repo_type="dataset", revision=revision, retries=0).oid
    except HubError as e:
        raise HubError(f"{e}; the commit may or may not have landed: run the same publish again (it "
                       "uploads only what the repo does not have)") from None


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


def _gram_files(prefix: str, folder: Path, manifest: dict) -> dict[str, tuple[Path, dict]]:
    """repo path -> (local file, entry as a manifest lists a file) of the vindex's Gram cache entries
    worth publishing: sound (bytes rehashed against the sha256 in the name, spec, sizes) and with at
    least one layer computed from the shards the manifest lists now (`vindex.grams.survey`)."""
    out = {}
    for item in grams.survey(folder, manifest, rehash=True):
        if item["problem"] is None and item["current"]:
            name = item["path"].name
            out[_join(prefix, grams.FOLDER, name)] = (item["path"], {
                "path": f"{grams.FOLDER}/{name}", "bytes": item["bytes"], "sha256": grams.parse_name(name)[1]})
    return out


def _check_checksums(files: dict[str, tuple[Path, dict]], progress: bool) -> None:
    """sha256 of every local file against its manifest entry, with a progress bar over bytes."""
    total = sum(e["bytes"] for _, e in files.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="verifying", disable=not progress) as bar:
        for local, e in files.values():
            digest = sha256_file(local)
            if digest != e["sha256"]:
                raise ChecksumError(f"{local}: sha256 {digest[:16]}... does not match the manifest's "
                                    f"{e['sha256'][:16]}...; refusing to publish (run `vindex verify`)")
            bar.update(e["bytes"])


__all__ = ["publish", "PublishResult", "local_vindexes", "git_blob_oid"]
