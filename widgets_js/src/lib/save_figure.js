// The "save" control in a view's header: the view's current drawing (selection included) downloaded as
// PNG and SVG in the browser alone, no kernel (so it works in a static export too). A canvas view's PNG is
// its grid (canvases and the label strips beside them) at devicePixelRatio x the chosen scale under a
// title band (the header's title, subtitle and prompt); its SVG wraps that PNG with the title as text. An
// SVG view's SVG is its own drawing with the computed styles inlined; its PNG is that SVG rasterised.
// Text is only ever set with textContent (token strings are untrusted).

import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const STYLED = ["fill", "fill-opacity", "stroke", "stroke-width", "stroke-opacity", "stroke-dasharray", "opacity",
  "font-family", "font-size", "font-weight", "text-anchor", "dominant-baseline", "visibility", "display"];
const LINE = 16, FONT = "12px sans-serif";

/** The view's drawing: its largest visible <svg> or <canvas> (the header's own control excluded). */
export function drawingOf(root) {
  let best = null, area = 0;
  for (const c of root.querySelectorAll("svg, canvas")) {
    if (c.ownerSVGElement || c.closest(".mv-save")) continue;
    const r = c.getBoundingClientRect(), a = r.width * r.height;
    if (a > area) { best = c; area = a; }
  }
  return best;
}

/** The title band's lines: title (and subtitle), prompt, from the view's header. */
function headerLines(root) {
  const text = (sel) => (root.querySelector(`.mv-header ${sel}`)?.textContent || "").trim();
  return [[text(".mv-title"), text(".mv-subtitle")].filter(Boolean).join(" · "), text(".mv-prompt")].filter(Boolean);
}

const SKIP = ".mv-header, .mv-note, .mv-save, .mv-error, input, select, button, option, style, script, textarea";
const clear = (c) => !c || c === "transparent" || /^rgba\(.*,\s*0\)$/.test(c);

/** Draw `region` (a canvas; or an element: its backgrounds, canvases and texts where they are shown, header and
 * controls left out) into a new canvas at `s` device pixels per CSS pixel, under the title band. */
