"""Ablation grids (zero, mean, resample) equal a brute-force reference: one TransformerLens forward per cell
with the ablated value written into the hook (gpt2 and grouped-query llama, HF and TL adapters); zero
ablation of resid_pre at layer 0 equals running the HF model with that position's residual zeroed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechviz.analysis.ablation import ablation, ablation_pair
from mechviz.analysis.patching import attribution_patching, cell_detail
from mechviz.models import HFAdapter, wrap
from mechviz.models.sites import TL_HOOKS

from .conftest import tl_from_hf
from .test_patching import CLEAN, CORRUPTED, METRIC, sharp_hf

pytest.importorskip("transformer_lens")

PROMPT = CLEAN
REFS = [CORRUPTED, torch.tensor([0, 9, 17, 40, 99, 6, 17, 3]), torch.tensor([0, 5, 13, 42, 12, 5, 19, 3])]
GRIDS = [("resid_pre", "position"), ("mlp_out", "position"), ("z", "head_position"), ("v", "head"),
         ("attn_pattern", "head_position"), ("attn_pattern", "head")]


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa"])
def models(request):
    hf_model = sharp_hf(request.param)
    return request.param, hf_model, tl_from_hf(hf_model)


def _source(tl, site, layer, kind):
    hook = TL_HOOKS[site].format(layer=layer)
    if kind == "resample":
        return tl.run_with_cache(CORRUPTED[None])[1][hook][0]
    own = tl.run_with_cache(PROMPT[None])[1][hook][0]
    if kind == "zero":
        return torch.zeros_like(own)
    return torch.stack([tl.run_with_cache(r[None])[1][hook][0] for r in REFS]).mean(0)


def _reference(tl, site, by, kind):
    """One TL forward per cell, the cell's activation overwritten with the ablation value in its hook."""
    L, T = tl.cfg.n_layers, PROMPT.numel()
    H = tl.cfg.n_heads if site in ("z", "q", "attn_pattern") else (tl.cfg.n_key_value_heads or tl.cfg.n_heads)
    shape = {"position": (L, T), "head": (L, H), "head_position": (L, T, H)}[by]
    out = np.zeros(shape)
    for idx in np.ndindex(shape):
        layer = idx[0]
        src = _source(tl, site, layer, kind)
        if by == "position":
            sel = (idx[1],)
        elif site == "attn_pattern":       # [H, dest, src]: a head at every / one destination
            sel = (idx[1],) if by == "head" else (idx[2], idx[1])
        else:                              # [T, H, d_head]
            sel = (slice(None), idx[1]) if by == "head" else (idx[1], idx[2])

        def hook(x, hook, sel=sel, src=src):
            x[(0, *sel)] = src[sel]
            return x
        with torch.no_grad():
            logits = tl.run_with_hooks(PROMPT[None], fwd_hooks=[(TL_HOOKS[site].format(layer=layer), hook)])
        out[idx] = float(METRIC(logits)[0])
    return out


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_ablation_equals_brute_force_hooks(models, kind):
    arch, hf_model, tl = models
    reference = {"zero": None, "mean": REFS, "resample": CORRUPTED}[kind]
    worst = 0.0
    for site, by in GRIDS:
        ref = _reference(tl, site, by, kind)
        assert np.ptp(ref) > 1e-2, f"{site}/{by}: degenerate reference"
        for name, adapter in (("tl", wrap(tl)), ("hf", HFAdapter(hf_model))):
            grid = ablation(adapter, PROMPT, site, by=by, kind=kind, reference=reference, metric=METRIC,
                            batch_budget_mb=0.3)
            assert grid.values.shape == ref.shape and grid.method == f"{kind} ablation" and grid.direction == "noise"
            dev = float(np.abs(grid.values - ref).max())
            worst = max(worst, dev)
            assert dev < 1e-5, f"{arch} {kind} {name} {site}/{by}: max |mechviz - hooks| = {dev:.2e}"
    print(arch, kind, f"max |mechviz - brute-force hooks| = {worst:.1e}")


