"""Path patching: every sender x receiver cell equals a brute-force reference written with plain PyTorch
forward hooks on the HF model (one pair of runs per cell: freeze every head's output at the o_proj input,
patch the sender's, capture the receiver's q/k/v projection; then patch those in), on GPT-2 and on a
grouped-query Llama (k/v receivers are key/value heads); and a sanity check on the bundled model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechviz.analysis.path_patching import PathPatchGrid, path_patching
from mechviz.analysis.prompt_pair import prompt_pair
from mechviz.models import HFAdapter, SiteError

from .test_patching import CLEAN, CORRUPTED, METRIC, sharp_hf


def _parts(hf_model, arch):
    """``(blocks, o_proj of block, {kind: (module of block, slice of its output for head h)})``."""
    cfg = hf_model.config
    H, d = cfg.num_attention_heads, cfg.hidden_size
    dh = d // H
    if arch == "gpt2":
        blocks = hf_model.transformer.h
        return blocks, (lambda b: b.attn.c_proj), {
            kind: (lambda b: b.attn.c_attn, (lambda h, i=i: slice(i * d + h * dh, i * d + (h + 1) * dh)))
            for i, kind in enumerate("qkv")}, dh
    blocks = hf_model.model.layers
    return blocks, (lambda b: b.self_attn.o_proj), {
        kind: ((lambda b, kind=kind: getattr(b.self_attn, f"{kind}_proj")), (lambda h: slice(h * dh, (h + 1) * dh)))
        for kind in "qkv"}, dh


def _z_all(hf_model, blocks, o_proj, ids):
    zs = []
    handles = [o_proj(b).register_forward_pre_hook(lambda m, a: zs.append(a[0][0].clone())) for b in blocks]
    with torch.no_grad():
        hf_model(ids[None])
    for h in handles:
        h.remove()
    return zs


def _reference(hf_model, arch, receiving, source, sender, receivers):
    """The metric of one cell, with plain hooks: run 1 freezes every head's output (every layer) at the
    receiving run's, the sender's from the source, and reads the receivers' projections; run 2 patches them in."""
    blocks, o_proj, qkv, dh = _parts(hf_model, arch)
    z_recv, z_src = _z_all(hf_model, blocks, o_proj, receiving), _z_all(hf_model, blocks, o_proj, source)
    ls, hs = sender
    handles, got = [], {}
    for layer, b in enumerate(blocks):
        def freeze(m, a, layer=layer):
            z = z_recv[layer].clone()
            if layer == ls:
                z[:, hs * dh:(hs + 1) * dh] = z_src[layer][:, hs * dh:(hs + 1) * dh]
            return (z[None],)
        handles.append(o_proj(b).register_forward_pre_hook(freeze))
    for kind, layer, head in receivers if receivers != "final" else ():
        mod, cut = qkv[kind]
        handles.append(mod(blocks[layer]).register_forward_hook(
            lambda m, a, out, key=(kind, layer, head), cut=cut(head): got.__setitem__(key, out[0, :, cut].clone())))
    with torch.no_grad():
        logits = hf_model(receiving[None]).logits
    for h in handles:
        h.remove()
    if receivers == "final":
        return float(METRIC(logits))
    handles = []
    for (kind, layer, head), val in got.items():
        mod, cut = qkv[kind]
        def patch(m, a, out, cut=cut(head), val=val):
            out = out.clone()
            out[0, :, cut] = val
            return out
        handles.append(mod(blocks[layer]).register_forward_hook(patch))
    with torch.no_grad():
        logits = hf_model(receiving[None]).logits
    for h in handles:
        h.remove()
    return float(METRIC(logits))


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa"])
def model(request):
    return request.param, sharp_hf(request.param)


RECEIVERS = [("q", 2, 1), ("k", 2, 1), ("v", 1, 0), [("q", 2, 3), ("v", 2, 0)], "final"]


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_path_patching_equals_hook_reference(model, direction):
    """Every sender x receiver cell (q, k, v, a set, the final residual) equals the plain-hook reference to 1e-5;
    senders at or above a receiver's layer are NaN. k/v receivers of llama_gqa are kv-heads (2 of them)."""
    arch, hf_model = model
    receiving, source = (CORRUPTED, CLEAN) if direction == "denoise" else (CLEAN, CORRUPTED)
    grid = path_patching(HFAdapter(hf_model), CLEAN, CORRUPTED, receivers=RECEIVERS, metric=METRIC,
                         direction=direction, batch_rows=5)
    assert isinstance(grid, PathPatchGrid) and grid.values.shape == (12, len(RECEIVERS))
    ref = np.full_like(grid.values, np.nan)
    for i, sender in enumerate(grid.senders):
        for j, rec in enumerate(RECEIVERS):
            low = 3 if rec == "final" else min(r[1] for r in (rec if isinstance(rec, list) else [rec]))
            if sender[0] < low:
                ref[i, j] = _reference(hf_model, arch, receiving, source, sender, rec if rec == "final" else
                                       (rec if isinstance(rec, list) else [rec]))
    assert np.array_equal(np.isnan(ref), np.isnan(grid.values))
    dev = float(np.nanmax(np.abs(grid.values - ref)))
    spread = float(np.nanmax(ref) - np.nanmin(ref))
    print(arch, direction, f"max |mechviz - hooks| = {dev:.1e} (spread of the grid {spread:.2f})")
    assert spread > 1e-2, "degenerate reference grid"
    assert dev < 1e-5
    assert np.allclose(grid.by_head(4)[:, :], ref[:, 4].reshape(3, 4), equal_nan=True, atol=1e-5)


