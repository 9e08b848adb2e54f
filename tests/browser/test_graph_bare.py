"""GraphView in a bare page, from a real Lab's state: as many nodes and edges drawn as sent, a hovered node's
incoming and outgoing edges with Python's values, untrusted token strings as text, and pins, labels, groups
and threshold moves made in the browser reaching the model's state (which the kernel then re-prunes)."""

from __future__ import annotations

import numpy as np
import pytest

from mvbrowser import mount_bare

pytestmark = pytest.mark.browser
ROOT = ".mechviz-graph"
HOSTILE = "<img src=x onerror=\"window.__pwned=1\">"


@pytest.fixture(scope="module")
def view():
    import torch

    import mechviz
    from mechviz.widgets import GraphView

    torch.set_num_threads(2)
    lab = mechviz.Lab.default(prompt="John gave a drink to", sae="all")
    lab._loop = None   # built inside Playwright's loop: compute here, as a script does
    v = lab.add(GraphView(), max_features=60)
    tokens = list(v.tokens)
    tokens[2] = HOSTILE
    v.tokens = tokens
    v.strings = [HOSTILE if s == v.strings[v.logit_token[-1]] else s for s in v.strings]
    return v


def keys(v) -> list[str]:
    from mechviz.widgets.graph_payload import node_key

    return [node_key(v.result.nodes[i]) for i in v.node_index]


def test_nodes_edges_hover_and_text(page, view):
    v = view
    mount_bare(page, v)
    page.wait_for_selector(f"{ROOT}[data-nodes]")
    N, E = len(v.node_kind), len(v.edge_src)
    assert N > 10 and E > 20
    root = page.locator(ROOT)
    assert (root.get_attribute("data-nodes"), root.get_attribute("data-edges")) == (str(N), str(E))
    assert page.locator(f"{ROOT} .mv-node").count() == N and page.locator(f"{ROOT} .mv-edge").count() == E
    assert page.locator(f"{ROOT} .mv-node.mv-k1").count() == int((v.node_kind == 1).sum())   # errors: squares
    K = keys(v)
    assert page.locator(f"{ROOT} .mv-node").evaluate_all("els => els.map(e => e.dataset.key)") == K
    # the node with the most edges: its panel lists its top incoming / outgoing edges with Python's values
    deg = np.bincount(v.edge_src, minlength=N) + np.bincount(v.edge_dst, minlength=N)
    for i in [int(np.argmax(deg)), int(np.flatnonzero(v.node_kind == 3)[0])]:
        page.locator(f'{ROOT} .mv-node[data-key="{K[i]}"]').dispatch_event("mouseenter")
        page.wait_for_selector(f'{ROOT} .mv-detail[data-key="{K[i]}"]')
        for cls, mine, other in (("mv-in", v.edge_dst, v.edge_src), ("mv-out", v.edge_src, v.edge_dst)):
            es = np.flatnonzero(mine == i)
            w = v.edge_weight[es].astype(np.float16).astype(np.float64)
            order = np.argsort(-np.abs(w), kind="stable")[:10]
            want = [(K[other[es[o]]], f"{w[o]:.4f}") for o in order]
            got = page.locator(f"{ROOT} ol.{cls} li").evaluate_all("els => els.map(e => [e.dataset.key, e.dataset.value])")
            assert [tuple(g) for g in got] == want
            assert len(want) == min(10, len(es))
        assert len(want) > 0 or i != int(np.argmax(deg))
    # untrusted strings (a prompt token, a logit token) are text
    tok = page.locator(f'{ROOT} text.mv-tok[data-pos="2"] title')
    assert tok.text_content() == HOSTILE
    assert page.locator(f"{ROOT} img").count() == 0 and page.evaluate("window.__pwned") is None
    assert page.mv_errors == []


