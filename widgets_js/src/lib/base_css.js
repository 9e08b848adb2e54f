// The CSS the mechviz views share, in parts, so that each bundle carries only the shared rules its
// view uses; `viewRoot` puts them into ONE shared stylesheet per view. Every view root has the class
// `mechviz` plus its own (`mechviz-attention`, ...); a view's own stylesheet keeps only what is
// specific to it. Colours and fonts come from JupyterLab's CSS variables, with fallbacks (static export).

// (plain literals, no ${} substitutions: esbuild can then drop the parts a bundle does not import)

/** Every view (the prompt box too): root font and colours, the error banner, dim text, clickables. */
export const ROOT_CSS = `
.mechviz{font:12px/1.4 var(--jp-ui-font-family,system-ui,sans-serif);color:var(--jp-ui-font-color1,#222);padding:4px 0;max-width:100%}
.mechviz [hidden]{display:none!important}
.mechviz .mv-error{display:none;margin:4px 0;padding:4px 8px;border-left:3px solid #dc2626;background:#fee2e2;color:#7f1d1d;white-space:pre-wrap}
.mechviz.mv-has-error .mv-error{display:block}
.mechviz .mv-dim{color:var(--jp-ui-font-color2,#666)}
.mechviz .mv-note{margin:2px 0 4px;padding:2px 6px;border-left:3px solid #f59e0b;background:rgba(245,158,11,0.12);font-size:11px}
.mechviz .mv-click{cursor:pointer}
`;

/** The data views: header (title, prompt line), controls row, colour legend. */
export const VIEW_CSS = `
.mechviz .mv-header{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap}
.mechviz .mv-title{font-weight:600;font-size:13px}
.mechviz .mv-prompt{color:var(--jp-ui-font-color2,#555);white-space:pre-wrap;word-break:break-word;display:-webkit-box;-webkit-box-orient:vertical;-webkit-line-clamp:2;line-clamp:2;overflow:hidden;max-height:3.2em}
.mechviz .mv-controls{display:flex;gap:8px;align-items:center;margin:6px 0;flex-wrap:wrap}
.mechviz canvas.mv-legend{width:96px;height:10px;image-rendering:pixelated;outline:1px solid #cbd5e1;vertical-align:middle}
`;

/** A grid canvas with its row/column label strips (`labelStrips`), the hover read-out, a side panel. */
export const GRID_CSS = `
.mechviz .mv-main{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
.mechviz .mv-gridwrap{display:grid;grid-template-columns:auto auto;justify-content:start;overflow:auto;max-width:100%}
.mechviz .mv-colhead,.mechviz .mv-rowhead{display:flex;font-family:var(--jp-code-font-family,monospace);font-size:10px;color:var(--jp-ui-font-color1,#334155)}
.mechviz .mv-colhead{align-items:flex-end;max-height:84px}
.mechviz .mv-rowhead{flex-direction:column;align-items:flex-end;padding-right:4px}
.mechviz .mv-collabel,.mechviz .mv-rowlabel{white-space:pre;overflow:hidden;text-overflow:ellipsis;box-sizing:border-box}
.mechviz .mv-collabel{text-align:center;padding:0 1px}
.mechviz .mv-vertical .mv-collabel{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;padding:0;max-height:80px}
.mechviz .mv-collabel.mv-selected,.mechviz .mv-rowlabel.mv-selected{color:#b45309;font-weight:700}
.mechviz .mv-info{min-height:1.4em;margin:4px 0;font-family:var(--jp-code-font-family,monospace);white-space:pre-wrap}
`;

/** Token chips (untrusted text; newlines marked), the selected one outlined. */
export const TOKENS_CSS = `
.mechviz .mv-tokens{display:flex;flex-wrap:wrap;gap:2px;margin:4px 0;font-family:var(--jp-code-font-family,monospace)}
.mechviz .mv-token{white-space:pre;padding:1px 2px;border:1px solid #e2e8f0;border-radius:2px;background:#fff;color:#000;max-height:1.45em;overflow:hidden}
.mechviz .mv-token.mv-nl::before{content:"\\21b5";color:#94a3b8}
.mechviz .mv-token.mv-selected{outline:2px solid #f59e0b}
`;

/** The detail panel and its ranked token lists (value or probability after each item). */
export const DETAIL_CSS = `
.mechviz .mv-detail{min-width:240px;max-width:520px;border-left:2px solid #e2e8f0;padding-left:10px}
.mechviz h4{margin:2px 0 4px;font-size:12px}
.mechviz ol{margin:2px 0;padding-left:22px;font-family:var(--jp-code-font-family,monospace)}
.mechviz li{white-space:pre}
.mechviz li[data-value]::after{content:"  " attr(data-value);color:var(--jp-ui-font-color2,#666)}
.mechviz li[data-prob]::after{content:"  " attr(data-prob);color:var(--jp-ui-font-color2,#666)}
`;
