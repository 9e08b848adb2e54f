// HeadGridView: one number per (layer, head) as a layers x heads heatmap (direct logit attribution, diverging
// colours; or a head detector's scores, sequential), with per-layer extra columns (DLA: attention block, MLP),
// terms beside it (embedding, biases, total) and, for DLA, a by-source-token mode ([layer x head] x tokens).
// Click a head: the shared selection's layer and head (a linked attention view opens that head).

import { traitDecoder } from "./lib/decode.js";
import { rgbAt, rgbCss } from "./lib/colormap.js";
import { outline, sizeCanvas, cellAtWH } from "./lib/heatmap.js";
import { h, clear, quote, redrawOn } from "./lib/dom.js";
import { GRID_CSS } from "./lib/base_css.js";
import { scaffold, setSelection, cleanup, stamp, readout, legend, labelStrips } from "./lib/view.js";
import { saveButton } from "./lib/save_figure.js";

/**
 * The traits of mechviz/widgets/head_grid.py:HeadGridView (the Python <-> JS contract).
 * @typedef {import("./lib/decode.js").Packed} Packed
 * @typedef {object} HeadGridTraits
 * @property {Packed|null} values  float32 [L, H] (NaN: no value)
 * @property {Packed|null} extra  float32 [L, E]: more columns per layer, named by extra_labels
 * @property {Packed|null} by_position  float32 [L * H, T]: each head by source token (optional)
 * @property {string[]} extra_labels
 * @property {Array<[string, number]>} terms  labelled numbers shown beside the grid
 * @property {string[]} tokens  (untrusted)
 * @property {string} value_label
 * @property {boolean} diverging
 * @property {number} vmin
 * @property {number} vmax
 * @property {"heads"|"position"} mode  written here by the mode switch
 * @property {number} layer  written here on click
 * @property {number} head  written here on click
 * @property {string} error
 * @property {string} title
 * @typedef {import("./lib/view.js").Model<HeadGridTraits>} Model
 */

const DRAWN = ["values", "extra", "by_position", "extra_labels", "terms", "tokens", "value_label", "diverging",
  "vmin", "vmax", "mode", "layer", "head"];

const CSS = `
.mechviz-head-grid canvas.mv-legend{width:128px}
.mechviz-head-grid canvas.mv-grid{display:block;cursor:pointer;background:#fff}
.mechviz-head-grid .mv-colhead{max-height:96px}
.mechviz-head-grid .mv-collabel{max-height:92px}
.mechviz-head-grid .mv-terms{display:flex;gap:12px;flex-wrap:wrap;font-family:var(--jp-code-font-family,monospace)}
`;

const HINT = "hover a cell for its value; click a head to open it in a linked attention view";
const fmt = (v) => (Number.isNaN(v) ? "n/a" : v.toFixed(4));

function build(model, el) {
  const subtitle = h("span", { class: "mv-dim mv-subtitle" });
  const { banner, stop } = scaffold(model, el, "head-grid", CSS, { parts: [GRID_CSS], title: "Heads", extra: [subtitle, saveButton(el, "head-grid")] });
  const grid = h("canvas", { class: "mv-grid", width: 1, height: 1 });
  const modeSel = h("select", { class: "mv-mode" }, [
    h("option", { value: "heads", text: "layer x head" }), h("option", { value: "position", text: "by source token" })]);
  modeSel.addEventListener("change", () => setSelection(model, { mode: modeSel.value }));
  const leg = legend("blues", "0", "1");
  const ui = { banner, stop, subtitle, grid, modeSel, leg, strips: labelStrips(grid, { vertical: true }),
    info: readout(HINT), terms: h("div", { class: "mv-terms" }) };
  el.append(h("div", { class: "mv-controls" }, [...leg.nodes, modeSel]), ui.terms,
    h("div", { class: "mv-main" }, [h("div", {}, [ui.strips.wrap, ui.info.el])]));
  return ui;
}

// what the grid shows now: R x C cells; cell (r, c) -> {v, layer, head (-1: a layer column), label}
function layout(model, dec) {
  const V = dec.get("values");
  if (!V) return null;
  if (V.shape.length !== 2) throw new Error(`values [${V.shape}] is not [layers, heads]`);
  const [L, H] = V.shape;
  const P = model.get("mode") === "position" ? dec.get("by_position") : null;
  if (P) {
    if (P.shape.length !== 2 || P.shape[0] !== L * H) throw new Error(`by_position [${P.shape}] is not [${L * H}, T]`);
    const toks = model.get("tokens") || [];
    return { L, H, R: L * H, C: P.shape[1], heads: H, by: true,
      rows: Array.from({ length: L * H }, (_, i) => `L${Math.floor(i / H)}H${i % H}`),
      cols: Array.from({ length: P.shape[1] }, (_, j) => String(toks[j] ?? j)),
      at: (r, c) => ({ v: P.at(r * P.shape[1] + c), layer: Math.floor(r / H), head: r % H }) };
  }
  let E = null;
  try { E = dec.get("extra"); } catch (x) { E = null; }
  const ne = E && E.shape.length === 2 && E.shape[0] === L ? E.shape[1] : 0;
  const xl = model.get("extra_labels") || [];
  return { L, H, R: L, C: H + ne, heads: H, by: false,
    rows: Array.from({ length: L }, (_, i) => `L${i}`),
    cols: [...Array.from({ length: H }, (_, j) => `H${j}`), ...Array.from({ length: ne }, (_, j) => String(xl[j] ?? `x${j}`))],
    at: (r, c) => (c < H ? { v: V.at(r * H + c), layer: r, head: c } : { v: E.at(r * ne + c - H), layer: r, head: -1 }) };
}

