"""Attention-pattern patching: grids equal TransformerLens' ``get_act_patch_attn_head_pattern_*`` on the
same model (gpt2, parallel neox, grouped-query llama), and a brute-force reference on the HF model that
replaces the softmaxed pattern inside its own attention (one forward per cell), GQA included."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mechviz.analysis.patching import activation_patching, attribution_patching, cell_detail, prompt_pair
from mechviz.models import HFAdapter, wrap

from .conftest import tl_from_hf
from .test_patching import CLEAN, CORRUPTED, METRIC, sharp_hf

os.environ.setdefault("TQDM_DISABLE", "1")
pytest.importorskip("transformer_lens")
from transformer_lens import patching as tlp  # noqa: E402

TL_PATTERN = {"head": tlp.get_act_patch_attn_head_pattern_all_pos,            # [layer, head]
              "head_position": tlp.get_act_patch_attn_head_pattern_by_pos}    # [layer, head, dest_pos]


@pytest.fixture(scope="module", params=["gpt2", "neox", "llama_gqa"])
def models(request):
    hf_model = sharp_hf(request.param)
    tl = tl_from_hf(hf_model)
    return request.param, hf_model, tl


def _tl_grid(tl, by, receiving, source):
    _, cache = tl.run_with_cache(source[None])
    ref = TL_PATTERN[by](tl, receiving[None], cache, METRIC).numpy()
    return ref.transpose(0, 2, 1) if by == "head_position" else ref    # mechviz's layout is [layer, pos, head]


@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("by", ["head", "head_position"])
def test_pattern_grids_equal_transformer_lens(models, by, direction):
    """TL and HF adapters' attn_pattern grids equal TL's get_act_patch_attn_head_pattern_{all_pos,by_pos} to 1e-5."""
    arch, hf_model, tl = models
    receiving, source = (CORRUPTED, CLEAN) if direction == "denoise" else (CLEAN, CORRUPTED)
    ref = _tl_grid(tl, by, receiving, source)
    assert np.ptp(ref) > 1e-2, "degenerate reference grid"
    for name, adapter in (("tl", wrap(tl)), ("hf", HFAdapter(hf_model))):
        grid = activation_patching(adapter, CLEAN, CORRUPTED, "attn_pattern", by=by, metric=METRIC,
                                   direction=direction, batch_budget_mb=0.3)
        assert grid.values.shape == ref.shape and grid.complete and grid.site == "attn_pattern"
        dev = float(np.abs(grid.values - ref).max())
        print(arch, by, direction, name, f"max |mechviz - TL| = {dev:.1e}")
        assert dev < 1e-5, f"{arch} {name} attn_pattern/{by} {direction}: {dev:.2e}"


def _hf_pattern_reference(hf_model, receiving, source, by):
    """One HF forward per cell; while the patched layer's attention runs, its softmax returns the receiving
    pattern with the cell's rows (head, every / one destination) taken from the source run's pattern. The
    model's own repeat_kv, pattern @ v and o_proj then run on it."""
    hf_model.set_attn_implementation("eager")      # the implementation that calls softmax
    cfg = hf_model.config
    L, H, T = cfg.num_hidden_layers, cfg.num_attention_heads, receiving.numel()
    with torch.no_grad():
        src = hf_model(source[None], output_attentions=True).attentions           # L x [1, H, T, T]
    attn_mods = [layer.self_attn for layer in hf_model.model.layers]
    real_softmax, out = torch.nn.functional.softmax, np.zeros((L, H) if by == "head" else (L, T, H))
    for layer in range(L):
        for idx in np.ndindex(out.shape[1:]):
            head, pos = (idx[0], slice(None)) if by == "head" else (idx[1], idx[0])

            def patched_softmax(x, *a, layer=layer, head=head, pos=pos, **k):
                p = real_softmax(x, *a, **k).clone()
                p[0, head, pos] = src[layer][0, head, pos].to(p.dtype)
                return p
            handles = [attn_mods[layer].register_forward_pre_hook(
                           lambda m, a, f=patched_softmax: setattr(torch.nn.functional, "softmax", f)),
                       attn_mods[layer].register_forward_hook(
                           lambda m, a, o: setattr(torch.nn.functional, "softmax", real_softmax))]
            try:
                with torch.no_grad():
                    logits = hf_model(receiving[None]).logits
                assert torch.nn.functional.softmax is real_softmax, "the patched layer's hooks did not fire"
            finally:
                torch.nn.functional.softmax = real_softmax
                for h in handles:
                    h.remove()
            out[(layer, *idx)] = float(METRIC(logits)[0])
    return out


@pytest.mark.parametrize("by", ["head", "head_position"])
def test_pattern_grid_equals_hf_softmax_hook_reference_gqa(by):
    """llama_gqa (4 query heads on 2 key/value heads): the HF adapter's grid equals the brute-force
    reference that swaps the pattern inside HF's eager attention, to 1e-5."""
    hf_model = sharp_hf("llama_gqa")
    ref = _hf_pattern_reference(hf_model, CORRUPTED, CLEAN, by)
    assert np.ptp(ref) > 1e-2
    grid = activation_patching(HFAdapter(hf_model), CLEAN, CORRUPTED, "attn_pattern", by=by, metric=METRIC)
    dev = float(np.abs(grid.values - ref).max())
    print(by, f"max |mechviz - HF softmax hook| = {dev:.1e}")
    assert dev < 1e-5


def test_pattern_attribution_and_cell_detail(models):
    """The attribution estimate of a pattern grid is (source - receiving pattern) . d metric / d pattern,
    taken by autograd through TL's hook_pattern; a clicked cell's patched run gives the grid's value."""
    arch, hf_model, tl = models
    est = attribution_patching(HFAdapter(hf_model), CLEAN, CORRUPTED, "attn_pattern", by="head_position",
                               metric=METRIC)
    _, src = tl.run_with_cache(CLEAN[None])
    pats = {}

    def keep(x, hook):
        x.requires_grad_(True)
        pats[hook.name] = x
        return x
    with torch.enable_grad():
        logits = tl.run_with_hooks(CORRUPTED[None], fwd_hooks=[(lambda n: n.endswith("hook_pattern"), keep)])
        names = sorted(pats, key=lambda n: int(n.split(".")[1]))
        grads = torch.autograd.grad(METRIC(logits).sum(), [pats[n] for n in names])
    ref = np.stack([((src[n] - pats[n].detach()) * g).sum(-1)[0].T.numpy() for n, g in zip(names, grads)])
    with torch.no_grad():
        ref += float(METRIC(tl(CORRUPTED[None]))[0])
    dev = float(np.abs(est.values - ref).max())
    print(arch, f"attribution max |mechviz - autograd on pattern| = {dev:.1e}")
    assert dev < 1e-4 and np.ptp(ref) > 1e-2

    pair = prompt_pair(HFAdapter(hf_model), CLEAN, CORRUPTED, metric=METRIC)
    grid = activation_patching(pair, site="attn_pattern", by="head_position")
    mat = grid.matrix()[0]
    r, c = np.unravel_index(np.argmax(np.abs(mat - grid.corrupted_metric)), mat.shape)
    assert cell_detail(pair, grid, r, c).metric == pytest.approx(float(mat[r, c]), abs=1e-5)


def test_pattern_patching_refuses_position_layout():
    with pytest.raises(ValueError, match="per head"):
        activation_patching(HFAdapter(sharp_hf("gpt2")), CLEAN, CORRUPTED, "attn_pattern", by="position",
                            metric=METRIC)
