// FeatureView: the prompt's top SAE features (rows) x tokens (columns) as a heatmap; a detail panel
// for the selected feature (its activation over the tokens, the output tokens it promotes and
// suppresses); steering controls (the Lab recomputes every view with the steered model) and the
// next-token distribution without / with steering. Renders from model state alone.

import { traitDecoder } from "./lib/decode.js";
import { rgbAt, rgbCss, textOn } from "./lib/colormap.js";
import { outline } from "./lib/heatmap.js";
import { virtualGrid, VIRTUAL_CSS } from "./lib/virtual.js";
import { h, clear, quote, redrawOn } from "./lib/dom.js";
import { GRID_CSS, TOKENS_CSS, DETAIL_CSS } from "./lib/base_css.js";
import { scaffold, setSelection, toggleSelection, cleanup, stamp, readout, legend, parseFeature, parseValue } from "./lib/view.js";
import { saveButton } from "./lib/save_figure.js";

/**
 * The traits of mechviz/widgets/features.py:FeatureView (the Python <-> JS contract).
 * T tokens, F shown features, k output tokens per list.
 * @typedef {import("./lib/decode.js").Packed} Packed
 * @typedef {{feature: number, value: number, mode: "clamp"|"scale", id: number}} SteerOn
 * @typedef {{feature: null, id: number}} SteerOff
 * @typedef {{feature: number, value: number, mode: "clamp"|"scale"}} Steered
 * @typedef {object} FeatureTraits
 * @property {Packed|null} features  int32 [F]: the SAE feature ids of the rows
 * @property {Packed|null} acts  float16 [T, F]: activations
 * @property {number} vmax  the colour scale's top
 * @property {Packed|null} effect_idx  int32 [F, 2, k]: tokens each feature promotes (row 0) / suppresses (row 1), indexes `strings`
 * @property {Packed|null} effect_val  float16 [F, 2, k]
 * @property {Packed|null} next_idx  int32 [2, k]: next tokens without (row 0) / with (row 1) steering, indexes `strings`
 * @property {Packed|null} next_prob  float16 [2, k]
 * @property {string[]} strings  token texts (deduplicated; untrusted)
 * @property {string[]} tokens  the T prompt tokens (untrusted)
 * @property {string} sae_label
 * @property {Packed|null} recon_error  float16 [T]: the dictionary's relative reconstruction error at each token (drawn as the last row)
 * @property {string[]} dictionaries  the Lab's dictionaries by name (a menu when there are several)
 * @property {string} dictionary  selection (linked, written here): the dictionary shown ("" the first); a new one clears `feature`
 * @property {SteerOn|SteerOff|null} steer_request  written here, ONE trait per request: steer, or off
 *   (`feature: null`); `id` is one more than the last request's, so a repeated request is a change
 * @property {Steered|null} steered  the kernel's answer: the steering actually applied (null: off);
 *   unchanged (with `error` set) when a request was refused. The controls show it.
 * @property {string} steering  label of the steering the shown data were computed with ("" none)
 * @property {string} prompt
 * @property {number} seq  bumped by every show()
 * @property {number} feature  selection (linked, written here): an SAE feature id, -1 none
 * @property {number} token  selection (linked, written here): -1 none
 * @property {string} error
 * @property {string} title
 * @typedef {import("./lib/view.js").Model<FeatureTraits>} Model
 */

const DRAWN = ["features", "acts", "vmax", "effect_idx", "effect_val", "next_idx", "next_prob", "strings", "tokens",
  "sae_label", "steered", "steering", "prompt", "seq", "feature", "token", "error", "recon_error", "dictionaries", "dictionary"];

const CSS = `
.mechviz-features canvas.mv-heat{display:block;cursor:pointer;background:#fff}
.mechviz-features .mv-detail{min-width:260px}
.mechviz-features .mv-detail .mv-tokens{max-height:12em;overflow-y:auto}
.mechviz-features .mv-effects{display:flex;gap:16px}
.mechviz-features .mv-steer{display:flex;gap:6px;align-items:center;flex-wrap:wrap;margin:8px 0 4px}
.mechviz-features .mv-steer input{width:6em}
.mechviz-features .mv-steering{color:#b45309;font-weight:600}
.mechviz-features .mv-steer-msg{color:#b91c1c}
.mechviz-features .mv-next{display:flex;gap:24px}
`;

