"""2,048-token prompts in a real browser: the attention view draws its selected head at full resolution
on a bounded canvas with readable (thinned) labels, shows other layers at overview resolution until
their detail arrives, and the logit lens stays within what a canvas can draw."""

from __future__ import annotations

import numpy as np
import pytest

from mvbrowser import mount_bare as mount, push_bare

pytestmark = pytest.mark.browser

T = 2048


def test_attention_at_2048_tokens(page, artifacts):
    from mechviz.widgets.attention import AttentionView

    rng = np.random.default_rng(0)
    pattern = rng.random((2, 3, T, T), dtype=np.float32)  # 3 heads x 4 MB: more than the 8 MB detail budget
    v = AttentionView(layer=0, head=1)
    v.show(pattern, [f" w{i}" for i in range(T)], prompt="long")
    assert v.detail_heads == [1]
    page.set_viewport_size({"width": 1400, "height": 1500})  # the whole 1,024 px head on screen
    mount(page, v)
    root = ".mechviz-attention"
    page.wait_for_selector(f"{root}[data-ntokens='{T}']")
    zoom = page.locator(f"{root} canvas.mv-zoom")
    assert zoom.get_attribute("data-resolution") == "full"
    assert page.evaluate("() => document.querySelector('canvas.mv-zoom').width") <= 1024
    assert int(page.locator(root).get_attribute("data-label-px")) >= 11
    assert page.locator(f"{root} .mv-lowres").is_hidden()
    # another layer: overview resolution (and a note saying so) until the kernel sends its detail
    page.evaluate("() => { model.set('layer', 1); model.save_changes(); }")
    page.wait_for_selector(f"{root}[data-layer='1']")
    assert zoom.get_attribute("data-resolution") == "overview"
    assert "overview's 64×64 resolution" in page.locator(f"{root} .mv-lowres").text_content()
    v.layer = 1                                       # the kernel's answer (set from Python: at once)
    push_bare(page, v, ["detail", "detail_layer", "detail_heads"])
    page.wait_for_function("() => document.querySelector('canvas.mv-zoom').dataset.resolution === 'full'")
    page.screenshot(path=str(artifacts / "attention_2048.png"))


def test_logit_lens_at_2048_tokens(page):
    from mechviz.analysis.logit_lens import LogitLens
    from mechviz.widgets.logit_lens import LogitLensView

    R, k = 13, 5
    rng = np.random.default_rng(1)
    probs = np.sort(rng.dirichlet(np.ones(50), size=(R, T))[..., :k], axis=-1)[..., ::-1].astype(np.float32)
    ids = rng.integers(0, 100, size=(R, T, k))
    lens = LogitLens(rows=[f"r{i}" for i in range(R)], token_strs=[f" w{i}" for i in range(T)], top_ids=ids,
                     top_probs=probs, entropy=rng.random((R, T), dtype=np.float32),
                     top_strs=np.array([f"s{i}" for i in range(100)])[ids])
    v = LogitLensView()
    v.show(lens, prompt="long")
    mount(page, v)
    root = ".mechviz-logit-lens"
    page.wait_for_selector(f"{root}[data-ntokens='{T}']")
    width = page.evaluate("() => document.querySelector('.mechviz-logit-lens canvas.mv-grid').width")
    assert 0 < width <= 16000 * 3  # within what browsers draw (device pixel ratio at most 3)
    assert page.locator(root).get_attribute("data-pending") == "0"


def _zoom_pixel(page, x: int, y: int) -> list[int]:
    return page.evaluate("""([x, y]) => Array.from(document.querySelector('.mechviz-attention canvas.mv-zoom')
        .getContext('2d').getImageData(x, y, 1, 1).data)""", [x, y])


