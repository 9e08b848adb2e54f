// AttentionView: per-head thumbnails of one layer, one zoomed head (row = destination token,
// column = source token), hover read-out and a clickable token strip. Renders from model state
// alone, so it also works in a saved notebook or a static HTML export with no kernel.

import { traitDecoder } from "./lib/decode.js";
import { drawHeatmap, outline } from "./lib/heatmap.js";
import { rgbAt, rgbCss, textOn } from "./lib/colormap.js";
import { h, clear, quote, redrawOn } from "./lib/dom.js";
import { binStart, maxPoolHead } from "./lib/maxpool.js";
import { GRID_CSS, TOKENS_CSS } from "./lib/base_css.js";
import { themeColours, onThemeChange } from "./lib/theme.js";
import { scaffold, setSelection, toggleSelection, cleanup, stamp, readout, legend } from "./lib/view.js";
import { saveButton } from "./lib/save_figure.js";

/**
 * The traits of mechviz/widgets/attention.py:AttentionView (the Python <-> JS contract).
 * @typedef {object} AttentionTraits
 * @property {import("./lib/decode.js").Packed|null} overview  uint8 [n_layers, n_heads, S, S]: every head max-pooled to S = min(T, 64) (bin b of T covers [floor(b*T/S), floor((b+1)*T/S)))
 * @property {import("./lib/decode.js").Packed|null} detail  uint8 [n, T, T]: heads `detail_heads` of layer `detail_layer` at full resolution (row = destination, column = source)
 * @property {number} detail_layer  the layer `detail` holds (-1: none)
 * @property {number[]} detail_heads  the heads `detail` holds
 * @property {string[]} tokens  the T token strings (untrusted text)
 * @property {string} prompt  the prompt the data belong to
 * @property {number} seq  bumped by every show()
 * @property {number} layer  selection (linked, written here): the layer shown (clamped to the data)
 * @property {number} head  selection (linked, written here): the zoomed head
 * @property {number} token  selection (linked, written here): destination token, -1 none
 * @property {number[]} windows  per layer: its sliding-window length (0 = full attention); drawn as the window's edge
 * @property {number} kv_heads  key/value heads (grouped-query attention: heads / kv_heads query heads share one)
 * @property {boolean} signed  the weights are differences in [-1, 1] (compare mode): byte b means (b - 128) / 127, drawn blue (-) to red (+)
 * @property {string} error  kernel error, shown over the last good view
 * @property {string} title
 * @typedef {import("./lib/view.js").Model<AttentionTraits>} Model
 */

// traits the drawing reads (title, prompt, error: the header and banner follow those themselves)
const DRAWN = ["overview", "detail", "detail_layer", "detail_heads", "tokens", "prompt", "seq", "layer", "head", "token", "windows", "kv_heads", "signed"];

const CSS = `
.mechviz-attention .mv-thumbs{display:flex;flex-wrap:wrap;gap:6px;padding:3px;margin-bottom:8px}
.mechviz-attention .mv-thumbbox{display:flex;flex-direction:column;align-items:center;cursor:pointer;font-size:10px}
.mechviz-attention canvas.mv-thumb{width:56px;height:56px;image-rendering:pixelated;outline:1px solid #cbd5e1;background:#fff}
.mechviz-attention .mv-thumbbox.mv-selected canvas.mv-thumb{outline:2px solid #f59e0b}
.mechviz-attention .mv-thumbbox.mv-selected{font-weight:600}
.mechviz-attention .mv-thumbbox.mv-group-start{margin-left:10px}
.mechviz-attention .mv-thumbbox .mv-kv{color:var(--jp-ui-font-color2,#666);font-size:9px}
.mechviz-attention canvas.mv-zoom{cursor:crosshair;display:block;background:#fff;image-rendering:pixelated}
.mechviz-attention canvas.mv-labels{display:block}
.mechviz-attention .mv-info{white-space:pre;will-change:transform}
`;
// .mv-info on its own compositing layer: a hover read-out then repaints only itself, not the tiles of
// the token strip under it (2,048 shaded spans), which cost every other frame at long prompts

const LEGEND = { blues: "attention weight: 0 (white) to 1 (dark blue)",
  rdbu: "difference of attention weights (A - B): blue negative, red positive, 0 white; the ends are this layer's largest |difference|" };