def test_transformer_lens_adapter_equals_hf(model):
    """The TransformerLens adapter's grid (hook_q/k/v/z edits; TL keeps H_kv keys in a GQA model) equals the
    HF adapter's on the same weights."""
    pytest.importorskip("transformer_lens")
    from mechviz.models import wrap

    from .conftest import tl_from_hf

    arch, hf_model = model
    hf = path_patching(HFAdapter(hf_model), CLEAN, CORRUPTED, receivers=RECEIVERS, metric=METRIC)
    tl = path_patching(wrap(tl_from_hf(hf_model)), CLEAN, CORRUPTED, receivers=RECEIVERS, metric=METRIC)
    assert np.array_equal(np.isnan(hf.values), np.isnan(tl.values))
    assert np.nanmax(np.abs(hf.values - tl.values)) < 1e-5


def test_last_layer_to_final_is_head_patching():
    """A sender in the last layer has no head after it to freeze: its path to the final residual is plain
    activation patching of its z (the engine's grid, itself equal to TransformerLens'). A layer-0 sender's
    does not: the heads after it are frozen (so the freeze is not a no-op)."""
    from mechviz.analysis.patching import activation_patching

    adapter = HFAdapter(sharp_hf("gpt2"))
    grid = path_patching(adapter, CLEAN, CORRUPTED, senders=[(lay, h) for lay in (0, 2) for h in range(4)],
                         metric=METRIC, direction="denoise")
    ref = activation_patching(adapter, CLEAN, CORRUPTED, "z", by="head", metric=METRIC)
    assert np.abs(grid.values[4:, 0] - ref.values[2]).max() < 1e-5
    assert np.abs(grid.values[:4, 0] - ref.values[0]).max() > 1e-2


def test_path_patching_pair_and_errors():
    """A PromptPair is accepted (same numbers); k/v receivers name kv-heads; bad receivers say why."""
    hf_model = sharp_hf("llama_gqa")
    adapter = HFAdapter(hf_model)
    pair = prompt_pair(adapter, CLEAN, CORRUPTED, metric=METRIC)
    a = path_patching(pair, receivers=[("k", 1, 1)])
    b = path_patching(adapter, CLEAN, CORRUPTED, receivers=("k", 1, 1), metric=METRIC)
    assert np.array_equal(a.values, b.values) and a.senders == [(0, h) for h in range(4)]
    with pytest.raises(SiteError, match="key/value heads"):
        path_patching(pair, receivers=[("k", 1, 3)])       # 2 kv-heads
    with pytest.raises(ValueError, match="receiver is"):
        path_patching(pair, receivers=[("z", 1, 0)])
    with pytest.raises(ValueError, match="on its own"):
        path_patching(pair, receivers=[["final", ("q", 1, 0)]])


def test_bundled_model_induction_k_senders():
    """Receivers: the bundled model's induction head 2.0's key, query and value inputs. Clean: BOS + R + R
    (random tokens); corrupted: the first R replaced by other random tokens (no repeat to attend back to),
    metric: the logit of the repeated next token minus the clean run's runner-up. Denoising, the
    previous-token heads (head_scores 'previous_token': 0.2, then 0.0) are the top two senders to the key
    (K-composition; 0.30 and 0.16 of the gap) and nothing reaches the query. Noising, every path to the
    key is small (at most 0.01): the two previous-token heads back each other up, as activation patching
    their z shows too (0.09 and 0.02 noising vs 0.47 and 0.18 denoising). The grids are printed."""
    from mechviz import zoo
    from mechviz.analysis.heads import head_scores, repeated_random_tokens

    model, tok = zoo.load_default_model()
    adapter = HFAdapter(model, tok)
    toks = torch.as_tensor(repeated_random_tokens(adapter, 20, 1, 0)[0])
    corrupted = toks.clone()
    corrupted[1:21] = torch.as_tensor(repeated_random_tokens(adapter, 20, 1, 7)[0, 1:21])
    clean_in, corr_in = toks[:-1], corrupted[:-1]
    logits = adapter.run(clean_in).logits[-1]
    ans = int(toks[-1])
    wrong = int(next(t for t in torch.argsort(logits, descending=True).tolist() if t != ans))
    grid = path_patching(adapter, clean_in, corr_in, receivers=[("k", 2, 0), ("q", 2, 0), ("v", 2, 0), "final"],
                         answers=(ans, wrong), direction="denoise")
    prev = head_scores(adapter, "previous_token", clean_in)
    print("\nprevious-token scores:", np.round(prev.scores, 2).tolist())
    print(f"metric clean {grid.clean_metric:.3f} corrupted {grid.corrupted_metric:.3f}")
    for j, label in enumerate(grid.labels):
        print(label, "top senders:", grid.top(j, 3), "normalized:",
              np.round(grid.by_head(j, grid.normalized()), 2).tolist())
    assert np.isfinite(grid.values[:8, :3]).all() and np.isnan(grid.values[8:, :3]).all()
    top_k = grid.top(0, 2)
    assert set(top_k) == set(prev.top(2)), f"the top senders to 2.0's key are {top_k}, not {prev.top(2)}"
    assert np.nanmax(np.abs(grid.normalized()[:, 1])) < 0.1      # nothing composes with 2.0's query