const HINT = "hover the heatmap: feature × token activation; click a cell to select that feature and token";
const DEFAULT_VALUE = "10";
const CHUNK = 256;     // token chips built per task in the detail strip
const MIN_CELL = 14;   // px: room for the 11 px column labels (vertical)
const RECON_GAP = 0;   // px between the feature rows and the reconstruction-error row

// -- build ------------------------------------------------------------------------------------------
function buildSteer() {
  const s = {
    fIn: h("input", { class: "mv-steer-feature", type: "number", min: "0", step: "1", "aria-label": "feature" }),
    modeSel: h("select", { class: "mv-steer-mode", "aria-label": "steering mode" },
      [h("option", { value: "clamp", text: "clamp to" }), h("option", { value: "scale", text: "scale by" })]),
    vIn: h("input", { class: "mv-steer-value", type: "number", step: "any", "aria-label": "value" }),
    apply: h("button", { class: "mv-steer-apply", type: "button", text: "steer" }),
    off: h("button", { class: "mv-steer-off", type: "button", text: "off" }),
    msg: h("span", { class: "mv-steer-msg", role: "status" }),
    label: h("span", { class: "mv-steering" }),
  };
  s.row = h("div", { class: "mv-steer" },
    [h("span", { text: "steer feature" }), s.fIn, s.modeSel, s.vIn, s.apply, s.off, s.msg, s.label]);
  return s;
}

function build(model, el, S) {
  const sae = h("span", { class: "mv-dim mv-sae" });
  const dictSel = h("select", { class: "mv-dictionary", "aria-label": "dictionary", hidden: true });
  const { banner, stop } = scaffold(model, el, "features", CSS,
    { parts: [GRID_CSS, VIRTUAL_CSS, TOKENS_CSS, DETAIL_CSS], title: "SAE features", extra: [sae, saveButton(el, "features")] });
  const heat = h("canvas", { class: "mv-heat", width: 1, height: 1 });
  const nextBase = h("ol", { class: "mv-next-base" }), nextSteered = h("ol", { class: "mv-next-steered" });
  const ui = {
    banner, sae, heat, nextBase, nextSteered, dictSel,
    legend: legend("oranges", "activation 0"),
    vgrid: virtualGrid(heat, {
      paint: (ctx, view) => paintHeat(model, S, ctx, view),
      onCol: (c) => toggleSelection(model, "token", c),
      onRow: (r, spec) => { if (!spec.data.recon) toggleSelection(model, "feature", spec.data.feature); },
    }),
    info: readout(HINT),
    detail: h("div", { class: "mv-detail" }),
    steer: buildSteer(),
    steeredCol: h("div", { class: "mv-next-col mv-next-col-steered" }, [h("h4", { text: "with steering" }), nextSteered]),
  };
  el.append(
    h("div", { class: "mv-controls" }, [dictSel, ...ui.legend.nodes]),
    h("div", { class: "mv-main" }, [h("div", { class: "mv-heatcol" }, [ui.vgrid.wrap, ui.info.el]), ui.detail]),
    ui.steer.row,
    h("div", { class: "mv-next" }, [
      h("div", { class: "mv-next-col" }, [h("h4", { text: "next token, without steering" }), nextBase]),
      ui.steeredCol,
    ]),
  );
  ui.stop = cleanup(stop, ui.vgrid.stop);
  return ui;
}

// -- load -------------------------------------------------------------------------------------------
function load(dec) {
  const feats = dec.get("features"), acts = dec.get("acts");
  const eidx = dec.get("effect_idx"), evals = dec.get("effect_val");
  const nidx = dec.get("next_idx"), nprob = dec.get("next_prob");
  if (!feats || !acts) return null;
  if (acts.shape.length !== 2 || acts.shape[1] !== feats.size) {
    throw new Error(`acts [${acts.shape}] is not [tokens, ${feats.size} features]`);
  }
  const [T, F] = acts.shape;
  const recon = dec.get("recon_error");
  if (recon && recon.size !== T) throw new Error(`recon_error has ${recon.size} values for ${T} tokens`);
  return { feats, acts, eidx, evals, nidx, nprob, T, F, recon };
}

