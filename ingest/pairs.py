"""Clean/corrupt prompt pairs: what activation patching runs on, and the shipped `factual` set.

    ps = load_pairs("factual")            # 78 pairs in 5 categories (capital, language, element, opposite, number)
    ps = load_pairs("my_pairs.jsonl")     # JSONL or CSV: clean, corrupt, answer, wrong [, category, pair_id]
    enc = encode_pairs(tokenizer, ps, positions="all")   # token ids, answer/wrong ids, aligned positions

A pair is a clean prompt and a corrupted one that differ in the subject ("The capital city of
France is" / "... Italy is"), the clean answer token (" Paris") and the wrong one (" Rome", the
corrupted prompt's answer). Answers are single tokens with the leading-space convention of
byte-level BPE tokenizers: `encode_pairs` names every answer that is not a single token for the
tokenizer at hand, and every pair whose prompts tokenize to different lengths where the positions
must align (positions 'all' or non-negative indices), offering positions='last'.

A pair set is identified by a content hash of its canonical JSON lines, like a prompt set.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from vindex.errors import InvalidValue, NotFound

SHIPPED_PAIRS = {"factual": "factual_pairs.jsonl"}
_FIELDS = ("clean", "corrupt", "answer", "wrong")


@dataclass(frozen=True)
class Pair:
    pair_id: int
    category: str | None
    clean: str
    corrupt: str
    answer: str       # the clean prompt's next token, e.g. " Paris"
    wrong: str        # the corrupted prompt's, e.g. " Rome"


@dataclass(frozen=True)
class PairSet:
    name: str
    pairs: tuple[Pair, ...]
    source: str

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for p in self.pairs:
            h.update(json.dumps([p.pair_id, p.category, p.clean, p.corrupt, p.answer, p.wrong],
                                ensure_ascii=False).encode() + b"\n")
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.pairs)


def load_pairs(spec: str | Path | PairSet = "factual", name: str | None = None) -> PairSet:
    """The shipped `factual` set, or a JSONL / CSV file with columns clean, corrupt, answer, wrong
    (optional category, pair_id: unique non-negative integers, row order otherwise)."""
    if isinstance(spec, PairSet):
        return spec
    text = str(spec)
    if text in SHIPPED_PAIRS:
        body = resources.files("vindex.ingest").joinpath("prompt_sets", SHIPPED_PAIRS[text]).read_text("utf-8")
        return _build(_jsonl(body, f"shipped pair set {text!r}"), name or text, f"shipped:{text}")
    path = Path(text).expanduser()
    if not path.is_file():
        raise NotFound(f"pairs file {text!r} not found (give a JSONL or CSV file with columns "
                       f"{', '.join(_FIELDS)}, or a shipped set: {', '.join(SHIPPED_PAIRS)})")
    body = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        import csv
        import io
        rows = list(csv.DictReader(io.StringIO(body, newline="")))
    else:
        rows = _jsonl(body, str(path))
    stem = "".join(c if c.isalnum() or c in "_.-" else "-" for c in path.stem).strip("-.") or "pairs"
    return _build(rows, name or stem, str(path))


def _jsonl(body: str, where: str) -> list[dict]:
    from vindex.files import parse_json
    rows = []
    for i, line in enumerate(body.splitlines(), 1):
        if line.strip():
            row = parse_json(line, f"{where}: line {i}", InvalidValue)
            if not isinstance(row, dict):
                raise InvalidValue(f"{where}: line {i} is not a JSON object with {', '.join(_FIELDS)}")
            rows.append(row)
    return rows


def _build(rows: list[dict], name: str, source: str) -> PairSet:
    if not rows:
        raise InvalidValue(f"{source}: the pair set is empty")
    pairs, seen = [], set()
    for i, r in enumerate(rows):
        missing = [f for f in _FIELDS if not isinstance(r.get(f), str) or not r.get(f)]
        if missing:
            raise InvalidValue(f"{source}: row {i} lacks (or has empty) {', '.join(missing)}; a pair needs "
                               f"{', '.join(_FIELDS)}")
        try:
            pid = int(r.get("pair_id", i))
        except (TypeError, ValueError):
            raise InvalidValue(f"{source}: row {i}: pair_id {r.get('pair_id')!r} is not an integer") from None
        if pid < 0 or pid >= 2**31 or pid in seen:
            raise InvalidValue(f"{source}: row {i}: pair_id {pid} is negative, too large or repeated")
        seen.add(pid)
        if r["answer"] == r["wrong"]:
            raise InvalidValue(f"{source}: pair {pid}: answer and wrong are the same token {r['answer']!r}")
        cat = r.get("category")
        pairs.append(Pair(pid, str(cat) if cat not in (None, "") else None, r["clean"], r["corrupt"],
                          r["answer"], r["wrong"]))
    return PairSet(name, tuple(pairs), source)


# -- tokenizing -------------------------------------------------------------------------------------

def single_token(tokenizer, text: str) -> int | None:
    """The id of `text` when it is exactly one token for `tokenizer` (no specials added), else None."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 else None


