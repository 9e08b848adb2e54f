// LogitLensView: residual-stream points (rows) x tokens (columns); each cell is what the model would
// predict if the residual stream stopped there: top-1 token text in the cell, colour by the top
// probability, the target's probability or rank, or the entropy. Hover: the top-k read-out. Click:
// select (layer = row, token = column), linked with the other views. Renders from model state alone,
// so it also works in a saved notebook or a static HTML export with no kernel.

import { traitDecoder } from "./lib/decode.js";
import { rgbAt, rgbCss, textOn, drawLegend } from "./lib/colormap.js";
import { outline, hatch, sizeCanvas, cellAtWH } from "./lib/heatmap.js";
import { h, style, clear, quote, redrawOn } from "./lib/dom.js";

const CSS = `
.mechviz-logit-lens{font:12px/1.4 var(--jp-ui-font-family,system-ui,sans-serif);color:var(--jp-ui-font-color1,#222);padding:4px 0;max-width:100%}
.mechviz-logit-lens .mv-header{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap}
.mechviz-logit-lens .mv-title{font-weight:600;font-size:13px}
.mechviz-logit-lens .mv-prompt{color:var(--jp-ui-font-color2,#555);white-space:pre-wrap;word-break:break-word}
.mechviz-logit-lens .mv-error{display:none;margin:4px 0;padding:4px 8px;border-left:3px solid #dc2626;background:#fee2e2;color:#7f1d1d;white-space:pre-wrap}
.mechviz-logit-lens.mv-has-error .mv-error{display:block}
.mechviz-logit-lens .mv-controls{display:flex;gap:8px;align-items:center;margin:6px 0;flex-wrap:wrap}
.mechviz-logit-lens .mv-dim{color:var(--jp-ui-font-color2,#666)}
.mechviz-logit-lens canvas.mv-legend{width:96px;height:10px;image-rendering:pixelated;outline:1px solid #cbd5e1;vertical-align:middle}
.mechviz-logit-lens .mv-gridwrap{display:grid;grid-template-columns:auto auto;justify-content:start;overflow:auto;max-width:100%}
.mechviz-logit-lens .mv-colhead,.mechviz-logit-lens .mv-rowhead{display:flex;font-family:var(--jp-code-font-family,monospace);font-size:10px;color:#334155}
.mechviz-logit-lens .mv-rowhead{flex-direction:column;align-items:flex-end;padding-right:4px}
.mechviz-logit-lens .mv-collabel,.mechviz-logit-lens .mv-rowlabel{white-space:pre;overflow:hidden;text-overflow:ellipsis;cursor:pointer;box-sizing:border-box}
.mechviz-logit-lens .mv-collabel{text-align:center;padding:0 1px}
.mechviz-logit-lens .mv-collabel.mv-selected,.mechviz-logit-lens .mv-rowlabel.mv-selected{color:#b45309;font-weight:700}
.mechviz-logit-lens canvas.mv-grid{display:block;cursor:crosshair;background:#fff}
.mechviz-logit-lens .mv-info{min-height:2.8em;margin:4px 0;font-family:var(--jp-code-font-family,monospace);white-space:pre-wrap}
`;

const MODES = [
  ["top_prob", "top-1 probability"],
  ["target_prob", "target probability"],
  ["target_rank", "target rank (log)"],
  ["entropy", "entropy (nats)"],
];
const HINT = "hover a cell: the top tokens at that layer and position; click to select (layer, token)";
const MAX_W = 56, MIN_W = 30, CELL_H = 18, TARGET_W = 900;  // long prompts scroll sideways: the text stays