const ZOOM_PX = 440;   // target size of the zoomed head
const ZOOM_MAX = 1024; // the zoomed head's canvas never exceeds this (long prompts: fractional cells)
const LABEL_PX = 84;   // room for token labels
const HINT = "hover the pattern: row = destination token, column = source token; click a token to select it";

const zoomCell = (T) => (T * 4 > ZOOM_MAX ? ZOOM_MAX / T : Math.max(4, Math.min(32, Math.floor(ZOOM_PX / Math.max(1, T)))));
const POOL_KEEP = 16;  // max-pooled heads kept (about 1 MB each at 1,024 px): a layer's worth and a few more

// -- build: the DOM, once ---------------------------------------------------------------------------
function build(model, el) {
  const { banner, stop } = scaffold(model, el, "attention", CSS, { parts: [GRID_CSS, TOKENS_CSS], title: "Attention", extra: [saveButton(el, "attention")] });
  const ui = {
    banner,
    stop,
    layerSel: h("select", { class: "mv-layer", "aria-label": "layer" }),
    shapeEl: h("span", { class: "mv-dim" }),
    thumbs: h("div", { class: "mv-thumbs" }),
    zoom: h("canvas", { class: "mv-zoom", width: 1, height: 1 }),
    top: h("canvas", { class: "mv-labels mv-labels-src", width: 1, height: 1 }),
    left: h("canvas", { class: "mv-labels mv-labels-dst", width: 1, height: 1 }),
    info: readout(HINT),
    lowres: h("div", { class: "mv-dim mv-lowres" }),
    tokensEl: h("div", { class: "mv-tokens" }),
    leg: legend("blues", "0", "1", LEGEND.blues),
  };
  el.append(
    h("div", { class: "mv-controls" }, [h("label", { text: "layer " }, [ui.layerSel]), ui.shapeEl, ...ui.leg.nodes]),
    ui.thumbs,
    ui.lowres,
    h("div", { class: "mv-gridwrap" }, [h("div"), ui.top, ui.left, ui.zoom]),
    ui.info.el,
    ui.tokensEl,
  );
  return ui;
}

// -- load: decode and check the arrays (throws: the banner shows why, the last good ones stay) -----
function load(model, dec) {
  const ov = dec.get("overview"), det = dec.get("detail");
  if (!ov) return null;
  if (ov.shape.length !== 4 || ov.shape[2] !== ov.shape[3]) throw new Error(`overview shape [${ov.shape}] is not [layers, heads, S, S]`);
  const T = (model.get("tokens") || []).length;
  if (det && (det.shape.length !== 3 || det.shape[1] !== T || det.shape[2] !== T)) throw new Error(`detail shape [${det.shape}] is not [heads, ${T}, ${T}]`);
  return { ov, det, nL: ov.shape[0], nH: ov.shape[1], S: ov.shape[2], T, dLayer: model.get("detail_layer") ?? -1,
    dHeads: model.get("detail_heads") || [], signed: !!model.get("signed") };
}

// where one head's numbers are: at full resolution (detail) or pooled (overview)
function source(D, layer, head) {
  const k = D.det && D.dLayer === layer ? D.dHeads.indexOf(head) : -1;
  if (k >= 0) return { arr: D.det, off: k * D.T * D.T, n: D.T, full: true };
  return { arr: D.ov, off: (layer * D.nH + head) * D.S * D.S, n: D.S, full: false };
}

