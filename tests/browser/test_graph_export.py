"""The attribution graph in a static export: a notebook computes a graph, labels, groups and pins nodes and runs an
intervention from Python; the exported page draws the saved subgraph with no kernel and no network, keeps the
labels (as text), the supernode box, the pin and the intervention's answer, and a hovered node lists its edges
from the saved edge table."""

from __future__ import annotations

import json

import nbformat
import pytest

from mvbrowser import need_node_modules, route_offline, write_cells

pytestmark = pytest.mark.browser
ROOT = ".mechviz-graph"
LOCAL = ("file://", "data:", "blob:", "about:")
HOSTILE = "<img src=x onerror=window.__pwned=1> book reader"
CELLS = [
    "import asyncio, mechviz, torch\ntorch.set_num_threads(2)\n"
    "from mechviz.widgets.graph_payload import node_key\n"
    "lab = mechviz.Lab.default(prompt=' house fire world book voice light night house fire world', sae='all')\n"
    "view = lab.add(mechviz.GraphView(), max_features=300)\n_ = await view.finished()",
    "keys = [node_key(view.result.nodes[i]) for i in view.node_index]\n"
    "feats = [k for k in keys if k.startswith('f:0:4:')][:2]\n"
    f"view.labels = {{feats[0]: {HOSTILE!r}}}\n"
    "view.groups = [{'name': 'book readers', 'members': feats}]\n"
    "view.pinned = [feats[0]]\n"
    "view.intervention_request = {'edits': {feats[0]: 0.0}, 'id': 1}\n"
    "while not view.intervention_result:\n    await asyncio.sleep(0.05)\n"
    "print(feats)\nview",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mechviz.export import export_html

    need_node_modules()
    d = tmp_path_factory.mktemp("graph_export")
    nb = write_cells(d / "graph.ipynb", CELLS)
    html = export_html(nb, d / "graph.html", inline_assets=True, timeout=300, executed_path=d / "executed.ipynb")
    executed = nbformat.read(str(d / "executed.ipynb"), as_version=4)
    state = executed.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    (saved,) = [m["state"] for m in state.values() if m["state"].get("_anywidget_id") == "mechviz.widgets.graph.GraphView"]
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    return html, saved, json.loads(printed.strip().splitlines()[-1].replace("'", '"'))


def test_graph_export_renders_offline(page, exported, artifacts):
    html, saved, feats = exported
    log = route_offline(page.context, serve_cdn=False, local_prefixes=LOCAL)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.resolve().as_uri())
    page.wait_for_selector(f'{ROOT}[data-status="ready"]', timeout=30_000)
    assert log["aborted"] == [] and [u for u in requests if not u.startswith(LOCAL)] == []

    n, e = saved["node_kind"]["shape"][0], saved["edge_src"]["shape"][0]
    assert saved["status"] == "ready" and n > 10 and e > 20
    assert page.locator(f"{ROOT} .mv-node").count() == n and page.locator(f"{ROOT} .mv-edge").count() == e
    # what was set from Python is widget state: the label (as text), the supernode box, the pin
    assert saved["labels"] == {feats[0]: HOSTILE} and saved["pinned"] == [feats[0]]
    assert page.locator(f"{ROOT} text.mv-user-label").all_text_contents() == [HOSTILE]
    assert page.locator(f"{ROOT} img").count() == 0 and page.evaluate("window.__pwned") is None
    assert page.locator(f"{ROOT} rect.mv-group").count() == 1
    assert page.locator(f"{ROOT} text.mv-group-name").all_text_contents() == ["book readers"]
    assert page.locator(f'{ROOT} .mv-node.mv-pinned[data-key="{feats[0]}"]').count() == 1
    # the intervention's answer, as the kernel gave it: attention frozen and recomputed side by side
    iv = saved["intervention_result"]
    assert iv["edits"] == {feats[0]: 0.0} and iv["frozen"] and iv["unfrozen"]
    page.wait_for_selector(f"{ROOT} .mv-intervention")
    for cls in ("mv-base", "mv-frozen", "mv-unfrozen"):
        shown = page.locator(f"{ROOT} .{cls} li").all_text_contents()
        assert len(shown) == len(iv[cls[3:]]) and iv[cls[3:]][0][0] in shown[0], (cls, shown, iv[cls[3:]][:2])
    # hover: a logit node's incoming edges come from the saved edge table (no kernel)
    logit = page.locator(f"{ROOT} .mv-node.mv-k3").first
    key = logit.get_attribute("data-key")
    logit.dispatch_event("mouseenter")
    page.wait_for_selector(f'{ROOT} .mv-detail[data-key="{key}"]')
    assert page.locator(f"{ROOT} ol.mv-in li").count() > 0
    page.screenshot(path=str(artifacts / "static_graph.png"), full_page=True)
    assert page.mv_errors == []
