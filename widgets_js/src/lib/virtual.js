// A virtualised grid for views with one column per token (thousands at long prompts): the row labels,
// then a horizontal scroller holding the column labels and the grid canvas. The canvas covers only the
// scroller's viewport (it is sticky) and is repainted for the visible columns when the view scrolls or
// resizes (once per animation frame); column labels exist as DOM nodes only for the visible columns.
// A 2,048-token grid so costs what ~50 columns cost, the canvas stays far within what browsers draw,
// and cells and labels keep a readable size (the grid scrolls instead of shrinking).
// Text is only ever set with textContent: token strings are untrusted.

import { h, clear, coalesce } from "./dom.js";

/** The virtual grid's CSS (with GRID_CSS: the label strips' fonts and colours). */
export const VIRTUAL_CSS = `
.mechviz .mv-virtual{display:grid;grid-template-columns:auto minmax(0,max-content);overflow:visible}
.mechviz .mv-virtual .mv-vscroll{overflow-x:auto;overflow-y:hidden}
.mechviz .mv-virtual .mv-vinner{position:relative}
.mechviz .mv-virtual .mv-colhead{position:relative;max-height:none;font-size:11px;overflow:hidden}
.mechviz .mv-virtual .mv-rowhead{font-size:11px}
.mechviz .mv-virtual .mv-collabel{position:absolute;bottom:0;overflow:hidden}
.mechviz .mv-virtual canvas{position:sticky;left:0}
`;

const OVERSCAN = 2;   // labels a little past the viewport's edges: no blank edge while a frame is pending
const UNLAID_W = 1024; // px drawn while the grid is not laid out yet (detached, hidden): resized once it is

/**
 * `canvas` in a virtual grid. `paint(ctx, view)` draws the visible columns `[view.c0, view.c1)`: ctx is
 * translated so that column c starts at x = c * cw (content coordinates), as on a full-width canvas.
 * `onCol(i)` / `onRow(i, spec)`: label clicks. Returns
 * - `wrap`: the element to place;
 * - `update({T, R, cw, ch, col, rows, key, vertical})`: the grid's shape, `col(i)` the spec `{text, title?}`
 *   of column label i (called for visible columns only), `rows` the row label specs `{text, title?, data?}`,
 *   `key` what the column labels show (they are rebuilt when it, cw or T change); `vertical`: column
 *   labels run bottom to top (long labels in narrow columns);
 * - `repaint()`: paint now (after the data or a selection changed);
 * - `select(col, row)`: mark one column and one row label (-1: none);
 * - `reveal(col)`: scroll column `col` into view (centred) when it is not in view (a grid not laid out
 *   yet, detached or hidden, does so once it is);
 * - `cellAt(event)`: the cell {row, col} under a mouse event, or null;
 * - `view()`: the visible range {c0, c1, x0, width}; `stop()`: stop watching the size.
 */