// the value drawn at (dst i, src j): exact, or the max over the overview bin holding it
const binOf = (D, src, i) => (src.full ? i : Math.min(src.n - 1, Math.floor(((i + 1) * src.n - 1) / D.T)));
// (signed data: byte b = 128 + round(127 v) of a difference v in [-1, 1]; decoded as b / 255)
const valueAt = (D, src, i, j) => {
  const v = src.arr.at(src.off + binOf(D, src, i) * src.n + binOf(D, src, j));
  return D.signed ? (255 * v - 128) / 127 : v;
};
// how much a drawn value stands out: a difference by its size, a weight by itself
const salience = (D, v) => (D.signed ? Math.abs(v) : v);
const CMAP = (D) => (D.signed ? "rdbu" : "blues");
// a difference is coloured on -m..+m, m the layer's largest |difference| (its overview holds every head's
// extremes): typical differences of 0.1 would be pale on -1..+1
function signedScale(D, layer) {
  const n = D.nH * D.S * D.S, raw = D.ov.raw;
  let m = 1;
  for (let i = layer * n, e = i + n; i < e; i++) m = Math.max(m, Math.abs(raw[i] - 128));
  return m / 127;
}
// heatmap options: weights as they are; differences (bytes 128 + 127 v, decoded as b / 255) on -m..+m
const heatOpts = (D, m) => (D.signed ? { cmap: "rdbu", vmin: (128 - 127 * m) / 255, vmax: (128 + 127 * m) / 255 }
  : { cmap: "blues" });

// the zoomed head as drawn on P x P pixels: pooled once per (data, layer, head, P) and kept (not per draw)
function pooledHead(S, src, layer, head, P) {
  const key = `${src.full}|${layer}|${head}|${P}|${S.arr.signed}`;
  const hit = S.pool.get(key);
  if (hit && hit.arr === src.arr && hit.off === src.off) {
    S.pool.delete(key); S.pool.set(key, hit); // most recently used last
    return hit.img;
  }
  const img = maxPoolHead(src.arr, src.off, src.n, P, S.arr.signed);
  S.pool.set(key, { arr: src.arr, off: src.off, img });
  S.pools++;
  while (S.pool.size > POOL_KEEP) S.pool.delete(S.pool.keys().next().value);
  return img;
}

// the cells (dst i, src j) under canvas pixel (x, y) of the zoomed head: one cell, or the block of
// cells a pixel covers when the head is drawn on fewer pixels than tokens
function cellsAt(S, x, y) {
  const { T, cell } = S;
  if (cell >= 1) {
    const i = Math.floor(y / cell), j = Math.floor(x / cell);
    return i < 0 || j < 0 || i >= T || j >= T ? null : { i0: i, i1: i + 1, j0: j, j1: j + 1 };
  }
  const P = Math.round(T * cell), py = Math.floor(y), px = Math.floor(x);
  if (py < 0 || px < 0 || py >= P || px >= P) return null;
  return { i0: binStart(py, T, P), i1: binStart(py + 1, T, P), j0: binStart(px, T, P), j1: binStart(px + 1, T, P) };
}

// the selection, clamped to what the data have (a logit-lens row may select the final residual)
function current(model, S) {
  const { nL, nH } = S.arr;
  return {
    layer: Math.max(0, Math.min(nL - 1, model.get("layer") | 0)),
    head: Math.max(0, Math.min(nH - 1, model.get("head") | 0)),
    token: model.get("token") ?? -1,
  };
}

// -- draw -------------------------------------------------------------------------------------------
// per layer: its sliding-window length (0 = full attention)
const windowOf = (model, l) => ((model.get("windows") || [])[l] | 0);

function buildLayers(model, ui, nL) {
  const key = `${nL}|${JSON.stringify(model.get("windows") || [])}`;
  if (ui.layerSel.dataset.key === key) return;
  ui.layerSel.dataset.key = key;
  clear(ui.layerSel);
  for (let l = 0; l < nL; l++) {
    const w = windowOf(model, l);
    ui.layerSel.appendChild(h("option", { value: String(l), text: w ? `${l} · window ${w}` : String(l) }));
  }
}

// grouped-query attention: heads / kv_heads query heads share one key/value head; a gap between groups
function buildThumbs(model, ui, S, nH) {
  const kv = Math.max(1, Math.min(nH, model.get("kv_heads") || nH)), size = Math.max(1, Math.round(nH / kv));
  const key = `${nH}|${kv}`;
  if (S.thumbKey === key) return;
  S.thumbKey = key;
  clear(ui.thumbs);
  S.thumbBoxes = [];
  for (let hd = 0; hd < nH; hd++) {
    const g = Math.floor(hd / size);
    const shared = size > 1 ? ` · shares key/value head ${g} with heads ${g * size}-${g * size + size - 1}` : "";
    const c = h("canvas", { class: "mv-thumb", width: 1, height: 1, data: { head: hd }, title: `head ${hd}${shared}` });
    const box = h("div", { class: size > 1 && hd > 0 && hd % size === 0 ? "mv-thumbbox mv-group-start" : "mv-thumbbox",
      data: { head: hd, kv: g }, on: { click: () => setSelection(model, { head: hd }) } },
      [c, h("span", { text: `H${hd}` }), size > 1 ? h("span", { class: "mv-kv", text: `kv ${g}` }) : null]);
    S.thumbBoxes.push({ box, c });
    ui.thumbs.appendChild(box);
  }
}

