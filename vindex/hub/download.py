"""Pulling vindexes from the Hub: only what is asked, every byte verified, resumable.

    pull("hf://datasets/my-org/smollm2-vindex", tables=["pooled"], layers=[3, 4])

The remote manifest decides what to fetch (tables, layers, models -> the exact repo paths, what
`snapshot_download(allow_patterns=...)` would take) and what every file must be (size, sha256).
Downloads stream into `<vindex>/.vindex-pull/<path>.part`, written as they arrive, and only a file
whose size and sha256 match the manifest is renamed into place: a reader never sees an unverified
byte. An interrupted pull leaves verified files in place and the partial ones in `.vindex-pull`,
so running it again skips the first (they are re-hashed, not re-downloaded) and continues the
second with an HTTP Range request. A file that arrives damaged (wrong sha256, too long, too
short) is reported and fetched once more from scratch; if it is still wrong it is rejected with a
ChecksumError and never kept.

The local vindex gets a manifest restricted to the files it holds, plus `pulled_from` (repo,
revision, commit, selection), so a partial pull is itself a valid vindex. The Gram cache's entries
(`grams/`, derived, not in the manifest) come with the pooled table, checked against the sha256
their names carry (`vindex.grams`); the cache itself uses only their rows of the shards pulled. Pulls into the same
folder accumulate (pull layer 3 today, layer 4 tomorrow).
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .. import grams
from ..errors import ChecksumError, HubError, NotFound, VindexError
from ..files import fsync_dir, safe_join, sha256_file
from .remote import (HubLocation, RemoteVindex, cache_dir_for, endpoint, failure_message, find_remote_vindexes,
                     hub_api, hub_session, hub_timeout, is_transient, resolve_commit)
from ..lock import WriteLock
from ..manifest import MANIFEST, load_manifest, save_manifest, validate_manifest

log = logging.getLogger(__name__)

STAGING = ".vindex-pull"     # hidden: globs, `vindex verify` and DuckDB scans never look inside
RETRIES = 4                  # transient network failures per file: timeouts, drops (each retry resumes)
RETRY_WAIT = 0.5             # seconds before the first retry; doubles each time
# every request waits at most remote.hub_timeout() (VINDEX_HUB_TIMEOUT, 30 s) to connect and for each
# piece of the body: a server that stops answering costs (RETRIES + 1) timeouts per file, then a HubError


@dataclass
class PullResult:
    path: Path                        # the local vindex folder (or the lake root for a lake repo)
    commit: str                       # the commit every file was read at
    vindexes: list[Path] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)   # repo paths fetched by this pull
    reused: list[str] = field(default_factory=list)       # already present and verified
    refetched: list[str] = field(default_factory=list)    # arrived damaged, fetched again, now good
    allow_patterns: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0

    def __str__(self) -> str:
        from ..summary import human_bytes

        return (f"{self.path} (commit {self.commit[:12]}): {len(self.downloaded)} file(s) downloaded "
                f"({human_bytes(self.bytes_downloaded)}), {len(self.reused)} already present"
                + (f", {len(self.refetched)} re-fetched after arriving damaged" if self.refetched else ""))


@dataclass
class _Job:
    rv: RemoteVindex
    dest: Path          # local vindex folder
    entry: dict

    @property
    def final(self) -> Path:
        return safe_join(self.dest, self.entry["path"])

    @property
    def part(self) -> Path:
        return safe_join(self.dest / STAGING, self.entry["path"] + ".part")

    @property
    def uri(self) -> str:
        return self.rv.location.uri(revision=self.rv.commit, path=self.rv.repo_path(self.entry["path"]))


class _Damaged(Exception):
    """The bytes the server sent cannot be the file the manifest describes."""


def pull(source: str, tables: list[str] | None = None, layers: list[int] | None = None,
         models: list[str] | None = None, out: str | Path | None = None, token: str | bool | None = None,
         workers: int = 8, progress: bool = True) -> PullResult:
    """Download a vindex (or part of it, or some vindexes of a lake repo) and verify every file.

    source: `hf://datasets/org/name[@revision][/folder]` (or `org/name`).
    tables, layers: keep only these tables / layer partitions (files without a layer partition,
        like prompts, are kept whole); models: in a lake repo, the vindexes to pull (by name or
        model id). None means all.
    out: the folder to pull into; default the cache, `$VINDEX_CACHE/hub/datasets/org/name/<rev>`.
    """
    loc = HubLocation.parse(source)
    commit = resolve_commit(loc, token)
    remotes = _select_models(find_remote_vindexes(loc, token, commit=commit), models, loc)
    target = Path(out).expanduser() if out else cache_dir_for(loc)
    single = len(remotes) == 1 and remotes[0].location.path == loc.path
    plans = []
    for rv in remotes:
        rel = rv.location.path[len(loc.path):].strip("/")
        dest = target if single else safe_join(target, rel)
        _check_dest(dest, rv)
        validate_manifest(rv.manifest, where=rv.location.uri(revision=commit, path=rv.repo_path(MANIFEST)),
                          root=dest)   # again, against the real folder: symlinks cannot lead out
        plans.append((rv, dest, _select_entries(rv, tables, layers)))
    _check_selection_found(plans, tables, layers, loc)
    result = PullResult(target, commit, [dest for _, dest, _ in plans])
    jobs = []
    # the Gram cache's entries (not in the manifest) come along with pooled, by their self-checking names
    grams_of = {id(rv): _remote_grams(rv, token) if tables is None or "pooled" in tables else []
                for rv, _, _ in plans}
    present = [(rv, dest, e) for rv, dest, entries in plans for e in entries + grams_of[id(rv)]
               if safe_join(dest, e["path"]).exists()]
    verified = _verify_present(present, progress)
    for rv, dest, entries in plans:
        for e in entries + grams_of[id(rv)]:
            result.allow_patterns.append(rv.repo_path(e["path"]))
            if (str(dest), e["path"]) in verified:
                result.reused.append(rv.repo_path(e["path"]))
            else:
                jobs.append(_Job(rv, dest, e))
    fetched, failures = _run_jobs(jobs, token, workers, progress, result)
    done = verified | {(str(j.dest), j.entry["path"]) for j in fetched}
    for rv, dest, entries in plans:
        dest.mkdir(parents=True, exist_ok=True)
        with WriteLock(dest):   # a pull commits like any writer: never over another's commit
            _write_local_manifest(rv, dest, {p for d, p in done if d == str(dest)}, tables, layers)
        if not failures:
            shutil.rmtree(dest / STAGING, ignore_errors=True)
    if failures:
        _raise_failures(failures, len(jobs))
    return result


def _remote_grams(rv: RemoteVindex, token) -> list[dict]:
    """The Gram cache entries of a remote vindex (`grams/<spec key>.<sha256>.parquet`, `vindex.grams`)
    as manifest-like entries: path, bytes (as listed), sha256 (from the name), so that a pulled entry
    is kept only if its bytes are its name's sha256. Names of another form are not fetched."""
    from huggingface_hub import errors as hf_errors

    api = hub_api(token)
    loc = rv.location
    try:
        listed = list(api.list_repo_tree(loc.repo_id, path_in_repo=rv.repo_path(grams.FOLDER), repo_type=loc.repo_type,
                                         revision=rv.commit))
    except hf_errors.EntryNotFoundError:
        return []                       # no Gram cache published
    except hf_errors.HfHubHTTPError as e:
        raise HubError(f"{rv.location.uri(revision=rv.commit, path=rv.repo_path(grams.FOLDER))}: "
                       f"the Hub answered {e}".splitlines()[0]) from None
    out = []
    for f in listed:
        name = PurePosixPath(f.path).name
        parsed = grams.parse_name(name)
        if parsed is not None and not hasattr(f, "tree_id") and f.path == rv.repo_path(f"{grams.FOLDER}/{name}"):
            out.append({"path": f"{grams.FOLDER}/{name}", "bytes": int(f.size), "sha256": parsed[1]})
    return out


