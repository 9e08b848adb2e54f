// PatchGridView: an activation-patching grid that fills in as exact values stream in, drawn over
// the attribution-patching estimate (hatched, lighter) where no exact value exists yet. Colour: a
// diverging map of the normalised effect, centred on 0. Click a cell: the kernel answers with that
// patched run's top next tokens and its logit lens. Renders from model state alone.

import { traitDecoder } from "./lib/decode.js";
import { rgbAt, rgbCss } from "./lib/colormap.js";
import { outline, hatch, sizeCanvas, cellAtWH } from "./lib/heatmap.js";
import { h, clear, quote, redrawOn } from "./lib/dom.js";
import { GRID_CSS, DETAIL_CSS } from "./lib/base_css.js";
import { scaffold, setSelection, cleanup, stamp, readout, legend, labelStrips } from "./lib/view.js";
import { saveButton } from "./lib/save_figure.js";

/**
 * The traits of mechviz/widgets/patching.py:PatchGridView (the Python <-> JS contract).
 * @typedef {import("./lib/decode.js").Packed} Packed
 * @typedef {object} PatchGridTraits
 * @property {Packed|null} values  float32 [rows, cols]: the patched metric, NaN where not computed yet
 * @property {Packed|null} estimate  float32 [rows, cols]: the attribution-patching estimate (drawn where values is NaN)
 * @property {string[]} row_labels
 * @property {string[]} col_labels  (untrusted: token texts)
 * @property {number} clean_metric
 * @property {number} corrupted_metric
 * @property {string} site
 * @property {string} by  "position" | "head" | "head_position"
 * @property {"denoise"|"noise"} direction
 * @property {number} done  exact cells computed
 * @property {number} total
 * @property {string} status  "estimate" | "running" | "done" | "cancelled" | "error"
 * @property {[number, number]} cell  written here: the clicked [row, col], [-1, -1] none
 * @property {[number, number]} detail_cell  the cell the detail_* and lens_* traits describe (set by
 *   the kernel in the same update as them); the panel shows them only while it equals `cell`
 * @property {number|null} detail_metric  the patched run's metric
 * @property {string[]} detail_strs  its top next tokens (untrusted)
 * @property {Packed|null} detail_probs  float16 [k]
 * @property {string[]} lens_rows  its logit lens at the metric's position: row names
 * @property {string[][]} lens_strs  [R][k] token texts (untrusted)
 * @property {Packed|null} lens_probs  float16 [R, k]
 * @property {number} cancel_requests  written here: incremented to stop the exact computation
 * @property {string} error
 * @property {string} title
 * @typedef {import("./lib/view.js").Model<PatchGridTraits>} Model
 */

const DRAWN = ["values", "estimate", "row_labels", "col_labels", "clean_metric", "corrupted_metric", "site", "by",
  "direction", "done", "total", "status", "cell", "detail_cell", "detail_metric", "detail_strs", "detail_probs",
  "lens_rows", "lens_strs", "lens_probs"];

const CSS = `
.mechviz-patch-grid canvas.mv-legend{width:128px}
.mechviz-patch-grid .mv-progress progress{width:140px;vertical-align:middle}
.mechviz-patch-grid .mv-colhead{max-height:96px}
.mechviz-patch-grid .mv-collabel{max-height:92px}
.mechviz-patch-grid canvas.mv-grid{display:block;cursor:pointer;background:#fff}
.mechviz-patch-grid .mv-lens-row{display:flex;gap:6px;font-family:var(--jp-code-font-family,monospace);white-space:pre}
.mechviz-patch-grid .mv-lens-label{min-width:8em;color:var(--jp-ui-font-color1,#334155)}
.mechviz-patch-grid .mv-lens-tok{padding:0 3px;border:1px solid #e2e8f0;border-radius:2px}
`;

