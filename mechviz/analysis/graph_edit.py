"""Interventions on an attribution graph's replacement model, and the attention heads an edge passes through.

:func:`intervene` follows circuit-tracer's ``feature_intervention``: the prompt's replacement model (each
MLP's output = its transcoder's output, every feature recomputed from the new MLP input, plus the original
run's error ``mlp_out - transcoder.forward(mlp_in)``, kept constant) with chosen feature nodes clamped to
given values at their (layer, position). Attention patterns and norm scales are frozen at the original run's
values (``freeze_attention=True``) or recomputed. With no edits, both modes give the model's own logits.

:func:`edge_heads` splits a direct edge by attention head: each head's share is the edge minus the edge
recomputed with that head's value/output path removed in the frozen linear model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .graph import Graph


@dataclass
class Intervention:
    """The result of :func:`intervene`. ``edits``: ``{feature node index: value}``; ``logits [V]``: the last
    position's logits after the intervention, demeaned over the vocabulary, before any final soft-cap (what a
    logit node's value is); ``probs [V]``: next-token probabilities (softmax of the model's output logits,
    soft-cap included); ``activations [n_features]``: each feature node's activation after the intervention."""

    edits: dict
    freeze_attention: bool
    logits: np.ndarray
    probs: np.ndarray
    activations: np.ndarray

    def top(self, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` most probable next tokens ``[(token_id, prob)]``, most probable first."""
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(int(i), float(self.probs[i])) for i in order]


def _feature_edits(graph: Graph, edits: dict) -> dict[int, float]:
    if not isinstance(edits, dict):
        raise ValueError(f"edits must be a dict {{feature node index: value}}, got {type(edits).__name__}")
    out = {}
    for i, v in edits.items():
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < len(graph.nodes):
            raise ValueError(f"edit index {i!r} is not a node of this graph: use feature node indices "
                             f"0..{graph.n_features - 1}")
        if int(i) >= graph.n_features:
            raise ValueError(f"node {int(i)} is {graph.nodes[int(i)]!r}: only feature nodes (indices "
                             f"0..{graph.n_features - 1}) can be edited")
        v = float(v)
        if not np.isfinite(v):
            raise ValueError(f"edit value for node {int(i)} must be finite, got {v}")
        out[int(i)] = v
    return out


def intervene(graph: Graph, edits: dict[int, float], *, freeze_attention: bool = True) -> Intervention:
    """Clamp feature nodes ``{node index: value}`` (0 ablates) in the replacement model of ``graph``'s prompt
    and run it forward: every other feature is recomputed from its MLP's new input (so effects propagate
    through later features), the error terms stay at their original values. See the module docstring.

    >>> import mechviz, mechviz.zoo
    >>> from mechviz.saes import load_sae
    >>> from mechviz.analysis.graph import attribution_graph
    >>> adapter = mechviz.wrap(*mechviz.zoo.load_default_model())
    >>> tcs = [load_sae(d) for d in mechviz.zoo.dictionary_dirs("transcoders")]
    >>> g = attribution_graph(adapter, tcs, "John gave a drink to", max_features=20)
    >>> same = intervene(g, {})
    >>> bool(abs(same.logits - g.real_logits).max() < 1e-3), bool(abs(same.activations - g.values[:20]).max() < 1e-9)
    (True, True)
    >>> out = intervene(g, {0: 0.0})
    >>> float(out.activations[0]), len(out.top(3))
    (0.0, 3)
    """
    edits = _feature_edits(graph, edits)
    if graph.transcoders is None or graph.mlp_in is None:
        raise ValueError("this graph carries no transcoders: build it with attribution_graph")
    tcs = graph.transcoders
    clamp: dict[int, list] = {}
    for i, v in edits.items():
        _, l, t, f = graph.nodes[i]
        clamp.setdefault(l, []).append((t, f, v))
    err = torch.stack([graph.frozen.mlp_out[l] - tc.forward(graph.mlp_in[l]) for l, tc in enumerate(tcs)])
    acts = {}

    def mlp(l, mi):
        tc = tcs[l]
        a = tc.encode(mi)
        for t, f, v in clamp.get(l, ()):
            a[t, f] = v
        acts[l] = a
        y = tc.decode(a, mi) + err[l]
        return y + mi @ tc.W_skip if tc.W_skip is not None else y

    with torch.no_grad():
        _, lg, out = graph.frozen.forward(graph.emb, mlp, freeze=bool(freeze_attention))
    feats = np.array([float(acts[l][t, f]) for _, l, t, f in graph.nodes[:graph.n_features]])
    return Intervention(dict(edits), bool(freeze_attention), lg.numpy(), out.softmax(-1).numpy(), feats)


def _layer_of(graph: Graph, i: int, role: str) -> int:
    node = graph.nodes[i]
    if role == "target":
        return node[1] if node[0] == "feature" else graph.frozen.n_layers - 1
    return node[1] if node[0] in ("feature", "error") else -1


def edge_heads(graph: Graph, target: int, source: int) -> np.ndarray:
    """The part of the direct edge ``graph.adjacency[target, source]`` that passes through each attention head,
    ``[n_layers, n_heads]``: the edge minus the edge recomputed with that head's value/output path removed in
    the frozen linear model. Heads of layers that cannot carry it (at or before the source's layer, after the
    target's) are 0. For a one-hop edge (source and target at different positions, adjacent layers) the shares
    sum to the edge minus its residual (same-position) part; for multi-hop paths (through heads of several
    layers) the shares overlap: a path through two heads counts in both, so they need not sum to anything.

    >>> import mechviz, mechviz.zoo
    >>> from mechviz.saes import load_sae
    >>> from mechviz.analysis.graph import attribution_graph
    >>> adapter = mechviz.wrap(*mechviz.zoo.load_default_model())
    >>> tcs = [load_sae(d) for d in mechviz.zoo.dictionary_dirs("transcoders")]
    >>> g = attribution_graph(adapter, tcs, "John gave a drink to", max_features=20)
    >>> edge_heads(g, len(g.nodes) - 1, g.n_features + g.n_errors).shape == (adapter.n_layers, adapter.n_heads)
    True
    """
    n, nF, nE, nT = len(graph.nodes), graph.n_features, graph.n_errors, graph.n_embeds
    for name, i, ok, what in (("target", target, lambda j: j < nF or j >= n - graph.n_logits, "feature or logit"),
                              ("source", source, lambda j: j < nF + nE + nT, "feature, error or embedding")):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < n or not ok(int(i)):
            raise ValueError(f"{name} {i!r} must be the index of a {what} node (0..{n - 1}; features 0..{nF - 1},"
                             f" errors {nF}..{nF + nE - 1}, embeddings {nF + nE}..{nF + nE + nT - 1}, logits "
                             f"{n - graph.n_logits}..{n - 1})")
    target, source = int(target), int(source)
    fz = graph.frozen
    L, H = fz.n_layers, fz.n_heads
    out = np.zeros((L, H))
    layers = list(range(_layer_of(graph, source, "source") + 1, _layer_of(graph, target, "target") + 1))
    if not layers:
        return out
    B = 1 + len(layers) * H
    mask = torch.ones(B, L, H, dtype=torch.float64)
    for k, (l, h) in enumerate((l, h) for l in layers for h in range(H)):
        mask[1 + k, l, h] = 0.0
    emb = graph.emb.expand(B, -1, -1).clone().requires_grad_(True)
    add = graph.add.expand(B, -1, -1, -1).clone().requires_grad_(True)
    with torch.enable_grad():
        ins, lg = fz.run(emb, add, mask)
        if target < nF:
            _, l, t, f = graph.nodes[target]
            y = ins[:, l, t] @ graph.transcoders[l].W_enc[:, f]
        else:
            y = lg[:, graph.nodes[target][1]]
        ge, ga = torch.autograd.grad(y.sum(), (emb, add))
    vec = graph.sources[source]
    node = graph.nodes[source]
    g = ga[:, node[1], node[2]] if node[0] in ("feature", "error") else ge[:, node[1]]
    edges = (g * vec).sum(-1)
    out[layers[0]:layers[-1] + 1] = (edges[0] - edges[1:]).reshape(len(layers), H).numpy()
    return out