// the edge of a sliding window on the zoomed head: sources left of it (src <= dst - w) are masked
function drawWindow(ctx, T, cell, w) {
  if (!w || w >= T) return;
  ctx.save();
  ctx.strokeStyle = "#ea580c"; ctx.lineWidth = Math.max(1, Math.min(2, cell >> 2)); ctx.setLineDash([4, 3]);
  ctx.beginPath();
  ctx.moveTo(0, w * cell);
  for (let i = w; i < T; i++) { ctx.lineTo((i - w + 1) * cell, i * cell); ctx.lineTo((i - w + 1) * cell, (i + 1) * cell); }
  ctx.stroke();
  ctx.restore();
}

// the token strip: long prompts are built TOKEN_CHUNK spans per task (2,048 spans at once held the page
// for ~60 ms more in the task that draws new data); each span is shaded as it is built
const TOKEN_CHUNK = 256;
function buildTokens(model, ui, S) {
  const key = JSON.stringify(S.tokens);
  if (key === S.tokKey) return;
  S.tokKey = key;
  clear(ui.tokensEl);
  delete ui.tokensEl.dataset.complete;
  S.spans = [];
  const toks = S.tokens, gen = (S.tokGen = (S.tokGen || 0) + 1);
  let i = 0;
  const step = () => {
    if (gen !== S.tokGen) return; // newer tokens: this strip is abandoned
    const frag = document.createDocumentFragment(), end = Math.min(toks.length, i + TOKEN_CHUNK);
    for (; i < end; i++) {
      const j = i, tok = toks[j];
      const s = h("span", {
        class: /[\r\n]/.test(tok) ? "mv-token mv-nl mv-click" : "mv-token mv-click", data: { index: j },
        title: `#${j} ${quote(tok, 60)}`, text: String(tok), on: { click: () => toggleSelection(model, "token", j) },
      });
      S.spans.push(s);
      if (S.shade) shadeOne(S, s, j);
      frag.appendChild(s);
    }
    ui.tokensEl.appendChild(frag);
    if (i < toks.length) setTimeout(step, 0);
    else ui.tokensEl.dataset.complete = "true";
  };
  step();
}

// token labels on canvases beside the zoomed head: DOM labels would be thousands of nodes for long prompts
function drawLabels(el, ui, S) {
  const dpr = Math.max(1, Math.min(3, Math.round(window.devicePixelRatio || 1)));
  const { cell, T, tokens } = S;
  const ink = themeColours(el).text;  // the theme's text colour, now (a theme switch repaints)
  const key = `${S.tokKey}|${cell}|${T}|${dpr}|${ink}`;
  if (key === S.labelKey) return;
  S.labelKey = key;
  const fs = Math.max(11, Math.min(12, Math.floor(cell) - 2)); // never below 11 px: thinned instead
  const step = cell >= 13 ? 1 : Math.ceil(13 / cell); // label every step-th token when cells are small
  const n = Math.min(T, tokens.length);
  const size = (c, w, hgt) => { // backing store at device resolution: crisp text on hi-DPI screens
    c.width = w * dpr; c.height = hgt * dpr; c.style.width = `${w}px`; c.style.height = `${hgt}px`;
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return ctx;
  };
  const px = Math.round(T * cell);
  const lt = size(ui.left, LABEL_PX, px);
  const tp = size(ui.top, px, LABEL_PX);
  el.dataset.labelPx = String(fs);
  el.dataset.labelStep = String(step);
  const font = `${fs}px ${getComputedStyle(el).fontFamily || "sans-serif"}`;
  lt.font = font; lt.fillStyle = ink; lt.textAlign = "right"; lt.textBaseline = "middle";
  for (let i = 0; i < n; i += step) lt.fillText(quote(tokens[i], 14), LABEL_PX - 4, (i + 0.5) * cell, LABEL_PX - 6);
  tp.font = font; tp.fillStyle = ink; tp.textAlign = "left"; tp.textBaseline = "middle";
  for (let j = 0; j < n; j += step) {
    tp.save();
    tp.translate((j + 0.5) * cell, LABEL_PX - 4);
    tp.rotate(-Math.PI / 2);
    tp.fillText(quote(tokens[j], 14), 0, 0, LABEL_PX - 6);
    tp.restore();
  }
}

