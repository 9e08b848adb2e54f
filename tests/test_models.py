"""Model adapters: capture never changes logits; captured sites equal HF's and TransformerLens' own."""

from __future__ import annotations

import re

import pytest
import torch

from mechviz.models import (SITES, HFAdapter, PromptError, SiteError, UnsupportedModelError, parse_sites,
                            wrap)

from .conftest import HF_ARCHS, build_hf

IDS = torch.tensor([0, 5, 17, 42, 8, 99, 5, 17, 42, 3, 250, 7])


@pytest.fixture(scope="module", params=HF_ARCHS)
def hf(request):
    model = build_hf(request.param)
    return request.param, model, HFAdapter(model)


def test_capture_never_changes_logits(hf):
    _, model, adapter = hf
    bare = adapter.run(IDS)
    everything = adapter.run(IDS, capture=list(SITES))
    assert torch.equal(bare.logits, everything.logits)
    with torch.no_grad():
        ref = model(IDS[None], use_cache=False).logits[0]
    assert torch.equal(bare.logits, ref)
    assert set(everything.cache) == {f"{s}.{layer}" for s in SITES for layer in range(adapter.n_layers)}
    assert bare.cache == {}


def test_run_returns_only_what_was_asked(hf):
    _, _, adapter = hf
    run = adapter.run(IDS, capture=["attn_pattern.1", "resid_pre"])
    assert sorted(run.cache) == ["attn_pattern.1", "resid_pre.0", "resid_pre.1", "resid_pre.2"]
    with pytest.raises(KeyError, match="was not captured"):
        run["z.0"]


def test_attention_equals_hf_output_attentions(hf):
    _, model, adapter = hf
    run = adapter.run(IDS, capture=["attn_pattern"])
    with torch.no_grad():
        ref = model(IDS[None], output_attentions=True, use_cache=False).attentions
    T = len(IDS)
    for layer in range(adapter.n_layers):
        got = run[f"attn_pattern.{layer}"]
        assert got.shape == (adapter.n_heads, T, T)
        torch.testing.assert_close(got, ref[layer][0], atol=1e-5, rtol=0)
        # rows are distributions and causal
        torch.testing.assert_close(got.sum(-1), torch.ones(adapter.n_heads, T), atol=1e-5, rtol=0)
        assert float(got.triu(1).abs().max()) == 0.0


