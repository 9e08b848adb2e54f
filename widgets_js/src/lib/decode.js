// Decode the packed arrays produced by mechviz/widgets/transport.py:pack
//   {dtype: "uint8"|"float16"|"float32"|"int32", shape: [...], scale: number, data: <binary>}
// `data` arrives as a DataView (JupyterLab, html-manager), an ArrayBuffer or a typed array
// (other managers). uint8 means value = byte * scale.

/**
 * A packed array as it arrives in a synced trait.
 * @typedef {{dtype: "uint8"|"float16"|"float32"|"int32", shape: number[], scale: number,
 *            data: DataView|ArrayBuffer|ArrayBufferView}} Packed
 */
/**
 * A decoded array: `raw` typed array, `at(i)` the real value of flat element i.
 * @typedef {{shape: number[], dtype: string, size: number, raw: Uint8Array|Float32Array|Int32Array,
 *            scale: number, at: (i: number) => number}} Decoded
 */

const SIZES = { uint8: 1, float16: 2, float32: 4, int32: 4 };

let HALF_LUT = null;

/** 65536-entry float16 -> float32 table (works on engines without Float16Array). */
export function halfLut() {
  if (HALF_LUT) return HALF_LUT;
  const lut = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const f = h & 0x3ff;
    if (e === 0) lut[h] = s * f * 2 ** -24;
    else if (e === 31) lut[h] = f ? NaN : s * Infinity;
    else lut[h] = s * (1 + f / 1024) * 2 ** (e - 15);
  }
  HALF_LUT = lut;
  return lut;
}

/** Any binary payload -> {buffer, offset, length} (bytes). */
function bytesOf(buf) {
  if (buf instanceof ArrayBuffer) return { buffer: buf, offset: 0, length: buf.byteLength };
  if (buf && ArrayBuffer.isView(buf)) return { buffer: buf.buffer, offset: buf.byteOffset, length: buf.byteLength };
  throw new TypeError("mechviz: packed array data is not binary");
}

/**
 * Decode a packed array. Returns {shape, dtype, size, raw, scale, at(i)}: `raw` is a typed array
 * (Uint8Array for uint8, Float32Array for float16/float32, Int32Array for int32) and `at(i)` the
 * real value of flat element i. Returns null for a missing/empty payload.
 * @param {Packed|null|undefined} packed
 * @returns {Decoded|null}
 */
export function decode(packed) {
  if (!packed || packed.data == null) return null;
  const dtype = packed.dtype || "uint8";
  const shape = (packed.shape || []).map(Number);
  const size = shape.reduce((a, b) => a * b, 1);
  const itemsize = SIZES[dtype];
  if (!itemsize) throw new TypeError(`mechviz: unsupported dtype ${dtype}`);
  let { buffer, offset, length } = bytesOf(packed.data);
  if (length < size * itemsize) throw new RangeError(`mechviz: ${length} bytes for shape [${shape}] ${dtype}`);
  if (offset % itemsize) { // typed arrays need aligned offsets: copy
    buffer = buffer.slice(offset, offset + length);
    offset = 0;
  }
  let raw;
  const scale = dtype === "uint8" ? Number(packed.scale ?? 1 / 255) : 1;
  if (dtype === "uint8") raw = new Uint8Array(buffer, offset, size);
  else if (dtype === "float32") raw = new Float32Array(buffer, offset, size);
  else if (dtype === "int32") raw = new Int32Array(buffer, offset, size);
  else {
    const u16 = new Uint16Array(buffer, offset, size);
    const lut = halfLut();
    raw = new Float32Array(size);
    for (let i = 0; i < size; i++) raw[i] = lut[u16[i]];
  }
  const at = dtype === "uint8" ? (i) => raw[i] * scale : (i) => raw[i];
  return { shape, dtype, size, raw, scale, at };
}

/**
 * A per-view cache of decoded traits: `get(name)` decodes `model.get(name)` only when the payload
 * object changed since the last call (a new value arrives as a new object). Errors propagate and
 * leave the previous decoded value in place (the caller keeps drawing the last good view).
 */
export function traitDecoder(model) {
  const refs = new Map(), vals = new Map();
  return {
    get(name) {
      const packed = model.get(name);
      if (refs.has(name) && refs.get(name) === packed) return vals.get(name);
      const v = decode(packed);
      refs.set(name, packed);
      vals.set(name, v);
      return v;
    },
  };
}
