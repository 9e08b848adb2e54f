"""Fast checks of the logit-lens, feature and patch-grid ES modules in a bare page (no Jupyter): the
state comes from the real Python view classes (their own serialisation, binary buffers as
DataViews), the model is a small stand-in (see ``mvbrowser.BARE_HARNESS``)."""

from __future__ import annotations

import numpy as np
import pytest

from mvbrowser import cell_colours, canvas_stats, click_grid, grid_cell, grid_pixel, hover_grid, mount_bare, push_bare, summary

pytestmark = pytest.mark.browser

XSS = '<img src=x onerror="window.__pwned=1">'
LENS, FEAT, GRID = ".mechviz-logit-lens", ".mechviz-features", ".mechviz-patch-grid"


def _no_injection(page, root):
    assert page.locator(f"{root} img, {root} b, {root} script").count() == 0
    assert page.evaluate("window.__pwned") is None


# -- logit lens ------------------------------------------------------------------------------------
def lens_data(R=3, T=5, k=3, seed=0):
    from mechviz.analysis.logit_lens import LogitLens

    rng = np.random.default_rng(seed)
    vocab = np.array(["the", " cat", XSS, "\n", " <b>x</b>", " mat", "sat", " on"], dtype=object)
    ids = np.stack([[rng.choice(len(vocab), k, replace=False) for _ in range(T)] for _ in range(R)])
    probs = np.sort(rng.random((R, T, k)).astype(np.float32) * 0.9, -1)[..., ::-1].copy()
    probs[0, 0, 0], probs[2, 4, 0] = 0.97, 0.02        # one dark and one light top-1 cell
    ent = (rng.random((R, T)) * 4).astype(np.float32)
    tprob = rng.random((R, T)).astype(np.float32)
    trank = rng.integers(0, 300, (R, T))
    trank[1, 1] = 0
    tprob[:, -1], trank[:, -1] = np.nan, -1            # no target at the last position
    tokens = ["<|endoftext|>", " The", XSS, " <b>hi</b>", " cat"][:T]
    return LogitLens(rows=[f"resid_pre.{i}" for i in range(R - 1)] + [f"resid_post.{R - 2}"], token_strs=tokens,
                     top_ids=ids, top_probs=probs, entropy=ent, top_strs=vocab[ids].astype(str),
                     target=np.arange(T), target_prob=tprob, target_rank=trank)


