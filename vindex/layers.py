"""Layers: the one layer-selection grammar and the one block <-> layer convention.

A vindex numbers hidden states as `output_hidden_states` returns them: layer 0 is the embedding
output and layer i the output of block i (1..L), so `depth = layer / L`. Weight-derived rows of
block b (0-based, as checkpoint tensor names and LarQL's files count) are stored at layer b + 1.

    parse_layers("0-8,12", 24)      -> [0, 1, ..., 8, 12]
    parse_layers("all", 24)         -> [0, 1, ..., 24]
    parse_layers(["3", "5-6"])      -> [3, 5, 6]          (no model at hand: no range check)
    layer_of_block(0)               -> 1

Every command and function that takes `layers` parses it here, so `--layers` reads the same on
`vindex build`, `weights`, `pull` and `study`.
"""
from __future__ import annotations

import re

from .errors import InvalidValue

BLOCK_TO_LAYER = 1   # layer = block + 1: layer 0 is the embedding output
_PART = re.compile(r"(\d+)\s*(?:-\s*(\d+))?")


def layer_of_block(block: int) -> int:
    """The vindex layer that holds block `block`'s output (and its weight-derived rows)."""
    return int(block) + BLOCK_TO_LAYER


def block_of_layer(layer: int) -> int:
    """The 0-based block whose output is vindex layer `layer` (layer >= 1)."""
    return int(layer) - BLOCK_TO_LAYER


def parse_layers(spec, n_layers: int | None = None) -> list[int] | None:
    """Layer selection -> sorted unique layers, checked against 0..n_layers when it is known.

    spec: None, "" or "all" (every layer: 0..n_layers, or None when n_layers is unknown);
    an int; a spec like "0-8,12"; or an iterable of ints and specs (repeated CLI options).
    """
    if isinstance(spec, str):
        spec = [spec]
    elif isinstance(spec, int):
        spec = [spec]
    items = [] if spec is None else list(spec)
    texts = [str(x).strip() for x in items]
    if not items or all(t.lower() in ("", "all") for t in texts):
        return None if n_layers is None else list(range(n_layers + 1))
    top = f"; this model has layers 0-{n_layers} (0 = embeddings, {n_layers} = last block)" if n_layers is not None \
        else ""
    out: set[int] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            out.add(item)
            continue
        for part in filter(None, (p.strip() for p in str(item).split(","))):
            m = _PART.fullmatch(part)
            if not m:
                raise InvalidValue(f"--layers: {_show(items)}: cannot read {part!r}; expected layer numbers and "
                                   f"ranges like '0-8,12'{top}")
            a, b = int(m[1]), int(m[2] if m[2] is not None else m[1])
            if b < a:
                raise InvalidValue(f"--layers: {_show(items)}: range {part!r} runs backwards")
            out.update(range(a, b + 1))
    if not out:
        raise InvalidValue(f"--layers: {_show(items)}: selects no layer")
    bad = sorted(x for x in out if x < 0 or (n_layers is not None and x > n_layers))
    if bad:
        raise InvalidValue(f"--layers: {_show(items)}: layer(s) {bad} out of range{top or '; layers are >= 0'}")
    return sorted(out)


def _show(items) -> str:
    return repr(items[0]) if len(items) == 1 else repr(",".join(map(str, items)))
