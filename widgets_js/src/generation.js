// SteeringView: the prompt's continuation without and with SAE features steered, side by side as token chips
// (shaded by each token's probability; the top-k alternatives on hover), controls for the features steered
// (add, remove, value, mode, which one the sweep shows), positions and n, a strength-sweep line plot (SVG) of
// the selected feature with its current value marked, and its Neuronpedia link. Every control writes ONE
// trait, `request`; the kernel answers with new data (or `error`, the shown data kept).

import { traitDecoder } from "./lib/decode.js";
import { rgbAt, rgbCss, textOn } from "./lib/colormap.js";
import { h, clear, quote, redrawOn } from "./lib/dom.js";
import { TOKENS_CSS, DETAIL_CSS } from "./lib/base_css.js";
import { scaffold, cleanup, stamp, readout, parseFeature, parseValue } from "./lib/view.js";
import { saveButton } from "./lib/save_figure.js";

/**
 * The traits of mechviz/widgets/generation.py:SteeringView (the Python <-> JS contract). n generated
 * tokens per column, k alternatives per token, V sweep values.
 * @typedef {import("./lib/decode.js").Packed} Packed
 * @typedef {{feature: number, value: number, mode: "clamp"|"scale"}} Spec
 * @typedef {object} SteeringTraits
 * @property {string[]} tokens  the prompt's tokens (untrusted)
 * @property {string[]} base_strs  the unsteered continuation's tokens (untrusted)
 * @property {string[]} steered_strs  the steered continuation's tokens (untrusted; [] without features)
 * @property {Packed|null} base_prob  float32 [n]: each chosen token's probability
 * @property {Packed|null} steered_prob  float32 [n]
 * @property {string[][]} base_alt  [n][k] the most likely tokens at each step (untrusted)
 * @property {string[][]} steered_alt
 * @property {Packed|null} base_alt_prob  float32 [n, k]
 * @property {Packed|null} steered_alt_prob  float32 [n, k]
 * @property {string[]} stopped  why each column ended: "n" | "eos"
 * @property {Spec[]} specs  the features steered
 * @property {"all"|"prompt"} positions
 * @property {number} n
 * @property {number} selected  the spec the sweep shows
 * @property {string} steering  label of the steering shown ("" none)
 * @property {Packed|null} sweep_values  float32 [V]
 * @property {Packed|null} sweep_metric  float32 [V]
 * @property {string} sweep_label
 * @property {string[]} sweep_top  the likeliest next token at each sweep value (untrusted)
 * @property {number} sweep_feature  -1: no sweep
 * @property {number} sweep_current  the selected feature's value (marked)
 * @property {string} neuronpedia  the selected feature's Neuronpedia page ("" none)
 * @property {{specs: Spec[], positions: string, n: number, selected: number, id: number}|null} request
 *   written here, ONE trait per request; `id` is one more than the last request's
 * @property {boolean} busy
 * @property {string} progress
 * @property {string} prompt
 * @property {string} error
 * @property {string} title
 * @typedef {import("./lib/view.js").Model<SteeringTraits>} Model
 */

const DRAWN = ["tokens", "base_strs", "steered_strs", "base_prob", "steered_prob", "base_alt", "steered_alt",
  "base_alt_prob", "steered_alt_prob", "stopped", "specs", "positions", "n", "selected", "steering", "sweep_values",
  "sweep_metric", "sweep_label", "sweep_top", "sweep_feature", "sweep_current", "neuronpedia", "busy", "progress", "seq"];

const CSS = `
.mechviz-generation .mv-cols{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.mechviz-generation .mv-col{flex:1 1 280px;min-width:240px;max-width:560px}
.mechviz-generation .mv-col .mv-token{cursor:default}
.mechviz-generation .mv-col-steered h4{color:#b45309}
.mechviz-generation .mv-specs{border-collapse:collapse;margin:4px 0}
.mechviz-generation .mv-specs td{padding:1px 4px}
.mechviz-generation .mv-specs tr.mv-selected{background:#fef3c7}
.mechviz-generation input.mv-num{width:6em}
.mechviz-generation .mv-controls{display:flex;gap:6px;align-items:center;flex-wrap:wrap;margin:4px 0}
.mechviz-generation .mv-progress{color:#b45309}
.mechviz-generation .mv-steer-msg{color:#b91c1c}
.mechviz-generation.mv-busy .mv-cols{opacity:.5}
.mechviz-generation svg.mv-sweep{background:#fff;border:1px solid #e2e8f0}
.mechviz-generation .mv-prompt-tokens .mv-token{color:#64748b}
`;