def test_logit_lens_hover_colour_switch_select(page, artifacts):
    from mechviz.widgets.logit_lens import LogitLensView

    lens = lens_data()
    R, T, k = lens.top_probs.shape
    v = LogitLensView()
    v.show(lens, prompt="a <script>prompt</script>", target_label="next token")
    mount_bare(page, v)
    root = page.locator(LENS)
    root.wait_for()
    assert root.get_attribute("data-prompt") == "a <script>prompt</script>"
    assert (root.get_attribute("data-ntokens"), root.get_attribute("data-nrows")) == (str(T), str(R))
    assert root.get_attribute("data-color-by") == "top_prob"
    # labels outside the canvas are the untrusted strings, as text
    assert page.locator(f"{LENS} .mv-collabel").all_text_contents() == lens.token_strs
    assert page.locator(f"{LENS} .mv-rowlabel").all_text_contents() == lens.rows
    _no_injection(page, LENS)
    cw, ch = grid_cell(page, f"{LENS} canvas.mv-grid")
    assert cw > ch and cw >= 26, (cw, ch)   # wide cells: the top-1 text fits
    # hover = the Python numbers (float16 on the wire)
    for r, c in [(0, 0), (1, 2), (2, 4), (1, 1), (2, 3)]:
        info = hover_grid(page, LENS, "canvas.mv-grid", r, c)
        assert info["top"] == lens.top_strs[r, c, 0]
        assert float(info["prob"]) == pytest.approx(lens.top_probs[r, c, 0], abs=1e-3)
        assert info["text"].startswith(f"{lens.rows[r]} · token {c} ")
        for j in range(k):
            assert f"{lens.top_probs[r, c, j]:.3f}"[:4] in info["text"]
        if c < T - 1:
            assert float(info["targetProb"]) == pytest.approx(lens.target_prob[r, c], abs=1e-3)
            assert int(info["targetRank"]) == lens.target_rank[r, c]
        else:
            assert "targetProb" not in info
    _no_injection(page, LENS)
    # top_prob colouring: p=0.97 darker than p=0.02 (corner pixels: text is drawn in the middle)
    dark, light = grid_pixel(page, LENS, "canvas.mv-grid", 0, 0, 0.1, 0.25), grid_pixel(page, LENS, "canvas.mv-grid", 2, 4, 0.1, 0.25)
    assert sum(dark[:3]) < sum(light[:3]) - 200, (dark, light)
    # the top-1 text is drawn in the cell: the cell has more than its fill colour
    assert len(cell_colours(page, LENS, "canvas.mv-grid", 0, 0)) > 2
    page.screenshot(path=str(artifacts / "bare_logit_lens_top_prob.png"), full_page=True)

    # colour switch redraws with no kernel: each mode gives different pixels; the choice is synced
    hashes = {"top_prob": canvas_stats(page, f"{LENS} canvas.mv-grid")["hash"]}
    for mode in ("target_prob", "target_rank", "entropy"):
        page.select_option(f"{LENS} select.mv-color-by", mode)
        page.wait_for_selector(f'{LENS}[data-color-by="{mode}"]')
        assert page.evaluate("window.saved.at(-1).color_by") == mode
        hashes[mode] = canvas_stats(page, f"{LENS} canvas.mv-grid")["hash"]
        if mode == "target_prob":   # NaN target (last column) is hatched grey: several colours, no blue
            cols = cell_colours(page, LENS, "canvas.mv-grid", 1, T - 1)
            assert len(cols) > 1 and all(abs(a - b) < 40 and abs(b - c) < 40 for a, b, c in cols), cols
        if mode == "target_rank":   # rank 0 is the darkest cell
            px0 = grid_pixel(page, LENS, "canvas.mv-grid", 1, 1, 0.1, 0.25)
            others = [grid_pixel(page, LENS, "canvas.mv-grid", r, c, 0.1, 0.25) for r in range(R) for c in range(T - 1)]
            assert sum(px0[:3]) == min(sum(p[:3]) for p in others), px0
        if mode == "entropy":       # viridis: higher entropy = lighter
            hi = np.unravel_index(np.argmax(lens.entropy), lens.entropy.shape)
            lo = np.unravel_index(np.argmin(lens.entropy), lens.entropy.shape)
            a = grid_pixel(page, LENS, "canvas.mv-grid", *hi, 0.1, 0.25)
            b = grid_pixel(page, LENS, "canvas.mv-grid", *lo, 0.1, 0.25)
            assert sum(a[:3]) > sum(b[:3]) + 100, (a, b)
    assert len(set(hashes.values())) == 4, hashes
    page.screenshot(path=str(artifacts / "bare_logit_lens_entropy.png"), full_page=True)

    # a kernel-side color_by change also redraws
    page.evaluate("model.set('color_by', 'top_prob')")
    page.wait_for_selector(f'{LENS}[data-color-by="top_prob"]')
    assert canvas_stats(page, f"{LENS} canvas.mv-grid")["hash"] == hashes["top_prob"]

    # click a cell: layer = row, token = column, in ONE save_changes; row and column outlined
    page.evaluate("window.setlog.length = 0")
    click_grid(page, LENS, "canvas.mv-grid", 2, 3)
    page.wait_for_selector(f'{LENS}[data-layer="2"][data-token="3"]')
    assert page.evaluate("window.setlog") == ["layer", "token", "|save"]
    assert page.evaluate("[window.saved.at(-1).layer, window.saved.at(-1).token]") == [2, 3]
    amber = grid_pixel(page, LENS, "canvas.mv-grid", 0, 3, 0.5, 0.03)   # top edge of the selected column
    assert amber[0] > 200 and 120 < amber[1] < 190 and amber[2] < 80, amber
    assert page.locator(f'{LENS} .mv-collabel.mv-selected').get_attribute("data-index") == "3"
    assert page.locator(f'{LENS} .mv-rowlabel.mv-selected').get_attribute("data-index") == "2"
    # linked selection from outside (another view) moves the outline
    page.evaluate("model.set('token', 1)")
    page.wait_for_selector(f'{LENS}[data-token="1"]')
    # a column label click selects the token only
    page.click(f'{LENS} .mv-collabel[data-index="4"]')
    page.wait_for_selector(f'{LENS}[data-token="4"]')

    # new data streams in (decode only the changed arrays) and an error keeps the last good view
    lens2 = lens_data(seed=5)
    v.show(lens2, prompt="second")
    push_bare(page, v, ["top_idx", "top_probs", "entropy", "target_prob", "target_rank", "strings", "tokens", "prompt", "seq"])
    page.wait_for_selector(f'{LENS}[data-prompt="second"]')
    info = hover_grid(page, LENS, "canvas.mv-grid", 1, 2)
    assert info["top"] == lens2.top_strs[1, 2, 0]
    page.evaluate("model.set('error', 'boom <i>x</i>')")
    page.wait_for_selector(f"{LENS} .mv-error:visible")
    assert page.locator(f"{LENS} .mv-error").text_content() == "boom <i>x</i>"
    assert canvas_stats(page, f"{LENS} canvas.mv-grid")["ink"] > 0
    _no_injection(page, LENS)
    page.screenshot(path=str(artifacts / "bare_logit_lens_selected.png"), full_page=True)
    assert page.mv_errors == []


