"""The fault suite's harness: every case ends in one of four outcomes, and a scoreboard counts them.

    handled         the exact original numbers, or a named error: a VindexError subclass (from
                    vindex/errors.py), or from the CLI one clean `error: ...` line and exit status 1
    silent-wrong    a number that differs from the original, and no error
    data-lost       a committed write that disappeared, or a resume that does not reach the
                    content of an uninterrupted run
    bare-traceback  an exception that is not a VindexError (or a CLI traceback)

A case is one fault (one kill point, one corrupted file, one hostile answer, ...) and the probes run
against it; its outcome is the worst of its probes' (data-lost > silent-wrong > bare-traceback >
handled). Each case is one pytest test that takes the `verdict` fixture (tests/faults/conftest.py),
probes through it and ends with `verdict.done()`, which records the case and fails the test unless
it was handled. conftest.py prints the scoreboard at the end of the session and fails the session
when any of the last three counts is not 0.

Randomness: every random choice comes from `rng(...)`, a `random.Random` seeded with the suite's seed
(VINDEX_FAULT_SEED, default 14, printed with the scoreboard) and the case's own key, so one case
reproduces alone: `VINDEX_FAULT_SEED=<seed> python -m pytest -p no:cacheprovider '<node id>'`. How
many cases a randomised group draws comes from VINDEX_FAULTS_<GROUP> (the CI defaults are in the
test modules; tests/faults/soak.py raises them).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HANDLED, SILENT_WRONG, DATA_LOST, BARE = "handled", "silent-wrong", "data-lost", "bare-traceback"
OUTCOMES = (HANDLED, SILENT_WRONG, DATA_LOST, BARE)
BAD = (SILENT_WRONG, DATA_LOST, BARE)
_SEVERITY = {HANDLED: 0, BARE: 1, SILENT_WRONG: 2, DATA_LOST: 3}

SEED_ENV = "VINDEX_FAULT_SEED"
DEFAULT_SEED = 14
REPORT_ENV = "VINDEX_FAULT_REPORT"      # a path: the scoreboard is also written there as JSON
VERBOSE_ENV = "VINDEX_FAULT_VERBOSE"    # 1: the scoreboard lists every case with its fault and probes


def seed() -> int:
    return int(os.environ.get(SEED_ENV, DEFAULT_SEED))


def rng(*key) -> random.Random:
    """A generator for one case: the suite's seed and the case's key (a str seed is hashed with
    sha512 by `random`, so it is the same on every run and machine)."""
    return random.Random("/".join(map(str, (seed(), *key))))


# how many random cases each randomised group draws in CI (VINDEX_FAULTS_<NAME> overrides; soak.py
# scales them all)
COUNTS = {
    "corrupt_flips": 4,      # random single-bit flips per table (6 tables)
    "corrupt_each": 1,       # cases of every other kind of shard damage, per table
    "corrupt_json": 30,      # random bit flips of vindex.json
    "kill_build": 4, "kill_weights": 3, "kill_publish": 4, "kill_pull": 4,
    "races": 4,              # writer processes racing on one vindex
    "disk_build": 3, "disk_weights": 2, "disk_pull": 2,
}


def count(name: str) -> int:
    """How many random cases `name` draws: VINDEX_FAULTS_<NAME>, else its CI count (COUNTS)."""
    return int(os.environ.get(f"VINDEX_FAULTS_{name.upper()}", COUNTS[name]))


# -- what counts as a named error ------------------------------------------------------------------

def _error_names() -> set[str]:
    from vindex import errors
    return {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, errors.VindexError)}


def _sql_function_names() -> set[str]:
    """The SQL functions docs/sql.md documents (its "### name" headings after "## Table functions")."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "sql.md").read_text()
    return set(re.findall(r"^### (\w+)\s*$", text[text.index("## Table functions"):], re.M))