def test_attention_zoom_keeps_a_single_weight_at_2048_tokens(page):
    """A 2,048-token head on a 1,024 px canvas: each pixel shows the max of the 2 x 2 cells it covers,
    so one sharp weight stays visible wherever it is (nearest sampling drops the cells it skips)."""
    from mechviz.widgets.attention import AttentionView

    spikes = [(1235, 777), (400, 200), (1601, 1000), (6, 2041)]  # odd/odd, even/even, odd/even, even/odd
    pattern = np.zeros((1, 2, T, T), np.float32)     # 2 heads x 4 MB: the whole layer is sent
    for i, j in spikes:
        pattern[0, 0, i, j] = 1.0
    pattern[0, 1, 3, 1] = 1.0
    v = AttentionView()
    v.show(pattern, [f" w{i}" for i in range(T)], prompt="spikes")
    page.set_viewport_size({"width": 1400, "height": 1500})
    mount(page, v)
    root = ".mechviz-attention"
    page.wait_for_selector(f"{root}[data-ntokens='{T}']")
    zoom = page.locator(f"{root} canvas.mv-zoom")
    assert page.evaluate("() => document.querySelector('canvas.mv-zoom').width") == 1024
    for i, j in spikes:
        r, g, b, a = _zoom_pixel(page, j // 2, i // 2)
        assert a == 255 and r < 60 and b > 80, ((i, j), (r, g, b, a))    # the darkest blue of the colour map
        for dx, dy in ((1, 0), (0, 1), (-1, 0), (0, -1)):                # its neighbours stay white
            assert _zoom_pixel(page, j // 2 + dx, i // 2 + dy)[:3] == [255, 255, 255], ((i, j), (dx, dy))
    assert zoom.get_attribute("data-pooled") == "2"
    # pooled once per head: a redraw (another selected token) reuses it
    assert zoom.get_attribute("data-pools") == "1"
    page.evaluate("() => { model.set('token', 5); }")
    page.wait_for_selector(f"{root}[data-token='5']")
    assert zoom.get_attribute("data-pools") == "1"
    page.evaluate("() => { model.set('head', 1); }")                    # another head: pooled once more
    page.wait_for_selector(f"{root}[data-head='1']")
    assert zoom.get_attribute("data-pools") == "2"
    assert _zoom_pixel(page, 0, 1)[0] < 60 and _zoom_pixel(page, 388, 617)[:3] == [255, 255, 255]
    page.evaluate("() => { model.set('head', 0); }")                    # and back: the kept one
    page.wait_for_selector(f"{root}[data-head='0']")
    assert zoom.get_attribute("data-pools") == "2"
    assert _zoom_pixel(page, 388, 617)[0] < 60
    assert page.mv_errors == []


HOVER_PIXELS = [(0, 0), (1023, 1023), (388, 617), (511, 100), (17, 900), (1000, 3), (640, 641)]  # (x, y)


def test_attention_hover_at_2048_tokens(page):
    """Hovering the zoomed head of a 2,048-token prompt names the destination and source tokens and
    the weight of the cell the pixel shows (the largest of the 2 x 2 it covers), from the page's data."""
    from mechviz.widgets.attention import AttentionView

    rng = np.random.default_rng(3)
    q = rng.integers(0, 256, size=(1, 1, T, T)).astype(np.float32)
    q[0, 0, 1234, 776] = 255           # a spike in the block the hover at (388, 617) covers
    pattern = q / 255                  # exact bytes: what the page holds is known here
    tokens = [f" w{i}" for i in range(T)]
    v = AttentionView()
    v.show(pattern, tokens, prompt="hover")
    page.set_viewport_size({"width": 1400, "height": 1500})
    mount(page, v)
    root = ".mechviz-attention"
    page.wait_for_selector(f"{root}[data-ntokens='{T}']")
    info = page.locator(f"{root} .mv-info").element_handle()
    for x, y in HOVER_PIXELS:
        block = q[0, 0, 2 * y:2 * y + 2, 2 * x:2 * x + 2]
        di, dj = np.unravel_index(int(np.argmax(block)), block.shape)  # first largest, row-major (as the view)
        i, j = 2 * y + int(di), 2 * x + int(dj)
        page.evaluate("""([x, y]) => { const c = document.querySelector('.mechviz-attention canvas.mv-zoom');
            const r = c.getBoundingClientRect();   // Chromium rounds a mouse event's client x/y to integers
            c.dispatchEvent(new MouseEvent('mousemove', {bubbles: true,
              clientX: Math.ceil(r.left + x * r.width / c.width), clientY: Math.ceil(r.top + y * r.height / c.height)})); }""",
                      [x, y])
        page.wait_for_function("([el, i, j]) => el.dataset.dst === String(i) && el.dataset.src === String(j)",
                               arg=[info, i, j], timeout=5000)
        text = info.text_content()
        assert info.get_attribute("data-value") == f"{block.max() / 255:.3f}", (x, y)
        assert f'dst {i} " w{i}"' in text and f'src {j} " w{j}"' in text and f"{block.max() / 255:.3f}" in text, text
    assert (i, j) != (0, 0)
    assert page.mv_errors == []
