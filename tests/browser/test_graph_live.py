"""GraphView in a real JupyterLab, on one Lab with a feature view and an attention view: the graph is computed in
the kernel's worker and drawn; a clicked feature gets its output tokens from the kernel and becomes the Lab's
selected feature (the feature view follows); an edge click selects the head that carries it (the attention view
follows); a threshold move is re-pruned by the kernel; typing a prompt recomputes the graph."""

from __future__ import annotations

import json

import pytest

from mvbrowser import kernel_until, route_offline, wait_notebook, write_cells

pytestmark = pytest.mark.browser
ROOT, FEAT, ATT, BOX = ".mechviz-graph", ".mechviz-features", ".mechviz-attention", ".mechviz-prompt"
PROMPT = "John gave a drink to"
CELLS = [
    "import mechviz, torch\ntorch.set_num_threads(2)\nfrom mechviz.widgets import GraphView\n"
    f"lab = mechviz.Lab.default(prompt={PROMPT!r}, sae='all')\nlab.show(lab.features())",
    "lab.attention()",
    "graph = lab.add(GraphView(), max_features=60)\ngraph",
]


def test_graph_live(jupyter_lab, page, artifacts):
    url, token, root = jupyter_lab
    write_cells(root / "graph.ipynb", CELLS)
    offline = route_offline(page.context, serve_cdn=False, local_prefixes=(url, url.replace("http", "ws", 1)))
    page.goto(f"{url}/lab/tree/graph.ipynb?token={token}")
    wait_notebook(page, "graph.ipynb")
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_selector(f'{ROOT}[data-status="ready"][data-prompt={json.dumps(PROMPT)}]', timeout=120_000)
    n = int(page.locator(ROOT).get_attribute("data-nodes"))
    assert n == page.locator(f"{ROOT} .mv-node").count() > 0
    assert kernel_until(page, "print(len(graph.node_kind), graph.status)", f"{n} ready") == f"{n} ready"

    # a feature click: its output tokens come from the kernel; the Lab (and its feature view) select it
    node = page.locator(f"{ROOT} .mv-node.mv-k0").first
    key = node.get_attribute("data-key")
    layer, feature = key.split(":")[1], key.split(":")[3]
    node.click()
    page.wait_for_selector(f"{ROOT} ol.mv-top-tokens li", timeout=20_000)
    want = f"mlp_in.{layer} -> mlp_out.{layer} {feature}"
    assert kernel_until(page, "print(lab.selection.dictionary, lab.selection.feature)", want) == want
    page.wait_for_selector(f'{FEAT}[data-feature="{feature}"]', timeout=20_000)
    first = page.locator(f"{ROOT} ol.mv-top-tokens li").first.get_attribute("data-value")
    assert kernel_until(page, "print(f\"{graph.detail['top_tokens'][0][1]:.4f}\")", first) == first

    # an edge across positions: the kernel splits it by head and selects the largest share (attention follows)
    cross = page.evaluate("""() => {
        const nodes = [...document.querySelectorAll('.mechviz-graph .mv-node')];
        const pos = (el) => { const k = el.dataset.key.split(':'); return k[0] === 't' ? +k[1] : k[0] === 'l' ? -1 : +k[2]; };
        const lines = [...document.querySelectorAll('.mechviz-graph line.mv-edge')];
        const l = lines.find((l) => pos(nodes[+l.dataset.src]) !== pos(nodes[+l.dataset.dst]) && pos(nodes[+l.dataset.dst]) >= 0);
        return l ? +l.dataset.edge : -1; }""")
    assert cross >= 0
    page.locator(f'{ROOT} line.mv-edge[data-edge="{cross}"]').dispatch_event("click")
    page.wait_for_selector(f"{ROOT} ol.mv-heads li", timeout=20_000)
    head = page.locator(f"{ROOT} ol.mv-heads li").first
    lh = f"{head.get_attribute('data-layer')} {head.get_attribute('data-head')}"
    assert kernel_until(page, "print(lab.selection.layer, lab.selection.head)", lh) == lh
    page.wait_for_selector(f'{ATT}[data-layer="{lh.split()[0]}"][data-head="{lh.split()[1]}"]', timeout=20_000)

    # a threshold move: re-pruned in the kernel (fewer nodes at 0.5)
    page.locator(f"{ROOT} input.mv-node_threshold").fill("0.5")
    page.locator(f"{ROOT} input.mv-node_threshold").dispatch_event("change")
    page.wait_for_function(f"(n) => +document.querySelector('{ROOT}').dataset.nodes < n", arg=n, timeout=20_000)
    assert kernel_until(page, "print(graph.node_threshold)", "0.5") == "0.5"

    # typing a prompt: the graph follows
    new = "The cat sat on"
    box = page.locator(f"{BOX} textarea.mv-prompt-input")
    box.fill("")
    box.press_sequentially(new, delay=15)
    page.wait_for_selector(f'{ROOT}[data-status="ready"][data-prompt={json.dumps(new)}]', timeout=60_000)
    page.locator(".jp-Notebook:visible").first.screenshot(path=str(artifacts / "lab_graph.png"))
    assert page.mv_errors == []
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session?.shutdown()")
    assert offline["aborted"] == [], f"JupyterLab tried the network: {offline['aborted']}"
