"""DashboardView in a bare page, from a real Lab's state: the selected feature's stats, contexts (token
text, centre marked, shading by activation), promoted tokens and histograms; switching among the features
in the payload needs no kernel; search results select a feature; untrusted strings stay text."""

from __future__ import annotations

import numpy as np
import pytest

from mvbrowser import mount_bare, push_bare

pytestmark = pytest.mark.browser
ROOT = ".mechviz-dashboard"


def test_dashboard_renders_switches_and_searches(page):
    import mechviz

    lab = mechviz.Lab.default(prompt="The cat sat on the mat. The cat")
    lab._loop = None   # built inside Playwright's loop: compute here, as a script does
    view = lab.add(mechviz.DashboardView())
    dash = view.result
    f0, f1 = (int(f) for f in view.features[:2])
    view.feature = f0
    hostile = "<img src=x onerror=\"window.__pwned=1\">"
    ids = [int(t) for t in view.ctx_tokens[0, 0] if t >= 0]
    strings = list(view.strings)
    strings[ids[-1]] = hostile          # the first context's last token string, made hostile
    view.strings = strings
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    mount_bare(page, view)
    page.wait_for_selector(f'{ROOT}[data-shown="{f0}"]')
    fd = dash.feature(f0)
    stats = page.locator(f"{ROOT} .mv-stats")
    assert float(stats.get_attribute("data-max")) == pytest.approx(fd.max_act, abs=1e-4)
    assert f"density {fd.density * 100:.3f}%" in stats.text_content()
    lines = page.locator(f"{ROOT} .mv-ctx")
    assert lines.count() == sum(len(c) for c in [fd.top] + fd.intervals)
    first = lines.first.locator(".mv-token")
    want = [s.replace("\n", "↵") for s, t in zip(fd.top.token_strs[0], fd.top.tokens[0]) if t >= 0]
    old = want[-1]
    want = [hostile if w == old else w for w in want]
    assert first.all_text_contents() == want and hostile in want
    centre = lines.first.locator(".mv-centre")
    assert float(centre.get_attribute("data-act")) == pytest.approx(fd.top.acts[0], rel=2e-3)
    assert centre.evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
    assert page.locator(f"{ROOT} .mv-promoted li").all_text_contents() == fd.promoted_strs
    assert page.locator(f"{ROOT} .mv-group").first.text_content() == f"top {len(fd.top)} activations"
    assert int(page.locator(f"{ROOT} canvas.mv-act-hist").get_attribute("data-max")) == int(fd.hist_counts.max())
    assert page.locator(f"{ROOT} a.mv-neuronpedia").is_hidden()
    # another feature the payload holds: drawn from the page's state alone (a static export does this)
    page.evaluate(f"() => {{ window.model.set('feature', {f1}); }}")
    page.wait_for_selector(f'{ROOT}[data-shown="{f1}"]')
    assert float(page.locator(f"{ROOT} .mv-stats").get_attribute("data-max")) == pytest.approx(dash.feature(f1).max_act, abs=1e-4)
    # a feature it lacks says the kernel brings it
    page.evaluate("() => { window.model.set('feature', 100000); }")
    page.wait_for_selector(f'{ROOT}[data-shown=""]')
    assert "comes from the kernel" in page.locator(f"{ROOT} .mv-dash-title").text_content()
    # search: one request; the answer's buttons select their feature
    page.fill(f"{ROOT} input.mv-search-token", " the")
    page.click(f"{ROOT} button.mv-search-go")
    req = page.evaluate("window.saved.at(-1).search_request")
    assert req == {"token": " the", "by": "activation", "id": 1}
    view.search_request = req
    push_bare(page, view, ["search_result", "search_label", "error"])
    hits = page.locator(f"{ROOT} .mv-hit")
    assert hits.count() == len(view.search_result) and hits.first.text_content() == f"#{view.search_result[0][0]}"
    hits.nth(1).click()
    assert page.evaluate("window.saved.at(-1).feature") == view.search_result[1][0]
    assert page.evaluate("window.__pwned") is None and page.locator(f"{ROOT} img").count() == 0
    assert errors == []
