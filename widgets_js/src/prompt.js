// PromptBox: a textarea whose edits are debounced in the browser before `value` is synced; a status
// line says what the views show (or that a pass is running) and an error line shows failures.

import { h, watch } from "./lib/dom.js";
import { viewRoot, errorBanner, cleanup, stamp } from "./lib/view.js";

/**
 * The traits of mechviz/widgets/prompt.py:PromptBox (the Python <-> JS contract).
 * @typedef {object} PromptTraits
 * @property {string} value  written here (debounced): the prompt as typed; never overwritten while typing
 * @property {string} placeholder
 * @property {number} debounce_ms
 * @property {"idle"|"running"|"error"} status
 * @property {string} error  the last failed run's message ("" after a success)
 * @property {string} shown  the prompt whose result the views show
 * @property {number} n_tokens  its token count
 * @property {number} max_tokens  the model's context length (0: unknown)
 * @typedef {import("./lib/view.js").Model<PromptTraits>} Model
 */

const CSS = `
.mechviz-prompt textarea.mv-prompt-input{box-sizing:border-box;width:100%;min-height:3.2em;resize:vertical;font-family:var(--jp-code-font-family,monospace);font-size:13px;padding:4px 6px;border:1px solid #cbd5e1;border-radius:3px;background:var(--jp-layout-color0,#fff);color:inherit}
.mechviz-prompt .mv-status{color:var(--jp-ui-font-color2,#555);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.mechviz-prompt[data-status=running] .mv-status{color:#b45309}
`;

/** @param {{model: Model, el: HTMLElement}} props */
function render({ model, el }) {
  viewRoot(el, "prompt", CSS);
  const input = h("textarea", { class: "mv-prompt-input", rows: 2, spellcheck: false, "aria-label": "prompt" });
  const status = h("div", { class: "mv-status" });
  el.append(input, status);
  const banner = errorBanner(model, el);

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
    stamp(el, { status: st, shown });
  }

  const names = ["value", "placeholder", "status", "shown", "n_tokens", "max_tokens"];
  const unwatch = watch(model, names, update);
  update();
  return cleanup(() => { if (timer) clearTimeout(timer); }, unwatch, banner.stop);
}

export default { render };
