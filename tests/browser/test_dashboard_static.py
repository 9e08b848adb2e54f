"""The dashboard (attention, logit lens, SAE features) and an activation-patching grid, exported to
one self-contained HTML file and opened with no kernel and no network: every view renders from its
saved state with the model's numbers, the colour switch works, and the linked selection still works
client-side (the jslinks through the Lab's Selection model are part of the saved state)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from mvbrowser import (need_node_modules, DASH_CELLS, assert_lens_cell, DASH_PROMPT, canvas_stats, click_grid, dashboard_lens,
                       dashboard_reference, hover_grid, route_offline, write_cells)

pytestmark = pytest.mark.browser

ATT, LENS, FEAT, GRID = ".mechviz-attention", ".mechviz-logit-lens", ".mechviz-features", ".mechviz-patch-grid"
LOCAL = ("file://", "data:", "blob:", "about:")
CLEAN, CORRUPT = "The cat sat on the mat. The cat", "The dog sat on the mat. The dog"

PATCH_CELLS = [
    # Lab.patching streams exact values from a worker thread onto the kernel's loop: wait for them
    # with an awaiting cell (the loop keeps running), so the saved state holds the finished grid
    f"""import asyncio
if hasattr(lab, "patching"):
    grid_view = lab.patching({CLEAN!r}, {CORRUPT!r}, site="resid_pre")
    for _ in range(1200):
        if grid_view.status in ("done", "cancelled", "error"):
            break
        await asyncio.sleep(0.05)
else:
    from mechviz.analysis.patching import activation_patching, attribution_patching
    from mechviz.widgets.patching import PatchGridView
    grid_view = PatchGridView()
    grid_view.show_grid(activation_patching(lab.model, {CLEAN!r}, {CORRUPT!r}, "resid_pre"),
                        estimate=attribution_patching(lab.model, {CLEAN!r}, {CORRUPT!r}, "resid_pre"), status="done")
