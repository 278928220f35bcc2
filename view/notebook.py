"""The viewer inline in a notebook: `vindex.view.show(lake)` in Jupyter shows the same page
`vindex view` writes, in an iframe.

The iframe's `srcdoc` holds the whole self-contained page (view/page.py), HTML-escaped into the
attribute, so nothing is written to disk or served, and the notebook needs no network. The page's
own Content-Security-Policy (`default-src 'none'`) still applies inside the iframe, and the iframe
is sandboxed to scripts only: the page cannot reach the notebook or anything else.
"""
from __future__ import annotations

import html


class InlinePage:
    """One rendered viewer page; Jupyter (and anything that calls `_repr_html_`) shows it inline.

    `html` is the page itself (write it with `Path(...).write_text(page.html, encoding='utf-8')`)."""

    def __init__(self, page: str, height: int = 820):
        self.html = page
        self.height = int(height)

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" sandbox="allow-scripts" '
                f'style="width: 100%; height: {self.height}px; border: 1px solid #ddd" '
                'title="vindex view"></iframe>')

    def __repr__(self) -> str:
        return f"<vindex view page: {len(self.html.encode('utf-8')) / 1e6:.2f} MB; shown inline in a notebook>"
