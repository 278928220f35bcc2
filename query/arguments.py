"""The domains of the numeric arguments of the SQL functions and their Python mirrors, in one table.

Python checks a value with `check` (the UDFs, `vindex.query.cka_matrix` & co., `lake_cka`); the
table macros check theirs with the SQL of `sql_check`, built from the same table, so both refuse
the same values (NaN, inf, NULL, a fraction where a count is meant, out of range) with the same
words, naming the function and the argument, before any number is computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from vindex.errors import InvalidValue

from .sqltext import literal

INT_MAX = 2 ** 31 - 1  # results store counts and seeds as INTEGER


@dataclass(frozen=True)
class Domain:
    low: float
    high: float
    whole: bool              # a count or a seed: a whole number
    low_open: bool = False   # (low, high] instead of [low, high]
    why: str = ""            # said after the domain

    def __str__(self) -> str:
        text = (f">= {self.low:g}, a whole number" if self.whole else
                f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]")
        return f"{text} ({self.why})" if self.why else text


DOMAINS = {
    "permutations": Domain(0, INT_MAX, True),
    "seed": Domain(0, INT_MAX, True),
    "batch_size": Domain(4, INT_MAX, True, why="minibatch CKA needs batches of >= 4 rows: unbiased HSIC "
                                                 "divides by b-3"),
    "k": Domain(1, INT_MAX, True),
    "folds": Domain(2, INT_MAX, True, why="k-fold cross-validation needs two folds at least"),
    "max_iter": Domain(1, INT_MAX, True),
    "min_token_index": Domain(0, INT_MAX, True),
    "layer": Domain(0, INT_MAX, True),
    "max_stages": Domain(1, INT_MAX, True),
    "n_stages": Domain(1, INT_MAX, True),
    "dims": Domain(1, INT_MAX, True),
    "variance": Domain(0, 1, False, low_open=True, why="the share of a side's variance the kept SVD directions "
                                                       "explain"),
    "band": Domain(0, 1, False, low_open=True, why="|depth_a - depth_b| lies in [0, 1]; 0 would count the "
                                                   "diagonal itself as off-diagonal"),
}


def check(fn: str, name: str, value):
    """`value` if it lies in the domain of argument `name` (an int for whole-number arguments),
    else InvalidValue('fn: name must be ..., got value')."""
    d = DOMAINS[name]
    x = value
    if isinstance(x, Decimal):
        x = float(x)
    ok = (not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating))
          and math.isfinite(x) and (x > d.low if d.low_open else x >= d.low) and x <= d.high
          and (not d.whole or float(x).is_integer()))
    if not ok:
        raise InvalidValue(f"{fn}: {name} must be {d}, got {'NULL' if value is None else repr(value)}")
    return int(x) if d.whole else float(x)


def sql_check(fn: str, name: str) -> str:
    """A SQL expression that is true when the macro parameter `name` lies in its domain and raises
    `fn: name must be ..., got ...` otherwise (NULL, NaN, inf and text included)."""
    d = DOMAINS[name]
    x = f"TRY_CAST({name} AS DOUBLE)"
    cond = [f"isfinite({x})", f"{x} {'>' if d.low_open else '>='} {d.low!r}", f"{x} <= {d.high!r}"]
    if d.whole:
        cond.append(f"{x} = floor({x})")
    return (f"CASE WHEN coalesce({' AND '.join(cond)}, false) THEN true "
            f"ELSE error('{fn}: {name} must be {str(d).replace(chr(39), chr(39) * 2)}, got ' || "
            f"coalesce(CAST({name} AS VARCHAR), 'NULL')) END")


def choice_check(fn: str, name: str, allowed) -> str:
    """true, or an error naming the argument and what it may be."""
    return (f"CASE WHEN lower({name}) IN ({', '.join(literal(m) for m in allowed)}) THEN true "
            f"ELSE error('{fn}: unknown {name} ' || coalesce('''' || {name} || '''', 'NULL') || "
            f"'; expected one of {', '.join(allowed)}') END")
