// Colours for what a view draws itself (canvas text, SVG text) on the page's background, read from the
// front end at draw time instead of hard-coded for a light page: JupyterLab's and Notebook 7's themes set
// --jp-ui-font-color1 and --jp-layout-color0 (dark theme: light text on a dark page); the view root's CSS
// resolves them (`.mechviz{color:var(--jp-ui-font-color1,#222)}`), so its computed colour is the theme's.
// Heatmap cells keep their own white-based colour scale (the scale, not the page, sets their colours).

/**
 * The theme's text colours as CSS colour strings, resolved now for element `el` (inside a view root).
 * @param {Element} el
 * @returns {{text: string, dim: string, background: string}}
 */
export function themeColours(el) {
  const cs = getComputedStyle(el);
  const v = (name) => cs.getPropertyValue(name).trim();
  return {
    text: cs.color || v("--jp-ui-font-color1") || "#222",
    dim: v("--jp-ui-font-color2") || cs.color || "#555",
    background: v("--jp-layout-color0") || "#fff",
  };
}

/**
 * Call `callback` when the front end switches theme (JupyterLab / Notebook 7 mark it on <body> with
 * data-jp-theme-name and data-jp-theme-light; the OS colour scheme too): what a view painted itself
 * must be repainted then. Returns the function that stops watching.
 * @param {() => void} callback
 */
export function onThemeChange(callback) {
  let timer = 0;
  const fire = () => {  // now, and once more when the new theme's stylesheet has had time to apply
    callback();
    clearTimeout(timer);
    timer = setTimeout(callback, 300);
  };
  const obs = new MutationObserver(fire);
  obs.observe(document.body, { attributes: true, attributeFilter: ["data-jp-theme-name", "data-jp-theme-light"] });
  const mq = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  mq?.addEventListener?.("change", fire);
  return () => { obs.disconnect(); clearTimeout(timer); mq?.removeEventListener?.("change", fire); };
}
