"""The circuit tools in a real JupyterLab (live kernel) and from the offline static export of the same
notebook: direct logit attribution, the induction-head detector, a mean-ablation grid, attention-pattern
patching, path patching and causal tracing, beside an attention view on one Lab.

Every check compares what the browser shows (hover read-outs, data-* attributes) with the same analysis
computed here, in the test process, on the bundled model. Live: the exact patching values stream in
after the attribution estimate; typing a prompt recomputes the DLA grid; a click on a head in the DLA or
detector grid selects that head in the attention view of another cell (and in the kernel's selection).
Static: the same numbers with no kernel and no network, and the head-grid -> attention link still works.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from playwright.sync_api import expect

from mvbrowser import (click_grid, hover_cell, hover_grid, kernel_until, need_node_modules, route_offline, titled,
                       wait_notebook, write_cells)

pytestmark = pytest.mark.browser

PROMPT = "The cat sat on the mat. The cat sat on"
TYPED = "The dog sat on the rug. The dog sat on"
ANSWER, WRONG = " the", " a"
REFS = ["The dog sat on the rug. The dog sat on", "A bird sat on the tree. A bird sat on"]  # the prompt's length
CLEAN, CORRUPT = "The cat sat on the mat. The cat", "The dog sat on the mat. The dog"
PAIR_ANSWERS = (" sat", " the")
RECEIVER = ("k", 2, 0)
CT_PROMPT, CT_SUBJECT = "The New York Yankees played in New", "New York Yankees"
B_PROMPT, B_TYPED = REFS[1], "The cat sat on the rug. The cat sat on"   # prompt B (compare): A's length

CELLS = [
    "import mechviz",
    f"lab = mechviz.Lab.default(prompt={PROMPT!r})\nlab.show(lab.attention())",
    f'dla = lab.add(mechviz.HeadGridView(title="DLA"), answer={ANSWER!r}, wrong={WRONG!r})\ndla',
    'ind = lab.add(mechviz.HeadGridView(title="Induction"), detector="induction")\nind',
    # the patching grids stream exact values from a worker thread onto the kernel's loop: the cell shows
    # the grid at once and awaits the end (so an executed notebook saves the finished grid)
    f"""abl = lab.patching({PROMPT!r}, site="z", by="head", ablate="mean", reference={REFS!r},
                   answers=({ANSWER!r}, {WRONG!r}))
display(abl)
_ = await abl.finished()""",
    f"""pat = lab.patching({CLEAN!r}, {CORRUPT!r}, site="attn_pattern", by="head", answers={PAIR_ANSWERS!r},
                   title="Pattern patching")
display(pat)
_ = await pat.finished()""",
    f"""path = lab.add(mechviz.HeadGridView(title="Path patching"),
               path=dict(clean={CLEAN!r}, corrupted={CORRUPT!r}, receivers=[{RECEIVER!r}], answers={PAIR_ANSWERS!r}))
path""",
    f"""trace_view = lab.patching({CT_PROMPT!r}, trace=dict(subject={CT_SUBJECT!r}, window=3, samples=3))