grid_view""",
    # direct logit attribution, linked to the attention view (a click opens the head there)
    'heads_view = lab.add(mechviz.HeadGridView(), answer=" the", wrong=" a")\nheads_view',
]
HEADS = ".mechviz-head-grid"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mechviz.export import export_html

    need_node_modules()
    d = tmp_path_factory.mktemp("export_dash")
    nb = write_cells(d / "dashboard.ipynb", DASH_CELLS + PATCH_CELLS)
    t0 = time.monotonic()
    html = export_html(nb, d / "dashboard.html", inline_assets=True, timeout=300, executed_path=d / "executed.ipynb")
    print(f"export (execute + convert + inline): {time.monotonic() - t0:.1f}s")
    return html


def patch_reference():
    from mechviz.analysis.patching import activation_patching

    lab, _, _ = dashboard_reference()
    return activation_patching(lab.model, CLEAN, CORRUPT, "resid_pre")


def test_dashboard_export_renders_offline_and_stays_linked(page, exported, artifacts):
    html = exported.read_text()
    for cdn in ("cdn.jsdelivr.net/npm/anywidget", "unpkg.com/@jupyter-widgets/html-manager@",
                "cdnjs.cloudflare.com/ajax/libs/require.js"):
        assert cdn not in html
    log = route_offline(page.context, serve_cdn=False, local_prefixes=LOCAL)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(exported.resolve().as_uri())
    for root in (ATT, LENS, FEAT):
        page.wait_for_selector(f"{root}[data-prompt={json.dumps(DASH_PROMPT)}]", timeout=30_000)
    page.wait_for_selector(f"{GRID}[data-rows]:not([data-rows='0'])", timeout=30_000)
    assert log["aborted"] == [], log
    assert [u for u in requests if not u.startswith(LOCAL)] == []

    # logit lens: the model's top-1 tokens and probabilities (float16 on the wire)
    lens = dashboard_lens(DASH_PROMPT)
    R, T, _ = lens.top_probs.shape
    assert page.locator(f"{LENS} .mv-collabel").all_text_contents() == list(lens.token_strs)
    for r, c in [(R - 1, T - 1), (0, 0), (R // 2, T // 2)]:
        info = hover_grid(page, LENS, "canvas.mv-grid", r, c)
        assert_lens_cell(info, lens, r, c)
        if c < T - 1:   # the target is the prompt's next token
            assert float(info["targetProb"]) == pytest.approx(float(lens.target_prob[r, c]), abs=1e-3)
            assert int(info["targetRank"]) == int(lens.target_rank[r, c])

    # the colour switch redraws from saved state
    before = canvas_stats(page, f"{LENS} canvas.mv-grid")
    page.select_option(f"{LENS} select.mv-color-by", "entropy")
    page.wait_for_selector(f'{LENS}[data-color-by="entropy"]')
    after = canvas_stats(page, f"{LENS} canvas.mv-grid")
    assert after["hash"] != before["hash"] and after["ink"] > 0
    page.select_option(f"{LENS} select.mv-color-by", "target_rank")
    page.wait_for_selector(f'{LENS}[data-color-by="target_rank"]')
    assert canvas_stats(page, f"{LENS} canvas.mv-grid")["hash"] not in (before["hash"], after["hash"])

    # features: heatmap hover = the SAE's activations
    _, _, feat = dashboard_reference()
    feats = [int(f) for f in feat.data["features"]]
    shown = [int(x) for x in page.locator(f"{FEAT} .mv-rowlabel[data-feature]").evaluate_all("els => els.map(e => e.dataset.feature)")]
    assert shown == feats
    acts = feat.data["acts"]
    for r, c in [(0, int(np.argmax(acts[:, 0]))), (len(feats) - 1, T - 1)]:
        info = hover_grid(page, FEAT, "canvas.mv-heat", r, c, expect={"feature": feats[r], "col": c})
        assert float(info["value"]) == pytest.approx(float(acts[c, r]), abs=2e-3 * max(1.0, float(acts[c, r])))

    # patch grid: exact values of activation patching (float32), computed here too
    grid = patch_reference()
    norm = grid.normalized()
    root = page.locator(GRID)
    assert (root.get_attribute("data-rows"), root.get_attribute("data-cols")) == (str(grid.values.shape[0]), str(T))
    assert root.get_attribute("data-status") == "done"
    assert root.get_attribute("data-exact") == str(grid.values.size)
    hi = np.unravel_index(int(np.nanargmax(norm)), norm.shape)
    lo = np.unravel_index(int(np.nanargmin(norm)), norm.shape)
    for r, c in [hi, lo, (0, 0)]:
        info = hover_grid(page, GRID, "canvas.mv-grid", int(r), int(c))
        assert info["exact"] == "true"
        assert float(info["value"]) == pytest.approx(float(grid.values[r, c]), abs=1e-3)
        assert float(info["norm"]) == pytest.approx(float(norm[r, c]), abs=1e-3)
    assert not page.locator(f"{GRID} button.mv-cancel").is_visible()
    page.screenshot(path=str(artifacts / "static_dashboard.png"), full_page=True)

    # linked selection with no kernel: attention token -> lens and features; lens cell -> attention
    page.click(f'{ATT} .mv-token[data-index="4"]')
    page.wait_for_selector(f'{LENS}[data-token="4"]', timeout=5_000)
    page.wait_for_selector(f'{FEAT}[data-token="4"]', timeout=5_000)
    click_grid(page, LENS, "canvas.mv-grid", 1, 6)
    page.wait_for_selector(f'{ATT}[data-layer="1"][data-token="6"]', timeout=5_000)
    # a feature row click selects the feature and fills its detail panel (no kernel needed)
    click_grid(page, FEAT, "canvas.mv-heat", 0, 2)
    page.wait_for_selector(f'{FEAT}[data-feature="{feats[0]}"]', timeout=5_000)
    strip = [float(x) for x in page.locator(f"{FEAT} .mv-detail span.mv-token").evaluate_all(
        "els => els.map(e => e.dataset.act)")]
    assert strip == pytest.approx(acts[:, 0], abs=0.01 * max(1.0, float(acts[:, 0].max())))
    page.wait_for_selector(f'{LENS}[data-token="2"]', timeout=5_000)
    page.screenshot(path=str(artifacts / "static_dashboard_linked.png"), full_page=True)
    assert page.mv_errors == []


def test_dla_grid_export_renders_offline_and_opens_a_head_in_the_attention_view(page, exported):
    """The HeadGridView (direct logit attribution) from saved state: hover values are the analysis
    numbers, and a click selects that head in the attention view with no kernel (the jslinks)."""
    from mechviz import zoo
    from mechviz.analysis import dla as D
    from mechviz.models import HFAdapter

    adapter = HFAdapter(*zoo.load_default_model())
    run = adapter.run(DASH_PROMPT, capture=D.needs(adapter.n_layers))
    d = D.direct_logit_attribution(adapter, run, " the", " a")
    route_offline(page.context, serve_cdn=False, local_prefixes=LOCAL)
    page.goto(exported.resolve().as_uri())
    page.wait_for_selector(f"{HEADS}[data-rows='{adapter.n_layers}']", timeout=30_000)
    page.wait_for_selector(f"{ATT}[data-prompt={json.dumps(DASH_PROMPT)}]", timeout=30_000)
    L, H = d.heads.shape
    for layer, head in [(0, 0), (L - 1, H - 1), tuple(int(i) for i in np.unravel_index(np.abs(d.heads).argmax(), d.heads.shape))]:
        info = hover_grid(page, HEADS, "canvas.mv-grid", layer, head)
        assert float(info["value"]) == pytest.approx(float(d.heads[layer, head]), abs=1e-3)
    click_grid(page, HEADS, "canvas.mv-grid", L - 1, 1)
    page.wait_for_selector(f'{ATT}[data-layer="{L - 1}"][data-head="1"]', timeout=5_000)
    assert page.mv_errors == []
