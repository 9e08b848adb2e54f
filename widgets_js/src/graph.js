// GraphView: an attribution graph's pruned subgraph as SVG. x = token position (columns, the prompt's tokens
// under them), y = layer (embeddings at the bottom, logits on top); several features of one (layer, position)
// spread within their cell; error nodes grey squares; edges coloured by sign (Okabe-Ito vermillion / blue),
// width by |weight|. Hover a node: its top incoming and outgoing edges; click: pinned in the panel, a feature
// also asks the kernel for its top output tokens and activations (and selects it in the Lab). Shift-click
// selects several nodes (group them into a labelled supernode, or set their values for an intervention the
// kernel runs: top tokens with attention frozen and recomputed side by side). Click an edge between positions:
// the kernel splits it by attention head (and selects the largest in the Lab).
// Threshold sliders, pins, labels and groups are widget state: the kernel re-prunes and re-sends.

import { traitDecoder } from "./lib/decode.js";
import { h, clear, quote, redrawOn } from "./lib/dom.js";
import { DETAIL_CSS } from "./lib/base_css.js";
import { scaffold, setSelection, cleanup, stamp } from "./lib/view.js";
import { svg, nodeKey, layoutGraph, edgeLists } from "./lib/graph_layout.js";
import { saveButton } from "./lib/save_figure.js";

/**
 * The traits of mechviz/widgets/graph.py:GraphView (the Python <-> JS contract). N nodes, E edges.
 * @typedef {import("./lib/decode.js").Packed} Packed
 * @typedef {object} GraphTraits
 * @property {Packed|null} node_kind  int32 [N]: 0 feature, 1 error, 2 embedding, 3 logit
 * @property {Packed|null} node_layer  int32 [N]: embeddings -1, logits n_layers
 * @property {Packed|null} node_pos  int32 [N]
 * @property {Packed|null} node_feature  int32 [N]: feature index; a logit's token id; -1
 * @property {Packed|null} node_value  float32 [N]
 * @property {Packed|null} node_influence  float32 [N]
 * @property {Packed|null} node_index  int32 [N]: row in the kernel's Graph.nodes
 * @property {Packed|null} logit_token  int32 [N]: index of `strings` (-1 none)
 * @property {Packed|null} logit_prob  float32 [N]
 * @property {Packed|null} edge_src  int32 [E]: index into the node table
 * @property {Packed|null} edge_dst  int32 [E]
 * @property {Packed|null} edge_weight  float16 [E]
 * @property {string[]} strings  logit token texts (untrusted)
 * @property {string[]} tokens  the prompt's token texts (untrusted)
 * @property {number} n_layers
 * @property {string} notice  what the node / edge budget left out
 * @property {number} sent_bytes
 * @property {string} status  "" | "computing" | "ready" | "cancelled" | "error"
 * @property {number} progress
 * @property {string} stage
 * @property {number} cancel_request  bumped here (Cancel)
 * @property {number} node_threshold  written here (slider)
 * @property {number} edge_threshold  written here (slider)
 * @property {string[]} pinned  node keys, written here
 * @property {Array<{name: string, members: string[]}>} groups  written here
 * @property {Record<string, string>} labels  written here
 * @property {{key: string, id: number}|null} detail_request  written here on a feature click
 * @property {object} detail  the kernel's answer: {key, top_tokens: [[str, value]], acts: number[], ...}
 * @property {{edits: Record<string, number>, id: number}|null} intervention_request  written here (run)
 * @property {object} intervention_result  {id, edits, base, frozen, unfrozen: [[str, prob]], changes: {key: [frozen, unfrozen]}}
 * @property {{src: string, dst: string, id: number}|null} edge_request  written here on an edge click
 * @property {object} edge_result  {id, src, dst, edge, heads: [[layer, head, value, share]]}
 * @typedef {import("./lib/view.js").Model<GraphTraits>} Model
 */

