// The scaffold every view shares: root classes and stylesheets, the header (title + prompt line),
// the error banner, selection writes, the row/column label strips beside a grid canvas, the hover
// read-out and the colour legend. Text is only ever set with textContent: token strings are untrusted.

import { h, style, clear, watch } from "./dom.js";
import { drawLegend } from "./colormap.js";
import { ROOT_CSS, VIEW_CSS } from "./base_css.js";

/**
 * A widget model whose traits are described by `T` (each view declares its `T`: the Python <-> JS
 * contract with its class in mechviz/widgets/).
 * @template {Record<string, any>} T
 * @typedef {import("@anywidget/types").AnyModel<T>} Model
 */

/**
 * Mark `el` as a mechviz view: the shared root class `mechviz` plus `mechviz-<name>`; inside `el` (so
 * they also apply in shadow roots and static exports) the shared stylesheet, once (ROOT_CSS and the
 * shared `parts` the view uses, from base_css.js), then the view's own `css`.
 */
export function viewRoot(el, name, css = "", parts = []) {
  el.classList.add("mechviz", `mechviz-${name}`);
  style(el, [ROOT_CSS, ...parts].join(""), "base");
  if (css) style(el, css, name);
}

/**
 * Append the header row to `el`: the title (the `title` trait, else `title`), `extra` elements and,
 * with `prompt`, the prompt line (the `prompt` trait, "no data yet" while it is empty). Kept in sync
 * with those traits; returns the function that stops that.
 * @param {Model<{title: string, prompt?: string, model_info?: string}>} model
 */
export function header(model, el, { title = "", prompt = true, extra = [] } = {}) {
  // model_info (what computed the data: model, raw/folded numerics, dtype, device) ends the row
  const titleEl = h("span", { class: "mv-title" });
  const promptEl = prompt ? h("span", { class: "mv-prompt" }) : null;
  const infoEl = h("span", { class: "mv-dim mv-model-info" });
  // note: what the data leave out (e.g. a static export trimmed to its size budget), visible under the header
  const noteEl = h("div", { class: "mv-note", role: "note" });
  el.appendChild(h("div", { class: "mv-header" }, [titleEl, ...extra, promptEl, infoEl]));
  el.appendChild(noteEl);
  const update = () => {
    noteEl.textContent = model.get("note") || "";
    noteEl.hidden = !noteEl.textContent;
    titleEl.textContent = model.get("title") || title;
    const info = model.get("model_info") || "";
    infoEl.textContent = info;
    infoEl.hidden = !info;
    if (!promptEl) return;
    const p = model.get("prompt") || "";
    promptEl.textContent = p ? `prompt: ${p}` : "no data yet";
    promptEl.title = p;  // the line shows two lines of a long prompt; the whole text on hover
  };
  update();
  return watch(model, prompt ? ["title", "prompt", "model_info", "note"] : ["title", "model_info", "note"], update);
}

/**
 * Append the view's one error banner (`role="alert"`) to `el`: it shows the `error` trait, plus the
 * view's own message when its data could not be drawn, over the last good view. `guard(fn, last)`
 * runs `fn` (decode and check the view's arrays): its result, or `last` when it throws, its message
 * then shown in the banner. `stop()` unsubscribes.
 * @param {Model<{error: string}>} model
 */
export function errorBanner(model, el) {
  const banner = h("div", { class: "mv-error", role: "alert" });
  el.appendChild(banner);
  let local = "";
  const show = () => {
    const text = [model.get("error") || "", local].filter(Boolean).join("\n");
    banner.textContent = text;
    el.classList.toggle("mv-has-error", !!text);
  };
  show();
  return {
    el: banner,
    guard(fn, last) {
      let out = last, msg = "";
      try { out = fn(); } catch (e) { msg = String((e && e.message) || e); }
      if (msg !== local) { local = msg; show(); }
      return out;
    },
    stop: watch(model, ["error"], show),
  };
}

/**
 * A data view's preamble: `viewRoot` (with VIEW_CSS and the shared `parts`), `header` (its
 * options: `title`, `prompt`, `extra`) and `errorBanner`. Returns {banner, stop}.
 * @param {Model<any>} model
 * @param {HTMLElement} el
 * @param {string} name
 * @param {string} css
 * @param {{parts?: string[], title?: string, prompt?: boolean, extra?: Node[]}} [options]
 */
export function scaffold(model, el, name, css, { parts = [], ...headerOptions } = {}) {
  viewRoot(el, name, css, [VIEW_CSS, ...parts]);
  const stopHeader = header(model, el, headerOptions);
  const banner = errorBanner(model, el);
  return { banner, stop: () => { stopHeader(); banner.stop(); } };
}

/** Set traits the browser owns (a selection, e.g. `{layer: 2, head: 0}`, or a switch) and sync them
 * in one `save_changes()`. */
export function setSelection(model, kv) {
  for (const [k, v] of Object.entries(kv)) model.set(k, v);
  model.save_changes();
}

