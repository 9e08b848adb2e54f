"""Where the built JS bundles live (``widgets_js/`` is built into ``mechviz/static/``)."""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "static"


def bundle(name: str) -> Path:
    """Path of the built ES module for view ``name``; a clear error if it was never built."""
    path = STATIC / f"{name}.js"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: build the widget bundles with `make js` "
            "(esbuild from widgets_js/, see README)."
        )
    return path
