"""Attribution graphs over a local replacement model (Ameisen et al. 2025, "Circuit tracing"; the
open ``circuit-tracer`` library), for a GPT-2-style HF model with one per-layer transcoder per MLP.

**Local replacement model** of one prompt. The real model is run once (in float64, from its own weights);
then, with every quantity below frozen at its value in that run, the model is linear:

* attention patterns ``A[l]`` (queries and keys frozen: only the value/output path carries signal);
* every LayerNorm's scale ``s`` (ln_1, ln_2, ln_f): ``LN(x) = w * (x - mean(x)) / s + b``;
* each MLP is replaced by its transcoder's decoded features plus an **error node** per (layer, position)
  ``e[l, t] = mlp_out[l, t] - transcoder.forward(mlp_in[l, t])``, so the replacement reproduces the
  real run exactly (checked: its logits equal the model's);
* each active feature ``(l, t, f)`` is a node with its activation ``a`` frozen: it writes
  ``a * W_dec[f]`` at ``mlp_out[l, t]`` and is not recomputed (its nonlinearity is not differentiated).

**Nodes**, in the order of :attr:`Graph.adjacency`'s rows and columns: active features (``a > 0``; the
``max_features`` largest activations if given; the dropped ones' decoded vectors are added to their
(layer, position)'s error node so the decomposition stays exact), error nodes ``L * T``, embedding nodes
``T`` (token + position embedding) and target logits. A logit node's value is the **demeaned** logit
``logit_c - mean_v logit_v`` (as circuit-tracer), default targets the most probable tokens at the last
position up to cumulative probability 0.95, at most 10.

**Edges** ``adjacency[target, source]``: the direct linear effect, in the frozen model, of the source's
contribution (``a * W_dec[f]``, the error vector, the embedding) on the target's value (a feature's
pre-activation ``W_enc[:, f] . LN2(resid_mid[l, t]) + b_enc[f]``, or a demeaned logit through frozen ln_f
and the unembedding), through frozen attention and norms, never through another feature. Computed as
gradients of the frozen model (batched backward passes), times the source vectors. **Completeness**: a
target's incoming edges plus :attr:`Graph.bias` (its value with every node's contribution at zero: the
norms', attention's, decoders' and encoders' biases) equal its value exactly.

**Scores and pruning** (circuit-tracer's definitions): with ``N = |adjacency|`` row-normalised and
``B = N + N^2 + ...``, a node's influence is ``logit_probs @ B``; ``replacement_score`` = influence of
embeddings / (influence of embeddings + influence of errors); ``completeness_score`` = the share of each
node's normalised input not from error nodes, averaged with weights ``influence + logit_probs``.
:func:`prune` is circuit-tracer's node- and edge-threshold pruning on these influences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .checks import token_id
from .graph_model import Replacement


class GraphCancelled(RuntimeError):
    """:func:`attribution_graph` stopped because its ``cancelled()`` callback returned True."""


@dataclass
class Graph:
    """An attribution graph. Node labels in :attr:`nodes` (``("feature", layer, pos, index)``,
    ``("error", layer, pos)``, ``("embed", pos)``, ``("logit", token_id)``), their :attr:`values`
    (feature: activation; error: norm of the error vector; embed: norm; logit: demeaned logit),
    :attr:`adjacency` ``[n, n]`` (``[target, source]``; rows of errors and embeddings are zero),
    :attr:`bias` ``[n]`` (each target's constant part), :attr:`target_values` ``[n]`` (feature
    pre-activations, demeaned logits; equal to ``adjacency.sum(1) + bias`` on feature and logit rows),
    :attr:`logit_probs` (softmax probabilities of the logit nodes), and the frozen model with its inputs
    (``frozen``, ``emb`` ``[T, d]``, ``add`` ``[L, T, d]``) for interventions. Feature slices:
    ``n_features``, ``n_errors``, ``n_embeds``, ``n_logits`` in that order."""

    tokens: list[int]
    nodes: list[tuple]
    values: np.ndarray
    adjacency: np.ndarray
    bias: np.ndarray
    target_values: np.ndarray
    logit_tokens: list[int]
    logit_probs: np.ndarray
    n_features: int
    n_errors: int
    n_embeds: int
    n_logits: int
    real_logits: np.ndarray      # the model's own last-position logits (float32 run), demeaned
    frozen: Replacement
    emb: torch.Tensor
    add: torch.Tensor
    sources: torch.Tensor        # [n_features + n_errors + n_embeds, d]: each source node's contribution
    replacement_score: float = float("nan")
    completeness_score: float = float("nan")
    transcoders: list | None = None  # the transcoders (float64 copies), for interventions
    mlp_in: torch.Tensor | None = None  # [L, T, d] each MLP's input in the real run

    def __repr__(self) -> str:
        return (f"Graph({len(self.tokens)} tokens: {self.n_features} features, {self.n_errors} errors, "
                f"{self.n_embeds} embeddings, {self.n_logits} logits; replacement {self.replacement_score:.3f}, "
                f"completeness {self.completeness_score:.3f})")


def attribution_graph(adapter, transcoders, prompt, *, targets=None, max_features: int | None = None,
                      prob_mass: float = 0.95, max_logits: int = 10, batch: int = 256,
                      scores: bool = True, progress=None, cancelled=None, dtype=torch.float64) -> Graph:
    """The attribution graph of ``prompt`` (text or token ids) on ``adapter`` (an HF GPT-2 model wrapped by
    :func:`mechviz.wrap`) with ``transcoders`` (one :class:`~mechviz.saes.SAE` of kind ``"transcoder"``
    per layer, ``mlp_in.L -> mlp_out.L``). ``targets``: token ids for the logit nodes (default: the most
    likely next tokens up to ``prob_mass``, at most ``max_logits``; ids or one-token texts). ``max_features``:
    keep only that many active features (largest activations, ties at the cut all kept; the rest go into
    the error nodes). ``batch``: target rows per batched backward pass. ``scores``: compute
    :func:`graph_scores`. ``progress(fraction, stage)``: called as the work advances (after the forward run,
    after each batch of backward rows, logit rows first). ``cancelled()``: polled between batches; when it
    returns True, :class:`GraphCancelled` is raised. See the module docstring.

    >>> import mechviz, mechviz.zoo
    >>> from mechviz.saes import load_sae
    >>> adapter = mechviz.wrap(*mechviz.zoo.load_default_model())
    >>> tcs = [load_sae(d) for d in mechviz.zoo.dictionary_dirs("transcoders")]
    >>> g = attribution_graph(adapter, tcs, "John gave a drink to", max_features=50)
    >>> g.n_features, g.n_errors, g.n_embeds
    (50, 28, 7)
    >>> n = len(g.nodes); rows = list(range(g.n_features)) + list(range(n - g.n_logits, n))
    >>> bool(abs(g.adjacency[rows].sum(1) + g.bias[rows] - g.target_values[rows]).max() < 1e-8)
    True
    """
    L = adapter.n_layers
    kinds = ("transcoder", "skip_transcoder")
    if len(transcoders) != L or any(t.kind not in kinds for t in transcoders):
        raise ValueError(f"need one plain transcoder per layer ({L}) (kind 'transcoder' or 'skip_transcoder'), got "
                         f"{[t.kind for t in transcoders]}")
    for l, tc in enumerate(transcoders):  # noqa: E741
        if tc.normalize != "none" or tc.d_in != adapter.d_model or tc.d_out != adapter.d_model:
            raise ValueError(f"transcoder {l} cannot be attributed through: it needs d_in = d_out = d_model "
                             f"({adapter.d_model}) and no input normalisation (got d_in={tc.d_in}, d_out={tc.d_out}, "
                             f"normalize={tc.normalize!r})")
    if max_features is not None and max_features < 1:
        raise ValueError(f"max_features must be at least 1 (or None for every active feature), got {max_features}")
    ids = adapter.to_tokens(prompt).reshape(-1).cpu()
    T = len(ids)
    fz = Replacement(adapter, ids, dtype=dtype)
    emb, logits = fz.emb, fz.logits
    tcs = [t.to(dtype=dtype) for t in transcoders]
    fz.skip = [tc.W_skip for tc in tcs]
    acts = torch.stack([tc.encode(mi) for tc, mi in zip(tcs, fz.mlp_in)])                  # [L, T, F]
    keep = acts > 0
    if max_features is not None and int(keep.sum()) > max_features:
        thr = acts[keep].sort(descending=True).values[max_features - 1]
        keep &= acts >= thr  # ties at the threshold are all kept
    feat = keep.nonzero().tolist()                                                      # [(l, t, f)]
    dec = torch.stack([tc.directions() for tc in tcs])                                  # [L, F, d]
    kept_out = torch.einsum("ltf,lfd->ltd", acts * keep, dec)
    b_dec = torch.stack([tc.b_dec for tc in tcs])                                        # [L, d]
    add = torch.stack([mo - (mi @ tc.W_skip if tc.W_skip is not None else 0)            # what the hook adds
                       for tc, mi, mo in zip(tcs, fz.mlp_in, fz.mlp_out)])
    err = add - kept_out - b_dec[:, None]                                               # [L, T, d]

    probs = logits.softmax(-1)
    if targets is None:
        order = probs.argsort(descending=True)
        n = int((probs[order].cumsum(0) < prob_mass).sum()) + 1
        targets = order[:min(n, max_logits)].tolist()
    targets = [token_id(adapter, t, "target") for t in targets]
    if not targets or len(set(targets)) != len(targets):
        raise ValueError(f"targets must be distinct tokens, at least one; got {targets!r}")

    # sources: a contribution vector, where it enters (an "add" slot (l, t) or an embedding position)
    src_vec = [acts[l, t, f] * dec[l, f] for l, t, f in feat] + [err[l, t] for l in range(L) for t in range(T)]
    src_vec += [emb[t] for t in range(T)]
    nF, nE, nT, nL = len(feat), L * T, T, len(targets)
    src_vec = torch.stack(src_vec)                                                       # [nF+nE+nT, d]
    slot = torch.tensor([l * T + t for l, t, _ in feat] + list(range(L * T)))            # into add [L*T]

    # target rows: feature pre-activations (encoder row at (l, t)) and demeaned logits
    enc = torch.stack([tcs[l].W_enc[:, f] for l, t, f in feat]) if nF else torch.zeros(0, emb.shape[1], dtype=emb.dtype)
    b_enc = torch.tensor([float(tcs[l].b_enc[f]) for l, t, f in feat], dtype=dtype)
    fl = torch.tensor([l * T + t for l, t, _ in feat], dtype=torch.long)

    def targets_of(e, a):
        ins, lg = fz.run(e, a)
        pre = (ins.flatten(-3, -2)[..., fl, :] * enc).sum(-1) + b_enc
        return torch.cat([pre, lg[..., targets]], -1)

    report = progress or (lambda fraction, stage: None)
    stop = cancelled or (lambda: False)
    e0, a0 = emb.clone().requires_grad_(True), add.clone().requires_grad_(True)
    with torch.enable_grad():
        y = targets_of(e0, a0)
        n_t = len(y)
        report(0.1, "forward")
        order = list(range(nF, n_t)) + list(range(nF))                                   # logit rows first
        W = torch.zeros(n_t, nF + nE + nT, dtype=dtype)
        for i in range(0, n_t, batch):
            if stop():
                raise GraphCancelled("attribution_graph was cancelled")
            rows_i = order[i:i + batch]
            eye = torch.eye(n_t, dtype=y.dtype)[rows_i]
            ge, ga = torch.autograd.grad(y, (e0, a0), eye, retain_graph=True, is_grads_batched=True)
            ga = ga.flatten(1, 2)                                                       # [b, L*T, d]
            mlp_part = (ga[:, slot] * src_vec[:nF + nE]).sum(-1)                         # [b, nF+nE]
            emb_part = (ge * src_vec[nF + nE:]).sum(-1)                                  # [b, T]
            W[rows_i] = torch.cat([mlp_part, emb_part], 1)
            report(0.1 + 0.85 * min(i + batch, n_t) / n_t, "backward")
    y = y.detach()
    with torch.no_grad():
        bias = targets_of(torch.zeros_like(emb), b_dec[:, None].expand(L, T, -1))
    n = nF + nE + nT + nL
    adj = torch.zeros(n, n, dtype=dtype)
    adj[:nF, :nF + nE + nT] = W[:nF]
    adj[nF + nE + nT:, :nF + nE + nT] = W[nF:]
    # no edges backwards in time: a target at layer l only sees features of earlier layers (the frozen model
    # is causal by construction; the gradient of a layer-l pre-activation w.r.t. add[l'] for l' >= l is 0)
    rows = lambda v: torch.cat([v[:nF], torch.zeros(nE + nT, dtype=v.dtype), v[nF:]])   # noqa: E731
    nodes = [("feature", l, t, f) for l, t, f in feat] + [("error", l, t) for l in range(L) for t in range(T)]
    nodes += [("embed", t) for t in range(T)] + [("logit", c) for c in targets]
    values = torch.cat([acts[keep] if nF else torch.zeros(0, dtype=dtype), err.norm(dim=-1).flatten(),
                        emb.norm(dim=-1), y[nF:]])
    values, adj, bias = values.detach(), adj.detach(), bias.detach()
    real = fz._pre_cap[0].detach()
    g = Graph(ids.tolist(), nodes, values.numpy(), adj.numpy(), rows(bias).numpy(), rows(y).numpy(), targets,
              probs[targets].numpy(), nF, nE, nT, nL, (real - real.mean()).numpy(), fz, emb, add, src_vec,
              transcoders=tcs, mlp_in=fz.mlp_in)
    if scores:
        g.replacement_score, g.completeness_score = graph_scores(g)
    report(1.0, "done")
    return g


def normalize(adj: np.ndarray) -> np.ndarray:
    """``|adj|`` with each row scaled to sum 1 (rows summing to 0 stay 0): circuit-tracer's ``normalize_matrix``."""
    a = np.abs(adj)
    return a / np.maximum(a.sum(1, keepdims=True), 1e-10)


