/* vindex view, the page's state and controls. The payload (JSON inlined by view/page.py) holds
 * only what the SQL layer computed: CKA matrices per model pair x estimator x pooling (with the
 * permutation null when it was run), capped feature lists, top OV-gate heads, spectra, manifests.
 * State lives in VX.state; every control changes it and calls VX.render(). */
"use strict";
var VX = window.VX || (window.VX = {});

VX.data = JSON.parse(document.getElementById("vindex-data").textContent);
VX.defaults = Object.assign({poolings: ["last", "mean_nosink", "mean"], estimators: ["debiased", "biased"],
                             edges: "matched", threshold: 0, hide_null: true, view: "layers"}, VX.data.defaults || {});
VX.state = {a: null, b: null, compare: true, estimator: null, pooling: null, threshold: VX.defaults.threshold,
            hideNull: VX.defaults.hide_null, view: VX.defaults.view, edges: VX.defaults.edges, sel: null, pair: null,
            query: ""};
VX.VIEWS = ["layers", "circuit", "heatmap"];
VX.EDGES = ["matched", "best", "all"];

VX.model = (name) => VX.data.models.find((m) => m.name === name);
VX.shownA = () => VX.state.a;
VX.shownB = () => (VX.state.compare ? VX.state.b : VX.state.a);

/* The stored matrices whose pair is {a, b} (either orientation). */
VX.entries = function (a, b) {
  return VX.data.cka.filter((e) => (e.model_a === a && e.model_b === b) || (e.model_a === b && e.model_b === a));
};

/* One matrix oriented as A rows x B columns, whichever way round it was stored. */
VX.matrix = function (a, b, estimator, pooling) {
  const e = VX.entries(a, b).find((x) => x.estimator === estimator && x.pooling === pooling);
  if (!e) return null;
  const flip = e.model_a !== a;
  const get = (mat) => (mat ? (flip ? (i, j) => mat[j][i] : (i, j) => mat[i][j]) : () => null);
  return {
    modelA: a, modelB: b, self: a === b, meta: e, hasNull: !!e.null_p95,
    layersA: flip ? e.layers_b : e.layers_a, layersB: flip ? e.layers_a : e.layers_b,
    depthA: flip ? e.depth_b : e.depth_a, depthB: flip ? e.depth_a : e.depth_b,
    cka: get(e.cka), null95: get(e.null_p95), p: get(e.p_value),
  };
};

/* No CKA for the pair (e.g. a lake with features but no pooled activations): the layer columns
 * still show, so every layer's features can be browsed. */
VX.layersOnly = function (a, b) {
  const ma = VX.model(a), mb = VX.model(b);
  const depths = (m) => m.layers.map((l) => l / m.model.n_layers);
  return {modelA: a, modelB: b, self: a === b, meta: null, hasNull: false, empty: true,
          layersA: ma.layers, layersB: mb.layers, depthA: depths(ma), depthB: depths(mb),
          cka: () => null, null95: () => null, p: () => null};
};

/* The layer pairs an edge mode draws, as a Set of "i,j" (null: every pair).
 * matched: each layer with the other model's layer at the nearest normalized depth (both ways);
 * best: each layer with its highest-CKA layer in the other model (both ways). */
VX.edgeSet = function (M, mode) {
  if (mode === "all" || M.empty) return null;
  const out = new Set(), nA = M.layersA.length, nB = M.layersB.length;
  const argbest = (n, score) => {
    let k = -1, best = -Infinity;
    for (let x = 0; x < n; x++) { const v = score(x); if (v !== null && v > best) { best = v; k = x; } }
    return k;
  };
  const near = (d, depths) => argbest(depths.length, (x) => -Math.abs(depths[x] - d));
  for (let i = 0; i < nA; i++) {
    const j = mode === "matched" ? near(M.depthA[i], M.depthB) : argbest(nB, (x) => M.cka(i, x));
    if (j >= 0) out.add(i + "," + j);
  }
  for (let j = 0; j < nB; j++) {
    const i = mode === "matched" ? near(M.depthB[j], M.depthA) : argbest(nA, (x) => M.cka(x, j));
    if (i >= 0) out.add(i + "," + j);
  }
  return out;
};

/* An edge / cell passes when CKA >= threshold and, with the null filter on, CKA > null p95. */
VX.visible = function (M, i, j) {
  const v = M.cka(i, j);
  if (v === null || v < VX.state.threshold) return false;
  if (VX.state.hideNull && M.hasNull) {
    const n = M.null95(i, j);
    if (n !== null && v <= n) return false;
  }
  return true;
};

