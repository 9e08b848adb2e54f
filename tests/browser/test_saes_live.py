"""The SAE-at-scale views in a real JupyterLab (live kernel) and from the offline static export of the
same notebook: a Lab with one SAE per layer of the bundled model and a transcoder per layer
(``Lab.default(sae="all")``), its feature view (with the dictionary menu), a feature-dashboard view over the
held-out corpus (with its token search) and a steering view (unsteered and steered continuations).

Every check compares what the browser shows (hover read-outs, data-* attributes, token texts) with the
same analysis computed here, in the test process, on the bundled model and its dictionaries. Live: choosing
another dictionary in the menu shows its features (and the kernel's selection follows); a feature row
clicked in the feature view opens its dashboard; a token search returns the corpus search's hits and a hit
click selects that feature everywhere; a steering value edited in the browser regenerates the steered text.
Static: the same numbers with no kernel and no network; the dashboard switches among the features its
payload holds when a feature row is clicked; the steering view shows the saved texts.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from mvbrowser import (hover_grid, kernel_print, kernel_until, need_node_modules, route_offline, titled, wait_notebook,
                       write_cells)

pytestmark = pytest.mark.browser

PROMPT = "The cat sat on the mat. The cat"
N_FEATURES = 12        # lab.features()' default n
N_GEN = 8              # tokens the steering view generates
SEARCH = " the"        # a token the dashboard search looks up (one token; in the held-out corpus)
OTHER = "resid_post.2"           # a dictionary chosen in the browser's menu
TRANSCODER = "mlp_in.1 -> mlp_out.1"




FEAT = titled("mechviz-features", "SAE features")
DASH = titled("mechviz-dashboard", "Feature dashboard")
STEER = titled("mechviz-generation", "Steering: generated text")
# the same roots for document.querySelectorAll (no Playwright pseudo-classes): one view of each kind
FEAT_DOM, STEER_DOM = ".mechviz-features", ".mechviz-generation"


def cells(feature: int, value: float) -> list[str]:
    """The notebook: the Lab and its prompt box with the feature view, the dashboard view (the cell waits
    until its dashboards are computed, so an executed notebook saves finished ones) and the steering view
    steering ``feature`` of the first dictionary to ``value``."""
    return [
        "import asyncio\nimport mechviz",
        f'lab = mechviz.Lab.default(prompt={PROMPT!r}, sae="all")\nfeat = lab.features()\nlab.show(feat)',
        # the dashboards are computed in a worker thread that reports on the kernel's loop: await them
        """dash = lab.add(mechviz.DashboardView())
display(dash)
while dash.status != "ready":
    await asyncio.sleep(0.1)
dash.send_state()""",
        f"""steer = lab.add(mechviz.SteeringView(), n={N_GEN}, specs=[({feature}, {value!r})])
display(steer)
while steer.busy or steer.result is None:
    await asyncio.sleep(0.1)
