// PatchGridView: an activation-patching grid that fills in as exact values stream in, drawn over
// the attribution-patching estimate (hatched, lighter) where no exact value exists yet. Colour: a
// diverging map of the normalised effect, centred on 0. Click a cell: the kernel answers with that
// patched run's top next tokens and its logit lens. Renders from model state alone.

import { traitDecoder } from "./lib/decode.js";
import { rgbAt, rgbCss, drawLegend } from "./lib/colormap.js";
import { outline, hatch, sizeCanvas, cellAtWH } from "./lib/heatmap.js";
import { h, style, clear, quote, watch, redrawOn } from "./lib/dom.js";

const CSS = `
.mechviz-patch-grid{font:12px/1.4 var(--jp-ui-font-family,system-ui,sans-serif);color:var(--jp-ui-font-color1,#222);padding:4px 0;max-width:100%}
.mechviz-patch-grid .mv-header{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap}
.mechviz-patch-grid .mv-title{font-weight:600;font-size:13px}
.mechviz-patch-grid .mv-error{display:none;margin:4px 0;padding:4px 8px;border-left:3px solid #dc2626;background:#fee2e2;color:#7f1d1d;white-space:pre-wrap}
.mechviz-patch-grid.mv-has-error .mv-error{display:block}
.mechviz-patch-grid .mv-controls{display:flex;gap:8px;align-items:center;margin:6px 0;flex-wrap:wrap}
.mechviz-patch-grid .mv-dim{color:var(--jp-ui-font-color2,#666)}
.mechviz-patch-grid canvas.mv-legend{width:128px;height:10px;image-rendering:pixelated;outline:1px solid #cbd5e1;vertical-align:middle}
.mechviz-patch-grid .mv-progress progress{width:140px;vertical-align:middle}
.mechviz-patch-grid button.mv-cancel[hidden]{display:none}
.mechviz-patch-grid .mv-main{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
.mechviz-patch-grid .mv-gridwrap{display:grid;grid-template-columns:auto auto;justify-content:start;overflow:auto;max-width:100%}
.mechviz-patch-grid .mv-colhead{display:flex;align-items:flex-end;font-family:var(--jp-code-font-family,monospace);font-size:10px;color:#334155;max-height:96px}
.mechviz-patch-grid .mv-collabel{writing-mode:vertical-rl;transform:rotate(180deg);white-space:pre;overflow:hidden;text-overflow:ellipsis;max-height:92px;box-sizing:border-box;text-align:left}
.mechviz-patch-grid .mv-rowhead{display:flex;flex-direction:column;align-items:flex-end;padding-right:4px;font-family:var(--jp-code-font-family,monospace);font-size:10px;color:#334155}
.mechviz-patch-grid .mv-rowlabel{white-space:pre}
.mechviz-patch-grid .mv-collabel.mv-selected,.mechviz-patch-grid .mv-rowlabel.mv-selected{color:#b45309;font-weight:700}
.mechviz-patch-grid canvas.mv-grid{display:block;cursor:pointer;background:#fff}
.mechviz-patch-grid .mv-info{min-height:1.4em;margin:4px 0;font-family:var(--jp-code-font-family,monospace);white-space:pre-wrap}
.mechviz-patch-grid .mv-detail{min-width:240px;max-width:520px;border-left:2px solid #e2e8f0;padding-left:10px}
.mechviz-patch-grid .mv-detail h4{margin:2px 0 4px;font-size:12px}
.mechviz-patch-grid ol{margin:2px 0;padding-left:22px;font-family:var(--jp-code-font-family,monospace)}
.mechviz-patch-grid li{white-space:pre}
.mechviz-patch-grid li::after{content:"  " attr(data-prob);color:var(--jp-ui-font-color2,#666)}
.mechviz-patch-grid .mv-lens-row{display:flex;gap:6px;font-family:var(--jp-code-font-family,monospace);white-space:pre}
.mechviz-patch-grid .mv-lens-label{min-width:8em;color:#334155}
.mechviz-patch-grid .mv-lens-tok{padding:0 3px;border:1px solid #e2e8f0;border-radius:2px}
`;

const HINT = "hover a cell for its value; click it to see that patched run";
const ESTIMATE_FADE = 0.45;  // estimate cells: their colour mixed this much towards white, then hatched

