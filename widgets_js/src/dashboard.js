// DashboardView: one SAE feature's dashboard over a corpus (density, activation histogram, top activating
// contexts and contexts sampled per activation interval with each token shaded by the feature, the
// output tokens it promotes and suppresses, its logit-effect histogram), for the selected feature; a
// search box finds features by token; a result click selects the feature in every linked view. The
// payload may hold several features' dashboards: switching among them needs no kernel (static export).

import { traitDecoder } from "./lib/decode.js";
import { rgbAt, rgbCss, textOn } from "./lib/colormap.js";
import { h, clear, quote, redrawOn } from "./lib/dom.js";
import { TOKENS_CSS, DETAIL_CSS } from "./lib/base_css.js";
import { scaffold, setSelection, cleanup, stamp } from "./lib/view.js";
import { saveButton } from "./lib/save_figure.js";

/**
 * The traits of mechviz/widgets/dashboard.py:DashboardView (the Python <-> JS contract). N features, C
 * context slots, W tokens per window, B histogram bins, k tokens per effect list.
 * @typedef {import("./lib/decode.js").Packed} Packed
 * @typedef {object} DashboardTraits
 * @property {Packed|null} features  int32 [N]: the feature ids whose dashboards the payload holds
 * @property {Packed|null} stats  float32 [N, 3]: density, mean activation when active, max
 * @property {Packed|null} ctx_tokens  int32 [N, C, W]: indexes of `strings` (-1 beyond the text)
 * @property {Packed|null} ctx_acts  float16 [N, C, W]: the feature over each window
 * @property {Packed|null} ctx_group  int32 [N, C]: index into group_labels[n] (-1 an empty slot)
 * @property {string[][]} group_labels  [N][G]: "top k activations", then intervals (highest first)
 * @property {Packed|null} hist_counts  int32 [N, B] over hist_edges
 * @property {Packed|null} hist_edges  float32 [B + 1] (log spaced)
 * @property {Packed|null} logit_counts  int32 [N, LB] over logit_range
 * @property {Packed|null} logit_range  float32 [N, 2]
 * @property {Packed|null} effect_idx  int32 [N, 2, k]: promoted (row 0) / suppressed (row 1), indexes of `strings`
 * @property {Packed|null} effect_val  float32 [N, 2, k]
 * @property {string[]} strings  token texts (untrusted)
 * @property {number} centre  the column of each window's centre token
 * @property {string} corpus_label
 * @property {string} status  "" | "computing" | "ready" | "error"
 * @property {number} progress  0..1 while computing
 * @property {string} neuronpedia  the feature's page with "{}" for its id ("" none)
 * @property {{token: string, by: string, id: number}|null} search_request  written here, one per search
 * @property {Array<[number, number]>} search_result  [feature, score] best first
 * @property {string} search_label
 * @property {number} feature  selection (linked, written here)
 * @property {string} dictionary  selection (linked)
 * @typedef {import("./lib/view.js").Model<DashboardTraits>} Model
 */

const DRAWN = ["features", "stats", "ctx_tokens", "ctx_acts", "ctx_group", "group_labels", "hist_counts", "hist_edges",
  "logit_counts", "logit_range", "effect_idx", "effect_val", "strings", "centre", "corpus_label", "status", "progress",
  "neuronpedia", "search_result", "search_label", "feature", "dictionary", "seq"];

const CSS = `
.mechviz-dashboard .mv-dash{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
.mechviz-dashboard .mv-dash-side{min-width:220px;max-width:300px}
.mechviz-dashboard .mv-dash-ctx{flex:1;min-width:320px;max-height:32em;overflow-y:auto}
.mechviz-dashboard .mv-ctx{display:flex;flex-wrap:nowrap;gap:0;margin:1px 0;font-family:var(--jp-code-font-family,monospace);overflow:hidden}
.mechviz-dashboard .mv-ctx .mv-token{border:none;border-radius:0;padding:0 1px}
.mechviz-dashboard .mv-ctx .mv-centre{outline:1px solid currentColor;font-weight:600}
.mechviz-dashboard canvas.mv-hist{display:block;width:220px;height:70px;background:#fff;border:1px solid #e2e8f0}
.mechviz-dashboard .mv-search{display:flex;gap:6px;align-items:center;margin:4px 0;flex-wrap:wrap}
.mechviz-dashboard .mv-search input{width:9em}
.mechviz-dashboard .mv-hits button{margin:1px;font-family:var(--jp-code-font-family,monospace)}
.mechviz-dashboard progress{width:200px}
/* k = 10 and more tokens per list: room for a two-digit marker ("10.") */
.mechviz-dashboard .mv-effects ol{padding-left:32px}
`;

