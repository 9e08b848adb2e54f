"""What every view shares (widgets_js/src/lib/view.js, base_css.js), checked on all five bundles in
a bare page: the shared root class, the shared stylesheet once, one error banner that shows the
``error`` trait (and the view's own decode errors) as text over the last good view, a header that
follows ``title``, and untrusted text that never becomes markup."""

from __future__ import annotations

import numpy as np
import pytest

from mvbrowser import mount_bare, push_bare, summary

pytestmark = pytest.mark.browser

XSS = '<img src=x onerror="window.__pwned=1">'
NAMES = ["attention", "logit-lens", "features", "patch-grid", "prompt"]
MAIN_ARRAY = {"attention": "detail", "logit-lens": "top_probs", "features": "acts", "patch-grid": "values"}


def make_view(name):
    """A view of kind ``name`` showing small data whose token texts include markup."""
    tokens = [XSS, " <b>cat</b>", "\n"]
    if name == "attention":
        from mechviz.widgets.attention import AttentionView

        v = AttentionView()
        v.show(np.tril(np.full((1, 2, 3, 3), 0.5)), tokens, prompt=XSS)
    elif name == "logit-lens":
        from mechviz.analysis.logit_lens import LogitLens
        from mechviz.widgets.logit_lens import LogitLensView

        ids = np.zeros((2, 3, 2), int)
        v = LogitLensView()
        v.show(LogitLens(rows=["resid_pre.0", "resid_post.0"], token_strs=tokens, top_ids=ids,
                         top_probs=np.full((2, 3, 2), 0.4, np.float32), entropy=np.ones((2, 3), np.float32),
                         top_strs=np.full((2, 3, 2), XSS, object), target=None, target_prob=None,
                         target_rank=None), prompt=XSS)
    elif name == "features":
        from mechviz.widgets.features import FeatureView

        strs = np.full((2, 2, 2), XSS, object)
        v = FeatureView()
        v.show(summary(tokens, [5, 9], np.ones((3, 2), np.float32), np.zeros((2, 2, 2), int), strs,
                       np.ones((2, 2, 2)), np.full((2, 2), XSS, object), np.full((2, 2), 0.5), sae_label=XSS),
               prompt=XSS)
    elif name == "patch-grid":
        from mechviz.analysis.patching import PatchGrid
        from mechviz.widgets.patching import PatchGridView

        v = PatchGridView()
        v.show_grid(PatchGrid(values=np.ones((2, 3)), site="resid_pre", by="position", direction="denoise",
                              layers=[0, 1], tokens=tokens, heads=[], clean_metric=2.0, corrupted_metric=0.0),
                    status="done")
    else:
        from mechviz.widgets.prompt import PromptBox

        v = PromptBox(value=XSS)
    return v


def _no_markup(page, root):
    page.wait_for_timeout(50)   # an injected <img onerror> would have fired by now
    assert page.locator(f"{root} img, {root} b, {root} script").count() == 0
    assert page.evaluate("window.__pwned") is None


@pytest.mark.parametrize("name", NAMES)
def test_every_view_has_the_scaffold_and_one_error_banner(page, name):
    v = make_view(name)
    mount_bare(page, v)
    root = f".mechviz.mechviz-{name}"
    page.locator(root).wait_for()
    assert page.locator(".mechviz").count() == 1 and page.locator(root).count() == 1
    # the shared stylesheet once, then the view's own; it applies (12px is set only there)
    assert page.locator(f"{root} > style").evaluate_all("els => els.map(e => e.dataset.mvCss)") == ["base", name]
    assert page.locator(root).evaluate("e => getComputedStyle(e).fontSize") == "12px"
    own = page.locator(f'{root} > style[data-mv-css="{name}"]').text_content()
    for shared in ("--jp-ui-font-family", ".mv-error", ".mv-header", ".mv-title", ".mv-dim{", ".mv-token{"):
        assert shared not in own, f"{name}'s own CSS repeats the shared rule {shared!r}"
    # exactly one error banner, hidden while there is no error
    banner = page.locator(f"{root} .mv-error")
    assert banner.count() == 1 and banner.get_attribute("role") == "alert"
    assert not banner.is_visible()
    _no_markup(page, root)

    # the kernel's error, as text, over the last good view
    v.error = XSS
    push_bare(page, v, ["error"])
    page.wait_for_selector(f"{root} .mv-error:visible")
    assert banner.text_content() == XSS
    assert page.locator(f"{root} .mv-error").count() == 1
    _no_markup(page, root)
    if name != "prompt":
        assert page.locator(f"{root} canvas").evaluate_all("cs => cs.some(c => c.width > 1)")

    # an array the view cannot decode: its own message joins the kernel's, the last good view stays
    if name in MAIN_ARRAY:
        page.evaluate("(n) => model.set(n, {dtype: 'float64', shape: [1], scale: 1, data: new DataView(new ArrayBuffer(8))})",
                      MAIN_ARRAY[name])
        page.wait_for_function("(sel) => document.querySelector(sel).textContent.includes('float64')", arg=f"{root} .mv-error")
        assert banner.text_content() == f"{XSS}\nmechviz: unsupported dtype float64"
        assert page.locator(f"{root} canvas").evaluate_all("cs => cs.some(c => c.width > 1)")
        push_bare(page, v, [MAIN_ARRAY[name]])      # good data again: only the kernel's error is left
        page.wait_for_function("(sel) => !document.querySelector(sel).textContent.includes('float64')", arg=f"{root} .mv-error")
        assert banner.text_content() == XSS
    v.error = ""
    push_bare(page, v, ["error"])
    page.wait_for_selector(f"{root} .mv-error", state="hidden")
    assert banner.text_content() == ""

    # the header follows the title trait (text only)
    if name != "prompt":
        v.title = "<b>mine</b>"
        push_bare(page, v, ["title"])
        page.wait_for_function("(sel) => document.querySelector(sel).textContent === '<b>mine</b>'", arg=f"{root} .mv-title")
        assert page.locator(f"{root} .mv-header").count() == 1
        _no_markup(page, root)
        # and shows what computed the data (model · numerics · dtype · device), as text
        info = page.locator(f"{root} .mv-model-info")
        assert info.count() == 1 and not info.is_visible()   # nothing to say yet
        v.model_info = f"{XSS} · HF raw weights · bfloat16 · cuda:0"
        push_bare(page, v, ["model_info"])
        page.wait_for_selector(f"{root} .mv-model-info:visible")
        assert info.text_content() == v.model_info
        _no_markup(page, root)
    assert page.mv_errors == []
