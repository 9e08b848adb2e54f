"""Notebook 7 (``jupyter notebook``, a real Chromium): the tour's first cells render through the Panel
that ``lab.show`` returns (the prompt box and the attention view, with the model's numbers), a value
set from Python moves the view in both cells, and editing the prompt in the browser recomputes it."""

from __future__ import annotations

import json
import time

import nbformat
import numpy as np
import pytest
from playwright.sync_api import expect

from mvbrowser import REPO, hover_cell, kernel_until, reference, route_offline, write_cells

pytestmark = pytest.mark.browser

ATT, BOX = ".mechviz-attention", ".mechviz-prompt"


def tour_cells(n: int = 2) -> list[str]:
    """The tour's first ``n`` code cells, as the tour has them."""
    nb = nbformat.read(str(REPO / "notebooks" / "tour.ipynb"), as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"][:n]


def _prompt_of(cell: str) -> str:
    start = cell.index('prompt="') + len('prompt="')
    return cell[start:cell.index('"', start)]


def _check_attention(page, prompt, layer=0, head=0):
    tokens, pat = reference(prompt)
    T = len(tokens)
    view = page.locator(ATT).first
    assert view.get_attribute("data-ntokens") == str(T)
    for i, j in [(T - 1, 0), (T - 1, T - 1), (T // 2, T // 3)]:
        r = hover_cell(page, i, j)
        assert r["dst"] == i and r["src"] == j
        assert r["value"] == pytest.approx(float(pat[layer, head, i, j]), abs=2e-3), (i, j)
    assert np.allclose(pat[layer, head].sum(-1), 1, atol=1e-4)


def test_notebook7_tour_cells_and_prompt_editing(notebook7, page, artifacts):
    url, token, root = notebook7
    cells = tour_cells(2)
    prompt = _prompt_of(cells[0])
    write_cells(root / "tour_head.ipynb", cells)
    offline = route_offline(page.context, serve_cdn=False, local_prefixes=(url, url.replace("http", "ws", 1)))
    t0 = time.monotonic()
    page.goto(f"{url}/notebooks/tour_head.ipynb?token={token}")
    page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel",
                           timeout=60_000)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_selector(f"{ATT}[data-prompt={json.dumps(prompt)}]", timeout=120_000)
    print(f"notebook 7: open + run + drawn: {time.monotonic() - t0:.1f}s")

    # cell 1: lab.show(attn) is one Panel with the prompt box above the view
    panel = page.locator(".mechviz-panel").first
    expect(panel.locator(BOX)).to_have_count(1)
    expect(panel.locator(f"{BOX} textarea")).to_have_value(prompt)
    # cell 2 (attn.layer, attn.head = 1, 0; attn): the same view, shown twice, both at layer 1
    expect(page.locator(ATT)).to_have_count(2, timeout=30_000)
    for k in range(2):
        expect(page.locator(ATT).nth(k)).to_have_attribute("data-layer", "1", timeout=30_000)
    _check_attention(page, prompt, layer=1, head=0)
    page.screenshot(path=str(artifacts / "notebook7_tour.png"))

    # editing the prompt in the browser recomputes the view and the kernel's Lab follows
    new = "A dog ran in the park. A dog ran"
    box = panel.locator(f"{BOX} textarea")
    box.fill(new)
    box.press("Control+Enter")
    page.wait_for_selector(f"{ATT}[data-prompt={json.dumps(new)}]", timeout=60_000)
    _check_attention(page, new, layer=1, head=0)
    assert kernel_until(page, "print(lab.prompt)", new) == new
    # Notebook 7.6.5 itself raises this while loading its settings, on a page with no widget at all
    # (notebook_core's settings registry, before any cell runs): not ours, so not counted
    errors = [e for e in page.mv_errors if e != "Cannot read properties of undefined (reading 'schema')"]
    assert not errors, errors
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session?.shutdown()")
    assert offline["aborted"] == [], f"Notebook 7 tried the network: {offline['aborted']}"