def answer_problems(tokenizer, ps: PairSet) -> list[str]:
    """'pair 3: answer ' Bangkok' is 2 tokens' for every answer or wrong token that is not one token."""
    out = []
    for p in ps.pairs:
        for field in ("answer", "wrong"):
            text = getattr(p, field)
            if single_token(tokenizer, text) is None:
                n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                out.append(f"pair {p.pair_id}: {field} {text!r} is {n} tokens")
    return out


@dataclass(frozen=True)
class EncodedPair:
    pair: Pair
    clean_ids: np.ndarray     # int64, with the tokenizer's specials (BOS)
    corrupt_ids: np.ndarray
    answer_id: int
    wrong_id: int
    positions: tuple[tuple[int, int], ...]   # (clean position, corrupt position) pairs to patch


def parse_positions(positions) -> str | tuple:
    """'all', 'last', or a list of indices and names ("0,3,-1", "subject,last"): negative indices count
    from the end (-1 = last = the last position); `subject` is the last position where the two prompts'
    tokens differ (the last subject token of a subject-swap pair, as in Meng et al. 2022)."""
    if isinstance(positions, str):
        text = positions.strip()
        if text in ("all", "last"):
            return text
        positions = [x.strip() for x in text.split(",") if x.strip()]
    out = []
    for x in positions:
        if x in ("subject", "last"):
            out.append("subject" if x == "subject" else -1)
            continue
        try:
            out.append(int(x))
        except (TypeError, ValueError):
            raise InvalidValue(f"positions {positions!r}: give all, last, or indices and names like 0,3,-1 "
                               "or subject,last") from None
    if not out:
        raise InvalidValue("positions: none given; give all, last, or indices like 0,3,-1")
    return tuple(out)


def subject_position(p: Pair, c: np.ndarray, k: np.ndarray) -> int:
    """The last position where the clean and corrupted token ids differ (equal lengths)."""
    diff = np.flatnonzero(c != k)
    if not len(diff):
        raise InvalidValue(f"pair {p.pair_id}: the clean and corrupted prompts tokenize alike, so there is no "
                           "subject position")
    return int(diff[-1])