# -- features --------------------------------------------------------------------------------------
def feature_view(steering=""):
    from mechviz.widgets.features import FeatureView

    rng = np.random.default_rng(1)
    tokens = ["<|endoftext|>", " The", XSS, " cat", " <b>sat</b>"]
    feats = [7, 42, 3, 100]
    T, F, k = len(tokens), len(feats), 4
    acts = np.maximum(rng.normal(size=(T, F)), 0).astype(np.float32) * 3
    acts[3, 1] = 9.0
    vocab = np.array([" dog", XSS, " the", "\n", " <i>y</i>", " a", " on", " mat", "ing", " ."], dtype=object)
    eff_ids = rng.integers(0, len(vocab), (F, 2, k))
    eff_val = np.stack([np.sort(rng.random((F, k)))[:, ::-1] * 5, -np.sort(rng.random((F, k)))[:, ::-1] * 5], 1)
    next_ids = rng.integers(0, len(vocab), (2, k))
    next_prob = np.sort(rng.random((2, k)), -1)[:, ::-1] * 0.5
    v = FeatureView()
    v.show(summary(tokens, feats, acts, eff_ids, vocab[eff_ids], eff_val, vocab[next_ids], next_prob,
                   sae_label="resid_post.1 · relu · 1024", steering=steering, recon_error=RECON[:T]),
           prompt="p <script>x</script>")
    return v, dict(tokens=tokens, feats=feats, acts=acts, eff_strs=vocab[eff_ids], eff_val=eff_val,
                   next_strs=vocab[next_ids], next_prob=next_prob)


RECON = np.array([0.05, 0.5, 0.9, 0.25, 1.3])   # relative reconstruction error per token (> 1 possible)