def test_pins_labels_groups_and_thresholds_reach_the_model(page, view):
    v = view
    mount_bare(page, v)
    page.wait_for_selector(f"{ROOT}[data-nodes]")
    K = keys(v)
    feats = [K[i] for i in np.flatnonzero(v.node_kind == 0)[:2]]
    page.locator(f'{ROOT} .mv-node[data-key="{feats[0]}"]').click()
    page.wait_for_selector(f'{ROOT} .mv-detail[data-key="{feats[0]}"]')
    assert page.evaluate("window.saved.at(-1).detail_request.key") == feats[0]   # a feature click asks the kernel
    page.locator(f"{ROOT} .mv-pin").click()
    assert page.evaluate("window.saved.at(-1).pinned") == [feats[0]]
    page.locator(f"{ROOT} .mv-label-input").fill("says <b>name</b>")
    page.locator(f"{ROOT} .mv-label-set").click()
    assert page.evaluate("window.saved.at(-1).labels") == {feats[0]: "says <b>name</b>"}
    page.wait_for_selector(f"{ROOT} text.mv-user-label")
    assert page.locator(f"{ROOT} text.mv-user-label").text_content() == "says <b>name</b>"
    assert page.locator(f"{ROOT} b").count() == 0
    for k in feats:
        page.locator(f'{ROOT} .mv-node[data-key="{k}"]').click(modifiers=["Shift"])
    page.locator(f"{ROOT} .mv-group-name-input").fill("mover")
    page.locator(f"{ROOT} .mv-group-go").click()
    assert page.evaluate("window.saved.at(-1).groups") == [{"name": "mover", "members": feats}]
    page.wait_for_selector(f"{ROOT} rect.mv-group")
    page.locator(f"{ROOT} input.mv-node_threshold").fill("0.5")
    page.locator(f"{ROOT} input.mv-node_threshold").dispatch_event("change")
    saved = page.evaluate("window.saved.at(-1)")
    assert saved["node_threshold"] == 0.5
    assert page.mv_errors == []
    # the browser's state, applied in the kernel (as the comm would): re-pruned, the pin kept, nothing recomputed
    graph = v.result
    v.set_state({k: saved[k] for k in ("pinned", "labels", "groups", "node_threshold")})
    assert v.result is graph and v.node_threshold == 0.5 and v.labels == {feats[0]: "says <b>name</b>"}
    assert feats[0] in keys(v)


def test_intervention_and_edge_round_trip(page, view):
    from mvbrowser import push_bare

    v = view
    mount_bare(page, v)
    page.wait_for_selector(f"{ROOT}[data-nodes]")
    K = keys(v)
    feat = K[int(np.flatnonzero(v.node_kind == 0)[0])]
    page.locator(f'{ROOT} .mv-node[data-key="{feat}"]').click(modifiers=["Shift"])
    page.locator(f"{ROOT} .mv-edit-ablate").click()
    page.locator(f"{ROOT} .mv-run").click()
    request = page.evaluate("window.saved.at(-1).intervention_request")
    assert request == {"edits": {feat: 0}, "id": 1}
    v.intervention_request = request         # the kernel answers (as the comm would deliver it)
    res = v.intervention_result
    assert v.error == "" and feat in res["changes"]
    push_bare(page, v, ["intervention_result"])
    page.wait_for_selector(f"{ROOT} .mv-intervention")
    for name in ("base", "frozen", "unfrozen"):
        got = page.locator(f"{ROOT} ol.mv-{name} li").evaluate_all("els => els.map(e => e.dataset.value)")
        assert got == [f"{p:.4f}" for _, p in res[name]]
    ringed = page.locator(f"{ROOT} .mv-node.mv-changed").evaluate_all("els => els.map(e => e.dataset.key)")
    assert set(ringed) == set(res["changes"])
    # an edge across positions: the kernel splits it by head; the list shows its values
    e = next(e for e in range(len(v.edge_src)) if v.node_pos[v.edge_src[e]] != v.node_pos[v.edge_dst[e]])
    page.locator(f'{ROOT} line.mv-edge[data-edge="{e}"]').dispatch_event("click")
    request = page.evaluate("window.saved.at(-1).edge_request")
    assert request == {"src": K[v.edge_src[e]], "dst": K[v.edge_dst[e]], "id": 1}
    v.edge_request = request
    push_bare(page, v, ["edge_result"])
    page.wait_for_selector(f"{ROOT} ol.mv-heads li")
    got = page.locator(f"{ROOT} ol.mv-heads li").evaluate_all("els => els.map(e => [e.dataset.layer, e.dataset.value])")
    assert got == [[str(h[0]), f"{h[2]:.4f}"] for h in v.edge_result["heads"]]
    assert page.mv_errors == []
