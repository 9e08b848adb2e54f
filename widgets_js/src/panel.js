// Panel: a composite layout (prompt box + views) as one anywidget. Each child arrives as an
// "anywidget:<model_id>" reference and is drawn with anywidget's host API, which JupyterLab,
// Notebook 7, the static export's html-manager and marimo all provide (marimo has no ipywidgets boxes
// and no jslink). The panel also links the children's selection traits and the Lab's Selection model
// here in the browser, so a click in one view moves the others in every front end.

const LINKED = ["layer", "head", "token", "feature", "dictionary"];

const CSS = `.mechviz-panel{display:flex;flex-direction:column;gap:6px;min-width:0}
.mechviz-panel>.mv-panel-child{min-width:0}`;

function style(el) {
  if (el.querySelector(":scope > style[data-mv-panel]")) return;
  const s = document.createElement("style");
  s.dataset.mvPanel = "1";
  s.textContent = CSS;
  el.append(s);
}

/** Keep each selection trait equal across `models` (those that carry it) until `signal` aborts. */
function link(models, signal) {
  for (const name of LINKED) {
    const holders = models.filter((m) => m.get(name) !== undefined);
    if (holders.length < 2) continue;
    for (const src of holders) {
      const follow = () => {
        const v = src.get(name);
        for (const dst of holders) {
          if (dst !== src && dst.get(name) !== v) { dst.set(name, v); dst.save_changes(); }
        }
      };
      src.on(`change:${name}`, follow);
      signal.addEventListener("abort", () => src.off(`change:${name}`, follow), { once: true });
    }
  }
}

/** @param {{model: any, el: HTMLElement, host: any}} props */
async function render({ model, el, host }) {
  el.classList.add("mechviz-panel");
  style(el);
  const ac = new AbortController();
  const refs = model.get("children") || [];
  const boxes = refs.map((ref) => {
    const d = document.createElement("div");
    d.className = "mv-panel-child";
    d.dataset.ref = ref;
    el.append(d);
    return d;
  });
  if (!host) {  // an anywidget front end older than 0.10: say so instead of an empty output
    el.append(Object.assign(document.createElement("pre"), {
      textContent: "mechviz: this front end's anywidget has no host API (anywidget >= 0.10); display the views one per cell",
    }));
    return () => ac.abort();
  }
  await Promise.all(refs.map(async (ref, i) => {
    try {
      const child = await host.getWidget(ref);
      await child.render({ el: boxes[i], signal: ac.signal });
    } catch (err) {
      boxes[i].textContent = `mechviz: could not draw ${ref}: ${err}`;
    }
  }));
  const sel = model.get("selection");
  const refsToLink = sel ? [sel, ...refs] : refs;
  const models = (await Promise.all(refsToLink.map((r) => host.getModel(r).catch(() => null)))).filter(Boolean);
  link(models, ac.signal);
  return () => ac.abort();
}

export default { render };
