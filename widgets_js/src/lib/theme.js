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
