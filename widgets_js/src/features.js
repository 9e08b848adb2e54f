// FeatureView: the prompt's top SAE features (rows) x tokens (columns) as a heatmap; a detail panel
// for the selected feature (its activation over the tokens, the output tokens it promotes and
// suppresses); steering controls (the Lab recomputes every view with the steered model) and the
// next-token distribution without / with steering. Renders from model state alone.

import { traitDecoder } from "./lib/decode.js";
import { rgbAt, rgbCss, textOn, drawLegend } from "./lib/colormap.js";
import { outline, sizeCanvas, cellAtWH } from "./lib/heatmap.js";
import { h, style, clear, quote, redrawOn } from "./lib/dom.js";

const CSS = `
.mechviz-features{font:12px/1.4 var(--jp-ui-font-family,system-ui,sans-serif);color:var(--jp-ui-font-color1,#222);padding:4px 0;max-width:100%}
.mechviz-features .mv-header{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap}
.mechviz-features .mv-title{font-weight:600;font-size:13px}
.mechviz-features .mv-prompt{color:var(--jp-ui-font-color2,#555);white-space:pre-wrap;word-break:break-word}
.mechviz-features .mv-error{display:none;margin:4px 0;padding:4px 8px;border-left:3px solid #dc2626;background:#fee2e2;color:#7f1d1d;white-space:pre-wrap}
.mechviz-features.mv-has-error .mv-error{display:block}
.mechviz-features .mv-controls{display:flex;gap:8px;align-items:center;margin:6px 0;flex-wrap:wrap}
.mechviz-features .mv-dim{color:var(--jp-ui-font-color2,#666)}
.mechviz-features canvas.mv-legend{width:96px;height:10px;image-rendering:pixelated;outline:1px solid #cbd5e1;vertical-align:middle}
.mechviz-features .mv-main{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
.mechviz-features .mv-gridwrap{display:grid;grid-template-columns:auto auto;justify-content:start;overflow:auto;max-width:100%}
.mechviz-features .mv-colhead{display:flex;align-items:flex-end;font-family:var(--jp-code-font-family,monospace);font-size:10px;color:#334155;max-height:84px}
.mechviz-features .mv-collabel{writing-mode:vertical-rl;transform:rotate(180deg);white-space:pre;overflow:hidden;text-overflow:ellipsis;max-height:80px;cursor:pointer;box-sizing:border-box;text-align:left}
.mechviz-features .mv-rowhead{display:flex;flex-direction:column;align-items:flex-end;padding-right:4px;font-family:var(--jp-code-font-family,monospace);font-size:10px;color:#334155}
.mechviz-features .mv-rowlabel{white-space:pre;cursor:pointer}
.mechviz-features .mv-collabel.mv-selected,.mechviz-features .mv-rowlabel.mv-selected{color:#b45309;font-weight:700}
.mechviz-features canvas.mv-heat{display:block;cursor:pointer;background:#fff}
.mechviz-features .mv-info{min-height:1.4em;margin:4px 0;font-family:var(--jp-code-font-family,monospace);white-space:pre-wrap}
.mechviz-features .mv-detail{min-width:260px;max-width:520px;border-left:2px solid #e2e8f0;padding-left:10px}
.mechviz-features .mv-detail h4,.mechviz-features .mv-next h4{margin:2px 0 4px;font-size:12px}
.mechviz-features .mv-tokens{display:flex;flex-wrap:wrap;gap:2px;margin:4px 0;font-family:var(--jp-code-font-family,monospace)}
.mechviz-features .mv-token{white-space:pre;padding:1px 2px;border:1px solid #e2e8f0;border-radius:2px;background:#fff;color:#000;max-height:1.45em;overflow:hidden}
.mechviz-features .mv-effects{display:flex;gap:16px}
.mechviz-features ol{margin:2px 0;padding-left:22px;font-family:var(--jp-code-font-family,monospace)}
.mechviz-features li{white-space:pre}
.mechviz-features li::after{content:"  " attr(data-value);color:var(--jp-ui-font-color2,#666)}
.mechviz-features .mv-next li::after{content:"  " attr(data-prob)}
.mechviz-features .mv-steer{display:flex;gap:6px;align-items:center;flex-wrap:wrap;margin:8px 0 4px}
.mechviz-features .mv-steer input{width:6em}
.mechviz-features .mv-steering{color:#b45309;font-weight:600}
.mechviz-features .mv-next{display:flex;gap:24px}
.mechviz-features .mv-next [hidden]{display:none}
`;