def test_features_hover_select_detail_and_steering(page, artifacts):
    v, d = feature_view()
    T, F = d["acts"].shape
    mount_bare(page, v)
    root = page.locator(FEAT)
    root.wait_for()
    assert root.get_attribute("data-prompt") == "p <script>x</script>"
    assert (root.get_attribute("data-ntokens"), root.get_attribute("data-nfeatures")) == (str(T), str(F))
    assert page.locator(f"{FEAT} .mv-collabel").all_text_contents() == d["tokens"]
    assert page.locator(f"{FEAT} .mv-rowlabel").all_text_contents() == [f"#{f}" for f in d["feats"]] + ["error"]
    _no_injection(page, FEAT)
    # the last row: each token's reconstruction error (blue as it grows; hover reads it; a click on it
    # selects only the token, never a "feature")
    for c in range(T):
        info = hover_grid(page, FEAT, "canvas.mv-heat", F, c, expect={"col": c})
        assert float(info["value"]) == pytest.approx(RECON[c], abs=2e-3), (c, info)
    lo, hi = grid_pixel(page, FEAT, "canvas.mv-heat", F, 0), grid_pixel(page, FEAT, "canvas.mv-heat", F, 4)
    assert hi[2] > hi[0] + 50 and sum(lo[:3]) > sum(hi[:3]) + 200, (lo, hi)   # dark blue vs near white
    assert not page.locator(f"{FEAT} select.mv-dictionary").is_visible()   # one dictionary: no menu
    # hover: heatmap rows = features, columns = tokens; the value is acts[token, feature]
    for r, c in [(0, 0), (1, 3), (3, 4), (2, 2)]:
        info = hover_grid(page, FEAT, "canvas.mv-heat", r, c, expect={"feature": d["feats"][r], "col": c})
        assert float(info["value"]) == pytest.approx(d["acts"][c, r], abs=5e-3 * max(1.0, float(d["acts"][c, r])))
    # the largest activation is the darkest cell
    px_hi = grid_pixel(page, FEAT, "canvas.mv-heat", 1, 3)
    zero = np.argwhere(d["acts"] == 0)[0]
    px_zero = grid_pixel(page, FEAT, "canvas.mv-heat", zero[1], zero[0])
    assert px_zero[:3] == [255, 255, 255] and sum(px_hi[:3]) < 400, (px_hi, px_zero)
    assert page.locator(f"{FEAT} .mv-detail").text_content().startswith("click a feature")

    # click a cell: selects its feature (and token) in one save; the detail panel fills
    page.evaluate("window.setlog.length = 0")
    click_grid(page, FEAT, "canvas.mv-heat", 1, 3)
    page.wait_for_selector(f'{FEAT}[data-feature="42"][data-token="3"]')
    assert page.evaluate("window.setlog") == ["feature", "token", "|save"]
    detail = page.locator(f"{FEAT} .mv-detail")
    assert detail.get_attribute("data-feature") == "42"
    strip = page.locator(f"{FEAT} .mv-detail span.mv-token")
    assert strip.all_text_contents() == d["tokens"]
    acts = [float(x) for x in strip.evaluate_all("els => els.map(e => e.dataset.act)")]
    assert acts == pytest.approx(d["acts"][:, 1], abs=0.01)
    assert [int(x) for x in strip.evaluate_all("els => els.map(e => e.dataset.index)")] == list(range(T))
    bgs = strip.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert len(set(bgs)) > 1
    for cls, row in (("mv-promoted", 0), ("mv-suppressed", 1)):
        items = page.locator(f"{FEAT} .{cls} li")
        assert items.all_text_contents() == list(d["eff_strs"][1, row])
        vals = [float(x) for x in items.evaluate_all("els => els.map(e => e.dataset.value)")]
        assert vals == pytest.approx(d["eff_val"][1, row], abs=0.01)
    # the steering feature input follows the selection
    assert page.locator(f"{FEAT} input.mv-steer-feature").input_value() == "42"
    _no_injection(page, FEAT)
    # a row label click selects another feature (the token stays)
    page.click(f'{FEAT} .mv-rowlabel[data-feature="100"]')
    page.wait_for_selector(f'{FEAT}[data-feature="100"][data-token="3"]')
    assert page.locator(f"{FEAT} .mv-promoted li").all_text_contents() == list(d["eff_strs"][3, 0])
    assert page.locator(f"{FEAT} input.mv-steer-feature").input_value() == "100"
    # a token label click selects the token
    page.click(f'{FEAT} .mv-collabel[data-index="1"]')
    page.wait_for_selector(f'{FEAT}[data-token="1"]')
    page.click(f'{FEAT} .mv-rowlabel[data-feature="42"]')
    page.wait_for_selector(f'{FEAT}[data-feature="42"]')

    # next tokens without steering; the "with steering" column is hidden while steering is off
    base = page.locator(f"{FEAT} .mv-next-base li")
    assert base.all_text_contents() == list(d["next_strs"][0])
    assert [float(x) for x in base.evaluate_all("els => els.map(e => e.dataset.prob)")] == \
        pytest.approx(d["next_prob"][0], abs=1e-3)
    assert page.locator(f"{FEAT} .mv-next-steered li").count() == 0
    assert not page.locator(f"{FEAT} .mv-next-col-steered").is_visible()
    assert page.locator(f"{FEAT} .mv-steering").text_content() == "steering off"

    page.evaluate("model.set('error', 'steering failed: <b>no</b>')")
    page.wait_for_selector(f"{FEAT} .mv-error:visible")
    assert page.locator(f"{FEAT} .mv-error").text_content() == "steering failed: <b>no</b>"
    assert canvas_stats(page, f"{FEAT} canvas.mv-heat")["ink"] > 0
    _no_injection(page, FEAT)
    assert page.mv_errors == []


def _sent(page):
    """What the page synced since the last ``_reset``: trait names set, ``|save`` per save_changes."""
    return page.evaluate("window.setlog")


def _reset(page):
    page.evaluate("window.setlog.length = 0")


def _set_input(page, sel, text):
    """Put ``text`` into an <input> as the browser would keep it (a number input drops what is not a
    number: its value is then "") and fire its input event."""
    page.locator(sel).evaluate("(e, t) => { e.value = t; e.dispatchEvent(new Event('input', {bubbles: true})); }", text)


F_IN, V_IN, MODE = f"{FEAT} input.mv-steer-feature", f"{FEAT} input.mv-steer-value", f"{FEAT} select.mv-steer-mode"


def _click_steer(page, feature=None, value=None, mode=None):
    """Fill the steering controls (None: leave as is), click "steer", check that exactly ONE trait was
    synced in ONE save_changes, and return it (the request)."""
    for sel, text in ((F_IN, feature), (V_IN, value)):
        if text is not None:
            page.fill(sel, text)
    if mode is not None:
        page.select_option(MODE, mode)
    _reset(page)
    page.click(f"{FEAT} button.mv-steer-apply")
    assert _sent(page) == ["steer_request", "|save"]
    return page.evaluate("window.saved.at(-1).steer_request")


