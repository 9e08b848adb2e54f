"""TransformerLens adapter: sites equal TL's run_with_cache; HF and TL adapters agree on the same weights."""

from __future__ import annotations

import pytest
import torch

from mechviz.models import SITES, TL_HOOKS, HFAdapter, SiteError, wrap

from .conftest import HF_ARCHS, build_hf, tl_from_hf

pytest.importorskip("transformer_lens")

IDS = torch.tensor([0, 5, 17, 42, 8, 99, 5, 17, 42, 3, 250, 7])


@pytest.fixture(scope="module", params=HF_ARCHS)
def pair(request):
    hf_model = build_hf(request.param)
    return request.param, HFAdapter(hf_model), wrap(tl_from_hf(hf_model))


def test_tl_adapter_equals_run_with_cache(pair):
    _, _, tl = pair
    assert type(tl).__name__ == "TLAdapter"
    run = tl.run(IDS, capture=list(SITES))
    logits, cache = tl.model.run_with_cache(IDS[None])
    assert torch.equal(run.logits, logits[0])
    for key, got in run.cache.items():
        name, layer = key.split(".")
        hook = TL_HOOKS[name].format(layer=layer)
        if hook in cache:
            torch.testing.assert_close(got, cache[hook][0], atol=1e-5, rtol=0)
        else:  # resid_mid of a parallel block is derived
            assert name == "resid_mid" and tl.parallel
            torch.testing.assert_close(got, cache[f"blocks.{layer}.hook_resid_pre"][0]
                                       + cache[f"blocks.{layer}.hook_attn_out"][0], atol=1e-5, rtol=0)


def test_hf_and_tl_adapters_agree_on_every_site(pair):
    arch, hf, tl = pair
    a, b = hf.run(IDS, capture=list(SITES)), tl.run(IDS, capture=list(SITES))
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    assert a.cache.keys() == b.cache.keys()
    worst = {}
    for key in a.cache:
        torch.testing.assert_close(a.cache[key], b.cache[key], atol=1e-5, rtol=1e-4, msg=lambda m: f"{key}: {m}")
        worst[key.split(".")[0]] = max(worst.get(key.split(".")[0], 0.0),
                                       float((a.cache[key] - b.cache[key]).abs().max()))
    print(arch, "max |HF - TL| per site:", {k: f"{v:.1e}" for k, v in worst.items()})


def test_tl_attn_only_model_has_no_mlp_sites():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    torch.manual_seed(0)
    tl = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
                                                   attn_only=True, act_fn="relu"))
    adapter = wrap(tl)
    assert adapter.run([1, 2, 3], capture=["attn_pattern.0"])["attn_pattern.0"].shape == (4, 3, 3)
    with pytest.raises(SiteError, match="mlp_out.0 does not exist.*attn_only=True"):
        adapter.run([1, 2, 3], capture=["mlp_out.0"])


def test_final_norm_and_unembed_reproduce_the_logits(pair):
    """The logit lens at the last layer is the model's own output, for HF and TL alike."""
    _, hf, tl = pair
    last = f"resid_post.{hf.n_layers - 1}"
    for adapter in (hf, tl):
        run = adapter.run(IDS, capture=[last])
        torch.testing.assert_close(adapter.logits_of(run[last]), run.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("site", ["resid_pre.1", "resid_post.0", "attn_out.2", "mlp_out.1", "z.1", "q.2", "k.1", "v.0"])
def test_edits_act_the_same_in_hf_and_tl(pair, site):
    """An edit (here: add a fixed random vector) changes the logits, identically for HF and TL, and
    the captured site shows the edited value; an identity edit changes nothing."""
    _, hf, tl = pair
    torch.manual_seed(1)
    probe = hf.run(IDS, capture=[site])[site]
    delta = torch.randn_like(probe)
    runs = [a.run(IDS, capture=[site], edits={site: lambda x: x + delta}) for a in (hf, tl)]
    torch.testing.assert_close(runs[0].logits, runs[1].logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(runs[0][site], probe + delta, atol=1e-5, rtol=1e-5)
    assert float((runs[0].logits - hf.run(IDS).logits).abs().max()) > 1e-3
    torch.testing.assert_close(hf.run(IDS, edits={site: lambda x: x}).logits, hf.run(IDS).logits, atol=0, rtol=0)


def test_edit_errors(pair):
    _, hf, _ = pair
    with pytest.raises(SiteError, match="needs a layer"):
        hf.run(IDS, edits={"resid_pre": lambda x: x})
    with pytest.raises(SiteError, match="can be read but not edited"):
        hf.run(IDS, edits={"attn_pattern.0": lambda x: x})


def test_describe_says_whether_transformer_lens_folded_the_weights(tokenizer):
    from mechviz.models.describe import describe
    from mechviz.models.tl_convert import hf_to_tl

    hf = build_hf("gpt2")
    raw = hf_to_tl(hf)
    assert str(describe(wrap(raw))).endswith("TransformerLens raw weights · float32 · cpu")
    raw.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    info = describe(wrap(raw))
    assert (info.backend, info.numerics) == ("TransformerLens", "LayerNorm folded")
    assert describe(wrap(hf, tokenizer)).numerics == "raw weights"