const HINT = "hover a cell for its value; click it to see that patched run";
const ESTIMATE_FADE = 0.45;  // estimate cells: their colour mixed this much towards white, then hatched
const LEGEND = {
  denoise: "(v − corrupted) / (clean − corrupted), clamped to [−1, 1]: red = the patch restores the clean behaviour; hatched = attribution estimate",
  noise: "(clean − v) / (clean − corrupted), clamped to [−1, 1]: red = the patch breaks the clean behaviour; hatched = attribution estimate",
};

// -- build ------------------------------------------------------------------------------------------
function build(model, el) {
  const subtitle = h("span", { class: "mv-dim mv-subtitle" });
  const { banner, stop } = scaffold(model, el, "patch-grid", CSS, { parts: [GRID_CSS, DETAIL_CSS], title: "Activation patching", prompt: false, extra: [subtitle, saveButton(el, "patch-grid")] });
  const grid = h("canvas", { class: "mv-grid", width: 1, height: 1 });
  const ui = {
    banner, stop, subtitle, grid,
    legendText: h("span", { class: "mv-dim mv-legend-text" }),
    bar: h("progress", { max: 1, value: 0 }),
    progText: h("span", { class: "mv-progress-text" }),
    cancel: h("button", { class: "mv-cancel", type: "button", text: "cancel", hidden: true }),
    strips: labelStrips(grid, { vertical: true }),
    info: readout(HINT),
    detail: h("div", { class: "mv-detail" }),
  };
  el.append(
    h("div", { class: "mv-controls" }, [...legend("rdbu", "−1", "+1").nodes, ui.legendText]),
    h("div", { class: "mv-controls mv-progress" }, [ui.bar, ui.progText, ui.cancel]),
    h("div", { class: "mv-main" }, [h("div", {}, [ui.strips.wrap, ui.info.el]), ui.detail]),
  );
  return ui;
}

// -- load -------------------------------------------------------------------------------------------
function load(dec) {
  const V = dec.get("values");
  if (!V) return null;
  if (V.shape.length !== 2) throw new Error(`values [${V.shape}] is not [rows, cols]`);
  const [R, C] = V.shape;
  let E = null;
  try { E = dec.get("estimate"); } catch (x) { E = null; }   // an unreadable estimate: draw without it
  return { V, E: E && E.shape.length === 2 && E.shape[0] === R && E.shape[1] === C ? E : null, R, C };
}

// share of the clean-corrupted gap: denoise (v - corrupted) / (clean - corrupted), noise
// (clean - v) / (clean - corrupted) (as PatchGrid.normalized()); 1 = the patch moves the whole gap
function norm(model, v) {
  const clean = Number(model.get("clean_metric")), bad = Number(model.get("corrupted_metric"));
  const gap = clean - bad;
  if (!Number.isFinite(v) || !gap) return NaN;
  return model.get("direction") === "noise" ? (clean - v) / gap : (v - bad) / gap;
}

// the exact value of cell (r, c), else its estimate (exact: false), else nothing (exact: null)
function cellValue(G, r, c) {
  const i = r * G.C + c;
  const v = G.V.at(i);
  if (!Number.isNaN(v)) return { v, exact: true };
  const e = G.E ? G.E.at(i) : NaN;
  if (!Number.isNaN(e)) return { v: e, exact: false };
  return { v: NaN, exact: null };
}

const tryDecode = (dec, name) => { try { return dec.get(name); } catch (x) { return null; } };
const probText = (p) => (Number.isNaN(p) ? "" : p.toFixed(4));

// -- draw -------------------------------------------------------------------------------------------
function drawProgress(model, root, ui) {
  const dir = model.get("direction") || "denoise";
  ui.subtitle.textContent = `${model.get("site") || ""} by ${model.get("by") || ""} · ${dir} · clean ${Number(model.get("clean_metric")).toFixed(3)}, corrupted ${Number(model.get("corrupted_metric")).toFixed(3)}`;
  ui.legendText.textContent = LEGEND[dir === "noise" ? "noise" : "denoise"];
  const done = model.get("done") || 0, total = model.get("total") || 0, status = model.get("status") || "";
  ui.bar.max = Math.max(1, total);
  ui.bar.value = Math.min(done, Math.max(1, total));
  ui.progText.textContent = `${done} / ${total}${status ? ` · ${status}` : ""}`;
  ui.cancel.hidden = status !== "running";
  stamp(root, { status, done, total });
}

