// Sequential colour maps as 256-entry RGBA lookup tables. "blues": 0 = white, 1 = dark blue.

const STOPS = {
  blues: [[255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [33, 113, 181], [8, 48, 107]],
  // oranges: 0 = white, 1 = dark orange (SAE feature activations)
  oranges: [[255, 255, 255], [254, 230, 206], [253, 174, 107], [241, 105, 19], [166, 54, 3], [127, 39, 4]],
  // viridis: 0 = dark purple, 1 = yellow (entropy: higher = lighter)
  viridis: [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
  // diverging, centred: 0 = blue, 0.5 = white, 1 = red (patching: negative blue, positive red)
  rdbu: [[33, 102, 172], [103, 169, 207], [209, 229, 240], [255, 255, 255], [253, 219, 199], [239, 138, 98], [178, 24, 43]],
};

const CACHE = {};

/** Uint8ClampedArray(256 * 4): RGBA for index round(v * 255), v in [0, 1]. */
export function colormap(name = "blues") {
  if (CACHE[name]) return CACHE[name];
  const stops = STOPS[name] || STOPS.blues;
  const lut = new Uint8ClampedArray(256 * 4);
  const n = stops.length - 1;
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * n;
    const k = Math.min(n - 1, Math.floor(x));
    const f = x - k;
    for (let c = 0; c < 3; c++) lut[i * 4 + c] = Math.round(stops[k][c] + (stops[k + 1][c] - stops[k][c]) * f);
    lut[i * 4 + 3] = 255;
  }
  CACHE[name] = lut;
  return lut;
}

/** LUT index for a value in [vmin, vmax] (NaN -> -1). */
export function lutIndex(v, vmin = 0, vmax = 1) {
  if (Number.isNaN(v)) return -1;
  const t = (v - vmin) / (vmax - vmin || 1);
  return t <= 0 ? 0 : t >= 1 ? 255 : Math.round(t * 255);
}

/** [r, g, b] for a value in [vmin, vmax] on colour map `name` (NaN -> null). */
export function rgbAt(v, name = "blues", vmin = 0, vmax = 1) {
  const i = lutIndex(v, vmin, vmax);
  if (i < 0) return null;
  const lut = colormap(name);
  return [lut[i * 4], lut[i * 4 + 1], lut[i * 4 + 2]];
}

/** A readable text colour ("#000" or "#fff") on top of background [r, g, b]. */
export function textOn(rgb) {
  if (!rgb) return "#000";
  const lum = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2];
  return lum < 140 ? "#fff" : "#000";
}

/** rgb(...) CSS string of [r, g, b]. */
export function rgbCss(rgb) {
  return rgb ? `rgb(${rgb[0]},${rgb[1]},${rgb[2]})` : "rgb(220,220,220)";
}

/** Draw a horizontal legend strip of colour map `name` on `canvas` (256 x 1 backing store). */
export function drawLegend(canvas, name = "blues") {
  canvas.width = 256;
  canvas.height = 1;
  const lut = colormap(name);
  const ctx = canvas.getContext("2d");
  const img = new ImageData(256, 1);
  img.data.set(lut);
  ctx.putImageData(img, 0, 0);
}
