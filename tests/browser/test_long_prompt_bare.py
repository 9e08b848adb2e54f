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
