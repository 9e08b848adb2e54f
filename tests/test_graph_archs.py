"""Attribution graphs on every kind of block mechviz maps: tiny random HF models (tests/archs.py, plus Llama and
GPT-2 built here) with random per-layer transcoders (JumpReLU or ReLU, 32 features, thresholds so that about a
fifth of them fire).

The reference frozen replacement model is written here per architecture from the HF modules (independently of
graph_model.py's hooks): attention patterns from the float64 model's own eager ``output_attentions``, norm
scales from hooks on the norm modules' inputs in that run, the value/output path and the norms written out by
hand (LayerNorm, RMSNorm, Gemma's (1 + w) RMSNorm; sandwich norms; GPT-J's parallel block; OLMo-2's post-norms
only), each MLP's output fixed (a skip transcoder's ``mlp_in @ W_skip`` live)."""

import copy

import numpy as np
import pytest
import torch

from mechviz.analysis.graph import attribution_graph
from mechviz.analysis.graph_edit import intervene
from mechviz.models import HFAdapter
from mechviz.saes import SAE

from . import archs as A

IDS = [1, 5, 17, 42, 8, 99, 5, 17, 42, 3]  # not 0: the pad token, whose embedding is zero (norm scales sqrt(eps))
F = 32
SCALE = 6.0  # as tests/archs.py
_LLAMA = dict(pre="input_layernorm", v="self_attn.v_proj", o="self_attn.o_proj", out_norm=None,
              mlp_in="post_attention_layernorm", mlp="mlp", final="model.norm", form="rms")
_SANDWICH = dict(_LLAMA, out_norm="post_attention_layernorm", mlp_in="pre_feedforward_layernorm", form="gemma")
REF = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "gemma": dict(_LLAMA, form="gemma"),
    "gemma2": _SANDWICH, "gemma3_text": _SANDWICH,
    "olmo2": dict(_LLAMA, pre=None, out_norm="post_attention_layernorm", mlp_in=None),
    "gptj": dict(pre="ln_1", v="attn.v_proj", o="attn.out_proj", out_norm=None, mlp_in="ln_1", mlp="mlp",
                 final="transformer.ln_f", form="ln", parallel=True),
    "gpt2": dict(pre="ln_1", v="attn.c_attn", o="attn.c_proj", out_norm=None, mlp_in="ln_2", mlp="mlp",
                 final="transformer.ln_f", form="ln"),
}


def build(arch):
    import transformers as tf

    if arch == "llama":
        torch.manual_seed(0)
        m = tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=3, num_key_value_heads=2, **A.DENSE))
    elif arch == "gpt2":
        torch.manual_seed(0)
        m = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=3, n_embd=48, n_head=4, n_positions=64, **A.COMMON))
    else:
        return A.build(arch, scale=SCALE)
    A._randomise(m, SCALE)
    m.set_attn_implementation("eager")
    return m.eval()


def blocks(m):
    return m.transformer.h if hasattr(m, "transformer") else m.model.layers


