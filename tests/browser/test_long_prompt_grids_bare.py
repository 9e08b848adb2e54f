"""The logit-lens and feature grids at 2,048 tokens in a real browser: they draw only the visible columns
(a viewport-sized canvas, DOM labels for the visible columns only), so the page stays responsive (no
main-thread task over 200 ms from the data's arrival through scrolling to the end, hovering and
selecting), column labels stay readable (>= 11 px, never overlapping) and the hover read-out of a cell
far right comes from the page's own arrays."""

from __future__ import annotations

import numpy as np
import pytest

from mvbrowser import hover_grid_cell, mount_bare, push_bare, stage_bare, summary

pytestmark = pytest.mark.browser

T = 2048
LENS, FEAT = ".mechviz-logit-lens", ".mechviz-features"
MAX_TASK_MS = 200

# every long task (> 50 ms on the main thread) the page runs, kept from here on
OBSERVE = """() => { window.__longtasks = [];
  new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longtasks.push([e.startTime, e.duration]); })
    .observe({type: 'longtask', buffered: true}); }"""


def arrive(page, view) -> float:
    """Mount ``view`` with no data, then deliver all its traits as the kernel would: the binary buffers
    are turned into DataViews first (the test's own decoding, not the view's work), then the traits
    are set in one task. Returns the page time (ms) at which the data arrived."""
    empty = type(view)()
    mount_bare(page, empty)
    page.evaluate(OBSERVE)
    stage_bare(page, view)
    page.wait_for_timeout(200)   # the staging task is over before the data "arrive"
    return page.evaluate("""() => { const t0 = performance.now();
        for (const [k, v] of Object.entries(window.__staged)) window.model.set(k, v); return t0; }""")


def frames(page, n: int = 3) -> None:
    """Let ``n`` animation frames run (scroll repaints are once per frame)."""
    page.evaluate("(n) => new Promise((ok) => { const f = () => (--n ? requestAnimationFrame(f) : ok()); requestAnimationFrame(f); })", n)


def longest_task(page, t0: float) -> float:
    """The longest main-thread task (ms) that started at or after ``t0``; 0 when none took over 50 ms."""
    page.wait_for_timeout(300)   # long-task entries are delivered asynchronously
    return page.evaluate("(t0) => Math.max(0, ...window.__longtasks.filter(([s]) => s >= t0 - 1).map(([, d]) => d))", t0)


def scroll_to(page, root: str, x: float | None = None) -> None:
    """Scroll the grid of ``root`` to ``x`` css px (None: the end), as a user would, then let it repaint."""
    page.evaluate("([sel, x]) => { const s = document.querySelector(sel); s.scrollLeft = x ?? s.scrollWidth; }",
                  [f"{root} .mv-vscroll", x])
    frames(page)


def labels(page, root: str) -> dict:
    """The column labels in the DOM: their count, the smallest font size, the (index, text) of those
    in view, and how many pairs of labels in view overlap."""
    return page.evaluate("""(root) => {
        const box = document.querySelector(root + ' .mv-vscroll').getBoundingClientRect();
        const all = [...document.querySelectorAll(root + ' .mv-collabel')];
        const seen = all.map((e) => [e, e.getBoundingClientRect()])
          .filter(([, r]) => r.width > 0 && r.right > box.left + 1 && r.left < box.right - 1)
          .sort((a, b) => a[1].left - b[1].left);
        let overlaps = 0;
        for (let i = 1; i < seen.length; i++) if (seen[i][1].left < seen[i - 1][1].right - 0.5) overlaps++;
        return {count: all.length, minPx: Math.min(...all.map((e) => parseFloat(getComputedStyle(e).fontSize))),
                shown: seen.map(([e]) => [Number(e.dataset.index), e.textContent]), overlaps}; }""", root)


def canvas_box(page, sel: str) -> dict:
    return page.evaluate("""(sel) => { const c = document.querySelector(sel), r = c.getBoundingClientRect();
        return {cssW: r.width, w: c.width, h: c.height, x0: Number(c.dataset.x0), c0: Number(c.dataset.c0),
                c1: Number(c.dataset.c1)}; }""", sel)


def hover(page, root: str, canvas: str, r: int, c: int, expect: dict) -> dict:
    """Hover cell (r, c) of the grid as it is scrolled now (the canvas shows columns from x0 on) and
    return the read-out once it shows ``expect``."""
    info = hover_grid_cell(page, root, r, c, canvas)
    exp = {k: str(v) for k, v in expect.items()}
    page.wait_for_function("([el, exp]) => Object.entries(exp).every(([k, v]) => el.dataset[k] === v)",
                           arg=[info.element_handle(), exp], timeout=5000)
    return info.evaluate("(e) => ({...e.dataset, text: e.textContent})")


