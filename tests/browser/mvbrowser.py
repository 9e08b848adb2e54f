"""Helpers shared by the browser tests (canvas pixels, hovering heatmap cells, offline routing)."""

from __future__ import annotations

import mimetypes
import re
import time
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / "widgets_js" / "node_modules"
ROOT = ".mechviz-attention"


def canvas_pixel(page, selector: str, x: float, y: float) -> list[int]:
    """RGBA of one pixel of the first canvas matching ``selector`` (canvas coordinates)."""
    return page.evaluate(
        """([sel, x, y]) => Array.from(document.querySelector(sel).getContext('2d')
              .getImageData(Math.floor(x), Math.floor(y), 1, 1).data)""", [selector, x, y])


def canvas_stats(page, selector: str) -> dict:
    """Fingerprint (hash) and number of non-white pixels of a canvas (to detect blank/redrawn)."""
    return page.evaluate(
        """(sel) => { const c = document.querySelector(sel);
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let h = 2166136261 >>> 0, ink = 0;
             for (let i = 0; i < d.length; i += 4) {
               if (d[i + 3] && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) ink++;
               for (let k = 0; k < 4; k++) { h ^= d[i + k]; h = Math.imul(h, 16777619) >>> 0; } }
             return {w: c.width, h: c.height, hash: h, ink}; }""", selector)


def hover_cell(page, i: int, j: int, root: str = ROOT) -> dict:
    """Hover zoom cell (dst ``i``, src ``j``) and return the ``.mv-info`` read-out."""
    canvas = page.locator(f"{root} canvas.mv-zoom").first
    cell = int(canvas.get_attribute("data-cell"))
    canvas.hover(position={"x": (j + 0.5) * cell, "y": (i + 0.5) * cell})
    info = page.locator(f"{root} .mv-info").first
    info.element_handle().wait_for_element_state("visible")
    page.wait_for_function("([el, i, j]) => el.dataset.dst == String(i) && el.dataset.src == String(j)",
                           arg=[info.element_handle(), i, j], timeout=5000)
    return {"dst": int(info.get_attribute("data-dst")), "src": int(info.get_attribute("data-src")),
            "value": float(info.get_attribute("data-value")), "text": info.text_content()}


def cell_pixel(page, i: int, j: int, root: str = ROOT) -> list[int]:
    """RGBA at the centre of zoom cell (i, j)."""
    cell = int(page.locator(f"{root} canvas.mv-zoom").first.get_attribute("data-cell"))
    return canvas_pixel(page, f"{root} canvas.mv-zoom", (j + 0.5) * cell, (i + 0.5) * cell)


# --- CDN -> npm packages (so the *standard* nbconvert output can be tested offline) -------------------

_NPM = re.compile(r"^/(?:npm/)?(@[^/@]+/[^/@]+|[^/@]+)@[^/]+/(.+)$")   # unpkg / jsDelivr: /[npm/]pkg@ver/path


def need_node_modules() -> None:
    """Fail (under CI) or skip when widgets_js/node_modules, the static export's JS, is missing."""
    import os

    import pytest

    if not (NODE_MODULES / "@jupyter-widgets" / "html-manager" / "dist" / "embed-amd.js").is_file():
        msg = "widgets_js/node_modules missing: run `make js` (npm ci --prefix widgets_js)"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)


def npm_file_for(url: str) -> Path | None:
    """The file in widgets_js/node_modules that a CDN URL asks for (None if it is not one we provide)."""
    u = urlparse(url)
    if u.hostname == "cdnjs.cloudflare.com" and re.search(r"/require\.js/[^/]+/require(\.min)?\.js$", u.path):
        return NODE_MODULES / "requirejs" / "require.js"
    if u.hostname in ("unpkg.com", "cdn.jsdelivr.net"):
        m = _NPM.match(u.path)
        if m:
            f = NODE_MODULES / m.group(1) / m.group(2)
            return f if f.is_file() else None
    return None


def route_offline(context, *, serve_cdn: bool, local_prefixes=("file://",)):
    """Abort every request that is not local. With ``serve_cdn``, answer the CDN URLs of require.js,
    html-manager and anywidget from the npm packages instead. Returns the log of requests:
    ``{"served": [...], "aborted": [...]}``."""
    log = {"served": [], "aborted": []}

    def handler(route):
        url = route.request.url
        if url.startswith(local_prefixes) or url.startswith(("data:", "blob:", "about:")):
            return route.continue_()
        f = npm_file_for(url) if serve_cdn else None
        if f is not None:
            log["served"].append(url)
            ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
            if f.suffix == ".js":
                ctype = "application/javascript"
            return route.fulfill(status=200, body=f.read_bytes(), headers={
                "content-type": ctype, "access-control-allow-origin": "*"})
        log["aborted"].append(url)
        return route.abort("internetdisconnected")

    context.route("**/*", handler)
    return log


