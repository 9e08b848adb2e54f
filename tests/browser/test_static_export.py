"""Static HTML export: the exported page renders the attention view from saved widget state, with
no kernel and no network, and its numbers are the model's numbers."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mvbrowser import (need_node_modules, PROMPT, ROOT, canvas_stats, cell_pixel, hover_cell, probe_cells,
                       reference, route_offline, write_notebook)

pytestmark = pytest.mark.browser

LOCAL = ("file://", "data:", "blob:", "about:")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mechviz.export import export_html

    need_node_modules()
    d = tmp_path_factory.mktemp("export")
    nb = write_notebook(d / "attention.ipynb")
    t0 = time.monotonic()
    inline = export_html(nb, d / "inline.html", inline_assets=True, timeout=300,
                         executed_path=d / "executed.ipynb")
    t1 = time.monotonic()
    cdn = export_html(d / "executed.ipynb", d / "cdn.html", execute=False, inline_assets=False)
    print(f"export inline {t1 - t0:.1f}s, cdn {time.monotonic() - t1:.1f}s")
    return {"inline": inline, "cdn": cdn}


def _open(page, path, serve_cdn):
    log = route_offline(page.context, serve_cdn=serve_cdn, local_prefixes=LOCAL)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector(f'{ROOT}[data-prompt="{PROMPT}"]', timeout=30_000)
    return log, requests


def test_inline_export_renders_offline(page, exported, artifacts):
    html = exported["inline"].read_text()
    assert "cdn.jsdelivr.net/npm/anywidget" not in html                     # anywidget's AMD is inlined
    assert "unpkg.com/@jupyter-widgets/html-manager@" not in html            # so is embed-amd.js
    assert "cdnjs.cloudflare.com/ajax/libs/require.js" not in html           # and require.js
    tokens, pat = reference()
    T = len(tokens)
    log, requests = _open(page, exported["inline"], serve_cdn=False)

    # nothing but the file itself (and data:/blob: URLs) was requested: no CDN, no network
    assert log["aborted"] == [], log
    assert [u for u in requests if not u.startswith(LOCAL)] == []

    root = page.locator(ROOT)
    assert root.get_attribute("data-ntokens") == str(T)
    assert page.locator(f"{ROOT} .mv-token").all_text_contents() == tokens
    zoom = canvas_stats(page, f"{ROOT} canvas.mv-zoom")
    assert zoom["ink"] > 0 and zoom["w"] == T * int(page.locator("canvas.mv-zoom").get_attribute("data-cell"))

    # hover read-out = the model's attention (layer 0, head 0), within the uint8 quantisation
    for i, j in probe_cells(pat[0, 0], T):
        r = hover_cell(page, i, j)
        assert abs(r["value"] - pat[0, 0, i, j]) < 0.006, (i, j, r, float(pat[0, 0, i, j]))
    i, j = probe_cells(pat[0, 0], T)[0]
    hi, zero = cell_pixel(page, i, j), cell_pixel(page, 0, T - 1)   # (0, T-1) is causally masked: 0
    assert zero[:3] == [255, 255, 255] and sum(hi[:3]) < sum(zero[:3]) - 60, (hi, zero)
    page.screenshot(path=str(artifacts / "static_inline_layer0.png"), full_page=True)

    # the layer picker redraws from saved state (no kernel): different pixels, layer-1 values
    assert pat.shape[0] > 1, "the default model needs >1 layer for this test"
    page.select_option(f"{ROOT} select.mv-layer", "1")
    page.wait_for_selector(f'{ROOT}[data-layer="1"]')
    after = canvas_stats(page, f"{ROOT} canvas.mv-zoom")
    assert after["hash"] != zoom["hash"]
    i, j = probe_cells(pat[1, 0], T)[0]
    assert abs(hover_cell(page, i, j)["value"] - pat[1, 0, i, j]) < 0.006

    # clicking a token shades the strip by the attention from it (layer 1, head 0)
    k = T - 1
    page.click(f'{ROOT} .mv-token[data-index="{k}"]')
    page.wait_for_selector(f'{ROOT}[data-token="{k}"]')
    shades = page.eval_on_selector_all(f"{ROOT} .mv-token", "els => els.map(e => e.dataset.attn)")
    assert np.allclose([float(s) for s in shades], pat[1, 0, k], atol=0.006)
    bg = page.eval_on_selector_all(f"{ROOT} .mv-token", "els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert len(set(bg)) > 1
    page.screenshot(path=str(artifacts / "static_inline_layer1_token.png"), full_page=True)
    assert page.mv_errors == []


def test_cdn_export_renders_when_cdn_reachable(page, exported, artifacts):
    """nbconvert's standard output (CDN script tags) works when those URLs answer; here they are
    answered from the npm packages in widgets_js/node_modules and everything else is cut off."""
    tokens, pat = reference()
    log, _ = _open(page, exported["cdn"], serve_cdn=True)
    served = " ".join(log["served"])
    for what in ("require", "@jupyter-widgets/html-manager", "anywidget"):
        assert what in served, (what, log)
    assert all("mathjax" in u.lower() for u in log["aborted"]), log["aborted"]   # not needed to render
    assert page.locator(ROOT).get_attribute("data-ntokens") == str(len(tokens))
    i, j = probe_cells(pat[0, 0], len(tokens))[0]
    assert abs(hover_cell(page, i, j)["value"] - pat[0, 0, i, j]) < 0.006
    page.screenshot(path=str(artifacts / "static_cdn_routed.png"), full_page=True)
    assert page.mv_errors == []