def named_error(e: BaseException) -> bool:
    """A VindexError; or, from SQL, a DuckDB error that is vindex's own: one that carries a
    VindexError (DuckDB wraps a Python function's exception as `...: ChecksumError: <message>`), or
    one that a documented vindex SQL function raised with its name first (`Invalid Input Error:
    cka_depth: band must be ...`: SQL macros can only raise DuckDB's errors; `vindex sql` prints it
    as one `error:` line)."""
    from vindex.errors import VindexError
    if isinstance(e, VindexError):
        return True
    try:
        import duckdb
    except ImportError:      # pragma: no cover - duckdb is a dependency
        return False
    if not isinstance(e, duckdb.Error):
        return False
    text = str(e)
    if any(f"{n}: " in text for n in _error_names()):
        return True
    m = re.match(r"^[A-Za-z ]*Error: (\w+): ", text)
    return bool(m) and m.group(1) in _sql_function_names()


def describe(e: BaseException, frames: int = 3) -> str:
    """`Type: message` plus where it was raised (the last frames), for a bare exception's report."""
    where = traceback.extract_tb(e.__traceback__)[-frames:]
    at = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(where))
    return f"{type(e).__module__}.{type(e).__name__}: {_short(str(e))}" + (f" (at {at})" if at else "")


def _short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


# -- comparing results exactly ---------------------------------------------------------------------

def canonical(value):
    """A comparable form of a result: an Arrow table or a DuckDB relation's rows, as a sorted list of
    rows (lists as tuples, floats exact; NaN compares equal to NaN by its repr); other values as they are."""
    if hasattr(value, "to_pylist") and hasattr(value, "schema"):          # pyarrow.Table
        rows = [tuple(_freeze(r[c]) for c in value.column_names) for r in value.to_pylist()]
        return (tuple(value.column_names), tuple(sorted(rows, key=repr)))
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return tuple(sorted((tuple(_freeze(x) for x in r) for r in value), key=repr))
    return _freeze(value)


def _freeze(x):
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    if isinstance(x, float) and x != x:
        return "nan"
    if hasattr(x, "tolist"):                                                # numpy values and arrays
        return _freeze(x.tolist())
    return x


def first_difference(got, expected) -> str:
    """Where two canonical results first differ (for the report)."""
    if isinstance(got, tuple) and isinstance(expected, tuple) and len(got) == 2 and len(expected) == 2 \
            and isinstance(got[0], tuple) and got[0] == expected[0]:
        got, expected = got[1], expected[1]
    if isinstance(got, tuple) and isinstance(expected, tuple):
        if len(got) != len(expected):
            return f"{len(got)} rows where the original had {len(expected)}"
        for i, (g, x) in enumerate(zip(got, expected)):
            if g != x:
                return f"row {i}: {_short(repr(g), 200)} where the original had {_short(repr(x), 200)}"
    return f"{_short(repr(got), 200)} where the original had {_short(repr(expected), 200)}"


def digest(root: Path, tables=None) -> dict:
    """(table, path) -> (rows, sha256) of every shard a vindex's manifest lists: its content."""
    m = json.loads((Path(root) / "vindex.json").read_text())
    return {(t, e["path"]): (e["rows"], e["sha256"]) for t, v in m["tables"].items()
            if tables is None or t in tables for e in v.get("files", [])}


