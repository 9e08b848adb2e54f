"""Text legible in JupyterLab's light and dark themes (a real JupyterLab, a real Chromium).

``lab.dashboard()`` (prompt box, attention, logit lens, features) is drawn under each theme. Two measurements, both against the page as drawn:

* canvas labels (the attention view's token labels are painted on a canvas): the colour of the most
  opaque label pixel (composited over its background) against the background the canvas sits on, as a WCAG contrast ratio;
* every DOM text node of every view: its computed colour against its effective background (the first
  ancestor with an opaque background colour).

Before lib/theme.js the canvas labels were painted "#333" whatever the theme: ratio 1.6 on JupyterLab
Dark's background, which these thresholds refuse."""

from __future__ import annotations

import json

import pytest

from mvbrowser import DASH_PROMPT, route_offline, wait_notebook, write_cells

pytestmark = pytest.mark.browser

THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}
ROOTS = (".mechviz-attention", ".mechviz-logit-lens", ".mechviz-features", ".mechviz-prompt")
CELLS = ["import mechviz", f"lab = mechviz.Lab.default(prompt={DASH_PROMPT!r})\nlab.dashboard()"]
CANVAS_MIN = 4.5   # WCAG AA for normal text
DOM_MIN = 3.0      # WCAG AA for large/bold text: accent colours (selected labels) are held to this

# the WCAG relative luminance / contrast ratio, and the effective background of an element, in the page
JS = """
const lum = ([r, g, b]) => { const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
const rgba = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
const bg = (el) => { for (let e = el; e; e = e.parentElement) { const c = rgba(getComputedStyle(e).backgroundColor);
  if (c.length === 3 || (c.length === 4 && c[3] > 0.9)) return c.slice(0, 3); } return [255, 255, 255]; };
"""


def _contrast_report(page, roots):
    return page.evaluate("([roots]) => {" + JS + """
      const out = {canvas: [], dom: []};
      for (const c of document.querySelectorAll('.mechviz-attention canvas.mv-labels')) {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let best = -1, a = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > a) { a = d[i]; best = i - 3; }
        if (best < 0) { out.canvas.push({cls: c.className, ratio: 0, why: 'no ink'}); continue; }
        const back = bg(c), ink = [0, 1, 2].map((k) => (d[best + k] * a + back[k] * (255 - a)) / 255);  // as seen
        out.canvas.push({cls: c.className, ink, back, ratio: ratio(ink, back)});
      }
      for (const root of roots) for (const view of document.querySelectorAll(root)) {
        const walker = document.createTreeWalker(view, NodeFilter.SHOW_TEXT);
        for (let n = walker.nextNode(); n; n = walker.nextNode()) {
          const el = n.parentElement;
          if (!n.textContent.trim() || !el || !el.getClientRects().length) continue;
          const cs = getComputedStyle(el);
          if (cs.visibility === 'hidden' || Number(cs.opacity) === 0 || el.closest('option,style,script')) continue;
          const fg = rgba(cs.color).slice(0, 3), back = bg(el);
          out.dom.push({root, cls: el.className, text: n.textContent.trim().slice(0, 30), fg, back, ratio: ratio(fg, back)});
        }
      }
      return out; }""", [list(roots)])


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_text_legible_in_light_and_dark_theme(jupyter_lab, page, artifacts, theme):
    url, token, root = jupyter_lab
    name = f"theme_{theme}.ipynb"
    write_cells(root / name, CELLS)
    offline = route_offline(page.context, serve_cdn=False, local_prefixes=(url, url.replace("http", "ws", 1)))
    page.goto(f"{url}/lab/tree/{name}?reset&token={token}")  # ?reset: no tab restored from the last test
    wait_notebook(page, name)
    page.evaluate("(t) => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})", THEMES[theme])
    page.wait_for_function("(light) => document.body.dataset.jpThemeLight === light",
                           arg="true" if theme == "light" else "false", timeout=30_000)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    for r in (".mechviz-attention", ".mechviz-logit-lens", ".mechviz-features"):
        page.wait_for_selector(f"{r}[data-prompt={json.dumps(DASH_PROMPT)}]", timeout=120_000)
    page.wait_for_timeout(500)
    # the page really is in that theme: its background is dark (or light)
    body = page.evaluate("() => getComputedStyle(document.querySelector('.jp-Notebook')).backgroundColor")
    level = sum(int(x) for x in body[body.index("(") + 1:body.index(")")].split(",")[:3]) / 3
    assert (level < 80) if theme == "dark" else (level > 200), body
    page.locator(".jp-Notebook:visible").first.screenshot(path=str(artifacts / f"lab_theme_{theme}.png"))

    rep = _contrast_report(page, ROOTS)
    assert len(rep["canvas"]) >= 2, rep["canvas"]
    for c in rep["canvas"]:
        assert c["ratio"] >= CANVAS_MIN, f"{theme}: canvas labels {c}"
    assert {d["root"] for d in rep["dom"]} == set(ROOTS), "a view drew no text"
    low = [d for d in rep["dom"] if d["ratio"] < DOM_MIN]
    assert not low, f"{theme}: {len(low)} of {len(rep['dom'])} text nodes below {DOM_MIN}:1, e.g. {low[:8]}"
    print(theme, "canvas", [round(c["ratio"], 1) for c in rep["canvas"]],
          "dom min", round(min(d["ratio"] for d in rep["dom"]), 2), "over", len(rep["dom"]), "text nodes")
    # switching theme with the views on screen repaints the canvas labels in the other theme's colours
    other = "dark" if theme == "light" else "light"
    page.evaluate("(t) => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})", THEMES[other])
    page.wait_for_function("(light) => document.body.dataset.jpThemeLight === light",
                           arg="true" if other == "light" else "false", timeout=30_000)
    page.wait_for_timeout(1500)
    after = _contrast_report(page, ROOTS)["canvas"]
    for c in after:
        assert c["ratio"] >= CANVAS_MIN, f"{theme} -> {other}: canvas labels {c}"
    print(f"after switching to {other}: canvas", [round(c["ratio"], 1) for c in after])
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session?.shutdown()")
    assert offline["aborted"] == [], f"JupyterLab tried the network: {offline['aborted']}"