def encode_pairs(tokenizer, ps: PairSet, positions="all") -> list[EncodedPair]:
    """Tokenize every pair and decide the positions each patches (clean position -> corrupt position).

    positions: 'all' (every position; both prompts must have the same length), 'last' (the last
      position of each, whatever the lengths), or indices and names (non-negative ones and `subject`,
      the last position where the prompts differ, need equal lengths; negative ones count from each
      prompt's end); a position named twice is patched once.
    Raises InvalidValue naming every answer that is not a single token, and every pair whose prompts
    differ in length where the positions must align.
    """
    pos = parse_positions(positions)
    bad = answer_problems(tokenizer, ps)
    if bad:
        raise InvalidValue(f"{ps.source}: answers must be single tokens for this tokenizer "
                           f"({type(tokenizer).__name__}); not so: {'; '.join(bad)}")
    out, misaligned = [], []
    for p in ps.pairs:
        c = np.asarray(tokenizer(p.clean)["input_ids"], dtype=np.int64)
        k = np.asarray(tokenizer(p.corrupt)["input_ids"], dtype=np.int64)
        same = len(c) == len(k)
        if pos == "last":
            where = ((len(c) - 1, len(k) - 1),)
        elif pos == "all":
            where = tuple((i, i) for i in range(len(c)))
        else:
            subject = subject_position(p, c, k) if same and "subject" in pos else None
            where = tuple(dict.fromkeys((subject, subject) if i == "subject" else
                                        (i if i >= 0 else len(c) + i, i if i >= 0 else len(k) + i)
                                        for i in pos if i != "subject" or same))
            if any(not (0 <= a < len(c) and 0 <= b < len(k)) for a, b in where):
                raise InvalidValue(f"pair {p.pair_id}: positions {list(pos)} fall outside its prompts "
                                   f"({len(c)} and {len(k)} tokens)")
        if not same and (pos == "all" or any(i == "subject" or i >= 0
                                             for i in (pos if pos not in ("all", "last") else ()))):
            misaligned.append(f"pair {p.pair_id} ({len(c)} clean vs {len(k)} corrupt tokens)")
        out.append(EncodedPair(p, c, k, single_token(tokenizer, p.answer), single_token(tokenizer, p.wrong), where))
    if misaligned:
        raise InvalidValue(f"{ps.source}: clean and corrupt prompts tokenize to different lengths, so positions "
                           f"{positions!r} do not align: {'; '.join(misaligned)}. Use positions='last' "
                           "(--positions last) to patch the last position of each, or negative indices")
    return out


# -- prompts with answers (ablation, steering) ------------------------------------------------------

@dataclass(frozen=True)
class AnsweredPrompt:
    prompt_id: int
    category: str | None
    text: str
    answer: str | None     # the expected next token (None for a plain prompt set)


def load_answered_prompts(spec="factual") -> tuple[str, str, list[AnsweredPrompt]]:
    """(name, sha256, prompts) from a pair set (its clean prompts and answers, once per distinct prompt),
    a file with `text` and `answer` columns, or any prompt set `load_prompts` takes (no answers)."""
    from .prompts import load_prompts
    text = str(spec)
    is_pairs = text in SHIPPED_PAIRS
    if not is_pairs and Path(text).expanduser().is_file() and Path(text).suffix.lower() in (".jsonl", ".json", ".csv"):
        body = Path(text).expanduser().read_text(encoding="utf-8", errors="replace")
        head = body.splitlines()[0] if body.strip() else ""
        is_pairs = '"clean"' in head or head.split(",")[:1] == ["clean"] or ",clean," in f",{head},"
    if is_pairs:
        ps = load_pairs(spec)
        seen, out = set(), []
        for p in ps.pairs:
            if p.clean not in seen:
                seen.add(p.clean)
                out.append(AnsweredPrompt(p.pair_id, p.category, p.clean, p.answer))
        return ps.name, ps.sha256, out
    ps = load_prompts(spec)
    answers = {}
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
        rows = _jsonl(path.read_text(encoding="utf-8"), str(path))
        answers = {i: r.get("answer") for i, r in enumerate(rows)}
    return ps.name, ps.sha256, [AnsweredPrompt(p.prompt_id, p.category, p.text, answers.get(i) or None)
                                for i, p in enumerate(ps.prompts)]


def token_list(tokenizer, tokens, what: str) -> list[int]:
    """Token strings (a list, or one string split at commas: " Paris, Rome" -> [" Paris", " Rome"]) -> ids;
    InvalidValue naming every one that is not a single token."""
    if isinstance(tokens, str):
        tokens = [t for t in tokens.split(",") if t]
    tokens = list(tokens or ())
    bad = [f"{t!r} ({len(tokenizer(t, add_special_tokens=False)['input_ids'])} tokens)" for t in tokens
           if single_token(tokenizer, t) is None]
    if bad:
        raise InvalidValue(f"{what}: not single tokens for this tokenizer: {', '.join(bad)} (mind the leading "
                           "space: ' Paris' is the word after a space)")
    return [single_token(tokenizer, t) for t in tokens]
