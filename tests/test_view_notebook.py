"""The viewer inline in Jupyter: `vindex.view.show(lake)` is an object whose `_repr_html_` is an
iframe holding the whole page in `srcdoc`: complete, self-contained (nothing loaded from a network
URL; the page's CSP refuses any request), sandboxed to scripts only."""
from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser

import pytest

from toy_lakes import VIEW, write_toy_lake
from vindex.view import InlinePage, show

# anything that would make a browser fetch: an attribute with a URL, a CSS url() or @import, a <link>
FETCHES = re.compile(r"""(?:\b(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:|//|ftp:))"""
                     r"""|url\(\s*["']?\s*(?:https?:|//)|@import|<link\b|<base\b""", re.I)


class Frames(HTMLParser):
    def __init__(self):
        super().__init__()
        self.frames = []

    def handle_starttag(self, tag, attrs):
        if tag == "iframe":
            self.frames.append(dict(attrs))


@pytest.fixture(scope="module")
def inline(tmp_path_factory):
    lake = write_toy_lake(tmp_path_factory.mktemp("nb") / "lake", VIEW)
    return show(lake, permutations=0, progress=False)


def test_repr_html_is_one_sandboxed_iframe_holding_the_whole_page(inline):
    assert isinstance(inline, InlinePage)
    parser = Frames()
    parser.feed(inline._repr_html_())
    assert len(parser.frames) == 1
    frame = parser.frames[0]
    assert frame["sandbox"] == "allow-scripts"        # scripts run; no same-origin, no top navigation
    assert frame["srcdoc"] == inline.html              # the attribute unescapes to the page, byte for byte
    page = inline.html
    assert page.lstrip().lower().startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert page.count("<script") == page.count("</script>") >= 2
    # the payload is in the page: both models and their CKA matrices
    data = json.loads(re.search(r'<script type="application/json" id="vindex-data">(.*?)</script>', page, re.S)
                      .group(1))
    assert [m["name"] for m in data["models"]] == ["alpha", "beta"] and data["cka"]


def test_the_page_is_self_contained(inline):
    page = inline.html
    assert not FETCHES.findall(page)
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and "connect-src" not in csp
    # the only other 'http' spellings: the SVG namespace and the CSP's http-equiv
    others = {m.group(0) for m in re.finditer(r"https?://[^\s\"'<>]+|http-equiv", page)}
    assert others <= {"http://www.w3.org/2000/svg", "http-equiv"}
    # escaping into srcdoc leaves no raw quote or tag that could end the attribute
    attr = re.search(r'srcdoc="([^"]*)"', inline._repr_html_()).group(1)
    assert "<" not in attr and html.unescape(attr) == page


def test_show_needs_a_source():
    with pytest.raises(ValueError, match="at least one source"):
        show()