function drawGrid(model, ui, S) {
  const { G, cell } = S, { R, C } = G;
  const ctx = sizeCanvas(ui.grid, C * cell, R * cell);
  ui.grid.dataset.cell = String(cell);
  ctx.clearRect(0, 0, ui.grid.width, ui.grid.height);
  let exactN = 0, estN = 0;
  for (let r = 0; r < R; r++) {
    for (let c = 0; c < C; c++) {
      const { v, exact } = cellValue(G, r, c), x = c * cell, y = r * cell;
      if (exact === null) { // nothing yet: blank
        ctx.fillStyle = "#f8fafc";
        ctx.fillRect(x, y, cell, cell);
        ctx.strokeStyle = "#e2e8f0";
        ctx.strokeRect(x + 0.5, y + 0.5, cell - 1, cell - 1);
        continue;
      }
      let rgb = rgbAt(Math.max(-1, Math.min(1, norm(model, v))), "rdbu", -1, 1);
      if (!exact && rgb) rgb = rgb.map((q) => Math.round(q + (255 - q) * ESTIMATE_FADE));
      ctx.fillStyle = rgbCss(rgb);
      ctx.fillRect(x, y, cell, cell);
      if (exact) exactN++;
      else { estN++; hatch(ctx, x, y, cell, cell, "rgba(71,85,105,0.45)", 6); }
    }
  }
  return { ctx, exactN, estN };
}

// the kernel's answer for the clicked cell: only when `detail_cell` says it is that cell's
function drawDetail(model, ui, S, sel) {
  const { detail } = ui;
  clear(detail);
  const cellName = (s) => `patched ${S.rows[s[0]] ?? s[0]} · ${S.cols[s[1]] ?? s[1]}`;
  if (!sel) {
    detail.dataset.cell = "";
    detail.appendChild(h("div", { class: "mv-dim", text: "click a cell to see its patched run" }));
    return;
  }
  const answered = model.get("detail_cell") || [-1, -1];
  const fresh = answered[0] === sel[0] && answered[1] === sel[1];
  detail.dataset.cell = fresh ? `${sel[0]},${sel[1]}` : "";
  detail.appendChild(h("h4", { class: "mv-detail-title", text: cellName(sel) }));
  if (!fresh) {
    detail.appendChild(h("div", { class: "mv-dim mv-detail-wait", text: "computing this cell's run… (needs the kernel)" }));
    return;
  }
  const m = model.get("detail_metric");   // a number, or null / "nan" when unknown
  if (typeof m === "number" && Number.isFinite(m)) {
    const n = norm(model, m);
    detail.appendChild(h("div", { class: "mv-detail-metric", data: { value: m.toFixed(4) },
      text: `metric ${m.toFixed(4)}${Number.isNaN(n) ? "" : ` · normalised ${n.toFixed(3)}`}` }));
  }
  const probs = tryDecode(S.dec, "detail_probs");
  const ol = h("ol", { class: "mv-detail-next" });
  (model.get("detail_strs") || []).forEach((s, j) => {
    ol.appendChild(h("li", { text: String(s), data: { prob: probText(probs && j < probs.size ? probs.at(j) : NaN) } }));
  });
  detail.append(h("div", { class: "mv-dim", text: "next token of the patched run" }), ol);
  drawLens(model, detail, tryDecode(S.dec, "lens_probs"));
}

