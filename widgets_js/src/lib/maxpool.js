// Max-pooling one attention head to fewer pixels than it has tokens (the zoomed head of a long prompt).

// bin p of P over n cells covers [floor(p*n/P), floor((p+1)*n/P)) (as transport.py:maxpool bins the overview)
export const binStart = (p, n, P) => Math.floor((p * n) / P);

/**
 * One n x n head (flat at `off` in the decoded `arr`) max-pooled to P x P (P < n): each pixel the
 * largest of the cells it covers, so a single sharp weight stays visible when a long prompt's head is
 * drawn on fewer pixels than it has tokens (nearest sampling would drop it). Same dtype and scale.
 */
export function maxPoolHead(arr, off, n, P, signed = false) {
  const raw = arr.raw, out = new raw.constructor(P * P);
  if (!(raw instanceof Uint8Array)) out.fill(-Infinity);
  const cs = new Int32Array(P + 1);
  for (let p = 0; p <= P; p++) cs[p] = binStart(p, n, P);
  for (let pr = 0; pr < P; pr++) {
    const o = pr * P;
    for (let i = cs[pr]; i < cs[pr + 1]; i++) {
      const row = off + i * n;
      for (let pc = 0; pc < P; pc++) {
        let m = out[o + pc];
        if (signed) { // uint8 differences: the byte furthest from zero (128) either way
          let d = i === cs[pr] ? -1 : Math.abs(m - 128);
          for (let j = row + cs[pc], e = row + cs[pc + 1]; j < e; j++) {
            const dj = Math.abs(raw[j] - 128);
            if (dj > d) { d = dj; m = raw[j]; }
          }
        } else {
          for (let j = row + cs[pc], e = row + cs[pc + 1]; j < e; j++) if (raw[j] > m) m = raw[j];
        }
        out[o + pc] = m;
      }
    }
  }
  const scale = arr.scale;
  return { shape: [P, P], dtype: arr.dtype, size: P * P, raw: out, scale,
    at: arr.dtype === "uint8" ? (i) => out[i] * scale : (i) => out[i] };
}