def test_features_steering_is_one_request_and_the_controls_follow_steered(page, artifacts):
    v, d = feature_view()
    v.feature = 42
    mount_bare(page, v)
    page.locator(FEAT).wait_for()
    f_in, v_in, mode = F_IN, V_IN, MODE
    apply, off = f"{FEAT} button.mv-steer-apply", f"{FEAT} button.mv-steer-off"
    msg, label = page.locator(f"{FEAT} .mv-steer-msg"), page.locator(f"{FEAT} .mv-steering")
    controls = lambda: (page.input_value(f_in), page.input_value(v_in), page.input_value(mode))  # noqa: E731
    assert controls() == ("42", "10", "clamp")          # the selected feature, the default value
    assert label.text_content() == "steering off"

    # one click: ONE trait (steer_request) in ONE save_changes, with the whole request
    assert _click_steer(page, value="25", mode="scale") == {"feature": 42, "value": 25, "mode": "scale", "id": 1}
    assert msg.text_content() == ""
    # the same request again is still a change: the id grows; Enter in a field sends too
    _reset(page)
    page.click(apply)
    page.press(v_in, "Enter")
    assert _sent(page) == ["steer_request", "|save"] * 2
    assert [r["id"] for r in page.evaluate("window.saved.slice(-2).map(s => s.steer_request)")] == [2, 3]

    # a value that is empty, not a number or not finite sends nothing and says so
    for bad in ("", "abc", "NaN", "1e999", "-1e999"):
        _set_input(page, v_in, bad)
        _reset(page)
        page.click(apply)
        page.press(v_in, "Enter")
        assert _sent(page) == [], bad
        assert msg.text_content() == "enter a number", bad
    page.fill(v_in, "25")
    assert msg.text_content() == ""                      # editing clears the message
    # likewise a feature id that is empty, negative or not an integer
    for bad in ("", "-3", "1.5", "abc"):
        _set_input(page, f_in, bad)
        _reset(page)
        page.click(apply)
        assert _sent(page) == [], bad
        assert msg.text_content() == "enter a feature number", bad
    assert page.evaluate("window.saved.at(-1).steer_request.id") == 3   # the last sent request is still the last

    # the kernel applies a steering: the controls show what `steered` says
    v.steered = {"feature": 7, "value": 2.5, "mode": "clamp"}
    v.steering = "feature 7 clamped to 2.5"
    push_bare(page, v, ["steered", "steering"])
    page.wait_for_selector(f'{FEAT}[data-steering="feature 7 clamped to 2.5"]')
    assert controls() == ("7", "2.5", "clamp")
    assert label.text_content() == "steering: feature 7 clamped to 2.5"
    # a refused request: the kernel answers with an error and the same `steered`; the controls
    # go back to the still-applied steering
    assert _click_steer(page, "100000", "99", "scale") == {"feature": 100000, "value": 99, "mode": "scale", "id": 4}
    v.error = "feature 100000 out of range: the SAE has 1024 features"
    push_bare(page, v, ["error"])
    page.wait_for_selector(f"{FEAT} .mv-error:visible")
    # the banner follows `error` at once, the controls on the view's next redraw (one animation frame)
    page.wait_for_function("(sel) => document.querySelector(sel).value === '7'", arg=f_in, timeout=5000)
    assert controls() == ("7", "2.5", "clamp")
    assert label.text_content() == "steering: feature 7 clamped to 2.5"

    # the data computed with steering arrive: the second next-token column appears
    v2, d2 = feature_view(steering="feature 7 clamped to 2.5")
    v.show(v2.result, prompt="p <script>x</script>")
    push_bare(page, v, ["next_idx", "next_prob", "strings", "effect_idx", "seq", "error"])
    page.wait_for_selector(f"{FEAT} .mv-next-col-steered", state="visible")
    steered = page.locator(f"{FEAT} .mv-next-steered li")
    assert steered.all_text_contents() == list(d2["next_strs"][1])
    assert [float(x) for x in steered.evaluate_all("els => els.map(e => e.dataset.prob)")] == \
        pytest.approx(d2["next_prob"][1], abs=1e-3)
    page.screenshot(path=str(artifacts / "bare_features_steered.png"), full_page=True)

    # off: one request with feature null; the kernel answers steered = None
    _reset(page)
    page.click(off)
    assert _sent(page) == ["steer_request", "|save"]
    assert page.evaluate("window.saved.at(-1).steer_request") == {"feature": None, "id": 5}
    v.steered, v.steering = None, ""
    push_bare(page, v, ["steered", "steering"])
    page.wait_for_selector(f'{FEAT}[data-steering=""]')
    assert label.text_content() == "steering off"
    assert page.locator(f"{FEAT} .mv-next-steered li").count() == 0
    # a new selection: the feature to steer follows it
    page.click(f'{FEAT} .mv-rowlabel[data-feature="100"]')
    page.wait_for_selector(f'{FEAT}[data-feature="100"]')
    assert page.input_value(f_in) == "100"
    assert page.mv_errors == []