const DRAWN = ["node_kind", "node_layer", "node_pos", "node_feature", "node_value", "node_influence", "node_index",
  "logit_token", "logit_prob", "edge_src", "edge_dst", "edge_weight", "strings", "tokens", "n_layers", "notice",
  "sent_bytes", "status", "progress", "stage", "node_threshold", "edge_threshold", "pinned", "groups", "labels",
  "detail", "intervention_result", "edge_result", "seq"];

const CSS = `
.mechviz-graph .mv-gmain{display:flex;gap:12px;align-items:flex-start;flex-wrap:wrap}
.mechviz-graph .mv-gwrap{overflow:auto;max-width:100%;max-height:640px;border:1px solid var(--jp-border-color2,#e2e8f0)}
.mechviz-graph svg{display:block}
.mechviz-graph svg text{fill:var(--jp-ui-font-color1,#222);font:10px var(--jp-code-font-family,monospace)}
.mechviz-graph svg .mv-rowname{fill:var(--jp-ui-font-color2,#666)}
.mechviz-graph .mv-edge{fill:none;stroke-opacity:.55;cursor:pointer}
.mechviz-graph .mv-edge.mv-pos{stroke:#d55e00}
.mechviz-graph .mv-edge.mv-neg{stroke:#0072b2}
.mechviz-graph .mv-edge.mv-lit{stroke-opacity:1}
.mechviz-graph .mv-node{cursor:pointer;stroke:var(--jp-ui-font-color1,#333);stroke-width:1}
.mechviz-graph .mv-node.mv-k0{fill:#009e73}
.mechviz-graph .mv-node.mv-k1{fill:#9ca3af}
.mechviz-graph .mv-node.mv-k2{fill:#cbd5e1}
.mechviz-graph .mv-node.mv-k3{fill:#f0e442}
.mechviz-graph .mv-node.mv-pinned{stroke-width:2.5;stroke:#cc79a7}
.mechviz-graph .mv-node.mv-selected{stroke-width:3;stroke:#e69f00}
.mechviz-graph .mv-node.mv-changed{stroke-dasharray:2 1;stroke-width:2.5;stroke:#d55e00}
.mechviz-graph .mv-group{fill:none;stroke:#cc79a7;stroke-dasharray:4 2;stroke-width:1.5}
.mechviz-graph .mv-legend-pos{color:#d55e00}
.mechviz-graph .mv-legend-neg{color:#0072b2}
.mechviz-graph .mv-gnotice{margin:2px 0;padding:2px 6px;border-left:3px solid #e69f00;font-size:11px}
.mechviz-graph .mv-bytes{font-size:10px}
.mechviz-graph .mv-detail{max-width:380px}
.mechviz-graph .mv-detail button{margin:1px 2px}
.mechviz-graph .mv-detail input{width:8em}
.mechviz-graph .mv-acts{font-family:var(--jp-code-font-family,monospace);white-space:pre-wrap}
.mechviz-graph input[type=range]{width:110px;vertical-align:middle}
.mechviz-graph .mv-results{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.mechviz-graph .mv-edits{font-family:var(--jp-code-font-family,monospace)}
`;

const HINT = "hover a node for its edges; click to keep it in this panel (a feature: its top output tokens); shift-click to select several";
const f4 = (v) => Number(v).toFixed(4);

