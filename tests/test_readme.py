"""Every Python snippet in the README runs as written, in order, in one fresh namespace, offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_snippets():
    assert len(BLOCKS) >= 3


def test_readme_snippets_run_as_written(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {}
    for i, block in enumerate(BLOCKS):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as exc:  # name the block: the README is what a newcomer pastes
            pytest.fail(f"README python block {i + 1} fails as written: {type(exc).__name__}: {exc}\n{block}")
    import mechviz

    assert isinstance(namespace["lab"], mechviz.Lab) and namespace["lab"].model.name == "mechviz-default"


def test_readme_shows_every_view():
    """One picture per view class in the views table, and the file is there (made by the browser tests)."""
    import mechviz

    text = README.read_text(encoding="utf-8")
    views = sorted(re.findall(r"^\| `(\w+View)` \|", text, flags=re.M))
    assert len(views) >= 8 and all(hasattr(mechviz, v) for v in views)
    for v in views:
        assert f"](docs/img/{v}.png)" in text, v
        png = README.parent / "docs" / "img" / f"{v}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 8_000, v