def _check_dest(dest: Path, rv: RemoteVindex) -> None:
    """Pull only into an empty folder or an earlier pull of the same repo: a pull replaces and
    deletes files, which must never touch a vindex built locally (or pulled from elsewhere)."""
    if not (dest / MANIFEST).is_file():
        return
    try:
        src = load_manifest(dest).get("pulled_from") or {}
    except VindexError:
        src = {}
    if (src.get("repo_id"), src.get("repo_type"), src.get("path")) != \
            (rv.location.repo_id, rv.location.repo_type, rv.location.path):
        where = src.get("uri") or "built locally"
        raise VindexError(f"{dest}: holds a vindex that was not pulled from {rv.location.uri()} ({where}); "
                          "pull into another folder (--out) so it is not overwritten")


# --- what to pull -----------------------------------------------------------------------------------
def _select_models(remotes: list[RemoteVindex], models, loc: HubLocation) -> list[RemoteVindex]:
    if not models:
        return remotes
    wanted = set(models)
    keep = [rv for rv in remotes if wanted & {rv.name, rv.manifest["model"].get("id"), rv.location.path.split("/")[-1]}]
    known = {rv.name for rv in remotes} | {rv.manifest["model"].get("id") for rv in remotes}
    missing = sorted(m for m in wanted if m not in known and m not in {rv.location.path.split("/")[-1] for rv in remotes})
    if missing:
        raise NotFound(f"{loc.uri()}: no vindex for model(s) {missing} (it holds: "
                       f"{', '.join(sorted(rv.name for rv in remotes))})")
    return keep


