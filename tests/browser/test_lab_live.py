"""The whole loop in a real JupyterLab: a notebook builds a Lab, its attention view draws the model's
numbers, typing in the prompt box recomputes them, errors keep the last good view, and untrusted
token text stays text."""

from __future__ import annotations

import json
import time

import pytest

from mvbrowser import (PROMPT, ROOT, canvas_stats, cell_pixel, hover_cell, probe_cells, reference, route_offline,
                       write_notebook)

pytestmark = pytest.mark.browser

BOX = ".mechviz-prompt"
XSS = '<img src=x onerror="window.__pwned=1"> cat'


def _sel_prompt(p: str) -> str:
    return f"{ROOT}[data-prompt={json.dumps(p)}]"


@pytest.fixture
def lab_page(jupyter_lab, page, artifacts):
    """JupyterLab with the notebook open and all cells run; the view drawn for PROMPT."""
    url, token, root = jupyter_lab
    write_notebook(root / "live.ipynb")
    offline = route_offline(page.context, serve_cdn=False, local_prefixes=(url, url.replace("http", "ws", 1)))
    t0 = time.monotonic()
    page.goto(f"{url}/lab/tree/live.ipynb?token={token}")
    page.wait_for_function("window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel",
                           timeout=60_000)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_selector(_sel_prompt(PROMPT), timeout=90_000)
    print(f"lab open + run + first draw: {time.monotonic() - t0:.1f}s")
    yield page
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session?.shutdown()")
    assert offline["aborted"] == [], f"JupyterLab tried the network: {offline['aborted']}"


def _wait_view(page, prompt: str, timeout=20_000):
    page.wait_for_selector(_sel_prompt(prompt), timeout=timeout)
    page.wait_for_function("([sel, p]) => (document.querySelector(sel + ' .mv-status')?.textContent || '').includes(p)",
                           arg=[BOX, prompt], timeout=timeout)


def _type_prompt(page, text: str):
    box = page.locator(f"{BOX} textarea.mv-prompt-input")
    box.fill("")
    box.press_sequentially(text, delay=15)


def _check_view(page, prompt: str, layer: int = 0, head: int = 0):
    tokens, pat = reference(prompt)
    T = len(tokens)
    assert page.locator(ROOT).get_attribute("data-ntokens") == str(T)
    assert page.locator(f"{ROOT} .mv-token").all_text_contents() == tokens
    for i, j in probe_cells(pat[layer, head], T):
        r = hover_cell(page, i, j)
        assert abs(r["value"] - pat[layer, head, i, j]) < 0.006, (prompt, i, j, r, float(pat[layer, head, i, j]))
    return tokens, pat


def test_live_lab_draws_model_and_follows_typing(lab_page, artifacts):
    page = lab_page
    tokens, pat = _check_view(page, PROMPT)
    T = len(tokens)
    i, j = probe_cells(pat[0, 0], T)[0]
    hi, zero = cell_pixel(page, i, j), cell_pixel(page, 0, T - 1)   # (0, T-1) is causally masked
    assert sum(hi[:3]) < sum(zero[:3]) - 60, (hi, zero)
    assert zero[:3] == [255, 255, 255]
    assert page.locator(f"{BOX} .mv-status").text_content().startswith(f"showing: {PROMPT}")
    page.locator(".jp-Notebook").screenshot(path=str(artifacts / "lab_live_before.png"))

    # type a new prompt and touch nothing else: the kernel must push the result on its own
    new = "A dog ran to the park. A dog"
    before = canvas_stats(page, f"{ROOT} canvas.mv-zoom")
    t0 = time.monotonic()
    _type_prompt(page, new)
    _wait_view(page, new)
    print(f"typed prompt -> view updated in {time.monotonic() - t0:.1f}s")
    _check_view(page, new)
    assert canvas_stats(page, f"{ROOT} canvas.mv-zoom")["hash"] != before["hash"]
    page.locator(".jp-Notebook").screenshot(path=str(artifacts / "lab_live_after.png"))

    # the page stays responsive while an update is in flight: the layer picker answers at once
    third = "The mat sat on the cat."
    _type_prompt(page, third)
    page.select_option(f"{ROOT} select.mv-layer", "1")
    page.wait_for_selector(f'{ROOT}[data-layer="1"]', timeout=2_000)
    frame_ms = page.evaluate("() => new Promise(r => { const t = performance.now(); "
                             "requestAnimationFrame(() => r(performance.now() - t)); })")
    assert frame_ms < 500, frame_ms
    _wait_view(page, third)
    _check_view(page, third, layer=1)
    new = third

    # an invalid (blank) prompt: error in the prompt box, the view keeps the last good prompt
    _type_prompt(page, "   ")
    page.wait_for_function("sel => (document.querySelector(sel + ' .mv-error')?.textContent || '').trim() !== ''",
                           arg=BOX, timeout=30_000)
    assert page.locator(f"{BOX} .mv-error").is_visible()
    assert page.locator(ROOT).get_attribute("data-prompt") == new
    assert canvas_stats(page, f"{ROOT} canvas.mv-zoom")["ink"] > 0
    page.locator(".jp-Notebook").screenshot(path=str(artifacts / "lab_live_error.png"))
    assert page.mv_errors == []


def test_live_lab_untrusted_tokens_are_text(lab_page, artifacts):
    page = lab_page
    _type_prompt(page, XSS)
    _wait_view(page, XSS)
    tokens, _ = _check_view(page, XSS)
    shown = page.locator(f"{ROOT} .mv-token").all_text_contents()
    assert "<" in "".join(shown) and "img" in "".join(shown), shown
    assert page.evaluate("window.__pwned") is None
    assert page.locator(f"{ROOT} img, {BOX} img").count() == 0
    page.locator(".jp-Notebook").screenshot(path=str(artifacts / "lab_live_xss.png"))
    assert page.mv_errors == []
