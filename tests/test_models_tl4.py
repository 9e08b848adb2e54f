"""TransformerLens 4 ``TransformerBridge`` adapter: on the same weights, every site, edit, logit-lens row and
activation/attribution-patching grid equals the HF adapter's.

These need TransformerLens >= 4, which cannot share the main .venv (sae-lens pins transformer-lens < 4):
``bash scripts/tl4_check.sh`` builds .venv-tl4 and runs this file there (a CI step). In the main venv they
are skipped, except the check that ``wrap`` tells the backends apart without importing TransformerLens and
one that the main venv's TransformerLens 3.x ``TransformerBridge`` patches like HF too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import pytest
import torch

from mechviz.analysis.logit_lens import logit_lens, needs
from mechviz.analysis.patching import ALL_GRIDS, activation_patching, attribution_patching_all, logit_diff
from mechviz.analysis.prompt_pair import patched_run, prompt_pair
from mechviz.models import SITES, TL4_HOOKS, Aborted, HFAdapter, SiteError, UnsupportedModelError, wrap

from .conftest import build_hf

try:
    TL_VERSION = version("transformer-lens")
except PackageNotFoundError:
    TL_VERSION = None
HAS_TL4 = TL_VERSION is not None and int(TL_VERSION.split(".")[0]) >= 4
try:  # TransformerLens 3.x has a TransformerBridge too (without start_at_layer: passes run from the tokens)
    from transformer_lens.model_bridge.sources import build_bridge_from_module  # noqa: F401
    HAS_BRIDGE = True
except ImportError:
    HAS_BRIDGE = False
needs_tl4 = pytest.mark.skipif(
    not HAS_TL4, reason=f"TransformerLens 4 is not installed (found {TL_VERSION or 'none'}; the main venv keeps 3.x "
                        "for sae-lens): run `bash scripts/tl4_check.sh`, which builds .venv-tl4 and runs these there")

IDS = torch.tensor([0, 5, 17, 42, 8, 99, 5, 17, 42, 3, 250, 7])
CLEAN = torch.tensor([0, 5, 17, 42, 99, 5, 17, 3])
CORRUPTED = torch.tensor([0, 5, 17, 42, 77, 5, 17, 3])  # one token differs, as in IOI-style pairs
METRIC = logit_diff(11, 22)
# gpt2, GQA llama, parallel and sequential GPT-NeoX take the finish_block shortcut; mistral (not in
# tl_bridge.FINISH_BLOCK_ARCHS) the general path
ARCHS = ["gpt2", "llama_gqa", "neox", "neox_seq", "mistral"]


def tiny(arch: str, sharp: bool = False):
    """conftest's tiny models plus a Mistral one; ``sharp``: matrices scaled up (as tests/test_patching.py
    does) so that attention is far from uniform and every grid varies well beyond the tolerance."""
    if arch == "mistral":
        from transformers import MistralConfig, MistralForCausalLM
        torch.manual_seed(0)
        model = MistralForCausalLM(MistralConfig(num_hidden_layers=3, hidden_size=48, num_attention_heads=4,
                                                 num_key_value_heads=2, intermediate_size=96,
                                                 max_position_embeddings=64, vocab_size=300, bos_token_id=0,
                                                 eos_token_id=0))
    else:
        model = build_hf(arch)
    if sharp:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.mul_(6)
    return model


def bridge_of(hf_model):
    from mechviz.models.tl_bridge import hf_to_bridge
    return hf_to_bridge(hf_model)


@pytest.fixture(scope="module", params=ARCHS)
def pair(request):
    if not HAS_TL4:
        pytest.skip(needs_tl4.kwargs["reason"])
    hf_model = tiny(request.param)
    bridge = bridge_of(hf_model)
    return request.param, HFAdapter(hf_model), wrap(bridge), bridge


@pytest.fixture(scope="module", params=ARCHS)
def sharp(request):
    if not HAS_TL4:
        pytest.skip(needs_tl4.kwargs["reason"])
    hf_model = tiny(request.param, sharp=True)
    return request.param, HFAdapter(hf_model), wrap(bridge_of(hf_model))


# -- wrap ---------------------------------------------------------------------------------------
def test_wrap_imports_no_transformer_lens():
    """wrap() tells HF models from TransformerLens ones by class names: with TransformerLens unimportable
    it still wraps an HF model (and importing mechviz does not import TransformerLens)."""
    code = ("import sys; sys.modules['transformer_lens'] = None\n"
            "from transformers import GPT2Config, GPT2LMHeadModel\n"
            "import mechviz\n"
            "a = mechviz.wrap(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)))\n"
            "print(type(a).__name__, a.run([1, 2, 3], capture=['resid_post.0'])['resid_post.0'].shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "HFAdapter torch.Size([3, 16])"


@needs_tl4
def test_wrap_detects_a_bridge(pair):
    arch, hf, tl, bridge = pair
    from mechviz.models import TLBridgeAdapter
    assert type(tl) is TLBridgeAdapter and type(wrap(hf.model)) is HFAdapter
    assert (tl.n_layers, tl.n_heads, tl.n_kv_heads, tl.d_model, tl.d_head, tl.d_vocab, tl.parallel) == \
           (hf.n_layers, hf.n_heads, hf.n_kv_heads, hf.d_model, hf.d_head, hf.d_vocab, hf.parallel)
    assert tl.name == hf.name == bridge.cfg.model_name
    # hf_to_bridge bridged a copy: the HF model is untouched (no bridge components inside it)
    assert not any("Bridge" in type(m).__name__ for m in hf.model.modules())


@needs_tl4
def test_hook_map_is_the_bridges_own_aliases(pair):
    """Every TL 3 name the bridge aliases is the same hook point as the TL4_HOOKS name mechviz reads."""
    _, _, tl, bridge = pair
    hooks = bridge.hook_dict
    from mechviz.models import TL_HOOKS
    for name in SITES:
        canonical = TL4_HOOKS[name].format(layer=1)
        assert canonical in hooks and hooks[canonical].name == canonical
        alias = TL_HOOKS[name].format(layer=1)
        if name == "resid_mid" and tl.parallel:
            assert alias not in hooks  # parallel blocks: no resid_mid hook, mechviz derives it
        else:
            assert hooks[alias] is hooks[canonical]


@pytest.mark.skipif(not HAS_BRIDGE, reason="TransformerLens (3.x or 4) with a TransformerBridge is not installed")
def test_a_bridge_of_the_installed_transformer_lens_patches_like_hf():
    """In any venv with a TransformerBridge (the main one's TL 3.x included), wrap() takes it and its
    sites and grids equal the HF adapter's."""
    hf_model = tiny("llama_gqa", sharp=True)
    hf, tl = HFAdapter(hf_model), wrap(bridge_of(hf_model))
    assert type(tl).__name__ == "TLBridgeAdapter"
    a, b = hf.run(IDS, capture=list(SITES)), tl.run(IDS, capture=list(SITES))
    for key in a.cache:
        torch.testing.assert_close(b.cache[key], a.cache[key], atol=1e-5, rtol=0, msg=lambda m: f"{key}: {m}")
    for site, by in [("resid_pre", "position"), ("k", "head_position"), ("z", "head"), ("resid_mid", "position")]:
        ref = activation_patching(hf, CLEAN, CORRUPTED, site, by=by, metric=METRIC).values
        got = activation_patching(tl, CLEAN, CORRUPTED, site, by=by, metric=METRIC).values
        assert np.ptp(ref) > 1e-2 and np.abs(got - ref).max() < 1e-4, (site, by)


# -- sites, logits, edits -------------------------------------------------------------------------
@needs_tl4
def test_every_site_equals_the_hf_adapter(pair):
    arch, hf, tl, bridge = pair
    a, b = hf.run(IDS, capture=list(SITES)), tl.run(IDS, capture=list(SITES))
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=0)
    assert b.cache.keys() == a.cache.keys() == {f"{s}.{lay}" for s in SITES for lay in range(hf.n_layers)}
    worst = {}
    for key in a.cache:
        assert b.cache[key].shape == a.cache[key].shape, key
        torch.testing.assert_close(b.cache[key], a.cache[key], atol=1e-5, rtol=0, msg=lambda m: f"{key}: {m}")
        worst[key.split(".")[0]] = max(worst.get(key.split(".")[0], 0.0), float((a.cache[key] - b.cache[key]).abs().max()))
    assert float(a.cache["attn_pattern.1"].std()) > 1e-3  # not a degenerate comparison
    print(arch, "max |HF - bridge| per site:", {k: f"{v:.1e}" for k, v in worst.items()})