function render({ model, el }) {
  el.classList.add("mechviz-patch-grid");
  style(el, CSS);

  const title = h("span", { class: "mv-title" });
  const subtitle = h("span", { class: "mv-dim mv-subtitle" });
  const errorEl = h("div", { class: "mv-error", role: "alert" });
  const legend = h("canvas", { class: "mv-legend", width: 256, height: 1 });
  drawLegend(legend, "rdbu");
  const legendText = h("span", { class: "mv-dim mv-legend-text" });
  const bar = h("progress", { max: 1, value: 0 });
  const progText = h("span", { class: "mv-progress-text" });
  const cancel = h("button", { class: "mv-cancel", type: "button", text: "cancel", hidden: true });
  const colhead = h("div", { class: "mv-colhead" });
  const rowhead = h("div", { class: "mv-rowhead" });
  const grid = h("canvas", { class: "mv-grid", width: 1, height: 1 });
  const info = h("div", { class: "mv-info", text: HINT });
  const detail = h("div", { class: "mv-detail" });
  el.append(
    h("div", { class: "mv-header" }, [title, subtitle]),
    errorEl,
    h("div", { class: "mv-controls" }, [
      h("span", { class: "mv-dim", text: "−1" }), legend, h("span", { class: "mv-dim", text: "+1" }), legendText,
    ]),
    h("div", { class: "mv-controls mv-progress" }, [bar, progText, cancel]),
    h("div", { class: "mv-main" }, [
      h("div", {}, [h("div", { class: "mv-gridwrap" }, [h("div"), colhead, rowhead, grid]), info]),
      detail,
    ]),
  );

  cancel.addEventListener("click", () => {
    model.set("cancel_requests", (model.get("cancel_requests") || 0) + 1);
    model.save_changes();
  });

  const dec = traitDecoder(model);
  let V = null, E = null, R = 0, C = 0, err = "", cell = 24, headKey = null, draws = 0;

  function load() {
    try {
      const v = dec.get("values");
      let e = null;
      try { e = dec.get("estimate"); } catch (x) { e = null; }
      if (!v) { V = null; return; }
      if (v.shape.length !== 2) throw new Error(`values [${v.shape}] is not [rows, cols]`);
      V = v;
      [R, C] = v.shape;
      E = e && e.shape.length === 2 && e.shape[0] === R && e.shape[1] === C ? e : null;
      err = "";
    } catch (x) {
      err = String((x && x.message) || x);
    }
  }

  // share of the clean-corrupted gap: denoise (v - corrupted) / (clean - corrupted), noise
  // (clean - v) / (clean - corrupted) (as PatchGrid.normalized()); 1 = the patch moves the whole gap
  function norm(v) {
    const clean = Number(model.get("clean_metric")), bad = Number(model.get("corrupted_metric"));
    const gap = clean - bad;
    if (!Number.isFinite(v) || !gap) return NaN;
    return model.get("direction") === "noise" ? (clean - v) / gap : (v - bad) / gap;
  }

  function cellValue(r, c) {
    const i = r * C + c;
    const v = V.at(i);
    if (!Number.isNaN(v)) return { v, exact: true };
    const e = E ? E.at(i) : NaN;
    if (!Number.isNaN(e)) return { v: e, exact: false };
    return { v: NaN, exact: null };
  }

  function buildHeads(rows, cols) {
    const key = JSON.stringify([rows, cols, cell, R, C]);
    if (key === headKey) return;
    headKey = key;
    clear(colhead);
    clear(rowhead);
    for (let c = 0; c < C; c++) {
      colhead.appendChild(h("div", { class: "mv-collabel", data: { index: c }, title: String(cols[c] ?? ""),
        style: { width: `${cell}px`, minWidth: `${cell}px`, lineHeight: `${cell}px` }, text: String(cols[c] ?? c) }));
    }
    for (let r = 0; r < R; r++) {
      rowhead.appendChild(h("div", { class: "mv-rowlabel", data: { index: r }, text: String(rows[r] ?? r),
        style: { height: `${cell}px`, lineHeight: `${cell}px` } }));
    }
  }

  // which cell the kernel's detail_* / lens_* traits describe: the selected cell when they last
  // changed (the kernel answers a click after it arrives), or the saved cell at load
  let detailCell = (model.get("detail_strs") || []).length ? (model.get("cell") || [-1, -1]).slice() : null;
  const DETAIL = ["detail_metric", "detail_strs", "detail_probs", "lens_rows", "lens_strs", "lens_probs"];
  const onDetail = () => { detailCell = (model.get("cell") || [-1, -1]).slice(); };
  const unwatchDetail = watch(model, DETAIL, onDetail);

  function drawDetail(sel) {
    clear(detail);
    if (!sel) { detail.appendChild(h("div", { class: "mv-dim", text: "click a cell to see its patched run" })); return; }
    const rows = model.get("row_labels") || [], cols = model.get("col_labels") || [];
    const strs = model.get("detail_strs") || [];
    const fresh = detailCell && detailCell[0] === sel[0] && detailCell[1] === sel[1];
    detail.dataset.cell = fresh ? `${sel[0]},${sel[1]}` : "";
    if (!fresh) {
      detail.appendChild(h("h4", { text: `patched ${rows[sel[0]] ?? sel[0]} · ${cols[sel[1]] ?? sel[1]}` }));
      detail.appendChild(h("div", { class: "mv-dim mv-detail-wait", text: "computing this cell's run… (needs the kernel)" }));
      if (!strs.length || !detailCell || detailCell[0] < 0) return;
      sel = detailCell;   // below: the last answer, labelled with its own cell
      detail.appendChild(h("div", { class: "mv-dim", text: "previous:" }));
    }
    detail.appendChild(h("h4", { class: "mv-detail-title", text: `patched ${rows[sel[0]] ?? sel[0]} · ${cols[sel[1]] ?? sel[1]}` }));
    let probs = null;
    try { probs = dec.get("detail_probs"); } catch (x) { probs = null; }
    if (!strs.length) return;
    const m = model.get("detail_metric");   // a number, or null / "nan" when unknown
    if (typeof m === "number" && Number.isFinite(m)) {
      const n = norm(m);
      detail.appendChild(h("div", { class: "mv-detail-metric", data: { value: m.toFixed(4) },
        text: `metric ${m.toFixed(4)}${Number.isNaN(n) ? "" : ` · normalised ${n.toFixed(3)}`}` }));
    }
    const ol = h("ol", { class: "mv-detail-next" });
    strs.forEach((s, j) => {
      const p = probs && j < probs.size ? probs.at(j) : NaN;
      ol.appendChild(h("li", { text: String(s), data: { prob: Number.isNaN(p) ? "" : p.toFixed(4) } }));
    });
    detail.append(h("div", { class: "mv-dim", text: "next token of the patched run" }), ol);
    const lrows = model.get("lens_rows") || [], lstrs = model.get("lens_strs") || [];
    let lp = null;
    try { lp = dec.get("lens_probs"); } catch (x) { lp = null; }
    if (lrows.length && lstrs.length) {
      const k = lp && lp.shape.length === 2 ? lp.shape[1] : 0;
      const lens = h("div", { class: "mv-lens" }, [h("div", { class: "mv-dim", text: "logit lens at the metric's position" })]);
      lrows.forEach((name, r) => {
        const line = h("div", { class: "mv-lens-row", data: { row: r } }, [h("span", { class: "mv-lens-label", text: String(name) })]);
        (lstrs[r] || []).forEach((s, j) => {
          const p = k && j < k ? lp.at(r * k + j) : NaN;
          line.appendChild(h("span", { class: "mv-lens-tok", text: String(s), data: { prob: Number.isNaN(p) ? "" : p.toFixed(4) },
            title: Number.isNaN(p) ? "" : `p = ${p.toFixed(4)}` }));
        });
        lens.appendChild(line);
      });
      detail.appendChild(lens);
    }
  }

  function redraw() {
    load();
    const shownErr = [model.get("error") || "", err].filter(Boolean).join("\n");
    errorEl.textContent = shownErr;
    el.classList.toggle("mv-has-error", !!shownErr);
    title.textContent = model.get("title") || "Activation patching";
    const dir = model.get("direction") || "denoise";
    subtitle.textContent = `${model.get("site") || ""} by ${model.get("by") || ""} · ${dir} · clean ${Number(model.get("clean_metric")).toFixed(3)}, corrupted ${Number(model.get("corrupted_metric")).toFixed(3)}`;
    legendText.textContent = dir === "noise"
      ? "(clean − v) / (clean − corrupted), clamped to [−1, 1]: red = the patch breaks the clean behaviour; hatched = attribution estimate"
      : "(v − corrupted) / (clean − corrupted), clamped to [−1, 1]: red = the patch restores the clean behaviour; hatched = attribution estimate";
    const done = model.get("done") || 0, total = model.get("total") || 0, status = model.get("status") || "";
    bar.max = Math.max(1, total);
    bar.value = Math.min(done, Math.max(1, total));
    progText.textContent = `${done} / ${total}${status ? ` · ${status}` : ""}`;
    cancel.hidden = status !== "running";
    const d = el.dataset;
    d.status = status;
    d.done = String(done);
    d.total = String(total);
    if (!V) { d.rows = "0"; drawDetail(null); return; }
    const rows = model.get("row_labels") || [], cols = model.get("col_labels") || [];
    cell = Math.max(12, Math.min(32, Math.floor(640 / Math.max(1, C))));
    buildHeads(rows, cols);
    const ctx = sizeCanvas(grid, C * cell, R * cell);
    grid.dataset.cell = String(cell);
    ctx.clearRect(0, 0, grid.width, grid.height);
    let nExact = 0, nEst = 0;
    for (let r = 0; r < R; r++) {
      for (let c = 0; c < C; c++) {
        const { v, exact } = cellValue(r, c), x = c * cell, y = r * cell;
        if (exact === null) { // nothing yet: blank
          ctx.fillStyle = "#f8fafc";
          ctx.fillRect(x, y, cell, cell);
          ctx.strokeStyle = "#e2e8f0";
          ctx.strokeRect(x + 0.5, y + 0.5, cell - 1, cell - 1);
          continue;
        }
        const n = norm(v);
        let rgb = rgbAt(Math.max(-1, Math.min(1, n)), "rdbu", -1, 1);
        if (!exact && rgb) rgb = rgb.map((q) => Math.round(q + (255 - q) * ESTIMATE_FADE));
        ctx.fillStyle = rgbCss(rgb);
        ctx.fillRect(x, y, cell, cell);
        if (exact) nExact++;
        else { nEst++; hatch(ctx, x, y, cell, cell, "rgba(71,85,105,0.45)", 6); }
      }
    }
    const sel = model.get("cell") || [-1, -1];
    const has = sel[0] >= 0 && sel[1] >= 0 && sel[0] < R && sel[1] < C;
    if (has) outline(ctx, sel[1] * cell, sel[0] * cell, cell, cell, "#111827", 2);
    for (const s of rowhead.children) s.classList.toggle("mv-selected", has && Number(s.dataset.index) === sel[0]);
    for (const s of colhead.children) s.classList.toggle("mv-selected", has && Number(s.dataset.index) === sel[1]);
    drawDetail(has ? sel : null);
    d.rows = String(R);
    d.cols = String(C);
    d.exact = String(nExact);
    d.estimated = String(nEst);
    d.cell = has ? `${sel[0]},${sel[1]}` : "";
    d.draws = String(++draws);
  }


  grid.addEventListener("mousemove", (e) => {
    if (!V) return;
    const hit = cellAtWH(grid, e, cell, cell, R, C);
    if (!hit) return;
    const rows = model.get("row_labels") || [], cols = model.get("col_labels") || [];
    const { v, exact } = cellValue(hit.row, hit.col);
    const n = norm(v);
    const kind = exact === null ? "not computed yet" : exact ? "exact" : "estimate (attribution patching)";
    info.textContent = `${rows[hit.row] ?? hit.row} · ${quote(cols[hit.col] ?? hit.col, 40)} · ` +
      (exact === null ? kind : `value ${v.toFixed(4)} · normalised ${Number.isNaN(n) ? "n/a" : n.toFixed(3)} · ${kind}`);
    const ds = info.dataset;
    ds.row = String(hit.row);
    ds.col = String(hit.col);
    ds.value = exact === null ? "" : v.toFixed(4);
    ds.norm = exact === null || Number.isNaN(n) ? "" : n.toFixed(4);
    ds.exact = exact === null ? "none" : String(exact);
  });
  grid.addEventListener("click", (e) => {
    const hit = V && cellAtWH(grid, e, cell, cell, R, C);
    if (!hit) return;
    model.set("cell", [hit.row, hit.col]);
    model.save_changes();
  });

  const names = ["values", "estimate", "row_labels", "col_labels", "clean_metric", "corrupted_metric", "site", "by",
    "direction", "done", "total", "status", "cell", "detail_metric", "detail_strs", "detail_probs", "lens_rows", "lens_strs",
    "lens_probs", "error", "title"];
  const stop = redrawOn(model, names, redraw);
  return () => {
    stop();
    unwatchDetail();
  };
}

export default { render };