const featureRow = (D, id) => { if (!D) return -1; for (let r = 0; r < D.F; r++) if (D.feats.at(r) === id) return r; return -1; };
const act = (D, r, c) => D.acts.at(c * D.F + r);
const vmaxOf = (model) => { const v = model.get("vmax"); return v > 0 ? v : 1; };

// -- steering: one request per click, controls that show what the kernel applied -------------------

function sendSteer(model, S, request) {
  const id = ((model.get("steer_request") || {}).id | 0) + 1;  // synced: also counts on across page reloads
  model.set("steer_request", { ...request, id });
  model.save_changes();
  S.pending = id;
}

/** The controls show the applied steering (`steered`); with none, the selected feature. */
function showSteered(model, ui, steered) {
  const { fIn, vIn, modeSel } = ui.steer;
  const feature = model.get("feature") ?? -1;
  if (steered) {
    fIn.value = String(steered.feature);
    vIn.value = String(steered.value);
    modeSel.value = steered.mode === "scale" ? "scale" : "clamp";
  } else if (document.activeElement !== fIn) {
    fIn.value = feature >= 0 ? String(feature) : "";
  }
}

function drawSteer(model, root, ui, S) {
  const steered = model.get("steered") ?? null, error = model.get("error") || "";
  // a kernel answer: new steering applied, or (a new error while a request is out) refused
  if (steered !== S.steered || (S.pending && error && error !== S.error)) {
    showSteered(model, ui, steered);
    S.pending = 0;
  }
  S.steered = steered;
  S.error = error;
  const feature = model.get("feature") ?? -1;
  if (feature !== S.feature) { // a new selection: the feature to steer follows it
    S.feature = feature;
    if (feature >= 0 && document.activeElement !== ui.steer.fIn) ui.steer.fIn.value = String(feature);
  }
  const steering = model.get("steering") || "";
  ui.steer.label.textContent = steering ? `steering: ${steering}` : "steering off";
  root.dataset.steering = steering;
  return steering;
}

// -- draw -------------------------------------------------------------------------------------------
function fillList(ol, idx, vals, strings, row, k, attr) {
  clear(ol);
  if (!idx || !vals) return;
  for (let j = 0; j < k; j++) {
    const v = vals.at(row * k + j);
    ol.appendChild(h("li", { text: String(strings[idx.at(row * k + j)] ?? ""), data: { [attr]: attr === "prob" ? v.toFixed(4) : v.toFixed(3) } }));
  }
}

// the selected feature's activation over the prompt, one chip per token; long prompts in chunks of
// CHUNK chips, one per task (the page stays responsive), abandoned when the detail is redrawn
function fillStrip(strip, S, r, vm) {
  const { D, tokens } = S, gen = ++S.stripGen;
  let c = 0;
  const step = () => {
    if (gen !== S.stripGen) return;
    const frag = document.createDocumentFragment(), end = Math.min(D.T, c + CHUNK);
    for (; c < end; c++) {
      const a = act(D, r, c), rgb = rgbAt(a, "oranges", 0, vm);
      frag.appendChild(h("span", { class: "mv-token", text: String(tokens[c] ?? ""), title: `#${c} ${a.toFixed(3)}`,
        data: { index: c, act: a.toFixed(3) }, style: { background: rgbCss(rgb), color: textOn(rgb) } }));
    }
    strip.appendChild(frag);
    if (c < D.T) setTimeout(step, 0);
    else strip.dataset.complete = "true";
  };
  step();
}

function drawDetail(model, ui, S, feature) {
  const { detail } = ui, { D, strings } = S;
  S.stripGen++;   // a strip still being built is abandoned
  clear(detail);
  detail.dataset.feature = String(feature);
  const r = featureRow(D, feature);
  if (feature < 0) { detail.appendChild(h("div", { class: "mv-dim", text: "click a feature row to see what it does" })); return; }
  if (r < 0) {
    detail.appendChild(h("div", { class: "mv-dim", text: `feature ${feature} is not among this prompt's top features` }));
    return;
  }
  const vm = vmaxOf(model);
  let mx = 0;
  for (let c = 0; c < D.T; c++) mx = Math.max(mx, act(D, r, c));
  const strip = h("div", { class: "mv-tokens" });
  fillStrip(strip, S, r, vm);
  const k = D.eidx && D.eidx.shape.length === 3 ? D.eidx.shape[2] : 0;
  const prom = h("ol", { class: "mv-promoted" }), supp = h("ol", { class: "mv-suppressed" });
  if (k) {
    fillList(prom, D.eidx, D.evals, strings, r * 2, k, "value");
    fillList(supp, D.eidx, D.evals, strings, r * 2 + 1, k, "value");
  }
  detail.append(
    h("h4", { text: `feature #${feature}` }),
    h("div", { class: "mv-dim", text: `activation over the prompt (max ${mx.toFixed(3)})` }),
    strip,
    h("div", { class: "mv-effects" }, [
      h("div", {}, [h("h4", { text: "promotes" }), prom]),
      h("div", {}, [h("h4", { text: "suppresses" }), supp]),
    ]),
  );
}