@needs_tl4
def test_capture_leaves_the_bridge_logits_unchanged(pair):
    _, _, tl, bridge = pair
    with torch.inference_mode():
        plain = bridge(IDS[None])[0].float()
    assert torch.equal(tl.run(IDS, capture=list(SITES)).logits, plain)
    assert torch.equal(tl.run(IDS).logits, plain)


@needs_tl4
def test_logit_lens_last_row_is_the_logits(pair):
    _, hf, tl, _ = pair
    for adapter in (hf, tl):
        run = adapter.run(IDS, capture=needs(adapter.n_layers))
        last = run[f"resid_post.{adapter.n_layers - 1}"]
        torch.testing.assert_close(adapter.logits_of(last), run.logits, atol=1e-5, rtol=1e-5)
        lens = logit_lens(adapter, run, k=3)
        np.testing.assert_allclose(lens.top_probs[-1], torch.topk(torch.softmax(run.logits, -1), 3, -1).values.numpy(),
                                   atol=1e-5)
    ids = torch.tensor([1, 2, 3])
    x = torch.randn(4, hf.d_model)
    torch.testing.assert_close(tl.unembed_tokens(tl.final_norm(x), ids), tl.unembed(tl.final_norm(x))[:, ids],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tl.logits_of(x), hf.logits_of(x), atol=1e-5, rtol=1e-5)