function uniq(xs) { return xs.filter((x, k) => xs.indexOf(x) === k); }

/* Fill a <select>; keep `current` when it is still offered, else the first of `preferred` offered. */
function fillSelect(sel, values, current, preferred) {
  sel.replaceChildren();
  values.forEach((v) => VX.el("option", {value: v}, sel, v));
  const pick = values.includes(current) ? current : (preferred || []).concat(values).find((v) => values.includes(v));
  if (pick !== undefined) sel.value = pick;
  sel.disabled = values.length < 2;
  return pick === undefined ? null : pick;
}

/* Keep estimator / pooling valid for the models now shown, and the controls in step. */
function syncControls() {
  const st = VX.state, a = VX.shownA(), b = VX.shownB();
  const es = VX.entries(a, b);
  st.estimator = fillSelect(document.getElementById("estimator"), uniq(es.map((e) => e.estimator)).sort(), st.estimator,
                            VX.defaults.estimators);
  st.pooling = fillSelect(document.getElementById("pooling"),
                          uniq(es.filter((e) => e.estimator === st.estimator).map((e) => e.pooling)).sort(), st.pooling,
                          VX.defaults.poolings);
  const compare = document.getElementById("compare");
  compare.setAttribute("aria-pressed", String(st.compare));
  compare.disabled = VX.data.models.length < 2;
  document.getElementById("model-b").disabled = !st.compare;
  const edges = document.getElementById("edges");
  edges.addEventListener("change", () => { st.edges = edges.value; VX.render(); });
  document.querySelectorAll(".tabs button").forEach((btn) => btn.setAttribute("aria-pressed", String(btn.dataset.view === st.view)));
  document.getElementById("threshold-value").textContent = st.threshold.toFixed(2);
  document.getElementById("edges").value = st.edges;
  document.getElementById("edges").disabled = st.view === "heatmap";
}

VX.select = function (side, layer) {
  VX.state.sel = {side: side, layer: layer};
  VX.state.pair = null;
  VX.render();
};

/* Select a layer of any model: its side when it is shown, else it becomes model A. */
VX.selectModelLayer = function (model, layer) {
  const st = VX.state;
  if (VX.shownA() === model) return VX.select("a", layer);
  if (VX.shownB() === model) return VX.select("b", layer);
  st.a = model;
  document.getElementById("model-a").value = model;
  VX.select("a", layer);
};

VX.selectPair = function (i, j) {
  const M = VX.current();
  if (!M) return;
  VX.state.sel = {side: "a", layer: M.layersA[i]};
  VX.state.pair = [i, j];
  VX.render();
};

VX.current = function () {
  const st = VX.state;
  return VX.matrix(VX.shownA(), VX.shownB(), st.estimator, st.pooling);
};

/* A definition list; nested objects (extraction settings) become nested lists. */
function dl(parent, pairs) {
  const d = VX.el("dl", {}, parent);
  pairs.forEach(([k, v]) => {
    if (v === undefined || v === null || v === "") return;
    VX.el("dt", {}, d, k);
    const nested = v && typeof v === "object" && !Array.isArray(v);
    const dd = VX.el("dd", nested ? {class: "nested"} : {}, d);
    if (nested) dl(dd, Object.entries(v));
    else dd.textContent = Array.isArray(v) ? v.map((x) => (typeof x === "object" ? JSON.stringify(x) : x)).join(", ") : String(v);
  });
  return d;
}

const SHOWN_MODEL_KEYS = ["id", "revision", "family", "source", "n_layers", "d_model", "d_ffn", "n_heads", "vocab_size",
  "quantization", "license", "license_from", "language", "language_from"];
// the provenance in words (vindex.summary.provenance, as `vindex info` and the card say it), first
const PROVENANCE_KEYS = ["source", "quantization", "variant", "license", "language"];

