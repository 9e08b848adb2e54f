"""Attribution graphs over a local replacement model (Ameisen et al. 2025, "Circuit tracing"; the
open ``circuit-tracer`` library), for any HF causal LM mechviz maps (GPT-2, GPT-J, Llama, Mistral, Qwen 2/3,
Gemma 1/2/3, Phi-3, OLMo-2, GPT-NeoX; not mixture-of-experts models) with one transcoder (or skip transcoder) per MLP.

**Local replacement model** of one prompt (:mod:`.graph_model`). The real model is run once (a float64 copy
by default, from its own weights, hooks placed from its :class:`~mechviz.models.archs.ArchSpec`); then, with
every quantity below frozen at its value in that run, the model is linear:

* attention patterns ``A[l]`` (queries and keys frozen: only the value/output path carries signal; sliding
  windows, attention soft-caps and QK-norms live in the recorded patterns);
* every norm's scale ``s`` outside attention (pre-norms, sandwich post-norms, the final norm): LayerNorm
  ``w * (x - mean(x)) / s + b``, RMSNorm ``w * x / s`` or Gemma's ``(1 + w) * x / s``;
* each MLP branch's output (after any post-norm) is replaced by its transcoder's decoded features plus an
  **error node** per (layer, position) ``e[l, t] = mlp_out[l, t] - transcoder.forward(mlp_in[l, t])``, so
  the replacement reproduces the real run exactly (checked: its logits equal the model's); a skip
  transcoder's ``mlp_in @ W_skip`` stays live (it is linear), as in circuit-tracer;
* each active feature ``(l, t, f)`` is a node with its activation ``a`` frozen: it writes
  ``a * W_dec[f]`` at ``mlp_out[l, t]`` and is not recomputed (its nonlinearity is not differentiated).

**Nodes**, in the order of :attr:`Graph.adjacency`'s rows and columns: active features (``a > 0``, none at a
leading BOS token, whose MLP outputs are the same for every prompt and so constant, as in circuit-tracer; the
``max_features`` largest activations if given; the dropped ones' decoded vectors are added to their
(layer, position)'s error node so the decomposition stays exact), error nodes ``L * T``, embedding nodes
``T`` (the residual stream entering block 0: token embedding plus positions, or Gemma's scaled embedding)
and target logits. A logit node's value is the **demeaned** logit
``logit_c - mean_v logit_v`` (as circuit-tracer), default targets the most probable tokens at the last
position up to cumulative probability 0.95, at most 10.

**Edges** ``adjacency[target, source]``: the direct linear effect, in the frozen model, of the source's
contribution (``a * W_dec[f]``, the error vector, the embedding) on the target's value (a feature's
pre-activation ``W_enc[:, f] . mlp_in[l, t] + b_enc[f]``, or a demeaned logit through the frozen final norm
and the unembedding, before any final soft-cap), through frozen attention and norms, never through another
feature. Computed as gradients of the frozen model (batched backward passes, each layer's feature rows from
their own tensor so a pass only traverses the layers below), times the source vectors. **Completeness**: a
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
    (``frozen``: a :class:`~.graph_model.Replacement`; ``emb`` ``[T, d]``; ``add`` ``[L, T, d]``, what each
    MLP writes besides a skip transcoder's live ``mlp_in @ W_skip``) for interventions. Feature slices:
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
    real_logits: np.ndarray      # the model's own last-position logits (before any soft-cap), demeaned
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
                      scores: bool = True, progress=None, cancelled=None, dtype=torch.float64,
                      constant_bos: bool = True, partial=None) -> Graph:
    """The attribution graph of ``prompt`` (text or token ids) on ``adapter`` (an HF causal LM wrapped by
    :func:`mechviz.wrap`) with ``transcoders`` (one :class:`~mechviz.saes.SAE` of kind ``"transcoder"`` or
    ``"skip_transcoder"`` per layer, ``mlp_in.L -> mlp_out.L``, without input normalisation). ``targets``:
    token ids for the logit nodes (default: the most likely next tokens up to ``prob_mass``, at most
    ``max_logits``; ids or one-token texts). ``max_features``:
    keep only that many active features (largest activations, ties at the cut all kept; the rest go into
    the error nodes). ``batch``: target rows per batched backward pass. ``scores``: compute
    :func:`graph_scores`. ``progress(fraction, stage)``: called as the work advances (after the forward run,
    after each batch of backward rows, logit rows first). ``cancelled()``: polled between batches; when it
    returns True, :class:`GraphCancelled` is raised. ``dtype``: of the model copy and the whole computation
    (float64 by default; float32 halves the memory of a big model, edges then hold to ~1e-4).
    ``constant_bos``: circuit-tracer's convention: when the prompt starts with the model's BOS token, what the
    MLPs write there is the same for every prompt, so it is a constant (part of :attr:`Graph.bias`): no feature
    nodes at position 0 and zero error nodes there. ``False`` keeps them as nodes. ``partial(graph)``: called
    once the logit rows are done (before any feature row), with a Graph whose feature rows are still zero: the
    logits' direct inputs, for a first look while the rest is computed. See the module docstring.

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
    if getattr(adapter, "spec", None) is None or not hasattr(adapter, "model"):
        raise ValueError(f"attribution graphs need a HuggingFace causal LM wrapped by mechviz.wrap (its architecture "
                         f"map places the hooks); got {type(adapter).__name__}")
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
    dev = fz.emb.device
    tcs = [t.to(device=dev, dtype=dtype) for t in transcoders]
    fz.skip = [tc.W_skip for tc in tcs]
    acts = torch.stack([tc.encode(mi) for tc, mi in zip(tcs, fz.mlp_in)])                  # [L, T, F]
    keep = acts > 0
    bos = constant_bos and adapter.bos_id() is not None and int(ids[0]) == adapter.bos_id()
    if bos:
        keep[:, 0] = False
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
    const = b_dec[:, None].expand(L, T, -1).clone()           # what the MLPs add when every node is zero
    if bos:   # the MLPs' whole output at a leading BOS is constant
        const[:, 0], err[:, 0] = add[:, 0], 0

    probs = logits.softmax(-1)
    if targets is None:
        order = probs.argsort(descending=True)
        n = int((probs[order].cumsum(0) < prob_mass).sum()) + 1
        targets = order[:min(n, max_logits)].tolist()
    targets = [token_id(adapter, t, "target") for t in targets]
    if not targets or len(set(targets)) != len(targets):
        raise ValueError(f"targets must be distinct tokens, at least one; got {targets!r}")

    # sources: a contribution vector, where it enters (an "add" slot (l, t) or an embedding position)
    fi = torch.tensor(feat, dtype=torch.long, device=dev).reshape(-1, 3)
    fL, fT, fF = fi[:, 0], fi[:, 1], fi[:, 2]
    src_vec = [acts[fL, fT, fF][:, None] * dec[fL, fF], err.flatten(0, 1), emb]
    nF, nE, nT, nL = len(feat), L * T, T, len(targets)
    src_vec = torch.cat(src_vec)                                                         # [nF+nE+nT, d]
    slot = torch.cat([fL * T + fT, torch.arange(L * T, device=dev)])                                 # into add [L*T]
    # gather[i, slot_i * d + k] = src_vec[i, k]: the MLP sources' edges are one sparse product with the gradients
    d = emb.shape[1]
    gather = torch.sparse_coo_tensor(
        torch.stack([torch.arange(nF + nE, device=dev).repeat_interleave(d),
                     (slot[:, None] * d + torch.arange(d, device=dev)).flatten()]),
        src_vec[:nF + nE].flatten(), (nF + nE, L * T * d), check_invariants=True).coalesce()

    # target rows: feature pre-activations (encoder row at (l, t)) and demeaned logits
    enc = torch.stack([tc.W_enc for tc in tcs])[fL, :, fF]                                # [nF, d]
    b_enc = torch.stack([tc.b_enc for tc in tcs])[fL, fF]
    by_layer = [(fL == l).nonzero()[:, 0] for l in range(L)]  # noqa: E741  (features are sorted by layer)

    def targets_of(e, a):
        """[logit rows, then each layer's feature rows]: separate tensors, so that a backward pass from a
        layer's rows only traverses the layers below it."""
        ins, lg = fz.run(e, a, stacked=False)
        pre = [(ins[l][..., fT[i], :] * enc[i]).sum(-1) + b_enc[i] for l, i in enumerate(by_layer)]  # noqa: E741
        return [lg[..., targets]] + pre

    report = progress or (lambda fraction, stage: None)
    stop = cancelled or (lambda: False)
    e0, a0 = emb.clone().requires_grad_(True), add.clone().requires_grad_(True)
    with torch.no_grad():
        zero = targets_of(torch.zeros_like(emb), const)
        bias = torch.cat(zero[1:] + zero[:1])
    nodes = [("feature", l, t, f) for l, t, f in feat] + [("error", l, t) for l in range(L) for t in range(T)]
    nodes += [("embed", t) for t in range(T)] + [("logit", c) for c in targets]
    npy = lambda v: v.detach().cpu().numpy()  # noqa: E731
    real = fz._pre_cap[0].detach()

    def assemble(W, y) -> Graph:
        n = nF + nE + nT + nL
        adj = torch.zeros(n, n, dtype=dtype, device=dev)
        adj[:nF, :nF + nE + nT] = W[:nF]
        adj[nF + nE + nT:, :nF + nE + nT] = W[nF:]
        # no edges backwards in time: a target at layer l only sees features of earlier layers (the frozen model
        # is causal by construction; the gradient of a layer-l pre-activation w.r.t. add[l'] for l' >= l is 0)
        rows = lambda v: torch.cat([v[:nF], torch.zeros(nE + nT, dtype=v.dtype, device=dev), v[nF:]])  # noqa: E731
        values = torch.cat([acts[keep] if nF else torch.zeros(0, dtype=dtype, device=dev),
                            err.norm(dim=-1).flatten(), emb.norm(dim=-1), y[nF:]])
        return Graph(ids.tolist(), nodes, npy(values), npy(adj), npy(rows(bias)), npy(rows(y)), targets,
                     npy(probs[targets]), nF, nE, nT, nL, npy(real - real.mean()), fz, emb, add, src_vec,
                     transcoders=tcs, mlp_in=fz.mlp_in)

    with torch.enable_grad():
        parts = targets_of(e0, a0)
        y = torch.cat(parts[1:] + parts[:1]).detach()
        n_t, done = nF + nL, 0
        report(0.1, "forward")
        W = torch.zeros(n_t, nF + nE + nT, dtype=dtype, device=dev)
        starts = [nF] + [int(i[0]) if len(i) else 0 for i in by_layer]                   # each part's first row
        for k, (part, start) in enumerate(zip(parts, starts)):                           # logit rows first
            if k == 1 and partial is not None:   # the logits' direct inputs are known: a first look
                partial(assemble(W, y))
            for i in range(0, len(part), batch):
                if stop():
                    raise GraphCancelled("attribution_graph was cancelled")
                b = min(batch, len(part) - i)
                eye = torch.zeros(b, len(part), dtype=dtype, device=dev)
                eye[torch.arange(b, device=dev), torch.arange(i, i + b, device=dev)] = 1
                ge, ga = torch.autograd.grad(part, (e0, a0), eye, retain_graph=True, is_grads_batched=True,
                                             allow_unused=True, materialize_grads=True)
                if ga.dim() == a0.dim():  # layer-0 rows do not reach add: unbatched zeros
                    ga = ga.expand(b, *a0.shape)
                mlp_part = (gather @ ga.flatten(1).T).T                                  # [b, nF+nE]
                emb_part = (ge * src_vec[nF + nE:]).sum(-1)                              # [b, T]
                W[start + i:start + i + b] = torch.cat([mlp_part, emb_part], 1)
                done += b
                report(0.1 + 0.85 * done / n_t, "backward")
    g = assemble(W, y)
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
    """The score above which (inclusive) the largest scores hold ``frac`` of their total (scores are >= 0;
    only the nonzero ones are sorted: an adjacency is mostly zeros; ``frac = 1`` keeps every nonzero one)."""
    flat = scores.ravel()
    srt = np.sort(flat[flat > 0])[::-1]
    if not len(srt):
        return 0.0
    cum = np.cumsum(srt)
    return float(srt[min(int(np.searchsorted(cum / cum[-1], frac)), len(srt) - 1)])


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