def test_residual_sites_add_up_and_match_hidden_states(hf):
    arch, model, adapter = hf
    run = adapter.run(IDS, capture=["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"])
    with torch.no_grad():
        hs = model(IDS[None], output_hidden_states=True, use_cache=False).hidden_states
    for layer in range(adapter.n_layers):
        pre, mid, post = (run[f"{s}.{layer}"] for s in ("resid_pre", "resid_mid", "resid_post"))
        torch.testing.assert_close(pre, hs[layer][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(mid, pre + run[f"attn_out.{layer}"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(post, pre + run[f"attn_out.{layer}"] + run[f"mlp_out.{layer}"],
                                   atol=1e-5, rtol=1e-5)
        if layer + 1 < adapter.n_layers:
            torch.testing.assert_close(post, run[f"resid_pre.{layer + 1}"], atol=0, rtol=0)


def test_head_sites_shapes_and_z_through_o_proj(hf):
    arch, model, adapter = hf
    run = adapter.run(IDS, capture=["q", "k", "v", "z", "attn_out", "attn_pattern"])
    T, H, Hkv, dh = len(IDS), adapter.n_heads, adapter.n_kv_heads, adapter.d_head
    assert (H, Hkv) == ((4, 2) if arch == "llama_gqa" else (4, 4))
    for layer in range(adapter.n_layers):
        assert run[f"q.{layer}"].shape == (T, H, dh)
        assert run[f"k.{layer}"].shape == (T, Hkv, dh)
        assert run[f"v.{layer}"].shape == (T, Hkv, dh)
        # z = pattern @ v (v repeated over query groups for GQA), exactly what o_proj reads
        v = run[f"v.{layer}"].repeat_interleave(H // Hkv, dim=1)
        z_ref = torch.einsum("hqk,khd->qhd", run[f"attn_pattern.{layer}"], v)
        torch.testing.assert_close(run[f"z.{layer}"], z_ref, atol=1e-5, rtol=1e-4)
        o_proj = adapter.blocks[layer].get_submodule(adapter.spec.o_proj)
        with torch.no_grad():
            out = o_proj(run[f"z.{layer}"].reshape(T, H * dh))
        torch.testing.assert_close(out, run[f"attn_out.{layer}"], atol=1e-5, rtol=1e-5)


def test_q_k_v_match_the_projections(hf):
    """q/k/v are the pre-rotary projections of the normed residual (checked against the attention
    module's own input)."""
    arch, model, adapter = hf
    seen = {}
    attn = adapter.blocks[1].get_submodule(adapter.spec.attn)
    h = attn.register_forward_pre_hook(lambda m, a, k: seen.update(x=(a[0] if a else k["hidden_states"])[0]),
                                       with_kwargs=True)
    try:
        run = adapter.run(IDS, capture=["q.1", "k.1", "v.1"])
    finally:
        h.remove()
    x, T, dh = seen["x"], len(IDS), adapter.d_head
    with torch.no_grad():
        if arch == "gpt2":
            q, k, v = attn.c_attn(x).split(adapter.d_model, dim=-1)
        elif arch.startswith("neox"):
            q, k, v = attn.query_key_value(x).view(T, adapter.n_heads, 3 * dh).split(dh, dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    for name, ref in zip("qkv", (q, k, v)):
        torch.testing.assert_close(run[f"{name}.1"], ref.reshape(run[f"{name}.1"].shape), atol=1e-6, rtol=0)


def test_unknown_site_and_layer_errors():
    with pytest.raises(SiteError, match="unknown site 'resid_prev'.*Did you mean 'resid_pre'"):
        parse_sites(["resid_prev.0"], n_layers=2)
    with pytest.raises(SiteError, match="layers 0..1"):
        parse_sites("z.2", n_layers=2)
    adapter = HFAdapter(build_hf("gpt2"))
    with pytest.raises(SiteError, match="Known sites"):
        adapter.run(IDS, capture=["attention"])


def test_unsupported_architecture_error():
    from transformers import BertConfig, BertForMaskedLM
    bert = BertForMaskedLM(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="model_type 'bert'.*gpt2, gpt_neox, llama"):
        wrap(bert)
    with pytest.raises(UnsupportedModelError, match="cannot wrap a dict"):
        wrap({})


def test_prompt_errors(tokenizer):
    adapter = HFAdapter(build_hf("gpt2"), tokenizer=tokenizer)
    with pytest.raises(PromptError, match="empty"):
        adapter.run("   ")
    with pytest.raises(PromptError, match="at most 64"):
        adapter.run("the cat sat " * 40)
    run = adapter.run("The cat sat")
    assert run.token_strs[0] == "<|endoftext|>" and "".join(run.token_strs[1:]) == "The cat sat"
    assert run.prompt == "The cat sat" and run.logits.shape == (len(run.tokens), adapter.d_vocab)


@pytest.mark.parametrize("text,code,at", [("cat\x00dog", "U+0000 NUL", 3), ("\x1b[31mred", "U+001B ESC", 0),
                                           ("a\x7f", "U+007F DEL", 1), ("so\x85 on", "U+0085 NEL", 2),
                                           ("x\x9b", "U+009B", 1)])
def test_control_characters_are_refused_with_their_position(tokenizer, text, code, at):
    """C0/C1 control characters other than tab, newline and carriage return are not text: refused, naming
    the character and where it is (they were tokenised as stray bytes)."""
    adapter = HFAdapter(build_hf("gpt2"), tokenizer=tokenizer)
    with pytest.raises(PromptError, match=re.escape(f"control character ({code}) at character {at}, ") + ".*: remove it"):
        adapter.run(text)
    assert adapter.run("tab\tnew\nline\r").prompt == "tab\tnew\nline\r"


@pytest.mark.parametrize("ids,phrase", [([1.5, 2], "whole numbers, got 1.5 at position 0"),
                                        ([3, True], "whole numbers, got True at position 1"),
                                        (torch.tensor([1.9, 2.0]), "must be integers, got a torch.float32 tensor"),
                                        (torch.tensor([True, False]), "must be integers, got a torch.bool tensor"),
                                        ([1, 300], r"token ids must lie in \[0, 300\)")])
def test_token_ids_are_never_rounded(tokenizer, ids, phrase):
    """Token ids that are not integers were rounded down (1.9 ran as 1, True as 1): now refused."""
    adapter = HFAdapter(build_hf("gpt2"), tokenizer=tokenizer)
    with pytest.raises(PromptError, match=phrase):
        adapter.run(ids)
    assert adapter.to_tokens([1, 2]).tolist() == adapter.to_tokens(torch.tensor([1, 2])).tolist() == [1, 2]


def test_abort_stops_between_layers():
    from mechviz.models import Aborted
    adapter = HFAdapter(build_hf("gpt2"))
    calls = []

    def abort():
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(Aborted):
        adapter.run(IDS, capture=["resid_post"], abort=abort)
    assert len(calls) == 2
    assert not adapter.blocks[0]._forward_pre_hooks  # hooks removed even when aborted
    assert torch.equal(adapter.run(IDS).logits, adapter.run(IDS, abort=lambda: False).logits)
