/* vindex view, charts: the two layer columns with CKA edges, and the heatmap of the same matrix.
 * Plain SVG built with DOM calls (no framework, no network). Everything reads one oriented
 * matrix M (see VX.matrix in viewer.js): M.layersA, M.depthA, M.layersB, M.depthB, M.cka(i, j),
 * M.null95(i, j), M.p(i, j), and VX.visible(M, i, j) for the threshold / null filters. */
"use strict";
var VX = window.VX || (window.VX = {});

const SVG_NS = "http://www.w3.org/2000/svg";

VX.svg = function (tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const k in attrs || {}) el.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(el);
  return el;
};

VX.fmt = function (v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number(v).toFixed(digits === undefined ? 3 : digits);
};

// viridis, 9 stops (matplotlib's, sampled); linear interpolation between them
const VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];
function hexRgb(h) { return [1, 3, 5].map((k) => parseInt(h.slice(k, k + 2), 16)); }
VX.color = function (v) {
  const t = Math.max(0, Math.min(1, v)) * (VIRIDIS.length - 1);
  const k = Math.min(VIRIDIS.length - 2, Math.floor(t));
  const a = hexRgb(VIRIDIS[k]), b = hexRgb(VIRIDIS[k + 1]), f = t - k;
  return "rgb(" + a.map((x, i) => Math.round(x + (b[i] - x) * f)).join(",") + ")";
};

VX.tooltip = function (evt, lines) {
  const tip = document.getElementById("tooltip");
  if (!lines) { tip.style.display = "none"; return; }
  tip.replaceChildren();
  lines.forEach((line, k) => {
    const div = document.createElement("div");
    div.textContent = line;
    if (k === 0) div.style.fontWeight = "600";
    tip.appendChild(div);
  });
  tip.style.display = "block";
  const x = Math.min(evt.clientX + 14, window.innerWidth - tip.offsetWidth - 6);
  tip.style.left = x + "px";
  tip.style.top = (evt.clientY + 14) + "px";
};

VX.pairLines = function (M, i, j) {
  const lines = [M.modelA + " L" + M.layersA[i] + " (depth " + VX.fmt(M.depthA[i], 2) + ")  ×  " +
                 M.modelB + " L" + M.layersB[j] + " (depth " + VX.fmt(M.depthB[j], 2) + ")",
                 "CKA " + VX.fmt(M.cka(i, j)) + "  (" + M.meta.estimator + ", " + M.meta.pooling + ")"];
  if (M.hasNull) lines.push("null p95 " + VX.fmt(M.null95(i, j)) + "   p " + VX.fmt(M.p(i, j)));
  return lines;
};

function depthAxis(g, y, x, ticks) {
  ticks.forEach((t) => {
    VX.svg("line", {x1: x - 4, x2: x, y1: y(t), y2: y(t)}, g);
    VX.svg("text", {x: x - 6, y: y(t) + 3, "text-anchor": "end"}, g).textContent = t.toFixed(2);
  });
}

/* Two columns of layers placed by normalized depth; an edge per layer pair of the edge mode
 * (VX.edgeSet: matched depth, best match, all) whose CKA passes the filters, stroke opacity = CKA.
 * The selected layer's edges are drawn in the accent colour. */
