"""SteeringView in a bare page, rendered from the Python widget's own state: both columns show the generated
tokens as text (a hostile token string included), hover reads each token's probability and alternatives,
the sweep plot draws its points, the add-feature control writes ONE request, the Neuronpedia link is right."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mvbrowser import mount_bare as mount

pytestmark = pytest.mark.browser
ROOT = ".mechviz-generation"
HOSTILE = "<img src=x onerror=\"window.__pwned=1\">"


def _result():
    import mechviz
    from mechviz.widgets.generation import steered_text

    lab = mechviz.Lab.default()
    sae = replace(lab.sae, neuronpedia_id="gpt2-small/0-res-jb")
    r = steered_text(lab.model, sae, "The cat sat on the mat. The cat", [(67, 10.0, "clamp"), (71, 3.0, "scale")],
                     n=6, selected=0)
    r.base.strs[2] = HOSTILE            # untrusted token strings
    r.steered.top_strs[0][1] = HOSTILE
    return r


def _sent(page):
    return page.evaluate("window.setlog.slice()")


def test_columns_hover_sweep_link_and_requests(page):
    from mechviz.widgets.generation import SteeringView

    r = _result()
    v = SteeringView()
    v.show(r, prompt="a <b>prompt</b>")
    mount(page, v)
    page.locator(ROOT).wait_for()
    base = page.locator(f"{ROOT} .mv-gen-base .mv-token").all_text_contents()
    steered = page.locator(f"{ROOT} .mv-gen-steered .mv-token").all_text_contents()
    assert base == r.base.strs and steered == r.steered.strs
    assert base[2] == HOSTILE and base != steered
    assert page.locator(f"{ROOT} .mv-prompt-tokens .mv-token").all_text_contents() == r.base.prompt_strs
    assert page.locator(f"{ROOT} img, {ROOT} b").count() == 0
    # hover: the chosen token's probability and the top-k alternatives with theirs
    for col, g in (("base", r.base), ("steered", r.steered)):
        for i in (0, 3):
            page.locator(f"{ROOT} .mv-gen-{col} .mv-token").nth(i).hover()
            page.wait_for_function("([c, i]) => { const d = document.querySelector('.mechviz-generation .mv-info').dataset;"
                                   " return d.column === c && d.step === String(i); }", arg=[col, i])
            info = page.locator(f"{ROOT} .mv-info")
            assert float(info.get_attribute("data-prob")) == pytest.approx(float(g.probs[i]), abs=1e-4)
            text = info.text_content()
            assert f"p={g.probs[i]:.4f}" in text and f"{g.top_probs[i, 1]:.3f}" in text
    page.locator(f"{ROOT} .mv-gen-steered .mv-token").nth(0).hover()
    page.wait_for_function("() => document.querySelector('.mechviz-generation .mv-info').dataset.column === 'steered'"
                           " && document.querySelector('.mechviz-generation .mv-info').dataset.step === '0'")
    assert "\"<img src=x onerro" in page.locator(f"{ROOT} .mv-info").text_content()   # an alternative, as text
    assert page.evaluate("window.__pwned") is None
    # chips are shaded by probability: a likelier token is darker
    bg = page.locator(f"{ROOT} .mv-gen-base .mv-token").evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    lum = [sum(int(x) for x in c[c.index("(") + 1:c.index(")")].split(",")[:3]) for c in bg]
    hi, lo = int(r.base.probs.argmax()), int(r.base.probs.argmin())
    assert r.base.probs[hi] - r.base.probs[lo] > 0.2 and lum[hi] < lum[lo] - 60
    # the sweep: one point per value, at the metric, the current value marked
    plot = page.locator(f"{ROOT} svg.mv-sweep")
    assert plot.get_attribute("data-points") == str(len(r.sweep.values)) and plot.get_attribute("data-feature") == "67"
    metrics = page.locator(f"{ROOT} svg.mv-sweep circle.mv-point").evaluate_all("els => els.map(e => +e.dataset.metric)")
    assert metrics == pytest.approx(r.sweep.metric.tolist(), abs=1e-5)
    tips = page.locator(f"{ROOT} svg.mv-sweep circle.mv-point title").all_text_contents()
    assert [t.split(" · next ")[1] for t in tips] == [json.dumps(x, ensure_ascii=False) for x in r.sweep.top_strs]
    assert float(page.locator(f"{ROOT} svg.mv-sweep line.mv-current").get_attribute("data-value")) == 10.0
    assert len(page.locator(f"{ROOT} svg.mv-sweep polyline.mv-line").get_attribute("points").split()) == len(r.sweep.values)
    # the Neuronpedia link of the selected feature: a plain link, new tab, no opener
    link = page.locator(f"{ROOT} a.mv-neuronpedia")
    assert link.get_attribute("href") == "https://www.neuronpedia.org/gpt2-small/0-res-jb/67"
    assert link.get_attribute("target") == "_blank" and "noopener" in link.get_attribute("rel")
    # the spec rows show what is steered, the selected one marked
    rows = page.locator(f"{ROOT} tr.mv-spec")
    assert rows.count() == 2 and rows.nth(0).get_attribute("class").endswith("mv-selected")
    assert page.locator(f"{ROOT} .mv-subtitle").text_content() == "steering: feature 67 clamped to 10; feature 71 scaled by 3"
    # add a feature: ONE trait (request) in ONE save, the whole settings in it
    page.evaluate("window.setlog.length = 0")
    page.fill(f"{ROOT} input.mv-add-feature", "5")
    page.fill(f"{ROOT} input.mv-add-value", "2.5")
    page.select_option(f"{ROOT} select.mv-add-mode", "scale")
    page.click(f"{ROOT} button.mv-add")
    assert _sent(page) == ["request", "|save"]
    assert page.evaluate("window.saved.at(-1).request") == {
        "specs": [{"feature": 67, "value": 10.0, "mode": "clamp"}, {"feature": 71, "value": 3.0, "mode": "scale"},
                  {"feature": 5, "value": 2.5, "mode": "scale"}], "positions": "all", "n": 6, "selected": 2, "id": 1}
    # a bad feature id: refused here, nothing sent
    page.fill(f"{ROOT} input.mv-add-feature", "x")
    page.click(f"{ROOT} button.mv-add")
    assert _sent(page) == ["request", "|save"]
    assert "feature id" in page.locator(f"{ROOT} .mv-steer-msg").text_content()
    # remove the first feature; sweep the second; positions
    rows.nth(0).locator("button.mv-remove").click()
    req = page.evaluate("window.saved.at(-1).request")
    assert req["specs"] == [{"feature": 71, "value": 3.0, "mode": "scale"}] and req["id"] == 2
    rows.nth(1).locator("button.mv-sweep-this").click()
    assert page.evaluate("[window.saved.at(-1).request.selected, window.saved.at(-1).request.id]") == [1, 3]
    page.select_option(f"{ROOT} select.mv-positions", "prompt")
    assert page.evaluate("window.saved.at(-1).request.positions") == "prompt"
    assert "<b>prompt</b>" in page.locator(".mv-prompt").text_content()
    assert page.mv_errors == []


def test_no_features_and_busy(page):
    import mechviz
    from mechviz.widgets.generation import SteeringView, steered_text

    lab = mechviz.Lab.default()
    r = steered_text(lab.model, lab.sae, "Hello", [], n=3)
    v = SteeringView()
    v.show(r, prompt="Hello")
    v.busy, v.progress = True, "generating 2/6"
    mount(page, v)
    page.locator(ROOT).wait_for()
    assert page.locator(f"{ROOT} .mv-gen-base .mv-token").all_text_contents() == r.base.strs
    assert page.locator(f"{ROOT} .mv-gen-steered .mv-token").count() == 0
    assert page.locator(f"{ROOT} svg.mv-sweep").get_attribute("data-points") == "0"
    assert page.locator(f"{ROOT} a.mv-neuronpedia").get_attribute("href") is None    # no Neuronpedia id
    assert page.locator(f"{ROOT} .mv-progress").text_content() == "generating 2/6"
    assert page.locator(ROOT).get_attribute("data-busy") == "true"
    assert "mv-busy" in page.locator(ROOT).get_attribute("class")   # the columns shown are dimmed until the new ones
    assert float(page.locator(f"{ROOT} .mv-cols").evaluate("e => getComputedStyle(e).opacity")) == 0.5
    assert page.mv_errors == []
