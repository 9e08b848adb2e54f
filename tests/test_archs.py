"""Every architecture in mechviz's map, checked against HF itself and a brute-force patching reference.

Each model is tiny, built from its config with seeded random weights and its quirks switched on
(tests/archs.py). Checks: capture leaves the logits bitwise equal; sites equal HF's hidden states and
attentions, and an independent site map (tests/archs.REF); residual identities; the logit lens' last row
(final soft-cap included); every patching grid, both directions, equals one full HF forward pass per cell;
attribution is the first-order term of the same patches; SAE widths; hooks that do not fire are errors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mechviz.analysis.logit_lens import logit_lens, needs
from mechviz.analysis.patching import (activation_patching, attribution_patching_all, logit_diff, patch_capture,
                                       prompt_pair)
from mechviz.models import SITES, HFAdapter, UnsupportedModelError, wrap
from mechviz.models.hf import HookError
from mechviz.models.sites import HEAD_SITES, RESID_SITES
from mechviz.saes import site_width

from . import archs as A

IDS = torch.tensor([0, 5, 17, 42, 8, 99, 5, 17, 42, 3, 250, 7])
CLEAN = torch.tensor([0, 5, 17, 42, 99, 5, 17, 42, 3, 250])
CORRUPTED = torch.tensor([0, 5, 17, 42, 77, 5, 17, 42, 3, 250])   # one token differs, as in IOI-style pairs
METRIC = logit_diff(11, 22)
GRIDS = [(s, "position") for s in RESID_SITES] + [(s, by) for s in HEAD_SITES for by in ("head", "head_position")]
# the quirks each model must show at this size, checked so the tests cannot pass vacuously
SLIDING = {"qwen2": 4, "gemma2": 3, "gemma3_text": 3, "mistral": 4, "gpt_oss": 3}
SINKS = {"gpt_oss"}
HEAD_DIM_NOT_D_OVER_H = {"qwen3", "gemma", "gemma2", "gemma3_text", "qwen3_moe", "gpt_oss"}


@pytest.fixture(scope="module", params=A.ARCH_NAMES)
def arch(request):
    model = A.build(request.param)
    return request.param, model, HFAdapter(model)


def moe_layers(adapter):
    """The layers whose MLP is a mixture of experts (Qwen2-MoE's layer 1 here is dense)."""
    router = adapter.spec.router
    return [i for i, block in enumerate(adapter.blocks) if router and hasattr(block.mlp, router.split(".")[-1])]


def everything(adapter):
    return list(SITES) + [f"router.{i}" for i in moe_layers(adapter)]


def _is_sliding(model, layer):
    cfg = model.config
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return types[layer] == "sliding_attention"
    return getattr(cfg, "sliding_window", None) is not None     # Mistral: every layer


def hf_forward(model, ids, **kw):
    with torch.no_grad():
        return model(ids[None], use_cache=False, **kw)


# -- (a) capture never changes the logits ----------------------------------------------------
def test_capture_leaves_logits_bitwise_equal(arch):
    name, model, adapter = arch
    assert model.config.model_type == name
    full = adapter.run(IDS, capture=everything(adapter))
    assert torch.equal(full.logits, hf_forward(model, IDS).logits[0])
    assert torch.equal(adapter.run(IDS).logits, full.logits)


# -- (b) sites equal HF's own outputs and an independent site map -------------------------------
def test_sites_equal_hf_hidden_states_and_attentions(arch):
    name, model, adapter = arch
    run = adapter.run(IDS, capture=["resid_pre", "resid_post", "attn_pattern"])
    out = hf_forward(model, IDS, output_hidden_states=True, output_attentions=True)
    hs, L, T = out.hidden_states, adapter.n_layers, len(IDS)
    sliding = [layer for layer in range(L) if _is_sliding(model, layer)]
    assert bool(sliding) == (name in SLIDING)
    for layer in range(L):
        torch.testing.assert_close(run[f"resid_pre.{layer}"], hs[layer][0], atol=1e-5, rtol=0)
        got = run[f"attn_pattern.{layer}"]
        torch.testing.assert_close(got, out.attentions[layer][0], atol=1e-5, rtol=0)
        assert float(got.triu(1).abs().max()) == 0.0
        rows = got.sum(-1)
        if name in SINKS:   # attention sinks take mass: rows are kept as the model computes them
            assert float(rows.max()) < 1 - 1e-3
        else:
            torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)
        if layer in sliding:    # keys at least `window` tokens back are masked out
            far = torch.ones(T, T).tril(-SLIDING[name]).bool()
            assert float(got[:, far].abs().max()) == 0.0
    for layer in range(L - 1):
        torch.testing.assert_close(run[f"resid_post.{layer}"], hs[layer + 1][0], atol=1e-5, rtol=0)
    # HF's last hidden state is the final norm's output
    with torch.no_grad():
        torch.testing.assert_close(adapter.final_norm(run[f"resid_post.{L - 1}"]), hs[L][0], atol=1e-5, rtol=0)


