"use strict";
// The traffic view (GET /status/traffic) drawn as plain SVG: a graph of who talks to whom and a
// chart of the last minutes. Appended to page.html's script by meshd_status::PAGE; uses its
// helpers (section, note, bytes, duration). As there, every value from meshd goes in as text
// (textContent) or as a number in an attribute, never as markup.
const SVG = "http://www.w3.org/2000/svg";
// Graph geometry (viewBox units): up to three columns (peers that connect in, local workloads,
// peers connected to), spread over the width, one row per node.
const GRAPH_W = 1000, MARGIN = 20, NODE_W = 260, NODE_H = 34, ROW_H = 50, TOP = 10;
// A name longer than a node box shows its tail (the full name is in the tooltip).
const NAME_CHARS = 34;
// Chart geometry.
const CHART_W = 1000, CHART_H = 200, M = {left: 44, right: 70, top: 10, bottom: 24};

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function titled(e, text) { e.appendChild(el("title", {}, text)); return e; }
function short(name) { return name.length > NAME_CHARS ? "…" + name.slice(name.length - NAME_CHARS + 1) : name; }
function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

// Column of each node: local workloads in the middle, a peer on the left when it connects in
// to a local workload, else on the right.
function columns(v) {
  const sources = new Set(v.edges.map(e => e.from)), cols = [[], [], []];
  for (const n of v.nodes) cols[n.kind === "local" ? 1 : sources.has(n.id) ? 0 : 2].push(n);
  return cols;
}

function drawGraph(v, box) {
  const cols = columns(v), at = new Map();
  const rows = Math.max(1, ...cols.map(c => c.length));
  const height = TOP * 2 + rows * ROW_H;
  const svg = el("svg", {viewBox: "0 0 " + GRAPH_W + " " + height, class: "graph", role: "img"});
  titled(svg, "who talks to whom: " + v.nodes.length + " nodes, " + v.edges.length + " edges");
  const defs = el("defs");
  for (const [verdict, colour] of [["allowed", "#0f7b3f"], ["denied", "#b42318"]]) {
    const m = el("marker", {id: "arrow-" + verdict, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 10, markerHeight: 10,
      markerUnits: "userSpaceOnUse", orient: "auto-start-reverse"});
    m.appendChild(el("path", {d: "M0,0 L10,5 L0,10 z", fill: colour}));
    defs.appendChild(m);
  }
  svg.appendChild(defs);
  // The columns in use, spread so that edges between them have room for their labels.
  const used = cols.filter(c => c.length), step = (GRAPH_W - 2 * MARGIN - NODE_W) / Math.max(1, used.length - 1);
  used.forEach((col, c) => col.forEach((n, r) => {
    // Centred vertically against the tallest column.
    const y = TOP + (rows - col.length) * ROW_H / 2 + r * ROW_H;
    at.set(n.id, {x: MARGIN + c * step, y, col: c});
  }));
  const edges = el("g"), labels = el("g"), nodes = el("g");
  for (const e of v.edges) {
    const a = at.get(e.from), b = at.get(e.to);
    if (!a || !b) continue;
    // Allowed and denied edges between the same pair bend apart.
    const bend = e.verdict === "denied" ? 9 : -9;
    let x0, x1, c0, c1;
    // Within one column (a local workload to another, or to itself): a loop out to the side
    // that has room.
    if (a.col === b.col) {
      const right = a.x + NODE_W + 90 <= GRAPH_W;
      x0 = x1 = right ? a.x + NODE_W : a.x; c0 = c1 = right ? x0 + 80 : x0 - 80;
    }
    else if (a.x < b.x) { x0 = a.x + NODE_W; x1 = b.x; c0 = c1 = (x0 + x1) / 2; }
    else { x0 = a.x; x1 = b.x + NODE_W; c0 = c1 = (x0 + x1) / 2; }
    const y0 = a.y + NODE_H / 2 + bend / 3, y1 = b.y + NODE_H / 2 + bend / 3;
    const d = "M" + x0 + "," + y0 + " C" + c0 + "," + (y0 + bend) + " " + c1 + "," + (y1 + bend) + " " + x1 + "," + y1;
    const width = 1.5 + Math.min(4, Math.log10(e.bytes + 1) / 2);
    const path = el("path", {d, class: "edge " + (e.verdict === "denied" ? "denied" : "allowed"),
      "stroke-width": width.toFixed(1), "marker-end": "url(#arrow-" + (e.verdict === "denied" ? "denied" : "allowed") + ")",
      "data-from": e.from, "data-to": e.to, "data-verdict": e.verdict});
    titled(path, e.from + " → " + e.to + ": " + e.verdict + ", " + plural(e.connections, "connection") +
      " (" + e.open + " open), " + bytes(e.bytes) + (e.policy ? ", policy " + e.policy : "") +
      (e.outcome ? ", " + e.outcome : "") + ", last seen " + e.lastSeen);
    edges.appendChild(path);
    // The label at the curve's midpoint (a cubic Bézier at t = 1/2).
    const mx = (x0 + 3 * c0 + 3 * c1 + x1) / 8, my = (y0 + 3 * (y0 + bend) + 3 * (y1 + bend) + y1) / 8;
    const text = e.verdict === "denied"
      ? plural(e.connections, "denial") + (e.policy ? " · " + e.policy : e.outcome ? " · " + e.outcome : "")
      : plural(e.connections, "conn") + " · " + bytes(e.bytes);
    labels.appendChild(el("text", {x: mx, y: my + (e.verdict === "denied" ? 12 : -4), "text-anchor": "middle",
      class: "edge-label " + (e.verdict === "denied" ? "denied" : "allowed")}, text));
  }
  for (const n of v.nodes) {
    const p = at.get(n.id), g = el("g", {class: "node " + n.kind, "data-id": n.id});
    titled(g, n.id + " (" + n.kind + ")");
    g.appendChild(el("rect", {x: p.x, y: p.y, width: NODE_W, height: NODE_H, rx: 6}));
    g.appendChild(el("text", {x: p.x + 8, y: p.y + 15}, short(n.id)));
    g.appendChild(el("text", {x: p.x + 8, y: p.y + 28, class: "kind"}, n.kind === "local" ? "local workload" : n.kind));
    nodes.appendChild(g);
  }
  svg.append(edges, nodes, labels);
  box.replaceChildren(svg);
}

