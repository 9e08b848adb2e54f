// Sequential colour maps as 256-entry RGBA lookup tables. "blues": 0 = white, 1 = dark blue.

const STOPS = {
  blues: [[255, 255, 255], [222, 235, 247], [158, 202, 225], [66, 146, 198], [33, 113, 181], [8, 48, 107]],
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

/** CSS colour for a value, and a readable text colour on top of it. */
export function cssColor(v, name = "blues", vmin = 0, vmax = 1) {
  const i = lutIndex(v, vmin, vmax);
  if (i < 0) return { bg: "rgb(220,220,220)", fg: "#000" };
  const lut = colormap(name);
  return { bg: `rgb(${lut[i * 4]},${lut[i * 4 + 1]},${lut[i * 4 + 2]})`, fg: i > 140 ? "#fff" : "#000" };
}