// the visible columns [c0, c1) of the heatmap (ctx in content coordinates: column c at x = c * cell)
function paintHeat(model, S, ctx, { c0, c1 }) {
  const { D, cell } = S;
  if (!D) return;
  const { T, F } = D, vm = vmaxOf(model);
  for (let r = 0; r < F; r++) {
    for (let c = c0; c < c1; c++) {
      ctx.fillStyle = rgbCss(rgbAt(act(D, r, c), "oranges", 0, vm));
      ctx.fillRect(c * cell, r * cell, cell, cell);
    }
  }
  if (D.recon) { // the last row: how much of each token's activation the dictionary misses (0 white .. 1 blue)
    for (let c = c0; c < c1; c++) {
      ctx.fillStyle = rgbCss(rgbAt(Math.min(1, D.recon.at(c)), "blues", 0, 1));
      ctx.fillRect(c * cell, F * cell + RECON_GAP, cell, cell);
    }
  }
  const sr = featureRow(D, S.feature), token = S.token;
  if (sr >= 0) outline(ctx, 0, sr * cell, T * cell, cell, "#2563eb", 2);
  if (token >= 0 && token < T && token >= c0 && token < c1) outline(ctx, token * cell, 0, cell, F * cell, "#2563eb", 2);
}

// next token: row 0 without steering, row 1 with (shown only while the data are steered)
function drawNext(ui, S, steering) {
  const { D, strings } = S;
  const kn = D.nidx && D.nidx.shape.length === 2 ? D.nidx.shape[1] : 0;
  fillList(ui.nextBase, D.nidx, D.nprob, strings, 0, kn, "prob");
  const steered = !!steering && kn > 0 && D.nidx.shape[0] > 1;
  if (steered) fillList(ui.nextSteered, D.nidx, D.nprob, strings, 1, kn, "prob");
  else clear(ui.nextSteered);
  ui.steeredCol.hidden = !steered;
}

// the dictionary menu: the Lab's dictionaries, the shown one selected (hidden with one or none)
function drawDictionaries(model, root, ui) {
  const names = model.get("dictionaries") || [], shown = model.get("dictionary") || names[0] || "";
  const key = names.join("\u0000");
  if (key !== ui.dictKey) {
    ui.dictKey = key;
    clear(ui.dictSel);
    for (const n of names) ui.dictSel.appendChild(h("option", { value: n, text: n }));
  }
  ui.dictSel.hidden = names.length < 2;
  ui.dictSel.value = shown;
  root.dataset.dictionary = shown;
}