VX.drawLayers = function (host, M, st) {
  const n = Math.max(M.layersA.length, M.layersB.length);
  const W = 560, H = Math.max(380, Math.min(1100, 70 + 19 * n)), top = 44, bottom = 22;
  const xa = 190, xb = W - 150;
  const y = (d) => top + d * (H - top - bottom);
  const svg = VX.svg("svg", {viewBox: "0 0 " + W + " " + H, id: "layers-svg", role: "img",
                             "aria-label": "layers of " + M.modelA + " and " + M.modelB + " joined by CKA"});
  const axis = VX.svg("g", {class: "axis"}, svg);
  VX.svg("line", {x1: 58, x2: 58, y1: y(0), y2: y(1)}, axis);
  depthAxis(axis, y, 58, [0, 0.25, 0.5, 0.75, 1]);
  VX.svg("text", {x: 14, y: top - 22}, axis).textContent = "depth";
  const single = M.empty && M.self;
  VX.svg("text", {x: single ? (xa + xb) / 2 : xa, y: 18, "text-anchor": "middle", class: "col-title"}, svg).textContent = M.modelA;
  if (!single) {
    VX.svg("text", {x: xb, y: 18, "text-anchor": "middle", class: "col-title"}, svg).textContent =
      M.modelB + (M.self ? " (itself)" : "");
  }

  const sel = st.sel;
  const hotA = sel && sel.side === "a" ? M.layersA.indexOf(sel.layer) : -1;
  const hotB = sel && sel.side === "b" ? M.layersB.indexOf(sel.layer) : -1;
  const edges = VX.svg("g", {class: "edges"}, svg), hot = [];
  const only = VX.edgeSet(M, st.edges);
  let shown = 0;
  for (let i = 0; i < M.layersA.length; i++) {
    for (let j = 0; j < M.layersB.length; j++) {
      if ((only && !only.has(i + "," + j)) || !VX.visible(M, i, j)) continue;
      shown++;
      const v = Math.max(0, Math.min(1, M.cka(i, j)));
      const isHot = i === hotA || j === hotB;
      const attrs = {x1: xa, y1: y(M.depthA[i]), x2: xb, y2: y(M.depthB[j]), class: isHot ? "edge hot" : "edge",
                     "stroke-opacity": (sel && !isHot ? 0.25 * v : v).toFixed(3), "stroke-width": isHot ? 2.4 : 1.6,
                     "data-i": i, "data-j": j};
      const line = VX.svg("line", attrs, isHot ? null : edges);
      if (isHot) hot.push(line);
    }
  }
  hot.forEach((line) => edges.appendChild(line));  // on top of the others

  const column = (side, layers, depths, x, anchorLeft) => {
    const g = VX.svg("g", {class: "column", "data-side": side}, svg);
    layers.forEach((layer, k) => {
      const selected = sel && sel.side === side && sel.layer === layer;
      const node = VX.svg("g", {class: "node" + (selected ? " selected" : ""), "data-side": side, "data-layer": layer,
                                id: "node-" + side + "-" + layer, tabindex: 0}, g);
      // a transparent hit area spanning label and dot, so the whole row is clickable
      VX.svg("rect", {x: anchorLeft ? x - 44 : x - 9, y: y(depths[k]) - 8, width: 53, height: 16,
                      fill: "transparent", class: "hit"}, node);
      VX.svg("circle", {cx: x, cy: y(depths[k]), r: 6}, node);
      VX.svg("text", {x: anchorLeft ? x - 11 : x + 11, y: y(depths[k]) + 3.5,
                      "text-anchor": anchorLeft ? "end" : "start"}, node).textContent = "L" + layer;
      const pick = () => VX.select(side, layer);
      node.addEventListener("click", pick);
      node.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") pick(); });
    });
  };
  if (M.empty && M.self) {  // one model and no CKA: a single column is the whole story
    column("a", M.layersA, M.depthA, (xa + xb) / 2, true);
  } else {
    column("a", M.layersA, M.depthA, xa, true);
    column("b", M.layersB, M.depthB, xb, false);
  }

  edges.addEventListener("mousemove", (e) => {
    const t = e.target;
    if (t.tagName === "line") VX.tooltip(e, VX.pairLines(M, +t.dataset.i, +t.dataset.j));
  });
  edges.addEventListener("mouseleave", (e) => VX.tooltip(e, null));
  host.replaceChildren(svg);
  return shown;
};

/* The same matrix as a heatmap: rows = layers of A (depth down), columns = layers of B, depth axes,
 * hover shows the values, click selects the pair. Filtered cells are drawn grey. */
