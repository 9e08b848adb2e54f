// The attribution graph view's SVG helpers and layout (pure: node table in, coordinates out).

const NS = "http://www.w3.org/2000/svg";

/** svg("line", {class, data: {k: v}, text, ...attributes}): an SVG element; text only via textContent. */
export function svg(tag, props = {}) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null) continue;
    if (k === "text") el.textContent = String(v);
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else el.setAttribute(k, String(v));
  }
  return el;
}

/** A node's stable key, as mechviz/widgets/graph_payload.py:node_key: f:L:T:F, e:L:T, t:T, l:TOKENID. */
export function nodeKey(kind, layer, pos, feat) {
  if (kind === 0) return `f:${layer}:${pos}:${feat}`;
  if (kind === 1) return `e:${layer}:${pos}`;
  if (kind === 2) return `t:${pos}`;
  return `l:${feat}`;
}

/** Each node's incoming and outgoing edge ids, largest |weight| first: {inc: number[][], out: number[][]}. */
export function edgeLists(G) {
  const inc = Array.from({ length: G.N }, () => []), out = Array.from({ length: G.N }, () => []);
  for (let e = 0; e < G.E; e++) {
    inc[G.dst.at(e)].push(e);
    out[G.src.at(e)].push(e);
  }
  const by = (a, b) => Math.abs(G.w.at(b)) - Math.abs(G.w.at(a)) || a - b;
  for (const l of inc) l.sort(by);
  for (const l of out) l.sort(by);
  return { inc, out };
}

const LEFT = 44, STEP = 13, SUB = 14, TOP = 22, BOTTOM = 22;

/**
 * Coordinates of every node: rows (bottom to top) embeddings, layers 0..L-1, logits; columns the T
 * positions. Nodes of one (layer, position) cell spread in up to 8 per line (a column as wide as its fullest cell needs) (most influential
 * first); logits spread over the whole top row (most probable first). Returns
 * {x, y, width, height, rows, rowY, colW(t), colX(t)}.
 */
export function layoutGraph(G, T, L) {
  const rows = L + 2, row = (i) => (G.kind.at(i) === 2 ? 0 : G.kind.at(i) === 3 ? rows - 1 : G.layer.at(i) + 1);
  const cells = new Map(), logits = [];
  for (let i = 0; i < G.N; i++) {
    if (G.kind.at(i) === 3) { logits.push(i); continue; }
    const k = row(i) * 100000 + G.pos.at(i);
    if (!cells.has(k)) cells.set(k, []);
    cells.get(k).push(i);
  }
  const most = new Array(Math.max(1, T)).fill(1);   // columns as wide as their fullest cell needs
  for (const [k, c] of cells) {
    c.sort((a, b) => G.inf.at(b) - G.inf.at(a) || a - b);
    const t = k % 100000;
    if (t < most.length) most[t] = Math.max(most[t], c.length);
  }
  const perRow = 8, widths = most.map((n) => Math.max(48, Math.min(n, perRow) * STEP + 10));
  const starts = [LEFT];
  for (const w of widths) starts.push(starts[starts.length - 1] + w);
  const lines = new Array(rows).fill(1);
  for (const [k, c] of cells) lines[Math.floor(k / 100000)] = Math.max(lines[Math.floor(k / 100000)], Math.ceil(c.length / perRow));
  const rowH = lines.map((n, r) => (r === rows - 1 ? 44 : Math.max(40, n * SUB + 18)));
  const rowTop = new Array(rows);
  let y = TOP;
  for (let r = rows - 1; r >= 0; r--) { rowTop[r] = y; y += rowH[r]; }
  const width = starts[starts.length - 1] + 10, height = y + BOTTOM;
  const colX = (t) => starts[Math.min(t, widths.length - 1)], colW = (t) => widths[Math.min(t, widths.length - 1)];
  const xs = new Float64Array(G.N), ys = new Float64Array(G.N);
  for (const [k, c] of cells) {
    const r = Math.floor(k / 100000), t = k % 100000, n = Math.ceil(c.length / perRow);
    const top = rowTop[r] + (rowH[r] - n * SUB) / 2;
    c.forEach((i, j) => {
      const line = Math.floor(j / perRow), inLine = Math.min(perRow, c.length - line * perRow);
      xs[i] = colX(t) + colW(t) / 2 + ((j % perRow) - (inLine - 1) / 2) * STEP;
      ys[i] = top + line * SUB + SUB / 2;
    });
  }
  logits.sort((a, b) => G.lprob.at(b) - G.lprob.at(a) || a - b);
  const span = starts[starts.length - 1] - LEFT;
  logits.forEach((i, j) => {
    xs[i] = LEFT + (j + 0.5) * (span / logits.length);
    ys[i] = rowTop[rows - 1] + rowH[rows - 1] / 2 + 4;
  });
  const rowY = rowTop.map((t, r) => t + rowH[r] / 2);
  return { x: xs, y: ys, width, height, rows, rowY, colW, colX };
}
