"""What :class:`~mechviz.widgets.graph.GraphView` sends: the pruned subgraph of an attribution graph as a
binary node table and edge list (never the dense adjacency), within a node and edge budget; the kernel's
answers to the browser's requests (a clicked feature's top output tokens and activations, an intervention, an
edge split by attention head); and which of a Lab's transcoders the graph uses.

Node keys are stable across re-prunes and recomputes of the same prompt: ``"f:L:T:F"`` (feature ``F`` of
layer ``L`` at position ``T``), ``"e:L:T"`` (error), ``"t:T"`` (embedding), ``"l:ID"`` (logit of token id).

>>> node_key(("feature", 1, 3, 42)), node_key(("error", 0, 2)), node_key(("embed", 4)), node_key(("logit", 262))
('f:1:3:42', 'e:0:2', 't:4', 'l:262')
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from ..analysis.graph import Graph, influence, prune
from .transport import Packed, string_table

KINDS = {"feature": 0, "error": 1, "embed": 2, "logit": 3}
PIN_EDGES = 10   # a pinned node brings its largest incoming and outgoing edges to the nodes shown


def node_key(node: tuple) -> str:
    """The stable key of a node label of :attr:`Graph.nodes` (see the module docstring)."""
    kind = node[0]
    if kind == "feature":
        return f"f:{node[1]}:{node[2]}:{node[3]}"
    if kind == "error":
        return f"e:{node[1]}:{node[2]}"
    if kind == "embed":
        return f"t:{node[1]}"
    if kind == "logit":
        return f"l:{node[1]}"
    raise ValueError(f"not a graph node: {node!r}")


@dataclass
class Selected:
    """The part of a graph a view shows: ``nodes`` (rows of :attr:`Graph.nodes`, ascending), ``edges``
    ``[E, 2]`` (target, source) rows of :attr:`Graph.adjacency` (largest ``|weight|`` first), the pruned
    totals before the budget and the notice saying what the budget left out ("" none)."""

    nodes: np.ndarray
    edges: np.ndarray
    n_pruned_nodes: int
    n_pruned_edges: int
    notice: str


def select(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98, max_nodes: int = 400,
           max_edges: int = 3000, pinned=(), inf: np.ndarray | None = None) -> Selected:
    """:func:`~mechviz.analysis.graph.prune` the graph, add the ``pinned`` node keys (with their
    :data:`PIN_EDGES` largest edges in each direction to the other nodes shown), then keep within budget:
    the pinned and logit nodes, then the most influential, ``max_nodes`` in all; the ``max_edges``
    largest ``|weight|`` among the edges of the nodes kept. ``inf``: :func:`influence` if already known."""
    if max_nodes < 1 or max_edges < 0:
        raise ValueError(f"max_nodes must be at least 1 and max_edges at least 0, got {max_nodes}, {max_edges}")
    node, edge = prune(graph, node_threshold, edge_threshold)
    keys = {node_key(n): i for i, n in enumerate(graph.nodes)}
    pins = np.array(sorted(keys[k] for k in pinned if k in keys), dtype=np.int64)
    node = node.copy()
    node[pins] = True
    edge = edge & node[:, None] & node[None, :]
    A = graph.adjacency
    for i in pins:   # a pinned node's own largest edges to the nodes shown
        inc = np.abs(A[i]) * node
        out = np.abs(A[:, i]) * node
        for j in np.argsort(-inc)[:PIN_EDGES]:
            if inc[j] > 0:
                edge[i, j] = True
        for j in np.argsort(-out)[:PIN_EDGES]:
            if out[j] > 0:
                edge[j, i] = True
    n_nodes, n_edges = int(node.sum()), int(edge.sum())
    notes = []
    if n_nodes > max_nodes:
        inf = influence(graph) if inf is None else inf
        rank = inf.copy()
        rank[len(rank) - graph.n_logits:] = np.inf   # logits always
        rank[pins] = np.inf                             # and what the user pinned
        idx = np.flatnonzero(node)
        keep = idx[np.argsort(-rank[idx], kind="stable")[:max_nodes]]
        node = np.zeros_like(node)
        node[keep] = True
        edge &= node[:, None] & node[None, :]
        notes.append(f"showing {max_nodes:,} of {n_nodes:,} nodes: raise max_nodes or lower node_threshold")
    dst, src = np.nonzero(edge)
    order = np.argsort(-np.abs(A[dst, src]), kind="stable")
    if len(order) > max_edges:
        notes.append(f"showing {max_edges:,} of {len(order):,} edges: raise max_edges or lower edge_threshold")
        order = order[:max_edges]
    return Selected(np.flatnonzero(node), np.stack([dst[order], src[order]], 1).reshape(-1, 2), n_nodes, n_edges,
                    "; ".join(notes))


def payload(graph: Graph, sel: Selected, inf: np.ndarray, token_strs: list[str], logit_strs: list[str]) -> dict:
    """The view's traits for the nodes and edges ``sel`` picked (arrays :class:`Packed`), with ``sent_bytes``:
    the binary buffers plus the JSON of the strings."""
    nodes = [graph.nodes[i] for i in sel.nodes]
    L = len(graph.frozen.A)
    kind = np.array([KINDS[n[0]] for n in nodes], np.int64)
    layer = np.array([n[1] if n[0] in ("feature", "error") else (-1 if n[0] == "embed" else L) for n in nodes])
    pos = np.array([n[2] if n[0] in ("feature", "error") else (n[1] if n[0] == "embed" else len(graph.tokens) - 1)
                    for n in nodes])
    feat = np.array([n[3] if n[0] == "feature" else (n[1] if n[0] == "logit" else -1) for n in nodes])
    first_logit = len(graph.nodes) - graph.n_logits
    logit_row = [i - first_logit if i >= first_logit else -1 for i in sel.nodes]
    prob = np.array([graph.logit_probs[r] if r >= 0 else np.nan for r in logit_row], np.float32)
    strings, idx = string_table([logit_strs[r] if r >= 0 else "" for r in logit_row] or [""])
    ltok = np.where(np.array(logit_row) >= 0, idx[:len(nodes)], -1) if nodes else np.zeros(0)
    at = {int(i): k for k, i in enumerate(sel.nodes)}
    src = np.array([at[int(s)] for s in sel.edges[:, 1]], np.int64)
    dst = np.array([at[int(d)] for d in sel.edges[:, 0]], np.int64)
    w = graph.adjacency[sel.edges[:, 0], sel.edges[:, 1]] if len(sel.edges) else np.zeros(0)
    traits = {
        "node_kind": Packed(kind.reshape(-1), "int32"), "node_layer": Packed(layer.reshape(-1), "int32"),
        "node_pos": Packed(pos.reshape(-1), "int32"), "node_feature": Packed(feat.reshape(-1), "int32"),
        "node_value": Packed(graph.values[sel.nodes], "float32"),
        "node_influence": Packed(inf[sel.nodes], "float32"), "node_index": Packed(sel.nodes, "int32"),
        "logit_token": Packed(np.asarray(ltok).reshape(-1), "int32"), "logit_prob": Packed(prob, "float32"),
        "edge_src": Packed(src, "int32"), "edge_dst": Packed(dst, "int32"), "edge_weight": Packed(w, "float16"),
        "strings": strings, "tokens": list(token_strs), "notice": sel.notice, "n_layers": L,
        "totals": [sel.n_pruned_nodes, sel.n_pruned_edges, len(graph.nodes), int((graph.adjacency != 0).sum())],
    }
    binary = sum(v.nbytes for v in traits.values() if isinstance(v, Packed))
    traits["sent_bytes"] = binary + len(json.dumps([strings, list(token_strs)]))
    return traits


def parse_key(key: str) -> tuple:
    """The node label of a key (the inverse of :func:`node_key`); a clear ValueError for anything else.

    >>> parse_key("f:1:3:42"), parse_key("l:262")
    (('feature', 1, 3, 42), ('logit', 262))
    """
    kinds = {"f": ("feature", 3), "e": ("error", 2), "t": ("embed", 1), "l": ("logit", 1)}
    head, *rest = str(key).split(":")
    if head not in kinds or len(rest) != kinds[head][1] or not all(r.lstrip("-").isdigit() for r in rest):
        raise ValueError(f"not a node key: {key!r} (keys look like 'f:L:T:F', 'e:L:T', 't:T', 'l:TOKENID')")
    return (kinds[head][0], *map(int, rest))


def feature_detail(adapter, transcoder, graph: Graph, layer: int, feature: int, k: int = 10) -> dict:
    """What the view shows for a clicked feature: its ``k`` top output tokens (its decoder direction through
    the unembedding, ``directions()[feature] @ W_U.T``) with their values, and its activation at each
    prompt position (the transcoder on the real run's ``mlp_in``, as the graph recorded it)."""
    W_U = adapter.model.get_output_embeddings().weight.detach().double()
    d = transcoder.directions()[feature].detach().double()
    logits = W_U @ d
    top = logits.topk(k)
    with torch.no_grad():
        ins = graph.mlp_in if graph.mlp_in is not None else graph.frozen.run(graph.emb, graph.add)[0]
        acts = transcoder.to(dtype=torch.float64).encode(ins[layer].double())[:, feature]
    strs = adapter.to_str_tokens(top.indices)
    return {"top_tokens": [[s, float(v)] for s, v in zip(strs, top.values.tolist())],
            "acts": [float(a) for a in acts.tolist()]}


def node_rows(graph: Graph, keys) -> list[int]:
    """The rows of :attr:`Graph.nodes` of node ``keys`` (a clear ValueError for one the graph lacks)."""
    at = {node_key(n): i for i, n in enumerate(graph.nodes)}
    rows = []
    for key in keys:
        parse_key(key)
        if key not in at:
            raise ValueError(f"{key!r} is not a node of the graph shown")
        rows.append(at[key])
    return rows


def intervention_answer(adapter, graph: Graph, edits: dict, shown, k: int = 10) -> dict:
    """The view's ``intervention_result`` for ``edits`` ``{node key: value}`` (feature nodes): the top ``k``
    next tokens ``[[text, prob]]`` of the model as it is (``base``), and after the intervention with attention
    frozen and recomputed; ``changes`` ``{key: [frozen, unfrozen]}``: the activation change of each feature
    node among the rows ``shown`` that moved (by more than 1e-6)."""
    from ..analysis.graph_edit import intervene

    if not isinstance(edits, dict) or not edits:
        raise ValueError("an intervention needs edits {node key: value}, at least one")
    rows = node_rows(graph, list(edits))
    by_row = {}
    for r, (key, value) in zip(rows, edits.items()):
        try:
            by_row[r] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"the value for {key!r} must be a number, got {value!r}") from None
    base = intervene(graph, {})
    frozen = intervene(graph, by_row, freeze_attention=True)
    unfrozen = intervene(graph, by_row, freeze_attention=False)

    def top(res):
        ids_probs = res.top(k)
        strs = adapter.to_str_tokens(torch.tensor([i for i, _ in ids_probs]))
        return [[s, p] for s, (_, p) in zip(strs, ids_probs)]
    changes = {}
    for r in shown:
        r = int(r)
        if r < graph.n_features:
            d = [float(frozen.activations[r] - graph.values[r]), float(unfrozen.activations[r] - graph.values[r])]
            if max(abs(d[0]), abs(d[1])) > 1e-6:
                changes[node_key(graph.nodes[r])] = d
    return {"edits": {key: by_row[r] for key, r in zip(edits, rows)}, "base": top(base), "frozen": top(frozen),
            "unfrozen": top(unfrozen), "changes": changes}


