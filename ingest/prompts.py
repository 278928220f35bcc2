"""Prompt sets: the shipped ones (`default`, `heldout`) and the user's own files.

    ps = load_prompts("default")          # 256 prompts: 64 factual, coding, reasoning, translation
    ps = load_prompts("my_prompts.csv")   # JSONL, CSV, Parquet or a text file (one prompt a line)
    ps = load_prompts(["2 + 2 =", "The capital of France is"], name="mine")   # or in memory: a list of
    # strings or dicts, a polars / pandas DataFrame, a datasets.Dataset
    ps.name, ps.sha256, len(ps), ps.prompts[0].text

A prompt set is identified by a content hash (`sha256` over its canonical JSON lines of
prompt_id, category and text), so the same prompts give the same hash whatever file format
they came in, and two vindexes can be checked to have seen the same prompts.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vindex.errors import InvalidValue, NotFound
from vindex.files import parse_json

SHIPPED = ("default", "heldout")
_TEXT_COLUMNS = ("text", "prompt")
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Prompt:
    prompt_id: int
    category: str | None
    text: str


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: tuple[Prompt, ...]
    source: str  # "shipped:default" or the file path

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for p in self.prompts:
            h.update(json.dumps([p.prompt_id, p.category, p.text], ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.prompts)

    def categories(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.prompts:
            out[p.category or "null"] = out.get(p.category or "null", 0) + 1
        return out

    def rows(self) -> dict:
        """Columns for the `prompts` table."""
        return {"prompt_set": [self.name] * len(self), "prompt_id": [p.prompt_id for p in self.prompts],
                "category": [p.category for p in self.prompts], "text": [p.text for p in self.prompts]}


def load_prompts(spec, name: str | None = None) -> PromptSet:
    """A shipped set by name, a JSONL / CSV / Parquet / text file of prompts, or prompts in memory.

    Files and tables: a `text` (or `prompt`) column, optional `category` and `prompt_id` (unique
    non-negative integers; row order otherwise). A .txt file holds one prompt per line.
    In memory: a list of strings, a list of dicts (the same keys), a polars or pandas DataFrame or
    a `datasets.Dataset` (the same columns).
    `name` overrides the set's name (default: the shipped name, the file's stem, or "prompts").
    """
    if isinstance(spec, PromptSet):
        return spec if name is None else PromptSet(_check_name(name), spec.prompts, spec.source)
    rows = _memory_rows(spec)
    if rows is not None:
        kind, rows = rows
        return _build(rows, name or "prompts", f"in memory ({kind})")
    if not isinstance(spec, (str, Path)):
        raise InvalidValue(f"prompts of type {type(spec).__name__}: give a shipped set name ({', '.join(SHIPPED)}), "
                           "a file (JSONL, CSV, Parquet, .txt), a list of strings or dicts, a polars/pandas "
                           "DataFrame or a datasets.Dataset")
    text = str(spec)
    if text in SHIPPED:
        ref = resources.files("vindex.ingest").joinpath("prompt_sets", f"{text}.jsonl")
        rows = _jsonl_rows(ref.read_text(encoding="utf-8"), f"shipped prompt set {text!r}")
        return _build(rows, name or text, f"shipped:{text}")
    path = Path(text).expanduser()
    if not path.is_file():
        raise NotFound(f"prompt file {text!r} not found (give a JSONL, CSV, Parquet or .txt file, "
                       f"or a shipped set: {', '.join(SHIPPED)})")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = _jsonl_rows(_read_text(path), str(path))
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        rows = _parquet_rows(path)
    elif suffix in (".txt", ".text", ""):
        rows = [{"text": line} for line in _read_text(path).splitlines() if line.strip()]
    else:
        raise InvalidValue(f"{path}: unknown prompt file type {suffix!r}; use .jsonl, .csv, .tsv, .parquet or .txt")
    return _build(rows, name or _NAME.sub("-", path.stem).strip("-.") or "prompts", str(path))


def _memory_rows(spec) -> tuple[str, list[dict]] | None:
    """(kind, rows) of prompts given in memory, or None when `spec` is not such an object."""
    if isinstance(spec, (list, tuple)):
        bad = next((i for i, r in enumerate(spec) if not isinstance(r, (str, dict))), None)
        if bad is not None:
            raise InvalidValue(f"prompts: item {bad} is a {type(spec[bad]).__name__}; a list of prompts holds "
                               "strings, or dicts with a 'text' (or 'prompt') key")
        return "list", [r if isinstance(r, dict) else {"text": r} for r in spec]
    module = type(spec).__module__.split(".")[0]
    if module in ("polars", "pandas") and hasattr(spec, "columns"):
        columns = [str(c) for c in spec.columns]
        rows = spec.to_dicts() if module == "polars" else spec.to_dict(orient="records")
        kind = f"{module} DataFrame"
    elif module == "datasets" and hasattr(spec, "column_names"):
        columns, rows, kind = list(spec.column_names), spec.to_list(), "datasets.Dataset"
    else:
        return None
    if not any(c in columns for c in _TEXT_COLUMNS):
        raise InvalidValue(f"prompts ({kind}): no 'text' (or 'prompt') column; its columns are {columns}")
    return kind, rows


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise InvalidValue(f"prompt set name {name!r} must be made of [A-Za-z0-9_.-]")
    return name


def _read_text(path: Path) -> str:
    """A prompt file's text; InvalidValue naming the line and byte offset where it is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InvalidValue(f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} "
                           f"(line {line}) ({e.reason}); save the file as UTF-8") from None


def _jsonl_rows(text: str, where: str) -> list[dict]:
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = parse_json(line, f"{where}: line {i}", InvalidValue)
        rows.append(row if isinstance(row, dict) else {"text": row})
    return rows


def _csv_rows(path: Path, delimiter: str) -> list[dict]:
    import csv
    try:
        return list(csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter))
    except csv.Error as e:
        raise InvalidValue(f"{path}: not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file ({e})") from None


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:   # not Parquet, truncated, or strings that are not UTF-8
        raise InvalidValue(f"{path}: not a readable Parquet file of prompts ({e})") from None


def _build(rows: list[dict], name: str, source: str) -> PromptSet:
    name = _check_name(name)
    if not rows:
        raise InvalidValue(f"{source}: the prompt set is empty")
    col = next((c for c in _TEXT_COLUMNS if c in rows[0]), None)
    if col is None:
        raise InvalidValue(f"{source}: no 'text' (or 'prompt') column; found {sorted(rows[0])}")
    prompts, seen = [], set()
    for i, r in enumerate(rows):
        text = r.get(col)
        if not isinstance(text, str) or not text.strip():
            raise InvalidValue(f"{source}: row {i} has an empty or non-string {col!r}")
        pid = r.get("prompt_id", i)
        try:
            pid = int(pid)
        except (TypeError, ValueError):
            raise InvalidValue(f"{source}: row {i}: prompt_id {pid!r} is not an integer") from None
        if pid < 0 or pid >= 2**31 or pid in seen:
            raise InvalidValue(f"{source}: row {i}: prompt_id {pid} is negative, too large or repeated")
        seen.add(pid)
        cat = r.get("category")
        cat = None if isinstance(cat, float) and cat != cat else cat    # a pandas NaN: no category
        prompts.append(Prompt(pid, str(cat) if cat not in (None, "") else None, text))
    return PromptSet(name, tuple(prompts), source)
