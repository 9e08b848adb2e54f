"""Interventions on attribution graphs and edges split by attention head (mechviz.analysis.graph_edit), on the
bundled model with its transcoders.

The references are built here, independently of graph.py / graph_edit.py: the unfrozen replacement is the
float64 HF model itself with forward hooks replacing each MLP's output; the frozen one is written from the HF
modules with attention patterns and LayerNorm scales read from the float64 HF model's own run (eager
attention's weights, hooks on the norms), with an optional per-head mask on the value/output path."""

import copy

import numpy as np
import pytest
import torch

import mechviz
from mechviz import zoo
from mechviz.analysis.graph import GraphCancelled, attribution_graph
from mechviz.analysis.graph_edit import edge_heads, intervene
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
    m64 = copy.deepcopy(model).double().requires_grad_(False)
    return adapter, tcs, run, g, m64


def _frozen(adapter, run, m):
    """f(emb [T, d], mlp(l, mlp_in) -> [T, d], head_mask [L, H] or None) -> (mlp_in [L, T, d], last logits [V]).
    Patterns and LayerNorm scales from the float64 model's own run (eager attention, hooks on the norms)."""
    tr, L, H, d = m.transformer, adapter.n_layers, adapter.n_heads, adapter.d_model
    m64 = copy.deepcopy(m)
    m64.set_attn_implementation("eager")
    ins = {}
    norms = [(f"ln1.{l}", blk.ln_1) for l, blk in enumerate(m64.transformer.h)]
    norms += [(f"ln2.{l}", blk.ln_2) for l, blk in enumerate(m64.transformer.h)] + [("lnf", m64.transformer.ln_f)]
    hooks = [mod.register_forward_pre_hook(lambda mod, inp, k=k: ins.__setitem__(k, inp[0][0])) for k, mod in norms]
    try:
        with torch.no_grad():
            pats = list(m64(input_ids=run.tokens.reshape(1, -1), output_attentions=True).attentions)
    finally:
        for h in hooks:
            h.remove()
    pats = [p[0] for p in pats]

    def scale(x, mod):
        return (x.var(-1, unbiased=False) + mod.eps).sqrt()[:, None]

    s1 = [scale(ins[f"ln1.{l}"], tr.h[l].ln_1) for l in range(L)]
    s2 = [scale(ins[f"ln2.{l}"], tr.h[l].ln_2) for l in range(L)]
    sf = scale(ins["lnf"], tr.ln_f)

    def ln(x, mod, s):
        return (x - x.mean(-1, keepdim=True)) / s * mod.weight + mod.bias

    def f(emb, mlp, head_mask=None):
        x, ins = emb, []
        for l, blk in enumerate(tr.h):
            v = (ln(x, blk.ln_1, s1[l]) @ blk.attn.c_attn.weight + blk.attn.c_attn.bias)[:, 2 * d:]
            z = pats[l] @ v.reshape(len(v), H, -1).transpose(0, 1)                      # [H, T, dh]
            if head_mask is not None:
                z = z * head_mask[l][:, None, None]
            x = x + blk.attn.c_proj(z.transpose(0, 1).reshape(len(v), d))
            ins.append(ln(x, blk.ln_2, s2[l]))
            x = x + mlp(l, ins[-1])
        return torch.stack(ins), ln(x, tr.ln_f, sf)[-1] @ m.lm_head.weight.T

    return f


def _replacement_mlp(tcs, m, tokens, clamp):
    """Each MLP: transcoder output with features re-encoded and (l, t, f) -> value clamped, plus the error of the
    float64 model's own run (its MLPs' inputs and outputs captured by hooks)."""
    tcs = [t.to(dtype=torch.float64) for t in tcs]
    io = {}
    hooks = [blk.mlp.register_forward_hook(lambda mod, inp, o, l=l: io.__setitem__(l, (inp[0][0], o[0])))
             for l, blk in enumerate(m.transformer.h)]
    try:
        with torch.no_grad():
            m(input_ids=torch.tensor(tokens)[None])
    finally:
        for h in hooks:
            h.remove()
    err = [io[l][1] - tc.forward(io[l][0]) for l, tc in enumerate(tcs)]
    acts = {}

    def mlp(l, mi):
        a = tcs[l].encode(mi)
        for (cl, t, f), v in clamp.items():
            if cl == l:
                a[t, f] = v
        acts[l] = a
        return a @ tcs[l].W_dec + tcs[l].b_dec + err[l]

    return mlp, acts