function build(model, el) {
  const { banner, stop } = scaffold(model, el, "graph", CSS, { parts: [DETAIL_CSS], title: "Attribution graph", extra: [saveButton(el, "graph")] });
  const slider = (name, label) => {
    const input = h("input", { type: "range", min: "0", max: "1", step: "0.01", class: `mv-${name}`, "aria-label": label });
    const val = h("span", { class: "mv-dim" });
    input.addEventListener("change", () => setSelection(model, { [name]: Number(input.value) }));
    input.addEventListener("input", () => { val.textContent = Number(input.value).toFixed(2); });
    return { input, val, nodes: [h("span", { text: label }), input, val] };
  };
  const ui = {
    banner, stop,
    nodeT: slider("node_threshold", "node threshold"), edgeT: slider("edge_threshold", "edge threshold"),
    status: h("span", { class: "mv-dim mv-status" }),
    bar: h("progress", { class: "mv-progress", max: "1", value: "0", hidden: true }),
    cancel: h("button", { type: "button", class: "mv-cancel", text: "Cancel", hidden: true }),
    notice: h("div", { class: "mv-gnotice", role: "status", hidden: true }),
    bytes: h("span", { class: "mv-dim mv-bytes" }),
    wrap: h("div", { class: "mv-gwrap" }),
    panel: h("div", { class: "mv-detail" }),
    info: h("div", { class: "mv-info", text: HINT }),
    results: h("div", { class: "mv-results" }),
  };
  ui.cancel.addEventListener("click", () => setSelection(model, { cancel_request: (model.get("cancel_request") | 0) + 1 }));
  el.append(
    h("div", { class: "mv-controls" }, [...ui.nodeT.nodes, ...ui.edgeT.nodes,
      h("span", { class: "mv-legend-pos", text: "━ positive" }), h("span", { class: "mv-legend-neg", text: "━ negative" }),
      ui.status, ui.bar, ui.cancel, ui.bytes]),
    ui.notice, ui.info,
    h("div", { class: "mv-gmain" }, [ui.wrap, ui.panel]), ui.results,
  );
  return ui;
}

// -- data ---------------------------------------------------------------------------------------------
function load(dec, model) {
  const kind = dec.get("node_kind");
  if (!kind) return null;
  const get = (n) => dec.get(n);
  const G = { N: kind.size, kind, layer: get("node_layer"), pos: get("node_pos"), feat: get("node_feature"),
    value: get("node_value"), inf: get("node_influence"), index: get("node_index"), ltok: get("logit_token"),
    lprob: get("logit_prob"), src: get("edge_src"), dst: get("edge_dst"), w: get("edge_weight") };
  for (const n of ["layer", "pos", "feat", "value", "inf", "index", "ltok", "lprob"]) {
    if (!G[n] || G[n].size !== G.N) throw new Error(`graph node arrays disagree: ${n} has ${G[n] ? G[n].size : 0} of ${G.N}`);
  }
  G.E = G.src ? G.src.size : 0;
  if ((G.dst ? G.dst.size : 0) !== G.E || (G.w ? G.w.size : 0) !== G.E) throw new Error("graph edge arrays disagree");
  for (let e = 0; e < G.E; e++) {
    if (G.src.at(e) < 0 || G.src.at(e) >= G.N || G.dst.at(e) < 0 || G.dst.at(e) >= G.N) throw new Error(`edge ${e} points outside the node table`);
  }
  G.keys = Array.from({ length: G.N }, (_, i) => nodeKey(G.kind.at(i), G.layer.at(i), G.pos.at(i), G.feat.at(i)));
  G.at = new Map(G.keys.map((k, i) => [k, i]));
  G.lists = edgeLists(G);
  G.L = model.get("n_layers") | 0;
  return G;
}

function nodeName(model, G, i) {
  const k = G.kind.at(i), L = G.layer.at(i), T = G.pos.at(i);
  const strings = model.get("strings") || [], tokens = model.get("tokens") || [];
  const base = k === 0 ? `L${L}@${T} #${G.feat.at(i)}` : k === 1 ? `error L${L}@${T}`
    : k === 2 ? `emb ${quote(tokens[T] ?? "", 20)}@${T}` : `logit ${quote(strings[G.ltok.at(i)] ?? "", 20)}`;
  const label = (model.get("labels") || {})[G.keys[i]];
  return label ? `${base} “${label}”` : base;
}

