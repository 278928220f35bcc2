/* vindex view, the layer panel: for the selected layer, its best-matching layers in the other
 * model, its spectrum summary, the attention heads whose OV-gate couplings into its FFN are
 * strongest, and its FFN features (down_meta top tokens, c_score), searchable by token. */
"use strict";
var VX = window.VX || (window.VX = {});

VX.el = function (tag, attrs, parent, text) {
  const el = document.createElement(tag);
  for (const k in attrs || {}) el.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) el.textContent = text;
  if (parent) parent.appendChild(el);
  return el;
};

function table(parent, id, headers) {
  const t = VX.el("table", id ? {id: id} : {}, parent);
  const tr = VX.el("tr", {}, VX.el("thead", {}, t));
  headers.forEach((h) => VX.el("th", h.num ? {class: "num"} : {}, tr, h.label || h));
  return VX.el("tbody", {}, t);
}

function cell(tr, text, cls, attrs) {
  const td = VX.el("td", Object.assign(cls ? {class: cls} : {}, attrs || {}), tr, text);
  return td;
}

// token search: case-insensitive, ignoring the leading-space markers of BPE/SentencePiece vocabularies
VX.normToken = (s) => (s || "").replace(/^[\u0120\u2581\s]+/, "").toLowerCase();

function markText(parent, text, query) {
  const k = query ? text.toLowerCase().indexOf(query) : -1;
  if (k < 0) { parent.appendChild(document.createTextNode(text)); return; }
  parent.appendChild(document.createTextNode(text.slice(0, k)));
  VX.el("mark", {}, parent, text.slice(k, k + query.length));
  parent.appendChild(document.createTextNode(text.slice(k + query.length)));
}

function sparkline(values, parent) {
  const w = 70, h = 16, max = Math.max.apply(null, values.concat([1e-12]));
  const svg = VX.svg("svg", {width: w, height: h, class: "spark"}, parent);
  const pts = values.map((v, k) => ((values.length === 1 ? 0 : k / (values.length - 1)) * (w - 2) + 1).toFixed(1) +
                                   "," + (h - 1 - (v / max) * (h - 2)).toFixed(1));
  VX.svg("polyline", {points: pts.join(" ")}, svg);
}

function correspondence(panel, M, st) {
  const side = st.sel.side, mine = side === "a" ? M.layersA : M.layersB;
  const i = mine.indexOf(st.sel.layer);
  const other = side === "a" ? M.modelB : M.modelA;
  const layers = side === "a" ? M.layersB : M.layersA, depths = side === "a" ? M.depthB : M.depthA;
  VX.el("h3", {}, panel, "Correspondence in " + other + (M.self ? " (itself)" : ""));
  if (i < 0) { VX.el("p", {class: "empty"}, panel, "No CKA for this layer in the current matrix."); return; }
  const rows = layers.map((layer, k) => {
    const a = side === "a" ? i : k, b = side === "a" ? k : i;
    return {layer: layer, depth: depths[k], cka: M.cka(a, b), null95: M.null95(a, b), p: M.p(a, b), vis: VX.visible(M, a, b)};
  }).filter((r) => r.cka !== null).sort((x, y) => y.cka - x.cka);
  if (!rows.length) { VX.el("p", {class: "empty"}, panel, "CKA is undefined for this layer (constant activations?)."); return; }
  const best = rows[0];
  const p = VX.el("p", {id: "best-match", "data-layer": best.layer, "data-cka": best.cka}, panel);
  p.appendChild(document.createTextNode("Best match: "));
  VX.el("b", {}, p, other + " L" + best.layer);
  p.appendChild(document.createTextNode(" (depth " + VX.fmt(best.depth, 2) + "), CKA " + VX.fmt(best.cka) +
    (M.hasNull ? ", null p95 " + VX.fmt(best.null95) + ", p " + VX.fmt(best.p) : "")));
  const body = table(panel, "corr-table", ["layer", {label: "depth", num: 1}, {label: "CKA", num: 1},
                                            {label: "null p95", num: 1}, {label: "p", num: 1}, ""]);
  rows.slice(0, 8).forEach((r) => {
    const tr = VX.el("tr", {"data-layer": r.layer, "data-cka": r.cka}, body);
    const td = cell(tr, "");
    const a = VX.el("a", {class: "layer-link"}, td, "L" + r.layer);
    a.addEventListener("click", () => VX.select(side === "a" ? "b" : "a", r.layer));
    cell(tr, VX.fmt(r.depth, 2), "num");
    cell(tr, VX.fmt(r.cka), "num cka");
    cell(tr, VX.fmt(r.null95), "num");
    cell(tr, VX.fmt(r.p), "num");
    const above = r.null95 === null ? "" : (r.cka > r.null95 ? "above null" : "below null");
    cell(tr, above, above ? (r.cka > r.null95 ? "above" : "below") : "");
  });
}

