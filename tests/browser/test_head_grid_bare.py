"""HeadGridView in a bare page, rendered from the Python widget's own state: hover read-outs equal the
analysis numbers, a click writes (layer, head) to the selection, token strings stay text."""

from __future__ import annotations

import numpy as np
import pytest

from mvbrowser import click_grid, grid_pixel, hover_grid
from mvbrowser import mount_bare as mount

pytestmark = pytest.mark.browser
ROOT = ".mechviz-head-grid"


def _dla():
    from mechviz import zoo
    from mechviz.analysis import dla as D
    from mechviz.models import HFAdapter

    adapter = HFAdapter(*zoo.load_default_model())
    run = adapter.run("The cat sat on the mat. The cat sat on", capture=D.needs(adapter.n_layers, by_source=True))
    run.token_strs[3] = "<img src=x onerror=\"window.__pwned=1\">"  # an untrusted token string
    return D.direct_logit_attribution(adapter, run, " the", " a", by_source=True)


def test_dla_grid_hover_click_modes_and_text(page):
    from mechviz.widgets.head_grid import HeadGridView

    d = _dla()
    v = HeadGridView()
    v.show(d, prompt="a <b>prompt</b>")
    mount(page, v)
    page.locator(ROOT).wait_for()
    root = page.locator(ROOT)
    assert (root.get_attribute("data-rows"), root.get_attribute("data-cols")) == ("4", "6")  # 4 heads + attn, MLP
    for layer, head in [(0, 0), (2, 0), (3, 3), (1, 2)]:
        info = hover_grid(page, ROOT, "canvas.mv-grid", layer, head)
        assert float(info["value"]) == pytest.approx(d.heads[layer, head], abs=1e-4)
        assert info["text"].startswith(f"L{layer}H{head} · ")
    info = hover_grid(page, ROOT, "canvas.mv-grid", 2, 5)   # the MLP column
    assert float(info["value"]) == pytest.approx(d.mlp[2], abs=1e-4) and info["text"].startswith("L2 MLP")
    # colours: diverging around 0 (the largest positive head red-ish, the most negative blue-ish)
    hi = np.unravel_index(np.argmax(d.heads), d.heads.shape)
    lo = np.unravel_index(np.argmin(d.heads), d.heads.shape)
    r, _, b, _ = grid_pixel(page, ROOT, "canvas.mv-grid", *hi)
    assert r > b
    r, _, b, _ = grid_pixel(page, ROOT, "canvas.mv-grid", *lo)
    assert b > r
    terms = page.locator(".mv-term").all_text_contents()
    assert terms[0].startswith("embed ") and terms[-1] == f"total {d.total:.4f}"
    # click a head: (layer, head) saved to the shared selection
    click_grid(page, ROOT, "canvas.mv-grid", 2, 0)
    page.wait_for_selector(f'{ROOT}[data-layer="2"][data-head="0"]')
    assert page.evaluate("[window.saved.at(-1).layer, window.saved.at(-1).head]") == [2, 0]
    # by source token: rows L*H, columns the tokens, values sum to the head's
    page.select_option("select.mv-mode", "position")
    page.wait_for_selector(f'{ROOT}[data-mode="position"]')
    assert page.evaluate("window.saved.at(-1).mode") == "position"
    T = len(d.token_strs)
    assert root.get_attribute("data-cols") == str(T)
    info = hover_grid(page, ROOT, "canvas.mv-grid", 8, 13)   # L2H0 from token 13
    assert float(info["value"]) == pytest.approx(d.heads_by_source[2, 0, 13], abs=1e-4)
    assert (info["layer"], info["head"]) == ("2", "0")
    # untrusted token strings are text: labels show them, nothing is parsed as HTML
    labels = page.locator(f"{ROOT} .mv-collabel").evaluate_all("els => els.map(e => e.title)")
    assert labels == d.token_strs
    assert page.locator(f"{ROOT} img, {ROOT} b").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert "<b>prompt</b>" in page.locator(".mv-prompt").text_content()
    assert page.mv_errors == []


def test_detector_grid_sequential(page):
    from mechviz import zoo
    from mechviz.analysis import heads as Hd
    from mechviz.models import HFAdapter
    from mechviz.widgets.head_grid import HeadGridView

    s = Hd.head_scores(HFAdapter(*zoo.load_default_model()), "induction", seed=0)
    v = HeadGridView()
    v.show(s)
    mount(page, v)
    page.locator(ROOT).wait_for()
    assert page.locator(ROOT).get_attribute("data-cols") == "4"
    assert page.locator("select.mv-mode").is_hidden()
    info = hover_grid(page, ROOT, "canvas.mv-grid", 2, 0)
    assert float(info["value"]) == pytest.approx(s.scores[2, 0], abs=1e-4)
    # sequential: the induction head is darker than a head that scores ~0
    dark, light = grid_pixel(page, ROOT, "canvas.mv-grid", 2, 0), grid_pixel(page, ROOT, "canvas.mv-grid", 0, 0)
    assert sum(dark[:3]) < sum(light[:3]) - 100
    click_grid(page, ROOT, "canvas.mv-grid", 2, 2)
    page.wait_for_selector(f'{ROOT}[data-layer="2"][data-head="2"]')
    assert page.mv_errors == []