function drawChart(v, box) {
  const n = v.buckets.length, slot = (CHART_W - M.left - M.right) / Math.max(1, n);
  const base = CHART_H - M.bottom, top = M.top, span = base - top;
  const maxCount = Math.max(1, ...v.buckets.map(b => Math.max(b.connections, b.denials)));
  const maxBytes = Math.max(1, ...v.buckets.map(b => b.bytes));
  const svg = el("svg", {viewBox: "0 0 " + CHART_W + " " + CHART_H, class: "chart", role: "img"});
  titled(svg, "connections, denials and bytes per " + v.bucketSeconds + " s");
  svg.appendChild(el("line", {x1: M.left, y1: base, x2: CHART_W - M.right, y2: base, class: "axis"}));
  svg.appendChild(el("line", {x1: M.left, y1: top, x2: CHART_W - M.right, y2: top, class: "axis"}));
  svg.appendChild(el("text", {x: M.left - 6, y: base, "text-anchor": "end", class: "tick"}, 0));
  svg.appendChild(el("text", {x: M.left - 6, y: top + 10, "text-anchor": "end", class: "tick"}, maxCount));
  svg.appendChild(el("text", {x: CHART_W - M.right + 6, y: top + 10, class: "tick"}, bytes(maxBytes)));
  const points = [];
  v.buckets.forEach((b, i) => {
    const x = M.left + i * slot, w = slot * 0.42;
    for (const [kind, count, dx] of [["connections", b.connections, 0], ["denials", b.denials, w]]) {
      if (!count) continue;
      const h = Math.max(1, span * count / maxCount);
      svg.appendChild(titled(el("rect", {x: x + dx + 1, y: base - h, width: w, height: h, class: "bar " + kind, "data-count": count}),
        b.start + ": " + plural(count, kind === "denials" ? "denial" : "connection")));
    }
    points.push((x + slot / 2).toFixed(1) + "," + (base - span * b.bytes / maxBytes).toFixed(1));
    // Ticks every 2.5 minutes, counted back from now.
    const back = (n - 1 - i) * v.bucketSeconds;
    if (back % 150 === 0) svg.appendChild(el("text", {x: x + slot / 2, y: CHART_H - 6, "text-anchor": "middle", class: "tick"},
      back ? "−" + back / 60 + "m" : "now"));
  });
  svg.appendChild(titled(el("polyline", {points: points.join(" "), class: "bytes-line"}), "bytes per " + v.bucketSeconds + " s"));
  box.replaceChildren(svg);
}

render.traffic = function (v) {
  const minutes = Math.round(v.bucketSeconds * v.buckets.length / 60);
  let text = "last " + minutes + " minutes, in " + v.bucketSeconds + " s steps · updated live";
  if (v.omittedEdges || v.omittedNodes)
    text += " · " + v.omittedEdges + " more edges and " + v.omittedNodes + " more nodes not drawn (at most " +
      v.maxEdges + " edges and " + v.maxNodes + " nodes, the most recently seen first)";
  if (v.forgottenEdges) text += " · " + v.forgottenEdges + " older edges forgotten (meshd keeps a bounded number)";
  note("traffic", text);
  const s = section("traffic"), sum = k => v.buckets.reduce((t, b) => t + b[k], 0);
  document.getElementById("traffic-connections").textContent = sum("connections");
  document.getElementById("traffic-denials").textContent = sum("denials");
  document.getElementById("traffic-bytes").textContent = bytes(sum("bytes"));
  drawGraph(v, s.querySelector(".graph"));
  drawChart(v, s.querySelector(".chart"));
};