function draw(model, root, ui, S) {
  drawDictionaries(model, root, ui);
  S.D = ui.banner.guard(() => load(S.dec), S.D);
  S.tokens = model.get("tokens") || [];
  S.strings = model.get("strings") || [];
  ui.sae.textContent = model.get("sae_label") || "";
  stamp(root, { prompt: model.get("prompt") || "", seq: model.get("seq") ?? 0 });
  const steering = drawSteer(model, root, ui, S);
  if (!S.D) { root.dataset.ntokens = "0"; return; }
  const { T, F } = S.D;
  ui.legend.set("oranges", "activation 0", vmaxOf(model).toFixed(2));
  const feature = model.get("feature") ?? -1, token = model.get("token") ?? -1;
  // long prompts scroll sideways (only the visible columns are drawn): columns stay wide enough for 11 px labels
  S.cell = Math.max(MIN_CELL, Math.min(24, Math.floor(560 / Math.max(1, T))));
  const tokens = S.tokens;
  if (tokens !== S.tokSeen) { S.tokSeen = tokens; S.tokKey = (S.tokKey | 0) + 1; }
  ui.vgrid.update({
    T, R: F + (S.D.recon ? 1 : 0), cw: S.cell, ch: S.cell, key: S.tokKey, vertical: true,
    col: (c) => ({ text: tokens[c] ?? "", title: `#${c} ${quote(tokens[c] ?? "", 60)}` }),
    rows: Array.from({ length: F }, (_, r) => ({ text: `#${S.D.feats.at(r)}`, data: { feature: S.D.feats.at(r) } }))
      .concat(S.D.recon ? [{ text: "error", title: "reconstruction error |x - x̂| / |x| at each token", data: { recon: 1 } }] : []),
  });
  stamp(ui.heat, { cell: S.cell });
  S.token = token;  // (S.feature: set by drawSteer)
  ui.vgrid.select(token, featureRow(S.D, feature));
  if (token !== S.shownToken) { S.shownToken = token; ui.vgrid.reveal(token); }  // a selection from Python: into view
  ui.vgrid.repaint();
  drawDetail(model, ui, S, feature);
  drawNext(ui, S, steering);
  ui.info.reset(`${model.get("seq")}|${T}|${F}`);
  stamp(root, { feature, token, ntokens: T, nfeatures: F, draws: ++S.draws });
}

// -- events -----------------------------------------------------------------------------------------
function bindSteer(model, ui, S) {
  const { fIn, vIn, modeSel, apply, off, msg } = ui.steer;
  const say = (text) => { msg.textContent = text; };
  const request = () => {
    const feature = parseFeature(fIn.value);
    if (feature === null) return say("enter a feature number");
    const value = parseValue(vIn.value);
    if (value === null) return say("enter a number");
    say("");
    sendSteer(model, S, { feature, value, mode: modeSel.value === "scale" ? "scale" : "clamp" });
  };
  apply.addEventListener("click", request);
  for (const input of [fIn, vIn]) {
    input.addEventListener("input", () => say(""));
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); request(); } });
  }
  off.addEventListener("click", () => { say(""); sendSteer(model, S, { feature: null }); });
}

function bindEvents(model, ui, S) {
  const hit = (e) => S.D && ui.vgrid.cellAt(e);
  ui.heat.addEventListener("mousemove", (e) => {
    const c = hit(e);
    if (!c) return;
    if (c.row >= S.D.F) { // the reconstruction-error row
      const v = S.D.recon ? S.D.recon.at(c.col) : NaN;
      ui.info.show(`reconstruction error · token ${c.col} ${quote(S.tokens[c.col] ?? "")} · ${v.toFixed(3)} of the activation's norm`,
        { recon: v.toFixed(3), col: c.col, value: v.toFixed(3) });
      return;
    }
    const id = S.D.feats.at(c.row), v = act(S.D, c.row, c.col);
    ui.info.show(`feature #${id} · token ${c.col} ${quote(S.tokens[c.col] ?? "")} · activation ${v.toFixed(3)}`,
      { feature: id, col: c.col, value: v.toFixed(3) });
  });
  ui.heat.addEventListener("click", (e) => {
    const c = hit(e);
    if (c && c.row < S.D.F) setSelection(model, { feature: S.D.feats.at(c.row), token: c.col });
    else if (c) setSelection(model, { token: c.col });
  });
  // another dictionary: its features have other ids, so the feature selection is cleared with it
  ui.dictSel.addEventListener("change", () => setSelection(model, { dictionary: ui.dictSel.value, feature: -1 }));
  bindSteer(model, ui, S);
}

/** @param {{model: Model, el: HTMLElement}} props */
function render({ model, el: root }) {
  const steered = model.get("steered") ?? null;
  const S = { dec: traitDecoder(model), D: null, cell: 16, tokens: [], strings: [], draws: 0, token: -1, shownToken: -1, stripGen: 0,
    steered, error: model.get("error") || "", feature: model.get("feature") ?? -1, pending: 0 };
  const ui = build(model, root, S);
  ui.steer.vIn.value = DEFAULT_VALUE;
  showSteered(model, ui, steered);
  bindEvents(model, ui, S);
  return cleanup(ui.stop, redrawOn(model, DRAWN, () => draw(model, root, ui, S)));
}

export default { render };
