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

/* Whether this browser has a glyph for a character. A character no installed font covers is
 * drawn as the fallback font's .notdef box (the "empty box"), the same box for every such
 * character: draw it and a reference with no glyph anywhere (U+0378, unassigned) on a canvas and
 * compare the pixels. Format, private-use, unassigned and unusual space characters are never
 * shown raw (they are invisible or meaningless); printable ASCII always renders. */
const GLYPHS = new Map();
const NEVER_RAW = /[\p{Cc}\p{Cf}\p{Co}\p{Cn}\p{Cs}\p{Zl}\p{Zp}\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]/u;
let glyphCtx = null, notdef = null;
function pixels(ch) {
  glyphCtx.clearRect(0, 0, 32, 32);
  glyphCtx.fillText(ch, 4, 24);
  return glyphCtx.getImageData(0, 0, 32, 32).data;
}
VX.renders = function (ch) {
  const cp = ch.codePointAt(0);
  if (cp >= 0x21 && cp <= 0x7e) return true;
  if (NEVER_RAW.test(ch)) return false;
  if (GLYPHS.has(ch)) return GLYPHS.get(ch);
  if (!glyphCtx) {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 32;
    glyphCtx = canvas.getContext("2d", {willReadFrequently: true});
    const tok = document.querySelector("span.tok, td.tok") || document.body;
    glyphCtx.font = "20px " + getComputedStyle(tok).fontFamily;
    glyphCtx.fillStyle = "#000";
    notdef = pixels("\u0378");
  }
  const px = pixels(ch);
  let same = true, ink = false;
  for (let k = 3; k < px.length; k += 4) {
    if (px[k] !== notdef[k]) same = false;
    if (px[k]) ink = true;
  }
  const ok = ink && !same || /\s/.test(ch);
  GLYPHS.set(ch, ok);
  return ok;
};

/* A token as the page shows it: JSON's escapes for control characters and quotes, and \u{...}
 * for any character this browser cannot draw (never an empty box). */
VX.tokenText = function (text) {
  const s = JSON.stringify(text).slice(1, -1);
  let out = "";
  for (const ch of s) out += VX.renders(ch) ? ch : "\\u{" + ch.codePointAt(0).toString(16).padStart(4, "0") + "}";
  return out;
};

function markText(parent, text, query) {
  const k = query ? text.toLowerCase().indexOf(query) : -1;
  if (k < 0) { parent.appendChild(document.createTextNode(text)); return; }
  parent.appendChild(document.createTextNode(text.slice(0, k)));
  VX.el("mark", {}, parent, text.slice(k, k + query.length));
  parent.appendChild(document.createTextNode(text.slice(k + query.length)));
}

/* The search over every feature of every layer and model (payload.feature_index): the token ids
 * whose text matches, then the features whose top token or top tokens hold one of them. */
function tokenMatches(q) {
  const idx = VX.data.feature_index || {tokens: []};
  if (VX.tokenNorms === undefined) VX.tokenNorms = idx.tokens.map(VX.normToken);
  const hit = new Uint8Array(idx.tokens.length);
  VX.tokenNorms.forEach((t, k) => { if (t.includes(q)) hit[k] = 1; });
  return hit;
}
VX.searchIndex = function (model, layer, hit) {
  const rec = (((VX.data.feature_index || {}).models || {})[model] || {})[layer];
  if (!rec) return [];
  const out = [];
  for (let k = 0; k < rec.feature.length; k++) {
    if ((rec.top[k] !== null && hit[rec.top[k]]) || rec.tops[k].some((t) => t !== null && hit[t])) out.push(k);
  }
  return out;
};
/* One index entry as a feature row [feature, expert, top_token, c_score, [[token, logit]..]];
 * the logits come from the detailed rows when the feature is among them. */
function indexRow(model, layer, k, detailed) {
  const idx = VX.data.feature_index, rec = idx.models[model][layer];
  const feature = rec.feature[k], expert = rec.expert ? rec.expert[k] : null;
  const d = detailed.get(expert + "/" + feature);
  if (d) return d;
  return [feature, expert, rec.top[k] === null ? null : idx.tokens[rec.top[k]], rec.c[k],
          rec.tops[k].map((t) => [idx.tokens[t], null])];
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
            "f" + fc[0] + (tok !== undefined && tok !== null ? " \"" + VX.tokenText(tok) + "\"" : ""));
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
  host.replaceChildren();
  const here = byLayer[st.sel.layer];
  if (!here) { VX.el("p", {class: "empty"}, host, "No features table for this layer."); return; }
  let rows = here.rows;
  if (q) {  // every feature of the layer, not only the detailed top ones
    const hit = tokenMatches(q);
    const detailed = new Map(here.rows.map((f) => [(f[1] === undefined ? null : f[1]) + "/" + f[0], f]));
    rows = VX.searchIndex(model, st.sel.layer, hit).map((k) => indexRow(model, st.sel.layer, k, detailed));
    VX.el("p", {class: "muted", id: "feature-count"}, host, rows.length + " of " + here.n_features +
          " features match \u201c" + st.query + "\u201d (every feature of the layer searched" +
          (here.n_features > here.rows.length ? "; logits shown for the top " + here.rows.length + " by c_score" : "") + ")");
    // where else the token shows up: every layer of every model
    const p = VX.el("p", {id: "feature-elsewhere"}, host, "Also in: ");
    let any = false;
    const models = [model].concat(VX.data.models.map((m) => m.name).filter((n) => n !== model));
    models.forEach((name) => {
      const layers = Object.keys(((VX.data.feature_index || {}).models || {})[name] || {}).map(Number).sort((x, y) => x - y);
      layers.forEach((l) => {
        if (name === model && l === st.sel.layer) return;
        const n = VX.searchIndex(name, l, hit).length;
        if (!n) return;
        any = true;
        const a = VX.el("a", {class: "layer-link", "data-model": name, "data-layer": l}, p,
                        (name === model ? "" : name + " ") + "L" + l + " (" + n + ")");
        a.addEventListener("click", () => VX.selectModelLayer(name, l));
      });
    });
    if (!any) p.appendChild(document.createTextNode("no other layer"));
  } else {
    VX.el("p", {class: "muted", id: "feature-count"}, host, here.rows.length + " features shown" +
          (here.n_features > here.rows.length ? " (the top " + here.rows.length + " of " + here.n_features +
           " by c_score; the search covers all " + here.n_features + ")" : ""));
  }
  const scroll = VX.el("div", {class: "feature-scroll"}, host);
  const body = table(scroll, "feature-table", [{label: "feature", num: 1}, "top token", {label: "c_score", num: 1},
                                                "down_meta top tokens (logit)"]);
  rows.slice(0, 400).forEach((f) => {
    const tr = VX.el("tr", {"data-feature": f[0], "data-c-score": f[3] === null ? "" : f[3]}, body);
    cell(tr, (f[1] !== null && f[1] !== undefined ? "e" + f[1] + "/" : "") + f[0], "num");
    markText(cell(tr, "", "tok"), f[2] === null ? "" : VX.tokenText(f[2]), q);
    cell(tr, VX.fmt(f[3], 2), "num c-score");
    const td = cell(tr, "");
    (f[4] || []).forEach((t) => {
      const s = VX.el("span", {class: "tok", title: t[1] === null ? "logit not on the page (not among the layer's top features)"
                                                               : "logit " + VX.fmt(t[1], 2)}, td);
      markText(s, VX.tokenText(t[0]), q);
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