// -- draw ---------------------------------------------------------------------------------------------
function drawSvg(model, ui, G, S) {
  const tokens = model.get("tokens") || [], strings = model.get("strings") || [];
  const P = layoutGraph(G, tokens.length, G.L);
  S.P = P;
  const root = svg("svg", { width: P.width, height: P.height, class: "mv-gsvg" });
  const pinned = new Set(model.get("pinned") || []), labels = model.get("labels") || {};
  const changed = S.changed || new Set();
  for (let r = 0; r < P.rows; r++) {
    const name = r === 0 ? "emb" : r === P.rows - 1 ? "logits" : `L${r - 1}`;
    root.appendChild(svg("text", { class: "mv-rowname", x: 2, y: P.rowY[r] + 4, text: name }));
  }
  tokens.forEach((tok, t) => {
    const x = P.colX(t) + P.colW(t) / 2;
    const label = svg("text", { class: "mv-tok", x, y: P.height - 6, "text-anchor": "middle", text: quote(tok, 12), data: { pos: t } });
    label.appendChild(svg("title", { text: String(tok) }));
    root.appendChild(label);
  });
  let mx = 0;
  for (let e = 0; e < G.E; e++) mx = Math.max(mx, Math.abs(G.w.at(e)));
  const edges = svg("g", { class: "mv-edges" });
  S.edgeEls = [];
  for (let e = 0; e < G.E; e++) {
    const s = G.src.at(e), d = G.dst.at(e), w = G.w.at(e);
    const line = svg("line", { class: `mv-edge ${w >= 0 ? "mv-pos" : "mv-neg"}`, x1: P.x[s], y1: P.y[s], x2: P.x[d], y2: P.y[d],
      "stroke-width": (0.4 + 3.6 * Math.abs(w) / (mx || 1)).toFixed(2), data: { edge: e, src: s, dst: d, value: f4(w) } });
    line.addEventListener("mouseenter", () => ui.info.textContent = `${nodeName(model, G, s)} → ${nodeName(model, G, d)}: ${f4(w)}`);
    line.addEventListener("click", () => {   // across positions: which attention heads carry it (the kernel)
      if (G.pos.at(s) === G.pos.at(d)) { ui.info.textContent = "this edge stays at one position: no attention head carries it"; return; }
      const id = ((model.get("edge_request") || {}).id | 0) + 1;
      setSelection(model, { edge_request: { src: G.keys[s], dst: G.keys[d], id } });
    });
    edges.appendChild(line);
    S.edgeEls.push(line);
  }
  root.appendChild(edges);
  const groups = svg("g", { class: "mv-groups" });
  (model.get("groups") || []).forEach((grp, gi) => {
    const idx = (grp.members || []).map((k) => G.at.get(k)).filter((i) => i != null);
    if (!idx.length) return;
    const xs = idx.map((i) => P.x[i]), ys = idx.map((i) => P.y[i]);
    const x0 = Math.min(...xs) - 9, y0 = Math.min(...ys) - 9, x1 = Math.max(...xs) + 9, y1 = Math.max(...ys) + 9;
    groups.appendChild(svg("rect", { class: "mv-group", x: x0, y: y0, width: x1 - x0, height: y1 - y0, rx: 4, data: { group: gi } }));
    groups.appendChild(svg("text", { class: "mv-group-name", x: x0 + 2, y: y0 - 2, text: String(grp.name ?? "") }));
  });
  root.appendChild(groups);
  const nodes = svg("g", { class: "mv-nodes" });
  S.nodeEls = [];
  for (let i = 0; i < G.N; i++) {
    const k = G.kind.at(i), x = P.x[i], y = P.y[i], key = G.keys[i];
    const cls = ["mv-node", `mv-k${k}`, pinned.has(key) ? "mv-pinned" : "", S.multi.has(key) ? "mv-selected" : "",
      changed.has(key) ? "mv-changed" : ""].filter(Boolean).join(" ");
    const data = { key, index: i, kind: k, value: f4(G.value.at(i)) };
    const el = k === 0 ? svg("circle", { class: cls, cx: x, cy: y, r: 5, data })
      : k === 3 ? svg("rect", { class: cls, x: x - 14, y: y - 6, width: 28, height: 12, rx: 2, data })
        : svg("rect", { class: cls, x: x - 4.5, y: y - 4.5, width: 9, height: 9, data });
    el.appendChild(svg("title", { text: nodeName(model, G, i) }));
    el.addEventListener("mouseenter", () => { if (S.focus == null) panel(model, ui, G, S, i); lightEdges(S, G, i); });
    el.addEventListener("click", (ev) => click(model, ui, G, S, i, ev.shiftKey));
    nodes.appendChild(el);
    S.nodeEls.push(el);
    if (k === 3) nodes.appendChild(svg("text", { x, y: y - 9, "text-anchor": "middle", text: quote(strings[G.ltok.at(i)] ?? "", 10) }));
    if (labels[key]) nodes.appendChild(svg("text", { class: "mv-user-label", x: x + 7, y: y + 3, text: String(labels[key]) }));
  }
  root.appendChild(nodes);
  clear(ui.wrap);
  ui.wrap.appendChild(root);
}

