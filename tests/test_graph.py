"""Attribution graphs (mechviz.analysis.graph) on the bundled model and its per-layer transcoders.

The edges are checked against interventions on a frozen replacement model built here independently of
graph.py: from the HF model's own modules (float64 copy), with the attention patterns and LayerNorm
scales read from mechviz's capture of the real run (adapter.run), and the MLPs replaced by fixed outputs
(features frozen as linear nodes: their nonlinearity is never recomputed)."""

import copy

import numpy as np
import pytest
import torch

import mechviz
from mechviz import zoo
from mechviz.analysis.graph import attribution_graph, graph_scores, prune
from mechviz.saes import load_sae

PROMPT = "When Mary and John went to the store, John gave"


@pytest.fixture(scope="module")
def setup():
    model, tok = zoo.load_default_model()
    adapter = mechviz.wrap(model, tok)
    tcs = [load_sae(d) for d in zoo.dictionary_dirs("transcoders")]
    L = adapter.n_layers
    sites = [f"{s}.{l}" for l in range(L) for s in ("resid_pre", "resid_mid", "attn_pattern", "mlp_in", "mlp_out")]
    run = adapter.run(PROMPT, capture=sites + [f"resid_post.{L - 1}"])
    g = attribution_graph(adapter, tcs, PROMPT, max_features=150)
    return adapter, tcs, run, g


def _frozen_model(adapter, run):
    """An independent frozen replacement model: f(emb [T, d], add [L, T, d]) -> (mlp_in [L, T, d], last logits)."""
    m = copy.deepcopy(adapter.model).double().requires_grad_(False)
    tr, L = m.transformer, adapter.n_layers
    H = adapter.n_heads
    d = adapter.d_model

    def scale(x, mod):
        x = x.double()
        return (x.var(-1, unbiased=False) + mod.eps).sqrt()[:, None]

    s1 = [scale(run[f"resid_pre.{l}"], tr.h[l].ln_1) for l in range(L)]
    s2 = [scale(run[f"resid_mid.{l}"], tr.h[l].ln_2) for l in range(L)]
    sf = scale(run[f"resid_post.{L - 1}"], tr.ln_f)
    pats = [run[f"attn_pattern.{l}"].double() for l in range(L)]

    def ln(x, mod, s):
        return (x - x.mean(-1, keepdim=True)) / s * mod.weight + mod.bias

    def f(emb, add):
        x, ins = emb, []
        for l, blk in enumerate(tr.h):
            v = (ln(x, blk.ln_1, s1[l]) @ blk.attn.c_attn.weight + blk.attn.c_attn.bias)[:, 2 * d:]
            vh = v.reshape(len(v), H, -1).transpose(0, 1)
            z = (pats[l] @ vh).transpose(0, 1).reshape(len(v), d)
            x = x + blk.attn.c_proj(z)
            ins.append(ln(x, blk.ln_2, s2[l]))
            x = x + add[l]
        return torch.stack(ins), ln(x, tr.ln_f, sf)[-1] @ m.lm_head.weight.T

    return f


def _source_vec(g, j):
    """Source node j's contribution, and where it enters: ('add', l, t) or ('emb', t)."""
    node = g.nodes[j]
    if node[0] == "feature":
        return g.sources[j], ("add", node[1], node[2])
    if node[0] == "error":
        return g.sources[j], ("add", node[1], node[2])
    return g.sources[j], ("emb", node[1])


def _target(g, tcs, i, ins, logits):
    node = g.nodes[i]
    if node[0] == "feature":
        _, l, t, f = node
        return float(ins[l, t].double() @ tcs[l].W_enc[:, f].double() + tcs[l].b_enc[f].double())
    return float(logits[node[1]] - logits.mean())


def test_replacement_reproduces_the_real_model(setup):
    adapter, tcs, run, g = setup
    ids = torch.tensor(g.tokens)
    with torch.no_grad():
        real = adapter.model(input_ids=ids[None]).logits[0, -1].double()
    real = (real - real.mean()).numpy()
    ins, lg = g.frozen.run(g.emb, g.add)
    assert np.abs(lg.detach().numpy() - real).max() < 1e-4
    f = _frozen_model(adapter, run)
    ins2, lg2 = f(g.emb, g.add)
    assert np.abs((lg2 - lg2.mean()).numpy() - real).max() < 1e-4
    # its MLP inputs are the real ones, so its feature pre-activations are the transcoders' own
    for l in range(adapter.n_layers):
        assert (ins2[l] - run[f"mlp_in.{l}"].double()).abs().max() < 1e-4
    i = 0
    _, l, t, fi = g.nodes[i]
    assert abs(g.target_values[i] - float(tcs[l].pre_acts(run[f"mlp_in.{l}"][t])[fi])) < 1e-4
    # the replacement's MLP output (kept features + b_dec + error) is the real MLP output
    for l in range(adapter.n_layers):
        assert (g.add[l] - run[f"mlp_out.{l}"].double()).abs().max() < 1e-4


def test_nodes_and_targets(setup):
    adapter, tcs, run, g = setup
    assert g.n_features <= 150 + 5 and g.n_errors == adapter.n_layers * len(g.tokens) and g.n_embeds == len(g.tokens)
    assert 1 <= g.n_logits <= 10
    assert g.logit_probs[:-1].sum() < 0.95 or g.n_logits == 10
    feats = [n for n in g.nodes if n[0] == "feature"]
    acts = np.array([float(tcs[l].encode(run[f"mlp_in.{l}"][t])[f]) for _, l, t, f in feats])
    assert (acts > 0).all() and np.abs(acts - g.values[:g.n_features]).max() < 1e-4
    n = len(g.nodes)
    assert np.all(g.adjacency[g.n_features:n - g.n_logits] == 0)  # errors and embeddings have no inputs
    for i, (_, l, t, _) in enumerate(feats):  # no edge from a feature of the same or a later layer
        later = [j for j, m in enumerate(feats) if m[1] >= l]
        assert np.all(g.adjacency[i, later] == 0)