def influence(graph: Graph, norm: np.ndarray | None = None) -> np.ndarray:
    """Each node's indirect influence on the logits: ``w @ (N + N^2 + ...)`` with ``w`` the logit nodes'
    probabilities and ``N`` the normalised adjacency (a DAG: the series ends)."""
    N = normalize(graph.adjacency) if norm is None else norm
    w = np.zeros(len(N))
    w[-graph.n_logits:] = graph.logit_probs
    total, cur = np.zeros(len(N)), w @ N
    for _ in range(len(N)):
        if not cur.any():
            break
        total += cur
        cur = cur @ N
    return total


def graph_scores(graph: Graph) -> tuple[float, float]:
    """circuit-tracer's ``(replacement_score, completeness_score)`` of the graph (module docstring)."""
    N = normalize(graph.adjacency)
    inf = influence(graph, N)
    nF, nE, nT = graph.n_features, graph.n_errors, graph.n_embeds
    tok, err = inf[nF + nE:nF + nE + nT].sum(), inf[nF:nF + nE].sum()
    w = np.zeros(len(N))
    w[-graph.n_logits:] = graph.logit_probs
    out = inf + w
    non_err = 1 - N[:, nF:nF + nE].sum(1)
    return float(tok / (tok + err)), float((non_err * out).sum() / out.sum())


