"""Compare mode's difference views in a bare page, from the real widgets' state: a signed attention
difference reads back A - B and is drawn blue (negative) to red (positive) with white at 0; a DLA
difference reads back A's numbers minus B's."""

from __future__ import annotations

import numpy as np
import pytest

from mvbrowser import cell_pixel, hover_cell, hover_grid
from mvbrowser import mount_bare as mount

pytestmark = pytest.mark.browser

A = "The cat sat on the mat. The cat"
B = "The dog sat on the rug. The dog"


@pytest.fixture(scope="module")
def compare():
    import mechviz

    lab = mechviz.Lab.default(prompt=A)
    return mechviz.Compare(lab, B)


def test_attention_difference_drawn_signed(page, compare):
    import mechviz

    d = compare.difference(mechviz.AttentionView)
    d.layer, d.head = 1, 0
    diff = d.data["pattern"][1, 0]
    mount(page, d)
    root = page.locator(".mechviz-attention")
    root.wait_for()
    assert root.get_attribute("data-signed") == "true"
    # coloured on -m..+m, m the layer's largest |difference| (as bytes: 128 + round(127 v))
    m = max(1, round(127 * float(np.abs(d.data["pattern"][1]).max()))) / 127
    assert page.locator(".mechviz-attention .mv-legend-lo").text_content() == f"-{m:.2f}"
    assert page.locator(".mechviz-attention .mv-legend-hi").text_content() == f"+{m:.2f}"
    lo, hi = np.unravel_index(np.argmin(diff), diff.shape), np.unravel_index(np.argmax(diff), diff.shape)
    assert diff[lo] < -0.05 and diff[hi] > 0.05
    for i, j in [lo, hi, (0, 0), (len(diff) - 1, 2)]:
        r = hover_cell(page, int(i), int(j))
        assert r["value"] == pytest.approx(diff[i, j], abs=0.5 / 127 + 5e-4), (i, j, r)
    r, _, b, _ = cell_pixel(page, *lo)
    assert b > r + 40                                   # negative: blue
    r, _, b, _ = cell_pixel(page, *hi)
    assert r > b + 40                                   # positive: red
    zero = cell_pixel(page, 0, len(diff) - 1)           # a future (masked) cell: 0 - 0, white
    assert min(zero[:3]) >= 250, zero
    assert hover_cell(page, 0, len(diff) - 1)["value"] == 0.0
    # the destination token's row shades the token strip with the same signed scale
    page.click(f'.mv-token[data-index="{int(lo[0])}"]')
    page.wait_for_selector(f'.mechviz-attention[data-token="{int(lo[0])}"]')
    span = page.locator(f'.mv-token[data-index="{int(lo[1])}"]')
    assert float(span.get_attribute("data-attn")) == pytest.approx(diff[lo], abs=0.5 / 127 + 5e-4)


def test_dla_difference_reads_back_a_minus_b(page, compare):
    import mechviz

    g = compare.difference(mechviz.HeadGridView, answer=" the", wrong=" a")
    ra, rb = g.result.a, g.result.b
    mount(page, g)
    page.locator(".mechviz-head-grid").wait_for()
    for layer, head in [(0, 0), (2, 0), (3, 3)]:
        info = hover_grid(page, ".mechviz-head-grid", "canvas.mv-grid", layer, head)
        assert float(info["value"]) == pytest.approx(ra.heads[layer, head] - rb.heads[layer, head], abs=1e-4)
    assert page.locator(".mv-term").all_text_contents()[-1] == f"total {ra.total - rb.total:.4f}"