function rasterise(region, lines, s, top = null) {
  const rect = region.getBoundingClientRect();
  let right = rect.right;   // an element's box ends where its last drawn part does (a grid's wrap may stretch wider)
  if (region.tagName !== "CANVAS") {
    right = rect.left;
    for (const e of region.querySelectorAll("*")) {
      if (e.closest(SKIP)) continue;
      const r = e.getBoundingClientRect();
      if (r.width && r.height && (e.tagName === "CANVAS" || !e.children.length)) right = Math.max(right, r.right);
    }
    right = Math.min(rect.right, right + 4);
  }
  const box = { left: rect.left, top: top ?? rect.top, width: right - rect.left, height: rect.bottom - (top ?? rect.top) };
  const w = Math.max(360, Math.ceil(box.width)), band = LINE * lines.length + 8, H = Math.ceil(box.height) + band;
  const out = h("canvas", { width: Math.round(w * s), height: Math.round(H * s) });
  const ctx = out.getContext("2d");
  ctx.scale(s, s);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, H);
  ctx.fillStyle = "#111827";
  ctx.font = FONT;
  ctx.textBaseline = "top";
  lines.forEach((t, i) => ctx.fillText(t, 4, 4 + LINE * i, w - 8));
  ctx.imageSmoothingEnabled = false;
  const X = (r) => r.left - box.left, Y = (r) => r.top - box.top + band;
  ctx.save();
  ctx.beginPath();
  ctx.rect(0, band, w, H - band);   // nothing of the drawing over the title band
  ctx.clip();
  if (region.tagName === "CANVAS") {
    ctx.drawImage(region, 0, band, rect.width, rect.height);
    return { canvas: out, w, H };
  }
  for (const e of region.querySelectorAll("*")) {   // document order: a parent's background under its children
    if (e.closest(SKIP)) continue;
    const r = e.getBoundingClientRect();
    if (!r.width || !r.height || r.bottom <= box.top) continue;
    if (e.tagName === "CANVAS") { ctx.drawImage(e, X(r), Y(r), r.width, r.height); continue; }
    const bg = getComputedStyle(e).backgroundColor;
    if (!clear(bg)) { ctx.fillStyle = bg; ctx.fillRect(X(r), Y(r), r.width, r.height); }
  }
  ctx.textBaseline = "middle";
  const walk = document.createTreeWalker(region, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    const e = n.parentElement, text = n.textContent.trim();
    if (!text || !e || e.closest(SKIP)) continue;
    const range = document.createRange();
    range.selectNodeContents(n);
    const r = range.getBoundingClientRect(), cs = getComputedStyle(e);
    if (!r.width || !r.height || cs.visibility === "hidden" || r.bottom <= box.top) continue;
    ctx.save();
    const pr = e.getBoundingClientRect();   // text shows only inside its element (label strips clip long tokens)
    ctx.beginPath();
    ctx.rect(X(pr), Y(pr), pr.width, pr.height);
    ctx.clip();
    ctx.font = `${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
    ctx.fillStyle = cs.color;
    if (cs.writingMode.startsWith("vertical") || e.closest(".mv-vertical")) {
      ctx.translate(X(r) + r.width / 2, Y(r) + r.height);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(text, 1, 0, r.height - 1);
    } else {
      ctx.fillText(text, X(r), Y(r) + r.height / 2, r.width + 1);
    }
    ctx.restore();
  }
  ctx.restore();
  return { canvas: out, w, H };
}

/** An <svg> element's clone with its computed styles inlined, inside a document that also holds the title band. */
function svgDocument(svg, lines) {
  const box = svg.getBoundingClientRect();
  const w = Math.max(360, Math.ceil(box.width)), band = LINE * lines.length + 8;
  const clone = svg.cloneNode(true);
  const src = [svg, ...svg.querySelectorAll("*")], dst = [clone, ...clone.querySelectorAll("*")];
  src.forEach((e, i) => {
    const cs = getComputedStyle(e);
    dst[i].setAttribute("style", STYLED.map((p) => `${p}:${cs.getPropertyValue(p)}`).join(";"));
  });
  clone.setAttribute("x", "0");
  clone.setAttribute("y", String(band));
  clone.setAttribute("width", String(Math.ceil(box.width)));
  clone.setAttribute("height", String(Math.ceil(box.height)));
  const doc = document.createElementNS(NS, "svg");
  doc.setAttribute("xmlns", NS);
  doc.setAttribute("width", String(w));
  doc.setAttribute("height", String(Math.ceil(box.height) + band));
  doc.appendChild(bandNodes(lines, w, Math.ceil(box.height) + band));
  doc.appendChild(clone);
  return { doc, w, H: Math.ceil(box.height) + band };
}

function bandNodes(lines, w, H) {
  const g = document.createElementNS(NS, "g");
  const bg = document.createElementNS(NS, "rect");
  for (const [k, v] of Object.entries({ width: w, height: H, fill: "#fff" })) bg.setAttribute(k, String(v));
  g.appendChild(bg);
  lines.forEach((t, i) => {
    const el = document.createElementNS(NS, "text");
    for (const [k, v] of Object.entries({ x: 4, y: 4 + LINE * i + 12, "font-family": "sans-serif", "font-size": 12, fill: "#111827" })) {
      el.setAttribute(k, String(v));
    }
    el.textContent = t;
    g.appendChild(el);
  });
  return g;
}

const serialise = (doc) => '<?xml version="1.0" encoding="UTF-8"?>\n' + new XMLSerializer().serializeToString(doc);
const pngBlob = (canvas) => new Promise((ok, fail) => canvas.toBlob((b) => (b ? ok(b) : fail(new Error("toBlob gave nothing"))), "image/png"));

/** The view's drawing as {png: Blob} or {svg: Blob}, at `scale` x devicePixelRatio (PNG). */
export async function figureBlob(root, format, scale = 2) {
  const drawing = drawingOf(root);
  if (!drawing) throw new Error("nothing drawn yet");
  const lines = headerLines(root), s = (window.devicePixelRatio || 1) * scale;
  if (drawing.tagName.toLowerCase() === "svg") {
    const { doc, w, H } = svgDocument(drawing, lines);
    const text = serialise(doc);
    if (format === "svg") return new Blob([text], { type: "image/svg+xml" });
    const url = URL.createObjectURL(new Blob([text], { type: "image/svg+xml" }));
    try {
      const img = new Image();
      await new Promise((ok, fail) => { img.onload = ok; img.onerror = () => fail(new Error("the SVG did not load")); img.src = url; });
      const out = h("canvas", { width: Math.round(w * s), height: Math.round(H * s) });
      const ctx = out.getContext("2d");
      ctx.scale(s, s);
      ctx.drawImage(img, 0, 0, w, H);
      return pngBlob(out);
    } finally { URL.revokeObjectURL(url); }
  }
  // the grid with its label strips; a view of text around small canvases (a dashboard): the whole view under its header
  const r = drawing.getBoundingClientRect(), grid0 = drawing.closest(".mv-gridwrap");
  const whole = !grid0 && r.width * r.height < 60000;
  const region = grid0 || (whole ? root : drawing);
  const top = whole ? root.querySelector(".mv-header")?.getBoundingClientRect().bottom ?? null : null;
  if (format === "png") return pngBlob(rasterise(region, lines, s, top).canvas);
  const grid = rasterise(region, [], s, top);          // the drawing alone as the embedded image; the title as text
  const band = LINE * lines.length + 8, W = grid.w, H = grid.H + band;
  const doc = document.createElementNS(NS, "svg");
  for (const [k, v] of Object.entries({ xmlns: NS, width: W, height: H })) doc.setAttribute(k, String(v));
  doc.appendChild(bandNodes(lines, W, H));
  const img = document.createElementNS(NS, "image");
  for (const [k, v] of Object.entries({ x: 0, y: band, width: grid.w, height: grid.H, href: grid.canvas.toDataURL("image/png") })) {
    img.setAttribute(k, String(v));
  }
  doc.appendChild(img);
  return new Blob([serialise(doc)], { type: "image/svg+xml" });
}

function download(root, blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename, style: { display: "none" } });
  root.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/**
 * The header's save control for the view rooted at `root`: a scale menu and PNG / SVG buttons that download
 * `<name>.png` / `<name>.svg` of what the view draws now (no kernel needed). Failures show in the control's title.
 */
export function saveButton(root, name) {
  const small = { fontSize: "11px", padding: "0 4px", marginLeft: "3px", cursor: "pointer" };
  const scale = h("select", { class: "mv-save-scale", "aria-label": "PNG scale", title: "PNG scale (x the screen's pixel ratio)", style: small },
    [1, 2, 4].map((k) => h("option", { value: String(k), text: `${k}×`, selected: k === 2 })));
  const box = h("span", { class: "mv-save", style: { marginLeft: "6px", whiteSpace: "nowrap" } }, [scale]);
  for (const format of ["png", "svg"]) {
    box.appendChild(h("button", {
      class: `mv-save-${format}`, type: "button", text: `⤓ ${format.toUpperCase()}`, style: small,
      title: `save this view as drawn now as ${format.toUpperCase()}`,
      on: { click: async () => {
        try {
          download(root, await figureBlob(root, format, Number(scale.value) || 2), `${name}.${format}`);
          box.title = "";
        } catch (e) { box.title = `could not save: ${(e && e.message) || e}`; }
      } },
    }));
  }
  return box;
}