def test_zero_ablating_a_layer0_residual_position_is_zeroing_it():
    hf_model = sharp_hf("gpt2")
    grid = ablation(HFAdapter(hf_model), PROMPT, "resid_pre.0", kind="zero", metric=METRIC)
    block0 = hf_model.transformer.h[0]
    worst = 0.0
    for p in range(PROMPT.numel()):
        def zero(module, args, p=p):
            h = args[0].clone()
            h[:, p] = 0
            return (h, *args[1:])
        handle = block0.register_forward_pre_hook(zero)
        try:
            with torch.no_grad():
                ref = float(METRIC(hf_model(PROMPT[None]).logits)[0])
        finally:
            handle.remove()
        worst = max(worst, abs(grid.values[0, p] - ref))
    print(f"zero resid_pre.0: max |mechviz - zeroed run| = {worst:.1e}")
    assert worst < 1e-5


def test_ablation_pair_metrics_estimate_and_cell_detail(models):
    """The full-ablation metric equals every cell ablated at once (TL hooks); the estimate is finite;
    a clicked cell's run gives its grid value."""
    arch, hf_model, tl = models
    adapter = HFAdapter(hf_model)
    pair = ablation_pair(adapter, PROMPT, "z", by="head_position", kind="mean", reference=REFS, metric=METRIC)
    hooks = []
    for layer in range(tl.cfg.n_layers):
        src = _source(tl, "z", layer, "mean")
        hooks.append((TL_HOOKS["z"].format(layer=layer), lambda x, hook, src=src: src[None].clone()))
    with torch.no_grad():
        full = float(METRIC(tl.run_with_hooks(PROMPT[None], fwd_hooks=hooks))[0])
    assert pair.metrics["corrupted"] == pytest.approx(full, abs=1e-5)
    grid = ablation(pair, site="z", by="head_position")
    assert grid.corrupted_metric == pytest.approx(full, abs=1e-5) and np.isfinite(grid.normalized()).all()
    est = attribution_patching(pair, site="z", by="head_position", direction="noise")
    assert np.isfinite(est.values).all() and est.values.shape == grid.values.shape
    mat = grid.matrix()[0]
    r, c = np.unravel_index(np.argmax(np.abs(mat - grid.clean_metric)), mat.shape)
    assert cell_detail(pair, grid, r, c).metric == pytest.approx(float(mat[r, c]), abs=1e-5)


def test_ablation_argument_errors():
    adapter = HFAdapter(sharp_hf("gpt2"))
    with pytest.raises(ValueError, match="kind must be"):
        ablation(adapter, PROMPT, "resid_pre", kind="sideways", metric=METRIC)
    with pytest.raises(TypeError, match="answers"):
        ablation(adapter, PROMPT, "resid_pre", kind="zero")
    with pytest.raises(ValueError, match="per position"):
        ablation(adapter, PROMPT, "resid_pre", kind="mean", reference=[PROMPT[:5]], metric=METRIC)


@pytest.mark.parametrize("kind,reference", [("zero", None), ("mean", ["A dog sat", "A cat sat"]),
                                            ("resample", "The dog sat")])
def test_lab_patching_shows_an_ablation_grid(kind, reference):
    """lab.patching(prompt, ablate=kind) draws the engine's ablation grid; a clicked cell agrees."""
    import mechviz
    lab = mechviz.Lab.default(prompt="The cat", threads=1, sae=False)
    view = lab.patching("The cat sat", site="z", by="head", ablate=kind, reference=reference, answers=(" on", " down"))
    ref = ablation(lab.model, "The cat sat", "z", by="head", kind=kind, reference=reference, answers=(" on", " down"))
    assert view.status == "done" and view.direction == "noise" and view.title.lower().startswith(kind)
    np.testing.assert_allclose(view.data["values"], ref.matrix()[0], atol=1e-5)
    assert view.corrupted_metric == pytest.approx(ref.corrupted_metric, abs=1e-5)
    assert np.isfinite(view.data["estimate"]).all()
    mat = view.data["values"]
    r, c = np.unravel_index(np.nanargmax(np.abs(mat - view.clean_metric)), mat.shape)
    view.cell = [int(r), int(c)]
    assert view.detail_metric == pytest.approx(float(mat[r, c]), abs=1e-4)
