"""Where a LarQL vindex comes from: a local folder, or a Hub repo downloaded in part.

A LarQL repo on the Hub can hold tens of GB of inference weights next to the few files an import
reads, so `fetch_from_hub` lists the repo first and downloads only those files (plus
gate_vectors.bin and embeddings.bin on request) into the Hugging Face cache, pinned to the commit it listed. The URI
is split by `vindex.hub.location.HubLocation` (the grammar: docs/hub.md); one that names no repo
type (`hf://org/name`) is looked up as a model repo, then as a dataset repo, as LarQL does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vindex.errors import HubError, InvalidValue, NotFound
from vindex.hub.location import HubLocation, is_hub_uri

from . import format as lf
from .ov_gate import ov_gate_header

_BARE_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[^/\s]+)?$")
_OV_NAME = re.compile(r"(ov[_-]?gate.*\.(jsonl|ndjson)|\.ndjson)$", re.IGNORECASE)
LABEL_FILES = (lf.FEATURE_LABELS, lf.FEATURE_LABELS_RICH, lf.RELATION_CLUSTERS, lf.FEATURE_CLUSTERS)
LARQL_REPO_TYPES = ("model", "dataset")   # hf://org/name with no repo type: LarQL looks in this order


@dataclass
class LarqlSource:
    """A LarQL vindex on local disk, and where it came from."""
    uri: str
    folder: Path
    provenance: dict = field(default_factory=dict)
    ov_files: list[Path] = field(default_factory=list)


def is_ov_gate_name(filename: str) -> bool:
    return bool(_OV_NAME.search(filename))


def resolve_source(src, *, revision: str | None = None, gate_vectors: bool = False, embeddings: bool = False,
                   progress: bool = True) -> LarqlSource:
    """A local folder as is; an hf:// repo downloaded (only the files an import reads)."""
    uri = str(src)
    if is_hub_uri(uri):
        return fetch_from_hub(uri, revision=revision, gate_vectors=gate_vectors, embeddings=embeddings,
                              progress=progress)
    folder = Path(src)
    if not folder.exists() and _BARE_REPO.match(uri):
        # LarQL's bare `org/name`: not a folder here, so the Hub repo of that name (model, then dataset)
        try:
            return fetch_from_hub("hf://" + uri, revision=revision, gate_vectors=gate_vectors,
                                  embeddings=embeddings, progress=progress)
        except NotFound as e:
            raise NotFound(f"{uri}: no such folder, and on the Hub: {e}") from None
    if revision is not None:
        raise InvalidValue(f"revision={revision!r} only applies to hf:// sources, not the folder {uri!r}")
    if not folder.is_dir():
        raise NotFound(f"{folder}: no such folder (a LarQL vindex is a folder holding index.json)")
    ov = sorted(p for p in folder.iterdir() if p.suffix in (".jsonl", ".ndjson") and p.is_file()
                and p.name not in (lf.DOWN_META_JSONL, lf.FEATURE_CLUSTERS) and ov_gate_header(p))
    return LarqlSource(uri, folder, {"uri": str(folder.resolve())}, ov)


def fetch_from_hub(uri: str, *, revision: str | None = None, gate_vectors: bool = False, embeddings: bool = False,
                   progress: bool = True) -> LarqlSource:
    """Download the files an import needs from a Hub repo (never the inference weights).

    Every request is bounded by `vindex.hub.remote.hub_timeout()` (VINDEX_HUB_TIMEOUT); the repo
    lookup is retried like every Hub call (`with_retries`), the file downloads by huggingface_hub
    (HF_HUB_DOWNLOAD_TIMEOUT bounds each read); what still fails is a HubError."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    from vindex.hub.remote import endpoint, failure_message, hub_api, hub_timeout, with_retries

    tried = []
    for loc in HubLocation.candidates(uri, order=LARQL_REPO_TYPES):
        if revision is not None and loc.revision is not None and revision != loc.revision:
            raise InvalidValue(f"{uri}: names revision {loc.revision!r} but revision={revision!r} was also given")
        rev = revision or loc.revision
        try:
            info = with_retries(uri, hub_api().repo_info, loc.repo_id, repo_type=loc.repo_type, revision=rev,
                                timeout=hub_timeout())
            break
        except RepositoryNotFoundError:
            tried.append(f"{loc.repo_type} repo {loc.repo_id!r}")
        except RevisionNotFoundError:
            raise NotFound(f"{uri}: {loc.repo_type} repo {loc.repo_id!r} has no revision {rev!r}") from None
        except HubError:
            raise
        except Exception as e:  # network failures come in many types (httpx, OSError, HfHubHTTPError)
            raise HubError(failure_message(uri, e, 1, 0.0)) from None
    else:
        raise NotFound(f"{uri}: no {' and no '.join(tried)} on the Hub (or it is private: log in)")
    repo_type, repo_id, sub = loc.repo_type, loc.repo_id, loc.path
    prefix = f"{sub}/" if sub else ""
    present = {s.rfilename[len(prefix):] for s in info.siblings or [] if s.rfilename.startswith(prefix)}
    present = {f for f in present if "/" not in f}
    if lf.INDEX not in present:
        raise NotFound(f"{uri}: no {lf.INDEX} in {prefix or 'the repo root'}; is it a LarQL vindex?")
    if gate_vectors and lf.GATE_VECTORS not in present:
        raise NotFound(f"{uri}: gate vectors were asked for, but the repo has no {lf.GATE_VECTORS}")
    wanted = {lf.INDEX, lf.TOKENIZER, lf.DOWN_META_BIN, lf.DOWN_META_JSONL, *LABEL_FILES}
    if embeddings and lf.EMBEDDINGS not in present:
        raise NotFound(f"{uri}: embeddings were asked for, but the repo has no {lf.EMBEDDINGS}")
    if gate_vectors:
        wanted.add(lf.GATE_VECTORS)
    if embeddings:
        wanted.add(lf.EMBEDDINGS)
    chosen = sorted(f for f in present if f in wanted or is_ov_gate_name(f))
    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        root = snapshot_download(repo_id, repo_type=repo_type, revision=info.sha, endpoint=endpoint(),
                                 allow_patterns=[prefix + f for f in chosen], etag_timeout=hub_timeout())
    except Exception as e:  # noqa: BLE001 - timeouts arrive as LocalEntryNotFoundError, httpx or OSError
        raise HubError(f"{uri}: download failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                       f"each request may take {hub_timeout():g} s (VINDEX_HUB_TIMEOUT) and each read "
                       "HF_HUB_DOWNLOAD_TIMEOUT s") from None
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    folder = Path(root) / sub if sub else Path(root)
    ov = [folder / f for f in chosen if is_ov_gate_name(f) and ov_gate_header(folder / f)]
    return LarqlSource(uri, folder, {"uri": uri, "repo_id": repo_id, "repo_type": repo_type,
                                     "revision": info.sha, "subfolder": sub or None, "files": chosen}, ov)