steer.send_state()""",
    ]


# --- reference values, computed here with the same functions on the same model and dictionaries ------

_REF: dict = {}


def _lab():
    """A Lab in the test process: the bundled model and its eight dictionaries (no views)."""
    if "lab" not in _REF:
        import mechviz

        _REF["lab"] = mechviz.Lab.default(prompt=PROMPT, sae="all")
    return _REF["lab"]


def ref_features(name: str) -> dict:
    """What the feature view shows for dictionary ``name``: its top features' ids, their activations
    ``[T, F]`` (``feature_activations``) and the reconstruction error per token."""
    key = ("features", name)
    if key not in _REF:
        from mechviz.analysis.features import feature_activations, feature_summary, needs, top_features

        lab = _lab()
        sae = lab.saes[name]
        run = lab.model.run(PROMPT, capture=needs(sae))
        acts = feature_activations(sae, run)
        ids = [int(f) for f in top_features(acts, N_FEATURES)]
        summary = feature_summary(sae, lab.model, run, n=N_FEATURES)
        assert [int(f) for f in summary.features] == ids
        _REF[key] = {"ids": ids, "acts": acts[:, ids], "recon": np.asarray(summary.recon_error, np.float32),
                     "all_acts": acts}
    return _REF[key]


def ref_dashboards(name: str):
    """``feature_dashboards`` of dictionary ``name`` over the default (held-out) corpus, as the view does."""
    key = ("dash", name)
    if key not in _REF:
        from mechviz.analysis.dashboards import feature_dashboards

        lab = _lab()
        _REF[key] = feature_dashboards(lab.model, lab.saes[name], None, k=10, progress=False)
    return _REF[key]


def ref_steering() -> dict:
    """A feature of the first dictionary (among the prompt's top ones) and two clamp values whose steered
    continuations differ from the unsteered one and from each other (so both the notebook's and the
    browser's steering show in the text), with ``steered_generation``'s texts for both."""
    if "steer" in _REF:
        return _REF["steer"]
    from mechviz.analysis.generation import steered_generation

    lab = _lab()
    name = list(lab.saes)[0]
    sae = lab.saes[name]
    for f in ref_features(name)["ids"]:
        base, s1 = steered_generation(lab.model, sae, PROMPT, [(f, 10.0)], n=N_GEN, positions="all")
        _, s2 = steered_generation(lab.model, sae, PROMPT, [(f, 20.0)], n=N_GEN, positions="all")
        if base.strs != s1.strs and s1.strs != s2.strs:
            # a second feature, added in the browser, that changes the text again (steered jointly)
            for g in ref_features(name)["ids"]:
                if g == f:
                    continue
                _, s3 = steered_generation(lab.model, sae, PROMPT, [(f, 20.0), (g, 10.0)], n=N_GEN, positions="all")
                if s3.strs != s2.strs:
                    break
            else:
                continue
            _REF["steer"] = {"feature": f, "value": 10.0, "new_value": 20.0, "base": base, "steered": s1,
                             "new_steered": s2, "added": g, "both": s3}
            return _REF["steer"]
    pytest.fail("no top feature of the first dictionary changes the continuation at clamp 10 and again at 20")


# --- checks shared by the live and the static page -----------------------------------------------

def _rows(page) -> list[int]:
    return [int(x) for x in page.locator(f"{FEAT} .mv-rowlabel[data-feature]").evaluate_all(
        "els => els.map(e => e.dataset.feature)")]


def check_features(page, name: str):
    """The feature view shows dictionary ``name``: the menu's choice, the rows (its top features, then the
    reconstruction-error row) and the activations and errors the analysis computes here (hovered)."""
    ref = ref_features(name)
    assert page.locator(f"{FEAT} select.mv-dictionary").input_value() == name
    assert page.locator(FEAT).get_attribute("data-dictionary") == name
    assert _rows(page) == ref["ids"]
    labels = page.locator(f"{FEAT} .mv-rowlabel").all_text_contents()
    assert labels == [f"#{f}" for f in ref["ids"]] + ["error"], labels
    acts, T, F = ref["acts"], ref["acts"].shape[0], len(ref["ids"])
    assert page.locator(FEAT).get_attribute("data-ntokens") == str(T)
    hi = tuple(int(i) for i in np.unravel_index(int(np.argmax(acts)), acts.shape))
    for c, r in {hi, (T - 1, 0), (0, F - 1), (T // 2, 1)}:
        info = hover_grid(page, FEAT, "canvas.mv-heat", r, c, expect={"feature": ref["ids"][r], "col": c})
        assert float(info["value"]) == pytest.approx(float(acts[c, r]), abs=2e-3, rel=2e-3), (name, r, c, info)
    for c in (0, T - 1):   # the reconstruction-error row (the last)
        info = _hover_recon(page, F, c)
        assert float(info["value"]) == pytest.approx(float(ref["recon"][c]), abs=2e-3), (name, c, info)


def _hover_recon(page, r: int, c: int) -> dict:
    """Hover the reconstruction-error row's cell at token ``c``; its read-out (which has ``recon``)."""
    cv = page.locator(f"{FEAT} canvas.mv-heat")
    cell = int(cv.get_attribute("data-cell"))
    info = page.locator(f"{FEAT} .mv-info").first
    for attempt in range(3):   # a view clears its read-out when new data arrive (as mvbrowser.hover_grid): hover again
        page.mouse.move(0, 0)
        cv.hover(position={"x": (c + 0.5) * cell, "y": (r + 0.5) * cell})
        try:
            page.wait_for_function("([el, c]) => el.dataset.col === c && 'recon' in el.dataset",
                                   arg=[info.element_handle(), str(c)], timeout=5000)
        except Exception:
            if attempt == 2:
                raise
            continue
        return info.evaluate("(e) => ({...e.dataset})")


def check_menu(page, names: list[str]):
    opts = page.locator(f"{FEAT} select.mv-dictionary option").evaluate_all("els => els.map(e => e.value)")
    assert opts == names and len(names) == 8, opts
    assert page.locator(f"{FEAT} select.mv-dictionary").is_visible()


def check_dashboard(page, name: str, feature: int):
    """The dashboard view shows ``feature`` of ``name``: its stats and top activating context equal
    ``feature_dashboards``' over the same corpus."""
    page.wait_for_selector(f'{DASH}[data-shown="{feature}"]', timeout=60_000)
    fd = ref_dashboards(name).feature(feature)
    stats = page.locator(f"{DASH} .mv-stats")
    assert float(stats.get_attribute("data-max")) == pytest.approx(fd.max_act, abs=1e-4)
    assert float(stats.get_attribute("data-density")) == pytest.approx(fd.density, rel=1e-3)
    assert f"mean when active {fd.mean_active:.3f}" in stats.text_content()
    assert page.locator(f"{DASH} .mv-dash-title").text_content() == f"feature #{feature}"
    # the top contexts, largest first: the first one's tokens, its centre token and activation
    top = fd.top
    assert len(top) > 0
    heading = page.locator(f'{DASH} .mv-group[data-group="0"]')
    assert heading.text_content() == f"top {len(top)} activations"
    first = page.locator(f'{DASH} .mv-ctx[data-group="0"]').first
    want = [s.replace("\n", "↵") for s, t in zip(top.token_strs[0], top.tokens[0]) if t >= 0]
    assert first.locator(".mv-token").all_text_contents() == want
    centre = first.locator(".mv-centre")
    assert centre.text_content() == top.token_strs[0][top.left].replace("\n", "↵")
    assert float(centre.get_attribute("data-act")) == pytest.approx(float(top.acts[0]), abs=2e-3, rel=2e-3)
    assert page.locator(f'{DASH} .mv-ctx[data-group="0"]').count() == len(top)
    prom = page.locator(f"{DASH} .mv-promoted li").all_text_contents()
    assert prom == list(fd.promoted_strs), (prom, fd.promoted_strs)


def _chips(page, column: str) -> list[str]:
    return page.locator(f"{STEER} .mv-gen-{column} .mv-token").all_text_contents()


def check_steering(page, base, steered, specs: list[tuple[int, float]]):
    """The steering view shows ``steered_generation``'s unsteered and steered continuations (token texts
    and probabilities) for ``specs`` [(feature, clamp value)], listed in its table."""
    assert page.locator(STEER).get_attribute("data-busy") == "false"
    assert _chips(page, "base") == list(base.strs)
    assert _chips(page, "steered") == list(steered.strs)
    assert base.strs != steered.strs
    probs = [float(x) for x in page.locator(f"{STEER} .mv-gen-steered .mv-token").evaluate_all(
        "els => els.map(e => e.dataset.prob)")]
    assert probs == pytest.approx([float(p) for p in steered.probs], abs=1e-3)
    assert page.locator(f"{STEER} tr.mv-spec").evaluate_all("els => els.map(e => e.dataset.feature)") == \
        [str(f) for f, _ in specs]
    values = [page.locator(f"{STEER} input.mv-spec-value").nth(i).input_value() for i in range(len(specs))]
    assert values == [f"{v:g}" for _, v in specs]
    assert page.locator(STEER).get_attribute("data-steering") == steered.steering


def _wait_steered(page, want, what: str):
    try:
        page.wait_for_function("([sel, want]) => JSON.stringify(Array.from(document.querySelectorAll(sel), "
                               "(e) => e.textContent)) === want",
                               arg=[f"{STEER_DOM} .mv-gen-steered .mv-token",
                                    json.dumps(list(want.strs), separators=(",", ":"), ensure_ascii=False)],
                               timeout=60_000)
    except Exception:
        pytest.fail(f"{what}: steered text {_chips(page, 'steered')} (want {want.strs}); "
                    f"busy {page.locator(STEER).get_attribute('data-busy')}, "
                    f"messages {page.locator(f'{STEER} .mv-steer-msg, {STEER} .mv-error').all_text_contents()}, "
                    f"kernel {kernel_print(page, 'print(steer.request, steer.specs, steer.error)')}")
    page.wait_for_selector(f'{STEER}[data-busy="false"]', timeout=30_000)


def _click_row(page, feature: int):
    page.locator(f'{FEAT} .mv-rowlabel[data-feature="{feature}"]').click()
    page.wait_for_selector(f'{FEAT}[data-feature="{feature}"]', timeout=10_000)


# --- live: JupyterLab with a kernel --------------------------------------------------------------







def _wait_rows(page, ids: list[int], timeout=60_000):
    page.wait_for_function("([sel, want]) => JSON.stringify(Array.from(document.querySelectorAll(sel), "
                           "(e) => Number(e.dataset.feature))) === want",
                           arg=[f"{FEAT_DOM} .mv-rowlabel[data-feature]", json.dumps(ids, separators=(",", ":"))],
                           timeout=timeout)


def _wait_ready(page, timeout=60_000):
    page.wait_for_selector(f'{DASH}[data-status="ready"]', timeout=timeout)
    page.wait_for_selector(f'{STEER}[data-busy="false"]', timeout=timeout)
    page.wait_for_selector(f"{STEER} .mv-gen-steered .mv-token", timeout=timeout)


@pytest.fixture
def saes_lab(jupyter_lab, page):
    url, token, root = jupyter_lab
    st = ref_steering()
    name = "saes.ipynb"
    write_cells(root / name, cells(st["feature"], st["value"]))
    offline = route_offline(page.context, serve_cdn=False, local_prefixes=(url, url.replace("http", "ws", 1)))
    t0 = time.monotonic()
    page.goto(f"{url}/lab/tree/{name}?token={token}")
    wait_notebook(page, name)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        page.wait_for_selector(f"{FEAT}[data-prompt={json.dumps(PROMPT)}][data-nfeatures]", timeout=120_000)
        _wait_ready(page, timeout=120_000)
        _wait_rows(page, ref_features(list(_lab().saes)[0])["ids"])
    except Exception:
        page.screenshot(path=str(root.parent / "saes_timeout.png"), full_page=True)
        raise
    print(f"lab open + run + every view drawn: {time.monotonic() - t0:.1f}s")
    yield page
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session?.shutdown()")
    assert offline["aborted"] == [], f"JupyterLab tried the network: {offline['aborted']}"


def test_sae_views_live(saes_lab, artifacts):
    page = saes_lab
    names = list(_lab().saes)
    first = names[0]
    st = ref_steering()
    t0 = time.monotonic()

    # (1) the feature view shows the first dictionary's features; its menu lists the eight dictionaries
    check_menu(page, names)
    check_features(page, first)
    # the steering view shows steered_generation's continuations
    check_steering(page, st["base"], st["steered"], [(st["feature"], st["value"])])
    page.locator(".jp-Notebook:visible").first.screenshot(path=str(artifacts / "lab_saes.png"))

    # (2) a feature row clicked in the feature view opens that feature in the dashboard view
    f1 = ref_features(first)["ids"][1]
    _click_row(page, f1)
    check_dashboard(page, first, f1)
    out = kernel_until(page, "print(lab.selection.dictionary, lab.selection.feature, dash.feature)",
                        f"{first} {f1} {f1}")
    assert out == f"{first} {f1} {f1}", out

    # (3) a token search in the dashboard returns search_by_token's hits; a hit the payload lacks, clicked,
    # is fetched from the kernel, shown in the dashboard, and selected in the feature view
    hits = ref_dashboards(first).search_by_token(SEARCH)
    page.locator(f"{DASH} input.mv-search-token").fill(SEARCH)
    page.locator(f"{DASH} button.mv-search-go").click()
    page.wait_for_selector(f"{DASH} .mv-hit[data-feature]", timeout=30_000)
    shown = [int(x) for x in page.locator(f"{DASH} .mv-hit").evaluate_all("els => els.map(e => e.dataset.feature)")]
    assert shown == [int(f) for f in hits.features], (shown, hits)
    scores = [float(x) for x in page.locator(f"{DASH} .mv-hit").evaluate_all("els => els.map(e => e.dataset.score)")]
    assert scores == pytest.approx([float(s) for s in hits.scores], abs=2e-3)
    assert page.locator(f"{DASH} .mv-hits-label").text_content() == hits.query
    from mechviz.analysis.features import top_features

    payload = {f1, *(int(f) for f in top_features(ref_features(first)["all_acts"], 16))}
    hit = next((int(f) for f in hits.features if int(f) not in payload), int(hits.features[0]))
    page.locator(f'{DASH} .mv-hit[data-feature="{hit}"]').click()
    check_dashboard(page, first, hit)
    page.wait_for_selector(f'{FEAT}[data-feature="{hit}"]', timeout=30_000)
    out = kernel_until(page, "print(lab.selection.feature, feat.feature)", f"{hit} {hit}")
    assert out == f"{hit} {hit}", out
    print(f"search hit {hit} {'fetched from the kernel' if hit not in payload else 'already in the payload'}")
    if hit not in payload:   # the feature view took it in as a row too (a kernel round-trip)
        page.wait_for_selector(f'{FEAT} .mv-rowlabel[data-feature="{hit}"]', timeout=30_000)
    page.locator(".jp-Notebook:visible").first.screenshot(path=str(artifacts / "lab_saes_search.png"))

    # (4) a steering value edited in the browser, then a feature added there, regenerate the steered
    # text: steered_generation's for those specs
    f, v2, g = st["feature"], st["new_value"], st["added"]
    value = page.locator(f"{STEER} input.mv-spec-value")
    value.fill(f"{v2:g}")
    value.press("Tab")   # the change event
    t1 = time.monotonic()
    _wait_steered(page, st["new_steered"], "value edited")
    print(f"steering value edited -> text regenerated in {time.monotonic() - t1:.1f}s")
    check_steering(page, st["base"], st["new_steered"], [(f, v2)])
    page.locator(f"{STEER} input.mv-add-feature").fill(str(g))
    page.locator(f"{STEER} input.mv-add-value").fill("10")
    page.locator(f"{STEER} select.mv-add-mode").select_option("clamp")
    page.locator(f"{STEER} button.mv-add").click()
    _wait_steered(page, st["both"], "feature added")
    check_steering(page, st["base"], st["both"], [(f, v2), (g, 10.0)])
    assert page.locator(f"{STEER} svg.mv-sweep").get_attribute("data-feature") == str(g)   # the added one is swept

    # (5) another dictionary chosen in the menu: the feature view shows its features, the kernel's
    # selection follows, and a feature row clicked there opens that dictionary's dashboard
    for name in (OTHER, TRANSCODER):
        page.locator(f"{FEAT} select.mv-dictionary").select_option(name)
        _wait_rows(page, ref_features(name)["ids"])
        page.mouse.move(0, 0)
        check_features(page, name)
        out = kernel_until(page, "print(lab.selection.dictionary)", name)
        assert out == name, out
        assert page.locator(f'{FEAT}[data-feature="-1"]').count() == 1   # a new dictionary clears the feature
        page.wait_for_selector(f'{DASH}[data-status="ready"]', timeout=60_000)
        f = ref_features(name)["ids"][0]
        _click_row(page, f)
        check_dashboard(page, name, f)
    page.locator(".jp-Notebook:visible").first.screenshot(path=str(artifacts / "lab_saes_transcoder.png"))
    print(f"live checks: {time.monotonic() - t0:.1f}s")
    assert page.mv_errors == []


# --- static: the executed notebook exported to one HTML file, opened with no kernel and no network ---

LOCAL = ("file://", "data:", "blob:", "about:")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mechviz.export import export_html

    need_node_modules()
    st = ref_steering()
    d = tmp_path_factory.mktemp("export_saes")
    nb = write_cells(d / "saes.ipynb", cells(st["feature"], st["value"]))
    t0 = time.monotonic()
    html = export_html(nb, d / "saes.html", inline_assets=True, timeout=300, executed_path=d / "executed.ipynb")
    print(f"export (execute + convert + inline): {time.monotonic() - t0:.1f}s")
    return html


def test_sae_views_static_export(page, exported, artifacts):
    names = list(_lab().saes)
    first = names[0]
    st = ref_steering()
    log = route_offline(page.context, serve_cdn=False, local_prefixes=LOCAL)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(exported.resolve().as_uri())
    page.wait_for_selector(f"{FEAT}[data-prompt={json.dumps(PROMPT)}][data-nfeatures]", timeout=30_000)
    _wait_ready(page, timeout=30_000)
    assert log["aborted"] == [], log
    assert [u for u in requests if not u.startswith(LOCAL)] == []

    # the same values as live, from saved state alone
    check_menu(page, names)
    check_features(page, first)
    check_steering(page, st["base"], st["steered"], [(st["feature"], st["value"])])
    assert page.locator(f'{DASH}[data-shown=""]').count() == 1   # nothing selected yet
    page.screenshot(path=str(artifacts / "static_saes.png"), full_page=True)

    # with no kernel, a feature row clicked in the feature view opens its dashboard (the payload holds the
    # prompt's top features; the jslinks through the Lab's Selection are part of the saved state)
    ids = ref_features(first)["ids"]
    for f in (ids[0], ids[3], ids[-1]):
        _click_row(page, f)
        check_dashboard(page, first, f)
    page.screenshot(path=str(artifacts / "static_saes_dashboard.png"), full_page=True)
    assert page.mv_errors == []