def reference(m, arch, ids):
    """(f, mlp_in [L, T, d], mlp_out [L, T, d], emb [T, d]): f(emb, add, skip) -> (mlp_in, last pre-cap logits)."""
    ref, m = REF[arch], copy.deepcopy(m).double()
    cfg = m.config
    H = cfg.num_attention_heads if hasattr(cfg, "num_attention_heads") else cfg.n_head
    Hkv = getattr(cfg, "num_key_value_heads", H)
    rec, hooks = {}, []
    for l, blk in enumerate(blocks(m)):
        for key in ("pre", "out_norm", "mlp_in"):
            if ref[key]:
                hooks.append(blk.get_submodule(ref[key]).register_forward_pre_hook(
                    lambda mod, a, k=(key, l): rec.__setitem__(k, a[0][0])))
        hooks.append(blk.get_submodule(ref["mlp"]).register_forward_hook(
            lambda mod, a, o, l=l: rec.__setitem__(("mlp", l), (a[0][0], o[0]))))
    hooks.append(blocks(m)[0].register_forward_pre_hook(
        lambda mod, a, kw: rec.__setitem__("emb", (a[0] if a else kw["hidden_states"])[0]), with_kwargs=True))
    hooks.append(m.get_submodule(ref["final"]).register_forward_pre_hook(lambda mod, a: rec.__setitem__("f", a[0][0])))
    with torch.no_grad():
        out = m(input_ids=torch.tensor([ids]), output_attentions=True)
    for h in hooks:
        h.remove()
    pats = [a[0] for a in out.attentions]

    def frozen(mod, x_rec):
        eps = getattr(mod, "eps", getattr(mod, "variance_epsilon", None))
        if ref["form"] == "ln":
            s = (x_rec.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
            return lambda x: (x - x.mean(-1, keepdim=True)) / s * mod.weight + mod.bias
        s = (x_rec.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        w = 1 + mod.weight if ref["form"] == "gemma" else mod.weight
        return lambda x: x / s * w

    L = len(blocks(m))
    norm = {(k, l): frozen(blocks(m)[l].get_submodule(ref[k]), rec[(k, l)])
            for l in range(L) for k in ("pre", "out_norm", "mlp_in") if ref[k]}
    fnorm = frozen(m.get_submodule(ref["final"]), rec["f"][-1:])
    W_U = m.get_output_embeddings()

    def f(emb, add, skip=None):
        x, ins = emb, []
        for l, blk in enumerate(blocks(m)):
            h = norm[("pre", l)](x) if ref["pre"] else x
            if arch == "gpt2":
                v = (h @ blk.attn.c_attn.weight + blk.attn.c_attn.bias)[:, 2 * x.shape[-1]:]
            else:
                v = blk.get_submodule(ref["v"])(h)
            vh = v.unflatten(-1, (Hkv, -1)).transpose(0, 1).repeat_interleave(H // Hkv, 0)   # [H, T, dh]
            o = blk.get_submodule(ref["o"])((pats[l] @ vh).transpose(0, 1).flatten(-2))
            o = norm[("out_norm", l)](o) if ref["out_norm"] else o
            if ref.get("parallel"):
                mi = h
            else:
                x = x + o
                mi = norm[("mlp_in", l)](x) if ref["mlp_in"] else x
            ins.append(mi)
            y = add[l] + (mi @ skip[l] if skip is not None else 0)
            x = x + o + y if ref.get("parallel") else x + y
        return torch.stack(ins), W_U(fnorm(x[-1:]))[0]

    mi = torch.stack([rec[("mlp", l)][0] for l in range(L)])
    mo = torch.stack([rec[("mlp", l)][1] for l in range(L)])
    return f, mi, mo, rec["emb"]


def transcoders(mi, seed, jump=True, skip=False):
    """Random per-layer transcoders whose pre-activations pass their threshold on about a fifth of (position,
    feature) pairs of this prompt's MLP inputs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for l in range(len(mi)):
        d = mi.shape[-1]
        W_enc = torch.randn(d, F, generator=g, dtype=torch.float64) / mi[l].norm(dim=-1).mean()
        pre = mi[l] @ W_enc
        cut = pre.quantile(0.8, dim=0)
        kw = dict(architecture="jumprelu", threshold=cut.clamp(min=0.05), b_enc=torch.zeros(F, dtype=torch.float64)) \
            if jump else dict(architecture="relu", b_enc=-cut)
        if skip:
            kw.update(kind="skip_transcoder", W_skip=0.1 * torch.randn(d, d, generator=g, dtype=torch.float64))
        else:
            kw.update(kind="transcoder")
        out.append(SAE(W_enc=W_enc.float(), W_dec=torch.randn(F, d, generator=g).float(),
                       b_dec=0.1 * torch.randn(d, generator=g).float(), apply_b_dec_to_input=False,
                       site=f"mlp_in.{l}", site_out=f"mlp_out.{l}", **{k: v.float() if torch.is_tensor(v) else v
                                                                       for k, v in kw.items()}))
    return out


CASES = [("llama", True, False), ("mistral", False, False), ("qwen3", True, True), ("gemma2", True, False),
         ("gemma3_text", False, False), ("gptj", True, False), ("gpt2", False, True), ("olmo2", True, False),
         ("gemma", True, False), ("qwen2", False, False)]


@pytest.mark.parametrize("arch,jump,skip", CASES, ids=[c[0] + ("-skip" if c[2] else "") for c in CASES])
def test_graph_on_arch(arch, jump, skip):
    torch.manual_seed(0)
    model = build(arch)
    adapter = HFAdapter(model)
    f, mi, mo, emb = reference(model, arch, IDS)
    tcs = transcoders(mi, seed=len(arch), jump=jump, skip=skip)
    g = attribution_graph(adapter, tcs, IDS)
    n, nF, nE, nT = len(g.nodes), g.n_features, g.n_errors, g.n_embeds
    assert 5 < nF < 0.5 * F * len(IDS) * len(tcs)
    # (a) completeness: every feature and logit row
    rows = np.r_[0:nF, n - g.n_logits:n]
    scale = np.abs(g.adjacency[rows]).sum(1) + np.abs(g.bias[rows])
    assert scale.max() < 1e5  # the test models are tame enough for an absolute tolerance
    assert np.abs(g.adjacency[rows].sum(1) + g.bias[rows] - g.target_values[rows]).max() < 1e-8
    # the graph's inputs are the real run's
    assert (g.emb - emb).abs().max() < 1e-10 and (g.mlp_in - mi).abs().max() < 1e-10
    skips = [tc.W_skip.double() for tc in tcs] if skip else None
    with torch.no_grad():
        ins0, lg0 = f(g.emb, g.add, skips)
    assert (ins0 - mi).abs().max() < 1e-5  # HF RMSNorms compute in float32, even in a float64 model
    # (b) edges equal interventions on the reference frozen model
    rng = np.random.default_rng(0)

    def value(i, ins, lg):
        node = g.nodes[i]
        if node[0] == "feature":
            _, l, t, fi = node
            return float(ins[l, t] @ g.transcoders[l].W_enc[:, fi])
        return float(lg[node[1]] - lg.mean())

    checked = 0
    later = [i for i in range(nF) if g.nodes[i][1] > 0]
    for i in [int(rng.choice(later)), int(rng.choice(later)), n - g.n_logits, n - 1]:
        srcs = list(np.argsort(-np.abs(g.adjacency[i, :nF + nE + nT]))[:3]) + [nF + nE + int(rng.integers(nT))]
        for j in srcs:
            emb2, add2 = g.emb.clone(), g.add.clone()
            node = g.nodes[j]
            if node[0] == "embed":
                emb2[node[1]] -= g.sources[j]
            else:
                add2[node[1], node[2]] -= g.sources[j]
            with torch.no_grad():
                ins, lg = f(emb2, add2, skips)
            effect = value(i, ins0, lg0) - value(i, ins, lg)
            assert abs(effect - g.adjacency[i, j]) <= 1e-4 * max(abs(effect), 1e-3), (g.nodes[i], node)
            checked += 1
    assert checked == 16 and np.abs(g.adjacency[n - g.n_logits:, :nF]).max() > 1e-3
    # (c) intervening with no edits gives the model's own logits, frozen or not
    m64 = copy.deepcopy(model).double()
    pre = {}
    m64.get_output_embeddings().register_forward_hook(lambda mod, a, o: pre.__setitem__("l", o[0, -1]))
    with torch.no_grad():
        real = m64(input_ids=torch.tensor([IDS])).logits[0, -1]
    for freeze in (True, False):
        out = intervene(g, {}, freeze_attention=freeze)
        assert np.abs(out.logits - (pre["l"] - pre["l"].mean()).numpy()).max() < 1e-8
        assert np.abs(out.probs - real.softmax(-1).numpy()).max() < 1e-10
        assert np.abs(out.activations - g.values[:nF]).max() < 1e-10
    if arch in ("gemma2", "gemma3_text"):  # the soft-cap bites: output logits are not the pre-cap ones
        assert np.abs(real.numpy() - pre["l"].numpy()).max() > 1e-2
