// LogitLensView: residual-stream points (rows) x tokens (columns); each cell is what the model would
// predict if the residual stream stopped there: top-1 token text in the cell, colour by the top
// probability, the target's probability or rank, or the entropy. Hover: the top-k read-out. Click:
// select (layer = row, token = column), linked with the other views. Renders from model state alone,
// so it also works in a saved notebook or a static HTML export with no kernel.

import { traitDecoder } from "./lib/decode.js";
import { rgbAt, rgbCss, textOn } from "./lib/colormap.js";
import { outline, hatch } from "./lib/heatmap.js";
import { virtualGrid, VIRTUAL_CSS } from "./lib/virtual.js";
import { h, quote, redrawOn } from "./lib/dom.js";
import { GRID_CSS } from "./lib/base_css.js";
import { scaffold, setSelection, toggleSelection, cleanup, stamp, readout, legend } from "./lib/view.js";
import { saveButton } from "./lib/save_figure.js";

/**
 * The traits of mechviz/widgets/logit_lens.py:LogitLensView (the Python <-> JS contract).
 * R rows (resid_pre of every layer, then the final resid_post), T tokens, the top k predictions.
 * @typedef {import("./lib/decode.js").Packed} Packed
 * @typedef {object} LogitLensTraits
 * @property {Packed|null} top_idx  int32 [R, T, k]: indexes `strings`
 * @property {Packed|null} top_probs  float16 [R, T, k]
 * @property {Packed|null} entropy  float16 [R, T] (nats)
 * @property {Packed|null} target_prob  float16 [R, T]; NaN: no target
 * @property {Packed|null} target_rank  int32 [R, T]; -1: no target
 * @property {string[]} strings  the predicted tokens' texts (deduplicated; untrusted)
 * @property {string[]} tokens  the T prompt tokens (untrusted)
 * @property {string[]} rows  the R row names
 * @property {string} target_label  what the target is ("next token", a token text)
 * @property {"top_prob"|"target_prob"|"target_rank"|"entropy"} color_by  written here (the colour switch)
 * @property {string} prompt
 * @property {number} seq  bumped by every show()
 * @property {number} layer  selection (linked, written here): the row
 * @property {number} token  selection (linked, written here): the column, -1 none
 * @property {string} error
 * @property {string} title
 * @typedef {import("./lib/view.js").Model<LogitLensTraits>} Model
 */

const DRAWN = ["top_idx", "top_probs", "entropy", "target_prob", "target_rank", "strings", "tokens", "rows",
  "target_label", "color_by", "prompt", "seq", "layer", "token"];

const CSS = `
.mechviz-logit-lens canvas.mv-grid{display:block;cursor:crosshair;background:#fff}
.mechviz-logit-lens .mv-info{min-height:2.8em}
`;

const MODES = [
  ["top_prob", "top-1 probability"],
  ["target_prob", "target probability"],
  ["target_rank", "target rank (log)"],
  ["entropy", "entropy (nats)"],
];
const HINT = "hover a cell: the top tokens at that layer and position; click to select (layer, token)";
const MAX_W = 56, MIN_W = 30, CELL_H = 18, TARGET_W = 900;  // long prompts scroll sideways: the text stays

// -- build ------------------------------------------------------------------------------------------
function build(model, el, S) {
  const { banner, stop } = scaffold(model, el, "logit-lens", CSS, { parts: [GRID_CSS, VIRTUAL_CSS], title: "Logit lens", extra: [saveButton(el, "logit-lens")] });
  const grid = h("canvas", { class: "mv-grid", width: 1, height: 1 });
  const ui = {
    banner,
    grid,
    colorSel: h("select", { class: "mv-color-by", "aria-label": "colour by" },
      MODES.map(([v, label]) => h("option", { value: v, text: label }))),
    legend: legend("blues"),
    shapeEl: h("span", { class: "mv-dim" }),
    vgrid: virtualGrid(grid, {
      paint: (ctx, view) => paintGrid(el, ui, S, ctx, view),
      onCol: (c) => toggleSelection(model, "token", c),
      onRow: (r) => setSelection(model, { layer: r }),
    }),
    info: readout(HINT),
  };
  ui.stop = cleanup(stop, ui.vgrid.stop);
  el.append(
    h("div", { class: "mv-controls" }, [h("label", { text: "colour by " }, [ui.colorSel]), ...ui.legend.nodes, ui.shapeEl]),
    ui.vgrid.wrap,
    ui.info.el,
  );
  return ui;
}