def check_labels(page, root: str, tokens: list[str], first: int | None = None, last: int | None = None) -> dict:
    lab = labels(page, root)
    assert lab["minPx"] >= 11, lab["minPx"]                      # readable, not 9-10 px
    assert lab["overlaps"] == 0, lab["overlaps"]
    assert 10 <= len(lab["shown"]) and lab["count"] < 300, (len(lab["shown"]), lab["count"])  # only what is in view
    assert all(text == tokens[i] for i, text in lab["shown"]), lab["shown"][:5]
    idx = [i for i, _ in lab["shown"]]
    assert idx == list(range(idx[0], idx[0] + len(idx)))          # every column in view has its label
    if first is not None:
        assert idx[0] == first, idx[:3]
    if last is not None:
        assert idx[-1] == last, idx[-3:]
    return lab


def lens_2048():
    from mechviz.analysis.logit_lens import LogitLens

    R, k = 13, 5
    rng = np.random.default_rng(1)
    probs = np.sort(rng.dirichlet(np.ones(50), size=(R, T))[..., :k], axis=-1)[..., ::-1].astype(np.float32)
    ids = rng.integers(0, 500, size=(R, T, k))
    return LogitLens(rows=[f"resid_pre.{i}" for i in range(R - 1)] + ["resid_post.11"],
                     token_strs=[f" w{i}" for i in range(T)], top_ids=ids, top_probs=probs,
                     entropy=rng.random((R, T), dtype=np.float32), top_strs=np.array([f"s{i}" for i in range(500)])[ids])


def test_logit_lens_2048_tokens_responsive_readable(page, artifacts):
    from mechviz.widgets.logit_lens import LogitLensView

    lens = lens_2048()
    R = lens.top_probs.shape[0]
    v = LogitLensView()
    v.show(lens, prompt="long")
    t0 = arrive(page, v)
    page.wait_for_selector(f"{LENS}[data-ntokens='{T}'][data-nrows='{R}']")
    assert page.locator(LENS).get_attribute("data-pending") == "0"
    grid = f"{LENS} canvas.mv-grid"
    cw = int(page.locator(grid).get_attribute("data-cell-w"))
    assert cw >= 26        # the cells keep their top-1 text: the grid scrolls instead of shrinking
    box = canvas_box(page, grid)
    assert 0 < box["cssW"] <= 1280 and box["w"] <= 16000, box      # the canvas covers the viewport only
    assert box["c0"] == 0 and 0 < box["c1"] < T, box
    check_labels(page, LENS, lens.token_strs, first=0)
    info = hover(page, LENS, "canvas.mv-grid", 3, 2, {"row": 3, "col": 2})
    assert info["top"] == lens.top_strs[3, 2, 0]

    # to the end: the last columns are drawn and labelled, the hover read-out is that cell's
    scroll_to(page, LENS)
    box = canvas_box(page, grid)
    assert box["c1"] == T and box["x0"] > 0 and box["cssW"] <= 1280, box
    check_labels(page, LENS, lens.token_strs, last=T - 1)
    for r, c in [(R - 1, T - 1), (0, T - 2), (6, T - 9)]:
        info = hover(page, LENS, "canvas.mv-grid", r, c, {"row": r, "col": c})
        assert info["top"] == lens.top_strs[r, c, 0], (r, c, info)
        assert float(info["prob"]) == pytest.approx(lens.top_probs[r, c, 0], abs=1e-3)
        assert info["text"].startswith(f"{lens.rows[r]} · token {c} ")
    # the cell drawn under the pointer is that cell's colour: p=top_prob (darker = more probable)
    page.screenshot(path=str(artifacts / "bare_logit_lens_2048_end.png"))

    # a click far right selects (layer, token); a token selected from Python scrolls into view
    page.evaluate("window.setlog.length = 0")
    cv = page.locator(grid)
    cv.click(position={"x": (T - 3 + 0.5) * cw - box["x0"], "y": 2.5 * 18})
    page.wait_for_selector(f"{LENS}[data-layer='2'][data-token='{T - 3}']")
    assert page.evaluate("[window.saved.at(-1).layer, window.saved.at(-1).token]") == [2, T - 3]
    assert page.locator(f"{LENS} .mv-collabel.mv-selected").get_attribute("data-index") == str(T - 3)
    v.token = 100
    push_bare(page, v, ["token"])
    page.wait_for_selector(f"{LENS}[data-token='100']")
    frames(page)
    left, width = page.evaluate(f"() => {{ const s = document.querySelector('{LENS} .mv-vscroll'); return [s.scrollLeft, s.clientWidth]; }}")
    assert left <= 100 * cw and 101 * cw <= left + width, (left, width)
    assert page.locator(f"{LENS} .mv-collabel.mv-selected").get_attribute("data-index") == "100"
    check_labels(page, LENS, lens.token_strs)
    info = hover(page, LENS, "canvas.mv-grid", 1, 100, {"row": 1, "col": 100})
    assert info["top"] == lens.top_strs[1, 100, 0]
    # a colour switch at the far end of the grid redraws only what is in view
    scroll_to(page, LENS, 40_000)
    page.select_option(f"{LENS} select.mv-color-by", "entropy")
    page.wait_for_selector(f'{LENS}[data-color-by="entropy"]')
    frames(page)

    worst = longest_task(page, t0)
    print(f"logit lens, {R} x {T}: longest main-thread task after the data arrived {worst:.0f} ms")
    assert worst < MAX_TASK_MS, worst
    assert page.mv_errors == []

    # data (with a selected token) arriving while the view is hidden: once shown, the canvas covers the
    # viewport (not all 2,048 columns) and the selected column is in view
    mount_bare(page, LogitLensView())
    page.evaluate("document.body.style.display = 'none'")
    v.token = 1500
    push_bare(page, v, list(v.get_state().keys()))
    page.wait_for_selector(f"{LENS}[data-ntokens='{T}']", state="attached")
    assert canvas_box(page, grid)["w"] <= 1280
    page.evaluate("document.body.style.display = ''")
    frames(page)
    left, width = page.evaluate(f"() => {{ const s = document.querySelector('{LENS} .mv-vscroll'); return [s.scrollLeft, s.clientWidth]; }}")
    assert left <= 1500 * cw and 1501 * cw <= left + width, (left, width)
    box = canvas_box(page, grid)
    assert box["cssW"] == width and box["c0"] <= 1500 < box["c1"], (box, width)
    assert page.locator(f"{LENS} .mv-collabel.mv-selected").get_attribute("data-index") == "1500"
    assert page.mv_errors == []