function drawProvenance(M) {
  const host = document.getElementById("provenance-body");
  host.replaceChildren();
  const grid = VX.el("div", {class: "grid"}, host);
  uniq([VX.shownA(), VX.shownB()]).forEach((name) => {
    const m = VX.model(name);
    if (!m) return;
    const box = VX.el("div", {class: "prov-model", "data-model": name}, grid);
    VX.el("h3", {}, box, name);
    const info = m.model || {};
    const sets = Object.entries(m.prompt_sets || {}).map(([k, v]) =>
      k + ": " + v.n_prompts + " prompts, sha256 " + String(v.sha256 || "").slice(0, 12));
    const prov = m.provenance || {source: info.source};
    dl(box, [["model id", info.id]].concat(PROVENANCE_KEYS.map((k) => [k, prov[k]]),
      [["revision", info.revision || "(none recorded)"], ["family", info.family], ["layers", info.n_layers],
       ["d_model", info.d_model], ["d_ffn", info.d_ffn], ["heads", info.n_heads], ["vocab", info.vocab_size],
       ["prompt sets", sets.join("; ")],
       ["tables", Object.entries(m.tables || {}).map(([k, v]) => k + " (" + v.rows + " rows)").join(", ")]],
      Object.entries(info).filter(([k]) => !SHOWN_MODEL_KEYS.includes(k))));
    const ex = Object.entries(m.extraction || {});
    if (ex.length) { VX.el("h3", {}, box, "extraction"); dl(box, ex); }
  });
  const box = VX.el("div", {class: "prov-cka"}, grid);
  VX.el("h3", {}, box, "CKA shown");
  if (M) {
    const e = M.meta;
    dl(box, [["pair", e.model_a + " × " + e.model_b], ["estimator", e.estimator], ["pooling", e.pooling],
             ["kernel", e.kernel], ["prompt set", e.prompt_set], ["prompts", e.n_prompts],
             ["preprocessing", e.preprocess], ["permutations", e.permutations || "none (no null)"],
             ["seed", e.permutations ? e.seed : null], ["computed by", e.computed_by]]);
  } else {
    VX.el("p", {class: "empty"}, box, "No CKA matrix for this pair in the lake.");
  }
  (VX.data.notes || []).forEach((n) => VX.el("p", {class: "muted note"}, box, n));
  const g = VX.data.generated || {};
  dl(box, [["page built by", g.by], ["built at", g.at], ["sources", (g.sources || []).join(", ")]]);
}

/* The view lives in the URL's hash (#a=..&b=..&est=..&pool=..&thr=..&sel=a:3), so a link
 * reopens the same view; replaceState keeps the history clean. */
function saveHash() {
  const st = VX.state, q = new URLSearchParams();
  q.set("a", st.a); q.set("b", st.b); q.set("compare", st.compare ? "1" : "0");
  if (st.estimator) q.set("est", st.estimator);
  if (st.pooling) q.set("pool", st.pooling);
  q.set("thr", st.threshold.toFixed(2)); q.set("null", st.hideNull ? "1" : "0"); q.set("view", st.view);
  q.set("edges", st.edges);
  if (st.sel) q.set("sel", st.sel.side + ":" + st.sel.layer);
  try { history.replaceState(null, "", "#" + q.toString()); } catch (e) { /* sandboxed frames */ }
}

function loadHash(names) {
  const st = VX.state, q = new URLSearchParams(location.hash.slice(1));
  if (names.includes(q.get("a"))) st.a = q.get("a");
  if (names.includes(q.get("b"))) st.b = q.get("b");
  if (q.has("compare") && names.length > 1) st.compare = q.get("compare") === "1";
  if (q.has("est")) st.estimator = q.get("est");
  if (q.has("pool")) st.pooling = q.get("pool");
  const thr = parseFloat(q.get("thr"));
  if (thr >= 0 && thr <= 1) st.threshold = thr;
  if (q.has("null")) st.hideNull = q.get("null") === "1";
  if (VX.VIEWS.includes(q.get("view"))) st.view = q.get("view");
  if (VX.EDGES.includes(q.get("edges"))) st.edges = q.get("edges");
  const m = /^([ab]):(\d+)$/.exec(q.get("sel") || "");
  if (m) st.sel = {side: m[1], layer: +m[2]};
}