// -- load -------------------------------------------------------------------------------------------
function load(dec) {
  const idx = dec.get("top_idx"), probs = dec.get("top_probs");
  const ent = dec.get("entropy"), tprob = dec.get("target_prob"), trank = dec.get("target_rank");
  if (!idx || !probs) return null;
  if (probs.shape.length !== 3 || idx.shape.join() !== probs.shape.join()) {
    throw new Error(`top_idx [${idx.shape}] / top_probs [${probs.shape}] are not both [rows, tokens, k]`);
  }
  const [R, T, k] = probs.shape;
  return { idx, probs, ent, tprob, trank, R, T, k };
}

const hasTarget = (A) => {
  if (!A.tprob) return false;
  for (let i = 0; i < A.tprob.size; i++) if (!Number.isNaN(A.tprob.at(i))) return true;
  return false;
};

const maxOf = (arr, start) => {
  let mx = start;
  if (arr) for (let i = 0; i < arr.size; i++) { const v = arr.at(i); if (v > mx) mx = v; }
  return mx;
};

// the value that colours flat cell i, mapped to [0, 1] on the colour map, and the legend's ends
function scaleFor(A, mode) {
  if (mode === "entropy") {
    const mx = maxOf(A.ent, 0) || 1;
    return { cmap: "viridis", lo: "0", hi: `${mx.toFixed(2)} nats`, value: (i) => (A.ent ? A.ent.at(i) / mx : NaN) };
  }
  if (mode === "target_rank") {
    const mx = maxOf(A.trank, 10), L = Math.log1p(mx);
    return {
      cmap: "blues", lo: `rank ≥${mx}`, hi: "rank 0",
      value: (i) => { const r = A.trank ? A.trank.at(i) : -1; return r < 0 ? NaN : 1 - Math.log1p(r) / L; },
    };
  }
  if (mode === "target_prob") return { cmap: "blues", lo: "0", hi: "1", value: (i) => (A.tprob ? A.tprob.at(i) : NaN) };
  return { cmap: "blues", lo: "0", hi: "1", value: (i) => A.probs.at(i * A.k) };
}

// -- draw -------------------------------------------------------------------------------------------
function drawControls(model, ui, A) {
  const target = hasTarget(A);
  for (const o of ui.colorSel.options) o.disabled = !target && o.value.startsWith("target");
  let mode = model.get("color_by") || "top_prob";
  if (!target && mode.startsWith("target")) mode = "top_prob";
  ui.colorSel.value = mode;
  const sc = scaleFor(A, mode);
  ui.legend.set(sc.cmap, sc.lo, sc.hi, mode === "target_rank" ? "log scale: rank 0 darkest" : `${mode}: low to high`);
  const label = model.get("target_label") || "";
  ui.shapeEl.textContent = `${A.R} rows × ${A.T} tokens · top ${A.k}${target && label ? ` · target: ${label}` : ""}`;
  return { mode, sc };
}

// the visible columns [c0, c1) of the grid (ctx in content coordinates: column c at x = c * cw)
function paintGrid(el, ui, S, ctx, { c0, c1 }) {
  const { A, cw, ch, strings, sc } = S;
  if (!A || !sc) return;
  const { R, T, k } = A, x0 = c0 * cw, x1 = c1 * cw;
  const text = cw >= 26;
  ctx.font = `10px ${S.font}`;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (let r = 0; r < R; r++) {
    for (let c = c0; c < c1; c++) {
      const i = r * T + c, x = c * cw, y = r * ch;
      const rgb = rgbAt(sc.value(i), sc.cmap, 0, 1);
      ctx.fillStyle = rgbCss(rgb);
      ctx.fillRect(x, y, cw, ch);
      if (!rgb) hatch(ctx, x, y, cw, ch);
      if (text) {
        ctx.fillStyle = textOn(rgb);
        ctx.fillText(quote(strings[A.idx.at(i * k)] ?? "", 9).slice(1, -1), x + cw / 2, y + ch / 2 + 0.5, cw - 4);
      }
    }
  }
  ctx.strokeStyle = "rgba(255,255,255,0.6)"; // grid lines
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let c = Math.max(1, c0); c < c1; c++) { ctx.moveTo(c * cw + 0.5, 0); ctx.lineTo(c * cw + 0.5, R * ch); }
  for (let r = 1; r < R; r++) { ctx.moveTo(x0, r * ch + 0.5); ctx.lineTo(x1, r * ch + 0.5); }
  ctx.stroke();
  const { layer, token } = S;  // the selection: row, column
  if (layer >= 0 && layer < R) outline(ctx, 0, layer * ch, T * cw, ch, "#f59e0b", 2);
  if (token >= 0 && token < T && token >= c0 && token < c1) outline(ctx, token * cw, 0, cw, R * ch, "#f59e0b", 2);
}