# --- the notebook under test and its reference values (computed in the test process) -------------

PROMPT = "The cat sat on the mat. The cat"


def notebook_cells(prompt: str = PROMPT) -> list[str]:
    return [
        "import mechviz",
        f"lab = mechviz.Lab.default(prompt={prompt!r})\nview = lab.attention()",
        "lab.show(view)",
    ]


def write_notebook(path: Path, prompt: str = PROMPT) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(src) for src in notebook_cells(prompt)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


_LAB = None


def reference(prompt: str = PROMPT):
    """``(token_strs, pattern[L, H, T, T])`` from the default model, in the test process."""
    global _LAB
    import mechviz
    import numpy as np

    if _LAB is None:
        _LAB = mechviz.Lab.default()
    run = _LAB.run(prompt, capture=["attn_pattern"])
    layers = []
    while f"attn_pattern.{len(layers)}" in run.cache:
        layers.append(run.cache[f"attn_pattern.{len(layers)}"].detach().float().cpu().numpy())
    assert layers, "the run captured no attn_pattern"
    return list(run.token_strs), np.stack(layers)


def probe_cells(pattern, T: int):
    """(dst, src) cells worth hovering: the largest off-diagonal value, the diagonal end, a mid cell."""
    import numpy as np

    low = np.tril(pattern, -1)
    i, j = np.unravel_index(int(np.argmax(low)), low.shape)
    return [(int(i), int(j)), (T - 1, T - 1), (T // 2, 1)]



# --- bare-page harness and grid helpers shared by the view tests ---------------------------------

BARE_HARNESS = """
async ([esm, state, paths, b64]) => {
  for (let k = 0; k < paths.length; k++) {           // binary buffers back at their paths, as DataViews
    const bin = Uint8Array.from(atob(b64[k]), (c) => c.charCodeAt(0));
    let o = state; const p = paths[k];
    for (let i = 0; i < p.length - 1; i++) o = o[p[i]];
    o[p[p.length - 1]] = new DataView(bin.buffer);
  }
  const data = new Map(Object.entries(state)), handlers = new Map();
  const model = {
    get: (k) => data.get(k),
    set: (k, v) => { data.set(k, v); window.setlog.push(k); (handlers.get('change:' + k) || []).forEach((f) => f()); },
    on: (e, f) => handlers.set(e, [...(handlers.get(e) || []), f]),
    off: (e, f) => handlers.set(e, (handlers.get(e) || []).filter((g) => g !== f)),
    save_changes: () => { window.saved.push(Object.fromEntries(data)); window.setlog.push('|save'); },
    send() {},
  };
  window.saved = []; window.setlog = []; window.model = model;
  const url = URL.createObjectURL(new Blob([esm], {type: 'text/javascript'}));
  const mod = (await import(url)).default;
  const el = document.createElement('div');
  document.body.appendChild(el);
  mod.render({model, el});
}
"""


def _state_b64(widget, names=None):
    import base64

    from ipywidgets.widgets.widget import _remove_buffers

    state = widget.get_state(names)
    state, paths, buffers = _remove_buffers(state)
    return state, paths, [base64.b64encode(bytes(b)).decode() for b in buffers]


def mount_bare(page, widget):
    """Render ``widget``'s ES module in a bare page with a stand-in model (``window.model``); every
    ``save_changes`` snapshot lands in ``window.saved`` and every ``set`` name in ``window.setlog``."""
    state, paths, b64 = _state_b64(widget)
    page.set_content("<!doctype html><html><body style='font-family:sans-serif'></body></html>")
    page.evaluate(BARE_HARNESS, [widget._esm, state, paths, b64])


def stage_bare(page, widget, names=None) -> None:
    """Decode the current values of ``names`` (default all; binary buffers as DataViews, as the kernel's
    messages arrive) into ``window.__staged`` without handing them to the view yet."""
    state, paths, b64 = _state_b64(widget, names)
    page.evaluate("""([state, paths, b64]) => {
        for (let k = 0; k < paths.length; k++) {
          const bin = Uint8Array.from(atob(b64[k]), (c) => c.charCodeAt(0));
          let o = state; const p = paths[k];
          for (let i = 0; i < p.length - 1; i++) o = o[p[i]];
          o[p[p.length - 1]] = new DataView(bin.buffer);
        }
        window.__staged = state; }""", [state, paths, b64])


def push_bare(page, widget, names):
    """Simulate the kernel: send the current values of ``names`` (binary buffers included) to the page."""
    stage_bare(page, widget, names)
    page.evaluate("() => { for (const [k, v] of Object.entries(window.__staged)) window.model.set(k, v); }")


def hover_grid_cell(page, root: str, r: int, c: int, canvas: str = "canvas.mv-grid"):
    """Hover cell (r, c) of a virtual grid as it is scrolled now (its canvas shows the columns from
    ``data-x0`` on); returns the view's read-out (``.mv-info``) locator."""
    cv = page.locator(f"{root} {canvas}")
    cw = int(cv.get_attribute("data-cell-w") or cv.get_attribute("data-cell"))
    ch = int(cv.get_attribute("data-cell-h") or cv.get_attribute("data-cell"))
    x0 = float(cv.get_attribute("data-x0"))
    page.mouse.move(0, 0)
    cv.hover(position={"x": (c + 0.5) * cw - x0, "y": (r + 0.5) * ch})
    return page.locator(f"{root} .mv-info")


def grid_cell(page, canvas_sel: str) -> tuple[int, int]:
    """(width, height) px of one cell of a grid canvas (``data-cell-w``/``-h``, else square ``data-cell``)."""
    c = page.locator(canvas_sel).first
    c.wait_for()
    cell = c.get_attribute("data-cell")
    w, hgt = c.get_attribute("data-cell-w"), c.get_attribute("data-cell-h")
    return int(w or cell), int(hgt or cell)


def hover_grid(page, root: str, canvas: str, r: int, c: int, expect: dict | None = None) -> dict:
    """Hover cell (row ``r``, column ``c``) of ``root canvas`` and return the ``.mv-info`` dataset (plus
    ``text``) once it describes that cell: ``expect`` maps dataset keys to the values that say so
    (default ``{"row": r, "col": c}``). A view clears its read-out when new data arrive, so a read-out
    cleared between the hover and the read is hovered again."""
    sel = f"{root} {canvas}"
    cw, ch = grid_cell(page, sel)
    expect = {k: str(v) for k, v in ({"row": r, "col": c} if expect is None else expect).items()}
    info = page.locator(f"{root} .mv-info").first
    for attempt in range(3):
        page.mouse.move(0, 0)   # a fresh mousemove even if the pointer already is on that cell
        page.locator(sel).first.hover(position={"x": (c + 0.5) * cw, "y": (r + 0.5) * ch})
        try:
            page.wait_for_function("([el, exp]) => Object.entries(exp).every(([k, v]) => el.dataset[k] === v)",
                                   arg=[info.element_handle(), expect], timeout=5000)
        except Exception:
            if attempt == 2:
                raise
            continue
        out = info.evaluate("""(e, exp) => Object.entries(exp).every(([k, v]) => e.dataset[k] === v)
                                 ? {...e.dataset, text: e.textContent} : null""", expect)
        if out is not None:
            return out
    raise AssertionError(f"the read-out of {sel} never described cell ({r}, {c})")


def click_grid(page, root: str, canvas: str, r: int, c: int) -> None:
    sel = f"{root} {canvas}"
    cw, ch = grid_cell(page, sel)
    page.locator(sel).first.click(position={"x": (c + 0.5) * cw, "y": (r + 0.5) * ch})


def grid_pixel(page, root: str, canvas: str, r: int, c: int, dx: float = 0.5, dy: float = 0.5) -> list[int]:
    """RGBA inside cell (r, c) at fraction (dx, dy) of the cell."""
    sel = f"{root} {canvas}"
    cw, ch = grid_cell(page, sel)
    return canvas_pixel(page, sel, (c + dx) * cw, (r + dy) * ch)


def cell_colours(page, root: str, canvas: str, r: int, c: int) -> set:
    """Distinct RGB colours inside cell (r, c), away from its border (to tell hatched from flat)."""
    sel = f"{root} {canvas}"
    cw, ch = grid_cell(page, sel)
    return {tuple(x) for x in page.evaluate(
        """([sel, x, y, w, h]) => { const d = document.querySelector(sel).getContext('2d')
              .getImageData(x, y, w, h).data; const out = [];
              for (let i = 0; i < d.length; i += 4) out.push([d[i], d[i + 1], d[i + 2]]); return out; }""",
        [sel, c * cw + 3, r * ch + 3, max(1, cw - 6), max(1, ch - 6)])}


# --- the dashboard notebook (attention, logit lens, features on one Lab) -------------------------

DASH_PROMPT = "The cat sat on the mat. The cat"
DASH_CELLS = [
    "import mechviz",
    f"lab = mechviz.Lab.default(prompt={DASH_PROMPT!r})\nlab.show(lab.attention())",
    "lab.logit_lens()",
    "lab.features()",
]


def write_cells(path: Path, cells) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(src) for src in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


_DASH_REF = {}


def summary(tokens, features, acts, effect_ids, effect_strs, effect_val, next_strs, next_prob, sae_label="",
            steering="", recon_error=None):
    """A FeatureSummary from hand-made arrays (what a feature view shows)."""
    import numpy as np

    from mechviz.analysis.features import FeatureSummary

    return FeatureSummary(tokens=list(tokens), features=np.asarray(features), acts=np.asarray(acts, np.float32),
                          effect_ids=np.asarray(effect_ids), effect_strs=np.asarray(effect_strs, object),
                          effect_val=np.asarray(effect_val, np.float32), next_strs=np.asarray(next_strs, object),
                          next_prob=np.asarray(next_prob, np.float32),
                          recon_error=np.asarray(np.zeros(len(tokens)) if recon_error is None else recon_error, np.float32),
                          sae_label=sae_label, steering=steering)


def dashboard_reference():
    """``(lab, lens_view, feature_view)``: a Lab in the test process with the dashboard's views, for
    reference numbers (``lab.prompt = ...`` / ``lab.steer(...)`` recompute them)."""
    if not _DASH_REF:
        import mechviz

        lab = mechviz.Lab.default(prompt=DASH_PROMPT)
        _DASH_REF.update(lab=lab, lens=lab.logit_lens(), feat=lab.features())
    return _DASH_REF["lab"], _DASH_REF["lens"], _DASH_REF["feat"]


def dashboard_lens(prompt: str = DASH_PROMPT):
    """The LogitLens the dashboard's lens view should show for ``prompt`` (no steering)."""
    lab, lens, _ = dashboard_reference()
    lab.steer(None)
    if lab.prompt != prompt:
        lab.prompt = prompt
    return lens.result


def assert_lens_cell(info: dict, lens, r: int, c: int, tol: float = 1e-3) -> None:
    """A logit-lens hover read-out (``hover_grid``) matches ``lens`` (a LogitLens) at (r, c): the top-1
    probability within float16 tolerance, and the top-1 text, up to a near-tie with another of the
    top tokens (the kernel and this process may round the last bits differently)."""
    p = lens.top_probs[r, c]
    assert float(info["prob"]) == pytest_approx(float(p[0]), tol), (r, c, info, p)
    tied = [str(s) for s, q in zip(lens.top_strs[r, c], p) if abs(float(q) - float(p[0])) <= tol]
    assert info["top"] in tied, (r, c, info["top"], tied)


def pytest_approx(x: float, tol: float):
    import pytest

    return pytest.approx(x, abs=tol)


# --- JupyterLab: the notebook in front, and the kernel behind it -------------------------------------

def titled(cls: str, title: str) -> str:
    """A CSS selector for the view of class ``mechviz-<cls>`` whose header title is ``title``."""
    return f'.{cls}:has(.mv-title:text-is("{title}"))'


def wait_notebook(page, name):
    """Wait until the notebook ``name`` is the current widget and has a kernel (JupyterLab may restore
    an earlier test's notebook from its workspace: commands must go to this one)."""
    page.wait_for_function("(name) => { const w = window.jupyterapp?.shell.currentWidget; "
                           "return w?.context?.path === name && w.sessionContext?.session?.kernel; }",
                           arg=name, timeout=60_000)


def kernel_print(page, code: str) -> str:
    """Run ``code`` in the current notebook's kernel; what it printed."""
    return page.evaluate("""async (code) => {
        const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        let text = ''; const f = k.requestExecute({code});
        f.onIOPub = (m) => { if (m.header.msg_type === 'stream') text += m.content.text; };
        await f.done; return text; }""", code)


def kernel_until(page, code: str, want: str, timeout=15.0) -> str:
    """Poll the kernel until ``code`` prints ``want`` (whitespace-normalised) or ``timeout`` s pass; the last
    output, normalised (the frontend holds back a model's state sync while an earlier one is unacknowledged)."""
    deadline, out = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        out = " ".join(kernel_print(page, code).split())
        if out == want:
            break
        page.wait_for_timeout(200)
    return out