def _select_entries(rv: RemoteVindex, tables, layers) -> list[dict]:
    out = []
    for table, t in sorted(rv.manifest["tables"].items()):
        if tables and table not in tables:
            continue
        for e in t.get("files") or []:
            layer = (e.get("partition") or {}).get("layer")
            if layers is not None and layer is not None and layer not in layers:
                continue
            out.append(e)
    return out


def _check_selection_found(plans, tables, layers, loc: HubLocation) -> None:
    """A table or layer asked for that no selected vindex holds is an error, not an empty pull."""
    have_tables = {t for rv, _, _ in plans for t, v in rv.manifest["tables"].items() if v.get("files")}
    if tables:
        missing = sorted(set(tables) - have_tables)
        if missing:
            raise NotFound(f"{loc.uri()}: no table(s) {missing} (it has: {', '.join(sorted(have_tables)) or 'none'})")
    if layers is not None:
        have = {(e.get("partition") or {}).get("layer") for rv, _, _ in plans
                for t, v in rv.manifest["tables"].items() if not tables or t in tables for e in v.get("files") or []}
        have.discard(None)
        missing = sorted(set(layers) - have)
        if missing:
            raise NotFound(f"{loc.uri()}: no layer(s) {missing} in the tables asked for (layers: {sorted(have)})")


# --- local files --------------------------------------------------------------------------------------
def _verify_present(present, progress: bool) -> set[tuple[str, str]]:
    """(dest, path) of files already in place with the manifest's size and sha256; wrong ones are removed."""
    ok = set()
    total = sum(e["bytes"] for _, _, e in present)
    with tqdm(total=total, unit="B", unit_scale=True, desc="checking local files",
              disable=not progress or not present) as bar:
        for rv, dest, e in present:
            f = safe_join(dest, e["path"])
            if f.is_file() and f.stat().st_size == e["bytes"] and sha256_file(f) == e["sha256"]:
                ok.add((str(dest), e["path"]))
            else:
                log.warning("%s: does not match the remote manifest (changed upstream or damaged); fetching it", f)
                f.unlink(missing_ok=True)
            bar.update(e["bytes"])
    return ok