# -- patch grid ------------------------------------------------------------------------------------
def patch_grids(direction="denoise"):
    from mechviz.analysis.patching import PatchGrid

    L, T = 3, 4
    exact = np.array([[2.0, -2.5, np.nan, 0.5],
                      [np.nan, np.nan, 1.0, -1.0],
                      [np.nan, 3.0, np.nan, np.nan]])
    est = np.array([[1.8, -2.0, 0.4, 0.6],
                    [1.5, -3.0, 0.9, -0.9],
                    [np.nan, 2.5, 0.1, np.nan]])
    tokens = ["<|endoftext|>", XSS, " cat/dog", " <b>sat</b>"]
    kw = dict(site="resid_pre", by="position", direction=direction, layers=list(range(L)), tokens=tokens,
              heads=[], clean_metric=2.0, corrupted_metric=-1.0)
    return PatchGrid(values=exact, **kw), PatchGrid(values=est, method="attribution", **kw)


def test_patch_grid_exact_estimate_hover_colours_select(page, artifacts):
    from mechviz.widgets.patching import PatchGridView

    grid, est = patch_grids()
    v = PatchGridView()
    v.show_grid(grid, estimate=est, status="running")
    mount_bare(page, v)
    root = page.locator(GRID)
    root.wait_for()
    assert (root.get_attribute("data-rows"), root.get_attribute("data-cols")) == ("3", "4")
    assert root.get_attribute("data-exact") == "6" and root.get_attribute("data-estimated") == "4"
    assert page.locator(f"{GRID} .mv-rowlabel").all_text_contents() == ["L0", "L1", "L2"]
    assert page.locator(f"{GRID} .mv-collabel").all_text_contents() == v.col_labels
    _no_injection(page, GRID)
    # progress and the cancel button (visible while running)
    assert page.locator(f"{GRID} .mv-progress-text").text_content() == "6 / 12 · running"
    assert page.locator(f"{GRID} progress").evaluate("e => [e.value, e.max]") == [6, 12]
    assert page.locator(f"{GRID} button.mv-cancel").is_visible()
    assert "(v − corrupted) / (clean − corrupted)" in page.locator(f"{GRID} .mv-legend-text").text_content()
    norm = grid.normalized()
    # hover: exact cells report the exact value; NaN cells the estimate (marked); no estimate: blank
    for r, c in [(0, 0), (0, 1), (1, 2), (2, 1)]:
        info = hover_grid(page, GRID, "canvas.mv-grid", r, c)
        assert info["exact"] == "true"
        assert float(info["value"]) == pytest.approx(grid.values[r, c], abs=1e-4)
        assert float(info["norm"]) == pytest.approx(norm[r, c], abs=1e-3)
        assert "exact" in info["text"]
    for r, c in [(0, 2), (1, 0), (1, 1), (2, 2)]:
        info = hover_grid(page, GRID, "canvas.mv-grid", r, c)
        assert info["exact"] == "false" and "estimate" in info["text"]
        assert float(info["value"]) == pytest.approx(est.values[r, c], abs=1e-4)
        assert float(info["norm"]) == pytest.approx((est.values[r, c] + 1) / 3, abs=1e-3)
    info = hover_grid(page, GRID, "canvas.mv-grid", 2, 0)
    assert info["exact"] == "none" and info["value"] == ""
    assert info["text"].startswith("L2 · ")

    # colours: positive (restores) red, negative blue, 0 (v = corrupted) white; estimates hatched
    red, blue = grid_pixel(page, GRID, "canvas.mv-grid", 0, 0), grid_pixel(page, GRID, "canvas.mv-grid", 0, 1)
    assert red[0] > red[2] + 80 and blue[2] > blue[0] + 50, (red, blue)   # norm +1 and -0.5
    white = grid_pixel(page, GRID, "canvas.mv-grid", 1, 3)   # v = -1 = corrupted: normalised 0
    assert min(white[:3]) > 240, white
    assert len(cell_colours(page, GRID, "canvas.mv-grid", 0, 0)) == 1              # exact: flat
    assert len(cell_colours(page, GRID, "canvas.mv-grid", 1, 1)) > 1               # estimate: hatched
    ex_blue = grid_pixel(page, GRID, "canvas.mv-grid", 0, 1, 0.1, 0.9)
    est_blue = max(cell_colours(page, GRID, "canvas.mv-grid", 1, 1), key=sum)      # est. -1.33 (lighter, faded)
    assert est_blue[2] > est_blue[0] and sum(est_blue) > sum(ex_blue[:3]), (est_blue, ex_blue)
    blank = cell_colours(page, GRID, "canvas.mv-grid", 2, 0)
    assert blank == {(248, 250, 252)}, blank
    page.screenshot(path=str(artifacts / "bare_patch_grid_running.png"), full_page=True)

    # cancel increments cancel_requests
    page.click(f"{GRID} button.mv-cancel")
    assert page.evaluate("window.saved.at(-1).cancel_requests") == 1

    # click: cell = [r, c], outlined; until the kernel answers for that cell, the panel says so
    click_grid(page, GRID, "canvas.mv-grid", 1, 2)
    page.wait_for_selector(f'{GRID}[data-cell="1,2"]')
    assert page.evaluate("window.saved.at(-1).cell") == [1, 2]
    edge = grid_pixel(page, GRID, "canvas.mv-grid", 1, 2, 0.5, 0.02)
    assert sum(edge[:3]) < 150, edge
    assert page.locator(f"{GRID} .mv-detail-wait").is_visible()
    assert page.locator(f"{GRID} .mv-detail-title").text_content() == "patched L1 · 2 ' cat/dog'"
    # the kernel's answer (it names its cell) fills the detail panel
    answer(v, [1, 2])
    push_bare(page, v, DETAIL)
    page.wait_for_selector(f'{GRID} .mv-detail[data-cell="1,2"]')
    items = page.locator(f"{GRID} .mv-detail-next li")
    assert items.all_text_contents() == [" mat", XSS, "\n"]
    assert [float(x) for x in items.evaluate_all("els => els.map(e => e.dataset.prob)")] == [0.5, 0.25, 0.125]
    assert page.locator(f"{GRID} .mv-detail-metric").get_attribute("data-value") == "1.0000"
    assert "normalised 0.667" in page.locator(f"{GRID} .mv-detail-metric").text_content()
    lens_rows = page.locator(f"{GRID} .mv-lens-row")
    assert lens_rows.count() == 2
    assert lens_rows.nth(1).locator(".mv-lens-tok").all_text_contents() == [" mat", " rug"]
    assert float(lens_rows.nth(1).locator(".mv-lens-tok").first.get_attribute("data-prob")) == pytest.approx(0.6, abs=1e-3)
    assert page.locator(f"{GRID} .mv-detail-wait").count() == 0
    _no_injection(page, GRID)

    # values stream in: more exact cells, redrawn; done: the cancel button goes away
    draws = int(root.get_attribute("data-draws"))
    grid.values[2, 0], grid.values[1, 1] = -4.0, 0.0
    v.show_grid(grid, status="done")
    push_bare(page, v, ["values", "done", "total", "status"])
    page.wait_for_selector(f'{GRID}[data-status="done"][data-exact="8"]')
    assert int(root.get_attribute("data-draws")) > draws
    assert not page.locator(f"{GRID} button.mv-cancel").is_visible()
    info = hover_grid(page, GRID, "canvas.mv-grid", 2, 0)
    assert info["exact"] == "true" and float(info["norm"]) == pytest.approx(-1.0, abs=1e-3)
    deep = grid_pixel(page, GRID, "canvas.mv-grid", 2, 0)       # -1: the end of the blue side
    assert deep[2] > 150 and deep[0] < 60, deep
    page.screenshot(path=str(artifacts / "bare_patch_grid_done.png"), full_page=True)
    page.evaluate("model.set('error', 'patching failed')")
    page.wait_for_selector(f"{GRID} .mv-error:visible")
    assert canvas_stats(page, f"{GRID} canvas.mv-grid")["ink"] > 0
    assert page.mv_errors == []