@needs_tl4
@pytest.mark.parametrize("site", ["resid_pre.1", "resid_mid.1", "resid_post.0", "attn_out.2", "mlp_out.1", "z.1",
                                  "q.2", "k.1", "v.0"])
def test_edits_act_the_same_in_hf_and_the_bridge(pair, site):
    """An edit (add a fixed random vector) changes the logits identically for HF and the bridge; the
    captured site shows the edited value. resid_mid (which the HF adapter reads but does not edit) is set
    through attn_out, in sequential and parallel blocks alike: adding to it is adding to attn_out."""
    _, hf, tl, _ = pair
    torch.manual_seed(1)
    probe = hf.run(IDS, capture=[site])[site]
    delta = torch.randn_like(probe)
    ref_site = site.replace("resid_mid", "attn_out")
    a = hf.run(IDS, capture=[site], edits={ref_site: lambda x: x + delta})
    b = tl.run(IDS, capture=[site], edits={site: lambda x: x + delta})
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b[site], probe + delta, atol=1e-5, rtol=1e-5)
    assert float((b.logits - tl.run(IDS).logits).abs().max()) > 1e-3


@needs_tl4
def test_abort_stops_between_blocks_and_leaves_no_hooks(pair):
    _, _, tl, bridge = pair
    polls = []

    def abort():
        polls.append(1)
        return len(polls) == 2  # before block 1
    with pytest.raises(Aborted):
        tl.run(IDS, capture=["resid_post.2"], abort=abort)
    assert len(polls) == 2
    assert not any(hp.fwd_hooks for hp in bridge.hook_dict.values())
    with torch.inference_mode():
        assert torch.equal(tl.run(IDS).logits, bridge(IDS[None])[0].float())