def _write_local_manifest(rv: RemoteVindex, dest: Path, have: set[str], tables, layers) -> None:
    """The remote manifest restricted to the verified files in `dest`, with where they came from.

    Files from an earlier pull of the same repo stay listed when the remote still has them with the
    same sha256 (and they are on disk with their size); files that are no longer listed are removed.
    """
    old_paths = set()
    if (dest / MANIFEST).is_file():
        try:
            old = load_manifest(dest)
            if (old.get("pulled_from") or {}).get("repo_id") == rv.location.repo_id:
                old_paths = {e["path"]: e["sha256"] for t in old["tables"].values() for e in t.get("files", [])}
        except VindexError:
            old_paths = {}
    old_paths = old_paths or {}
    m = copy.deepcopy(rv.manifest)
    kept_total, remote_total = 0, 0
    for table in list(m["tables"]):
        files = m["tables"][table].get("files") or []
        remote_total += len(files)
        kept = []
        for e in files:
            f = safe_join(dest, e["path"])
            if e["path"] in have or (old_paths.get(e["path"]) == e["sha256"] and f.is_file()
                                     and f.stat().st_size == e["bytes"]):
                kept.append(e)
        if kept:
            m["tables"][table]["files"] = kept
            kept_total += len(kept)
        else:
            del m["tables"][table]
    listed = {e["path"] for t in m["tables"].values() for e in t["files"]}
    for p in set(old_paths) - listed:
        safe_join(dest, p).unlink(missing_ok=True)
    if not listed and not (dest / MANIFEST).exists():
        return  # nothing arrived: leave no empty vindex behind
    loc = rv.location
    m["pulled_from"] = {
        "uri": loc.uri(), "endpoint": endpoint(), "repo_id": loc.repo_id, "repo_type": loc.repo_type,
        "revision": loc.revision or "main", "commit": rv.commit, "path": loc.path,
        "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "partial": kept_total < remote_total, "files": kept_total, "remote_files": remote_total,
        "selection": {"tables": sorted(tables) if tables else None,
                      "layers": sorted(layers) if layers is not None else None}}
    dest.mkdir(parents=True, exist_ok=True)
    save_manifest(dest, m)


