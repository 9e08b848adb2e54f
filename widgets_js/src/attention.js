// AttentionView: per-head thumbnails of one layer, one zoomed head (row = destination token,
// column = source token), hover read-out and a clickable token strip. Renders from model state
// alone, so it also works in a saved notebook or a static HTML export with no kernel.

import { decode } from "./lib/decode.js";
import { drawHeatmap, outline, cellAt } from "./lib/heatmap.js";
import { cssColor } from "./lib/colormap.js";
import { h, style, clear, quote, redrawOn } from "./lib/dom.js";

const CSS = `
.mechviz-attention{font:12px/1.4 var(--jp-ui-font-family,system-ui,sans-serif);color:var(--jp-ui-font-color1,#222);padding:4px 0;max-width:100%}
.mechviz-attention .mv-header{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap}
.mechviz-attention .mv-title{font-weight:600;font-size:13px}
.mechviz-attention .mv-prompt{color:var(--jp-ui-font-color2,#555);white-space:pre-wrap;word-break:break-word}
.mechviz-attention .mv-error{display:none;margin:4px 0;padding:4px 8px;border-left:3px solid #dc2626;background:#fee2e2;color:#7f1d1d;white-space:pre-wrap}
.mechviz-attention.mv-has-error .mv-error{display:block}
.mechviz-attention .mv-controls{display:flex;gap:8px;align-items:center;margin:6px 0}
.mechviz-attention .mv-dim{color:var(--jp-ui-font-color2,#666)}
.mechviz-attention .mv-thumbs{display:flex;flex-wrap:wrap;gap:6px;padding:3px;margin-bottom:8px}
.mechviz-attention .mv-thumbbox{display:flex;flex-direction:column;align-items:center;cursor:pointer;font-size:10px}
.mechviz-attention canvas.mv-thumb{width:56px;height:56px;image-rendering:pixelated;outline:1px solid #cbd5e1;background:#fff}
.mechviz-attention .mv-thumbbox.mv-selected canvas.mv-thumb{outline:2px solid #f59e0b}
.mechviz-attention .mv-thumbbox.mv-selected{font-weight:600}
.mechviz-attention .mv-zoomgrid{display:grid;grid-template-columns:auto auto;justify-content:start;overflow:auto;max-width:100%}
.mechviz-attention canvas.mv-zoom{cursor:crosshair;display:block;background:#fff;image-rendering:pixelated}
.mechviz-attention canvas.mv-legend{width:96px;height:10px;image-rendering:pixelated;outline:1px solid #cbd5e1;vertical-align:middle}
.mechviz-attention canvas.mv-labels{display:block}
.mechviz-attention .mv-info{min-height:1.4em;margin:4px 0;font-family:var(--jp-code-font-family,monospace);white-space:pre}
.mechviz-attention .mv-tokens{display:flex;flex-wrap:wrap;gap:2px;margin-top:4px;font-family:var(--jp-code-font-family,monospace)}
.mechviz-attention .mv-token{white-space:pre;padding:1px 2px;border:1px solid #e2e8f0;border-radius:2px;cursor:pointer;background:#fff;color:#000;max-height:1.45em;overflow:hidden}
.mechviz-attention .mv-token.mv-nl::before{content:"\\21b5";color:#94a3b8}
.mechviz-attention .mv-token.mv-selected{outline:2px solid #f59e0b}
`;

const ZOOM_PX = 440;   // target size of the zoomed head
const LABEL_PX = 84;   // room for token labels
const HINT = "hover the pattern: row = destination token, column = source token; click a token to select it";

function zoomCell(T) {
  return Math.max(4, Math.min(32, Math.floor(ZOOM_PX / Math.max(1, T))));
}