function lightEdges(S, G, i) {
  for (let e = 0; e < S.edgeEls.length; e++) S.edgeEls[e].classList.toggle("mv-lit", G.src.at(e) === i || G.dst.at(e) === i);
}

function click(model, ui, G, S, i, shift) {
  const key = G.keys[i];
  if (shift) {
    if (S.multi.has(key)) S.multi.delete(key); else S.multi.add(key);
    S.nodeEls[i].classList.toggle("mv-selected", S.multi.has(key));
  } else {
    S.focus = key;
  }
  panel(model, ui, G, S, i);
  if (!shift && G.kind.at(i) === 0) {
    const id = ((model.get("detail_request") || {}).id | 0) + 1;
    setSelection(model, { detail_request: { key, id } });
  }
}

function edgeList(model, G, items, other, cls) {
  const ol = h("ol", { class: cls });
  for (const e of items.slice(0, 10)) {
    const j = other(e);
    ol.appendChild(h("li", { class: "mv-edge-item", text: nodeName(model, G, j), data: { key: G.keys[j], value: f4(G.w.at(e)) } }));
  }
  return ol;
}

function panel(model, ui, G, S, i) {
  clear(ui.panel);
  const key = G.keys[i], k = G.kind.at(i);
  S.shown = key;
  const pinned = model.get("pinned") || [], labels = model.get("labels") || {};
  const head = h("h4", { class: "mv-node-title", text: nodeName(model, G, i), data: { key } });
  const facts = k === 0 ? `layer ${G.layer.at(i)} · position ${G.pos.at(i)} · feature ${G.feat.at(i)} · activation ${f4(G.value.at(i))}`
    : k === 3 ? `demeaned logit ${f4(G.value.at(i))} · probability ${f4(G.lprob.at(i))}`
      : `${k === 1 ? "error norm" : "embedding norm"} ${f4(G.value.at(i))}`;
  const pin = h("button", { type: "button", class: "mv-pin", text: pinned.includes(key) ? "unpin" : "pin" });
  pin.addEventListener("click", () => setSelection(model, { pinned: pinned.includes(key) ? pinned.filter((p) => p !== key) : [...pinned, key] }));
  const labelIn = h("input", { type: "text", class: "mv-label-input", value: labels[key] || "", placeholder: "label", "aria-label": "label" });
  const labelGo = h("button", { type: "button", class: "mv-label-set", text: "label" });
  labelGo.addEventListener("click", () => {
    const next = { ...labels };
    if (labelIn.value) next[key] = labelIn.value; else delete next[key];
    setSelection(model, { labels: next });
  });
  const { inc, out } = G.lists;
  ui.panel.append(head, h("div", { class: "mv-dim mv-facts", text: `${facts} · influence ${f4(G.inf.at(i))}` }),
    h("div", {}, [pin, labelIn, labelGo]),
    h("h4", { text: "top incoming edges" }), edgeList(model, G, inc[i], (e) => G.src.at(e), "mv-in"),
    h("h4", { text: "top outgoing edges" }), edgeList(model, G, out[i], (e) => G.dst.at(e), "mv-out"));
  const detail = model.get("detail") || {};
  if (k === 0 && detail.key === key) {
    const top = h("ol", { class: "mv-top-tokens" });
    for (const [s, v] of detail.top_tokens || []) top.appendChild(h("li", { text: quote(s, 30), data: { value: f4(v) } }));
    const tokens = model.get("tokens") || [];
    const acts = (detail.acts || []).map((a, t) => `${quote(tokens[t] ?? "", 14)} ${Number(a).toFixed(3)}`).join("\n");
    ui.panel.append(h("h4", { text: "top output tokens (decoder · unembedding)" }), top,
      h("h4", { text: "activation at each position" }), h("div", { class: "mv-acts", text: acts }));
  }
  selectionTools(model, ui, G, S);
  stamp(ui.panel, { key });
}