/** Select `value` for trait `name`, or deselect (-1) when it is already selected. */
export function toggleSelection(model, name, value) {
  setSelection(model, { [name]: (model.get(name) ?? -1) === value ? -1 : value });
}

/** One function that calls all of `fns` (a view's cleanup). */
export function cleanup(...fns) {
  return () => { for (const f of fns) f(); };
}

/** Write `values` as strings into `el`'s data-* attributes (what the tests and probes read). */
export function stamp(el, values) {
  for (const [k, v] of Object.entries(values)) el.dataset[k] = String(v);
}

/**
 * The column and row label strips beside a grid canvas, laid out with it in a 2 x 2 grid (`wrap`:
 * corner, columns / rows, canvas). `update(cols, rows, cw, ch)` takes a spec `{text, title?, data?}`
 * per label and cells of `cw` x `ch` px, and rebuilds only when any of that changed; `onCol(i, spec)`
 * / `onRow(i, spec)` make the labels clickable. `select(col, row)` marks one column and one row (-1: none).
 * `vertical`: column labels run bottom to top (long labels in narrow columns).
 */
export function labelStrips(canvas, { vertical = false, onCol = null, onRow = null } = {}) {
  const colhead = h("div", { class: vertical ? "mv-colhead mv-vertical" : "mv-colhead" });
  const rowhead = h("div", { class: "mv-rowhead" });
  const wrap = h("div", { class: "mv-gridwrap" }, [h("div"), colhead, rowhead, canvas]);
  let key = null;
  const label = (cls, spec, i, size, onClick) => h("div", {
    class: onClick ? `${cls} mv-click` : cls, data: { index: i, ...spec.data }, title: spec.title,
    style: size, text: String(spec.text ?? ""), on: onClick ? { click: () => onClick(i, spec) } : null,
  });
  return {
    wrap,
    colhead,
    rowhead,
    update(cols, rows, cw, ch) {
      const k = JSON.stringify([cols, rows, cw, ch]);
      if (k === key) return;
      key = k;
      clear(colhead);
      clear(rowhead);
      const cs = { width: `${cw}px`, minWidth: `${cw}px`, ...(vertical ? { lineHeight: `${cw}px` } : {}) };
      const rs = { height: `${ch}px`, lineHeight: `${ch}px` };
      cols.forEach((spec, i) => colhead.appendChild(label("mv-collabel", spec, i, cs, onCol)));
      rows.forEach((spec, i) => rowhead.appendChild(label("mv-rowlabel", spec, i, rs, onRow)));
    },
    select(col, row) {
      for (const s of colhead.children) s.classList.toggle("mv-selected", Number(s.dataset.index) === col);
      for (const s of rowhead.children) s.classList.toggle("mv-selected", Number(s.dataset.index) === row);
    },
  };
}

/**
 * The hover read-out line: `show(text, data)` writes the text and data-* attributes (a null value
 * removes one); `reset(key)` goes back to `hint` when `key` (what the data are) changed, since the
 * read-out then described other data.
 */
export function readout(hint) {
  const el = h("div", { class: "mv-info", text: hint });
  let key;
  return {
    el,
    show(text, data = {}) {
      el.textContent = text;
      for (const [k, v] of Object.entries(data)) {
        if (v == null) delete el.dataset[k];
        else el.dataset[k] = String(v);
      }
    },
    reset(k) {
      if (k === key) return;
      key = k;
      el.textContent = hint;
      for (const a of Object.keys(el.dataset)) delete el.dataset[a];
    },
  };
}

/**
 * A colour legend: low label, a strip of colour map `cmap`, high label (`nodes`, to place in a
 * controls row). `set(cmap, lo, hi, title)` changes it.
 */
export function legend(cmap, lo = "", hi = "", title = null) {
  const canvas = h("canvas", { class: "mv-legend", width: 256, height: 1 });
  const loEl = h("span", { class: "mv-dim mv-legend-lo" });
  const hiEl = h("span", { class: "mv-dim mv-legend-hi" });
  let shown = null;
  const set = (map, l, hgh, t = null) => {
    if (map !== shown) { drawLegend(canvas, map); shown = map; }
    loEl.textContent = l;
    hiEl.textContent = hgh;
    if (t != null) canvas.title = t;
  };
  set(cmap, lo, hi, title);
  return { nodes: [loEl, canvas, hiEl], canvas, set };
}

/** A feature id as typed: a non-negative integer, else null. */
export function parseFeature(text) {
  const t = String(text).trim();
  const f = /^\d+$/.test(t) ? Number(t) : NaN;
  return Number.isSafeInteger(f) ? f : null;
}

/** A number as typed (a steering value): a finite number, else null. */
export function parseValue(text) {
  const t = String(text).trim();
  const v = t === "" ? NaN : Number(t);
  return Number.isFinite(v) ? v : null;
}
