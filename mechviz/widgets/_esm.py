"""Where the built JS bundles live (``widgets_js/src`` is built into ``mechviz/static/``)."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "static"

_MISSING = """export default { render({ el }) {
  const p = document.createElement("pre");
  p.textContent = %r;
  el.appendChild(p);
} };"""


def bundle(name: str) -> Path | str:
    """Path of the built ES module for view ``name``. If it was never built, an ES module that says
    so in the output cell (and how to fix it) instead of failing at import."""
    path = STATIC / f"{name}.js"
    if path.exists():
        return path
    return _MISSING % f"mechviz: the widget bundle {path.name} is missing; build it with `make js`."
