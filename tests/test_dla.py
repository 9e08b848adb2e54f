"""Direct logit attribution against TransformerLens' own (``logit_attrs`` / ``stack_head_results(apply_ln=True)`` /
``decompose_resid`` / ``accumulated_resid``) on the same weights.

Like with like: TransformerLens' ``apply_ln_to_stack`` divides by the cached final scale (and centres, for a
LayerNorm) but leaves out the final norm's weight, which a ``fold_ln=True`` model has folded into ``W_U``.
The reference is therefore the TL copy of each HF model with ``load_and_process_state_dict(..., fold_ln=True,
center_writing_weights=False, center_unembed=False, fold_value_biases=False)``: its ``W_U`` is ``w * W_U`` and its head outputs are the
HF model's, so single logits as well as logit differences compare, and mechviz's attribution is the
unfolded HF model's (the final norm's weight applied as the model applies it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechviz.analysis import dla as D
from mechviz.models import HFAdapter

from .archs import _randomise, build
from .conftest import build_hf, tl_from_hf

PROMPT = [0, 5, 17, 42, 9, 5, 17, 3, 88, 120, 7, 5]
ANSWER, WRONG = 17, 42


def _model(arch):
    model = build_hf(arch)
    _randomise(model, 4.0)  # attributions of order 1, not 1e-3: a 1e-4 tolerance then means something
    return model.eval()


@pytest.fixture(scope="module", params=["gpt2", "neox", "llama_gqa"])
def pair(request):
    model = _model(request.param)
    tl = tl_from_hf(model)
    tl.load_and_process_state_dict(tl.state_dict(), fold_ln=True, center_writing_weights=False, center_unembed=False,
                                   fold_value_biases=False)  # (process_weights_ would fold b_V into b_O)
    return request.param, HFAdapter(model), tl


def _tl_reference(tl, wrong, position):
    with torch.no_grad():
        _, cache = tl.run_with_cache(torch.tensor([PROMPT]))
    heads = cache.stack_head_results(layer=-1, pos_slice=position)          # [L*H, 1, d]
    attrs = lambda stack: cache.logit_attrs(stack, ANSWER, wrong, pos_slice=position)[:, 0].detach().numpy()  # noqa: E731
    per_head = attrs(heads).reshape(tl.cfg.n_layers, tl.cfg.n_heads)
    # the same through stack_head_results(apply_ln=True) and the folded unembedding
    direction = tl.W_U[:, ANSWER] - (tl.W_U[:, wrong] if wrong is not None else 0)
    scaled = cache.stack_head_results(layer=-1, pos_slice=position, apply_ln=True)
    per_head_2 = (scaled[:, 0] @ direction).reshape(tl.cfg.n_layers, tl.cfg.n_heads).detach().numpy()
    comps, labels = cache.decompose_resid(layer=-1, pos_slice=position, return_labels=True)
    return cache, per_head, per_head_2, attrs(comps), labels, attrs


@pytest.mark.parametrize("wrong", [WRONG, None])
@pytest.mark.parametrize("position", [-1, 6])
def test_dla_equals_transformer_lens(pair, wrong, position):
    arch, adapter, tl = pair
    run = adapter.run(PROMPT, capture=D.needs(adapter.n_layers))
    dla = D.direct_logit_attribution(adapter, run, ANSWER, wrong, position=position)
    cache, per_head, per_head_2, comps, labels, attrs = _tl_reference(tl, wrong, position)
    assert np.abs(per_head - per_head_2).max() < 1e-4
    assert np.abs(per_head).max() > 0.05  # the comparison is not of near-zeros
    assert np.abs(dla.heads - per_head).max() < 1e-4, arch
    assert dla.component_labels == labels
    assert np.abs(dla.components - comps).max() < 1e-4
    # accumulated residual stream (the frozen final scale, as logit_attrs applies it)
    if arch != "neox":  # a parallel block has no resid_mid hook in TL
        acc, acc_labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=position, return_labels=True)
        assert dla.accumulated_labels == acc_labels
        assert np.abs(dla.accumulated - attrs(acc)).max() < 1e-4
    # the final norm's scale is TL's cached ln_final.hook_scale
    assert dla.scale == pytest.approx(float(cache["ln_final.hook_scale"][0, position, 0]), rel=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama_gqa"])
def test_dla_sums_to_the_logit_difference(arch):
    adapter = HFAdapter(_model(arch))
    run = adapter.run(PROMPT, capture=D.needs(adapter.n_layers, by_source=True))
    dla = D.direct_logit_attribution(adapter, run, ANSWER, WRONG, by_source=True)
    logits = run.logits[-1].double()
    assert dla.total == pytest.approx(float(logits[ANSWER] - logits[WRONG]), abs=1e-4)
    assert dla.components.sum() + dla.bias == pytest.approx(dla.total, abs=1e-4)
    assert dla.accumulated[-1] + dla.bias == pytest.approx(dla.total, abs=1e-4)
    np.testing.assert_allclose(dla.heads.sum(1) + dla.attn_bias, dla.attn, atol=1e-9)
    # by source token: sums to the head, and equals pattern x value through W_O computed by hand
    assert dla.heads_by_source.shape == (adapter.n_layers, adapter.n_heads, len(PROMPT))
    np.testing.assert_allclose(dla.heads_by_source.sum(-1), dla.heads, atol=1e-5)
    assert (dla.pos_embed is not None) == (arch == "gpt2")


def test_by_source_against_a_hand_computed_reference():
    """GQA: each query head reads its group's values; W_O from the module's weight, not through mechviz."""
    model = _model("llama_gqa")
    adapter = HFAdapter(model)
    run = adapter.run(PROMPT, capture=D.needs(adapter.n_layers, by_source=True))
    dla = D.direct_logit_attribution(adapter, run, ANSWER, by_source=True)
    H, Hkv, dh = 4, 2, 12
    x = run[f"resid_post.{adapter.n_layers - 1}"][-1].double()
    norm = model.model.norm
    rms = (x.pow(2).mean() + norm.variance_epsilon).sqrt()
    u = norm.weight.double() * model.lm_head.weight[ANSWER].double() / rms
    for layer in range(adapter.n_layers):
        W_O = model.model.layers[layer].self_attn.o_proj.weight.double().T.reshape(H, dh, -1)
        A, v = run[f"attn_pattern.{layer}"][:, -1].double(), run[f"v.{layer}"].double()
        for h in range(H):
            ref = A[h][:, None] * (v[:, h // (H // Hkv)] @ W_O[h] @ u)[:, None]
            np.testing.assert_allclose(dla.heads_by_source[layer, h], ref[:, 0].detach().numpy(), atol=1e-5)


def test_post_attention_norm_attributes_whole_blocks_only():
    """Gemma 2 normalises the attention output: no per-head terms (with the reason), layers still sum."""
    adapter = HFAdapter(build("gemma2"))
    run = adapter.run(PROMPT, capture=D.needs(adapter.n_layers))
    dla = D.direct_logit_attribution(adapter, run, ANSWER, WRONG)
    assert dla.heads is None and "post_attention_layernorm" in dla.heads_note
    assert dla.components.sum() + dla.bias == pytest.approx(dla.total, abs=1e-4)
    cap = adapter.softcap  # the total is before the final soft-cap
    capped = cap * np.tanh(np.array([dla.total]) / cap)
    logits = run.logits[-1].double()
    assert np.isfinite(capped).all() and abs(float(logits[ANSWER] - logits[WRONG])) <= 2 * cap


def test_final_norm_map_is_measured_from_the_module():
    adapter = HFAdapter(_model("gpt2"))
    ln = adapter.model.transformer.ln_f
    x = torch.randn(3, adapter.d_model) * 5
    m = D.final_norm_map(adapter, x)
    assert m.center
    np.testing.assert_allclose(m.w, ln.weight.detach().double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(m.b, ln.bias.detach().double().numpy(), atol=1e-5)
    ref = (x.double().var(-1, unbiased=False) + ln.eps).sqrt().numpy()
    np.testing.assert_allclose(m.scale, ref, rtol=1e-5)


def test_bad_arguments():
    adapter = HFAdapter(_model("gpt2"))
    run = adapter.run(PROMPT, capture=D.needs(adapter.n_layers))
    with pytest.raises(ValueError, match="same token"):
        D.direct_logit_attribution(adapter, run, 3, 3)
    with pytest.raises(ValueError, match="outside the prompt"):
        D.direct_logit_attribution(adapter, run, 3, position=len(PROMPT))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        D.direct_logit_attribution(adapter, run, 10_000)