// the token strip shaded by the attention the selected destination token pays to each source token
function shadeTokens(S, src, token) {
  const { T } = S;
  const key = `${S.seq}|${src.off}|${src.full}|${token}|${S.arr.signed}|${S.scale}`;
  if (key === S.shadeKey) return; // 2,048 spans: restyle only when what they show changed
  S.shadeKey = key;
  S.shade = { src, token, T };     // spans still to be built are shaded with it too
  S.spans.forEach((s, j) => shadeOne(S, s, j));
}

function shadeOne(S, s, j) {
  const { src, token, T } = S.shade;
  s.classList.toggle("mv-selected", j === token);
  if (token >= 0 && token < T && j < T) {
    const v = valueAt(S.arr, src, token, j);
    const rgb = S.arr.signed ? rgbAt(v, "rdbu", -S.scale, S.scale) : rgbAt(v);
    s.style.background = rgbCss(rgb); s.style.color = textOn(rgb);
    s.dataset.attn = v.toFixed(3);
  } else {
    s.style.background = ""; s.style.color = "";
    delete s.dataset.attn;
  }
}

function draw(model, el, ui, S) {
  S.arr = ui.banner.guard(() => load(model, S.dec), S.arr);
  S.tokens = model.get("tokens") || [];
  if (!S.arr) { el.dataset.ntokens = "0"; return; }
  const { nL, nH, T } = S.arr;
  S.T = T;
  S.seq = model.get("seq");
  const { layer, head, token } = current(model, S);
  buildLayers(model, ui, nL);
  ui.layerSel.value = String(layer);
  buildThumbs(model, ui, S, nH);
  buildTokens(model, ui, S);
  const w = windowOf(model, layer), kv = model.get("kv_heads") || nH;
  ui.shapeEl.textContent = `${nL} layers × ${nH} heads · ${T} tokens · head ${head}` +
    (kv < nH ? ` · ${kv} key/value heads (${nH / kv} query heads each)` : "") + (w ? ` · layer ${layer}: sliding window ${w}` : "");
  ui.zoom.dataset.window = String(w);

  const D = S.arr, nS = D.S;
  const m = D.signed ? signedScale(D, layer) : 1;
  S.scale = m;
  ui.leg.set(CMAP(D), D.signed ? `-${m.toFixed(2)}` : "0", D.signed ? `+${m.toFixed(2)}` : "1", LEGEND[CMAP(D)]);
  const opts = heatOpts(D, m);
  el.dataset.signed = String(D.signed);
  S.thumbBoxes.forEach(({ box, c }, hd) => {
    drawHeatmap(c, D.ov, (layer * nH + hd) * nS * nS, nS, nS, 1, opts);
    box.classList.toggle("mv-selected", hd === head);
  });
  S.cell = zoomCell(T);
  ui.zoom.dataset.cell = String(S.cell);
  const src = source(D, layer, head);
  S.src = src;
  ui.zoom.dataset.resolution = src.full ? "full" : "overview";
  ui.lowres.textContent = src.full ? "" : `L${layer} H${head} shown at the overview's ${nS}×${nS} resolution (each block: its largest weight); ` +
    "the full pattern comes from the kernel when one is running";
  ui.lowres.hidden = src.full;
  const P = Math.round(T * S.cell);
  for (const [k, e] of S.pool) if (e.arr !== D.det && e.arr !== D.ov) S.pool.delete(k); // data replaced: let it go
  let ctx;
  if (P < src.n) { // fewer pixels than cells: each pixel the max of the cells it covers
    ctx = drawHeatmap(ui.zoom, pooledHead(S, src, layer, head, P), 0, P, P, 1, opts);
    ui.zoom.dataset.pooled = String(src.n / P);
    ui.zoom.dataset.pools = String(S.pools); // heads pooled so far (a redraw reuses its pooled head)
  } else {
    ctx = drawHeatmap(ui.zoom, src.arr, src.off, src.n, src.n, (T * S.cell) / src.n, opts);
    delete ui.zoom.dataset.pooled;
  }
  drawWindow(ctx, T, S.cell, w);
  if (token >= 0 && token < T) outline(ctx, 0, token * S.cell, T * S.cell, Math.max(1, S.cell), "#f59e0b", Math.max(1, Math.min(2, S.cell >> 2)));
  drawLabels(el, ui, S);
  shadeTokens(S, src, token);

  const infoKey = `${layer}|${head}|${model.get("seq")}|${T}`;
  if (infoKey !== S.infoKey) { S.infoKey = infoKey; S.hoverKey = null; }
  ui.info.reset(infoKey);
  stamp(el, { prompt: model.get("prompt") || "", seq: model.get("seq") ?? 0, layer, head, token, ntokens: T, draws: ++S.draws });
}