# -- every requested site is captured ------------------------------------------------------------------
@needs_tl4
def test_a_site_whose_hook_never_fires_is_an_error():
    """Layer pruning (dropping the last block from the HF model the bridge wraps) leaves its hooks
    registered but never called: asking for them raises rather than returning nothing."""
    bridge = bridge_of(build_hf("gpt2"))
    tl = wrap(bridge)
    assert tl.run(IDS, capture=["resid_post.2"])["resid_post.2"].shape == (len(IDS), tl.d_model)
    bridge.original_model.transformer.h = torch.nn.ModuleList(list(bridge.original_model.transformer.h)[:2])
    assert "blocks.2.hook_out" in bridge.hook_dict
    with pytest.raises(SiteError, match="resid_post.2 does not exist.*its hook never fired"):
        tl.run(IDS, capture=["resid_post.1", "resid_post.2"])
    assert tl.run(IDS, capture=["resid_post.1"])["resid_post.1"].shape == (len(IDS), tl.d_model)


@needs_tl4
def test_attn_only_bridge_has_no_mlp_sites():
    from transformer_lens.model_bridge import TransformerBridge
    bridge = TransformerBridge.boot_native(dict(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=20,
                                                attn_only=True, act_fn="relu", seed=0))
    tl = wrap(bridge)
    assert tl.run([1, 2, 3], capture=["attn_pattern.0"])["attn_pattern.0"].shape == (4, 3, 3)
    for site in ("mlp_out.0", "resid_mid.0"):
        with pytest.raises(SiteError, match=f"{site} does not exist.*attn_only=True"):
            tl.run([1, 2, 3], capture=[site])


# -- patching ---------------------------------------------------------------------------------------
@needs_tl4
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_every_patching_grid_equals_the_hf_adapter(sharp, direction):
    """Every activation-patching grid (residual sites by position, z/q/k/v by head and by head x
    position), both directions, equals the HF adapter's to 1e-4: for grouped-query llama/mistral the k
    and v grids have n_kv_heads columns, patched per key/value head (TransformerLens' own per-head
    K/V patching gets these wrong, TransformerLens #980)."""
    arch, hf, tl = sharp
    pairs = {name: prompt_pair(a, CLEAN, CORRUPTED, metric=METRIC) for name, a in (("hf", hf), ("tl", tl))}
    worst = {}
    for site, by in ALL_GRIDS:
        ref = activation_patching(pairs["hf"], site=site, by=by, direction=direction, batch_budget_mb=0.3)
        grid = activation_patching(pairs["tl"], site=site, by=by, direction=direction, batch_budget_mb=0.3)
        assert grid.complete and grid.values.shape == ref.values.shape
        if site in ("k", "v"):
            assert grid.values.shape[-1] == hf.n_kv_heads
        assert np.ptp(ref.values) > 1e-2, f"{site}/{by}: degenerate reference grid"
        dev = float(np.abs(grid.values - ref.values).max())
        worst[f"{site}/{by}"] = dev
        assert dev < 1e-4, f"{arch} {direction} {site}/{by}: max |bridge - HF| = {dev:.2e}"
    print(arch, direction, "max |bridge - HF| =", f"{max(worst.values()):.1e}")


@needs_tl4
def test_attribution_grids_equal_the_hf_adapter(sharp):
    """grad_run: the attribution estimates (one forward and one backward pass) equal the HF adapter's."""
    arch, hf, tl = sharp
    a = attribution_patching_all(hf, CLEAN, CORRUPTED, metric=METRIC)
    b = attribution_patching_all(tl, CLEAN, CORRUPTED, metric=METRIC)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key].values, a[key].values, atol=1e-4, rtol=1e-4, err_msg=f"{arch} {key}")


@needs_tl4
def test_cancel_inside_a_patched_pass(sharp):
    _, _, tl = sharp
    polls = []

    def cancel():
        polls.append(1)
        return len(polls) > 3  # between batches the engine polls first; the 4th poll is inside a pass
    grid = activation_patching(tl, CLEAN, CORRUPTED, "resid_pre", metric=METRIC, cancel=cancel, batch_budget_mb=0.05)
    assert not grid.complete and np.isnan(grid.values).any() and not np.isnan(grid.values).all()