display(trace_view)
_ = await trace_view.finished()""",
    f"cmp = mechviz.Compare(lab, {B_PROMPT!r})\ncmp.side_by_side(mechviz.AttentionView)",
    "diff = cmp.difference(mechviz.AttentionView)\ndiff",
]

BOX = ".mechviz-prompt"




ATT = titled("mechviz-attention", "Attention")
ATT_A, ATT_B, DIFF = (titled("mechviz-attention", t) for t in ("A · Attention", "B · Attention", "A − B · Attention"))


DLA, IND, PATH = (titled("mechviz-head-grid", t) for t in ("DLA", "Induction", "Path patching"))
ABL, PAT, TRACE = (titled("mechviz-patch-grid", t) for t in ("Mean ablation", "Pattern patching",
                                                              "Causal trace (hidden states)"))
GRIDS = (DLA, IND, PATH, ABL, PAT, TRACE)


# --- reference numbers, computed here with the same functions on the same model ----------------------

_REF: dict = {}


def _model():
    if "model" not in _REF:
        from mechviz import pin_threads
        from mechviz.models import wrap
        from mechviz.zoo import load_default_model

        pin_threads()
        _REF["model"] = wrap(*load_default_model())
    return _REF["model"]


def ref_dla(prompt: str):
    from mechviz.analysis import dla as D

    key = ("dla", prompt)
    if key not in _REF:
        m = _model()
        run = m.run(prompt, capture=D.needs(m.n_layers, by_source=True))
        _REF[key] = D.direct_logit_attribution(m, run, ANSWER, WRONG, by_source=True)
    return _REF[key]


def ref_all() -> dict:
    """What each view of the notebook shows, computed here: the DLA, the induction scores, the ablation,
    pattern-patching and path-patching grids and the causal trace (and its PatchGrid), as the kernel does."""
    if "all" in _REF:
        return _REF["all"]
    from mechviz.analysis import ablation as A, heads as Hd, patching as P
    from mechviz.analysis.causal_tracing import causal_trace
    from mechviz.analysis.path_patching import path_patching

    m = _model()
    ind = Hd.head_scores(m, "induction")
    pair = A.ablation_pair(m, PROMPT, "z", "head", "mean", REFS, None, (ANSWER, WRONG))
    abl = P.activation_patching(pair, site="z", by="head", direction="noise")
    pat = P.activation_patching(m, CLEAN, CORRUPT, site="attn_pattern", by="head", answers=PAIR_ANSWERS)
    path = path_patching(m, CLEAN, CORRUPT, receivers=[RECEIVER], answers=PAIR_ANSWERS)
    trace = causal_trace(m, CT_PROMPT, CT_SUBJECT, window=3, samples=3)
    _REF["all"] = {"dla": ref_dla(PROMPT), "ind": ind, "abl": abl, "pat": pat, "path": path, "trace": trace,
                   "trace_grid": trace.grid()}
    return _REF["all"]


# --- checks shared by the live and the static page -----------------------------------------------

def _hover_value(page, root, r, c):
    return hover_grid(page, root, "canvas.mv-grid", r, c)["value"]


def check_dla(page, d, prompt):
    L, H = d.heads.shape
    root = page.locator(DLA)
    assert (root.get_attribute("data-rows"), root.get_attribute("data-cols")) == (str(L), str(H + 2))
    assert page.locator(f"{DLA} .mv-prompt").text_content() == f"prompt: {prompt}"
    hi = tuple(int(i) for i in np.unravel_index(np.abs(d.heads).argmax(), d.heads.shape))
    for layer, head in [hi, (0, 0), (L - 1, H - 1), (1, 2)]:
        info = hover_grid(page, DLA, "canvas.mv-grid", layer, head)
        assert info["text"].startswith(f"L{layer}H{head} · ")
        assert float(info["value"]) == pytest.approx(float(d.heads[layer, head]), abs=1e-4), (prompt, layer, head)
    for col, part in ((H, d.attn), (H + 1, d.mlp)):   # the attention block and MLP columns
        assert float(_hover_value(page, DLA, L - 1, col)) == pytest.approx(float(part[L - 1]), abs=1e-4)
    terms = {e["label"]: float(e["value"]) for e in page.locator(f"{DLA} .mv-term").evaluate_all(
        "els => els.map(e => ({...e.dataset}))")}
    assert terms["total"] == pytest.approx(float(d.total), abs=1e-4)
    assert terms["embed"] == pytest.approx(float(d.embed), abs=1e-4)


def check_induction(page, s):
    """Every head's score, and head 2.0 the best induction head (as the analysis says)."""
    L, H = s.scores.shape
    shown = np.array([[float(_hover_value(page, IND, r, c)) for c in range(H)] for r in range(L)])
    np.testing.assert_allclose(shown, s.scores, atol=1e-4)
    assert s.top(1) == [(2, 0)]
    assert np.unravel_index(int(np.argmax(shown)), shown.shape) == (2, 0)