function draw(model, el, ui, S) {
  S.A = ui.banner.guard(() => load(S.dec), S.A);
  const tokens = model.get("tokens") || [];
  S.rows = model.get("rows") || [];
  S.strings = model.get("strings") || [];
  stamp(el, { prompt: model.get("prompt") || "", seq: model.get("seq") ?? 0 });
  if (!S.A) { el.dataset.ntokens = "0"; return; }
  const { R, T } = S.A;
  const { mode, sc } = drawControls(model, ui, S.A);
  S.sc = sc;
  S.font = getComputedStyle(el).fontFamily || "sans-serif";
  // long prompts scroll sideways (only the visible columns are drawn): cells keep their top-1 text
  S.cw = Math.max(MIN_W, Math.min(MAX_W, Math.floor(TARGET_W / Math.max(1, T))));
  S.ch = CELL_H;
  if (tokens !== S.tokens) { S.tokens = tokens; S.tokKey = (S.tokKey | 0) + 1; }
  ui.vgrid.update({
    T, R, cw: S.cw, ch: S.ch, key: S.tokKey, vertical: S.cw < 40,
    col: (c) => ({ text: tokens[c] ?? "", title: `#${c} ${quote(tokens[c] ?? "", 60)}` }),
    rows: Array.from({ length: R }, (_, r) => ({ text: S.rows[r] ?? `row ${r}` })),
  });
  stamp(ui.grid, { cell: S.cw, cellW: S.cw, cellH: S.ch });
  const layer = model.get("layer") ?? 0, token = model.get("token") ?? -1;
  Object.assign(S, { layer, token });
  ui.vgrid.select(token, layer);
  if (token !== S.shownToken) { S.shownToken = token; ui.vgrid.reveal(token); }  // a selection from Python: into view
  ui.vgrid.repaint();
  ui.info.reset(`${model.get("seq")}|${R}|${T}`);
  let pending = 0;
  for (let i = 0; i < R * T; i++) if (S.A.idx.at(i * S.A.k) < 0) pending++;
  stamp(el, { colorBy: mode, layer, token, ntokens: T, nrows: R, pending, draws: ++S.draws });
}

// the hover read-out of cell (r, c): its top-k, entropy and the target's probability and rank
function describe(model, ui, S, r, c) {
  const { A, strings, tokens, rows } = S, { T, k } = A, i = r * T + c;
  if (A.idx.at(i * k) < 0) { // a stage of the streamed lens: this cell comes later
    ui.info.show(`${rows[r] ?? `row ${r}`} · token ${c} ${quote(tokens[c] ?? "")}\nnot computed yet (streaming)`,
      { row: r, col: c, top: "", prob: null, targetProb: null, targetRank: null, pending: 1 });
    return;
  }
  const top = [];
  for (let j = 0; j < k; j++) top.push(`${quote(strings[A.idx.at(i * k + j)] ?? "", 16)} ${A.probs.at(i * k + j).toFixed(3)}`);
  const lines = [`${rows[r] ?? `row ${r}`} · token ${c} ${quote(tokens[c] ?? "")}`, `top: ${top.join("  ")}`];
  const ent = A.ent ? A.ent.at(i) : NaN;
  if (!Number.isNaN(ent)) lines[0] += ` · entropy ${ent.toFixed(2)} nats`;
  const tp = A.tprob ? A.tprob.at(i) : NaN, tr = A.trank ? A.trank.at(i) : -1;
  const target = !Number.isNaN(tp) && tr >= 0;
  const label = model.get("target_label");
  if (target) lines.push(`target${label ? ` (${label})` : ""}: p ${tp.toFixed(4)} · rank ${tr}`);
  ui.info.show(lines.join("\n"), {
    row: r, col: c, top: strings[A.idx.at(i * k)] ?? "", prob: A.probs.at(i * k).toFixed(4),
    targetProb: target ? tp.toFixed(4) : null, targetRank: target ? tr : null,
  });
}

// -- events -----------------------------------------------------------------------------------------
function bindEvents(model, ui, S) {
  const hit = (e) => S.A && ui.vgrid.cellAt(e);
  ui.colorSel.addEventListener("change", () => setSelection(model, { color_by: ui.colorSel.value }));
  ui.grid.addEventListener("mousemove", (e) => {
    const c = hit(e);
    if (c) describe(model, ui, S, c.row, c.col);
  });
  ui.grid.addEventListener("click", (e) => {
    const c = hit(e);
    if (c) setSelection(model, { layer: c.row, token: c.col });
  });
}

/** @param {{model: Model, el: HTMLElement}} props */
function render({ model, el }) {
  const S = { dec: traitDecoder(model), A: null, sc: null, cw: MAX_W, ch: CELL_H, tokens: [], rows: [], strings: [],
    draws: 0, layer: 0, token: -1, shownToken: -1, font: "sans-serif" };
  const ui = build(model, el, S);
  bindEvents(model, ui, S);
  return cleanup(ui.stop, redrawOn(model, DRAWN, () => draw(model, el, ui, S)));
}

export default { render };