def _demean(x):
    x = x.detach().double().numpy()
    return x - x.mean()


def test_no_edits_reproduce_the_model(setup):
    adapter, tcs, run, g, m64 = setup
    with torch.no_grad():
        real = m64(input_ids=torch.tensor(g.tokens)[None]).logits[0, -1]
    for freeze in (True, False):
        out = intervene(g, {}, freeze_attention=freeze)
        assert out.freeze_attention is freeze and out.edits == {}
        assert np.abs(out.logits - _demean(real)).max() < 1e-6
        assert np.abs(out.probs - real.softmax(-1).numpy()).max() < 1e-8
        assert np.abs(out.activations - g.values[:g.n_features]).max() < 1e-8
        assert out.top(3) == [(int(i), float(out.probs[i])) for i in np.argsort(-out.probs)[:3]]
        assert out.top(3)[0][0] == int(real.argmax())


def test_edits_equal_independent_replacements(setup):
    adapter, tcs, run, g, m64 = setup
    early = [i for i in range(g.n_features) if g.nodes[i][1] == 0]
    i, j = early[int(np.argmax(g.values[early]))], early[0]
    edits = {i: 0.0, j: 2.5 * g.values[j]}
    clamp = {g.nodes[k][1:]: v for k, v in edits.items()}
    feats = g.nodes[:g.n_features]
    # frozen attention and norms: the independent frozen model
    mlp, acts = _replacement_mlp(tcs, m64, g.tokens, clamp)
    with torch.no_grad():
        _, lg = _frozen(adapter, run, m64)(g.emb, mlp)
    out = intervene(g, edits, freeze_attention=True)
    assert np.abs(out.logits - _demean(lg)).max() < 1e-8
    assert np.abs(out.probs - lg.softmax(-1).numpy()).max() < 1e-10
    want = np.array([float(acts[l][t, f]) for _, l, t, f in feats])
    assert np.abs(out.activations - want).max() < 1e-8
    assert out.activations[i] == 0 and out.activations[j] == edits[j]
    assert np.abs(out.activations - g.values[:g.n_features]).max() > 1e-3  # later features did move
    # recomputed attention and norms: the real HF model with its MLPs' outputs replaced by hooks
    mlp, acts = _replacement_mlp(tcs, m64, g.tokens, clamp)
    hooks = [blk.mlp.register_forward_hook(lambda mod, inp, o, l=l: mlp(l, inp[0][0])[None])
             for l, blk in enumerate(m64.transformer.h)]
    try:
        with torch.no_grad():
            real = m64(input_ids=torch.tensor(g.tokens)[None]).logits[0, -1]
    finally:
        for h in hooks:
            h.remove()
    out = intervene(g, edits, freeze_attention=False)
    assert np.abs(out.logits - _demean(real)).max() < 1e-6
    want = np.array([float(acts[l][t, f]) for _, l, t, f in feats])
    assert np.abs(out.activations - want).max() < 1e-8
    assert np.abs(out.logits - intervene(g, edits).logits).max() > 1e-4  # the two modes differ


def test_last_layer_edit_is_its_edge(setup):
    """A last-layer feature feeds no other feature: in the frozen model, scaling it moves each logit by its edge."""
    _, _, _, g, _ = setup
    last = [i for i in range(g.n_features) if g.nodes[i][1] == len(g.transcoders) - 1]
    i = last[int(np.argmax(g.values[last]))]
    out = intervene(g, {i: 3 * g.values[i]})
    base = intervene(g, {})
    n = len(g.nodes)
    for r in range(n - g.n_logits, n):
        c = g.nodes[r][1]
        assert abs((out.logits[c] - base.logits[c]) - 2 * g.adjacency[r, i]) < 1e-8


def test_bad_edits(setup):
    _, _, _, g, _ = setup
    n = len(g.nodes)
    for bad in ({g.n_features: 1.0}, {n - 1: 0.0}, {n: 0.0}, {-1: 0.0}, {"a": 0.0}, {0: float("nan")}):
        with pytest.raises(ValueError, match="feature node|finite"):
            intervene(g, bad)
    with pytest.raises(ValueError, match="dict"):
        intervene(g, [(0, 1.0)])