function draw(model, root, ui, S) {
  S.G = ui.banner.guard(() => layout(model, S.dec), S.G);
  const div = !!model.get("diverging");
  const lo = Number(model.get("vmin")), hi = Number(model.get("vmax"));
  const cmap = div ? "rdbu" : "blues";
  ui.leg.set(cmap, lo.toFixed(3), hi.toFixed(3), model.get("value_label") || "");
  ui.subtitle.textContent = model.get("value_label") || "";
  ui.modeSel.hidden = !model.get("by_position");
  ui.modeSel.value = model.get("mode") || "heads";
  clear(ui.terms);
  for (const [k, v] of model.get("terms") || []) {
    ui.terms.appendChild(h("span", { class: "mv-term", data: { label: String(k), value: fmt(Number(v)) }, text: `${k} ${fmt(Number(v))}` }));
  }
  const G = S.G;
  if (!G) { stamp(root, { rows: 0, cols: 0 }); return; }
  ui.info.reset(`${G.R}x${G.C}:${G.by}`);
  S.cell = Math.max(14, Math.min(40, Math.floor(640 / Math.max(1, G.C))));
  S.cellH = G.by ? Math.max(10, Math.min(S.cell, 22)) : S.cell;
  ui.strips.update(G.cols.map((t) => ({ text: G.by ? quote(t, 16) : t, title: t })), G.rows.map((t) => ({ text: t })), S.cell, S.cellH);
  const ctx = sizeCanvas(ui.grid, G.C * S.cell, G.R * S.cellH);
  stamp(ui.grid, { cellW: S.cell, cellH: S.cellH });
  ctx.clearRect(0, 0, ui.grid.width, ui.grid.height);
  for (let r = 0; r < G.R; r++) {
    for (let c = 0; c < G.C; c++) {
      const { v } = G.at(r, c);
      ctx.fillStyle = rgbCss(rgbAt(Math.max(lo, Math.min(hi, v)), cmap, lo, hi));
      ctx.fillRect(c * S.cell, r * S.cellH, S.cell, S.cellH);
    }
  }
  if (!G.by && G.C > G.heads) {  // a rule between the heads and the per-layer columns
    ctx.fillStyle = "#334155";
    ctx.fillRect(G.heads * S.cell - 1, 0, 2, G.R * S.cellH);
  }
  const layer = model.get("layer"), head = model.get("head");
  const selRow = G.by ? layer * G.H + head : layer;
  const ok = layer >= 0 && layer < G.L && head >= 0 && head < G.H;
  if (ok) {
    if (G.by) outline(ctx, 0, selRow * S.cellH, G.C * S.cell, S.cellH, "#111827", 2);
    else outline(ctx, head * S.cell, layer * S.cellH, S.cell, S.cellH, "#111827", 2);
  }
  ui.strips.select(ok && !G.by ? head : -1, ok ? selRow : -1);
  stamp(root, { rows: G.R, cols: G.C, mode: G.by ? "position" : "heads", layer, head, draws: ++S.draws });
}

function bindEvents(model, ui, S) {
  const hit = (e) => S.G && cellAtWH(ui.grid, e, S.cell, S.cellH, S.G.R, S.G.C);
  ui.grid.addEventListener("mousemove", (e) => {
    const c = hit(e);
    if (!c) return;
    const G = S.G, { v, layer, head } = G.at(c.row, c.col);
    const what = G.by ? `L${layer}H${head} · from ${quote(G.cols[c.col], 40)} (token ${c.col})`
      : head >= 0 ? `L${layer}H${head}` : `L${layer} ${G.cols[c.col]}`;
    ui.info.show(`${what} · ${fmt(v)}${model.get("value_label") ? ` · ${model.get("value_label")}` : ""}`,
      { row: c.row, col: c.col, layer, head, value: fmt(v) });
  });
  ui.grid.addEventListener("click", (e) => {
    const c = hit(e);
    if (!c) return;
    const { layer, head } = S.G.at(c.row, c.col);
    setSelection(model, head >= 0 ? { layer, head } : { layer });
  });
}

/** @param {{model: Model, el: HTMLElement}} props */
function render({ model, el }) {
  const ui = build(model, el);
  const S = { dec: traitDecoder(model), G: null, cell: 24, cellH: 24, draws: 0 };
  bindEvents(model, ui, S);
  return cleanup(ui.stop, redrawOn(model, DRAWN, () => draw(model, el, ui, S)));
}

export default { render };