def test_sites_equal_an_independent_site_map(arch):
    """Every site equals the one read at the module tests/archs.REF names (written from the HF modeling
    files, not from mechviz's map); router logits equal HF's output_router_logits."""
    name, model, adapter = arch
    sites = ["resid_pre", "q", "k", "v", "z", "attn_out", "resid_mid", "mlp_out", "resid_post"]
    run = adapter.run(IDS, capture=sites)
    for site in sites:
        ref = A.capture(model, name, IDS, site)
        for layer in range(adapter.n_layers):
            torch.testing.assert_close(run[f"{site}.{layer}"], ref[layer], atol=1e-5, rtol=0, msg=f"{site}.{layer}")
    if adapter.spec.router:
        layers = moe_layers(adapter)
        run = adapter.run(IDS, capture=[f"router.{i}" for i in layers])
        ref = hf_forward(model, IDS, output_router_logits=True).router_logits
        assert len(ref) == len(layers) and "router" in adapter.sites
        for i, layer in enumerate(layers):
            n_experts = run[f"router.{layer}"].shape[-1]
            assert run[f"router.{layer}"].shape == (len(IDS), n_experts)
            torch.testing.assert_close(run[f"router.{layer}"], ref[i].reshape(len(IDS), -1), atol=1e-5, rtol=0)