function selectionTools(model, ui, G, S) {
  const keys = [...S.multi].filter((k) => G.at.has(k));
  const groups = model.get("groups") || [];
  const box = h("div", { class: "mv-multi" }, [h("h4", { text: `selected: ${keys.length} node(s) (shift-click)` })]);
  if (keys.length) {
    const name = h("input", { type: "text", class: "mv-group-name-input", placeholder: "supernode name", "aria-label": "supernode name" });
    const go = h("button", { type: "button", class: "mv-group-go", text: "group" });
    go.addEventListener("click", () => setSelection(model, { groups: [...groups, { name: name.value || `group ${groups.length + 1}`, members: keys }] }));
    const clearSel = h("button", { type: "button", class: "mv-clear", text: "clear" });
    clearSel.addEventListener("click", () => { S.multi.clear(); S.redraw(); });
    box.append(h("div", {}, [name, go, clearSel]));
    const feats = keys.filter((k) => G.kind.at(G.at.get(k)) === 0);
    if (feats.length) {
      const value = h("input", { type: "number", class: "mv-edit-value", value: "0", step: "any", "aria-label": "value" });
      const put = (v) => { for (const k of feats) S.edits.set(k, v); S.redraw(); };
      const set = h("button", { type: "button", class: "mv-edit-set", text: "set value" });
      set.addEventListener("click", () => { const v = Number(value.value); if (Number.isFinite(v)) put(v); });
      const ablate = h("button", { type: "button", class: "mv-edit-ablate", text: "ablate" });
      ablate.addEventListener("click", () => put(0));
      box.append(h("div", {}, [h("span", { text: `${feats.length} feature(s): ` }), value, set, ablate]));
    }
  }
  const edits = [...S.edits].filter(([k]) => G.at.has(k));
  if (edits.length) {
    const list = h("div", { class: "mv-edits", text: edits.map(([k, v]) => `${nodeName(model, G, G.at.get(k))} = ${v}`).join("\n") });
    const run = h("button", { type: "button", class: "mv-run", text: "run intervention" });
    run.addEventListener("click", () => {
      const id = ((model.get("intervention_request") || {}).id | 0) + 1;
      setSelection(model, { intervention_request: { edits: Object.fromEntries(edits), id } });
    });
    const drop = h("button", { type: "button", class: "mv-edits-clear", text: "clear edits" });
    drop.addEventListener("click", () => { S.edits.clear(); S.redraw(); });
    box.append(h("h4", { text: "intervention" }), list, h("div", {}, [run, drop]));
  }
  groups.forEach((g, gi) => {
    const rm = h("button", { type: "button", class: "mv-ungroup", text: "×", title: "ungroup", data: { group: gi } });
    rm.addEventListener("click", () => setSelection(model, { groups: groups.filter((_, j) => j !== gi) }));
    box.append(h("div", { class: "mv-group-row" }, [h("span", { text: `${g.name} (${(g.members || []).length})` }), rm]));
  });
  ui.panel.append(box);
}

function topList(title, cls, rows, fmt) {
  const ol = h("ol", { class: cls });
  for (const r of rows || []) ol.appendChild(h("li", { text: quote(r[0], 30), data: { value: fmt(r) } }));
  return h("div", {}, [h("h4", { text: title }), ol]);
}