export function virtualGrid(canvas, { paint, onCol = null, onRow = null }) {
  const colhead = h("div", { class: "mv-colhead" });
  const rowhead = h("div", { class: "mv-rowhead" });
  const scroller = h("div", { class: "mv-vscroll" }, [h("div", { class: "mv-vinner" }, [colhead, canvas])]);
  const inner = scroller.firstChild;
  const wrap = h("div", { class: "mv-gridwrap mv-virtual" },
    [h("div", {}, [h("div", { class: "mv-vcorner" }), rowhead]), scroller]);
  const corner = wrap.firstChild.firstChild;
  let vertical = null, colHeight = 0;
  const G = { T: 0, R: 0, cw: 1, ch: 1, col: () => ({ text: "" }), key: null, rowKey: null, labels: "",
    sel: [-1, -1], reveal: -1, view: { c0: 0, c1: 0, x0: 0, width: 1 } };

  const colLabel = (i) => {
    const spec = G.col(i) || {};
    const el = h("div", {
      class: onCol ? "mv-collabel mv-click" : "mv-collabel", data: { index: i }, title: spec.title,
      text: String(spec.text ?? ""), on: onCol ? { click: () => onCol(i, spec) } : null,
      style: { left: `${i * G.cw}px`, width: `${G.cw}px`, ...(vertical ? { lineHeight: `${G.cw}px`, maxHeight: `${colHeight - 4}px` } : { height: `${colHeight}px`, lineHeight: `${colHeight}px` }) },
    });
    if (i === G.sel[0]) el.classList.add("mv-selected");
    return el;
  };
  const labels = (c0, c1) => {          // the DOM holds the labels of the visible columns only
    const a = Math.max(0, c0 - OVERSCAN), b = Math.min(G.T, c1 + OVERSCAN), id = `${G.key}|${G.cw}|${a}|${b}`;
    if (id === G.labels) return;
    G.labels = id;
    clear(colhead);
    const frag = document.createDocumentFragment();
    for (let i = a; i < b; i++) frag.appendChild(colLabel(i));
    colhead.appendChild(frag);
  };
  const measure = () => {
    const full = G.T * G.cw, width = Math.max(1, Math.min(full, scroller.clientWidth || UNLAID_W));
    const x0 = Math.round(Math.max(0, Math.min(scroller.scrollLeft, full - width)));  // whole px: crisp cells
    return { c0: Math.floor(x0 / G.cw), c1: Math.min(G.T, Math.ceil((x0 + width) / G.cw)), x0, width };
  };
  const reveal = (col) => {
    const width = scroller.clientWidth, x = col * G.cw, left = scroller.scrollLeft;
    G.reveal = width ? -1 : col;     // not laid out yet: once it is
    if (!width || (x >= left && x + G.cw <= left + width)) return;
    scroller.scrollLeft = Math.max(0, x - (width - G.cw) / 2);
  };
  const repaint = () => {
    if (!G.T || !G.R) return;
    if (G.reveal >= 0 && G.reveal < G.T && scroller.clientWidth) reveal(G.reveal);
    const v = G.view = measure();
    const w = Math.round(v.width), hgt = Math.max(1, Math.round(G.R * G.ch));
    if (canvas.width !== w) canvas.width = w;
    if (canvas.height !== hgt) canvas.height = hgt;
    canvas.style.width = `${w}px`;
    canvas.style.height = `${hgt}px`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, -v.x0, 0);
    ctx.clearRect(v.x0, 0, w, hgt);
    paint(ctx, v);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    Object.assign(canvas.dataset, { x0: String(v.x0), c0: String(v.c0), c1: String(v.c1) });
    labels(v.c0, v.c1);
  };
  const painter = coalesce(repaint);
  scroller.addEventListener("scroll", painter.schedule, { passive: true });
  const resize = typeof ResizeObserver === "function" ? new ResizeObserver(painter.schedule) : null;
  if (resize) resize.observe(scroller);

  return {
    wrap,
    scroller,
    colhead,
    rowhead,
    update({ T, R, cw, ch, col, rows, key, vertical: vert = false }) {
      Object.assign(G, { T, R, cw, ch, col });
      inner.style.width = `${T * cw}px`;
      if (vert !== vertical) {
        vertical = vert;
        colHeight = vert ? 84 : 20;
        colhead.classList.toggle("mv-vertical", vert);
        colhead.style.height = corner.style.height = `${colHeight}px`;
        G.labels = "";
      }
      if (key !== G.key) { G.key = key; G.labels = ""; }
      const rk = JSON.stringify([rows, ch]);
      if (rk === G.rowKey) return;
      G.rowKey = rk;
      clear(rowhead);
      rows.forEach((spec, i) => rowhead.appendChild(h("div", {
        class: onRow ? "mv-rowlabel mv-click" : "mv-rowlabel", data: { index: i, ...spec.data }, title: spec.title,
        style: { height: `${ch}px`, lineHeight: `${ch}px` }, text: String(spec.text ?? ""),
        on: onRow ? { click: () => onRow(i, spec) } : null,
      })));
    },
    repaint() { painter.cancel(); repaint(); },
    select(col, row) {
      G.sel = [col, row];
      for (const s of colhead.children) s.classList.toggle("mv-selected", Number(s.dataset.index) === col);
      for (const s of rowhead.children) s.classList.toggle("mv-selected", Number(s.dataset.index) === row);
    },
    reveal(col) {
      if (col >= 0 && col < G.T) reveal(col);
    },
    cellAt(e) {
      const r = canvas.getBoundingClientRect();
      const col = Math.floor((e.clientX - r.left + G.view.x0) / G.cw), row = Math.floor((e.clientY - r.top) / G.ch);
      if (row < 0 || col < 0 || row >= G.R || col >= G.T) return null;
      return { row, col };
    },
    view: () => G.view,
    stop() { painter.cancel(); if (resize) resize.disconnect(); },
  };
}
