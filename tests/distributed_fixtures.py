"""Fixtures of the distributed tests: a toy lake of models with different depths and widths (the
tiny models come from ingest_fixtures.make_tiny_model)."""
from __future__ import annotations

from conftest import write_toy_vindex

LAKE_SHAPES = [(3, 8), (4, 12), (2, 16), (5, 6)]   # (n_layers, d) per model m0..m3


def write_toy_lake(root, n_prompts=12):
    """Models m0..m3 (shapes LAKE_SHAPES) over the same prompts, in one lake folder."""
    for i, (L, d) in enumerate(LAKE_SHAPES):
        write_toy_vindex(root / f"m{i}", name=f"m{i}", n_layers=L, d=d, n_prompts=n_prompts, seed=i)
    return root
