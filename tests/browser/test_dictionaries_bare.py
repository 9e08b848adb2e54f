"""The feature view's dictionary menu in a bare page, from a real Lab with two dictionaries: it lists the
Lab's dictionaries, shows the selected one, and a choice writes (dictionary, feature=-1) in one save."""

from __future__ import annotations

import pytest
import torch

from mvbrowser import mount_bare

pytestmark = pytest.mark.browser
FEAT = ".mechviz-features"


def test_dictionary_menu_switches_and_clears_the_feature(page):
    import mechviz
    from mechviz.saes import SAE

    lab = mechviz.Lab.default(prompt="The cat sat on the mat. The cat")
    lab._loop = None   # built inside Playwright's loop: compute here, as a script does
    W = torch.randn(128, 64, generator=torch.Generator().manual_seed(0)) / 8
    lab.add_sae(SAE(W_enc=W, b_enc=torch.zeros(64), W_dec=W.T.clone(), b_dec=torch.zeros(128), site="resid_post.3"),
                name="layer 3 <b>sae</b>")
    lab.selection.dictionary = "resid_post.1"
    view = lab.features()
    view.feature = int(view.result.features[0])
    mount_bare(page, view)
    page.locator(FEAT).wait_for()
    menu = page.locator(f"{FEAT} select.mv-dictionary")
    assert menu.is_visible() and menu.input_value() == "resid_post.1"
    assert menu.locator("option").all_text_contents() == ["resid_post.1", "layer 3 <b>sae</b>"]   # text, not HTML
    assert page.locator(f"{FEAT} b").count() == 0
    assert page.locator(FEAT).get_attribute("data-dictionary") == "resid_post.1"
    page.evaluate("window.setlog.length = 0")
    menu.select_option("layer 3 <b>sae</b>")
    assert page.evaluate("window.setlog") == ["dictionary", "feature", "|save"]
    assert page.evaluate("[window.saved.at(-1).dictionary, window.saved.at(-1).feature]") == ["layer 3 <b>sae</b>", -1]