def file_digest(root: Path, pattern: str = "*") -> dict:
    """relative path -> sha256 of every regular file under `root` matching `pattern` (hidden and
    staging files left out)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob(pattern)) if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def dict_difference(got: dict, expected: dict) -> str:
    missing = sorted(set(expected) - set(got), key=str)
    extra = sorted(set(got) - set(expected), key=str)
    changed = sorted((k for k in set(got) & set(expected) if got[k] != expected[k]), key=str)
    parts = [f"{what} {len(ks)}: {', '.join(map(str, ks[:3]))}{' ...' if len(ks) > 3 else ''}"
             for what, ks in (("missing", missing), ("extra", extra), ("changed", changed)) if ks]
    return "; ".join(parts) or "equal"


# -- one case ----------------------------------------------------------------------------------------

@dataclass
class Case:
    group: str
    nodeid: str
    outcome: str
    notes: list[str]
    fault: str = ""

    def reproduce(self) -> str:
        return f"{SEED_ENV}={seed()} python -m pytest -q -p no:cacheprovider '{self.nodeid}'"


class Verdict:
    """The outcome of one case, built from its probes (the worst one wins)."""

    def __init__(self, group: str, nodeid: str):
        self.group, self.nodeid = group, nodeid
        self.outcome = HANDLED
        self.notes: list[str] = []
        self.fault = ""
        self.recorded = False

    def note(self, outcome: str, text: str) -> str:
        assert outcome in OUTCOMES, outcome
        if _SEVERITY[outcome] > _SEVERITY[self.outcome]:
            self.outcome = outcome
        self.notes.append(f"[{outcome}] {text}")
        return outcome

    def injected(self, text: str) -> None:
        """What the fault was (printed with a case that was not handled)."""
        self.fault = f"{self.fault}; {text}" if self.fault else text

    # probes
    def error(self, label: str, e: BaseException) -> str:
        """An exception a probe raised: handled when named, else a bare traceback."""
        if named_error(e):
            return self.note(HANDLED, f"{label}: {type(e).__name__}: {_short(str(e), 160)}")
        return self.note(BARE, f"{label}: {describe(e)}")

    def probe(self, label: str, fn, expected=None, *, compare=None) -> str:
        """Run fn(): a named error is handled; a result equal to `expected` (canonical forms, or
        `compare(got)` True) is handled; a different result is silent-wrong; any other exception is a
        bare traceback."""
        try:
            got = fn()
        except Exception as e:  # noqa: BLE001 - classifying every exception is the point
            return self.error(label, e)
        if compare is not None:
            ok, why = compare(got)
            return self.note(HANDLED if ok else SILENT_WRONG, f"{label}: {why}")
        g, x = canonical(got), canonical(expected)
        if g == x:
            return self.note(HANDLED, f"{label}: the original numbers")
        return self.note(SILENT_WRONG, f"{label}: {first_difference(g, x)}")

    def must_fail(self, label: str, fn) -> str:
        """A probe that has no right answer (the input is bad): only a named error is handled; any
        result at all is silent-wrong."""
        try:
            got = fn()
        except Exception as e:  # noqa: BLE001
            return self.error(label, e)
        return self.note(SILENT_WRONG, f"{label}: returned {_short(repr(got), 160)} instead of an error")

    def content(self, label: str, got: dict, expected: dict) -> str:
        """Content after a resume or a commit: equal, or data-lost."""
        if got == expected:
            return self.note(HANDLED, f"{label}: the same content")
        return self.note(DATA_LOST, f"{label}: {dict_difference(got, expected)}")

    def cli(self, label: str, result, *, ok_exit: bool = True) -> bool:
        """A CLI run (click's Result, or a CompletedProcess with text output): exit 0 (when
        `ok_exit`), or exit 1 with one clean `error:` line, is handled; a traceback or any other
        exception is bare. Returns True when it exited 0."""
        code, out, exc = _cli_parts(result)
        if "Traceback (most recent call last)" in out or (exc is not None and not isinstance(exc, SystemExit)):
            what = describe(exc) if exc is not None and not isinstance(exc, SystemExit) else _short(out[-600:], 600)
            self.note(BARE, f"{label}: exit {code}: {what}")
            return False
        if code == 0:
            self.note(HANDLED if ok_exit else SILENT_WRONG, f"{label}: exit 0")
            return True
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        if code == 1 and len(errors) == 1:
            self.note(HANDLED, f"{label}: {_short(errors[0], 200)}")
        else:
            self.note(BARE, f"{label}: exit {code} without one `error:` line: {_short(out[-600:], 600)}")
        return False

    def done(self) -> None:
        """Record the case, then fail the test unless it was handled."""
        BOARD.record(Case(self.group, self.nodeid, self.outcome, list(self.notes), self.fault))
        self.recorded = True
        if self.outcome != HANDLED:
            raise AssertionError(f"{self.outcome}: {self.fault}\n  " + "\n  ".join(self.notes)
                                 + f"\n  reproduce: {BOARD.cases[-1].reproduce()}")


def _cli_parts(result):
    if hasattr(result, "exit_code"):          # click.testing.Result (stderr is mixed into output)
        return result.exit_code, result.output, result.exception
    if hasattr(result, "events"):             # fault_child.ChildRun
        return result.code, result.output, None
    return result.returncode, (result.stdout or "") + (result.stderr or ""), None


# -- the scoreboard ---------------------------------------------------------------------------------

@dataclass
class Scoreboard:
    cases: list[Case] = field(default_factory=list)

    def record(self, case: Case) -> None:
        self.cases.append(case)

    def counts(self, group: str | None = None) -> dict[str, int]:
        cs = [c for c in self.cases if group is None or c.group == group]
        return {"tried": len(cs), **{o: sum(c.outcome == o for c in cs) for o in OUTCOMES}}

    def bad(self) -> list[Case]:
        return [c for c in self.cases if c.outcome != HANDLED]

    def lines(self, verbose: bool = False) -> list[str]:
        groups = list(dict.fromkeys(c.group for c in self.cases))
        head = f"{'group':<34}{'tried':>7}{'handled':>9}{'silent-wrong':>14}{'data-lost':>11}{'bare-traceback':>16}"
        out = [f"vindex fault suite: seed {seed()} ({SEED_ENV}={seed()} reproduces it)", head]
        for g in groups + [None]:
            c = self.counts(g)
            if g is None:
                out.append("-" * len(head))
            out.append(f"{g or 'total':<34}{c['tried']:>7}{c[HANDLED]:>9}{c[SILENT_WRONG]:>14}"
                       f"{c[DATA_LOST]:>11}{c[BARE]:>16}")
        for c in self.cases if verbose else []:
            out.append(f"{c.outcome:<15} {c.nodeid}" + (f"\n    fault: {c.fault}" if c.fault else ""))
            out += [f"    {n}" for n in c.notes]
        for c in self.bad():
            out.append(f"NOT HANDLED [{c.outcome}] {c.nodeid}")
            if c.fault:
                out.append(f"    fault: {c.fault}")
            out += [f"    {n}" for n in c.notes if not n.startswith(f"[{HANDLED}]")]
            out.append(f"    reproduce: {c.reproduce()}")
        return out

    def as_json(self) -> dict:
        return {"seed": seed(), "counts": self.counts(),
                "groups": {g: self.counts(g) for g in dict.fromkeys(c.group for c in self.cases)},
                "not_handled": [{"nodeid": c.nodeid, "outcome": c.outcome, "fault": c.fault, "notes": c.notes,
                                 "reproduce": c.reproduce()} for c in self.bad()]}


BOARD = Scoreboard()


def committed_files_sound(v: "Verdict", out, after: str, commit_finished: bool = False) -> None:
    """After a failure (`after`: 'the kill', 'the failure'): the manifest, if any, lists only files
    that are there and intact. No manifest is fine unless a commit had finished (`commit_finished`)."""
    from vindex import verify
    if not (out / "vindex.json").exists():
        if commit_finished:
            v.note(DATA_LOST, "a manifest commit had finished, yet there is no vindex.json")
        else:
            v.note(HANDLED, f"nothing was committed before {after}")
        return
    bad = [p for p in verify(out) if p.kind != "orphan"]
    if bad:
        v.note(DATA_LOST, f"after {after}, committed files are damaged or missing: " + "; ".join(map(str, bad[:3])))
    else:
        v.note(HANDLED, f"after {after}: every committed file verifies")