function render({ model, el }) {
  el.classList.add("mechviz-logit-lens");
  style(el, CSS);

  const title = h("span", { class: "mv-title" });
  const promptEl = h("span", { class: "mv-prompt" });
  const errorEl = h("div", { class: "mv-error", role: "alert" });
  const colorSel = h("select", { class: "mv-color-by", "aria-label": "colour by" },
    MODES.map(([v, label]) => h("option", { value: v, text: label })));
  const legend = h("canvas", { class: "mv-legend", width: 256, height: 1 });
  const legLo = h("span", { class: "mv-dim mv-legend-lo" });
  const legHi = h("span", { class: "mv-dim mv-legend-hi" });
  const shapeEl = h("span", { class: "mv-dim" });
  const colhead = h("div", { class: "mv-colhead" });
  const rowhead = h("div", { class: "mv-rowhead" });
  const grid = h("canvas", { class: "mv-grid", width: 1, height: 1 });
  const info = h("div", { class: "mv-info", text: HINT });
  el.append(
    h("div", { class: "mv-header" }, [title, promptEl]),
    errorEl,
    h("div", { class: "mv-controls" }, [h("label", { text: "colour by " }, [colorSel]), legLo, legend, legHi, shapeEl]),
    h("div", { class: "mv-gridwrap" }, [h("div"), colhead, rowhead, grid]),
    info,
  );

  const dec = traitDecoder(model);
  let A = null;            // {idx, probs, ent, tprob, trank, R, T, k}
  let err = "";
  let cw = MAX_W, chh = CELL_H, tokens = [], rows = [], strings = [];
  let headKey = null, draws = 0, shownKey = "";

  const setSel = (kv) => { for (const [k, v] of Object.entries(kv)) model.set(k, v); model.save_changes(); };
  colorSel.addEventListener("change", () => setSel({ color_by: colorSel.value }));

  function load() {
    try {
      const idx = dec.get("top_idx"), probs = dec.get("top_probs");
      const ent = dec.get("entropy"), tprob = dec.get("target_prob"), trank = dec.get("target_rank");
      if (!idx || !probs) { A = null; err = ""; return; }
      if (probs.shape.length !== 3 || idx.shape.join() !== probs.shape.join()) {
        throw new Error(`top_idx [${idx.shape}] / top_probs [${probs.shape}] are not both [rows, tokens, k]`);
      }
      const [R, T, k] = probs.shape;
      A = { idx, probs, ent, tprob, trank, R, T, k };
      err = "";
    } catch (e) {
      err = String((e && e.message) || e); // keep drawing the last good arrays
    }
  }

  const hasTarget = () => {
    if (!A || !A.tprob) return false;
    for (let i = 0; i < A.tprob.size; i++) if (!Number.isNaN(A.tprob.at(i))) return true;
    return false;
  };

  // the value that colours cell (r, c) and its mapping to [0, 1] on the colour map
  function scaleFor(mode) {
    if (mode === "entropy") {
      let mx = 0;
      if (A.ent) for (let i = 0; i < A.ent.size; i++) { const v = A.ent.at(i); if (v > mx) mx = v; }
      mx = mx || 1;
      return { cmap: "viridis", lo: "0", hi: `${mx.toFixed(2)} nats`, value: (i) => (A.ent ? A.ent.at(i) / mx : NaN) };
    }
    if (mode === "target_rank") {
      let mx = 10;
      if (A.trank) for (let i = 0; i < A.trank.size; i++) { const v = A.trank.at(i); if (v > mx) mx = v; }
      const L = Math.log1p(mx);
      return {
        cmap: "blues", lo: `rank ≥${mx}`, hi: "rank 0",
        value: (i) => { const r = A.trank ? A.trank.at(i) : -1; return r < 0 ? NaN : 1 - Math.log1p(r) / L; },
      };
    }
    if (mode === "target_prob") return { cmap: "blues", lo: "0", hi: "1", value: (i) => (A.tprob ? A.tprob.at(i) : NaN) };
    return { cmap: "blues", lo: "0", hi: "1", value: (i) => A.probs.at(i * A.k) };
  }

  function buildHeads() {
    const key = JSON.stringify([tokens, rows, cw, chh, A.T, A.R]);
    if (key === headKey) return;
    headKey = key;
    clear(colhead);
    clear(rowhead);
    for (let c = 0; c < A.T; c++) {
      const s = h("div", { class: "mv-collabel", data: { index: c }, title: `#${c} ${quote(tokens[c] ?? "", 60)}`,
        style: { width: `${cw}px`, minWidth: `${cw}px` }, text: String(tokens[c] ?? "") });
      s.addEventListener("click", () => setSel({ token: (model.get("token") ?? -1) === c ? -1 : c }));
      colhead.appendChild(s);
    }
    for (let r = 0; r < A.R; r++) {
      const s = h("div", { class: "mv-rowlabel", data: { index: r }, text: String(rows[r] ?? `row ${r}`),
        style: { height: `${chh}px`, lineHeight: `${chh}px` } });
      s.addEventListener("click", () => setSel({ layer: r }));
      rowhead.appendChild(s);
    }
  }

  function redraw() {
    load();
    tokens = model.get("tokens") || [];
    rows = model.get("rows") || [];
    strings = model.get("strings") || [];
    const shownErr = [model.get("error") || "", err].filter(Boolean).join("\n");
    errorEl.textContent = shownErr;
    el.classList.toggle("mv-has-error", !!shownErr);
    title.textContent = model.get("title") || "Logit lens";
    const d = el.dataset;
    d.prompt = model.get("prompt") || "";
    d.seq = String(model.get("seq") ?? 0);
    if (!A) {
      promptEl.textContent = "no data yet";
      d.ntokens = "0";
      return;
    }
    const { R, T, k } = A;
    const target = hasTarget();
    for (const o of colorSel.options) o.disabled = !target && o.value.startsWith("target");
    let mode = model.get("color_by") || "top_prob";
    if (!target && mode.startsWith("target")) mode = "top_prob";
    colorSel.value = mode;
    const sc = scaleFor(mode);
    drawLegend(legend, sc.cmap);
    legLo.textContent = sc.lo;
    legHi.textContent = sc.hi;
    legend.title = mode === "target_rank" ? "log scale: rank 0 darkest" : `${mode}: low to high`;
    const label = model.get("target_label") || "";
    shapeEl.textContent = `${R} rows × ${T} tokens · top ${k}${target && label ? ` · target: ${label}` : ""}`;
    promptEl.textContent = `prompt: ${model.get("prompt") || ""}`;

    cw = Math.max(MIN_W, Math.min(MAX_W, Math.floor(TARGET_W / Math.max(1, T))));
    chh = CELL_H;
    buildHeads();
    const ctx = sizeCanvas(grid, T * cw, R * chh);
    grid.dataset.cell = String(cw);
    grid.dataset.cellW = String(cw);
    grid.dataset.cellH = String(chh);
    ctx.clearRect(0, 0, grid.width, grid.height);
    const text = cw >= 26;
    ctx.font = `10px ${getComputedStyle(el).fontFamily || "sans-serif"}`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let r = 0; r < R; r++) {
      for (let c = 0; c < T; c++) {
        const i = r * T + c, x = c * cw, y = r * chh;
        const rgb = rgbAt(sc.value(i), sc.cmap, 0, 1);
        ctx.fillStyle = rgbCss(rgb);
        ctx.fillRect(x, y, cw, chh);
        if (!rgb) hatch(ctx, x, y, cw, chh);
        if (text) {
          const s = strings[A.idx.at(i * k)] ?? "";
          ctx.fillStyle = textOn(rgb);
          ctx.fillText(quote(s, 9).slice(1, -1), x + cw / 2, y + chh / 2 + 0.5, cw - 4);
        }
      }
    }
    // grid lines, then the selection (row = layer, column = token)
    ctx.strokeStyle = "rgba(255,255,255,0.6)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let c = 1; c < T; c++) { ctx.moveTo(c * cw + 0.5, 0); ctx.lineTo(c * cw + 0.5, R * chh); }
    for (let r = 1; r < R; r++) { ctx.moveTo(0, r * chh + 0.5); ctx.lineTo(T * cw, r * chh + 0.5); }
    ctx.stroke();
    const layer = model.get("layer") ?? 0, token = model.get("token") ?? -1;
    if (layer >= 0 && layer < R) outline(ctx, 0, layer * chh, T * cw, chh, "#f59e0b", 2);
    if (token >= 0 && token < T) outline(ctx, token * cw, 0, cw, R * chh, "#f59e0b", 2);
    for (const s of colhead.children) s.classList.toggle("mv-selected", Number(s.dataset.index) === token);
    for (const s of rowhead.children) s.classList.toggle("mv-selected", Number(s.dataset.index) === layer);

    const key = `${model.get("seq")}|${R}|${T}`;
    if (key !== shownKey) { // the hover read-out described other data: reset it
      shownKey = key;
      info.textContent = HINT;
      for (const a of ["row", "col", "top", "prob", "targetProb", "targetRank"]) delete info.dataset[a];
    }
    d.colorBy = mode;
    d.layer = String(layer);
    d.token = String(token);
    d.ntokens = String(T);
    d.nrows = String(R);
    d.draws = String(++draws);
  }


  function describe(r, c) {
    const { T, k } = A, i = r * T + c;
    const top = [];
    for (let j = 0; j < k; j++) top.push(`${quote(strings[A.idx.at(i * k + j)] ?? "", 16)} ${A.probs.at(i * k + j).toFixed(3)}`);
    const lines = [`${rows[r] ?? `row ${r}`} · token ${c} ${quote(tokens[c] ?? "")}`, `top: ${top.join("  ")}`];
    const ent = A.ent ? A.ent.at(i) : NaN;
    if (!Number.isNaN(ent)) lines[0] += ` · entropy ${ent.toFixed(2)} nats`;
    const tp = A.tprob ? A.tprob.at(i) : NaN, tr = A.trank ? A.trank.at(i) : -1;
    const ds = info.dataset;
    if (!Number.isNaN(tp) && tr >= 0) {
      lines.push(`target${model.get("target_label") ? ` (${model.get("target_label")})` : ""}: p ${tp.toFixed(4)} · rank ${tr}`);
      ds.targetProb = tp.toFixed(4);
      ds.targetRank = String(tr);
    } else {
      delete ds.targetProb;
      delete ds.targetRank;
    }
    info.textContent = lines.join("\n");
    ds.row = String(r);
    ds.col = String(c);
    ds.top = String(strings[A.idx.at(i * k)] ?? "");
    ds.prob = A.probs.at(i * k).toFixed(4);
  }

  grid.addEventListener("mousemove", (e) => {
    if (!A) return;
    const hit = cellAtWH(grid, e, cw, chh, A.R, A.T);
    if (hit) describe(hit.row, hit.col);
  });
  grid.addEventListener("click", (e) => {
    const hit = A && cellAtWH(grid, e, cw, chh, A.R, A.T);
    if (hit) setSel({ layer: hit.row, token: hit.col });
  });

  const names = ["top_idx", "top_probs", "entropy", "target_prob", "target_rank", "strings", "tokens", "rows",
    "target_label", "color_by", "prompt", "seq", "layer", "token", "error", "title"];
  return redrawOn(model, names, redraw);
}

export default { render };
