"""GraphView bound to a Lab (the bundled model and its transcoders): what it sends equals the pruned graph
computed here independently, within the node / edge budget (with its notice); threshold moves re-prune the
cached graph; pins survive; a clicked feature selects it in the Lab and its detail equals a direct
computation; bad inputs are refused clearly; live, the graph is computed in a worker."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

import mechviz
from mechviz.analysis.graph import attribution_graph, influence, prune
from mechviz.widgets import GraphView
from mechviz.widgets.graph_payload import node_key
from mechviz.widgets.transport import unpack

PROMPT = "John gave a drink to"
MAXF = 60


@pytest.fixture(scope="module")
def lab():
    torch.set_num_threads(2)
    return mechviz.Lab.default(prompt=PROMPT, sae="all")


@pytest.fixture(scope="module")
def tcs(lab):
    return [lab.saes[f"mlp_in.{layer} -> mlp_out.{layer}"] for layer in range(4)]


@pytest.fixture(scope="module")
def graph(lab, tcs):
    return attribution_graph(lab.model, tcs, PROMPT, max_features=MAXF)


def wire(view, name):
    """A trait as the browser receives it."""
    return unpack(type(view).class_traits()[name].metadata["to_json"](getattr(view, name), view))


def sent(view):
    """The sent subgraph in graph rows: (node rows, {(target row, source row): weight on the wire})."""
    rows = view.node_index
    w = wire(view, "edge_weight")
    return rows.tolist(), {(int(rows[d]), int(rows[s])): float(x) for d, s, x in zip(view.edge_dst, view.edge_src, w)}


def test_sends_the_pruned_graph(lab, graph):
    v = lab.add(GraphView(), max_features=MAXF, max_nodes=10_000, max_edges=100_000)
    g = v.result
    np.testing.assert_allclose(g.adjacency, graph.adjacency, rtol=1e-9, atol=1e-12)   # the same graph
    node, edge = prune(graph, 0.8, 0.98)
    rows, edges = sent(v)
    assert rows == np.flatnonzero(node).tolist() and v.notice == ""
    assert set(edges) == set(zip(*map(np.ndarray.tolist, np.nonzero(edge))))
    for (d, s), w in edges.items():   # float16 on the wire
        assert w == float(np.float16(graph.adjacency[d, s]))
    kinds = {"feature": 0, "error": 1, "embed": 2, "logit": 3}
    assert v.node_kind.tolist() == [kinds[graph.nodes[i][0]] for i in rows]
    for k, i in enumerate(rows):
        n = graph.nodes[i]
        if n[0] == "feature":
            assert (v.node_layer[k], v.node_pos[k], v.node_feature[k]) == n[1:]
        elif n[0] == "logit":
            c = graph.logit_tokens.index(n[1])
            assert (v.node_layer[k], v.node_feature[k]) == (4, n[1])
            assert v.strings[v.logit_token[k]] == lab.model.tokenizer.decode([n[1]])
            assert wire(v, "logit_prob")[k] == np.float32(graph.logit_probs[c])
    np.testing.assert_array_equal(wire(v, "node_value"), graph.values[rows].astype(np.float32))
    np.testing.assert_allclose(v.node_influence, influence(graph)[rows], rtol=1e-9)
    assert v.tokens == lab.model.to_str_tokens(torch.tensor(graph.tokens))
    binary = sum(len(type(v).class_traits()[n].metadata["to_json"](getattr(v, n), v)["data"])
                 for n in ("node_kind", "node_layer", "node_pos", "node_feature", "node_value", "node_influence",
                           "node_index", "logit_token", "logit_prob", "edge_src", "edge_dst", "edge_weight"))
    assert binary < v.sent_bytes < binary + 400 and v.sent_bytes < graph.adjacency.size * 4
    # computed once per prompt: another prompt, then back, shows the cached graph
    lab.prompt = "The cat sat on"
    assert v.result is not g and v.prompt == "The cat sat on"
    lab.prompt = PROMPT
    assert v.result is g
    v.close()


def test_budget_notice_and_reprune(lab, graph):
    v = lab.add(GraphView(), max_features=MAXF, max_nodes=15, max_edges=20)
    node, edge = prune(graph, 0.8, 0.98)
    inf = influence(graph)
    pruned = np.flatnonzero(node)
    rank = np.where(pruned >= len(graph.nodes) - graph.n_logits, np.inf, inf[pruned])
    keep = set(pruned[np.argsort(-rank, kind="stable")[:15]].tolist())
    rows, edges = sent(v)
    assert set(rows) == keep and len(edges) == 20
    among = [(d, s) for d, s in zip(*np.nonzero(edge)) if d in keep and s in keep]
    top = sorted(among, key=lambda e: -abs(graph.adjacency[e]))[:20]
    assert set(edges) == {(int(d), int(s)) for d, s in top}
    assert v.notice == (f"showing 15 of {len(pruned)} nodes: raise max_nodes or lower node_threshold; "
                        f"showing 20 of {len(among)} edges: raise max_edges or lower edge_threshold")
    g = v.result
    with v.hold_trait_notifications():
        v.max_nodes, v.max_edges = 10_000, 100_000
    v.node_threshold = 0.5                  # from the slider: re-pruned, not recomputed
    node, edge = prune(graph, 0.5, 0.98)
    rows, edges = sent(v)
    assert v.result is g and rows == np.flatnonzero(node).tolist() and v.notice == ""
    assert set(edges) == set(zip(*map(np.ndarray.tolist, np.nonzero(edge))))
    # a pinned node stays whatever the thresholds, with its largest edges to the nodes shown
    keys = [node_key(n) for n in graph.nodes]
    out = np.flatnonzero(~node[:graph.n_features])
    pin = int(out[np.argmax(inf[out])])
    v.pinned = [keys[pin]]
    v.node_threshold = 0.3
    rows, edges = sent(v)
    assert pin in rows and v.result is g
    assert any(pin in e for e in edges)
    shown = np.zeros(len(graph.nodes), bool)
    shown[rows] = True
    into = np.abs(graph.adjacency[pin]) * shown
    assert (pin, int(np.argmax(into))) in edges
    v.close()


def test_feature_click_selects_and_details(lab, tcs):
    feat = lab.features()
    v = lab.add(GraphView(), max_features=MAXF)
    k = int(np.flatnonzero(v.node_kind == 0)[-1])
    L, T, F = int(v.node_layer[k]), int(v.node_pos[k]), int(v.node_feature[k])
    key = f"f:{L}:{T}:{F}"
    v.detail_request = {"key": key, "id": 1}
    d = v.detail
    assert v.error == "" and d["key"] == key and d["id"] == 1
    assert lab.selection.dictionary == f"mlp_in.{L} -> mlp_out.{L}" and lab.selection.feature == F
    assert feat.feature == F                 # the Lab's feature view follows
    # independently: the decoder row through the unembedding; the transcoder on the model's own mlp_in
    with torch.no_grad():
        top = (tcs[L].W_dec[F].double() @ lab.model.model.lm_head.weight.double().T).topk(10)
    assert [s for s, _ in d["top_tokens"]] == [lab.model.tokenizer.decode([i]) for i in top.indices.tolist()]
    np.testing.assert_allclose([x for _, x in d["top_tokens"]], top.values.numpy(), rtol=1e-9)
    run = lab.model.run(PROMPT, capture=[f"mlp_in.{L}"])
    x = run.cache[f"mlp_in.{L}"].float()
    acts = tcs[L].encode(x.reshape(-1, x.shape[-1]))[:, F].detach().numpy()
    np.testing.assert_allclose(d["acts"], acts, rtol=1e-4, atol=1e-5)
    assert d["acts"][T] == pytest.approx(d["activation"], rel=1e-9) and d["acts"][T] > 0
    v.detail_request = {"key": "f:9:0:1", "id": 2}
    assert v.error.startswith("detail: 'f:9:0:1' is not a node of the graph shown")
    v.detail_request = {"key": "<b>", "id": 3}
    assert v.error.startswith("detail: not a node key")
    v.close()
    feat.close()


def test_bad_inputs(lab, tcs):
    bare = mechviz.Lab(lab.model, prompt=PROMPT)
    with pytest.raises(ValueError, match=r'has 0, none reading mlp_in.0.*Lab.default\(sae="all"\).*add_sae'):
        bare.add(GraphView())
    with pytest.raises(ValueError, match=r"need one per layer \(4\) in layer order, got 2"):
        lab.add(GraphView(), transcoders=tcs[:2])
    with pytest.raises(ValueError, match=r"transcoders\[0\] must be a transcoder reading mlp_in.0, got sae"):
        lab.add(GraphView(), transcoders=["resid_post.0"] + tcs[1:])
    with pytest.raises(ValueError, match=r"transcoders\[0\] must be a transcoder reading mlp_in.0, got transcoder on mlp_in.1"):
        lab.add(GraphView(), transcoders=[tcs[1], tcs[0]] + tcs[2:])
    with pytest.raises(ValueError, match="max_features must be a positive int"):
        lab.add(GraphView(), max_features=0)
    with pytest.raises(ValueError, match="node_threshold and edge_threshold"):
        lab.add(GraphView(), node_threshold=1.5)
    v = lab.add(GraphView(), targets=[" Paris is"])   # shown in the view, not raised: the other views go on
    assert v.status == "error" and v.error.startswith("attribution graph: ValueError:") and v.node_kind is None
    v.close()
    v = lab.add(GraphView(), max_features=MAXF)       # a failure after a good graph keeps the graph shown
    g, kinds, seq = v.result, v.node_kind, v.seq
    v._options["targets"] = [" Paris is"]
    lab.prompt = "The cat sat on"
    assert v.status == "error" and v.error.startswith("attribution graph:") and v.result is g
    assert v.node_kind is kinds and v.seq == seq
    v.close()
    lab.prompt = PROMPT


def test_live_the_graph_computes_in_a_worker(lab, tcs):
    async def scenario():
        live = mechviz.Lab(lab.model, prompt=PROMPT, sae=tcs)
        assert live._loop is asyncio.get_running_loop()
        v = GraphView()
        seen = []
        v.observe(lambda ch: seen.append(ch["new"]), names="status")
        live.add(v, max_features=MAXF)
        assert v.status == "computing" and v.node_kind is None   # the cell returns at once
        for _ in range(3000):
            await asyncio.sleep(0.01)
            if v.status in ("ready", "error"):
                break
        first = v.result
        v.node_threshold = 0.3                 # two slider moves in a row: re-pruned in workers,
        v.node_threshold = 0.9                 # the newest applied whichever finishes last
        await asyncio.sleep(1.0)
        moved = v.node_index.tolist()
        live._live(live._wanted.__class__("The cat sat on"))   # an edit from the browser
        for _ in range(3000):
            await asyncio.sleep(0.01)
            if v.prompt == "The cat sat on" and v.status == "ready":
                break
        return v, first, seen, moved

    v, first, seen, moved = asyncio.run(scenario())
    assert moved == np.flatnonzero(prune(first, 0.9, 0.98)[0]).tolist()
    assert v.error == "" and first is not None and v.result is not first and seen[:2] == ["computing", "ready"]
    assert v.result.tokens == lab.model.to_tokens("The cat sat on").tolist()


def test_intervention_equals_intervene(lab):
    from mechviz.analysis.graph_edit import intervene

    v = lab.add(GraphView(), max_features=MAXF)
    g = v.result
    rows = [int(r) for r in v.node_index if r < g.n_features][:2]
    keys = [node_key(g.nodes[r]) for r in rows]
    v.intervention_request = {"edits": {keys[0]: 0.0, keys[1]: 3.5}, "id": 7}
    res = v.intervention_result
    assert v.error == "" and res["id"] == 7 and res["edits"] == {keys[0]: 0.0, keys[1]: 3.5}
    edits = {rows[0]: 0.0, rows[1]: 3.5}
    for name, want in (("base", intervene(g, {})), ("frozen", intervene(g, edits, freeze_attention=True)),
                       ("unfrozen", intervene(g, edits, freeze_attention=False))):
        top = want.top(10)
        assert [p for _, p in res[name]] == [p for _, p in top]
        assert [s for s, _ in res[name]] == [lab.model.tokenizer.decode([i]) for i, _ in top]
    fz, un = intervene(g, edits, freeze_attention=True), intervene(g, edits, freeze_attention=False)
    want = {node_key(g.nodes[r]): [fz.activations[r] - g.values[r], un.activations[r] - g.values[r]]
            for r in map(int, v.node_index) if r < g.n_features}
    want = {k: d for k, d in want.items() if max(map(abs, d)) > 1e-6}
    assert res["changes"].keys() == want.keys() and keys[0] in want
    for k, d in want.items():
        assert res["changes"][k] == pytest.approx(d, rel=1e-9, abs=1e-12)
    assert res["changes"][keys[0]][0] == pytest.approx(-g.values[rows[0]])   # ablated: its whole activation
    v.intervention_request = {"edits": {"e:0:1": 1.0}, "id": 8}
    assert v.error.startswith("intervention: node") and "only feature nodes" in v.error
    v.intervention_request = {"edits": {keys[0]: "lots"}, "id": 9}
    assert v.error == f"intervention: the value for {keys[0]!r} must be a number, got 'lots'"
    v.close()


def test_edge_click_splits_by_head_and_selects(lab):
    from mechviz.analysis.graph_edit import edge_heads

    attn = lab.attention()
    v = lab.add(GraphView(), max_features=MAXF)
    g = v.result
    rows = v.node_index
    pos = v.node_pos
    e = next(e for e in range(len(v.edge_src)) if pos[v.edge_src[e]] != pos[v.edge_dst[e]])   # the largest such
    s, d = int(rows[v.edge_src[e]]), int(rows[v.edge_dst[e]])
    v.edge_request = {"src": node_key(g.nodes[s]), "dst": node_key(g.nodes[d]), "id": 1}
    res = v.edge_result
    heads = edge_heads(g, d, s)
    share = heads / g.adjacency[d, s]
    L, H = np.unravel_index(np.argmax(share), share.shape)
    assert v.error == "" and res["heads"][0][:2] == [L, H] and res["edge"] == g.adjacency[d, s]
    assert res["heads"][0][2:] == [pytest.approx(heads[L, H], rel=1e-12), pytest.approx(share[L, H], rel=1e-12)]
    assert (lab.selection.layer, lab.selection.head) == (L, H) and (attn.layer, attn.head) == (L, H)
    same = next(e for e in range(len(v.edge_src)) if pos[v.edge_src[e]] == pos[v.edge_dst[e]])
    v.edge_request = {"src": node_key(g.nodes[rows[v.edge_src[same]]]),
                      "dst": node_key(g.nodes[rows[v.edge_dst[same]]]), "id": 2}
    assert "stays at one position" in v.error
    v.close()
    attn.close()


def test_live_cancel(lab, tcs):
    async def scenario():
        live = mechviz.Lab(lab.model, prompt=PROMPT, sae=tcs)
        v = GraphView()
        progress = []
        v.observe(lambda ch: progress.append(ch["new"]), names="progress")
        live.add(v)                           # every active feature: a few seconds of work
        await asyncio.sleep(0.3)
        assert v.status == "computing"
        v.cancel_request = 1                  # the Cancel button
        await asyncio.sleep(3.0)              # the worker stops at its next batch; nothing is applied
        cancelled = (v.status, v.node_kind, v.error, list(progress))
        live._live(live._wanted.__class__(PROMPT + " the"))      # a prompt edit starts one...
        await asyncio.sleep(0.3)
        live._live(live._wanted.__class__("The cat sat on"))      # ...which a newer edit supersedes
        for _ in range(3000):
            await asyncio.sleep(0.01)
            if v.status == "ready":
                break
        await asyncio.sleep(0.5)
        live._live(live._wanted.__class__(PROMPT + " him"))       # a graph in the works...
        await asyncio.sleep(0.3)
        live._live(live._wanted.__class__("The cat sat on"))      # ...superseded by a cached one
        await asyncio.sleep(4.0)
        return v, cancelled

    v, (status, kind, error, progress) = asyncio.run(scenario())
    assert status == "cancelled" and error == ""
    assert kind is None or set(kind.tolist()) <= {0, 1, 2, 3}     # nothing, or the streamed first look
    assert progress and max(progress) < 1.0
    assert v.status == "ready" and v.prompt == "The cat sat on" and v.error == ""
    assert v.result.tokens == lab.model.to_tokens("The cat sat on").tolist()


def test_thresholds_given_to_the_view_or_to_add(lab, graph):
    v = lab.add(GraphView(node_threshold=0.5, max_edges=10), max_features=MAXF)   # the view's own values stay
    assert (v.node_threshold, v.edge_threshold, v.max_edges) == (0.5, 0.98, 10) and len(v.edge_src) == 10
    assert v.node_index.tolist() == np.flatnonzero(prune(graph, 0.5, 0.98)[0]).tolist()
    v.close()
    v = lab.add(GraphView(node_threshold=0.5), max_features=MAXF, node_threshold=0.7)  # lab.add's win
    assert v.node_threshold == 0.7
    v.close()


def test_live_first_look_is_the_logits_direct_inputs(lab, tcs):
    """Streamed: while the features' rows are computed, the view already shows the logit nodes and their direct
    inputs (status "computing"); each of those edges equals the finished graph's."""
    async def scenario():
        live = mechviz.Lab(lab.model, prompt=PROMPT, sae=tcs)
        v = GraphView()
        seen = []
        v.observe(lambda ch: seen.append((v.status, None if v.edge_dst is None else
                                          (v.node_kind.copy(), v.node_index.copy(), v.edge_src.copy(),
                                           v.edge_dst.copy(), v.edge_weight.copy()))), names="seq")
        live.add(v, max_features=MAXF)
        for _ in range(3000):
            await asyncio.sleep(0.01)
            if v.status == "ready":
                break
        return v, seen

    v, seen = asyncio.run(scenario())
    first = [s for status, s in seen if status == "computing" and s is not None]
    assert v.status == "ready" and first, [st for st, _ in seen]
    kind, index, src, dst, w = first[0]
    assert len(dst) > 0 and (kind[dst] == 3).all()                 # every edge ends at a logit
    adj = v.result.adjacency
    assert np.allclose(w.astype(np.float64), adj[index[dst], index[src]], rtol=2e-3, atol=1e-3)
