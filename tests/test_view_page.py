"""The viewer page without a browser: self-contained, safe to inline, small, and served locally."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from vindex.view import render_page
from vindex.view.page import SCRIPTS, payload_json
from vindex.view.serve import serve_in_thread


def tiny_payload(**extra):
    p = {"format": "vindex-view/1", "title": "t", "generated": {"by": "test", "at": "now", "sources": []},
         "models": [{"name": "m", "model": {"id": "x/m", "n_layers": 2}, "extraction": {}, "prompt_sets": {},
                     "tables": {}, "layers": [0, 1, 2]}],
         "cka": [], "features": {}, "heads": {}, "spectra": {}}
    p.update(extra)
    return p


def data_block(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="vindex-data">(.*?)</script>', html, re.S)
    assert m, "the page has no payload block"
    return json.loads(m.group(1))


def test_payload_round_trips_and_cannot_close_the_script_element():
    evil = "</script><script>alert(1)</script><!--"
    payload = tiny_payload(title=evil, features={"m": {"1": {"n_features": 1, "rows": [[0, None, evil, 1.5, [[evil, 1.5]]]]}}})
    html = render_page(payload)
    assert data_block(html) == payload                 # JSON.parse sees exactly the payload
    assert html.lower().count("</script") == 2        # the data block's and the code's, nothing else
    assert evil not in html and "<script>alert" not in html
    assert "&lt;/script&gt;" in html.split("<style>")[0]  # the <title> is HTML-escaped


def test_slot_like_text_in_the_payload_is_not_substituted():
    html = render_page(tiny_payload(title="{{JS}} {{CSS}}"))
    assert data_block(html)["title"] == "{{JS}} {{CSS}}"


def test_page_is_self_contained():
    html = render_page(tiny_payload())
    for name in SCRIPTS:  # every script is inlined
        assert f"/* {name} */" in html
    assert "default-src 'none'" in html  # the browser refuses any request the page would make
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)\s*=""", html, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", html)
    # the only URL in the code is the SVG namespace, an identifier the browser never fetches
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls


def test_non_finite_numbers_are_refused_not_written_as_invalid_json():
    with pytest.raises(ValueError):
        payload_json({"x": float("nan")})


def test_serve_answers_on_localhost_only_the_page():
    html = render_page(tiny_payload())
    server, url = serve_in_thread(html, port=0)
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            assert r.read().decode("utf-8") == html
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "secret.txt", timeout=10)
        assert e.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_serve_reports_a_busy_port_clearly():
    server, url = serve_in_thread("<p>x</p>", port=0)
    try:
        from vindex.view.serve import page_server
        with pytest.raises(OSError, match="choose another --port"):
            page_server("<p>y</p>", port=server.server_port)
    finally:
        server.shutdown()
        server.server_close()
