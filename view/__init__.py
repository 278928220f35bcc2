"""`vindex view`: one self-contained, offline HTML page that shows a lake (installed as vindex.view).

    from vindex.view import view
    view("lake/", out="view.html")          # then open view.html in any browser, no network needed

The page shows two models as columns of layers placed by normalized depth, joined by CKA edges,
the same matrix as a heatmap, a per-layer feature browser (down_meta top tokens, c_score,
OV-gate heads, spectra) and the provenance from the manifests. Everything on it is computed by
the SQL layer (`vindex.query`); raw activations are never embedded.
Modules: payload.py (the data, via SQL), page.py (the HTML), serve.py (127.0.0.1 HTTP), notebook.py
(`show()`: the page inline in Jupyter).
"""
from __future__ import annotations

from pathlib import Path

from vindex.defaults import DEFAULT_PERMUTATIONS

from .notebook import InlinePage
from .page import render_page
from .payload import ESTIMATORS, build_payload, check_payload


def view(*sources, out: str | Path | None = "view.html", models: list[str] | None = None,
         estimators=ESTIMATORS, poolings: list[str] | None = None, prompt_set: str | None = None,
         permutations: int = DEFAULT_PERMUTATIONS, preprocess: str | None = None, max_features: int = 256,
         title: str | None = None, serve: bool = False, port: int = 8000, progress: bool = True,
         ready=None) -> Path | None:
    """Build the viewer page for `sources` (lake roots, vindex folders, hf:// repos) and write it
    to `out` (None: don't write). With serve=True, also serve it on 127.0.0.1:`port` until
    interrupted; `ready(url)` is called once it listens. Returns the written path.
    """
    html = page_html(*sources, models=models, estimators=estimators, poolings=poolings, prompt_set=prompt_set,
                     permutations=permutations, preprocess=preprocess, max_features=max_features, title=title,
                     progress=progress)
    path = None
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
    if serve:
        from .serve import serve as serve_page
        serve_page(html, port, ready=ready)
    return path


def show(*sources, models: list[str] | None = None, estimators=ESTIMATORS, poolings: list[str] | None = None,
         prompt_set: str | None = None, permutations: int = DEFAULT_PERMUTATIONS, preprocess: str | None = None,
         max_features: int = 256, title: str | None = None, progress: bool = True, height: int = 820) -> InlinePage:
    """The viewer inline in Jupyter: the page `view()` writes, as an object whose `_repr_html_` is an
    iframe holding it (`srcdoc`), so the last line of a cell shows it. Same options as `view()`."""
    return InlinePage(page_html(*sources, models=models, estimators=estimators, poolings=poolings,
                                prompt_set=prompt_set, permutations=permutations, preprocess=preprocess,
                                max_features=max_features, title=title, progress=progress), height=height)


def page_html(*sources, models=None, estimators=ESTIMATORS, poolings=None, prompt_set=None,
              permutations: int = DEFAULT_PERMUTATIONS, preprocess=None, max_features: int = 256, title=None,
              progress: bool = True) -> str:
    """The page for `sources` as one HTML string (what `view()` writes and `show()` shows)."""
    from vindex.query import connect

    if not sources:
        raise ValueError("view() needs at least one source: a lake root, a vindex folder or an hf:// repo")
    con = connect(*sources)
    try:
        payload = build_payload(con, models=models, estimators=estimators, poolings=poolings,
                                prompt_set=prompt_set, permutations=permutations, preprocess=preprocess,
                                max_features=max_features, title=title or _title(sources),
                                sources=[str(s) for s in sources], progress=progress)
    finally:
        con.close()
    check_payload(payload)
    return render_page(payload)


def _title(sources) -> str:
    names = [Path(str(s).rstrip("/")).name or str(s) for s in sources]
    return ", ".join(names)


__all__ = ["view", "show", "page_html", "InlinePage", "build_payload", "render_page", "check_payload"]