function drawLens(model, detail, lp) {
  const lrows = model.get("lens_rows") || [], lstrs = model.get("lens_strs") || [];
  if (!lrows.length || !lstrs.length) return;
  const k = lp && lp.shape.length === 2 ? lp.shape[1] : 0;
  const lens = h("div", { class: "mv-lens" }, [h("div", { class: "mv-dim", text: "logit lens at the metric's position" })]);
  lrows.forEach((name, r) => {
    const line = h("div", { class: "mv-lens-row", data: { row: r } }, [h("span", { class: "mv-lens-label", text: String(name) })]);
    (lstrs[r] || []).forEach((s, j) => {
      const p = k && j < k ? lp.at(r * k + j) : NaN;
      line.appendChild(h("span", { class: "mv-lens-tok", text: String(s), data: { prob: probText(p) },
        title: Number.isNaN(p) ? "" : `p = ${p.toFixed(4)}` }));
    });
    lens.appendChild(line);
  });
  detail.appendChild(lens);
}

function draw(model, root, ui, S) {
  S.G = ui.banner.guard(() => load(S.dec), S.G);
  S.rows = model.get("row_labels") || [];
  S.cols = model.get("col_labels") || [];
  drawProgress(model, root, ui);
  if (!S.G) { root.dataset.rows = "0"; drawDetail(model, ui, S, null); return; }
  const { R, C } = S.G;
  S.cell = Math.max(12, Math.min(32, Math.floor(640 / Math.max(1, C))));
  ui.strips.update(
    Array.from({ length: C }, (_, c) => ({ text: S.cols[c] ?? c, title: String(S.cols[c] ?? "") })),
    Array.from({ length: R }, (_, r) => ({ text: S.rows[r] ?? r })), S.cell, S.cell);
  const { ctx, exactN, estN } = drawGrid(model, ui, S);
  const sel = model.get("cell") || [-1, -1];
  const has = sel[0] >= 0 && sel[1] >= 0 && sel[0] < R && sel[1] < C;
  if (has) outline(ctx, sel[1] * S.cell, sel[0] * S.cell, S.cell, S.cell, "#111827", 2);
  ui.strips.select(has ? sel[1] : -1, has ? sel[0] : -1);
  drawDetail(model, ui, S, has ? sel : null);
  stamp(root, { rows: R, cols: C, exact: exactN, estimated: estN, cell: has ? `${sel[0]},${sel[1]}` : "", draws: ++S.draws });
}

// -- events -----------------------------------------------------------------------------------------
function bindEvents(model, ui, S) {
  const hit = (e) => S.G && cellAtWH(ui.grid, e, S.cell, S.cell, S.G.R, S.G.C);
  ui.cancel.addEventListener("click", () => setSelection(model, { cancel_requests: (model.get("cancel_requests") || 0) + 1 }));
  ui.grid.addEventListener("mousemove", (e) => {
    const c = hit(e);
    if (!c) return;
    const { v, exact } = cellValue(S.G, c.row, c.col);
    const n = norm(model, v);
    const kind = exact === null ? "not computed yet" : exact ? "exact" : "estimate (attribution patching)";
    ui.info.show(`${S.rows[c.row] ?? c.row} · ${quote(S.cols[c.col] ?? c.col, 40)} · ` +
      (exact === null ? kind : `value ${v.toFixed(4)} · normalised ${Number.isNaN(n) ? "n/a" : n.toFixed(3)} · ${kind}`), {
      row: c.row, col: c.col, value: exact === null ? "" : v.toFixed(4),
      norm: exact === null || Number.isNaN(n) ? "" : n.toFixed(4), exact: exact === null ? "none" : exact,
    });
  });
  ui.grid.addEventListener("click", (e) => {
    const c = hit(e);
    if (c) setSelection(model, { cell: [c.row, c.col] });
  });
}

/** @param {{model: Model, el: HTMLElement}} props */
function render({ model, el }) {
  const ui = build(model, el);
  const S = { dec: traitDecoder(model), G: null, cell: 24, rows: [], cols: [], draws: 0 };
  bindEvents(model, ui, S);
  return cleanup(ui.stop, redrawOn(model, DRAWN, () => draw(model, el, ui, S)));
}

export default { render };
