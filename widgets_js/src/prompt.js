// PromptBox: a textarea whose edits are debounced in the browser before `value` is synced; a status
// line says what the views show (or that a pass is running) and an error line shows failures.

import { h, style, watch } from "./lib/dom.js";

const CSS = `
.mechviz-prompt{font:12px/1.4 var(--jp-ui-font-family,system-ui,sans-serif);color:var(--jp-ui-font-color1,#222);padding:4px 0;max-width:100%}
.mechviz-prompt textarea.mv-prompt-input{box-sizing:border-box;width:100%;min-height:3.2em;resize:vertical;font-family:var(--jp-code-font-family,monospace);font-size:13px;padding:4px 6px;border:1px solid #cbd5e1;border-radius:3px;background:var(--jp-layout-color0,#fff);color:inherit}
.mechviz-prompt .mv-status{color:var(--jp-ui-font-color2,#555);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.mechviz-prompt[data-status=running] .mv-status{color:#b45309}
.mechviz-prompt .mv-error{display:none;padding:2px 8px;border-left:3px solid #dc2626;background:#fee2e2;color:#7f1d1d;white-space:pre-wrap}
.mechviz-prompt.mv-has-error .mv-error{display:block}
`;

function render({ model, el }) {
  el.classList.add("mechviz-prompt");
  style(el, CSS);
  const input = h("textarea", { class: "mv-prompt-input", rows: 2, spellcheck: false, "aria-label": "prompt" });
  const status = h("div", { class: "mv-status" });
  const error = h("div", { class: "mv-error", role: "alert" });
  el.append(input, status, error);

  input.value = model.get("value") || "";
  let timer = 0;     // pending debounce
  let lastSent = input.value;

  const send = () => {
    if (timer) clearTimeout(timer);
    timer = 0;
    if (input.value === lastSent && input.value === model.get("value")) return;
    lastSent = input.value;
    model.set("value", input.value);
    model.save_changes();
  };
  input.addEventListener("input", () => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(send, Math.max(0, model.get("debounce_ms") ?? 150));
  });
  input.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send(); } });
  input.addEventListener("blur", () => { if (timer) send(); });

  const typing = () => timer !== 0 || document.activeElement === input;

  function update() {
    input.placeholder = model.get("placeholder") || "";
    const v = model.get("value") || "";
    if (!typing() && input.value !== v) { input.value = v; lastSent = v; }
    const st = model.get("status") || "idle";
    const shown = model.get("shown") || "";
    const n = model.get("n_tokens") ?? 0, max = model.get("max_tokens") ?? 0;
    status.textContent = st === "running" ? "computing…"
      : shown || n ? `showing: ${shown} (${n} tokens${max ? ` of ${max}` : ""})` : "idle";
    status.title = status.textContent;
    const err = model.get("error") || "";
    error.textContent = err;
    el.classList.toggle("mv-has-error", !!err);
    el.dataset.status = st;
    el.dataset.shown = shown;
  }

  const names = ["value", "placeholder", "status", "error", "shown", "n_tokens", "max_tokens"];
  const unwatch = watch(model, names, update);
  update();
  return () => {
    if (timer) clearTimeout(timer);
    unwatch();
  };
}

export default { render };