function spectrum(panel, model, layer) {
  VX.el("h3", {}, panel, "Spectrum (weights)");
  const rows = ((VX.data.spectra || {})[model] || {})[layer];
  if (!rows || !rows.length) { VX.el("p", {class: "empty"}, panel, "No layer_stats for this layer."); return; }
  const body = table(panel, "spectrum-table", ["matrix", "shape", {label: "eff. rank", num: 1},
                                                {label: "entropy", num: 1}, {label: "top 1% energy", num: 1},
                                                {label: "top 10%", num: 1}, "top σ"]);
  rows.forEach((r) => {
    const tr = VX.el("tr", {"data-matrix": r.matrix}, body);
    cell(tr, r.matrix);
    cell(tr, r.rows + "×" + r.cols);
    cell(tr, VX.fmt(r.effective_rank, 1), "num");
    cell(tr, VX.fmt(r.spectral_entropy, 3), "num");
    cell(tr, VX.fmt(r.energy_top1pct, 3), "num");
    cell(tr, VX.fmt(r.energy_top10pct, 3), "num");
    const td = cell(tr, "");
    if (r.top_singular_values && r.top_singular_values.length) {
      sparkline(r.top_singular_values, td);
      td.title = "σ1 = " + VX.fmt(r.top_singular_values[0], 3);
    }
  });
}

function heads(panel, model, layer) {
  VX.el("h3", {}, panel, "Heads with the strongest OV-gate coupling into this layer's FFN");
  const rows = ((VX.data.heads || {})[model] || {})[layer];
  if (!rows || !rows.length) { VX.el("p", {class: "empty"}, panel, "No ov_gate rows for this layer."); return; }
  const body = table(panel, "heads-table", ["head", "variant", {label: "total coupling", num: 1}, "strongest features"]);
  rows.forEach((h) => {
    const tr = VX.el("tr", {"data-head": h.layer + "." + h.head, "data-total": h.total_coupling}, body);
    cell(tr, "L" + h.layer + ".H" + h.head);
    cell(tr, h.variant);
    cell(tr, VX.fmt(h.total_coupling, 2), "num");
    const td = cell(tr, "");
    h.top.forEach((fc) => {
      const tok = fc[2];
      VX.el("span", {class: "tok", title: "coupling " + VX.fmt(fc[1], 3)}, td,
            "f" + fc[0] + (tok !== undefined && tok !== null ? " " + JSON.stringify(tok) : ""));
    });
  });
}