const at2 = (arr, n, i, stride) => arr.at(n * stride + i);

// -- build --------------------------------------------------------------------------------------------
function build(model, el, S) {
  const { banner, stop } = scaffold(model, el, "dashboard", CSS, { parts: [TOKENS_CSS, DETAIL_CSS], title: "Feature dashboard", extra: [saveButton(el, "dashboard")] });
  const ui = {
    banner, stop,
    status: h("div", { class: "mv-dim mv-status" }),
    bar: h("progress", { class: "mv-progress", max: "1", value: "0", hidden: true }),
    head: h("h4", { class: "mv-dash-title" }),
    stats: h("div", { class: "mv-dim mv-stats" }),
    link: h("a", { class: "mv-neuronpedia", target: "_blank", rel: "noopener noreferrer", hidden: true, text: "Neuronpedia" }),
    hist: h("canvas", { class: "mv-hist mv-act-hist", width: 220, height: 70, title: "activation histogram (log bins)" }),
    logit: h("canvas", { class: "mv-hist mv-logit-hist", width: 220, height: 70, title: "logit effects over the vocabulary" }),
    prom: h("ol", { class: "mv-promoted" }), supp: h("ol", { class: "mv-suppressed" }),
    ctx: h("div", { class: "mv-dash-ctx" }),
    query: h("input", { class: "mv-search-token", type: "text", placeholder: "a token, e.g. \" the\"", "aria-label": "token" }),
    by: h("select", { class: "mv-search-by", "aria-label": "search by" },
      [h("option", { value: "activation", text: "fires on" }), h("option", { value: "logit", text: "promotes" })]),
    go: h("button", { class: "mv-search-go", type: "button", text: "search" }),
    hitsLabel: h("span", { class: "mv-dim mv-hits-label" }),
    hits: h("div", { class: "mv-hits" }),
  };
  el.append(
    h("div", { class: "mv-search" }, [h("span", { text: "features that" }), ui.by, ui.query, ui.go, ui.hitsLabel]),
    ui.hits,
    h("div", { class: "mv-controls" }, [ui.status, ui.bar]),
    h("div", { class: "mv-dash" }, [
      h("div", { class: "mv-dash-side" }, [ui.head, ui.stats, ui.link, h("h4", { text: "activations" }), ui.hist,
        h("h4", { text: "logit effects" }), ui.logit,
        h("div", { class: "mv-effects" }, [h("div", {}, [h("h4", { text: "promotes" }), ui.prom]),
          h("div", {}, [h("h4", { text: "suppresses" }), ui.supp])])]),
      ui.ctx,
    ]),
  );
  const search = () => {
    const token = ui.query.value;
    if (!token) return;
    const id = ((model.get("search_request") || {}).id | 0) + 1;
    setSelection(model, { search_request: { token, by: ui.by.value, id } });
  };
  ui.go.addEventListener("click", search);
  ui.query.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); search(); } });
  return ui;
}

// -- draw ---------------------------------------------------------------------------------------------
function load(dec) {
  const feats = dec.get("features"), stats = dec.get("stats"), tok = dec.get("ctx_tokens"), acts = dec.get("ctx_acts");
  if (!feats || !stats || !tok || !acts) return null;
  const [N, C, W] = tok.shape;
  if (feats.size !== N || acts.shape.join() !== tok.shape.join()) throw new Error(`dashboard arrays disagree: [${tok.shape}] vs [${acts.shape}]`);
  return { feats, stats, tok, acts, grp: dec.get("ctx_group"), hist: dec.get("hist_counts"), edges: dec.get("hist_edges"),
    lc: dec.get("logit_counts"), lr: dec.get("logit_range"), eidx: dec.get("effect_idx"), eval: dec.get("effect_val"), N, C, W };
}

function bars(canvas, counts, n, colour) {
  const B = counts ? counts.shape[1] : 0, ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!B) return 0;
  let mx = 0;
  for (let b = 0; b < B; b++) mx = Math.max(mx, at2(counts, n, b, B));
  const w = canvas.width / B;
  ctx.fillStyle = colour;
  for (let b = 0; b < B; b++) {
    const v = at2(counts, n, b, B), hgt = mx ? (Math.log1p(v) / Math.log1p(mx)) * (canvas.height - 2) : 0;  // log scale
    if (v > 0) ctx.fillRect(b * w, canvas.height - hgt, Math.max(1, w - 0.5), hgt);
  }
  return mx;
}