DETAIL = ["detail_cell", "detail_metric", "detail_strs", "detail_probs", "lens_rows", "lens_strs", "lens_probs"]


def answer(v, cell, strs=(" mat", XSS, "\n"), metric=1.0):
    """Fill ``v``'s detail traits as the kernel does for ``cell`` (in one update, naming the cell)."""
    with v.hold_sync():
        v.detail_cell = list(cell)
        v.detail_strs = list(strs)
        v.detail_probs = np.array([0.5, 0.25, 0.125][:len(strs)])
        v.lens_rows = ["resid_pre.0", "resid_post.2"]
        v.lens_strs = [[" a", " <b>b</b>"], [" mat", " rug"]]
        v.lens_probs = np.array([[0.1, 0.05], [0.6, 0.2]])
        v.detail_metric = metric


def test_patch_grid_detail_only_for_the_cell_it_answers(page):
    """The detail panel shows the kernel's answer only while ``detail_cell`` is the clicked ``cell``:
    an answer for another cell (an earlier click, a slow kernel) is never shown under this one."""
    from mechviz.widgets.patching import PatchGridView

    grid, est = patch_grids()
    v = PatchGridView()
    v.show_grid(grid, estimate=est, status="done")
    v.cell = [1, 2]
    answer(v, [1, 2])
    mount_bare(page, v)            # a saved notebook: the answer for the selected cell shows at load
    detail = page.locator(f"{GRID} .mv-detail")
    page.wait_for_selector(f'{GRID} .mv-detail[data-cell="1,2"]')
    items = page.locator(f"{GRID} .mv-detail-next li")
    assert items.all_text_contents() == [" mat", XSS, "\n"]
    # another cell: the old answer disappears, the panel waits for this one
    click_grid(page, GRID, "canvas.mv-grid", 0, 0)
    page.wait_for_selector(f'{GRID}[data-cell="0,0"]')
    assert detail.get_attribute("data-cell") == ""
    assert page.locator(f"{GRID} .mv-detail-wait").is_visible()
    assert page.locator(f"{GRID} .mv-detail-title").text_content() == f"patched L0 · {v.col_labels[0]}"
    assert items.count() == 0 and page.locator(f"{GRID} .mv-lens-row").count() == 0
    # a late answer for the previous cell (new values, still named [1, 2]): not shown here
    draws = page.locator(GRID).get_attribute("data-draws")
    answer(v, [1, 2], strs=(" late",))
    push_bare(page, v, DETAIL)
    page.wait_for_function("([sel, n]) => document.querySelector(sel).dataset.draws !== n", arg=[GRID, draws])
    assert detail.get_attribute("data-cell") == "" and items.count() == 0
    assert page.locator(f"{GRID} .mv-detail-wait").is_visible()
    # the answer for this cell
    answer(v, [0, 0], strs=(" rug",), metric=2.0)
    push_bare(page, v, DETAIL)
    page.wait_for_selector(f'{GRID} .mv-detail[data-cell="0,0"]')
    assert items.all_text_contents() == [" rug"]
    assert page.locator(f"{GRID} .mv-detail-metric").get_attribute("data-value") == "2.0000"
    assert page.locator(f"{GRID} .mv-detail-wait").count() == 0
    # back to the first cell: the answer on hand is for (0, 0), so the panel waits again
    click_grid(page, GRID, "canvas.mv-grid", 1, 2)
    page.wait_for_selector(f'{GRID}[data-cell="1,2"]')
    assert detail.get_attribute("data-cell") == "" and items.count() == 0
    # a saved notebook whose answer is for another cell than the selected one: it waits
    v.cell = [2, 1]
    mount_bare(page, v)
    page.wait_for_selector(f'{GRID}[data-cell="2,1"]')
    assert page.locator(f"{GRID} .mv-detail").get_attribute("data-cell") == ""
    assert page.locator(f"{GRID} .mv-detail-wait").is_visible()
    assert page.mv_errors == []


