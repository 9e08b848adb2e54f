"""marimo (``marimo run``, a real Chromium): ``lab.show(attention, lens, features)`` is one anywidget
(a Panel) that marimo draws with the prompt box and all three views (so is ``lab.dashboard()``; a head
grid and a patching grid draw on their own); typing into the prompt box
recomputes every view; a click in one view moves the others, in the same panel and in a second panel
in another cell (the panels link the views to the Lab's Selection in the browser: marimo has no
jslink); the kernel's Selection follows. Values are checked against the model run in this process."""

from __future__ import annotations

import json
import time

import pytest
from playwright.sync_api import expect

from mvbrowser import DASH_PROMPT, assert_lens_cell, dashboard_lens, hover_grid

pytestmark = pytest.mark.browser

ATT, LENS, FEAT, BOX = ".mechviz-attention", ".mechviz-logit-lens", ".mechviz-features", ".mechviz-prompt"

APP = f'''
import marimo

app = marimo.App(width="full")


@app.cell
def _():
    import torch
    import mechviz

    torch.set_num_threads(1)
    lab = mechviz.Lab.default(prompt={DASH_PROMPT!r})
    attn, lens, feats = lab.attention(), lab.logit_lens(), lab.features()
    attn2 = lab.attention()
    return attn, attn2, feats, lab, lens, mechviz


@app.cell
def _(attn, feats, lab, lens):
    panel1 = lab.show(attn, lens, feats)
    panel1
    return (panel1,)


@app.cell
def _(attn2, lab):
    panel2 = lab.show(attn2)
    panel2
    return (panel2,)


@app.cell
def _(lab, mechviz):
    import marimo as mo

    # the kernel's view of the shared selection, refreshed by a button the test clicks
    refresh = mo.ui.button(label="selection?")
    refresh
    return mo, refresh


@app.cell
def _(lab, mo, refresh):
    refresh
    mo.md(f"<span id='mv-kernel-selection'>{{lab.selection.layer}},{{lab.selection.head}},{{lab.selection.token}}</span>")
    return


@app.cell
def _(lab):
    lab.dashboard()
    return


@app.cell
def _(lab):
    from mechviz.widgets import HeadGridView

    lab.add(HeadGridView(), detector="induction")
    return


@app.cell
def _(lab):
    lab.patching("The cat sat on the mat. The cat", ablate="zero", answers=(" sat", " on"))
    return


if __name__ == "__main__":
    app.run()
'''


def _all_show(page, prompt, roots=(ATT, LENS, FEAT), timeout=60_000):
    for root in roots:
        page.wait_for_selector(f"{root}[data-prompt={json.dumps(prompt)}]", timeout=timeout, state="attached")


def test_marimo_panel_prompt_and_linked_selection(marimo_app, page, artifacts):
    mode = "run"  # `marimo edit` headless opened with every cell stale here, and a click on run-all did not run them
    url = marimo_app(APP, mode)
    aborted = []
    page.context.route("**/*", lambda r: r.continue_() if r.request.url.startswith(
        (url, url.replace("http", "ws", 1), "data:", "blob:", "about:")) else (aborted.append(r.request.url), r.abort())[1])
    page.set_viewport_size({"width": 1280, "height": 2400})  # every view on screen: marimo scrolls its own container
    t0 = time.monotonic()
    page.goto(url)
    _all_show(page, DASH_PROMPT, timeout=120_000)
    print(f"marimo {mode}: app open + three views drawn: {time.monotonic() - t0:.1f}s")
    # lab.dashboard() is a Panel too; a head grid and a patching grid show on their own
    expect(page.locator(".mechviz-panel")).to_have_count(3)
    expect(page.locator(BOX)).to_have_count(3)  # each panel shows the Lab's prompt box
    expect(page.locator(".mechviz-head-grid")).to_have_attribute("data-rows", "4", timeout=60_000)  # 4 layers
    expect(page.locator(".mechviz-head-grid")).to_have_attribute("data-cols", "4")                  # x 4 heads
    expect(page.locator(".mechviz-patch-grid")).not_to_have_attribute("data-exact", "0", timeout=60_000)
    assert "Jupyter widgets are not supported" not in page.content()
    page.screenshot(path=str(artifacts / f"marimo_{mode}_panel.png"), full_page=True)
    # the lens draws the model's numbers (computed in this process)
    lens = dashboard_lens(DASH_PROMPT)
    R, T, _ = lens.top_probs.shape
    for r, c in [(R - 1, T - 1), (0, 0), (R // 2, T // 2)]:
        assert_lens_cell(hover_grid(page, LENS, "canvas.mv-grid", r, c), lens, r, c)

    # linked selection: a head thumbnail in panel 1's attention view -> panel 2's attention view
    att1, att2 = page.locator(ATT).nth(0), page.locator(ATT).nth(1)
    assert att2.get_attribute("data-head") == "0"
    att1.locator('.mv-thumbbox[data-head="3"]').click()
    expect(att1).to_have_attribute("data-head", "3", timeout=10_000)
    expect(att2).to_have_attribute("data-head", "3", timeout=10_000)  # the other cell's panel
    # a token in the attention view -> the lens and features views of the same panel, and panel 2
    att1.locator('.mv-token[data-index="5"]').first.click()
    for root in (LENS, FEAT):
        page.wait_for_selector(f'{root}[data-token="5"]', timeout=10_000, state="attached")
    expect(att2).to_have_attribute("data-token", "5", timeout=10_000)
    # the kernel's Selection followed (what the Lab reads)
    deadline, seen = time.monotonic() + 20, ""
    while time.monotonic() < deadline:
        page.get_by_role("button", name="selection?").click()
        time.sleep(0.5)
        seen = page.locator("#mv-kernel-selection").text_content()
        if seen.endswith(",3,5"):
            break
    assert seen.endswith(",3,5"), f"kernel selection {seen!r}"

    # typing into the prompt box recomputes every view (the new prompt, then the model's numbers)
    new = DASH_PROMPT + " again"
    box = page.locator(f"{BOX} textarea").first
    box.fill(new)
    box.press("Control+Enter")
    _all_show(page, new, roots=(ATT, LENS, FEAT), timeout=60_000)
    lens2 = dashboard_lens(new)
    R2, T2, _ = lens2.top_probs.shape
    assert_lens_cell(hover_grid(page, LENS, "canvas.mv-grid", R2 - 1, T2 - 1), lens2, R2 - 1, T2 - 1)
    expect(att2).to_have_attribute("data-prompt", new, timeout=10_000)  # the other panel's view too
    assert not page.mv_errors, page.mv_errors
    assert aborted == [], f"marimo tried the network: {aborted}"