function fillList(ol, D, strings, n, row) {
  clear(ol);
  const k = D.eidx && D.eidx.shape.length === 3 ? D.eidx.shape[2] : 0;
  for (let j = 0; j < k; j++) {
    const o = (n * 2 + row) * k + j;
    ol.appendChild(h("li", { text: String(strings[D.eidx.at(o)] ?? ""), data: { value: D.eval.at(o).toFixed(3) } }));
  }
}

function drawContexts(model, ui, D, n, strings) {
  clear(ui.ctx);
  const labels = (model.get("group_labels") || [])[n] || [], centre = model.get("centre") ?? 0;
  const mx = Math.max(1e-6, D.stats.at(n * 3 + 2));
  let group = -2;
  for (let c = 0; c < D.C; c++) {
    const g = D.grp ? D.grp.at(n * D.C + c) : 0;
    if (g < 0) continue;
    if (g !== group) { group = g; ui.ctx.appendChild(h("h4", { class: "mv-group", text: labels[g] ?? "", data: { group: g } })); }
    const line = h("div", { class: "mv-ctx", data: { group: g, slot: c } });
    for (let w = 0; w < D.W; w++) {
      const o = (n * D.C + c) * D.W + w, t = D.tok.at(o);
      if (t < 0) continue;
      const a = D.acts.at(o), rgb = a > 0 ? rgbAt(a, "oranges", 0, mx) : null, text = String(strings[t] ?? "");
      line.appendChild(h("span", { class: w === centre ? "mv-token mv-centre" : "mv-token", text: text.replace(/\n/g, "↵"),
        title: `${quote(text, 40)} · ${a.toFixed(3)}`, data: { act: a.toFixed(3) },
        style: rgb ? { background: rgbCss(rgb), color: textOn(rgb) } : null }));
    }
    ui.ctx.appendChild(line);
  }
}

function drawHits(model, ui) {
  clear(ui.hits);
  ui.hitsLabel.textContent = model.get("search_label") || "";
  for (const [f, score] of model.get("search_result") || []) {
    ui.hits.appendChild(h("button", { type: "button", class: "mv-hit", text: `#${f}`, title: `score ${Number(score).toFixed(3)}`,
      data: { feature: f, score: Number(score).toFixed(3) }, on: { click: () => setSelection(model, { feature: f }) } }));
  }
}

function draw(model, root, ui, S) {
  const status = model.get("status") || "", progress = model.get("progress") || 0;
  ui.bar.hidden = status !== "computing";
  ui.bar.value = progress;
  ui.status.textContent = status === "computing" ? `computing the dashboards over the corpus… ${Math.round(progress * 100)}%`
    : model.get("corpus_label") || "";
  drawHits(model, ui);
  S.D = ui.banner.guard(() => load(S.dec), S.D);
  const feature = model.get("feature") ?? -1, D = S.D, strings = model.get("strings") || [];
  stamp(root, { feature, status, seq: model.get("seq") ?? 0 });
  let n = -1;
  if (D) for (let i = 0; i < D.N; i++) if (D.feats.at(i) === feature) n = i;
  root.dataset.shown = n >= 0 ? String(feature) : "";
  if (n < 0) {
    ui.head.textContent = feature < 0 ? "select a feature (click a row of the feature view, or search)"
      : `feature #${feature}: ${status === "computing" ? "computing…" : "its dashboard comes from the kernel"}`;
    clear(ui.ctx); clear(ui.prom); clear(ui.supp); ui.stats.textContent = ""; ui.link.hidden = true;
    bars(ui.hist, null, 0, ""); bars(ui.logit, null, 0, "");
    return;
  }
  const [density, mean, max] = [0, 1, 2].map((i) => D.stats.at(n * 3 + i));
  ui.head.textContent = `feature #${feature}`;
  ui.stats.textContent = `density ${(density * 100).toFixed(3)}% · mean when active ${mean.toFixed(3)} · max ${max.toFixed(3)}`;
  stamp(ui.stats, { density: density.toPrecision(4), max: max.toFixed(4) });
  const np = model.get("neuronpedia") || "";
  ui.link.hidden = !np;
  if (np) ui.link.href = np.replace("{}", String(feature));
  stamp(ui.hist, { max: bars(ui.hist, D.hist, n, "#f97316") });
  stamp(ui.logit, { max: bars(ui.logit, D.lc, n, "#2563eb") });
  fillList(ui.prom, D, strings, n, 0);
  fillList(ui.supp, D, strings, n, 1);
  drawContexts(model, ui, D, n, strings);
}

/** @param {{model: Model, el: HTMLElement}} props */
function render({ model, el: root }) {
  const S = { dec: traitDecoder(model), D: null };
  const ui = build(model, root, S);
  return cleanup(ui.stop, redrawOn(model, DRAWN, () => draw(model, root, ui, S)));
}

export default { render };