VX.drawHeatmap = function (host, M, st) {
  const nA = M.layersA.length, nB = M.layersB.length;
  const W = 560, left = 66, right = 70, top = 36, bottom = 54;
  const cs = Math.max(3, Math.min((W - left - right) / nB, 640 / nA, 60));
  const H = top + cs * nA + bottom;
  const svg = VX.svg("svg", {viewBox: "0 0 " + W + " " + H, id: "heatmap-svg", role: "img",
                             "aria-label": "CKA heatmap of " + M.modelA + " against " + M.modelB});
  const cells = VX.svg("g", {class: "cells"}, svg);
  const selA = st.sel && st.sel.side === "a" ? M.layersA.indexOf(st.sel.layer) : -1;
  const selB = st.sel && st.sel.side === "b" ? M.layersB.indexOf(st.sel.layer) : -1;
  let shown = 0;
  for (let i = 0; i < nA; i++) {
    for (let j = 0; j < nB; j++) {
      const v = M.cka(i, j), vis = VX.visible(M, i, j);
      if (vis) shown++;
      const cls = "cell" + (vis ? "" : " hidden") + ((i === selA || j === selB || (st.pair && st.pair[0] === i && st.pair[1] === j)) ? " sel" : "");
      VX.svg("rect", {x: left + j * cs, y: top + i * cs, width: cs, height: cs, class: cls,
                      fill: v === null ? "#fff" : VX.color(v), "data-i": i, "data-j": j,
                      "data-cka": v === null ? "" : v}, cells);
    }
  }
  // depth axes: a cell's centre sits at its layer's depth; depth maps linearly onto cell centres
  const axis = VX.svg("g", {class: "axis"}, svg);
  const pos = (depths, n, d) => (n === 1 ? 0.5 : 0.5 + (d - depths[0]) / (depths[n - 1] - depths[0]) * (n - 1)) * cs;
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  ticks.forEach((t) => {
    if (nA > 1 && t >= M.depthA[0] - 1e-9 && t <= M.depthA[nA - 1] + 1e-9) {
      const yy = top + pos(M.depthA, nA, t);
      VX.svg("line", {x1: left - 5, x2: left, y1: yy, y2: yy}, axis);
      VX.svg("text", {x: left - 7, y: yy + 3, "text-anchor": "end"}, axis).textContent = t.toFixed(2);
    }
    if (nB > 1 && t >= M.depthB[0] - 1e-9 && t <= M.depthB[nB - 1] + 1e-9) {
      const xx = left + pos(M.depthB, nB, t);
      VX.svg("line", {x1: xx, x2: xx, y1: top + cs * nA, y2: top + cs * nA + 5}, axis);
      VX.svg("text", {x: xx, y: top + cs * nA + 16, "text-anchor": "middle"}, axis).textContent = t.toFixed(2);
    }
  });
  // layer numbers along the top (B) and the right edge (A), thinned to stay legible
  const every = Math.max(1, Math.ceil(22 / cs));
  M.layersB.forEach((l, j) => {
    if (j % every === 0) VX.svg("text", {x: left + (j + 0.5) * cs, y: top - 3, "text-anchor": "middle", class: "legend"}, axis).textContent = "L" + l;
  });
  M.layersA.forEach((l, i) => {
    if (i % every === 0) VX.svg("text", {x: left + nB * cs + 3, y: top + (i + 0.5) * cs + 3, class: "legend"}, axis).textContent = "L" + l;
  });
  VX.svg("text", {x: left + cs * nB / 2, y: top + cs * nA + 34, "text-anchor": "middle", class: "col-title"}, svg)
    .textContent = M.modelB + " — normalized depth";
  const yt = VX.svg("text", {x: 14, y: top + cs * nA / 2, "text-anchor": "middle", class: "col-title",
                             transform: "rotate(-90 14 " + (top + cs * nA / 2) + ")"}, svg);
  yt.textContent = M.modelA + " — normalized depth";
  VX.svg("text", {x: left, y: top - 16, class: "legend"}, svg).textContent =
    "CKA (" + M.meta.estimator + ", " + M.meta.pooling + "); grey = below threshold or null";

  // colour legend
  const defs = VX.svg("defs", {}, svg);
  const grad = VX.svg("linearGradient", {id: "vx-grad", x1: 0, y1: 1, x2: 0, y2: 0}, defs);
  VIRIDIS.forEach((c, k) => VX.svg("stop", {offset: (k / (VIRIDIS.length - 1)).toFixed(3), "stop-color": c}, grad));
  const lx = W - right + 30, lh = Math.min(160, cs * nA);
  VX.svg("rect", {x: lx, y: top, width: 10, height: lh, fill: "url(#vx-grad)"}, svg);
  [0, 0.5, 1].forEach((t) => {
    VX.svg("text", {x: lx + 14, y: top + lh * (1 - t) + 3, class: "legend"}, svg).textContent = t.toFixed(1);
  });

  cells.addEventListener("mousemove", (e) => {
    const t = e.target;
    if (t.tagName === "rect") VX.tooltip(e, VX.pairLines(M, +t.dataset.i, +t.dataset.j));
  });
  cells.addEventListener("mouseleave", (e) => VX.tooltip(e, null));
  cells.addEventListener("click", (e) => {
    const t = e.target;
    if (t.tagName === "rect") VX.selectPair(+t.dataset.i, +t.dataset.j);
  });
  host.replaceChildren(svg);
  return shown;
};

/* The flattened 2D circuit: normalized depth runs left to right, model A on the upper track and
 * model B on the lower one. Inside a track, an arc joins an attention head's layer to the layer
 * whose FFN it feeds most (OV-gate coupling, summed over the page's strongest heads; opacity =
 * coupling / the model's largest). Between the tracks, the CKA edges of the edge mode. */
