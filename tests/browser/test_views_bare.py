"""Fast checks of the built ES modules in a bare page (no Jupyter): the state comes from the real
Python widget classes (their own serialisation, binary buffers as DataViews), the model object is a
tiny stand-in for anywidget's (get/set/on/off/save_changes over a Map)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from mvbrowser import canvas_stats, cell_pixel, hover_cell
from mvbrowser import mount_bare as mount

pytestmark = pytest.mark.browser


def patterns(n_layers=2, n_heads=3, T=6, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random((n_layers, n_heads, T, T)) ** 4
    a = np.tril(a) + np.eye(T) * 1e-3
    return a / a.sum(-1, keepdims=True)


def test_attention_view_draws_hover_select_and_escapes(page, artifacts):
    from mechviz.widgets.attention import AttentionView

    tokens = ["<img src=x onerror=\"window.__pwned=1\">", " the", " cat", "\n", " <b>hi</b>", " cat"]
    pat = patterns(T=len(tokens))
    v = AttentionView()
    v.show(pat, tokens, prompt="a <script>prompt</script>")
    v.layer, v.head = 1, 2
    mount(page, v)
    root = page.locator(".mechviz-attention")
    root.wait_for()
    assert root.get_attribute("data-prompt") == "a <script>prompt</script>"
    assert root.get_attribute("data-ntokens") == str(len(tokens))
    assert (root.get_attribute("data-layer"), root.get_attribute("data-head")) == ("1", "2")
    # untrusted strings stay text
    assert page.locator(".mv-token").all_text_contents() == tokens
    assert page.locator(".mechviz-attention img, .mechviz-attention b, .mechviz-attention script").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert "<script>prompt</script>" in page.locator(".mv-prompt").text_content()
    assert page.locator("canvas.mv-thumb").count() == 3
    # hover = decoded value of [layer 1, head 2, dst i, src j] (uint8 quantised, so within 1/255)
    for i, j in [(0, 0), (3, 1), (5, 5), (5, 2), (2, 4)]:
        r = hover_cell(page, i, j)
        assert abs(r["value"] - pat[1, 2, i, j]) < 0.006, (i, j, r, pat[1, 2, i, j])
        assert r["text"].startswith(f"L1 H2 · dst {i} ")
    # colour: the largest value is darker than a zero (future, masked) cell; zero is white
    i, j = np.unravel_index(np.argmax(np.tril(pat[1, 2], -1)), pat[1, 2].shape)
    hi, zero = cell_pixel(page, i, j), cell_pixel(page, 0, 5)
    assert zero[:3] == [255, 255, 255] and sum(hi[:3]) < sum(zero[:3]) - 100, (hi, zero)
    # layer change through the model redraws (different pixels)
    before = canvas_stats(page, "canvas.mv-zoom")
    page.select_option("select.mv-layer", "0")
    page.wait_for_selector('.mechviz-attention[data-layer="0"]')
    assert page.evaluate("window.saved.at(-1).layer") == 0
    after = canvas_stats(page, "canvas.mv-zoom")
    assert after["hash"] != before["hash"] and after["ink"] > 0
    # head thumbnail click
    page.click('.mv-thumbbox[data-head="1"]')
    page.wait_for_selector('.mechviz-attention[data-head="1"]')
    # token click: save_changes(token) and shading = attention from token 4 in layer 0 head 1
    page.click('.mv-token[data-index="4"]')
    page.wait_for_selector('.mechviz-attention[data-token="4"]')
    assert page.evaluate("window.saved.at(-1).token") == 4
    shades = [page.locator(f'.mv-token[data-index="{j}"]').get_attribute("data-attn") for j in range(6)]
    assert [float(s) for s in shades] == pytest.approx(pat[0, 1, 4], abs=0.006)
    assert page.locator('.mv-token[data-index="5"]').evaluate("e => getComputedStyle(e).backgroundColor") \
        == "rgb(255, 255, 255)"
    # error banner over the last good view
    page.evaluate("model.set('error', 'boom: <i>x</i>')")
    page.wait_for_selector(".mechviz-attention .mv-error:visible")
    assert page.locator(".mv-error").text_content() == "boom: <i>x</i>"
    assert canvas_stats(page, "canvas.mv-zoom")["ink"] > 0
    page.screenshot(path=str(artifacts / "bare_attention.png"), full_page=True)
    assert page.mv_errors == []


def test_float16_and_misaligned_decode(page):
    """float16 payloads decode through the LUT, also from a misaligned DataView."""
    from mechviz.widgets.attention import AttentionView
    from mechviz.widgets.transport import pack

    pat = patterns(1, 1, 5, seed=3)
    v = AttentionView()
    v.show(pat, list("abcde"), prompt="abcde")
    mount(page, v)
    page.wait_for_selector(".mechviz-attention[data-ntokens='5']")
    p16 = pack(pat * 0.5, "float16")
    page.evaluate("""(b64) => {
        const bin = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const ab = new ArrayBuffer(bin.length + 1); new Uint8Array(ab, 1).set(bin);   // offset 1: misaligned
        model.set('detail', {dtype: 'float16', shape: [1, 5, 5], scale: 1, data: new DataView(ab, 1)});
    }""", base64.b64encode(p16["data"]).decode())
    r = hover_cell(page, 3, 1)
    assert r["value"] == pytest.approx(pat[0, 0, 3, 1] * 0.5, abs=2e-3)


def test_prompt_box_debounces_and_keeps_typing(page):
    from mechviz.widgets.prompt import PromptBox

    box = PromptBox(value="start", debounce_ms=200)
    mount(page, box)
    ta = page.locator("textarea.mv-prompt-input")
    assert ta.input_value() == "start"
    ta.fill("")
    ta.press_sequentially("hello world", delay=20)
    page.wait_for_timeout(50)
    assert page.evaluate("window.saved.length") == 0          # still debouncing
    page.wait_for_function("window.saved.length > 0")
    assert page.evaluate("window.saved.at(-1).value") == "hello world"
    assert page.evaluate("window.saved.length") == 1           # one sync for the whole burst
    # the kernel reports progress; a kernel-side value change does not clobber a focused textarea
    page.evaluate("model.set('status', 'running')")
    assert page.locator(".mv-status").text_content() == "computing…"
    page.evaluate("() => { model.set('status', 'idle'); model.set('shown', 'hello world'); model.set('n_tokens', 2); }")
    assert page.locator(".mv-status").text_content() == "showing: hello world (2 tokens)"
    page.evaluate("model.set('value', 'from kernel')")
    assert ta.input_value() == "hello world"
    page.evaluate("model.set('error', 'empty prompt')")
    assert page.locator(".mechviz-prompt .mv-error").is_visible()
    assert page.locator(".mechviz-prompt .mv-error").text_content() == "empty prompt"
    assert page.mv_errors == []


def _orange_pixels(page, selector):
    return page.evaluate("""(sel) => { const c = document.querySelector(sel);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] < 140 && d[i + 2] < 80) n++;
        return n; }""", selector)


def test_attention_view_marks_sliding_windows_and_kv_groups(page, artifacts):
    """A sliding-window layer's window edge is drawn on the zoomed head (not on a full-attention
    layer), the layer picker names the window, and thumbnails are grouped by shared key/value head."""
    from mechviz.widgets.attention import AttentionView

    T, w = 8, 3
    pat = patterns(2, 4, T, seed=5)
    band = np.tril(np.ones((T, T))) * np.triu(np.ones((T, T)), -(w - 1))   # src in (dst - w, dst]
    pat[0] = pat[0] * band
    pat[0] /= pat[0].sum(-1, keepdims=True)
    v = AttentionView()
    v.show(pat, [f"t{i}" for i in range(T)], prompt="p", windows=[w, 0], kv_heads=2)
    mount(page, v)
    root = page.locator(".mechviz-attention")
    root.wait_for()
    zoom = page.locator("canvas.mv-zoom")
    assert zoom.get_attribute("data-window") == str(w)
    assert _orange_pixels(page, "canvas.mv-zoom") > 10 * T          # the window's edge, row by row
    assert page.locator("select.mv-layer option").all_text_contents() == [f"0 · window {w}", "1"]
    assert "2 key/value heads (2 query heads each)" in root.text_content()
    assert "sliding window 3" in root.text_content()
    boxes = page.locator(".mv-thumbbox")
    assert boxes.evaluate_all("bs => bs.map(b => b.dataset.kv)") == ["0", "0", "1", "1"]
    assert page.locator(".mv-thumbbox.mv-group-start").count() == 1
    assert page.locator(".mv-thumbbox .mv-kv").all_text_contents() == ["kv 0", "kv 0", "kv 1", "kv 1"]
    page.locator(".mechviz-attention").screenshot(path=str(artifacts / "bare_attention_window_gqa.png"))
    page.select_option("select.mv-layer", "1")
    page.wait_for_selector('.mechviz-attention[data-layer="1"]')
    assert zoom.get_attribute("data-window") == "0" and _orange_pixels(page, "canvas.mv-zoom") == 0
    assert "sliding window" not in root.text_content()
