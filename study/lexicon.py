"""Human category labels: a small lexicon of words grouped by category (countries, months, ...).

Concept clustering needs labels a person would agree with, independent of any model. The shipped
lexicon is in study/lexicon/<category>.txt (one word a line, `#` comments); every entry is one
word, because a feature's top token is one token. A user lexicon is either a folder of such .txt
files or one JSON object {"category": ["word", ...], ...}.

A word belongs to at most one category: an ambiguous word (turkey, orange, python) would make the
label depend on the order categories are read, so `load_lexicon` refuses lexicons that repeat one.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from vindex.errors import InvalidValue, NotFound
from vindex.files import read_json


def normalize_word(word: str) -> str:
    """The form words are compared in: NFKC, case-folded, surrounding whitespace removed."""
    return unicodedata.normalize("NFKC", word).casefold().strip()


@dataclass(frozen=True)
class Lexicon:
    """Categories of words, and the reverse index word -> category (words normalised)."""

    categories: dict[str, tuple[str, ...]]
    index: dict[str, str] = field(repr=False)
    source: str = "shipped"

    @classmethod
    def from_dict(cls, categories: dict[str, list[str]], source: str = "dict") -> "Lexicon":
        index: dict[str, str] = {}
        cats: dict[str, tuple[str, ...]] = {}
        for cat, words in categories.items():
            if not isinstance(cat, str) or not cat.strip():
                raise InvalidValue(f"{source}: category names must be non-empty strings, got {cat!r}")
            if isinstance(words, str) or not all(isinstance(w, str) for w in words):
                raise InvalidValue(f"{source}: category {cat!r} must be a list of words")
            norm = []
            for w in words:
                n = normalize_word(w)
                if not n or any(c.isspace() for c in n):
                    raise InvalidValue(f"{source}: category {cat!r}: entry {w!r} is not one word "
                                       "(a feature's top token is a single token)")
                if index.get(n, cat) != cat:
                    raise InvalidValue(f"{source}: {w!r} is in both {index[n]!r} and {cat!r}; "
                                       "a word may belong to one category only")
                if n not in index:
                    index[n] = cat
                    norm.append(n)
            cats[cat] = tuple(norm)
        return cls(cats, index, source)

    def category(self, word: str) -> str | None:
        """The category of an (already normalised) word, or None."""
        return self.index.get(word)

    def __len__(self) -> int:
        return len(self.index)

    def to_dict(self) -> dict[str, list[str]]:
        return {c: list(ws) for c, ws in self.categories.items()}


def _utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidValue(f"{path}: not UTF-8 text at byte offset {e.start} ({e.reason})") from None


def _read_txt(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """The shipped lexicon (path=None), a folder of <category>.txt files, or a JSON file."""
    if path is None:
        folder = resources.files("vindex.study").joinpath("lexicon")
        cats = {p.name[:-4]: _read_txt(p.read_text(encoding="utf-8"))
                for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".txt")}
        return Lexicon.from_dict(cats, source="vindex.study lexicon")
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.txt"))
        if not files:
            raise NotFound(f"{p}: a lexicon folder needs <category>.txt files (one word a line)")
        return Lexicon.from_dict({f.stem: _read_txt(_utf8(f)) for f in files}, str(p))
    if not p.is_file():
        raise NotFound(f"{p}: no such lexicon (give a folder of .txt files or a .json file)")
    data = read_json(p, InvalidValue)   # not UTF-8, not JSON, nested too deep: InvalidValue naming the file
    if not isinstance(data, dict):
        raise InvalidValue(f"{p}: a JSON lexicon is an object {{category: [words]}}")
    return Lexicon.from_dict(data, str(p))