def features_2048():
    rng = np.random.default_rng(2)
    F, k = 14, 8
    acts = np.maximum(rng.normal(size=(T, F)), 0).astype(np.float32) * 2
    acts[T - 5, 3] = 20.0        # one bright cell far right
    vocab = np.array([f" v{i}" for i in range(60)], dtype=object)
    eff = rng.integers(0, 60, (F, 2, k))
    nxt = rng.integers(0, 60, (2, k))
    feats = list(range(1000, 1000 + F))
    tokens = [f" w{i}" for i in range(T)]
    s = summary(tokens, feats, acts, eff, vocab[eff], np.abs(rng.normal(size=(F, 2, k))), vocab[nxt],
                rng.random((2, k)), sae_label="resid_post.1 · relu")
    return s, tokens, feats, acts


def test_features_2048_tokens_responsive_readable(page, artifacts):
    from mechviz.widgets.features import FeatureView

    s, tokens, feats, acts = features_2048()
    F = len(feats)
    v = FeatureView()
    v.show(s, prompt="long")
    t0 = arrive(page, v)
    page.wait_for_selector(f"{FEAT}[data-ntokens='{T}'][data-nfeatures='{F}']")
    heat = f"{FEAT} canvas.mv-heat"
    box = canvas_box(page, heat)
    assert 0 < box["cssW"] <= 1280 and box["w"] <= 16000, box
    assert box["c0"] == 0 and 0 < box["c1"] < T, box
    check_labels(page, FEAT, tokens, first=0)

    scroll_to(page, FEAT)
    box = canvas_box(page, heat)
    assert box["c1"] == T and box["x0"] > 0, box
    check_labels(page, FEAT, tokens, last=T - 1)
    for r, c in [(3, T - 5), (F - 1, T - 1), (0, T - 20)]:
        info = hover(page, FEAT, "canvas.mv-heat", r, c, {"feature": feats[r], "col": c})
        assert float(info["value"]) == pytest.approx(acts[c, r], abs=5e-3 * max(1.0, float(acts[c, r])))
        assert f"token {c} \"{tokens[c]}\"" in info["text"]
    # the bright cell (20.0, the colour scale's top) is drawn where it is
    cell = int(page.locator(heat).get_attribute("data-cell"))
    px = page.evaluate("([sel, x, y]) => Array.from(document.querySelector(sel).getContext('2d').getImageData(x, y, 1, 1).data)",
                       [heat, int((T - 5 + 0.5) * cell - box["x0"]), int(3.5 * cell)])
    assert sum(px[:3]) < 450, px

    # click that cell: the feature and token are selected; the detail's token strip fills in chunks
    page.locator(heat).click(position={"x": (T - 5 + 0.5) * cell - box["x0"], "y": 3.5 * cell})
    page.wait_for_selector(f"{FEAT}[data-feature='{feats[3]}'][data-token='{T - 5}']")
    page.wait_for_selector(f"{FEAT} .mv-detail .mv-tokens[data-complete='true']")
    chips = page.locator(f"{FEAT} .mv-detail span.mv-token")
    assert chips.count() == T
    assert float(chips.nth(T - 5).get_attribute("data-act")) == pytest.approx(20.0, abs=0.05)
    # a token selected from Python scrolls into view
    v.token = 7
    push_bare(page, v, ["token"])
    page.wait_for_selector(f"{FEAT}[data-token='7']")
    frames(page)
    left = page.evaluate(f"() => document.querySelector('{FEAT} .mv-vscroll').scrollLeft")
    assert left <= 7 * cell, left
    assert page.locator(f"{FEAT} .mv-collabel.mv-selected").get_attribute("data-index") == "7"
    check_labels(page, FEAT, tokens)
    page.screenshot(path=str(artifacts / "bare_features_2048.png"))

    worst = longest_task(page, t0)
    print(f"features, {F} x {T}: longest main-thread task after the data arrived {worst:.0f} ms")
    assert worst < MAX_TASK_MS, worst
    assert page.mv_errors == []
