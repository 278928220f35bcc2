"""The cross-model study: build vindexes for real models and write an honest report.

    from vindex.study import study
    study(["smollm2-135m", "gemma3-270m"], out="study")   # -> Path("study/report.md")

The application layer above `vindex.ingest` (building) and `vindex.query` (analyses); like the
CLI it only calls their public functions. Importing it is cheap: the heavy modules load inside
`study()`.
"""
from __future__ import annotations

from .labels import label_features, label_token, normalize_token
from .lexicon import Lexicon, load_lexicon

__all__ = ["study", "DEFAULT_MODELS", "load_lexicon", "Lexicon", "label_features", "label_token",
           "normalize_token"]


def __getattr__(name):
    if name in ("study", "DEFAULT_MODELS"):
        from . import run
        return getattr(run, name)
    raise AttributeError(f"module 'vindex.study' has no attribute {name!r}")