VX.drawCircuit = function (host, M, st) {
  const W = 560, left = 40, right = 30, yA = 150, yB = 330, H = 480;
  const x = (d) => left + d * (W - left - right);
  const svg = VX.svg("svg", {viewBox: "0 0 " + W + " " + H, id: "circuit-svg", role: "img",
                             "aria-label": "circuit of " + M.modelA + " and " + M.modelB + " by normalized depth"});
  const axis = VX.svg("g", {class: "axis"}, svg);
  [0, 0.25, 0.5, 0.75, 1].forEach((t) => {
    VX.svg("line", {x1: x(t), x2: x(t), y1: H - 30, y2: H - 25}, axis);
    VX.svg("text", {x: x(t), y: H - 13, "text-anchor": "middle"}, axis).textContent = t.toFixed(2);
  });
  VX.svg("text", {x: W / 2, y: H - 1, "text-anchor": "middle", class: "legend"}, axis).textContent = "normalized depth";
  const single = M.empty && M.self;
  const tracks = [["a", M.modelA, M.layersA, M.depthA, yA, -1]];
  if (!single) tracks.push(["b", M.modelB + (M.self ? " (itself)" : ""), M.layersB, M.depthB, yB, 1]);
  const sel = st.sel;

  // heads -> FFN arcs per model (payload.heads[model][feature_layer] = [{layer, head, total_coupling}])
  const arcs = VX.svg("g", {class: "arcs"}, svg);
  tracks.forEach(([side, , layers, depths, y0, dir]) => {
    const model = side === "a" ? M.modelA : M.modelB, byFl = (VX.data.heads || {})[model] || {};
    const sum = {};
    Object.keys(byFl).forEach((fl) => byFl[fl].forEach((h) => {
      const k = h.layer + ">" + fl;
      sum[k] = (sum[k] || 0) + (h.total_coupling || 0);
    }));
    const max = Math.max.apply(null, Object.values(sum).concat([1e-12]));
    const pos = (layer) => { const k = layers.indexOf(layer); return k < 0 ? null : x(depths[k]); };
    Object.entries(sum).forEach(([k, v]) => {
      const [from, to] = k.split(">").map(Number), x1 = pos(from), x2 = pos(to);
      if (x1 === null || x2 === null) return;
      const hgt = 14 + Math.min(90, Math.abs(x2 - x1) * 0.45);
      const hotArc = sel && sel.side === side && (sel.layer === from || sel.layer === to);
      VX.svg("path", {d: "M" + x1 + "," + y0 + " Q" + ((x1 + x2) / 2) + "," + (y0 + dir * 2 * hgt) + " " + (x2 + (x1 === x2 ? 6 : 0)) + "," + y0,
                      class: "arc" + (hotArc ? " hot" : ""), "stroke-opacity": (0.15 + 0.85 * v / max).toFixed(3),
                      "data-model": model, "data-from": from, "data-to": to, "data-coupling": v}, arcs)
        .appendChild(VX.svg("title", {})).textContent = model + ": heads of L" + from + " \u2192 FFN of L" + to +
          ", OV-gate coupling " + VX.fmt(v, 2);
    });
  });

  // CKA edges between the tracks
  const edges = VX.svg("g", {class: "edges"}, svg);
  let shown = 0;
  if (!single && !M.empty) {
    const only = VX.edgeSet(M, st.edges);
    for (let i = 0; i < M.layersA.length; i++) {
      for (let j = 0; j < M.layersB.length; j++) {
        if ((only && !only.has(i + "," + j)) || !VX.visible(M, i, j)) continue;
        shown++;
        const isHot = sel && ((sel.side === "a" && sel.layer === M.layersA[i]) || (sel.side === "b" && sel.layer === M.layersB[j]));
        VX.svg("line", {x1: x(M.depthA[i]), y1: yA, x2: x(M.depthB[j]), y2: yB, class: isHot ? "edge hot" : "edge",
                        "stroke-opacity": Math.max(0, Math.min(1, M.cka(i, j))).toFixed(3), "stroke-width": isHot ? 2.4 : 1.6,
                        "data-i": i, "data-j": j}, edges);
      }
    }
    edges.addEventListener("mousemove", (e) => {
      const t = e.target;
      if (t.tagName === "line") VX.tooltip(e, VX.pairLines(M, +t.dataset.i, +t.dataset.j));
    });
    edges.addEventListener("mouseleave", (e) => VX.tooltip(e, null));
  }

  tracks.forEach(([side, title, layers, depths, y0, dir]) => {
    const g = VX.svg("g", {class: "column", "data-side": side}, svg);
    VX.svg("text", {x: 4, y: y0 + dir * 118, class: "col-title"}, g).textContent = title;
    layers.forEach((layer, k) => {
      const selected = sel && sel.side === side && sel.layer === layer;
      const node = VX.svg("g", {class: "node" + (selected ? " selected" : ""), "data-side": side, "data-layer": layer,
                                id: "cnode-" + side + "-" + layer, tabindex: 0}, g);
      VX.svg("circle", {cx: x(depths[k]), cy: y0, r: 5}, node);
      const every = Math.max(1, Math.ceil(layers.length / 16));
      if (k % every === 0 || selected) {
        VX.svg("text", {x: x(depths[k]), y: y0 - dir * 12 + 3.5, "text-anchor": "middle"}, node).textContent = "L" + layer;
      }
      const pick = () => VX.select(side, layer);
      node.addEventListener("click", pick);
      node.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") pick(); });
    });
  });
  host.replaceChildren(svg);
  return shown;
};
