"""A lake: a folder of vindex folders. Which folders of a path are vindexes, for the commands that
read either one vindex or a whole lake (`vindex info`, `vindex verify`)."""
from __future__ import annotations

import os
from pathlib import Path

from .manifest import MANIFEST


def lake_members(path: str | Path) -> list[Path]:
    """The vindex folders of the lake at `path`, in name order: its non-hidden sub-folders that hold
    a vindex.json entry (of any kind, so a broken manifest is reported by the caller, never skipped).
    [] when `path` is itself a vindex (it holds vindex.json) or holds no vindex folder."""
    root = Path(path)
    if os.path.lexists(root / MANIFEST) or not root.is_dir():
        return []
    return [p for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".") and os.path.lexists(p / MANIFEST)]