function render({ model, el }) {
  el.classList.add("mechviz-attention");
  style(el, CSS);

  const title = h("span", { class: "mv-title" });
  const promptEl = h("span", { class: "mv-prompt" });
  const errorEl = h("div", { class: "mv-error", role: "alert" });
  const layerSel = h("select", { class: "mv-layer", "aria-label": "layer" });
  const shapeEl = h("span", { class: "mv-dim" });
  const legend = h("canvas", { class: "mv-legend", width: 256, height: 1, title: "attention weight: 0 (white) to 1 (dark blue)" });
  drawHeatmap(legend, { dtype: "uint8", scale: 1 / 255, raw: Uint8Array.from({ length: 256 }, (_, i) => i) }, 0, 1, 256, 1);
  const thumbs = h("div", { class: "mv-thumbs" });
  const zoom = h("canvas", { class: "mv-zoom", width: 1, height: 1 });
  const top = h("canvas", { class: "mv-labels mv-labels-src", width: 1, height: 1 });
  const left = h("canvas", { class: "mv-labels mv-labels-dst", width: 1, height: 1 });
  const info = h("div", { class: "mv-info", text: HINT });
  const tokensEl = h("div", { class: "mv-tokens" });
  el.append(
    h("div", { class: "mv-header" }, [title, promptEl]),
    errorEl,
    h("div", { class: "mv-controls" }, [h("label", { text: "layer " }, [layerSel]), shapeEl,
      h("span", { class: "mv-dim", text: "0" }), legend, h("span", { class: "mv-dim", text: "1" })]),
    thumbs,
    h("div", { class: "mv-zoomgrid" }, [h("div"), top, left, zoom]),
    info,
    tokensEl,
  );

  // what is currently drawn
  let packedRef = null, arr = null, err = "";
  let nL = 0, nH = 0, T = 0, cell = 8, tokens = [], tokKey = null, labelKey = null;
  let thumbBoxes = [], spans = [];
  let draws = 0, shownKey = "";

  const setSel = (name, v) => { model.set(name, v); model.save_changes(); };

  layerSel.addEventListener("change", () => setSel("layer", Number(layerSel.value)));

  function cur() {
    return {
      layer: Math.max(0, Math.min(nL - 1, model.get("layer") | 0)),
      head: Math.max(0, Math.min(nH - 1, model.get("head") | 0)),
      token: model.get("token") ?? -1,
    };
  }
  const base = (l, hd) => ((l * nH + hd) * T) * T;

  function decodeIfNew() {
    const packed = model.get("pattern");
    if (packed === packedRef) return;
    packedRef = packed;
    try {
      const a = decode(packed);
      if (a && (a.shape.length !== 4 || a.shape[2] !== a.shape[3])) throw new Error(`pattern shape [${a.shape}] is not [layers, heads, T, T]`);
      arr = a;
      err = "";
      [nL, nH, T] = a ? a.shape : [0, 0, 0];
    } catch (e) {
      err = String(e && e.message || e); // keep drawing the last good array
    }
  }

  function buildLayers() {
    if (layerSel.options.length === nL) return;
    clear(layerSel);
    for (let l = 0; l < nL; l++) layerSel.appendChild(h("option", { value: String(l), text: String(l) }));
  }

  function buildThumbs() {
    if (thumbBoxes.length === nH) return;
    clear(thumbs);
    thumbBoxes = [];
    for (let hd = 0; hd < nH; hd++) {
      const c = h("canvas", { class: "mv-thumb", width: 1, height: 1, data: { head: hd }, title: `head ${hd}` });
      const box = h("div", { class: "mv-thumbbox", data: { head: hd }, on: { click: () => setSel("head", hd) } },
        [c, h("span", { text: `H${hd}` })]);
      thumbBoxes.push({ box, c });
      thumbs.appendChild(box);
    }
  }

  function buildTokens() {
    const key = JSON.stringify(tokens);
    if (key === tokKey) return;
    tokKey = key;
    clear(tokensEl);
    spans = tokens.map((tok, i) => {
      const s = h("span", { class: /[\r\n]/.test(tok) ? "mv-token mv-nl" : "mv-token", data: { index: i }, title: `#${i} ${quote(tok, 60)}`, text: String(tok) });
      s.addEventListener("click", () => setSel("token", (model.get("token") ?? -1) === i ? -1 : i));
      return s;
    });
    tokensEl.append(...spans);
  }

  function drawLabels() {
    const dpr = Math.max(1, Math.min(3, Math.round(window.devicePixelRatio || 1)));
    const key = `${tokKey}|${cell}|${T}|${dpr}`;
    if (key === labelKey) return;
    labelKey = key;
    const fs = Math.max(9, Math.min(12, cell - 2));
    const step = cell >= 11 ? 1 : Math.ceil(11 / cell); // label every step-th token when cells are small
    const n = Math.min(T, tokens.length);
    const size = (c, w, hgt) => { // backing store at device resolution: crisp text on hi-DPI screens
      c.width = w * dpr; c.height = hgt * dpr; c.style.width = `${w}px`; c.style.height = `${hgt}px`;
      const ctx = c.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      return ctx;
    };
    const ok = cell >= 3; // cells too small for text: hover read-out only
    const lt = size(left, ok ? LABEL_PX : 1, T * cell);
    const tp = size(top, T * cell, ok ? LABEL_PX : 1);
    if (!ok) return;
    const font = `${fs}px ${getComputedStyle(el).fontFamily || "sans-serif"}`;
    lt.font = font; lt.fillStyle = "#333"; lt.textAlign = "right"; lt.textBaseline = "middle";
    for (let i = 0; i < n; i += step) lt.fillText(quote(tokens[i], 14), LABEL_PX - 4, (i + 0.5) * cell, LABEL_PX - 6);
    tp.font = font; tp.fillStyle = "#333"; tp.textAlign = "left"; tp.textBaseline = "middle";
    for (let j = 0; j < n; j += step) {
      tp.save();
      tp.translate((j + 0.5) * cell, LABEL_PX - 4);
      tp.rotate(-Math.PI / 2);
      tp.fillText(quote(tokens[j], 14), 0, 0, LABEL_PX - 6);
      tp.restore();
    }
  }

  function redraw() {
    decodeIfNew();
    tokens = model.get("tokens") || [];
    const modelErr = model.get("error") || "";
    const shownErr = [modelErr, err].filter(Boolean).join("\n");
    errorEl.textContent = shownErr;
    el.classList.toggle("mv-has-error", !!shownErr);
    title.textContent = model.get("title") || "Attention";
    if (!arr) {
      promptEl.textContent = "no data yet";
      el.dataset.ntokens = "0";
      return;
    }
    const { layer, head, token } = cur();
    buildLayers();
    layerSel.value = String(layer);
    buildThumbs();
    buildTokens();
    shapeEl.textContent = `${nL} layers × ${nH} heads · ${T} tokens · head ${head}`;
    promptEl.textContent = `prompt: ${model.get("prompt") || ""}`;

    thumbBoxes.forEach(({ box, c }, hd) => {
      drawHeatmap(c, arr, base(layer, hd), T, T, 1);
      box.classList.toggle("mv-selected", hd === head);
    });

    cell = zoomCell(T);
    zoom.dataset.cell = String(cell);
    const ctx = drawHeatmap(zoom, arr, base(layer, head), T, T, cell);
    if (token >= 0 && token < T) outline(ctx, 0, token * cell, T * cell, cell, "#f59e0b", Math.max(1, Math.min(2, cell >> 2)));
    drawLabels();

    spans.forEach((s, j) => {
      s.classList.toggle("mv-selected", j === token);
      if (token >= 0 && token < T && j < T) {
        const v = arr.at(base(layer, head) + token * T + j);
        const c = cssColor(v);
        s.style.background = c.bg; s.style.color = c.fg;
        s.dataset.attn = v.toFixed(3);
      } else {
        s.style.background = ""; s.style.color = "";
        delete s.dataset.attn;
      }
    });

    const key = `${layer}|${head}|${model.get("seq")}|${T}`;
    if (key !== shownKey) { // the hover read-out described other data: reset it
      shownKey = key;
      info.textContent = HINT;
      delete info.dataset.dst; delete info.dataset.src; delete info.dataset.value;
    }

    const d = el.dataset;
    d.prompt = model.get("prompt") || "";
    d.seq = String(model.get("seq") ?? 0);
    d.layer = String(layer);
    d.head = String(head);
    d.token = String(token);
    d.ntokens = String(T);
    d.draws = String(++draws);
  }


  function onHover(e) {
    if (!arr) return;
    const hit = cellAt(zoom, e, cell, T, T);
    if (!hit) return;
    const { layer, head } = cur();
    const v = arr.at(base(layer, head) + hit.row * T + hit.col);
    info.textContent = `L${layer} H${head} · dst ${hit.row} ${quote(tokens[hit.row] ?? "")} ← src ${hit.col} ${quote(tokens[hit.col] ?? "")} · ${v.toFixed(3)}`;
    info.dataset.dst = String(hit.row);
    info.dataset.src = String(hit.col);
    info.dataset.value = v.toFixed(3);
  }
  zoom.addEventListener("mousemove", onHover);
  zoom.addEventListener("click", (e) => {
    const hit = arr && cellAt(zoom, e, cell, T, T);
    if (hit) setSel("token", hit.row);
  });

  const names = ["pattern", "tokens", "prompt", "seq", "layer", "head", "token", "error", "title"];
  return redrawOn(model, names, redraw);
}

export default { render };