def edge_answer(graph: Graph, src: str, dst: str, k: int = 8) -> dict:
    """The view's ``edge_result`` for the edge ``src -> dst`` (node keys at different positions): the ``k``
    attention heads carrying the largest share of it, ``[[layer, head, value, share]]`` (``value``: the
    head's part of the edge, :func:`~mechviz.analysis.graph_edit.edge_heads`; ``share``: value / edge)."""
    from ..analysis.graph_edit import edge_heads

    s, d = node_rows(graph, [src, dst])
    pos = lambda n: n[2] if n[0] in ("feature", "error") else (n[1] if n[0] == "embed" else len(graph.tokens) - 1)  # noqa: E731
    if pos(graph.nodes[s]) == pos(graph.nodes[d]):
        raise ValueError(f"{src} -> {dst} stays at one position: pick an edge between positions to see its heads")
    heads = edge_heads(graph, d, s)
    w = float(graph.adjacency[d, s])
    share = heads / w if w else heads
    order = np.argsort(-share, axis=None, kind="stable")[:k]
    H = heads.shape[1]
    return {"src": src, "dst": dst, "edge": w,
            "heads": [[int(i // H), int(i % H), float(heads.flat[i]), float(share.flat[i])] for i in order]}


def transcoders_of(lab, transcoders=None) -> tuple[list, list]:
    """``(transcoders, their names in lab.saes or None)``, one per layer in layer order: ``transcoders``
    (SAEs or names in ``lab.saes``) or, by default, the Lab's dictionaries of kind ``"transcoder"``."""
    L = lab.model.n_layers
    how = ('use mechviz.Lab.default(sae="all") (the bundled model\'s transcoders) or lab.add_sae(transcoder) '
           "for each layer")
    by_id = {id(s): n for n, s in lab.saes.items()}
    if transcoders is None:
        found = [(n, s) for n, s in lab.saes.items() if s.kind == "transcoder"]
        by_site = {s.site: (n, s) for n, s in found}
        missing = [f"mlp_in.{l}" for l in range(L) if f"mlp_in.{l}" not in by_site]
        if missing:
            raise ValueError(f"the graph view needs one transcoder per layer ({L}, mlp_in.L -> mlp_out.L); this Lab "
                             f"has {len(found)}, none reading {', '.join(missing)}: {how}")
        pairs = [by_site[f"mlp_in.{l}"] for l in range(L)]
        return [s for _, s in pairs], [n for n, _ in pairs]
    sae_list = [lab.saes[x] if isinstance(x, str) else x for x in transcoders]
    if len(sae_list) != L:
        raise ValueError(f"transcoders: need one per layer ({L}) in layer order, got {len(sae_list)}: {how}")
    for l, s in enumerate(sae_list):  # noqa: E741
        if getattr(s, "kind", None) != "transcoder" or s.site != f"mlp_in.{l}":
            raise ValueError(f"transcoders[{l}] must be a transcoder reading mlp_in.{l}, got "
                             f"{getattr(s, 'kind', type(s).__name__)} on {getattr(s, 'site', '?')}: {how}")
    return sae_list, [by_id.get(id(s)) for s in sae_list]