// -- events -----------------------------------------------------------------------------------------
function bindEvents(model, ui, S) {
  // canvas pixel under the mouse (the canvas may be drawn at another CSS size)
  const pixel = (e) => {
    const r = ui.zoom.getBoundingClientRect();
    return [(e.clientX - r.left) * (ui.zoom.width / (r.width || ui.zoom.width)),
      (e.clientY - r.top) * (ui.zoom.height / (r.height || ui.zoom.height))];
  };
  // the cell under the mouse, from the data in the page: when a pixel covers several cells, the one
  // with the largest weight (the one the pixel shows)
  const hit = (e) => {
    if (!S.arr || !S.src) return null;
    const b = cellsAt(S, ...pixel(e));
    if (!b) return null;
    let best = null;
    for (let i = b.i0; i < b.i1; i++) {
      for (let j = b.j0; j < b.j1; j++) {
        const v = valueAt(S.arr, S.src, i, j);
        if (best === null || salience(S.arr, v) > salience(S.arr, best.v)) best = { row: i, col: j, v };
      }
    }
    return best && { ...best, block: b };
  };
  ui.layerSel.addEventListener("change", () => setSelection(model, { layer: Number(ui.layerSel.value) }));
  ui.zoom.addEventListener("mousemove", (e) => {
    const c = hit(e);
    if (!c) return;
    const key = `${c.row}|${c.col}|${S.src.off}|${S.src.full}`;
    if (key === S.hoverKey) return; // same cell: leave the read-out (and layout) alone
    S.hoverKey = key;
    const { layer, head } = current(model, S);
    const { i0, i1, j0, j1 } = c.block;
    const many = i1 - i0 > 1 || j1 - j0 > 1;
    const where = many ? ` (largest in dst ${i0}–${i1 - 1} × src ${j0}–${j1 - 1}, one pixel)` : "";
    const res = S.src.full ? "" : " (overview block max)";
    ui.info.show(`L${layer} H${head} · dst ${c.row} ${quote(S.tokens[c.row] ?? "")} ← src ${c.col} ${quote(S.tokens[c.col] ?? "")} · ${c.v.toFixed(3)}${res}${where}`,
      { dst: c.row, src: c.col, value: c.v.toFixed(3) });
  });
  ui.zoom.addEventListener("mouseleave", () => { S.hoverKey = null; });
  ui.zoom.addEventListener("click", (e) => {
    const c = hit(e);
    if (c) setSelection(model, { token: c.row });
  });
}

/** @param {{model: Model, el: HTMLElement}} props */
function render({ model, el }) {
  const ui = build(model, el);
  const S = { dec: traitDecoder(model), arr: null, T: 0, cell: 8, tokens: [], tokKey: null, labelKey: null,
    thumbBoxes: [], thumbKey: null, spans: [], draws: 0, pool: new Map(), pools: 0, hoverKey: null };
  bindEvents(model, ui, S);
  return cleanup(ui.stop, redrawOn(model, DRAWN, () => draw(model, el, ui, S)), onThemeChange(() => drawLabels(el, ui, S)));
}

export default { render };