function drawResults(model, ui, G, S) {
  clear(ui.results);
  const iv = model.get("intervention_result") || {};
  S.changed = new Set(Object.keys(iv.changes || {}));
  if (iv.base) {
    const edits = Object.entries(iv.edits || {}).map(([k, v]) => `${G && G.at.has(k) ? nodeName(model, G, G.at.get(k)) : k} = ${v}`).join(", ");
    const p = (r) => Number(r[1]).toFixed(4);
    ui.results.append(h("div", { class: "mv-intervention", data: { id: iv.id | 0, changed: S.changed.size } }, [
      h("h4", { text: `intervention: ${edits} (${S.changed.size} shown feature(s) changed, ringed)` }),
      h("div", { class: "mv-results" }, [topList("model as it is", "mv-base", iv.base, p),
        topList("attention frozen", "mv-frozen", iv.frozen, p), topList("attention recomputed", "mv-unfrozen", iv.unfrozen, p)])]));
  }
  const er = model.get("edge_result") || {};
  if (er.heads && G && G.at.has(er.src) && G.at.has(er.dst)) {
    const ol = h("ol", { class: "mv-heads" });
    for (const [l, hd, v, share] of er.heads) {
      ol.appendChild(h("li", { text: `L${l}H${hd} · share ${Number(share).toFixed(3)}`, data: { layer: l, head: hd, value: f4(v), share: Number(share).toFixed(3) } }));
    }
    ui.results.append(h("div", { class: "mv-edge-heads" }, [h("h4", {
      text: `heads carrying ${nodeName(model, G, G.at.get(er.src))} → ${nodeName(model, G, G.at.get(er.dst))} (edge ${f4(er.edge)}; value, share)` }), ol]));
  }
}

function draw(model, root, ui, S) {
  const status = model.get("status") || "";
  ui.bar.hidden = ui.cancel.hidden = status !== "computing";
  ui.bar.value = model.get("progress") || 0;
  ui.status.textContent = status === "computing" ? `computing the graph… ${model.get("stage") || ""} ${Math.round((model.get("progress") || 0) * 100)}%`
    : status === "cancelled" ? (model.get("stage") || "cancelled") : "";
  const notice = model.get("notice") || "";
  ui.notice.textContent = notice;
  ui.notice.hidden = !notice;
  ui.bytes.textContent = model.get("sent_bytes") ? `${Number(model.get("sent_bytes")).toLocaleString("en-US")} bytes sent` : "";
  for (const [sl, name] of [[ui.nodeT, "node_threshold"], [ui.edgeT, "edge_threshold"]]) {
    sl.input.value = String(model.get(name));
    sl.val.textContent = Number(model.get(name)).toFixed(2);
  }
  S.G = ui.banner.guard(() => load(S.dec, model), S.G);
  const G = S.G;
  drawResults(model, ui, G, S);
  if (!G) { stamp(root, { nodes: 0, edges: 0, status }); clear(ui.wrap); return; }
  drawSvg(model, ui, G, S);
  const shown = S.focus ?? S.shown, at = shown != null ? G.at.get(shown) : undefined;   // the panel follows redraws
  if (at != null) panel(model, ui, G, S, at);
  else if (shown != null) { S.focus = S.shown = null; clear(ui.panel); }
  stamp(root, { nodes: G.N, edges: G.E, status, prompt: model.get("prompt") || "", draws: ++S.draws });
}

/** @param {{model: Model, el: HTMLElement}} props */
function render({ model, el: root }) {
  const ui = build(model, root);
  const S = { dec: traitDecoder(model), G: null, P: null, focus: null, shown: null, multi: new Set(), edits: new Map(), changed: null, draws: 0,
    nodeEls: [], edgeEls: [] };
  S.redraw = () => draw(model, root, ui, S);
  return cleanup(ui.stop, redrawOn(model, DRAWN, S.redraw));
}

export default { render };