def _edge_by_intervention(g, f, tcs, target, source, head_mask=None):
    """The edge target <- source recomputed by removing the source's contribution in the independent frozen model."""
    node = g.nodes[source]
    fixed = lambda add: (lambda l, mi: add[l])  # noqa: E731
    emb, add = g.emb.clone(), g.add.clone()

    def value(emb, add):
        with torch.no_grad():
            ins, lg = f(emb, fixed(add), head_mask)
        tn = g.nodes[target]
        if tn[0] == "feature":
            return float(ins[tn[1], tn[2]] @ tcs[tn[1]].W_enc[:, tn[3]].double())
        return float(lg[tn[1]] - lg.mean())

    base = value(emb, add)
    if node[0] == "embed":
        emb[node[1]] -= g.sources[source]
    else:
        add[node[1], node[2]] -= g.sources[source]
    return base - value(emb, add)


def test_edge_heads_one_hop(setup):
    adapter, tcs, run, g, m64 = setup
    f = _frozen(adapter, run, m64)
    L, H = adapter.n_layers, adapter.n_heads
    feats = g.nodes[:g.n_features]
    for same_pos in (False, True):
        cand = [(abs(g.adjacency[a, b]), a, b) for a, (_, la, ta, _) in enumerate(feats)
                for b, (_, lb, tb, _) in enumerate(feats) if la == lb + 1 and (ta == tb) == same_pos]
        _, tgt, src = max(cand)
        shares = edge_heads(g, tgt, src)
        assert shares.shape == (L, H)
        la = g.nodes[tgt][1]
        assert not shares[:la].any() and not shares[la + 1:].any()  # only the one layer between them
        edge = g.adjacency[tgt, src]
        tol = 1e-10
        assert abs(_edge_by_intervention(g, f, tcs, tgt, src) - edge) < tol
        no_layer = torch.ones(L, H, dtype=torch.float64)
        no_layer[la] = 0
        residual = _edge_by_intervention(g, f, tcs, tgt, src, no_layer)
        assert (abs(residual) > 1e-3) == same_pos and (abs(residual) < 1e-12) == (not same_pos)
        assert abs(shares.sum() - (edge - residual)) < tol
        if not same_pos:  # exact in graph.py's own frozen model: all of a one-hop edge goes through the heads
            assert abs(shares.sum() - edge) < 1e-10
        assert np.abs(shares).max() > 1e-5
        for h in range(H):  # brute force: each head removed in turn
            mask = torch.ones(L, H, dtype=torch.float64)
            mask[la, h] = 0
            assert abs(shares[la, h] - (edge - _edge_by_intervention(g, f, tcs, tgt, src, mask))) < tol


def test_edge_heads_multi_hop_and_bad_nodes(setup):
    adapter, tcs, run, g, m64 = setup
    f = _frozen(adapter, run, m64)
    n, L, H = len(g.nodes), adapter.n_layers, adapter.n_heads
    emb_src = g.n_features + g.n_errors + len(g.tokens) - 3
    shares = edge_heads(g, n - 1, emb_src)  # embedding -> logit: every layer can carry it
    for l, h in [(0, 0), (2, 1), (3, H - 1)]:
        mask = torch.ones(L, H, dtype=torch.float64)
        mask[l, h] = 0
        want = g.adjacency[n - 1, emb_src] - _edge_by_intervention(g, f, tcs, n - 1, emb_src, mask)
        assert abs(shares[l, h] - want) < 1e-10
    assert np.abs(shares).max() > 1e-4
    err_src = g.n_features + 2 * len(g.tokens)  # an error node at layer 2: only layer 3's heads
    assert not edge_heads(g, n - 1, err_src)[:3].any()
    with pytest.raises(ValueError, match="target"):
        edge_heads(g, g.n_features, 0)
    with pytest.raises(ValueError, match="source"):
        edge_heads(g, n - 1, n - 1)


def test_progress_and_cancel(setup):
    adapter, tcs, _, _, _ = setup
    calls = []
    g = attribution_graph(adapter, tcs, "John gave a drink to", max_features=40, batch=8, scores=False,
                          progress=lambda frac, stage: calls.append((frac, stage)))
    fracs = [c[0] for c in calls]
    n_rows = g.n_features + g.n_logits
    assert calls[0][1] == "forward" and calls[-1] == (1.0, "done")
    assert sum(s == "backward" for _, s in calls) == -(-n_rows // 8)
    assert fracs == sorted(fracs) and 0 < fracs[0] < 1
    polls = []

    def cancelled():
        polls.append(1)
        return len(polls) >= 2

    with pytest.raises(GraphCancelled, match="cancelled"):
        attribution_graph(adapter, tcs, "John gave a drink to", max_features=40, batch=8, cancelled=cancelled)
    assert len(polls) == 2 and issubclass(GraphCancelled, RuntimeError)