def check_patch_grid(page, root, grid):
    """A finished patching grid: shape, labels, status, and the exact values of its largest, smallest and
    a few other cells (value and normalised value, as printed)."""
    mat, rows, cols = grid.matrix()
    norm_mat = grid.matrix(np.asarray(grid.normalized(), float))[0]
    el = page.locator(root)
    assert (el.get_attribute("data-rows"), el.get_attribute("data-cols")) == (str(mat.shape[0]), str(mat.shape[1]))
    assert el.get_attribute("data-status") == "done"
    assert el.get_attribute("data-exact") == str(mat.size) and el.get_attribute("data-estimated") == "0"
    assert page.locator(f"{root} .mv-rowlabel").all_text_contents() == rows
    assert page.locator(f"{root} .mv-collabel").evaluate_all("els => els.map(e => e.title)") == cols
    probes = [np.unravel_index(int(np.nanargmax(norm_mat)), mat.shape),
              np.unravel_index(int(np.nanargmin(norm_mat)), mat.shape),
              (0, 0), (mat.shape[0] - 1, mat.shape[1] - 1), (mat.shape[0] // 2, mat.shape[1] // 2)]
    for r, c in probes:
        info = hover_grid(page, root, "canvas.mv-grid", int(r), int(c))
        assert info["exact"] == "true", (root, r, c, info)
        assert float(info["value"]) == pytest.approx(float(mat[r, c]), abs=1e-4), (root, r, c, info)
        assert float(info["norm"]) == pytest.approx(float(norm_mat[r, c]), abs=1e-4), (root, r, c, info)


def check_path(page, g):
    vals = g.by_head(0, g.normalized())
    L, H = vals.shape
    terms = {e["label"]: float(e["value"]) for e in page.locator(f"{PATH} .mv-term").evaluate_all(
        "els => els.map(e => ({...e.dataset}))")}
    assert terms == pytest.approx({"clean metric": g.clean_metric, "corrupted metric": g.corrupted_metric}, abs=1e-4)
    senders = [(int(a), int(b)) for a, b in zip(*np.nonzero(np.isfinite(vals)))]
    top = g.top(0, k=1)[0]
    for layer, head in {top, senders[0], senders[-1]}:
        assert float(_hover_value(page, PATH, layer, head)) == pytest.approx(float(vals[layer, head]), abs=1e-4)
    # a head at or above the receiver's layer sends nothing to it: no value
    assert _hover_value(page, PATH, L - 1, H - 1) == "n/a" and not np.isfinite(vals[L - 1, H - 1])


def patterns(prompt: str) -> np.ndarray:
    key = ("pattern", prompt)
    if key not in _REF:
        m = _model()
        sites = [f"attn_pattern.{layer}" for layer in range(m.n_layers)]
        run = m.run(prompt, capture=sites)
        _REF[key] = np.stack([run[s].numpy() for s in sites])
    return _REF[key]


def check_compare(page, a: str, b: str):
    """Compare mode: A's and B's attention side by side, and A - B drawn signed with the model's numbers at
    the selected head."""
    from mechviz.widgets.base import ab_prompt

    assert page.locator(ATT_A).get_attribute("data-prompt") == a
    assert page.locator(ATT_B).get_attribute("data-prompt") == b
    el = page.locator(DIFF)
    assert el.get_attribute("data-prompt") == ab_prompt(a, b) and el.get_attribute("data-signed") == "true"
    layer, head = int(el.get_attribute("data-layer")), int(el.get_attribute("data-head"))
    diff = patterns(a)[layer, head] - patterns(b)[layer, head]
    lo = np.unravel_index(int(np.argmin(diff)), diff.shape)
    for i, j in {tuple(int(x) for x in lo), (len(diff) - 1, 1), (3, 2)}:
        page.mouse.move(0, 0)
        assert hover_cell(page, i, j, root=DIFF)["value"] == pytest.approx(float(diff[i, j]), abs=0.5 / 127 + 5e-4)


def check_all_grids(page, ref):
    check_dla(page, ref["dla"], PROMPT)
    check_induction(page, ref["ind"])
    check_patch_grid(page, ABL, ref["abl"])
    check_patch_grid(page, PAT, ref["pat"])
    check_path(page, ref["path"])
    check_patch_grid(page, TRACE, ref["trace_grid"])
    # the causal trace: its column labels (checked above) star the subject's tokens; its clean and
    # corrupted probabilities are the grid's two metrics
    trace = ref["trace"]
    starred = page.locator(f"{TRACE} .mv-collabel").evaluate_all("els => els.map(e => e.title.endsWith(\"*'\"))")
    assert [i for i, x in enumerate(starred) if x] == trace.subject
    sub = page.locator(f"{TRACE} .mv-subtitle").text_content()
    assert f"clean {trace.high:.3f}, corrupted {trace.low:.3f}" in sub, sub
    check_compare(page, PROMPT, B_PROMPT)


def _click_head(page, root, layer, head):
    click_grid(page, root, "canvas.mv-grid", layer, head)
    page.wait_for_selector(f'{root}[data-layer="{layer}"][data-head="{head}"]', timeout=10_000)
    page.wait_for_selector(f'{ATT}[data-layer="{layer}"][data-head="{head}"]', timeout=10_000)
    assert page.locator(f"{ATT} select.mv-layer").input_value() == str(layer)


# --- live: JupyterLab with a kernel --------------------------------------------------------------







# every widget state update the kernel sends that carries a patching grid's status, title or progress,
# in order, per model (comm id): the estimate, then the exact values streaming in
WATCH_GRIDS = """() => {
  window.__gridlog = [];
  const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  k.iopubMessage.connect((_, msg) => {
    const t = msg.header.msg_type;
    if (t !== 'comm_open' && t !== 'comm_msg') return;
    const st = msg.content.data?.state;
    if (!st || !['status', 'done', 'title'].some((n) => n in st)) return;
    window.__gridlog.push({comm: msg.content.comm_id, status: st.status, done: st.done, total: st.total,
                           title: st.title, values: 'values' in st});
  });
}"""


@pytest.fixture
def circuits_lab(jupyter_lab, page):
    url, token, root = jupyter_lab
    name = "circuits.ipynb"
    write_cells(root / name, CELLS)
    offline = route_offline(page.context, serve_cdn=False, local_prefixes=(url, url.replace("http", "ws", 1)))
    t0 = time.monotonic()
    page.goto(f"{url}/lab/tree/{name}?token={token}")
    wait_notebook(page, name)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
    page.evaluate(WATCH_GRIDS)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        for sel in GRIDS:
            page.wait_for_selector(f"{sel}[data-rows]:not([data-rows='0'])", timeout=120_000)
        page.wait_for_selector(f"{ATT}[data-prompt={json.dumps(PROMPT)}]", timeout=30_000)
        for sel in (ABL, PAT, TRACE):
            page.wait_for_selector(f'{sel}[data-status="done"]', timeout=60_000)
        page.wait_for_selector(f'{DIFF}[data-signed="true"]', timeout=30_000)
    except Exception:
        page.screenshot(path=str(root.parent / "circuits_timeout.png"), full_page=True)
        raise
    print(f"lab open + run + every circuit view drawn: {time.monotonic() - t0:.1f}s")
    yield page
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session?.shutdown()")
    assert offline["aborted"] == [], f"JupyterLab tried the network: {offline['aborted']}"


def test_circuit_views_live(circuits_lab, artifacts):
    page = circuits_lab
    ref = ref_all()
    t0 = time.monotonic()
    # (1) every view shows the analysis numbers computed here
    check_all_grids(page, ref)
    print(f"values checked: {time.monotonic() - t0:.1f}s")
    page.locator(".jp-Notebook:visible").first.screenshot(path=str(artifacts / "lab_circuits.png"))

    # (2) the patching grids got the attribution estimate first, then the exact values streamed in
    streams = {}
    for m in page.evaluate("window.__gridlog"):
        streams.setdefault(m["comm"], []).append(m)
    for title, grid in (("Mean ablation", ref["abl"]), ("Pattern patching", ref["pat"])):
        seen = [s for s in streams.values() if any(m.get("title") == title for m in s)]
        assert len(seen) == 1, (title, streams)
        status = [m["status"] for m in seen[0] if m.get("status") is not None]
        done = [m["done"] for m in seen[0] if m.get("done") is not None]
        n = grid.matrix()[0].size
        # the estimate shows at once (no exact cell), then running, then done with every cell exact
        assert status.index("estimate") < status.index("running") < len(status) - 1 and status[-1] == "done", status
        assert done == sorted(done) and done[-1] == n and 0 in done, done

    # (3) a clicked ablation cell is answered by the kernel with that ablated run: its metric = the cell
    abl = ref["abl"]
    mat = abl.matrix()[0]
    r, c = (int(i) for i in np.unravel_index(int(np.nanargmax(abl.matrix(abl.normalized())[0])), mat.shape))
    click_grid(page, ABL, "canvas.mv-grid", r, c)
    page.wait_for_selector(f'{ABL} .mv-detail[data-cell="{r},{c}"]', timeout=30_000)
    metric = page.locator(f"{ABL} .mv-detail-metric")
    assert float(metric.get_attribute("data-value")) == pytest.approx(float(mat[r, c]), abs=1e-4)

    # (4) a head clicked in the DLA grid, then in the detector grid, opens in the attention view (cell 2),
    # the other head grids follow (one shared selection), and so does the kernel's lab.selection
    d = ref["dla"]
    hl, hh = (int(i) for i in np.unravel_index(np.abs(d.heads).argmax(), d.heads.shape))
    _click_head(page, DLA, hl, hh)
    page.wait_for_selector(f'{IND}[data-layer="{hl}"][data-head="{hh}"]', timeout=10_000)
    out = kernel_until(page, "print(lab.selection.layer, lab.selection.head)", f"{hl} {hh}")
    assert out.split() == [str(hl), str(hh)], out
    il, ih = ref["ind"].top(1)[0]
    _click_head(page, IND, il, ih)
    page.wait_for_selector(f'{DLA}[data-layer="{il}"][data-head="{ih}"]', timeout=10_000)
    page.wait_for_selector(f'{PATH}[data-layer="{il}"][data-head="{ih}"]', timeout=10_000)
    out = kernel_until(page, "print(lab.selection.layer, lab.selection.head, ind.layer, ind.head)",
                       f"{il} {ih} {il} {ih}")
    assert out.split() == [str(il), str(ih)] * 2, out

    # (5) typing a new prompt recomputes the DLA grid: its values are the new prompt's
    new = ref_dla(TYPED)
    assert not np.allclose(new.heads, d.heads, atol=1e-3)   # a prompt that changes the numbers
    box = page.locator(f"{BOX} textarea.mv-prompt-input").first
    box.fill("")
    t1 = time.monotonic()
    box.press_sequentially(TYPED, delay=15)
    page.wait_for_selector(f"{ATT}[data-prompt={json.dumps(TYPED)}]", timeout=60_000)
    expect(page.locator(f"{DLA} .mv-prompt")).to_have_text(f"prompt: {TYPED}", timeout=60_000)
    print(f"typed prompt -> DLA grid updated in {time.monotonic() - t1:.1f}s")
    page.mouse.move(0, 0)
    check_dla(page, new, TYPED)
    # views with their own inputs (detector, patching grids, path patching) keep them
    check_induction(page, ref["ind"])
    assert float(_hover_value(page, ABL, r, c)) == pytest.approx(float(mat[r, c]), abs=1e-4)
    page.locator(".jp-Notebook:visible").first.screenshot(path=str(artifacts / "lab_circuits_typed.png"))

    # (6) compare mode: the difference followed A's edit; typing into B's box (the last prompt box, in
    # the compare cell) updates B's view and the difference
    page.wait_for_selector(f'{DIFF}[data-prompt*={json.dumps(TYPED)}]', timeout=30_000)
    b_box = page.locator(f"{BOX} textarea.mv-prompt-input").last
    b_box.fill("")
    b_box.press_sequentially(B_TYPED, delay=15)
    page.wait_for_selector(f"{ATT_B}[data-prompt={json.dumps(B_TYPED)}]", timeout=60_000)
    page.wait_for_selector(f'{DIFF}[data-prompt*={json.dumps(repr(B_TYPED))}]', timeout=60_000)
    check_compare(page, TYPED, B_TYPED)

    # (7) a clicked causal-trace cell is answered with that restored run: its target probability = the cell
    tr = ref["trace"]
    r, c = (int(i) for i in np.unravel_index(int(np.argmax(tr.values)), tr.values.shape))
    click_grid(page, TRACE, "canvas.mv-grid", r, c)
    page.wait_for_selector(f'{TRACE} .mv-detail[data-cell="{r},{c}"]', timeout=30_000)
    assert float(page.locator(f"{TRACE} .mv-detail-metric").get_attribute("data-value")) == pytest.approx(
        float(tr.values[r, c]), abs=1e-4)
    assert page.locator(f"{TRACE} .mv-detail-next li").first.text_content() == tr.target_str
    assert page.mv_errors == []


# --- static: the executed notebook exported to one HTML file, opened with no kernel and no network ---

LOCAL = ("file://", "data:", "blob:", "about:")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mechviz.export import export_html

    need_node_modules()
    d = tmp_path_factory.mktemp("export_circuits")
    nb = write_cells(d / "circuits.ipynb", CELLS)
    t0 = time.monotonic()
    html = export_html(nb, d / "circuits.html", inline_assets=True, timeout=300, executed_path=d / "executed.ipynb")
    print(f"export (execute + convert + inline): {time.monotonic() - t0:.1f}s")
    return html


def test_circuit_views_static_export(page, exported, artifacts):
    ref = ref_all()
    log = route_offline(page.context, serve_cdn=False, local_prefixes=LOCAL)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(exported.resolve().as_uri())
    page.wait_for_selector(f"{ATT}[data-prompt={json.dumps(PROMPT)}]", timeout=30_000)
    for sel in GRIDS:
        page.wait_for_selector(f"{sel}[data-rows]:not([data-rows='0'])", timeout=30_000)
    assert log["aborted"] == [], log
    assert [u for u in requests if not u.startswith(LOCAL)] == []

    # the same numbers as live, from saved state alone
    check_all_grids(page, ref)
    for sel in (ABL, PAT):
        assert not page.locator(f"{sel} button.mv-cancel").is_visible()
    page.screenshot(path=str(artifacts / "static_circuits.png"), full_page=True)

    # linked selection with no kernel: a head in the DLA grid, then in the detector grid, opens in the
    # attention view (the jslinks through the Lab's Selection are part of the saved state)
    d = ref["dla"]
    hl, hh = (int(i) for i in np.unravel_index(np.abs(d.heads).argmax(), d.heads.shape))
    _click_head(page, DLA, hl, hh)
    page.wait_for_selector(f'{IND}[data-layer="{hl}"][data-head="{hh}"]', timeout=5_000)
    il, ih = ref["ind"].top(1)[0]
    _click_head(page, IND, il, ih)
    page.wait_for_selector(f'{DLA}[data-layer="{il}"][data-head="{ih}"]', timeout=5_000)
    page.screenshot(path=str(artifacts / "static_circuits_linked.png"), full_page=True)
    assert page.mv_errors == []