def test_patch_grid_noise_direction_and_empty(page):
    """Noising grids normalise as PatchGrid.normalized() does; a view with no data draws nothing."""
    from mechviz.widgets.patching import PatchGridView

    grid, est = patch_grids("noise")
    v = PatchGridView()
    mount_bare(page, v)
    page.locator(GRID).wait_for()
    assert page.locator(f"{GRID} canvas.mv-grid").get_attribute("data-cell") is None
    v.show_grid(grid, estimate=est, status="done")
    push_bare(page, v, ["values", "estimate", "row_labels", "col_labels", "clean_metric", "corrupted_metric",
                        "direction", "done", "total", "status", "site", "by"])
    page.wait_for_selector(f'{GRID}[data-status="done"]')
    assert "(clean − v) / (clean − corrupted)" in page.locator(f"{GRID} .mv-legend-text").text_content()
    info = hover_grid(page, GRID, "canvas.mv-grid", 0, 1)
    assert float(info["norm"]) == pytest.approx(grid.normalized()[0, 1], abs=1e-3)
    assert page.mv_errors == []


def test_view_sources_never_build_html_from_strings():
    """Token strings are untrusted: no view (source or built bundle) parses HTML from a string."""
    import re

    from mvbrowser import REPO

    files = sorted((REPO / "widgets_js" / "src").rglob("*.js")) + sorted((REPO / "mechviz" / "static").glob("*.js"))
    names = {f.stem for f in files}
    assert {"logit_lens", "features", "patch_grid"} <= names, names
    bad = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|createContextualFragment|DOMParser")
    offenders = [f"{f.relative_to(REPO)}: {m.group(0)}" for f in files for m in [bad.search(f.read_text())] if m]
    assert offenders == []
