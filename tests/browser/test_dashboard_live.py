"""The dashboard in a real JupyterLab: attention (cell 2), logit lens (cell 3) and SAE features
(cell 4) built on one Lab. The lens draws the model's numbers; typing a prompt updates all three;
a click in one cell's view moves the selection in another cell's view (jslink through the Lab's
Selection); steering a feature from the browser changes the model's prediction."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from mvbrowser import (REPO, wait_notebook, DASH_CELLS, assert_lens_cell, DASH_PROMPT, click_grid, dashboard_lens, dashboard_reference, hover_grid,
                       route_offline, write_cells)

pytestmark = pytest.mark.browser

PROMPT = DASH_PROMPT
ATT, LENS, FEAT, BOX = ".mechviz-attention", ".mechviz-logit-lens", ".mechviz-features", ".mechviz-prompt"
CLAMP = 30.0


def _all_show(page, prompt, timeout=60_000):
    for root in (ATT, LENS, FEAT):
        page.wait_for_selector(f"{root}[data-prompt={json.dumps(prompt)}]", timeout=timeout)




@pytest.fixture
def dash(jupyter_lab, page):
    url, token, root = jupyter_lab
    write_cells(root / "dashboard.ipynb", DASH_CELLS)
    NAME = "dashboard.ipynb"
    offline = route_offline(page.context, serve_cdn=False, local_prefixes=(url, url.replace("http", "ws", 1)))
    t0 = time.monotonic()
    page.goto(f"{url}/lab/tree/dashboard.ipynb?token={token}")
    wait_notebook(page, NAME)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    _all_show(page, PROMPT, timeout=120_000)
    print(f"lab open + run + three views drawn: {time.monotonic() - t0:.1f}s")
    yield page
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session?.shutdown()")
    assert offline["aborted"] == [], f"JupyterLab tried the network: {offline['aborted']}"


def check_lens(page, lens, cells=None):
    R, T, _ = lens.top_probs.shape
    assert page.locator(LENS).get_attribute("data-ntokens") == str(T)
    assert page.locator(f"{LENS} .mv-collabel").all_text_contents() == list(lens.token_strs)
    for r, c in cells or [(R - 1, T - 1), (0, 0), (R // 2, T // 2), (R - 1, 1)]:
        assert_lens_cell(hover_grid(page, LENS, "canvas.mv-grid", r, c), lens, r, c)


def test_dashboard_lens_values_typing_and_linked_selection(dash, artifacts):
    page = dash
    # (a) the lens shows the model's numbers (computed here, in the test process)
    check_lens(page, dashboard_lens(PROMPT))
    page.locator(".jp-Notebook:visible").first.screenshot(path=str(artifacts / "lab_dashboard.png"))

    # (c) linked selection across cells: a token in the attention view (cell 2) -> lens (cell 3)
    page.click(f'{ATT} .mv-token[data-index="5"]')
    page.wait_for_selector(f'{LENS}[data-token="5"]', timeout=10_000)
    page.wait_for_selector(f'{FEAT}[data-token="5"]', timeout=10_000)
    # ... and a lens cell -> the attention view's layer (and token)
    click_grid(page, LENS, "canvas.mv-grid", 2, 3)
    page.wait_for_selector(f'{ATT}[data-layer="2"][data-token="3"]', timeout=10_000)
    assert page.locator(f"{ATT} select.mv-layer").input_value() == "2"
    # the kernel's Selection followed too (it is what the Lab reads); the frontend holds back a
    # model's state sync while an earlier one is unacknowledged, so poll
    code = "print(lab.selection.layer, lab.selection.token)"
    deadline, out = time.monotonic() + 15, ""
    while time.monotonic() < deadline:
        out = page.evaluate("""async (code) => {
            const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
            let text = ''; const f = k.requestExecute({code});
            f.onIOPub = (m) => { if (m.header.msg_type === 'stream') text += m.content.text; };
            await f.done; return text; }""", code)
        if out.split() == ["2", "3"]:
            break
        page.wait_for_timeout(200)
    assert out.split() == ["2", "3"], out

    # (b) typing a new prompt updates all three views
    new = "A dog ran to the park. A dog"
    box = page.locator(f"{BOX} textarea.mv-prompt-input")
    box.fill("")
    t0 = time.monotonic()
    box.press_sequentially(new, delay=15)
    _all_show(page, new)
    print(f"typed prompt -> three views updated in {time.monotonic() - t0:.1f}s")
    check_lens(page, dashboard_lens(new))
    page.locator(".jp-Notebook:visible").first.screenshot(path=str(artifacts / "lab_dashboard_typed.png"))
    assert page.mv_errors == []


def test_dashboard_steering_changes_prediction(dash, artifacts):
    page = dash
    lab, lens_view, feat_view = dashboard_reference()
    lab.steer(None)
    lab.prompt = PROMPT
    base_lens = lens_view.result
    base_top = base_lens.top_strs[-1, -1, 0]
    # a feature whose clamp changes the last position's top-1 (decided here, with the same model)
    shown = [int(x) for x in page.locator(f"{FEAT} .mv-rowlabel[data-feature]").evaluate_all("els => els.map(e => e.dataset.feature)")]
    assert shown == [int(f) for f in feat_view.data["features"]]
    for row, feature in enumerate(shown):
        lab.steer(feature, CLAMP, "clamp")
        steered_top = lens_view.result.top_strs[-1, -1, 0]
        p = lens_view.result.top_probs[-1, -1]
        if steered_top != base_top and p[0] - p[1] > 2e-3:   # a clear change, no near-tie
            steered_lens = lens_view.result
            break
    else:
        pytest.fail(f"no top feature clamped to {CLAMP} changes the top-1 {base_top!r}")
    steered_next = list(feat_view.result.next_strs[1])
    steered_prob = [float(x) for x in feat_view.result.next_prob[1]]
    lab.steer(None)

    R, T = lens_view.result.top_probs.shape[:2]
    before = hover_grid(page, LENS, "canvas.mv-grid", R - 1, T - 1)
    assert_lens_cell(before, base_lens, R - 1, T - 1)
    # click the feature's row in the heatmap: it is selected and its detail shows
    click_grid(page, FEAT, "canvas.mv-heat", row, 0)
    page.wait_for_selector(f'{FEAT}[data-feature="{feature}"]')
    assert page.locator(f"{FEAT} .mv-detail").get_attribute("data-feature") == str(feature)
    assert page.locator(f"{FEAT} .mv-promoted li").count() > 0
    assert page.locator(f"{FEAT} input.mv-steer-feature").input_value() == str(feature)
    assert page.locator(f"{FEAT} .mv-next-steered li").count() == 0
    base_list = page.locator(f"{FEAT} .mv-next-base li").all_text_contents()

    # a large clamp, applied from the browser: the Lab recomputes every view with the steered model
    seq = page.locator(LENS).get_attribute("data-seq")
    page.fill(f"{FEAT} input.mv-steer-value", str(CLAMP))
    page.select_option(f"{FEAT} select.mv-steer-mode", "clamp")
    t0 = time.monotonic()
    page.click(f"{FEAT} button.mv-steer-apply")
    page.wait_for_selector(f'{FEAT}[data-steering="feature {feature} of resid_post.1 clamped to {CLAMP:g}"]', timeout=60_000)
    page.wait_for_function("([sel, s]) => document.querySelector(sel).dataset.seq !== s", arg=[LENS, seq],
                           timeout=30_000)
    print(f"steer -> views recomputed in {time.monotonic() - t0:.1f}s")
    steered = page.locator(f"{FEAT} .mv-next-steered li")
    steered.first.wait_for()
    texts = steered.all_text_contents()
    assert texts[0] == steered_next[0] and texts != base_list, (texts, steered_next, base_list)
    probs = [float(x) for x in steered.evaluate_all("els => els.map(e => e.dataset.prob)")]
    assert probs == pytest.approx(steered_prob, abs=1e-3)
    assert page.locator(f"{FEAT} .mv-next-base li").all_text_contents() == base_list
    after = hover_grid(page, LENS, "canvas.mv-grid", R - 1, T - 1)
    assert_lens_cell(after, steered_lens, R - 1, T - 1)
    assert after["top"] == steered_top != base_top, (after, steered_top, base_top)
    # the controls show what the kernel applied (its `steered` answer)
    controls = lambda: (page.input_value(f"{FEAT} input.mv-steer-feature"),  # noqa: E731
                        page.input_value(f"{FEAT} input.mv-steer-value"), page.input_value(f"{FEAT} select.mv-steer-mode"))
    assert controls() == (str(feature), f"{CLAMP:g}", "clamp")
    page.locator(".jp-Notebook:visible").first.screenshot(path=str(artifacts / "lab_dashboard_steered.png"))

    # a request the kernel refuses: its error shows, the controls return to the applied steering
    page.fill(f"{FEAT} input.mv-steer-feature", "999999")
    page.fill(f"{FEAT} input.mv-steer-value", "3")
    page.select_option(f"{FEAT} select.mv-steer-mode", "scale")
    page.click(f"{FEAT} button.mv-steer-apply")
    page.wait_for_function("(sel) => (document.querySelector(sel)?.textContent || '').includes('out of range')",
                           arg=f"{FEAT} .mv-error", timeout=30_000)
    page.wait_for_function("([sel, f]) => document.querySelector(sel).value === f",
                           arg=[f"{FEAT} input.mv-steer-feature", str(feature)], timeout=10_000)
    assert controls() == (str(feature), f"{CLAMP:g}", "clamp")
    assert page.locator(FEAT).get_attribute("data-steering") == f"feature {feature} of resid_post.1 clamped to {CLAMP:g}"

    # steering off restores the prediction
    seq = page.locator(LENS).get_attribute("data-seq")
    page.click(f"{FEAT} button.mv-steer-off")
    page.wait_for_selector(f'{FEAT}[data-steering=""]', timeout=60_000)
    page.wait_for_function("([sel, s]) => document.querySelector(sel).dataset.seq !== s", arg=[LENS, seq],
                           timeout=30_000)
    assert page.locator(f"{FEAT} .mv-next-steered li").count() == 0
    # the read-out resets on new data: hover again
    page.mouse.move(0, 0)
    restored = hover_grid(page, LENS, "canvas.mv-grid", R - 1, T - 1)
    assert_lens_cell(restored, base_lens, R - 1, T - 1)
    assert page.mv_errors == []


CLEAN, CORRUPT = "The cat sat on the mat. The cat", "The dog sat on the mat. The dog"
GRID = ".mechviz-patch-grid"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
def patch_page(jupyter_lab, page):
    url, token, root = jupyter_lab
    NAME = "patching.ipynb"
    write_cells(root / NAME, [
        "import mechviz",
        f"lab = mechviz.Lab.default(prompt={CLEAN!r})",
        f"grid_view = lab.patching({CLEAN!r}, {CORRUPT!r}, site='resid_pre')\ngrid_view",
    ])
    offline = route_offline(page.context, serve_cdn=False, local_prefixes=(url, url.replace("http", "ws", 1)))
    page.goto(f"{url}/lab/tree/patching.ipynb?token={token}")
    wait_notebook(page, NAME)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        page.wait_for_selector(f'{GRID}[data-status="done"]', timeout=90_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "lab_patching_timeout.png"), full_page=True)
        raise
    yield page
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session?.shutdown()")
    assert offline["aborted"] == [], f"JupyterLab tried the network: {offline['aborted']}"


def test_lab_patching_grid_and_cell_click(patch_page, artifacts):
    """Lab.patching in a live kernel: the finished grid equals activation patching computed here, and
    a clicked cell is answered by the kernel with that patched run (metric = the cell's value)."""
    page = patch_page
    lab, _, _ = dashboard_reference()
    ref = lab.patching(CLEAN, CORRUPT, site="resid_pre", exact=False)
    from mechviz.analysis.patching import activation_patching
    grid = activation_patching(lab.model, CLEAN, CORRUPT, "resid_pre")
    norm = grid.normalized()
    root = page.locator(GRID)
    assert root.get_attribute("data-exact") == str(grid.values.size)
    assert page.locator(f"{GRID} .mv-progress-text").text_content().startswith(f"{grid.values.size} / {grid.values.size}")
    r, c = (int(x) for x in np.unravel_index(int(np.nanargmax(norm)), norm.shape))
    info = hover_grid(page, GRID, "canvas.mv-grid", r, c)
    assert info["exact"] == "true" and float(info["value"]) == pytest.approx(float(grid.values[r, c]), abs=1e-3)
    click_grid(page, GRID, "canvas.mv-grid", r, c)
    page.wait_for_selector(f'{GRID}[data-cell="{r},{c}"]')
    page.wait_for_selector(f'{GRID} .mv-detail[data-cell="{r},{c}"]', timeout=30_000)
    ref.cell = [r, c]
    for _ in range(600):  # Playwright's loop runs in this thread: the reference Lab answers through it
        if ref.detail_cell == [r, c]:
            break
        page.wait_for_timeout(50)
    items = page.locator(f"{GRID} .mv-detail-next li")
    assert items.count() == len(ref.detail_strs) and items.first.text_content() == ref.detail_strs[0]
    probs = [float(x) for x in items.evaluate_all("els => els.map(e => e.dataset.prob)")]
    assert probs == pytest.approx([float(x) for x in ref.detail_probs], abs=1e-3)
    metric = page.locator(f"{GRID} .mv-detail-metric")
    assert float(metric.get_attribute("data-value")) == pytest.approx(float(grid.values[r, c]), abs=1e-3)
    rows = page.locator(f"{GRID} .mv-lens-row")
    assert rows.count() == len(ref.lens_rows)
    assert rows.last.locator(".mv-lens-tok").first.text_content() == ref.lens_strs[-1][0]
    page.locator(".jp-Notebook:visible").first.screenshot(path=str(artifacts / "lab_patching_cell.png"))
    assert page.mv_errors == []
