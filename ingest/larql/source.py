"""Where a LarQL vindex comes from: a local folder, or a Hub repo downloaded in part.

A LarQL repo on the Hub can hold tens of GB of inference weights next to the few files an import
reads, so `fetch_from_hub` lists the repo first and downloads only those files (plus
gate_vectors.bin on request) into the Hugging Face cache, pinned to the commit it listed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from vindex.errors import InvalidValue, NotFound, VindexError

from . import format as lf
from .ov_gate import ov_gate_header

_OV_NAME = re.compile(r"(ov[_-]?gate.*\.(jsonl|ndjson)|\.ndjson)$", re.IGNORECASE)
LABEL_FILES = (lf.FEATURE_LABELS, lf.RELATION_CLUSTERS, lf.FEATURE_CLUSTERS)

@dataclass
class LarqlSource:
    """A LarQL vindex on local disk, and where it came from."""
    uri: str
    folder: Path
    provenance: dict = field(default_factory=dict)
    ov_files: list[Path] = field(default_factory=list)


def is_ov_gate_name(filename: str) -> bool:
    return bool(_OV_NAME.search(filename))


def resolve_source(src, *, revision: str | None = None, gate_vectors: bool = False,
                   progress: bool = True) -> LarqlSource:
    """A local folder as is; an hf:// repo downloaded (only the files an import reads)."""
    uri = str(src)
    if uri.startswith("hf://"):
        return fetch_from_hub(uri, revision=revision, gate_vectors=gate_vectors, progress=progress)
    if revision is not None:
        raise InvalidValue(f"revision={revision!r} only applies to hf:// sources, not the folder {uri!r}")
    folder = Path(src)
    if not folder.is_dir():
        raise NotFound(f"{folder}: no such folder (a LarQL vindex is a folder holding index.json)")
    ov = sorted(p for p in folder.iterdir() if p.suffix in (".jsonl", ".ndjson") and p.is_file()
                and p.name not in (lf.DOWN_META_JSONL, lf.FEATURE_CLUSTERS) and ov_gate_header(p))
    return LarqlSource(uri, folder, {"uri": str(folder.resolve())}, ov)


def parse_hf_uri(uri: str) -> tuple[str, str, str | None, str]:
    """hf://[datasets/|models/]org/name[@rev][/subfolder] -> (repo_type, repo_id, revision, subfolder)."""
    parts = uri[len("hf://"):].strip("/").split("/")
    repo_type = "model"
    if parts and parts[0] in ("datasets", "models", "spaces"):
        kind = parts.pop(0)
        if kind == "spaces":
            raise InvalidValue(f"{uri}: a Space is not a LarQL vindex; use a model or dataset repo")
        repo_type = "dataset" if kind == "datasets" else "model"
    if len(parts) < 2 or not all(parts[:2]):
        raise InvalidValue(f"{uri}: expected hf://[datasets/]org/name[@revision]")
    name, rev = parts[1], None
    if "@" in name:
        name, rev = name.split("@", 1)
        rev = unquote(rev)  # refs%2Fpr%2F1, as HfFileSystem writes it
    return repo_type, f"{parts[0]}/{name}", rev, "/".join(parts[2:])


def fetch_from_hub(uri: str, *, revision: str | None = None, gate_vectors: bool = False,
                   progress: bool = True) -> LarqlSource:
    """Download the files an import needs from a Hub repo (never the inference weights)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    repo_type, repo_id, rev, sub = parse_hf_uri(uri)
    if revision is not None and rev is not None and revision != rev:
        raise InvalidValue(f"{uri}: names revision {rev!r} but revision={revision!r} was also given")
    rev = revision or rev
    try:
        info = HfApi().repo_info(repo_id, repo_type=repo_type, revision=rev)
    except RepositoryNotFoundError:
        raise NotFound(f"{uri}: no {repo_type} repo {repo_id!r} on the Hub (or it is private: log in)") from None
    except RevisionNotFoundError:
        raise NotFound(f"{uri}: {repo_id!r} has no revision {rev!r}") from None
    except Exception as e:  # network failures come in many types (httpx, OSError, HfHubHTTPError)
        raise VindexError(f"{uri}: cannot reach the Hub ({type(e).__name__}: {e})") from None
    prefix = f"{sub}/" if sub else ""
    present = {s.rfilename[len(prefix):] for s in info.siblings or [] if s.rfilename.startswith(prefix)}
    present = {f for f in present if "/" not in f}
    if lf.INDEX not in present:
        raise NotFound(f"{uri}: no {lf.INDEX} in {prefix or 'the repo root'}; is it a LarQL vindex?")
    if gate_vectors and lf.GATE_VECTORS not in present:
        raise NotFound(f"{uri}: gate vectors were asked for, but the repo has no {lf.GATE_VECTORS}")
    wanted = {lf.INDEX, lf.TOKENIZER, lf.DOWN_META_BIN, lf.DOWN_META_JSONL, *LABEL_FILES}
    if gate_vectors:
        wanted.add(lf.GATE_VECTORS)
    chosen = sorted(f for f in present if f in wanted or is_ov_gate_name(f))
    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        root = snapshot_download(repo_id, repo_type=repo_type, revision=info.sha,
                                 allow_patterns=[prefix + f for f in chosen])
    except Exception as e:
        raise VindexError(f"{uri}: download failed ({type(e).__name__}: {e})") from None
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    folder = Path(root) / sub if sub else Path(root)
    ov = [folder / f for f in chosen if is_ov_gate_name(f) and ov_gate_header(folder / f)]
    return LarqlSource(uri, folder, {"uri": uri, "repo_id": repo_id, "repo_type": repo_type,
                                     "revision": info.sha, "subfolder": sub or None, "files": chosen}, ov)
