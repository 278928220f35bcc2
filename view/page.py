"""Turn a view payload into one self-contained HTML page.

The page is the template `assets/page.html` with the CSS, the JavaScript and the payload (as a
JSON data block) inlined. It loads nothing from anywhere: a Content-Security-Policy of
`default-src 'none'` makes the browser refuse any request the page might try, so it works offline,
attached to a Hub dataset card, or in a Space.
"""
from __future__ import annotations

import html
import json
import math
import re
from importlib import resources

from vindex import __version__

# inlined in this order: charts and the layer panel define functions that viewer.js calls at boot
SCRIPTS = ("charts.js", "layer.js", "viewer.js")
STYLES = ("viewer.css",)
_SLOT = re.compile(r"\{\{(TITLE|GENERATOR|CSS|JS|PAYLOAD)\}\}")


def asset(name: str) -> str:
    """The text of one file under view/assets (shipped as package data)."""
    return resources.files("vindex.view").joinpath("assets", name).read_text(encoding="utf-8")


def payload_json(payload: dict) -> str:
    """The payload as compact JSON that is safe inside a <script> element.

    `<` is written as its JSON escape `\\u003c`, so no token text (a vocabulary can hold
    `</script>`) can close the element; JSON.parse reads it back unchanged. NaN/inf are refused:
    JSON has no spelling for them and the payload builder turns them into null.
    """
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c")


def render_page(payload: dict) -> str:
    """The whole page as a string; write it with `Path.write_text(..., encoding='utf-8')`."""
    js = "\n".join(f"/* {name} */\n" + asset(name) for name in SCRIPTS)
    if "</script" in js.lower():
        raise AssertionError("a viewer script contains '</script', which would end the inline element")
    slots = {
        "TITLE": html.escape(f"vindex view: {payload.get('title') or 'lake'}"),
        "GENERATOR": html.escape(f"vindex-lake {__version__}"),
        "CSS": "\n".join(asset(name) for name in STYLES),
        "JS": js,
        "PAYLOAD": payload_json(payload),
    }
    # one pass, so text inside the payload that looks like a slot is never substituted again
    return _SLOT.sub(lambda m: slots[m.group(1)], asset("page.html"))


def finite_or_none(x, digits: int = 6):
    """A float rounded to `digits` significant digits for a compact page; NaN/inf/None -> None."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")
