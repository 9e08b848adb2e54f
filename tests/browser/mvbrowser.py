"""Helpers shared by the browser tests (canvas pixels, hovering heatmap cells, offline routing)."""

from __future__ import annotations

import mimetypes
import re
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

