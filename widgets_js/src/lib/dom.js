// DOM helpers. Text is only ever set with textContent: token strings are untrusted.

/** h("div", {class: "x", data: {k: v}, style: {...}, title, text, on: {click: fn}}, children) */
export function h(tag, props = {}, children = []) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "style") Object.assign(el.style, v);
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, String(v));
  }
  for (const c of [].concat(children)) if (c != null) el.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  return el;
}

/** Scoped stylesheet inside the widget element (works in the document, shadow roots and exports);
 * `name` goes into its data-mv-css attribute. */
export function style(el, css, name = "") {
  const s = document.createElement("style");
  s.textContent = css;
  if (name) s.dataset.mvCss = name;
  el.appendChild(s);
  return s;
}

/** Remove all children of `el`. */
export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

/** A token as a short readable label: JSON-quoted (shows spaces and newlines). */
export function quote(tok, max = 24) {
  let s = JSON.stringify(String(tok));
  if (s.length > max) s = s.slice(0, max - 2) + "…\"";
  return s;
}

/**
 * Coalesce redraws: `schedule()` runs `fn` once on the next animation frame (with a timer fallback,
 * since hidden tabs do not run animation frames). Returns {schedule, cancel}.
 */
export function coalesce(fn, fallbackMs = 250) {
  let raf = 0, timer = 0;
  const run = () => {
    if (raf) cancelAnimationFrame(raf);
    if (timer) clearTimeout(timer);
    raf = timer = 0;
    fn();
  };
  return {
    schedule() {
      if (raf || timer) return;
      raf = requestAnimationFrame(run);
      timer = setTimeout(run, fallbackMs);
    },
    cancel() {
      if (raf) cancelAnimationFrame(raf);
      if (timer) clearTimeout(timer);
      raf = timer = 0;
    },
  };
}

// Call fn whenever any of the model's traits `names` changes; returns the function that stops it.
export function watch(model, names, fn) {
  for (const n of names) model.on(`change:${n}`, fn);
  return () => { for (const n of names) model.off(`change:${n}`, fn); };
}

// Draw now, then redraw (once per animation frame at most) whenever any trait in `names` changes;
// returns the view's cleanup function.
export function redrawOn(model, names, draw) {
  const painter = coalesce(draw);
  const unwatch = watch(model, names, painter.schedule);
  draw();
  return () => { painter.cancel(); unwatch(); };
}