# -- (c) residual identities ---------------------------------------------------------------------
def test_residual_identities_and_block_finish(arch):
    name, model, adapter = arch
    run = adapter.run(IDS, capture=["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z",
                                    "v", "attn_pattern"])
    H, Hkv = adapter.n_heads, adapter.n_kv_heads
    for layer in range(adapter.n_layers):
        pre, mid, post, attn, mlp, z = (run[f"{s}.{layer}"] for s in
                                        ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z"))
        torch.testing.assert_close(mid, pre + attn, atol=1e-5, rtol=0)
        if adapter.parallel:
            torch.testing.assert_close(post, pre + attn + mlp, atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(post, mid + mlp, atol=1e-5, rtol=0)
        # z = pattern @ v (v repeated over query groups), through o_proj (+ post-norm) gives attn_out
        v = run[f"v.{layer}"].repeat_interleave(H // Hkv, dim=1)
        pattern_v = torch.einsum("hqk,khd->qhd", run[f"attn_pattern.{layer}"], v)
        torch.testing.assert_close(z, pattern_v, atol=1e-5, rtol=1e-4)
        block = A.blocks_of(model, name)[layer]
        with torch.no_grad():
            out = block.get_submodule(A.REF[name]["z"][0])(z.flatten(-2))
            post_norm = A.REF[name]["attn_out"][0]
            if "norm" in post_norm:
                assert not torch.allclose(out, attn, atol=1e-2)     # the post-norm matters here
                out = block.get_submodule(post_norm)(out)
            torch.testing.assert_close(out, attn, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(adapter.attn_out_of_z(layer, z), attn, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(adapter.finish_block(layer, pre, attn), post, atol=1e-5, rtol=1e-5)


# -- (d) the logit lens ------------------------------------------------------------------------
def test_logit_lens_last_row_is_the_models_logits(arch):
    name, model, adapter = arch
    run = adapter.run(IDS, capture=needs(adapter.n_layers))
    last = run[f"resid_post.{adapter.n_layers - 1}"]
    torch.testing.assert_close(adapter.logits_of(last), run.logits, atol=1e-5, rtol=0)
    # the lens writes each row's logits into a reused buffer (logits_into): equal to logits_of, soft-cap included
    out = torch.full((len(IDS), adapter.d_vocab), float("nan"))
    torch.testing.assert_close(adapter.logits_into(last, out), adapter.logits_of(last), atol=1e-6, rtol=0)
    lens = logit_lens(adapter, run, k=3)
    assert (lens.top_ids[-1, :, 0] == run.logits.argmax(-1).numpy()).all()
    probs = torch.softmax(run.logits, -1).topk(3).values.numpy()
    np.testing.assert_allclose(lens.top_probs[-1], probs, atol=1e-5)
    mid = torch.softmax(adapter.logits_of(run["resid_pre.1"]), -1).topk(3)   # a row through logits_into
    np.testing.assert_allclose(lens.top_probs[1], mid.values.numpy(), atol=1e-5)
    cap = adapter.softcap
    if name in ("gemma2", "gemma3_text"):   # the soft-cap is on and bites: without it the row would differ
        assert cap and float(run.logits.abs().max()) < cap
        with torch.no_grad():
            raw = model.get_output_embeddings()(adapter.final_norm(last))
        assert float((raw - run.logits).abs().max()) > 1e-2
    else:
        assert not cap


# -- (e) every patching grid equals the brute-force reference ------------------------------------
_REFS: dict = {}


def reference(model, name, site, by, direction):
    key = (name, site, by, direction)
    if key not in _REFS:
        recv, src = (CORRUPTED, CLEAN) if direction == "denoise" else (CLEAN, CORRUPTED)
        _REFS[key] = A.reference_grid(model, name, recv, src, site, by, METRIC)
    return _REFS[key]


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_every_grid_equals_the_brute_force_reference(arch, direction):
    name, model, adapter = arch
    worst = {}
    for site, by in GRIDS:
        ref = reference(model, name, site, by, direction)
        assert np.ptp(ref) > 1e-2, f"{name} {site}/{by}: degenerate reference grid"
        grid = activation_patching(adapter, CLEAN, CORRUPTED, site, by=by, metric=METRIC, direction=direction,
                                   batch_budget_mb=0.2)   # small budget: several batches and start positions
        assert grid.values.shape == ref.shape and grid.complete
        worst[f"{site}/{by}"] = float(np.abs(grid.values - ref).max())
    bad = {k: f"{v:.1e}" for k, v in worst.items() if not v < 1e-4}
    assert not bad, f"{name} {direction}: max |mechviz - brute force| = {bad}"
    print(name, direction, f"max |mechviz - brute force| over {len(GRIDS)} grids = {max(worst.values()):.1e}")


def test_in_pass_edits_without_the_block_shortcut(arch, monkeypatch):
    """Patches after a block's attention, edited inside the pass (no finish_block), from the patched layer."""
    name, model, adapter = arch
    monkeypatch.setattr(adapter, "finish_block", lambda *args: None)
    for site, by in [("z", "head_position"), ("attn_out", "position"), ("resid_mid", "position"),
                     ("mlp_out", "position"), ("resid_post", "position")]:
        grid = activation_patching(adapter, CLEAN, CORRUPTED, site, by=by, metric=METRIC, batch_budget_mb=0.2)
        dev = float(np.abs(grid.values - reference(model, name, site, by, "denoise")).max())
        assert dev < 1e-4, (name, site, by, dev)


def test_resumed_passes_equal_the_full_pass(arch):
    """forward_from from any layer and position (keys/values of earlier positions reused, sliding-window
    layers and per-layer-type RoPE included) gives the full pass's final residual stream."""
    name, model, adapter = arch
    L = adapter.n_layers
    full = adapter.run(IDS, capture=[f"resid_post.{L - 1}"])[f"resid_post.{L - 1}"]
    base = adapter.patch_base(IDS)
    for start_layer in range(L):
        for start_pos in (0, 5, len(IDS) - 1):
            final = adapter.forward_from(base, 2, [], start_layer=start_layer, start_pos=start_pos)
            assert final.shape == (2, len(IDS) - start_pos, adapter.d_model)
            torch.testing.assert_close(final[1].float(), full[start_pos:], atol=1e-5, rtol=1e-5)


# -- (f) attribution is the first-order term of the same patches ----------------------------------
def test_attribution_is_the_first_order_term(arch):
    """For cells of every grid, ``attribution - metric(receiving)`` equals the derivative of the
    brute-force patched metric along the patch, ``d/de metric(recv + e (src - recv))`` at 0 (central
    differences on the HF model, no mechviz code)."""
    name, model, adapter = arch
    est = attribution_patching_all(adapter, CLEAN, CORRUPTED, [(s, "position") for s in RESID_SITES]
                                   + [(s, "head_position") for s in HEAD_SITES], metric=METRIC)
    rng, eps, checked = np.random.default_rng(0), 1e-2, 0
    for (site, by), grid in est.items():
        assert grid.values.shape == reference(model, name, site, by, "denoise").shape
        assert np.isfinite(grid.values).all() and grid.method == "attribution"
        src, recv = A.capture(model, name, CLEAN, site), A.capture(model, name, CORRUPTED, site)
        cells = [c for c in np.ndindex(grid.values.shape) if c[1] >= 4]     # positions the prompts reach
        for c in [cells[i] for i in rng.choice(len(cells), 3, replace=False)]:
            layer, index = c[0], c[1:]
            delta = src[layer][index] - recv[layer][index]
            m = [A.patched_metric(model, name, CORRUPTED, site, layer, index, recv[layer][index] + s * eps * delta,
                                  METRIC) for s in (1, -1)]
            slope = (m[0] - m[1]) / (2 * eps)
            first = grid.values[c] - grid.receiving_metric
            assert abs(first - slope) < 2e-3 + 2e-2 * abs(slope), (name, site, c, first, slope)
            checked += 1
    assert checked == 3 * len(est)


# -- (g) SAE widths ------------------------------------------------------------------------------
def test_site_widths(arch):
    name, model, adapter = arch
    run = adapter.run(IDS[:4], capture=[f"{s}.0" for s in RESID_SITES + HEAD_SITES])
    for s in RESID_SITES + HEAD_SITES:
        assert site_width(adapter, s) == run[f"{s}.0"][0].numel(), s
    o_proj = adapter.blocks[0].get_submodule(adapter.spec.o_proj)
    assert site_width(adapter, "z") == adapter.n_heads * adapter.d_head == o_proj.in_features
    assert (adapter.n_heads * adapter.d_head != adapter.d_model) == (name in HEAD_DIM_NOT_D_OVER_H)


# -- trustworthy hooks, and what is refused ---------------------------------------------------------
def test_a_hook_that_never_fires_is_an_error():
    """A map pointing at a module the forward never calls: every path that reads or edits through it raises
    HookError naming the site, instead of returning an empty or stale array."""
    adapter = HFAdapter(A.build("qwen3"))
    pair = prompt_pair(adapter, CLEAN, CORRUPTED, metric=METRIC, capture=patch_capture(adapter, "z.0", "head"))
    for block in adapter.blocks:
        block.self_attn.unused = torch.nn.Linear(adapter.n_heads * adapter.d_head, adapter.d_model)
    adapter.spec = dataclasses.replace(adapter.spec, o_proj="self_attn.unused")
    with pytest.raises(HookError, match=r"not captured: z\.1 \(hook on model\.layers\.1\.self_attn\.unused fired 0"):
        adapter.run(IDS, capture=["resid_pre.1", "z.1"])
    with pytest.raises(HookError, match=r"z\.0"):
        activation_patching(adapter, CLEAN, CORRUPTED, "z.0", by="head", metric=METRIC)
    with pytest.raises(HookError, match=r"z\.2"):
        attribution_patching_all(adapter, CLEAN, CORRUPTED, [("z", "head")], metric=METRIC)
    adapter.finish_block = lambda *args: None       # patch z inside the pass: the edit's hook never fires
    with pytest.raises(HookError, match=r"edit of z\.0"):
        activation_patching(pair, site="z.0", by="head")
    assert not any(b._forward_pre_hooks or b._forward_hooks for b in adapter.blocks)   # all removed
    adapter.spec = dataclasses.replace(adapter.spec, o_proj="self_attn.o_proj")
    assert adapter.run(IDS, capture=["z.1"])["z.1"].shape == (len(IDS), adapter.n_heads, adapter.d_head)


def test_router_only_where_there_is_one():
    from mechviz.models import SiteError

    moe = HFAdapter(A.build("qwen2_moe"))
    assert moe_layers(moe) == [0]
    with pytest.raises(SiteError, match="block 1 of this model has no mixture-of-experts router"):
        moe.run(IDS, capture=["router.1"])
    with pytest.raises(SiteError, match="read but not edited"):
        moe.run(IDS, edits={"router.0": lambda x: x})
    with pytest.raises(SiteError, match="cannot be patched here"):
        activation_patching(moe, CLEAN, CORRUPTED, "router.0", metric=METRIC)
    dense = HFAdapter(A.build("qwen3"))
    assert "router" not in dense.sites
    with pytest.raises(SiteError, match="no mixture-of-experts router"):
        dense.run(IDS, capture=["router.0"])


def test_a_map_naming_missing_modules_is_refused(monkeypatch):
    from mechviz.models import archs

    monkeypatch.setitem(archs.ARCHS, "qwen3", dataclasses.replace(archs.ARCHS["qwen3"], o_proj="self_attn.out_proj"))
    with pytest.raises(UnsupportedModelError, match="out_proj.*lays it out differently"):
        HFAdapter(A.build("qwen3"))


def test_unsupported_models_are_refused_without_inviting_a_guess():
    from transformers import CohereConfig, CohereForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

    cohere = CohereForCausalLM(CohereConfig(num_hidden_layers=1, **A.DENSE))     # logit_scale: a quirk not mapped
    with pytest.raises(UnsupportedModelError) as err:
        wrap(cohere)
    msg = str(err.value)
    assert "model_type 'cohere' (CohereForCausalLM)" in msg and "gemma2, gemma3_text" in msg
    assert "open an issue" in msg and "TransformerLens" in msg and "ArchSpec" not in msg
    bidi = Gemma3ForCausalLM(Gemma3TextConfig(num_hidden_layers=1, head_dim=16, use_bidirectional_attention=True,
                                              **A.DENSE))
    with pytest.raises(UnsupportedModelError, match="use_bidirectional_attention = False"):
        wrap(bidi)
