"""The one hf:// grammar: where a vindex (or a LarQL source) lives on the Hugging Face Hub.

    hf://datasets/<org>/<name>[@<revision>][/<folder>]    a dataset repo (a vindex or a lake)
    hf://models/<org>/<name>[@<revision>][/<folder>]      a model repo
    hf://<org>/<name>... or a bare <org>/<name>           `default_type` decides (dataset for vindexes);
                                                          `candidates` lists each type to try (LarQL:
                                                          a model repo, then a dataset repo)
    https://huggingface.co/datasets/<org>/<name>/...      a Hub web URL

Every hf:// string in vindex (publish, pull, query in place, LarQL import) goes through
`HubLocation.parse`; nothing else splits one. Revisions may be percent-encoded (refs%2Fpr%2F1).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidValue
from ..files import safe_join

HF_PREFIX = "hf://"
REPO_TYPES = ("dataset", "model")
_KINDS = ("datasets/", "models/", "spaces/", "buckets/", "kernels/")
REMOTE_ROOT = "/__hub__"          # lexical root for path checks of a remote manifest


def is_hub_uri(text) -> bool:
    """True for an hf:// location (the only spelling that is never a local path)."""
    return str(text).startswith(HF_PREFIX)


@dataclass(frozen=True)
class HubLocation:
    """A repo on the Hub, optionally a revision and a folder inside it (a vindex in a lake repo)."""
    repo_id: str
    repo_type: str = "dataset"
    revision: str | None = None
    path: str = ""

    @classmethod
    def parse(cls, text: str, default_type: str = "dataset") -> "HubLocation":
        """`hf://[datasets/|models/]org/name[@rev][/folder]`, a Hub web URL, or a bare `org/name`
        (a `default_type` repo: dataset for vindexes)."""
        from huggingface_hub.utils import parse_hf_uri

        text = str(text).strip()
        if not text.startswith((HF_PREFIX, "http://", "https://")):
            text = HF_PREFIX + text
        body = text[len(HF_PREFIX):] if text.startswith(HF_PREFIX) else None
        if body is not None and not body.startswith(_KINDS):
            text = f"{HF_PREFIX}{default_type}s/{body}"
        try:
            u = parse_hf_uri(text)
        except Exception as e:  # HfUriError and friends: make it one of ours, naming the input
            raise InvalidValue(f"{text!r} is not a Hub location ({e}); expected "
                              "hf://datasets/<org>/<name>[@<revision>][/<folder>]") from None
        if u.type not in ("dataset", "model"):
            raise InvalidValue(f"{text}: vindexes live in dataset (or model) repos, not {u.type}s")
        path = (u.path_in_repo or "").strip("/")
        if path:
            safe_join(REMOTE_ROOT, path)  # no '..' or absolute folders
        return cls(u.id, u.type, u.revision, path)

    @classmethod
    def candidates(cls, text: str, order: tuple[str, ...] = REPO_TYPES) -> list["HubLocation"]:
        """Where `text` may be, in the order to look: the one repo it names when it names a repo type
        (`hf://models/...`, `hf://datasets/...`, a web URL), else one location per type of `order`
        (LarQL sources: `("model", "dataset")`, a model repo first, as LarQL itself looks)."""
        return list(dict.fromkeys(cls.parse(text, default_type=t) for t in order))

    @property
    def url_prefix(self) -> str:
        return "datasets/" if self.repo_type == "dataset" else ""

    def uri(self, revision: str | None = None, path: str | None = None) -> str:
        rev = revision or self.revision
        p = self.path if path is None else path
        return f"{HF_PREFIX}{self.repo_type}s/{self.repo_id}{'@' + rev if rev else ''}{'/' + p if p else ''}"

    def with_path(self, path: str) -> "HubLocation":
        return HubLocation(self.repo_id, self.repo_type, self.revision, path.strip("/"))

