"""Markdown for the study's report: numbers as text and GitHub tables (report.py and causal_report.py)."""
from __future__ import annotations

import math


def fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def md_table(rows: list[dict], columns: list[tuple[str, str]], formats: dict | None = None) -> str:
    """A GitHub Markdown table of `rows` with (key, header) columns; `formats` maps key -> callable."""
    formats = formats or {}
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(formats.get(k, fmt)(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body]) if rows else "_(no rows)_"