VX.render = function () {
  const st = VX.state;
  syncControls();
  const M = VX.current();
  const chart = document.getElementById("chart"), caption = document.getElementById("chart-caption");
  VX.tooltip(null, null);
  if (!M) {
    const why = VX.data.cka.length ? "No CKA matrix for " + VX.shownA() + " × " + VX.shownB() +
      " in this lake (no common prompt set or pooling)" : "This lake has no pooled activations, so no CKA";
    if (st.view === "heatmap") {
      chart.replaceChildren();
      VX.el("p", {class: "empty"}, chart, why + ".");
    } else if (st.view === "circuit") {
      VX.drawCircuit(chart, VX.layersOnly(VX.shownA(), VX.shownB()), st);
    } else {
      VX.drawLayers(chart, VX.layersOnly(VX.shownA(), VX.shownB()), st);
    }
    caption.textContent = why + "; click a layer to browse its features.";
  } else {
    const shown = st.view === "heatmap" ? VX.drawHeatmap(chart, M, st)
      : st.view === "circuit" ? VX.drawCircuit(chart, M, st) : VX.drawLayers(chart, M, st);
    const total = M.layersA.length * M.layersB.length;
    const every = st.view === "heatmap" || st.edges === "all";
    const what = every ? total + " layer pairs"
      : VX.edgeSet(M, st.edges).size + (st.edges === "matched" ? " matched-depth pairs" : " best-match pairs");
    caption.textContent = shown + " of " + what + " pass CKA \u2265 " + st.threshold.toFixed(2) +
      (st.hideNull && M.hasNull ? " and CKA > permutation null p95 (" + M.meta.permutations + " permutations)" : "") +
      (M.hasNull ? "" : "; no permutation null was computed");
    document.getElementById("hide-null").disabled = !M.hasNull;
  }
  drawNotes(M);
  if (st.sel) {  // keep the selection valid after a model change
    const m = VX.model(st.sel.side === "a" ? VX.shownA() : VX.shownB());
    if (!m || !m.layers.includes(st.sel.layer)) st.sel = null;
  }
  VX.drawLayerPanel(document.getElementById("layer-panel"), M);
  drawProvenance(M);
  saveHash();
};

/* What the reader must know about the matrix shown: model A = model B, a pooling's known confound. */
function drawNotes(M) {
  const host = document.getElementById("chart-notes");
  host.replaceChildren();
  const a = VX.shownA(), b = VX.shownB();
  if (VX.state.compare && a === b) {
    VX.el("p", {class: "note warn", id: "same-model-note"}, host, "Model A and model B are both " + a +
          ": this compares " + a + " with itself, so every layer matches itself with CKA 1. Choose another model B " +
          "to compare two models.");
  }
  const note = M && (VX.data.pooling_notes || {})[M.meta.pooling];
  if (note) VX.el("p", {class: "note", id: "pooling-note"}, host, "Note (" + M.meta.pooling + "): " + note + ".");
}

VX.boot = function () {
  const st = VX.state, names = VX.data.models.map((m) => m.name);
  document.getElementById("lake-name").textContent = VX.data.title || "";
  if (!VX.data.cka.length) {  // nothing to threshold or plot as a heatmap: hide those controls
    document.querySelectorAll(".cka-control").forEach((el) => { el.hidden = true; });
  }
  st.a = names[0] || null;
  st.b = names[1] || names[0] || null;
  st.compare = names.length > 1;
  loadHash(names);
  const ma = document.getElementById("model-a"), mb = document.getElementById("model-b");
  fillSelect(ma, names, st.a); fillSelect(mb, names, st.b);
  ma.disabled = mb.disabled = names.length < 2;
  ma.addEventListener("change", () => { st.a = ma.value; st.sel = null; VX.render(); });
  mb.addEventListener("change", () => { st.b = mb.value; st.sel = null; VX.render(); });
  document.getElementById("compare").addEventListener("click", () => {
    st.compare = !st.compare;
    if (st.sel && st.sel.side === "b") st.sel = null;
    VX.render();
  });
  document.getElementById("estimator").addEventListener("change", (e) => { st.estimator = e.target.value; VX.render(); });
  document.getElementById("pooling").addEventListener("change", (e) => { st.pooling = e.target.value; VX.render(); });
  const thr = document.getElementById("threshold");
  thr.value = st.threshold;
  thr.addEventListener("input", () => { st.threshold = parseFloat(thr.value); VX.render(); });
  const hn = document.getElementById("hide-null");
  hn.checked = st.hideNull;
  hn.addEventListener("change", () => { st.hideNull = hn.checked; VX.render(); });
  const edges = document.getElementById("edges");
  edges.addEventListener("change", () => { st.edges = edges.value; VX.render(); });
  document.querySelectorAll(".tabs button").forEach((btn) =>
    btn.addEventListener("click", () => { st.view = btn.dataset.view; VX.render(); }));
  VX.render();
  document.body.dataset.ready = "1";
};

VX.boot();