@needs_tl4
def test_patched_passes_resume_from_the_cache_where_the_bridge_reads_it(pair):
    """patch_base keeps the keys/values exactly when the bridge uses a HuggingFace cache handed to it
    (TL 4.3 does up to transformers 5.23; from 5.24 it ignores it), and a pass resumed from position p
    with no edit gives the base pass's final residual there (else every position is recomputed)."""
    from transformers import DynamicCache
    arch, _, tl, bridge = pair
    cache = DynamicCache(config=bridge.original_model.config)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5.24 deprecates past_key_values
        bridge(IDS[None, :5], past_key_values=cache)
    honoured = cache.get_seq_length() == 5
    base = tl.patch_base(IDS)
    assert (base["kv"] is not None) == honoured
    if honoured:
        assert base["kv"][1][0].shape == (1, tl.n_kv_heads, len(IDS), tl.d_head)
    full = tl.forward_from(base, 2, [], start_layer=0, start_pos=0)
    for layer, pos in [(0, 4), (2, 7)]:
        part = tl.forward_from(base, 2, [], start_layer=layer, start_pos=pos)
        assert part.shape == (2, len(IDS) - pos, tl.d_model)
        torch.testing.assert_close(part, full[:, pos:], atol=1e-5, rtol=0)
    print(arch, "bridge reads a HuggingFace cache:", honoured)


@needs_tl4
def test_native_bridge_without_a_kv_cache_recomputes_every_position():
    """A TL-native bridge (not a HuggingFace model: no DynamicCache to resume from, no finish_block
    shortcut) patches through full passes from the patched block; each cell equals one patched run."""
    from transformer_lens.model_bridge import TransformerBridge
    bridge = TransformerBridge.boot_native(dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=300,
                                                act_fn="gelu", seed=0, initializer_range=0.5))
    tl = wrap(bridge)
    assert tl.patch_base(CLEAN)["kv"] is None and tl.finish_block(0, torch.zeros(1, 32), torch.zeros(1, 32)) is None
    pair = prompt_pair(tl, CLEAN, CORRUPTED, metric=METRIC)
    for site, by in [("resid_pre", "position"), ("z", "head_position"), ("mlp_out", "position")]:
        grid = activation_patching(pair, site=site, by=by, batch_budget_mb=0.05)
        assert np.ptp(grid.values) > 1e-3
        for row, col in [(0, 4), (1, 4), (1, 5 if by == "position" else 6)]:
            run = patched_run(pair, grid, row, col)
            want = float(METRIC(run.logits[None])[0])
            assert grid.matrix()[0][row, col] == pytest.approx(want, abs=1e-4), (site, by, row, col)


# -- building a bridge offline ------------------------------------------------------------------------
@needs_tl4
def test_hf_to_bridge_with_a_tokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer
    from mechviz.models.tl_bridge import hf_to_bridge
    hf_model = build_hf("gpt2")
    with pytest.raises(ValueError, match="built in memory"):
        hf_to_bridge(hf_model, tokenizer)
    tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    hf, tl = HFAdapter(hf_model, tokenizer=tok), wrap(hf_to_bridge(hf_model, tok))
    a, b = hf.run("When Mary and John went", capture=["z.1"]), tl.run("When Mary and John went", capture=["z.1"])
    assert a.token_strs == b.token_strs and a.token_strs[0] == "<|endoftext|>"
    torch.testing.assert_close(b["z.1"], a["z.1"], atol=1e-5, rtol=0)


@needs_tl4
def test_a_layout_other_than_the_hook_map_is_refused():
    """TL 4 places Bloom's attn_out and mlp_out at other hooks than TL4_HOOKS names (its HF attention adds
    the residual inside): the adapter refuses the bridge instead of reading the wrong place."""
    from transformers import BloomConfig, BloomForCausalLM
    torch.manual_seed(0)
    bridge = bridge_of(BloomForCausalLM(BloomConfig(n_layer=2, hidden_size=32, n_head=4, vocab_size=100)))
    assert bridge.hook_dict["blocks.0.hook_attn_out"].name == "blocks.0.attn.o.hook_out"
    with pytest.raises(UnsupportedModelError, match="attn_out.0 .* at blocks.0.attn.o.hook_out, not at "
                                                    "blocks.0.attn.hook_out"):
        wrap(bridge)
