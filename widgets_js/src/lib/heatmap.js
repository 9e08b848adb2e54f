// Canvas heatmaps: values -> colour LUT -> ImageData (one pixel per cell) -> drawImage scaled up with
// imageSmoothingEnabled = false, so every cell is a crisp block of `cell` x `cell` pixels at (0, 0).

import { colormap } from "./colormap.js";

const NAN_RGB = [220, 220, 220];

function scratch(w, h) {
  const c = typeof OffscreenCanvas === "function" ? new OffscreenCanvas(w, h) : document.createElement("canvas");
  c.width = w;
  c.height = h;
  return c;
}

/**
 * Fill ImageData(cols, rows) from `arr` (decoded array) starting at flat element `offset`.
 * uint8 arrays with scale 1/255 map bytes straight to the LUT.
 */
export function toImageData(arr, offset, rows, cols, { cmap = "blues", vmin = 0, vmax = 1 } = {}) {
  const lut = colormap(cmap);
  const img = new ImageData(cols, rows);
  const px = img.data;
  const n = rows * cols;
  const direct = arr.dtype === "uint8" && vmin === 0 && vmax === 1 && Math.abs(arr.scale * 255 - 1) < 1e-9;
  const span = vmax - vmin || 1;
  for (let i = 0; i < n; i++) {
    let k;
    if (direct) k = arr.raw[offset + i];
    else {
      const v = arr.at(offset + i);
      if (Number.isNaN(v)) {
        px[i * 4] = NAN_RGB[0]; px[i * 4 + 1] = NAN_RGB[1]; px[i * 4 + 2] = NAN_RGB[2]; px[i * 4 + 3] = 255;
        continue;
      }
      const t = (v - vmin) / span;
      k = t <= 0 ? 0 : t >= 1 ? 255 : Math.round(t * 255);
    }
    px[i * 4] = lut[k * 4]; px[i * 4 + 1] = lut[k * 4 + 1]; px[i * 4 + 2] = lut[k * 4 + 2]; px[i * 4 + 3] = 255;
  }
  return img;
}

/**
 * Draw a rows x cols block of `arr` on `canvas`, `cell` px per cell (canvas is resized to fit).
 * Returns the canvas 2D context so callers can draw overlays.
 */
export function drawHeatmap(canvas, arr, offset, rows, cols, cell, opts = {}) {
  const w = Math.max(1, Math.round(cols * cell)), h = Math.max(1, Math.round(rows * cell)); // cells may be fractional
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = toImageData(arr, offset, rows, cols, opts);
  if (cell === 1) {
    ctx.putImageData(img, 0, 0);
    return ctx;
  }
  const tmp = scratch(cols, rows);
  tmp.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, w, h);
  ctx.drawImage(tmp, 0, 0, cols, rows, 0, 0, w, h);
  return ctx;
}

/** Stroke a rectangle inside (x, y, w, h) so the centres of the cells it surrounds keep their colour. */
export function outline(ctx, x, y, w, h, color = "#f59e0b", lw = 2) {
  ctx.save();
  ctx.strokeStyle = color;
  ctx.lineWidth = lw;
  ctx.strokeRect(x + lw / 2, y + lw / 2, w - lw, h - lw);
  ctx.restore();
}

/** Diagonal hatching inside (x, y, w, h): marks missing (NaN) or estimated cells. */
export function hatch(ctx, x, y, w, h, color = "rgba(100,116,139,0.55)", step = 5) {
  ctx.save();
  ctx.beginPath();
  ctx.rect(x, y, w, h);
  ctx.clip();
  ctx.strokeStyle = color;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let d = -h; d < w; d += step) {
    ctx.moveTo(x + d, y + h);
    ctx.lineTo(x + d + h, y);
  }
  ctx.stroke();
  ctx.restore();
}

/** Resize a canvas's backing store (and CSS size) to w x h px; returns its 2D context. */
export function sizeCanvas(canvas, w, h) {
  w = Math.max(1, Math.round(w));
  h = Math.max(1, Math.round(h));
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  canvas.style.width = `${w}px`;
  canvas.style.height = `${h}px`;
  return canvas.getContext("2d");
}

/** Cell (row, col) under a mouse event on a grid canvas with cells of cw x ch px, or null. */
export function cellAtWH(canvas, event, cw, ch, rows, cols) {
  const r = canvas.getBoundingClientRect();
  const sx = canvas.width / (r.width || canvas.width);
  const sy = canvas.height / (r.height || canvas.height);
  const x = (event.clientX - r.left) * sx, y = (event.clientY - r.top) * sy;
  const col = Math.floor(x / cw), row = Math.floor(y / ch);
  if (row < 0 || col < 0 || row >= rows || col >= cols) return null;
  return { row, col };
}