const W = 320, H = 170, PAD = { l: 46, r: 10, t: 10, b: 32 };
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}, text = null) => {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text != null) el.textContent = text;
  return el;
};


/** Send ONE request: the current settings with `patch` applied. */
function send(model, patch) {
  const prev = model.get("request") || {};
  const specs = (model.get("specs") || []).map((s) => ({ feature: s.feature, value: s.value, mode: s.mode }));
  model.set("request", { specs, positions: model.get("positions") || "all", n: model.get("n") | 0,
    selected: model.get("selected") | 0, ...patch, id: (prev.id | 0) + 1 });
  model.save_changes();
}

function build(model, el) {
  const subtitle = h("span", { class: "mv-dim mv-subtitle mv-steering" });
  const { banner, stop } = scaffold(model, el, "generation", CSS, { parts: [TOKENS_CSS, DETAIL_CSS],
    title: "Steering: generated text", extra: [subtitle, saveButton(el, "generation")] });
  const ui = { banner, stop, subtitle, msg: h("span", { class: "mv-steer-msg" }) };
  ui.specs = h("table", { class: "mv-specs" });
  ui.fIn = h("input", { class: "mv-num mv-add-feature", type: "text", placeholder: "feature id" });
  ui.vIn = h("input", { class: "mv-num mv-add-value", type: "text", value: "10" });
  ui.modeSel = h("select", { class: "mv-add-mode" }, [h("option", { value: "clamp", text: "clamp to" }),
    h("option", { value: "scale", text: "scale by" })]);
  ui.add = h("button", { class: "mv-add", text: "add feature" });
  ui.posSel = h("select", { class: "mv-positions" }, [h("option", { value: "all", text: "all positions (generated too)" }),
    h("option", { value: "prompt", text: "prompt positions only" })]);
  ui.nIn = h("input", { class: "mv-num mv-n", type: "number", min: "1" });
  ui.progress = h("span", { class: "mv-progress" });
  ui.link = h("a", { class: "mv-neuronpedia", target: "_blank", rel: "noopener noreferrer", text: "" });
  ui.prompt = h("div", { class: "mv-tokens mv-prompt-tokens" });
  ui.base = h("div", { class: "mv-tokens mv-gen mv-gen-base" });
  ui.steered = h("div", { class: "mv-tokens mv-gen mv-gen-steered" });
  ui.baseH = h("h4", { text: "unsteered" });
  ui.steeredH = h("h4", { text: "steered" });
  ui.plot = svg("svg", { class: "mv-sweep", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  ui.plotCap = h("div", { class: "mv-dim mv-sweep-caption" });
  ui.info = readout("hover a generated token for its probability and the alternatives");
  el.append(
    ui.specs,
    h("div", { class: "mv-controls" }, [ui.fIn, ui.modeSel, ui.vIn, ui.add, ui.msg]),
    h("div", { class: "mv-controls" }, [h("span", { text: "steer" }), ui.posSel, h("span", { text: "tokens" }), ui.nIn,
      ui.progress, ui.link]),
    ui.prompt,
    h("div", { class: "mv-cols" }, [h("div", { class: "mv-col mv-col-base" }, [ui.baseH, ui.base]),
      h("div", { class: "mv-col mv-col-steered" }, [ui.steeredH, ui.steered])]),
    ui.info.el,
    h("div", { class: "mv-sweep-wrap" }, [ui.plotCap, ui.plot]));
  return ui;
}

function bindControls(model, ui) {
  ui.add.addEventListener("click", () => {
    const f = parseFeature(ui.fIn.value), v = parseValue(ui.vIn.value);
    if (f == null || v == null) {
      ui.msg.textContent = f == null ? "type a feature id (a whole number)" : "type a finite value";
      return;
    }
    ui.msg.textContent = "";
    const specs = (model.get("specs") || []).filter((s) => s.feature !== f);
    specs.push({ feature: f, value: v, mode: ui.modeSel.value });
    send(model, { specs, selected: specs.length - 1 });
  });
  ui.posSel.addEventListener("change", () => send(model, { positions: ui.posSel.value }));
  ui.nIn.addEventListener("change", () => {
    const n = parseFeature(ui.nIn.value);
    if (n == null || n < 1) { ui.msg.textContent = "tokens: a whole number >= 1"; return; }
    ui.msg.textContent = "";
    send(model, { n });
  });
}

function drawSpecs(model, ui) {
  clear(ui.specs);
  const specs = model.get("specs") || [], sel = model.get("selected") | 0;
  specs.forEach((s, i) => {
    const val = h("input", { class: "mv-num mv-spec-value", type: "text", value: String(s.value) });
    const mode = h("select", { class: "mv-spec-mode" }, [h("option", { value: "clamp", text: "clamp to" }),
      h("option", { value: "scale", text: "scale by" })]);
    mode.value = s.mode;
    const edit = () => {
      const v = parseValue(val.value);
      if (v == null) { ui.msg.textContent = "type a finite value"; return; }
      ui.msg.textContent = "";
      send(model, { specs: specs.map((x, j) => (j === i ? { feature: x.feature, value: v, mode: mode.value } : x)) });
    };
    val.addEventListener("change", edit);
    mode.addEventListener("change", edit);
    const rest = specs.filter((_, j) => j !== i);
    ui.specs.appendChild(h("tr", { class: i === sel ? "mv-spec mv-selected" : "mv-spec", data: { feature: s.feature } }, [
      h("td", { text: `feature ${s.feature}` }), h("td", {}, [mode]), h("td", {}, [val]),
      h("td", {}, [h("button", { class: "mv-sweep-this", text: "sweep", title: "show this feature's strength sweep",
        on: { click: () => send(model, { selected: i }) } })]),
      h("td", {}, [h("button", { class: "mv-remove", text: "remove",
        on: { click: () => send(model, { specs: rest, selected: Math.min(sel, Math.max(0, rest.length - 1)) }) } })]),
    ]));
  });
}

function chips(model, ui, box, name, S) {
  clear(box);
  const strs = model.get(`${name}_strs`) || [], alts = model.get(`${name}_alt`) || [];
  const P = S.dec.get(`${name}_prob`), A = S.dec.get(`${name}_alt_prob`);
  if (P && P.size !== strs.length) throw new Error(`${name}_prob has ${P.size} values for ${strs.length} tokens`);
  strs.forEach((tok, i) => {
    const p = P ? P.at(i) : NaN;
    const rgb = rgbAt(Number.isFinite(p) ? p : 0, "blues", 0, 1);
    const k = alts[i] ? alts[i].length : 0;
    const alt = Array.from({ length: k }, (_, j) => `${quote(alts[i][j], 20)} ${A ? A.at(i * k + j).toFixed(3) : "?"}`);
    const chip = h("span", { class: String(tok).includes("\n") ? "mv-token mv-nl" : "mv-token",
      data: { column: name, step: i, prob: p.toFixed(4) }, style: { background: rgbCss(rgb), color: textOn(rgb) },
      title: `p=${p.toFixed(4)}\n${alt.join("\n")}`, text: String(tok) });
    chip.addEventListener("mouseenter", () => ui.info.show(
      `${name} step ${i}: ${quote(tok, 40)} p=${p.toFixed(4)} · top: ${alt.join(", ")}`,
      { column: name, step: i, prob: p.toFixed(4), token: String(tok) }));
    box.appendChild(chip);
  });
}

function drawSweep(model, ui, S) {
  clear(ui.plot);
  const X = S.dec.get("sweep_values"), Y = S.dec.get("sweep_metric");
  const f = model.get("sweep_feature");
  ui.plot.style.display = X && Y ? "" : "none";
  ui.plotCap.textContent = X && Y ? `strength sweep of feature ${f}: ${model.get("sweep_label") || ""} vs value` : "";
  if (!X || !Y) { ui.plot.dataset.points = "0"; return; }
  if (X.size !== Y.size) throw new Error(`sweep: ${X.size} values but ${Y.size} metrics`);
  const xs = Array.from(X.raw), ys = Array.from(Y.raw), cur = Number(model.get("sweep_current"));
  const x0 = Math.min(...xs, cur), x1 = Math.max(...xs, cur), y0 = Math.min(0, ...ys), y1 = Math.max(...ys);
  const sx = (x) => PAD.l + ((x - x0) / ((x1 - x0) || 1)) * (W - PAD.l - PAD.r);
  const sy = (y) => H - PAD.b - ((y - y0) / ((y1 - y0) || 1)) * (H - PAD.t - PAD.b);
  ui.plot.append(
    svg("line", { x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b, stroke: "#94a3b8" }),
    svg("line", { x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b, stroke: "#94a3b8" }),
    svg("line", { class: "mv-current", x1: sx(cur), y1: PAD.t, x2: sx(cur), y2: H - PAD.b, stroke: "#f59e0b",
      "stroke-width": 2, "data-value": cur }),
    svg("polyline", { class: "mv-line", fill: "none", stroke: "#2563eb", "stroke-width": 1.5,
      points: xs.map((x, i) => `${sx(x).toFixed(1)},${sy(ys[i]).toFixed(1)}`).join(" ") }));
  const top = model.get("sweep_top") || [];
  xs.forEach((x, i) => {
    const c = svg("circle", { class: "mv-point", cx: sx(x), cy: sy(ys[i]), r: 3, fill: "#2563eb",
      "data-value": x, "data-metric": ys[i] });
    const next = top[i] != null ? ` · next ${quote(top[i], 30)}` : "";
    c.appendChild(svg("title", {}, `value ${x.toPrecision(4)}: ${ys[i].toPrecision(4)}${next}`));
    ui.plot.appendChild(c);
  });
  const small = { "font-size": 10, fill: "#334155" };
  ui.plot.append(svg("text", { x: PAD.l, y: H - PAD.b + 12, ...small }, x0.toPrecision(3)),
    svg("text", { x: W - PAD.r, y: H - PAD.b + 12, "text-anchor": "end", ...small }, x1.toPrecision(3)),
    svg("text", { x: (PAD.l + W - PAD.r) / 2, y: H - 4, "text-anchor": "middle", ...small }, "steering value"),
    svg("text", { x: PAD.l - 4, y: PAD.t + 8, "text-anchor": "end", ...small }, y1.toPrecision(3)),
    svg("text", { x: PAD.l - 4, y: H - PAD.b, "text-anchor": "end", ...small }, y0.toPrecision(3)));
  stamp(ui.plot, { points: xs.length, feature: f });
}

function draw(model, root, ui, S) {
  const steering = model.get("steering") || "";
  ui.subtitle.textContent = steering ? `steering: ${steering}` : "no features steered: add one";
  drawSpecs(model, ui);
  if (document.activeElement !== ui.nIn) ui.nIn.value = String(model.get("n"));
  ui.posSel.value = model.get("positions") || "all";
  const busy = !!model.get("busy");
  root.classList.toggle("mv-busy", busy);   // the columns shown are of the last prompt/settings until the new ones come
  ui.progress.textContent = busy ? model.get("progress") || "computing…" : "";
  clear(ui.prompt);
  for (const tok of model.get("tokens") || []) ui.prompt.appendChild(h("span", { class: "mv-token", text: String(tok) }));
  const stopped = model.get("stopped") || [];
  ui.baseH.textContent = `unsteered${stopped[0] === "eos" ? " (ended at end-of-text)" : ""}`;
  ui.steeredH.textContent = steering ? `steered${stopped[1] === "eos" ? " (ended at end-of-text)" : ""}` : "steered (none)";
  ui.banner.guard(() => {
    chips(model, ui, ui.base, "base", S);
    chips(model, ui, ui.steered, "steered", S);
    drawSweep(model, ui, S);
  });
  const url = String(model.get("neuronpedia") || "");
  const ok = url.startsWith("https://www.neuronpedia.org/");
  if (ok) ui.link.setAttribute("href", url); else ui.link.removeAttribute("href");
  ui.link.textContent = ok ? `feature ${model.get("sweep_feature")} on Neuronpedia` : "";
  ui.link.hidden = !ok;
  stamp(root, { busy, steering, specs: (model.get("specs") || []).length, draws: ++S.draws });
}

/** @param {{model: Model, el: HTMLElement}} props */
function render({ model, el }) {
  const ui = build(model, el);
  const S = { dec: traitDecoder(model), draws: 0 };
  bindControls(model, ui);
  return cleanup(ui.stop, redrawOn(model, DRAWN, () => draw(model, el, ui, S)));
}

export default { render };