/* The feature table is redrawn alone on each keystroke, so the search box keeps its focus. */
VX.drawFeatures = function () {
  const st = VX.state, host = document.getElementById("feature-results");
  if (!host || !st.sel) return;
  const model = st.sel.side === "a" ? VX.shownA() : VX.shownB();
  const byLayer = (VX.data.features || {})[model] || {};
  const q = VX.normToken(st.query);
  const match = (f) => !q || VX.normToken(f[2]).includes(q) || (f[4] || []).some((t) => VX.normToken(t[0]).includes(q));
  host.replaceChildren();
  const here = byLayer[st.sel.layer];
  if (!here) { VX.el("p", {class: "empty"}, host, "No features table for this layer."); return; }
  const rows = here.rows.filter(match);
  VX.el("p", {class: "muted", id: "feature-count"}, host,
        (q ? rows.length + " of " : "") + here.rows.length + " features shown" +
        (here.n_features > here.rows.length ? " (the top " + here.rows.length + " of " + here.n_features +
         " by c_score)" : "") + (q ? " match \u201c" + st.query + "\u201d" : ""));
  if (q) {  // where else the token shows up, among the features this page holds
    const elsewhere = Object.keys(byLayer).map(Number).filter((l) => l !== st.sel.layer)
      .map((l) => [l, byLayer[l].rows.filter(match).length]).filter((x) => x[1] > 0).sort((x, y) => x[0] - y[0]);
    if (elsewhere.length) {
      const p = VX.el("p", {id: "feature-elsewhere"}, host, "Also in: ");
      elsewhere.forEach((x) => {
        const a = VX.el("a", {class: "layer-link", "data-layer": x[0]}, p, "L" + x[0] + " (" + x[1] + ")");
        a.addEventListener("click", () => VX.select(st.sel.side, x[0]));
      });
    }
  }
  const scroll = VX.el("div", {class: "feature-scroll"}, host);
  const body = table(scroll, "feature-table", [{label: "feature", num: 1}, "top token", {label: "c_score", num: 1},
                                                "down_meta top tokens (logit)"]);
  rows.slice(0, 400).forEach((f) => {
    const tr = VX.el("tr", {"data-feature": f[0], "data-c-score": f[3] === null ? "" : f[3]}, body);
    cell(tr, (f[1] !== null && f[1] !== undefined ? "e" + f[1] + "/" : "") + f[0], "num");
    markText(cell(tr, "", "tok"), f[2] === null ? "" : JSON.stringify(f[2]).slice(1, -1), q);
    cell(tr, VX.fmt(f[3], 2), "num c-score");
    const td = cell(tr, "");
    (f[4] || []).forEach((t) => {
      const s = VX.el("span", {class: "tok", title: "logit " + VX.fmt(t[1], 2)}, td);
      markText(s, JSON.stringify(t[0]).slice(1, -1), q);
    });
  });
};

VX.drawLayerPanel = function (panel, M) {
  const st = VX.state;
  panel.replaceChildren();
  if (!st.sel) {
    VX.el("h2", {}, panel, "Layer");
    VX.el("p", {class: "empty"}, panel, "Click a layer (or a heatmap cell) to see its correspondences, spectrum, " +
          "OV-gate heads and FFN features.");
    return;
  }
  const model = st.sel.side === "a" ? VX.shownA() : VX.shownB();
  const rec = VX.model(model), nl = rec && rec.model ? rec.model.n_layers : null;
  const depth = nl ? st.sel.layer / nl : null;
  VX.el("h2", {id: "layer-title", "data-model": model, "data-layer": st.sel.layer}, panel,
        model + " · layer " + st.sel.layer + (depth === null ? "" : " · depth " + VX.fmt(depth, 3)));
  if (M) correspondence(panel, M, st);
  spectrum(panel, model, st.sel.layer);
  heads(panel, model, st.sel.layer);
  VX.el("h3", {}, panel, "FFN features (down_meta)");
  const input = VX.el("input", {type: "search", id: "feature-search", placeholder: "search top tokens, e.g. Paris",
                                "aria-label": "search features by token"}, panel);
  input.value = st.query || "";
  input.addEventListener("input", () => { st.query = input.value; VX.drawFeatures(); });
  VX.el("div", {id: "feature-results"}, panel);
  VX.drawFeatures();
};