# --- downloading ------------------------------------------------------------------------------------
# Hand-written, measured against tests/hub_server.py (huggingface_hub 2.4): hf_hub_download and
# snapshot_download delete a failed download's temp file, so the next run's GET starts at byte 0 (no
# Range); their streaming core `http_get` keeps what arrived only in 10 MiB chunks (a 4110-byte file
# dropped after 300 bytes keeps 0; 25 MB dropped at 15 MB keeps 10485760). Resuming where a pull
# stopped needs the .part file written as bytes arrive, so only that loop is ours; the request, with
# retries and backoff on 408/429/5xx answers, is huggingface_hub's `http_stream_backoff`.
def _run_jobs(jobs: list[_Job], token, workers: int, progress: bool,
              result: PullResult) -> tuple[list[_Job], list[tuple[_Job, Exception]]]:
    """Fetch every job in a thread pool with one progress bar over bytes: (fetched, failures)."""
    from huggingface_hub.utils import build_hf_headers

    if not jobs:
        return [], []
    headers = build_hf_headers(token=token)
    hub_session()
    stop = threading.Event()
    fetched, failures = [], []
    total = sum(j.entry["bytes"] for j in jobs)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"pull {len(jobs)} file(s)", disable=not progress)

    def report(msg: str) -> None:
        log.warning(msg)
        if progress:
            tqdm.write(f"warning: {msg}", file=sys.stderr)

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs))))
    try:
        futures = {pool.submit(_fetch, j, headers, bar, report, stop): j for j in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                refetched = fut.result()
            except Exception as e:  # noqa: BLE001 - every failure is collected and reported together
                failures.append((job, e))
                continue
            fetched.append(job)
            result.downloaded.append(job.rv.repo_path(job.entry["path"]))
            result.bytes_downloaded += job.entry["bytes"]
            if refetched:
                result.refetched.append(job.rv.repo_path(job.entry["path"]))
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return fetched, failures


def _fetch(job: _Job, headers: dict, bar, report, stop: threading.Event) -> bool:
    """Download one file, verify it, move it into place; True when it had to be fetched twice."""
    from huggingface_hub import hf_hub_url

    e, rv = job.entry, job.rv
    url = hf_hub_url(rv.location.repo_id, rv.repo_path(e["path"]), repo_type=rv.location.repo_type,
                     revision=rv.commit, endpoint=endpoint())
    job.part.parent.mkdir(parents=True, exist_ok=True)
    shown = _Shown(bar)
    problem = ""
    for attempt in range(2):
        try:
            _download(url, headers, job, shown, stop)
            size = job.part.stat().st_size
            shown.set(size)
            if size != e["bytes"]:
                raise _Damaged(f"{size} bytes arrived, the manifest records {e['bytes']} (truncated)")
            digest = sha256_file(job.part)
            if digest != e["sha256"]:
                raise _Damaged(f"sha256 {digest[:16]}... does not match the manifest's {e['sha256'][:16]}... (tampered)")
        except _Damaged as d:
            problem = str(d)
            job.part.unlink(missing_ok=True)
            shown.set(0)
            report(f"{job.uri}: {problem}; " + ("fetching it again" if attempt == 0 else "rejected, not kept"))
            continue
        job.final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(job.part, job.final)
        fsync_dir(job.final.parent)
        return attempt > 0
    raise ChecksumError(f"{job.uri}: {problem}; it arrived damaged twice and was rejected (nothing of it was kept)")


def _download(url: str, headers: dict, job: _Job, shown: "_Shown", stop: threading.Event) -> None:
    """Append the file to `job.part` from the size it has (a Range request), as the bytes arrive; a
    connection that drops or times out is resumed where it stopped, up to RETRIES times."""
    from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

    size = job.entry["bytes"]
    start = time.monotonic()
    for drop in range(RETRIES + 1):
        have = job.part.stat().st_size if job.part.exists() else 0
        if have > size:          # cannot be a prefix of the file: start over
            have = 0
        shown.set(have)
        if have == size:
            return
        req = {**headers, "Range": f"bytes={have}-"} if have else headers
        try:
            with http_stream_backoff("GET", url, headers=req, max_retries=RETRIES, base_wait_time=RETRY_WAIT,
                                     max_wait_time=8 * RETRY_WAIT, retry_on_exceptions=(),
                                     timeout=hub_timeout()) as r:
                hf_raise_for_status(r)
                if r.status_code != 206:         # the whole file (the server ignored the Range)
                    have = 0
                    shown.set(0)
                with open(job.part, "ab" if have else "wb") as f:
                    for chunk in r.iter_bytes():
                        if stop.is_set():
                            raise KeyboardInterrupt
                        if have + len(chunk) > size:
                            raise _Damaged(f"more than the {size} bytes the manifest records")
                        f.write(chunk)
                        have += len(chunk)
                        shown.update(len(chunk))
            return
        except _Damaged:
            raise
        except Exception as e:  # noqa: BLE001 - a dropped connection is resumed; an answer was retried already
            if not _dropped(e) or drop == RETRIES:
                raise _as_vindex_error(e, job.uri, drop + 1, time.monotonic() - start) from None
            log.info("%s: %s; resuming at byte %d (retry %d/%d)", job.uri, e, have, drop + 1, RETRIES)
            time.sleep(RETRY_WAIT * 2 ** drop)


class _Shown:
    """The bytes one file has added to the pull's progress bar (so a restart or a rejected file
    takes back exactly what it showed)."""

    def __init__(self, bar):
        self.bar, self.n = bar, 0

    def set(self, n: int) -> None:
        self.bar.update(n - self.n)
        self.n = n

    def update(self, n: int) -> None:
        self.set(self.n + n)


def _dropped(e: Exception) -> bool:
    """A connection that failed, broke off or timed out (not an HTTP answer: those were retried)."""
    return getattr(e, "response", None) is None and is_transient(e)


def _as_vindex_error(e: Exception, what: str, attempts: int, elapsed: float) -> VindexError:
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status == 404:
        return NotFound(f"{what}: listed in the manifest but missing from the repo")
    if isinstance(e, OSError) and not is_transient(e):   # ours, not the network's (e.g. a full disk)
        return VindexError(f"{what}: cannot write the download to disk ({e})")
    return HubError(f"download failed: {failure_message(what, e, attempts, elapsed)}")


def _raise_failures(failures: list[tuple[_Job, Exception]], n_jobs: int) -> None:
    lines = "\n  ".join(str(e) for _, e in failures[:10])
    more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
    bad = [e for _, e in failures if isinstance(e, ChecksumError)]
    if bad:
        raise ChecksumError(f"{len(bad)} file(s) arrived damaged and were rejected; the other files are "
                            f"verified and kept:\n  {lines}{more}")
    if len(failures) == 1 and isinstance(failures[0][1], NotFound):
        raise failures[0][1]
    if len(failures) == 1:       # one line, for the CLI
        raise HubError(f"pull incomplete: {lines}; what arrived is verified and kept, so running the same "
                       "pull again resumes it")
    raise HubError(f"pull incomplete: {len(failures)} of {n_jobs} file(s) failed; what arrived is verified "
                   f"and kept, so running the same pull again resumes it:\n  {lines}{more}")


__all__ = ["pull", "PullResult", "STAGING"]