def _threshold(scores: np.ndarray, frac: float) -> float:
    """The score above which (inclusive) the largest scores hold ``frac`` of their total."""
    srt = np.sort(scores.ravel())[::-1]
    cum = np.cumsum(srt) / max(srt.sum(), 1e-30)
    return float(srt[min(int(np.searchsorted(cum, frac)), len(srt) - 1)])


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98):
    """circuit-tracer's ``prune_graph``: ``(node_mask [n], edge_mask [n, n])``. Nodes: those whose influence
    is among the largest holding ``node_threshold`` of all nodes' influence, plus every embedding and logit
    node. Edges (of the graph restricted to those nodes): ``N'[i, j] * (influence'[i] + w[i])``, with
    ``N'``/``influence'`` recomputed on the restricted graph, kept down to ``edge_threshold`` of their total.
    Then, until nothing changes, feature and error nodes without a kept outgoing edge and features
    without a kept incoming edge are dropped, with their edges."""
    if not (0 <= node_threshold <= 1 and 0 <= edge_threshold <= 1):
        raise ValueError("node_threshold and edge_threshold must be in [0, 1]")
    n, nL, nT = len(graph.nodes), graph.n_logits, graph.n_embeds
    inf = influence(graph)
    node = inf >= _threshold(inf, node_threshold)
    node[n - nL - nT:] = True
    adj = graph.adjacency * node[:, None] * node[None, :]
    N = normalize(adj)
    w = np.zeros(n)
    w[-nL:] = graph.logit_probs
    edge_scores = N * (influence(graph, N) + w)[:, None]
    edge = edge_scores >= _threshold(edge_scores, edge_threshold)
    while True:
        edge &= node[:, None] & node[None, :]
        new = node.copy()
        new[:n - nL - nT] &= edge[:, :n - nL - nT].any(0)
        new[:graph.n_features] &= edge[:graph.n_features].any(1)
        if (new == node).all():
            return node, edge
        node = new