def test_completeness(setup):
    _, _, _, g = setup
    n = len(g.nodes)
    rows = np.r_[0:g.n_features, n - g.n_logits:n]
    got = g.adjacency[rows].sum(1) + g.bias[rows]
    assert np.abs(got - g.target_values[rows]).max() < 1e-6


def test_edges_equal_interventions(setup):
    adapter, tcs, run, g = setup
    f = _frozen_model(adapter, run)
    with torch.no_grad():
        ins0, lg0 = f(g.emb, g.add)
    n = len(g.nodes)
    nF, nE, nT = g.n_features, g.n_errors, g.n_embeds
    rng = np.random.default_rng(0)
    last = [i for i in range(nF) if g.nodes[i][1] == adapter.n_layers - 1]
    tgts = [int(rng.choice(last)), int(rng.integers(nF)), n - g.n_logits, n - 1]
    checked = 0
    for i in tgts:
        row = np.abs(g.adjacency[i, :nF + nE + nT])
        strong = list(np.argsort(-row)[:3])
        srcs = strong + [int(rng.integers(nF)), nF + int(rng.integers(nE)), nF + nE + int(rng.integers(nT))]
        base = _target(g, tcs, i, ins0, lg0)
        for j in srcs:
            vec, (kind, *where) = _source_vec(g, j)
            emb, add = g.emb.clone(), g.add.clone()
            if kind == "add":
                add[where[0], where[1]] -= vec
            else:
                emb[where[0]] -= vec
            with torch.no_grad():
                ins, lg = f(emb, add)
            effect = base - _target(g, tcs, i, ins, lg)
            assert abs(effect - g.adjacency[i, j]) < 1e-4, (g.nodes[i], g.nodes[j], effect, g.adjacency[i, j])
            checked += 1
    assert checked == 24
    assert np.abs(g.adjacency[tgts]).max() > 1e-2  # the checks are not all of zero edges


def test_scores_and_pruning(setup):
    _, _, _, g = setup
    r, c = graph_scores(g)
    assert (r, c) == (g.replacement_score, g.completeness_score)
    assert 0 < r <= 1 and 0 < c <= 1
    n, nL, nT = len(g.nodes), g.n_logits, g.n_embeds
    keep, edges = prune(g, 0.8, 0.98)
    assert keep[n - nL - nT:].all() and 0 < keep[:g.n_features].sum() < g.n_features
    assert not edges[~keep].any() and not edges[:, ~keep].any() and not edges[g.adjacency == 0].any()
    assert edges[:, :n - nL - nT].any(0)[keep[:n - nL - nT]].all()  # kept features/errors have an outgoing edge
    assert edges[:g.n_features].any(1)[keep[:g.n_features]].all()    # kept features have an incoming edge
    keep2, edges2 = prune(g, 0.5, 0.9)
    assert keep2[:g.n_features].sum() <= keep[:g.n_features].sum() and edges2.sum() <= edges.sum()
    assert prune(g, 1.0, 1.0)[0][:g.n_features].sum() >= keep[:g.n_features].sum()


def test_given_targets_and_all_features(setup):
    adapter, tcs, _, g = setup
    g2 = attribution_graph(adapter, tcs, "John gave a drink to", targets=[5, 7], scores=False)
    n = len(g2.nodes)
    assert g2.nodes[-2:] == [("logit", 5), ("logit", 7)]
    rows = np.r_[0:g2.n_features, n - 2:n]
    assert np.abs(g2.adjacency[rows].sum(1) + g2.bias[rows] - g2.target_values[rows]).max() < 1e-6
    ins, lg = g2.frozen.run(g2.emb, g2.add)
    with torch.no_grad():
        real = adapter.model(input_ids=torch.tensor(g2.tokens)[None]).logits[0, -1].double()
    assert np.abs(lg.detach().numpy() - (real - real.mean()).numpy()).max() < 1e-4


def test_bad_inputs(setup):
    adapter, tcs, _, _ = setup
    with pytest.raises(ValueError, match="max_features"):
        attribution_graph(adapter, tcs, "John gave", max_features=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        attribution_graph(adapter, tcs, "John gave", targets=[10 ** 6])
    with pytest.raises(ValueError, match="distinct"):
        attribution_graph(adapter, tcs, "John gave", targets=[5, 5])
    with pytest.raises(ValueError, match="one plain transcoder per layer"):
        attribution_graph(adapter, tcs[:2], "John gave")


def test_no_active_features(setup):
    """Transcoders that never fire: everything goes through error nodes, and the decomposition is still exact."""
    import dataclasses

    adapter, tcs, _, _ = setup
    dead = [dataclasses.replace(t, threshold=t.threshold + 1e6) for t in tcs]
    g = attribution_graph(adapter, dead, "John gave a drink to")
    n = len(g.nodes)
    assert g.n_features == 0
    rows = np.arange(n - g.n_logits, n)
    assert np.abs(g.adjacency[rows].sum(1) + g.bias[rows] - g.target_values[rows]).max() < 1e-6
    assert 0 <= g.replacement_score < 1
