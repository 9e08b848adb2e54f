"""The Lab's causal-trace grid (lab.patching(prompt, trace=...)) in a bare page, from the real widget's
state: hover read-outs are the trace's probabilities, subject tokens are marked, and a clicked cell's
answer (the restored run's next tokens) fills the detail panel."""

from __future__ import annotations

import numpy as np
import pytest

from mvbrowser import click_grid, hover_grid, push_bare
from mvbrowser import mount_bare as mount

pytestmark = pytest.mark.browser
GRID = ".mechviz-patch-grid"
DETAIL = ["detail_cell", "detail_metric", "detail_strs", "detail_probs", "lens_rows", "lens_strs", "lens_probs"]


def test_causal_trace_grid_reads_back_and_answers_a_click(page):
    import mechviz
    from mechviz.analysis.causal_tracing import causal_trace

    lab = mechviz.Lab.default(prompt="The cat", sae=False)
    lab._loop = None   # built inside Playwright's loop: compute here, as a script does (no job thread)
    prompt, subject = "The New York Yankees played in New", "New York Yankees"
    v = lab.patching(prompt, trace=dict(subject=subject, kind="attn", window=3, samples=3))
    ref = causal_trace(lab.model, prompt, subject, kind="attn", window=3, samples=3)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    mount(page, v)
    page.locator(GRID).wait_for()
    assert "Causal trace (attention, window 3)" in page.locator(GRID).text_content()
    r, c = np.unravel_index(np.argmax(ref.values), ref.values.shape)
    for cell in [(int(r), int(c)), (0, 0), (3, len(ref.tokens) - 1)]:
        info = hover_grid(page, GRID, "canvas.mv-grid", *cell)
        assert f"{ref.values[cell]:.4f}" in info["text"], (cell, info)
    click_grid(page, GRID, "canvas.mv-grid", int(r), int(c))
    page.wait_for_selector(f'{GRID}[data-cell="{r},{c}"]')
    v.cell = page.evaluate("window.saved.at(-1).cell")      # as the kernel receives the click
    push_bare(page, v, DETAIL)
    page.wait_for_selector(f'{GRID} .mv-detail[data-cell="{r},{c}"]')
    items = page.locator(f"{GRID} .mv-detail-next li").all_text_contents()
    assert items[0] == ref.target_str and len(items) == 8
    assert float(page.locator(f"{GRID} .mv-detail-metric").get_attribute("data-value")) == pytest.approx(
        ref.values[r, c], abs=1e-4)
    assert page.locator(f"{GRID} .mv-lens-row").count() == 0 and errors == []