const HINT = "hover the heatmap: feature × token activation; click a cell to select that feature and token";

function render({ model, el }) {
  el.classList.add("mechviz-features");
  style(el, CSS);

  const title = h("span", { class: "mv-title" });
  const promptEl = h("span", { class: "mv-prompt" });
  const saeEl = h("span", { class: "mv-dim mv-sae" });
  const errorEl = h("div", { class: "mv-error", role: "alert" });
  const legend = h("canvas", { class: "mv-legend", width: 256, height: 1 });
  drawLegend(legend, "oranges");
  const legHi = h("span", { class: "mv-dim" });
  const colhead = h("div", { class: "mv-colhead" });
  const rowhead = h("div", { class: "mv-rowhead" });
  const heat = h("canvas", { class: "mv-heat", width: 1, height: 1 });
  const info = h("div", { class: "mv-info", text: HINT });
  const detail = h("div", { class: "mv-detail" });

  const fIn = h("input", { class: "mv-steer-feature", type: "number", min: "0", step: "1", "aria-label": "feature" });
  const modeSel = h("select", { class: "mv-steer-mode", "aria-label": "steering mode" },
    [h("option", { value: "clamp", text: "clamp to" }), h("option", { value: "scale", text: "scale by" })]);
  const vIn = h("input", { class: "mv-steer-value", type: "number", step: "any", "aria-label": "value",
    value: (model.get("steer_feature") ?? -1) >= 0 ? String(model.get("steer_value")) : "10" });
  const apply = h("button", { class: "mv-steer-apply", type: "button", text: "steer" });
  const off = h("button", { class: "mv-steer-off", type: "button", text: "off" });
  const steeringEl = h("span", { class: "mv-steering" });
  const nextBase = h("ol", { class: "mv-next-base" });
  const nextSteered = h("ol", { class: "mv-next-steered" });
  const steeredCol = h("div", { class: "mv-next-col mv-next-col-steered" }, [h("h4", { text: "with steering" }), nextSteered]);

  el.append(
    h("div", { class: "mv-header" }, [title, saeEl, promptEl]),
    errorEl,
    h("div", { class: "mv-controls" }, [h("span", { class: "mv-dim", text: "activation 0" }), legend, legHi]),
    h("div", { class: "mv-main" }, [
      h("div", {}, [h("div", { class: "mv-gridwrap" }, [h("div"), colhead, rowhead, heat]), info]),
      detail,
    ]),
    h("div", { class: "mv-steer" }, [h("span", { text: "steer feature" }), fIn, modeSel, vIn, apply, off, steeringEl]),
    h("div", { class: "mv-next" }, [
      h("div", { class: "mv-next-col" }, [h("h4", { text: "next token, without steering" }), nextBase]),
      steeredCol,
    ]),
  );

  const dec = traitDecoder(model);
  let D = null;   // {feats, acts, eidx, evals, nidx, nprob, T, F}
  let err = "", cell = 16, tokens = [], strings = [], headKey = null, draws = 0, shownKey = "";
  let fTouched = false;  // the user typed a feature number: do not overwrite it until the selection changes
  let lastFeature = null;

  const setSel = (kv) => { for (const [k, v] of Object.entries(kv)) model.set(k, v); model.save_changes(); };

  fIn.addEventListener("input", () => { fTouched = fIn.value !== ""; });
  apply.addEventListener("click", () => {
    const f = Math.trunc(Number(fIn.value));
    const v = Number(vIn.value);
    if (fIn.value === "" || !Number.isFinite(f) || f < 0) { errorEl.textContent = "steering: enter a feature number"; el.classList.add("mv-has-error"); return; }
    if (!Number.isFinite(v)) { errorEl.textContent = "steering: enter a number to clamp to or scale by"; el.classList.add("mv-has-error"); return; }
    // steer_feature last: the Lab reacts to the complete request
    model.set("steer_value", v);
    model.set("steer_mode", modeSel.value);
    model.set("steer_feature", f);
    model.save_changes();
  });
  off.addEventListener("click", () => setSel({ steer_feature: -1 }));

  function load() {
    try {
      const feats = dec.get("features"), acts = dec.get("acts");
      const eidx = dec.get("effect_idx"), evals = dec.get("effect_val");
      const nidx = dec.get("next_idx"), nprob = dec.get("next_prob");
      if (!feats || !acts) { D = null; err = ""; return; }
      if (acts.shape.length !== 2 || acts.shape[1] !== feats.size) {
        throw new Error(`acts [${acts.shape}] is not [tokens, ${feats.size} features]`);
      }
      const [T, F] = acts.shape;
      D = { feats, acts, eidx, evals, nidx, nprob, T, F };
      err = "";
    } catch (e) {
      err = String((e && e.message) || e);
    }
  }

  const featureRow = (id) => { if (!D) return -1; for (let r = 0; r < D.F; r++) if (D.feats.at(r) === id) return r; return -1; };
  const act = (r, c) => D.acts.at(c * D.F + r);
  const vmax = () => { const v = model.get("vmax"); return v > 0 ? v : 1; };

  function buildHeads() {
    const key = JSON.stringify([tokens, cell, D.T, Array.from(D.feats.raw)]);
    if (key === headKey) return;
    headKey = key;
    clear(colhead);
    clear(rowhead);
    for (let c = 0; c < D.T; c++) {
      const s = h("div", { class: "mv-collabel", data: { index: c }, title: `#${c} ${quote(tokens[c] ?? "", 60)}`,
        style: { width: `${cell}px`, minWidth: `${cell}px`, lineHeight: `${cell}px` }, text: String(tokens[c] ?? "") });
      s.addEventListener("click", () => setSel({ token: (model.get("token") ?? -1) === c ? -1 : c }));
      colhead.appendChild(s);
    }
    for (let r = 0; r < D.F; r++) {
      const id = D.feats.at(r);
      const s = h("div", { class: "mv-rowlabel", data: { index: r, feature: id }, text: `#${id}`,
        style: { height: `${cell}px`, lineHeight: `${cell}px` } });
      s.addEventListener("click", () => setSel({ feature: (model.get("feature") ?? -1) === id ? -1 : id }));
      rowhead.appendChild(s);
    }
  }

  function fillList(ol, idx, vals, row, k, attr) {
    clear(ol);
    if (!idx || !vals) return;
    for (let j = 0; j < k; j++) {
      const v = vals.at(row * k + j);
      const li = h("li", { text: String(strings[idx.at(row * k + j)] ?? ""), data: { [attr]: attr === "prob" ? v.toFixed(4) : v.toFixed(3) } });
      ol.appendChild(li);
    }
  }

  function drawDetail(feature) {
    clear(detail);
    const r = featureRow(feature);
    detail.dataset.feature = String(feature);
    if (feature < 0) { detail.appendChild(h("div", { class: "mv-dim", text: "click a feature row to see what it does" })); return; }
    if (r < 0) {
      detail.appendChild(h("div", { class: "mv-dim", text: `feature ${feature} is not among this prompt's top features` }));
      return;
    }
    detail.appendChild(h("h4", { text: `feature #${feature}` }));
    const vm = vmax();
    let mx = 0;
    const strip = h("div", { class: "mv-tokens" });
    for (let c = 0; c < D.T; c++) {
      const a = act(r, c);
      if (a > mx) mx = a;
      const rgb = rgbAt(a, "oranges", 0, vm);
      strip.appendChild(h("span", { class: "mv-token", text: String(tokens[c] ?? ""), title: `#${c} ${a.toFixed(3)}`,
        data: { index: c, act: a.toFixed(3) }, style: { background: rgbCss(rgb), color: textOn(rgb) } }));
    }
    detail.appendChild(h("div", { class: "mv-dim", text: `activation over the prompt (max ${mx.toFixed(3)})` }));
    detail.appendChild(strip);
    const k = D.eidx && D.eidx.shape.length === 3 ? D.eidx.shape[2] : 0;
    const prom = h("ol", { class: "mv-promoted" }), supp = h("ol", { class: "mv-suppressed" });
    if (k) {
      fillList(prom, D.eidx, D.evals, r * 2, k, "value");
      fillList(supp, D.eidx, D.evals, r * 2 + 1, k, "value");
    }
    detail.appendChild(h("div", { class: "mv-effects" }, [
      h("div", {}, [h("h4", { text: "promotes" }), prom]),
      h("div", {}, [h("h4", { text: "suppresses" }), supp]),
    ]));
  }

  function redraw() {
    load();
    tokens = model.get("tokens") || [];
    strings = model.get("strings") || [];
    const shownErr = [model.get("error") || "", err].filter(Boolean).join("\n");
    errorEl.textContent = shownErr;
    el.classList.toggle("mv-has-error", !!shownErr);
    title.textContent = model.get("title") || "SAE features";
    saeEl.textContent = model.get("sae_label") || "";
    const d = el.dataset;
    d.prompt = model.get("prompt") || "";
    d.seq = String(model.get("seq") ?? 0);
    const steering = model.get("steering") || "";
    steeringEl.textContent = steering ? `steering: ${steering}` : "steering off";
    d.steering = steering;
    if (document.activeElement !== modeSel) modeSel.value = model.get("steer_mode") || "clamp";
    if (!D) { promptEl.textContent = "no data yet"; d.ntokens = "0"; return; }
    const { T, F } = D;
    promptEl.textContent = `prompt: ${model.get("prompt") || ""}`;
    legHi.textContent = vmax().toFixed(2);
    const feature = model.get("feature") ?? -1, token = model.get("token") ?? -1;
    if (feature !== lastFeature) { lastFeature = feature; fTouched = false; }
    if (!fTouched && document.activeElement !== fIn) {
      const sf = model.get("steer_feature") ?? -1;
      fIn.value = feature >= 0 ? String(feature) : sf >= 0 ? String(sf) : "";
    }

    cell = Math.max(10, Math.min(24, Math.floor(560 / Math.max(1, T))));
    buildHeads();
    const ctx = sizeCanvas(heat, T * cell, F * cell);
    heat.dataset.cell = String(cell);
    const vm = vmax();
    for (let r = 0; r < F; r++) {
      for (let c = 0; c < T; c++) {
        ctx.fillStyle = rgbCss(rgbAt(act(r, c), "oranges", 0, vm));
        ctx.fillRect(c * cell, r * cell, cell, cell);
      }
    }
    const sr = featureRow(feature);
    if (sr >= 0) outline(ctx, 0, sr * cell, T * cell, cell, "#2563eb", 2);
    if (token >= 0 && token < T) outline(ctx, token * cell, 0, cell, F * cell, "#2563eb", 2);
    for (const s of colhead.children) s.classList.toggle("mv-selected", Number(s.dataset.index) === token);
    for (const s of rowhead.children) s.classList.toggle("mv-selected", Number(s.dataset.feature) === feature);
    drawDetail(feature);

    // next token: row 0 without steering, row 1 with (shown only while steering)
    const kn = D.nidx && D.nidx.shape.length === 2 ? D.nidx.shape[1] : 0;
    fillList(nextBase, D.nidx, D.nprob, 0, kn, "prob");
    if (steering && kn && D.nidx.shape[0] > 1) {
      fillList(nextSteered, D.nidx, D.nprob, 1, kn, "prob");
      steeredCol.hidden = false;
    } else {
      clear(nextSteered);
      steeredCol.hidden = true;
    }

    const key = `${model.get("seq")}|${T}|${F}`;
    if (key !== shownKey) {
      shownKey = key;
      info.textContent = HINT;
      for (const a of ["feature", "col", "value"]) delete info.dataset[a];
    }
    d.feature = String(feature);
    d.token = String(token);
    d.ntokens = String(T);
    d.nfeatures = String(F);
    d.draws = String(++draws);
  }


  heat.addEventListener("mousemove", (e) => {
    if (!D) return;
    const hit = cellAtWH(heat, e, cell, cell, D.F, D.T);
    if (!hit) return;
    const id = D.feats.at(hit.row), v = act(hit.row, hit.col);
    info.textContent = `feature #${id} · token ${hit.col} ${quote(tokens[hit.col] ?? "")} · activation ${v.toFixed(3)}`;
    info.dataset.feature = String(id);
    info.dataset.col = String(hit.col);
    info.dataset.value = v.toFixed(3);
  });
  heat.addEventListener("click", (e) => {
    const hit = D && cellAtWH(heat, e, cell, cell, D.F, D.T);
    if (hit) setSel({ feature: D.feats.at(hit.row), token: hit.col });
  });

  const names = ["features", "acts", "vmax", "effect_idx", "effect_val", "next_idx", "next_prob", "strings", "tokens",
    "sae_label", "steer_feature", "steer_mode", "steer_value", "steering", "prompt", "seq", "feature", "token", "error", "title"];
  return redrawOn(model, names, redraw);
}

export default { render };
